//! Consumers kept in memory lose their state with their server: on a
//! cluster of three nats-servers with one replica, the server holding the
//! ingest stream is killed and restarted while the routing node stays
//! connected to another one (so it sees no disconnect). The cluster brings
//! the consumers back with their delivery counts reset; routing must see
//! that and resume on fresh ones. (A single server's restart always breaks
//! the connection, after which every consumer is replaced:
//! `backplane.rs`.)

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::nats::{NatsServer, bus_section};
use support::*;

async fn node(name: &str, url: String, db: &str) -> TestGateway {
    TestGateway::start(node_config(
        name,
        &format!("{}[store]\nurl = {db:?}\n", bus_section(&[url], 1)),
    ))
    .await
}

fn owned(gw: &TestGateway) -> i64 {
    let stats = gw.gateway.bus.stats().expect("a NATS bus");
    stats.partitions_owned.load(Ordering::Relaxed)
}

async fn owns_everything(gw: &TestGateway) {
    eventually(
        "one node routes every partition",
        Duration::from_secs(30),
        async || owned(gw) == 64,
    )
    .await;
}

/// The server that leads the ingest stream, as `url`'s server reports it.
async fn ingest_leader(url: &str) -> String {
    let client = async_nats::connect(url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SY_IN").await.expect("the ingest stream");
    let info = stream.info().await.expect("stream info");
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a clustered stream has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_resumes_when_the_ingest_streams_server_restarts_behind_the_node() {
    let db = fresh_postgres().await;
    let mut servers = NatsServer::cluster();
    let first = node("a", servers[0].url(), &db).await;
    owns_everything(&first).await;
    let leader = ingest_leader(&servers[0].url()).await;
    let home = servers
        .iter()
        .position(|s| s.name == leader)
        .expect("the leader is one of ours");
    // The routing node must not be on the server that restarts.
    let routing = if home == 0 {
        let second = node("b", servers[1].url(), &db).await;
        switchyard_host::server::drain(&first.gateway).await;
        owns_everything(&second).await;
        second
    } else {
        first
    };
    let mut ws = routing.ws(&token(json!({"sub": "ann"}))).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.lost"}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let (status, body) = routing
        .publish(json!({"topic": "news.lost", "data": "before"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ws.next_event().await["data"], "before");

    servers[home].kill();
    servers[home].start();
    // Publishes are refused until the stream is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = routing
            .publish(json!({"topic": "news.lost", "data": "after"}))
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingest stream never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = ws.next_event_within(Duration::from_secs(15)).await;
    let stats = routing.gateway.bus.stats().expect("a NATS bus");
    assert_eq!(
        event.map(|e| e["data"].clone()),
        Some(json!("after")),
        "routing did not resume; disconnects {}",
        stats.disconnects.load(Ordering::Relaxed)
    );
}
