//! What can go wrong loading a plugin or calling it.

use std::path::PathBuf;

use super::Interface;

/// Why a plugin could not be loaded. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not Wasm at all.
    #[error("{path} is not a WebAssembly file")]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core module rather than a component.
    #[error(
        "{path} is a core WebAssembly module, not a component: build the plugin with `cargo build --target wasm32-wasip2`"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// Cranelift refused it.
    #[error("{path} does not compile: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// A component of another world.
    #[error(
        "{path} exports none of the Switchyard interfaces (authorizer, router, transformer of switchyard:plugin@0.1.0); it exports [{exports}]. Is it built with switchyard_sdk::export_plugin!?"
    )]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    /// It needs something the sandbox does not give.
    #[error(
        "{path} imports `{import}`, which the host does not provide: plugins may import switchyard:plugin/host and WASI 0.2 (which is sandboxed: no files, network or environment)"
    )]
    UnknownImport {
        /// The file.
        path: PathBuf,
        /// The missing import.
        import: String,
    },
    /// Config names an interface the component lacks.
    #[error(
        "plugin `{name}`: config lists interface `{interface}`, which the component does not export"
    )]
    MissingInterface {
        /// The plugin.
        name: String,
        /// The interface.
        interface: Interface,
    },
    /// Linking or instantiating failed.
    #[error("plugin `{name}`: cannot be instantiated: {message}")]
    Instantiate {
        /// The plugin.
        name: String,
        /// Why.
        message: String,
    },
    /// The synthetic probe call failed.
    #[error("plugin `{name}`: the probe call of `{interface}` failed: {error}")]
    Probe {
        /// The plugin.
        name: String,
        /// The interface probed.
        interface: Interface,
        /// What happened.
        error: CallError,
    },
    /// The compile cache failed (the plugin itself may be fine).
    #[error("compile cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why one call into a plugin failed. None of these reaches a session: the
/// caller applies the plugin's error policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The epoch deadline passed.
    #[error("timed out after {timeout_ms} ms")]
    Timeout {
        /// The limit.
        timeout_ms: u64,
    },
    /// The instance asked for more memory than allowed.
    #[error("exceeded its memory limit of {memory_mb} MiB")]
    MemoryLimit {
        /// The limit.
        memory_mb: u32,
    },
    /// The guest trapped (a panic, `unreachable`, a bad access).
    #[error("trapped: {0}")]
    Trap(String),
    /// A fresh instance could not be created.
    #[error("could not instantiate: {0}")]
    Instantiate(String),
    /// The guest answered with the wrong number of results.
    #[error("returned {got} results for {expected} inputs")]
    WrongResultCount {
        /// Inputs given.
        expected: usize,
        /// Results received.
        got: usize,
    },
    /// The plugin does not export the interface called.
    #[error("does not export `{0}`")]
    NotExported(Interface),
}

impl CallError {
    /// A short label for logs and metrics: which limit was hit.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
            CallError::WrongResultCount { .. } => "bad_result",
            CallError::NotExported(_) => "not_exported",
        }
    }
}
