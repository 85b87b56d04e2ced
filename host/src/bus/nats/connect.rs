//! A node's two NATS connections. The control connection carries
//! JetStream, leases, beats and the requests between nodes. The delivery
//! connection carries routed deliveries and beacons both ways, without
//! echo: a node hands its own deliveries to its dispatcher in process, so
//! none comes back to it through the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::dispatch::Link;
use crate::bus::{BusError, BusStats};

/// What a connection is for.
pub enum Role {
    /// JetStream, leases, beats, requests between nodes.
    Control,
    /// Deliveries and beacons; changes of the link go to the dispatcher.
    Deliveries(mpsc::UnboundedSender<Link>),
}

/// Connects to `servers` and waits (up to 10 s) for the first connection.
pub async fn connect(
    servers: &[String],
    node_id: &str,
    stats: Arc<BusStats>,
    role: Role,
) -> Result<async_nats::Client, BusError> {
    let urls = servers.join(",");
    let (name, link) = match role {
        Role::Control => (format!("switchyard {node_id}"), None),
        Role::Deliveries(link) => (format!("switchyard {node_id} deliveries"), Some(link)),
    };
    let deliveries = link.is_some();
    let events = stats.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            // Quick at first, then at most every two seconds.
            Duration::from_millis((50u64 << attempt.min(6)).min(2000))
        })
        .event_callback(move |event| {
            let stats = events.clone();
            let link = link.clone();
            async move { on_event(&stats, link.as_ref(), event) }
        });
    if deliveries {
        options = options.no_echo();
    }
    let client = options
        .connect(servers.to_vec())
        .await
        .map_err(|e| BusError::Connect {
            urls: urls.clone(),
            reason: e.to_string(),
        })?;
    // retry_on_initial_connect returns at once: wait for the first
    // connection so that a wrong URL fails the start clearly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(BusError::Connect {
                urls,
                reason: "no server answered within 10 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if deliveries {
        stats.delivery_connected.store(true, Ordering::Relaxed);
    } else {
        stats.connected.store(true, Ordering::Relaxed);
    }
    Ok(client)
}

fn on_event(
    stats: &BusStats,
    link: Option<&mpsc::UnboundedSender<Link>>,
    event: async_nats::Event,
) {
    let (connected, disconnects, what) = match link {
        Some(_) => (
            &stats.delivery_connected,
            &stats.delivery_disconnects,
            "delivery",
        ),
        None => (&stats.connected, &stats.disconnects, "control"),
    };
    let tell = |l: Link| {
        if let Some(link) = link {
            let _ = link.send(l);
        }
    };
    match event {
        async_nats::Event::Connected => {
            connected.store(true, Ordering::Relaxed);
            tell(Link::Up);
            tracing::info!(connection = what, "NATS connected");
        }
        async_nats::Event::Disconnected => {
            connected.store(false, Ordering::Relaxed);
            disconnects.fetch_add(1, Ordering::Relaxed);
            tell(Link::Down(SystemTime::now()));
            tracing::warn!(connection = what, "NATS disconnected; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
            tell(Link::Dropped(SystemTime::now()));
            if link.is_some() {
                tracing::warn!(
                    sid,
                    "NATS dropped deliveries: this node is behind; repairing from history"
                );
            } else {
                // A pull's messages: the owner's order check starts the
                // pull over.
                tracing::warn!(sid, "NATS dropped messages of a pull: this node is behind");
            }
        }
        other => tracing::info!(connection = what, event = %other, "NATS"),
    }
}
