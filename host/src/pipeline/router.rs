//! The router stage: asks the matching routers where each event goes, once
//! per event, and hands the result to its [`Outlet`]: this node's edge
//! (local bus), or a transport to the nodes of the recipients (a cluster).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::durable::Ack;
use super::held::{HeldQueue, Out, Ready};
use super::{Edge, EventStats, LANE_DEPTH, PublishError};
use crate::executor::PluginExecutor;
use crate::plugin::{Interface, PluginSet, RouteOutcome};
use crate::routing::{Event, EventId, Origin, Routed};
use crate::store::history::{History, Record};

pub use super::settle::Settle;

/// An event to route, with what settles it on the bus once its deliveries
/// are out.
pub struct Job {
    /// The event, its id assigned.
    pub event: Event,
    /// Settles the ingest message; `None` on the local bus.
    pub settle: Option<Settle>,
    /// Tells the publisher once the event is durable (the local bus); the
    /// history writer settles it, or the lane when the event joins no
    /// stream.
    pub ack: Option<Ack>,
    /// When the bus stored it (ns), 0 on the local bus.
    pub stamp: u64,
    /// Its partition and lease term: a partition's events keep their order
    /// because they go through one lane.
    pub origin: Origin,
}

/// What a lane takes. A job is not boxed: lanes carry one per event,
/// barriers are rare.
#[allow(clippy::large_enum_variant)]
enum Work {
    Job(Job),
    /// Answered once the lane has handled every job before it.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Where routed events go once routed, in the order of their lane.
pub trait Outlet: Send + Sync + 'static {
    /// Sends `routed` on (`None`: a router dropped the event), then settles
    /// its ingest message with `settle`: delivered, or not (it is routed
    /// again).
    fn send(&self, routed: Option<Routed>, settle: Option<Settle>) -> BoxFuture<'_, ()>;
}

/// The local bus: routed events go straight to this node's sessions.
impl Outlet for Edge {
    fn send(&self, routed: Option<Routed>, settle: Option<Settle>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(r) = routed {
                self.submit(r).await;
            }
            if let Some(settle) = settle {
                settle.done(true);
            }
        })
    }
}

/// The router stage.
pub struct Router {
    lanes: Vec<mpsc::Sender<Work>>,
    tasks: TaskTracker,
    history: Option<Arc<History>>,
}

/// The lane of `lanes` that routes `partition`: a partition always goes
/// through one lane, which keeps its order.
pub fn lane_of(partition: crate::routing::Partition, lanes: usize) -> usize {
    usize::from(partition.0) % lanes.max(1)
}

impl Router {
    /// Starts `lanes` lane tasks; they stop taking jobs once `stop` is
    /// cancelled and finish the ones they hold.
    pub fn start(
        lanes: usize,
        executor: Arc<PluginExecutor>,
        outlet: Arc<dyn Outlet>,
        stats: Arc<EventStats>,
        history: Option<Arc<History>>,
        stop: CancellationToken,
    ) -> Self {
        let tasks = TaskTracker::new();
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_DEPTH);
                let lane = Lane {
                    executor: executor.clone(),
                    outlet: outlet.clone(),
                    stats: stats.clone(),
                    history: history.clone(),
                };
                tasks.spawn(lane.run(rx, stop.clone()));
                tx
            })
            .collect();
        tasks.close();
        Router {
            lanes: senders,
            tasks,
            history,
        }
    }

    fn lane(&self, job: &Job) -> &mpsc::Sender<Work> {
        &self.lanes[lane_of(job.origin.partition, self.lanes.len())]
    }

    /// Queues a job without waiting: a full lane is the caller's to handle.
    pub fn try_submit(&self, job: Job) -> Result<(), PublishError> {
        self.lane(&job)
            .try_send(Work::Job(job))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PublishError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => PublishError::Stopped,
            })
    }

    /// Queues a job, waiting for room.
    pub async fn submit(&self, job: Job) -> Result<(), PublishError> {
        self.lane(&job)
            .send(Work::Job(job))
            .await
            .map_err(|_| PublishError::Stopped)
    }

    /// Completes once every job submitted before the call has been handled
    /// (routed, recorded for history, handed to the outlet, once durable
    /// where it is held for that), or the lanes
    /// have stopped.
    pub async fn barrier(&self) {
        let mut waits = Vec::with_capacity(self.lanes.len());
        let mut closing = false;
        for lane in &self.lanes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if lane.send(Work::Barrier(tx)).await.is_ok() {
                waits.push(rx);
            } else {
                closing = true;
            }
        }
        for w in waits {
            let _ = w.await;
        }
        if closing {
            // A closed lane still finishes what it had queued.
            self.tasks.wait().await;
        }
    }

    /// Completes once every lane has finished (after the stop token), and
    /// the history they wrote is in the store.
    pub async fn drained(&self) {
        self.tasks.wait().await;
        if let Some(h) = &self.history {
            h.flush_and_stop().await;
        }
    }

    /// Tells history that `id` was handled without being routed (a
    /// malformed ingest message).
    pub async fn skipped(&self, id: EventId) {
        if let Some(h) = &self.history {
            h.record(Record::Skipped(id)).await;
        }
    }
}

struct Lane {
    executor: Arc<PluginExecutor>,
    outlet: Arc<dyn Outlet>,
    stats: Arc<EventStats>,
    history: Option<Arc<History>>,
}

/// What woke a lane: lived for one turn of the loop, so not boxed.
#[allow(clippy::large_enum_variant)]
enum Step {
    Work(Option<Work>),
    Settled,
    Stop,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Work>, stop: CancellationToken) {
        let mut closing = false;
        let mut held = HeldQueue::default();
        loop {
            let step = tokio::select! {
                () = held.head_settled(), if held.head_waits() => Step::Settled,
                w = rx.recv(), if held.len() < LANE_DEPTH => Step::Work(w),
                // Take no more, but finish what was accepted: those events
                // already have ids.
                () = stop.cancelled(), if !closing => Step::Stop,
                else => Step::Work(None),
            };
            match step {
                Step::Settled => {}
                Step::Stop => {
                    rx.close();
                    closing = true;
                }
                Step::Work(None) => break,
                Step::Work(Some(Work::Barrier(done))) => {
                    if let Err(done) = held.push_barrier(done) {
                        let _ = done.send(());
                    }
                }
                Step::Work(Some(Work::Job(job))) => {
                    let span =
                        tracing::debug_span!("route", id = %job.event.id, topic = %job.event.topic);
                    let out = self.handle(job).instrument(span).await;
                    if held.passes(&out) {
                        self.outlet.send(out.routed, out.settle).await;
                    } else {
                        held.push(out);
                    }
                }
            }
            self.release(&mut held).await;
        }
        while !held.is_empty() {
            held.head_settled().await;
            self.release(&mut held).await;
        }
    }

    /// Sends on what no longer waits, in order.
    async fn release(&self, held: &mut HeldQueue) {
        while let Some(ready) = held.pop_ready() {
            match ready {
                Ready::Deliver(out) => self.outlet.send(out.routed, out.settle).await,
                Ready::NotDurable(out) => {
                    if let Some(r) = &out.routed {
                        tracing::warn!(id = %r.event.id, "not delivered: the event could not be made durable");
                    }
                    self.outlet.send(None, out.settle).await;
                }
                Ready::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Routes a job and records it for history; what to send on.
    async fn handle(&self, job: Job) -> Out {
        let event_id = job.event.id;
        let event = Arc::new(job.event);
        let set = self.executor.plugins();
        let outcome = self.route(&set, &event).await;
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        let routed = match outcome {
            RouteOutcome::Drop => {
                self.stats.dropped_by_router.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("router dropped the event");
                None
            }
            RouteOutcome::AsPublished => Some(Routed {
                topics: vec![event.topic.as_str().to_owned()],
                users: event.to_users.clone(),
                event,
                stamp: job.stamp,
                origin: job.origin,
            }),
            RouteOutcome::Deliver { topics, users } => {
                tracing::debug!(?topics, ?users, "routed");
                Some(Routed {
                    event,
                    topics,
                    users,
                    stamp: job.stamp,
                    origin: job.origin,
                })
            }
        };
        // The history writer acknowledges what it keeps once committed; the
        // rest is acknowledged here, routed. An event with an idempotency
        // key is delivered only once committed: its publisher, unanswered
        // when a crash takes it back, retries it, and clients that saw it
        // live would get it again under a new id.
        let mut ack = job.ack;
        let mut durable = None;
        if let Some(h) = &self.history {
            let record = match (&routed, ack.take()) {
                (Some(r), Some(a)) if h.keeps(r) => {
                    if crate::store::history::idempotency_key(&r.event).is_some() {
                        durable = Some(a.watch());
                    }
                    Record::Acked(r.clone(), a)
                }
                (Some(r), a) => {
                    ack = a;
                    Record::Routed(r.clone())
                }
                (None, a) => {
                    ack = a;
                    Record::Skipped(event_id)
                }
            };
            h.record(record).await;
        }
        if let Some(ack) = ack {
            ack.durable();
        }
        Out {
            routed,
            settle: job.settle,
            durable,
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
}
