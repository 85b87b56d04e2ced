//! The relay: services publish to `<prefix>.in.<topic>`, and on a server
//! without the partition mapping those messages land in the ingest stream
//! as they are. The node holding the relay lease pulls them in order and
//! republishes each to its partition's subject without waiting for the
//! one before (asynchronous JetStream publishes are stored in order); a
//! raw message is acknowledged once its copy and every earlier copy of its
//! partition are stored. A republish carries a message id derived from the
//! raw message's sequence, so repeating it after a failure or a failover
//! is dropped by JetStream's duplicate window. One case breaks a topic's
//! order: JetStream refusing a copy (a stream leader lost under it) yet
//! storing a later one already in flight; the relay counts it
//! (`relay_reordered`). With the server mapping (see
//! `partition::server_mappings`) raw publishes never reach the relay.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::kept_lease::KeptLease;
use super::leases::{Lease, LeaseError};
use super::puller::Puller;
use crate::bus::BusStats;
use crate::bus::delivery_order::DeliveryOrder;
use crate::bus::wire::{self, Subjects};
use crate::routing::{Partition, partition_of};

/// The relay's durable consumers are `relay-t<term>`.
const CONSUMER: &str = "relay";
/// How often a running relay checks its link.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a handover waits for copies in flight and queued.
const HANDOVER_BUDGET: Duration = Duration::from_secs(5);
/// Copies in flight at most: fewer than the node's publish permits, since
/// the relay's own unpolled acknowledgements would otherwise hold every
/// permit while it waits for one (it stalled there, for good).
const COPIES_IN_FLIGHT: usize = super::ACKS_IN_FLIGHT * 4 / 5;

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
pub async fn relay(ctx: Arc<RelayContext>, lease: Lease, handover: CancellationToken) {
    ctx.stats.relay_owner.store(true, Ordering::Relaxed);
    tracing::info!(term = lease.term, "relay taken");
    let lease = KeptLease::keep(lease);
    let client = ctx.js.client();
    let mut first = true;
    let mut retry = Backoff::default();
    let lost = 'run: loop {
        // Replacing the consumer deletes any other relay's: only a holder
        // sure of its lease may do it.
        if !std::mem::take(&mut first) {
            match lease.confirm().await {
                Ok(()) => {}
                Err(LeaseError::Lost) => break 'run true,
                Err(e) => {
                    tracing::debug!(error = %e, "relay lease not confirmed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry.next()) => continue,
                        () = lease.lost() => break 'run true,
                        () = handover.cancelled() => break 'run false,
                    }
                }
            }
        }
        let link = Link::now(&client);
        let messages = tokio::select! {
            m = fresh_consumer(&ctx, lease.term()) => m,
            () = handover.cancelled() => break 'run false,
            () = lease.lost() => break 'run true,
        };
        let mut messages = match messages {
            Ok(m) => {
                retry = Backoff::default();
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume raw publishes; retrying");
                tokio::select! {
                    () = tokio::time::sleep(retry.next()) => {}
                    () = lease.lost() => break 'run true,
                    () = handover.cancelled() => break 'run false,
                }
                continue;
            }
        };
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut chains = Chains::default();
        let mut order = DeliveryOrder::default();
        let ended = loop {
            tokio::select! {
                _ = check.tick() => if !link.unbroken() { break None },
                () = lease.lost() => break Some(true),
                m = messages.next(), if chains.in_flight.len() < COPIES_IN_FLIGHT => match m {
                    Some(Ok(msg)) => {
                        let Ok((delivery, seq)) = msg.info().map(|i| (i.consumer_sequence, i.stream_sequence)) else {
                            continue;
                        };
                        if !order.follows(delivery, seq) {
                            tracing::warn!("a raw message was lost in flight; pulling afresh from the oldest unacknowledged");
                            break None;
                        }
                        if !link.unbroken() {
                            // Copies sent before the break may be lost while
                            // later ones would be stored: start over from the
                            // oldest unacknowledged, in order.
                            tracing::info!("the NATS link broke; relaying afresh from the oldest unacknowledged");
                            break None;
                        }
                        if let Some((p, copy)) = prepare(&ctx, seq, msg).await
                            && !chains.offer(&ctx, p, copy).await
                        {
                            break None;
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "relay pull hiccup"),
                    None => break None,
                },
                Some(done) = chains.in_flight.next(), if !chains.in_flight.is_empty() => {
                    if !chains.confirmed(&ctx, done).await { break None }
                }
                () = handover.cancelled() => {
                    // Stop pulling; finish what was taken.
                    let finish = async {
                        while let Some(done) = chains.in_flight.next().await {
                            if !chains.confirmed(&ctx, done).await { return }
                        }
                    };
                    let _ = tokio::time::timeout(HANDOVER_BUDGET, finish).await;
                    break Some(false);
                }
            }
        };
        // Whatever was not confirmed stays unacknowledged: it is pulled
        // again, and copies already stored are dropped as repeats.
        drop(chains);
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

/// The NATS connection a run of copies goes out on. Once it breaks, a copy
/// in flight may be lost while a later one, published on the next
/// connection, is stored: nothing more may be published in that run.
struct Link {
    client: async_nats::Client,
    stats: Arc<async_nats::Statistics>,
    connects: u64,
}

impl Link {
    fn now(client: &async_nats::Client) -> Link {
        let stats = client.statistics();
        let connects = stats.connects.load(Ordering::Relaxed);
        Link {
            client: client.clone(),
            stats,
            connects,
        }
    }

    /// Still the connection the run started on (the client counts each
    /// connection as it is made, before it sends anything on it).
    fn unbroken(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.stats.connects.load(Ordering::Relaxed) == self.connects
    }
}

/// Replaces the relay's consumer with one of this lease's term (a deposed
/// relay's acknowledgements then go nowhere), delivering from the oldest
/// unacknowledged raw message.
async fn fresh_consumer(ctx: &RelayContext, term: u64) -> Result<Puller, String> {
    let stream = ctx
        .js
        .get_stream(&ctx.ingest_stream)
        .await
        .map_err(|e| e.to_string())?;
    super::consumers::replace(
        &ctx.js,
        &stream,
        CONSUMER,
        format!("{CONSUMER}-t{term}"),
        ctx.subjects.ingest_all(),
        ctx.stats.clone(),
    )
    .await
    .map(|(messages, _)| messages)
}

/// A raw message's copy, ready to publish.
struct Copy {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    acker: Acker,
}

type Confirmed = (Partition, u64, Result<(), String>, Acker);

/// The copies of one partition in flight, in publish order.
#[derive(Default)]
struct Chain {
    /// (publish number, the raw message's acker once its copy is stored)
    copies: VecDeque<(u64, Option<Acker>)>,
}

/// Copies in flight, every partition pipelined: a copy is published
/// without waiting for the one before it (JetStream stores asynchronous
/// publishes in order), and raw messages are acknowledged in order per
/// partition, so a copy that fails leaves it and every later raw message
/// of its partition to be relayed again (repeats of stored copies are
/// dropped by their message id).
#[derive(Default)]
struct Chains {
    next: u64,
    chains: HashMap<Partition, Chain>,
    in_flight: FuturesUnordered<BoxFuture<'static, Confirmed>>,
}

impl Chains {
    /// Publishes `copy`; false if NATS refused it (the relay starts over).
    async fn offer(&mut self, ctx: &RelayContext, p: Partition, copy: Copy) -> bool {
        match ctx
            .js
            .publish_with_headers(copy.subject, copy.headers, copy.payload)
            .await
        {
            Ok(ack) => {
                let stream = ctx.ingest_stream.clone();
                let acker = copy.acker;
                let n = self.next;
                self.next += 1;
                self.chains
                    .entry(p)
                    .or_default()
                    .copies
                    .push_back((n, None));
                self.in_flight.push(Box::pin(async move {
                    let outcome = match ack.await {
                        Ok(a) if a.stream == stream => {
                            tracing::trace!(%p, seq = a.sequence, duplicate = a.duplicate, "relayed copy stored");
                            Ok(())
                        }
                        Ok(a) => Err(format!("stored in {} instead of {stream}", a.stream)),
                        Err(e) => Err(e.to_string()),
                    };
                    (p, n, outcome, acker)
                }));
                true
            }
            Err(e) => {
                ctx.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "relay publish refused; starting over");
                false
            }
        }
    }

    /// Acknowledges the raw messages of `p` whose copies, and every copy
    /// before them, are stored; false on a failure (the relay starts over).
    async fn confirmed(&mut self, ctx: &RelayContext, (p, n, outcome, acker): Confirmed) -> bool {
        let Some(chain) = self.chains.get_mut(&p) else {
            return true;
        };
        if let Err(e) = outcome {
            ctx.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
            if chain.copies.iter().any(|(m, a)| *m > n && a.is_some()) {
                // A later copy was stored before this one's retry: the two
                // events swap places in the partition.
                ctx.stats.relay_reordered.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition = %p, "a relayed copy failed after a later one was stored: they will be routed out of order");
            }
            tracing::warn!(partition = %p, error = %e, "relayed event not confirmed; starting over");
            return false;
        }
        if let Some(slot) = chain.copies.iter_mut().find(|(m, _)| *m == n) {
            slot.1 = Some(acker);
        }
        while chain.copies.front().is_some_and(|(_, a)| a.is_some()) {
            if let Some((_, Some(acker))) = chain.copies.pop_front() {
                ctx.stats.relayed.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = acker.ack().await {
                    tracing::debug!(error = %e, "raw message acknowledgement failed");
                }
            }
        }
        if chain.copies.is_empty() {
            self.chains.remove(&p);
        }
        true
    }
}

/// A raw message's copy for its partition, or `None` for a malformed one
/// (counted, acknowledged, dropped).
async fn prepare(
    ctx: &RelayContext,
    seq: u64,
    msg: async_nats::jetstream::Message,
) -> Option<(Partition, Copy)> {
    let (msg, acker) = msg.split();
    let event = match wire::decode_ingest(
        &ctx.subjects,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        &msg.payload,
        crate::routing::EventId::UNASSIGNED,
    ) {
        Ok(e) => e,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %msg.subject, error = %e, "malformed ingest message dropped");
            let _ = acker.ack().await;
            return None;
        }
    };
    let partition = partition_of(&event.topic, ctx.partitions);
    tracing::trace!(raw = seq, %partition, "relaying");
    let mut headers = wire::encode_ingest(&event);
    let epoch = ctx.epoch.load(Ordering::Relaxed);
    headers.insert(wire::H_MSG_ID, format!("sy-relay-{epoch:x}-{seq}").as_str());
    let copy = Copy {
        subject: ctx.subjects.partitioned(partition, event.topic.as_str()),
        headers,
        payload: Bytes::from(event.data),
        acker,
    };
    Some((partition, copy))
}
