//! The dispatcher: decodes deliveries and beacons from NATS, takes this
//! node's own deliveries in process, checks each against the position of
//! its (subject, partition), drops repeats and deposed owners'
//! deliveries, repairs gaps from history before handing on what follows
//! them, and hands deliveries to the edge.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::interest::Inbound;
use super::repair::{Gap, Outcome, Repairer};
use crate::bus::BusStats;
use crate::bus::positions::{Positions, Verdict};
use crate::bus::recent::RecentIds;
use crate::bus::wire::{self, Beacon, Subjects, Target};
use crate::hub::Hub;
use crate::pipeline::Edge;
use crate::routing::{EventId, Routed};

/// Deliveries waiting past which beacons are not judged.
const TRUST_BEACONS_UNDER: usize = 256;
/// Event ids remembered to hand an event reaching this node on several
/// subjects (a topic and a user) to the edge once; repeats on one subject
/// are told by position.
const RECENT: usize = 1 << 16;

/// A change of the NATS connection, from the client's event callback.
#[derive(Debug, Clone, Copy)]
pub enum Link {
    /// Lost at this time.
    Down(SystemTime),
    /// Back (subscriptions restored).
    Up,
    /// The client dropped deliveries at this time (a slow consumer).
    Dropped(SystemTime),
}

/// The dispatcher of one node.
#[allow(missing_docs)]
pub struct Dispatcher {
    pub subjects: Subjects,
    pub subscribed: Arc<RwLock<HashSet<String>>>,
    pub edge: Arc<Edge>,
    pub hub: Arc<Hub>,
    pub stats: Arc<BusStats>,
    pub repairer: Repairer,
}

struct State {
    positions: Positions,
    recent: RecentIds,
}

impl Dispatcher {
    /// Runs until the subscriptions are gone or `stop`.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut link: mpsc::UnboundedReceiver<Link>,
        stop: CancellationToken,
    ) {
        let mut st = State {
            positions: Positions::default(),
            recent: RecentIds::new(RECENT),
        };
        let mut down_since: Option<SystemTime> = None;
        // When the last repair after a loss began: a drop noticed before it
        // is covered by it (async-nats reports one per dropped message).
        let mut repaired_from: Option<SystemTime> = None;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(first) = link.recv() => {
                    let mut dropped: Option<SystemTime> = None;
                    let mut up = false;
                    let mut next = Some(first);
                    while let Some(l) = next {
                        match l {
                            Link::Down(at) => { down_since.get_or_insert(at); }
                            Link::Up => up = true,
                            Link::Dropped(at) => {
                                if repaired_from.is_none_or(|r| at > r) {
                                    dropped = Some(dropped.map_or(at, |d| d.min(at)));
                                }
                            }
                        }
                        next = link.try_recv().ok();
                    }
                    let lost_at = match (up, down_since) {
                        (true, Some(at)) => {
                            down_since = None;
                            Some(dropped.map_or(at, |d| d.min(at)))
                        }
                        (_, None) => dropped,
                        (false, Some(_)) => None,
                    };
                    if let Some(at) = lost_at {
                        repaired_from = Some(SystemTime::now());
                        self.after_loss(at, &mut st).await;
                    }
                }
                // While the link is down, live deliveries wait in the channel:
                // after the reconnect the repair goes first, so that the
                // events of a topic keep their order across the gap.
                m = inbound.recv(), if down_since.is_none() => match m {
                    Some(Inbound::Message(m)) => {
                        // Behind by more than a beacon period, beacons would
                        // overtake the deliveries they name.
                        let behind = inbound.len() > TRUST_BEACONS_UNDER;
                        self.handle(m, behind, &mut st).await
                    }
                    Some(Inbound::Local(l)) => self.check(&l.subject, l.routed, l.prev, &mut st).await,
                    Some(Inbound::Closing(origin, last)) => st.positions.closing(origin, &last),
                    Some(Inbound::Forget(subject)) => st.positions.forget(&subject),
                    None => return,
                },
            }
        }
    }

    async fn handle(&self, m: async_nats::Message, behind: bool, st: &mut State) {
        let subject = m.subject.as_str();
        if self.subjects.is_beacon(subject) {
            return self.beacon(&m.payload, behind, st).await;
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let routed = match wire::decode_routed(m.headers.as_ref(), &m.payload) {
            Ok(r) => r,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%subject, error = %e, "malformed delivery dropped");
                return;
            }
        };
        let prev = wire::prev_of(m.headers.as_ref());
        self.check(subject, routed, prev, st).await;
    }

    /// Checks a delivery on `subject` against its position, repairing a
    /// gap before it, and hands it on unless it is a repeat or fenced.
    async fn check(&self, subject: &str, routed: Routed, prev: Option<EventId>, st: &mut State) {
        let id = routed.event.id;
        let partition = routed.origin.partition;
        tracing::trace!(%id, %subject, "delivery received");
        self.takeover(routed.origin, st).await;
        let mut verdict = st
            .positions
            .offer(subject, routed.origin, id, routed.stamp, prev);
        if let Verdict::Gap { after } = verdict {
            let want = prev.unwrap_or(id);
            tracing::info!(%subject, %partition, %after, %want, "gap in deliveries; repairing from history");
            let gap = Gap {
                subject: subject.to_owned(),
                after,
                want,
            };
            let out = self
                .repairer
                .gaps(partition, vec![gap], &mut st.positions, true)
                .await;
            self.apply(out).await;
            // The repair brought the position to `want` (telling the
            // sessions what it could not bring): this delivery follows.
            verdict = st
                .positions
                .offer(subject, routed.origin, id, routed.stamp, prev);
        }
        match verdict {
            Verdict::Deliver => self.hand_on(routed, st).await,
            Verdict::Repeat => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Fenced => {
                self.stats.fenced.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%id, %partition, term = routed.origin.term, "delivery from a deposed owner dropped");
            }
            Verdict::Gap { after } => {
                // Not after a repair, which moves the position to `want`.
                tracing::error!(%subject, %partition, %after, %id, "gap left after a repair; delivering");
                st.positions.advance(subject, partition, id);
                self.hand_on(routed, st).await;
            }
        }
    }

    async fn beacon(&self, payload: &[u8], behind: bool, st: &mut State) {
        let Ok(b) = serde_json::from_slice::<Beacon>(payload) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Behind, a beacon may name deliveries still queued here; a closing
        // one is only ever compared at the next takeover.
        if behind && !b.closing {
            return;
        }
        let origin = b.origin();
        let newest: Vec<(String, EventId)> = b
            .last
            .into_iter()
            .filter_map(|(s, id)| Some((s, EventId::parse(&id)?)))
            .collect();
        if b.closing {
            st.positions.closing(origin, &newest);
            return;
        }
        self.takeover(origin, st).await;
        let lost = st.positions.beacon(origin, b.round, &newest);
        if lost.is_empty() {
            return;
        }
        let gaps: Vec<Gap> = lost
            .into_iter()
            .map(|(subject, after, want)| Gap {
                subject,
                after,
                want,
            })
            .collect();
        tracing::info!(partition = %origin.partition, subjects = gaps.len(), "lost deliveries named by a beacon; repairing from history");
        let out = self
            .repairer
            .gaps(origin.partition, gaps, &mut st.positions, true)
            .await;
        self.apply(out).await;
    }

    /// On the first word from a partition's new owner: the previous owner's
    /// last deliveries may have been lost with no successor to name them,
    /// so every subject it fed here is checked against history, but those
    /// it vouched for as it handed over.
    async fn takeover(&self, origin: crate::routing::Origin, st: &mut State) {
        if !st.positions.is_takeover(origin) {
            return;
        }
        let gaps: Vec<Gap> = st
            .positions
            .unvouched(origin.partition)
            .into_iter()
            .map(|(subject, last)| Gap {
                subject,
                after: last,
                want: last,
            })
            .collect();
        if gaps.is_empty() {
            return;
        }
        tracing::info!(partition = %origin.partition, term = origin.term, subjects = gaps.len(), "partition has a new owner; repairing what the previous one sent last");
        let out = self
            .repairer
            .gaps(origin.partition, gaps, &mut st.positions, false)
            .await;
        self.apply(out).await;
    }

    async fn after_loss(&self, at: SystemTime, st: &mut State) {
        let subscribed: Vec<String> = self
            .subscribed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let out = self
            .repairer
            .after_loss(at, subscribed, &mut st.positions)
            .await;
        tracing::info!(
            recovered = out.events.len(),
            lost = out.lost.len(),
            "repaired deliveries missed while the link was lost"
        );
        self.apply(out).await;
    }

    async fn apply(&self, out: Outcome) {
        let mut topics = Vec::new();
        let mut users = Vec::new();
        for subject in &out.lost {
            match self.subjects.target(subject) {
                Some(Target::Topic(t)) => topics.push(t),
                Some(Target::User(u)) => users.push(u),
                None => {}
            }
        }
        if !topics.is_empty() || !users.is_empty() {
            // What the edge holds from before the loss goes out first.
            self.edge.barrier().await;
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            // Each session once, however many of its subjects lost events.
            for s in self.hub.recipients(&topics, &users) {
                s.lost(1);
            }
        }
        // Repaired events went only to the subjects whose position they
        // pass: no other check.
        for routed in out.events {
            self.edge.submit(routed).await;
        }
    }

    async fn hand_on(&self, routed: Routed, st: &mut State) {
        // The id and the bus's storage time: a sequence reused after NATS
        // lost data is a new event, not a repeat.
        if st.recent.first_time((routed.event.id, routed.stamp)) {
            self.edge.submit(routed).await;
        } else {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}
