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
    let token = gateway.shutdown.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown({
        let token = token.clone();
        async move {
            tokio::select! {
                () = shutdown => token.cancel(),
                () = token.cancelled() => {}
            }
        }
    });
    let result = serve.await;
    token.cancel();
    gateway.tasks.close();
    let drain = std::time::Duration::from_secs(gateway.config.server.drain_timeout_s);
    let _ = tokio::time::timeout(drain, gateway.tasks.wait()).await;
    result
}
