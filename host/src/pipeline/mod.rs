//! The event path inside a node: the [`Router`] stage asks the routing
//! plugins where an event goes (on one node per event), the [`Edge`] stage
//! fans a routed event out to this node's sessions with per-audience
//! transforms. The bus sits between the two.
//!
//! Both stages run in lanes chosen by topic, one task per lane, so the
//! events of a topic keep their order while topics proceed in parallel.

pub mod durable;
pub mod edge;
mod held;
pub mod router;
pub mod settle;
pub mod stages;

use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;

pub use edge::Edge;
pub use router::{Job, Outlet, Router};
pub use stages::{StageParts, Stages};

/// Counters of the event path.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events accepted.
    pub ingested: AtomicU64,
    /// Publishes not committed within `store.ack_timeout_ms` (answered 503).
    pub not_durable: AtomicU64,
    /// Events routed by this node.
    pub routed: AtomicU64,
    /// Events a router dropped.
    pub dropped_by_router: AtomicU64,
    /// Events enqueued to sessions (one per session).
    pub delivered: AtomicU64,
    /// Events withheld from sessions by transformers.
    pub withheld: AtomicU64,
    /// Events lost to full queues (`drop_oldest`, or the overflow that disconnects).
    pub queue_drops: AtomicU64,
    /// Sessions disconnected as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Events replayed to reconnecting clients (`since`, `Last-Event-ID`).
    pub replayed: AtomicU64,
    /// Events delivered from offline inboxes when their user connected.
    pub inbox_delivered: AtomicU64,
}

/// Events waiting per lane before publishers are told to back off.
pub const LANE_DEPTH: usize = 8192;

/// The lane of `topic` among `lanes`.
pub fn lane_of(topic: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % lanes.max(1) as u64) as usize
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The lane's queue is full: the caller should back off.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// Shutting down.
    #[error("the gateway is shutting down")]
    Stopped,
    /// NATS did not confirm it.
    #[error("the event bus is unavailable: {0}")]
    BusUnavailable(String),
    /// The store did not commit it in time: it may still be, so a retry
    /// should carry the same idempotency key.
    #[error(
        "the event was not stored within {0} ms (store.ack_timeout_ms); retry with the same idempotency key"
    )]
    NotDurable(u64),
}
