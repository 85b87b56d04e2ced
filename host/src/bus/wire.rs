//! How events look on NATS: the ingest message services publish to
//! `<prefix>.in.<topic>` (relayed, or mapped by the server, to its
//! partition's subject `<prefix>.ip.<partition>.<topic>`, where nodes
//! publish directly), and the routed delivery nodes exchange on
//! `<prefix>.out.t.<topic>` and `<prefix>.out.u.<user>`. Pure: no I/O.
//!
//! Ingest headers a service may set: `Sy-Event` (event name), `Sy-To-Users`
//! (comma-separated users), `Nats-Msg-Id` (idempotency key: JetStream drops a
//! repeat within its duplicate window). Any other header becomes an event
//! header, its name lower-cased. Nodes put everything in one `Sy-Meta` JSON
//! header instead, because user ids and header values may hold characters
//! a NATS header cannot.

use std::sync::Arc;

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

pub use super::subjects::{Subjects, Target};
use crate::routing::{Event, Origin, Partition, Routed, Topic};

/// Event name header.
pub const H_EVENT: &str = "Sy-Event";
/// Target users header (comma-separated).
pub const H_TO_USERS: &str = "Sy-To-Users";
/// The idempotency key, as JetStream's de-duplication header.
pub const H_MSG_ID: &str = "Nats-Msg-Id";
/// Everything, as JSON, from a node.
pub const H_META: &str = "Sy-Meta";
/// The event and its routing, as JSON, on a delivery.
pub const H_ROUTED: &str = "Sy-Routed";
/// On a delivery: the id its partition sent last on the same subject.
pub const H_PREV: &str = "Sy-Prev";

/// The event header that carries the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Why a message from NATS was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The subject is not under `<prefix>.in.`.
    #[error("subject {0:?} is not an ingest subject")]
    Subject(String),
    /// The topic in the subject is not valid.
    #[error("bad topic in subject {subject:?}: {reason}")]
    Topic {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A header could not be read.
    #[error("bad {header} header: {reason}")]
    Header {
        /// Which header.
        header: &'static str,
        /// Why.
        reason: String,
    },
}

/// A partition owner's beacon: the newest id it sent lately on each
/// subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Partition.
    pub p: u16,
    /// Lease term.
    pub term: u64,
    /// Which round of its owner's beacons (a round may take several
    /// messages).
    #[serde(default)]
    pub round: u64,
    /// (subject, id).
    pub last: Vec<(String, String)>,
    /// Sent by an owner handing the partition over, after its last
    /// delivery: it names every subject it still remembers sending on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closing: bool,
}

impl Beacon {
    /// Its origin.
    pub fn origin(&self) -> Origin {
        Origin {
            partition: Partition(self.p),
            term: self.term,
        }
    }
}

/// The id a delivery's partition sent before it on the same subject.
pub fn prev_of(headers: Option<&HeaderMap>) -> Option<crate::routing::EventId> {
    header(headers, H_PREV).and_then(crate::routing::EventId::parse)
}

#[derive(Serialize, Deserialize, Default)]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    to_users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(k, _)| {
            let k: &str = k.as_ref();
            k.eq_ignore_ascii_case(name)
        })
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// The headers and payload a node publishes for `event` (no id yet).
pub fn encode_ingest(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let meta = Meta {
        event: Some(event.name.clone()),
        sender: event.sender.clone(),
        to_users: event.to_users.clone(),
        headers: event.headers.clone(),
    };
    if let Ok(json) = serde_json::to_string(&meta) {
        headers.insert(H_META, json.as_str());
    }
    if let Some((_, key)) = event
        .headers
        .iter()
        .find(|(k, _)| k == IDEMPOTENCY_HEADER)
        .filter(|(_, v)| !v.contains(['\r', '\n']))
    {
        headers.insert(H_MSG_ID, key.as_str());
    }
    headers
}

/// Reads an ingest message into an event with the id `id`.
pub fn decode_ingest(
    subjects: &Subjects,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    id: crate::routing::EventId,
) -> Result<Event, WireError> {
    let topic = subjects
        .ingest_topic(subject)
        .ok_or_else(|| WireError::Subject(subject.to_owned()))?;
    let topic = Topic::parse(topic).map_err(|e| WireError::Topic {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })?;
    let mut event = Event::new(id, topic, payload.to_vec());
    if let Some(json) = header(headers, H_META) {
        let meta: Meta = serde_json::from_str(json).map_err(|e| WireError::Header {
            header: H_META,
            reason: e.to_string(),
        })?;
        if let Some(name) = meta.event {
            event.name = checked_name(name)?;
        }
        event.sender = meta.sender;
        event.to_users = meta.to_users;
        event.headers = meta.headers;
        return Ok(event);
    }
    for (name, values) in headers.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        let Some(value) = values.first().map(|v| v.as_str()) else {
            continue;
        };
        if name.eq_ignore_ascii_case(H_EVENT) {
            event.name = checked_name(value.trim().to_owned())?;
        } else if name.eq_ignore_ascii_case(H_TO_USERS) {
            event.to_users = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        } else if name.eq_ignore_ascii_case(H_MSG_ID) {
            event
                .headers
                .push((IDEMPOTENCY_HEADER.to_owned(), value.to_owned()));
        } else if !name.to_ascii_lowercase().starts_with("nats-") {
            event = event.with_header(name, value);
        }
    }
    Ok(event)
}

/// An event name from a service, held to what users may publish (a name
/// the gateway uses for its own SSE events would pass for a reset).
fn checked_name(name: String) -> Result<String, WireError> {
    crate::routing::published::check_name(&name).map_err(|e| WireError::Header {
        header: H_EVENT,
        reason: e.to_string(),
    })?;
    Ok(name)
}

#[derive(Serialize, Deserialize)]
struct RoutedMeta {
    id: String,
    topic: String,
    event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    to_users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    users: Vec<String>,
    #[serde(default)]
    stamp: u64,
    #[serde(default)]
    p: u16,
    #[serde(default)]
    term: u64,
}

/// The headers of a delivery (its payload is the event's data).
pub fn encode_routed(routed: &Routed) -> HeaderMap {
    let e = &routed.event;
    let meta = RoutedMeta {
        id: e.id.to_string(),
        topic: e.topic.as_str().to_owned(),
        event: e.name.clone(),
        sender: e.sender.clone(),
        to_users: e.to_users.clone(),
        headers: e.headers.clone(),
        topics: routed.topics.clone(),
        users: routed.users.clone(),
        stamp: routed.stamp,
        p: routed.origin.partition.0,
        term: routed.origin.term,
    };
    let mut headers = HeaderMap::new();
    if let Ok(json) = serde_json::to_string(&meta) {
        headers.insert(H_ROUTED, json.as_str());
    }
    headers
}

/// Reads a delivery.
pub fn decode_routed(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Routed, WireError> {
    let bad = |reason: String| WireError::Header {
        header: H_ROUTED,
        reason,
    };
    let json = header(headers, H_ROUTED).ok_or_else(|| bad("missing".into()))?;
    let m: RoutedMeta = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let topic = Topic::parse(&m.topic).map_err(|e| bad(e.to_string()))?;
    let id =
        crate::routing::EventId::parse(&m.id).ok_or_else(|| bad(format!("bad id {:?}", m.id)))?;
    let mut event = Event::new(id, topic, payload.to_vec());
    event.name = m.event;
    event.sender = m.sender;
    event.to_users = m.to_users;
    event.headers = m.headers;
    Ok(Routed {
        event: Arc::new(event),
        topics: m.topics,
        users: m.users,
        stamp: m.stamp,
        origin: Origin {
            partition: Partition(m.p),
            term: m.term,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("sy")
    }

    #[test]
    fn a_service_message_becomes_an_event() {
        let mut h = HeaderMap::new();
        h.insert("Sy-Event", "typing");
        h.insert("sy-to-users", "alice, bob,,");
        h.insert("Nats-Msg-Id", "k1");
        h.insert("Trace-Id", "abc");
        let e = decode_ingest(
            &subjects(),
            "sy.in.chat.room.1",
            Some(&h),
            b"{}",
            crate::routing::EventId { epoch: 0xa, seq: 1 },
        )
        .expect("decodes");
        assert_eq!(e.topic.as_str(), "chat.room.1");
        assert_eq!(e.id.to_string(), "a-1");
        assert_eq!(e.name, "typing");
        assert_eq!(e.to_users, ["alice", "bob"]);
        assert!(e.headers.contains(&("trace-id".into(), "abc".into())));
        assert!(
            e.headers
                .contains(&(IDEMPOTENCY_HEADER.into(), "k1".into()))
        );
        let bare = decode_ingest(
            &subjects(),
            "sy.in.news",
            None,
            b"hi",
            crate::routing::EventId { epoch: 0xa, seq: 2 },
        )
        .expect("no headers is fine");
        assert_eq!(bare.name, "message");
    }

    #[test]
    fn malformed_ingest_messages_are_refused_with_a_reason() {
        let decode = |subject: &str, h: Option<&HeaderMap>| {
            decode_ingest(
                &subjects(),
                subject,
                h,
                b"",
                crate::routing::EventId::UNASSIGNED,
            )
        };
        let long = format!("sy.in.{}", "a".repeat(300));
        assert!(matches!(decode(&long, None), Err(WireError::Topic { .. })));
        assert!(matches!(
            decode("other.in.x", None),
            Err(WireError::Subject(_))
        ));
        let mut h = HeaderMap::new();
        h.insert("Sy-Meta", "{not json");
        assert!(matches!(
            decode("sy.in.x", Some(&h)),
            Err(WireError::Header { header: H_META, .. })
        ));
        let mut h = HeaderMap::new();
        h.insert("Sy-Event", " ");
        assert!(decode("sy.in.x", Some(&h)).is_err());
        for reserved in ["reset", "dropped", "connected"] {
            let mut h = HeaderMap::new();
            h.insert("Sy-Event", reserved);
            assert!(
                matches!(
                    decode("sy.in.x", Some(&h)),
                    Err(WireError::Header {
                        header: H_EVENT,
                        ..
                    })
                ),
                "{reserved}"
            );
            let mut h = HeaderMap::new();
            h.insert("Sy-Meta", format!(r#"{{"event":"{reserved}"}}"#).as_str());
            assert!(
                decode("sy.in.x", Some(&h)).is_err(),
                "{reserved} in Sy-Meta"
            );
        }
    }

    #[test]
    fn node_ingest_round_trips_odd_users_and_headers() {
        let mut e = Event::new(
            crate::routing::EventId::UNASSIGNED,
            Topic::parse("dm.x").expect("topic"),
            b"1".to_vec(),
        );
        e.sender = Some("line\nbreak".into());
        e.to_users = vec!["a b".into(), "ü".into()];
        e = e.with_header(IDEMPOTENCY_HEADER, "key-1");
        let h = encode_ingest(&e);
        assert_eq!(header(Some(&h), H_MSG_ID), Some("key-1"));
        let back = decode_ingest(
            &subjects(),
            "sy.in.dm.x",
            Some(&h),
            b"1",
            crate::routing::EventId { epoch: 0xe, seq: 9 },
        )
        .expect("decodes");
        assert_eq!(back.sender, e.sender);
        assert_eq!(back.to_users, e.to_users);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.id.to_string(), "e-9");
    }

    #[test]
    fn routed_deliveries_round_trip() {
        let mut e = Event::new(
            crate::routing::EventId {
                epoch: 0x1a,
                seq: 7,
            },
            Topic::parse("chat.1").expect("topic"),
            b"{}".to_vec(),
        );
        e.name = "n".into();
        let r = Routed {
            event: Arc::new(e),
            topics: vec!["chat.1".into()],
            users: vec!["x.y *".into()],
            stamp: 7,
            origin: Origin {
                partition: Partition(5),
                term: 99,
            },
        };
        let back = decode_routed(Some(&encode_routed(&r)), b"{}").expect("decodes");
        assert_eq!(back, r);
        assert!(decode_routed(None, b"").is_err());
    }
}
