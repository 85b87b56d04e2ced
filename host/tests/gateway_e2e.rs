//! The gateway end to end: real sockets, the example plugins in the path.

mod support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_sse_clients_receive_an_http_publish_redacted_per_role() {
    let gw = TestGateway::start(config("")).await;
    let support_agent = token(json!({"sub": "alice", "rooms": ["1"], "roles": ["support"]}));
    let member = token(json!({"sub": "bob", "rooms": ["1"]}));

    let mut ws = gw.ws(&support_agent).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "chat.room.1"}))
        .await;
    assert_eq!(ack, json!({"op": "ack", "id": 1}));
    let mut sse = gw.sse("topic=chat.room.1", Some(&member)).await;
    let hello = sse.next_block().await;
    assert_eq!(hello.retry.as_deref(), Some("2000"));
    assert_eq!(hello.event.as_deref(), Some("connected"));
    let hello: Value = serde_json::from_str(&hello.data).expect("json");
    assert!(
        hello["session"]
            .as_str()
            .is_some_and(|s| s.starts_with("test-"))
    );

    let (status, body) = gw
        .publish(json!({"topic": "chat.room.1", "data": {"text": "hi", "email": "ann@x.io"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();

    let e = ws.next_event().await;
    assert_eq!(e["topic"], "chat.room.1");
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["event"], "message");
    assert_eq!(
        e["data"],
        json!({"text": "hi", "email": "ann@x.io"}),
        "support sees the email"
    );

    let e = sse.next_event().await;
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(e.event.as_deref(), Some("message"));
    let data: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(
        data,
        json!({"text": "hi", "email": "***"}),
        "a member without the role does not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_every_tab_of_its_recipient_and_the_sender_only() {
    let gw = TestGateway::start(config("")).await;
    let alice = token(json!({"sub": "alice", "rooms": ["1"]}));
    let (mut tab1, mut tab2) = (gw.ws(&alice).await, gw.ws(&alice).await);
    let mut carol = gw.ws(&token(json!({"sub": "carol"}))).await;
    let mut bob = gw.ws(&token(json!({"sub": "bob", "rooms": ["1"]}))).await;
    bob.request(json!({"op": "subscribe", "id": 1, "topic": "chat.room.1"}))
        .await;

    let ack = carol
        .request(json!({"op": "publish", "id": 7, "topic": "dm.alice", "data": {"text": "psst"}}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    for ws in [&mut tab1, &mut tab2, &mut carol] {
        let e = ws.next_event().await;
        assert_eq!(
            (e["topic"].as_str(), e["data"]["text"].as_str()),
            (Some("dm.alice"), Some("psst"))
        );
    }
    // Bob's next event is a later room message, not the DM.
    gw.publish(json!({"topic": "chat.room.1", "data": {"text": "room"}}))
        .await;
    let e = bob.next_event().await;
    assert_eq!(e["data"]["text"], "room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_refuses_foreign_rooms_and_admin_topics_with_error_frames() {
    let gw = TestGateway::start(config("")).await;
    let mut ws = gw.ws(&token(json!({"sub": "bob", "rooms": ["1"]}))).await;
    let e = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "chat.room.2"}))
        .await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("rooms")),
        "{e}"
    );
    let e = ws
        .request(json!({"op": "publish", "id": 2, "topic": "admin.users", "data": {}}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let ok = ws
        .request(json!({"op": "subscribe", "id": 3, "topic": "chat.room.1"}))
        .await;
    assert_eq!(ok["op"], "ack");

    let mut admin = gw.ws(&token(json!({"sub": "root", "role": "admin"}))).await;
    let ok = admin
        .request(json!({"op": "publish", "id": 1, "topic": "admin.users", "data": {}}))
        .await;
    assert_eq!(ok["op"], "ack", "{ok}");
    // SSE refuses the whole stream when a topic is refused.
    let member = token(json!({"sub": "bob", "rooms": ["1"]}));
    assert_eq!(
        gw.sse_status("topic=chat.room.1&topic=chat.room.9", Some(&member))
            .await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_typed_errors_and_the_session_survives() {
    let gw = TestGateway::start(config("")).await;
    let mut ws = gw.ws(&token(json!({"sub": "bob", "rooms": ["1"]}))).await;
    ws.send_text("{not json").await;
    assert_eq!(ws.next_json().await["code"], "bad_frame");
    ws.send(json!({"op": "dance", "id": 4})).await;
    let e = ws.next_json().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("unknown_op"), Some(4))
    );
    let e = ws
        .request(json!({"op": "subscribe", "id": 5, "topic": "chat..x"}))
        .await;
    assert_eq!(e["code"], "invalid_topic");
    let e = ws
        .request(json!({"op": "unsubscribe", "id": 6, "topic": "news.x"}))
        .await;
    assert_eq!(e["code"], "not_subscribed");
    let ok = ws
        .request(json!({"op": "subscribe", "id": 7, "topic": "news.x"}))
        .await;
    assert_eq!(ok["op"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_subscriptions_and_publish_rate_answer_with_errors() {
    let gw = TestGateway::start(config("[limits]\nmax_subscriptions = 2\npublish_rate = 3")).await;
    let mut ws = gw.ws(&token(json!({"sub": "u"}))).await;
    for i in 0..2 {
        let ok = ws
            .request(json!({"op": "subscribe", "id": i, "topic": format!("news.{i}")}))
            .await;
        assert_eq!(ok["op"], "ack");
    }
    let e = ws
        .request(json!({"op": "subscribe", "id": 9, "topic": "news.9"}))
        .await;
    assert_eq!(e["code"], "too_many_subscriptions");
    // publish_rate = 3: the first three pass at once; more within the same
    // moment are refused until the bucket refills (a token per 333 ms).
    let mut codes = Vec::new();
    for i in 10..16 {
        let r = ws
            .request(json!({"op": "publish", "id": i, "topic": "news.0", "data": i}))
            .await;
        codes.push(r["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes[..3], ["ok", "ok", "ok"], "{codes:?}");
    assert!(codes[3..].iter().any(|c| c == "rate_limited"), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_the_door_are_clear() {
    let gw = TestGateway::start(config("")).await;
    let good = token(json!({"sub": "u"}));
    let (status, body) = gw
        .ws_refused(
            "/v1/ws",
            &[
                ("authorization", format!("Bearer {good}")),
                ("origin", "http://evil.example".into()),
            ],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let expired = token(json!({"sub": "u", "exp": now() - 120}));
    let (status, body) = gw
        .ws_refused("/v1/ws", &[("authorization", format!("Bearer {expired}"))])
        .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{body}"
    );

    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none"})),
        b64(json!({"sub": "u", "exp": now() + 60}))
    );
    let (status, _) = gw
        .ws_refused("/v1/ws", &[("authorization", format!("Bearer {none}"))])
        .await;
    assert_eq!(status, 401);
    let (status, _) = gw.ws_refused("/v1/ws", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(gw.sse_status("topic=news.x", Some(&none)).await, 401);
    assert_eq!(gw.sse_status("topic=news.x", None).await, 401);
    assert_eq!(gw.sse_status("", Some(&good)).await, 400);
    let (status, body) = gw
        .post(
            "/v1/publish",
            Some("wrong-key"),
            json!({"topic": "a", "data": 1}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = gw
        .post(
            "/v1/publish",
            Some(SERVICE_KEY),
            json!({"topic": "a.*", "data": 1}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_invalid_utf8_close_with_their_codes() {
    let gw = TestGateway::start(config("[limits]\nmax_frame_bytes = 1024")).await;
    let t = token(json!({"sub": "u"}));
    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op": "publish", "id": 1, "topic": "news.x", "data": "x".repeat(4000)}))
        .await;
    assert_eq!(ws.closed().await.0, 1009);

    let mut ws = gw.ws(&t).await;
    ws.send_raw_text(&[0x7b, 0xff, 0xfe, 0x7d]).await;
    assert_eq!(ws.closed().await.0, 1007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closes_when_its_token_expires() {
    let gw = TestGateway::start(config("")).await;
    let mut ws = gw.ws(&token(json!({"sub": "u", "exp": now() + 2}))).await;
    let (code, reason) = ws.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_stream_once() {
    let gw = TestGateway::start(config("")).await;
    let t = token(json!({"sub": "u"}));
    let (status, body) = gw.post("/v1/tickets", Some(&t), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 30);
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    let mut sse = gw.sse(&format!("topic=news.a&ticket={ticket}"), None).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    assert_eq!(
        gw.sse_status(&format!("topic=news.a&ticket={ticket}"), None)
            .await,
        401
    );
    let (status, _) = gw.post("/v1/tickets", None, json!({})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_presence() {
    let gw = TestGateway::start(config("")).await;
    assert_eq!(gw.get("/healthz").await, (200, json!({"status": "ok"})));
    let (status, ready) = gw.get("/readyz").await;
    assert_eq!((status, ready["plugins"].as_u64()), (200, Some(3)));
    let mut ws = gw.ws(&token(json!({"sub": "bob", "rooms": ["1"]}))).await;
    ws.request(json!({"op": "subscribe", "id": 1, "topic": "chat.room.1"}))
        .await;
    let (_, p) = gw
        .get_as("/v1/presence/chat.room.1", Some(SERVICE_KEY))
        .await;
    assert_eq!(p, json!({"topic": "chat.room.1", "users": ["bob"]}));
    let member = token(json!({"sub": "carol", "rooms": ["1"]}));
    let (status, p) = gw.get_as("/v1/presence/chat.room.1", Some(&member)).await;
    assert_eq!((status, p["users"].clone()), (200, json!(["bob"])));
    // Presence is as private as the topic: strangers and anonymous callers are refused.
    let stranger = token(json!({"sub": "eve"}));
    assert_eq!(
        gw.get_as("/v1/presence/chat.room.1", Some(&stranger))
            .await
            .0,
        403
    );
    assert_eq!(gw.get("/v1/presence/chat.room.1").await.0, 401);
}

fn fast_heartbeats() -> switchyard_host::config::Config {
    let mut c = config("");
    c.server.heartbeat_s = 1;
    c.server.heartbeat_timeout_s = 1;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let gw = TestGateway::start(fast_heartbeats()).await;
    // A client that completes the handshake and then never reads, so never pongs.
    let ws = gw.ws(&token(json!({"sub": "u"}))).await;
    assert_eq!(gw.gateway.hub.len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.gateway.hub.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead peer was never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responsive_peer_survives_heartbeats() {
    let gw = TestGateway::start(fast_heartbeats()).await;
    let mut ws = gw.ws(&token(json!({"sub": "u"}))).await;
    // Reading answers pings (the client library pongs); after several
    // heartbeat periods the session still works.
    let reader = tokio::spawn(async move {
        let ack = ws
            .request(json!({"op": "subscribe", "id": 1, "topic": "news.x"}))
            .await;
        assert_eq!(ack["op"], "ack");
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(3500);
        while tokio::time::timeout_at(until, ws.stream.next())
            .await
            .is_ok()
        {}
        ws
    });
    let mut ws = reader.await.expect("reader");
    let ack = ws
        .request(json!({"op": "subscribe", "id": 2, "topic": "news.y"}))
        .await;
    assert_eq!(ack["op"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_limits_refuse_upgrades_with_503() {
    let gw = TestGateway::start(config("[limits]\nmax_sessions = 2")).await;
    let t = token(json!({"sub": "u"}));
    let _a = gw.ws(&t).await;
    let _b = gw.ws(&t).await;
    let (status, body) = gw
        .ws_refused("/v1/ws", &[("authorization", format!("Bearer {t}"))])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );

    let gw = TestGateway::start(config("[limits]\naccept_rate = 2")).await;
    let _a = gw.ws(&t).await;
    let _b = gw.ws(&t).await;
    let (status, body) = gw
        .ws_refused("/v1/ws", &[("authorization", format!("Bearer {t}"))])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("rate_limited")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_and_same_host_origins_may_upgrade() {
    let gw = TestGateway::start(config("")).await;
    let t = token(json!({"sub": "u"}));
    for origin in [
        "http://allowed.example".to_owned(),
        format!("http://{}", gw.addr),
    ] {
        let mut req = format!("ws://{}/v1/ws", gw.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        assert!(
            tokio_tungstenite::connect_async(req).await.is_ok(),
            "{origin} refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_sessions_events_and_plugin_calls() {
    let gw = TestGateway::start(config("")).await;
    let bob = token(json!({"sub": "bob", "rooms": ["1"]}));
    let mut ws = gw.ws(&bob).await;
    ws.request(json!({"op": "subscribe", "id": 1, "topic": "chat.room.1"}))
        .await;
    let mut sse = gw.sse("topic=chat.room.1", Some(&bob)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    for i in 0..3 {
        gw.publish(json!({"topic": "chat.room.1", "data": {"n": i}}))
            .await;
        ws.next_event().await;
        sse.next_event().await;
    }
    let text = reqwest::get(gw.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
    };
    assert_eq!(value("switchyard_sessions{protocol=\"json\"}"), 1.0);
    assert_eq!(value("switchyard_sessions{protocol=\"sse\"}"), 1.0);
    assert_eq!(value("switchyard_subscriptions"), 2.0);
    assert_eq!(value("switchyard_events_ingested_total"), 3.0);
    assert_eq!(
        value("switchyard_deliveries_total"),
        6.0,
        "three events to two sessions"
    );
    // acl: the probes of its two interfaces, the WS connect, the subscribe,
    // the SSE connect with its topic.
    assert_eq!(value("switchyard_plugin_calls_total{plugin=\"acl\"}"), 5.0);
    assert_eq!(value("switchyard_plugin_traps_total{plugin=\"acl\"}"), 0.0);
    assert_eq!(
        value("switchyard_plugin_call_seconds_count{plugin=\"acl\"}"),
        5.0
    );
    assert!(text.contains("# TYPE switchyard_plugin_call_seconds histogram"));
    // Per interface: the router was asked once per event (and by the probe).
    assert_eq!(
        value(
            "switchyard_plugin_interface_calls_total{plugin=\"chat-router\",interface=\"router\"}"
        ),
        4.0
    );
    assert_eq!(
        value("switchyard_plugin_interface_calls_total{plugin=\"acl\",interface=\"authorizer\"}"),
        4.0
    );
    assert_eq!(
        value(
            "switchyard_plugin_interface_call_seconds_count{plugin=\"acl\",interface=\"authorizer\"}"
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_authorizer_is_stopped_by_its_deadline_inside_the_gateway() {
    use switchyard_host::config::{OnError, PluginSpec};
    use switchyard_host::plugin::Interface;
    let mut c = config("");
    c.plugins.insert(
        0,
        PluginSpec {
            name: "hostile".into(),
            path: switchyard_fixtures::hostile(),
            topics: vec!["loop".into()],
            interfaces: vec![Interface::Authorizer],
            timeout_ms: 10,
            memory_mb: 16,
            on_error: OnError::Drop,
            max_instances: None,
            config: Default::default(),
        },
    );
    let gw = TestGateway::start(c).await;
    let mut ws = gw.ws(&token(json!({"sub": "u"}))).await;
    // The engine's ticker must outlive plugin loading, or this never returns.
    let e = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "loop"}))
        .await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("forbidden"), Some("authorization is unavailable"))
    );
    let ok = ws
        .request(json!({"op": "subscribe", "id": 2, "topic": "news.x"}))
        .await;
    assert_eq!(ok["op"], "ack");
    assert_eq!(gw.get("/readyz").await.0, 200);
}
