//! Publishes routed events to the delivery subjects of their topics and
//! users through JetStream (the delivery log captures them for catch-up),
//! and acknowledges the ingest message once JetStream has taken every
//! delivery and history has it. The router lane waits for the deliveries
//! before routing the next event of its topics: a delivery that fails
//! (JetStream electing a leader after a server loss, say) is published
//! again before any later event of the topic, so per-topic order holds
//! (edges drop a repeat by id). The acknowledgement waits for history off
//! the lane: if the routing node dies first, the next router routes the
//! event again, so history never misses an accepted event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use bytes::Bytes;

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::bus::BusStats;
use crate::bus::wire::{self, Subjects};
use crate::routing::{EventId, Routed};
use crate::store::history::History;

/// The NATS side of the router stage.
pub struct Outlet {
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    stats: Arc<BusStats>,
    /// Acknowledgements waiting for history (when history is kept).
    after_history: Option<mpsc::UnboundedSender<(EventId, Acker)>>,
}

/// Attempts at publishing one event's deliveries before leaving the event
/// unacknowledged (the next router takes it again).
const ATTEMPTS: u32 = 40;

impl Outlet {
    /// An outlet publishing through `js`.
    /// With `history`, acknowledgements wait until it has written the
    /// event (a task on `tasks`, which ends once the writer has stopped).
    pub fn start(
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        stats: Arc<BusStats>,
        history: Option<&History>,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let after_history = history.map(|h| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(ack_when_written(rx, h.written()));
            tx
        });
        Arc::new(Outlet {
            js,
            subjects,
            stats,
            after_history,
        })
    }

    /// Publishes `routed` (nothing for a dropped event) until JetStream has
    /// every delivery, then acknowledges the ingest message.
    pub async fn send(&self, routed: Option<Routed>, ingest: Option<Acker>) {
        let id = routed.as_ref().and_then(|r| EventId::parse(&r.event.id));
        if let Some(r) = routed {
            let headers = wire::encode_routed(&r);
            let payload = Bytes::from(r.event.data.clone());
            let mut pending: Vec<String> = r
                .topics
                .iter()
                .map(|t| self.subjects.topic(t))
                .chain(r.users.iter().map(|u| self.subjects.user(u)))
                .collect();
            let mut attempt = 0;
            tracing::trace!(id = %r.event.id, subjects = pending.len(), "publishing deliveries");
            while !pending.is_empty() {
                let mut acks = Vec::with_capacity(pending.len());
                for subject in &pending {
                    acks.push(
                        self.js
                            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                            .await,
                    );
                }
                let mut failed = Vec::new();
                for (subject, ack) in pending.into_iter().zip(acks) {
                    let confirmed = match ack {
                        Ok(ack) => ack.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = confirmed {
                        tracing::debug!(%subject, error = %e, "delivery not confirmed");
                        failed.push(subject);
                    }
                }
                pending = failed;
                if pending.is_empty() {
                    tracing::trace!(id = %r.event.id, "deliveries confirmed");
                    break;
                }
                self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                if attempt >= ATTEMPTS {
                    tracing::error!(id = %r.event.id, "deliveries not confirmed; the event is left for the next router");
                    return;
                }
                tracing::warn!(id = %r.event.id, attempt, "deliveries not confirmed; publishing again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
        }
        let Some(ingest) = ingest else { return };
        if let (Some(tx), Some(id)) = (&self.after_history, id) {
            match tx.send((id, ingest)) {
                Ok(()) => {}
                Err(mpsc::error::SendError((_, ingest))) => ack(ingest).await,
            }
        } else {
            ack(ingest).await;
        }
    }
}

async fn ack(ingest: Acker) {
    if let Err(e) = ingest.ack().await {
        // It will be redelivered and routed again; edges drop the repeat.
        tracing::debug!(error = %e, "ingest acknowledgement failed");
    }
}

/// Acknowledges ingest messages once history has written their events (in
/// the order routed; the watermark is contiguous, so waiting in order
/// costs nothing). When the writer stops, everything it was sent is
/// written: the rest is acknowledged and the task ends.
async fn ack_when_written(
    mut rx: mpsc::UnboundedReceiver<(EventId, Acker)>,
    mut written: watch::Receiver<(u64, u64)>,
) {
    let mut writer_stopped = false;
    loop {
        let item = if writer_stopped {
            match rx.try_recv() {
                Ok(item) => item,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                item = rx.recv() => match item { Some(item) => item, None => return },
                changed = written.changed() => {
                    writer_stopped = changed.is_err();
                    continue;
                }
            }
        };
        let (id, ingest) = item;
        while !writer_stopped {
            let (epoch, upto) = *written.borrow_and_update();
            if epoch > id.epoch || (epoch == id.epoch && upto >= id.seq) {
                break;
            }
            writer_stopped = written.changed().await.is_err();
        }
        ack(ingest).await;
    }
}
