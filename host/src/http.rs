//! The HTTP surface: `app(gateway) -> Router`, and the plain HTTP handlers
//! (publish, tickets, health). WebSocket and SSE live in `session/`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::plugin::{AuthAction, AuthDecision};
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
        .with_state(gateway)
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

async fn publish(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let token = bearer(&headers).ok_or(crate::auth::AuthError::Missing)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let topic = Topic::parse(&body.topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let sender = if gw.auth.is_service_key(token) {
        None
    } else {
        // A user token needs the publish scope and the authorizer's consent.
        let identity = gw.auth.verify_token(token)?;
        if !identity.has_scope("publish") {
            return Err(ApiError::forbidden("the token lacks the `publish` scope"));
        }
        let decision = gw
            .authorize(&identity.subject, vec![AuthAction::Publish(topic.clone())])
            .await;
        if let Some(AuthDecision::Deny(why)) = decision.into_iter().next() {
            return Err(ApiError::forbidden(why));
        }
        Some(identity.subject.user)
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
