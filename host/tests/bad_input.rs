//! The rows of docs/bad-input.md not covered elsewhere, each with the
//! answer stated there before it was tried; after each, the gateway still
//! serves.

mod support;

use futures_util::SinkExt;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_a_bad_body_or_frame() {
    let gw = TestGateway::start(config("")).await;
    let body = format!(r#"{{"topic":"news.x","data":{}}}"#, nested(10_000));
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/publish"))
        .bearer_auth(SERVICE_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let mut ws = gw.ws(&token(json!({"sub": "u"}))).await;
    ws.send_text(&format!(
        r#"{{"op":"publish","id":1,"topic":"news.x","data":{}}}"#,
        nested(10_000)
    ))
    .await;
    let f = ws.next_json().await;
    assert_eq!(
        (f["op"].clone(), f["code"].clone()),
        (json!("error"), json!("bad_frame")),
        "{f}"
    );
    // The session and the gateway go on.
    let ack = ws
        .request(json!({"op": "subscribe", "id": 2, "topic": "news.x"}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(
        gw.publish(json!({"topic": "news.x", "data": 1})).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sse_topics_are_refused() {
    let gw = TestGateway::start(config("")).await;
    let t = token(json!({"sub": "u"}));
    // Longer than an HTTP client library's URI limit: sent by hand.
    let query: Vec<String> = (0..10_000).map(|i| format!("topic=news.t{i}")).collect();
    let request = format!(
        "GET /v1/sse?{} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n\r\n",
        query.join("&")
    );
    let head = raw_answer(&gw, &request).await;
    assert!(head.starts_with("HTTP/1.1 414"), "{head:?}");
    // Within the URI limit, past limits.max_subscriptions (100).
    let query: Vec<String> = (0..101).map(|i| format!("topic=news.t{i}")).collect();
    assert_eq!(gw.sse_status(&query.join("&"), Some(&t)).await, 400);
    assert_eq!(gw.sse_status("topic=news.t1", Some(&t)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_subscribe_to_wildcards() {
    let gw = TestGateway::start(config("")).await;
    let t = token(json!({"sub": "u"}));
    let mut ws = gw.ws(&t).await;
    for (id, topic) in [(1, "news.>"), (2, "news.*"), (3, ">")] {
        let f = ws
            .request(json!({"op": "subscribe", "id": id, "topic": topic}))
            .await;
        assert_eq!(f["code"], "invalid_topic", "{topic}: {f}");
    }
    assert_eq!(gw.sse_status("topic=news.%3E", Some(&t)).await, 400);
    let mut stomp = gw.stomp(&t).await;
    stomp
        .send("SUBSCRIBE\nid:0\ndestination:/topic/news.>\nreceipt:r\n\n")
        .await;
    assert_eq!(stomp.next_frame().await.command, "ERROR");
    let ack = ws
        .request(json!({"op": "subscribe", "id": 4, "topic": "news.x"}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_lying_stomp_frames_get_an_error_and_a_close() {
    let gw = TestGateway::start(config("")).await;
    let t = token(json!({"sub": "u"}));
    // A header past limits.max_frame_bytes (64 KiB): the frame is refused whole.
    let mut raw = stomp_socket(&gw.addr.to_string()).await;
    let huge = format!(
        "CONNECT\naccept-version:1.2\npasscode:{t}\nx-pad:{}\n\n\0",
        "x".repeat(70_000)
    );
    let _ = raw.send(Message::Text(huge.into())).await;
    assert!(closes_with(&mut raw, 1009).await, "a frame over the limit");
    // A content-length longer than the body.
    let mut stomp = gw.stomp(&t).await;
    stomp
        .send("SEND\ndestination:/topic/news.x\ncontent-length:1000\n\nabc")
        .await;
    let f = stomp.next_frame().await;
    assert_eq!(f.command, "ERROR", "{f:?}");
    // And a well-formed session after them.
    let mut stomp = gw.stomp(&t).await;
    stomp
        .send("SUBSCRIBE\nid:0\ndestination:/topic/news.x\nreceipt:r\n\n")
        .await;
    assert_eq!(stomp.next_frame().await.command, "RECEIPT");
}

/// Whether the socket is closed with `code` (or reset) before anything else.
async fn closes_with(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    code: u16,
) -> bool {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                eprintln!("closed with {} {}", f.code, f.reason);
                return u16::from(f.code) == code;
            }
            Ok(Some(Ok(Message::Close(None)) | Err(_)) | None) => return false,
            Ok(Some(Ok(m))) => {
                eprintln!("before the close: {m:?}");
                continue;
            }
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_and_the_session_keeps_serving() {
    let gw = TestGateway::start(config("")).await;
    let mut ws = gw.ws(&token(json!({"sub": "u"}))).await;
    ws.send_pings(10_000).await;
    let ack = ws
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.x"}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(
        gw.publish(json!({"topic": "news.x", "data": 7})).await.0,
        200
    );
    assert_eq!(ws.next_event().await["data"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_headers_are_refused_with_431() {
    let gw = TestGateway::start(config("")).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "x".repeat(500_000)
    );
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    for (what, request) in [("a 500-KB header", big), ("200 headers", many)] {
        let head = raw_answer(&gw, &request).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{what}: {head:?}");
    }
    assert_eq!(gw.get("/healthz").await.0, 200);
}

/// The first bytes of the answer to `request`, written as it is.
async fn raw_answer(gw: &TestGateway, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    // The server may answer and close before it has read everything.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tcp.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}
