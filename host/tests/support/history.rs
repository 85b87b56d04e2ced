//! Stores and routed events for the history tests.

use std::sync::Arc;

use switchyard_host::config::{RetentionRule, StoreConfig};
use switchyard_host::routing::{Event, EventId, Routed, Topic};
use switchyard_host::store::retention::Policy;
use switchyard_host::store::{Replay, Store};

pub const EPOCH: u64 = 7;

pub fn policy() -> Policy {
    Policy::from_config(&StoreConfig {
        history_retention: 10,
        retention: vec![RetentionRule {
            topics: "keep.>".into(),
            max_events: Some(1000),
            max_age_s: None,
        }],
        ..StoreConfig::default()
    })
}

pub fn routed(seq: u64, topics: &[&str]) -> Routed {
    let id = EventId { epoch: EPOCH, seq };
    let topic = Topic::parse(topics[0]).expect("topic");
    Routed {
        event: Arc::new(Event::new(
            id,
            topic,
            format!("{{\"n\":{seq}}}").into_bytes(),
        )),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        users: Vec::new(),
        stamp: 0,
        origin: Default::default(),
    }
}

/// A SQLite store file in `dir`.
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("store.db").display())
}

pub async fn open(url: String) -> Store {
    Store::open(&StoreConfig {
        url,
        ..StoreConfig::default()
    })
    .await
    .expect("store")
}

pub async fn count(store: &Store, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    }
    .expect("count")
}

pub async fn seqs_after(store: &Store, seq: u64, stream: &str) -> Option<Vec<u64>> {
    let since = EventId { epoch: EPOCH, seq };
    match store
        .replay(EPOCH, since, &[stream.to_owned()])
        .await
        .expect("replay")
    {
        Replay::Events(events) => Some(events.iter().map(|e| e.id.seq).collect()),
        Replay::Reset => None,
    }
}
