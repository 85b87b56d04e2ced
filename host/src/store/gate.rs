//! Writers of one node's store take turns: SQLite lets one transaction
//! write at a time, and a writer that finds the file locked sleeps in its
//! busy handler (1, 2, 5, 10 … ms) rather than waking when the lock is
//! free. A commit that publishers wait on would sleep through a
//! retention cut that way; taking turns here, it waits only for the
//! write ahead of it to end (each retention cut is one short transaction).

use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

/// The turn of one writer (first come, first served).
#[derive(Debug, Default, Clone)]
pub struct WriteGate(Arc<Mutex<()>>);

impl WriteGate {
    /// Waits for the turn; it ends when the guard is dropped.
    pub async fn turn(&self) -> MutexGuard<'_, ()> {
        self.0.lock().await
    }
}
