//! The fault suite: publishers whose every acknowledged event is checked
//! against what subscribers over `switchyard.v1`, SSE and STOMP received
//! across their reconnects, with one kind of fault injected per test. Each
//! must show 0 lost, 0 duplicated, 0 reordered and no reset.
//!
//! At small scale here; `scripts/faults` runs the same tests longer and
//! with the fault repeated, and prints the table
//! (fault × protocol × lost/duplicated/reordered/resets/max pause).

#[path = "../support/mod.rs"]
mod support;

mod checker;
mod cluster;
mod publisher;
mod subscriber;
mod workload;

use std::time::Duration;

use support::link::{LinkProxy, Mode};
use support::process::GatewayProcess;
use support::*;
use workload::{Shape, Workload, rounds};

/// Every event a run publishes stays in history: a cursor is never past
/// retention, so any reset is a finding.
pub const KEEP_ALL: &str = "history_retention = 10000000\n";

/// In a cluster, each stream at most 100 events/s: an SSE stream of all
/// 16 resuming after an outage of a few seconds stays within the store's
/// 10,000-event replay limit.
pub const CLUSTER_BURST: Shape = Shape {
    streams: 16,
    per_protocol: 2,
    every: Duration::from_millis(10),
};

/// Many streams publishing as fast as they are acknowledged: a crash then
/// falls among events in flight.
pub const BURST: Shape = Shape {
    streams: 16,
    per_protocol: 2,
    every: Duration::ZERO,
};

/// Heartbeats every second, so that a silent link is noticed in seconds
/// (the server waits longer for a pong: a client catching up on a replay
/// reads its ping late).
pub const QUICK_HEARTBEATS: &str = "heartbeat_s = 1\nheartbeat_timeout_s = 10\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_links_cut_blackholed_and_delayed_lose_nothing() {
    let mut config = config("");
    config.server.heartbeat_s = 1;
    config.server.heartbeat_timeout_s = 10;
    config.store.history_retention = 10_000_000;
    let gw = TestGateway::start(config).await;
    let proxy = LinkProxy::start(&gw.addr.to_string()).await;
    let direct = gw.addr.to_string();
    let w = Workload::start(
        "links",
        vec![direct],
        |_| vec![proxy.addr()],
        Shape::default(),
    )
    .await;
    for _ in 0..rounds() {
        proxy.cut();
        w.published(5).await;
        // Longer than a client's silence limit and the server's heartbeat
        // timeout: both ends give up on the link.
        proxy.set(Mode::Blackhole);
        tokio::time::sleep(subscriber::SILENCE + Duration::from_secs(1)).await;
        proxy.set(Mode::Pass);
        w.published(5).await;
        proxy.set(Mode::Delay(Duration::from_millis(300)));
        w.published(10).await;
        proxy.set(Mode::Pass);
    }
    w.conclude("client links cut, blackholed, delayed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_gateway_killed_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = dir.path().join("store.db");
    let sections = format!(
        "[store]\nurl = \"sqlite://{}\"\n{KEEP_ALL}",
        sqlite.display()
    );
    let mut gw = GatewayProcess::start_with_server("solo", QUICK_HEARTBEATS, &sections).await;
    let addr = gw.addr().to_owned();
    let w = Workload::start("killed", vec![addr.clone()], |_| vec![addr.clone()], BURST).await;
    for _ in 0..rounds() {
        gw.kill().await;
        gw.restart().await;
        w.published(10).await;
    }
    w.conclude("gateway SIGKILL (local bus, SQLite)").await;
}

/// A fresh PostgreSQL database reached through a proxy that can stall it.
pub async fn store_behind_proxy() -> (LinkProxy, String) {
    let db = fresh_postgres().await;
    let proxy = LinkProxy::start("127.0.0.1:5432").await;
    let url = db.replace("127.0.0.1:5432", &proxy.addr());
    (proxy, url)
}

/// Holds every byte to and from the store for 3 s each round: shorter than
/// `store.ack_timeout_ms`, so publishes wait, then go on.
pub async fn stall_store(proxy: &LinkProxy, w: &Workload) {
    for _ in 0..rounds() {
        proxy.set(Mode::Blackhole);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.set(Mode::Pass);
        w.published(10).await;
    }
}

/// The nodes, starting with a different one per protocol.
pub fn rotate(nodes: &[String], by: usize) -> Vec<String> {
    let mut n = nodes.to_vec();
    n.rotate_left(by % nodes.len());
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_on_the_local_bus_loses_nothing_acknowledged() {
    let (proxy, via_proxy) = store_behind_proxy().await;
    let sections = format!("[store]\nurl = {via_proxy:?}\n{KEEP_ALL}");
    let gw = GatewayProcess::start_with_server("solo", QUICK_HEARTBEATS, &sections).await;
    let addr = gw.addr().to_owned();
    let w = Workload::start(
        "localstore",
        vec![addr.clone()],
        |_| vec![addr.clone()],
        Shape::default(),
    )
    .await;
    stall_store(&proxy, &w).await;
    w.conclude("PostgreSQL unreachable for 3 s (local bus)")
        .await;
}
