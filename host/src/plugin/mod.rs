//! The sandboxed plugin runtime: wasmtime components implementing the
//! `authorizer`, `router` and `transformer` interfaces of `wit/plugin.wit`.
//!
//! - [`engine`]: the engine (pooling allocator, epoch deadlines) and linker;
//! - [`cache`]: compiled components on disk, keyed by sha256 + engine hash;
//! - [`loaded`]: one plugin: compile, check, pre-instantiate, call with limits;
//! - [`instance`]: its warm instances, bounded, replaced after a trap;
//! - [`set`]: the ordered set of plugins and the decisions the gateway uses.
//!
//! Calls are synchronous and may block for up to the plugin's `timeout_ms`:
//! make them from a thread that is not a tokio worker (WASI's sync bindings
//! also refuse to run inside a tokio runtime).

mod bindings;
pub mod budget;
pub mod cache;
mod convert;
pub mod engine;
pub mod error;
pub mod instance;
pub mod interface;
pub mod loaded;
pub mod metrics;
pub mod set;
mod state;

pub use cache::CompileCache;
pub use engine::{EngineSettings, PluginEngine};
pub use error::{CallError, LoadError};
pub use interface::{ComponentInfo, Interface};
pub use loaded::{LoadOptions, LoadedPlugin};
pub use metrics::{MetricsSnapshot, PluginMetrics};
pub use set::{Audience, AuthAction, AuthDecision, Delivery, PluginSet, RouteOutcome};

/// Component-model types, for callers that drive a [`LoadedPlugin`] directly
/// (the CLI and benchmarks).
pub mod wit {
    pub use super::bindings::{authorizer, router, transformer, types};
}
