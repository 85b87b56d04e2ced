//! Leases on routing slots (each partition, and the relay), kept as keys of
//! the KV bucket `<PREFIX>_ROUTER` whose entries expire after
//! `bus.lease_ttl_ms`.
//!
//! A node takes a free slot with a create (only possible while the key is
//! absent), a dead node's slot with a compare-and-set on the revision it
//! last saw, and renews with compare-and-set every third of the TTL (`kept_lease`). The
//! revision at which it took the slot is the lease's term: every later
//! holder has a higher one. [`LeaseTable`] follows the bucket, so every
//! node knows who holds what.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::routing::Partition;

/// A routing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// A partition of the ingest stream.
    Partition(Partition),
    /// The relay of raw publishes to their partitions.
    Relay,
}

impl Slot {
    /// Slots are numbered for assignment: partitions, then the relay.
    pub fn all(partitions: u16) -> impl Iterator<Item = Slot> {
        (0..partitions)
            .map(|p| Slot::Partition(Partition(p)))
            .chain(std::iter::once(Slot::Relay))
    }

    /// The KV key of the slot's lease.
    pub fn key(self) -> String {
        match self {
            Slot::Partition(p) => format!("p.{p}"),
            Slot::Relay => "relay".to_owned(),
        }
    }

    fn from_key(key: &str) -> Option<Slot> {
        if key == "relay" {
            return Some(Slot::Relay);
        }
        key.strip_prefix("p.")?
            .parse()
            .ok()
            .map(|p| Slot::Partition(Partition(p)))
    }
}

/// Who holds a slot, as the bucket last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The node.
    pub node: String,
    /// The entry's revision (a renewal changes it).
    pub revision: u64,
    seen: Instant,
}

/// Every slot's holder, following the bucket.
pub struct LeaseTable {
    holders: Mutex<HashMap<Slot, Holder>>,
    ttl: Duration,
    changed: watch::Sender<u64>,
}

impl LeaseTable {
    /// An empty table; entries older than `ttl` count as expired.
    pub fn new(ttl: Duration) -> Self {
        LeaseTable {
            holders: Mutex::new(HashMap::new()),
            ttl,
            changed: watch::Sender::new(0),
        }
    }

    /// The holder of `slot`, unless its lease has expired.
    pub fn holder(&self, slot: Slot) -> Option<Holder> {
        let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders
            .get(&slot)
            .filter(|h| h.seen.elapsed() < self.ttl)
            .cloned()
    }

    /// Changes whenever a lease is taken, renewed or released.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn apply(&self, entry: &kv::Entry) {
        let Some(slot) = Slot::from_key(&entry.key) else {
            return;
        };
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let news = match entry.operation {
            kv::Operation::Put => {
                let node = String::from_utf8_lossy(&entry.value).into_owned();
                let before = holders.insert(
                    slot,
                    Holder {
                        node: node.clone(),
                        revision: entry.revision,
                        seen: Instant::now(),
                    },
                );
                before.is_none_or(|b| b.node != node)
            }
            kv::Operation::Delete | kv::Operation::Purge => holders.remove(&slot).is_some(),
        };
        drop(holders);
        if news {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Follows the bucket until `stop` (watching again after an error).
    pub async fn follow(self: Arc<Self>, kv: kv::Store, stop: CancellationToken) {
        loop {
            match kv.watch_with_history(">").await {
                Ok(mut watch) => loop {
                    tokio::select! {
                        entry = watch.next() => match entry {
                            Some(Ok(entry)) => self.apply(&entry),
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "lease watch hiccup");
                                break;
                            }
                            None => break,
                        },
                        () = stop.cancelled() => return,
                    }
                },
                Err(e) => tracing::debug!(error = %e, "cannot watch the leases; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live node holds it.
    #[error("held by {0}")]
    Held(String),
    /// Someone else changed it first.
    #[error("lost to another node")]
    Lost,
    /// NATS did not answer.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
}

/// A lease this node holds.
pub struct Lease {
    kv: kv::Store,
    slot: Slot,
    node: String,
    revision: u64,
    /// The revision it was taken at.
    pub term: u64,
    renewed: Instant,
    ttl: Duration,
}

impl Lease {
    /// Takes `slot` for `node`: creates the key if it is absent, or takes
    /// it over if its holder is one `may_take` allows (a dead node, or this
    /// node before a restart).
    pub async fn acquire(
        kv: &kv::Store,
        slot: Slot,
        node: &str,
        ttl: Duration,
        may_take: impl Fn(&str) -> bool,
    ) -> Result<Lease, LeaseError> {
        let sent = Instant::now();
        let key = slot.key();
        let unavailable = |e: &dyn std::fmt::Display| LeaseError::Unavailable(e.to_string());
        let revision = match kv.create(&key, node.to_owned().into()).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = kv.entry(&key).await.map_err(|e| unavailable(&e))?;
                let Some(entry) = entry else {
                    return Err(LeaseError::Lost);
                };
                let holder = String::from_utf8_lossy(&entry.value).into_owned();
                if !may_take(&holder) {
                    return Err(LeaseError::Held(holder));
                }
                kv.update(&key, node.to_owned().into(), entry.revision)
                    .await
                    .map_err(|e| match e.kind() {
                        kv::UpdateErrorKind::WrongLastRevision => LeaseError::Lost,
                        _ => unavailable(&e),
                    })?
            }
            Err(e) => return Err(unavailable(&e)),
        };
        Ok(Lease {
            kv: kv.clone(),
            slot,
            node: node.to_owned(),
            revision,
            term: revision,
            renewed: sent,
            ttl,
        })
    }

    /// How long the lease lasts unrenewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the last renewal that succeeded was sent (or the lease taken).
    pub fn renewed(&self) -> Instant {
        self.renewed
    }

    /// Renews once: `Err(Lost)` once another node took it,
    /// `Err(Unavailable)` if NATS did not answer. The lease counts from
    /// when the renewal was sent, which is before the store wrote it.
    pub async fn try_renew(&mut self) -> Result<(), LeaseError> {
        let sent = Instant::now();
        match self
            .kv
            .update(self.slot.key(), self.node.clone().into(), self.revision)
            .await
        {
            Ok(r) => {
                self.revision = r;
                self.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.landed_late().await
            }
            Err(e) => Err(LeaseError::Unavailable(e.to_string())),
        }
    }

    /// After a refused renewal: an earlier one given up on may have been
    /// written after all, under this node's name; the lease then goes on
    /// from that revision (counted from the last renewal known to have
    /// succeeded). Anyone else's name there means the lease is lost.
    async fn landed_late(&mut self) -> Result<(), LeaseError> {
        match self.kv.entry(self.slot.key()).await {
            Ok(Some(entry))
                if entry.value.as_ref() == self.node.as_bytes()
                    && entry.revision > self.revision =>
            {
                self.revision = entry.revision;
                Err(LeaseError::Unavailable(
                    "an earlier renewal landed late; renewing from it".into(),
                ))
            }
            Ok(_) => Err(LeaseError::Lost),
            Err(e) => Err(LeaseError::Unavailable(e.to_string())),
        }
    }

    /// Gives the slot up at once, for the next owner to take.
    pub async fn release(self) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(self.slot.key(), Some(self.revision))
            .await
        {
            tracing::debug!(error = %e, slot = ?self.slot, "lease release failed; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip() {
        for slot in Slot::all(3) {
            assert_eq!(Slot::from_key(&slot.key()), Some(slot));
        }
        assert_eq!(Slot::all(64).count(), 65);
        assert_eq!(Slot::from_key("router"), None);
        assert_eq!(Slot::from_key("p.x"), None);
    }
}
