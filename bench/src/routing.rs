//! Scenario `routing`: how fast one topic is routed. Events are published
//! into JetStream as fast as its acknowledgements allow (a window of
//! publishes in flight) and one session counts them. Beside it, in the same
//! run, nats-server alone does the least any JetStream router must: the
//! same publishes into a stream, pulled and acknowledged by one consumer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::payload;
use crate::target::{self, Kind, Options, Server};

/// The topic routed.
pub const TOPIC: &str = "bench.hot";
/// Publishes awaiting their JetStream acknowledgement.
pub const WINDOW: usize = 4096;
/// A run stops waiting once nothing arrived for this long.
const STALL: Duration = Duration::from_secs(10);

/// How events reach Switchyard's ingest stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Raw `sy.in.<topic>`, moved to its partition by the relay.
    Relay,
    /// Straight to the partition's subject `sy.ip.<p>.<topic>` (what a
    /// server mapping or an HTTP publish does).
    Partition,
}

/// One run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Events published.
    pub published: u64,
    /// Distinct events that arrived (routed and delivered, or pulled and
    /// acked).
    pub arrived: u64,
    /// Arrivals of an event that had arrived already.
    pub duplicates: u64,
    /// Events the session was told it missed (a slow session's drops).
    pub told_dropped: u64,
    /// From the first publish to the last arrival.
    pub seconds: f64,
    /// CPU seconds of the target's processes over the run.
    pub cpu_s: f64,
}

impl Outcome {
    /// Arrivals per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.arrived as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// nats-server's `{{partition(n, …)}}` of a topic: FNV-1a 32 over its
/// tokens without the dots, modulo `n`.
pub fn partition(topic: &str, n: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in topic.bytes().filter(|b| *b != b'.') {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % n
}

/// Publishes `n` payloads of `size` bytes (sequence numbers from `first`)
/// on `subject`, at most [`WINDOW`] unacknowledged.
async fn publish(
    js: &async_nats::jetstream::Context,
    subject: String,
    first: u64,
    n: u64,
    size: usize,
) -> anyhow::Result<()> {
    let mut acks = VecDeque::with_capacity(WINDOW);
    for seq in first..first + n {
        let body = payload::make(seq, payload::now_ns(), size);
        acks.push_back(js.publish(subject.clone(), body.into()).await?);
        if acks.len() >= WINDOW
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Frames as they arrive, whatever carried them.
type Frames = std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>;

/// What arrived of a run.
struct Arrivals {
    distinct: u64,
    duplicates: u64,
    /// Events the session was told it missed (`events_dropped`).
    told_dropped: u64,
    last: Instant,
}

/// The `count` of an `events_dropped` error frame.
fn told_dropped(frame: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(frame).ok()?;
    (v.get("code")?.as_str()? == "events_dropped")
        .then(|| v.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
}

/// Counts payloads with a sequence number from `first` in `frames` until
/// `n` distinct ones arrived or none did for [`STALL`].
async fn count(frames: &mut Frames, first: u64, n: u64) -> Arrivals {
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut dropped = 0;
    let mut last = Instant::now();
    while (seen.len() as u64) < n {
        match tokio::time::timeout(STALL, frames.next()).await {
            Ok(Some(frame)) => {
                if frame.starts_with(b"{\"op\":\"error") {
                    dropped += told_dropped(&frame).unwrap_or(0);
                }
                payload::scan(&frame, |seq, _| {
                    if seq >= first && !seen.insert(seq) {
                        duplicates += 1;
                    }
                });
                last = Instant::now();
            }
            Ok(None) | Err(_) => break,
        }
    }
    Arrivals {
        distinct: seen.len() as u64,
        duplicates,
        told_dropped: dropped,
        last,
    }
}

/// Switchyard on NATS and PostgreSQL, one node, one session on [`TOPIC`].
pub async fn switchyard(
    entry: Entry,
    n: u64,
    size: usize,
    bin_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Outcome> {
    let options = Options {
        backplane: true,
        bin_dir,
        ..Options::default()
    };
    let server = Server::start(Kind::Switchyard, &options).await?;
    let url = server.nats_url.clone().context("a backplane")?;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    let bearer = target::bearer(&server, "bench-router");
    let ws = target::session(
        &server,
        0,
        [127, 0, 0, 1].into(),
        bearer.as_deref(),
        &[TOPIC.to_owned()],
    )
    .await?;
    let (_sink, source) = ws.split();
    let mut frames: Frames = Box::pin(source.map(|m| match m {
        Ok(Message::Text(t)) => t.as_bytes().to_vec(),
        _ => Vec::new(),
    }));
    let subject = match entry {
        Entry::Relay => format!("sy.in.{TOPIC}"),
        Entry::Partition => format!("sy.ip.{}.{TOPIC}", partition(TOPIC, 64)),
    };
    // Until one event goes through, the node may still be taking its
    // partitions (and the relay).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut warm = 0;
    loop {
        publish(&js, subject.clone(), warm, 1, size).await?;
        warm += 1;
        if tokio::time::timeout(Duration::from_millis(500), frames.next())
            .await
            .is_ok_and(|f| f.is_some())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("no event was routed within 60 s");
        }
    }
    let first = 1_000_000;
    run(&server, &js, subject, first, n, size, frames).await
}

/// nats-server with JetStream alone: a WorkQueue stream on [`TOPIC`] in
/// files (as Switchyard's ingest stream), one pull consumer acknowledging
/// each message.
pub async fn nats_server(n: u64, size: usize) -> anyhow::Result<Outcome> {
    let options = Options {
        jetstream: true,
        ..Options::default()
    };
    let server = Server::start(Kind::Nats, &options).await?;
    let url = server.nats_url.clone().context("a client listener")?;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".to_owned(),
            subjects: vec![TOPIC.to_owned()],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("router".to_owned()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    let frames: Frames = Box::pin(messages.then(|m| async move {
        match m {
            Ok(m) => {
                let body = m.payload.to_vec();
                let _ = m.ack().await;
                body
            }
            Err(_) => Vec::new(),
        }
    }));
    run(&server, &js, TOPIC.to_owned(), 0, n, size, frames).await
}

async fn run(
    server: &Server,
    js: &async_nats::jetstream::Context,
    subject: String,
    first: u64,
    n: u64,
    size: usize,
    mut frames: Frames,
) -> anyhow::Result<Outcome> {
    let cpu = server.cpu_seconds();
    let start = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish(&js, subject, first, n, size).await })
    };
    let arrivals = count(&mut frames, first, n).await;
    publisher.await??;
    Ok(Outcome {
        published: n,
        arrived: arrivals.distinct,
        duplicates: arrivals.duplicates,
        told_dropped: arrivals.told_dropped,
        seconds: arrivals.last.duration_since(start).as_secs_f64(),
        cpu_s: server.cpu_seconds() - cpu,
    })
}

/// The table of a run: each row's rate beside nats-server's.
pub fn table(rows: &[(String, Outcome)], base: &str) -> String {
    let b = rows
        .iter()
        .find(|(l, _)| l == base)
        .map_or(0.0, |(_, o)| o.rate());
    let mut t = String::from(
        "| target | published | arrived | duplicates | told dropped | seconds | events/s | vs nats-server | target CPU µs/event |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (label, o) in rows {
        let vs = if b > 0.0 {
            format!("{:.2}×", o.rate() / b)
        } else {
            "–".to_owned()
        };
        let cpu = if o.arrived > 0 {
            o.cpu_s * 1e6 / o.arrived as f64
        } else {
            0.0
        };
        t.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {:.2} | {:.0} | {vs} | {cpu:.1} |\n",
            o.published,
            o.arrived,
            o.duplicates,
            o.told_dropped,
            o.seconds,
            o.rate()
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_the_servers_mapping_function() {
        // nats-server's documented examples: customerid1..6 over 3.
        let got: Vec<u32> = (1..=6)
            .map(|i| partition(&format!("customerid{i}"), 3))
            .collect();
        assert_eq!(got, [0, 2, 1, 2, 1, 0]);
        // foo.1.a, foo.1.b, foo.2.b, foo.2.a over 10 (tokens 2 and 3).
        let got: Vec<u32> = ["1.a", "1.b", "2.b", "2.a"]
            .iter()
            .map(|t| partition(t, 10))
            .collect();
        assert_eq!(got, [1, 0, 9, 2]);
    }
}
