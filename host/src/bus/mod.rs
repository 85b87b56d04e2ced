//! The bus between the routing stage and the edges: `local` (in-process,
//! one node) or `nats` (a cluster of nodes over NATS and JetStream). Both
//! carry the same messages, so a single node behaves as a cluster of one.
//!
//! The event path over NATS:
//! 1. an event is published to its partition's subject
//!    `<prefix>.ip.<partition>.<topic>` (nodes do so directly; services
//!    publish to `<prefix>.in.<topic>`, which the relay or a server mapping
//!    moves there), which the JetStream stream `<PREFIX>_IN` captures; its
//!    stream sequence is the event id;
//! 2. each partition is routed by the one node holding its lease (a key in
//!    the KV bucket `<PREFIX>_ROUTER`; partitions are spread over the live
//!    nodes): it pulls the partition in order, routes each event once and
//!    publishes it on core NATS to `<prefix>.out.t.<topic>` and
//!    `<prefix>.out.u.<user>`, each delivery naming the id its partition
//!    sent before it on that subject, then acknowledges it once history has
//!    it; a beacon per partition, `<prefix>.beacon.<partition>`, names each
//!    subject's newest id every second;
//! 3. each node subscribes to the delivery subjects of its own sessions'
//!    topics and users only, hands deliveries to its edge, and repairs a
//!    gap (a missing predecessor, a tail a beacon names, a link loss) from
//!    history before what follows it.

pub mod assign;
pub mod delivery_order;
pub mod id_blocks;
pub mod lag;
pub mod local;
pub mod nats;
pub mod positions;
pub mod recent;
pub mod recent_keys;
pub mod sent;
pub mod settled;
pub mod subjects;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BusKind, Config};
use crate::executor::PluginExecutor;
use crate::hub::{Hub, Interest};
use crate::pipeline::{EventStats, PublishError};
use crate::routing::Event;

/// The answer to a publish the bus took: its id once durable, or why not.
pub type Accepted =
    futures_util::future::BoxFuture<'static, Result<crate::routing::EventId, PublishError>>;

/// Counters of the NATS bus.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Whether the control connection is up.
    pub connected: AtomicBool,
    /// Whether the delivery connection is up.
    pub delivery_connected: AtomicBool,
    /// Partitions this node routes now.
    pub partitions_owned: AtomicI64,
    /// Whether this node relays raw publishes.
    pub relay_owner: AtomicBool,
    /// Leases taken.
    pub leases_acquired: AtomicU64,
    /// Leases handed over.
    pub leases_released: AtomicU64,
    /// Leases lost.
    pub leases_lost: AtomicU64,
    /// Raw publishes relayed to their partitions.
    pub relayed: AtomicU64,
    /// Relayed publishes not confirmed.
    pub relay_errors: AtomicU64,
    /// Relayed copies stored out of order (a refused copy after a later
    /// one was stored).
    pub relay_reordered: AtomicU64,
    /// Deliveries dropped because their partition had a later owner.
    pub fenced: AtomicU64,
    /// Cover rounds that failed.
    pub cover_failures: AtomicU64,
    /// Control connections lost.
    pub disconnects: AtomicU64,
    /// Delivery connections lost.
    pub delivery_disconnects: AtomicU64,
    /// Ingest messages that could not be read (counted, acknowledged, dropped).
    pub malformed: AtomicU64,
    /// Publishes NATS did not confirm (the caller got an error).
    pub publish_errors: AtomicU64,
    /// Publishes refused because their partition was past `bus.max_lag_ms`.
    pub lag_refusals: AtomicU64,
    /// Routed deliveries NATS did not take (the event is routed again later).
    pub delivery_errors: AtomicU64,
    /// Deliveries received from NATS.
    pub received: AtomicU64,
    /// Deliveries this node routed to its own sessions, in process.
    pub local: AtomicU64,
    /// Of those, dropped because the dispatcher was behind (repaired from
    /// history like a slow-consumer drop).
    pub local_dropped: AtomicU64,
    /// Deliveries received twice and fanned out once.
    pub duplicates: AtomicU64,
    /// Messages the NATS client dropped because this node fell behind.
    pub slow_consumer: AtomicU64,
    /// Pull requests that expired with no word from the server (nats-server
    /// 2.9 can drop one without its 408; an overlapping request covers it).
    pub pulls_dropped: AtomicU64,
    /// Gaps detected in the deliveries.
    pub gaps: AtomicU64,
    /// Deliveries repaired from history.
    pub recovered: AtomicU64,
    /// Repairs that failed (the sessions were told).
    pub recovery_errors: AtomicU64,
    /// Subjects whose sessions were told events were lost.
    pub gaps_unrepaired: AtomicU64,
    /// Delivery subjects this node subscribes to.
    pub interest_subjects: AtomicI64,
}

/// Why the bus could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No NATS server answered.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The configured URLs.
        urls: String,
        /// Why.
        reason: String,
    },
    /// A JetStream stream, consumer or bucket could not be set up.
    #[error("cannot set up JetStream {what}: {reason} (is JetStream enabled on the server?)")]
    Setup {
        /// Which object.
        what: String,
        /// Why.
        reason: String,
    },
    /// NATS is unreachable now.
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
    /// The store would not reserve the local bus's first ids.
    #[error("cannot reserve event ids in the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Nodes of one cluster keep history in stores of their own (SQLite):
    /// replays and gap repairs on one node would miss what another routed.
    #[error(
        "{reason}: every node of a NATS cluster must share one PostgreSQL store \
         (store.url = \"postgres://…\"); SQLite serves a single node only"
    )]
    LocalStore {
        /// What was found.
        reason: String,
    },
    /// The ingest stream was made for another partition count.
    #[error(
        "bus.partitions is {configured} but the ingest stream {stream} was created with {found} partitions; \
         set bus.partitions = {found}, or delete the stream to start a new epoch with {configured}"
    )]
    Partitions {
        /// The stream.
        stream: String,
        /// Configured.
        configured: u16,
        /// Stored with the stream.
        found: u16,
    },
}

/// What the bus is built from.
pub struct BusParts {
    /// Local sessions.
    pub hub: Arc<Hub>,
    /// Plugin calls.
    pub executor: Arc<PluginExecutor>,
    /// Event counters.
    pub stats: Arc<EventStats>,
    /// Cancelled when the node starts draining: stop routing new events.
    pub draining: CancellationToken,
    /// This node's id.
    pub node_id: String,
    /// The history writer, when history is kept.
    pub history: Option<Arc<crate::store::history::History>>,
    /// Where the local bus's sequence resumes: the store's newest epoch and
    /// its watermark.
    pub resume: Option<(u64, u64)>,
    /// The hub's interest changes (the NATS bus subscribes accordingly).
    pub interest: Option<mpsc::UnboundedReceiver<Interest>>,
    /// `bus.partitions`.
    pub partitions: u16,
    /// The store (gaps in the NATS fan-out are repaired from it).
    pub store: crate::store::Store,
    /// What history keeps.
    pub retention: crate::store::retention::Policy,
    /// When the local bus answers a publish.
    pub durability: local::Durability,
}

impl BusParts {
    /// What the pipeline's stages are built from.
    pub fn stage_parts(&self) -> crate::pipeline::StageParts {
        crate::pipeline::StageParts {
            hub: self.hub.clone(),
            executor: self.executor.clone(),
            stats: self.stats.clone(),
            history: self.history.clone(),
            draining: self.draining.clone(),
        }
    }
}

/// The bus of this node.
pub enum Bus {
    /// In-process.
    Local(Box<local::LocalBus>),
    /// NATS.
    Nats(Box<nats::NatsBus>),
}

/// Lanes of each pipeline stage.
pub const LANES: usize = 4;

impl Bus {
    /// Whether `config` needs the hub to report interest changes.
    pub fn wants_interest(config: &Config) -> bool {
        config.bus.kind == BusKind::Nats
    }

    /// Starts the configured bus.
    pub async fn start(config: &Config, parts: BusParts) -> Result<Self, BusError> {
        Ok(match config.bus.kind {
            BusKind::Local => Bus::Local(Box::new(local::LocalBus::start(parts).await?)),
            BusKind::Nats => Bus::Nats(Box::new(nats::NatsBus::start(config, parts).await?)),
        })
    }

    /// Takes an event in order and returns what answers it: its id once
    /// durable, or why not. A caller with more to publish goes on meanwhile.
    pub async fn submit(&self, event: Event) -> Result<Accepted, PublishError> {
        match self {
            Bus::Local(b) => b.submit(event).await,
            Bus::Nats(b) => b.submit(event).await,
        }
    }

    /// Waits until the interest changes the hub reported so far are in
    /// effect (so that an acknowledged subscribe misses nothing after it).
    pub async fn settle_interest(&self, upto: u64) {
        if let Bus::Nats(b) = self {
            b.settle_interest(upto).await;
        }
    }

    /// Users with a live session subscribed to `topic`, on every node.
    pub async fn presence(&self, topic: &str) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Local(b) => Ok(b.presence(topic)),
            Bus::Nats(b) => b.presence(topic).await,
        }
    }

    /// Session counts per node (`{ node: { total, json, stomp, sse } }`).
    pub async fn sessions(
        &self,
        hub: &Hub,
    ) -> Result<serde_json::Map<String, serde_json::Value>, BusError> {
        match self {
            Bus::Local(b) => Ok([(b.node_id().to_owned(), hub.counts())]
                .into_iter()
                .collect()),
            Bus::Nats(b) => b.sessions().await,
        }
    }

    /// The epoch of event ids assigned now.
    pub fn epoch(&self) -> u64 {
        match self {
            Bus::Local(b) => b.epoch(),
            Bus::Nats(b) => b.epoch(),
        }
    }

    /// Whether an id of sequence `seq` was ever handed out in this epoch
    /// (a cursor past every one cannot be replayed from); `None` when the
    /// bus cannot say now.
    pub async fn assigned(&self, seq: u64) -> Option<bool> {
        match self {
            Bus::Local(b) => Some(b.assigned(seq)),
            Bus::Nats(b) => b.assigned(seq).await,
        }
    }

    /// Completes once every event routed anywhere before the call is in
    /// the store (a replay reads history only then); false if that could
    /// not be made sure of in time (the replay answers with a reset).
    pub async fn cover(&self) -> bool {
        match self {
            Bus::Local(b) => {
                b.cover().await;
                true
            }
            Bus::Nats(b) => b.cover().await,
        }
    }

    /// An id up to which everything was routed, as last learnt (none yet
    /// after a start): read before a session goes live, it bounds what the
    /// session can still be owed below the newest id it is shown.
    pub fn settled(&self) -> Option<crate::routing::EventId> {
        match self {
            Bus::Local(b) => b.settled(),
            Bus::Nats(b) => b.settled(),
        }
    }

    /// Every partition's owner and routing state (`GET /admin/partitions`).
    pub async fn partitions(&self) -> Result<serde_json::Value, BusError> {
        match self {
            Bus::Local(b) => Ok(b.partitions()),
            Bus::Nats(b) => b.partitions().await,
        }
    }

    /// `Err(why)` when the bus cannot carry events now.
    pub fn ready(&self) -> Result<(), String> {
        match self {
            Bus::Local(_) => Ok(()),
            Bus::Nats(b) => b.ready(),
        }
    }

    /// The partitions this node routes, with their state (none reported
    /// on the local bus, which routes them all).
    pub fn owned(&self) -> Vec<nats::OwnedStatus> {
        match self {
            Bus::Local(_) => Vec::new(),
            Bus::Nats(b) => b.owned(),
        }
    }

    /// The NATS counters, if on NATS.
    pub fn stats(&self) -> Option<&BusStats> {
        match self {
            Bus::Local(_) => None,
            Bus::Nats(b) => Some(b.stats()),
        }
    }

    /// Live nodes, by id (this node alone on
    /// the local bus).
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Bus::Local(b) => vec![b.node_id().to_owned()],
            Bus::Nats(b) => b.nodes(),
        }
    }

    /// Finishes the event path after the drain token: routes what was
    /// accepted, delivers what arrived, within `budget`.
    pub async fn drain(&self, budget: Duration) {
        match self {
            Bus::Local(b) => b.drain(budget).await,
            Bus::Nats(b) => b.drain(budget).await,
        }
    }
}
