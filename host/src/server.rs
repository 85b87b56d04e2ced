//! Binding the listener and serving until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use crate::gateway::Gateway;

/// Pending connections the kernel queues: tokio's default of 128 overflows
/// when clients reconnect in bursts, and their connects then stall.
pub const LISTEN_BACKLOG: u32 = 4096;

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
    let serve = axum::serve(listener, app).with_graceful_shutdown({
        let draining = draining.clone();
        async move { draining.cancelled().await }
    });
    let serve = tokio::spawn(async move { serve.await });
    tokio::select! {
        () = shutdown => {}
        () = draining.cancelled() => {}
    }
    drain(&gateway).await;
    match tokio::time::timeout(std::time::Duration::from_secs(1), serve).await {
        Ok(Ok(result)) => result,
        _ => Ok(()),
    }
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
