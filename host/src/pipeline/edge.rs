//! The edge stage: fans a routed event out to this node's sessions, asks
//! the transformers once per distinct audience, and enqueues.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{EventStats, LANE_DEPTH, lane_of};
use crate::executor::PluginExecutor;
use crate::hub::Hub;
use crate::plugin::{Audience, Delivery, PluginSet};
use crate::routing::{Event, EventId, Routed};
use crate::session::{EventFrame, Pushed, SessionHandle, StampedAudience};
use crate::store::history::{History, Record};

/// What a lane takes.
enum Work {
    /// An event to fan out.
    Deliver(Routed),
    /// Answered once everything queued before it is in session queues.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

impl Work {
    fn into_routed(self) -> Option<Routed> {
        match self {
            Work::Deliver(routed) => Some(routed),
            Work::Barrier(_) => None,
        }
    }
}

/// The edge stage.
pub struct Edge {
    lanes: Vec<mpsc::Sender<Work>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Edge {
    /// Starts `lanes` lane tasks delivering to the sessions of `hub`.
    pub fn start(
        lanes: usize,
        hub: Arc<Hub>,
        executor: Arc<PluginExecutor>,
        stats: Arc<EventStats>,
        history: Option<Arc<History>>,
    ) -> Arc<Self> {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_DEPTH);
                let lane = Lane {
                    hub: hub.clone(),
                    executor: executor.clone(),
                    stats: stats.clone(),
                    history: history.clone(),
                };
                tasks.spawn(lane.run(rx, stop.clone()));
                tx
            })
            .collect();
        tasks.close();
        Arc::new(Edge {
            lanes: senders,
            tasks,
            stop,
        })
    }

    /// Queues a routed event on its topic's lane, waiting for room (the
    /// router or the bus slows down rather than lose it).
    pub async fn submit(&self, routed: Routed) {
        let lane = &self.lanes[lane_of(routed.event.topic.as_str(), self.lanes.len())];
        if lane.send(Work::Deliver(routed)).await.is_err() {
            tracing::debug!("edge stopped; delivery discarded");
        }
    }

    /// Completes once every event submitted before the call is in its
    /// sessions' queues (or the edge has stopped): what is told to a
    /// session next follows those events.
    pub async fn barrier(&self) {
        let mut waits = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if lane.send(Work::Barrier(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Stops taking deliveries; the lanes finish what they hold.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Completes once every lane has finished (after [`Edge::close`]).
    pub async fn drained(&self) {
        self.tasks.wait().await;
    }
}

struct Lane {
    hub: Arc<Hub>,
    executor: Arc<PluginExecutor>,
    stats: Arc<EventStats>,
    /// Told which users got their events live (their inbox cursor).
    history: Option<Arc<History>>,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Work>, stop: CancellationToken) {
        let mut closing = false;
        let mut batch = Vec::with_capacity(EDGE_BATCH);
        // Only a batch with a barrier in it is split (rare: no room kept).
        let mut events = Vec::new();
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, EDGE_BATCH) => n,
                () = stop.cancelled(), if !closing => {
                    rx.close();
                    closing = true;
                    continue;
                }
            };
            if n == 0 {
                return;
            }
            let set = self.executor.plugins();
            if !batch.iter().any(|w| matches!(w, Work::Barrier(_))) {
                // Nearly always: no barrier, the batch goes out as it is.
                self.deliver(&set, batch.drain(..).filter_map(Work::into_routed))
                    .await;
                continue;
            }
            for work in batch.drain(..) {
                match work {
                    Work::Deliver(routed) => events.push(routed),
                    Work::Barrier(done) => {
                        self.deliver(&set, events.drain(..)).await;
                        let _ = done.send(());
                    }
                }
            }
            self.deliver(&set, events.drain(..)).await;
        }
    }

    /// Delivers events taken from the lane together, in order per topic:
    /// events without transformers go out at once; those with go out
    /// after one plugin call for all of them (a call per event cost more
    /// in thread hand-offs than in the transformers).
    async fn deliver(&self, set: &PluginSet, batch: impl Iterator<Item = Routed>) {
        let mut transformed: Vec<(Arc<Event>, Vec<Arc<SessionHandle>>)> = Vec::new();
        for routed in batch {
            let span =
                tracing::debug_span!("deliver", id = %routed.event.id, topic = %routed.event.topic);
            let _entered = span.enter();
            let topics: Vec<&str> = routed.topics.iter().map(String::as_str).collect();
            let users: Vec<&str> = routed.users.iter().map(String::as_str).collect();
            let recipients = self.hub.recipients(&topics, &users);
            let event = routed.event;
            if recipients.is_empty() {
                continue;
            }
            self.mark_delivered(event.id, routed.origin.partition, &routed.users);
            if set.transforms(&event.topic) {
                transformed.push((event, recipients));
                continue;
            }
            let frame = EventFrame::new(event);
            let mut tally = Tally::default();
            for r in &recipients {
                tally.add(r, r.offer(&frame));
            }
            tally.report(&self.stats);
        }
        if !transformed.is_empty() {
            let span = tracing::debug_span!("transform", events = transformed.len());
            self.deliver_transformed(transformed).instrument(span).await;
        }
    }

    /// Groups each event's recipients by audience and asks the transformers
    /// once per event and audience, all in one call on one plugin set:
    /// audiences computed by another generation (before a reload) are
    /// recomputed first, in the same call.
    async fn deliver_transformed(&self, events: Vec<(Arc<Event>, Vec<Arc<SessionHandle>>)>) {
        let asked = Arc::new(events);
        let shared = asked.clone();
        let answers = match self
            .executor
            .run(move |set| {
                shared
                    .iter()
                    .map(|(e, sessions)| transform_for(set, e, sessions))
                    .collect::<Vec<_>>()
            })
            .await
        {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, events = asked.len(), "transforms unavailable; events withheld");
                return;
            }
        };
        for ((event, recipients), (deliveries, of_session)) in asked.iter().zip(answers) {
            self.enqueue_transformed(event.clone(), recipients, deliveries, of_session);
        }
    }

    fn enqueue_transformed(
        &self,
        event: Arc<Event>,
        recipients: &[Arc<SessionHandle>],
        deliveries: Vec<Delivery>,
        of_session: Vec<usize>,
    ) {
        let original = EventFrame::new(event);
        let frames: Vec<Option<Arc<EventFrame>>> = deliveries
            .into_iter()
            .map(|d| match d {
                Delivery::Original => Some(original.clone()),
                Delivery::Changed(e) => Some(EventFrame::new(e)),
                Delivery::Withheld => None,
            })
            .collect();
        let mut tally = Tally::default();
        for (r, i) in recipients.iter().zip(of_session) {
            match &frames[i] {
                Some(frame) => tally.add(r, r.offer(frame)),
                None => tally.withheld += 1,
            }
        }
        tally.report(&self.stats);
    }

    /// Users with a session here have seen the event: it is not waiting
    /// in their inbox (whatever other nodes say; cursors only move forward).
    fn mark_delivered(&self, id: EventId, part: crate::routing::Partition, users: &[String]) {
        if users.is_empty() {
            return;
        }
        let Some(history) = &self.history else {
            return;
        };
        for user in users {
            if self.hub.has_user(user) {
                history.try_record(Record::Delivered {
                    shown: crate::store::inbox::Shown {
                        user: user.clone(),
                        part,
                    },
                    id,
                });
            }
        }
    }
}

/// What `event` becomes for each distinct audience among `sessions`, and
/// the audience index of each session.
fn transform_for(
    set: &PluginSet,
    event: &Event,
    sessions: &[Arc<SessionHandle>],
) -> (Vec<Delivery>, Vec<usize>) {
    let mut distinct: Vec<Arc<Audience>> = Vec::new();
    let mut index: HashMap<Arc<Audience>, usize> = HashMap::new();
    let of_session: Vec<usize> = sessions
        .iter()
        .map(|s| {
            let audience = audience_of(set, s);
            *index.entry(audience.clone()).or_insert_with(|| {
                distinct.push(audience);
                distinct.len() - 1
            })
        })
        .collect();
    let refs: Vec<&Audience> = distinct.iter().map(|a| &**a).collect();
    (set.transform(event, &refs), of_session)
}

/// Routed events a lane takes at once (one transformer call for all).
const EDGE_BATCH: usize = 64;

/// What one event's fan-out did, added to the shared counters once (an
/// atomic add per delivery was 8% of a fan-out's CPU).
#[derive(Default)]
struct Tally {
    delivered: u64,
    drops: u64,
    slow: u64,
    withheld: u64,
}

impl Tally {
    fn add(&mut self, session: &SessionHandle, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.delivered += 1,
            Pushed::DroppedNewest => self.drops += 1,
            Pushed::DroppedOldest => {
                self.delivered += 1;
                self.drops += 1;
            }
            Pushed::Overflowed => {
                self.drops += 1;
                self.slow += 1;
                tracing::info!(session = %session.id, "slow consumer: queue full, disconnecting");
            }
            Pushed::Closed => {}
        }
    }

    fn report(&self, stats: &EventStats) {
        for (counter, n) in [
            (&stats.delivered, self.delivered),
            (&stats.queue_drops, self.drops),
            (&stats.slow_consumers, self.slow),
            (&stats.withheld, self.withheld),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The session's audience under `set`, computed (and remembered) if the
/// session has none from this generation of plugins.
pub fn audience_of(set: &PluginSet, session: &SessionHandle) -> Arc<Audience> {
    if let Some(stamped) = session.audience.load().as_ref()
        && stamped.generation == set.generation()
    {
        return stamped.audience.clone();
    }
    let audience = Arc::new(set.audience(&session.subject));
    session.audience.store(Some(Arc::new(StampedAudience {
        generation: set.generation(),
        audience: audience.clone(),
    })));
    audience
}

/// Frames of replayed events for a session of `subject`, transformed for
/// its audience as live events are (withheld ones left out; if the
/// transformers cannot be asked, nothing is sent rather than unredacted data).
pub async fn replay_frames(
    executor: &PluginExecutor,
    subject: &crate::subject::Subject,
    events: Vec<Event>,
) -> Vec<Arc<EventFrame>> {
    let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
    let set = executor.plugins();
    if !events.iter().any(|e| set.transforms(&e.topic)) {
        return events.into_iter().map(EventFrame::new).collect();
    }
    let subject = subject.clone();
    let asked = events.clone();
    let deliveries = executor
        .run(move |set| {
            let audience = set.audience(&subject);
            asked
                .iter()
                .map(|e| {
                    if set.transforms(&e.topic) {
                        set.transform(e, &[&audience])
                            .pop()
                            .unwrap_or(Delivery::Withheld)
                    } else {
                        Delivery::Original
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
    match deliveries {
        Ok(d) => events
            .into_iter()
            .zip(d)
            .filter_map(|(e, d)| match d {
                Delivery::Original => Some(EventFrame::new(e)),
                Delivery::Changed(changed) => Some(EventFrame::new(changed)),
                Delivery::Withheld => None,
            })
            .collect(),
        Err(err) => {
            tracing::warn!(error = %err, "transforms unavailable; replay withheld");
            Vec::new()
        }
    }
}
