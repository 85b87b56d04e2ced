//! Scenario `failover`: two Switchyard nodes on NATS and PostgreSQL, a
//! session on one, events published at a steady rate on a topic the other
//! node routes; that node is SIGKILLed, and the time from the kill to the
//! first delivery of an event published after it is measured. The node is
//! started again, takes its share back, and the next kill follows.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::payload;
use crate::routing::{TOPIC, partition};
use crate::target::{self, ADMIN_TOKEN, Kind, Options, Server};

/// Events published per second during a kill.
const RATE: u64 = 200;
/// The longest a kill is waited out.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The node that routes `TOPIC`'s partition, once both nodes own some.
async fn owner(server: &Server, http: &reqwest::Client) -> anyhow::Result<usize> {
    let part = u64::from(partition(TOPIC, 64));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for addr in &server.ws_addrs {
            let Ok(r) = http
                .get(format!("http://{addr}/admin/partitions"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            else {
                continue;
            };
            let Ok(body) = r.json::<serde_json::Value>().await else {
                continue;
            };
            let balanced = body["owned"]
                .as_object()
                .is_some_and(|o| o.len() == 2 && o.values().all(|n| n.as_u64() >= Some(30)));
            let owner = body["partitions"][part as usize]["owner"].as_str();
            if balanced && let Some(owner) = owner {
                let node = owner
                    .strip_prefix("bench-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .context("a bench node id")?;
                return Ok(node);
            }
        }
        if Instant::now() > deadline {
            bail!("the partitions were not shared out over both nodes within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes on the topic's partition subject at [`RATE`] until dropped.
async fn publish(url: String, mut seq: u64) -> anyhow::Result<()> {
    let client = async_nats::connect(url.as_str()).await?;
    let subject = format!("sy.ip.{}.{TOPIC}", partition(TOPIC, 64));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    loop {
        tick.tick().await;
        let body = payload::make(seq, payload::now_ns(), 256);
        client.publish(subject.clone(), body.into()).await?;
        seq += 1;
    }
}

/// Seconds from each of `kills` SIGKILLs to the first delivery of an event
/// published after it.
pub async fn run(kills: usize, bin_dir: Option<std::path::PathBuf>) -> anyhow::Result<Vec<f64>> {
    let options = Options {
        two_nodes: true,
        bin_dir,
        ..Options::default()
    };
    let mut server = Server::start(Kind::Switchyard, &options).await?;
    let url = server.nats_url.clone().context("a backplane")?;
    let http = reqwest::Client::new();
    let mut times = Vec::with_capacity(kills);
    for k in 0..kills {
        let victim = owner(&server, &http).await?;
        let survivor = 1 - victim;
        let bearer = target::bearer(&server, "bench-failover");
        let ws = target::session(
            &server,
            survivor,
            [127, 0, 0, 1].into(),
            bearer.as_deref(),
            &[TOPIC.to_owned()],
        )
        .await?;
        let (_sink, mut frames) = ws.split();
        let publisher = tokio::spawn(publish(url.clone(), (k as u64 + 1) * 1_000_000));
        // An event routed before the kill: the session is live.
        let mut routed = false;
        while !routed {
            match tokio::time::timeout(GIVE_UP, frames.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => payload::scan(t.as_bytes(), |_, _| routed = true),
                Ok(Some(Ok(_))) => {}
                _ => bail!("kill {k}: nothing routed before the kill"),
            }
        }
        server.kill_node(victim).await?;
        let killed = payload::now_ns();
        let started = Instant::now();
        let mut took = None;
        while took.is_none() {
            let left = GIVE_UP.saturating_sub(started.elapsed());
            let t = match tokio::time::timeout(left, frames.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                // Closed, failed, or out of time.
                _ => break,
            };
            payload::scan(t.as_bytes(), |_, sent| {
                if sent > killed && took.is_none() {
                    took = Some((payload::now_ns() - killed) as f64 / 1e9);
                }
            });
        }
        publisher.abort();
        let took = took.with_context(|| format!("kill {k}: nothing routed within 30 s"))?;
        eprintln!("  kill {k}: node {victim}, {took:.2} s");
        times.push(took);
        server.restart_node(victim).await?;
    }
    Ok(times)
}

/// The table of a run.
pub fn table(times: &[f64]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let within = |s: f64| times.iter().filter(|t| **t <= s).count();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let each: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    format!(
        "| kills | within 3 s | within 5 s | median s | max s | each, s |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} | {median:.2} | {max:.2} | {} |\n",
        times.len(),
        within(3.0),
        within(5.0),
        each.join(", ")
    )
}
