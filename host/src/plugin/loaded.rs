//! A plugin loaded and ready to call: compiled, checked, pre-instantiated,
//! with its warm instances, limits and counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Trap;
use wasmtime::component::Component;

use super::bindings::{authorizer, router, transformer, types};
use super::cache::CompileCache;
use super::engine::PluginEngine;
use super::error::{CallError, LoadError};
use super::instance::{ExportIndices, InstancePool, InstanceRecipe, WarmInstance};
use super::interface::{ComponentInfo, Interface, check_wasm_kind};
use super::metrics::PluginMetrics;

/// How to load one plugin file.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The name used in logs and metrics.
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// The plugin's config table as a JSON object.
    pub config_json: String,
    /// The deadline of each call.
    pub timeout: Duration,
    /// The memory cap of each instance.
    pub memory_mb: u32,
    /// Instances that may exist at once.
    pub max_instances: usize,
}

impl LoadOptions {
    /// Options with the default limits (10 ms, 16 MiB, 4 instances) and an empty config.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        LoadOptions {
            name: name.into(),
            path: path.into(),
            config_json: "{}".to_owned(),
            timeout: Duration::from_millis(10),
            memory_mb: 16,
            max_instances: 4,
        }
    }
}

/// A loaded plugin.
pub struct LoadedPlugin {
    name: Arc<str>,
    path: PathBuf,
    sha256: String,
    info: ComponentInfo,
    loaded_at: SystemTime,
    timeout: Duration,
    memory_mb: u32,
    pool: InstancePool,
    metrics: PluginMetrics,
    /// The deadline of the load-time probe's calls (ticks).
    probe_ticks: u64,
    /// Set while [`LoadedPlugin::probe`] runs, before the plugin is shared.
    probing: std::sync::atomic::AtomicBool,
}

/// The least a load-time probe call may take: the probe asks whether the
/// plugin works at all (a config it rejects, a trap, a loop), not how fast
/// it answers on a loaded machine, where a first call on a fresh instance
/// can miss a per-call deadline of a few milliseconds by scheduling alone.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

impl LoadedPlugin {
    /// Reads, compiles (or takes from `cache`), checks and pre-instantiates a
    /// plugin. Nothing runs yet: see [`LoadedPlugin::probe`].
    pub fn load(
        engine: &PluginEngine,
        cache: Option<&CompileCache>,
        opts: LoadOptions,
    ) -> Result<Self, LoadError> {
        let bytes = std::fs::read(&opts.path).map_err(|source| LoadError::Read {
            path: opts.path.clone(),
            source,
        })?;
        check_wasm_kind(&opts.path, &bytes)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let component = compile(engine, cache, &opts.path, &sha256, &bytes)?;
        let info = ComponentInfo::of(engine.engine(), &component);
        info.check(&opts.path)?;
        let pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            let message = format!("{e:#}");
            match info.imports.iter().find(|i| message.contains(i.as_str())) {
                Some(import) => LoadError::UnknownImport {
                    path: opts.path.clone(),
                    import: import.clone(),
                },
                None => LoadError::Instantiate {
                    name: opts.name.clone(),
                    message,
                },
            }
        })?;
        let indices = ExportIndices::of(&pre);
        let name: Arc<str> = opts.name.into();
        let recipe = InstanceRecipe {
            pre,
            indices,
            name: name.clone(),
            config_json: opts.config_json.into(),
            memory_bytes: opts.memory_mb as usize * 1024 * 1024,
            deadline_ticks: engine.deadline_ticks(opts.timeout),
            timeout: opts.timeout,
            tick: engine.settings().epoch_tick,
            running: engine.running(),
        };
        Ok(LoadedPlugin {
            name,
            path: opts.path,
            sha256,
            info,
            loaded_at: SystemTime::now(),
            timeout: opts.timeout,
            memory_mb: opts.memory_mb,
            pool: InstancePool::new(recipe, opts.max_instances),
            metrics: PluginMetrics::default(),
            probe_ticks: engine.deadline_ticks(opts.timeout.max(PROBE_DEADLINE)),
            probing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs each of `interfaces` once on synthetic input, so that a plugin
    /// whose config it rejects, or that traps at once, is refused at load.
    pub fn probe(&self, interfaces: &[Interface]) -> Result<(), LoadError> {
        self.probing.store(true, Ordering::Relaxed);
        let result = self.probe_calls(interfaces);
        self.probing.store(false, Ordering::Relaxed);
        result
    }

    fn probe_calls(&self, interfaces: &[Interface]) -> Result<(), LoadError> {
        let subject = types::Subject {
            id: 0,
            user: "switchyard-probe".into(),
            session: "probe".into(),
            roles: Vec::new(),
            claims: Vec::new(),
        };
        let topic = types::Topic {
            name: "switchyard.probe".into(),
        };
        let event = types::Event {
            id: "probe".into(),
            topic: topic.clone(),
            name: "message".into(),
            data: b"{}".to_vec(),
            headers: Vec::new(),
            sender: None,
            to_users: Vec::new(),
        };
        for &interface in interfaces {
            let result = match interface {
                Interface::Authorizer => self
                    .authorize(&subject, &[authorizer::Action::Subscribe(topic.clone())])
                    .map(drop),
                Interface::DirectAuthorizer => self
                    .authorize_direct(&subject, &topic, &["switchyard-probe".to_owned()])
                    .map(drop),
                Interface::Router => self.route(std::slice::from_ref(&event)).map(drop),
                Interface::Transformer => self
                    .audience(&subject)
                    .and_then(|a| self.transform(&event, &[a]))
                    .map(drop),
            };
            result.map_err(|error| LoadError::Probe {
                name: self.name.to_string(),
                interface,
                error,
            })?;
        }
        Ok(())
    }

    /// Decides `actions` for `subject`: one decision per action.
    pub fn authorize(
        &self,
        subject: &types::Subject,
        actions: &[authorizer::Action],
    ) -> Result<Vec<authorizer::Decision>, CallError> {
        let out = self.call(Interface::Authorizer, |i| {
            let Some(g) = i.authorizer.clone() else {
                return Err(CallError::NotExported(Interface::Authorizer));
            };
            let s = i.subject_ref(subject);
            // One action: the single-value call avoids two list allocations.
            Ok(match actions {
                [one] => g.call_authorize(&mut i.store, &s, one).map(|d| vec![d]),
                many => g.call_authorize_batch(&mut i.store, &s, many),
            })
        })?;
        expect_len(actions.len(), out)
    }

    /// Decides whether `subject` may publish on `topic` to `users`: the
    /// reason shown to the client if not.
    pub fn authorize_direct(
        &self,
        subject: &types::Subject,
        topic: &types::Topic,
        users: &[String],
    ) -> Result<Result<(), String>, CallError> {
        self.call(Interface::DirectAuthorizer, |i| {
            let Some(g) = i.direct.clone() else {
                return Err(CallError::NotExported(Interface::DirectAuthorizer));
            };
            let s = i.subject_ref(subject);
            Ok(g.call_authorize_direct(&mut i.store, &s, topic, users))
        })
    }

    /// Routes `events`: one decision per event.
    pub fn route(&self, events: &[types::Event]) -> Result<Vec<router::RouteDecision>, CallError> {
        let out = self.call(Interface::Router, |i| match &i.router {
            Some(g) => Ok(match events {
                [one] => g.call_route(&mut i.store, one).map(|d| vec![d]),
                many => g.call_route_batch(&mut i.store, many),
            }),
            None => Err(CallError::NotExported(Interface::Router)),
        })?;
        expect_len(events.len(), out)
    }

    /// The audience key of `subject`.
    pub fn audience(&self, subject: &types::Subject) -> Result<String, CallError> {
        self.call(Interface::Transformer, |i| {
            let Some(g) = i.transformer.clone() else {
                return Err(CallError::NotExported(Interface::Transformer));
            };
            let s = i.subject_ref(subject);
            Ok(g.call_audience(&mut i.store, &s))
        })
    }

    /// Transforms `event` for each of `audiences`: one result per audience.
    pub fn transform(
        &self,
        event: &types::Event,
        audiences: &[String],
    ) -> Result<Vec<transformer::TransformResult>, CallError> {
        let out = self.call(Interface::Transformer, |i| match &i.transformer {
            Some(g) => Ok(g.call_transform(&mut i.store, event, audiences)),
            None => Err(CallError::NotExported(Interface::Transformer)),
        })?;
        expect_len(audiences.len(), out)
    }

    /// Runs one call on a warm instance with the deadline and memory cap
    /// armed; counts it, classifies a failure, and discards a failed instance.
    fn call<R>(
        &self,
        interface: Interface,
        f: impl FnOnce(&mut WarmInstance) -> Result<wasmtime::Result<R>, CallError>,
    ) -> Result<R, CallError> {
        let started = Instant::now();
        let per = self.metrics.interface(interface);
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        per.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call_on_instance(f);
        let took = started.elapsed();
        self.metrics.latency.record(took);
        per.latency.record(took);
        if let Err(e) = &result {
            let (counter, per_counter) = match e {
                CallError::Timeout { .. } => (&self.metrics.timeouts, &per.timeouts),
                CallError::MemoryLimit { .. } => (&self.metrics.memory_limits, &per.traps),
                _ => (&self.metrics.traps, &per.traps),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            per_counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = &*self.name, %interface, limit = e.kind(), error = %e, "plugin call failed");
        }
        result
    }

    fn call_on_instance<R>(
        &self,
        f: impl FnOnce(&mut WarmInstance) -> Result<wasmtime::Result<R>, CallError>,
    ) -> Result<R, CallError> {
        let (mut lease, fresh) = self.pool.acquire()?;
        if fresh {
            self.metrics.instantiations.fetch_add(1, Ordering::Relaxed);
        }
        let instance = lease.instance();
        let _running = self.pool.enter();
        let (ticks, budget) = if self.probing.load(Ordering::Relaxed) {
            (self.probe_ticks, self.timeout.max(PROBE_DEADLINE))
        } else {
            (self.pool.deadline_ticks(), self.timeout)
        };
        instance.store.set_epoch_deadline(ticks);
        instance.store.data_mut().budget = super::budget::Budget::start(budget);
        instance.store.data_mut().limiter.denied = false;
        match f(instance)? {
            Ok(r) => {
                lease.release();
                Ok(r)
            }
            // The lease is dropped, and the poisoned instance with it.
            Err(e) => Err(self.classify(&e, instance.store.data().limiter.denied)),
        }
    }

    fn classify(&self, e: &wasmtime::Error, memory_denied: bool) -> CallError {
        if memory_denied {
            return CallError::MemoryLimit {
                memory_mb: self.memory_mb,
            };
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return CallError::Timeout {
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            };
        }
        let mut text = format!("{e:#}");
        if text.len() > 600 {
            let cut = (0..=600)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        CallError::Trap(text)
    }

    /// Creates a fresh instance from the pre-instantiated component and
    /// discards it: what a call costs after a trap. For benchmarks and checks.
    pub fn instantiate_fresh(&self) -> Result<(), CallError> {
        self.pool.instantiate_detached().map(drop)
    }

    /// The name from config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's sha256, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// What the component imports and exports.
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Its call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Its memory cap in MiB.
    pub fn memory_mb(&self) -> u32 {
        self.memory_mb
    }

    /// Its counters.
    pub fn metrics(&self) -> &PluginMetrics {
        &self.metrics
    }

    /// Instances alive now.
    pub fn live_instances(&self) -> usize {
        self.pool.live()
    }
}

fn expect_len<T>(expected: usize, got: Vec<T>) -> Result<Vec<T>, CallError> {
    if got.len() == expected {
        Ok(got)
    } else {
        Err(CallError::WrongResultCount {
            expected,
            got: got.len(),
        })
    }
}

fn compile(
    engine: &PluginEngine,
    cache: Option<&CompileCache>,
    path: &Path,
    sha256: &str,
    bytes: &[u8],
) -> Result<Component, LoadError> {
    if let Some(hit) = cache.and_then(|c| c.get(engine.engine(), sha256)) {
        tracing::debug!(path = %path.display(), "compiled plugin taken from the cache");
        return Ok(hit);
    }
    let component = Component::new(engine.engine(), bytes).map_err(|e| LoadError::Compile {
        path: path.to_owned(),
        message: format!("{e:#}"),
    })?;
    if let Some(cache) = cache {
        // A cache that cannot be written costs time on the next start, no more.
        if let Err(e) = cache.put(engine.engine(), sha256, &component) {
            tracing::warn!(error = %e, "cannot write the compile cache");
        }
    }
    Ok(component)
}
