//! A session's bounded outbound queue and its slow-consumer policy.
//!
//! Producers (fan-out) never wait: `push` either queues, drops the oldest
//! entry (`drop_oldest`), or marks the session for disconnection
//! (`disconnect`). The session's one writer task drains everything queued in
//! one go, so a burst becomes one socket write.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;

/// Why a session's queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed under the `disconnect` policy.
    SlowConsumer,
    /// The server is closing the session (drain, token expiry, a protocol
    /// error), with the WebSocket close code and reason to send.
    Server(u16, String),
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest entry.
    DroppedOldest,
    /// Not queued: the session overflowed and is being disconnected.
    Overflowed,
    /// Not queued: the session is closed.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    /// Dropped since the writer last reported it.
    dropped: u64,
    closed: Option<CloseReason>,
}

/// The queue.
pub struct OutboundQueue<T> {
    depth: usize,
    policy: SlowConsumerPolicy,
    state: Mutex<State<T>>,
    ready: Notify,
}

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<T> {
    /// Entries in order.
    pub items: Vec<T>,
    /// Entries dropped (oldest first) since the last batch.
    pub dropped: u64,
    /// Set once the queue is closed and drained: write `items`, then close.
    pub closed: Option<CloseReason>,
}

impl<T> OutboundQueue<T> {
    /// An empty queue holding at most `depth` entries.
    pub fn new(depth: usize, policy: SlowConsumerPolicy) -> Self {
        OutboundQueue {
            depth: depth.max(1),
            policy,
            state: Mutex::new(State {
                items: VecDeque::new(),
                dropped: 0,
                closed: None,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` without waiting, applying the policy when full.
    pub fn push(&self, item: T) -> Pushed {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        let pushed = if s.items.len() < self.depth {
            s.items.push_back(item);
            Pushed::Queued
        } else {
            match self.policy {
                SlowConsumerPolicy::DropOldest => {
                    s.items.pop_front();
                    s.items.push_back(item);
                    s.dropped += 1;
                    Pushed::DroppedOldest
                }
                SlowConsumerPolicy::Disconnect => {
                    s.closed = Some(CloseReason::SlowConsumer);
                    Pushed::Overflowed
                }
            }
        };
        drop(s);
        self.ready.notify_one();
        pushed
    }

    /// Queues a control entry (ack, error): it may exceed the depth, since
    /// it answers the session's own request and must not be dropped, but
    /// not twice the depth: a client that sends without reading is a slow
    /// consumer too.
    pub fn push_control(&self, item: T) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() {
            return false;
        }
        if s.items.len() >= self.depth.saturating_mul(2) {
            s.closed = Some(CloseReason::SlowConsumer);
            drop(s);
            self.ready.notify_one();
            return false;
        }
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Closes the queue; what is queued is still handed to the writer.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(reason);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for entries (or closure) and takes everything queued.
    pub async fn next_batch(&self) -> Batch<T> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if !s.items.is_empty() || s.dropped > 0 || s.closed.is_some() {
                    return Batch {
                        items: s.items.drain(..).collect(),
                        dropped: std::mem::take(&mut s.dropped),
                        closed: s.closed.clone(),
                    };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_come_out_in_order_in_one_batch() {
        let q = OutboundQueue::new(4, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push(1), Pushed::Queued);
        assert_eq!(q.push(2), Pushed::Queued);
        let b = q.next_batch().await;
        assert_eq!(
            b,
            Batch {
                items: vec![1, 2],
                dropped: 0,
                closed: None
            }
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::DropOldest);
        for i in 0..5 {
            q.push(i);
        }
        let b = q.next_batch().await;
        assert_eq!(b.items, [3, 4]);
        assert_eq!(b.dropped, 3);
        assert_eq!(q.push(9), Pushed::Queued);
        assert_eq!(
            q.next_batch().await.dropped,
            0,
            "the count is reported once"
        );
    }

    #[tokio::test]
    async fn disconnect_closes_on_overflow_and_still_hands_over_what_was_queued() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect);
        q.push(1);
        q.push(2);
        assert_eq!(q.push(3), Pushed::Overflowed);
        assert_eq!(q.push(4), Pushed::Closed);
        let b = q.next_batch().await;
        assert_eq!(b.items, [1, 2]);
        assert_eq!(b.closed, Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push_and_on_close() {
        let q = std::sync::Arc::new(OutboundQueue::new(2, SlowConsumerPolicy::Disconnect));
        let writer = {
            let q = q.clone();
            tokio::spawn(async move { q.next_batch().await })
        };
        tokio::task::yield_now().await;
        q.push(7);
        assert_eq!(writer.await.expect("join").items, [7]);
        let writer = {
            let q = q.clone();
            tokio::spawn(async move { q.next_batch().await })
        };
        tokio::task::yield_now().await;
        q.close(CloseReason::Server(1001, "drain".into()));
        assert_eq!(
            writer.await.expect("join").closed,
            Some(CloseReason::Server(1001, "drain".into()))
        );
    }

    #[tokio::test]
    async fn control_entries_may_exceed_the_depth_up_to_twice_it() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::DropOldest);
        q.push(1);
        q.push(2);
        assert!(q.push_control(3));
        assert!(q.push_control(4));
        assert!(!q.push_control(5), "a client that never reads is cut off");
        assert_eq!(q.next_batch().await.closed, Some(CloseReason::SlowConsumer));
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect);
        q.close(CloseReason::Server(1001, "bye".into()));
        assert!(!q.push_control(1));
    }
}
