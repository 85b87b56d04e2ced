//! An acknowledged publish is durable: a gateway killed (SIGKILL) right
//! after answering still has every event it acknowledged (HTTP 200,
//! `switchyard.v1` `ack`, STOMP RECEIPT) once it is back, in the inbox of
//! an offline user and in topic history; on the local bus and on NATS.
//! Ids are never handed out twice across a crash, and a publish retried
//! with its idempotency key after one is not delivered twice.

mod support;

use std::collections::BTreeSet;

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::clients::{Stomp, Ws};
use support::link::{LinkProxy, Mode};
use support::nats::{NatsServer, bus_section};
use support::process::GatewayProcess;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 3;
const TOPIC: &str = "dur.t";

async fn post(gw: &GatewayProcess, body: Value) -> (u16, Value) {
    let url = format!("{}/v1/publish", gw.url);
    publish_to(&reqwest::Client::new(), &url, body).await
}

/// Publishes `n` events at once over HTTP; the bodies acknowledged.
async fn over_http(gw: &GatewayProcess, round: usize, n: usize, to_user: bool) -> Vec<Acked> {
    let sends = (0..n).map(|i| {
        let body = format!("http-{round}-{i}");
        let mut publish = json!({ "topic": TOPIC, "data": body });
        if to_user {
            publish["to_users"] = json!(["ann"]);
        }
        async move {
            let (status, answer) = post(gw, publish).await;
            (status == 200).then(|| (body, answer["id"].as_str().expect("id").to_owned()))
        }
    });
    join_all(sends).await.into_iter().flatten().collect()
}

/// A body and the id its publish was answered with.
type Acked = (String, String);

/// Publishes from four `switchyard.v1` sessions at once, each sending all
/// its frames before reading the answers; the bodies acknowledged.
async fn over_ws(gw: &GatewayProcess, round: usize, n: usize) -> Vec<Acked> {
    let sessions = (0..4).map(|s| async move {
        let mut ws = Ws::connect(gw.addr(), &token(json!({ "sub": format!("pub{s}") }))).await;
        let bodies: Vec<String> = (0..n / 4).map(|i| format!("ws-{round}-{s}-{i}")).collect();
        for (i, body) in bodies.iter().enumerate() {
            ws.send(json!({ "op": "publish", "id": i + 1, "topic": TOPIC, "data": body }))
                .await;
        }
        let mut acked = Vec::new();
        for _ in 0..bodies.len() {
            let f = ws.next_json().await;
            if f["op"] == "ack" {
                let i = f["id"].as_u64().expect("id") as usize;
                let id = f["event_id"].as_str().expect("the ack names the event id");
                acked.push((bodies[i - 1].clone(), id.to_owned()));
            }
        }
        acked
    });
    join_all(sessions).await.into_iter().flatten().collect()
}

/// Publishes from four STOMP sessions at once, every SEND asking for a
/// receipt; the bodies whose RECEIPT came.
async fn over_stomp(gw: &GatewayProcess, round: usize, n: usize) -> Vec<Acked> {
    let sessions = (0..4).map(|s| async move {
        let mut stomp = Stomp::connect(gw.addr(), &token(json!({ "sub": format!("st{s}") }))).await;
        let bodies: Vec<String> = (0..n / 4)
            .map(|i| format!("stomp-{round}-{s}-{i}"))
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            stomp
                .send(&format!(
                    "SEND\ndestination:/topic/{TOPIC}\nreceipt:{i}\n\n{body}"
                ))
                .await;
        }
        let mut acked = Vec::new();
        for _ in 0..bodies.len() {
            let f = stomp.next_frame().await;
            if f.command == "RECEIPT" {
                let i: usize = f.header("receipt-id").expect("id").parse().expect("n");
                let id = f
                    .header("event-id")
                    .expect("the RECEIPT names the event id");
                acked.push((bodies[i].clone(), id.to_owned()));
            }
        }
        acked
    });
    join_all(sessions).await.into_iter().flatten().collect()
}

/// The bodies of the topic's history after `marker`, read by SSE
/// replay up to a sentinel published once the stream is open.
async fn history_after(gw: &GatewayProcess, marker: &str, round: usize) -> Vec<Acked> {
    let url = format!("{}/v1/sse?topic={TOPIC}", gw.url);
    let mut sse =
        support::clients::Sse::open(&url, &token(json!({ "sub": "reader" })), Some(marker))
            .await
            .expect("sse");
    let connected = sse.next_event().await;
    assert_eq!(connected.event.as_deref(), Some("connected"));
    let sentinel = format!("sentinel-{round}");
    assert_eq!(
        post(gw, json!({ "topic": TOPIC, "data": sentinel }))
            .await
            .0,
        200
    );
    let mut got = Vec::new();
    loop {
        let e = sse.next_event().await;
        assert_ne!(e.event.as_deref(), Some("reset"), "history was reset");
        let body: String = serde_json::from_str(&e.data).unwrap_or(e.data);
        if body == sentinel {
            return got;
        }
        // An SSE id is a cursor: the event's id, then any floors.
        let cursor = e.id.expect("an id");
        let id = cursor.split('~').next().unwrap_or_default().to_owned();
        got.push((body, id));
    }
}

/// The events the offline user `ann` finds on connect, up to a sentinel.
async fn inbox_of_ann(gw: &GatewayProcess, round: usize) -> Vec<Acked> {
    let mut ws = Ws::connect(gw.addr(), &token(json!({ "sub": "ann" }))).await;
    let sentinel = format!("sentinel-{round}");
    let publish = json!({ "topic": "dur.dm", "data": sentinel, "to_users": ["ann"] });
    assert_eq!(post(gw, publish).await.0, 200);
    let mut got = Vec::new();
    loop {
        let e = ws.next_event().await;
        let body = e["data"].as_str().map(str::to_owned).unwrap_or_default();
        if body == sentinel {
            return got;
        }
        got.push((body, e["id"].as_str().expect("id").to_owned()));
    }
}

/// Each acknowledged event must be found under the id it was
/// acknowledged with.
fn assert_all_kept(acked: &[Acked], got: &[Acked], what: &str) {
    assert!(!acked.is_empty(), "{what}: nothing was acknowledged");
    let got: BTreeSet<&Acked> = got.iter().collect();
    let lost: Vec<&Acked> = acked.iter().filter(|b| !got.contains(b)).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {} acknowledged events lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

/// Rounds of: publish over each protocol, SIGKILL at once, restart, and
/// find every acknowledged event.
async fn acknowledged_events_survive_kills(sections: &str) {
    let mut gw = GatewayProcess::start("d", sections).await;
    for round in 0..ROUNDS {
        let (status, marker) = post(&gw, json!({ "topic": TOPIC, "data": "marker" })).await;
        assert_eq!(status, 200, "{marker}");
        let marker = marker["id"].as_str().expect("id").to_owned();
        let mut acked = over_http(&gw, round, 25, false).await;
        acked.extend(over_ws(&gw, round, 24).await);
        acked.extend(over_stomp(&gw, round, 24).await);
        let dms = over_http(&gw, round, 25, true).await;
        gw.kill().await;
        gw.restart().await;
        let got = history_after(&gw, &marker, round).await;
        assert_all_kept(&acked, &got, &format!("round {round}, topic history"));
        let inbox = inbox_of_ann(&gw, round).await;
        assert_all_kept(&dms, &inbox, &format!("round {round}, ann's inbox"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill_on_the_local_bus() {
    acknowledged_events_survive_kills("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill_on_nats() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let sections = format!("{}[store]\nurl = {db:?}\n", bus_section(&[nats.url()], 1));
    acknowledged_events_survive_kills(&sections).await;
}

/// The sequence of an event id (`<epoch hex>-<seq>`).
fn seq_of(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("an event id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_seen_live_before_a_crash_is_never_given_to_another_event() {
    // A topic that keeps no history: its events are only ever seen live.
    let sections = "[[store.retention]]\ntopics = \"live.>\"\nmax_events = 0\n";
    let mut gw = GatewayProcess::start("i", sections).await;
    for round in 0..ROUNDS {
        let mut ws = Ws::connect(gw.addr(), &token(json!({ "sub": "watcher" }))).await;
        let ack = ws
            .request(json!({ "op": "subscribe", "id": 1, "topic": "live.x" }))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        let stop = tokio_util::sync::CancellationToken::new();
        let publishers: Vec<_> = (0..8)
            .map(|p| {
                let url = gw.url.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut n = 0u64;
                    while !stop.is_cancelled() && n < 100_000 {
                        n += 1;
                        let body = json!({ "topic": "live.x", "data": format!("{round}-{p}-{n}") });
                        let sent = http
                            .post(format!("{url}/v1/publish"))
                            .bearer_auth(SERVICE_KEY)
                            .json(&body)
                            .send()
                            .await;
                        if sent.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        while seen.len() < 300 {
            let e = ws.next_event().await;
            seen.insert(seq_of(e["id"].as_str().expect("id")));
        }
        // Killed mid-stream, with events delivered live moments ago.
        gw.kill().await;
        stop.cancel();
        // What was written to the socket before the kill.
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), ws.stream.next()).await
        {
            if let Message::Text(t) = msg {
                let f: Value = serde_json::from_str(&t).expect("json");
                if f["op"] == "event" {
                    seen.insert(seq_of(f["id"].as_str().expect("id")));
                }
            }
        }
        for p in publishers {
            p.await.expect("publisher");
        }
        gw.restart().await;
        let (status, body) = post(&gw, json!({ "topic": "live.x", "data": "after" })).await;
        assert_eq!(status, 200, "{body}");
        let after = seq_of(body["id"].as_str().expect("id"));
        let newest = *seen.last().expect("seen");
        assert!(
            after > newest,
            "round {round}: id sequence {after} after the restart, {newest} was seen before it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_with_its_key_after_a_crash_is_not_delivered_twice() {
    let mut gw = GatewayProcess::start("k", "").await;
    let publish = json!({
        "topic": "dur.dm", "data": "once", "to_users": ["ann"], "idempotency_key": "order-17"
    });
    // Two at once: one event.
    let (a, b) = tokio::join!(post(&gw, publish.clone()), post(&gw, publish.clone()));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["id"], b.1["id"], "one key, one id");
    gw.kill().await;
    gw.restart().await;
    let (status, again) = post(&gw, publish).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["id"], a.1["id"],
        "a retry after the crash gets the first id"
    );
    let inbox = inbox_of_ann(&gw, 0).await;
    let first = a.1["id"].as_str().expect("id").to_owned();
    assert_eq!(
        inbox,
        [("once".to_owned(), first)],
        "delivered once, under its id"
    );
}

/// A session publishes on while its last publish waits for its commit:
/// with the store stalled, a second publish (and SEND) is routed to a
/// subscriber although the first is still unanswered; once the store
/// answers, both are acknowledged, in the order published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_publishes_on_while_its_last_publish_waits_for_its_commit() {
    let db = fresh_postgres().await;
    let proxy = LinkProxy::start("127.0.0.1:5432").await;
    let url = db.replace("127.0.0.1:5432", &proxy.addr());
    // Longer than the clients wait for a frame: a session that waited for
    // the first commit would not route the second publish in time.
    let sections = format!("[store]\nurl = {url:?}\nack_timeout_ms = 30000\n");
    let gw = GatewayProcess::start("a", &sections).await;
    let mut reader = Ws::connect(gw.addr(), &token(json!({ "sub": "reader" }))).await;
    let ok = reader
        .request(json!({ "op": "subscribe", "id": 1, "topic": "pipe.t" }))
        .await;
    assert_eq!(ok["op"], "ack", "{ok}");
    let mut ws = Ws::connect(gw.addr(), &token(json!({ "sub": "writer" }))).await;
    let mut stomp = Stomp::connect(gw.addr(), &token(json!({ "sub": "sender" }))).await;

    proxy.set(Mode::Blackhole);
    for (i, body) in ["ws-1", "ws-2"].iter().enumerate() {
        ws.send(json!({ "op": "publish", "id": i + 1, "topic": "pipe.t", "data": body }))
            .await;
    }
    for body in ["ws-1", "ws-2"] {
        assert_eq!(reader.next_event().await["data"], body);
    }
    proxy.set(Mode::Pass);
    for id in [1, 2] {
        let ack = ws.next_json().await;
        assert_eq!(
            (&ack["op"], &ack["id"]),
            (&json!("ack"), &json!(id)),
            "{ack}"
        );
    }

    proxy.set(Mode::Blackhole);
    for (i, body) in ["stomp-1", "stomp-2"].iter().enumerate() {
        stomp
            .send(&format!(
                "SEND\ndestination:/topic/pipe.t\nreceipt:r{i}\n\n{body}"
            ))
            .await;
    }
    for body in ["stomp-1", "stomp-2"] {
        assert_eq!(reader.next_event().await["data"], body);
    }
    proxy.set(Mode::Pass);
    for i in 0..2 {
        let f = stomp.next_frame().await;
        assert_eq!(f.command, "RECEIPT", "{f:?}");
        assert_eq!(f.header("receipt-id"), Some(format!("r{i}").as_str()));
    }
}
