//! The NATS bus: JetStream for ingest and the delivery log, a KV lease for
//! the router, core subjects per topic and user for fan-out.

mod interest;
mod leader;
mod outlet;
mod presence;

pub use outlet::Outlet;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{self, Subjects};
use super::{BusError, BusParts, BusStats, LANES};
use crate::config::Config;
use crate::pipeline::{Edge, EventStats, PublishError, Router};
use crate::routing::Event;

/// The NATS bus of one node.
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    ingest_stream: String,
    epoch: Arc<AtomicU64>,
    router: Arc<Router>,
    edge: Arc<Edge>,
    stats: Arc<BusStats>,
    events: Arc<EventStats>,
    members: Arc<presence::Members>,
    applied: watch::Receiver<u64>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Router lanes: each waits for JetStream to confirm an event's deliveries
/// before the next event of its topics, so more lanes keep more in flight.
const ROUTER_LANES: usize = 16;
/// How long a publisher waits for JetStream to confirm an event.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// The delivery log's size cap.
const DELIVERY_LOG_BYTES: i64 = 256 << 20;

fn setup(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BusError + '_ {
    move |e| BusError::Setup {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

impl NatsBus {
    /// Connects, creates the streams and the lease bucket if missing, and
    /// starts the lease, interest, dispatch and presence tasks.
    pub async fn start(config: &Config, parts: BusParts) -> Result<Self, BusError> {
        let bus = &config.bus;
        let node_id = parts.node_id.clone();
        let stats = Arc::new(BusStats::default());
        let subjects = Subjects::new(&bus.subject_prefix);
        let (link_tx, link_rx) = tokio::sync::mpsc::unbounded_channel();
        let client = connect(&bus.urls, &node_id, stats.clone(), link_tx).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client.clone());

        let ingest_stream = subjects.stream_name("IN");
        let out_stream = subjects.stream_name("OUT");
        // A cluster that just started has no JetStream leader for a few
        // seconds: retry before giving up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (epoch, lease) = loop {
            match provision(&js, bus, &subjects).await {
                Ok(p) => break p,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "JetStream not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let epoch = Arc::new(AtomicU64::new(epoch));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let outlet = Outlet::start(
            js.clone(),
            subjects.clone(),
            stats.clone(),
            parts.history.as_deref(),
            &tasks,
        );
        let router = Arc::new(Router::start(
            ROUTER_LANES,
            parts.executor.clone(),
            crate::pipeline::Outlet::Nats(outlet),
            parts.stats.clone(),
            parts.history.clone(),
            parts.draining.clone(),
        ));
        let edge = Edge::start(
            LANES,
            parts.hub.clone(),
            parts.executor.clone(),
            parts.stats.clone(),
            parts.history.clone(),
        );

        tasks.spawn(
            leader::Leadership {
                js: js.clone(),
                kv: lease,
                ingest_stream: ingest_stream.clone(),
                subjects: subjects.clone(),
                node_id: node_id.clone(),
                ttl: Duration::from_millis(bus.lease_ttl_ms),
                router: router.clone(),
                epoch: epoch.clone(),
                stats: stats.clone(),
                bus: bus.clone(),
            }
            .run(parts.draining.clone()),
        );

        let (inbound_tx, inbound_rx) = interest::inbound();
        let (applied_tx, applied) = watch::channel(0);
        let subscribed = Arc::new(std::sync::RwLock::new(std::collections::HashSet::new()));
        if let Some(changes) = parts.interest {
            tasks.spawn(
                interest::InterestManager {
                    client: client.clone(),
                    subjects: subjects.clone(),
                    inbound: inbound_tx,
                    applied: applied_tx,
                    stats: stats.clone(),
                    subscribed: subscribed.clone(),
                }
                .run(changes, stop.clone()),
            );
        }
        tasks.spawn(
            interest::Dispatcher {
                js: js.clone(),
                subjects: subjects.clone(),
                delivery_log: out_stream,
                subscribed,
                edge: edge.clone(),
                stats: stats.clone(),
            }
            .run(inbound_rx, link_rx, stop.clone()),
        );
        let members = Arc::new(presence::Members::default());
        tasks.spawn(presence::serve(
            client.clone(),
            subjects.clone(),
            node_id,
            parts.hub.clone(),
            members.clone(),
            stop.clone(),
        ));
        tasks.close();
        Ok(NatsBus {
            client,
            js,
            subjects,
            ingest_stream,
            epoch,
            router,
            edge,
            stats,
            events: parts.stats,
            members,
            applied,
            stop,
            tasks,
        })
    }

    /// Publishes an event to its ingest subject; its id is the stream
    /// sequence JetStream assigns.
    pub async fn publish(&self, event: Event) -> Result<String, PublishError> {
        // Refuse at once while disconnected: a publish buffered in the client
        // would go out on reconnect, after the caller was told it failed.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::BusUnavailable(
                "NATS is disconnected; nothing was published".into(),
            ));
        }
        let headers = wire::encode_ingest(&event);
        let subject = self.subjects.ingest(event.topic.as_str());
        let fail = |e: &dyn std::fmt::Display| {
            self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "event not accepted by NATS");
            PublishError::BusUnavailable(e.to_string())
        };
        let ack = self
            .js
            .publish_with_headers(subject, headers, Bytes::from(event.data))
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| {
                fail(&format!(
                    "{e} (the event may still have been taken: retry with the same idempotency key)"
                ))
            })?;
        if ack.stream != self.ingest_stream {
            return Err(fail(&format!(
                "stream {} took the event instead of {}",
                ack.stream, self.ingest_stream
            )));
        }
        self.events.ingested.fetch_add(1, Ordering::Relaxed);
        Ok(format!(
            "{:x}-{}",
            self.epoch.load(Ordering::Relaxed),
            ack.sequence
        ))
    }

    /// Waits (up to two seconds) until interest change number `upto` is
    /// subscribed on the server.
    pub async fn settle_interest(&self, upto: u64) {
        let mut applied = self.applied.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), applied.wait_for(|n| *n >= upto)).await;
    }

    /// Users subscribed to `topic` on every live node.
    pub async fn presence(&self, topic: &str) -> Result<Vec<String>, BusError> {
        presence::query(&self.client, &self.subjects, &self.members, topic).await
    }

    /// Session counts of every live node.
    pub async fn sessions(&self) -> Result<serde_json::Map<String, serde_json::Value>, BusError> {
        presence::query_sessions(&self.client, &self.subjects, &self.members).await
    }

    /// The epoch of the ingest stream.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The ingest stream's last sequence.
    pub async fn high_water(&self) -> Option<u64> {
        // `get_stream` already fetched the stream's info: one round trip.
        let stream = self.js.get_stream(&self.ingest_stream).await.ok()?;
        Some(stream.cached_info().state.last_sequence)
    }

    /// Live node ids.
    pub fn nodes(&self) -> Vec<String> {
        self.members.live()
    }

    /// Counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Ready when connected.
    pub fn ready(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("NATS connection is {state}")),
        }
    }

    /// Routes what this node accepted for routing, delivers what arrived,
    /// then stops the background tasks.
    pub async fn drain(&self, budget: Duration) {
        let _ = tokio::time::timeout(budget, async {
            self.router.drained().await;
            let _ = self.client.flush().await;
            self.stop.cancel();
            self.edge.close();
            self.edge.drained().await;
            self.tasks.wait().await;
        })
        .await;
        self.stop.cancel();
    }
}

/// Creates (or finds) the ingest stream, the delivery log and the lease
/// bucket; returns the ingest stream's epoch and the bucket.
async fn provision(
    js: &jetstream::Context,
    bus: &crate::config::BusConfig,
    subjects: &Subjects,
) -> Result<(u64, kv::Store), BusError> {
    let ingest_stream = subjects.stream_name("IN");
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: ingest_stream.clone(),
            subjects: vec![subjects.ingest_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: bus.replicas,
            max_age: Duration::from_secs(bus.ingest_max_age_s),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| setup(&ingest_stream)(&e))?;
    let created = stream
        .info()
        .await
        .map_err(|e| setup(&ingest_stream)(&e))?
        .created;
    let epoch = (created.unix_timestamp_nanos() / 1_000_000) as u64;
    let out_stream = subjects.stream_name("OUT");
    js.get_or_create_stream(stream::Config {
        name: out_stream.clone(),
        subjects: vec![subjects.deliveries_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: bus.replicas,
        max_age: Duration::from_secs(bus.recovery_window_s),
        max_bytes: DELIVERY_LOG_BYTES,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(|e| setup(&out_stream)(&e))?;
    let bucket = subjects.stream_name("ROUTER");
    // The bucket's stream is made here rather than by `create_key_value`,
    // which first asks for account details in a form NATS 2.9 does not send.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_millis(bus.lease_ttl_ms),
        storage: stream::StorageType::File,
        num_replicas: bus.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| setup(&bucket)(&e))?;
    let lease = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| setup(&bucket)(&e))?;
    Ok((epoch, lease))
}

async fn connect(
    servers: &[String],
    node_id: &str,
    stats: Arc<BusStats>,
    link: tokio::sync::mpsc::UnboundedSender<interest::Link>,
) -> Result<async_nats::Client, BusError> {
    let urls = servers.join(",");
    let events = stats.clone();
    let options = async_nats::ConnectOptions::new()
        .name(format!("switchyard {node_id}"))
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            // Quick at first, then at most every two seconds.
            Duration::from_millis((50u64 << attempt.min(6)).min(2000))
        })
        .event_callback(move |event| {
            let stats = events.clone();
            let link = link.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected.store(true, Ordering::Relaxed);
                        let _ = link.send(interest::Link::Up);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(false, Ordering::Relaxed);
                        stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        let _ = link.send(interest::Link::Down(std::time::SystemTime::now()));
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sid, "NATS dropped deliveries: this node is behind");
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
    let client = options
        .connect(servers.to_vec())
        .await
        .map_err(|e| BusError::Connect {
            urls: urls.clone(),
            reason: e.to_string(),
        })?;
    // retry_on_initial_connect returns at once: wait for the first
    // connection so that a wrong URL fails the start clearly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(BusError::Connect {
                urls,
                reason: "no server answered within 10 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stats.connected.store(true, Ordering::Relaxed);
    Ok(client)
}
