//! The in-process bus: ids from a counter, the router stage feeding this
//! node's edge directly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::id_blocks::{IdBlocks, Reserve};
use super::recent_keys::{Claim, RecentKeys};
use super::settled::{self, Settled};
use super::{Accepted, BusParts, LANES};
use crate::hub::Hub;
use crate::pipeline::durable::{self, AckWait};
use crate::pipeline::{Edge, EventStats, Job, PublishError, Router, Stages};
use crate::routing::EventId;
use crate::routing::{Event, Origin, partition_of};
use crate::store::StoreError;
use crate::store::history::idempotency_key;

/// When the local bus answers a publish (`[store]`).
#[derive(Debug, Clone, Copy)]
pub struct Durability {
    /// Answer only once durable (`store.durable_ack`).
    pub durable: bool,
    /// How long a publish waits for its commit (`store.ack_timeout_ms`).
    pub ack_timeout: Duration,
    /// How long idempotency keys are remembered (ms).
    pub key_window_ms: u64,
}

impl Durability {
    /// From `[store]`.
    pub fn from_config(store: &crate::config::StoreConfig) -> Self {
        Durability {
            durable: store.durable_ack,
            ack_timeout: Duration::from_millis(store.ack_timeout_ms),
            key_window_ms: store.idempotency_window_s.saturating_mul(1000),
        }
    }
}

/// The most idempotency keys held in memory (and read back at start).
const KEYS_HELD: usize = 100_000;

/// The local bus.
pub struct LocalBus {
    router: Arc<Router>,
    history: Option<Arc<crate::store::history::History>>,
    edge: Arc<Edge>,
    hub: Arc<Hub>,
    stats: Arc<EventStats>,
    epoch: u64,
    ids: Arc<IdBlocks>,
    keys: RecentKeys,
    durability: Durability,
    settled: Arc<Settled>,
    node_id: String,
    partitions: u16,
}

impl LocalBus {
    /// Starts both stages on the current runtime, with the first block of
    /// ids reserved.
    pub async fn start(parts: BusParts) -> Result<Self, StoreError> {
        let Stages { router, edge } =
            Stages::assemble(&parts.stage_parts(), LANES, LANES, |edge| edge.clone());
        // Ids continue the store's sequence across restarts, above every id
        // that may have been handed out; without one, a new epoch.
        let (epoch, resume_seq) = parts.resume.unwrap_or_else(|| (now_ms(), 0));
        if resume_seq > 0 {
            parts.store.skip_to(epoch, resume_seq).await?;
        }
        let store = parts.store.clone();
        let reserve: Reserve = Box::new(move |upto| {
            let store = store.clone();
            Box::pin(async move { store.reserve_ids(epoch, upto).await })
        });
        let ids = IdBlocks::start(resume_seq, reserve, parts.draining.clone()).await?;
        let durability = parts.durability;
        let keys = RecentKeys::new(durability.key_window_ms, KEYS_HELD);
        if parts.history.is_some() {
            let since = now_ms().saturating_sub(durability.key_window_ms);
            for (key, id, at) in parts.store.recent_keys(since, KEYS_HELD).await? {
                keys.known(key, id, at);
            }
        }
        let settled = Arc::new(Settled::default());
        // Nothing of the epoch past where it resumes has been given out yet.
        settled.set(EventId {
            epoch,
            seq: resume_seq,
        });
        tokio::spawn(follow_settled(
            Arc::downgrade(&router),
            ids.clone(),
            epoch,
            settled.clone(),
            parts.draining.clone(),
        ));
        Ok(LocalBus {
            router,
            history: parts.history.clone(),
            edge,
            hub: parts.hub,
            stats: parts.stats,
            epoch,
            ids,
            keys,
            durability,
            settled,
            node_id: parts.node_id,
            partitions: parts.partitions,
        })
    }

    /// Assigns the id and queues the event for routing; the answer comes,
    /// unless `store.durable_ack` is off, once it is durable. A retry with
    /// the idempotency key of a recent publish gets that one's id.
    pub async fn submit(&self, mut event: Event) -> Result<Accepted, PublishError> {
        let (ack, wait) = durable::pending();
        let id = match idempotency_key(&event) {
            Some(key) => match self
                .keys
                .claim(key, now_ms(), || (self.next_id(), wait.clone()))
            {
                Claim::Fresh(id) => id,
                Claim::Known(id, known) => {
                    return Ok(match known {
                        Some(w) => self.settled_in_time(id, w),
                        None => Box::pin(std::future::ready(Ok(id))),
                    });
                }
            },
            None => self.next_id(),
        };
        if let Err(e) = self.ids.covered(id.seq, self.durability.ack_timeout).await {
            ack.failed(e.clone());
            return Err(e);
        }
        event.id = id;
        let origin = Origin {
            partition: partition_of(&event.topic, self.partitions),
            term: 0,
        };
        // Without durable acks the publish is answered once queued.
        let durable = self.durability.durable;
        let (ack, queued) = if durable {
            (Some(ack), None)
        } else {
            (None, Some(ack))
        };
        let job = Job {
            event,
            settle: None,
            ack,
            stamp: 0,
            origin,
        };
        if let Err(e) = self.router.try_submit(job) {
            // The sequence is spent: tell history, so replays need not wait for it.
            if let Some(h) = &self.history {
                h.try_record(crate::store::history::Record::Skipped(id));
            }
            return Err(e);
        }
        self.stats.ingested.fetch_add(1, Ordering::Relaxed);
        if let Some(ack) = queued {
            ack.durable();
            return Ok(Box::pin(std::future::ready(Ok(id))));
        }
        Ok(self.settled_in_time(id, wait))
    }

    fn next_id(&self) -> EventId {
        EventId {
            epoch: self.epoch,
            seq: self.ids.next(),
        }
    }

    /// `id` once `wait` says it is durable, within `store.ack_timeout_ms`.
    fn settled_in_time(&self, id: EventId, wait: AckWait) -> Accepted {
        let within = self.durability.ack_timeout;
        let stats = self.stats.clone();
        Box::pin(async move {
            match tokio::time::timeout(within, wait.settled()).await {
                Ok(Ok(())) => Ok(id),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    stats.not_durable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%id, "publish not committed in time");
                    Err(PublishError::NotDurable(within.as_millis() as u64))
                }
            }
        })
    }

    /// Subscribers of `topic` here, which is everywhere.
    pub fn presence(&self, topic: &str) -> Vec<String> {
        self.hub.subscribers(topic)
    }

    /// Whether `seq` was handed out (before a crash too: blocks resume
    /// above every id that may have been).
    pub fn assigned(&self, seq: u64) -> bool {
        seq <= self.ids.head()
    }

    /// The epoch of the ids assigned.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Completes once every event published before the call is in the
    /// store. Lanes route concurrently, so an event still queued in a lane
    /// is neither recorded nor delivered yet: a replay read before it would
    /// miss it, and its live copy would then fall below the replay's floor.
    pub async fn cover(&self) {
        self.router.barrier().await;
        if let Some(h) = &self.history {
            h.barrier().await;
        }
    }

    /// An id up to which everything was routed.
    pub fn settled(&self) -> Option<EventId> {
        self.settled.get()
    }

    /// One node routes every partition.
    pub fn partitions(&self) -> serde_json::Value {
        let epoch = self.epoch;
        let newest = self.ids.head();
        serde_json::json!({
            "count": self.partitions,
            "owned": { self.node_id.as_str(): self.partitions },
            "relay": null,
            "local": true,
            "last_assigned": (newest > 0).then(|| crate::routing::EventId { epoch, seq: newest }.to_string()),
        })
    }

    /// This node.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Routes what was accepted, then delivers it.
    pub async fn drain(&self, budget: Duration) {
        let _ = tokio::time::timeout(budget, async {
            self.router.drained().await;
            self.edge.close();
            self.edge.drained().await;
        })
        .await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Learns the settled floor every [`settled::EVERY`]: once a barrier is
/// through the router's lanes, the last id given out a round before it (an
/// id is given out just before its event joins a lane: one read now could
/// name an event not yet queued). Ends with the router, or when the node
/// drains.
async fn follow_settled(
    router: std::sync::Weak<Router>,
    ids: Arc<IdBlocks>,
    epoch: u64,
    settled: Arc<Settled>,
    draining: CancellationToken,
) {
    let mut tick = tokio::time::interval(settled::EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = draining.cancelled() => return,
        }
        let Some(router) = router.upgrade() else {
            return;
        };
        let head = ids.head();
        router.barrier().await;
        if let Some(seq) = before.replace(head) {
            settled.set(EventId { epoch, seq });
        }
    }
}
