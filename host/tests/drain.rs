//! Graceful drain: no new sessions or events, accepted events delivered,
//! every client told when to come back (at spread-out times), then closed,
//! all within `server.drain_timeout_s`.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_accepted_events_hints_every_client_and_finishes_in_time() {
    let mut c = config("");
    c.server.drain_timeout_s = 5;
    c.limits.accept_rate = 100_000;
    let gw = TestGateway::start(c).await;
    let t = token(json!({"sub": "u", "rooms": ["1"]}));

    // Many JSON sessions; the first subscribes to a topic that gets events.
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(gw.ws(&t).await);
    }
    sessions[0]
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.drain"}))
        .await;
    let mut sse = gw.sse("topic=news.drain", Some(&t)).await;
    assert_eq!(sse.next_block().await.event.as_deref(), Some("connected"));
    let mut stomp = gw.stomp_raw().await;
    stomp
        .send(Message::Text(
            format!("CONNECT\naccept-version:1.2\npasscode:{t}\n\n\0").into(),
        ))
        .await
        .expect("connect");
    let connected = stomp.next().await.expect("frame").expect("ok");
    assert!(connected.to_text().expect("text").starts_with("CONNECTED"));

    // Events accepted just before the drain are still delivered.
    for n in 0..20 {
        let (status, _) = gw
            .publish(json!({"topic": "news.drain", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200);
    }
    let started = Instant::now();
    let drain = {
        let gateway = gw.gateway.clone();
        tokio::spawn(async move { switchyard_host::server::drain(&gateway).await })
    };

    let mut hints = Vec::new();
    for (i, ws) in sessions.iter_mut().enumerate() {
        let mut events = 0;
        let hint = loop {
            let f = ws.next_json().await;
            match f["op"].as_str() {
                Some("event") => events += 1,
                Some("reconnect") => break f["after_ms"].as_u64().expect("after_ms"),
                _ => {}
            }
        };
        if i == 0 {
            assert_eq!(events, 20, "every accepted event arrives before the hint");
        }
        let (code, reason) = ws.closed().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        hints.push(hint);
    }
    drain.await.expect("drain");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );

    let mut distinct = hints.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > SESSIONS / 4,
        "reconnect delays are spread: {} distinct",
        distinct.len()
    );
    assert!(hints.iter().all(|h| (500..5_500).contains(h)), "{hints:?}");

    // SSE: the events, then a retry hint, then the end of the stream.
    let mut sse_events = 0;
    let retry = loop {
        let b = sse.next_block().await;
        if b.event.as_deref() == Some("message") {
            sse_events += 1;
        }
        if let Some(r) = b.retry {
            break r;
        }
    };
    assert_eq!(sse_events, 20);
    assert!(retry.parse::<u64>().is_ok_and(|ms| ms >= 500), "{retry}");

    // STOMP: an ERROR with the hint, then the close.
    let err = loop {
        match stomp.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() != "\n" => break t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("no ERROR frame: {other:?}"),
        }
    };
    assert!(
        err.starts_with("ERROR\n") && err.contains("reconnect-after-ms:"),
        "{err:?}"
    );

    // Draining refuses new work: the listener is closed, and the gateway
    // takes no more sessions or events.
    assert!(
        reqwest::get(gw.url("/healthz")).await.is_err(),
        "the listener stopped accepting"
    );
    assert!(gw.gateway.admit().is_err());
    let topic = switchyard_host::routing::Topic::parse("news.drain").expect("topic");
    let late = switchyard_host::routing::Event::new(
        switchyard_host::routing::EventId::UNASSIGNED,
        topic,
        b"1".to_vec(),
    );
    assert_eq!(
        gw.gateway.publish(late).await,
        Err(switchyard_host::pipeline::PublishError::Stopped)
    );
}
