//! This node's subscriptions to delivery subjects, following the hub's
//! interest changes, and the dispatcher that hands deliveries to the edge.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::BusStats;
use crate::bus::recent::RecentIds;
use crate::bus::wire::{self, Subjects};
use crate::hub::Interest;
use crate::pipeline::Edge;

/// Deliveries waiting for the dispatcher.
const INBOUND: usize = 16_384;
/// Event ids remembered to drop repeats.
const RECENT: usize = 1 << 16;

/// Subscribes and unsubscribes as the hub's interest changes. After each
/// batch of changes it flushes (so the server has them) and publishes how
/// many changes it has applied.
#[allow(missing_docs)]
pub struct InterestManager {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub inbound: mpsc::Sender<async_nats::Message>,
    pub applied: watch::Sender<u64>,
    pub stats: Arc<BusStats>,
    /// The subjects subscribed, for the catch-up after a reconnect.
    pub subscribed: Arc<RwLock<HashSet<String>>>,
}

impl InterestManager {
    /// Runs until the hub is gone or `stop`.
    pub async fn run(
        self,
        mut changes: mpsc::UnboundedReceiver<Interest>,
        stop: CancellationToken,
    ) {
        let mut subs: HashMap<String, AbortHandle> = HashMap::new();
        let mut applied = 0u64;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            let n = tokio::select! {
                n = changes.recv_many(&mut batch, 1024) => n,
                () = stop.cancelled() => break,
            };
            if n == 0 {
                break;
            }
            for change in batch.drain(..) {
                let (subject, on) = match change {
                    Interest::Topic(t, on) => (self.subjects.topic(&t), on),
                    Interest::User(u, on) => (self.subjects.user(&u), on),
                };
                if on {
                    if subs.contains_key(&subject) {
                        continue;
                    }
                    match self.client.subscribe(subject.clone()).await {
                        Ok(sub) => {
                            let inbound = self.inbound.clone();
                            let task = tokio::spawn(forward(sub, inbound));
                            subs.insert(subject, task.abort_handle());
                        }
                        Err(e) => {
                            tracing::error!(%subject, error = %e, "cannot subscribe; this node will miss its deliveries");
                        }
                    }
                } else if let Some(task) = subs.remove(&subject) {
                    // Dropping the subscriber unsubscribes.
                    task.abort();
                }
            }
            {
                let mut set = self
                    .subscribed
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                set.clear();
                set.extend(subs.keys().cloned());
            }
            applied += n as u64;
            self.stats
                .interest_subjects
                .store(subs.len() as i64, Ordering::Relaxed);
            if let Err(e) = self.client.flush().await {
                tracing::debug!(error = %e, "flush after subscribing failed");
            }
            let _ = self.applied.send(applied);
        }
        for task in subs.values() {
            task.abort();
        }
    }
}

async fn forward(mut sub: async_nats::Subscriber, inbound: mpsc::Sender<async_nats::Message>) {
    while let Some(m) = sub.next().await {
        if inbound.send(m).await.is_err() {
            return;
        }
    }
}

/// The channel between the subscriptions and the dispatcher.
pub fn inbound() -> (
    mpsc::Sender<async_nats::Message>,
    mpsc::Receiver<async_nats::Message>,
) {
    mpsc::channel(INBOUND)
}

/// The newest lease term heard of each partition: a delivery of an older
/// term comes from an owner that was replaced (paused, partitioned away)
/// and may be out of order with its successor's.
#[derive(Default)]
pub struct Terms {
    newest: HashMap<crate::routing::Partition, u64>,
}

impl Terms {
    /// Whether a delivery from `origin` may pass (and remembers its term).
    pub fn admit(&mut self, origin: crate::routing::Origin) -> bool {
        let newest = self.newest.entry(origin.partition).or_insert(0);
        if origin.term < *newest {
            return false;
        }
        *newest = origin.term;
        true
    }
}

/// A change of the NATS connection, from the client's event callback.
#[derive(Debug, Clone, Copy)]
pub enum Link {
    /// Lost at this time.
    Down(SystemTime),
    /// Back (subscriptions restored).
    Up,
}

/// How far before the disconnect the catch-up starts: deliveries in flight
/// when the link broke, and clock skew between this node and NATS.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(2);
/// Tries at catching up before reporting deliveries as missing.
const CATCH_UP_ATTEMPTS: u32 = 20;
/// A catch-up that receives nothing for this long is over.
const CATCH_UP_IDLE: Duration = Duration::from_secs(2);

/// Decodes deliveries, drops repeats and hands them to the edge; after a
/// reconnect, first catches up on what the delivery log holds for this
/// node's subjects since the link broke.
#[allow(missing_docs)]
pub struct Dispatcher {
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub delivery_log: String,
    pub subscribed: Arc<RwLock<HashSet<String>>>,
    pub edge: Arc<Edge>,
    pub stats: Arc<BusStats>,
}

impl Dispatcher {
    /// Runs until the subscriptions are gone or `stop`.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<async_nats::Message>,
        mut link: mpsc::UnboundedReceiver<Link>,
        stop: CancellationToken,
    ) {
        let mut recent = RecentIds::new(RECENT);
        let mut terms = Terms::default();
        let mut down_since: Option<SystemTime> = None;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(l) = link.recv() => match l {
                    Link::Down(at) => { down_since.get_or_insert(at); }
                    Link::Up => {
                        if let Some(at) = down_since.take() {
                            self.catch_up(at, &mut recent).await;
                        }
                    }
                },
                // While the link is down, live deliveries wait in the channel:
                // after the reconnect the catch-up goes first, so that the
                // events of a topic keep their order across the gap.
                m = inbound.recv(), if down_since.is_none() => {
                    let Some(m) = m else { return };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    self.deliver(m.subject.as_str(), m.headers.as_ref(), &m.payload, &mut recent, Some(&mut terms)).await;
                }
            }
        }
    }

    /// Hands a delivery to the edge unless it is a repeat or (when `terms`
    /// is given: live deliveries, not the catch-up's stored ones, which
    /// come in publish order) from an owner its partition has since
    /// had a successor of.
    async fn deliver(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        recent: &mut RecentIds,
        terms: Option<&mut Terms>,
    ) -> bool {
        match wire::decode_routed(headers, payload) {
            Ok(routed) => {
                tracing::trace!(id = %routed.event.id, %subject, "delivery received");
                if let Some(terms) = terms
                    && !terms.admit(routed.origin)
                {
                    self.stats.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = %routed.event.id, partition = %routed.origin.partition, term = routed.origin.term, "delivery from a deposed owner dropped");
                    return false;
                }
                // The id and the bus's storage time: a sequence reused after
                // NATS lost data is a new event, not a repeat.
                if recent.first_time((routed.event.id.as_str(), routed.stamp)) {
                    self.edge.submit(routed).await;
                    return true;
                }
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%subject, error = %e, "malformed delivery dropped");
            }
        }
        false
    }

    async fn catch_up(&self, since: SystemTime, recent: &mut RecentIds) {
        let from = since.checked_sub(CATCH_UP_MARGIN).unwrap_or(since);
        // Right after a server loss JetStream may still be electing the
        // delivery log's leader: retry for a while.
        let mut last_error = String::new();
        for attempt in 0..CATCH_UP_ATTEMPTS {
            match self.replay(from, recent).await {
                Ok(n) => {
                    tracing::info!(
                        recovered = n,
                        "caught up on deliveries missed while disconnected"
                    );
                    return;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "catch-up failed; retrying");
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        self.stats.recovery_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %last_error, "cannot catch up after a reconnect: deliveries in that window may be missing");
    }

    async fn replay(&self, from: SystemTime, recent: &mut RecentIds) -> Result<u64, String> {
        // The subscriptions restored on reconnect must be in effect before
        // the end of the catch-up is fixed: a round trip to the server
        // guarantees it has them, so every delivery from here on arrives live.
        self.js.client().flush().await.map_err(|e| e.to_string())?;
        let mut stream = self
            .js
            .get_stream(&self.delivery_log)
            .await
            .map_err(|e| e.to_string())?;
        let last = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subjects.deliveries_all(),
                deliver_policy: DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from(from),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut recovered = 0;
        loop {
            let m = match tokio::time::timeout(CATCH_UP_IDLE, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) | Err(_) => break,
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
            let ours = self
                .subscribed
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(m.subject.as_str());
            if ours
                && self
                    .deliver(
                        m.subject.as_str(),
                        m.headers.as_ref(),
                        &m.payload,
                        recent,
                        None,
                    )
                    .await
            {
                recovered += 1;
                self.stats.recovered.fetch_add(1, Ordering::Relaxed);
            }
            if seq >= last {
                break;
            }
        }
        Ok(recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Origin, Partition};

    #[test]
    fn deliveries_of_a_deposed_owner_are_refused_per_partition() {
        let mut t = Terms::default();
        let o = |p, term| Origin {
            partition: Partition(p),
            term,
        };
        assert!(t.admit(o(1, 5)));
        assert!(t.admit(o(1, 5)), "the same owner keeps sending");
        assert!(t.admit(o(2, 3)), "partitions are fenced apart");
        assert!(t.admit(o(1, 9)), "a successor");
        assert!(!t.admit(o(1, 5)), "the deposed owner");
        assert!(t.admit(o(2, 3)));
    }
}
