//! The data of one plugin instance's `Store`: its identity and config, the
//! memory limiter, and a deny-all WASI context whose stderr goes to the log.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host, types};

/// Per-store state.
pub struct PluginState {
    name: Arc<str>,
    config_json: Arc<str>,
    pub(super) limiter: MemoryLimiter,
    /// The running call's time budget (see [`super::budget`]).
    pub(super) budget: super::budget::Budget,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    /// State for an instance of plugin `name`.
    pub fn new(name: Arc<str>, config_json: Arc<str>, memory_bytes: usize) -> Self {
        // No preopens, no environment, no arguments, no network: WASI is
        // linked only because Rust's std imports it.
        let wasi = WasiCtx::builder()
            .stderr(LogStream {
                plugin: name.clone(),
            })
            .stdout(LogStream {
                plugin: name.clone(),
            })
            .build();
        PluginState {
            name,
            config_json,
            limiter: MemoryLimiter::new(memory_bytes),
            budget: super::budget::Budget::start(std::time::Duration::ZERO),
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &*self.name;
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Caps linear memory and remembers a refused growth, so that the trap that
/// follows can be reported as "memory limit" rather than `unreachable`.
pub struct MemoryLimiter {
    max_bytes: usize,
    pub(super) denied: bool,
}

impl MemoryLimiter {
    fn new(max_bytes: usize) -> Self {
        MemoryLimiter {
            max_bytes,
            denied: false,
        }
    }
}

/// Table elements allowed per table: generous for Rust guests, still bounded.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A guest's stdout/stderr: each line becomes a log line tagged with the plugin.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogWriter {
            plugin: self.plugin.clone(),
            line: Vec::new(),
        })
    }
}

/// Most of a line kept before it is logged anyway.
const MAX_LINE: usize = 4096;

struct LogWriter {
    plugin: Arc<str>,
    line: Vec<u8>,
}

impl LogWriter {
    fn emit(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            tracing::warn!(
                plugin = &*self.plugin,
                stream = "stderr",
                "{}",
                text.trim_end()
            );
            self.line.clear();
        }
    }
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in buf {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
