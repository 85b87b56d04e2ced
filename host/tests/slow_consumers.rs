//! A client that stops reading never slows the others nor grows the
//! server's memory: it is disconnected, or loses its oldest events, per policy.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use support::*;

const EVENTS: u64 = 1500;
const DEPTH: usize = 64;

fn flood_config(policy: &str, grace_ms: u64) -> switchyard_host::config::Config {
    config(&format!(
        "[limits]\nqueue_depth = {DEPTH}\nslow_consumer = \"{policy}\"\nslow_consumer_grace_ms = {grace_ms}"
    ))
}

/// Publishes EVENTS events of ~8 KiB on news.flood while watching the
/// queues; returns the largest queue length seen.
async fn flood(gw: &Arc<TestGateway>) -> usize {
    let max_seen = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (gw, max_seen) = (gw.clone(), max_seen.clone());
        tokio::spawn(async move {
            loop {
                for s in gw.gateway.hub.sessions() {
                    max_seen.fetch_max(s.queue.len(), Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let pad = "x".repeat(8 * 1024);
    for seq in 0..EVENTS {
        let (status, body) = gw
            .publish(json!({"topic": "news.flood", "data": {"seq": seq, "pad": pad}}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    watcher.abort();
    max_seen.load(Ordering::Relaxed)
}

/// Reads every event on a fast client and checks none is missing or out of order.
fn fast_reader(mut ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for expected in 0..EVENTS {
            let e = ws.next_event().await;
            assert_eq!(
                e["data"]["seq"], expected,
                "the fast client lost or reordered an event"
            );
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_the_fast_one_gets_everything() {
    let gw = Arc::new(TestGateway::start(flood_config("disconnect", 100)).await);
    let t = token(json!({"sub": "u"}));
    let mut fast = gw.ws(&t).await;
    let mut slow = gw.ws(&t).await;
    for ws in [&mut fast, &mut slow] {
        let ok = ws
            .request(json!({"op": "subscribe", "id": 1, "topic": "news.flood"}))
            .await;
        assert_eq!(ok["op"], "ack");
    }
    let reader = fast_reader(fast);
    let max_queue = flood(&gw).await;
    reader.await.expect("fast client got every event in order");
    assert!(
        max_queue <= DEPTH + 2,
        "queues stayed bounded: saw {max_queue}"
    );

    // The slow client finds what fitted in the buffers, then the close.
    let (code, reason) = slow.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("slow consumer"), "{reason}");
    let stats = &gw.gateway.stats;
    assert!(stats.slow_consumers.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_drop_oldest_a_slow_client_is_told_how_many_events_it_lost() {
    let gw = Arc::new(TestGateway::start(flood_config("drop_oldest", 30_000)).await);
    let t = token(json!({"sub": "u"}));
    let mut fast = gw.ws(&t).await;
    let mut slow = gw.ws(&t).await;
    for ws in [&mut fast, &mut slow] {
        ws.request(json!({"op": "subscribe", "id": 1, "topic": "news.flood"}))
            .await;
    }
    let reader = fast_reader(fast);
    let max_queue = flood(&gw).await;
    reader.await.expect("fast client got every event in order");
    assert!(
        max_queue <= DEPTH + 2,
        "queues stayed bounded: saw {max_queue}"
    );

    // Everything is accounted for: received, or reported dropped.
    let (mut received, mut dropped, mut last_seq) = (0u64, 0u64, -1i64);
    while received + dropped < EVENTS {
        let f = slow.next_json().await;
        match f["op"].as_str() {
            Some("event") => {
                let seq = f["data"]["seq"].as_i64().expect("seq");
                assert!(seq > last_seq, "events stay in order");
                last_seq = seq;
                received += 1;
            }
            Some("error") if f["code"] == "events_dropped" => {
                dropped += f["count"].as_u64().expect("count")
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert!(dropped > 0, "the slow client must have lost some");
    assert_eq!(received + dropped, EVENTS);
    assert_eq!(last_seq, EVENTS as i64 - 1, "the newest event survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_accepts_nothing_is_dropped_after_the_heartbeat_timeout() {
    // Under drop_oldest the queue never overflows: the stalled socket is what
    // gives the client away.
    let mut c = flood_config("drop_oldest", 300);
    c.server.heartbeat_timeout_s = 1;
    let gw = Arc::new(TestGateway::start(c).await);
    let t = token(json!({"sub": "u"}));
    let mut stuck = gw.ws(&t).await;
    stuck
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.flood"}))
        .await;
    let pad = "x".repeat(8 * 1024);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seq = 0;
    while !gw.gateway.hub.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled session was never dropped"
        );
        gw.publish(json!({"topic": "news.flood", "data": {"seq": seq, "pad": pad}}))
            .await;
        seq += 1;
    }
    assert!(gw.gateway.stats.slow_consumers.load(Ordering::Relaxed) >= 1);
    drop(stuck);
}
