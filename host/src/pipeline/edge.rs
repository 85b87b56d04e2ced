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

/// The edge stage.
pub struct Edge {
    lanes: Vec<mpsc::Sender<Routed>>,
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
        if lane.send(routed).await.is_err() {
            tracing::debug!("edge stopped; delivery discarded");
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
    async fn run(self, mut rx: mpsc::Receiver<Routed>, stop: CancellationToken) {
        let mut closing = false;
        loop {
            let routed = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                () = stop.cancelled(), if !closing => {
                    rx.close();
                    closing = true;
                    continue;
                }
            };
            let span =
                tracing::debug_span!("deliver", id = %routed.event.id, topic = %routed.event.topic);
            async {
                let set = self.executor.plugins();
                self.deliver(&set, routed).await;
            }
            .instrument(span)
            .await;
        }
    }

    async fn deliver(&self, set: &PluginSet, routed: Routed) {
        let topics: Vec<&str> = routed.topics.iter().map(String::as_str).collect();
        let users: Vec<&str> = routed.users.iter().map(String::as_str).collect();
        let recipients = self.hub.recipients(&topics, &users);
        let event = routed.event;
        if recipients.is_empty() {
            return;
        }
        self.mark_delivered(&event.id, &routed.users);
        if !set.transforms(&event.topic) {
            let frame = EventFrame::new(event);
            for r in &recipients {
                self.enqueue(r, &frame);
            }
            return;
        }
        self.deliver_transformed(event, recipients).await;
    }

    /// Groups recipients by audience and asks the transformers once for
    /// all, on one plugin set: audiences computed by another generation
    /// (before a reload) are recomputed first, in the same call.
    async fn deliver_transformed(&self, event: Arc<Event>, recipients: Vec<Arc<SessionHandle>>) {
        let e = event.clone();
        let sessions = recipients.clone();
        let (deliveries, of_session) = match self
            .executor
            .run(move |set| {
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
                (set.transform(&e, &refs), of_session)
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

    /// Users with a session here have seen the event: it is not waiting
    /// in their inbox (whatever other nodes say; cursors only move forward).
    fn mark_delivered(&self, id: &str, users: &[String]) {
        if users.is_empty() {
            return;
        }
        let (Some(history), Some(id)) = (&self.history, EventId::parse(id)) else {
            return;
        };
        for user in users {
            if self.hub.has_user(user) {
                history.try_record(Record::Delivered {
                    user: user.clone(),
                    id,
                });
            }
        }
    }

    fn enqueue(&self, session: &SessionHandle, frame: &Arc<EventFrame>) {
        match session.offer(frame) {
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
