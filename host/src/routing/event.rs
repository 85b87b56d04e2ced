//! The event envelope as the gateway carries it.

use super::{EventId, Topic};

/// An event: `{ id, topic, event, data, headers, sender, to_users }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Assigned once at ingest; formatted only at the wire and the store.
    pub id: EventId,
    /// Where it was published.
    pub topic: Topic,
    /// The event name (`message` by default).
    pub name: String,
    /// The payload, usually JSON.
    pub data: Vec<u8>,
    /// Metadata; names lower-cased at ingest.
    pub headers: Vec<(String, String)>,
    /// The publishing user, for client publishes.
    pub sender: Option<String>,
    /// Users addressed directly.
    pub to_users: Vec<String>,
}

/// The default event name.
pub const DEFAULT_EVENT_NAME: &str = "message";

impl Event {
    /// An event named `message` with no headers, sender or target users.
    pub fn new(id: EventId, topic: Topic, data: Vec<u8>) -> Self {
        Event {
            id,
            topic,
            name: DEFAULT_EVENT_NAME.to_owned(),
            data,
            headers: Vec::new(),
            sender: None,
            to_users: Vec::new(),
        }
    }

    /// Adds a header, lower-casing its name.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// An event with its routing decision: the topics and users it reaches.
/// This is what travels from the node that routed it to the nodes that
/// hold its recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The event, shared by every lane and frame that carries it.
    pub event: std::sync::Arc<Event>,
    /// Topics whose subscribers receive it.
    pub topics: Vec<String>,
    /// Users whose every live session receives it.
    pub users: Vec<String>,
    /// When the bus stored the event (ns; 0 on the local bus): with the id,
    /// tells a redelivery from a new event that reuses a sequence after the
    /// bus lost data.
    pub stamp: u64,
    /// Which partition routed it, under which lease.
    pub origin: Origin,
}

/// Where a routed event comes from: its partition (that of its own
/// topic) and the term of the lease under which it was routed. A term is
/// the lease's revision when it was taken, so a later owner of the
/// partition always has a higher one: an edge that has seen a term drops
/// what an earlier owner of the partition still sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// The partition.
    pub partition: super::Partition,
    /// The lease term (0 on the local bus).
    pub term: u64,
}
