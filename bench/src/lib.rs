//! The Switchyard load generator: opens WebSocket sessions against
//! Switchyard and its peers, publishes timestamped events at a fixed rate,
//! and reports deliveries, losses, latency percentiles, CPU and memory.
//!
//! - [`payload`]: the timestamped payloads and their scan (pure);
//! - [`procfs`]: memory and CPU of a process;
//! - [`target`]: the servers under test and their protocols;
//! - [`clients`]: the sessions;
//! - [`scenario`]: one run;
//! - [`routing`]: how fast one topic is routed, beside JetStream alone;
//! - [`publish`]: HTTP publishes answered once durable, or once queued;
//! - [`failover`]: how long a topic waits when its routing node is killed;
//! - [`profile`]: Go CPU profiles of the backplane nats-server;
//! - [`report`]: the tables.

pub mod clients;
pub mod config;
pub mod failover;
pub mod payload;
pub mod procfs;
pub mod profile;
pub mod protocol;
pub mod publish;
pub mod report;
pub mod routing;
pub mod scenario;
pub mod target;
