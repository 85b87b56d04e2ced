//! A run of the fault suite: publishers on a few streams and subscribers
//! over every protocol, warmed up before the fault, settled after it, then
//! checked. Each run prints a row of the fault table (and appends it to the
//! file `SWITCHYARD_FAULT_TABLE` names, for `scripts/faults`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::checker::{Acks, Verdict, check};
use crate::publisher::Publisher;
use crate::subscriber::{Protocol, Subscriber};
use crate::support::token;

/// How a run is shaped.
pub struct Shape {
    pub streams: usize,
    /// Subscribers per protocol.
    pub per_protocol: usize,
    /// A publisher's pause between acknowledged publishes.
    pub every: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            streams: 4,
            per_protocol: 2,
            every: Duration::from_millis(20),
        }
    }
}

/// How long to publish after the fault: longer under `scripts/faults`.
pub fn after_fault() -> Duration {
    std::env::var("SWITCHYARD_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs)
}

/// How often to repeat a fault: more under `scripts/faults`.
pub fn rounds() -> usize {
    std::env::var("SWITCHYARD_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

pub struct Workload {
    acks: Arc<Mutex<Acks>>,
    publishers: Vec<Publisher>,
    subscribers: Vec<Subscriber>,
    stop_publishing: CancellationToken,
    stop_following: CancellationToken,
    start: Instant,
}

impl Workload {
    /// Starts subscribers on `follow` (addresses tried in turn, per
    /// protocol), waits until each is subscribed, starts the publishers on
    /// `publish_to`, and waits until every subscriber has had an event of
    /// every stream (so each holds a cursor before the fault).
    pub async fn start(
        name: &str,
        publish_to: Vec<String>,
        follow: impl Fn(Protocol) -> Vec<String>,
        shape: Shape,
    ) -> Self {
        let streams: Vec<String> = (0..shape.streams)
            .map(|i| format!("news.{name}.s{i}"))
            .collect();
        let stop_following = CancellationToken::new();
        let mut subscribers = Vec::new();
        for protocol in Protocol::ALL {
            for i in 0..shape.per_protocol {
                let user = format!("{}-{i}", protocol.as_str());
                subscribers.push(Subscriber::start(
                    protocol,
                    follow(protocol),
                    token(json!({ "sub": user })),
                    streams.clone(),
                    stop_following.clone(),
                ));
            }
        }
        let limit = Instant::now() + Duration::from_secs(30);
        while !subscribers.iter().all(Subscriber::subscribed) {
            assert!(
                Instant::now() < limit,
                "{name}: subscribers did not subscribe"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acks = Arc::new(Mutex::new(Acks::default()));
        let stop_publishing = CancellationToken::new();
        let publishers: Vec<Publisher> = streams
            .iter()
            .map(|s| {
                Publisher::start(
                    s.clone(),
                    publish_to.clone(),
                    shape.every,
                    acks.clone(),
                    stop_publishing.clone(),
                )
            })
            .collect();
        let first: HashMap<String, u64> = streams.iter().map(|s| (s.clone(), 1)).collect();
        while !subscribers.iter().all(|s| s.has_all(&first)) {
            assert!(Instant::now() < limit, "{name}: no first event everywhere");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Workload {
            acks,
            publishers,
            subscribers,
            stop_publishing,
            stop_following,
            start: Instant::now(),
        }
    }

    /// Waits until every publisher had `n` more publishes acknowledged (the
    /// run goes on through a fault until it has).
    pub async fn published(&self, n: u64) {
        let target: Vec<u64> = self.publishers.iter().map(|p| p.acked() + n).collect();
        let limit = Instant::now() + Duration::from_secs(60);
        while self
            .publishers
            .iter()
            .zip(&target)
            .any(|(p, &t)| p.acked() < t)
        {
            assert!(Instant::now() < limit, "publishing did not go on");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes for `d` more (at least a few events per stream).
    pub async fn publish_for(&self, d: Duration) {
        let until = Instant::now() + d;
        self.published(3).await;
        tokio::time::sleep_until(until.into()).await;
    }

    /// Stops publishing, waits up to `settle` for every subscriber to have
    /// every acknowledged event, stops them and checks: one verdict per
    /// protocol, printed as rows of the table under `fault`.
    pub async fn finish(self, fault: &str, settle: Duration) -> Vec<(Protocol, Verdict)> {
        self.stop_publishing.cancel();
        for p in self.publishers {
            p.finish().await;
        }
        let end = Instant::now();
        let acks = self.acks.lock().expect("acks").clone();
        let wanted: HashMap<String, u64> = acks
            .by_stream
            .iter()
            .map(|(s, a)| (s.clone(), a.len() as u64))
            .collect();
        let limit = Instant::now() + settle;
        while Instant::now() < limit && !self.subscribers.iter().all(|s| s.has_all(&wanted)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_following.cancel();
        let mut verdicts: Vec<(Protocol, Verdict)> = Vec::new();
        for protocol in Protocol::ALL {
            let mut v = Verdict::default();
            for s in self.subscribers.iter().filter(|s| s.protocol == protocol) {
                let seen = s.seen.lock().expect("seen").clone();
                v.merge(check(&acks, &s.streams, &seen, (self.start, end)));
            }
            verdicts.push((protocol, v));
        }
        report(fault, &verdicts);
        verdicts
    }
}

impl Workload {
    /// Publishes a while after the fault, then checks: every protocol must
    /// show nothing lost, duplicated or reordered, and no reset.
    pub async fn conclude(self, fault: &str) {
        self.publish_for(after_fault()).await;
        let verdicts = self.finish(fault, SETTLE).await;
        assert_clean(fault, &verdicts);
    }
}

/// How long subscribers may take to catch up once publishing stopped.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Asserts nothing was lost, duplicated or reordered, and nothing reset.
pub fn assert_clean(fault: &str, verdicts: &[(Protocol, Verdict)]) {
    for (protocol, v) in verdicts {
        assert!(v.clean(), "{fault} over {}: {v:?}", protocol.as_str());
        assert!(
            v.expected > 0,
            "{fault} over {}: nothing was checked",
            protocol.as_str()
        );
    }
}

fn report(fault: &str, verdicts: &[(Protocol, Verdict)]) {
    let mut rows = String::new();
    for (protocol, v) in verdicts {
        rows.push_str(&format!(
            "| {fault} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            protocol.as_str(),
            v.expected,
            v.received,
            v.lost,
            v.duplicated,
            v.reordered,
            v.resets,
            v.reconnects,
            v.max_pause.as_secs_f64(),
        ));
    }
    print!("{rows}");
    if let Some(path) = std::env::var_os("SWITCHYARD_FAULT_TABLE") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut f) = file {
            let _ = f.write_all(rows.as_bytes());
        }
    }
}
