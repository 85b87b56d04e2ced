//! Warm instances of one plugin, reused across calls.
//!
//! At most `max_instances` exist at once (an admission limit in front of the
//! engine's pool, so a burst waits for a free instance instead of failing).
//! An instance that trapped or timed out is dropped, never reused: a trap
//! leaves a component instance unusable.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{authorizer, direct_authorizer, router, transformer, types};
use super::error::CallError;
use super::state::PluginState;

/// The exports a component has, looked up once per component.
pub struct ExportIndices {
    pub(super) authorizer: Option<authorizer::GuestIndices>,
    pub(super) direct: Option<direct_authorizer::GuestIndices>,
    pub(super) router: Option<router::GuestIndices>,
    pub(super) transformer: Option<transformer::GuestIndices>,
}

impl ExportIndices {
    /// Finds each interface's exports; a missing interface is `None`.
    pub fn of(pre: &InstancePre<PluginState>) -> Self {
        ExportIndices {
            authorizer: authorizer::GuestIndices::new(pre).ok(),
            direct: direct_authorizer::GuestIndices::new(pre).ok(),
            router: router::GuestIndices::new(pre).ok(),
            transformer: transformer::GuestIndices::new(pre).ok(),
        }
    }
}

/// Subject slots per instance, mirrored by the guest SDK (see `subject-ref`
/// in `wit/plugin.wit`).
pub const SUBJECT_SLOTS: usize = 64;

/// One live instance with its store and typed exports.
pub struct WarmInstance {
    pub(super) store: Store<PluginState>,
    /// The id of the subject last sent in full to each slot (0: none).
    pub(super) subjects: [u64; SUBJECT_SLOTS],
    pub(super) authorizer: Option<authorizer::Guest>,
    pub(super) direct: Option<direct_authorizer::Guest>,
    pub(super) router: Option<router::Guest>,
    pub(super) transformer: Option<transformer::Guest>,
}

impl WarmInstance {
    /// The subject as this instance should receive it: its id alone when the
    /// instance holds it already, else in full (and then remembered).
    pub(super) fn subject_ref(&mut self, subject: &types::Subject) -> types::SubjectRef {
        if subject.id == 0 {
            return types::SubjectRef::Full(subject.clone());
        }
        let slot = &mut self.subjects[(subject.id % SUBJECT_SLOTS as u64) as usize];
        if *slot == subject.id {
            types::SubjectRef::Cached(subject.id)
        } else {
            // Remembered now: if the call fails, the instance is discarded.
            *slot = subject.id;
            types::SubjectRef::Full(subject.clone())
        }
    }
}

/// What a new instance needs.
pub struct InstanceRecipe {
    pub(super) pre: InstancePre<PluginState>,
    pub(super) indices: ExportIndices,
    pub(super) name: Arc<str>,
    pub(super) config_json: Arc<str>,
    pub(super) memory_bytes: usize,
    pub(super) deadline_ticks: u64,
    /// The CPU budget of a call, and the epoch tick.
    pub(super) timeout: std::time::Duration,
    pub(super) tick: std::time::Duration,
    /// Marked while plugin code runs (the deadline ticks only then).
    pub(super) running: Arc<super::engine::Running>,
}

impl InstanceRecipe {
    fn instantiate(&self) -> Result<WarmInstance, CallError> {
        // Instantiation runs the component's start code.
        let _running = self.running.enter();
        let engine = self.pre.engine();
        let state = PluginState::new(
            self.name.clone(),
            self.config_json.clone(),
            self.memory_bytes,
        );
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        // The default deadline is 0: without this, instantiation itself traps.
        store.set_epoch_deadline(self.deadline_ticks);
        store.data_mut().budget = super::budget::Budget::start(self.timeout);
        // At an expired deadline, stop the call only if its thread ran for
        // the whole budget: waiting for a core is not running away.
        let tick = self.tick;
        store.epoch_deadline_callback(move |ctx| match ctx.data().budget.on_deadline(tick) {
            Some(more) => Ok(wasmtime::UpdateDeadline::Continue(more)),
            None => Err(wasmtime::Trap::Interrupt.into()),
        });
        let fail = |e: wasmtime::Error| CallError::Instantiate(format!("{e:#}"));
        let instance = self.pre.instantiate(&mut store).map_err(fail)?;
        let authorizer = match &self.indices.authorizer {
            Some(i) => Some(i.load(&mut store, &instance).map_err(fail)?),
            None => None,
        };
        let direct = match &self.indices.direct {
            Some(i) => Some(i.load(&mut store, &instance).map_err(fail)?),
            None => None,
        };
        let router = match &self.indices.router {
            Some(i) => Some(i.load(&mut store, &instance).map_err(fail)?),
            None => None,
        };
        let transformer = match &self.indices.transformer {
            Some(i) => Some(i.load(&mut store, &instance).map_err(fail)?),
            None => None,
        };
        Ok(WarmInstance {
            store,
            subjects: [0; SUBJECT_SLOTS],
            authorizer,
            direct,
            router,
            transformer,
        })
    }
}

struct PoolState {
    idle: Vec<WarmInstance>,
    /// Instances in existence: idle plus leased.
    live: usize,
    /// Callers blocked in `acquire`: only then is a wake-up (a syscall) needed.
    waiting: usize,
}

/// The bounded set of instances of one plugin.
pub struct InstancePool {
    recipe: InstanceRecipe,
    max_instances: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// An instance on loan; give it back with [`Lease::release`] after a
/// successful call, or drop it (after a trap) to discard it.
pub struct Lease<'a> {
    pool: &'a InstancePool,
    instance: Option<WarmInstance>,
}

impl InstancePool {
    /// A pool that creates instances from `recipe` on demand.
    pub fn new(recipe: InstanceRecipe, max_instances: usize) -> Self {
        InstancePool {
            recipe,
            max_instances: max_instances.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                live: 0,
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is two plain fields, consistent at every unlock: a
        // panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an idle instance, or creates one if under the limit, or waits.
    /// Returns whether a new instance was created, for metrics.
    pub fn acquire(&self) -> Result<(Lease<'_>, bool), CallError> {
        let mut state = self.lock();
        loop {
            if let Some(instance) = state.idle.pop() {
                return Ok((self.lease(instance), false));
            }
            if state.live < self.max_instances {
                state.live += 1;
                break;
            }
            state.waiting += 1;
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
        drop(state);
        match self.recipe.instantiate() {
            Ok(instance) => Ok((self.lease(instance), true)),
            Err(e) => {
                self.forget_one();
                Err(e)
            }
        }
    }

    fn lease(&self, instance: WarmInstance) -> Lease<'_> {
        Lease {
            pool: self,
            instance: Some(instance),
        }
    }

    fn forget_one(&self) {
        let mut state = self.lock();
        state.live -= 1;
        self.wake_one(&state);
    }

    fn wake_one(&self, state: &PoolState) {
        if state.waiting > 0 {
            self.freed.notify_one();
        }
    }

    /// A new instance outside the pool's accounting (benchmarks, checks).
    pub fn instantiate_detached(&self) -> Result<WarmInstance, CallError> {
        self.recipe.instantiate()
    }

    /// Instances currently alive (idle or in use).
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Marks plugin code of this pool as running (deadlines tick only then).
    pub fn enter(&self) -> super::engine::RunningCall<'_> {
        self.recipe.running.enter()
    }

    /// The deadline each call gets, in epoch ticks.
    pub fn deadline_ticks(&self) -> u64 {
        self.recipe.deadline_ticks
    }
}

impl Lease<'_> {
    /// The instance.
    pub fn instance(&mut self) -> &mut WarmInstance {
        // Only `release` and `drop` take it, and both consume the lease.
        self.instance
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease used after release"))
    }

    /// Returns the instance for reuse.
    pub fn release(mut self) {
        if let Some(instance) = self.instance.take() {
            let mut state = self.pool.lock();
            state.idle.push(instance);
            self.pool.wake_one(&state);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.instance.take().is_some() {
            self.pool.forget_one();
        }
    }
}
