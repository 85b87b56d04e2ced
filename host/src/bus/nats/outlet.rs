//! Publishes routed events on core NATS, to the delivery subjects of their
//! topics and users (and hands this node's own subscribers' copies to its
//! dispatcher in process), and settles the ingest message at once: nothing
//! waits per event. Each delivery names the id its partition sent before it on
//! the same subject, and a beacon per partition names each subject's
//! newest id, so an edge that missed one (a slow-consumer drop, a link
//! loss) sees the gap and repairs it from history. The acknowledgement of
//! the ingest message still waits for history (off the lane), so an owner
//! that dies routes nothing its successor cannot route again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dispatch::Link;
use super::interest::{self, Inbound};
use crate::bus::BusStats;
use crate::bus::sent::SentLog;
use crate::bus::wire::{self, Beacon, Subjects};
use crate::pipeline::settle::Settle;
use crate::routing::{EventId, Origin, Routed};

/// The router stage's outlet in a cluster: core NATS.
pub struct NatsOutlet {
    client: async_nats::Client,
    subjects: Subjects,
    stats: Arc<BusStats>,
    sent: Mutex<SentLog>,
    /// The beacon round last sent.
    round: AtomicU64,
    local: Local,
}

/// Where this node's own subscribers' deliveries go: straight to its
/// dispatcher, which checks them like any other.
pub struct Local {
    /// The delivery subjects this node subscribes to.
    pub subscribed: Arc<RwLock<HashSet<String>>>,
    /// The dispatcher's channel.
    pub inbound: mpsc::Sender<Inbound>,
    /// A full channel is reported as a drop, repaired from history.
    pub link: mpsc::UnboundedSender<Link>,
}

/// How often each partition with recent deliveries sends a beacon.
pub const BEACON_EVERY: Duration = Duration::from_secs(1);
/// A subject is named by the beacons sent within this time of its last
/// delivery: at least two, so an edge compares one beacon with the next.
const BEACON_WINDOW: Duration = Duration::from_millis(2500);
/// A subject silent this long is forgotten (its next delivery names no
/// predecessor).
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Subjects named in one beacon message.
const BEACON_CHUNK: usize = 512;

impl crate::pipeline::Outlet for NatsOutlet {
    fn send(&self, routed: Option<Routed>, settle: Option<Settle>) -> BoxFuture<'_, ()> {
        Box::pin(self.deliver(routed, settle))
    }
}

impl NatsOutlet {
    /// An outlet publishing through `client`.
    pub fn new(
        client: async_nats::Client,
        subjects: Subjects,
        stats: Arc<BusStats>,
        local: Local,
    ) -> Arc<Self> {
        Arc::new(NatsOutlet {
            client,
            subjects,
            stats,
            sent: Mutex::new(SentLog::default()),
            round: AtomicU64::new(0),
            local,
        })
    }

    /// Publishes `routed` (nothing for a dropped event), then settles the
    /// ingest message: delivered unless the connection refused a publish.
    async fn deliver(&self, routed: Option<Routed>, settle: Option<Settle>) {
        let mut delivered = true;
        if let Some(r) = routed {
            let headers = wire::encode_routed(&r);
            let payload = Bytes::from(r.event.data.clone());
            let targets: Vec<String> = r
                .topics
                .iter()
                .map(|t| self.subjects.topic(t))
                .chain(r.users.iter().map(|u| self.subjects.user(u)))
                .collect();
            let prevs: Vec<Option<EventId>> = {
                let now = Instant::now();
                let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
                targets
                    .iter()
                    .map(|s| sent.record(r.origin, s, r.event.id, now))
                    .collect()
            };
            let here: Vec<bool> = {
                let subscribed = self
                    .local
                    .subscribed
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                targets.iter().map(|s| subscribed.contains(s)).collect()
            };
            tracing::trace!(id = %r.event.id, subjects = targets.len(), "publishing deliveries");
            for ((subject, prev), here) in targets.into_iter().zip(prevs).zip(here) {
                if here {
                    self.hand_over(&subject, &r, prev);
                }
                let mut h = headers.clone();
                if let Some(prev) = prev {
                    h.insert(wire::H_PREV, prev.to_string().as_str());
                }
                if let Err(e) = self
                    .client
                    .publish_with_headers(subject, h, payload.clone())
                    .await
                {
                    // Left unacknowledged: routed again by this partition's
                    // next run.
                    tracing::warn!(id = %r.event.id, error = %e, "delivery not published");
                    self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    delivered = false;
                }
            }
        }
        if let Some(settle) = settle {
            settle.done(delivered);
        }
    }

    /// Gives this node's dispatcher its copy of a delivery. A full channel
    /// drops it, as NATS drops a slow consumer's messages, and says so: the
    /// dispatcher repairs from history, never blocking the routing lane.
    fn hand_over(&self, subject: &str, routed: &Routed, prev: Option<EventId>) {
        let local = Inbound::Local(interest::Local {
            subject: subject.to_owned(),
            routed: routed.clone(),
            prev,
        });
        match self.local.inbound.try_send(local) {
            Ok(()) => {
                self.stats.local.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.local_dropped.fetch_add(1, Ordering::Relaxed);
                let _ = self.local.link.send(Link::Dropped(SystemTime::now()));
            }
            // The dispatcher has stopped with the bus.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Sends the beacons of every partition this node sent on lately,
    /// every [`BEACON_EVERY`], until `stop`.
    pub async fn beacons(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(BEACON_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let round = self.round.fetch_add(1, Ordering::Relaxed) + 1;
            let due = self
                .sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .beacons(Instant::now(), BEACON_WINDOW, FORGET_AFTER);
            for (origin, entries) in due {
                self.beacon(origin, round, &entries, false).await;
            }
        }
    }

    /// After the last delivery of `origin`'s term, as its owner hands the
    /// partition over: names the newest id of every subject it remembers
    /// sending on, so that an edge holding all of it needs no repair when
    /// the next owner takes over. Returns once the server has it.
    pub async fn closing(&self, origin: Origin) {
        let entries = self
            .sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sent_under(origin);
        if entries.is_empty() {
            return;
        }
        let here: Vec<(String, EventId)> = {
            let subscribed = self
                .local
                .subscribed
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            entries
                .iter()
                .filter(|(s, _)| subscribed.contains(s))
                .cloned()
                .collect()
        };
        // A full channel loses only the vouching: the takeover checks
        // these subjects as it would without it.
        if !here.is_empty() {
            let _ = self.local.inbound.try_send(Inbound::Closing(origin, here));
        }
        let round = self.round.load(Ordering::Relaxed);
        self.beacon(origin, round, &entries, true).await;
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "closing beacon not flushed");
        }
    }

    async fn beacon(
        &self,
        origin: Origin,
        round: u64,
        entries: &[(String, EventId)],
        closing: bool,
    ) {
        for chunk in entries.chunks(BEACON_CHUNK) {
            let beacon = Beacon {
                p: origin.partition.0,
                term: origin.term,
                round,
                last: chunk
                    .iter()
                    .map(|(s, id)| (s.clone(), id.to_string()))
                    .collect(),
                closing,
            };
            let Ok(json) = serde_json::to_vec(&beacon) else {
                continue;
            };
            if let Err(e) = self
                .client
                .publish(self.subjects.beacon(origin.partition), json.into())
                .await
            {
                tracing::debug!(error = %e, "beacon not sent");
            }
        }
    }
}
