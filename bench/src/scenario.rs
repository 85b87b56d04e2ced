//! One scenario against one server: open the sessions, measure memory,
//! publish at a fixed rate, wait for the deliveries, measure again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::clients::{self, Tally};
use crate::payload;
use crate::procfs;
use crate::target::{Kind, Options, Publisher, Server};

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Sessions.
    pub sessions: usize,
    /// Topics; session `i` subscribes to `bench.<i % topics>`.
    pub topics: usize,
    /// Events per second (0: none, an idle run).
    pub rate: u64,
    /// How long events are published.
    pub duration: Duration,
    /// Payload bytes.
    pub size: usize,
    /// Direct messages: session `i` is user `user<i>` and subscribes to
    /// nothing (the peers, which have no users, subscribe it to
    /// `dm.user<i>`); event `k` goes to user `k % sessions` alone, on topic
    /// `dm.user<k % sessions>`. `topics` is ignored.
    pub direct: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sessions opened.
    pub opened: usize,
    /// Sessions refused or failed.
    pub failures: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Seconds to open them all.
    pub connect_s: f64,
    /// Server RSS before any session (KiB).
    pub rss_start_kib: u64,
    /// Server RSS with every session open, idle (KiB).
    pub rss_idle_kib: u64,
    /// Server peak RSS (KiB).
    pub rss_peak_kib: u64,
    /// Events published.
    pub published: u64,
    /// Deliveries expected (events × subscribers).
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_s: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
    /// Server CPU seconds while publishing and delivering.
    pub server_cpu_s: f64,
    /// Load generator CPU seconds over the same time.
    pub loadgen_cpu_s: f64,
    /// Wall seconds of that window.
    pub window_s: f64,
    /// Sessions the server closed during the run.
    pub ended: u64,
}

impl Outcome {
    /// Deliveries lost.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Server CPU per delivery, µs.
    pub fn cpu_per_delivery_us(&self) -> f64 {
        if self.received == 0 {
            return 0.0;
        }
        self.server_cpu_s * 1e6 / self.received as f64
    }

    /// Idle memory per session, KiB.
    pub fn kib_per_session(&self) -> f64 {
        if self.opened == 0 {
            return 0.0;
        }
        self.rss_idle_kib.saturating_sub(self.rss_start_kib) as f64 / self.opened as f64
    }
}

fn topic(i: usize) -> String {
    format!("bench.{i}")
}

/// Runs `spec` against a fresh `kind` server.
pub async fn run(kind: Kind, options: &Options, spec: &Spec) -> anyhow::Result<Outcome> {
    let server = Arc::new(Server::start(kind, options).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = Outcome {
        rss_start_kib: server.rss_kib(),
        ..Outcome::default()
    };
    let tally = Tally::new();
    let topics = spec.topics.max(1);
    let direct = spec.direct;
    let sessions = clients::open(
        &server,
        spec.sessions,
        |i| match (direct, kind) {
            (false, _) => vec![topic(i % topics)],
            (true, Kind::Switchyard) => Vec::new(),
            (true, _) => vec![format!("dm.user{i}")],
        },
        512,
        &tally,
    )
    .await;
    out.failures = sessions.failures;
    out.first_error = sessions.first_error.clone();
    out.opened = spec.sessions - sessions.failures as usize;
    out.connect_s = sessions.elapsed.as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.rss_idle_kib = server.rss_kib();

    if spec.rate > 0 {
        // Subscribers per topic, for the deliveries expected.
        let mut per_topic = vec![0u64; topics];
        for i in 0..out.opened {
            per_topic[i % topics] += 1;
        }
        let mut publisher = Publisher::connect(&server).await?;
        let profile = server
            .profile_port
            .map(|port| crate::profile::capture(port, spec.duration.as_secs().max(1)));
        let perf = server
            .profile_port
            .and_then(|_| crate::profile::perf(&server.pids[1..], spec.duration.as_secs().max(1)));
        let cpu0 = server.cpu_seconds();
        let me0 = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
        let t0 = Instant::now();
        let start_ns = payload::now_ns();
        let total = (spec.rate as f64 * spec.duration.as_secs_f64()) as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u64;
        while sent < total {
            tick.tick().await;
            let due = ((t0.elapsed().as_secs_f64() * spec.rate as f64) as u64 + 1).min(total);
            while sent < due {
                let body = payload::make(sent, payload::now_ns(), spec.size);
                if direct {
                    let user = format!("user{}", sent % spec.sessions.max(1) as u64);
                    publisher
                        .publish(&format!("dm.{user}"), &body, Some(&user))
                        .await?;
                    out.expected += 1;
                } else {
                    let t = (sent % topics as u64) as usize;
                    publisher.publish(&topic(t), &body, None).await?;
                    out.expected += per_topic[t];
                }
                sent += 1;
            }
            publisher.flush().await?;
        }
        out.published = sent;
        // Wait for the deliveries: done when all came, or none for 2 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = (tally.received.load(Ordering::Relaxed), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = tally.received.load(Ordering::Relaxed);
            if got >= out.expected || Instant::now() > deadline {
                break;
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        out.server_cpu_s = server.cpu_seconds() - cpu0;
        for task in profile.into_iter().chain(perf) {
            let _ = task.await;
        }
        out.loadgen_cpu_s = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0) - me0;
        out.window_s = t0.elapsed().as_secs_f64();
        out.received = tally.received.load(Ordering::Relaxed);
        let end_ns = tally.last_ns.load(Ordering::Relaxed).max(start_ns + 1);
        out.deliveries_per_s = out.received as f64 / ((end_ns - start_ns) as f64 / 1e9);
    }
    out.rss_peak_kib = server.peak_rss_kib();
    out.ended = tally.ended.load(Ordering::Relaxed);
    sessions.stop().await;
    let latency = tally.latency();
    if !latency.is_empty() {
        out.p50_us = latency.value_at_quantile(0.5);
        out.p99_us = latency.value_at_quantile(0.99);
        out.p999_us = latency.value_at_quantile(0.999);
    }
    Ok(out)
}
