//! Client sessions: their state, bounded outbound queue and protocol adapters.
//!
//! - [`queue`]: the bounded queue and slow-consumer policy (pure logic);
//! - [`json`]: the `switchyard.v1` frames (pure);
//! - [`frame`]: an event encoded once per protocol and shared;
//! - [`ws`], [`stomp`], [`sse`]: the protocol adapters.

pub mod frame;
pub mod json;
pub mod queue;
pub mod sse;
pub mod stomp;
pub mod unanswered;
pub mod ws;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::SlowConsumerPolicy;
use crate::plugin::Audience;
use crate::routing::EventId;
use crate::subject::Subject;
pub use frame::EventFrame;
pub use queue::{CloseReason, OutboundQueue, Pushed};

/// The protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `switchyard.v1` over WebSocket.
    Json,
    /// STOMP over WebSocket.
    Stomp,
    /// Server-sent events.
    Sse,
}

impl Protocol {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Stomp => "stomp",
            Protocol::Sse => "sse",
        }
    }
}

/// What a session's writer sends.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An event, encoded once for everyone.
    Event(Arc<EventFrame>),
    /// A protocol frame for this session alone (ack, error), already encoded.
    Control(String),
    /// A WebSocket ping (the node's heartbeat, `switchyard.v1` sessions).
    Ping,
    /// This many events before what follows were lost upstream and cannot
    /// be replayed (told in each protocol's way, at this place in order).
    Lost(u64),
}

/// An audience and the plugin-set generation that computed it.
#[derive(Debug)]
pub struct StampedAudience {
    /// [`crate::plugin::PluginSet::generation`] of the set that computed it.
    pub generation: u64,
    /// The audience.
    pub audience: Arc<Audience>,
}

/// One live session as the rest of the gateway sees it.
pub struct SessionHandle {
    /// Process-unique number (also the subject's id for plugin instances).
    pub num: u64,
    /// The session id clients see.
    pub id: String,
    /// Who it belongs to.
    pub subject: Subject,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its outbound queue.
    pub queue: OutboundQueue<Outbound>,
    /// Its audience for the transformers, as computed by the plugin set of
    /// that generation (recomputed on first use after a reload).
    pub audience: arc_swap::ArcSwapOption<StampedAudience>,
    /// Sorted: a few topics each, where a hash set's smallest table is
    /// several times the size of the names (idle memory per session).
    subscriptions: Mutex<Vec<Box<str>>>,
    /// Live events held during a replay, and the floors of recovered topics.
    flow: Mutex<Flow>,
    /// Whether `flow` holds or judges anything; when not (nearly always),
    /// a delivery skips its lock.
    flowing: AtomicBool,
    /// When it opened.
    opened: std::time::Instant,
    /// When the client last sent anything, in ms after `opened`.
    last_seen_ms: std::sync::atomic::AtomicU64,
    /// The user's inbox cursors when the session opened (unset: unknown,
    /// the inbox is not delivered). Read before the session goes live, so
    /// that live deliveries marking the cursor cannot hide what waited.
    pub inbox_cursor: std::sync::OnceLock<crate::store::inbox::InboxCursor>,
}

/// What stands between the edge and a session's queue.
#[derive(Default)]
struct Flow {
    /// While a replay runs: live events wait here, to follow the replayed
    /// ones without a gap or a duplicate at the seam.
    held: Option<Vec<Arc<EventFrame>>>,
    /// Per topic recovered from a cursor, the newest event the client has.
    /// A topic's events arrive in order, so an older one is a redelivery
    /// (the next router re-routing what a failed node routed): dropped.
    floors: std::collections::HashMap<String, EventId>,
}

impl Flow {
    /// Whether `frame` goes out (and raises its topic's floor).
    fn admit(&mut self, frame: &EventFrame) -> bool {
        if self.floors.is_empty() {
            return true;
        }
        let event = frame.event();
        let id = event.id;
        let Some(floor) = self.floors.get_mut(event.topic.as_str()) else {
            return true;
        };
        if floor.epoch == id.epoch && id.seq <= floor.seq {
            return false;
        }
        *floor = id;
        true
    }
}

/// `tokio::time::timeout`, except that a future ready on its first poll (a
/// socket write with room, nearly always) never touches the timer: creating
/// one per batch was 5% of a fan-out's server CPU. The timer is boxed, so
/// that a session's writer does not carry one in its state while idle, and
/// the future is lent pinned (`Unpin`: a `Pin<&mut _>` or a small future).
pub(crate) async fn within<F: std::future::Future + Unpin>(
    limit: std::time::Duration,
    mut fut: F,
) -> Result<F::Output, Stalled> {
    use std::task::Poll;
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = std::pin::Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Stalled)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A write did not complete within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stalled;

/// Live events held during a replay before the session is closed as a slow
/// consumer (a replay takes milliseconds; this guards memory, not timing).
const MAX_HELD: usize = 65_536;

impl SessionHandle {
    /// A session with an empty queue of `depth` and no subscriptions.
    pub fn new(
        num: u64,
        node: &str,
        mut subject: Subject,
        protocol: Protocol,
        depth: usize,
        policy: SlowConsumerPolicy,
        grace: std::time::Duration,
    ) -> Self {
        let id = format!("{node}-{num}");
        subject.id = num;
        subject.session = id.clone();
        SessionHandle {
            num,
            id,
            subject,
            protocol,
            queue: OutboundQueue::new(depth, policy, grace),
            audience: arc_swap::ArcSwapOption::empty(),
            subscriptions: Mutex::new(Vec::new()),
            flow: Mutex::new(Flow::default()),
            flowing: AtomicBool::new(false),
            opened: std::time::Instant::now(),
            last_seen_ms: std::sync::atomic::AtomicU64::new(0),
            inbox_cursor: std::sync::OnceLock::new(),
        }
    }

    /// The client sent something (a frame, a pong).
    pub fn seen(&self) {
        self.last_seen_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the client has sent nothing.
    pub fn silent_for(&self) -> std::time::Duration {
        let seen = std::time::Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(seen)
    }

    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds live events back until [`SessionHandle::release`].
    pub fn hold(&self) {
        let mut flow = self.flow();
        if flow.held.is_none() {
            flow.held = Some(Vec::new());
        }
        self.flowing.store(true, Ordering::SeqCst);
    }

    /// Delivers a live event: queued, or held while a replay runs.
    pub fn offer(&self, frame: &Arc<EventFrame>) -> Pushed {
        // An offer that reads `false` here is ordered before a concurrent
        // `hold`, as one that took the lock first would be.
        if self.flowing.load(Ordering::SeqCst) {
            let mut flow = self.flow();
            if let Some(buf) = flow.held.as_mut() {
                if buf.len() >= MAX_HELD {
                    drop(flow);
                    self.queue.close(CloseReason::SlowConsumer);
                    return Pushed::Overflowed;
                }
                buf.push(frame.clone());
                return Pushed::Queued;
            }
            if !flow.admit(frame) {
                return Pushed::Queued;
            }
        }
        self.queue.push(Outbound::Event(frame.clone()))
    }

    /// Ends a hold: raises the `floors` of recovered topics, then queues
    /// the held live events except those the replay already sent
    /// (`replayed`) or older than their topic's floor.
    pub fn release(&self, replayed: &HashSet<EventId>, floors: &[(String, EventId)]) {
        let mut flow = self.flow();
        for (topic, id) in floors {
            let floor = flow.floors.entry(topic.clone()).or_insert(*id);
            if floor.epoch != id.epoch || floor.seq < id.seq {
                *floor = *id;
            }
        }
        for frame in flow.held.take().unwrap_or_default() {
            let already = !replayed.is_empty() && replayed.contains(&frame.event().id);
            if !already && flow.admit(&frame) {
                self.queue.push(Outbound::Event(frame));
            }
        }
        self.flowing
            .store(!flow.floors.is_empty(), Ordering::SeqCst);
    }

    /// Ends a hold by dropping the live events it held, for a session
    /// about to close because a replay could not be made: sending them
    /// would carry the client's cursor past the events it missed.
    pub fn discard_held(&self) {
        let mut flow = self.flow();
        flow.held = None;
        self.flowing
            .store(!flow.floors.is_empty(), Ordering::SeqCst);
    }

    /// Tells the client that events it should have had were lost
    /// upstream and cannot be replayed.
    pub fn lost(&self, n: u64) {
        self.queue.push_control(Outbound::Lost(n));
    }

    /// The topics it subscribes to, in order.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs().iter().map(|t| t.to_string()).collect()
    }

    /// Whether it subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.subs().binary_search_by(|t| (**t).cmp(topic)).is_ok()
    }

    /// How many topics it subscribes to.
    pub fn subscription_count(&self) -> usize {
        self.subs().len()
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Vec<Box<str>>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_subscription(&self, topic: &str) -> bool {
        let mut subs = self.subs();
        match subs.binary_search_by(|t| (**t).cmp(topic)) {
            Ok(_) => false,
            Err(at) => {
                subs.insert(at, topic.into());
                true
            }
        }
    }

    pub(crate) fn remove_subscription(&self, topic: &str) -> bool {
        let mut subs = self.subs();
        match subs.binary_search_by(|t| (**t).cmp(topic)) {
            Ok(at) => {
                subs.remove(at);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Event, Topic};

    fn frame(topic: &str, seq: u64) -> Arc<EventFrame> {
        let topic = Topic::parse(topic).expect("topic");
        EventFrame::new(Arc::new(Event::new(
            EventId { epoch: 7, seq },
            topic,
            b"{}".to_vec(),
        )))
    }

    #[test]
    fn subscriptions_are_kept_once_each_in_order() {
        let s = SessionHandle::new(
            1,
            "n",
            Subject::new("u", ""),
            Protocol::Json,
            4,
            SlowConsumerPolicy::Disconnect,
            std::time::Duration::ZERO,
        );
        assert!(s.add_subscription("b"));
        assert!(s.add_subscription("a.x"));
        assert!(s.add_subscription("c"));
        assert!(!s.add_subscription("b"), "already subscribed");
        assert_eq!(s.subscriptions(), ["a.x", "b", "c"]);
        assert!(s.is_subscribed("c") && !s.is_subscribed("a"));
        assert!(s.remove_subscription("b"));
        assert!(!s.remove_subscription("b"), "already gone");
        assert_eq!(s.subscription_count(), 2);
    }

    #[tokio::test]
    async fn within_answers_a_ready_future_and_times_out_a_stuck_one() {
        let short = std::time::Duration::from_millis(20);
        assert_eq!(within(short, std::future::ready(7)).await, Ok(7));
        let stuck = within(short, std::future::pending::<()>()).await;
        assert_eq!(stuck, Err(Stalled));
        let later = std::pin::pin!(async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            8
        });
        let later = within(std::time::Duration::from_secs(30), later).await;
        assert_eq!(later, Ok(8), "ready after a wait, within the limit");
    }

    #[test]
    fn a_recovered_topic_drops_redeliveries_at_or_below_its_floor() {
        let mut flow = Flow::default();
        assert!(flow.admit(&frame("a", 1)), "no floors: everything goes");
        flow.floors
            .insert("a".into(), EventId { epoch: 7, seq: 10 });
        assert!(!flow.admit(&frame("a", 9)), "a redelivery");
        assert!(!flow.admit(&frame("a", 10)));
        assert!(flow.admit(&frame("a", 11)));
        assert!(!flow.admit(&frame("a", 11)), "the floor follows");
        assert!(flow.admit(&frame("b", 3)), "other topics are not judged");
    }
}
