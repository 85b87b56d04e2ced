//! Whether a sequence was ever handed out by the ingest stream: a client
//! cursor ahead of every id given (forged, or from a stream that was
//! recreated) cannot be replayed from, and would otherwise hide every live
//! event below it.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream;

/// The newest ingest sequence known, asked of JetStream only when a
/// cursor goes past it.
pub struct Assigned {
    js: jetstream::Context,
    stream: String,
    newest: AtomicU64,
}

impl Assigned {
    /// For the ingest stream `stream`.
    pub fn new(js: jetstream::Context, stream: String) -> Self {
        Assigned {
            js,
            stream,
            newest: AtomicU64::new(0),
        }
    }

    /// Whether `seq` was handed out; `None` if the stream cannot say.
    pub async fn covers(&self, seq: u64) -> Option<bool> {
        if seq <= self.newest.load(Ordering::Relaxed) {
            return Some(true);
        }
        match self.js.get_stream(&self.stream).await {
            Ok(s) => {
                let last = s.cached_info().state.last_sequence;
                self.newest.fetch_max(last, Ordering::Relaxed);
                Some(seq <= last)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the ingest stream's last sequence is unknown");
                None
            }
        }
    }
}
