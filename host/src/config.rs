//! Typed configuration (`config/*.toml`). Every key has a default that works
//! on one machine; unknown keys and bad values are refused with the key, the
//! value and the reason. `from_toml_str` is pure; [`Config::load`] reads a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plugin::Interface;
use crate::routing::TopicPattern;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// A value of the right type that is still wrong.
    #[error("config key `{key}` = {value}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `plugins[1].timeout_ms`.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl std::fmt::Debug,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[bus]`
    pub bus: BusConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[runtime]`: the plugin engine.
    pub runtime: RuntimeConfig,
    /// `[[plugins]]`, in order.
    pub plugins: Vec<PluginSpec>,
    /// The file it was loaded from (hot reload reads it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `server.listen`: address of the one HTTP listener.
    pub listen: SocketAddr,
    /// `server.node_id`: this node's name in the cluster.
    pub node_id: String,
    /// `server.allowed_origins`: browser origins allowed to open a WebSocket.
    pub allowed_origins: Vec<String>,
    /// `server.heartbeat_s`: ping interval.
    pub heartbeat_s: u64,
    /// `server.heartbeat_timeout_s`: close when no pong within this.
    pub heartbeat_timeout_s: u64,
    /// `server.drain_timeout_s`: how long shutdown waits for queues to flush.
    pub drain_timeout_s: u64,
    /// `server.request_timeout_s`: a request's headers, and its body, must
    /// arrive within this; a connection idle between requests closes then.
    pub request_timeout_s: u64,
    /// `server.max_connections`: open TCP connections (sessions included);
    /// one more is closed at once.
    pub max_connections: usize,
    /// `server.max_body_bytes`: the largest request body read.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: "node-1".to_owned(),
            allowed_origins: Vec::new(),
            heartbeat_s: 30,
            heartbeat_timeout_s: 15,
            drain_timeout_s: 10,
            request_timeout_s: 10,
            max_connections: 16_384,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A public key for RS256 or ES256 tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    /// `RS256` or `ES256`.
    pub alg: String,
    /// Key id matched against the token's `kid`, if any.
    pub kid: Option<String>,
    /// PEM text or a path to a PEM file.
    pub pem: String,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `auth.jwt_hs256_secret`
    pub jwt_hs256_secret: Option<String>,
    /// `auth.jwt_public_keys`
    pub jwt_public_keys: Vec<PublicKey>,
    /// `auth.issuer`: required `iss`, if set.
    pub issuer: Option<String>,
    /// `auth.audience`: required `aud`, if set.
    pub audience: Option<String>,
    /// `auth.service_keys`: keys for `POST /v1/publish`.
    pub service_keys: Vec<String>,
    /// `auth.admin_token`: for `/admin/*`.
    pub admin_token: Option<String>,
    /// `auth.ticket_ttl_s`: lifetime of single-use tickets.
    pub ticket_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_hs256_secret: None,
            jwt_public_keys: Vec::new(),
            issuer: None,
            audience: None,
            service_keys: Vec::new(),
            admin_token: None,
            ticket_ttl_s: 30,
        }
    }
}

/// `bus.kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process.
    #[default]
    Local,
    /// NATS.
    Nats,
}

/// `[bus]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `bus.kind`
    pub kind: BusKind,
    /// `bus.urls`: NATS servers.
    pub urls: Vec<String>,
    /// `bus.subject_prefix`
    pub subject_prefix: String,
    /// `bus.replicas`: JetStream replicas of the ingest stream and the
    /// partition leases (3 in a three-server cluster).
    pub replicas: usize,
    /// `bus.ingest_max_age_s`: how long an ingested event may wait for a
    /// router (while no node can route) before NATS discards it.
    pub ingest_max_age_s: u64,
    /// `bus.recovery_window_s`: unused since missed deliveries are repaired
    /// from history; accepted, and ignored, so that older configs load.
    pub recovery_window_s: u64,
    /// `bus.lease_ttl_ms`: each partition's lease; an owner that cannot
    /// renew it for this long stops routing the partition (an owner that
    /// dies is replaced sooner: after `bus.node_timeout_ms`).
    pub lease_ttl_ms: u64,
    /// `bus.partitions`: how many partitions topics fall into (each routed
    /// by one node at a time). Fixed for the life of the ingest stream.
    pub partitions: u16,
    /// `bus.node_timeout_ms`: a node unheard of for this long is taken for
    /// dead, and its partitions are routed elsewhere.
    pub node_timeout_ms: u64,
    /// `bus.max_lag_ms`: publishes to a partition whose oldest
    /// unacknowledged event is older than this get 503 `unavailable`.
    pub max_lag_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Local,
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            subject_prefix: "sy".to_owned(),
            replicas: 1,
            ingest_max_age_s: 86_400,
            recovery_window_s: 300,
            lease_ttl_ms: 10_000,
            partitions: crate::routing::partition::DEFAULT_PARTITIONS,
            node_timeout_ms: 1500,
            max_lag_ms: 30_000,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `store.url`: `sqlite://...` or `postgres://...`.
    pub url: String,
    /// `store.history_retention`: events kept per topic.
    pub history_retention: u64,
    /// `store.history_max_age_s`: oldest history kept.
    pub history_max_age_s: u64,
    /// `store.inbox_retention_s`: how long offline deliveries wait (0: no
    /// inbox).
    pub inbox_retention_s: u64,
    /// `store.inbox_max_events`: events kept per user inbox.
    pub inbox_max_events: u64,
    /// `[[store.retention]]`: per topic pattern, overriding the two
    /// `history_*` defaults; the first matching rule wins.
    pub retention: Vec<RetentionRule>,
    /// `store.registry_ttl_s`: a node that has not refreshed its sessions
    /// in the connection registry for this long is taken for dead and its
    /// rows are removed.
    pub registry_ttl_s: u64,
    /// `store.ack_timeout_ms`: how long a publish on the local bus waits
    /// for the commit that makes it durable before it is answered 503.
    pub ack_timeout_ms: u64,
    /// `store.idempotency_window_s`: how long the local bus remembers an
    /// `idempotency_key` (a retry within it gets the first publish's id).
    pub idempotency_window_s: u64,
    /// `store.durable_ack`: answer a publish only once it is durable
    /// (default). `false` answers once it is queued (the behaviour before durable acks): for
    /// benchmarks only, an acknowledged event can then be lost in a crash.
    pub durable_ack: bool,
}

/// `[[store.retention]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// `topics`: a topic pattern (`chat.>`).
    pub topics: String,
    /// `max_events` per topic (default: `store.history_retention`).
    pub max_events: Option<u64>,
    /// `max_age_s` (default: `store.history_max_age_s`).
    pub max_age_s: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/switchyard.db".to_owned(),
            history_retention: 1000,
            history_max_age_s: 86_400,
            inbox_retention_s: 7 * 86_400,
            inbox_max_events: 1000,
            retention: Vec::new(),
            registry_ttl_s: 30,
            ack_timeout_ms: 5000,
            idempotency_window_s: 120,
            durable_ack: true,
        }
    }
}

/// `limits.slow_consumer`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close the session once its queue stays full.
    #[default]
    Disconnect,
    /// Drop the oldest queued events and report the count.
    DropOldest,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `limits.max_sessions` per node.
    pub max_sessions: usize,
    /// `limits.max_frame_bytes`
    pub max_frame_bytes: usize,
    /// `limits.max_subscriptions` per session.
    pub max_subscriptions: usize,
    /// `limits.queue_depth`: outbound events queued per session.
    pub queue_depth: usize,
    /// `limits.slow_consumer`
    pub slow_consumer: SlowConsumerPolicy,
    /// `limits.slow_consumer_grace_ms`
    pub slow_consumer_grace_ms: u64,
    /// `limits.publish_rate`: client publishes per second per session.
    pub publish_rate: u32,
    /// `limits.accept_rate`: new connections per second per node.
    pub accept_rate: u32,
    /// `limits.max_recipients`: users one publish by a user may address
    /// directly (`to_users`); services are bounded by the body size only.
    pub max_recipients: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions: 10_000,
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 100,
            queue_depth: 256,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            slow_consumer_grace_ms: 2_000,
            publish_rate: 50,
            accept_rate: 1_000,
            max_recipients: 100,
        }
    }
}

/// `[runtime]`: the plugin engine (an addition to DESIGN.md's sections).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `runtime.cache_dir`: compiled plugins, relative to the config file.
    pub cache_dir: PathBuf,
    /// `runtime.pool_instances`: instances pooled across all plugins.
    pub pool_instances: u32,
    /// `runtime.max_memory_mb`: the most `memory_mb` a plugin may ask for.
    pub max_memory_mb: u32,
    /// `runtime.instances_per_plugin`: default of `plugins.max_instances`.
    pub instances_per_plugin: usize,
    /// `runtime.watch`: reload when the config file or a plugin file changes.
    pub watch: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: PathBuf::from("../data/plugin-cache"),
            pool_instances: 256,
            max_memory_mb: 256,
            instances_per_plugin: 4,
            watch: true,
        }
    }
}

/// `plugins.on_error`: what a failed route or transform call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Drop the event (for that router or audience).
    #[default]
    Drop,
    /// Carry on as if the plugin had no opinion.
    Pass,
}

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// `plugins.name`: unique.
    pub name: String,
    /// `plugins.path`: the `.wasm` file, relative to the config file.
    pub path: PathBuf,
    /// `plugins.topics`: patterns the plugin applies to.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// `plugins.interfaces`: which exported interfaces to use (default: all).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// `plugins.timeout_ms`: deadline of each call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `plugins.memory_mb`: memory cap of each instance.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// `plugins.on_error`
    #[serde(default)]
    pub on_error: OnError,
    /// `plugins.max_instances`: default `runtime.instances_per_plugin`.
    pub max_instances: Option<usize>,
    /// `[plugins.config]`: handed to the plugin as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn all_topics() -> Vec<String> {
    vec![">".to_owned()]
}
fn default_timeout_ms() -> u64 {
    10
}
fn default_memory_mb() -> u32 {
    16
}

/// A Rust guest starts at about 1.1 MiB of linear memory.
const MIN_MEMORY_MB: u32 = 2;

impl PluginSpec {
    /// The topic patterns, parsed.
    pub fn patterns(&self) -> Vec<TopicPattern> {
        // Validated in `Config::validate`; a bad one here matches nothing.
        self.topics
            .iter()
            .filter_map(|t| TopicPattern::parse(t).ok())
            .collect()
    }

    /// The plugin's config table as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl Config {
    /// Parses and validates TOML text. Relative paths stay relative.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file; relative plugin and cache paths
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml_str(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut config.plugins {
            p.path = base.join(&p.path);
        }
        config.runtime.cache_dir = base.join(&config.runtime.cache_dir);
        // A relative SQLite file is relative to the config file, like plugin paths.
        if let Some(rest) = config.store.url.strip_prefix("sqlite://") {
            let (file, options) = rest.split_once('?').map_or((rest, ""), |(f, o)| (f, o));
            if !file.is_empty() && !file.starts_with('/') && !file.starts_with(":memory:") {
                let sep = if options.is_empty() { "" } else { "?" };
                config.store.url = format!("sqlite://{}{sep}{options}", base.join(file).display());
            }
        }
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.node_id.is_empty() || s.node_id.contains(|c: char| c == '.' || c.is_whitespace()) {
            return Err(invalid(
                "server.node_id",
                &s.node_id,
                "must be non-empty, without dots or spaces (it is used in NATS subjects)",
            ));
        }
        positive("server.heartbeat_s", s.heartbeat_s)?;
        positive("server.heartbeat_timeout_s", s.heartbeat_timeout_s)?;
        positive("server.request_timeout_s", s.request_timeout_s)?;
        positive("server.max_connections", s.max_connections as u64)?;
        positive("server.max_body_bytes", s.max_body_bytes as u64)?;
        positive("auth.ticket_ttl_s", self.auth.ticket_ttl_s)?;
        if self
            .auth
            .jwt_hs256_secret
            .as_ref()
            .is_some_and(|k| k.len() < 32)
        {
            return Err(invalid(
                "auth.jwt_hs256_secret",
                "(hidden)",
                "must be at least 32 bytes",
            ));
        }
        for (i, key) in self.auth.jwt_public_keys.iter().enumerate() {
            if !matches!(key.alg.as_str(), "RS256" | "ES256") {
                return Err(invalid(
                    format!("auth.jwt_public_keys[{i}].alg"),
                    &key.alg,
                    "must be RS256 or ES256",
                ));
            }
        }
        if self.bus.kind == BusKind::Nats && self.bus.urls.is_empty() {
            return Err(invalid(
                "bus.urls",
                &self.bus.urls,
                "NATS needs at least one server URL",
            ));
        }
        let prefix = &self.bus.subject_prefix;
        if prefix.is_empty() || prefix.contains(|c: char| c == '*' || c == '>' || c.is_whitespace())
        {
            return Err(invalid(
                "bus.subject_prefix",
                prefix,
                "must be a NATS subject without wildcards",
            ));
        }
        if !(1..=5).contains(&self.bus.replicas) {
            return Err(invalid(
                "bus.replicas",
                self.bus.replicas,
                "must be between 1 and 5",
            ));
        }
        positive("bus.ingest_max_age_s", self.bus.ingest_max_age_s)?;
        if self.bus.lease_ttl_ms < 500 {
            return Err(invalid(
                "bus.lease_ttl_ms",
                self.bus.lease_ttl_ms,
                "must be at least 500",
            ));
        }
        if !(1..=1024).contains(&self.bus.partitions) {
            return Err(invalid(
                "bus.partitions",
                self.bus.partitions,
                "must be between 1 and 1024",
            ));
        }
        if self.bus.max_lag_ms < 100 {
            return Err(invalid(
                "bus.max_lag_ms",
                self.bus.max_lag_ms,
                "must be at least 100",
            ));
        }
        if !(300..=60_000).contains(&self.bus.node_timeout_ms) {
            return Err(invalid(
                "bus.node_timeout_ms",
                self.bus.node_timeout_ms,
                "must be between 300 and 60000",
            ));
        }
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store.url",
                &self.store.url,
                "must start with sqlite: or postgres://",
            ));
        }
        positive("store.registry_ttl_s", self.store.registry_ttl_s)?;
        positive("store.ack_timeout_ms", self.store.ack_timeout_ms)?;
        positive(
            "store.idempotency_window_s",
            self.store.idempotency_window_s,
        )?;
        for (i, rule) in self.store.retention.iter().enumerate() {
            TopicPattern::parse(&rule.topics).map_err(|e| {
                invalid(
                    format!("store.retention[{i}].topics"),
                    &rule.topics,
                    e.to_string(),
                )
            })?;
        }
        let l = &self.limits;
        positive("limits.max_sessions", l.max_sessions as u64)?;
        positive("limits.queue_depth", l.queue_depth as u64)?;
        positive("limits.max_subscriptions", l.max_subscriptions as u64)?;
        positive("limits.publish_rate", u64::from(l.publish_rate))?;
        positive("limits.accept_rate", u64::from(l.accept_rate))?;
        if l.max_frame_bytes < 1024 {
            return Err(invalid(
                "limits.max_frame_bytes",
                l.max_frame_bytes,
                "must be at least 1024",
            ));
        }
        let r = &self.runtime;
        positive("runtime.pool_instances", u64::from(r.pool_instances))?;
        positive(
            "runtime.instances_per_plugin",
            r.instances_per_plugin as u64,
        )?;
        if r.max_memory_mb < MIN_MEMORY_MB {
            return Err(invalid(
                "runtime.max_memory_mb",
                r.max_memory_mb,
                format!("must be at least {MIN_MEMORY_MB}"),
            ));
        }
        self.validate_plugins()
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let mut instances = 0usize;
        for (i, p) in self.plugins.iter().enumerate() {
            let key = |k: &str| format!("plugins[{i}].{k}");
            if p.name.is_empty() || p.name.contains(char::is_whitespace) {
                return Err(invalid(
                    key("name"),
                    &p.name,
                    "must be non-empty, without spaces",
                ));
            }
            if self.plugins[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    key("name"),
                    &p.name,
                    "another plugin has this name",
                ));
            }
            if p.topics.is_empty() {
                return Err(invalid(
                    key("topics"),
                    &p.topics,
                    "list at least one pattern (\">\" for all)",
                ));
            }
            for t in &p.topics {
                TopicPattern::parse(t).map_err(|e| invalid(key("topics"), t, e.to_string()))?;
            }
            if p.timeout_ms == 0 || p.timeout_ms > 60_000 {
                return Err(invalid(
                    key("timeout_ms"),
                    p.timeout_ms,
                    "must be between 1 and 60000",
                ));
            }
            if p.memory_mb < MIN_MEMORY_MB || p.memory_mb > self.runtime.max_memory_mb {
                return Err(invalid(
                    key("memory_mb"),
                    p.memory_mb,
                    format!(
                        "must be between {MIN_MEMORY_MB} and runtime.max_memory_mb ({})",
                        self.runtime.max_memory_mb
                    ),
                ));
            }
            let n = p.max_instances.unwrap_or(self.runtime.instances_per_plugin);
            if n == 0 {
                return Err(invalid(key("max_instances"), n, "must be at least 1"));
            }
            instances += n;
        }
        if instances > self.runtime.pool_instances as usize {
            return Err(invalid(
                "runtime.pool_instances",
                self.runtime.pool_instances,
                format!(
                    "the plugins may hold {instances} instances at once; raise it or lower plugins.max_instances"
                ),
            ));
        }
        Ok(())
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, value, "must be greater than 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn empty_config_has_working_defaults() {
        let c = Config::from_toml_str("").expect("defaults");
        assert_eq!(c.limits.queue_depth, 256);
        assert_eq!(c.server.heartbeat_s, 30);
        assert_eq!(c.bus.kind, BusKind::Local);
        assert!(c.plugins.is_empty());
    }

    #[test]
    fn plugin_defaults_and_config_table() {
        let c = Config::from_toml_str(
            r#"
            [[plugins]]
            name = "acl"
            path = "acl.wasm"
            [plugins.config]
            default = "deny"
            rules = [{ topic = "a.>", roles = ["x"] }]
            "#,
        )
        .expect("config");
        let p = &c.plugins[0];
        assert_eq!(
            (p.timeout_ms, p.memory_mb, p.on_error),
            (10, 16, OnError::Drop)
        );
        assert_eq!(p.topics, [">"]);
        let json: serde_json::Value = serde_json::from_str(&p.config_json()).expect("json");
        assert_eq!(json["rules"][0]["roles"][0], "x");
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let e = err("[limits]\nqueue_depth = 0");
        assert!(e.contains("limits.queue_depth") && e.contains('0'), "{e}");
        let e = err("[[plugins]]\nname = \"a\"\npath = \"a.wasm\"\ntopics = [\"a.>.b\"]");
        assert!(
            e.contains("plugins[0].topics") && e.contains("a.>.b"),
            "{e}"
        );
        let e = err("[[plugins]]\nname = \"a\"\npath = \"a.wasm\"\nmemory_mb = 1");
        assert!(e.contains("plugins[0].memory_mb"), "{e}");
        let e =
            err("[[plugins]]\nname = \"a\"\npath = \"a\"\n[[plugins]]\nname = \"a\"\npath = \"b\"");
        assert!(e.contains("plugins[1].name"), "{e}");
        let e = err("[store]\nurl = \"mysql://x\"");
        assert!(e.contains("store.url") && e.contains("mysql"), "{e}");
        let e = err("[[store.retention]]\ntopics = \"chat.>.x\"\nmax_events = 5");
        assert!(
            e.contains("store.retention[0].topics") && e.contains("chat.>.x"),
            "{e}"
        );
        let e = err("[auth]\njwt_hs256_secret = \"short\"");
        assert!(
            e.contains("auth.jwt_hs256_secret") && !e.contains("short"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        assert!(err("[server]\nlisen = \"x\"").contains("lisen"));
        assert!(err("[limits]\nslow_consumer = \"ignore\"").contains("ignore"));
        assert!(
            err("[[plugins]]\nname = \"a\"\npath = \"a\"\ninterfaces = [\"routr\"]")
                .contains("routr")
        );
    }

    #[test]
    fn instances_must_fit_the_pool() {
        let e = err(
            "[runtime]\npool_instances = 2\n[[plugins]]\nname = \"a\"\npath = \"a\"\nmax_instances = 3",
        );
        assert!(e.contains("runtime.pool_instances"), "{e}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("config dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected gateway.toml and cluster.toml");
    }
}
