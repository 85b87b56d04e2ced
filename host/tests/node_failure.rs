//! A gateway node dies mid-stream (SIGKILL, no drain): its SSE clients
//! reconnect to another node with their last event id and miss nothing,
//! also when the dead node was the one routing events; the connection
//! registry drops the dead node's sessions.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::nats::{NatsServer, bus_section, free_port};
use support::*;

const CLIENTS: usize = 10;
const EVENTS: u64 = 500;

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: follows `news.k` on `first`, and when that stream breaks,
/// resumes on `second` from its last id; returns the numbers it saw.
async fn follow(
    first: String,
    second: String,
    token: String,
    seen_total: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    let mut base = first;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.last() != Some(&(EVENTS - 1)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "saw {} events",
            seen.len()
        );
        let Some(mut sse) = Sse::open(
            &format!("{base}/v1/sse?topic=news.k"),
            &token,
            last.as_deref(),
        )
        .await
        else {
            base = second.clone();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(e) = sse.try_next_event().await {
            match e.event.as_deref() {
                Some("message") => {
                    let v: Value = serde_json::from_str(&e.data).expect("json");
                    seen.push(v["n"].as_u64().expect("n"));
                    seen_total.fetch_add(1, Ordering::Relaxed);
                    last = e.id;
                    if seen.last() == Some(&(EVENTS - 1)) {
                        break;
                    }
                }
                Some("reset") => panic!("a reset within retention: {e:?}"),
                _ => {}
            }
        }
        // The node is gone (or went quiet): resume on the other one.
        base = second.clone();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_for_clients_that_reconnect_elsewhere() {
    let nats = NatsServer::single();
    let db = fresh_postgres().await;
    let bus = format!("{}lease_ttl_ms = 2000\n", bus_section(&[nats.url()], 1));
    let store = format!("[store]\nurl = {db:?}\nregistry_ttl_s = 2\n");

    // Node a, the real binary, starts first and takes every partition; b
    // then takes its share.
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let path = dir.path().join("a.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nnode_id = \"a\"\n\
             [auth]\njwt_hs256_secret = \"{SECRET}\"\nservice_keys = [\"{SERVICE_KEY}\"]\n\
             admin_token = \"{ADMIN_TOKEN}\"\n{bus}{store}[runtime]\ncache_dir = \"cache\"\n"
        ),
    )
    .expect("config");
    let mut a = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard runs");
    let a_url = format!("http://127.0.0.1:{port}");
    wait_for("node a routes", Duration::from_secs(30), async || {
        get(&format!("{a_url}/metrics"))
            .await
            .is_some_and(|(_, m)| m.contains("switchyard_bus_partitions_owned 64"))
    })
    .await;
    let b = TestGateway::start(node_config("b", &format!("{bus}{store}"))).await;
    let b_url = format!("http://{}", b.addr);

    let seen_total = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(follow(
                a_url.clone(),
                b_url.clone(),
                token(json!({"sub": format!("viewer{i}")})),
                seen_total.clone(),
            ))
        })
        .collect();
    // Every client is on a, as the registry (read through b) shows.
    wait_for(
        "clients registered on a",
        Duration::from_secs(15),
        async || {
            get(&format!("{b_url}/admin/registry"))
                .await
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|v| v["nodes"]["a"] == CLIENTS)
        },
    )
    .await;

    // A steady stream, published through b.
    let publisher = {
        let url = b.url("/v1/publish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..EVENTS {
                let resp = http
                    .post(&url)
                    .bearer_auth(SERVICE_KEY)
                    .json(&json!({"topic": "news.k", "data": {"n": n}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), 200, "publish {n}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Kill a mid-stream, without a drain.
    wait_for("events flow", Duration::from_secs(30), async || {
        seen_total.load(Ordering::Relaxed) >= (CLIENTS as u64) * 100
    })
    .await;
    a.start_kill().expect("kill");
    let _ = a.wait().await;
    let at_kill = seen_total.load(Ordering::Relaxed);
    publisher.await.expect("publisher");

    for (i, c) in clients.into_iter().enumerate() {
        let seen = c.await.expect("client");
        let expected: Vec<u64> = (0..EVENTS).collect();
        assert_eq!(seen, expected, "client {i}: every event once, in order");
    }
    assert!(
        at_kill < (CLIENTS as u64) * EVENTS,
        "the node died mid-stream"
    );
    // b routes every partition now, and the registry no longer lists a's
    // sessions.
    let (_, metrics) = b.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_bus_partitions_owned 64"),
        "{metrics}"
    );
    wait_for("a's sessions expire", Duration::from_secs(15), async || {
        let (_, v) = b.get_as("/admin/registry", Some(ADMIN_TOKEN)).await;
        v["nodes"].get("a").is_none()
    })
    .await;
    let expired = b.metric("switchyard_registry_expired_total").await;
    assert!(expired >= CLIENTS as u64, "{expired}");
}
