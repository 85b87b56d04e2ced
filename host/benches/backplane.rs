//! The event path between nodes, side by side in one run: one node on the
//! local bus, and two nodes on a real `nats-server` (JetStream) with the
//! sessions split between them. Same sessions, payloads and rates.
//!
//! `cargo bench -p switchyard-host --bench backplane` prints, for each bus,
//! the latency percentiles (publish to client receipt) at a fixed rate and
//! the deliveries per second of a burst. Compare the two rows, not the
//! absolute numbers, on a shared machine. No plugins are loaded: this
//! prices the bus, not the sandbox.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchyard_host::config::Config;
use switchyard_host::gateway::Gateway;
use switchyard_host::plugin::{EngineSettings, PluginEngine, PluginSet};
use switchyard_host::routing::{Event, EventId, Topic};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "benchmark-secret-0123456789abcdef-0123";
const SESSIONS: usize = 200;
const RATE_EVENTS: usize = 2000;
const RATE_PER_S: u64 = 1000;
const BURST_EVENTS: usize = 5000;
const PAYLOAD: usize = 256;
const PUBLISHERS: usize = 64;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct Node {
    gateway: Arc<Gateway>,
    addr: std::net::SocketAddr,
    _store: tempfile::TempDir,
}

/// A fresh database on the machine's PostgreSQL: the nodes of a cluster
/// share one (SQLite is refused there).
async fn fresh_postgres() -> String {
    use sqlx::Connection;
    let base = "postgres://postgres@127.0.0.1:5432";
    let name = format!("sy_bench_{}", now_ns());
    let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("the PostgreSQL server on 127.0.0.1:5432 answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("{base}/{name}")
}

/// Starts node `name` on `bus` with its store at `url` (a SQLite file in
/// a directory of its own when `None`).
async fn start_node(name: &str, bus: &str, url: Option<&str>) -> Node {
    let store = tempfile::tempdir().unwrap();
    let url = url.map_or_else(
        || format!("sqlite://{}", store.path().join("sy.db").display()),
        str::to_owned,
    );
    let text = format!(
        "{bus}\n[server]\nnode_id = \"{name}\"\n[auth]\njwt_hs256_secret = \"{SECRET}\"\n[limits]\nqueue_depth = 4096\nmax_sessions = 100000\naccept_rate = 100000\n[store]\nurl = {url:?}\n"
    );
    let config = Config::from_toml_str(&text).unwrap();
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let plugins = PluginSet::load(&engine, None, &[], 1).unwrap();
    let listener = switchyard_host::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::start(config, engine, plugins).await.unwrap();
    let gw = gateway.clone();
    tokio::spawn(async move {
        let _ = switchyard_host::server::run(listener, gw, std::future::pending()).await;
    });
    Node {
        gateway,
        addr,
        _store: store,
    }
}

/// Opens a session subscribed to `bench.t`; each event's send time goes to
/// `lat` as the latency in microseconds.
async fn session(addr: std::net::SocketAddr, i: usize, lat: mpsc::UnboundedSender<u64>) {
    let claims = json!({"sub": format!("u{i}"), "exp": now_ns() / 1_000_000_000 + 3600});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::SinkExt;
    ws.send(Message::Text(
        json!({"op": "subscribe", "id": 1, "topic": "bench.t"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["op"].as_str() {
                Some("ack") => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Some("event") => {
                    let sent = v["data"]["t"].as_u64().unwrap();
                    let _ = lat.send(now_ns().saturating_sub(sent) / 1000);
                }
                _ => {}
            }
        }
    });
    ready_rx.await.unwrap();
}

fn event(pad: &str) -> Event {
    let data = json!({"t": now_ns(), "pad": pad}).to_string().into_bytes();
    Event::new(EventId::UNASSIGNED, Topic::parse("bench.t").unwrap(), data)
}

struct Figures {
    p50: u64,
    p99: u64,
    p999: u64,
    rate_deliveries: usize,
    burst_per_s: f64,
    burst_lost: usize,
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<u64>, want: usize) -> (Vec<u64>, Instant) {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(l)) => got.push(l),
            _ => break,
        }
    }
    (got, Instant::now())
}

async fn run(publisher: Arc<Gateway>, rx: &mut mpsc::UnboundedReceiver<u64>) -> Figures {
    let pad = "x".repeat(PAYLOAD - 40);
    // Warm-up.
    for _ in 0..50 {
        publisher.publish(event(&pad)).await.unwrap();
    }
    collect(rx, 50 * SESSIONS).await;

    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    let p = publisher.clone();
    let pad2 = pad.clone();
    let sender = tokio::spawn(async move {
        for _ in 0..RATE_EVENTS {
            tick.tick().await;
            p.publish(event(&pad2)).await.unwrap();
        }
    });
    let (mut lat, _) = collect(rx, RATE_EVENTS * SESSIONS).await;
    sender.await.unwrap();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };

    let start = Instant::now();
    let p = publisher.clone();
    let sender = tokio::spawn(async move {
        // Many publishes in flight, as many publishers would have: a NATS
        // publish waits for JetStream's confirmation.
        futures_util::stream::iter(0..BURST_EVENTS)
            .map(|_| {
                let p = p.clone();
                let pad = pad.clone();
                async move {
                    // Back off briefly when the gateway says it is overloaded.
                    while p.publish(event(&pad)).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
            .buffer_unordered(PUBLISHERS)
            .collect::<Vec<()>>()
            .await;
    });
    let (burst, done) = collect(rx, BURST_EVENTS * SESSIONS).await;
    sender.await.unwrap();
    Figures {
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        rate_deliveries: lat.len(),
        burst_per_s: burst.len() as f64 / (done - start).as_secs_f64(),
        burst_lost: BURST_EVENTS * SESSIONS - burst.len(),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "| {name} | {} / {} / {} | {} of {} | {:.0} | {} |",
        f.p50 as f64 / 1000.0,
        f.p99 as f64 / 1000.0,
        f.p999 as f64 / 1000.0,
        f.rate_deliveries,
        RATE_EVENTS * SESSIONS,
        f.burst_per_s,
        f.burst_lost
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{SESSIONS} sessions on one topic, {PAYLOAD}-byte events; {RATE_EVENTS} events at {RATE_PER_S}/s, then a burst of {BURST_EVENTS} ({PUBLISHERS} publishes in flight).\n"
        );
        println!("| bus | latency p50 / p99 / p99.9 (ms) | delivered at rate | burst deliveries/s | burst lost |");
        println!("| --- | --- | --- | --- | --- |");

        let (tx, mut rx) = mpsc::unbounded_channel();
        let local = start_node("local", "", None).await;
        for i in 0..SESSIONS {
            session(local.addr, i, tx.clone()).await;
        }
        let f = run(local.gateway.clone(), &mut rx).await;
        print("local (1 node)", &f);

        let store = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let mut server = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test installs it)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let bus = format!("[bus]\nkind = \"nats\"\nurls = [\"nats://127.0.0.1:{port}\"]\n");
        let db = fresh_postgres().await;
        let a = start_node("a", &bus, Some(&db)).await;
        let b = start_node("b", &bus, Some(&db)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..SESSIONS {
            let node = if i % 2 == 0 { &a } else { &b };
            session(node.addr, i, tx.clone()).await;
        }
        let f = run(a.gateway.clone(), &mut rx).await;
        print("nats (2 nodes, 1 server)", &f);
        let _ = server.kill();
        let _ = server.wait();
    });
}
