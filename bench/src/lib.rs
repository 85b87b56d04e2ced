//! The Switchyard load generator: opens WebSocket sessions against
//! Switchyard and its peers, publishes timestamped events at a fixed rate,
//! and reports deliveries, losses, latency percentiles, CPU and memory.
//!
//! - [`payload`]: the timestamped payloads and their scan (pure);
//! - [`procfs`]: memory and CPU of a process;
//! - [`target`]: the servers under test and their protocols;
//! - [`clients`]: the sessions;
//! - [`scenario`]: one run;
//! - [`report`]: the tables.

pub mod clients;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod target;
