//! This node's subscriptions to delivery subjects, following the hub's
//! interest changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use async_nats::RequestErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::BusStats;
use crate::bus::wire::Subjects;
use crate::hub::Interest;

/// Deliveries waiting for the dispatcher.
const INBOUND: usize = 16_384;

/// What the dispatcher takes, in order.
pub enum Inbound {
    /// A delivery or a beacon from NATS.
    Message(async_nats::Message),
    /// A delivery this node routed to a subject it subscribes to, handed
    /// over in process (the delivery connection has no echo).
    Local(Local),
    /// This node, handing a partition over, vouches for what it sent last
    /// on these subscribed subjects (its closing beacon, in process).
    Closing(
        crate::routing::Origin,
        Vec<(String, crate::routing::EventId)>,
    ),
    /// A subject is no longer subscribed: its positions go (a later
    /// subscription starts afresh, not from a gap).
    Forget(String),
}

/// A delivery handed over in process: what a NATS delivery's subject and
/// headers would say.
pub struct Local {
    /// The delivery subject.
    pub subject: String,
    /// The routed event.
    pub routed: crate::routing::Routed,
    /// The id its partition sent before it on the subject.
    pub prev: Option<crate::routing::EventId>,
}

/// Subscribes and unsubscribes as the hub's interest changes. After each
/// batch of changes it makes a round trip (so the server has them) and publishes how
/// many changes it has applied.
#[allow(missing_docs)]
pub struct InterestManager {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub inbound: mpsc::Sender<Inbound>,
    pub applied: watch::Sender<u64>,
    pub stats: Arc<BusStats>,
    /// The subjects subscribed, for the repair after a link loss.
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
                    if self.inbound.send(Inbound::Forget(subject)).await.is_err() {
                        break;
                    }
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
            // A flush only empties the client's buffer: a request the
            // server answers (with "no responders") comes back once it has
            // handled everything sent before it, the subscriptions too.
            if let Err(e) = self
                .client
                .request(self.subjects.sync(), Bytes::new())
                .await
                && e.kind() != RequestErrorKind::NoResponders
            {
                tracing::debug!(error = %e, "round trip after subscribing failed");
            }
            let _ = self.applied.send(applied);
        }
        for task in subs.values() {
            task.abort();
        }
    }
}

/// Moves a subscription's messages into the dispatcher's channel.
pub async fn forward(mut sub: async_nats::Subscriber, inbound: mpsc::Sender<Inbound>) {
    while let Some(m) = sub.next().await {
        if inbound.send(Inbound::Message(m)).await.is_err() {
            return;
        }
    }
}

/// The channel between the subscriptions and the dispatcher.
pub fn inbound() -> (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>) {
    mpsc::channel(INBOUND)
}
