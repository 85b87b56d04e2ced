//! Helpers for tests of partitioned routing: who owns which partition as
//! `/admin/partitions` says, waiting for the cluster to settle, a steady
//! publisher and a reader that checks every event came once, in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_host::routing::partition::partition_of_str;

use super::nats::{NatsServer, bus_section};
use super::process::GatewayProcess;
use super::*;

pub const PARTITIONS: usize = 64;

/// A node on `url`; the nodes of a test share the PostgreSQL store `db`.
pub async fn node(name: &str, url: &str, db: &str) -> TestGateway {
    TestGateway::start(node_config(
        name,
        &format!(
            "{}[store]\nurl = {db:?}\n",
            bus_section(&[url.to_owned()], 1)
        ),
    ))
    .await
}

/// Every partition's owner and the relay's, as `/admin/partitions` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Owners {
    pub partitions: Vec<Option<String>>,
    pub relay: Option<String>,
}

impl Owners {
    pub fn read(v: &Value) -> Self {
        let partitions = v["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["owner"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Owners {
            partitions,
            relay: v["relay"].as_str().map(str::to_owned),
        }
    }

    /// Slots (partitions and the relay) per node.
    pub fn slots(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for o in self.partitions.iter().chain([&self.relay]).flatten() {
            *n.entry(o.clone()).or_default() += 1;
        }
        n
    }

    /// Every slot owned by one of `nodes`, none of them over its share.
    pub fn balanced_over(&self, nodes: &[&str]) -> bool {
        let cap = (PARTITIONS + 1).div_ceil(nodes.len());
        let slots = self.slots();
        self.partitions.len() == PARTITIONS
            && self
                .partitions
                .iter()
                .chain([&self.relay])
                .all(|o| o.as_deref().is_some_and(|o| nodes.contains(&o)))
            && slots.values().all(|n| *n <= cap)
    }

    /// The first of `{prefix}0`, `{prefix}1`, … whose partition `node` owns.
    pub fn topic_routed_by(&self, prefix: &str, node: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|t| {
                let p = partition_of_str(t, PARTITIONS as u16).0 as usize;
                self.partitions[p].as_deref() == Some(node)
            })
            .expect("a node that owns a partition owns some topic's")
    }

    /// The partitions whose owner differs from `before`'s.
    pub fn moved_since(&self, before: &Owners) -> Vec<(usize, Option<String>, Option<String>)> {
        (0..PARTITIONS)
            .filter(|p| self.partitions[*p] != before.partitions[*p])
            .map(|p| (p, before.partitions[p].clone(), self.partitions[p].clone()))
            .collect()
    }
}

pub async fn owners(gw: &TestGateway) -> Owners {
    let (status, v) = gw.get_as("/admin/partitions", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    Owners::read(&v)
}

/// Waits until the slots are shared out over `nodes`, as `gw` sees it.
pub async fn balanced(gw: &TestGateway, nodes: &[&str]) -> Owners {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = owners(gw).await;
        if o.balanced_over(nodes) {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not balanced over {nodes:?}: {:?}",
            last.map(|o: Owners| o.slots())
        );
        last = Some(o);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `{"t", "n"}` round-robin on `topics` through `url` until
/// `stop`, every `every`; returns the numbers acknowledged per topic.
pub fn publisher(
    url: String,
    topics: Vec<String>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<HashMap<String, Vec<u64>>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut sent: HashMap<String, Vec<u64>> = HashMap::new();
        let mut n = 0u64;
        while !stop.is_cancelled() {
            let topic = &topics[(n as usize) % topics.len()];
            let resp = http
                .post(&url)
                .bearer_auth(SERVICE_KEY)
                .json(&json!({"topic": topic, "data": {"t": topic, "n": n}}))
                .send()
                .await
                .expect("publish");
            assert_eq!(resp.status(), 200, "publish {n}");
            sent.entry(topic.clone()).or_default().push(n);
            acked.fetch_add(1, Ordering::Relaxed);
            n += 1;
            tokio::time::sleep(every).await;
        }
        sent
    })
}

/// What a session received, per topic, and the longest a topic went
/// without an event.
pub struct Received {
    got: HashMap<String, Vec<u64>>,
    longest_topic_silence: Duration,
}

/// Reads `ws` while events are published, until as many as `total` says
/// have come (or nothing comes for 30 s).
pub fn reader(
    mut ws: Ws,
    total: tokio::sync::watch::Receiver<Option<usize>>,
) -> tokio::task::JoinHandle<Received> {
    tokio::spawn(async move {
        let mut got: HashMap<String, Vec<u64>> = HashMap::new();
        let mut arrived: HashMap<String, Instant> = HashMap::new();
        let mut longest = Duration::ZERO;
        let mut count = 0;
        let mut quiet_since = Instant::now();
        loop {
            if total.borrow().is_some_and(|t| count >= t) {
                break;
            }
            let Some(e) = ws.next_event_within(Duration::from_millis(500)).await else {
                if total.borrow().is_some() && quiet_since.elapsed() > Duration::from_secs(30) {
                    break;
                }
                continue;
            };
            quiet_since = Instant::now();
            let topic = e["data"]["t"].as_str().expect("t").to_owned();
            let n = e["data"]["n"].as_u64().expect("n");
            if let Some(at) = arrived.insert(topic.clone(), Instant::now()) {
                longest = longest.max(at.elapsed());
            }
            got.entry(topic).or_default().push(n);
            count += 1;
        }
        Received {
            got,
            longest_topic_silence: longest,
        }
    })
}

/// Stops the publisher, lets the reader finish, and checks that every
/// acknowledged event came once, in order per topic; returns the longest
/// silence of a topic.
pub async fn every_event_once_in_order(
    stop: tokio_util::sync::CancellationToken,
    publishing: tokio::task::JoinHandle<HashMap<String, Vec<u64>>>,
    total: tokio::sync::watch::Sender<Option<usize>>,
    reading: tokio::task::JoinHandle<Received>,
) -> Duration {
    stop.cancel();
    let sent = publishing.await.expect("publisher");
    total.send_replace(Some(sent.values().map(Vec::len).sum()));
    let received = reading.await.expect("reader");
    for (topic, s) in &sent {
        let got = received.got.get(topic).cloned().unwrap_or_default();
        assert_eq!(&got, s, "{topic}: every event once, in order");
    }
    assert_eq!(received.got.len(), sent.len(), "no event of another topic");
    received.longest_topic_silence
}

pub async fn subscribed_to(gw: &TestGateway, topics: &[String]) -> Ws {
    let mut ws = gw.ws(&token(json!({"sub": "watcher"}))).await;
    for (i, t) in topics.iter().enumerate() {
        let ack = ws
            .request(json!({"op": "subscribe", "id": i + 1, "topic": t}))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    ws
}

/// Topics spread over many partitions, and which of them `owner` routes.
pub fn topics_over(owners: &Owners, owner: &str) -> (Vec<String>, usize) {
    let topics: Vec<String> = (0..16).map(|i| format!("news.k{i}")).collect();
    let theirs = topics
        .iter()
        .filter(|t| {
            let p = partition_of_str(t, PARTITIONS as u16).0 as usize;
            owners.partitions[p].as_deref() == Some(owner)
        })
        .count();
    (topics, theirs)
}

/// A binary node `k` and an in-process node `b` sharing the partitions.
pub async fn two_nodes(nats: &NatsServer, db: &str) -> (GatewayProcess, TestGateway, Owners) {
    let bus = format!("{}[store]\nurl = {db:?}\n", bus_section(&[nats.url()], 1));
    let k = GatewayProcess::start("k", &bus).await;
    eventually("k routes", Duration::from_secs(30), async || {
        k.metric("switchyard_bus_partitions_owned").await == Some(PARTITIONS as u64)
    })
    .await;
    let b = node("b", &nats.url(), db).await;
    let shared = balanced(&b, &["b", "k"]).await;
    (k, b, shared)
}

/// Events published steadily through one node while a session on it reads
/// them.
pub struct Steady {
    stop: tokio_util::sync::CancellationToken,
    publishing: tokio::task::JoinHandle<HashMap<String, Vec<u64>>>,
    total: tokio::sync::watch::Sender<Option<usize>>,
    reading: tokio::task::JoinHandle<Received>,
    /// Publishes acknowledged so far.
    pub acked: Arc<AtomicU64>,
}

impl Steady {
    /// Subscribes a session on `gw` to `topics` and publishes round-robin
    /// on them through `gw`, one every `every`.
    pub async fn start(gw: &TestGateway, topics: &[String], every: Duration) -> Self {
        let (total, expected) = tokio::sync::watch::channel(None);
        let reading = reader(subscribed_to(gw, topics).await, expected);
        let stop = tokio_util::sync::CancellationToken::new();
        let acked = Arc::new(AtomicU64::new(0));
        let publishing = publisher(
            gw.url("/v1/publish"),
            topics.to_vec(),
            every,
            stop.clone(),
            acked.clone(),
        );
        Steady {
            stop,
            publishing,
            total,
            reading,
            acked,
        }
    }

    /// Waits until `n` more publishes than now are acknowledged.
    pub async fn another(&self, n: u64) {
        let from = self.acked.load(Ordering::Relaxed);
        eventually("events flow", Duration::from_secs(30), async || {
            self.acked.load(Ordering::Relaxed) >= from + n
        })
        .await;
    }

    /// Stops publishing and checks every acknowledged event came once, in
    /// order per topic; returns the longest silence of a topic.
    pub async fn finish(self) -> Duration {
        every_event_once_in_order(self.stop, self.publishing, self.total, self.reading).await
    }
}
