//! The connection registry: every node writes its live sessions (node,
//! protocol, user, connect time, last heartbeat) to the store, in batches
//! off the session path, refreshes their heartbeat, and removes the rows of
//! nodes that stopped refreshing theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Store, StoreError, on_pool, recurring};

/// Sessions opened or closed per multi-row statement.
const ROWS_PER_STATEMENT: usize = 256;

/// A session as the registry keeps it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// Session id.
    pub session: String,
    /// Node serving it.
    pub node: String,
    /// `json`, `stomp` or `sse`.
    pub protocol: String,
    /// Its user.
    pub user: String,
    /// When it connected (ms since the epoch).
    pub connected_ms: u64,
    /// When its node last confirmed it alive (ms since the epoch).
    pub heartbeat_ms: u64,
}

/// What a node tells its registry writer.
#[derive(Debug)]
enum Change {
    Opened(Entry),
    Closed(String),
}

/// Counters.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Rows of stopped nodes removed.
    pub expired: AtomicU64,
    /// Failed writes (retried with the next batch).
    pub errors: AtomicU64,
}

/// This node's registry writer.
pub struct Registry {
    node: String,
    tx: mpsc::UnboundedSender<Change>,
    stop: CancellationToken,
    task: TaskTracker,
    /// Counters.
    pub stats: Arc<RegistryStats>,
}

/// How often changes are written.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// Starts the writer for `node`. Rows left by an earlier run of the
    /// same node are removed first: its sessions ended with it.
    pub async fn start(store: Store, node: &str, ttl: Duration) -> Result<Self, StoreError> {
        store.registry_clear(node).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = TaskTracker::new();
        let stats = Arc::new(RegistryStats::default());
        task.spawn(write_loop(
            store,
            node.to_owned(),
            ttl,
            rx,
            stop.clone(),
            stats.clone(),
        ));
        task.close();
        Ok(Registry {
            node: node.to_owned(),
            tx,
            stop,
            task,
            stats,
        })
    }

    /// A session opened.
    pub fn opened(&self, session: &str, protocol: &str, user: &str) {
        let now = now_ms();
        let _ = self.tx.send(Change::Opened(Entry {
            session: session.to_owned(),
            node: self.node.clone(),
            protocol: protocol.to_owned(),
            user: user.to_owned(),
            connected_ms: now,
            heartbeat_ms: now,
        }));
    }

    /// A session closed.
    pub fn closed(&self, session: &str) {
        let _ = self.tx.send(Change::Closed(session.to_owned()));
    }

    /// Writes what is pending, removes this node's rows and stops.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.task.wait().await;
    }
}

async fn write_loop(
    store: Store,
    node: String,
    ttl: Duration,
    mut rx: mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
    stats: Arc<RegistryStats>,
) {
    let refresh_every = (ttl / 3).max(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(refresh_every);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    // Changes not yet written, in order (a session opened and closed in
    // the same batch is never written).
    let mut opened: Vec<Entry> = Vec::new();
    let mut closed: Vec<String> = Vec::new();
    loop {
        let stopping = tokio::select! {
            _ = flush.tick() => false,
            _ = refresh.tick() => {
                match store.registry_refresh(&node, now_ms(), ttl).await {
                    Ok(n) if n > 0 => {
                        stats.expired.fetch_add(n, Ordering::Relaxed);
                        tracing::info!(rows = n, "registry: removed sessions of stopped nodes");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "registry refresh failed");
                    }
                }
                false
            }
            () = stop.cancelled() => true,
        };
        while let Ok(change) = rx.try_recv() {
            match change {
                Change::Opened(e) => opened.push(e),
                Change::Closed(id) => {
                    if let Some(i) = opened.iter().position(|e| e.session == id) {
                        opened.swap_remove(i);
                    } else {
                        closed.push(id);
                    }
                }
            }
        }
        if stopping {
            if let Err(e) = store.registry_clear(&node).await {
                tracing::warn!(error = %e, "registry: could not remove this node's sessions");
            }
            return;
        }
        if opened.is_empty() && closed.is_empty() {
            continue;
        }
        match store.registry_apply(&opened, &closed).await {
            Ok(()) => {
                opened.clear();
                closed.clear();
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "registry write failed; retrying");
            }
        }
    }
}

impl Store {
    /// Inserts opened sessions and removes closed ones, in one transaction.
    pub async fn registry_apply(
        &self,
        opened: &[Entry],
        closed: &[String],
    ) -> Result<(), StoreError> {
        let params = self.params();
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in opened.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO sy_sessions (session_id, node, protocol, user_id, connected_ms, heartbeat_ms) \
                     VALUES {} ON CONFLICT (session_id) DO NOTHING",
                    params.rows(chunk.len(), 6)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .persistent(recurring(chunk.len(), ROWS_PER_STATEMENT));
                for e in chunk {
                    q = q
                        .bind(e.session.as_str())
                        .bind(e.node.as_str())
                        .bind(e.protocol.as_str())
                        .bind(e.user.as_str())
                        .bind(e.connected_ms as i64)
                        .bind(e.heartbeat_ms as i64);
                }
                q.execute(&mut *tx).await?;
            }
            for chunk in closed.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "DELETE FROM sy_sessions WHERE session_id IN ({})",
                    params.list(1, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .persistent(recurring(chunk.len(), ROWS_PER_STATEMENT));
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Marks this node's sessions alive now and removes the rows of nodes
    /// silent for longer than `ttl`; returns how many were removed.
    pub async fn registry_refresh(
        &self,
        node: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE sy_sessions SET heartbeat_ms = $1 WHERE node = $2"
        )
        .bind(now_ms as i64)
        .bind(node)
        .execute(pool)
        .await
        .map(|_| ()))?;
        let expired = now_ms.saturating_sub(ttl.as_millis() as u64);
        let removed = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM sy_sessions WHERE heartbeat_ms < $1"
        )
        .bind(expired as i64)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(removed)
    }

    /// Removes every row of `node`.
    pub async fn registry_clear(&self, node: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query(
            "DELETE FROM sy_sessions WHERE node = $1"
        )
        .bind(node)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Registered sessions, of `user` if given, oldest first, at most
    /// `limit`; and the number per node.
    pub async fn registry_list(
        &self,
        user: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Entry>, Vec<(String, u64)>), StoreError> {
        type Row = (String, String, String, String, i64, i64);
        let rows: Vec<Row> = on_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT session_id, node, protocol, user_id, connected_ms, heartbeat_ms FROM sy_sessions \
             WHERE ($1 IS NULL OR user_id = $1) ORDER BY connected_ms, session_id LIMIT $2"
        )
        .bind(user)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        })?;
        let nodes: Vec<(String, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT node, COUNT(*) FROM sy_sessions GROUP BY node ORDER BY node"
        )
        .fetch_all(pool)
        .await)?;
        let entries = rows
            .into_iter()
            .map(
                |(session, node, protocol, user, connected_ms, heartbeat_ms)| Entry {
                    session,
                    node,
                    protocol,
                    user,
                    connected_ms: connected_ms as u64,
                    heartbeat_ms: heartbeat_ms as u64,
                },
            )
            .collect();
        Ok((
            entries,
            nodes.into_iter().map(|(n, c)| (n, c as u64)).collect(),
        ))
    }
}
