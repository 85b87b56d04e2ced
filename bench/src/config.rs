//! The config files of the Switchyard under test.

use std::path::{Path, PathBuf};

/// The HS256 secret of the Switchyard under test.
pub const SECRET: &str = "switchyard-bench-secret-0123456789abcdef";

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Switchyard: load the example plugins (authorizer, router,
    /// transformer) on the benchmark topics.
    pub plugins: bool,
    /// Two nodes: Switchyard nodes sharing a NATS server (JetStream) and a
    /// fresh PostgreSQL database; two clustered nats-servers. Sessions
    /// alternate between the nodes; events enter through the first. The
    /// bare broadcaster has no cluster: it stays one process.
    pub two_nodes: bool,
    /// Switchyard: one node on the backplane of [`Options::two_nodes`]
    /// (NATS and PostgreSQL).
    pub backplane: bool,
    /// nats-server: with JetStream (files in the run's directory).
    pub jetstream: bool,
    /// Switchyard on NATS: its nats-server partitions raw `sy.in.<topic>`
    /// publishes itself (the documented mapping), so nothing goes through
    /// the relay.
    pub mapped: bool,
    /// Switchyard: keep no history and no inboxes (`store.history_retention
    /// = 0`, `store.inbox_max_events = 0`), to price writing them.
    pub no_history: bool,
    /// Switchyard on the local bus: its store in a fresh PostgreSQL
    /// database instead of SQLite.
    pub postgres_store: bool,
    /// Switchyard: answer publishes once queued (`store.durable_ack =
    /// false`), the behaviour before durable acknowledgements.
    pub queued_acks: bool,
    /// Where the `switchyard` and `bare-broadcaster` binaries are (default:
    /// next to this one).
    pub bin_dir: Option<PathBuf>,
}

/// The workspace root (where `target/` is).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// nats-server's mapping of raw `sy.in.<topic>` publishes to their
/// partition's subject, one rule per topic depth up to `depth` (2.9 hashes
/// only `*` tokens).
pub(crate) fn partition_mappings(count: u32, depth: usize) -> String {
    let mut out = String::from("mappings = {\n");
    for d in 1..=depth {
        let stars = vec!["*"; d].join(".");
        let tokens: Vec<String> = (1..=d).map(|i| i.to_string()).collect();
        let wildcards: Vec<String> = (1..=d).map(|i| format!("{{{{wildcard({i})}}}}")).collect();
        out.push_str(&format!(
            "  \"sy.in.{stars}\": \"sy.ip.{{{{partition({count},{})}}}}.{}\"\n",
            tokens.join(","),
            wildcards.join(".")
        ));
    }
    out.push_str("}\n");
    out
}

/// A service key of the Switchyard under test (HTTP publishes).
pub const SERVICE_KEY: &str = "bench-service";

/// The admin token of the Switchyard under test.
pub const ADMIN_TOKEN: &str = "bench-admin";

pub(crate) fn switchyard_config(
    port: u16,
    node: usize,
    options: &Options,
    backplane: Option<&(String, String)>,
    own_store: Option<&str>,
) -> String {
    let (bus, mut store) = match backplane {
        Some((nats, postgres)) => (
            format!("kind = \"nats\"\nurls = [\"{nats}\"]"),
            postgres.clone(),
        ),
        None => (
            "kind = \"local\"".to_owned(),
            format!("sqlite://bench-{node}.db"),
        ),
    };
    if let Some(own) = own_store {
        store = own.to_owned();
    }
    let mut history = if options.no_history {
        "history_retention = 0\ninbox_max_events = 0\n"
    } else {
        ""
    }
    .to_owned();
    if options.queued_acks {
        history.push_str("durable_ack = false\n");
    }
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
node_id = "bench-{node}"
heartbeat_s = 300
drain_timeout_s = 1

[auth]
jwt_hs256_secret = "{SECRET}"
service_keys = ["{SERVICE_KEY}"]
admin_token = "{ADMIN_TOKEN}"

[bus]
{bus}

[store]
url = "{store}"
{history}

[limits]
max_sessions = 1000000
accept_rate = 1000000
publish_rate = 1000000
queue_depth = 1024

[runtime]
cache_dir = "cache"
watch = false
"#
    );
    if options.plugins {
        let wasm = workspace().join("target/wasm/wasm32-wasip2/plugin");
        text.push_str(&format!(
            r#"
[[plugins]]
name = "acl"
path = "{acl}"
[plugins.config]
default = "deny"
rules = [{{ topic = "bench.>" }}]

[[plugins]]
name = "router"
path = "{router}"
topics = ["bench.>"]
on_error = "pass"

[[plugins]]
name = "redact"
path = "{redact}"
topics = ["bench.>"]
on_error = "drop"
[plugins.config]
fields = ["email"]
reveal_roles = ["support"]
"#,
            acl = wasm.join("acl.wasm").display(),
            router = wasm.join("chat_router.wasm").display(),
            redact = wasm.join("redact.wasm").display(),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_has_a_rule_per_depth_as_the_readme_documents() {
        let m = partition_mappings(64, 2);
        assert_eq!(
            m,
            "mappings = {\n  \"sy.in.*\": \"sy.ip.{{partition(64,1)}}.{{wildcard(1)}}\"\n  \
             \"sy.in.*.*\": \"sy.ip.{{partition(64,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}\"\n}\n"
        );
    }

    #[test]
    fn no_history_turns_off_topic_history_and_inboxes() {
        let on = switchyard_config(1, 0, &Options::default(), None, None);
        assert!(!on.contains("history_retention"), "{on}");
        let off = Options {
            no_history: true,
            ..Options::default()
        };
        let off = switchyard_config(1, 0, &off, None, None);
        let store = off.split("[store]").nth(1).unwrap_or_default();
        assert!(
            store.contains("history_retention = 0\ninbox_max_events = 0"),
            "{off}"
        );
    }
}
