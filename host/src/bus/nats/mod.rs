//! The NATS bus: JetStream for ingest (one stream, its subjects split into
//! partitions), a KV lease per partition spread over the live nodes, core
//! subjects per topic and user for fan-out, repaired from history.

mod assigned;
mod backoff;
mod backpressure;
mod connect;
mod consumers;
mod cover;
mod dispatch;
mod interest;
mod kept_lease;
mod leases;
mod members;
mod outlet;
mod owned;
mod owner;
mod ownership;
mod presence;
mod provision;
mod pull_requests;
mod puller;
mod relay;
mod repair;
mod scatter;
mod settle;
mod settled;
mod status;

pub use outlet::NatsOutlet;
pub use owned::OwnedStatus;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::watch;

use crate::routing::partition_of;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{self, Subjects};
use super::{Accepted, BusError, BusParts, BusStats, LANES};
use crate::config::Config;
use crate::pipeline::{Edge, EventStats, PublishError, Router, Stages};
use crate::routing::Event;
use connect::{Role, connect};

/// The NATS bus of one node.
pub struct NatsBus {
    client: async_nats::Client,
    deliveries: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    ingest_stream: String,
    epoch: Arc<AtomicU64>,
    assigned: assigned::Assigned,
    router: Arc<Router>,
    edge: Arc<Edge>,
    stats: Arc<BusStats>,
    events: Arc<EventStats>,
    members: Arc<members::Members>,
    leases: Arc<leases::LeaseTable>,
    owned: Arc<owned::Owned>,
    asker: Arc<cover::Asker>,
    backpressure: Arc<backpressure::Backpressure>,
    max_lag_ms: u64,
    partitions: u16,
    applied: watch::Receiver<u64>,
    /// How many slots this node still routes (drain waits for 0).
    routing: watch::Receiver<usize>,
    settled: Arc<crate::bus::settled::Settled>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Counts and logs a publish NATS did not take.
fn refused(stats: &BusStats, e: &dyn std::fmt::Display) -> PublishError {
    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, "event not accepted by NATS");
    PublishError::BusUnavailable(e.to_string())
}

/// Router lanes: partitions are spread over them, so plugin calls of
/// several partitions run at once.
const ROUTER_LANES: usize = 16;
/// How long a publisher waits for JetStream to confirm an event.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// JetStream publishes awaiting their acknowledgement, node-wide: a
/// publish beyond it waits for a permit, which only an acknowledgement
/// (its future polled) gives back.
pub(crate) const ACKS_IN_FLIGHT: usize = 5_000;

impl NatsBus {
    /// Connects, creates the streams and the lease bucket if missing, and
    /// starts the lease, interest, dispatch and presence tasks.
    pub async fn start(config: &Config, parts: BusParts) -> Result<Self, BusError> {
        let bus = &config.bus;
        let node_id = parts.node_id.clone();
        let stats = Arc::new(BusStats::default());
        let subjects = Subjects::new(&bus.subject_prefix);
        let (link_tx, link_rx) = tokio::sync::mpsc::unbounded_channel();
        let client = connect(&bus.urls, &node_id, stats.clone(), Role::Control).await?;
        let deliveries = connect(
            &bus.urls,
            &node_id,
            stats.clone(),
            Role::Deliveries(link_tx.clone()),
        )
        .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(ACKS_IN_FLIGHT)
            .build(client.clone());

        let ingest_stream = subjects.stream_name("IN");
        // A cluster that just started has no JetStream leader for a few
        // seconds: retry before giving up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (epoch, kv) = loop {
            match provision::provision(&js, bus, &subjects).await {
                Ok(p) => break p,
                Err(e @ BusError::Partitions { .. }) => return Err(e),
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
        let (inbound_tx, inbound_rx) = interest::inbound();
        let subscribed = Arc::new(std::sync::RwLock::new(std::collections::HashSet::new()));
        let outlet = NatsOutlet::new(
            deliveries.clone(),
            subjects.clone(),
            stats.clone(),
            outlet::Local {
                subscribed: subscribed.clone(),
                inbound: inbound_tx.clone(),
                link: link_tx,
            },
        );
        tasks.spawn(outlet.clone().beacons(stop.clone()));
        let Stages { router, edge } =
            Stages::assemble(&parts.stage_parts(), LANES, ROUTER_LANES, |_| {
                outlet.clone()
            });

        let node_timeout = Duration::from_millis(bus.node_timeout_ms);
        let lease_ttl = Duration::from_millis(bus.lease_ttl_ms);
        let members = Arc::new(members::Members::new(node_timeout));
        let (eligible_tx, eligible) = watch::channel(false);
        let local_store = matches!(parts.store, crate::store::Store::Sqlite(_));
        tasks.spawn(members::run(
            client.clone(),
            subjects.clone(),
            node_id.clone(),
            local_store,
            eligible.clone(),
            members.clone(),
            stop.clone(),
        ));
        // No two nodes may keep history apart: listen to the beats first.
        tokio::time::sleep(members.hearing_time()).await;
        if let Err(e) = members.shared_store(&node_id, local_store) {
            stop.cancel();
            return Err(e);
        }
        let leases = Arc::new(leases::LeaseTable::new(lease_ttl));
        tasks.spawn(leases.clone().follow(kv.clone(), stop.clone()));
        let owned = Arc::new(owned::Owned::default());
        let owners = Arc::new(owner::OwnerContext {
            js: js.clone(),
            ingest_stream: ingest_stream.clone(),
            subjects: subjects.clone(),
            epoch: epoch.clone(),
            router: router.clone(),
            stats: stats.clone(),
            acks: settle::Acks::start(parts.history.clone(), &tasks),
            owned: owned.clone(),
            outlet,
        });
        let relay = Arc::new(relay::RelayContext {
            js: js.clone(),
            ingest_stream: ingest_stream.clone(),
            subjects: subjects.clone(),
            epoch: epoch.clone(),
            partitions: bus.partitions,
            stats: stats.clone(),
        });
        let (running, routing) = watch::channel(0);
        // Ownership ends when the node drains: it hands every slot over.
        tasks.spawn(
            ownership::Ownership {
                node_id: node_id.clone(),
                partitions: bus.partitions,
                kv,
                lease_ttl,
                node_timeout,
                members: members.clone(),
                table: leases.clone(),
                owners,
                relay,
                stats: stats.clone(),
                eligible,
                running,
            }
            .run(parts.draining.clone()),
        );
        tasks.spawn(
            cover::Responder {
                client: client.clone(),
                subjects: subjects.clone(),
                node_id: node_id.clone(),
                owned: owned.clone(),
                router: router.clone(),
                history: parts.history.clone(),
            }
            .run(stop.clone()),
        );
        let asker = cover::Asker::start(
            client.clone(),
            subjects.clone(),
            bus.partitions,
            stats.clone(),
            stop.clone(),
        );
        let settled = Arc::new(crate::bus::settled::Settled::default());
        tasks.spawn(settled::follow(
            js.clone(),
            ingest_stream.clone(),
            settled.clone(),
            stop.clone(),
        ));
        let backpressure = Arc::new(backpressure::Backpressure::default());
        tasks.spawn(backpressure.clone().run(
            client.clone(),
            subjects.clone(),
            owned.clone(),
            stop.clone(),
        ));
        tasks.spawn(status::serve(
            client.clone(),
            subjects.clone(),
            node_id.clone(),
            owned.clone(),
            epoch.clone(),
            stats.clone(),
            stop.clone(),
        ));
        // Everything this node routes with is up: it may own partitions,
        // until it drains.
        let _ = eligible_tx.send(true);
        {
            let draining = parts.draining.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = draining.cancelled() => {}
                    () = stop.cancelled() => {}
                }
                let _ = eligible_tx.send(false);
                // Keep the sender alive until the bus stops: dropping it
                // would read as a change.
                stop.cancelled().await;
                drop(eligible_tx);
            });
        }

        let inbound_tx_beacons = inbound_tx.clone();
        let (applied_tx, applied) = watch::channel(0);
        if let Some(changes) = parts.interest {
            tasks.spawn(
                interest::InterestManager {
                    client: deliveries.clone(),
                    subjects: subjects.clone(),
                    inbound: inbound_tx,
                    applied: applied_tx,
                    stats: stats.clone(),
                    subscribed: subscribed.clone(),
                }
                .run(changes, stop.clone()),
            );
        }
        match deliveries.subscribe(subjects.beacons_all()).await {
            Ok(sub) => {
                tasks.spawn(interest::forward(sub, inbound_tx_beacons));
            }
            Err(e) => {
                // What started above stops with the failed start.
                stop.cancel();
                return Err(BusError::Setup {
                    what: "beacon subscription".into(),
                    reason: e.to_string(),
                });
            }
        }
        tasks.spawn(
            dispatch::Dispatcher {
                subjects: subjects.clone(),
                subscribed,
                edge: edge.clone(),
                hub: parts.hub.clone(),
                stats: stats.clone(),
                repairer: repair::Repairer {
                    store: parts.store.clone(),
                    policy: parts.retention.clone(),
                    asker: asker.clone(),
                    subjects: subjects.clone(),
                    partitions: bus.partitions,
                    epoch: epoch.clone(),
                    stats: stats.clone(),
                },
            }
            .run(inbound_rx, link_rx, stop.clone()),
        );
        tasks.spawn(presence::serve(
            client.clone(),
            subjects.clone(),
            node_id,
            parts.hub.clone(),
            stop.clone(),
        ));
        tasks.close();
        Ok(NatsBus {
            client,
            deliveries,
            assigned: assigned::Assigned::new(js.clone(), ingest_stream.clone()),
            js,
            subjects,
            ingest_stream,
            epoch,
            router,
            edge,
            stats,
            events: parts.stats,
            members,
            leases,
            owned,
            asker,
            backpressure,
            max_lag_ms: bus.max_lag_ms,
            partitions: bus.partitions,
            applied,
            routing,
            settled,
            stop,
            tasks,
        })
    }

    /// Sends an event to its ingest subject; the answer is its id, the
    /// stream sequence JetStream assigns, once JetStream has stored it.
    pub async fn submit(&self, event: Event) -> Result<Accepted, PublishError> {
        // Refuse at once while disconnected: a publish buffered in the client
        // would go out on reconnect, after the caller was told it failed.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::BusUnavailable(
                "NATS is disconnected; nothing was published".into(),
            ));
        }
        let partition = partition_of(&event.topic, self.partitions);
        if let Some(lag) = self.backpressure.behind(partition, self.max_lag_ms) {
            self.stats.lag_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::BusUnavailable(format!(
                "partition {partition} of topic {} is {lag} ms behind (bus.max_lag_ms = {}); retry later",
                event.topic, self.max_lag_ms
            )));
        }
        let headers = wire::encode_ingest(&event);
        let subject = self.subjects.partitioned(partition, event.topic.as_str());
        // Asynchronous JetStream publishes are stored in the order sent.
        let ack = self
            .js
            .publish_with_headers(subject, headers, Bytes::from(event.data))
            .await
            .map_err(|e| refused(&self.stats, &e))?;
        let stats = self.stats.clone();
        let events = self.events.clone();
        let stream = self.ingest_stream.clone();
        let epoch = self.epoch.clone();
        // Awaited on a task of its own: an unpolled acknowledgement keeps one
        // of the node's in-flight permits, and a session busy submitting
        // its next publish does not poll the answers it holds, so sessions
        // waiting for permits would hold every permit between them.
        let answer = tokio::spawn(async move {
            let ack = ack.await.map_err(|e| {
                refused(
                    &stats,
                    &format!("{e} (the event may still have been taken: retry with the same idempotency key)"),
                )
            })?;
            if ack.stream != stream {
                return Err(refused(
                    &stats,
                    &format!("stream {} took the event instead of {stream}", ack.stream),
                ));
            }
            events.ingested.fetch_add(1, Ordering::Relaxed);
            Ok(crate::routing::EventId {
                epoch: epoch.load(Ordering::Relaxed),
                seq: ack.sequence,
            })
        });
        Ok(Box::pin(async move {
            answer.await.unwrap_or_else(|e| {
                Err(PublishError::BusUnavailable(format!(
                    "the acknowledgement was not awaited: {e}"
                )))
            })
        }))
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

    /// An id up to which everything was routed, as the ingest stream last
    /// said.
    pub fn settled(&self) -> Option<crate::routing::EventId> {
        self.settled.get()
    }

    /// Whether the ingest stream ever handed out `seq`; `None` if it
    /// cannot say now.
    pub async fn assigned(&self, seq: u64) -> Option<bool> {
        self.assigned.covers(seq).await
    }

    /// The epoch of the ingest stream.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Completes once every event routed anywhere before the call is in
    /// the store; false if not every partition could say so in time.
    pub async fn cover(&self) -> bool {
        self.asker.cover().await
    }

    /// The partitions this node routes now, with their state.
    pub fn owned(&self) -> Vec<OwnedStatus> {
        self.owned.status(self.epoch())
    }

    /// Every partition's owner and routing state.
    pub async fn partitions(&self) -> Result<serde_json::Value, BusError> {
        status::query(
            &self.client,
            &self.subjects,
            &self.members,
            &self.leases,
            self.partitions,
        )
        .await
    }

    /// Live node ids.
    pub fn nodes(&self) -> Vec<String> {
        self.members.live()
    }

    /// Counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Ready when both connections are up.
    pub fn ready(&self) -> Result<(), String> {
        for (what, client) in [("control", &self.client), ("delivery", &self.deliveries)] {
            match client.connection_state() {
                async_nats::connection::State::Connected => {}
                state => return Err(format!("NATS {what} connection is {state}")),
            }
        }
        Ok(())
    }

    /// Routes what this node accepted for routing, delivers what arrived,
    /// then stops the background tasks.
    pub async fn drain(&self, budget: Duration) {
        let _ = tokio::time::timeout(budget, async {
            // The node is not eligible once draining: its partitions go to
            // other nodes, each once what it took is acknowledged.
            let mut routing = self.routing.clone();
            let _ = routing.wait_for(|n| *n == 0).await;
            self.router.drained().await;
            let _ = self.client.flush().await;
            let _ = self.deliveries.flush().await;
            self.stop.cancel();
            self.edge.close();
            self.edge.drained().await;
            self.tasks.wait().await;
        })
        .await;
        self.stop.cancel();
    }
}
