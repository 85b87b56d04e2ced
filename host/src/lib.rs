//! Switchyard: a WebAssembly-extensible real-time event router.
//!
//! Layout:
//! - [`config`]: typed TOML configuration with validation;
//! - [`routing`]: topics, patterns and the event envelope (pure);
//! - [`subject`]: the authenticated user behind a session, from JWT claims;
//! - [`plugin`]: the sandboxed Wasm plugin runtime;
//! - [`auth`]: JWTs, tickets, service and admin keys;
//! - [`executor`]: plugin calls on dedicated threads;
//! - [`hub`]: this node's sessions by topic and user;
//! - [`pipeline`]: the event path in a node (route, fan-out, transform, enqueue);
//! - [`bus`]: between nodes: in-process, or NATS and JetStream;
//! - [`session`]: sessions, their queues and the WebSocket/SSE adapters;
//! - [`gateway`], [`http`], [`server`]: shared state, routes, listener;
//! - [`limits`]: token buckets (pure); [`throttle`]: per-user and
//!   per-address limits and connection counts at the node's door;
//! - [`metrics`]: Prometheus exposition; [`admin`]: the admin API;
//! - [`reload`]: hot reload of the plugin set;
//! - [`cli`]: the `switchyard plugin check|test` commands;
//! - [`fuzzing`]: the fuzz targets (run by `fuzz/`, replayed by a test).

pub mod admin;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod error;
pub mod executor;
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod reload;
pub mod routing;
pub mod server;
pub mod session;
pub mod store;
pub mod subject;
pub mod throttle;
