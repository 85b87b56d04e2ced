//! Binding the listener and serving until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::Service as _;

use crate::gateway::Gateway;

/// Pending connections the kernel queues: tokio's default of 128 overflows
/// when clients reconnect in bursts, and their connects then stall.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Request headers larger than this in all are refused with 431. Hyper's
/// own limit is on its read buffer, which a head arriving in one read can
/// pass.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The bytes of `headers` as sent, about (names, values, separators).
fn header_bytes(headers: &axum::http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Binds `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `gateway` on `listener` until `shutdown` completes, then stops
/// the sessions and waits for their tasks.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::http::app(gateway.clone());
    let draining = gateway.draining.clone();
    // Stop accepting once draining starts; open SSE streams end in phase 2.
    let serve = tokio::spawn(accept_loop(listener, app, gateway.clone()));
    tokio::select! {
        () = shutdown => {}
        () = draining.cancelled() => {}
    }
    drain(&gateway).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), serve).await;
    Ok(())
}

/// Accepts until draining starts. axum's own `serve` sets no header read
/// timeout, so idle and trickling connections would stay open forever.
async fn accept_loop(listener: TcpListener, app: axum::Router, gateway: Arc<Gateway>) {
    let limits = Arc::new(Semaphore::new(gateway.config.server.max_connections));
    let draining = gateway.draining.clone();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = draining.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: let some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limits.clone().try_acquire_owned() else {
            gateway
                .throttles
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            gateway.clone(),
            permit,
        ));
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    gateway: Arc<Gateway>,
    _permit: OwnedSemaphorePermit,
) {
    let throttles = &gateway.throttles;
    throttles.connections_open.fetch_add(1, Ordering::Relaxed);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            if header_bytes(req.headers()) > MAX_HEADER_BYTES {
                use axum::response::IntoResponse as _;
                let e = crate::error::ApiError::new(
                    axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("request headers over {MAX_HEADER_BYTES} bytes"),
                );
                return Ok(e.into_response());
            }
            app.call(req.map(axum::body::Body::new)).await
        }
    });
    let timeout = std::time::Duration::from_secs(gateway.config.server.request_timeout_s);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = gateway.draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
    {
        throttles
            .connections_timed_out
            .fetch_add(1, Ordering::Relaxed);
    }
    throttles.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// Drains within `server.drain_timeout_s`: refuse new sessions and events,
/// let the event path deliver what it accepted, then send every session a
/// reconnect hint, flush its queue and close it.
pub async fn drain(gateway: &Gateway) {
    let budget = std::time::Duration::from_secs(gateway.config.server.drain_timeout_s);
    let started = tokio::time::Instant::now();
    tracing::info!(sessions = gateway.hub.len(), "draining");
    gateway.draining.cancel();
    gateway.bus.drain(budget / 2).await;
    gateway.shutdown.cancel();
    gateway.tasks.close();
    let left = budget.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, gateway.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = gateway.hub.len(),
            "drain timeout: closing the rest"
        );
    }
    // This node's sessions leave the connection registry with it.
    gateway.registry.stop().await;
}
