//! Backpressure on the NATS bus: when a partition's oldest unacknowledged
//! event grows older than `bus.max_lag_ms` (here the store stalls, so
//! nothing can be acknowledged), publishes to it get 503 `unavailable`
//! instead of a backlog; once the store answers again they are taken, and
//! every accepted event arrives once, in order. Real nats-server, the
//! machine's PostgreSQL behind a proxy that stalls.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nats::{NatsServer, bus_section};
use support::stall::StallProxy;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_partition_past_max_lag_are_refused_until_it_catches_up() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let proxy = StallProxy::start("127.0.0.1:5432").await;
    let via_proxy = db.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, db, "the test database is on 127.0.0.1:5432");
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

    proxy.pause();
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

    proxy.resume();
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
