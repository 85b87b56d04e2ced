//! Clients of a test gateway through real sockets: `switchyard.v1` over
//! WebSocket, SSE, and STOMP 1.2 over WebSocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestGateway;

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read past while waiting for a reply (an event can come
    /// before the ack of its own publish, which waits for the commit).
    pending: std::collections::VecDeque<Value>,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Ws {
    /// Opens a `switchyard.v1` WebSocket to `addr` (`host:port`) with a
    /// bearer token and reads the welcome.
    pub async fn connect(addr: &str, token: &str) -> Ws {
        let mut req = format!("ws://{addr}/v1/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "switchyard.v1".parse().expect("header"),
        );
        let (stream, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or("")),
            Some("switchyard.v1")
        );
        let mut ws = Ws {
            stream,
            pending: Default::default(),
        };
        let welcome = ws.next_json().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends a text frame as it is.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends `n` pings without reading anything.
    pub async fn send_pings(&mut self, n: usize) {
        for i in 0..n {
            self.stream
                .feed(Message::Ping(i.to_string().into_bytes().into()))
                .await
                .expect("ping");
        }
        self.stream.flush().await.expect("flush");
    }

    /// Writes a masked text frame carrying `payload` straight to the socket,
    /// bypassing the client library's UTF-8 check.
    pub async fn send_raw_text(&mut self, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        match self.stream.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp.write_all(&frame).await.expect("raw write"),
            _ => panic!("plain TCP expected"),
        }
    }

    /// The next text frame as JSON (pings are skipped).
    pub async fn next_json(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(v) => v,
            None => self.read_json().await,
        }
    }

    /// The next text frame from the socket.
    async fn read_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("json frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next `event` frame within `limit`, or `None`.
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Value> {
        while let Some(v) = self.pending.pop_front() {
            if v["op"] == "event" {
                return Some(v);
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json frame");
                if v["op"] == "event" {
                    return Some(v);
                }
            }
        }
    }

    /// Sends a request and returns the reply (ack or error) with its id.
    pub async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].clone();
        self.send(v).await;
        if let Some(i) = self.pending.iter().position(|f| is_reply(f, &id)) {
            return self.pending.remove(i).expect("present");
        }
        loop {
            let f = self.read_json().await;
            if is_reply(&f, &id) {
                return f;
            }
            self.pending.push_back(f);
        }
    }

    /// The next `event` frame.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let f = self.next_json().await;
            if f["op"] == "event" {
                return f;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (0, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close: {e}"),
            }
        }
    }
}

fn is_reply(f: &Value, id: &Value) -> bool {
    f["id"] == *id && (f["op"] == "ack" || f["op"] == "error")
}

pub struct Sse {
    pub(super) resp: reqwest::Response,
    pub(super) buf: String,
}

/// One parsed SSE block.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<String>,
    pub comment: bool,
}

impl Sse {
    /// The next block (event or comment).
    pub async fn next_block(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        ev.comment = true;
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "id" => ev.id = Some(v.to_owned()),
                            "event" => ev.event = Some(v.to_owned()),
                            "data" => data.push(v.to_owned()),
                            "retry" => ev.retry = Some(v.to_owned()),
                            _ => {}
                        }
                    }
                }
                ev.data = data.join("\n");
                return ev;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("sse data in time")
                .expect("sse chunk")
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Opens `url` (a full `/v1/sse?...` URL), resuming after `last_id`;
    /// None if the server does not answer with a stream.
    pub async fn open(url: &str, token: &str, last_id: Option<&str>) -> Option<Sse> {
        let mut req = reqwest::Client::new().get(url).bearer_auth(token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.ok()?;
        (resp.status().as_u16() == 200).then(|| Sse {
            resp,
            buf: String::new(),
        })
    }

    /// The next named event, or None once the stream ends or fails (or
    /// nothing came for [`WAIT`]).
    pub async fn try_next_event(&mut self) -> Option<SseEvent> {
        loop {
            if self.buf.contains("\n\n") {
                // A whole block is buffered: this reads nothing.
                let b = self.next_block().await;
                if !b.comment || b.event.is_some() {
                    return Some(b);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .ok()?
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Whether the server ends the stream within [`WAIT`] (what is still
    /// buffered is dropped).
    pub async fn ended(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.resp.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return true,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The next named event (comments skipped).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            let b = self.next_block().await;
            if !b.comment || b.event.is_some() {
                return b;
            }
        }
    }
}

/// A STOMP 1.2 client over WebSocket, one frame per message.
pub struct Stomp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A received STOMP frame.
#[derive(Debug, Clone)]
pub struct StompFrame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl StompFrame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw STOMP-over-WebSocket connection to `addr` (subprotocol
/// `v12.stomp`), not yet CONNECTed.
pub async fn stomp_socket(addr: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v12.stomp".parse().expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v12.stomp")
    );
    ws
}

impl TestGateway {
    /// A connected STOMP session of the token's user.
    pub async fn stomp(&self, token: &str) -> Stomp {
        Stomp::connect(&self.addr.to_string(), token).await
    }
}

impl Stomp {
    /// A STOMP session of the token's user at `addr`, CONNECTED.
    pub async fn connect(addr: &str, token: &str) -> Stomp {
        let mut s = Stomp {
            ws: stomp_socket(addr).await,
        };
        s.send(&format!(
            "CONNECT\naccept-version:1.2\npasscode:{token}\n\n"
        ))
        .await;
        let connected = s.next_frame().await;
        assert_eq!(connected.command, "CONNECTED", "{connected:?}");
        s
    }
}

impl Stomp {
    /// Sends a frame (`command\nheaders\n\nbody`, the NUL is added).
    pub async fn send(&mut self, frame: &str) {
        self.ws
            .send(Message::Text(format!("{frame}\0").into()))
            .await
            .expect("stomp send");
    }

    /// Reads until the server closes the WebSocket; its close code (0 if
    /// it gave none).
    pub async fn closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 0,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close: {e}"),
            }
        }
    }

    /// The next frame (heart-beats skipped).
    pub async fn next_frame(&mut self) -> StompFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("stomp frame in time")
                .expect("stomp stream open")
                .expect("stomp frame");
            let Message::Text(t) = msg else { continue };
            let text = t.as_str().trim_start_matches(['\n', '\r']);
            if text.is_empty() {
                continue;
            }
            let text = text.trim_end_matches('\0');
            let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
            let mut lines = head.lines();
            let command = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            return StompFrame {
                command,
                headers,
                body: body.to_owned(),
            };
        }
    }
}
