//! The offline inbox and the connection registry, on SQLite and on
//! PostgreSQL: direct messages to a user with no live session wait in the
//! store and reach their next session (WS, SSE or STOMP) once; sessions
//! are listed with node, protocol and user, and leave the registry with
//! their connection.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nats::NatsServer;
use support::*;
use switchyard_host::bus::LANES;
use switchyard_host::pipeline::router::lane_of;
use switchyard_host::routing::EventId;
use switchyard_host::routing::partition::{DEFAULT_PARTITIONS, partition_of_str};
use switchyard_host::store::inbox::InboxCursor;
use switchyard_host::store::retention::inbox_stream;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn gateway(backend: Backend) -> TestGateway {
    let store = match backend {
        Backend::Sqlite => String::new(),
        Backend::Postgres => format!("url = {:?}\n", fresh_postgres().await),
    };
    TestGateway::start(config(&format!("[store]\n{store}"))).await
}

/// A direct message from a service to `user` (the chat router sends
/// `dm.<user>` to that user only).
async fn dm(gw: &TestGateway, user: &str, n: u64) -> String {
    let (status, body) = gw
        .publish(json!({"topic": format!("dm.{user}"), "data": {"n": n}}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn n_of(data: &str) -> u64 {
    serde_json::from_str::<Value>(data).expect("json")["n"]
        .as_u64()
        .expect("n")
}

/// Waits until no session of `user` is left: an event published before
/// the server has seen the client leave is delivered to the closing session.
async fn gone(gw: &TestGateway, user: &str) {
    let what = format!("{user} has no session left");
    eventually(&what, Duration::from_secs(10), async || {
        !gw.gateway.hub.has_user(user)
    })
    .await;
}

/// `user`'s inbox cursors as the store has them.
async fn cursor_of(gw: &TestGateway, user: &str) -> InboxCursor {
    gw.gateway
        .store
        .inbox_cursors(gw.gateway.bus.epoch(), vec![user.to_owned()])
        .await
        .expect("cursors")
        .remove(user)
        .unwrap_or_default()
}

/// Waits until the store holds nothing of `user`'s inbox not shown.
async fn shown_everything(gw: &TestGateway, user: &str) {
    let what = format!("{user}'s inbox shown");
    eventually(&what, Duration::from_secs(10), async || {
        let cursor = cursor_of(gw, user).await;
        let epoch = gw.gateway.bus.epoch();
        let left = gw.gateway.store.undelivered(epoch, user, &cursor).await;
        left.expect("inbox").is_empty()
    })
    .await;
}

async fn offline_messages_arrive_on_the_next_connect_once(backend: Backend) {
    let gw = gateway(backend).await;
    let eve = token(json!({"sub": "eve"}));
    // Eve is offline: five messages wait; one for frank must not reach her.
    for n in 0..5 {
        dm(&gw, "eve", n).await;
    }
    dm(&gw, "frank", 100).await;

    // A JSON WebSocket gets them right after the welcome, then live ones.
    let mut ws = gw.ws(&eve).await;
    for n in 0..5 {
        assert_eq!(ws.next_event().await["data"]["n"], n, "{backend:?}");
    }
    dm(&gw, "eve", 5).await;
    assert_eq!(ws.next_event().await["data"]["n"], 5);
    drop(ws);
    gone(&gw, "eve").await;

    // Delivered once: the next session starts with nothing old.
    let mut ws = gw.ws(&eve).await;
    assert!(
        ws.next_event_within(Duration::from_millis(500))
            .await
            .is_none(),
        "{backend:?}: nothing is delivered twice"
    );
    dm(&gw, "eve", 6).await;
    assert_eq!(ws.next_event().await["data"]["n"], 6);
    drop(ws);
    gone(&gw, "eve").await;

    // SSE (no Last-Event-ID): the inbox, then live.
    for n in 7..10 {
        dm(&gw, "eve", n).await;
    }
    let mut sse = gw.sse("topic=news.quiet", Some(&eve)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    for n in 7..10 {
        assert_eq!(n_of(&sse.next_event().await.data), n, "{backend:?}");
    }
    dm(&gw, "eve", 10).await;
    assert_eq!(n_of(&sse.next_event().await.data), 10);
    drop(sse);
    gone(&gw, "eve").await;

    // STOMP: on the first /user/queue subscription.
    dm(&gw, "eve", 11).await;
    let mut stomp = gw.stomp(&eve).await;
    stomp
        .send("SUBSCRIBE\nid:q\ndestination:/user/queue/dm\nreceipt:r1\n\n")
        .await;
    assert_eq!(stomp.next_frame().await.command, "RECEIPT");
    let m = stomp.next_frame().await;
    assert_eq!(
        (m.command.as_str(), n_of(&m.body)),
        ("MESSAGE", 11),
        "{m:?}"
    );
    assert_eq!(m.header("subscription"), Some("q"));
    dm(&gw, "eve", 12).await;
    assert_eq!(n_of(&stomp.next_frame().await.body), 12);

    // Frank gets his own message only.
    let mut ws = gw.ws(&token(json!({"sub": "frank"}))).await;
    assert_eq!(ws.next_event().await["data"]["n"], 100);
    assert!(
        ws.next_event_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(
        gw.metric("switchyard_inbox_delivered_total").await,
        5 + 3 + 1 + 1,
        "{backend:?}"
    );
}

async fn last_event_id_replays_topics_and_inbox_merged(backend: Backend) {
    let gw = gateway(backend).await;
    let gus = token(json!({"sub": "gus"}));
    let mut sse = gw.sse("topic=news.m", Some(&gus)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let (status, _) = gw
        .publish(json!({"topic": "news.m", "data": {"n": 0}}))
        .await;
    assert_eq!(status, 200);
    let last = sse.next_event().await.id.expect("id");
    drop(sse);
    // Interleaved: topic events and direct messages while gus is away.
    for n in 1..21u64 {
        if n % 3 == 0 {
            dm(&gw, "gus", n).await;
        } else {
            let (status, _) = gw
                .publish(json!({"topic": "news.m", "data": {"n": n}}))
                .await;
            assert_eq!(status, 200);
        }
    }
    let mut sse = gw
        .sse_with_header("topic=news.m", Some(&gus), ("last-event-id", last.as_str()))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    for n in 1..21u64 {
        let e = sse.next_event().await;
        assert_eq!(n_of(&e.data), n, "{backend:?}: merged in order: {e:?}");
    }
    dm(&gw, "gus", 21).await;
    assert_eq!(n_of(&sse.next_event().await.data), 21);
    drop(sse);
    gone(&gw, "gus").await;
    // The replayed messages count as delivered.
    let mut ws = gw.ws(&gus).await;
    assert!(
        ws.next_event_within(Duration::from_millis(500))
            .await
            .is_none(),
        "{backend:?}"
    );
}

/// A user whose `lag.<user>` and `dm.<user>` topics are routed by
/// different lanes of the local bus (so one can lag behind the other).
fn user_on_two_lanes() -> String {
    let lane = |t: &str| lane_of(partition_of_str(t, DEFAULT_PARTITIONS), LANES);
    (0..100)
        .map(|i| format!("lu{i}"))
        .find(|u| lane(&format!("lag.{u}")) != lane(&format!("dm.{u}")))
        .expect("some user's two topics fall in different lanes")
}

/// Waits until `user`'s inbox holds the event `id` of `topic`.
async fn in_inbox(gw: &TestGateway, user: &str, topic: &str, id: EventId) {
    let part = partition_of_str(topic, DEFAULT_PARTITIONS);
    let stream = inbox_stream(user);
    let what = format!("{id} in {user}'s inbox");
    eventually(&what, Duration::from_secs(10), async || {
        let heads = gw
            .gateway
            .store
            .stream_heads(id.epoch, vec![stream.clone()]);
        heads
            .await
            .expect("heads")
            .values()
            .flatten()
            .any(|h| h.part == Some(part) && h.seq >= id.seq)
    })
    .await;
}

/// How the user comes back.
#[derive(Clone, Copy, Debug)]
enum Return {
    /// A WebSocket session: what waits in the inbox.
    Connect,
    /// SSE with `Last-Event-ID` (the newest event the client was shown):
    /// the replay after it, and what waits below it.
    LastEventId,
}

/// An inbox fed by two partitions, one lagging: events the lagging one
/// routes after the other's newer ones were shown live still wait for
/// the user's next connect (a single "shown up to" id would hide them),
/// and for a replay from the client's own cursor, the newer id.
async fn a_lagging_partition_hides_nothing_in_the_inbox(backend: Backend, back: Return) {
    let store = match backend {
        Backend::Sqlite => String::new(),
        Backend::Postgres => format!("url = {:?}\n", fresh_postgres().await),
    };
    let hostile = switchyard_fixtures::hostile();
    let gw = TestGateway::start(config(&format!(
        "[store]\n{store}\n[[plugins]]\nname = \"lagging\"\npath = {:?}\ntopics = [\"lag.*\"]\n\
         timeout_ms = 5000\n[plugins.config]\nlag_route_ms = 400\n",
        hostile.display().to_string()
    )))
    .await;
    let user = user_on_two_lanes();
    let lagging = format!("lag.{user}");
    let who = token(json!({"sub": user}));
    let mut ws = gw.ws(&who).await;
    // Five events into the lagging partition (each routed 400 ms after the
    // one before), then a direct message routed at once, with a higher id.
    // Each is answered once routed and stored, so they are not waited for.
    let mut answers = Vec::new();
    for n in 0..5u64 {
        answers.push(
            gw.publish_unanswered(json!({"topic": lagging, "data": {"n": n}}))
                .await,
        );
    }
    let dm_id = EventId::parse(&dm(&gw, &user, 100).await).expect("id");
    while ws.next_event().await["data"]["n"] != 100 {}
    drop(ws);
    gone(&gw, &user).await;
    let mut ids = Vec::new();
    for a in answers {
        let (status, body) = a.await.expect("answer");
        assert_eq!(status, 200, "{body}");
        ids.push(EventId::parse(body["id"].as_str().expect("id")).expect("id"));
    }
    // The rest is routed while the user is away: into the inbox only.
    in_inbox(&gw, &user, &lagging, ids[4]).await;
    // What the user was shown of the lagging partition (live, up to the
    // moment the server saw them leave): the rest waits, below the id of
    // the direct message they were shown.
    let shown = cursor_of(&gw, &user)
        .await
        .shown(Some(partition_of_str(&lagging, DEFAULT_PARTITIONS)));
    let expected: Vec<u64> = (0..5u64).filter(|n| ids[*n as usize].seq > shown).collect();
    assert!(
        !expected.is_empty() && ids[expected[0] as usize] < dm_id,
        "{backend:?}: the lagging partition had caught up when the user left"
    );
    // Next connect: exactly those, in order, then live events.
    let mut got = Vec::new();
    match back {
        Return::Connect => {
            let mut ws = gw.ws(&who).await;
            for _ in &expected {
                got.push(ws.next_event().await["data"]["n"].as_u64().expect("n"));
            }
            dm(&gw, &user, 101).await;
            got.push(ws.next_event().await["data"]["n"].as_u64().expect("n"));
        }
        Return::LastEventId => {
            let last = dm_id.to_string();
            let mut sse = gw
                .sse_with_header(
                    "topic=news.quiet",
                    Some(&who),
                    ("last-event-id", last.as_str()),
                )
                .await;
            assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
            for _ in &expected {
                got.push(n_of(&sse.next_event().await.data));
            }
            dm(&gw, &user, 101).await;
            got.push(n_of(&sse.next_event().await.data));
        }
    }
    let mut want = expected;
    want.push(101);
    assert_eq!(
        got, want,
        "{backend:?} {back:?}: nothing shown before comes again"
    );
}

async fn the_registry_lists_live_sessions(backend: Backend) {
    let gw = gateway(backend).await;
    let ws = gw.ws(&token(json!({"sub": "hal"}))).await;
    let mut sse = gw
        .sse("topic=news.r", Some(&token(json!({"sub": "ida"}))))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let _stomp = gw.stomp(&token(json!({"sub": "jo"}))).await;
    let registry = |query: &'static str| {
        let gw = &gw;
        async move {
            gw.get_as(&format!("/admin/registry{query}"), Some(ADMIN_TOKEN))
                .await
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (status, body) = registry("").await;
        assert_eq!(status, 200, "{body}");
        if body["sessions"].as_array().is_some_and(|s| s.len() == 3) {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seen: Vec<(String, String)> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            assert_eq!(s["node"], "test", "{s}");
            assert!(
                s["session"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("test-"))
            );
            assert!(s["connected_ms"].as_u64() <= s["heartbeat_ms"].as_u64());
            (
                s["user"].as_str().unwrap_or_default().to_owned(),
                s["protocol"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("hal", "json"), ("ida", "sse"), ("jo", "stomp")]
            .map(|(u, p)| (u.to_owned(), p.to_owned())),
        "{backend:?}"
    );
    assert_eq!(listed["nodes"], json!({"test": 3}));
    let (_, one) = registry("?user=ida").await;
    assert_eq!(one["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["sessions"][0]["protocol"], "sse");

    // A closed session leaves the registry.
    drop(ws);
    loop {
        let (_, body) = registry("?user=hal").await;
        if body["sessions"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = gw.get_as("/admin/registry", None).await;
    assert_eq!(status, 401, "the admin token is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_inbox_on_sqlite() {
    offline_messages_arrive_on_the_next_connect_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_inbox_on_postgres() {
    offline_messages_arrive_on_the_next_connect_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_replay_on_sqlite() {
    last_event_id_replays_topics_and_inbox_merged(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_replay_on_postgres() {
    last_event_id_replays_topics_and_inbox_merged(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_on_sqlite() {
    a_lagging_partition_hides_nothing_in_the_inbox(Backend::Sqlite, Return::Connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_on_postgres() {
    a_lagging_partition_hides_nothing_in_the_inbox(Backend::Postgres, Return::Connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_below_last_event_id_on_sqlite() {
    a_lagging_partition_hides_nothing_in_the_inbox(Backend::Sqlite, Return::LastEventId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_below_last_event_id_on_postgres() {
    a_lagging_partition_hides_nothing_in_the_inbox(Backend::Postgres, Return::LastEventId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_sqlite() {
    the_registry_lists_live_sessions(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_postgres() {
    the_registry_lists_live_sessions(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_through_one_node_wait_for_a_user_who_connects_to_another() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let a = TestGateway::start(cluster_node("a", nats.url(), &db)).await;
    let b = TestGateway::start(cluster_node("b", nats.url(), &db)).await;
    let kim = token(json!({"sub": "kim"}));
    for n in 0..10 {
        dm(&a, "kim", n).await;
    }
    let mut ws = b.ws(&kim).await;
    for n in 0..10 {
        assert_eq!(ws.next_event().await["data"]["n"], n);
    }
    let last = dm(&a, "kim", 10).await;
    assert_eq!(ws.next_event().await["data"]["n"], 10);
    drop(ws);
    // Deliveries go out before history is written, and node b's writer
    // marks the cursor: node a cannot wait for either, so the test waits
    // until the store holds the message and says nothing is left.
    in_inbox(&a, "kim", "dm.kim", EventId::parse(&last).expect("id")).await;
    shown_everything(&a, "kim").await;
    let mut ws = a.ws(&kim).await;
    assert!(
        ws.next_event_within(Duration::from_millis(500))
            .await
            .is_none(),
        "delivered once, whichever node"
    );
}
