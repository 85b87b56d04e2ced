//! `GET /v1/sse?topic=a&topic=b`: server-sent events.
//!
//! `retry:` once, then a `connected` event with the session id, then events
//! as `id:`/`event:`/`data:` lines and a comment line every heartbeat. A task
//! feeds the response body through a small channel; when the client goes
//! away the channel closes and the session ends.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::EventFrame;
use super::{CloseReason, Outbound, Protocol, SessionHandle};
use crate::error::ApiError;
use crate::gateway::{Gateway, Recovery};
use crate::routing::{Cursor, EventId, Partition, Shown, Topic, partition_of, partition_of_str};

/// Milliseconds a browser waits before reconnecting.
pub const RETRY_MS: u64 = 2000;

/// What the query string carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseQuery {
    /// `topic=` (repeatable).
    pub topics: Vec<String>,
    /// `ticket=`.
    pub ticket: Option<String>,
    /// `last_event_id=`.
    pub last_event_id: Option<String>,
    /// `access_token=`: the JWT, for `EventSource`, which can set no
    /// header and reconnects by itself with the same URL (a single-use
    /// ticket cannot carry a reconnect).
    pub access_token: Option<String>,
}

impl SseQuery {
    /// Parses `topic=a&topic=b&ticket=...`; unknown keys are refused.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
        let mut q = SseQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "topic" => q.topics.push(v),
                "ticket" => q.ticket = Some(v),
                "last_event_id" => q.last_event_id = Some(v),
                "access_token" => q.access_token = Some(v),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?}"
                    )));
                }
            }
        }
        Ok(q)
    }
}

/// The handler.
pub async fn stream(
    State(gw): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    match open(&gw, raw.as_deref(), &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn open(
    gw: &Arc<Gateway>,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query = SseQuery::parse(raw)?;
    if query.topics.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one topic: /v1/sse?topic=a&topic=b",
        ));
    }
    let max = gw.config.limits.max_subscriptions;
    if query.topics.len() > max {
        return Err(ApiError::bad_request(format!(
            "at most {max} topics per session"
        )));
    }
    let topics = query
        .topics
        .iter()
        .map(|t| Topic::parse(t).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    gw.has_room()?;
    // Read before the session goes live: what it covers was routed before.
    let settled = gw.bus.settled();
    let bearer = crate::auth::bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))
        .or(query.access_token.as_deref());
    let identity = gw.auth.identify(bearer, query.ticket.as_deref())?;
    gw.admit()?;
    let expires_at = identity.expires_at;
    let session = gw.open_session(identity, Protocol::Sse, &topics).await?;
    // The browser's EventSource sends `Last-Event-ID` when it reconnects.
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id.clone())
        .filter(|s| !s.trim().is_empty());
    // Live events wait until the missed ones (or the offline inbox) are out.
    session.hold();
    gw.activate(&session).await;
    let names: Vec<String> = topics.iter().map(|t| t.as_str().to_owned()).collect();

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let span = tracing::info_span!("session", id = %session.id, user = %session.subject.user);
    gw.tasks
        .spawn(feed(gw.clone(), session, tx, expires_at, since, names, settled).instrument(span));
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn feed(
    gw: Arc<Gateway>,
    session: Arc<SessionHandle>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    expires_at: u64,
    since: Option<String>,
    topics: Vec<String>,
    settled: Option<EventId>,
) {
    let hello = format!(
        "retry: {RETRY_MS}\nevent: connected\ndata: {}\n\n",
        serde_json::json!({ "session": session.id, "user": session.subject.user })
    );
    let heartbeat = Duration::from_secs(gw.config.server.heartbeat_s);
    // A client whose stream accepts nothing for this long stopped reading.
    let stall = Duration::from_secs(gw.config.server.heartbeat_timeout_s);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let expiry = tokio::time::sleep(Duration::from_secs(
        expires_at.saturating_sub(Gateway::now_s()),
    ));
    tokio::pin!(expiry);
    let mut open = tx.send(Ok(Bytes::from(hello))).await.is_ok();
    // With a cursor: the missed events of the topics and of the user's
    // inbox, merged in order; without one (or after a reset): what waits
    // in the inbox.
    let mut recovery = match &since {
        Some(since) => {
            gw.recover(&session.subject, since, &topics, session.inbox_cursor.get())
                .await
        }
        None => gw.undelivered(&session).await,
    };
    // EventSource reconnects with the same Last-Event-ID after `retry`.
    if let Recovery::Unavailable(why) = &recovery {
        let bye = format!("retry: {RETRY_MS}\n: {why}; reconnect with the same Last-Event-ID\n\n");
        if open {
            let _ = tx.send(Ok(Bytes::from(bye))).await;
        }
        session.discard_held();
        session.queue.close(CloseReason::Server(
            super::ws::close::TRY_AGAIN,
            why.clone(),
        ));
        gw.close_session(&session);
        return;
    }
    let resumed = since.as_deref().and_then(Cursor::parse);
    let resumed = resumed.filter(|_| !matches!(recovery, Recovery::Reset));
    if matches!(recovery, Recovery::Reset) {
        let reset = format!(
            "event: reset\ndata: {}\n\n",
            serde_json::json!({
                "last_event_id": since,
                "reason": "the events since last_event_id are no longer all available; reload state, then follow live events"
            })
        );
        if open {
            open = tx.send(Ok(Bytes::from(reset))).await.is_ok();
        }
        recovery = gw.undelivered(&session).await;
    }
    // What the client is shown, per partition, for the cursor of each event.
    let partitions = gw.config.bus.partitions;
    let own: Vec<Partition> = topics
        .iter()
        .map(|t| partition_of_str(t, partitions))
        .collect();
    let mut shown = Shown::new(&own, resumed.as_ref());
    let (ids, floors) = match recovery {
        Recovery::Replayed {
            frames,
            ids,
            floors,
        } => {
            // Straight to the stream, in chunks: the queue is the live path.
            for chunk in frames.chunks(64) {
                let mut text = String::new();
                for frame in chunk {
                    push_event(&mut text, frame, &mut shown, partitions);
                }
                if open {
                    open = matches!(
                        tokio::time::timeout(stall, tx.send(Ok(Bytes::from(text)))).await,
                        Ok(Ok(()))
                    );
                }
            }
            (ids, floors)
        }
        Recovery::Reset | Recovery::Unavailable(_) => Default::default(),
    };
    // Everything up to the settled floor was routed before the session went
    // live: in the store for the replay, or from before a fresh stream.
    if let Some(settled) = settled.filter(|s| s.epoch == gw.bus.epoch()) {
        shown.settle(&own, settled);
    }
    session.release(&ids, &floors);
    if open {
        loop {
            let chunk = tokio::select! {
                // Queued events first: at shutdown they go out before the retry hint.
                biased;
                batch = session.queue.next_batch() => {
                    let mut out = String::new();
                    for item in batch.items {
                        match item {
                            Outbound::Event(frame) => push_event(&mut out, &frame, &mut shown, partitions),
                            Outbound::Lost(n) => out.push_str(&format!("event: dropped\ndata: {{\"count\":{n}}}\n\n")),
                            Outbound::Control(_) | Outbound::Ping => {}
                        }
                    }
                    if batch.dropped > 0 {
                        out.push_str(&format!("event: dropped\ndata: {{\"count\":{}}}\n\n", batch.dropped));
                    }
                    if let Some(reason) = batch.closed {
                        let why = match reason {
                            CloseReason::SlowConsumer => "slow consumer".to_owned(),
                            CloseReason::Server(_, why) => why,
                        };
                        out.push_str(&format!(": closing: {why}\n\n"));
                        let _ = tokio::time::timeout(stall, tx.send(Ok(Bytes::from(out)))).await;
                        break;
                    }
                    out
                }
                _ = beat.tick() => ": heartbeat\n\n".to_owned(),
                () = &mut expiry => {
                    let _ = tx.send(Ok(Bytes::from_static(b": token expired\n\n"))).await;
                    break;
                }
                () = tx.closed() => break,
                () = gw.shutdown.cancelled() => {
                    // EventSource reconnects by itself after `retry`: spread it.
                    let bye = format!("retry: {}\n: server shutting down\n\n", gw.reconnect_after_ms());
                    let _ = tokio::time::timeout(stall, tx.send(Ok(Bytes::from(bye)))).await;
                    break;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            let send = std::pin::pin!(tx.send(Ok(Bytes::from(chunk))));
            match super::within(stall, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    super::ws::stalled(&gw);
                    break;
                }
            }
        }
    }
    session
        .queue
        .close(CloseReason::Server(1001, "stream ended".into()));
    gw.close_session(&session);
}

/// Appends `frame` with the cursor its client resumes from after it.
fn push_event(out: &mut String, frame: &EventFrame, shown: &mut Shown, partitions: u16) {
    let event = frame.event();
    shown.shown(partition_of(&event.topic, partitions), event.id);
    match shown.cursor_at(event.id) {
        None => out.push_str(frame.sse()),
        Some(cursor) => {
            let _ = writeln!(out, "id: {cursor}");
            out.push_str(frame.sse_without_id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_repeated_topics_and_refuse_unknown_keys() {
        let q =
            SseQuery::parse(Some("topic=a.b&topic=c&ticket=t1&last_event_id=9")).expect("query");
        assert_eq!(q.topics, ["a.b", "c"]);
        assert_eq!(q.ticket.as_deref(), Some("t1"));
        assert_eq!(q.last_event_id.as_deref(), Some("9"));
        assert!(SseQuery::parse(Some("topics=a")).is_err());
        assert_eq!(SseQuery::parse(None).expect("empty"), SseQuery::default());
    }
}
