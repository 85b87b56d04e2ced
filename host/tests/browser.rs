//! The browser's own `EventSource` (Debian's Chromium, headless, driven by
//! puppeteer-core): when the server drops the stream, the browser
//! reconnects by itself with `Last-Event-ID` and gets exactly what it
//! missed, then live events.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn ensure_puppeteer() -> PathBuf {
    let dir = browser_dir();
    npm_install(&dir, "puppeteer-core");
    dir
}

async fn publish_range(gw: &TestGateway, from: u64, to: u64) {
    for n in from..to {
        let (status, body) = gw
            .publish(json!({"topic": "news.browser", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

struct Browser {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<u64>,
    ids: Vec<String>,
    connected: u32,
    errors: u32,
}

impl Browser {
    /// The next report; `connected` and `error` are counted, messages kept.
    async fn report(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the browser reports in time")
            .expect("read")
            .expect("the browser script is running");
        let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match r["kind"].as_str() {
            Some("message") => {
                let data: Value =
                    serde_json::from_str(r["data"].as_str().unwrap_or("")).expect("json");
                self.seen.push(data["n"].as_u64().expect("n"));
                self.ids
                    .push(r["id"].as_str().unwrap_or_default().to_owned());
            }
            Some("connected") => self.connected += 1,
            Some("error") => self.errors += 1,
            Some("ready") => {}
            _ => panic!("unexpected report: {r}"),
        }
        r
    }

    /// Reads reports until `want` messages were seen.
    async fn until(&mut self, want: usize) {
        while self.seen.len() < want {
            self.report().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_eventsource_resumes_on_sqlite() {
    eventsource_reconnects_by_itself_and_misses_nothing("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_eventsource_resumes_on_postgres() {
    let store = format!("[store]\nurl = {:?}\n", fresh_postgres().await);
    eventsource_reconnects_by_itself_and_misses_nothing(&store).await;
}

async fn eventsource_reconnects_by_itself_and_misses_nothing(store: &str) {
    let dir = ensure_puppeteer();
    let gw = TestGateway::start(config(store)).await;
    let jwt = token(json!({"sub": "browser-user"}));
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("eventsource.mjs"))
        .arg(format!("http://{}", gw.addr))
        .arg(&jwt)
        .arg("news.browser")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut b = Browser {
        lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
        seen: Vec::new(),
        ids: Vec::new(),
        connected: 0,
        errors: 0,
    };
    // The stream is open once the first `connected` arrives.
    while b.connected == 0 {
        let r = b.report().await;
        assert!(
            matches!(r["kind"].as_str(), Some("ready" | "connected")),
            "{r}"
        );
    }
    publish_range(&gw, 0, 20).await;
    b.until(20).await;

    // The server drops the stream; 100 events go out while the browser
    // waits its `retry:` (2 s) before reconnecting.
    let (status, body) = gw
        .delete_as("/admin/users/browser-user/sessions", ADMIN_TOKEN)
        .await;
    assert_eq!((status, &body["closed"]), (200, &json!(1)), "{body}");
    publish_range(&gw, 20, 120).await;
    b.until(120).await;
    publish_range(&gw, 120, 130).await;
    b.until(130).await;
    let Browser {
        seen,
        ids,
        connected,
        errors,
        ..
    } = b;
    assert_eq!(
        seen,
        (0..130).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    assert!(errors >= 1, "the browser saw the stream drop");
    assert_eq!(connected, 2, "the browser reconnected once, by itself");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids are distinct");
    // What it missed came from the replay, not from a lucky timing.
    let replayed = gw.metric("switchyard_events_replayed_total").await;
    assert!(replayed >= 1, "{replayed}");
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
