//! The dispatcher: decodes deliveries and beacons, checks each against the
//! position of its (subject, partition), drops repeats and deposed
//! owners' deliveries, repairs gaps from history before handing on what
//! follows them, and hands deliveries to the edge.

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
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(l) = link.recv() => match l {
                    Link::Down(at) => { down_since.get_or_insert(at); }
                    Link::Up => {
                        if let Some(at) = down_since.take() {
                            self.after_loss(at, &mut st).await;
                        }
                    }
                    Link::Dropped(at) => {
                        if down_since.is_none() {
                            self.after_loss(at, &mut st).await;
                        }
                    }
                },
                // While the link is down, live deliveries wait in the channel:
                // after the reconnect the repair goes first, so that the
                // events of a topic keep their order across the gap.
                m = inbound.recv(), if down_since.is_none() => match m {
                    Some(Inbound::Message(m)) => self.handle(m, &mut st).await,
                    Some(Inbound::Forget(subject)) => st.positions.forget(&subject),
                    None => return,
                },
            }
        }
    }

    async fn handle(&self, m: async_nats::Message, st: &mut State) {
        let subject = m.subject.as_str();
        if self.subjects.is_beacon(subject) {
            return self.beacon(&m.payload, st).await;
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
        let Some(id) = EventId::parse(&routed.event.id) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let prev = wire::prev_of(m.headers.as_ref());
        let partition = routed.origin.partition;
        tracing::trace!(%id, %subject, "delivery received");
        let mut repaired = false;
        loop {
            match st
                .positions
                .offer(subject, routed.origin, id, routed.stamp, prev)
            {
                Verdict::Deliver => return self.hand_on(routed, st).await,
                Verdict::Repeat => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Verdict::Fenced => {
                    self.stats.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%id, %partition, term = routed.origin.term, "delivery from a deposed owner dropped");
                    return;
                }
                Verdict::Gap { after } => {
                    let want = prev.unwrap_or(id);
                    if repaired {
                        // The repair told the sessions what it could not
                        // bring; go on from what was sent.
                        st.positions.advance(subject, partition, want);
                        continue;
                    }
                    tracing::info!(%subject, %partition, %after, %want, "gap in deliveries; repairing from history");
                    let gap = Gap {
                        subject: subject.to_owned(),
                        after,
                        want,
                    };
                    let out = self
                        .repairer
                        .gaps(partition, vec![gap], &mut st.positions)
                        .await;
                    self.apply(out).await;
                    repaired = true;
                }
            }
        }
    }

    async fn beacon(&self, payload: &[u8], st: &mut State) {
        let Ok(b) = serde_json::from_slice::<Beacon>(payload) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let newest: Vec<(String, EventId)> = b
            .last
            .iter()
            .filter_map(|(s, id)| Some((s.clone(), EventId::parse(id)?)))
            .collect();
        let lost = st.positions.beacon(b.origin(), &newest);
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
        tracing::info!(partition = %b.origin().partition, subjects = gaps.len(), "lost deliveries named by a beacon; repairing from history");
        let out = self
            .repairer
            .gaps(b.origin().partition, gaps, &mut st.positions)
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
        for subject in &out.lost {
            let sessions = match self.subjects.target(subject) {
                Some(Target::Topic(t)) => self.hub.recipients(&[t.as_str()], &[]),
                Some(Target::User(u)) => self.hub.recipients(&[], &[u.as_str()]),
                None => Vec::new(),
            };
            for s in sessions {
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
        if st
            .recent
            .first_time((routed.event.id.as_str(), routed.stamp))
        {
            self.edge.submit(routed).await;
        } else {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}
