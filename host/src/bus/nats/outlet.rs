//! Publishes routed events to the delivery subjects of their topics and
//! users, and acknowledges the ingest message only once JetStream has taken
//! every delivery: an event whose deliveries fail is routed again later
//! (edges drop the repeat by id).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::bus::BusStats;
use crate::bus::wire::{self, Subjects};
use crate::routing::Routed;

struct Pending {
    acks: Vec<PublishAckFuture>,
    ingest: Option<Acker>,
}

/// The NATS side of the router stage.
pub struct Outlet {
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    pending: mpsc::Sender<Pending>,
    stats: Arc<BusStats>,
}

/// Deliveries awaiting JetStream's confirmation before the ingest message
/// is acknowledged.
const PENDING: usize = 4096;

impl Outlet {
    /// An outlet publishing through `js`; its acknowledger runs until the
    /// outlet is dropped.
    pub fn start(
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        stats: Arc<BusStats>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(PENDING);
        tokio::spawn(acknowledge(rx, stats.clone()));
        Arc::new(Outlet {
            js,
            subjects,
            pending: tx,
            stats,
        })
    }

    /// Publishes `routed` (nothing for a dropped event), then settles the
    /// ingest message once JetStream confirms.
    pub async fn send(&self, routed: Option<Routed>, ingest: Option<Acker>) {
        let mut acks = Vec::new();
        if let Some(r) = routed {
            let headers = wire::encode_routed(&r);
            let payload = Bytes::from(r.event.data.clone());
            let subjects = r
                .topics
                .iter()
                .map(|t| self.subjects.topic(t))
                .chain(r.users.iter().map(|u| self.subjects.user(u)));
            for subject in subjects {
                match self
                    .js
                    .publish_with_headers(subject, headers.clone(), payload.clone())
                    .await
                {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(id = %r.event.id, error = %e, "delivery not published; the event will be routed again");
                        return;
                    }
                }
            }
        }
        let _ = self.pending.send(Pending { acks, ingest }).await;
    }
}

async fn acknowledge(mut rx: mpsc::Receiver<Pending>, stats: Arc<BusStats>) {
    while let Some(p) = rx.recv().await {
        let mut ok = true;
        for ack in p.acks {
            if let Err(e) = ack.await {
                ok = false;
                tracing::warn!(error = %e, "a delivery was not confirmed; the event will be routed again");
            }
        }
        if !ok {
            stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(ingest) = p.ingest
            && let Err(e) = ingest.ack().await
        {
            // It will be redelivered and routed again; edges drop the repeat.
            tracing::debug!(error = %e, "ingest acknowledgement failed");
        }
    }
}
