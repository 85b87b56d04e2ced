//! What a hostile client meets at the door, over raw sockets: bodies read
//! only once the caller is known and only for so long, idle and trickling
//! connections closed, a connection limit, admission charged only for
//! authenticated callers, throttled admin-token guessing, user publishes
//! held to their rate.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes or `limit` passes: what was read, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// Reads until a whole response head has arrived (or `limit` passes).
async fn read_head(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into()
}

fn short_timeouts(extra: &str) -> switchyard_host::config::Config {
    let mut c = config(extra);
    c.server.request_timeout_s = 1;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_read_only_once_its_sender_is_known_and_only_for_so_long() {
    let gw = TestGateway::start(short_timeouts("")).await;
    // Announces 2 MB and sends none of it: refused at once, unread.
    for (path, auth) in [
        ("/v1/publish", "Bearer not-a-key"),
        ("/admin/log", "Bearer wrong-admin-token"),
    ] {
        let method = if path == "/admin/log" { "PUT" } else { "POST" };
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{{\"topic\":"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let answer = read_head(&mut s, WAIT).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer:?}");
    }
    // The right key, and a body that stops coming: 408 after the timeout.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"topic\":"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let answer = read_head(&mut s, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // Too large, declared or not: 413.
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, body) = gw
        .post(
            "/v1/publish",
            Some(SERVICE_KEY),
            json!({"topic": "t", "data": big}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("too_large"))
    );
    // The gateway still serves.
    assert_eq!(gw.publish(json!({"topic": "t", "data": 1})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed() {
    let gw = TestGateway::start(short_timeouts("")).await;
    let mut idle = TcpStream::connect(gw.addr).await.expect("connect");
    let mut trickle = TcpStream::connect(gw.addr).await.expect("connect");
    let trickling = tokio::spawn(async move {
        // A header line a byte at a time, never finished.
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_until_closed(&mut trickle, WAIT).await
    });
    let (_, closed) = read_until_closed(&mut idle, WAIT).await;
    assert!(closed, "an idle connection stays open");
    let (_, closed) = trickling.await.expect("trickler");
    assert!(closed, "a trickling connection stays open");
    // A keep-alive connection idle after its answer is closed too.
    let mut kept = TcpStream::connect(gw.addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) = read_until_closed(&mut kept, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "an idle keep-alive connection stays open");
    assert!(gw.metric("switchyard_connections_timed_out_total").await >= 3);
    assert_eq!(gw.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let mut c = config("");
    c.server.max_connections = 4;
    let gw = TestGateway::start(c).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    let open = || {
        gw.gateway
            .throttles
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually("four connections counted", WAIT, async || open() == 4).await;
    let mut fifth = TcpStream::connect(gw.addr).await.expect("connect");
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let (answer, closed) = read_until_closed(&mut fifth, WAIT).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    assert_eq!(
        gw.gateway
            .throttles
            .connections_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Once they go, there is room again.
    drop(held);
    eventually("room again", WAIT, async || {
        reqwest::get(gw.url("/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_do_not_use_up_the_accept_rate() {
    // A bucket of 5 connects, refilled at 5 a second: the bad ones below
    // would empty it if they were charged.
    let mut c = config("");
    c.limits.accept_rate = 5;
    let gw = TestGateway::start(c).await;
    let bad = [("authorization", "Bearer forged.token.here".to_owned())];
    for _ in 0..20 {
        assert_eq!(gw.ws_refused("/v1/ws", &bad).await.0, 401);
        assert_eq!(
            gw.sse_status("topic=chat.room.1", Some("forged.token"))
                .await,
            401
        );
    }
    let stomp_bad = [
        ("authorization", "Bearer forged.token.here".to_owned()),
        ("sec-websocket-protocol", "v12.stomp".to_owned()),
    ];
    assert_eq!(gw.ws_refused("/v1/ws", &stomp_bad).await.0, 401);
    // Every legitimate connect of the bucket still gets in.
    let t = token(json!({"sub": "ann", "rooms": ["1"]}));
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(gw.ws(&t).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guessing_is_throttled_per_address() {
    let gw = TestGateway::start(config("")).await;
    // Guesses come faster than one a second: after the burst, 429s.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let status = gw
            .get_as("/admin/plugins", Some(&format!("guess-{i}")))
            .await
            .0;
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert!(
        statuses.iter().filter(|s| **s == 401).count() >= 10,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(gw.metric("switchyard_admin_throttled_total").await >= 1);
    // Other endpoints are not held up.
    assert_eq!(gw.publish(json!({"topic": "t", "data": 1})).await.0, 200);
    // One wrong guess a second refills: the right token gets through later.
    eventually("the admin API answers again", WAIT, async || {
        gw.get_as("/admin/plugins", Some(ADMIN_TOKEN)).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_by_a_user_are_held_to_the_publish_rate() {
    let mut c = config("");
    c.limits.publish_rate = 1;
    let gw = TestGateway::start(c).await;
    let ann = token(json!({"sub": "ann", "rooms": ["1"], "scope": "publish"}));
    let bob = token(json!({"sub": "bob", "rooms": ["1"], "scope": "publish"}));
    let body = json!({"topic": "chat.room.1", "data": 1});
    let mut ann_statuses = Vec::new();
    for _ in 0..5 {
        ann_statuses.push(gw.post("/v1/publish", Some(&ann), body.clone()).await.0);
    }
    assert_eq!(ann_statuses[0], 200, "{ann_statuses:?}");
    assert!(ann_statuses.contains(&429), "{ann_statuses:?}");
    // Bob has his own bucket; services have none.
    assert_eq!(
        gw.post("/v1/publish", Some(&bob), body.clone()).await.0,
        200
    );
    for _ in 0..5 {
        assert_eq!(gw.publish(body.clone()).await.0, 200);
    }
    assert!(gw.metric("switchyard_http_publishes_throttled_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_that_would_forge_log_lines_is_refused() {
    let gw = TestGateway::start(config("")).await;
    let forged = token(json!({"sub": "ann\nINFO admin logged in", "rooms": ["1"]}));
    let (status, body) = gw
        .ws_refused("/v1/ws", &[("authorization", format!("Bearer {forged}"))])
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(gw.sse_status("topic=chat.room.1", Some(&forged)).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_authorizer_presence_needs_the_presence_scope() {
    let mut c = config("");
    c.plugins.clear();
    let gw = TestGateway::start(c).await;
    let mut ws = gw.ws(&token(json!({"sub": "bob"}))).await;
    ws.request(json!({"op": "subscribe", "id": 1, "topic": "room.9"}))
        .await;
    let nosy = token(json!({"sub": "eve"}));
    assert_eq!(gw.get_as("/v1/presence/room.9", Some(&nosy)).await.0, 403);
    let granted = token(json!({"sub": "carl", "scope": "presence"}));
    let (status, p) = gw.get_as("/v1/presence/room.9", Some(&granted)).await;
    assert_eq!((status, p["users"].clone()), (200, json!(["bob"])));
    assert_eq!(
        gw.get_as("/v1/presence/room.9", Some(SERVICE_KEY)).await.0,
        200
    );
}
