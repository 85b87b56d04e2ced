//! The HTTP surface: `app(gateway) -> Router`, and the plain HTTP handlers
//! (publish, tickets, health). WebSocket and SSE live in `session/`.

pub mod body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::plugin::{AuthAction, AuthDecision};
use crate::routing::published::{self, PublishInputError};
use crate::routing::{Event, Topic};
use crate::session::{sse, ws};

/// Every endpoint of one listener.
pub fn app(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/tickets", post(tickets))
        .route("/v1/publish", post(publish))
        .route("/v1/presence/{topic}", get(presence))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin(gateway.clone()))
        .layer(axum::middleware::from_fn(close_after_refused_body))
        .with_state(gateway)
}

/// A request refused before its body was read leaves that body in the
/// connection: it is closed after the answer (`Connection: close`) rather
/// than read through, and the client knows not to reuse it.
async fn close_after_refused_body(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut response = next.run(req).await;
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The admin API, behind the wrong-token throttle.
fn admin(gateway: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin/plugins", get(crate::admin::plugins))
        .route("/admin/sessions", get(crate::admin::sessions))
        .route("/admin/registry", get(crate::admin::registry))
        .route("/admin/partitions", get(crate::admin::partitions))
        .route("/admin/reload", axum::routing::post(crate::admin::reload))
        .route(
            "/admin/log",
            get(crate::admin::log_filter).put(crate::admin::set_log_filter),
        )
        .route(
            "/admin/users/{user}/sessions",
            axum::routing::delete(crate::admin::disconnect_user),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            gateway,
            admin_throttle,
        ))
}

/// An address that sent too many wrong admin tokens is answered 429 for a
/// while, whatever it sends: guessing gets about one try a second.
async fn admin_throttle(
    State(gw): State<Arc<Gateway>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(ip) = peer.map(|Extension(ConnectInfo(a))| a.ip()) else {
        return next.run(req).await;
    };
    if gw.throttles.admin_blocked(ip) {
        gw.throttles.admin_throttled.fetch_add(1, Ordering::Relaxed);
        return too_many("too many wrong admin tokens from this address; retry later");
    }
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        gw.throttles.admin_failed(ip);
    }
    response
}

/// 429 `rate_limited` with `Retry-After: 1`.
fn too_many(message: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    crate::auth::bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))
}

async fn tickets(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = bearer(&headers).ok_or(crate::auth::AuthError::Missing)?;
    let identity = gw.auth.verify_token(token)?;
    let ticket = gw
        .auth
        .issue_ticket(identity)
        .ok_or_else(|| ApiError::unavailable("too many outstanding tickets"))?;
    Ok(Json(
        json!({ "ticket": ticket, "expires_in": gw.auth.ticket_ttl().as_secs() }),
    ))
}

/// The body of `POST /v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    data: Value,
    event: Option<String>,
    #[serde(default)]
    to_users: Vec<String>,
    idempotency_key: Option<String>,
}

/// Reads a request body the way every handler must: only once its sender
/// is known, within `server.max_body_bytes` and `server.request_timeout_s`.
pub async fn read_body<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    body: Body,
) -> Result<T, ApiError> {
    let s = &gw.config.server;
    body::read_json(
        body,
        s.max_body_bytes,
        Duration::from_secs(s.request_timeout_s),
    )
    .await
}

async fn publish(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Response> {
    let token = bearer(&headers)
        .ok_or(crate::auth::AuthError::Missing)
        .map_err(|e| ApiError::from(e).into_response())?;
    let user = if gw.auth.is_service_key(token) {
        None
    } else {
        let identity = gw
            .auth
            .verify_token(token)
            .map_err(|e| ApiError::from(e).into_response())?;
        if !identity.has_scope("publish") {
            return Err(ApiError::forbidden("the token lacks the `publish` scope").into_response());
        }
        // Held to the rate a session's publishes are.
        if !gw.throttles.take_publish(&identity.subject.user) {
            gw.throttles
                .publishes_throttled
                .fetch_add(1, Ordering::Relaxed);
            let limit = gw.config.limits.publish_rate;
            return Err(too_many(&format!(
                "at most {limit} publishes per second per user"
            )));
        }
        Some(identity)
    };
    let body: PublishBody = read_body(&gw, body)
        .await
        .map_err(IntoResponse::into_response)?;
    publish_as(&gw, user, body)
        .await
        .map_err(IntoResponse::into_response)
}

/// Publishes `body` for a service (`None`) or a user.
async fn publish_as(
    gw: &Gateway,
    user: Option<crate::auth::Identity>,
    body: PublishBody,
) -> Result<Json<Value>, ApiError> {
    let topic = Topic::parse(&body.topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let bad = |e: PublishInputError| ApiError::bad_request(e.to_string());
    if let Some(name) = &body.event {
        published::check_name(name).map_err(bad)?;
    }
    let max = user.as_ref().map(|_| gw.config.limits.max_recipients);
    published::check_recipients(&body.to_users, max).map_err(bad)?;
    let sender = match user {
        None => None,
        Some(identity) => {
            // A user needs the authorizer's consent.
            let decision = gw
                .authorize(&identity.subject, vec![AuthAction::Publish(topic.clone())])
                .await;
            if let Some(AuthDecision::Deny(why)) = decision.into_iter().next() {
                return Err(ApiError::forbidden(why));
            }
            if !body.to_users.is_empty() {
                gw.authorize_direct(&identity, &topic, &body.to_users)
                    .await?;
            }
            Some(identity.subject.user)
        }
    };
    // The payload is carried as the JSON value it was: a string stays a string.
    let data = body.data.to_string().into_bytes();
    let mut event = Event::new(crate::routing::EventId::UNASSIGNED, topic, data);
    if let Some(name) = body.event {
        event.name = name;
    }
    event.sender = sender;
    event.to_users = body.to_users;
    if let Some(key) = body.idempotency_key {
        event = event.with_header("idempotency-key", key);
    }
    let id = gw.publish(event).await?;
    Ok(Json(json!({ "id": id.to_string() })))
}

async fn presence(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = Topic::parse(&topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Who listens is as private as what is said: a service, or a user the
    // authorizer would let subscribe.
    let token = bearer(&headers).ok_or(crate::auth::AuthError::Missing)?;
    if !gw.auth.is_service_key(token) {
        let identity = gw.auth.verify_token(token)?;
        // With no authorizer to ask, every user could see who listens
        // anywhere: a user needs the grant of the `presence` scope then.
        let asked = gw
            .executor
            .plugins()
            .applies(crate::plugin::Interface::Authorizer, Some(&topic));
        if !asked && !identity.has_scope("presence") {
            return Err(ApiError::forbidden(
                "no authorizer decides presence for this topic: a user needs the `presence` scope",
            ));
        }
        let decision = gw
            .authorize(
                &identity.subject,
                vec![AuthAction::Subscribe(topic.clone())],
            )
            .await;
        if let Some(AuthDecision::Deny(why)) = decision.into_iter().next() {
            return Err(ApiError::forbidden(why));
        }
    }
    Ok(Json(
        json!({ "topic": topic.as_str(), "users": gw.bus.presence(topic.as_str()).await? }),
    ))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Result<Json<Value>, ApiError> {
    if gw.draining.is_cancelled() {
        return Err(ApiError::unavailable("draining"));
    }
    if !gw.engine.ticking() {
        return Err(ApiError::unavailable(
            "the plugin deadline ticker has stopped",
        ));
    }
    gw.bus.ready().map_err(ApiError::unavailable)?;
    gw.store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(
        json!({ "status": "ready", "plugins": gw.executor.plugins().len(), "sessions": gw.hub.len() }),
    ))
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::collect(&gw).render(),
    )
}
