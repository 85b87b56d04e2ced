//! Who is in the cluster: every node announces itself on `<prefix>.nodes`
//! several times per `bus.node_timeout_ms`, saying whether it may own
//! partitions (it has started and is not draining). A node unheard of for
//! the timeout is gone: its partitions are given out again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::BusError;
use crate::bus::wire::Subjects;

/// Beats per node timeout: a node is declared gone after missing this many.
const BEATS_PER_TIMEOUT: u32 = 5;

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    eligible: bool,
    /// It keeps history in a SQLite file of its own.
    local_store: bool,
}

/// The nodes heard from lately.
pub struct Members {
    seen: Mutex<HashMap<String, Seen>>,
    timeout: Duration,
    /// Bumped when a node appears or its eligibility changes (a node
    /// going silent is noticed by whoever asks, on their own clock).
    changed: watch::Sender<u64>,
}

#[derive(Serialize, Deserialize)]
struct Beat {
    node: String,
    eligible: bool,
    #[serde(default)]
    local_store: bool,
}

impl Members {
    /// Nodes are gone after `timeout` of silence.
    pub fn new(timeout: Duration) -> Self {
        Members {
            seen: Mutex::new(HashMap::new()),
            timeout,
            changed: watch::Sender::new(0),
        }
    }

    fn heard(&self, node: String, eligible: bool, local_store: bool, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let before = seen.insert(
            node,
            Seen {
                at: now,
                eligible,
                local_store,
            },
        );
        let news = before.is_none_or(|b| b.eligible != eligible || now - b.at >= self.timeout);
        drop(seen);
        if news {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn select(&self, now: Instant, keep: impl Fn(&Seen) -> bool) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut nodes: Vec<String> = seen
            .iter()
            .filter(|(_, s)| now.duration_since(s.at) < self.timeout && keep(s))
            .map(|(n, _)| n.clone())
            .collect();
        nodes.sort();
        nodes
    }

    /// Live nodes, sorted.
    pub fn live(&self) -> Vec<String> {
        self.select(Instant::now(), |_| true)
    }

    /// Live nodes that may own partitions, sorted.
    pub fn eligible(&self) -> Vec<String> {
        self.select(Instant::now(), |s| s.eligible)
    }

    /// Live nodes that keep history in a store of their own, sorted.
    pub fn with_local_store(&self) -> Vec<String> {
        self.select(Instant::now(), |s| s.local_store)
    }

    /// How long a node takes to hear every live node at least once.
    pub fn hearing_time(&self) -> Duration {
        self.timeout / BEATS_PER_TIMEOUT * 2
    }

    /// Refuses a cluster whose nodes do not share one store.
    pub fn shared_store(&self, me: &str, local: bool) -> Result<(), BusError> {
        let others: Vec<String> = self.live().into_iter().filter(|n| n != me).collect();
        if local && !others.is_empty() {
            return Err(BusError::LocalStore {
                reason: format!(
                    "this node keeps history in SQLite but other nodes are live on this NATS ({})",
                    others.join(", ")
                ),
            });
        }
        let local_peers: Vec<String> = self
            .with_local_store()
            .into_iter()
            .filter(|n| n != me)
            .collect();
        if !local_peers.is_empty() {
            return Err(BusError::LocalStore {
                reason: format!(
                    "node(s) {} on this NATS keep history in SQLite",
                    local_peers.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Whether `node` was heard from within the timeout.
    pub fn is_live(&self, node: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(node)
            .is_some_and(|s| s.at.elapsed() < self.timeout)
    }

    /// Changes when a node appears or its eligibility changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Forgets nodes silent for long (bounded memory across restarts with
    /// new ids).
    fn forget_old(&self, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, s| now.duration_since(s.at) < self.timeout * 60);
    }
}

/// Announces this node (eligible while `eligible` says so, and at once
/// when that changes) and hears the others, until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: async_nats::Client,
    subjects: Subjects,
    node_id: String,
    local_store: bool,
    mut eligible: watch::Receiver<bool>,
    members: std::sync::Arc<Members>,
    stop: CancellationToken,
) {
    let mut beats = match client.subscribe(subjects.nodes()).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to node beats");
            return;
        }
    };
    let period = members.timeout / BEATS_PER_TIMEOUT;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = |eligible: bool| {
        let b = Beat {
            node: node_id.clone(),
            eligible,
            local_store,
        };
        Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
    };
    // Once the sender is gone the bus is stopping: not eligible any more.
    let mut sender_gone = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = !sender_gone && *eligible.borrow();
                // A beat queued while disconnected is sent on reconnect: harmless.
                let _ = client.publish(subjects.nodes(), beat(now)).await;
                members.forget_old(Instant::now());
            }
            changed = eligible.changed(), if !sender_gone => {
                sender_gone = changed.is_err();
                let now = !sender_gone && *eligible.borrow();
                let _ = client.publish(subjects.nodes(), beat(now)).await;
                let _ = client.flush().await;
            }
            Some(m) = beats.next() => {
                if let Ok(b) = serde_json::from_slice::<Beat>(&m.payload) {
                    members.heard(b.node, b.eligible, b.local_store, Instant::now());
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_live_until_silent_for_the_timeout() {
        let m = Members::new(Duration::from_millis(50));
        let changes = m.changes();
        let t0 = Instant::now();
        m.heard("b".into(), true, false, t0);
        m.heard("a".into(), false, true, t0);
        assert_eq!(m.live(), ["a", "b"]);
        assert_eq!(m.eligible(), ["b"]);
        assert_eq!(m.with_local_store(), ["a"]);
        assert!(changes.has_changed().unwrap_or(false));
        let seen = *changes.borrow();
        m.heard("b".into(), true, false, t0);
        assert_eq!(*changes.borrow(), seen, "a repeated beat is no news");
        m.heard("a".into(), true, true, t0);
        assert_eq!(*changes.borrow(), seen + 1);
        let later = t0 + Duration::from_millis(60);
        assert!(m.select(later, |_| true).is_empty(), "both went silent");
        m.heard("a".into(), true, true, later);
        assert_eq!(m.select(later, |_| true), ["a"]);
    }
}
