//! Ingest throughput with history on (SQLite, PostgreSQL) beside history
//! off, side by side in one run. One node on the local bus, no sessions, no
//! plugins: this prices writing history, nothing else.
//!
//! `cargo bench -p switchyard-host --bench history` prints a table. Each
//! figure is events per second from the first publish until every event is
//! routed and, with history on, written (a barrier on the history writer
//! returned).

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::Connection;
use switchyard_host::config::Config;
use switchyard_host::gateway::Gateway;
use switchyard_host::plugin::{EngineSettings, PluginEngine, PluginSet};
use switchyard_host::routing::{Event, EventId, Topic};

const EVENTS: u64 = 20_000;
const TOPICS: u64 = 100;

async fn gateway(store: &str) -> Arc<Gateway> {
    let text = format!(
        "[auth]\njwt_hs256_secret = \"benchmark-secret-0123456789abcdef-0123\"\n[store]\n{store}\n"
    );
    let config = Config::from_toml_str(&text).unwrap();
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let plugins = PluginSet::load(&engine, None, &[], 1).unwrap();
    Gateway::start(config, engine, plugins).await.unwrap()
}

async fn run(gw: Arc<Gateway>, history: bool) -> f64 {
    let payload = vec![b'x'; 256];
    let start = Instant::now();
    for i in 0..EVENTS {
        let topic = Topic::parse(&format!("bench.t{}", i % TOPICS)).unwrap();
        let mut event = Event::new(EventId::UNASSIGNED, topic, payload.clone());
        loop {
            match gw.publish(event.clone()).await {
                Ok(_) => break,
                Err(_) => tokio::task::yield_now().await,
            }
        }
        event.data.clear();
    }
    while gw.stats.routed.load(Ordering::Relaxed) < EVENTS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if history {
        // Everything routed is in the store once this returns.
        assert!(gw.bus.cover().await);
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    // Stopped before the next run, which then has the machine to itself.
    switchyard_host::server::drain(&gw).await;
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // A file each: a store written by an earlier run would be resumed.
        let file = |name: &str| format!("url = \"sqlite://{}\"", dir.path().join(name).display());
        let sqlite = file("history.db");
        let off = format!("{}\nhistory_retention = 0\ninbox_max_events = 0", file("off.db"));
        let pg_base = std::env::var("SWITCHYARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let name = format!("sy_bench_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&format!("{pg_base}/postgres"))
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let postgres = format!("url = \"{pg_base}/{name}\"");

        println!("{EVENTS} events of 256 bytes over {TOPICS} topics, published as fast as the gateway takes them.\n");
        println!("| history | events/s | vs off |");
        println!("| --- | --- | --- |");
        let base = run(gateway(&off).await, false).await;
        println!("| off | {base:.0} | 1.00 |");
        let lite = run(gateway(&sqlite).await, true).await;
        println!("| SQLite (WAL) | {lite:.0} | {:.2} |", lite / base);
        let pg = run(gateway(&postgres).await, true).await;
        println!("| PostgreSQL | {pg:.0} | {:.2} |", pg / base);
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    });
}
