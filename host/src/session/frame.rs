//! An event encoded for the wire once, shared by every session that gets it.
//! Each protocol's encoding is built the first time a session of that
//! protocol needs it.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use serde_json::value::RawValue;

use crate::routing::Event;

/// How a payload travels: JSON as itself, text as a string, bytes as base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Valid JSON.
    Json,
    /// UTF-8 text that is not JSON.
    Text,
    /// Anything else.
    Binary,
}

/// Classifies a payload.
pub fn data_kind(data: &[u8]) -> DataKind {
    if serde_json::from_slice::<&RawValue>(data).is_ok() {
        DataKind::Json
    } else if std::str::from_utf8(data).is_ok() {
        DataKind::Text
    } else {
        DataKind::Binary
    }
}

/// One event, encoded lazily per protocol.
#[derive(Debug)]
pub struct EventFrame {
    event: Arc<Event>,
    kind: DataKind,
    /// Shared by every WebSocket recipient without copying.
    json: OnceLock<Utf8Bytes>,
    sse: OnceLock<String>,
}

impl EventFrame {
    /// Wraps an event; nothing is encoded yet.
    pub fn new(event: Arc<Event>) -> Arc<Self> {
        let kind = data_kind(&event.data);
        Arc::new(EventFrame {
            event,
            kind,
            json: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    /// How the payload travels (classified once).
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// The event.
    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    /// `{"op":"event","topic":...,"id":...,"event":...,"data":...}`
    pub fn json(&self) -> &str {
        self.json_message().as_str()
    }

    /// The JSON frame as a shareable WebSocket payload (a reference-counted
    /// buffer: cloning it copies nothing).
    pub fn json_message(&self) -> &Utf8Bytes {
        self.json.get_or_init(|| {
            let e = &self.event;
            let mut out = String::with_capacity(64 + e.data.len() + e.topic.as_str().len());
            out.push_str(r#"{"op":"event","topic":"#);
            push_json_string(&mut out, e.topic.as_str());
            out.push_str(r#","id":""#);
            let _ = write!(out, "{}", e.id);
            out.push('"');
            out.push_str(r#","event":"#);
            push_json_string(&mut out, &e.name);
            out.push_str(r#","data":"#);
            self.push_data(&mut out);
            out.push('}');
            Utf8Bytes::from(out)
        })
    }

    /// [`EventFrame::sse`] after its `id:` line, for a session that
    /// writes a cursor of its own there.
    pub fn sse_without_id(&self) -> &str {
        let text = self.sse();
        text.find('\n').map_or(text, |i| &text[i + 1..])
    }

    /// `id:`, `event:` and `data:` lines, ending with a blank line.
    pub fn sse(&self) -> &str {
        self.sse.get_or_init(|| {
            let e = &self.event;
            let mut out = String::with_capacity(32 + e.data.len());
            out.push_str("id: ");
            let _ = write!(out, "{}", e.id);
            out.push_str("\nevent: ");
            out.push_str(&single_line(&e.name));
            out.push('\n');
            let data = match self.kind {
                // JSON and text are sent as they are, one `data:` line per line.
                DataKind::Json | DataKind::Text => String::from_utf8_lossy(&e.data).into_owned(),
                DataKind::Binary => {
                    let mut s = String::new();
                    self.push_data(&mut s);
                    s
                }
            };
            // EventSource ends a line at CRLF, LF or a lone CR.
            for line in data.replace("\r\n", "\n").split(['\r', '\n']) {
                out.push_str("data: ");
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
            out
        })
    }

    fn push_data(&self, out: &mut String) {
        let data = &self.event.data;
        match self.kind {
            DataKind::Json => match std::str::from_utf8(data) {
                Ok(s) => out.push_str(s.trim()),
                Err(_) => out.push_str("null"),
            },
            DataKind::Text => push_json_string(out, &String::from_utf8_lossy(data)),
            DataKind::Binary => {
                out.push_str(r#"{"encoding":"base64","data":""#);
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
                out.push_str(r#""}"#);
            }
        }
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

/// SSE fields end at a newline: keep ids and names on one line.
fn single_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Topic;
    use serde_json::{Value, json};

    fn frame(data: &[u8]) -> Arc<EventFrame> {
        let topic = Topic::parse("chat.room.1").expect("topic");
        EventFrame::new(Arc::new(Event::new(
            crate::routing::EventId { epoch: 7, seq: 1 },
            topic,
            data.to_vec(),
        )))
    }

    #[test]
    fn json_payloads_are_embedded_as_json() {
        let f = frame(br#"{"text":"hi","n":[1,2]}"#);
        let v: Value = serde_json::from_str(f.json()).expect("json");
        assert_eq!(
            v,
            json!({"op":"event","topic":"chat.room.1","id":"7-1","event":"message","data":{"text":"hi","n":[1,2]}})
        );
        assert_eq!(
            f.sse(),
            "id: 7-1\nevent: message\ndata: {\"text\":\"hi\",\"n\":[1,2]}\n\n"
        );
    }

    #[test]
    fn text_and_binary_payloads_follow_the_wire_rules() {
        let f = frame(b"plain text");
        let v: Value = serde_json::from_str(f.json()).expect("json");
        assert_eq!(v["data"], "plain text");
        let f = frame(&[0xff, 0x00, 0x10]);
        let v: Value = serde_json::from_str(f.json()).expect("json");
        assert_eq!(v["data"], json!({"encoding":"base64","data":"/wAQ"}));
        assert!(
            f.sse()
                .contains("data: {\"encoding\":\"base64\",\"data\":\"/wAQ\"}\n")
        );
    }

    #[test]
    fn multi_line_payloads_become_several_data_lines() {
        let cr = frame(b"a\rb\r\nc");
        assert_eq!(
            cr.sse(),
            "id: 7-1\nevent: message\ndata: a\ndata: b\ndata: c\n\n"
        );
        let f = frame(b"{\n  \"a\": 1\n}");
        assert_eq!(
            f.sse(),
            "id: 7-1\nevent: message\ndata: {\ndata:   \"a\": 1\ndata: }\n\n"
        );
        let v: Value = serde_json::from_str(f.json()).expect("still one JSON frame");
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn encodings_are_built_once() {
        let f = frame(b"{}");
        let a: *const str = f.json();
        let b: *const str = f.json();
        assert_eq!(a, b);
    }
}
