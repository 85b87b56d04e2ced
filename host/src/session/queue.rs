//! A session's bounded outbound queue and its slow-consumer policy.
//!
//! Producers (fan-out) never wait. When the queue holds `depth` events:
//! - `drop_oldest` drops the oldest queued event to make room;
//! - `disconnect` drops the new event, and closes the session once the
//!   queue has stayed full for the grace period (a short burst costs a few
//!   events, reported; a client that stays behind is disconnected).
//!
//! Dropped events are counted and reported to the client with the next
//! batch. Control entries (welcome, acks, errors, receipts) are never
//! dropped, but a client that sends without reading is cut off once they
//! pile up past twice the depth. The session's one writer task drains
//! everything queued in one go, so a burst becomes one socket write.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;

/// Why a session's queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue stayed full past the grace period under `disconnect`, or
    /// control entries piled up.
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
    /// Queued after dropping the oldest queued event (`drop_oldest`).
    DroppedOldest,
    /// Not queued: the queue is full, within the grace period (`disconnect`).
    DroppedNewest,
    /// Not queued: the queue stayed full too long; the session is closing.
    Overflowed,
    /// Not queued: the session is closed.
    Closed,
}

struct Entry<T> {
    item: T,
    control: bool,
}

struct State<T> {
    items: VecDeque<Entry<T>>,
    /// Events (not controls) queued.
    events: usize,
    /// Dropped since the writer last reported it.
    dropped: u64,
    /// Since when the queue has been full (`disconnect`).
    full_since: Option<Instant>,
    closed: Option<CloseReason>,
}

/// The queue.
pub struct OutboundQueue<T> {
    depth: usize,
    policy: SlowConsumerPolicy,
    grace: Duration,
    state: Mutex<State<T>>,
    ready: Notify,
}

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<T> {
    /// Entries in order.
    pub items: Vec<T>,
    /// Events dropped since the last batch.
    pub dropped: u64,
    /// Set once the queue is closed: write `items`, then close.
    pub closed: Option<CloseReason>,
}

impl<T> OutboundQueue<T> {
    /// An empty queue holding at most `depth` events.
    pub fn new(depth: usize, policy: SlowConsumerPolicy, grace: Duration) -> Self {
        OutboundQueue {
            depth: depth.max(1),
            policy,
            grace,
            state: Mutex::new(State {
                items: VecDeque::new(),
                events: 0,
                dropped: 0,
                full_since: None,
                closed: None,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event without waiting, applying the policy when full.
    pub fn push(&self, item: T) -> Pushed {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        // The writer has been woken for a queue that already holds
        // something (it takes everything when it runs): waking it again per
        // event would cost a wake-up each during a backlog.
        let wake = s.items.is_empty() && s.dropped == 0;
        let pushed = if s.events < self.depth {
            s.items.push_back(Entry {
                item,
                control: false,
            });
            s.events += 1;
            Pushed::Queued
        } else {
            match self.policy {
                SlowConsumerPolicy::DropOldest => {
                    if let Some(i) = s.items.iter().position(|e| !e.control) {
                        s.items.remove(i);
                    }
                    s.items.push_back(Entry {
                        item,
                        control: false,
                    });
                    s.dropped += 1;
                    Pushed::DroppedOldest
                }
                SlowConsumerPolicy::Disconnect => {
                    let now = Instant::now();
                    let since = *s.full_since.get_or_insert(now);
                    if now.duration_since(since) >= self.grace {
                        s.closed = Some(CloseReason::SlowConsumer);
                        Pushed::Overflowed
                    } else {
                        s.dropped += 1;
                        Pushed::DroppedNewest
                    }
                }
            }
        };
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        pushed
    }

    /// Queues a control entry (ack, error, receipt). It is never dropped,
    /// and may exceed the depth, but not twice it: past that the client,
    /// which sends without reading, is cut off.
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
        s.items.push_back(Entry {
            item,
            control: true,
        });
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
                    s.events = 0;
                    s.full_since = None;
                    // Taken whole: an idle session's queue then holds no
                    // buffer (the batch's is freed once written).
                    let items = Vec::from(std::mem::take(&mut s.items));
                    return Batch {
                        items: items.into_iter().map(|e| e.item).collect(),
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

    const NO_GRACE: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn entries_come_out_in_order_in_one_batch() {
        let q = OutboundQueue::new(4, SlowConsumerPolicy::Disconnect, NO_GRACE);
        assert_eq!(q.push(1), Pushed::Queued);
        assert!(q.push_control(2));
        assert_eq!(q.push(3), Pushed::Queued);
        let b = q.next_batch().await;
        assert_eq!(
            b,
            Batch {
                items: vec![1, 2, 3],
                dropped: 0,
                closed: None
            }
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_drained_queue_keeps_no_buffer() {
        let q = OutboundQueue::new(64, SlowConsumerPolicy::Disconnect, NO_GRACE);
        for i in 0..10 {
            q.push(i);
        }
        assert_eq!(q.next_batch().await.items.len(), 10);
        assert_eq!(
            q.lock().items.capacity(),
            0,
            "an idle session holds no queue buffer"
        );
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_events_and_every_control() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::DropOldest, NO_GRACE);
        assert!(q.push_control(100));
        for i in 0..5 {
            q.push(i);
        }
        let b = q.next_batch().await;
        assert_eq!(
            b.items,
            [100, 3, 4],
            "the control survives, the oldest events go"
        );
        assert_eq!(b.dropped, 3);
        assert_eq!(q.push(9), Pushed::Queued);
        assert_eq!(
            q.next_batch().await.dropped,
            0,
            "the count is reported once"
        );
    }

    #[tokio::test]
    async fn disconnect_without_grace_closes_at_the_first_overflow() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect, NO_GRACE);
        q.push(1);
        q.push(2);
        assert_eq!(q.push(3), Pushed::Overflowed);
        assert_eq!(q.push(4), Pushed::Closed);
        let b = q.next_batch().await;
        assert_eq!(b.items, [1, 2]);
        assert_eq!(b.closed, Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn within_the_grace_a_burst_drops_and_reports_new_events_and_draining_resets_it() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect, LONG);
        q.push(1);
        q.push(2);
        assert_eq!(q.push(3), Pushed::DroppedNewest);
        assert_eq!(q.push(4), Pushed::DroppedNewest);
        let b = q.next_batch().await;
        assert_eq!((b.items, b.dropped, b.closed), (vec![1, 2], 2, None));
        assert_eq!(q.push(5), Pushed::Queued, "draining ends the full period");
    }

    #[tokio::test]
    async fn a_queue_full_past_the_grace_is_closed() {
        let q = OutboundQueue::new(1, SlowConsumerPolicy::Disconnect, Duration::from_millis(20));
        q.push(1);
        assert_eq!(q.push(2), Pushed::DroppedNewest);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(q.push(3), Pushed::Overflowed);
        assert_eq!(q.next_batch().await.closed, Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push_and_on_close() {
        let q = std::sync::Arc::new(OutboundQueue::new(
            2,
            SlowConsumerPolicy::Disconnect,
            NO_GRACE,
        ));
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
        let q = OutboundQueue::new(2, SlowConsumerPolicy::DropOldest, NO_GRACE);
        q.push(1);
        q.push(2);
        assert!(q.push_control(3));
        assert!(q.push_control(4));
        assert!(!q.push_control(5), "a client that never reads is cut off");
        assert_eq!(q.next_batch().await.closed, Some(CloseReason::SlowConsumer));
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect, NO_GRACE);
        q.close(CloseReason::Server(1001, "bye".into()));
        assert!(!q.push_control(1));
    }
}
