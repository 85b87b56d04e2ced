//! The in-process bus: ids from a counter, the router stage feeding this
//! node's edge directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::settled::{self, Settled};
use super::{BusParts, LANES};
use crate::hub::Hub;
use crate::pipeline::{Edge, EventStats, Job, PublishError, Router, Stages};
use crate::routing::EventId;
use crate::routing::{Event, Origin, partition_of};

/// The local bus.
pub struct LocalBus {
    router: Arc<Router>,
    history: Option<Arc<crate::store::history::History>>,
    edge: Arc<Edge>,
    hub: Arc<Hub>,
    stats: Arc<EventStats>,
    epoch: u64,
    seq: Arc<AtomicU64>,
    settled: Arc<Settled>,
    node_id: String,
    partitions: u16,
}

impl LocalBus {
    /// Starts both stages on the current runtime.
    pub fn start(parts: BusParts) -> Self {
        let Stages { router, edge } =
            Stages::assemble(&parts.stage_parts(), LANES, LANES, |edge| edge.clone());
        // Ids continue the store's sequence across restarts; without one, a
        // new epoch per start tells clients that nothing can be replayed.
        let (epoch, resume_seq) = parts.resume.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            (now, 0)
        });
        let seq = Arc::new(AtomicU64::new(resume_seq));
        let settled = Arc::new(Settled::default());
        // Nothing of the epoch past where it resumes has been given out yet.
        settled.set(EventId {
            epoch,
            seq: resume_seq,
        });
        tokio::spawn(follow_settled(
            Arc::downgrade(&router),
            seq.clone(),
            epoch,
            settled.clone(),
            parts.draining.clone(),
        ));
        LocalBus {
            router,
            history: parts.history.clone(),
            edge,
            hub: parts.hub,
            stats: parts.stats,
            epoch,
            seq,
            settled,
            node_id: parts.node_id,
            partitions: parts.partitions,
        }
    }

    /// Assigns the id and queues the event for routing.
    pub fn publish(&self, mut event: Event) -> Result<EventId, PublishError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = EventId {
            epoch: self.epoch,
            seq,
        };
        event.id = id;
        let origin = Origin {
            partition: partition_of(&event.topic, self.partitions),
            term: 0,
        };
        if let Err(e) = self.router.try_submit(Job {
            event,
            settle: None,
            stamp: 0,
            origin,
        }) {
            // The sequence is spent: tell history, so replays need not wait for it.
            if let Some(h) = &self.history {
                h.try_record(crate::store::history::Record::Skipped(id));
            }
            return Err(e);
        }
        self.stats.ingested.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Subscribers of `topic` here, which is everywhere.
    pub fn presence(&self, topic: &str) -> Vec<String> {
        self.hub.subscribers(topic)
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
        let newest = self.seq.load(Ordering::Relaxed);
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

/// Learns the settled floor every [`settled::EVERY`]: once a barrier is
/// through the router's lanes, the last id given out a round before it (an
/// id is given out just before its event joins a lane: one read now could
/// name an event not yet queued). Ends with the router, or when the node
/// drains.
async fn follow_settled(
    router: std::sync::Weak<Router>,
    seq: Arc<AtomicU64>,
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
        let head = seq.load(Ordering::SeqCst);
        router.barrier().await;
        if let Some(seq) = before.replace(head) {
            settled.set(EventId { epoch, seq });
        }
    }
}
