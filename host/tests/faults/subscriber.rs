//! Subscribers of the fault suite: a `switchyard.v1`, SSE or STOMP client
//! that follows its topics across failures as a good client does. On a
//! close, an error, a drain's `reconnect`, a loss notice or silence (no
//! byte, heartbeats included, for `SILENCE`) it reconnects, to the next
//! address in turn, resuming from its cursor: `since` per topic over
//! `switchyard.v1` and STOMP, `Last-Event-ID` over SSE.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::checker::{Received, Seen};

/// With the gateway's `server.heartbeat_s = 1`, a link this quiet is dead.
pub const SILENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Ws,
    Sse,
    Stomp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Ws, Protocol::Sse, Protocol::Stomp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ws => "switchyard.v1",
            Protocol::Sse => "SSE",
            Protocol::Stomp => "STOMP",
        }
    }
}

pub struct Subscriber {
    pub protocol: Protocol,
    pub streams: Vec<String>,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Follows `topics` (each a publisher's stream) as `user`, through
    /// `addrs` (host:port) in turn, until `stop`.
    pub fn start(
        protocol: Protocol,
        addrs: Vec<String>,
        token: String,
        topics: Vec<String>,
        stop: CancellationToken,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut link = Link {
            protocol,
            token,
            topics: topics.clone(),
            seen: seen.clone(),
            since: HashMap::new(),
            last_sse_id: None,
        };
        let task = tokio::spawn(async move {
            let mut attempt = 0usize;
            while !stop.is_cancelled() {
                let addr = &addrs[attempt % addrs.len()];
                let pause = tokio::select! {
                    p = link.session(addr) => p,
                    _ = stop.cancelled() => return,
                };
                attempt += 1;
                link.seen.lock().expect("seen").reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {},
                    _ = stop.cancelled() => return,
                }
            }
        });
        Subscriber {
            protocol,
            streams: topics,
            seen,
            task,
        }
    }

    /// Whether a session of it was subscribed to every topic.
    pub fn subscribed(&self) -> bool {
        self.seen.lock().expect("seen").ready > 0
    }

    /// Whether it has received, for each of its streams, as many distinct
    /// events as `wanted` says.
    pub fn has_all(&self, wanted: &HashMap<String, u64>) -> bool {
        let seen = self.seen.lock().expect("seen");
        self.streams.iter().all(|s| {
            let want = wanted.get(s).copied().unwrap_or(0);
            let got = seen.distinct.get(s).map_or(0, HashSet::len);
            got as u64 >= want
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client's state across its connections.
struct Link {
    protocol: Protocol,
    token: String,
    topics: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    /// The last event id received per topic.
    since: HashMap<String, String>,
    /// The `id:` of the last SSE event.
    last_sse_id: Option<String>,
}

/// How long to wait before reconnecting, or why the session failed.
type Ended = Result<Duration, String>;

impl Link {
    /// One connection, until it ends; returns how long to wait before the next.
    async fn session(&mut self, addr: &str) -> Duration {
        let ended: Ended = match self.protocol {
            Protocol::Ws => self.ws(addr).await,
            Protocol::Sse => self.sse(addr).await,
            Protocol::Stomp => self.stomp(addr).await,
        };
        // A short pause, with a little spread, as a client's backoff would.
        ended.unwrap_or(Duration::from_millis(100 + rand_ms(100)))
    }

    /// Records an event; `topic` keeps the cursor of a protocol that
    /// resumes per topic.
    fn record(&mut self, topic: Option<&str>, id: &str, data: &Value) {
        let (Some(stream), Some(seq)) = (data["stream"].as_str(), data["seq"].as_u64()) else {
            return;
        };
        if let Some(topic) = topic {
            self.since.insert(topic.to_owned(), id.to_owned());
        }
        self.seen.lock().expect("seen").push(Received {
            stream: stream.to_owned(),
            seq,
            id: id.to_owned(),
            at: Instant::now(),
        });
    }

    fn ready(&mut self) {
        self.seen.lock().expect("seen").ready += 1;
    }

    fn reset(&mut self) {
        self.seen.lock().expect("seen").resets += 1;
    }

    async fn ws(&mut self, addr: &str) -> Ended {
        let bearer = format!("Bearer {}", self.token);
        let mut ws = websocket(addr, "switchyard.v1", Some(&bearer)).await?;
        // The asks that carried a cursor: their ack says whether it was served.
        let mut resumed = HashMap::new();
        let mut unanswered = self.topics.len();
        for (i, topic) in self.topics.iter().enumerate() {
            let mut sub = json!({ "op": "subscribe", "id": i + 1, "topic": topic });
            if let Some(since) = self.since.get(topic) {
                sub["since"] = json!(since);
                resumed.insert(i as u64 + 1, ());
            }
            send_text(&mut ws, sub.to_string()).await?;
        }
        loop {
            let text = next_text(&mut ws).await?;
            let f: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            match f["op"].as_str() {
                Some("event") => {
                    let (Some(topic), Some(id)) = (f["topic"].as_str(), f["id"].as_str()) else {
                        return Err("an event without topic or id".into());
                    };
                    self.record(Some(topic), id, &f["data"]);
                }
                Some("ack") => {
                    unanswered = unanswered.saturating_sub(1);
                    if unanswered == 0 {
                        self.ready();
                    }
                    let asked = f["id"].as_u64().unwrap_or(0);
                    if resumed.remove(&asked).is_some() && f["recovered"] == json!(false) {
                        self.reset();
                    }
                }
                Some("reconnect") => {
                    return Ok(Duration::from_millis(
                        f["after_ms"].as_u64().unwrap_or(500).min(2_000),
                    ));
                }
                // A loss notice (or any error): resume from the cursors.
                Some("error") => return Err(f.to_string()),
                _ => {}
            }
        }
    }

    async fn sse(&mut self, addr: &str) -> Ended {
        let query: Vec<String> = self.topics.iter().map(|t| format!("topic={t}")).collect();
        let mut req = reqwest::Client::new()
            .get(format!("http://{addr}/v1/sse?{}", query.join("&")))
            .bearer_auth(&self.token);
        let resuming = self.last_sse_id.is_some();
        if let Some(id) = &self.last_sse_id {
            req = req.header("last-event-id", id);
        }
        let resp = within(req.send()).await?.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("SSE answered {}", resp.status()));
        }
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        loop {
            let chunk = within(body.next())
                .await?
                .ok_or("closed")?
                .map_err(|e| e.to_string())?;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                match (event.as_deref(), id) {
                    (Some("connected"), _) => self.ready(),
                    (Some("reset"), _) if resuming => self.reset(),
                    // A loss notice: resume from the cursor.
                    (Some("dropped"), _) => return Err("dropped".into()),
                    (Some("message"), Some(id)) => {
                        let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        // The cursor starts with the event's own id.
                        let event_id = id.split('~').next().unwrap_or(&id).to_owned();
                        self.record(None, &event_id, &data);
                        self.last_sse_id = Some(id);
                    }
                    _ => {}
                }
            }
        }
    }

    async fn stomp(&mut self, addr: &str) -> Ended {
        let mut ws = websocket(addr, "v12.stomp", None).await?;
        let mut frames = vec![format!(
            "CONNECT\naccept-version:1.2\nheart-beat:0,1000\npasscode:{}\n\n",
            self.token
        )];
        for (i, topic) in self.topics.iter().enumerate() {
            let since = match self.since.get(topic) {
                Some(id) => format!("since:{id}\n"),
                None => String::new(),
            };
            let receipt = if i + 1 == self.topics.len() {
                "receipt:subscribed\n"
            } else {
                ""
            };
            frames.push(format!(
                "SUBSCRIBE\nid:{i}\ndestination:/topic/{topic}\n{since}{receipt}\n"
            ));
        }
        for f in frames {
            send_text(&mut ws, format!("{f}\0")).await?;
        }
        loop {
            let text = next_text(&mut ws).await?;
            let text = text.trim_start_matches(['\n', '\r']);
            let text = text.trim_end_matches('\0');
            if text.is_empty() {
                continue;
            }
            let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
            let mut lines = head.lines();
            let command = lines.next().unwrap_or_default();
            let headers: HashMap<&str, &str> = lines.filter_map(|l| l.split_once(':')).collect();
            match command {
                "MESSAGE" if headers.get("event") == Some(&"reset") => self.reset(),
                // A loss notice: resume from the cursors (this event's included).
                "MESSAGE" if headers.contains_key("switchyard-dropped") => {
                    return Err("dropped".into());
                }
                "MESSAGE" => {
                    let id = headers.get("message-id").copied().unwrap_or_default();
                    let topic = headers
                        .get("destination")
                        .and_then(|d| d.strip_prefix("/topic/"))
                        .unwrap_or_default()
                        .to_owned();
                    let data: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    self.record(Some(&topic), id, &data);
                }
                "RECEIPT" => self.ready(),
                "ERROR" => return Err(format!("ERROR {head}")),
                _ => {}
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `addr` speaking `subprotocol`.
async fn websocket(addr: &str, subprotocol: &str, bearer: Option<&str>) -> Result<Socket, String> {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    if let Some(bearer) = bearer {
        h.insert("authorization", bearer.parse().map_err(|_| "header")?);
    }
    h.insert(
        "sec-websocket-protocol",
        subprotocol.parse().map_err(|_| "header")?,
    );
    let (ws, _) = within(tokio_tungstenite::connect_async(req))
        .await?
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn send_text(ws: &mut Socket, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

/// The next text message; pings and other frames count as signs of life.
async fn next_text(ws: &mut Socket) -> Result<String, String> {
    loop {
        let msg = within(ws.next())
            .await?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        if let Message::Text(text) = msg {
            return Ok(text.as_str().to_owned());
        }
    }
}

/// `f`, or an error once the link has been silent for [`SILENCE`].
async fn within<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(SILENCE, f)
        .await
        .map_err(|_| "silent".to_owned())
}

fn rand_ms(spread: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() % spread
}
