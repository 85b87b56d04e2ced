//! HTTP publishes with a fixed number in flight, answered once durable
//! (the default) or once queued (`store.durable_ack = false`, as before
//! durable acknowledgements), on the local bus with SQLite or PostgreSQL:
//! publish rate, answer latency, and the history writer's events per
//! commit and mean commit time (from `/metrics`).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hdrhistogram::Histogram;

use crate::target::{ADMIN_TOKEN, Kind, Options, SERVICE_KEY, Server};

/// Topics published to (each keeps history, as by default).
const TOPICS: usize = 100;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Publishes {
    /// Answered 200.
    pub ok: u64,
    /// Answered otherwise, or not at all.
    pub failed: u64,
    /// 200s per second.
    pub per_s: f64,
    /// Answer latency percentiles (µs): p50, p99, p99.9.
    pub latency_us: [u64; 3],
    /// Events the history writer wrote per commit.
    pub per_commit: f64,
    /// Mean time of one commit (µs).
    pub commit_us: f64,
}

/// The history writer's counters: written, commits, µs in commits.
async fn writer_counters(http: &reqwest::Client, base: &str) -> anyhow::Result<[f64; 3]> {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok([
        value("switchyard_history_written_total"),
        value("switchyard_history_commits_total"),
        value("switchyard_history_commit_microseconds_total"),
    ])
}

/// `in_flight` publishers, each posting its next event as soon as the
/// last is answered, for `duration`.
pub async fn run(
    options: &Options,
    in_flight: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<Publishes> {
    let server = Server::start(Kind::Switchyard, options).await?;
    let base = format!("http://{}", server.ws_addrs[0]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()?;
    let data = "x".repeat(size);
    let before = writer_counters(&http, &base).await?;
    let began = Instant::now();
    let deadline = began + duration;
    let publishers = (0..in_flight).map(|p| {
        let (http, base, data) = (http.clone(), base.clone(), data.clone());
        async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut n = 0usize;
            while Instant::now() < deadline {
                n += 1;
                let body = serde_json::json!({
                    "topic": format!("pub.t{}", (p * 7 + n) % TOPICS),
                    "data": data,
                });
                let sent = Instant::now();
                let answer = http
                    .post(format!("{base}/v1/publish"))
                    .bearer_auth(SERVICE_KEY)
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        ok += 1;
                        let _ = hist.record(sent.elapsed().as_micros() as u64);
                    }
                    _ => failed += 1,
                }
            }
            (hist, ok, failed)
        }
    });
    let results = join_all(publishers).await;
    let elapsed = began.elapsed().as_secs_f64();
    let after = writer_counters(&http, &base).await?;
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut ok, mut failed) = (0, 0);
    for (h, o, f) in results {
        hist.add(h)?;
        ok += o;
        failed += f;
    }
    let written = after[0] - before[0];
    let commits = (after[1] - before[1]).max(1.0);
    drop(server);
    Ok(Publishes {
        ok,
        failed,
        per_s: ok as f64 / elapsed,
        latency_us: [0.5, 0.99, 0.999].map(|q| hist.value_at_quantile(q)),
        per_commit: written / commits,
        commit_us: (after[2] - before[2]) / commits,
    })
}

/// The table: each row beside the queued-ack row of its store.
pub fn table(rows: &[(String, bool, Publishes)]) -> String {
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    let mut t = String::from(
        "| store, acks | publishes/s | vs queued | failed | latency p50 / p99 / p99.9 ms | events per commit | mean commit ms | p99 − queued p99, in commits |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (label, queued, p) in rows {
        let store = label.split(',').next().unwrap_or_default();
        let base = rows
            .iter()
            .find(|(l, q, _)| *q && l.split(',').next() == Some(store))
            .map(|(_, _, b)| b);
        let (rate, extra) = match (base, queued) {
            (Some(b), false) => (
                format!("{:.2}×", p.per_s / b.per_s.max(1e-9)),
                format!(
                    "{:.1}",
                    (p.latency_us[1] as f64 - b.latency_us[1] as f64) / p.commit_us.max(1.0)
                ),
            ),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        t.push_str(&format!(
            "| {label} | {:.0} | {rate} | {} | {} / {} / {} | {:.1} | {:.2} | {extra} |\n",
            p.per_s,
            p.failed,
            ms(p.latency_us[0]),
            ms(p.latency_us[1]),
            ms(p.latency_us[2]),
            p.per_commit,
            p.commit_us / 1000.0,
        ));
    }
    t
}
