//! The thinnest WebSocket broadcaster tokio-tungstenite allows: the
//! reference point Switchyard's cost is measured against. A client sends
//! `SUB <topic>` (answered `OK`) or `PUB <topic> <payload>`; every
//! subscriber of the topic gets the payload as one text message. One
//! writer task per session flushes everything queued in one write.
//!
//! `bare-broadcaster --listen 127.0.0.1:9000`

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames waiting per session before new ones are dropped.
const QUEUE: usize = 1024;

type Topics = Arc<RwLock<HashMap<String, Vec<mpsc::Sender<Utf8Bytes>>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr,
        _ => anyhow::bail!("usage: bare-broadcaster --listen <addr>"),
    };
    let listener = TcpListener::bind(&listen).await?;
    let topics: Topics = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(session(stream, topics.clone()));
    }
}

async fn session(stream: TcpStream, topics: Topics) {
    // Switchyard's buffer sizes (tungstenite's defaults are 128 KiB each
    // per connection).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        if let Some(topic) = text.strip_prefix("SUB ") {
            topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(topic.to_owned())
                .or_default()
                .push(tx.clone());
            let _ = tx.send(Utf8Bytes::from_static("OK")).await;
        } else if let Some(rest) = text.strip_prefix("PUB ") {
            let Some((topic, payload)) = rest.split_once(' ') else {
                continue;
            };
            let payload = Utf8Bytes::from(payload);
            let subs = topics.read().unwrap_or_else(PoisonError::into_inner);
            for s in subs.get(topic).into_iter().flatten() {
                // A full queue drops the frame: the load generator counts it lost.
                let _ = s.try_send(payload.clone());
            }
        }
    }
    writer.abort();
    let _ = writer.await;
    // The writer's queue is gone: forget every closed session's sender.
    topics
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .values_mut()
        .for_each(|v| v.retain(|s| !s.is_closed()));
}
