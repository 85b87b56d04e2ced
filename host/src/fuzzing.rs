//! The fuzz targets: everything that parses bytes a stranger can send.
//! Each takes arbitrary bytes, must never panic, and checks what must hold
//! of what it accepted (a parsed value reads back the same once written).
//! `fuzz/` runs them under libFuzzer; `tests/fuzz_corpora.rs` replays
//! their corpora on stable as ordinary tests.

use std::sync::OnceLock;

use crate::auth::JwtVerifier;
use crate::bus::wire;
use crate::routing::{Cursor, EventId, Topic, TopicPattern};

/// A fuzz target: arbitrary bytes in, a panic for a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("stomp_frames", stomp_frames),
    ("json_frames", json_frames),
    ("sse_query", sse_query),
    ("cursors", cursors),
    ("topics", topics),
    ("jwt", jwt),
    ("nats_wire", nats_wire),
    ("config", config),
];

/// The input's first `n - 1` NUL-separated fields, then the rest.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A STOMP WebSocket message: frames that parse encode to frames that
/// parse back the same (with `content-length` added to a body without).
pub fn stomp_frames(data: &[u8]) {
    use crate::session::stomp::frame::{parse_all, parse_heart_beat};
    let Ok(frames) = parse_all(data) else { return };
    for f in frames {
        let _ = parse_heart_beat(f.get("heart-beat"));
        let again = parse_all(&f.encode()).expect("an encoded frame parses");
        assert_eq!(again.len(), 1, "one frame encodes to one: {f:?}");
        let g = &again[0];
        assert_eq!((&g.command, &g.body), (&f.command, &f.body), "{f:?}");
        // CONNECT and CONNECTED have no escapes: CR and LF are not sent.
        let plain = matches!(f.command.as_str(), "CONNECT" | "CONNECTED");
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        let expected: Vec<(String, String)> = f
            .headers
            .iter()
            .map(|(k, v)| {
                if plain {
                    (clean(k), clean(v))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let added = g.headers.len() - expected.len();
        assert!(added <= 1, "{f:?} became {g:?}");
        assert_eq!(&g.headers[..expected.len()], &expected[..], "{f:?}");
    }
}

/// A `switchyard.v1` client text frame.
pub fn json_frames(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::session::json::parse_client_frame(t);
    }
}

/// The SSE query string and, after a NUL, a `Last-Event-ID`.
pub fn sse_query(data: &[u8]) {
    let f = fields(data, 2);
    if let Some(q) = text(f[0]) {
        let _ = crate::session::sse::SseQuery::parse(Some(q));
    }
    if let Some(id) = f.get(1).copied().and_then(text) {
        cursors(id.as_bytes());
    }
}

/// Event ids and cursors: what parses writes back to itself.
pub fn cursors(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Some(id) = EventId::parse(t) {
        assert_eq!(EventId::parse(&id.to_string()), Some(id), "{t:?}");
    }
    if let Some(c) = Cursor::parse(t) {
        assert_eq!(Cursor::parse(&c.to_string()).as_ref(), Some(&c), "{t:?}");
        assert!(c.lowest() <= c.at.seq, "{t:?}");
    }
}

/// A topic and, after a NUL, a pattern: a valid topic parses from its own
/// text, and matching never panics.
pub fn topics(data: &[u8]) {
    let f = fields(data, 2);
    let topic = text(f[0]).and_then(|t| Topic::parse(t).ok());
    if let Some(t) = &topic {
        assert_eq!(Topic::parse(t.as_str()).ok().as_ref(), Some(t));
    }
    let pattern = f
        .get(1)
        .copied()
        .and_then(text)
        .and_then(|p| TopicPattern::parse(p).ok());
    if let (Some(t), Some(p)) = (&topic, &pattern) {
        let _ = p.matches(t.as_str());
    }
}

const FUZZ_SECRET: &str = "fuzzing-secret-fuzzing-secret-0123";

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let config = crate::config::AuthConfig {
            jwt_hs256_secret: Some(FUZZ_SECRET.to_owned()),
            ..Default::default()
        };
        JwtVerifier::new(&config).expect("a verifier")
    })
}

/// A JWT as sent, and one with a fuzzed header and claims, signed with the
/// right key so that the claims are read too: an accepted `sub` is a
/// plausible user id.
pub fn jwt(data: &[u8]) {
    use base64::Engine as _;
    let v = verifier();
    if let Some(t) = text(data) {
        let _ = v.verify(t);
    }
    let f = fields(data, 2);
    let Some(claims) = f.get(1) else { return };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(f[0]), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes());
    let Ok(signature) =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    else {
        return;
    };
    if let Ok(token) = v.verify(&format!("{message}.{signature}")) {
        assert!(!token.user.is_empty() && !token.user.chars().any(char::is_control));
    }
}

/// A NATS message: a subject, header values (`Sy-Meta`, `Sy-Event`,
/// `Sy-To-Users`, `Sy-Routed`) and a payload, NUL-separated, read as an
/// ingest message and as a delivery.
pub fn nats_wire(data: &[u8]) {
    let f = fields(data, 6);
    let Some(subject) = text(f[0]) else { return };
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        wire::H_META,
        wire::H_EVENT,
        wire::H_TO_USERS,
        wire::H_ROUTED,
    ]
    .iter()
    .zip(f.iter().skip(1))
    {
        if let Some(v) = text(value)
            && !v.contains(['\r', '\n'])
        {
            headers.insert(*name, v);
        }
    }
    let payload = f.get(5).copied().unwrap_or_default();
    let subjects = wire::Subjects::new("sy");
    let id = EventId { epoch: 1, seq: 1 };
    if let Ok(e) = wire::decode_ingest(&subjects, subject, Some(&headers), payload, id) {
        assert_eq!(e.data, payload);
    }
    let _ = wire::decode_routed(Some(&headers), payload);
    let _ = wire::prev_of(Some(&headers));
}

/// A config file.
pub fn config(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::config::Config::from_toml_str(t);
    }
}
