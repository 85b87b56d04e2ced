//! Partitioned routing on real `nats-server` processes: partitions shared
//! out over the nodes and moved only as nodes join and drain; an owner
//! killed or paused mid-stream replaced without a loss, a duplicate or a
//! reordering; raw publishes partitioned by the relay or by a server
//! mapping; a node with another partition count refused.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::cluster::*;
use support::nats::{NatsServer, bus_section};
use support::*;
use switchyard_host::routing::partition::{partition_of_str, server_mappings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_shared_out_and_move_only_as_nodes_join_and_drain() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let a = node("a", &nats.url(), &db).await;
    let alone = balanced(&a, &["a"]).await;
    assert_eq!(
        alone.slots()["a"],
        PARTITIONS + 1,
        "one node routes everything"
    );

    // Events flow through every change below, on at least one topic of
    // every partition, so that every move is crossed.
    let mut topics: Vec<String> = Vec::new();
    let mut covered = std::collections::HashSet::new();
    for i in 0.. {
        let t = format!("news.p{i}");
        if covered.insert(partition_of_str(&t, PARTITIONS as u16)) {
            topics.push(t);
        }
        if covered.len() == PARTITIONS {
            break;
        }
    }
    let steady = Steady::start(&a, &topics, Duration::from_millis(1)).await;

    let b = node("b", &nats.url(), &db).await;
    let two = balanced(&a, &["a", "b"]).await;
    for (p, from, to) in two.moved_since(&alone) {
        assert_eq!(
            (from.as_deref(), to.as_deref()),
            (Some("a"), Some("b")),
            "partition {p}"
        );
    }
    assert!(two.slots()["b"] >= PARTITIONS / 2, "{:?}", two.slots());

    let c = node("c", &nats.url(), &db).await;
    let three = balanced(&b, &["a", "b", "c"]).await;
    let moved = three.moved_since(&two);
    for (p, _, to) in &moved {
        assert_eq!(
            to.as_deref(),
            Some("c"),
            "partition {p} moved between old nodes"
        );
    }
    assert!(three.slots()["c"] >= PARTITIONS / 3, "{:?}", three.slots());

    // c drains: its partitions, and only those, go back to a and b.
    switchyard_host::server::drain(&c.gateway).await;
    let after = balanced(&a, &["a", "b"]).await;
    for (p, from, _) in after.moved_since(&three) {
        assert_eq!(from.as_deref(), Some("c"), "partition {p} was not c's");
    }
    let c_bus = c.gateway.bus.stats().expect("nats");
    let released = c_bus.leases_released.load(Ordering::Relaxed) as usize;
    assert!(
        released >= three.slots()["c"],
        "c handed each slot over: {released}"
    );
    assert_eq!(
        c_bus.leases_lost.load(Ordering::Relaxed),
        0,
        "none was taken from c"
    );

    let acked = steady.acked.load(Ordering::Relaxed);
    let longest = steady.finish().await;
    eprintln!("{acked} events over 2 joins and a drain; longest silence of a topic {longest:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_and_nothing_is_lost_repeated_or_reordered() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let (mut k, b, shared) = two_nodes(&nats, &db).await;
    let (topics, on_k) = topics_over(&shared, "k");
    assert!(on_k > 0, "some topic is routed by k");
    let steady = Steady::start(&b, &topics, Duration::from_millis(2)).await;
    steady.another(300).await;
    k.kill().await;
    let killed_at = steady.acked.load(Ordering::Relaxed);
    let all_on_b = balanced(&b, &["b"]).await;
    assert_eq!(all_on_b.slots()["b"], PARTITIONS + 1);
    steady.another(300).await;
    let longest = steady.finish().await;
    eprintln!("{killed_at} events before the kill; longest silence of a topic {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_replaced_and_takes_nothing_by_force_when_it_wakes() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let (k, b, shared) = two_nodes(&nats, &db).await;
    let (topics, on_k) = topics_over(&shared, "k");
    assert!(on_k > 0, "some topic is routed by k");
    let steady = Steady::start(&b, &topics, Duration::from_millis(2)).await;
    steady.another(200).await;
    // Frozen, k neither beats nor renews: b takes its partitions over and
    // routes again what k had taken and not acknowledged.
    k.pause();
    balanced(&b, &["b"]).await;
    steady.another(200).await;
    // Awake, k finds its leases gone, takes nothing by force (it was the
    // one not listening), and gets its share back as a joining node.
    k.resume();
    balanced(&b, &["b", "k"]).await;
    let stats = b.gateway.bus.stats().expect("nats");
    assert_eq!(
        stats.leases_lost.load(Ordering::Relaxed),
        0,
        "k took nothing from b by force"
    );
    let longest = steady.finish().await;
    eprintln!("paused owner replaced; longest silence of a topic {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_from_an_earlier_term_of_its_partition_is_dropped() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let a = node("a", &nats.url(), &db).await;
    balanced(&a, &["a"]).await;
    let topic = "news.fenced";
    let mut ws = subscribed_to(&a, &[topic.to_owned()]).await;
    let (status, body) = a
        .publish(json!({"topic": topic, "data": {"t": topic, "n": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let live = ws.next_event().await;
    let (_, v) = a.get_as("/admin/partitions", Some(ADMIN_TOKEN)).await;
    let p = partition_of_str(topic, PARTITIONS as u16);
    let term = v["partitions"][p.0 as usize]["term"]
        .as_u64()
        .expect("term");
    // What an owner deposed before that term would still send, then what
    // the current owner sends.
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let forged = |n: u64, term: u64| {
        let mut event = switchyard_host::routing::Event::new(
            switchyard_host::routing::EventId {
                seq: 100_000 + n,
                ..switchyard_host::routing::EventId::parse(live["id"].as_str().expect("id"))
                    .expect("an event id")
            },
            switchyard_host::routing::Topic::parse(topic).expect("topic"),
            json!({"t": topic, "n": n}).to_string().into_bytes(),
        );
        event.name = "message".into();
        switchyard_host::routing::Routed {
            event: Arc::new(event),
            topics: vec![topic.to_owned()],
            users: Vec::new(),
            stamp: 1,
            origin: switchyard_host::routing::Origin { partition: p, term },
        }
    };
    let subjects = switchyard_host::bus::wire::Subjects::new("sy");
    for (n, t) in [(2, term - 1), (3, term)] {
        let r = forged(n, t);
        client
            .publish_with_headers(
                subjects.topic(topic),
                switchyard_host::bus::wire::encode_routed(&r),
                r.event.data.clone().into(),
            )
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let next = ws.next_event().await;
    assert_eq!(
        next["data"]["n"], 3,
        "the earlier term's delivery was dropped: {next}"
    );
    assert_eq!(a.metric("switchyard_bus_fenced_total").await, 1);
}

async fn publish_raw(js: &async_nats::jetstream::Context, topic: &str, n: u64) -> u64 {
    js.publish(format!("sy.in.{topic}"), json!({"n": n}).to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publishes_reach_their_partition_through_the_relay_or_a_server_mapping() {
    let db = fresh_postgres().await;
    // A plain server: the relay moves raw publishes.
    let plain = NatsServer::single();
    let a = node("a", &plain.url(), &db).await;
    balanced(&a, &["a"]).await;
    let mut ws = subscribed_to(&a, &["news.raw".to_owned()]).await;
    let js = async_nats::jetstream::new(async_nats::connect(plain.url()).await.expect("nats"));
    for n in 0..20 {
        publish_raw(&js, "news.raw", n).await;
    }
    for n in 0..20 {
        assert_eq!(ws.next_event().await["data"]["n"], n);
    }
    // Counted when the copy's confirmation arrives, which may be after
    // the event itself.
    eventually("20 relayed", Duration::from_secs(10), async || {
        a.metric("switchyard_bus_relayed_total").await == 20
    })
    .await;
    let p = partition_of_str("news.raw", PARTITIONS as u16);
    let (_, text) = a.get_text("/metrics").await;
    assert!(
        text.contains(&format!(
            "switchyard_bus_partition_routed_total{{partition=\"{p}\"}} 20"
        )),
        "{text}"
    );

    // A server with the documented mapping partitions them itself: the
    // sequence a raw publish is acknowledged with is the event's id, and
    // nothing is relayed, but a topic deeper than the mapping's rules.
    let mapped = NatsServer::single_with_config(&server_mappings("sy", PARTITIONS as u16, 3));
    let m = node("m", &mapped.url(), &db).await;
    balanced(&m, &["m"]).await;
    let topics = ["news.mapped".to_owned(), "news.a.b.deep".to_owned()];
    let mut ws = subscribed_to(&m, &topics).await;
    let js = async_nats::jetstream::new(async_nats::connect(mapped.url()).await.expect("nats"));
    let mut seqs = Vec::new();
    for n in 0..20 {
        seqs.push(publish_raw(&js, "news.mapped", n).await);
    }
    for (n, seq) in seqs.iter().enumerate() {
        let e = ws.next_event().await;
        assert_eq!(e["data"]["n"], n as u64);
        let id = e["id"].as_str().expect("id");
        assert!(
            id.ends_with(&format!("-{seq}")),
            "id {id} is sequence {seq}"
        );
    }
    assert_eq!(m.metric("switchyard_bus_relayed_total").await, 0);
    publish_raw(&js, "news.a.b.deep", 7).await;
    let e = ws.next_event().await;
    assert_eq!(
        (e["topic"].as_str(), e["data"]["n"].as_u64()),
        (Some("news.a.b.deep"), Some(7))
    );
    assert_eq!(m.metric("switchyard_bus_relayed_total").await, 1);
}

/// Starts node `node` with `sections` through `Gateway::start`; its error.
async fn refused(node: &str, sections: &str) -> String {
    let config = node_config(node, sections);
    let engine = switchyard_host::plugin::PluginEngine::new(Default::default()).expect("engine");
    let plugins =
        switchyard_host::plugin::PluginSet::load(&engine, None, &[], 1).expect("no plugins");
    match switchyard_host::gateway::Gateway::start(config, engine, plugins).await {
        Ok(_) => panic!("node {node} started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_keep_history_in_sqlite_are_refused_in_a_cluster() {
    let nats = NatsServer::single();
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = |name: &str| {
        format!(
            "{}[store]\nurl = \"sqlite://{}\"\n",
            bus_section(&[nats.url()], 1),
            dir.path().join(name).display()
        )
    };
    // Alone on its NATS, a SQLite node runs.
    let alone = TestGateway::start(node_config("alone", &sqlite("alone.db"))).await;
    // A second node is refused, whatever its own store.
    let err = refused("b", &sqlite("b.db")).await;
    assert!(
        err.contains("other nodes are live") && err.contains("PostgreSQL"),
        "{err}"
    );
    let db = fresh_postgres().await;
    let err = refused(
        "c",
        &format!("{}[store]\nurl = {db:?}\n", bus_section(&[nats.url()], 1)),
    )
    .await;
    assert!(
        err.contains("alone") && err.contains("keep history in SQLite"),
        "{err}"
    );
    drop(alone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_partition_count_is_refused() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let _a = node("a", &nats.url(), &db).await;
    // The same shared store: the partition count is b's only fault.
    let err = refused(
        "b",
        &format!(
            "{}partitions = 32\n[store]\nurl = {db:?}\n",
            bus_section(&[nats.url()], 1)
        ),
    )
    .await;
    assert!(
        err.contains("bus.partitions is 32") && err.contains("created with 64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_the_single_router_version_moves_to_partitions_keeping_events_and_cursors() {
    let db = fresh_postgres().await;
    use async_nats::jetstream::{consumer, stream};
    let nats = NatsServer::single();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    // What the single-router version left: its ingest stream and consumer,
    // three events routed (acknowledged), seven waiting.
    let mut old = js
        .create_stream(stream::Config {
            name: "SY_IN".into(),
            subjects: vec!["sy.in.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("old stream");
    let epoch = (old
        .info()
        .await
        .expect("info")
        .created
        .unix_timestamp_nanos()
        / 1_000_000) as u64;
    let router = old
        .create_consumer(consumer::pull::Config {
            durable_name: Some("router".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("old consumer");
    for n in 0..10 {
        publish_raw(&js, "news.up", n).await;
    }
    let mut batch = router
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetch");
    for _ in 0..3 {
        let m = futures_util::StreamExt::next(&mut batch)
            .await
            .expect("a message")
            .expect("message");
        m.ack().await.expect("ack");
    }
    drop(batch);
    let cursor = format!("{epoch:x}-3");

    let a = node("a", &nats.url(), &db).await;
    balanced(&a, &["a"]).await;
    // A client of the old version resumes from its cursor: the seven
    // events not yet routed then (replayed, or live if routed after the
    // subscribe), in order, none of the three it had.
    let mut ws = a.ws(&token(json!({"sub": "upgraded"}))).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.up", "since": cursor}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut seen = Vec::new();
    for _ in 3..10 {
        seen.push(ws.next_event().await["data"]["n"].as_u64().expect("n"));
    }
    assert_eq!(seen, (3..10).collect::<Vec<_>>());
    assert!(
        ws.next_event_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing twice"
    );
    let mut upgraded = js.get_stream("SY_IN").await.expect("stream");
    let info = upgraded.info().await.expect("info");
    assert!(
        info.config.subjects.contains(&"sy.ip.>".to_owned()),
        "{:?}",
        info.config.subjects
    );
    assert!(
        info.config
            .description
            .as_deref()
            .is_some_and(|d| d.contains("partitions=64")),
        "{:?}",
        info.config.description
    );
    assert!(
        upgraded.consumer_info("router").await.is_err(),
        "the single router's consumer is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_on_one_node_waits_for_history_another_node_routed() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let a = TestGateway::start(cluster_node("a", nats.url(), &db)).await;
    let b = TestGateway::start(cluster_node("b", nats.url(), &db)).await;
    let shared = balanced(&a, &["a", "b"]).await;
    // A topic that b routes and writes history for, replayed on a.
    let topic = (0..)
        .map(|i| format!("news.cover{i}"))
        .find(|t| {
            let p = partition_of_str(t, PARTITIONS as u16).0 as usize;
            shared.partitions[p].as_deref() == Some("b")
        })
        .expect("a topic of b's");
    let publish = async |n: u64| {
        let (status, body) = a.publish(json!({"topic": topic, "data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("id").to_owned()
    };
    let mut previous = publish(0).await;
    for n in 1..20 {
        // Published and acknowledged, then at once a client resumes from
        // the event before it: b may have delivered it before the
        // subscription and not yet written it. The replay must have it.
        let id = publish(n).await;
        let mut ws = a.ws(&token(json!({"sub": "resumer"}))).await;
        let ack = ws
            .request(json!({"op": "subscribe", "id": 1, "topic": topic, "since": previous}))
            .await;
        assert_eq!(
            (ack["op"].as_str(), ack["recovered"].as_bool()),
            (Some("ack"), Some(true)),
            "{ack}"
        );
        let e = ws.next_event().await;
        assert_eq!(
            (e["id"].as_str(), e["data"]["n"].as_u64()),
            (Some(id.as_str()), Some(n)),
            "{e}"
        );
        previous = id;
    }
    drop(b);
}
