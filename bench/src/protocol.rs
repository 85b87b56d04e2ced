//! How a client session and a publisher talk to each server under test.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::target::{Kind, SECRET, Server, Ws};

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

/// Opens a WebSocket to node `node` of `server` from the local address `from`.
async fn open(
    server: &Server,
    node: usize,
    from: IpAddr,
    bearer: Option<&str>,
) -> anyhow::Result<Ws> {
    let addr = server.ws_addrs[node % server.ws_addrs.len()];
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    if server.kind == Kind::Switchyard {
        let h = req.headers_mut();
        if let Some(bearer) = bearer {
            h.insert("authorization", bearer.parse()?);
        }
        h.insert("sec-websocket-protocol", "switchyard.v1".parse()?);
    }
    // 16 KiB: room for a batch of events per read without tungstenite's
    // 128 KiB default on each of thousands of client sockets.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        req,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
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

/// The `Authorization` header of `user` for `server` (Switchyard's alone),
/// made before a run: a client has its token when it connects.
pub fn bearer(server: &Server, user: &str) -> Option<String> {
    (server.kind == Kind::Switchyard).then(|| format!("Bearer {}", token(user)))
}

/// A session on node `node` (with `bearer`, [`bearer`]) subscribed to
/// `topics`: returns once the server confirmed every subscription.
pub async fn session(
    server: &Server,
    node: usize,
    from: IpAddr,
    bearer: Option<&str>,
    topics: &[String],
) -> anyhow::Result<Ws> {
    let mut ws = open(server, node, from, bearer).await?;
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
    /// A NATS client (nats-server; Switchyard on NATS: its ingest subjects).
    Nats(async_nats::Client, Kind),
    /// `PUB` messages over one WebSocket.
    Bare(Ws),
}

impl Publisher {
    /// Connects a publisher to `server` (its first node).
    pub async fn connect(server: &Server) -> anyhow::Result<Publisher> {
        let local: IpAddr = [127, 0, 0, 1].into();
        if let Some(url) = &server.nats_url {
            return Ok(Publisher::Nats(
                async_nats::connect(url.as_str()).await?,
                server.kind,
            ));
        }
        Ok(match server.kind {
            Kind::Switchyard => {
                let mut ws = open(
                    server,
                    0,
                    local,
                    self::bearer(server, "bench-publisher").as_deref(),
                )
                .await?;
                next_text(&mut ws).await?;
                let (sink, mut source) = ws.split();
                tokio::spawn(async move { while source.next().await.is_some() {} });
                Publisher::Switchyard(sink, 0)
            }
            Kind::Nats => bail!("nats-server without a client listener"),
            Kind::Bare => Publisher::Bare(open(server, 0, local, None).await?),
        })
    }

    /// Publishes `payload` (a JSON object) on `topic`; to `user` alone if
    /// given (Switchyard on NATS: the `Sy-To-Users` ingest header; the peers
    /// have no users: their sessions subscribe to the topic instead).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        user: Option<&str>,
    ) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client, Kind::Switchyard) => {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(user) = user {
                    headers.insert("Sy-To-Users", user);
                }
                client
                    .publish_with_headers(
                        format!("sy.in.{topic}"),
                        headers,
                        bytes::Bytes::from(payload.to_owned()),
                    )
                    .await?;
            }
            Publisher::Switchyard(_, _) if user.is_some() => {
                bail!("user-addressed events need Switchyard on NATS (two_nodes)")
            }
            Publisher::Switchyard(sink, n) => {
                *n += 1;
                sink.feed(Message::text(format!(
                    r#"{{"op":"publish","id":{n},"topic":"{topic}","data":{payload}}}"#
                )))
                .await?;
            }
            Publisher::Nats(client, _) => {
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
            Publisher::Nats(client, _) => client.flush().await?,
            Publisher::Bare(ws) => ws.flush().await?,
        }
        Ok(())
    }
}
