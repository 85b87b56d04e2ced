//! The `switchyard.v1` WebSocket protocol: client frames in, server frames
//! out. Pure: text in, values and text out.

use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;

/// A frame from the client.
#[derive(Debug)]
pub enum ClientFrame {
    /// `{"op":"subscribe","id":1,"topic":"...","since":"..."?}`
    Subscribe {
        /// Request id echoed in the ack.
        id: Option<u64>,
        /// Topic to subscribe to.
        topic: String,
        /// Replay everything after this event id.
        since: Option<String>,
    },
    /// `{"op":"unsubscribe","id":2,"topic":"..."}`
    Unsubscribe {
        /// Request id.
        id: Option<u64>,
        /// Topic.
        topic: String,
    },
    /// `{"op":"publish","id":3,"topic":"...","event"?:"...","data":<json>}`
    Publish {
        /// Request id.
        id: Option<u64>,
        /// Topic.
        topic: String,
        /// Event name.
        event: Option<String>,
        /// Payload, kept as the client's JSON text.
        data: Box<RawValue>,
    },
}

/// Typed error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, or a frame missing a field.
    BadFrame,
    /// An `op` the server does not know.
    UnknownOp,
    /// Refused by the authorizer.
    Forbidden,
    /// Over the publish rate.
    RateLimited,
    /// A malformed topic.
    InvalidTopic,
    /// Over `limits.max_subscriptions`.
    TooManySubscriptions,
    /// Unsubscribing from a topic not subscribed to.
    NotSubscribed,
    /// Events were dropped (`drop_oldest`).
    EventsDropped,
    /// The server failed; details are in its log.
    Internal,
    /// The event bus could not take the event now; retry.
    Unavailable,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::EventsDropped => "events_dropped",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A client frame the server refuses, with what to answer.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The request id, when one could be read.
    pub id: Option<u64>,
    /// The code.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFrame {
    #[allow(dead_code)]
    op: String,
    id: Option<u64>,
    topic: String,
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeFrame {
    #[allow(dead_code)]
    op: String,
    id: Option<u64>,
    topic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame {
    #[allow(dead_code)]
    op: String,
    id: Option<u64>,
    topic: String,
    event: Option<String>,
    data: Box<RawValue>,
}

/// The deepest nesting of arrays and objects a payload may have, as
/// serde_json allows when it parses a value (an HTTP publish's body).
pub const MAX_DEPTH: usize = 128;

/// Whether the JSON text `json` nests arrays and objects deeper than `max`.
fn deeper_than(json: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses one text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: ErrorCode::BadFrame,
        message: format!("not a JSON object: {e}"),
    })?;
    let id = envelope.id.as_ref().and_then(serde_json::Value::as_u64);
    let bad = |e: serde_json::Error| FrameError {
        id,
        code: ErrorCode::BadFrame,
        message: e.to_string(),
    };
    match envelope.op.as_deref() {
        Some("subscribe") => {
            let f: SubscribeFrame = serde_json::from_str(text).map_err(bad)?;
            Ok(ClientFrame::Subscribe {
                id: f.id,
                topic: f.topic,
                since: f.since,
            })
        }
        Some("unsubscribe") => {
            let f: UnsubscribeFrame = serde_json::from_str(text).map_err(bad)?;
            Ok(ClientFrame::Unsubscribe {
                id: f.id,
                topic: f.topic,
            })
        }
        Some("publish") => {
            let f: PublishFrame = serde_json::from_str(text).map_err(bad)?;
            // Kept as text, the payload escapes serde_json's depth limit:
            // a subscriber's parser (or a plugin's) might not.
            if deeper_than(f.data.get(), MAX_DEPTH) {
                return Err(FrameError {
                    id,
                    code: ErrorCode::BadFrame,
                    message: format!("data is nested deeper than {MAX_DEPTH} levels"),
                });
            }
            Ok(ClientFrame::Publish {
                id: f.id,
                topic: f.topic,
                event: f.event,
                data: f.data,
            })
        }
        Some(other) => Err(FrameError {
            id,
            code: ErrorCode::UnknownOp,
            message: format!("unknown op {other:?}: expected subscribe, unsubscribe or publish"),
        }),
        None => Err(FrameError {
            id,
            code: ErrorCode::BadFrame,
            message: "a frame needs an \"op\"".to_owned(),
        }),
    }
}

#[derive(Serialize)]
struct Welcome<'a> {
    op: &'static str,
    session: &'a str,
    user: &'a str,
    node: &'a str,
    heartbeat_s: u64,
}

/// `{"op":"welcome",...}`
pub fn welcome(session: &str, user: &str, node: &str, heartbeat_s: u64) -> String {
    to_text(&Welcome {
        op: "welcome",
        session,
        user,
        node,
        heartbeat_s,
    })
}

#[derive(Serialize)]
struct Ack<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
}

/// `{"op":"ack","id":1,"recovered"?:true}`
pub fn ack(id: Option<u64>, recovered: Option<bool>) -> String {
    to_text(&Ack {
        op: "ack",
        id,
        recovered,
        event_id: None,
    })
}

/// `{"op":"ack","id":1,"event_id":"<id>"}`: a publish is durable under
/// this id.
pub fn published(id: Option<u64>, event_id: &str) -> String {
    to_text(&Ack {
        op: "ack",
        id,
        recovered: None,
        event_id: Some(event_id),
    })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// `{"op":"error","id"?:1,"code":"...","message":"..."}`
pub fn error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    to_text(&ErrorFrame {
        op: "error",
        id,
        code: code.as_str(),
        message,
        count: None,
    })
}

/// `{"op":"error","code":"events_dropped","count":N,...}` under `drop_oldest`.
pub fn dropped(count: u64) -> String {
    to_text(&ErrorFrame {
        op: "error",
        id: None,
        code: ErrorCode::EventsDropped.as_str(),
        message: "the session fell behind and the oldest queued events were dropped",
        count: Some(count),
    })
}

/// `{"op":"error","code":"events_dropped","count":N,...}` for events lost
/// upstream that history cannot give back.
pub fn lost(count: u64) -> String {
    to_text(&ErrorFrame {
        op: "error",
        id: None,
        code: ErrorCode::EventsDropped.as_str(),
        message: "events were lost on the way and history does not keep them",
        count: Some(count),
    })
}

/// `{"op":"reconnect","after_ms":N}`
pub fn reconnect(after_ms: u64) -> String {
    format!(r#"{{"op":"reconnect","after_ms":{after_ms}}}"#)
}

fn to_text<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: Value) -> Result<ClientFrame, FrameError> {
        parse_client_frame(&v.to_string())
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert!(!deeper_than(r#"{"a":[1,{"b":2}]}"#, 3));
        assert!(deeper_than(r#"{"a":[1,{"b":2}]}"#, 2));
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(deeper_than(&deep, MAX_DEPTH));
        let quoted = format!(r#""{}\"{}""#, "[".repeat(500), "{".repeat(500));
        assert!(!deeper_than(&quoted, 1), "brackets in strings do not nest");
        let f = parse(json!({"op":"publish","id":7,"topic":"a","data":0})).expect("shallow");
        assert!(matches!(f, ClientFrame::Publish { .. }));
        let text = format!(r#"{{"op":"publish","id":7,"topic":"a","data":{deep}}}"#);
        let e = parse_client_frame(&text).expect_err("deep");
        assert_eq!((e.id, e.code), (Some(7), ErrorCode::BadFrame));
    }

    #[test]
    fn the_three_client_frames_parse() {
        match parse(json!({"op":"subscribe","id":1,"topic":"a.b","since":"x"})) {
            Ok(ClientFrame::Subscribe {
                id: Some(1),
                topic,
                since: Some(s),
            }) => {
                assert_eq!((topic.as_str(), s.as_str()), ("a.b", "x"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(json!({"op":"unsubscribe","id":2,"topic":"a"})),
            Ok(ClientFrame::Unsubscribe { .. })
        ));
        match parse(json!({"op":"publish","id":3,"topic":"a","data":{"x":[1,2]}})) {
            Ok(ClientFrame::Publish {
                data, event: None, ..
            }) => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_get_typed_errors_with_the_request_id() {
        let e = parse_client_frame("{not json").expect_err("bad");
        assert_eq!((e.id, e.code), (None, ErrorCode::BadFrame));
        let e = parse(json!({"op":"fly","id":9})).expect_err("unknown");
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::UnknownOp));
        let e = parse(json!({"op":"subscribe","id":4})).expect_err("missing topic");
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadFrame));
        assert!(e.message.contains("topic"), "{}", e.message);
        let e = parse(json!({"op":"subscribe","id":5,"topic":"a","extra":1}))
            .expect_err("unknown field");
        assert_eq!(e.code, ErrorCode::BadFrame);
        let e = parse(json!({"id":6})).expect_err("no op");
        assert_eq!((e.id, e.code), (Some(6), ErrorCode::BadFrame));
        assert_eq!(
            parse_client_frame("[1]").expect_err("array").code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn server_frames_are_the_documented_json() {
        let v: Value = serde_json::from_str(&welcome("s1", "alice", "n1", 30)).expect("json");
        assert_eq!(
            v,
            json!({"op":"welcome","session":"s1","user":"alice","node":"n1","heartbeat_s":30})
        );
        let v: Value = serde_json::from_str(&ack(Some(1), Some(true))).expect("json");
        assert_eq!(v, json!({"op":"ack","id":1,"recovered":true}));
        let v: Value =
            serde_json::from_str(&error(Some(2), ErrorCode::Forbidden, "no")).expect("json");
        assert_eq!(
            v,
            json!({"op":"error","id":2,"code":"forbidden","message":"no"})
        );
        let v: Value = serde_json::from_str(&reconnect(1500)).expect("json");
        assert_eq!(v, json!({"op":"reconnect","after_ms":1500}));
        let v: Value = serde_json::from_str(&dropped(3)).expect("json");
        assert_eq!(v["count"], 3);
    }
}
