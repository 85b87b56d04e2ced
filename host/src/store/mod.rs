//! Durable state through sqlx: SQLite (embedded, the default) or
//! PostgreSQL (clusters). Queries are written once with `$n` placeholders,
//! which both databases accept (generated multi-row ones: see [`Params`]),
//! and checked at runtime, so building needs no database. Migrations under
//! `migrations/<database>/` are embedded and applied at start.

pub mod batched;
pub mod gate;
pub mod history;
mod ids;
pub mod inbox;
pub mod registry;
pub mod repair;
mod replay;
pub mod retention;
pub mod trim;
mod write;

pub use replay::ReplayStream;
pub use trim::Trimmed;

use std::sync::Arc;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::StoreConfig;
use crate::routing::{Event, EventId, Topic};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the store at {url}: {reason}")]
    Open {
        /// `store.url`, without credentials.
        url: String,
        /// Why.
        reason: String,
    },
    /// A migration failed.
    #[error("cannot migrate the store: {0}")]
    Migrate(String),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A query answering several requests at once failed.
    #[error("store query failed: {0}")]
    Batch(String),
}

/// The database behind the store.
#[derive(Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs the same query builder on either pool.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// What a replay found.
#[derive(Debug)]
pub enum Replay {
    /// Every event after the cursor, in order.
    Events(Vec<Event>),
    /// The cursor is from another epoch, or older than retention: the
    /// client must be told instead of getting a partial history.
    Reset,
}

/// The most keys one batched lookup asks for ([`batched`]; well under
/// SQLite's and PostgreSQL's bound-parameter limits).
pub const LOOKUP_BATCH: usize = 256;

/// Delivery cursors per multi-row upsert.
const CURSOR_ROWS_PER_INSERT: usize = 256;

/// How a generated statement (a multi-row INSERT, an `IN` list) writes
/// its parameters, every one used once and in order.
///
/// SQLite gets anonymous `?`: sqlx finds the argument of a numbered
/// parameter through `sqlite3_bind_parameter_name`, a linear walk of the
/// statement's parameter names, so binding a statement of n `$n`
/// parameters costs O(n²) — a 512-row history INSERT 2,048² steps, and the
/// first symbol in a connection storm's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Params {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?, ?, …` (SQLite).
    Anonymous,
}

impl Params {
    /// `($1, $2, …), ($n+1, …)` for `rows` rows of `width` parameters.
    pub(crate) fn rows(self, rows: usize, width: usize) -> String {
        self.rows_from(1, rows, width)
    }

    /// [`Params::rows`] numbered from `first` (a statement's later part).
    pub(crate) fn rows_from(self, first: usize, rows: usize, width: usize) -> String {
        let mut out = String::with_capacity(rows * (width * 5 + 4));
        for r in 0..rows {
            if r > 0 {
                out.push_str(", ");
            }
            out.push('(');
            self.push_run(&mut out, first + r * width, width);
            out.push(')');
        }
        out
    }

    /// `$first, $first+1, …` for `n` parameters (`?, ?, …` anonymous:
    /// then `first` must follow the statement's other parameters).
    pub(crate) fn list(self, first: usize, n: usize) -> String {
        let mut out = String::with_capacity(n * 5);
        self.push_run(&mut out, first, n);
        out
    }

    fn push_run(self, out: &mut String, first: usize, n: usize) {
        for i in first..first + n {
            if i > first {
                out.push_str(", ");
            }
            self.push(out, i);
        }
    }

    fn push(self, out: &mut String, i: usize) {
        match self {
            Params::Numbered => {
                use std::fmt::Write;
                let _ = write!(out, "${i}");
            }
            Params::Anonymous => out.push('?'),
        }
    }
}

/// Whether a generated statement of `n` rows (or list items) is worth
/// keeping prepared: sqlx caches every distinct SQL text per connection,
/// and a batch of each size between 1 and the maximum would fill that
/// cache with large one-off programs (about 800 bytes per session of a
/// connection storm's RSS). Small batches and full ones recur.
pub(crate) fn recurring(n: usize, max: usize) -> bool {
    n <= 8 || n == max
}

/// How long a PostgreSQL connection sits idle before it is pinged on its
/// next use (a server restart is then noticed before a query fails).
const PING_IDLE_CONNECTIONS_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// An `sy_events` row as an event (`None` for a topic no longer valid).
pub(crate) fn event_from_row(
    id: EventId,
    topic: &str,
    name: String,
    data: Vec<u8>,
    headers: &str,
    sender: Option<String>,
) -> Option<Event> {
    let topic = Topic::parse(topic).ok()?;
    let mut e = Event::new(id, topic, data);
    e.name = name;
    e.headers = serde_json::from_str(headers).unwrap_or_default();
    e.sender = sender;
    Some(e)
}

/// An `sy_events` row read for a replay: seq, topic, name, data,
/// headers, sender.
pub(crate) type EventRow = (i64, String, String, Vec<u8>, String, Option<String>);

/// Rows of `epoch` as events, skipping any no longer valid.
pub(crate) fn events_from_rows(epoch: u64, rows: Vec<EventRow>) -> Vec<Event> {
    rows.into_iter()
        .filter_map(|(seq, topic, name, data, headers, sender)| {
            let id = EventId {
                epoch,
                seq: seq as u64,
            };
            event_from_row(id, &topic, name, data, &headers, sender)
        })
        .collect()
}

/// The most events one replay returns; further behind is a reset.
pub const MAX_REPLAY: usize = 10_000;

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((head, tail)) => match head.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{tail}"),
            None => tail.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl Store {
    /// How generated statements write their parameters here.
    pub(crate) fn params(&self) -> Params {
        match self {
            Store::Sqlite(_) => Params::Anonymous,
            Store::Postgres(_) => Params::Numbered,
        }
    }

    /// Opens (creating a SQLite file and its directory if needed) and
    /// migrates.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = &config.url;
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            url: redact(url),
            reason: e.to_string(),
        };
        let store = if url.starts_with("sqlite:") {
            let options: SqliteConnectOptions = url.parse().map_err(|e| open_err(&e))?;
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL with NORMAL sync: a power loss may lose the last
                // transactions, never corrupt the file.
                .synchronous(SqliteSynchronous::Normal)
                // Statement journals (a multi-row statement inside a
                // transaction has one) in memory: on disk each was a temp
                // file created, written and unlinked per statement.
                .pragma("temp_store", "memory")
                // Checkpoint every 8,192 WAL pages (32 MiB), not SQLite's
                // 1,000: a checkpoint writes each page changed since the
                // last back to the file, and history keeps changing the
                // same pages (the tails of its tables and indexes), so
                // rarer checkpoints write far fewer pages per event. The
                // file is cut back to 64 MiB when a reader held it longer.
                .pragma("wal_autocheckpoint", "8192")
                .pragma("journal_size_limit", "67108864")
                .busy_timeout(std::time::Duration::from_secs(5));
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
            }
            // No ping before each use: a connection to a local file does
            // not go away, and every ping is a round trip through sqlx's
            // worker thread (one more per statement run on the pool).
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(|e| open_err(&e))?;
            sqlx::migrate!("../migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| StoreError::Migrate(e.to_string()))?;
            Store::Sqlite(pool)
        } else {
            // A connection is checked only after it sat idle: a ping before
            // every use doubles the round trips of single statements.
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IDLE_CONNECTIONS_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect(url)
                .await
                .map_err(|e| open_err(&e))?;
            sqlx::migrate!("../migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| StoreError::Migrate(e.to_string()))?;
            Store::Postgres(pool)
        };
        Ok(store)
    }

    /// A store for one long-lived writer (the history writer): on SQLite,
    /// its own connection to the same file. Each SQLite connection has its
    /// own page cache, which it drops whenever it finds the file changed by
    /// another connection; a writer taking turns on the shared pool's
    /// connections found its cache dropped at every batch and read the
    /// B-trees it inserts into back from the file. PostgreSQL shares its
    /// buffers: the shared pool serves.
    pub async fn for_writer(&self) -> Result<Store, StoreError> {
        match self {
            Store::Sqlite(pool) => {
                let options = (*pool.connect_options()).clone();
                let file = options.get_filename().display().to_string();
                let own = SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await
                    .map_err(|e| StoreError::Open {
                        url: file,
                        reason: e.to_string(),
                    })?;
                Ok(Store::Sqlite(own))
            }
            Store::Postgres(_) => Ok(self.clone()),
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Every sequence of `epoch` up to this one has been written.
    pub async fn watermark(&self, epoch: u64) -> Result<u64, StoreError> {
        let row: Option<(i64,)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT upto FROM sy_watermark WHERE epoch = $1"
        )
        .bind(epoch as i64)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map_or(0, |(u,)| u as u64))
    }

    /// Records a plugin set this node loaded or refused.
    pub async fn record_deployment(
        &self,
        node: &str,
        at_ms: u64,
        trigger: &str,
        applied: bool,
        plugins: &serde_json::Value,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let plugins = plugins.to_string();
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO sy_plugin_deployments (node, at_ms, trigger, applied, plugins, error) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(node)
        .bind(at_ms as i64)
        .bind(trigger)
        .bind(i64::from(applied))
        .bind(plugins.as_str())
        .bind(error)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The latest `limit` deployment records of every node, newest first.
    pub async fn deployments(&self, limit: u32) -> Result<Vec<serde_json::Value>, StoreError> {
        type Row = (String, i64, String, i64, String, Option<String>);
        let rows: Vec<Row> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT node, at_ms, trigger, applied, plugins, error FROM sy_plugin_deployments \
             ORDER BY at_ms DESC, id DESC LIMIT $1"
        )
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(node, at_ms, trigger, applied, plugins, error)| {
                serde_json::json!({
                    "node": node,
                    "at_ms": at_ms,
                    "trigger": trigger,
                    "applied": applied != 0,
                    "plugins": serde_json::from_str::<serde_json::Value>(&plugins).unwrap_or_default(),
                    "error": error,
                })
            })
            .collect())
    }
}

/// Shared handle.
pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(Params::Numbered.rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(Params::Numbered.rows(1, 1), "($1)");
        assert_eq!(Params::Anonymous.rows(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Params::Numbered.list(1, 3), "$1, $2, $3");
        assert_eq!(Params::Numbered.list(2, 2), "$2, $3");
        assert_eq!(Params::Anonymous.list(1, 3), "?, ?, ?");
    }
}
