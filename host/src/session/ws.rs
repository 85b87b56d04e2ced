//! `GET /v1/ws`: the WebSocket upgrade and the `switchyard.v1` session loop.
//!
//! One reader (client frames, in order) and one writer (drains the bounded
//! queue, batching whatever is queued into one flush; sends pings; closes).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tracing::Instrument;

use super::json::{self, ClientFrame, ErrorCode};
use super::unanswered::{MAX_UNANSWERED, Unanswered};
use super::{CloseReason, Outbound, Protocol, SessionHandle};
use crate::error::ApiError;
use crate::gateway::{Gateway, Recovery};
use crate::limits::TokenBucket;
use crate::plugin::{AuthAction, AuthDecision};
use crate::routing::{Event, Topic};

/// The JSON subprotocol.
pub const JSON_PROTOCOL: &str = "switchyard.v1";

/// WebSocket close codes used here.
pub mod close {
    /// Going away: server shutdown.
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy: expired token, slow consumer, dead peer.
    pub const POLICY: u16 = 1008;
    /// A frame over `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Try again later: what the client asked for cannot be served now.
    pub const TRY_AGAIN: u16 = 1013;
}

/// A session's initial read buffer. Client frames are small (subscribe,
/// publish); a larger one grows the buffer as it arrives. tungstenite's
/// default, 128 KiB, would be most of an idle session's memory.
pub const READ_BUFFER_BYTES: usize = 4096;

/// Queued frames are written to the socket once this many bytes are
/// buffered (and at the end of each batch). tungstenite's default, 128 KiB,
/// let a backlog grow every session's buffer to that size, page-faulted in
/// and moved down after each partial write: a fan-out under load spent a
/// third of its CPU zeroing pages.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// `?ticket=` for browsers.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    ticket: Option<String>,
}

/// The upgrade handler: origin, admission, authentication and the connect
/// authorization happen before the upgrade, so refusals are HTTP statuses.
pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered = offered_protocols(&headers);
    if !offered.is_empty() && !offered.contains(&JSON_PROTOCOL) {
        if offered.iter().any(|p| super::stomp::PROTOCOLS.contains(p)) {
            return upgrade_stomp(gw, query, headers, ws).await;
        }
        return ApiError::bad_request(format!(
            "unsupported subprotocols {offered:?}: use {JSON_PROTOCOL}, v12.stomp or v11.stomp"
        ))
        .into_response();
    }
    match prepare(&gw, &query, &headers).await {
        Ok(session) => {
            let max = gw.config.limits.max_frame_bytes;
            let expires_at = session.1;
            let session = session.0;
            ws.protocols([JSON_PROTOCOL])
                .max_message_size(max)
                .max_frame_size(max)
                .read_buffer_size(READ_BUFFER_BYTES)
                .write_buffer_size(WRITE_BUFFER_BYTES)
                .on_upgrade(move |socket| {
                    // Split before the session's future exists: a socket
                    // passed in would keep its (moved-out) place in that
                    // future's state for the session's whole life.
                    let (sink, stream) = socket.split();
                    let tracker = gw.tasks.clone();
                    let span = tracing::info_span!("session", id = %session.id, user = %session.subject.user);
                    tracker.track_future(run(gw, session, sink, stream, expires_at).instrument(span))
                })
        }
        Err(e) => e.into_response(),
    }
}

fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn check_origin(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if gw.origin_allowed(origin, host) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "origin {} is not allowed",
            origin.unwrap_or_default()
        )))
    }
}

/// STOMP: the client authenticates in CONNECT, after the upgrade, unless
/// the upgrade itself carries a token or ticket.
async fn upgrade_stomp(
    gw: Arc<Gateway>,
    query: WsQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let pre: Result<Option<crate::auth::Identity>, ApiError> = (|| {
        check_origin(&gw, &headers)?;
        gw.has_room()?;
        let bearer = crate::auth::bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()));
        match (bearer, query.ticket.as_deref()) {
            // Charged once CONNECT has authenticated the client.
            (None, None) => Ok(None),
            (b, t) => {
                let identity = gw.auth.identify(b, t)?;
                gw.admit()?;
                Ok(Some(identity))
            }
        }
    })();
    let pre = match pre {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let max = gw.config.limits.max_frame_bytes;
    ws.protocols(super::stomp::PROTOCOLS)
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let tracker = gw.tasks.clone();
            tracker
                .track_future(
                    super::stomp::run(gw, socket, pre).instrument(tracing::info_span!("stomp")),
                )
                .await;
        })
}

async fn prepare(
    gw: &Arc<Gateway>,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<(Arc<SessionHandle>, u64), ApiError> {
    check_origin(gw, headers)?;
    gw.has_room()?;
    let bearer = crate::auth::bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()));
    let identity = gw.auth.identify(bearer, query.ticket.as_deref())?;
    gw.admit()?;
    let expires_at = identity.expires_at;
    let session = gw.open_session(identity, Protocol::Json, &[]).await?;
    Ok((session, expires_at))
}

type Sink = SplitSink<WebSocket, Message>;

async fn run(
    gw: Arc<Gateway>,
    session: Arc<SessionHandle>,
    sink: Sink,
    stream: SplitStream<WebSocket>,
    expires_at: u64,
) {
    let cfg = &gw.config.server;
    session.queue.push_control(Outbound::Control(json::welcome(
        &session.id,
        &session.subject.user,
        &cfg.node_id,
        cfg.heartbeat_s,
    )));
    // Welcome first: only then may events be queued behind it. Live
    // events wait until the offline inbox is out.
    session.hold();
    // Boxed, like the other steps run once: an awaited future's room stays
    // in the session's state for its whole life.
    Box::pin(gw.activate(&session)).await;
    let mut writer = tokio::spawn(write_loop(gw.clone(), session.clone(), sink));
    let session_loop = async {
        // Boxed: a store query's future is large, and would otherwise stay
        // in every idle session's task for its whole life.
        Box::pin(deliver_inbox(&gw, &session)).await;
        read_loop(&gw, &session, stream, expires_at).await;
    };
    // Pinned in place: moved into `select!`, it would take its room twice.
    tokio::pin!(session_loop);
    tokio::select! {
        () = &mut session_loop => {
            // Whatever ended the reader, the writer flushes and closes.
            session.queue.close(CloseReason::Server(close::GOING_AWAY, "session ended".into()));
            let _ = writer.await;
        }
        // The writer ended first (it closed the session, or the socket
        // failed): a silent peer may never send again, so stop reading too.
        _ = &mut writer => {}
    }
    gw.close_session(&session);
}

/// Client frames already received that are handled together: their
/// publishes are authorized in one plugin call.
const MAX_FRAME_BATCH: usize = 64;

async fn read_loop(
    gw: &Gateway,
    session: &SessionHandle,
    stream: SplitStream<WebSocket>,
    expires_at: u64,
) {
    let limits = &gw.config.limits;
    let mut publish_rate =
        TokenBucket::new(limits.publish_rate, limits.publish_rate, Instant::now());
    let expiry = tokio::time::sleep(Duration::from_secs(
        expires_at.saturating_sub(Gateway::now_s()),
    ));
    tokio::pin!(expiry);
    let mut stream = stream.peekable();
    let mut unanswered = Unanswered::new(MAX_UNANSWERED);
    loop {
        let msg = tokio::select! {
            m = stream.next(), if !unanswered.is_full() => m,
            text = unanswered.next() => {
                reply(session, text);
                continue;
            }
            () = &mut expiry => {
                session.queue.close(CloseReason::Server(close::POLICY, "token expired".into()));
                return;
            }
            () = gw.shutdown.cancelled() => {
                // Drain: answer what was published, tell the client when
                // to come back, then close.
                for text in unanswered.finish().await {
                    reply(session, text);
                }
                session.queue.push_control(Outbound::Control(json::reconnect(gw.reconnect_after_ms())));
                session.queue.close(CloseReason::Server(close::GOING_AWAY, "server shutting down".into()));
                return;
            }
        };
        session.seen();
        let text = match msg {
            // Nothing can be sent after the client's Close: what was not
            // answered yet is stored or not, unanswered.
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                reply(
                    session,
                    json::error(None, ErrorCode::BadFrame, "switchyard.v1 uses text frames"),
                );
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(e)) => {
                let (code, reason) = close_for(&e);
                tracing::debug!(error = %e, code, "client frame refused");
                session
                    .queue
                    .close(CloseReason::Server(code, reason.to_owned()));
                return;
            }
        };
        if session.queue.is_closed() {
            return;
        }
        // A client publishing fast has more text frames waiting: take them
        // now (in order), so that one plugin call authorizes them all.
        let mut texts = vec![text];
        while texts.len() < MAX_FRAME_BATCH {
            let next_is_text = matches!(
                std::pin::Pin::new(&mut stream).peek().now_or_never(),
                Some(Some(Ok(Message::Text(_))))
            );
            if !next_is_text {
                break;
            }
            if let Some(Some(Ok(Message::Text(t)))) = stream.next().now_or_never() {
                texts.push(t);
            }
        }
        // Boxed for the same reason: an idle session keeps only this loop.
        Box::pin(handle_texts(
            gw,
            session,
            &texts,
            &mut publish_rate,
            &mut unanswered,
        ))
        .await;
    }
}

/// Handles client frames in order, their publishes authorized together.
async fn handle_texts(
    gw: &Gateway,
    session: &SessionHandle,
    texts: &[Utf8Bytes],
    publish_rate: &mut TokenBucket,
    unanswered: &mut Unanswered<String>,
) {
    let frames: Vec<Result<ClientFrame, json::FrameError>> = texts
        .iter()
        .map(|t| json::parse_client_frame(t.as_str()))
        .collect();
    let publishes: Vec<(usize, Topic)> = frames
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f {
            Ok(ClientFrame::Publish { topic, .. }) => Topic::parse(topic).ok().map(|t| (i, t)),
            _ => None,
        })
        .collect();
    let mut decisions: Vec<Option<AuthDecision>> = vec![None; frames.len()];
    if publishes.len() > 1 {
        let actions = publishes
            .iter()
            .map(|(_, t)| AuthAction::Publish(t.clone()))
            .collect();
        let answers = gw.authorize(&session.subject, actions).await;
        for ((i, _), d) in publishes.iter().zip(answers) {
            decisions[*i] = Some(d);
        }
    }
    for (frame, decision) in frames.into_iter().zip(decisions) {
        match frame {
            Ok(f) => handle_frame(gw, session, f, decision, publish_rate, unanswered).await,
            Err(e) => reply(session, json::error(e.id, e.code, &e.message)),
        }
    }
}

/// The close code for a read error.
pub(crate) fn close_for(e: &axum::Error) -> (u16, &'static str) {
    let text = format!("{e:?}").to_ascii_lowercase();
    if text.contains("utf8") || text.contains("utf-8") {
        (close::INVALID_DATA, "invalid UTF-8 in a text frame")
    } else if text.contains("capacity") || text.contains("too long") || text.contains("too big") {
        (close::TOO_BIG, "frame larger than the limit")
    } else {
        (close::PROTOCOL, "protocol error")
    }
}

fn reply(session: &SessionHandle, text: String) {
    session.queue.push_control(Outbound::Control(text));
}

/// Sends what waited in the user's offline inbox, then releases the live
/// events held meanwhile (call with the session held and registered, the
/// writer running).
pub(crate) async fn deliver_inbox(gw: &Gateway, session: &SessionHandle) {
    match gw.undelivered(session).await {
        Recovery::Replayed {
            frames,
            ids,
            floors,
        } => {
            queue_replay(gw, session, frames).await;
            session.release(&ids, &floors);
        }
        // The inbox keeps its events for the next connect.
        Recovery::Reset | Recovery::Unavailable(_) => {
            session.release(&Default::default(), &[]);
        }
    }
}

/// Queues replayed events behind the writer, never more than the queue
/// holds: a long replay is paced by the client, not dropped.
pub(crate) async fn queue_replay(
    gw: &Gateway,
    session: &SessionHandle,
    frames: Vec<Arc<crate::session::EventFrame>>,
) {
    let room = gw.config.limits.queue_depth.max(2) / 2;
    for frame in frames {
        while session.queue.len() >= room {
            if session.queue.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        session.queue.push(Outbound::Event(frame));
    }
}

/// Handles one client frame; a publish with `decided` was authorized with
/// others already.
async fn handle_frame(
    gw: &Gateway,
    session: &SessionHandle,
    frame: ClientFrame,
    decided: Option<AuthDecision>,
    publish_rate: &mut TokenBucket,
    unanswered: &mut Unanswered<String>,
) {
    match frame {
        ClientFrame::Subscribe {
            id,
            topic,
            since: Some(since),
        } => {
            // Live events of the topic wait while the missed ones are sent.
            session.hold();
            match subscribe(gw, session, &topic).await {
                Ok(()) => {
                    let topics = [topic];
                    let recovery = gw.recover(&session.subject, &since, &topics, None).await;
                    match recovery {
                        Recovery::Replayed {
                            frames,
                            ids,
                            floors,
                        } => {
                            reply(session, json::ack(id, Some(true)));
                            queue_replay(gw, session, frames).await;
                            session.release(&ids, &floors);
                        }
                        Recovery::Reset => {
                            reply(session, json::ack(id, Some(false)));
                            session.release(&Default::default(), &[]);
                        }
                        // Closed without what was held: the client reconnects
                        // and resumes every topic from its cursor.
                        Recovery::Unavailable(why) => {
                            session.discard_held();
                            let message =
                                format!("{why}; reconnect and subscribe again with the same since");
                            reply(session, json::error(id, ErrorCode::Unavailable, &message));
                            session
                                .queue
                                .close(CloseReason::Server(close::TRY_AGAIN, why));
                        }
                    }
                }
                Err((code, message)) => {
                    session.release(&Default::default(), &[]);
                    reply(session, json::error(id, code, &message));
                }
            }
        }
        ClientFrame::Subscribe {
            id,
            topic,
            since: None,
        } => match subscribe(gw, session, &topic).await {
            Ok(()) => reply(session, json::ack(id, None)),
            Err((code, message)) => reply(session, json::error(id, code, &message)),
        },
        ClientFrame::Unsubscribe { id, topic } => {
            if gw.hub.unsubscribe(session, &topic) {
                reply(session, json::ack(id, None));
            } else {
                reply(
                    session,
                    json::error(
                        id,
                        ErrorCode::NotSubscribed,
                        &format!("not subscribed to {topic}"),
                    ),
                );
            }
        }
        ClientFrame::Publish {
            id,
            topic,
            event,
            data,
        } => {
            // Every answer to a publish, a refusal too, keeps its place
            // behind the answers of earlier publishes.
            if !publish_rate.try_take(Instant::now()) {
                let limit = gw.config.limits.publish_rate;
                let text = json::error(
                    id,
                    ErrorCode::RateLimited,
                    &format!("at most {limit} publishes per second"),
                );
                return unanswered.push(std::future::ready(text));
            }
            // The parsed text as it is: no copy.
            let data = Box::<str>::from(data).into_string().into_bytes();
            match publish_decided(gw, session, &topic, event, data, decided).await {
                Ok(answer) => unanswered.push(async move {
                    match answer.await {
                        Ok(event_id) => json::published(id, &event_id),
                        Err((code, message)) => json::error(id, code, &message),
                    }
                }),
                Err((code, message)) => {
                    unanswered.push(std::future::ready(json::error(id, code, &message)));
                }
            }
        }
    }
}

/// Validates, checks the limit, authorizes and subscribes.
pub(crate) async fn subscribe(
    gw: &Gateway,
    session: &SessionHandle,
    topic: &str,
) -> Result<(), (ErrorCode, String)> {
    let topic = Topic::parse(topic).map_err(|e| (ErrorCode::InvalidTopic, e.to_string()))?;
    if session.is_subscribed(topic.as_str()) {
        return Ok(());
    }
    let max = gw.config.limits.max_subscriptions;
    if session.subscription_count() >= max {
        return Err((
            ErrorCode::TooManySubscriptions,
            format!("at most {max} subscriptions per session"),
        ));
    }
    let decision = gw
        .authorize(&session.subject, vec![AuthAction::Subscribe(topic.clone())])
        .await;
    if let Some(AuthDecision::Deny(why)) = decision.into_iter().next() {
        return Err((ErrorCode::Forbidden, why));
    }
    gw.subscribe(session, topic.as_str()).await;
    Ok(())
}

/// Validates, authorizes and publishes a client event.
pub(crate) async fn publish(
    gw: &Gateway,
    session: &SessionHandle,
    topic: &str,
    name: Option<String>,
    data: Vec<u8>,
) -> Result<Answer, (ErrorCode, String)> {
    publish_decided(gw, session, topic, name, data, None).await
}

/// The answer to a publish the bus took: the event's id once durable.
pub(crate) type Answer =
    futures_util::future::BoxFuture<'static, Result<String, (ErrorCode, String)>>;

fn refusal(e: crate::pipeline::PublishError) -> (ErrorCode, String) {
    let code = match e {
        crate::pipeline::PublishError::Overloaded => ErrorCode::RateLimited,
        _ => ErrorCode::Unavailable,
    };
    (code, e.to_string())
}

/// [`publish`], with the authorizer's decision when it was already asked.
async fn publish_decided(
    gw: &Gateway,
    session: &SessionHandle,
    topic: &str,
    name: Option<String>,
    data: Vec<u8>,
    decided: Option<AuthDecision>,
) -> Result<Answer, (ErrorCode, String)> {
    let topic = Topic::parse(topic).map_err(|e| (ErrorCode::InvalidTopic, e.to_string()))?;
    if let Some(name) = &name {
        crate::routing::published::check_name(name)
            .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?;
    }
    let decision = match decided {
        Some(d) => d,
        None => gw
            .authorize(&session.subject, vec![AuthAction::Publish(topic.clone())])
            .await
            .into_iter()
            .next()
            .unwrap_or(AuthDecision::Allow),
    };
    if let AuthDecision::Deny(why) = decision {
        return Err((ErrorCode::Forbidden, why));
    }
    let mut event = Event::new(crate::routing::EventId::UNASSIGNED, topic, data);
    if let Some(name) = name {
        event.name = name;
    }
    event.sender = Some(session.subject.user.clone());
    let accepted = gw.submit(event).await.map_err(refusal)?;
    Ok(Box::pin(async move {
        accepted.await.map(|id| id.to_string()).map_err(refusal)
    }))
}

async fn write_loop(gw: Arc<Gateway>, session: Arc<SessionHandle>, mut sink: Sink) {
    // A socket that accepts no write for this long belongs to a dead or
    // stuck client: its session ends rather than hold a task.
    let stall = Duration::from_secs(gw.config.server.heartbeat_timeout_s);
    loop {
        let mut batch = session.queue.next_batch().await;
        let closed = batch.closed.take();
        let written = {
            // Pinned here and lent: a future passed by value to `within`
            // would be held twice in this task's state (its argument, and
            // the pinned copy), for every idle session.
            let write = std::pin::pin!(write_batch(&mut sink, batch));
            super::within(stall, write).await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return stalled(&gw),
        }
        if let Some(reason) = closed {
            return Box::pin(close_socket(&mut sink, reason, stall)).await;
        }
    }
}

/// Sends the close frame (boxed by the caller: it runs once).
async fn close_socket(sink: &mut Sink, reason: CloseReason, stall: Duration) {
    let (code, text) = match reason {
        CloseReason::SlowConsumer => (
            close::POLICY,
            "slow consumer: outbound queue full".to_owned(),
        ),
        CloseReason::Server(code, text) => (code, text),
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(text),
    }));
    let _ = tokio::time::timeout(stall, sink.send(close)).await;
}

/// The node's heartbeat for `switchyard.v1` sessions: every `heartbeat_s`,
/// a session silent for longer than `heartbeat_s + heartbeat_timeout_s`
/// is closed, every other one is sent a ping (its writer sends it with the
/// next batch). One timer for the node instead of one per session: a
/// session's writer then waits on its queue alone.
pub async fn heartbeats(
    gw: std::sync::Weak<Gateway>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let period = match gw.upgrade() {
        Some(gw) => Duration::from_secs(gw.config.server.heartbeat_s.max(1)),
        None => return,
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(gw) = gw.upgrade() else { return };
        let cfg = &gw.config.server;
        let dead_after = Duration::from_secs(cfg.heartbeat_s + cfg.heartbeat_timeout_s);
        for session in gw.hub.sessions() {
            if session.protocol != Protocol::Json {
                continue;
            }
            if session.silent_for() > dead_after {
                tracing::info!(session = %session.id, "no pong within the heartbeat timeout; closing");
                session.queue.close(CloseReason::Server(
                    close::POLICY,
                    "heartbeat timeout".into(),
                ));
            } else {
                session.queue.push_control(Outbound::Ping);
            }
        }
    }
}

/// Writes a batch in one flush. (A function returning a block, not an
/// `async fn`: that would keep its argument and a moved copy of it.)
#[allow(clippy::manual_async_fn)]
fn write_batch(
    sink: &mut Sink,
    batch: super::queue::Batch<Outbound>,
) -> impl std::future::Future<Output = Result<(), axum::Error>> + '_ {
    async move {
        for item in batch.items {
            let text = match item {
                Outbound::Event(frame) => frame.json_message().clone(),
                Outbound::Control(text) => Utf8Bytes::from(text),
                Outbound::Lost(n) => Utf8Bytes::from(json::lost(n)),
                Outbound::Ping => {
                    sink.feed(Message::Ping(Default::default())).await?;
                    continue;
                }
            };
            sink.feed(Message::Text(text)).await?;
        }
        if batch.dropped > 0 {
            sink.feed(Message::Text(Utf8Bytes::from(json::dropped(batch.dropped))))
                .await?;
        }
        sink.flush().await
    }
}

/// Ends a session whose socket stopped accepting writes.
pub(crate) fn stalled(gw: &Gateway) {
    gw.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        "slow consumer: the socket accepted no writes within slow_consumer_grace_ms; dropping it"
    );
}
