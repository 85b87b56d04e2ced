//! Routing one partition while this node holds its lease: replace the
//! partition's durable consumer with one of this lease's term (which shuts
//! out a previous owner's pulls and acknowledgements and redelivers,
//! oldest first, everything not yet acknowledged), pull in order, hand each event to the router stage
//! stamped with the lease's term, the lease renewed meanwhile. A handover stops
//! pulling, waits until what was taken is acknowledged, then releases the
//! lease for the next owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::kept_lease::KeptLease;
use super::leases::{Lease, LeaseError};
use super::owned::{Owned, Owning};
use super::puller::Puller;
use super::settle::{Acks, InFlight};
use crate::bus::BusStats;
use crate::bus::delivery_order::DeliveryOrder;
use crate::bus::wire::{self, Subjects};
use crate::pipeline::{Job, Router};
use crate::routing::{EventId, Origin, Partition};

/// A pull that receives nothing for this long while events wait is
/// replaced (a server restart can lose it).
const STALL: Duration = Duration::from_secs(5);
/// How often a running pull checks for a reconnect or a stall.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a handover waits for what was taken to be acknowledged before
/// releasing anyway (the next owner routes the rest again).
const HANDOVER_BUDGET: Duration = Duration::from_secs(5);

/// The durable consumer of `partition` under the lease of `term`: each
/// term its own, so that acknowledgements a deposed owner still sends go
/// to a consumer that no longer exists.
pub fn consumer_name(partition: Partition, term: u64) -> String {
    format!("{}-t{term}", partition_prefix(partition))
}

fn partition_prefix(partition: Partition) -> String {
    format!("p{partition}")
}

/// What every partition owner of a node shares.
#[allow(missing_docs)]
pub struct OwnerContext {
    pub js: async_nats::jetstream::Context,
    pub ingest_stream: String,
    pub subjects: Subjects,
    pub epoch: Arc<AtomicU64>,
    pub router: Arc<Router>,
    pub stats: Arc<BusStats>,
    pub acks: Acks,
    pub owned: Arc<Owned>,
    pub outlet: Arc<super::NatsOutlet>,
}

enum Ended {
    HandedOver,
    Lost,
}

/// Routes `partition` under `lease` until `handover` (then hands it over)
/// or the lease is lost.
pub async fn own(
    ctx: Arc<OwnerContext>,
    lease: Lease,
    partition: Partition,
    handover: CancellationToken,
) {
    // Renewed throughout on its own task, also while a lane is full and
    // while handing over: a lease left to expire would let another node
    // take the partition while this one still routes it.
    let lease = KeptLease::keep(lease);
    let owning = Arc::new(Owning {
        term: lease.term(),
        caught_up: AtomicBool::new(false),
        backlog_upto: AtomicU64::new(u64::MAX),
        last_seq: AtomicU64::new(0),
        backlog: AtomicU64::new(0),
        last_stored_ms: AtomicU64::new(0),
        inflight: Arc::new(InFlight::default()),
        routed: AtomicU64::new(0),
    });
    ctx.owned.insert(partition, owning.clone());
    ctx.stats.partitions_owned.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%partition, term = lease.term(), "partition taken");
    let mut ended = route(&ctx, &lease, partition, &owning, &handover).await;
    // Whether every event taken under this term was delivered and settled.
    let mut settled = false;
    if let Ended::HandedOver = ended {
        tokio::select! {
            all = owning.inflight.drained(HANDOVER_BUDGET) => {
                settled = all;
                if !all {
                    tracing::warn!(%partition, left = owning.inflight.count(), "handing over with events not yet acknowledged; the next owner routes them again");
                }
            }
            () = lease.lost() => ended = Ended::Lost,
        }
    }
    ctx.owned.remove(partition);
    match ended {
        Ended::HandedOver => {
            // Everything of this term is out: say so before the next owner
            // can start. With events still in the lanes, later deliveries
            // could follow the closing beacon: it would vouch for too little.
            if settled {
                ctx.outlet
                    .closing(Origin {
                        partition,
                        term: lease.term(),
                    })
                    .await;
            }
            lease.release().await;
            ctx.stats.leases_released.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%partition, "partition handed over");
        }
        Ended::Lost => {
            ctx.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%partition, "partition lease lost");
        }
    }
    ctx.stats.partitions_owned.fetch_sub(1, Ordering::Relaxed);
}

async fn route(
    ctx: &OwnerContext,
    lease: &KeptLease,
    partition: Partition,
    owning: &Arc<Owning>,
    handover: &CancellationToken,
) -> Ended {
    let name = consumer_name(partition, lease.term());
    let mut first = true;
    let mut retry = Backoff::default();
    loop {
        // Replacing the consumer deletes any other of the partition: only
        // a holder sure of its lease may do it (a deposed owner that woke
        // up would delete its successor's).
        if !std::mem::take(&mut first) {
            match lease.confirm().await {
                Ok(()) => {}
                Err(LeaseError::Lost) => return Ended::Lost,
                Err(e) => {
                    tracing::debug!(%partition, error = %e, "lease not confirmed; retrying");
                    if let Some(ended) = pause(retry.next(), lease, handover).await {
                        return ended;
                    }
                    continue;
                }
            }
        }
        let links = ctx.stats.disconnects.load(Ordering::Relaxed);
        let mut last_message = Instant::now();
        let mut order = DeliveryOrder::default();
        let consumer = tokio::select! {
            c = fresh_consumer(ctx, partition, &name) => c,
            () = handover.cancelled() => return Ended::HandedOver,
            () = lease.lost() => return Ended::Lost,
        };
        let mut messages = match consumer {
            Ok((m, waiting, last_seq)) => {
                retry = Backoff::default();
                // The backlog found at takeover is that of the first consumer.
                let _ = owning.backlog_upto.compare_exchange(
                    u64::MAX,
                    last_seq,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if waiting == 0 {
                    owning.caught_up.store(true, Ordering::Release);
                }
                m
            }
            Err(e) => {
                tracing::warn!(%partition, error = %e, "cannot consume the partition; retrying");
                if let Some(ended) = pause(retry.next(), lease, handover).await {
                    return ended;
                }
                continue;
            }
        };
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut asked = Instant::now();
        loop {
            tokio::select! {
                _ = check.tick() => {
                    // After a reconnect, pull afresh: the server may have
                    // lost the pending pull with the old connection.
                    if ctx.stats.disconnects.load(Ordering::Relaxed) != links {
                        break;
                    }
                    // Asked at most once per STALL: every idle partition asks.
                    let ask = last_message.elapsed() >= STALL && asked.elapsed() >= STALL;
                    if ask {
                        asked = Instant::now();
                    }
                    if ask && waiting(ctx, &name).await {
                        tracing::warn!(%partition, "the partition's pull stalled with events waiting; pulling afresh");
                        break;
                    }
                }
                m = messages.next() => {
                    match m {
                        Some(Ok(msg)) => {
                            last_message = Instant::now();
                            let Some(job) = take(ctx, partition, owning, &mut order, msg).await else {
                                tracing::warn!(%partition, "a delivery was lost in flight; pulling afresh from the oldest unacknowledged");
                                break;
                            };
                            let Some(job) = job else { continue };
                            // A full lane holds the submit; the lease is kept meanwhile.
                            tokio::select! {
                                r = ctx.router.submit(job) => {
                                    if r.is_err() {
                                        tracing::debug!("router stopped; event left for the next owner");
                                    }
                                    // Time spent waiting for the lane is
                                    // not a stalled pull.
                                    last_message = Instant::now();
                                }
                                () = lease.lost() => return Ended::Lost,
                            }
                        }
                        Some(Err(e)) => tracing::debug!(%partition, error = %e, "partition pull hiccup"),
                        None => break,
                    }
                }
                () = lease.lost() => return Ended::Lost,
                () = handover.cancelled() => return Ended::HandedOver,
            }
        }
    }
}

/// Waits `d` before a retry; how the owner ended if it did meanwhile.
async fn pause(d: Duration, lease: &KeptLease, handover: &CancellationToken) -> Option<Ended> {
    tokio::select! {
        () = tokio::time::sleep(d) => None,
        () = lease.lost() => Some(Ended::Lost),
        () = handover.cancelled() => Some(Ended::HandedOver),
    }
}

/// Whether events wait in the partition for its owner while the server
/// could deliver them, or the consumer cannot be asked: not when as many
/// as the consumer allows are taken and not yet acknowledged (history is
/// behind, and pulling afresh would only route them again).
async fn waiting(ctx: &OwnerContext, consumer: &str) -> bool {
    let Ok(stream) = ctx.js.get_stream(&ctx.ingest_stream).await else {
        return false;
    };
    match stream.consumer_info(consumer).await {
        Ok(info) => deliverable(
            info.num_pending,
            info.num_ack_pending,
            info.config.max_ack_pending,
        ),
        // A consumer that cannot say (lost, or without a leader since a
        // server died) will not deliver either: replace it.
        Err(_) => true,
    }
}

/// Whether a consumer with `pending` events not yet delivered and
/// `unacked` delivered and not acknowledged would deliver more, given its
/// limit `max_unacked` (0 or less: none).
fn deliverable(pending: u64, unacked: usize, max_unacked: i64) -> bool {
    pending > 0 && (max_unacked <= 0 || (unacked as u64) < max_unacked as u64)
}

/// Replaces the partition's durable consumer (any earlier owner's, or this
/// owner's own after a reconnect) so that delivery starts over from the
/// oldest unacknowledged event; returns its messages, how many waited and
/// the stream's last sequence then.
async fn fresh_consumer(
    ctx: &OwnerContext,
    partition: Partition,
    name: &str,
) -> Result<(Puller, u64, u64), String> {
    // `get_stream` fetched the stream's info: one round trip.
    let stream = ctx
        .js
        .get_stream(&ctx.ingest_stream)
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.cached_info();
    let created = info.created.unix_timestamp_nanos() / 1_000_000;
    let last_seq = info.state.last_sequence;
    ctx.epoch.store(created as u64, Ordering::Relaxed);
    let (messages, waiting) = super::consumers::replace(
        &ctx.js,
        &stream,
        &partition_prefix(partition),
        name.to_owned(),
        ctx.subjects.partition_filter(partition),
        ctx.stats.clone(),
    )
    .await?;
    Ok((messages, waiting, last_seq))
}

/// Reads one pulled message: `None` if it is out of order (nothing
/// taken), `Some(None)` if there is nothing to route (malformed: counted,
/// acknowledged), else the job.
async fn take(
    ctx: &OwnerContext,
    partition: Partition,
    owning: &Arc<Owning>,
    order: &mut DeliveryOrder,
    msg: async_nats::jetstream::Message,
) -> Option<Option<Job>> {
    let Ok((seq, stamp, pending, delivery)) = msg.info().map(|i| {
        (
            i.stream_sequence,
            i.published.unix_timestamp_nanos().max(0) as u64,
            i.pending,
            i.consumer_sequence,
        )
    }) else {
        return Some(None);
    };
    if !order.follows(delivery, seq) {
        return None;
    }
    let epoch = ctx.epoch.load(Ordering::Relaxed);
    let id = EventId { epoch, seq };
    let (msg, acker) = msg.split();
    owning.routed.fetch_add(1, Ordering::Relaxed);
    owning.last_seq.store(seq, Ordering::Relaxed);
    owning.backlog.store(pending, Ordering::Relaxed);
    owning
        .last_stored_ms
        .store(stamp / 1_000_000, Ordering::Relaxed);
    // Past the backlog found at takeover (or at the end of the partition):
    // whatever a predecessor delivered and never wrote has been taken.
    if pending == 0 || seq >= owning.backlog_upto.load(Ordering::Acquire) {
        owning.caught_up.store(true, Ordering::Release);
    }
    let origin = Origin {
        partition,
        term: owning.term,
    };
    let settle = ctx
        .acks
        .settle(acker, owning.inflight.clone(), stamp / 1_000_000);
    match wire::decode_ingest(
        &ctx.subjects,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        &msg.payload,
        id,
    ) {
        Ok(event) => Some(Some(Job {
            event,
            settle: Some(settle),
            ack: None,
            stamp,
            origin,
        })),
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %msg.subject, error = %e, "malformed ingest message dropped");
            ctx.router.skipped(id).await;
            settle.done(true);
            Some(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_at_its_limit_of_unacknowledged_events_is_waiting_on_us_not_stalled() {
        assert!(deliverable(5, 0, 20_000));
        assert!(deliverable(5, 19_999, 20_000));
        assert!(!deliverable(5, 20_000, 20_000), "history is behind");
        assert!(!deliverable(0, 0, 20_000), "nothing waits");
        assert!(deliverable(5, 1_000_000, -1), "no limit");
    }
}
