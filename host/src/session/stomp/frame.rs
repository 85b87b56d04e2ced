//! The STOMP 1.2 (and 1.1) frame codec. Pure: bytes in, frames out.
//!
//! A frame is a command line, header lines, a blank line, a body and a NUL.
//! End-of-line may be `\n` or `\r\n`; bare EOLs between frames are
//! heart-beats. Header values are escaped (`\\`, `\n`, `\r`, `\c`) except in
//! CONNECT and CONNECTED frames. With `content-length` the body is read by
//! length (and may contain NULs); without it, up to the first NUL.

use std::fmt;

/// Commands a client may send.
pub const CLIENT_COMMANDS: &[&str] = &[
    "CONNECT",
    "STOMP",
    "SEND",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ACK",
    "NACK",
    "BEGIN",
    "COMMIT",
    "ABORT",
    "DISCONNECT",
];

/// A STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The command, e.g. `SEND`.
    pub command: String,
    /// Headers in order; on repeats the first one counts.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A frame that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An unknown command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line without a colon.
    #[error("malformed header line {0:?}")]
    BadHeader(String),
    /// An escape other than `\\`, `\n`, `\r`, `\c`.
    #[error("invalid escape sequence in header {0:?}")]
    BadEscape(String),
    /// `content-length` not a number.
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    /// The body is not followed by NUL.
    #[error("the frame body is not terminated by a NUL octet")]
    MissingNul,
    /// The frame ended early.
    #[error("the frame is incomplete")]
    Incomplete,
    /// Not UTF-8 where text is required.
    #[error("the command and headers must be UTF-8")]
    NotUtf8,
}

impl Frame {
    /// A frame with a command and no headers or body.
    pub fn new(command: &str) -> Self {
        Frame {
            command: command.to_owned(),
            ..Frame::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn escapes_headers(&self) -> bool {
        self.command != "CONNECT" && self.command != "CONNECTED"
    }

    /// Encodes the frame; `content-length` is added when there is a body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        let escape = self.escapes_headers();
        for (k, v) in &self.headers {
            push_escaped(&mut out, k, escape);
            out.push(b':');
            push_escaped(&mut out, v, escape);
            out.push(b'\n');
        }
        if !self.body.is_empty() && self.get("content-length").is_none() {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command)
    }
}

fn push_escaped(out: &mut Vec<u8>, s: &str, escape: bool) {
    if !escape {
        // CONNECT and CONNECTED have no escapes: a CR or LF would end the
        // header line early (and forge the next one), so each becomes a
        // space. Dropping them instead could join a name's pieces into
        // another header (`content-\rlength`).
        out.extend(
            s.bytes()
                .map(|b| if matches!(b, b'\r' | b'\n') { b' ' } else { b }),
        );
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            b => out.push(b),
        }
    }
}

fn unescape(s: &str) -> Result<String, FrameError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            _ => return Err(FrameError::BadEscape(s.to_owned())),
        }
    }
    Ok(out)
}

/// Splits a buffer (one WebSocket message) into frames; heart-beat EOLs
/// between frames are skipped.
pub fn parse_all(mut buf: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    loop {
        while let Some(rest) = buf
            .strip_prefix(b"\r\n")
            .or_else(|| buf.strip_prefix(b"\n"))
        {
            buf = rest;
        }
        if buf.is_empty() {
            return Ok(frames);
        }
        let (frame, used) = parse_one(buf)?;
        frames.push(frame);
        buf = &buf[used..];
    }
}

/// Reads a line up to `\n` (dropping a `\r` before it).
fn line(buf: &[u8], at: usize) -> Result<(&str, usize), FrameError> {
    let end = buf[at..]
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(FrameError::Incomplete)?
        + at;
    let mut text = &buf[at..end];
    if let Some(t) = text.strip_suffix(b"\r") {
        text = t;
    }
    let text = std::str::from_utf8(text).map_err(|_| FrameError::NotUtf8)?;
    Ok((text, end + 1))
}

fn parse_one(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    let (command, mut at) = line(buf, 0)?;
    if !CLIENT_COMMANDS.contains(&command)
        && !matches!(command, "CONNECTED" | "MESSAGE" | "RECEIPT" | "ERROR")
    {
        return Err(FrameError::UnknownCommand(
            command.chars().take(32).collect(),
        ));
    }
    let mut frame = Frame::new(command);
    let escape = frame.escapes_headers();
    loop {
        let (text, next) = line(buf, at)?;
        at = next;
        if text.is_empty() {
            break;
        }
        let (k, v) = text
            .split_once(':')
            .ok_or_else(|| FrameError::BadHeader(text.chars().take(64).collect()))?;
        let (k, v) = if escape {
            (unescape(k)?, unescape(v)?)
        } else {
            (k.to_owned(), v.to_owned())
        };
        frame.headers.push((k, v));
    }
    let body_end = match frame.get("content-length") {
        Some(len) => {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| FrameError::BadContentLength(len.to_owned()))?;
            let end = at.checked_add(len).ok_or(FrameError::Incomplete)?;
            if buf.len() <= end {
                return Err(FrameError::Incomplete);
            }
            if buf[end] != 0 {
                return Err(FrameError::MissingNul);
            }
            end
        }
        None => {
            buf[at..]
                .iter()
                .position(|&b| b == 0)
                .ok_or(FrameError::MissingNul)?
                + at
        }
    };
    frame.body = buf[at..body_end].to_vec();
    Ok((frame, body_end + 1))
}

/// Negotiated heart-beats in milliseconds (0: none), per STOMP 1.2 §Heart-beating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartBeat {
    /// How often the server sends.
    pub send_ms: u64,
    /// How often the server expects to hear from the client.
    pub expect_ms: u64,
}

/// Parses `cx,cy`.
pub fn parse_heart_beat(value: Option<&str>) -> Result<(u64, u64), FrameError> {
    let Some(v) = value else { return Ok((0, 0)) };
    let bad = || FrameError::BadHeader(format!("heart-beat:{v}"));
    let (a, b) = v.split_once(',').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// Negotiates: the client offers `(cx, cy)`, the server `(sx, sy)`.
pub fn negotiate(client: (u64, u64), server: (u64, u64)) -> HeartBeat {
    let (cx, cy) = client;
    let (sx, sy) = server;
    HeartBeat {
        send_ms: if sx == 0 || cy == 0 { 0 } else { sx.max(cy) },
        expect_ms: if cx == 0 || sy == 0 { 0 } else { cx.max(sy) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_escapes() {
        let f = Frame::new("MESSAGE")
            .header("destination", "/topic/a:b")
            .header("note", "line1\nline2\\x")
            .body(b"hello".to_vec());
        let bytes = f.encode();
        assert!(bytes.ends_with(b"hello\0"));
        assert!(String::from_utf8_lossy(&bytes).contains("destination:/topic/a\\cb\n"));
        let back = parse_all(&bytes).expect("parse");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].get("destination"), Some("/topic/a:b"));
        assert_eq!(back[0].get("note"), Some("line1\nline2\\x"));
        assert_eq!(back[0].get("content-length"), Some("5"));
        assert_eq!(back[0].body, b"hello");
    }

    #[test]
    fn connect_headers_are_not_unescaped_and_crlf_is_accepted() {
        let raw = b"CONNECT\r\naccept-version:1.2\r\npasscode:a\\cb\r\n\r\n\0";
        let f = &parse_all(raw).expect("parse")[0];
        assert_eq!(f.get("accept-version"), Some("1.2"));
        assert_eq!(f.get("passcode"), Some("a\\cb"));
    }

    #[test]
    fn heart_beats_between_frames_are_skipped_and_several_frames_parse() {
        let raw = b"\n\nSEND\ndestination:/topic/x\n\nhi\0\r\nSUBSCRIBE\nid:1\ndestination:/topic/y\n\n\0\n";
        let frames = parse_all(raw).expect("parse");
        assert_eq!(
            frames
                .iter()
                .map(|f| f.command.as_str())
                .collect::<Vec<_>>(),
            ["SEND", "SUBSCRIBE"]
        );
        assert_eq!(frames[0].body, b"hi");
        assert!(parse_all(b"\n\r\n\n").expect("heart-beats").is_empty());
    }

    #[test]
    fn a_connected_header_cannot_break_its_line() {
        // Found by fuzzing: a value ending in CR lost it on the way back,
        // and a LF would have started a header of the value's choosing.
        let f = Frame::new("CONNECTED")
            .header("user-name", "ann\ninjected:yes\r")
            .header("content-\rlength", "5")
            .header("version", "1.2");
        let back = parse_all(&f.encode()).expect("parses");
        // Found by fuzzing too: a dropped CR joined `content-length`.
        assert_eq!(
            back[0].headers,
            [
                ("user-name".to_owned(), "ann injected:yes ".to_owned()),
                ("content- length".to_owned(), "5".to_owned()),
                ("version".to_owned(), "1.2".to_owned())
            ]
        );
    }

    #[test]
    fn content_length_bodies_may_hold_nul() {
        let raw = b"SEND\ndestination:/topic/x\ncontent-length:3\n\na\0b\0";
        assert_eq!(parse_all(raw).expect("parse")[0].body, b"a\0b");
        let short = b"SEND\ncontent-length:10\n\nabc\0";
        assert_eq!(parse_all(short), Err(FrameError::Incomplete));
        let no_nul = b"SEND\ncontent-length:3\n\nabcd";
        assert_eq!(parse_all(no_nul), Err(FrameError::MissingNul));
    }

    #[test]
    fn the_first_of_repeated_headers_counts() {
        let f = &parse_all(b"SEND\nfoo:1\nfoo:2\n\n\0").expect("parse")[0];
        assert_eq!(f.get("foo"), Some("1"));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(matches!(
            parse_all(b"HELLO\n\n\0"),
            Err(FrameError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_all(b"SEND\nnocolon\n\n\0"),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            parse_all(b"SEND\na:b\\q\n\n\0"),
            Err(FrameError::BadEscape(_))
        ));
        assert!(matches!(
            parse_all(b"SEND\ncontent-length:x\n\n\0"),
            Err(FrameError::BadContentLength(_))
        ));
        assert_eq!(
            parse_all(b"SEND\n\nbody without nul"),
            Err(FrameError::MissingNul)
        );
        assert_eq!(parse_all(b"SEND\na:b"), Err(FrameError::Incomplete));
        assert_eq!(parse_all(b"SEND\n\xff:1\n\n\0"), Err(FrameError::NotUtf8));
    }

    #[test]
    fn heart_beats_negotiate_per_the_spec() {
        assert_eq!(parse_heart_beat(Some("1000, 2000")), Ok((1000, 2000)));
        assert!(parse_heart_beat(Some("x")).is_err());
        assert_eq!(
            negotiate((1000, 2000), (5000, 10000)),
            HeartBeat {
                send_ms: 5000,
                expect_ms: 10000
            }
        );
        assert_eq!(
            negotiate((0, 2000), (1000, 10000)),
            HeartBeat {
                send_ms: 2000,
                expect_ms: 0
            }
        );
        assert_eq!(
            negotiate((20000, 0), (1000, 10000)),
            HeartBeat {
                send_ms: 0,
                expect_ms: 20000
            }
        );
    }
}
