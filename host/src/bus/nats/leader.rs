//! The router lease: one node at a time pulls the ingest stream and routes.
//!
//! The lease is a key in a KV bucket whose entries expire after
//! `bus.lease_ttl_ms`. A node creates it (only possible when absent), then
//! renews it with a compare-and-set on its revision every third of the TTL.
//! A node that cannot renew in time stops routing; a node that dies stops
//! renewing and the key expires. The new holder recreates the durable
//! consumer, so every event not yet acknowledged is delivered again from the
//! oldest, in order (edges drop what they already had, by id).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::bus::BusStats;
use crate::bus::wire::{self, Subjects};
use crate::pipeline::{Job, Router};

/// The lease key.
const KEY: &str = "router";
/// How long a pull may receive nothing while events wait before it is
/// replaced.
const STALL: Duration = Duration::from_secs(2);
/// The durable consumer of the ingest stream.
pub const CONSUMER: &str = "router";

/// What the lease loop needs.
#[allow(missing_docs)]
pub struct Leadership {
    pub js: async_nats::jetstream::Context,
    pub kv: kv::Store,
    pub ingest_stream: String,
    pub subjects: Subjects,
    pub node_id: String,
    pub ttl: Duration,
    pub router: Arc<Router>,
    pub epoch: Arc<AtomicU64>,
    pub stats: Arc<BusStats>,
    pub bus: crate::config::BusConfig,
}

enum Ended {
    /// Another node holds the lease, or it could not be renewed in time.
    Lost,
    /// The node is draining.
    Stopped,
}

impl Leadership {
    /// Competes for the lease until `stop`; routes while holding it.
    pub async fn run(mut self, stop: CancellationToken) {
        let retry = self.ttl / 4;
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self.kv.create(KEY, self.node_id.clone().into()).await {
                Ok(revision) => {
                    tracing::info!(node = %self.node_id, "router lease acquired");
                    self.stats.leader.store(true, Ordering::Relaxed);
                    let ended = self.lead(revision, &stop).await;
                    self.stats.leader.store(false, Ordering::Relaxed);
                    match ended {
                        Ended::Stopped => return,
                        Ended::Lost => tracing::warn!(node = %self.node_id, "router lease lost"),
                    }
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    // A server restarted without its memory streams (the
                    // lease bucket, the delivery log): make them again.
                    tracing::debug!(error = %e, "router lease unavailable; provisioning");
                    match super::provision(&self.js, &self.bus, &self.subjects).await {
                        Ok((epoch, kv)) => {
                            self.epoch.store(epoch, Ordering::Relaxed);
                            self.kv = kv;
                        }
                        Err(e) => tracing::debug!(error = %e, "JetStream not ready"),
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn lead(&self, mut revision: u64, stop: &CancellationToken) -> Ended {
        let mut renewed = Instant::now();
        let mut renew = tokio::time::interval(self.ttl / 3);
        renew.tick().await;
        loop {
            let links = self.stats.disconnects.load(Ordering::Relaxed);
            let mut last_message = Instant::now();
            let consumer = tokio::select! {
                c = self.fresh_consumer() => c,
                () = stop.cancelled() => return self.release(revision).await,
            };
            let mut messages = match consumer {
                Ok(m) => {
                    tracing::debug!("pulling the ingest stream");
                    Some(m)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot consume the ingest stream; retrying");
                    None
                }
            };
            // Route until the stream breaks, the lease is lost or we stop.
            loop {
                tokio::select! {
                    _ = renew.tick() => {
                        match self.kv.update(KEY, self.node_id.clone().into(), revision).await {
                            Ok(r) => { revision = r; renewed = Instant::now(); }
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ended::Lost,
                            Err(e) => {
                                tracing::warn!(error = %e, "router lease not renewed");
                                if renewed.elapsed() >= self.ttl { return Ended::Lost; }
                            }
                        }
                        // After a reconnect, pull afresh: the server may have
                        // lost the pending pull with the old connection.
                        if messages.is_none() || self.stats.disconnects.load(Ordering::Relaxed) != links { break; }
                        // A pull that receives nothing while events wait is
                        // stuck (a server restart can lose it): pull afresh.
                        if last_message.elapsed() >= STALL && self.waiting().await {
                            tracing::warn!("the ingest pull stalled with events waiting; pulling afresh");
                            break;
                        }
                    }
                    m = async { match messages.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                        match m {
                            Some(Ok(msg)) => {
                                last_message = Instant::now();
                                tracing::trace!(subject = %msg.subject, "ingest message");
                                self.take(msg).await
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "ingest stream hiccup");
                            }
                            None => {
                                tracing::debug!("ingest pull ended");
                                break;
                            }
                        }
                    }
                    () = stop.cancelled() => return self.release(revision).await,
                }
            }
        }
    }

    /// Whether events wait in the ingest stream for this router.
    async fn waiting(&self) -> bool {
        let Ok(stream) = self.js.get_stream(&self.ingest_stream).await else {
            return false;
        };
        match stream.consumer_info(CONSUMER).await {
            Ok(info) => info.num_pending > 0 || info.num_ack_pending > 0,
            Err(_) => false,
        }
    }

    /// Deletes and recreates the durable consumer so that delivery starts
    /// over from the oldest unacknowledged event.
    async fn fresh_consumer(&self) -> Result<pull::Stream, String> {
        let mut stream = self
            .js
            .get_stream(&self.ingest_stream)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        let created = info.created.unix_timestamp_nanos() / 1_000_000;
        self.epoch.store(created as u64, Ordering::Relaxed);
        let _ = stream.delete_consumer(CONSUMER).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // Short pulls with heartbeats: a pull lost with a restarted server is
        // noticed in seconds.
        consumer
            .stream()
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| e.to_string())
    }

    async fn take(&self, msg: async_nats::jetstream::Message) {
        let Ok((seq, stamp)) = msg.info().map(|i| {
            (
                i.stream_sequence,
                i.published.unix_timestamp_nanos().max(0) as u64,
            )
        }) else {
            return;
        };
        let id = format!("{:x}-{seq}", self.epoch.load(Ordering::Relaxed));
        let (msg, acker) = msg.split();
        match wire::decode_ingest(
            &self.subjects,
            msg.subject.as_str(),
            msg.headers.as_ref(),
            &msg.payload,
            id,
        ) {
            Ok(event) => {
                let job = Job {
                    event,
                    ack: Some(acker),
                    stamp,
                };
                if self.router.submit(job).await.is_err() {
                    tracing::debug!("router stopped; event left for the next router");
                }
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %msg.subject, error = %e, "malformed ingest message dropped");
                self.router
                    .skipped(crate::routing::EventId {
                        epoch: self.epoch.load(Ordering::Relaxed),
                        seq,
                    })
                    .await;
                let _ = acker.ack().await;
            }
        }
    }

    /// Hands the lease over at once rather than let it expire.
    async fn release(&self, revision: u64) -> Ended {
        let _ = self.kv.delete_expect_revision(KEY, Some(revision)).await;
        tracing::info!(node = %self.node_id, "router lease released");
        Ended::Stopped
    }
}
