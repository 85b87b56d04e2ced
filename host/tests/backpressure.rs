//! Backpressure on the NATS bus: when a partition's oldest unacknowledged
//! event grows older than `bus.max_lag_ms` (here the store stalls, so
//! nothing can be acknowledged), publishes to it get 503 `unavailable`
//! instead of a backlog; once the store answers again they are taken, and
//! every accepted event arrives once, in order. Real nats-server, the
//! machine's PostgreSQL behind a proxy that stalls.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::link::{LinkProxy, Mode};
use support::nats::{NatsServer, bus_section};
use support::*;
use switchyard_host::routing::partition::{DEFAULT_PARTITIONS, partition_of_str};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_partition_past_max_lag_are_refused_until_it_catches_up() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    // postgres://user@host:port/name: the proxy goes in front of host:port.
    let server = db
        .rsplit_once('/')
        .and_then(|(base, _)| base.rsplit_once('@'))
        .map(|(_, at)| at.to_owned())
        .expect("a postgres://user@host:port/name URL");
    let proxy = LinkProxy::start(&server).await;
    let via_proxy = db.replace(&server, &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, db, "the test database goes through the proxy");
    let gw = TestGateway::start(node_config(
        "a",
        &format!(
            "{}max_lag_ms = 300\n[store]\nurl = {via_proxy:?}\n",
            bus_section(&[nats.url()], 1)
        ),
    ))
    .await;
    let mut ws = gw.ws(&token(json!({"sub": "reader"}))).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.bp"}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");

    let publish = async |n: u64| gw.publish(json!({"topic": "news.bp", "data": n})).await;
    let mut accepted: Vec<u64> = Vec::new();
    let (status, body) = publish(0).await;
    assert_eq!(status, 200, "{body}");
    accepted.push(0);

    proxy.set(Mode::Blackhole);
    let mut n = 1;
    let refusal: Value = loop {
        assert!(n < 400, "never refused while the store stalled");
        let (status, body) = publish(n).await;
        match status {
            200 => accepted.push(n),
            503 => break body,
            other => panic!("{other}: {body}"),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(refusal["error"]["code"], "unavailable", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("behind"), "{refusal}");
    assert!(gw.metric("switchyard_bus_lag_refusals_total").await >= 1);
    assert_eq!(gw.metric("switchyard_bus_lag_refusals_total").await, 1);
    // Only that partition is held back: another one, idle, takes events.
    let bp = partition_of_str("news.bp", DEFAULT_PARTITIONS);
    let other = (0..100)
        .map(|i| format!("news.other{i}"))
        .find(|t| partition_of_str(t, DEFAULT_PARTITIONS) != bp)
        .expect("a topic in another partition");
    let (status, body) = gw.publish(json!({"topic": other, "data": 0})).await;
    assert_eq!(status, 200, "another partition is not behind: {body}");

    proxy.set(Mode::Pass);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the store came back"
        );
        n += 1;
        let (status, body) = publish(n).await;
        if status == 200 {
            accepted.push(n);
            break;
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let e = ws.next_event().await;
        got.push(e["data"].as_u64().expect("n"));
    }
    assert_eq!(got, accepted, "every accepted event once, in order");
}
