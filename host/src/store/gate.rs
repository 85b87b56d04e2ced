//! Writers of one node's store take turns: SQLite lets one transaction
//! write at a time, and a writer that finds the file locked sleeps in its
//! busy handler (1, 2, 5, 10 … ms) rather than waking when the lock is
//! free. A commit that publishers wait on would sleep through a
//! retention cut that way; taking turns here, it waits only for the
//! write ahead of it to end (each retention cut is one short transaction).
//! PostgreSQL locks rows, not the database: there writers do not wait for
//! each other here (a cut stuck on a lock must not hold up commits).

use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

/// The turn of one writer (first come, first served).
#[derive(Debug, Default, Clone)]
pub struct WriteGate(Option<Arc<Mutex<()>>>);

impl WriteGate {
    /// Turns for `store`'s writers (none on PostgreSQL).
    pub fn for_store(store: &super::Store) -> Self {
        match store {
            super::Store::Sqlite(_) => WriteGate(Some(Arc::default())),
            super::Store::Postgres(_) => WriteGate(None),
        }
    }

    /// Waits for the turn; it ends when the guard is dropped.
    pub async fn turn(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.0 {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }
}
