//! Acknowledging ingest messages: once an event's deliveries are out, its
//! ingest message is acknowledged as soon as history has it (a barrier on
//! the history writer for a whole run of them), so that an owner dying
//! before its history is written leaves the event to the next owner.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use tokio::sync::{Notify, mpsc};

use crate::pipeline::settle::Settle;
use crate::store::history::History;

/// Events a partition owner has taken and not yet settled, and when the
/// oldest of them was stored (they are settled in the order taken).
#[derive(Default)]
pub struct InFlight {
    n: AtomicU64,
    settled: Notify,
    stored_ms: Mutex<VecDeque<u64>>,
}

impl InFlight {
    /// One more taken, stored by the bus at `stored_ms`.
    pub fn take(&self, stored_ms: u64) {
        self.n.fetch_add(1, Ordering::AcqRel);
        self.stored_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(stored_ms);
    }

    /// One settled (acknowledged, or given up on).
    pub fn settle(&self) {
        self.stored_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if self.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// When the oldest taken and not settled was stored (ms).
    pub fn oldest_ms(&self) -> Option<u64> {
        self.stored_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .copied()
    }

    /// How many are taken and not settled.
    pub fn count(&self) -> u64 {
        self.n.load(Ordering::Acquire)
    }

    /// Waits until none is in flight, or `budget` passes; false if some
    /// still were.
    pub async fn drained(&self, budget: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(budget, wait).await.is_ok()
    }
}

struct Pending {
    acker: Acker,
    delivered: bool,
    inflight: Arc<InFlight>,
}

/// The node's acknowledger, shared by its partition owners.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Pending>,
}

/// Acknowledgements sent at once after one history barrier.
const RUN: usize = 1024;

impl Acks {
    /// Starts the task acknowledging behind `history` (at once without).
    /// It ends once every `Acks` is dropped.
    pub fn start(history: Option<Arc<History>>, tasks: &tokio_util::task::TaskTracker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(acknowledge(rx, history));
        Acks { tx }
    }

    /// What settles one ingest message, stored by the bus at `stored_ms`.
    pub fn settle(&self, acker: Acker, inflight: Arc<InFlight>, stored_ms: u64) -> Settle {
        let tx = self.tx.clone();
        inflight.take(stored_ms);
        Settle::new(move |delivered| {
            let pending = Pending {
                acker,
                delivered,
                inflight,
            };
            if let Err(mpsc::error::SendError(p)) = tx.send(pending) {
                p.inflight.settle();
            }
        })
    }
}

async fn acknowledge(mut rx: mpsc::UnboundedReceiver<Pending>, history: Option<Arc<History>>) {
    let mut run = Vec::with_capacity(RUN);
    loop {
        run.clear();
        if rx.recv_many(&mut run, RUN).await == 0 {
            return;
        }
        if let Some(h) = &history {
            // Every event of the run was recorded before it was settled.
            h.barrier().await;
        }
        for p in run.drain(..) {
            if p.delivered
                && let Err(e) = p.acker.ack().await
            {
                // Redelivered to the partition's owner and routed again;
                // edges drop the repeat.
                tracing::debug!(error = %e, "ingest acknowledgement failed");
            }
            p.inflight.settle();
        }
    }
}
