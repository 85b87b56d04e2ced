//! The event path: assign the id, route once, fan out to local sessions
//! with per-audience transforms, enqueue.
//!
//! Events are processed in lanes chosen by topic, one task per lane, so the
//! events of a topic are routed and delivered in the order they were
//! ingested while different topics proceed in parallel.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::executor::PluginExecutor;
use crate::hub::Hub;
use crate::plugin::{Audience, Delivery, Interface, PluginSet, RouteOutcome};
use crate::routing::Event;
use crate::session::{EventFrame, Outbound, Pushed, SessionHandle};

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The lane's queue is full: the caller should back off.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// Shutting down.
    #[error("the gateway is shutting down")]
    Stopped,
}

/// Counters of the event path.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events accepted.
    pub ingested: AtomicU64,
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
}

/// Events waiting per lane before publishers are told to back off.
const LANE_DEPTH: usize = 8192;

/// The ingest side of the gateway.
pub struct Ingest {
    lanes: Vec<mpsc::Sender<Event>>,
    lane_tasks: tokio_util::task::TaskTracker,
    epoch: u64,
    seq: AtomicU64,
    /// Counters.
    pub stats: Arc<IngestStats>,
}

impl Ingest {
    /// Starts `lanes` lane tasks on the current runtime.
    pub fn start(
        lanes: usize,
        hub: Arc<Hub>,
        executor: Arc<PluginExecutor>,
        shutdown: CancellationToken,
    ) -> Self {
        let stats = Arc::new(IngestStats::default());
        let lane_tasks = tokio_util::task::TaskTracker::new();
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_DEPTH);
                let lane = Lane {
                    hub: hub.clone(),
                    executor: executor.clone(),
                    stats: stats.clone(),
                };
                lane_tasks.spawn(lane.run(rx, shutdown.clone()));
                tx
            })
            .collect();
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        lane_tasks.close();
        Ingest {
            lanes: senders,
            lane_tasks,
            epoch,
            seq: AtomicU64::new(0),
            stats,
        }
    }

    /// Completes once every lane has finished (after the drain token).
    pub async fn drained(&self) {
        self.lane_tasks.wait().await;
    }

    /// Accepts an event: assigns its id and queues it on its topic's lane.
    pub fn publish(&self, mut event: Event) -> Result<String, IngestError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // Provisional ids: unique per node run; durable replay cursors come with the store.
        event.id = format!("{:x}-{seq}", self.epoch);
        let id = event.id.clone();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        event.topic.as_str().hash(&mut h);
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        lane.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
        })?;
        self.stats.ingested.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}

struct Lane {
    hub: Arc<Hub>,
    executor: Arc<PluginExecutor>,
    stats: Arc<IngestStats>,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let mut closing = false;
        loop {
            let event = tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                // On shutdown take no more, but finish what was accepted:
                // those events already have ids.
                () = shutdown.cancelled(), if !closing => {
                    rx.close();
                    closing = true;
                    continue;
                }
            };
            let span = tracing::debug_span!("event", id = %event.id, topic = %event.topic);
            let event = Arc::new(event);
            async {
                // One snapshot of the plugin set per event.
                let set = self.executor.plugins();
                let outcome = self.route(&set, &event).await;
                self.deliver(&set, event, outcome).await;
            }
            .instrument(span)
            .await;
        }
    }

    async fn route(&self, set: &PluginSet, event: &Arc<Event>) -> RouteOutcome {
        if !set.applies(Interface::Router, Some(&event.topic)) {
            return RouteOutcome::AsPublished;
        }
        let e = event.clone();
        match self
            .executor
            .run(move |set| set.route(std::slice::from_ref(&*e)))
            .await
        {
            Ok(mut outcomes) => outcomes.pop().unwrap_or(RouteOutcome::AsPublished),
            Err(err) => {
                tracing::warn!(error = %err, "routing unavailable; event dropped");
                RouteOutcome::Drop
            }
        }
    }

    async fn deliver(&self, set: &PluginSet, event: Arc<Event>, outcome: RouteOutcome) {
        let recipients = match &outcome {
            RouteOutcome::Drop => {
                self.stats.dropped_by_router.fetch_add(1, Ordering::Relaxed);
                return;
            }
            RouteOutcome::AsPublished => {
                let users: Vec<&str> = event.to_users.iter().map(String::as_str).collect();
                self.hub.recipients(&[event.topic.as_str()], &users)
            }
            RouteOutcome::Deliver { topics, users } => {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                let users: Vec<&str> = users.iter().map(String::as_str).collect();
                self.hub.recipients(&topics, &users)
            }
        };
        if recipients.is_empty() {
            return;
        }
        if !set.transforms(&event.topic) {
            let frame = EventFrame::new(event);
            for r in &recipients {
                self.enqueue(r, &frame);
            }
            return;
        }
        self.deliver_transformed(event, recipients).await;
    }

    /// Groups recipients by audience and asks the transformers once for all.
    async fn deliver_transformed(&self, event: Arc<Event>, recipients: Vec<Arc<SessionHandle>>) {
        let mut distinct: Vec<Arc<Audience>> = Vec::new();
        let mut index: HashMap<Arc<Audience>, usize> = HashMap::new();
        let mut of_session = Vec::with_capacity(recipients.len());
        for r in &recipients {
            let audience = r.audience.clone().unwrap_or_default();
            let i = *index.entry(audience.clone()).or_insert_with(|| {
                distinct.push(audience);
                distinct.len() - 1
            });
            of_session.push(i);
        }
        let e = event.clone();
        let deliveries = match self
            .executor
            .run(move |set| {
                let refs: Vec<&Audience> = distinct.iter().map(|a| &**a).collect();
                set.transform(&e, &refs)
            })
            .await
        {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, "transforms unavailable; event withheld");
                return;
            }
        };
        let original = EventFrame::new(event);
        let frames: Vec<Option<Arc<EventFrame>>> = deliveries
            .into_iter()
            .map(|d| match d {
                Delivery::Original => Some(original.clone()),
                Delivery::Changed(e) => Some(EventFrame::new(e)),
                Delivery::Withheld => None,
            })
            .collect();
        for (r, i) in recipients.iter().zip(of_session) {
            match &frames[i] {
                Some(frame) => self.enqueue(r, frame),
                None => {
                    self.stats.withheld.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn enqueue(&self, session: &SessionHandle, frame: &Arc<EventFrame>) {
        match session.queue.push(Outbound::Event(frame.clone())) {
            Pushed::Queued => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::DroppedNewest => {
                self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::DroppedOldest => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Overflowed => {
                self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %session.id, "slow consumer: queue full, disconnecting");
            }
            Pushed::Closed => {}
        }
    }
}
