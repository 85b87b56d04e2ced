//! A gateway on a free port with the example plugins, and clients that talk
//! to it through real sockets.

#![allow(dead_code, missing_docs)]

pub mod clients;
pub mod cluster;
pub mod history;
pub mod link;
pub mod lossy;
pub mod nats;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use clients::*;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchyard_host::config::{Config, StoreConfig};
use switchyard_host::gateway::Gateway;
use switchyard_host::plugin::{EngineSettings, PluginEngine, PluginSet};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "end-to-end-test-secret-0123456789abcdef";
pub const SERVICE_KEY: &str = "test-service-key";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The config of the e2e tests: the three example plugins, as in gateway.toml.
pub fn config(extra: &str) -> Config {
    node_config("test", extra)
}

/// [`config`] for the node `node` (node ids must differ within a cluster).
pub fn node_config(node: &str, extra: &str) -> Config {
    let fixtures = switchyard_fixtures::dir();
    let text = format!(
        r#"
{extra}
[auth]
jwt_hs256_secret = "{SECRET}"
service_keys = ["{SERVICE_KEY}"]
admin_token = "{ADMIN_TOKEN}"
[server]
node_id = "{node}"
allowed_origins = ["http://allowed.example"]

[[plugins]]
name = "acl"
path = "{acl}"
[plugins.config]
default = "deny"
rules = [
  {{ topic = "chat.room.{{room}}", actions = ["subscribe", "publish"], claim = "rooms", claim_value = "{{room}}" }},
  {{ topic = "dm.*", actions = ["publish"] }},
  {{ topic = "admin.>", roles = ["admin"] }},
  {{ topic = "news.>" }},
]

[[plugins]]
name = "chat-router"
path = "{router}"
topics = ["chat.>", "dm.*"]

[[plugins]]
name = "redact"
path = "{redact}"
topics = ["chat.>"]
[plugins.config]
fields = ["email"]
reveal_roles = ["support"]
"#,
        acl = fixtures.join("acl.wasm").display(),
        router = fixtures.join("chat_router.wasm").display(),
        redact = fixtures.join("redact.wasm").display(),
    );
    Config::from_toml_str(&text).expect("test config")
}

/// Waits until `cond` holds, polling.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST body` to the publish endpoint `url` with the service key: the
/// status and the answer.
pub async fn publish_to(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(url)
        .bearer_auth(SERVICE_KEY)
        .json(&body)
        .send()
        .await
        .expect("publish");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    http: reqwest::Client,
    _store: Option<tempfile::TempDir>,
}

/// A fresh PostgreSQL database on this machine's server, for one test.
pub async fn fresh_postgres() -> String {
    use sqlx::Connection;
    let base = std::env::var("SWITCHYARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let name = format!("sy_test_{}", rand_suffix());
    let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("the PostgreSQL server on 127.0.0.1:5432 answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    format!("{base}/{name}")
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

impl TestGateway {
    /// Starts a gateway on 127.0.0.1:0 with `config`.
    pub async fn start(mut config: Config) -> Self {
        // `RUST_LOG=switchyard_host=debug cargo test ...` shows the gateway's log.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        // Each gateway its own SQLite file, unless the test chose a store.
        let store_dir = if config.store.url == StoreConfig::default().url {
            let dir = tempfile::tempdir().expect("store dir");
            config.store.url = format!("sqlite://{}", dir.path().join("sy.db").display());
            Some(dir)
        } else {
            None
        };
        let specs = config.plugins.clone();
        let per_plugin = config.runtime.instances_per_plugin;
        // Plugin loading runs synchronous calls: keep it off the async workers.
        let (engine, plugins) = tokio::task::spawn_blocking(move || {
            let engine = PluginEngine::new(EngineSettings {
                pool_instances: 64,
                ..EngineSettings::default()
            })
            .expect("engine");
            let plugins = PluginSet::load(&engine, None, &specs, per_plugin).expect("plugins");
            (engine, plugins)
        })
        .await
        .expect("load");
        let listener =
            switchyard_host::server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gateway = Gateway::start(config, engine, plugins)
            .await
            .expect("gateway");
        let gw = gateway.clone();
        tokio::spawn(async move {
            let _ = switchyard_host::server::run(listener, gw, std::future::pending()).await;
        });
        TestGateway {
            addr,
            gateway,
            http: reqwest::Client::new(),
            _store: store_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes with the service key; returns the status and body.
    /// Publishes without waiting for the answer, which the local bus gives
    /// once the event is durable (after a slow router, too): returns once
    /// the event has its id (or was answered), the handle yields the answer.
    pub async fn publish_unanswered(&self, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
        let assigned = async || {
            let p = self.gateway.bus.partitions().await.expect("partitions");
            p["last_assigned"].clone()
        };
        let before = assigned().await;
        let (http, url) = (self.http.clone(), self.url("/v1/publish"));
        let answer = tokio::spawn(async move { publish_to(&http, &url, body).await });
        eventually(
            "the event has its id",
            Duration::from_secs(10),
            async || answer.is_finished() || assigned().await != before,
        )
        .await;
        answer
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        publish_to(&self.http, &self.url("/v1/publish"), body).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("post");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete_as(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("delete");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, None).await
    }

    /// GET returning the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("get");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Opens a WebSocket with a bearer token and reads the welcome.
    pub async fn ws(&self, token: &str) -> Ws {
        Ws::connect(&self.addr.to_string(), token).await
    }

    /// Tries an upgrade with extra headers; returns the HTTP status on refusal.
    pub async fn ws_refused(&self, path: &str, headers: &[(&str, String)]) -> (u16, Value) {
        let mut req = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .expect("request");
        for (k, v) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().expect("name");
            req.headers_mut().insert(name, v.parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => panic!("the upgrade should have been refused"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null));
                (resp.status().as_u16(), body.unwrap_or(Value::Null))
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// A raw STOMP-over-WebSocket connection (subprotocol `v12.stomp`), not yet CONNECTed.
    pub async fn stomp_raw(&self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        clients::stomp_socket(&self.addr.to_string()).await
    }

    /// Opens an SSE stream.
    pub async fn sse(&self, query: &str, token: Option<&str>) -> Sse {
        let mut req = self.http.get(self.url(&format!("/v1/sse?{query}")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status().as_u16(), 200, "sse refused");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// An SSE stream opened with one extra request header (`Last-Event-ID`).
    pub async fn sse_with_header(
        &self,
        query: &str,
        token: Option<&str>,
        header: (&str, &str),
    ) -> Sse {
        let mut req = self
            .http
            .get(self.url(&format!("/v1/sse?{query}")))
            .header(header.0, header.1);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status().as_u16(), 200, "sse refused");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    pub async fn sse_status(&self, query: &str, token: Option<&str>) -> u16 {
        let mut req = self.http.get(self.url(&format!("/v1/sse?{query}")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("sse").status().as_u16()
    }
}

/// A JWT signed with the test secret, valid for an hour unless `claims` says otherwise.
pub fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TestGateway {
    /// The value of an unlabelled series in `/metrics` (panics if absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get_text("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or_else(|| panic!("{name} missing:\n{text}"), |v| v as u64)
    }
}

/// The config of cluster node `node`: the NATS bus on `nats_url` and the
/// shared store at `store_url`.
pub fn cluster_node(node: &str, nats_url: String, store_url: &str) -> Config {
    node_config(
        node,
        &format!(
            "{}\n[store]\nurl = {store_url:?}\n",
            nats::bus_section(&[nats_url], 1)
        ),
    )
}

/// Installs the npm packages of `dir` (a folder under tests/) once; tests
/// running in parallel wait for the first.
pub fn npm_install(dir: &std::path::Path, marker: &str) {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir.join("node_modules").join(marker).exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
            "--silent",
        ])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("npm install in {}: {e}", dir.display()));
    assert!(status.success(), "npm install in {} failed", dir.display());
}
