//! STOMP over WebSocket with off-the-shelf clients (@stomp/stompjs under
//! Node, stomp.py under Python), unchanged, and the protocol's refusals.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/stomp-clients")
}

fn run_blocking(cmd: &mut std::process::Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Installs the pinned client libraries once (npm and pip, from their registries).
fn ensure_clients() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = clients_dir();
    npm_install(&dir, "@stomp/stompjs");
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/stomp-py");
    if !py.join("stomp").exists() {
        run_blocking(
            std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&py)
                .arg("-r")
                .arg(dir.join("requirements.txt")),
            "pip install stomp.py",
        );
    }
    py
}

/// Runs a client script, calling `on_line` for each JSON line it prints;
/// returns every line once it exits successfully.
async fn drive(
    mut cmd: tokio::process::Command,
    mut on_line: impl AsyncFnMut(&Value),
) -> Vec<Value> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn client");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT * 2, lines.next_line())
        .await
        .expect("client output in time")
        .expect("read")
    {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
        on_line(&v).await;
        seen.push(v);
    }
    let status = child.wait().await.expect("wait");
    assert!(status.success(), "client failed: {seen:?}");
    seen
}

fn find<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines
        .iter()
        .find_map(|l| l.get(key))
        .unwrap_or_else(|| panic!("no {key:?} in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_connects_with_a_jwt_subscribes_sends_and_receives() {
    let _ = tokio::task::spawn_blocking(ensure_clients).await;
    let gw = TestGateway::start(config("")).await;
    let jwt = token(json!({"sub": "sj", "rooms": ["1"]}));
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(clients_dir().join("stompjs-client.mjs"))
        .arg(format!("ws://{}/v1/ws", gw.addr))
        .arg(&jwt)
        .arg("chat.room.1");
    let lines = drive(cmd, async |line: &Value| {
        // Once subscribed, a service sends the user a direct message.
        if line.get("receipt").is_some() {
            let (status, _) = gw
                .publish(json!({"topic": "dm.sj", "data": {"text": "for your inbox"}}))
                .await;
            assert_eq!(status, 200);
        }
    })
    .await;
    let connected = find(&lines, "connected");
    assert_eq!(connected["version"], "1.2");
    assert_eq!(
        connected["heart-beat"], "1000,10000",
        "server sends every 1 s, wants the client every 10 s"
    );
    assert_eq!(connected["user-name"], "sj");
    let m = find(&lines, "message");
    assert_eq!(m["destination"], "/topic/chat.room.1");
    assert_eq!(m["content-type"], "application/json");
    assert_eq!(m["body"], json!({"text": "from stompjs"}));
    assert_eq!(find(&lines, "inbox"), &json!({"text": "for your inbox"}));
    assert!(
        find(&lines, "heartbeats").as_u64().is_some_and(|n| n >= 1),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_connects_with_a_passcode_jwt_subscribes_sends_and_receives() {
    let py = tokio::task::spawn_blocking(ensure_clients)
        .await
        .expect("install");
    let gw = TestGateway::start(config("")).await;
    let jwt = token(json!({"sub": "py", "rooms": ["1"]}));
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(clients_dir().join("stomppy_client.py"))
        .arg(gw.addr.port().to_string())
        .arg(&jwt)
        .arg("chat.room.1")
        .env("PYTHONPATH", &py);
    let lines = drive(cmd, async |_: &Value| {}).await;
    let connected = find(&lines, "connected");
    assert_eq!(connected["version"], "1.2");
    assert_eq!(connected["heart-beat"], "1000,10000");
    let m = find(&lines, "message");
    assert_eq!(
        (m["destination"].as_str(), m["subscription"].as_str()),
        (Some("/topic/chat.room.1"), Some("room"))
    );
    assert_eq!(m["body"], json!({"text": "from stomp.py"}));
    let receipts: Vec<&Value> = lines.iter().filter_map(|l| l.get("receipt")).collect();
    assert!(
        receipts.contains(&&json!("subscribed")) && receipts.contains(&&json!("sent")),
        "{lines:?}"
    );
    assert!(
        find(&lines, "heartbeats").as_u64().is_some_and(|n| n >= 1),
        "{lines:?}"
    );
}

async fn next_text(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Option<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")?
        {
            Ok(Message::Text(t)) if t.as_str() == "\n" => continue,
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_auth_and_malformed_frames_get_an_error_frame_then_close() {
    let gw = TestGateway::start(config("")).await;

    let mut ws = gw.stomp_raw().await;
    ws.send(Message::Text(
        "CONNECT\naccept-version:1.2\npasscode:not-a-jwt\n\n\0".into(),
    ))
    .await
    .expect("send");
    let err = next_text(&mut ws).await.expect("ERROR frame");
    assert!(
        err.starts_with("ERROR\n") && err.contains("message:the token is malformed"),
        "{err:?}"
    );
    assert!(
        next_text(&mut ws).await.is_none(),
        "then the connection closes"
    );

    let mut ws = gw.stomp_raw().await;
    ws.send(Message::Text("SEND\ndestination:/app/x\n\nhi\0".into()))
        .await
        .expect("send");
    let err = next_text(&mut ws).await.expect("ERROR frame");
    assert!(err.contains("expected CONNECT"), "{err:?}");

    let jwt = token(json!({"sub": "u"}));
    let mut ws = gw.stomp_raw().await;
    ws.send(Message::Text(
        format!("CONNECT\naccept-version:1.1,1.2\nheart-beat:0,0\npasscode:{jwt}\n\n\0").into(),
    ))
    .await
    .expect("send");
    let connected = next_text(&mut ws).await.expect("CONNECTED");
    assert!(
        connected.starts_with("CONNECTED\nversion:1.2\nheart-beat:0,0\n"),
        "{connected:?}"
    );
    ws.send(Message::Text(
        "SUBSCRIBE\nid:1\ndestination:/topic/news.a\nreceipt:r1\n\n\0".into(),
    ))
    .await
    .expect("send");
    assert!(
        next_text(&mut ws)
            .await
            .expect("RECEIPT")
            .starts_with("RECEIPT\nreceipt-id:r1\n")
    );
    ws.send(Message::Text("BOGUS\n\n\0".into()))
        .await
        .expect("send");
    let err = next_text(&mut ws).await.expect("ERROR frame");
    assert!(err.contains("malformed frame: unknown command"), "{err:?}");
    assert!(next_text(&mut ws).await.is_none());

    // A subscription the authorizer refuses ends the connection with ERROR.
    let mut ws = gw.stomp_raw().await;
    ws.send(Message::Text(
        format!("CONNECT\naccept-version:1.2\nAuthorization:Bearer {jwt}\n\n\0").into(),
    ))
    .await
    .expect("send");
    next_text(&mut ws).await.expect("CONNECTED");
    ws.send(Message::Text(
        "SUBSCRIBE\nid:1\ndestination:/topic/chat.room.9\n\n\0".into(),
    ))
    .await
    .expect("send");
    let err = next_text(&mut ws).await.expect("ERROR frame");
    assert!(
        err.contains("cannot subscribe to /topic/chat.room.9"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_and_json_sessions_share_topics() {
    let gw = TestGateway::start(config("")).await;
    let jwt = token(json!({"sub": "u"}));
    let mut stomp = gw.stomp_raw().await;
    stomp
        .send(Message::Text(
            format!("CONNECT\naccept-version:1.2\npasscode:{jwt}\n\n\0").into(),
        ))
        .await
        .expect("send");
    next_text(&mut stomp).await.expect("CONNECTED");
    stomp
        .send(Message::Text(
            "SUBSCRIBE\nid:s1\ndestination:/topic/news.x\nreceipt:r\n\n\0".into(),
        ))
        .await
        .expect("send");
    next_text(&mut stomp).await.expect("RECEIPT");
    let mut json_ws = gw.ws(&jwt).await;
    let ack = json_ws
        .request(json!({"op": "publish", "id": 1, "topic": "news.x", "data": {"n": 1}}))
        .await;
    assert_eq!(ack["op"], "ack");
    let msg = next_text(&mut stomp).await.expect("MESSAGE");
    assert!(
        msg.starts_with("MESSAGE\nsubscription:s1\nmessage-id:"),
        "{msg:?}"
    );
    assert!(
        msg.contains("destination:/topic/news.x\ncontent-type:application/json\n"),
        "{msg:?}"
    );
    assert!(msg.ends_with("\n\n{\"n\":1}\0"), "{msg:?}");
}
