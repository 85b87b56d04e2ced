//! An SSE client's cursor over topics of several partitions: when one
//! partition lags behind another, the client is shown events out of id
//! order, and its `Last-Event-ID` must still bring back every event it
//! was not shown, and none it was. Embedded (SQLite) and on NATS
//! (PostgreSQL).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nats::{NatsServer, bus_section};
use support::*;
use switchyard_host::bus::LANES;
use switchyard_host::pipeline::router::lane_of;
use switchyard_host::routing::partition::{DEFAULT_PARTITIONS, partition_of_str};
use switchyard_host::routing::{Cursor, EventId};

/// Router lanes of the NATS bus.
const NATS_LANES: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Nats,
}

/// A plugin that routes `news.lag.*` 400 ms per event: that topic's
/// partition (and lane) falls behind.
fn lagging_plugin() -> String {
    format!(
        "[[plugins]]\nname = \"lagging\"\npath = {:?}\ntopics = [\"news.lag.*\"]\n\
         timeout_ms = 5000\n[plugins.config]\nlag_route_ms = 400\n",
        switchyard_fixtures::hostile().display().to_string()
    )
}

/// A lagging topic and a plain one in other partitions and lanes.
fn two_topics() -> (String, String) {
    let lanes = |t: &str| {
        let p = partition_of_str(t, DEFAULT_PARTITIONS);
        (lane_of(p, LANES), lane_of(p, NATS_LANES))
    };
    let lagging = "news.lag.a".to_owned();
    let (l4, l16) = lanes(&lagging);
    let plain = (0..200)
        .map(|i| format!("news.c{i}"))
        .find(|t| {
            let (a, b) = lanes(t);
            a != l4 && b != l16
        })
        .expect("a topic in other lanes");
    (lagging, plain)
}

fn n_of(data: &str) -> u64 {
    serde_json::from_str::<Value>(data).expect("json")["n"]
        .as_u64()
        .expect("n")
}

async fn publish(gw: &TestGateway, topic: &str, n: u64) -> EventId {
    let (status, body) = gw.publish(json!({"topic": topic, "data": {"n": n}})).await;
    assert_eq!(status, 200, "{body}");
    EventId::parse(body["id"].as_str().expect("id")).expect("id")
}

async fn a_lagging_partition_hides_nothing_from_last_event_id(backend: Backend) {
    let _nats;
    let extra = match backend {
        Backend::Embedded => lagging_plugin(),
        Backend::Nats => {
            let nats = NatsServer::single();
            let db = fresh_postgres().await;
            let section = format!(
                "{}\n[store]\nurl = {db:?}\n{}",
                bus_section(&[nats.url()], 1),
                lagging_plugin()
            );
            _nats = nats;
            section
        }
    };
    let gw = TestGateway::start(config(&extra)).await;
    let (lagging, plain) = two_topics();
    let who = token(json!({"sub": "reader"}));
    let query = format!("topic={lagging}&topic={plain}");
    // The bus says soon after it starts up to where everything was routed;
    // a session opened before that has nothing to bound a lagging
    // partition with.
    eventually("a settled floor", Duration::from_secs(10), async || {
        gw.gateway.bus.settled().is_some()
    })
    .await;
    let mut sse = gw.sse(&query, Some(&who)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));

    // Three events into the lagging partition (each routed 400 ms after the
    // one before), then one into the other, routed at once, with a higher id.
    // Each is answered once routed and stored, so they are not waited for.
    let mut answers = Vec::new();
    for n in 0..3u64 {
        answers.push(
            gw.publish_unanswered(json!({"topic": lagging, "data": {"n": n}}))
                .await,
        );
    }
    let plain_id = publish(&gw, &plain, 100).await;
    let mut shown = Vec::new();
    let cursor = loop {
        let e = sse.next_event().await;
        let n = n_of(&e.data);
        if n == 100 {
            break e.id.expect("an id");
        }
        shown.push(n);
    };
    drop(sse);
    let mut lagged = Vec::new();
    for a in answers {
        let (status, body) = a.await.expect("answer");
        assert_eq!(status, 200, "{body}");
        lagged.push(EventId::parse(body["id"].as_str().expect("id")).expect("id"));
    }
    assert!(
        shown.len() < lagged.len() && lagged[shown.len()] < plain_id,
        "{backend:?}: the lagging partition had caught up ({shown:?} shown first)"
    );
    let parsed = Cursor::parse(&cursor).expect("a cursor");
    assert_eq!(parsed.at, plain_id, "{backend:?}: {cursor}");
    // The rest is routed while the client is away.
    let last = *lagged.last().expect("lagged");
    eventually(
        "the lagging events in history",
        Duration::from_secs(10),
        async || {
            let heads = gw
                .gateway
                .store
                .stream_heads(last.epoch, vec![lagging.clone()])
                .await
                .expect("heads");
            heads.values().flatten().any(|h| h.seq >= last.seq)
        },
    )
    .await;

    // Back with that cursor: exactly what was not shown, in order, then
    // live events.
    let mut sse = gw
        .sse_with_header(&query, Some(&who), ("last-event-id", cursor.as_str()))
        .await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let mut got = Vec::new();
    for _ in shown.len()..lagged.len() {
        got.push(n_of(&sse.next_event().await.data));
    }
    publish(&gw, &plain, 101).await;
    got.push(n_of(&sse.next_event().await.data));
    let mut want: Vec<u64> = (shown.len() as u64..lagged.len() as u64).collect();
    want.push(101);
    assert_eq!(got, want, "{backend:?}: nothing shown before comes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_below_the_cursor_embedded() {
    a_lagging_partition_hides_nothing_from_last_event_id(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_partition_below_the_cursor_on_nats() {
    a_lagging_partition_hides_nothing_from_last_event_id(Backend::Nats).await;
}
