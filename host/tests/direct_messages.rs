//! Direct messages (`to_users` on `POST /v1/publish`) are a user's only if
//! a direct-authorizer allows them, or, where none applies, if the token
//! grants the `direct` scope; a user addresses at most
//! `limits.max_recipients` users, each a well-formed user id. Event names
//! the gateway uses for its own SSE and STOMP events are refused on every
//! protocol.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

async fn ann_online(gw: &TestGateway) -> Ws {
    gw.ws(&token(json!({"sub": "ann"}))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_direct_authorizer_a_user_needs_the_direct_scope() {
    let mut c = config("");
    c.plugins.clear();
    let gw = TestGateway::start(c).await;
    let mut ann = ann_online(&gw).await;
    let dm = json!({"topic": "notes.x", "data": "hi", "to_users": ["ann"]});
    let eve = token(json!({"sub": "eve", "scope": "publish"}));
    let (status, body) = gw.post("/v1/publish", Some(&eve), dm.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("`direct` scope"), "{body}");
    // Without recipients the same publish is hers to make.
    let plain = json!({"topic": "notes.x", "data": "plain"});
    assert_eq!(gw.post("/v1/publish", Some(&eve), plain).await.0, 200);
    let granted = token(json!({"sub": "dan", "scope": "publish direct"}));
    let (status, body) = gw.post("/v1/publish", Some(&granted), dm).await;
    assert_eq!(status, 200, "{body}");
    let e = ann.next_event().await;
    assert_eq!(
        (e["data"].clone(), e["id"].clone()),
        (json!("hi"), body["id"].clone())
    );
    assert!(
        ann.next_event_within(Duration::from_millis(300))
            .await
            .is_none(),
        "eve's refused message never came"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_authorizer_decides_who_may_address_users() {
    let mut c = config("");
    // The example acl: support staff may address users on support.>.
    let rule: toml::Table = toml::from_str(
        r#"topic = "support.>"
actions = ["publish", "direct"]
roles = ["support"]"#,
    )
    .expect("rule");
    c.plugins[0].config["rules"]
        .as_array_mut()
        .expect("rules")
        .insert(0, toml::Value::Table(rule));
    let gw = TestGateway::start(c).await;
    let mut ann = ann_online(&gw).await;
    let dm = json!({"topic": "support.tickets", "data": "fixed", "to_users": ["ann"]});
    let agent = token(json!({"sub": "sam", "roles": ["support"], "scope": "publish direct"}));
    let (status, body) = gw.post("/v1/publish", Some(&agent), dm.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ann.next_event().await["data"], json!("fixed"));
    // The scope does not stand in for the plugin where one applies.
    let news = json!({"topic": "news.x", "data": 1, "to_users": ["ann"]});
    let (status, body) = gw.post("/v1/publish", Some(&agent), news).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("directly"), "{body}");
    // Someone else may publish on support.> (the rule), but not to users.
    let rule_less = token(json!({"sub": "eve", "scope": "publish direct"}));
    assert_eq!(gw.post("/v1/publish", Some(&rule_less), dm).await.0, 403);
    // Services address anyone.
    let many: Vec<String> = (0..150).map(|i| format!("u{i}")).collect();
    let broadcast = json!({"topic": "news.x", "data": 2, "to_users": many});
    assert_eq!(gw.publish(broadcast).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_bounded_and_must_be_user_ids() {
    let mut c = config("");
    c.plugins.clear();
    c.limits.max_recipients = 3;
    let gw = TestGateway::start(c).await;
    let dan = token(json!({"sub": "dan", "scope": "publish direct"}));
    let four = json!({"topic": "a.b", "data": 1, "to_users": ["a", "b", "c", "d"]});
    let (status, body) = gw.post("/v1/publish", Some(&dan), four.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("limits.max_recipients"), "{body}");
    // A service is bounded by the body size only.
    assert_eq!(gw.publish(four).await.0, 200);
    for bad in ["", "ann\nINFO forged", &"u".repeat(300)] {
        let body = json!({"topic": "a.b", "data": 1, "to_users": ["ok", bad]});
        let (status, answer) = gw.post("/v1/publish", Some(&dan), body.clone()).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert!(answer.to_string().contains("to_users[1]"), "{answer}");
        assert_eq!(gw.publish(body).await.0, 400, "{bad:?} from a service");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_event_names_cannot_be_published() {
    let mut c = config("");
    c.plugins.clear();
    let gw = TestGateway::start(c).await;
    for name in ["reset", "dropped", "connected", "two\nlines"] {
        let body = json!({"topic": "a.b", "data": 1, "event": name});
        let (status, answer) = gw.publish(body).await;
        assert_eq!(status, 400, "{name:?}: {answer}");
    }
    let mut ws = gw.ws(&token(json!({"sub": "eve"}))).await;
    let f = ws
        .request(json!({"op": "publish", "id": 1, "topic": "a.b", "event": "reset", "data": 1}))
        .await;
    assert_eq!(
        (f["op"].clone(), f["code"].clone()),
        (json!("error"), json!("bad_frame")),
        "{f}"
    );
    let mut stomp = gw.stomp(&token(json!({"sub": "eve"}))).await;
    stomp
        .send("SEND\ndestination:/topic/a.b\nevent:reset\nreceipt:r1\n\n1")
        .await;
    let f = stomp.next_frame().await;
    assert_eq!(f.command, "ERROR", "{f:?}");
    assert!(
        f.header("message").is_some_and(|m| m.contains("reserved")),
        "{f:?}"
    );
    // The gateway goes on serving.
    let ok = json!({"topic": "a.b", "data": 1, "event": "order.created"});
    assert_eq!(gw.publish(ok).await.0, 200);
}
