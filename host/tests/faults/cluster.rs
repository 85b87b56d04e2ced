//! Fault scenarios of a cluster: gateway nodes on NATS sharing PostgreSQL.

use crate::support::fresh_postgres;
use crate::support::nats::{NatsServer, bus_section};
use crate::support::process::GatewayProcess;
use crate::workload::{Shape, Workload, after_fault, assert_clean, rounds};
use crate::{
    CLUSTER_BURST, KEEP_ALL, QUICK_HEARTBEATS, SETTLE, rotate, stall_store, store_behind_proxy,
};

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
    w.publish_for(after_fault()).await;
    let verdicts = w.finish("nats-server SIGKILL and restart", SETTLE).await;
    assert_clean("nats kill", &verdicts);
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
        w.published(10).await;
    }
    w.publish_for(after_fault()).await;
    let verdicts = w
        .finish("one of 3 nats-servers SIGKILL (replicas 3)", SETTLE)
        .await;
    assert_clean("one nats server", &verdicts);
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
    w.publish_for(after_fault()).await;
    let verdicts = w.finish("gateway node SIGKILL (2 nodes)", SETTLE).await;
    assert_clean("node kill", &verdicts);
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
    w.publish_for(after_fault()).await;
    let verdicts = w.finish("drain (SIGTERM), reconnect storm", SETTLE).await;
    assert_clean("drain", &verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_for_seconds_loses_nothing_acknowledged() {
    let nats = NatsServer::single();
    let (proxy, via_proxy) = store_behind_proxy().await;
    let (a, b) = two_nodes(&[nats.url()], 1, &via_proxy).await;
    let w = workload("store", &[&a, &b], Shape::default()).await;
    stall_store(&proxy, &w).await;
    w.publish_for(after_fault()).await;
    let verdicts = w
        .finish("PostgreSQL unreachable for 3 s (NATS)", SETTLE)
        .await;
    assert_clean("store stall", &verdicts);
}
