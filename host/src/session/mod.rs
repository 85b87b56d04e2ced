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
pub mod ws;

use std::collections::HashSet;
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
    subscriptions: Mutex<HashSet<String>>,
    /// While a replay runs: live events wait here, to follow the replayed
    /// ones without a gap or a duplicate at the seam.
    held: Mutex<Option<Vec<Arc<EventFrame>>>>,
    /// The user's inbox cursor when the session opened (`Some(None)`: no
    /// cursor yet; unset: unknown, the inbox is not delivered). Read before
    /// the session goes live, so that live deliveries marking the cursor
    /// cannot hide what waited.
    pub inbox_cursor: std::sync::OnceLock<Option<EventId>>,
}

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
            subscriptions: Mutex::new(HashSet::new()),
            held: Mutex::new(None),
            inbox_cursor: std::sync::OnceLock::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Vec<Arc<EventFrame>>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds live events back until [`SessionHandle::release`].
    pub fn hold(&self) {
        let mut held = self.held();
        if held.is_none() {
            *held = Some(Vec::new());
        }
    }

    /// Delivers a live event: queued, or held while a replay runs.
    pub fn offer(&self, frame: &Arc<EventFrame>) -> Pushed {
        {
            let mut held = self.held();
            if let Some(buf) = held.as_mut() {
                if buf.len() >= MAX_HELD {
                    drop(held);
                    self.queue.close(CloseReason::SlowConsumer);
                    return Pushed::Overflowed;
                }
                buf.push(frame.clone());
                return Pushed::Queued;
            }
        }
        self.queue.push(Outbound::Event(frame.clone()))
    }

    /// Ends a hold: the held live events are queued, except those the
    /// replay already sent (`replayed`).
    pub fn release(&self, replayed: &HashSet<EventId>) {
        let mut held = self.held();
        for frame in held.take().unwrap_or_default() {
            let already = !replayed.is_empty()
                && EventId::parse(&frame.event().id).is_some_and(|id| replayed.contains(&id));
            if !already {
                self.queue.push(Outbound::Event(frame));
            }
        }
    }

    /// The topics it subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs().iter().cloned().collect()
    }

    /// Whether it subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.subs().contains(topic)
    }

    /// How many topics it subscribes to.
    pub fn subscription_count(&self) -> usize {
        self.subs().len()
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_subscription(&self, topic: &str) -> bool {
        self.subs().insert(topic.to_owned())
    }

    pub(crate) fn remove_subscription(&self, topic: &str) -> bool {
        self.subs().remove(topic)
    }
}
