//! The gateway's shared state and the operations every protocol adapter
//! uses: admitting a connection, opening a session, authorizing, publishing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Identity, KeyError};
use crate::bus::{Bus, BusError, BusParts};
use crate::config::Config;
use crate::error::ApiError;
use crate::executor::PluginExecutor;
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::pipeline::{EventStats, PublishError};
use crate::plugin::{AuthAction, AuthDecision, Interface, PluginEngine, PluginSet};
use crate::routing::{Event, Topic};
use crate::session::{Protocol, SessionHandle};
use crate::store::batched::BatchedLookup;

mod recovery;
use crate::subject::Subject;
pub use recovery::Recovery;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad keys in `[auth]`.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Threads could not start.
    #[error("cannot start plugin workers: {0}")]
    Workers(std::io::Error),
    /// The bus did not start.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Everything the handlers share.
pub struct Gateway {
    /// The config it started with.
    pub config: Config,
    /// Credentials.
    pub auth: Authenticator,
    /// Local sessions.
    pub hub: Arc<Hub>,
    /// Plugin calls.
    pub executor: Arc<PluginExecutor>,
    /// The wasmtime engine: it drives the call deadlines, so it lives as
    /// long as the gateway.
    pub engine: Arc<PluginEngine>,
    /// The event path between nodes.
    pub bus: Bus,
    /// Durable state.
    pub store: crate::store::Store,
    /// Retention of every stream (and whether topics and inboxes are kept).
    pub retention: crate::store::retention::Policy,
    /// This node's sessions in the connection registry.
    pub registry: crate::store::registry::Registry,
    /// Inbox cursors of connecting users, read in batches.
    inbox_cursors: BatchedLookup<String, crate::store::inbox::InboxCursor>,
    /// The newest event of connecting users' inboxes, read in batches.
    inbox_heads: BatchedLookup<String, Vec<crate::store::inbox::InboxHead>>,
    /// The history writer's counters, when history is kept.
    pub history_stats: Option<Arc<crate::store::history::HistoryStats>>,
    /// The history writer, when history is kept.
    history: Option<Arc<crate::store::history::History>>,
    /// Event counters.
    pub stats: Arc<EventStats>,
    /// Cancelled first on shutdown: no new sessions or events; the event
    /// path finishes what it accepted.
    pub draining: CancellationToken,
    /// Cancelled once the event path is drained: sessions get a reconnect
    /// hint, flush and close.
    pub shutdown: CancellationToken,
    /// Session tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Hot reload state.
    pub reloads: crate::reload::Reloads,
    /// The process's log filter, when this process installed one.
    pub log: std::sync::OnceLock<crate::logging::LogControl>,
    /// Per-user and per-address limits, connection counts.
    pub throttles: crate::throttle::Throttles,
    next_session: AtomicU64,
    accept: Mutex<TokenBucket>,
}

impl Gateway {
    /// Builds the gateway on the current tokio runtime with plugins loaded
    /// by `engine`.
    pub async fn start(
        config: Config,
        engine: Arc<PluginEngine>,
        plugins: PluginSet,
    ) -> Result<Arc<Self>, StartError> {
        let auth = Authenticator::new(&config.auth)?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let executor =
            Arc::new(PluginExecutor::start(plugins, threads).map_err(StartError::Workers)?);
        let (hub, interest) = if Bus::wants_interest(&config) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Hub::with_interest(tx), Some(rx))
        } else {
            (Hub::default(), None)
        };
        let hub = Arc::new(hub);
        let shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let stats = Arc::new(EventStats::default());
        let store = crate::store::Store::open(&config.store).await?;
        let retention = crate::store::retention::Policy::from_config(&config.store);
        let history = if retention.keeps_topics() || retention.keeps_inbox() {
            Some(Arc::new(crate::store::history::History::start(
                store.for_writer().await?,
                retention.clone(),
            )))
        } else {
            None
        };
        let registry = crate::store::registry::Registry::start(
            store.clone(),
            &config.server.node_id,
            std::time::Duration::from_secs(config.store.registry_ttl_s),
        )
        .await?;
        let resume = store.latest_epoch().await?;
        let history_stats = history.as_ref().map(|h| h.stats.clone());
        let bus = Bus::start(
            &config,
            BusParts {
                hub: hub.clone(),
                executor: executor.clone(),
                stats: stats.clone(),
                draining: draining.clone(),
                node_id: config.server.node_id.clone(),
                history: history.clone(),
                resume,
                interest,
                partitions: config.bus.partitions,
                store: store.clone(),
                retention: retention.clone(),
                durability: crate::bus::local::Durability::from_config(&config.store),
            },
        )
        .await?;
        let rate = config.limits.accept_rate;
        let epoch = bus.epoch();
        let inbox_cursors = {
            let store = store.clone();
            BatchedLookup::start(crate::store::LOOKUP_BATCH, move |users| {
                let store = store.clone();
                async move { store.inbox_cursors(epoch, users).await }
            })
        };
        let inbox_heads = {
            let store = store.clone();
            BatchedLookup::start(crate::store::LOOKUP_BATCH, move |streams| {
                let store = store.clone();
                async move { store.stream_heads(epoch, streams).await }
            })
        };
        let gateway = Arc::new(Gateway {
            inbox_cursors,
            inbox_heads,
            auth,
            hub,
            executor,
            engine,
            bus,
            store,
            retention,
            registry,
            history_stats,
            history: history.clone(),
            stats,
            draining,
            shutdown,
            tasks: TaskTracker::new(),
            reloads: crate::reload::Reloads::default(),
            log: std::sync::OnceLock::new(),
            throttles: crate::throttle::Throttles::new(config.limits.publish_rate),
            next_session: AtomicU64::new(1),
            accept: Mutex::new(TokenBucket::new(rate, rate, Instant::now())),
            config,
        });
        let loaded: Vec<crate::reload::PluginRecord> = gateway
            .executor
            .plugins()
            .plugins()
            .map(|(p, _)| crate::reload::PluginRecord {
                name: p.name().to_owned(),
                sha256: p.sha256().to_owned(),
            })
            .collect();
        crate::reload::record_deployment(&gateway, "start", &loaded, None).await;
        tokio::spawn(crate::session::ws::heartbeats(
            Arc::downgrade(&gateway),
            gateway.shutdown.clone(),
        ));
        if gateway.config.runtime.watch && gateway.config.source.is_some() {
            tokio::spawn(crate::reload::watch(gateway.clone()));
        }
        Ok(gateway)
    }

    /// Whether this node takes sessions at all (not draining, below
    /// `max_sessions`); charges nothing, so it may come before the caller
    /// is known.
    pub fn has_room(&self) -> Result<(), ApiError> {
        if self.draining.is_cancelled() {
            return Err(ApiError::unavailable("the gateway is shutting down"));
        }
        if self.hub.len() >= self.config.limits.max_sessions {
            return Err(ApiError::unavailable(
                "this node holds its maximum number of sessions",
            ));
        }
        Ok(())
    }

    /// Checks the per-node limits before a session is accepted, charging
    /// `accept_rate`: call it once the caller is authenticated, so that
    /// refused credentials never use up the bucket of everyone else.
    pub fn admit(&self) -> Result<(), ApiError> {
        self.has_room()?;
        let mut bucket = self.accept.lock().unwrap_or_else(PoisonError::into_inner);
        if !bucket.try_take(Instant::now()) {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "rate_limited",
                "too many new connections; retry shortly",
            ));
        }
        Ok(())
    }

    /// Whether `origin` may open a WebSocket: absent (not a browser), the
    /// gateway's own origin (same `Host`), or listed in `allowed_origins`.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
            return true;
        }
        self.config
            .server
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Asks the authorizers, skipping the call when none applies.
    pub async fn authorize(
        &self,
        subject: &Subject,
        actions: Vec<AuthAction>,
    ) -> Vec<AuthDecision> {
        let set = self.executor.plugins();
        let needed = actions.iter().any(|a| match a {
            AuthAction::Connect => set.applies(Interface::Authorizer, None),
            AuthAction::Subscribe(t) | AuthAction::Publish(t) => {
                set.applies(Interface::Authorizer, Some(t))
            }
        });
        if !needed {
            return vec![AuthDecision::Allow; actions.len()];
        }
        let n = actions.len();
        let subject_user = subject.user.clone();
        let subject = subject.clone();
        match self
            .executor
            .run(move |set| set.authorize(&subject, &actions))
            .await
        {
            Ok(d) => {
                tracing::debug!(user = %subject_user, decisions = ?d, "authorized");
                d
            }
            Err(e) => vec![AuthDecision::Deny(e.to_string()); n],
        }
    }

    /// May a user publish on `topic` to `users` directly? The
    /// direct-authorizers that apply to the topic decide; where none does,
    /// the token must grant the `direct` scope.
    pub async fn authorize_direct(
        &self,
        identity: &Identity,
        topic: &Topic,
        users: &[String],
    ) -> Result<(), ApiError> {
        let set = self.executor.plugins();
        if !set.applies(Interface::DirectAuthorizer, Some(topic)) {
            return if identity.has_scope("direct") {
                Ok(())
            } else {
                Err(ApiError::forbidden(
                    "no direct-authorizer decides direct messages on this topic: a user needs the `direct` scope to address users",
                ))
            };
        }
        let (subject, topic, users) = (identity.subject.clone(), topic.clone(), users.to_vec());
        let decision = self
            .executor
            .run(move |set| set.authorize_direct(&subject, &topic, &users))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        match decision {
            // Reloaded in between to a set that does not decide: as above.
            None if !identity.has_scope("direct") => Err(ApiError::forbidden(
                "no direct-authorizer decides direct messages on this topic",
            )),
            None | Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(ApiError::forbidden(why)),
        }
    }

    /// Prepares a session: authorizes connect (and the initial
    /// subscriptions, in one call) and computes its audience. The caller
    /// registers it with [`Gateway::activate`] once its socket is live.
    pub async fn open_session(
        &self,
        identity: Identity,
        protocol: Protocol,
        topics: &[Topic],
    ) -> Result<Arc<SessionHandle>, ApiError> {
        let num = self.next_session.fetch_add(1, Ordering::Relaxed);
        let limits = &self.config.limits;
        let session = SessionHandle::new(
            num,
            &self.config.server.node_id,
            identity.subject,
            protocol,
            limits.queue_depth,
            limits.slow_consumer,
            std::time::Duration::from_millis(limits.slow_consumer_grace_ms),
        );
        let mut actions = vec![AuthAction::Connect];
        actions.extend(topics.iter().cloned().map(AuthAction::Subscribe));
        let decisions = self.authorize(&session.subject, actions).await;
        for (i, d) in decisions.iter().enumerate() {
            if let AuthDecision::Deny(why) = d {
                let what = match i {
                    0 => "connect".to_owned(),
                    i => format!("subscribe to {}", topics[i - 1]),
                };
                return Err(ApiError::forbidden(format!("may not {what}: {why}")));
            }
        }
        let session = Arc::new(session);
        if self.executor.plugins().has(Interface::Transformer) {
            let s = session.clone();
            self.executor
                .run(move |set| crate::pipeline::edge::audience_of(set, &s))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
        for t in topics {
            session.add_subscription(t.as_str());
        }
        if self.retention.keeps_inbox() {
            // What this node showed the user live is in their cursors
            // before they are read: a reconnect right after is not offered
            // it again.
            if let Some(h) = &self.history {
                h.barrier().await;
            }
            match self.inbox_cursors.get(session.subject.user.clone()).await {
                Ok(cursor) => {
                    let _ = session.inbox_cursor.set(cursor.unwrap_or_default());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbox cursor unavailable; inbox not delivered")
                }
            }
        }
        Ok(session)
    }

    /// Registers a prepared session: once this returns, it receives every
    /// event routed to its topics and user.
    pub async fn activate(&self, session: &Arc<SessionHandle>) {
        self.hub.register(session.clone());
        self.registry.opened(
            &session.id,
            session.protocol.as_str(),
            &session.subject.user,
        );
        self.bus.settle_interest(self.hub.interest_sent()).await;
        tracing::info!(
            session = %session.id,
            user = %session.subject.user,
            protocol = session.protocol.as_str(),
            "session opened"
        );
    }

    /// Forgets a session.
    pub fn close_session(&self, session: &SessionHandle) {
        self.hub.unregister(session.num);
        self.registry.closed(&session.id);
        tracing::info!(session = %session.id, "session closed");
    }

    /// Subscribes a live session to `topic`; once this returns, events of
    /// the topic reach it. False if it already was subscribed.
    pub async fn subscribe(&self, session: &SessionHandle, topic: &str) -> bool {
        let added = self.hub.subscribe(session, topic);
        if added {
            self.bus.settle_interest(self.hub.interest_sent()).await;
        }
        added
    }

    /// Publishes an event; the bus assigns its id.
    pub async fn publish(&self, event: Event) -> Result<crate::routing::EventId, PublishError> {
        self.submit(event).await?.await
    }

    /// [`Gateway::publish`] in two steps: the event is taken in order now,
    /// and answered by what this returns.
    pub async fn submit(&self, event: Event) -> Result<crate::bus::Accepted, PublishError> {
        if self.draining.is_cancelled() {
            return Err(PublishError::Stopped);
        }
        self.bus.submit(event).await
    }

    /// How long a client should wait before reconnecting after a drain:
    /// spread over the drain window so that clients do not all come back at once.
    pub fn reconnect_after_ms(&self) -> u64 {
        let window = (self.config.server.drain_timeout_s * 1000).max(1000);
        500 + rand::random_range(0..window)
    }

    /// Seconds since the epoch, now.
    pub fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}
