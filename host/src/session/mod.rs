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
}

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
