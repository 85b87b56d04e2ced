//! Replay on reconnect, on SQLite and on PostgreSQL: SSE `Last-Event-ID`
//! and WS `since` get exactly what was missed, in order, then live events
//! without a gap or a duplicate at the seam; a gap past retention or from
//! another epoch is reported instead of papered over.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nats::NatsServer;
use support::*;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn store_section(backend: Backend) -> String {
    match backend {
        // TestGateway gives each gateway its own SQLite file by default.
        Backend::Sqlite => String::new(),
        Backend::Postgres => format!("url = {:?}\n", fresh_postgres().await),
    }
}

async fn gateway(backend: Backend, store_extra: &str) -> TestGateway {
    let store = store_section(backend).await;
    TestGateway::start(config(&format!("[store]\n{store}{store_extra}"))).await
}

async fn publish_n(gw: &TestGateway, topic: &str, from: u64, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let (status, body) = gw.publish(json!({"topic": topic, "data": {"n": i}})).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    ids
}

fn n_of(data: &str) -> u64 {
    let v: Value = serde_json::from_str(data).expect("json");
    v["n"].as_u64().expect("n")
}

async fn sse_reconnect_replays_exactly_the_missed_events(backend: Backend) {
    let gw = gateway(backend, "").await;
    let t = token(json!({"sub": "ann"}));
    let mut sse = gw.sse("topic=news.h", Some(&t)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    publish_n(&gw, "news.h", 0, 5).await;
    let mut last = String::new();
    for i in 0..5 {
        let e = sse.next_event().await;
        assert_eq!(n_of(&e.data), i);
        last = e.id.expect("id");
    }
    drop(sse);

    let missed = publish_n(&gw, "news.h", 5, 100).await;
    // Reconnect with the browser's header while events keep coming.
    let mut sse = gw
        .sse_with_header("topic=news.h", Some(&t), ("last-event-id", last.as_str()))
        .await;
    let live = {
        let http = reqwest::Client::new();
        let url = gw.url("/v1/publish");
        tokio::spawn(async move {
            for i in 105..125u64 {
                let resp = http
                    .post(&url)
                    .bearer_auth(SERVICE_KEY)
                    .json(&json!({"topic": "news.h", "data": {"n": i}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), 200);
            }
        })
    };
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    for (i, id) in (5..125u64).zip(missed.iter().map(Some).chain(std::iter::repeat(None))) {
        let e = sse.next_event().await;
        assert_eq!(e.event.as_deref(), Some("message"), "{backend:?}: {e:?}");
        assert_eq!(
            n_of(&e.data),
            i,
            "{backend:?}: in order, no gap, no duplicate"
        );
        if let Some(id) = id {
            assert_eq!(e.id.as_deref(), Some(id.as_str()));
        }
    }
    live.await.expect("live publisher");
    // Everything published is in history, and the store reported no error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = gw.get_text("/metrics").await;
        if text.contains("switchyard_history_written_total 125") {
            assert!(text.contains("switchyard_store_errors_total 0"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ws_since_replays_then_goes_live(backend: Backend) {
    let gw = gateway(backend, "").await;
    let t = token(json!({"sub": "bo"}));
    let mut ws = gw.ws(&t).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.w"}))
        .await;
    assert_eq!(ack, json!({"op": "ack", "id": 1}));
    let first = publish_n(&gw, "news.w", 0, 3).await;
    for _ in 0..3 {
        ws.next_event().await;
    }
    drop(ws);
    publish_n(&gw, "news.w", 3, 40).await;

    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op": "subscribe", "id": 2, "topic": "news.w", "since": first[2]}))
        .await;
    let ack = ws.next_json().await;
    assert_eq!(
        ack,
        json!({"op": "ack", "id": 2, "recovered": true}),
        "{backend:?}"
    );
    publish_n(&gw, "news.w", 43, 5).await;
    for i in 3..48u64 {
        let e = ws.next_event().await;
        assert_eq!(e["data"]["n"], i, "{backend:?}");
    }
}

async fn a_gap_past_retention_or_epoch_is_reported(backend: Backend) {
    let gw = gateway(backend, "history_retention = 10\n").await;
    let t = token(json!({"sub": "cy"}));
    let ids = publish_n(&gw, "news.g", 0, 3).await;
    publish_n(&gw, "news.g", 3, 50).await;
    // Retention runs every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut sse = gw
        .sse_with_header("topic=news.g", Some(&t), ("last-event-id", ids[0].as_str()))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let reset = sse.next_event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{backend:?}");
    let data: Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(data["last_event_id"], ids[0].as_str());
    // Live events follow the reset.
    publish_n(&gw, "news.g", 53, 1).await;
    assert_eq!(n_of(&sse.next_event().await.data), 53);

    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op": "subscribe", "id": 1, "topic": "news.g", "since": ids[0]}))
        .await;
    assert_eq!(
        ws.next_json().await,
        json!({"op": "ack", "id": 1, "recovered": false})
    );
    // A cursor from another epoch, and junk, are resets too.
    ws.send(json!({"op": "subscribe", "id": 2, "topic": "news.g2", "since": "1-5"}))
        .await;
    assert_eq!(ws.next_json().await["recovered"], false);
    ws.send(json!({"op": "subscribe", "id": 3, "topic": "news.g3", "since": "junk"}))
        .await;
    assert_eq!(ws.next_json().await["recovered"], false);
    // Within retention it still recovers.
    let recent = publish_n(&gw, "news.g", 54, 2).await;
    publish_n(&gw, "news.g", 56, 1).await;
    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op": "subscribe", "id": 4, "topic": "news.g", "since": recent[1]}))
        .await;
    assert_eq!(ws.next_json().await["recovered"], true);
    assert_eq!(ws.next_event().await["data"]["n"], 56);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_on_sqlite() {
    sse_reconnect_replays_exactly_the_missed_events(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_on_postgres() {
    sse_reconnect_replays_exactly_the_missed_events(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_since_on_sqlite() {
    ws_since_replays_then_goes_live(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_since_on_postgres() {
    ws_since_replays_then_goes_live(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_reported_on_sqlite() {
    a_gap_past_retention_or_epoch_is_reported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_reported_on_postgres() {
    a_gap_past_retention_or_epoch_is_reported(Backend::Postgres).await;
}

async fn stomp_since_replays_or_reports_a_reset(backend: Backend) {
    // news.short.> keeps only 5 events; other topics the default 1000.
    let gw = gateway(
        backend,
        "[[store.retention]]\ntopics = \"news.short.>\"\nmax_events = 5\n",
    )
    .await;
    let t = token(json!({"sub": "lu"}));
    let ids = publish_n(&gw, "news.s", 0, 30).await;
    let short = publish_n(&gw, "news.short.a", 0, 30).await;
    // Retention runs every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut stomp = gw.stomp(&t).await;
    stomp
        .send(&format!(
            "SUBSCRIBE\nid:s1\ndestination:/topic/news.s\nsince:{}\nreceipt:r1\n\n",
            ids[9]
        ))
        .await;
    let receipt = stomp.next_frame().await;
    assert_eq!(receipt.command, "RECEIPT", "{receipt:?}");
    assert_eq!(receipt.header("recovered"), Some("true"), "{backend:?}");
    for i in 10..30u64 {
        let m = stomp.next_frame().await;
        assert_eq!(m.header("subscription"), Some("s1"));
        assert_eq!(n_of(&m.body), i, "{backend:?}");
    }
    publish_n(&gw, "news.s", 30, 1).await;
    assert_eq!(n_of(&stomp.next_frame().await.body), 30);

    // Past the per-pattern retention: a reset, then live events.
    stomp
        .send(&format!(
            "SUBSCRIBE\nid:s2\ndestination:/topic/news.short.a\nsince:{}\nreceipt:r2\n\n",
            short[3]
        ))
        .await;
    let receipt = stomp.next_frame().await;
    assert_eq!(receipt.header("recovered"), Some("false"), "{backend:?}");
    let reset = stomp.next_frame().await;
    assert_eq!(reset.command, "MESSAGE");
    assert_eq!(reset.header("event"), Some("reset"), "{reset:?}");
    assert_eq!(reset.header("subscription"), Some("s2"));
    publish_n(&gw, "news.short.a", 30, 1).await;
    assert_eq!(n_of(&stomp.next_frame().await.body), 30);
    // Within the short retention it recovers.
    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op": "subscribe", "id": 1, "topic": "news.short.a", "since": short[26]}))
        .await;
    assert_eq!(ws.next_json().await["recovered"], true, "{backend:?}");
    for i in 27..31u64 {
        assert_eq!(ws.next_event().await["data"]["n"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_since_on_sqlite() {
    stomp_since_replays_or_reports_a_reset(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_since_on_postgres() {
    stomp_since_replays_or_reports_a_reset(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_reconnecting_to_another_node_misses_nothing() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let a = TestGateway::start(cluster_node("a", nats.url(), &db)).await;
    let b = TestGateway::start(cluster_node("b", nats.url(), &db)).await;
    let t = token(json!({"sub": "dee"}));
    let mut sse = a.sse("topic=news.x", Some(&t)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    publish_n(&a, "news.x", 0, 3).await;
    let mut last = String::new();
    for _ in 0..3 {
        last = sse.next_event().await.id.expect("id");
    }
    drop(sse);
    publish_n(&b, "news.x", 3, 100).await;
    let mut sse = b
        .sse_with_header("topic=news.x", Some(&t), ("last-event-id", last.as_str()))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    publish_n(&a, "news.x", 103, 10).await;
    for i in 3..113u64 {
        assert_eq!(n_of(&sse.next_event().await.data), i);
    }
}

/// A cursor past every id handed out (forged, or from a stream that was
/// recreated) is a reset: answered as recovered, every live event below it
/// would be dropped as already seen.
async fn a_cursor_ahead_of_every_id_is_a_reset(gw: &TestGateway) {
    let t = token(json!({"sub": "ann"}));
    let ids = publish_n(gw, "news.ahead", 0, 2).await;
    let (epoch, seq) = ids[1].rsplit_once('-').expect("an id");
    let ahead = format!("{epoch}-{}", seq.parse::<u64>().expect("seq") + 1_000_000);
    let mut ws = gw.ws(&t).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.ahead", "since": ahead}))
        .await;
    assert_eq!(ack, json!({"op": "ack", "id": 1, "recovered": false}));
    let mut sse = gw
        .sse_with_header("topic=news.ahead", Some(&t), ("last-event-id", &ahead))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let reset = sse.next_event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    // Live events are delivered, not dropped as seen.
    publish_n(gw, "news.ahead", 2, 1).await;
    assert_eq!(ws.next_event().await["data"]["n"], 2);
    assert_eq!(n_of(&sse.next_event().await.data), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_ahead_of_every_id_is_a_reset_on_the_local_bus() {
    a_cursor_ahead_of_every_id_is_a_reset(&gateway(Backend::Sqlite, "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_ahead_of_every_id_is_a_reset_on_nats() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let gw = TestGateway::start(cluster_node("a", nats.url(), &db)).await;
    a_cursor_ahead_of_every_id_is_a_reset(&gw).await;
}

/// A replay the store cannot serve now is no reset: the client is told to
/// come back with the same cursor. switchyard.v1 gets an `unavailable`
/// error and close 1013, STOMP an ERROR saying so and close 1013, SSE a
/// `retry:` and the end of its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_store_cannot_serve_now_says_try_again_on_every_protocol() {
    let proxy = support::link::LinkProxy::start("127.0.0.1:5432").await;
    let db = fresh_postgres()
        .await
        .replace("127.0.0.1:5432", &proxy.addr());
    let gw = TestGateway::start(config(&format!("[store]\nurl = {db:?}\n"))).await;
    let ids = publish_n(&gw, "news.gone", 0, 2).await;
    // Every store connection closed, and no new one let in.
    drop(proxy);
    let tok = token(json!({"sub": "u"}));

    let mut ws = gw.ws(&tok).await;
    let answer = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.gone", "since": ids[0]}))
        .await;
    assert_eq!(
        (&answer["op"], &answer["code"]),
        (&json!("error"), &json!("unavailable")),
        "{answer}"
    );
    assert_eq!(ws.closed().await.0, 1013);

    let mut stomp = gw.stomp(&tok).await;
    stomp
        .send(&format!(
            "SUBSCRIBE\nid:1\ndestination:/topic/news.gone\nsince:{}\n\n",
            ids[0]
        ))
        .await;
    let f = stomp.next_frame().await;
    assert_eq!(f.command, "ERROR", "{f:?}");
    assert!(
        f.header("message")
            .is_some_and(|m| m.contains("the same since")),
        "{f:?}"
    );
    assert_eq!(stomp.closed().await, 1013);

    let mut sse = gw
        .sse_with_header("topic=news.gone", Some(&tok), ("last-event-id", &ids[0]))
        .await;
    let hello = sse.next_block().await;
    assert_eq!(hello.event.as_deref(), Some("connected"), "{hello:?}");
    let bye = sse.next_block().await;
    assert!(bye.retry.is_some(), "{bye:?}");
    assert!(sse.ended().await, "the stream ends after the retry hint");
}
