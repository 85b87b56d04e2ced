//! The wasmtime engine as Switchyard configures it: component model, pooling
//! allocator, epoch interruption driven by a ticker thread, and the linker
//! holding everything a plugin may import.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin as PluginWorld;
use super::state::PluginState;

/// Engine-wide settings (`[runtime]` in the config).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Component instances the pool holds across all plugins.
    pub pool_instances: u32,
    /// The largest `memory_mb` any plugin may be given.
    pub max_memory_mb: u32,
    /// Epoch tick: the granularity of call deadlines.
    pub epoch_tick: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            pool_instances: 256,
            max_memory_mb: 256,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime: {0}")]
    Config(String),
    /// Linking the host imports failed.
    #[error("cannot link host imports: {0}")]
    Link(String),
    /// The ticker thread could not start.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(std::io::Error),
}

/// The engine, its linker and the epoch ticker. Cheap to share in an `Arc`.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
    settings: EngineSettings,
    ticker: Ticker,
}

impl PluginEngine {
    /// Builds the engine and starts its ticker thread.
    pub fn new(settings: EngineSettings) -> Result<Arc<Self>, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        let n = settings.pool_instances;
        pool.total_component_instances(n)
            // A Rust component holds several core instances (its module and
            // WASI adapter shims).
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .max_memory_size(settings.max_memory_mb as usize * 1024 * 1024)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Sync calls only: concurrency support costs ~200 ns per call.
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| EngineError::Config(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        PluginWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Link(e.to_string()))?;

        let ticker = Ticker::start(&engine, settings.epoch_tick).map_err(EngineError::Ticker)?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            settings,
            ticker,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with every import a plugin may use.
    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Deadline in epoch ticks for a call limit of `timeout`: rounded up,
    /// plus one tick because the current tick may be about to end.
    pub fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.settings.epoch_tick.as_nanos().max(1);
        u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX) + 1
    }

    /// What plugin code marks itself running with, so that deadlines tick.
    pub fn running(&self) -> Arc<Running> {
        self.ticker.running.clone()
    }

    /// Whether the ticker thread is still running (for readiness).
    pub fn ticking(&self) -> bool {
        self.ticker
            .handle
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

/// Plugin code running now (instantiations and calls). The ticker ticks
/// only while some runs: a deadline counts ticks from the call's start,
/// and an idle node then wakes no thread a thousand times a second.
#[derive(Debug, Default)]
pub struct Running {
    calls: AtomicUsize,
    ticker: OnceLock<Thread>,
    /// Set when the ticker is to end.
    stop: AtomicBool,
    /// Ticks so far.
    ticks: AtomicU64,
}

/// One piece of plugin code running, until dropped.
#[must_use = "plugin code counts as running only while this is held"]
pub struct RunningCall<'a>(&'a Running);

impl Running {
    /// Marks plugin code as running, waking the ticker for the first.
    pub fn enter(&self) -> RunningCall<'_> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(t) = self.ticker.get()
        {
            t.unpark();
        }
        RunningCall(self)
    }

    fn idle(&self) -> bool {
        self.calls.load(Ordering::SeqCst) == 0
    }

    /// Epoch ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for RunningCall<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A thread that advances the engine's epoch every tick while plugin code
/// runs. It holds only a weak reference, and stops when told to or when
/// the engine is gone.
struct Ticker {
    running: Arc<Running>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine, tick: Duration) -> std::io::Result<Self> {
        let running = Arc::new(Running::default());
        let weak = engine.weak();
        let demand = running.clone();
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !demand.stop.load(Ordering::Relaxed) {
                    if demand.idle() {
                        // `enter` unparks: a call that starts between the
                        // check and the park leaves the token, and the park
                        // returns at once. The timeout only bounds a stop.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => {
                            engine.increment_epoch();
                            demand.ticks.fetch_add(1, Ordering::Relaxed);
                        }
                        None => break,
                    }
                }
            })?;
        // Set before the engine exists: no plugin code can enter earlier
        // (an `enter` without it would not wake a parked ticker).
        let _ = running.ticker.set(handle.thread().clone());
        Ok(Ticker {
            running,
            handle: Some(handle),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.running.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_ticks_only_while_plugin_code_runs() {
        let engine = PluginEngine::new(EngineSettings {
            pool_instances: 4,
            max_memory_mb: 16,
            ..EngineSettings::default()
        })
        .expect("engine");
        let running = engine.running();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(running.ticks(), 0, "ticked while nothing ran");
        {
            let _call = running.enter();
            let start = std::time::Instant::now();
            while running.ticks() < 3 {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no tick while a call ran"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Once the last call ended, at most the tick under way follows (a
        // busy machine may delay it): wait until the count holds, then
        // check it keeps holding.
        let mut after = running.ticks();
        let start = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = running.ticks();
            if now == after {
                break;
            }
            assert!(now <= after + 1, "ticked on after the calls ended");
            assert!(start.elapsed() < Duration::from_secs(10), "never settled");
            after = now;
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(running.ticks(), after, "ticked after the calls ended");
        assert!(engine.ticking());
    }
}
