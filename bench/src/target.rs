//! The servers under test, started as their own processes, and how a
//! client session and a publisher talk to each.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client's WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The HS256 secret and service key of the Switchyard under test.
pub const SECRET: &str = "switchyard-bench-secret-0123456789abcdef";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Switchyard, JSON protocol, local bus, SQLite history.
    Switchyard,
    /// nats-server's WebSocket listener, NATS text protocol.
    Nats,
    /// The bare tokio-tungstenite broadcaster of this crate.
    Bare,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchyard => "switchyard",
            Kind::Nats => "nats-server",
            Kind::Bare => "bare",
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Switchyard: load the example plugins (authorizer, router,
    /// transformer) on the benchmark topics.
    pub plugins: bool,
    /// Where the `switchyard` and `bare-broadcaster` binaries are (default:
    /// next to this one).
    pub bin_dir: Option<PathBuf>,
}

/// A running server (killed when dropped).
pub struct Server {
    /// Which.
    pub kind: Kind,
    /// Its process id.
    pub pid: u32,
    /// Where WebSocket clients connect.
    pub ws_addr: SocketAddr,
    /// nats-server: where the publisher connects.
    pub nats_url: Option<String>,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The workspace root (where `target/` is).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary in `dir`, or next to this one (built in the same profile).
fn sibling(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match dir {
        Some(d) => d.join(name),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.exists() {
        bail!(
            "{} is missing: build it in the same profile (cargo build --release -p switchyard-host -p switchyard-bench)",
            path.display()
        );
    }
    Ok(path)
}

impl Server {
    /// Starts `kind` and waits until it accepts connections.
    pub async fn start(kind: Kind, options: &Options) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let ws_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut nats_url = None;
        let mut cmd = match kind {
            Kind::Switchyard => {
                let config = dir.path().join("bench.toml");
                std::fs::write(&config, switchyard_config(port, options.plugins))?;
                let mut c = tokio::process::Command::new(sibling(
                    options.bin_dir.as_deref(),
                    "switchyard",
                )?);
                c.args(["serve", "--config"]).arg(&config);
                c.env("RUST_LOG", "warn");
                c
            }
            Kind::Nats => {
                let client_port = free_port()?;
                let config = dir.path().join("nats.conf");
                std::fs::write(
                    &config,
                    format!(
                        "listen: 127.0.0.1:{client_port}\nmax_connections: 1000000\n\
                         websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\n"
                    ),
                )?;
                nats_url = Some(format!("nats://127.0.0.1:{client_port}"));
                let mut c = tokio::process::Command::new("nats-server");
                c.arg("-c").arg(&config);
                c
            }
            Kind::Bare => {
                let mut c = tokio::process::Command::new(sibling(
                    options.bin_dir.as_deref(),
                    "bare-broadcaster",
                )?);
                c.args(["--listen", &ws_addr.to_string()]);
                c
            }
        };
        let child = cmd
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id().context("server pid")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(ws_addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not start listening on {ws_addr}", kind.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            kind,
            pid,
            ws_addr,
            nats_url,
            _child: child,
            _dir: dir,
        })
    }
}

fn switchyard_config(port: u16, plugins: bool) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
node_id = "bench"
heartbeat_s = 300
drain_timeout_s = 1

[auth]
jwt_hs256_secret = "{SECRET}"

[bus]
kind = "local"

[store]
url = "sqlite://bench.db"

[limits]
max_sessions = 1000000
accept_rate = 1000000
publish_rate = 1000000
queue_depth = 1024

[runtime]
cache_dir = "cache"
watch = false
"#
    );
    if plugins {
        let wasm = workspace().join("target/wasm/wasm32-wasip2/plugin");
        text.push_str(&format!(
            r#"
[[plugins]]
name = "acl"
path = "{acl}"
[plugins.config]
default = "deny"
rules = [{{ topic = "bench.>" }}]

[[plugins]]
name = "router"
path = "{router}"
topics = ["bench.>"]
on_error = "pass"

[[plugins]]
name = "redact"
path = "{redact}"
topics = ["bench.>"]
on_error = "drop"
[plugins.config]
fields = ["email"]
reveal_roles = ["support"]
"#,
            acl = wasm.join("acl.wasm").display(),
            router = wasm.join("chat_router.wasm").display(),
            redact = wasm.join("redact.wasm").display(),
        ));
    }
    text
}

/// A development token of `user` for the Switchyard under test.
pub fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// Opens a WebSocket to `server` from the local address `from`.
async fn open(server: &Server, from: IpAddr, user: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(server.ws_addr).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{}/v1/ws", server.ws_addr).into_client_request()?;
    if server.kind == Kind::Switchyard {
        let h = req.headers_mut();
        h.insert("authorization", format!("Bearer {}", token(user)).parse()?);
        h.insert("sec-websocket-protocol", "switchyard.v1".parse()?);
    }
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => bail!("no answer in 30 s"),
            Ok(None) => bail!("closed"),
            Ok(Some(msg)) => match msg? {
                Message::Text(t) => return Ok(t.to_string()),
                Message::Binary(b) => return Ok(String::from_utf8_lossy(&b).into_owned()),
                _ => {}
            },
        }
    }
}

/// A session of `user` subscribed to `topics`: returns once the server
/// confirmed every subscription.
pub async fn session(
    server: &Server,
    from: IpAddr,
    user: &str,
    topics: &[String],
) -> anyhow::Result<Ws> {
    let mut ws = open(server, from, user).await?;
    match server.kind {
        Kind::Switchyard => {
            let welcome = next_text(&mut ws).await?;
            if !welcome.contains("\"welcome\"") {
                bail!("expected a welcome: {welcome}");
            }
            for (i, t) in topics.iter().enumerate() {
                ws.send(Message::text(format!(
                    r#"{{"op":"subscribe","id":{i},"topic":"{t}"}}"#
                )))
                .await?;
            }
            let mut acked = 0;
            while acked < topics.len() {
                let frame = next_text(&mut ws).await?;
                if frame.contains("\"ack\"") {
                    acked += 1;
                } else if frame.contains("\"error\"") {
                    bail!("subscribe refused: {frame}");
                }
            }
        }
        Kind::Nats => {
            let info = next_text(&mut ws).await?;
            if !info.starts_with("INFO") {
                bail!("expected INFO: {info}");
            }
            let mut hello =
                String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
            for (i, t) in topics.iter().enumerate() {
                hello.push_str(&format!("SUB {t} {i}\r\n"));
            }
            hello.push_str("PING\r\n");
            ws.send(Message::binary(hello.into_bytes())).await?;
            while !next_text(&mut ws).await?.contains("PONG") {}
        }
        Kind::Bare => {
            for t in topics {
                ws.send(Message::text(format!("SUB {t}"))).await?;
            }
            let mut ok = 0;
            while ok < topics.len() {
                if next_text(&mut ws).await? == "OK" {
                    ok += 1;
                }
            }
        }
    }
    Ok(ws)
}

/// Publishes events to a server.
pub enum Publisher {
    /// `switchyard.v1` `publish` frames over one WebSocket (acks drained by
    /// a task).
    Switchyard(futures_util::stream::SplitSink<Ws, Message>, u64),
    /// A NATS client.
    Nats(async_nats::Client),
    /// `PUB` messages over one WebSocket.
    Bare(Ws),
}

impl Publisher {
    /// Connects a publisher to `server`.
    pub async fn connect(server: &Server) -> anyhow::Result<Publisher> {
        let local: IpAddr = [127, 0, 0, 1].into();
        Ok(match server.kind {
            Kind::Switchyard => {
                let mut ws = open(server, local, "bench-publisher").await?;
                next_text(&mut ws).await?;
                let (sink, mut source) = ws.split();
                tokio::spawn(async move { while source.next().await.is_some() {} });
                Publisher::Switchyard(sink, 0)
            }
            Kind::Nats => {
                let url = server.nats_url.clone().context("nats url")?;
                Publisher::Nats(async_nats::connect(url).await?)
            }
            Kind::Bare => Publisher::Bare(open(server, local, "bench-publisher").await?),
        })
    }

    /// Publishes `payload` (a JSON object) on `topic`.
    pub async fn publish(&mut self, topic: &str, payload: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Switchyard(sink, n) => {
                *n += 1;
                sink.feed(Message::text(format!(
                    r#"{{"op":"publish","id":{n},"topic":"{topic}","data":{payload}}}"#
                )))
                .await?;
            }
            Publisher::Nats(client) => {
                client
                    .publish(topic.to_owned(), bytes::Bytes::from(payload.to_owned()))
                    .await?;
            }
            Publisher::Bare(ws) => {
                ws.feed(Message::text(format!("PUB {topic} {payload}")))
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends what was fed.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Switchyard(sink, _) => sink.flush().await?,
            Publisher::Nats(client) => client.flush().await?,
            Publisher::Bare(ws) => ws.flush().await?,
        }
        Ok(())
    }
}
