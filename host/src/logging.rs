//! The process's log: human-readable or JSON lines on stderr, with a filter
//! (`RUST_LOG` syntax) that the admin API can change while it runs.

use std::sync::{Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// Changes the log filter of the running process.
pub struct LogControl {
    current: Mutex<String>,
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the filter, e.g. `info,switchyard_host::bus=debug`.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = directives.to_owned();
        Ok(())
    }
}

/// Installs the global subscriber: the filter from `RUST_LOG` (default
/// `info`), JSON lines when `json`.
pub fn init(json: bool) -> LogControl {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    LogControl {
        current: Mutex::new(directives),
        handle,
    }
}
