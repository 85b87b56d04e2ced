//! The admin API: plugins with their counters, session counts, disconnecting a user.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_plugins_and_sessions_and_disconnects_a_user() {
    let gw = TestGateway::start(config("")).await;
    assert_eq!(gw.get("/admin/plugins").await.0, 401);
    assert_eq!(gw.get_as("/admin/plugins", Some("wrong")).await.0, 401);
    assert_eq!(
        gw.get_as("/admin/plugins", Some(&token(json!({"sub": "u"}))))
            .await
            .0,
        401
    );

    let alice = token(json!({"sub": "alice", "rooms": ["1"]}));
    let (mut tab1, mut tab2) = (gw.ws(&alice).await, gw.ws(&alice).await);
    let mut bob = gw.ws(&token(json!({"sub": "bob"}))).await;
    let _sse = gw.sse("topic=news.a", Some(&alice)).await;

    let (status, body) = gw.get_as("/admin/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let plugins = body["plugins"].as_array().expect("plugins");
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["acl", "chat-router", "redact"]);
    let acl = &plugins[0];
    assert_eq!(
        acl["interfaces"],
        json!(["authorizer", "direct-authorizer"])
    );
    assert_eq!(acl["topics"], json!([">"]));
    assert_eq!(acl["sha256"].as_str().map(str::len), Some(64));
    assert!(
        acl["calls"].as_u64().is_some_and(|c| c >= 5),
        "probe + 4 connects: {acl}"
    );
    assert_eq!(acl["traps"], 0);
    assert!(acl["latency_p50_us"].as_f64().is_some());
    assert_eq!(plugins[1]["topics"], json!(["chat.>", "dm.*"]));

    let (_, s) = gw.get_as("/admin/sessions", Some(ADMIN_TOKEN)).await;
    assert_eq!(s["total"], 4);
    assert_eq!(s["by_protocol"], json!({"json": 3, "stomp": 0, "sse": 1}));

    let (status, out) = gw
        .delete_as("/admin/users/alice/sessions", ADMIN_TOKEN)
        .await;
    assert_eq!((status, out["closed"].as_u64()), (200, Some(3)));
    for ws in [&mut tab1, &mut tab2] {
        assert_eq!(
            ws.closed().await,
            (1008, "disconnected by an administrator".to_owned())
        );
    }
    let ok = bob
        .request(json!({"op": "subscribe", "id": 1, "topic": "news.b"}))
        .await;
    assert_eq!(ok["op"], "ack", "other users are untouched");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gw.gateway.hub.len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's sessions did not all end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
