//! STOMP 1.2 and 1.1 over WebSocket (subprotocols `v12.stomp`, `v11.stomp`).
//!
//! The socket is upgraded first and the client authenticates in CONNECT
//! (`Authorization: Bearer <jwt>` or `passcode:<jwt>`), since browser STOMP
//! clients cannot set headers on the upgrade. Destinations: `/topic/<topic>`
//! and `/user/queue/<name>` (the session user's own events); SEND to
//! `/app/<topic>` or `/topic/<topic>` is a client publish. Any refusal is an
//! ERROR frame followed by closing the connection, as STOMP requires.

pub mod frame;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use self::frame::{Frame, HeartBeat, negotiate, parse_all, parse_heart_beat};
use super::frame::DataKind;
use super::unanswered::{MAX_UNANSWERED, Unanswered};
use super::ws::close;
use super::{CloseReason, EventFrame, Outbound, Protocol, SessionHandle};
use crate::auth::Identity;
use crate::gateway::{Gateway, Recovery};
use crate::limits::TokenBucket;

/// Subprotocols served, newest first.
pub const PROTOCOLS: [&str; 2] = ["v12.stomp", "v11.stomp"];

/// How long a client has to send CONNECT after the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server offers in `heart-beat`: it can send as often as every
/// second, and wants to hear from the client every ten.
const SERVER_HEART_BEAT: (u64, u64) = (1_000, 10_000);

/// A subscription's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Topic(String),
    UserQueue,
}

/// The session's subscriptions by id, shared by reader and writer.
#[derive(Default)]
struct Subscriptions {
    by_id: BTreeMap<String, Destination>,
}

impl Subscriptions {
    /// The subscription an event is delivered on: its topic's, else the
    /// user queue's (events addressed to the user).
    fn for_event(&self, topic: &str) -> Option<&str> {
        let by_topic = self
            .by_id
            .iter()
            .find(|(_, d)| matches!(d, Destination::Topic(t) if t == topic));
        let by_user = || {
            self.by_id
                .iter()
                .find(|(_, d)| **d == Destination::UserQueue)
        };
        by_topic.or_else(by_user).map(|(id, _)| id.as_str())
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Runs a STOMP connection on an upgraded socket. `pre` is the identity
/// from an `Authorization` header on the upgrade, if there was one.
pub async fn run(gw: Arc<Gateway>, socket: WebSocket, pre: Option<Identity>) {
    let (mut sink, mut stream) = socket.split();
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, first_frame(&mut stream)).await {
        Ok(Ok(f)) => f,
        Ok(Err((why, code))) => return refuse(&mut sink, None, &why, code).await,
        Err(_) => return refuse(&mut sink, None, "no CONNECT frame in time", close::POLICY).await,
    };
    let receipt = connect.get("receipt").map(str::to_owned);
    let version = match negotiate_version(connect.get("accept-version")) {
        Some(v) => v,
        None => {
            return refuse(
                &mut sink,
                receipt.as_deref(),
                "supported versions are 1.2 and 1.1",
                close::PROTOCOL,
            )
            .await;
        }
    };
    let heart = match parse_heart_beat(connect.get("heart-beat")) {
        Ok(client) => negotiate(client, SERVER_HEART_BEAT),
        Err(e) => {
            return refuse(
                &mut sink,
                receipt.as_deref(),
                &e.to_string(),
                close::PROTOCOL,
            )
            .await;
        }
    };
    let identity = match authenticate(&gw, &connect, pre) {
        Ok(i) => i,
        Err(why) => return refuse(&mut sink, receipt.as_deref(), &why, close::POLICY).await,
    };
    let expires_at = identity.expires_at;
    let session = match gw.open_session(identity, Protocol::Stomp, &[]).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut sink, receipt.as_deref(), &e.message, close::POLICY).await,
    };
    let connected = Frame::new("CONNECTED")
        .header("version", version)
        .header(
            "heart-beat",
            format!("{},{}", heart.send_ms, heart.expect_ms),
        )
        .header("session", session.id.clone())
        .header("server", concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .header("user-name", session.subject.user.clone());
    if sink.send(text(connected.encode())).await.is_err() {
        return;
    }
    gw.activate(&session).await;
    let subs = Arc::new(Mutex::new(Subscriptions::default()));
    let started = Instant::now();
    let last_heard = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_loop(
        gw.clone(),
        session.clone(),
        subs.clone(),
        sink,
        heart,
    ));
    let reader = Reader {
        gw: &gw,
        session: &session,
        subs: &subs,
        started,
        last_heard: &last_heard,
        publish_rate: TokenBucket::new(
            gw.config.limits.publish_rate,
            gw.config.limits.publish_rate,
            Instant::now(),
        ),
        unanswered: Unanswered::new(MAX_UNANSWERED),
    };
    tokio::select! {
        () = reader.run(&mut stream, heart, expires_at) => {
            session.queue.close(CloseReason::Server(close::GOING_AWAY, "session ended".into()));
            let _ = writer.await;
        }
        // The writer ended first: stop reading from a peer that may be gone.
        _ = &mut writer => {}
    }
    gw.close_session(&session);
}

fn negotiate_version(accept: Option<&str>) -> Option<&'static str> {
    // No accept-version means STOMP 1.0, which we serve as 1.1.
    let offered: Vec<&str> = accept.unwrap_or("1.1").split(',').map(str::trim).collect();
    ["1.2", "1.1"].into_iter().find(|v| offered.contains(v))
}

fn authenticate(gw: &Gateway, connect: &Frame, pre: Option<Identity>) -> Result<Identity, String> {
    let token = connect
        .get("Authorization")
        .or_else(|| connect.get("authorization"))
        .and_then(|h| crate::auth::bearer(Some(h)))
        .or_else(|| connect.get("passcode").filter(|p| !p.is_empty()));
    match (token, pre) {
        // Authenticated only now: the upgrade did not charge `accept_rate`.
        (Some(t), None) => {
            let identity = gw.auth.verify_token(t).map_err(|e| e.to_string())?;
            gw.admit().map_err(|e| e.message)?;
            Ok(identity)
        }
        (Some(t), Some(_)) => gw.auth.verify_token(t).map_err(|e| e.to_string()),
        (None, Some(identity)) => Ok(identity),
        (None, None) => Err(
            "authentication required: send the JWT in CONNECT's Authorization or passcode header"
                .into(),
        ),
    }
}

/// The CONNECT frame, or why there is none and the close code to send.
async fn first_frame(stream: &mut SplitStream<WebSocket>) -> Result<Frame, (String, u16)> {
    let protocol = |why: String| (why, close::PROTOCOL);
    loop {
        let bytes = match stream.next().await {
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            // An oversized frame or invalid UTF-8 gets its own code.
            Some(Err(e)) => {
                let (code, why) = super::ws::close_for(&e);
                return Err((why.to_owned(), code));
            }
            _ => return Err(protocol("connection closed before CONNECT".into())),
        };
        let mut frames = parse_all(&bytes)
            .map_err(|e| protocol(e.to_string()))?
            .into_iter();
        match frames.next() {
            None => continue,
            Some(f) if f.command == "CONNECT" || f.command == "STOMP" => return Ok(f),
            Some(f) => return Err(protocol(format!("expected CONNECT, got {}", f.command))),
        }
    }
}

fn text(bytes: Vec<u8>) -> Message {
    match String::from_utf8(bytes) {
        Ok(s) => Message::Text(Utf8Bytes::from(s)),
        Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
    }
}

/// Tells a subscription that what it missed since `since` cannot be
/// replayed (past retention, another epoch): the client reloads its state.
fn reset_message(subscription: &str, destination: &str, since: &str) -> Frame {
    let body = serde_json::json!({
        "last_event_id": since,
        "reason": "the events since this id are no longer all available; reload state, then follow live events",
    });
    Frame::new("MESSAGE")
        .header("subscription", subscription)
        .header("destination", destination)
        .header("message-id", format!("reset-{since}"))
        .header("event", "reset")
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
}

fn error_frame(receipt: Option<&str>, message: &str) -> Frame {
    let mut f = Frame::new("ERROR").header("message", message.replace('\n', " "));
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    f.header("content-type", "text/plain")
        .body(message.as_bytes().to_vec())
}

async fn refuse(sink: &mut Sink, receipt: Option<&str>, why: &str, code: u16) {
    tracing::debug!(reason = why, "STOMP connection refused");
    let _ = sink.send(text(error_frame(receipt, why).encode())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(short(why)),
        })))
        .await;
}

/// Close reasons must fit in a control frame (125 bytes with the code).
fn short(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

struct Reader<'a> {
    gw: &'a Gateway,
    session: &'a SessionHandle,
    subs: &'a Mutex<Subscriptions>,
    started: Instant,
    last_heard: &'a AtomicU64,
    publish_rate: TokenBucket,
    unanswered: Unanswered<Result<Option<Frame>, String>>,
}

/// Why the reader stops: an ERROR was queued, or the client left.
enum Stop {
    Error(u16, String),
    Done,
}

impl Reader<'_> {
    async fn run(mut self, stream: &mut SplitStream<WebSocket>, heart: HeartBeat, expires_at: u64) {
        let expiry = tokio::time::sleep(Duration::from_secs(
            expires_at.saturating_sub(Gateway::now_s()),
        ));
        tokio::pin!(expiry);
        // A client that promised heart-beats and went silent for twice the
        // interval is dead.
        let dead_after = (heart.expect_ms > 0).then(|| Duration::from_millis(heart.expect_ms * 2));
        let mut check = tokio::time::interval(dead_after.unwrap_or(Duration::from_secs(3600)));
        loop {
            // Not read while full: the client's silence meanwhile is ours.
            let full = self.unanswered.is_full();
            let msg = tokio::select! {
                m = stream.next(), if !full => m,
                answer = self.unanswered.next() => {
                    if full {
                        self.last_heard
                            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    if let Err(Stop::Error(code, why)) = self.answered(answer) {
                        return self.fail(None, code, &why);
                    }
                    continue;
                }
                () = &mut expiry => return self.fail(None, close::POLICY, "token expired"),
                _ = check.tick() => {
                    let heard = Duration::from_millis(self.last_heard.load(Ordering::Relaxed));
                    if !full && dead_after.is_some_and(|d| self.started.elapsed().saturating_sub(heard) > d) {
                        return self.fail(None, close::POLICY, "no heart-beat from the client");
                    }
                    continue;
                }
                () = self.gw.shutdown.cancelled() => {
                    if let Err(Stop::Error(code, why)) = self.answer_all().await {
                        return self.fail(None, code, &why);
                    }
                    let after = self.gw.reconnect_after_ms();
                    let frame = error_frame(None, "server shutting down")
                        .header("reconnect-after-ms", after.to_string())
                        .encode();
                    self.session.queue.push_control(Outbound::Control(String::from_utf8_lossy(&frame).into_owned()));
                    self.session.queue.close(CloseReason::Server(close::GOING_AWAY, "server shutting down".into()));
                    return;
                }
            };
            self.last_heard
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let bytes = match msg {
                None => return,
                // Nothing can be sent after the client's Close: what was
                // not answered yet is stored or not, unanswered.
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(t))) => Bytes::from(t),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Err(e)) => {
                    let text = format!("{e:?}").to_ascii_lowercase();
                    let (code, why) = if text.contains("utf") {
                        (close::INVALID_DATA, "invalid UTF-8 in a text frame")
                    } else if text.contains("capacity") || text.contains("too long") {
                        (close::TOO_BIG, "frame larger than the limit")
                    } else {
                        (close::PROTOCOL, "protocol error")
                    };
                    return self.fail(None, code, why);
                }
            };
            let frames = match parse_all(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    return self.fail(None, close::PROTOCOL, &format!("malformed frame: {e}"));
                }
            };
            for f in frames {
                match self.handle(f).await {
                    Ok(()) => {}
                    Err(Stop::Done) => return,
                    Err(Stop::Error(code, why)) => {
                        // SENDs before the fault are answered before its ERROR.
                        let why = match self.answer_all().await {
                            Err(Stop::Error(_, earlier)) => earlier,
                            _ => why,
                        };
                        return self.fail(None, code, &why);
                    }
                }
            }
        }
    }

    fn fail(&self, receipt: Option<&str>, code: u16, why: &str) {
        let frame = error_frame(receipt, why).encode();
        self.session.queue.push_control(Outbound::Control(
            String::from_utf8_lossy(&frame).into_owned(),
        ));
        self.session
            .queue
            .close(CloseReason::Server(code, short(why)));
    }

    /// A RECEIPT if the frame asked for one; `recovered` answers a
    /// SUBSCRIBE with `since`.
    fn receipt(&self, f: &Frame, recovered: Option<bool>) {
        if let Some(r) = f.get("receipt") {
            let mut frame = Frame::new("RECEIPT").header("receipt-id", r);
            if let Some(recovered) = recovered {
                frame = frame.header("recovered", recovered.to_string());
            }
            self.control(frame);
        }
    }

    /// Sends the answer of a SEND: its RECEIPT, or the ERROR that ends
    /// the session.
    fn answered(&self, answer: Result<Option<Frame>, String>) -> Result<(), Stop> {
        match answer {
            Ok(receipt) => {
                if let Some(frame) = receipt {
                    self.control(frame);
                }
                Ok(())
            }
            Err(why) => Err(Stop::Error(close::POLICY, why)),
        }
    }

    /// Every SEND still unanswered, answered in order.
    async fn answer_all(&mut self) -> Result<(), Stop> {
        for answer in self.unanswered.finish().await {
            self.answered(answer)?;
        }
        Ok(())
    }

    fn control(&self, frame: Frame) {
        self.session.queue.push_control(Outbound::Control(
            String::from_utf8_lossy(&frame.encode()).into_owned(),
        ));
    }

    async fn handle(&mut self, f: Frame) -> Result<(), Stop> {
        let refuse = |why: String| Stop::Error(close::POLICY, why);
        // SENDs in a row are answered as they become durable; any other
        // frame waits for those answers, so that receipts keep frame order.
        if f.command != "SEND" {
            self.answer_all().await?;
        }
        match f.command.as_str() {
            "SUBSCRIBE" => {
                let id = f
                    .get("id")
                    .ok_or_else(|| Stop::Error(close::PROTOCOL, "SUBSCRIBE needs an id".into()))?;
                let dest = f.get("destination").unwrap_or_default();
                let max = self.gw.config.limits.max_subscriptions;
                {
                    let subs = self.lock();
                    if subs.by_id.contains_key(id) {
                        return Err(Stop::Error(
                            close::PROTOCOL,
                            format!("subscription id {id:?} is already in use"),
                        ));
                    }
                    if subs.by_id.len() >= max {
                        return Err(refuse(format!("at most {max} subscriptions per session")));
                    }
                }
                if let Some(topic) = dest.strip_prefix("/topic/") {
                    // `since: <event id>` replays what was missed first.
                    let since = f.get("since").map(str::to_owned);
                    if since.is_some() {
                        self.session.hold();
                    }
                    if let Err((_, why)) = super::ws::subscribe(self.gw, self.session, topic).await
                    {
                        self.session.release(&Default::default(), &[]);
                        return Err(refuse(format!("cannot subscribe to {dest}: {why}")));
                    }
                    self.lock()
                        .by_id
                        .insert(id.to_owned(), Destination::Topic(topic.to_owned()));
                    let Some(since) = since else {
                        self.receipt(&f, None);
                        return Ok(());
                    };
                    let topics = [topic.to_owned()];
                    match self
                        .gw
                        .recover(&self.session.subject, &since, &topics, None)
                        .await
                    {
                        Recovery::Replayed {
                            frames,
                            ids,
                            floors,
                        } => {
                            self.receipt(&f, Some(true));
                            super::ws::queue_replay(self.gw, self.session, frames).await;
                            self.session.release(&ids, &floors);
                        }
                        Recovery::Reset => {
                            self.receipt(&f, Some(false));
                            self.control(reset_message(id, dest, &since));
                            self.session.release(&Default::default(), &[]);
                        }
                        // The client reconnects and subscribes with the same cursor.
                        Recovery::Unavailable(why) => {
                            // What was held would carry the cursors past the gap.
                            self.session.discard_held();
                            return Err(Stop::Error(
                                close::TRY_AGAIN,
                                format!(
                                    "cannot subscribe to {dest} since {since}: {why}; reconnect and subscribe again with the same since"
                                ),
                            ));
                        }
                    }
                } else if dest.starts_with("/user/queue/") {
                    let first = !self
                        .lock()
                        .by_id
                        .values()
                        .any(|d| *d == Destination::UserQueue);
                    if first {
                        self.session.hold();
                    }
                    self.lock()
                        .by_id
                        .insert(id.to_owned(), Destination::UserQueue);
                    self.receipt(&f, None);
                    // The first user queue gets what waited in the offline inbox.
                    if first {
                        super::ws::deliver_inbox(self.gw, self.session).await;
                    }
                } else {
                    return Err(refuse(format!(
                        "unknown destination {dest:?}: use /topic/<topic> or /user/queue/<name>"
                    )));
                }
            }
            "UNSUBSCRIBE" => {
                let id = f.get("id").ok_or_else(|| {
                    Stop::Error(close::PROTOCOL, "UNSUBSCRIBE needs an id".into())
                })?;
                let removed = self.lock().by_id.remove(id);
                if let Some(Destination::Topic(topic)) = removed {
                    let still = self
                        .lock()
                        .by_id
                        .values()
                        .any(|d| *d == Destination::Topic(topic.clone()));
                    if !still {
                        self.gw.hub.unsubscribe(self.session, &topic);
                    }
                }
                self.receipt(&f, None);
            }
            "SEND" => {
                let dest = f.get("destination").unwrap_or_default();
                let Some(topic) = dest
                    .strip_prefix("/app/")
                    .or_else(|| dest.strip_prefix("/topic/"))
                else {
                    return Err(refuse(format!(
                        "cannot SEND to {dest:?}: use /app/<topic> or /topic/<topic>"
                    )));
                };
                if !self.publish_rate.try_take(Instant::now()) {
                    return Err(refuse("publish rate exceeded".into()));
                }
                let name = f.get("event").map(str::to_owned);
                let answer = super::ws::publish(self.gw, self.session, topic, name, f.body.clone())
                    .await
                    .map_err(|(_, why)| refuse(format!("cannot SEND to {dest}: {why}")))?;
                // Answered once durable, while the next frames are read.
                let receipt = f.get("receipt").map(str::to_owned);
                let dest = dest.to_owned();
                self.unanswered.push(async move {
                    let event_id = answer
                        .await
                        .map_err(|(_, why)| format!("cannot SEND to {dest}: {why}"))?;
                    // The id the event is durable under, as HTTP and JSON answer.
                    Ok(receipt.map(|r| {
                        Frame::new("RECEIPT")
                            .header("receipt-id", r)
                            .header("event-id", event_id)
                    }))
                });
            }
            // Delivery is at most once with automatic acknowledgement.
            "ACK" | "NACK" | "BEGIN" | "COMMIT" | "ABORT" => self.receipt(&f, None),
            "DISCONNECT" => {
                self.receipt(&f, None);
                self.session
                    .queue
                    .close(CloseReason::Server(1000, "disconnected".into()));
                return Err(Stop::Done);
            }
            "CONNECT" | "STOMP" => {
                return Err(Stop::Error(close::PROTOCOL, "already connected".into()));
            }
            other => {
                return Err(Stop::Error(
                    close::PROTOCOL,
                    format!("a client may not send {other}"),
                ));
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// MESSAGE for one event on one subscription.
fn message(frame: &EventFrame, subscription: &str) -> Frame {
    let e = frame.event();
    // Classified once per event, not parsed again per recipient.
    let content_type = match frame.kind() {
        DataKind::Json => "application/json",
        DataKind::Text => "text/plain;charset=utf-8",
        DataKind::Binary => "application/octet-stream",
    };
    Frame::new("MESSAGE")
        .header("subscription", subscription)
        .header("message-id", e.id.to_string())
        .header("destination", format!("/topic/{}", e.topic))
        .header("content-type", content_type)
        .header("event", e.name.clone())
        .body(e.data.clone())
}

async fn write_loop(
    gw: Arc<Gateway>,
    session: Arc<SessionHandle>,
    subs: Arc<Mutex<Subscriptions>>,
    mut sink: Sink,
    heart: HeartBeat,
) {
    let beat = Duration::from_millis(if heart.send_ms == 0 {
        3_600_000
    } else {
        heart.send_ms
    });
    // A socket that accepts no write for this long belongs to a dead or
    // stuck client.
    let stall = Duration::from_secs(gw.config.server.heartbeat_timeout_s);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            batch = session.queue.next_batch() => {
                let closed = batch.closed.clone();
                match tokio::time::timeout(stall, write_batch(&mut sink, &subs, batch, &mut dropped)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return super::ws::stalled(&gw),
                }
                if let Some(reason) = closed {
                    let (code, why) = match reason {
                        CloseReason::SlowConsumer => {
                            let err = error_frame(None, "slow consumer: outbound queue full");
                            let _ = tokio::time::timeout(stall, sink.send(text(err.encode()))).await;
                            (close::POLICY, "slow consumer".to_owned())
                        }
                        CloseReason::Server(code, why) => (code, why),
                    };
                    let close = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(why) }));
                    let _ = tokio::time::timeout(stall, sink.send(close)).await;
                    return;
                }
                ticker.reset();
            }
            _ = ticker.tick() => {
                match tokio::time::timeout(stall, sink.send(Message::Text(Utf8Bytes::from_static("\n")))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return super::ws::stalled(&gw),
                }
            }
        }
    }
}

/// Writes a batch in one flush. Events dropped under `drop_oldest` are
/// reported in a `switchyard-dropped` header on the next MESSAGE: an ERROR
/// frame would end the STOMP connection.
async fn write_batch(
    sink: &mut Sink,
    subs: &Mutex<Subscriptions>,
    batch: super::queue::Batch<Outbound>,
    dropped: &mut u64,
) -> Result<(), axum::Error> {
    // A count not reported in this batch waits for the next MESSAGE.
    *dropped += batch.dropped;
    for item in batch.items {
        let msg = match item {
            Outbound::Control(t) => Message::Text(Utf8Bytes::from(t)),
            // STOMP heart-beats are its own (the writer's ticker).
            Outbound::Ping => continue,
            // Reported like a queue's drops, on the next MESSAGE.
            Outbound::Lost(n) => {
                *dropped += n;
                continue;
            }
            Outbound::Event(frame) => {
                let sub = subs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .for_event(frame.event().topic.as_str())
                    .map(str::to_owned);
                let Some(sub) = sub else { continue };
                let mut m = message(&frame, &sub);
                if *dropped > 0 {
                    m = m.header("switchyard-dropped", dropped.to_string());
                    *dropped = 0;
                }
                text(m.encode())
            }
        };
        sink.feed(msg).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_negotiate_to_the_newest_common_one() {
        assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Some("1.2"));
        assert_eq!(negotiate_version(Some("1.1")), Some("1.1"));
        assert_eq!(negotiate_version(None), Some("1.1"));
        assert_eq!(negotiate_version(Some("2.0")), None);
    }

    #[test]
    fn events_go_to_their_topic_subscription_else_to_the_user_queue() {
        let mut s = Subscriptions::default();
        s.by_id.insert("q".into(), Destination::UserQueue);
        s.by_id
            .insert("t".into(), Destination::Topic("chat.1".into()));
        assert_eq!(s.for_event("chat.1"), Some("t"));
        assert_eq!(s.for_event("dm.me"), Some("q"));
        s.by_id.remove("q");
        assert_eq!(s.for_event("dm.me"), None);
    }
}
