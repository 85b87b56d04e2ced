//! The partitions this node owns now, and what `/admin/partitions` and
//! the metrics show of each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Serialize;

use super::settle::InFlight;
use crate::routing::{EventId, Partition};

/// What this node knows of a partition it owns.
pub struct Owning {
    /// The lease's term.
    pub term: u64,
    /// Everything that waited in the partition when this node took it has
    /// been handed to the router stage.
    pub caught_up: AtomicBool,
    /// The stream's last sequence when this node took the partition: once
    /// a delivery is past it, the backlog found then has been taken.
    pub backlog_upto: AtomicU64,
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

impl Owning {
    /// How far behind routing is at `now_ms`: the age of the oldest event
    /// taken and not yet acknowledged, or, while events wait untaken, of
    /// the newest taken.
    fn lag_ms(&self, now_ms: u64) -> u64 {
        let waiting = if self.backlog.load(Ordering::Relaxed) > 0 {
            now_ms.saturating_sub(self.last_stored_ms.load(Ordering::Relaxed))
        } else {
            0
        };
        let unacked = self
            .inflight
            .oldest_ms()
            .map_or(0, |t| now_ms.saturating_sub(t));
        waiting.max(unacked)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    /// How far behind routing is: the age of the oldest event taken and
    /// not yet acknowledged, or, while events wait untaken, of the newest
    /// taken (ms).
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
    pub(super) fn insert(&self, p: Partition, o: Arc<Owning>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(p, o);
    }

    pub(super) fn remove(&self, p: Partition) {
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

    /// How far behind each owned partition is (ms; see [`OwnedStatus::lag_ms`]).
    pub fn lags(&self) -> Vec<(u16, u64)> {
        let now_ms = now_ms();
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(p, o)| (p.0, o.lag_ms(now_ms))).collect()
    }

    /// Each owned partition's status, in partition order.
    pub fn status(&self, epoch: u64) -> Vec<OwnedStatus> {
        let now_ms = now_ms();
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<OwnedStatus> = map
            .iter()
            .map(|(p, o)| {
                let seq = o.last_seq.load(Ordering::Relaxed);
                OwnedStatus {
                    partition: p.0,
                    term: o.term,
                    last_routed: (seq > 0).then(|| EventId { epoch, seq }.to_string()),
                    backlog: o.backlog.load(Ordering::Relaxed),
                    lag_ms: o.lag_ms(now_ms),
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
