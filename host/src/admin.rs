//! The admin API (`Authorization: Bearer <auth.admin_token>`): loaded
//! plugins with their counters, session counts, and disconnecting a user.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::session::CloseReason;

fn require_admin(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = crate::auth::bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))
        .ok_or_else(|| {
            ApiError::unauthorized("the admin API needs `Authorization: Bearer <admin token>`")
        })?;
    if gw.config.auth.admin_token.is_none() {
        return Err(ApiError::forbidden(
            "the admin API is disabled: set auth.admin_token",
        ));
    }
    if !gw.auth.is_admin(token) {
        tracing::warn!("admin request with a wrong token refused");
        return Err(ApiError::unauthorized("wrong admin token"));
    }
    tracing::debug!("admin request authorized");
    Ok(())
}

/// `GET /admin/plugins`
pub async fn plugins(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let set = gw.executor.plugins();
    let topics: Vec<(String, Vec<String>)> = set
        .topics()
        .map(|(n, t)| (n.to_owned(), t.into_iter().map(str::to_owned).collect()))
        .collect();
    let plugins: Vec<Value> = set
        .plugins()
        .map(|(p, interfaces)| {
            let m = p.metrics().snapshot();
            let loaded_at_ms = p
                .loaded_at()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            json!({
                "name": p.name(),
                "path": p.path().display().to_string(),
                "sha256": p.sha256(),
                "interfaces": interfaces,
                "topics": topics.iter().find(|(n, _)| n == p.name()).map(|(_, t)| t.clone()).unwrap_or_default(),
                "loaded_at_ms": loaded_at_ms,
                "timeout_ms": p.timeout().as_millis() as u64,
                "memory_mb": p.memory_mb(),
                "instances": p.live_instances(),
                "calls": m.calls,
                "traps": m.traps,
                "timeouts": m.timeouts,
                "memory_limits": m.memory_limits,
                "instantiations": m.instantiations,
                "latency_p50_us": m.p50_us,
                "latency_p99_us": m.p99_us,
            })
        })
        .collect();
    let reloads = &gw.reloads;
    // Every node's records when the store is shared (PostgreSQL).
    let deployments = gw.store.deployments(20).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "deployment records unavailable");
        Vec::new()
    });
    Ok(Json(json!({
        "node": gw.config.server.node_id,
        "generation": set.generation(),
        "plugins": plugins,
        "reloads": {
            "applied": reloads.applied.load(std::sync::atomic::Ordering::Relaxed),
            "refused": reloads.refused.load(std::sync::atomic::Ordering::Relaxed),
            "recent": reloads.recent(),
        },
        "deployments": deployments,
    })))
}

/// `GET /admin/log`: the log filter in force.
pub async fn log_filter(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let log = gw.log.get().ok_or_else(no_log_control)?;
    Ok(Json(json!({ "filter": log.current() })))
}

/// `PUT /admin/log` with `{"filter": "info,switchyard_host::bus=debug"}`
/// (`RUST_LOG` syntax): changes what is logged, at once.
pub async fn set_log_filter(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let body: Value = crate::http::read_body(&gw, body).await?;
    let filter = body["filter"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("expected {\"filter\": \"<RUST_LOG directives>\"}"))?;
    let log = gw.log.get().ok_or_else(no_log_control)?;
    log.set(filter)
        .map_err(|e| ApiError::bad_request(format!("bad filter {filter:?}: {e}")))?;
    tracing::info!(%filter, "log filter changed");
    Ok(Json(json!({ "filter": log.current() })))
}

fn no_log_control() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_available",
        "this process did not install the log (embedded gateway)",
    )
}

/// `POST /admin/reload`: 200 with the outcome when the candidate now
/// serves, 422 with the reason (and the old set still serving) when not.
pub async fn reload(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    require_admin(&gw, &headers)?;
    let outcome = crate::reload::reload(&gw, crate::reload::Trigger::Api).await;
    if outcome.applied {
        return Ok((
            axum::http::StatusCode::OK,
            Json(json!({ "reload": outcome })),
        ));
    }
    Ok((
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": {
                "code": "reload_refused",
                "message": outcome.error.clone().unwrap_or_default(),
            },
            "reload": outcome,
        })),
    ))
}

/// `GET /admin/sessions`: counts per protocol on this node.
pub async fn sessions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let here = gw.hub.counts();
    // Every node's counts; this node's alone if the bus cannot ask the others.
    let nodes = gw.bus.sessions(&gw.hub).await.ok();
    Ok(Json(json!({
        "node": gw.config.server.node_id,
        "total": here["total"],
        "by_protocol": {
            "json": here["json"],
            "stomp": here["stomp"],
            "sse": here["sse"],
        },
        "nodes": nodes,
    })))
}

/// `GET /admin/partitions`: each partition's owner, lease term, routing lag
/// and last routed id, from any node.
pub async fn partitions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let mut v = gw
        .bus
        .partitions()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    v["node"] = gw.config.server.node_id.clone().into();
    Ok(Json(v))
}

/// `GET /admin/registry?user=U&limit=N`: the connection registry, the
/// sessions of every node sharing the store (all, or `user`'s), oldest
/// first, with their counts per node.
#[derive(Debug, serde::Deserialize)]
pub struct RegistryQuery {
    user: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/registry`
pub async fn registry(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<RegistryQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let (sessions, nodes) = gw
        .store
        .registry_list(q.user.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let nodes: serde_json::Map<String, Value> =
        nodes.into_iter().map(|(n, c)| (n, json!(c))).collect();
    Ok(Json(json!({ "sessions": sessions, "nodes": nodes })))
}

/// `DELETE /admin/users/{user}/sessions`: closes every session of a user on
/// this node (flushing what is queued, close code 1008).
pub async fn disconnect_user(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let sessions = gw.hub.recipients(&[], &[user.as_str()]);
    for s in &sessions {
        s.queue.close(CloseReason::Server(
            1008,
            "disconnected by an administrator".into(),
        ));
    }
    tracing::info!(%user, sessions = sessions.len(), "admin disconnected a user");
    Ok(Json(json!({ "user": user, "closed": sessions.len() })))
}
