//! The relay: services publish to `<prefix>.in.<topic>`, and on a server
//! without the partition mapping those messages land in the ingest stream
//! as they are. The node holding the relay lease pulls them in order and
//! republishes each to its partition's subject, pipelined (JetStream
//! confirms in the background; the raw message is acknowledged once its
//! copy is stored). A republish carries a message id derived from the raw
//! message's sequence, so repeating it after a failure or a failover is
//! dropped by JetStream's duplicate window. With the server mapping (see
//! `partition::server_mappings`) raw publishes never reach the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::leases::Lease;
use crate::bus::BusStats;
use crate::bus::wire::{self, Subjects};
use crate::routing::partition_of;

/// The relay's durable consumer.
pub const CONSUMER: &str = "relay";
/// Republishes awaiting JetStream's confirmation.
const IN_FLIGHT: usize = 4096;

/// What the relay needs.
#[allow(missing_docs)]
pub struct RelayContext {
    pub js: async_nats::jetstream::Context,
    pub ingest_stream: String,
    pub subjects: Subjects,
    pub epoch: Arc<AtomicU64>,
    pub partitions: u16,
    pub stats: Arc<BusStats>,
}

/// Relays under `lease` until `handover` or the lease is lost.
pub async fn relay(ctx: Arc<RelayContext>, mut lease: Lease, handover: CancellationToken) {
    ctx.stats.relay_owner.store(true, Ordering::Relaxed);
    tracing::info!(term = lease.term, "relay taken");
    let mut renew = tokio::time::interval(lease.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let lost = 'run: loop {
        let links = ctx.stats.disconnects.load(Ordering::Relaxed);
        let messages = tokio::select! {
            m = fresh_consumer(&ctx) => m,
            () = handover.cancelled() => break 'run false,
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume raw publishes; retrying");
                tokio::select! {
                    _ = renew.tick() => if lease.renew().await.is_err() { break 'run true },
                    () = handover.cancelled() => break 'run false,
                }
                continue;
            }
        };
        let broken = CancellationToken::new();
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let confirming = tokio::spawn(confirm(rx, ctx.clone(), broken.clone()));
        let ended = loop {
            tokio::select! {
                _ = renew.tick() => {
                    if lease.renew().await.is_err() { break Some(true) }
                    if ctx.stats.disconnects.load(Ordering::Relaxed) != links { break None }
                }
                m = messages.next() => match m {
                    Some(Ok(msg)) => {
                        if !republish(&ctx, msg, &tx).await { break None }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "relay pull hiccup"),
                    None => break None,
                },
                () = broken.cancelled() => break None,
                () = handover.cancelled() => break Some(false),
            }
        };
        drop(tx);
        let _ = confirming.await;
        if let Some(lost) = ended {
            break 'run lost;
        }
    };
    ctx.stats.relay_owner.store(false, Ordering::Relaxed);
    if lost {
        ctx.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("relay lease lost");
    } else {
        lease.release().await;
        ctx.stats.leases_released.fetch_add(1, Ordering::Relaxed);
        tracing::info!("relay handed over");
    }
}

async fn fresh_consumer(ctx: &RelayContext) -> Result<pull::Stream, String> {
    let stream = ctx
        .js
        .get_stream(&ctx.ingest_stream)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.delete_consumer(CONSUMER).await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            filter_subject: ctx.subjects.ingest_all(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer
        .stream()
        .max_messages_per_batch(512)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Republishes one raw message to its partition; false if NATS refused
/// (the relay starts over from the oldest unacknowledged).
async fn republish(
    ctx: &RelayContext,
    msg: async_nats::jetstream::Message,
    confirm: &mpsc::Sender<(PublishAckFuture, Acker)>,
) -> bool {
    let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
        return true;
    };
    let (msg, acker) = msg.split();
    let event = match wire::decode_ingest(
        &ctx.subjects,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        &msg.payload,
        String::new(),
    ) {
        Ok(e) => e,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %msg.subject, error = %e, "malformed ingest message dropped");
            let _ = acker.ack().await;
            return true;
        }
    };
    let partition = partition_of(&event.topic, ctx.partitions);
    let mut headers = wire::encode_ingest(&event);
    let epoch = ctx.epoch.load(Ordering::Relaxed);
    headers.insert(wire::H_MSG_ID, format!("sy-relay-{epoch:x}-{seq}").as_str());
    let subject = ctx.subjects.partitioned(partition, event.topic.as_str());
    match ctx
        .js
        .publish_with_headers(subject, headers, Bytes::from(event.data))
        .await
    {
        Ok(ack) => confirm.send((ack, acker)).await.is_ok(),
        Err(e) => {
            ctx.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "relay publish refused; starting over");
            false
        }
    }
}

/// Acknowledges raw messages, in order, once their copies are stored.
async fn confirm(
    mut rx: mpsc::Receiver<(PublishAckFuture, Acker)>,
    ctx: Arc<RelayContext>,
    broken: CancellationToken,
) {
    while let Some((ack, acker)) = rx.recv().await {
        if broken.is_cancelled() {
            // Left unacknowledged: the relay pulls them again.
            continue;
        }
        match ack.await {
            Ok(a) if a.stream == ctx.ingest_stream => {
                ctx.stats.relayed.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = acker.ack().await {
                    tracing::debug!(error = %e, "raw message acknowledgement failed");
                }
            }
            Ok(a) => {
                ctx.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(stream = %a.stream, "a relayed event was stored outside the ingest stream");
                broken.cancel();
            }
            Err(e) => {
                ctx.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "relayed event not confirmed; starting over");
                broken.cancel();
            }
        }
    }
}
