//! Publishes routed events to the delivery subjects of their topics and
//! users through JetStream (the delivery log captures them for catch-up),
//! and settles the ingest message once JetStream has taken every delivery
//! (its acknowledgement then waits for history, off the lane). The router
//! lane waits for the deliveries before routing the next event of its
//! partition: a delivery that fails (JetStream electing a leader after a
//! server loss, say) is published again before any later event of the
//! topic, so per-topic order holds (edges drop a repeat by id).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::bus::BusStats;
use crate::bus::wire::{self, Subjects};
use crate::pipeline::settle::Settle;
use crate::routing::Routed;

/// The NATS side of the router stage.
pub struct Outlet {
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    stats: Arc<BusStats>,
}

/// Attempts at publishing one event's deliveries before leaving the event
/// unacknowledged (the next router takes it again).
const ATTEMPTS: u32 = 40;

impl Outlet {
    /// An outlet publishing through `js`.
    pub fn new(
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        stats: Arc<BusStats>,
    ) -> Arc<Self> {
        Arc::new(Outlet {
            js,
            subjects,
            stats,
        })
    }

    /// Publishes `routed` (nothing for a dropped event) until JetStream has
    /// every delivery, then settles the ingest message.
    pub async fn send(&self, routed: Option<Routed>, settle: Option<Settle>) {
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
                    if let Some(settle) = settle {
                        settle.done(false);
                    }
                    return;
                }
                tracing::warn!(id = %r.event.id, attempt, "deliveries not confirmed; publishing again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
        }
        if let Some(settle) = settle {
            settle.done(true);
        }
    }
}
