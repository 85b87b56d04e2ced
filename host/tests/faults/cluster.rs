//! Fault scenarios of a cluster: gateway nodes on NATS sharing PostgreSQL.

use crate::support::fresh_postgres;
use crate::support::nats::{NatsServer, bus_section};
use crate::support::process::GatewayProcess;
use crate::workload::{Shape, Workload, rounds};
use crate::{CLUSTER_BURST, KEEP_ALL, QUICK_HEARTBEATS, rotate, stall_store, store_behind_proxy};

/// Two nodes on `urls` sharing the store at `db`.
async fn two_nodes(urls: &[String], replicas: usize, db: &str) -> (GatewayProcess, GatewayProcess) {
    let sections = format!(
        "{}[store]\nurl = {db:?}\n{KEEP_ALL}",
        bus_section(urls, replicas)
    );
    let a = GatewayProcess::start_with_server("a", QUICK_HEARTBEATS, &sections).await;
    let b = GatewayProcess::start_with_server("b", QUICK_HEARTBEATS, &sections).await;
    (a, b)
}

async fn workload(name: &str, nodes: &[&GatewayProcess], shape: Shape) -> Workload {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_owned()).collect();
    let follow = addrs.clone();
    Workload::start(name, addrs, move |p| rotate(&follow, p as usize), shape).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_and_restarted_loses_nothing_acknowledged() {
    let mut nats = NatsServer::single();
    let db = fresh_postgres().await;
    let (a, b) = two_nodes(&[nats.url()], 1, &db).await;
    let w = workload("natskill", &[&a, &b], CLUSTER_BURST).await;
    for _ in 0..rounds() {
        nats.kill();
        nats.start();
        w.published(10).await;
    }
    w.conclude("nats-server SIGKILL and restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_nats_servers_killed_loses_nothing_acknowledged() {
    let mut servers = NatsServer::cluster();
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let db = fresh_postgres().await;
    let (a, b) = two_nodes(&urls, 3, &db).await;
    let w = workload("natsone", &[&a, &b], CLUSTER_BURST).await;
    for round in 0..rounds() {
        let server = &mut servers[round % 3];
        server.kill();
        w.published(10).await;
        server.start();
        // One fault at a time: the next server is killed only once this
        // one's streams have caught up (killing a second while the first
        // still catches up leaves no quorum, which no gateway can route
        // around).
        server.caught_up().await;
        w.published(10).await;
    }
    w.conclude("one of 3 nats-servers SIGKILL (replicas 3)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_node_killed_loses_nothing_acknowledged() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let (mut a, b) = two_nodes(&[nats.url()], 1, &db).await;
    let w = workload("nodekill", &[&a, &b], CLUSTER_BURST).await;
    for _ in 0..rounds() {
        a.kill().await;
        w.published(10).await;
        a.restart().await;
        w.published(10).await;
    }
    w.conclude("gateway node SIGKILL (2 nodes)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_sends_its_sessions_elsewhere_without_loss() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let (mut a, b) = two_nodes(&[nats.url()], 1, &db).await;
    let w = workload("drain", &[&a, &b], Shape::default()).await;
    for _ in 0..rounds() {
        a.terminate().await;
        w.published(10).await;
        a.restart().await;
        w.published(10).await;
    }
    w.conclude("drain (SIGTERM), reconnect storm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_for_seconds_loses_nothing_acknowledged() {
    let nats = NatsServer::single();
    let (proxy, via_proxy) = store_behind_proxy().await;
    let (a, b) = two_nodes(&[nats.url()], 1, &via_proxy).await;
    let w = workload("store", &[&a, &b], Shape::default()).await;
    stall_store(&proxy, &w).await;
    w.conclude("PostgreSQL unreachable for 3 s (NATS)").await;
}
