//! Gaps in the core-NATS fan-out: a node whose NATS link loses a delivery
//! (a proxy drops the message whole) repairs it from history before what
//! follows, finds a lost last delivery through the partition's beacon,
//! and tells its sessions when history keeps nothing to repair from (after
//! the events before the loss, even those still in the edge); a partition
//! handed over cleanly reports nothing lost.
//! Real nats-server, the machine's PostgreSQL shared by both nodes.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use support::lossy::LossyProxy;
use support::nats::NatsServer;
use support::*;
use switchyard_host::bus::BusStats;

fn bus(gw: &TestGateway) -> &BusStats {
    gw.gateway.bus.stats().expect("a NATS bus")
}

/// Node `a` on the server, node `b` through a lossy proxy, one store;
/// and a topic under `prefix` that `a` routes, so that its deliveries to
/// `b` cross the proxy (a node hands its own to itself in process).
async fn two_nodes(
    nats: &NatsServer,
    extra: &str,
    prefix: &str,
) -> (TestGateway, TestGateway, LossyProxy, String) {
    let pg = fresh_postgres().await;
    let proxy = LossyProxy::start(format!("127.0.0.1:{}", nats.port)).await;
    let cfg = |node: &str, url: String| {
        node_config(
            node,
            &format!(
                "{}\n[store]\nurl = {pg:?}\n{extra}",
                support::nats::bus_section(&[url], 1)
            ),
        )
    };
    let a = TestGateway::start(cfg("a", nats.url())).await;
    let b = TestGateway::start(cfg("b", proxy.url())).await;
    // Partitions that move mid-test would be repaired as takeovers.
    let owners = support::cluster::balanced(&a, &["a", "b"]).await;
    let topic = owners.topic_routed_by(prefix, "a");
    (a, b, proxy, topic)
}

async fn subscribed(gw: &TestGateway, topic: &str) -> Ws {
    support::cluster::subscribed_to(gw, &[topic.to_owned()]).await
}

/// (gaps, recovered, unrepaired) as `gw`'s bus counts them.
fn counts(gw: &TestGateway) -> (u64, u64, u64) {
    let b = bus(gw);
    (
        b.gaps.load(Ordering::Relaxed),
        b.recovered.load(Ordering::Relaxed),
        b.gaps_unrepaired.load(Ordering::Relaxed),
    )
}

async fn publish(gw: &TestGateway, topic: &str, data: Value) -> String {
    let (status, body) = gw.publish(json!({"topic": topic, "data": data})).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

/// The data of the next `n` events, and any `events_dropped` error among them.
async fn next_events(ws: &mut Ws, n: usize) -> (Vec<Value>, Vec<Value>) {
    let mut data = Vec::new();
    let mut errors = Vec::new();
    while data.len() < n {
        let f = ws.next_json().await;
        match f["op"].as_str() {
            Some("event") => data.push(f["data"].clone()),
            Some("error") => errors.push(f),
            _ => {}
        }
    }
    (data, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_is_repaired_from_history_before_what_follows() {
    let nats = NatsServer::single();
    let (a, b, proxy, topic) = two_nodes(&nats, "", "news.gap.").await;
    let subject = format!("sy.out.t.{topic}");
    let mut ws = subscribed(&b, &topic).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish(&a, &topic, json!(i)).await);
    }
    assert_eq!(
        next_events(&mut ws, 3).await.0,
        [json!(0), json!(1), json!(2)]
    );

    // One delivery lost in the middle: the next one names it.
    let (gaps, recovered, unrepaired) = counts(&b);
    proxy.drop_next(&subject, 1);
    for i in 3..6 {
        sent.push(publish(&a, &topic, json!(i)).await);
    }
    let (data, errors) = next_events(&mut ws, 3).await;
    assert_eq!(data, [json!(3), json!(4), json!(5)], "sent {sent:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(proxy.dropped(), std::slice::from_ref(&subject));
    assert_eq!(
        counts(&b),
        (gaps + 1, recovered + 1, unrepaired),
        "one gap, one event repaired"
    );

    // The last delivery lost: only the partition's beacon names it.
    let (gaps, recovered, unrepaired) = counts(&b);
    proxy.drop_next(&subject, 1);
    sent.push(publish(&a, &topic, json!(6)).await);
    let (data, errors) = next_events(&mut ws, 1).await;
    assert_eq!(data, [json!(6)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(proxy.dropped().len(), 2);
    assert_eq!(
        counts(&b),
        (gaps + 1, recovered + 1, unrepaired),
        "the beacon named the lost tail, and it was repaired"
    );

    // Nothing more comes: each event once, the next one next.
    publish(&a, &topic, json!(7)).await;
    let (data, errors) = next_events(&mut ws, 1).await;
    assert_eq!(data, [json!(7)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(b.metric("switchyard_bus_gaps_unrepaired_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_history_does_not_keep_is_reported_to_the_session() {
    let nats = NatsServer::single();
    let (a, b, proxy, topic) = two_nodes(
        &nats,
        "[[store.retention]]\ntopics = \"news.live.>\"\nmax_events = 0\n",
        "news.live.x",
    )
    .await;
    let mut ws = subscribed(&b, &topic).await;
    publish(&a, &topic, json!(0)).await;
    assert_eq!(next_events(&mut ws, 1).await.0, [json!(0)]);

    let (_, _, unrepaired) = counts(&b);
    proxy.drop_next(&format!("sy.out.t.{topic}"), 1);
    publish(&a, &topic, json!(1)).await;
    publish(&a, &topic, json!(2)).await;
    let (data, errors) = next_events(&mut ws, 1).await;
    assert_eq!(data, [json!(2)], "the lost event cannot come back");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "events_dropped", "{errors:?}");
    assert_eq!(errors[0]["count"], 1, "{errors:?}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("lost on the way"), "{errors:?}");
    assert!(b.metric("switchyard_bus_gaps_unrepaired_total").await >= 1);
    assert_eq!(counts(&b).2, unrepaired + 1, "one subject reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_is_told_after_the_events_before_it() {
    // A transformer busy 300 ms per event keeps events in the edge's lane
    // while the dispatcher finds the gap behind them.
    let slow = format!(
        "[[store.retention]]\ntopics = \"news.live.>\"\nmax_events = 0\n\
         [[plugins]]\nname = \"slow\"\npath = {:?}\ntopics = [\"news.live.*\"]\n\
         timeout_ms = 5000\n[plugins.config]\nslow_transform_ms = 300\n",
        switchyard_fixtures::hostile().display().to_string()
    );
    let nats = NatsServer::single();
    let (a, b, proxy, topic) = two_nodes(&nats, &slow, "news.live.y").await;
    let mut ws = subscribed(&b, &topic).await;
    publish(&a, &topic, json!(0)).await;
    assert_eq!(next_events(&mut ws, 1).await.0, [json!(0)]);

    // 1 reaches b (and sits in the transformer), 2 is lost, 3 names the gap.
    let received = bus(&b).received.load(Ordering::Relaxed);
    publish(&a, &topic, json!(1)).await;
    eventually("b received 1", Duration::from_secs(10), async || {
        bus(&b).received.load(Ordering::Relaxed) > received
    })
    .await;
    proxy.drop_next(&format!("sy.out.t.{topic}"), 1);
    publish(&a, &topic, json!(2)).await;
    publish(&a, &topic, json!(3)).await;
    let mut order = Vec::new();
    while order.len() < 3 {
        let f = ws.next_json().await;
        match f["op"].as_str() {
            Some("event") => order.push(f["data"].to_string()),
            Some("error") => order.push(f["code"].as_str().unwrap_or("error").to_owned()),
            _ => {}
        }
    }
    assert_eq!(
        order,
        ["1", "events_dropped", "3"],
        "the loss between 1 and 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_cleanly_reports_nothing_lost() {
    let nats = NatsServer::single();
    let pg = fresh_postgres().await;
    let cfg = |node: &str| {
        node_config(
            node,
            &format!(
                "{}\n[store]\nurl = {pg:?}\n[[store.retention]]\ntopics = \"news.quiet.>\"\nmax_events = 0\n",
                support::nats::bus_section(&[nats.url()], 1)
            ),
        )
    };
    // One topic in each partition; history keeps none of them, so a
    // takeover that doubted what the previous owner sent last could only
    // tell the session events were lost.
    let mut topics: Vec<Option<String>> = vec![None; support::cluster::PARTITIONS];
    for i in 0.. {
        let t = format!("news.quiet.{i}");
        let p = switchyard_host::routing::partition::partition_of_str(&t, 64).0 as usize;
        topics[p].get_or_insert(t);
        if topics.iter().all(Option::is_some) {
            break;
        }
    }
    let topics: Vec<String> = topics.into_iter().flatten().collect();
    let a = TestGateway::start(cfg("a")).await;
    support::cluster::balanced(&a, &["a"]).await;
    let mut ws = support::cluster::subscribed_to(&a, &topics).await;
    let round = async |ws: &mut Ws, n: u64| {
        for t in &topics {
            publish(&a, t, json!(n)).await;
        }
        let (data, errors) = next_events(ws, topics.len()).await;
        assert!(errors.is_empty(), "round {n}: {errors:?}");
        assert!(data.iter().all(|d| *d == json!(n)), "round {n}: {data:?}");
    };
    round(&mut ws, 1).await;

    // b joins: a hands half the partitions over, vouching (in process, to
    // its own dispatcher) for what it delivered here.
    let b = TestGateway::start(cfg("b")).await;
    support::cluster::balanced(&a, &["a", "b"]).await;
    round(&mut ws, 2).await;
    // b drains: it hands them back, vouching over NATS.
    switchyard_host::server::drain(&b.gateway).await;
    support::cluster::balanced(&a, &["a"]).await;
    round(&mut ws, 3).await;
    assert_eq!(a.metric("switchyard_bus_gaps_unrepaired_total").await, 0);
    assert_eq!(
        bus(&a).gaps.load(Ordering::Relaxed),
        0,
        "no takeover doubted a handover"
    );
}
