//! Routing one partition while this node holds its lease: recreate the
//! partition's durable consumer (which shuts out a previous owner's pulls
//! and acknowledgements and redelivers, oldest first, everything not yet
//! acknowledged), pull in order, hand each event to the router stage
//! stamped with the lease's term, renew the lease. A handover stops
//! pulling, waits until what was taken is acknowledged, then releases the
//! lease for the next owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::leases::Lease;
use super::settle::{Acks, InFlight};
use crate::bus::BusStats;
use crate::bus::delivery_order::DeliveryOrder;
use crate::bus::wire::{self, Subjects};
use crate::pipeline::{Job, Router};
use crate::routing::{EventId, Origin, Partition};

/// A pull that receives nothing for this long while events wait is
/// replaced (a server restart can lose it).
const STALL: Duration = Duration::from_secs(5);
/// How long a handover waits for what was taken to be acknowledged before
/// releasing anyway (the next owner routes the rest again).
const HANDOVER_BUDGET: Duration = Duration::from_secs(5);
/// Messages per pull request.
const PULL_BATCH: usize = 512;

/// The durable consumer of `partition`.
pub fn consumer_name(partition: Partition) -> String {
    format!("p{partition}")
}

/// What this node knows of a partition it owns.
pub struct Owning {
    /// The lease's term.
    pub term: u64,
    /// Everything that waited in the partition when this node took it has
    /// been handed to the router stage.
    pub caught_up: AtomicBool,
    /// The newest sequence taken.
    pub last_seq: AtomicU64,
    /// Messages waiting behind the newest taken, as NATS said then.
    pub backlog: AtomicU64,
    /// When the newest taken was stored (ms since the epoch).
    pub last_stored_ms: AtomicU64,
    /// Taken, not yet settled.
    pub inflight: Arc<InFlight>,
    /// Events taken under this lease.
    pub routed: AtomicU64,
}

/// One owned partition, as `/admin/partitions` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OwnedStatus {
    /// The partition.
    pub partition: u16,
    /// The lease's term.
    pub term: u64,
    /// The newest event taken (`null` before the first).
    pub last_routed: Option<String>,
    /// Events waiting in the partition.
    pub backlog: u64,
    /// How far behind routing is (ms since the newest taken event was
    /// stored, while events wait).
    pub lag_ms: u64,
    /// Taken, not yet acknowledged.
    pub inflight: u64,
    /// Whether the backlog found at takeover has been routed.
    pub caught_up: bool,
    /// Events taken under this lease.
    pub routed: u64,
}

/// The partitions this node owns now.
#[derive(Default)]
pub struct Owned {
    map: RwLock<HashMap<Partition, Arc<Owning>>>,
}

impl Owned {
    fn insert(&self, p: Partition, o: Arc<Owning>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(p, o);
    }

    fn remove(&self, p: Partition) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&p);
    }

    /// The partitions owned and caught up.
    pub fn caught_up(&self) -> Vec<u16> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<u16> = map
            .iter()
            .filter(|(_, o)| o.caught_up.load(Ordering::Acquire))
            .map(|(p, _)| p.0)
            .collect();
        v.sort_unstable();
        v
    }

    /// Each owned partition's status, in partition order.
    pub fn status(&self, epoch: u64) -> Vec<OwnedStatus> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<OwnedStatus> = map
            .iter()
            .map(|(p, o)| {
                let seq = o.last_seq.load(Ordering::Relaxed);
                let backlog = o.backlog.load(Ordering::Relaxed);
                let stored = o.last_stored_ms.load(Ordering::Relaxed);
                OwnedStatus {
                    partition: p.0,
                    term: o.term,
                    last_routed: (seq > 0).then(|| EventId { epoch, seq }.to_string()),
                    backlog,
                    lag_ms: if backlog > 0 {
                        now_ms.saturating_sub(stored)
                    } else {
                        0
                    },
                    inflight: o.inflight.count(),
                    caught_up: o.caught_up.load(Ordering::Relaxed),
                    routed: o.routed.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by_key(|s| s.partition);
        v
    }
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
}

enum Ended {
    HandedOver,
    Lost,
}

/// Routes `partition` under `lease` until `handover` (then hands it over)
/// or the lease is lost.
pub async fn own(
    ctx: Arc<OwnerContext>,
    mut lease: Lease,
    partition: Partition,
    handover: CancellationToken,
) {
    let owning = Arc::new(Owning {
        term: lease.term,
        caught_up: AtomicBool::new(false),
        last_seq: AtomicU64::new(0),
        backlog: AtomicU64::new(0),
        last_stored_ms: AtomicU64::new(0),
        inflight: Arc::new(InFlight::default()),
        routed: AtomicU64::new(0),
    });
    ctx.owned.insert(partition, owning.clone());
    ctx.stats.partitions_owned.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%partition, term = lease.term, "partition taken");
    let ended = route(&ctx, &mut lease, partition, &owning, &handover).await;
    match ended {
        Ended::HandedOver => {
            if !owning.inflight.drained(HANDOVER_BUDGET).await {
                tracing::warn!(%partition, left = owning.inflight.count(), "handing over with events not yet acknowledged; the next owner routes them again");
            }
            ctx.owned.remove(partition);
            lease.release().await;
            ctx.stats.leases_released.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%partition, "partition handed over");
        }
        Ended::Lost => {
            ctx.owned.remove(partition);
            ctx.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%partition, "partition lease lost");
        }
    }
    ctx.stats.partitions_owned.fetch_sub(1, Ordering::Relaxed);
}

async fn route(
    ctx: &OwnerContext,
    lease: &mut Lease,
    partition: Partition,
    owning: &Arc<Owning>,
    handover: &CancellationToken,
) -> Ended {
    let mut renew = tokio::time::interval(lease.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        let links = ctx.stats.disconnects.load(Ordering::Relaxed);
        let mut last_message = Instant::now();
        let mut order = DeliveryOrder::default();
        let consumer = tokio::select! {
            c = fresh_consumer(ctx, partition) => c,
            () = handover.cancelled() => return Ended::HandedOver,
        };
        let mut messages = match consumer {
            Ok((m, waiting)) => {
                if waiting == 0 {
                    owning.caught_up.store(true, Ordering::Release);
                }
                Some(m)
            }
            Err(e) => {
                tracing::warn!(%partition, error = %e, "cannot consume the partition; retrying");
                None
            }
        };
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    if lease.renew().await.is_err() {
                        return Ended::Lost;
                    }
                    // After a reconnect, pull afresh: the server may have
                    // lost the pending pull with the old connection.
                    if messages.is_none() || ctx.stats.disconnects.load(Ordering::Relaxed) != links {
                        break;
                    }
                    if last_message.elapsed() >= STALL && waiting(ctx, partition).await {
                        tracing::warn!(%partition, "the partition's pull stalled with events waiting; pulling afresh");
                        break;
                    }
                }
                m = async { match messages.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                    match m {
                        Some(Ok(msg)) => {
                            last_message = Instant::now();
                            if !take(ctx, partition, owning, &mut order, msg).await {
                                tracing::warn!(%partition, "a delivery was lost in flight; pulling afresh from the oldest unacknowledged");
                                break;
                            }
                        }
                        Some(Err(e)) => tracing::debug!(%partition, error = %e, "partition pull hiccup"),
                        None => break,
                    }
                }
                () = handover.cancelled() => return Ended::HandedOver,
            }
        }
    }
}

/// Whether events wait in the partition for its owner.
async fn waiting(ctx: &OwnerContext, partition: Partition) -> bool {
    let Ok(stream) = ctx.js.get_stream(&ctx.ingest_stream).await else {
        return false;
    };
    match stream.consumer_info(consumer_name(partition)).await {
        Ok(info) => info.num_pending > 0 || info.num_ack_pending > 0,
        Err(_) => false,
    }
}

/// Deletes and recreates the partition's durable consumer so that delivery
/// starts over from the oldest unacknowledged event; returns its messages
/// and how many waited.
async fn fresh_consumer(
    ctx: &OwnerContext,
    partition: Partition,
) -> Result<(pull::Stream, u64), String> {
    // `get_stream` fetched the stream's info: one round trip.
    let stream = ctx
        .js
        .get_stream(&ctx.ingest_stream)
        .await
        .map_err(|e| e.to_string())?;
    let created = stream.cached_info().created.unix_timestamp_nanos() / 1_000_000;
    ctx.epoch.store(created as u64, Ordering::Relaxed);
    let name = consumer_name(partition);
    let _ = stream.delete_consumer(&name).await;
    let mut consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name),
            filter_subject: ctx.subjects.partition_filter(partition),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let waiting = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending;
    // Short pulls with heartbeats: a pull lost with a restarted server is
    // noticed in seconds.
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    Ok((messages, waiting))
}

/// Hands one pulled message to the router stage; false (and nothing
/// taken) if it is out of order.
async fn take(
    ctx: &OwnerContext,
    partition: Partition,
    owning: &Arc<Owning>,
    order: &mut DeliveryOrder,
    msg: async_nats::jetstream::Message,
) -> bool {
    let Ok((seq, stamp, pending, delivery)) = msg.info().map(|i| {
        (
            i.stream_sequence,
            i.published.unix_timestamp_nanos().max(0) as u64,
            i.pending,
            i.consumer_sequence,
        )
    }) else {
        return true;
    };
    if !order.follows(delivery, seq) {
        return false;
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
    match wire::decode_ingest(
        &ctx.subjects,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        &msg.payload,
        id.to_string(),
    ) {
        Ok(event) => {
            let job = Job {
                event,
                settle: Some(ctx.acks.settle(acker, owning.inflight.clone())),
                stamp,
                origin: Origin {
                    partition,
                    term: owning.term,
                },
            };
            if ctx.router.submit(job).await.is_err() {
                tracing::debug!("router stopped; event left for the next owner");
            }
        }
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %msg.subject, error = %e, "malformed ingest message dropped");
            ctx.router.skipped(id).await;
            let _ = acker.ack().await;
        }
    }
    if pending == 0 {
        owning.caught_up.store(true, Ordering::Release);
    }
    true
}
