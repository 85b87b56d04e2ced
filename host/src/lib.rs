//! Switchyard: a WebAssembly-extensible real-time event router.
//!
//! Layout:
//! - [`config`]: typed TOML configuration with validation;
//! - [`routing`]: topics, patterns and the event envelope (pure);
//! - [`subject`]: the authenticated user behind a session, from JWT claims;
//! - [`plugin`]: the sandboxed Wasm plugin runtime;
//! - [`cli`]: the `switchyard plugin check|test` commands.

pub mod cli;
pub mod config;
pub mod plugin;
pub mod routing;
pub mod subject;
