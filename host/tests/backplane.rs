//! The NATS backplane end to end: real `nats-server` processes (one, or a
//! cluster of three), two gateway nodes each, clients on real sockets.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use support::nats::{NatsServer, bus_section, publish_nats, service};
use support::*;
use switchyard_host::bus::BusStats;

/// A node on `urls`; the nodes of a test share the PostgreSQL store `db`.
async fn node(name: &str, urls: &[String], replicas: usize, db: &str) -> TestGateway {
    TestGateway::start(node_config(
        name,
        &format!("{}[store]\nurl = {db:?}\n", bus_section(urls, replicas)),
    ))
    .await
}

fn bus(gw: &TestGateway) -> &BusStats {
    gw.gateway.bus.stats().expect("a NATS bus")
}

/// Deliveries that reached a node: from NATS, or routed by itself.
fn arrived(gw: &TestGateway) -> u64 {
    bus(gw).received.load(Ordering::Relaxed) + bus(gw).local.load(Ordering::Relaxed)
}

/// Partitions `gw` routes now.
fn owned(gw: &TestGateway) -> u64 {
    bus(gw).partitions_owned.load(Ordering::Relaxed).max(0) as u64
}

/// Calls into the `chat-router` plugin (a router only) on this node.
fn router_calls(gw: &TestGateway) -> u64 {
    let set = gw.gateway.executor.plugins();
    set.plugins()
        .filter(|(p, _)| p.name() == "chat-router")
        .map(|(p, _)| p.metrics().calls.load(Ordering::Relaxed))
        .sum()
}

async fn subscribed(gw: &TestGateway, user: Value, topic: &str) -> Ws {
    let mut ws = gw.ws(&token(user)).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": topic}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    ws
}

fn seq_of(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("id ends with its sequence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_nats_reaches_sessions_on_both_nodes_and_is_routed_once() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let urls = [nats.url()];
    let (a, b) = (
        node("a", &urls, 1, &db).await,
        node("b", &urls, 1, &db).await,
    );
    let alice = json!({"sub": "alice", "rooms": ["1"]});
    let bob = json!({"sub": "bob"});
    let mut alice_a = subscribed(&a, alice.clone(), "chat.room.1").await;
    let mut alice_b = subscribed(&b, alice, "chat.room.1").await;
    // Bob subscribes to nothing: mentions reach him as a user.
    let mut bob_a = a.ws(&token(bob.clone())).await;
    let mut bob_b = b.ws(&token(bob)).await;
    let before = (router_calls(&a), router_calls(&b));

    let js = service(&nats.url()).await;
    let mut seqs = Vec::new();
    for i in 0..20 {
        let data = json!({"text": format!("hi {i}"), "mentions": ["bob"]});
        seqs.push(
            publish_nats(&js, "chat.room.1", data, &[("Sy-Event", "chat")])
                .await
                .expect("accepted"),
        );
    }
    for ws in [&mut alice_a, &mut alice_b, &mut bob_a, &mut bob_b] {
        for (i, seq) in seqs.iter().enumerate() {
            let e = ws.next_event().await;
            assert_eq!(e["topic"], "chat.room.1");
            assert_eq!(e["event"], "chat");
            assert_eq!(e["data"]["text"], format!("hi {i}"), "in order, once each");
            // A raw publish is relayed to its partition: the event's id is
            // the sequence of its relayed copy, after the raw one.
            assert!(seq_of(e["id"].as_str().expect("id")) > *seq, "{e}");
        }
    }
    // Routed once per event, on one node: the one owning the topic's
    // partition (the deliveries were seen, so the calls were made).
    let (ca, cb) = (router_calls(&a) - before.0, router_calls(&b) - before.1);
    assert_eq!(ca + cb, 20, "router calls: a={ca} b={cb}");
    assert!(ca == 0 || cb == 0, "one node routes a topic: a={ca} b={cb}");
    // 64 partitions and the relay over two nodes: at most 33 slots each.
    eventually(
        "the partitions are shared out",
        Duration::from_secs(20),
        async || {
            let (pa, pb) = (owned(&a), owned(&b));
            pa + pb == 64 && pa <= 33 && pb <= 33
        },
    )
    .await;

    // An HTTP publish on either node takes the same path, with the same id everywhere.
    let (status, body) = b
        .publish(json!({"topic": "dm.bob", "data": {"text": "psst"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("id");
    for ws in [&mut bob_a, &mut bob_b] {
        let e = ws.next_event().await;
        assert_eq!(e["topic"], "dm.bob");
        assert_eq!(e["id"], id);
    }
    // Repeating an idempotency key yields the first id and no second delivery.
    let body =
        json!({"topic": "news.once", "data": 1, "to_users": ["bob"], "idempotency_key": "k-1"});
    let (_, first) = a.publish(body.clone()).await;
    let (_, again) = b.publish(body).await;
    assert_eq!(first["id"], again["id"]);
    let (_, marker) = a
        .publish(json!({"topic": "news.once", "data": 2, "to_users": ["bob"]}))
        .await;
    for ws in [&mut bob_a, &mut bob_b] {
        assert_eq!(ws.next_event().await["id"], first["id"]);
        assert_eq!(ws.next_event().await["id"], marker["id"], "no second copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_what_its_sessions_need() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let urls = [nats.url()];
    let (a, b) = (
        node("a", &urls, 1, &db).await,
        node("b", &urls, 1, &db).await,
    );
    let mut carol = subscribed(&a, json!({"sub": "carol"}), "news.a").await;
    let mut dave = subscribed(&b, json!({"sub": "dave"}), "news.b").await;
    // One subject per local user and per subscribed topic.
    assert_eq!(bus(&a).interest_subjects.load(Ordering::Relaxed), 2);

    let js = service(&nats.url()).await;
    for i in 0..30 {
        publish_nats(&js, "news.a", json!(i), &[])
            .await
            .expect("accepted");
    }
    publish_nats(&js, "news.b", json!("b"), &[])
        .await
        .expect("accepted");
    for i in 0..30 {
        assert_eq!(carol.next_event().await["data"], i);
    }
    assert_eq!(dave.next_event().await["data"], "b");
    assert_eq!(arrived(&a), 30);
    assert_eq!(arrived(&b), 1, "b got nothing of news.a");

    // The last session leaving a topic unsubscribes the node from it.
    let ack = carol
        .request(json!({"op": "unsubscribe", "id": 2, "topic": "news.a"}))
        .await;
    assert_eq!(ack["op"], "ack");
    eventually(
        "a drops its news.a subscription",
        Duration::from_secs(20),
        async || bus(&a).interest_subjects.load(Ordering::Relaxed) == 1,
    )
    .await;
    for i in 0..10 {
        publish_nats(&js, "news.a", json!(i), &[])
            .await
            .expect("accepted");
    }
    // A message to carol herself still arrives, after those (same topic,
    // so routed after them, by the same owner).
    publish_nats(
        &js,
        "news.a",
        json!("to carol"),
        &[("Sy-To-Users", "carol")],
    )
    .await
    .expect("accepted");
    assert_eq!(carol.next_event().await["data"], "to carol");
    assert_eq!(arrived(&a), 31);

    // A malformed ingest message is counted and skipped; the stream goes on.
    let long_topic = format!("news.{}", "x".repeat(300));
    publish_nats(&js, &long_topic, json!(0), &[])
        .await
        .expect("accepted");
    publish_nats(&js, "news.b", json!("still"), &[])
        .await
        .expect("accepted");
    assert_eq!(dave.next_event().await["data"], "still");
    let malformed =
        bus(&a).malformed.load(Ordering::Relaxed) + bus(&b).malformed.load(Ordering::Relaxed);
    assert_eq!(malformed, 1);

    // Metrics say the same.
    let (_, text) = a.get_text("/metrics").await;
    let (received, local) = (
        bus(&a).received.load(Ordering::Relaxed),
        bus(&a).local.load(Ordering::Relaxed),
    );
    assert!(
        text.contains(&format!(
            "switchyard_bus_deliveries_received_total {received}"
        )) && text.contains(&format!("switchyard_bus_deliveries_local_total {local}")),
        "{text}"
    );
    assert!(
        text.contains("switchyard_bus_interest_subjects 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hands_what_it_routes_to_its_own_sessions_without_nats() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let a = node("a", &[nats.url()], 1, &db).await;
    let mut erin = subscribed(&a, json!({"sub": "erin"}), "news.own").await;
    for i in 0..5 {
        let (status, body) = a
            .publish(json!({"topic": "news.own", "data": i, "to_users": ["erin"]}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..5 {
        assert_eq!(erin.next_event().await["data"], i, "once each, in order");
    }
    // The only node routes every partition: each event went to erin's
    // topic and user subjects in process, and nothing came back from NATS.
    // (The user copy of the last event may be counted after erin has its
    // topic copy.)
    eventually("both copies of every event handed over", WAIT, async || {
        bus(&a).local.load(Ordering::Relaxed) == 10
            && bus(&a).duplicates.load(Ordering::Relaxed) == 5
    })
    .await;
    assert_eq!(bus(&a).local.load(Ordering::Relaxed), 10);
    assert_eq!(bus(&a).received.load(Ordering::Relaxed), 0);
    assert_eq!(
        bus(&a).duplicates.load(Ordering::Relaxed),
        5,
        "the user copies"
    );

    // A second node's session gets them through NATS, the first node's
    // still in process.
    let b = node("b", &[nats.url()], 1, &db).await;
    let mut frank = subscribed(&b, json!({"sub": "frank"}), "news.own").await;
    let (status, body) = b
        .publish(json!({"topic": "news.own", "data": "both"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(erin.next_event().await["data"], "both");
    assert_eq!(frank.next_event().await["data"], "both");
    assert_eq!(arrived(&a) + arrived(&b), 12);
    assert_eq!(
        bus(&a).received.load(Ordering::Relaxed) + bus(&b).received.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_answers_the_same_from_every_node() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let urls = [nats.url()];
    let (a, b) = (
        node("a", &urls, 1, &db).await,
        node("b", &urls, 1, &db).await,
    );
    let _erin = subscribed(&a, json!({"sub": "erin"}), "news.p").await;
    let _frank = subscribed(&b, json!({"sub": "frank"}), "news.p").await;
    let _frank2 = subscribed(&a, json!({"sub": "frank"}), "news.p").await;
    let _other = subscribed(&b, json!({"sub": "gina"}), "news.q").await;
    eventually(
        "both nodes see each other",
        Duration::from_secs(20),
        async || a.gateway.bus.nodes().len() == 2 && b.gateway.bus.nodes().len() == 2,
    )
    .await;
    for gw in [&a, &b] {
        let (status, body) = gw.get_as("/v1/presence/news.p", Some(SERVICE_KEY)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"topic": "news.p", "users": ["erin", "frank"]}));
    }
    // Session counts per node, from either node.
    for gw in [&a, &b] {
        let (status, body) = gw.get_as("/admin/sessions", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["nodes"]["a"]["json"], 2, "{body}");
        assert_eq!(body["nodes"]["b"]["json"], 2, "{body}");
        assert_eq!(body["nodes"]["b"]["total"], 2, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_their_nats_server_restarts() {
    let db = fresh_postgres().await;
    let mut nats = NatsServer::single();
    let urls = [nats.url()];
    let (a, b) = (
        node("a", &urls, 1, &db).await,
        node("b", &urls, 1, &db).await,
    );
    let mut alice = subscribed(&a, json!({"sub": "alice"}), "news.r").await;
    let mut bob = subscribed(&b, json!({"sub": "bob"}), "news.r").await;
    let (status, _) = a
        .publish(json!({"topic": "news.r", "data": "before"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(alice.next_event().await["data"], "before");
    assert_eq!(bob.next_event().await["data"], "before");

    nats.terminate();
    eventually("a reports not ready", Duration::from_secs(20), async || {
        a.get("/readyz").await.0 == 503
    })
    .await;
    let (status, body) = a.publish(json!({"topic": "news.r", "data": "lost"})).await;
    assert_eq!(status, 503, "a publish NATS cannot take is refused: {body}");
    assert_eq!(body["error"]["code"], "unavailable");

    nats.start();
    for gw in [&a, &b] {
        eventually("ready again", Duration::from_secs(20), async || {
            gw.get("/readyz").await.0 == 200
        })
        .await;
    }
    assert!(bus(&a).disconnects.load(Ordering::Relaxed) >= 1);
    // Sessions stayed; subscriptions came back; routing resumes.
    let js = service(&nats.url()).await;
    let mut sent = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0..5 {
        loop {
            if let Ok(seq) = publish_nats(&js, "news.r", json!(i), &[]).await {
                sent.push(seq);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream never took event {i} after the restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (who, ws) in [("alice on a", &mut alice), ("bob on b", &mut bob)] {
        let mut got = Vec::new();
        for _ in 0..5 {
            let Ok(e) = tokio::time::timeout(Duration::from_secs(8), ws.next_event()).await else {
                let d = |g: &TestGateway| {
                    let b = bus(g);
                    format!(
                        "received {} duplicates {} routed {} delivered {} partitions {}",
                        b.received.load(Ordering::Relaxed),
                        b.duplicates.load(Ordering::Relaxed),
                        g.gateway.stats.routed.load(Ordering::Relaxed),
                        g.gateway.stats.delivered.load(Ordering::Relaxed),
                        b.partitions_owned.load(Ordering::Relaxed),
                    )
                };
                panic!(
                    "{who}: got {got:?}, sent {sent:?}; a: {}; b: {}",
                    d(&a),
                    d(&b)
                );
            };
            got.push((e["data"].clone(), e["id"].clone()));
        }
        let data: Vec<Value> = got.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(
            data,
            (0..5).map(|i| json!(i)).collect::<Vec<_>>(),
            "{who}: {got:?}, sent {sent:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_server_of_a_cluster_loses_no_accepted_event() {
    let db = fresh_postgres().await;
    let mut servers = NatsServer::cluster();
    // Each node knows one server and learns the others from it. Both
    // route some partitions; what a misses while it reconnects must come
    // from the delivery log, and a's partitions go to b meanwhile.
    let b = node("b", &[servers[1].url()], 3, &db).await;
    eventually("b routes", Duration::from_secs(20), async || {
        owned(&b) == 64
    })
    .await;
    let a = node("a", &[servers[0].url()], 3, &db).await;
    let mut on_a = subscribed(&a, json!({"sub": "alice"}), "news.c").await;
    let mut on_b = subscribed(&b, json!({"sub": "bob"}), "news.c").await;

    let js = service(&servers[2].url()).await;
    let mut accepted: Vec<u64> = Vec::new();
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i: u64 = 1;
    while accepted.len() < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster stopped accepting"
        );
        match publish_nats(&js, "news.c", json!(i), &[]).await {
            Ok(_) => accepted.push(i),
            Err(_) => {
                // While JetStream elects new leaders; not accepted, so not owed.
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        i += 1;
        if accepted.len() == 100 && servers[0].is_running() {
            // Node a's own server dies mid-stream.
            servers[0].kill();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!servers[0].is_running());
    eprintln!(
        "accepted {} events, {refused} refused during the failover",
        accepted.len()
    );
    let want: HashSet<u64> = accepted.iter().copied().collect();
    for (name, ws) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut got = HashSet::new();
        let mut last = 0;
        while !want.is_subset(&got) {
            // JetStream may take several seconds to elect new stream leaders:
            // late is allowed, lost is not.
            let Some(e) = ws.next_event_within(Duration::from_secs(45)).await else {
                let mut missing: Vec<u64> = want.difference(&got).copied().collect();
                missing.sort_unstable();
                panic!(
                    "{name}: {} of {} accepted events missing: {missing:?}; a recovered {}, errors {}; b delivery errors {}",
                    missing.len(),
                    want.len(),
                    bus(&a).recovered.load(Ordering::Relaxed),
                    bus(&a).recovery_errors.load(Ordering::Relaxed),
                    bus(&b).delivery_errors.load(Ordering::Relaxed),
                );
            };
            // Raw publishes are relayed (new ids): events are told apart
            // by their payload, which counts up in publish order.
            let n = e["data"].as_u64().expect("n");
            if !want.contains(&n) {
                // Refused by a failing server, yet stored: it may arrive.
                continue;
            }
            assert!(got.insert(n), "{name}: event {n} twice");
            assert!(
                n > last || last == 0,
                "{name}: {n} ({}) after {last}; relay errors a {} b {}; fenced a {} b {}",
                e["id"],
                bus(&a).relay_errors.load(Ordering::Relaxed),
                bus(&b).relay_errors.load(Ordering::Relaxed),
                bus(&a).fenced.load(Ordering::Relaxed),
                bus(&b).fenced.load(Ordering::Relaxed),
            );
            last = n;
        }
    }
    assert!(bus(&a).disconnects.load(Ordering::Relaxed) >= 1);
    eprintln!(
        "a caught up on {} deliveries after reconnecting",
        bus(&a).recovered.load(Ordering::Relaxed)
    );
}
