//! This node's share of the routing slots: on every membership or lease
//! change (and a few times per node timeout), compute the assignment every
//! node computes ([`crate::bus::assign`]), take the free slots it gives
//! this node, take over those of dead nodes, and hand over those it gives
//! to another node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::leases::{Lease, LeaseError, LeaseTable, Slot};
use super::members::Members;
use super::owner::{self, OwnerContext};
use super::relay::{self, RelayContext};
use crate::bus::BusStats;
use crate::bus::assign::assign;

/// What the ownership loop needs.
#[allow(missing_docs)]
pub struct Ownership {
    pub node_id: String,
    pub partitions: u16,
    pub kv: kv::Store,
    pub lease_ttl: Duration,
    pub node_timeout: Duration,
    pub members: Arc<Members>,
    pub table: Arc<LeaseTable>,
    pub owners: Arc<OwnerContext>,
    pub relay: Arc<RelayContext>,
    pub stats: Arc<BusStats>,
    /// Whether this node may own slots now.
    pub eligible: watch::Receiver<bool>,
    /// How many slot tasks run (0 once everything is handed over).
    pub running: watch::Sender<usize>,
}

struct Running {
    handover: CancellationToken,
    task: JoinHandle<()>,
}

impl Ownership {
    /// Runs until `stop`, then hands every slot over.
    pub async fn run(mut self, stop: CancellationToken) {
        let slots: Vec<Slot> = Slot::all(self.partitions).collect();
        let mut running: HashMap<Slot, Running> = HashMap::new();
        let beat = self.node_timeout / 5;
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut members = self.members.changes();
        let mut leases = self.table.changes();
        // Take nothing from nodes taken for dead before their beats could
        // have been heard: at start, after this node's own reconnect, and
        // after this node itself was frozen (SIGSTOP, a stall), when every
        // other node looks silent only because it was not listening.
        let warm_up = beat * 2;
        let mut listening_since = tokio::time::Instant::now();
        let mut last_turn = tokio::time::Instant::now();
        let mut links = self.stats.disconnects.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = members.changed() => {}
                _ = leases.changed() => {}
                _ = self.eligible.changed() => {}
                () = stop.cancelled() => break,
            }
            let now = tokio::time::Instant::now();
            let now_links = self.stats.disconnects.load(Ordering::Relaxed);
            if now_links != links || now.duration_since(last_turn) > beat * 3 {
                links = now_links;
                listening_since = now;
            }
            last_turn = now;
            // Until then, only free slots are taken (a create, which fails
            // harmlessly if the slot is held after all).
            let may_force = listening_since.elapsed() >= warm_up;
            running.retain(|_, r| !r.task.is_finished());
            self.rebalance(&slots, &mut running, may_force);
            self.running.send_replace(running.len());
        }
        for r in running.values() {
            r.handover.cancel();
        }
        for (_, r) in running.drain() {
            let _ = r.task.await;
        }
        self.running.send_replace(0);
    }

    fn rebalance(&self, slots: &[Slot], running: &mut HashMap<Slot, Running>, may_force: bool) {
        let me = self.node_id.as_str();
        let eligible_now = *self.eligible.borrow();
        let mut nodes = self.members.eligible();
        nodes.retain(|n| n != me);
        if eligible_now {
            nodes.push(me.to_owned());
        }
        let holders: Vec<Option<String>> = slots
            .iter()
            .map(|s| match running.get(s) {
                Some(r) if !r.handover.is_cancelled() => Some(me.to_owned()),
                Some(_) => None,
                None => self
                    .table
                    .holder(*s)
                    .map(|h| h.node)
                    .filter(|n| n != me && self.members.is_live(n)),
            })
            .collect();
        let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let current: Vec<Option<&str>> = holders.iter().map(Option::as_deref).collect();
        let target = assign(&node_refs, &current);
        for (slot, owner) in slots.iter().zip(target) {
            let mine = owner.is_some_and(|i| node_refs[i] == me);
            match running.get(slot) {
                Some(r) if !mine && !r.handover.is_cancelled() => {
                    tracing::debug!(?slot, "handing over");
                    r.handover.cancel();
                }
                Some(_) => {}
                None if mine => {
                    running.insert(*slot, self.take(*slot, may_force));
                }
                None => {}
            }
        }
    }

    /// Starts a task that takes `slot` (from a dead holder too, if
    /// `may_force`) and routes it until handed over.
    fn take(&self, slot: Slot, may_force: bool) -> Running {
        let handover = CancellationToken::new();
        let kv = self.kv.clone();
        let node = self.node_id.clone();
        let ttl = self.lease_ttl;
        let members = self.members.clone();
        let owners = self.owners.clone();
        let relay_ctx = self.relay.clone();
        let stats = self.stats.clone();
        let token = handover.clone();
        let task = tokio::spawn(async move {
            let may_take = |holder: &str| may_force && (holder == node || !members.is_live(holder));
            let lease = match Lease::acquire(&kv, slot, &node, ttl, may_take).await {
                Ok(l) => l,
                Err(LeaseError::Held(by)) => {
                    tracing::debug!(?slot, %by, "slot still held; waiting for its release");
                    return;
                }
                Err(e) => {
                    tracing::debug!(?slot, error = %e, "slot not taken");
                    return;
                }
            };
            stats.leases_acquired.fetch_add(1, Ordering::Relaxed);
            match slot {
                Slot::Partition(p) => owner::own(owners, lease, p, token).await,
                Slot::Relay => relay::relay(relay_ctx, lease, token).await,
            }
        });
        Running { handover, task }
    }
}
