//! `GET /metrics`: Prometheus text exposition of the gateway's counters.
//! The writer is pure (a `Exposition` collects samples, `render` prints).

mod bus;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::gateway::Gateway;
use crate::session::Protocol;

/// Prometheus metric types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    samples: Vec<(String, String, f64)>,
}

/// Samples grouped by metric family, rendered in the text format.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    /// Adds a sample of family `name` with `labels` (name, value pairs).
    pub fn sample(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.sample_with_suffix(name, "", help, kind, labels, value);
    }

    fn sample_with_suffix(
        &mut self,
        name: &'static str,
        suffix: &str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let family = self.families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            samples: Vec::new(),
        });
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        family.samples.push((suffix.to_owned(), labels, value));
    }

    /// Adds a histogram from cumulative `(upper bound, count)` buckets.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
    ) {
        let count = buckets.last().map_or(0, |b| b.1);
        for (le, n) in buckets {
            let le = format!("{le}");
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample_with_suffix(name, "_bucket", help, Kind::Histogram, &l, *n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample_with_suffix(name, "_bucket", help, Kind::Histogram, &l, count as f64);
        self.sample_with_suffix(name, "_sum", help, Kind::Histogram, labels, sum);
        self.sample_with_suffix(name, "_count", help, Kind::Histogram, labels, count as f64);
    }

    /// The text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (suffix, labels, value) in &f.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name}{suffix} {value}");
                } else {
                    let _ = writeln!(out, "{name}{suffix}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Collects the gateway's metrics now.
pub fn collect(gw: &Gateway) -> Exposition {
    let mut x = Exposition::default();
    let sessions = gw.hub.sessions();
    for protocol in [Protocol::Json, Protocol::Stomp, Protocol::Sse] {
        let n = sessions.iter().filter(|s| s.protocol == protocol).count();
        x.sample(
            "switchyard_sessions",
            "Live sessions on this node.",
            Kind::Gauge,
            &[("protocol", protocol.as_str())],
            n as f64,
        );
    }
    let subs: usize = sessions.iter().map(|s| s.subscription_count()).sum();
    x.sample(
        "switchyard_subscriptions",
        "Topic subscriptions of live sessions.",
        Kind::Gauge,
        &[],
        subs as f64,
    );
    let queued: usize = sessions.iter().map(|s| s.queue.len()).sum();
    x.sample(
        "switchyard_queued_frames",
        "Frames waiting in session queues.",
        Kind::Gauge,
        &[],
        queued as f64,
    );

    let s = &gw.stats;
    x.sample(
        "switchyard_connections",
        "TCP connections open now (server.max_connections is the limit).",
        Kind::Gauge,
        &[],
        gw.throttles.connections_open.load(Ordering::Relaxed) as f64,
    );
    let counters: [(&'static str, &'static str, u64); 13] = [
        (
            "switchyard_events_replayed_total",
            "Events replayed to reconnecting clients.",
            s.replayed.load(Ordering::Relaxed),
        ),
        (
            "switchyard_inbox_delivered_total",
            "Events delivered from offline inboxes on connect.",
            s.inbox_delivered.load(Ordering::Relaxed),
        ),
        (
            "switchyard_events_ingested_total",
            "Events accepted for routing.",
            s.ingested.load(Ordering::Relaxed),
        ),
        (
            "switchyard_admin_throttled_total",
            "Admin requests answered 429: their address sent too many wrong admin tokens.",
            gw.throttles.admin_throttled.load(Ordering::Relaxed),
        ),
        (
            "switchyard_http_publishes_throttled_total",
            "HTTP publishes by users answered 429 (limits.publish_rate per user).",
            gw.throttles.publishes_throttled.load(Ordering::Relaxed),
        ),
        (
            "switchyard_connections_refused_total",
            "TCP connections closed at once because server.max_connections were open.",
            gw.throttles.connections_refused.load(Ordering::Relaxed),
        ),
        (
            "switchyard_connections_timed_out_total",
            "Connections closed because a request's headers did not arrive within server.request_timeout_s.",
            gw.throttles.connections_timed_out.load(Ordering::Relaxed),
        ),
        (
            "switchyard_publish_not_durable_total",
            "Publishes answered 503 because the store did not commit them within store.ack_timeout_ms.",
            s.not_durable.load(Ordering::Relaxed),
        ),
        (
            "switchyard_events_dropped_by_router_total",
            "Events a router dropped.",
            s.dropped_by_router.load(Ordering::Relaxed),
        ),
        (
            "switchyard_deliveries_total",
            "Events enqueued to sessions.",
            s.delivered.load(Ordering::Relaxed),
        ),
        (
            "switchyard_deliveries_withheld_total",
            "Deliveries withheld by transformers.",
            s.withheld.load(Ordering::Relaxed),
        ),
        (
            "switchyard_queue_drops_total",
            "Events dropped by full session queues.",
            s.queue_drops.load(Ordering::Relaxed),
        ),
        (
            "switchyard_slow_consumer_disconnects_total",
            "Sessions closed as slow consumers.",
            s.slow_consumers.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        x.sample(name, help, Kind::Counter, &[], value as f64);
    }

    for (outcome, n) in [
        ("applied", &gw.reloads.applied),
        ("refused", &gw.reloads.refused),
    ] {
        x.sample(
            "switchyard_reloads_total",
            "Plugin reloads, by outcome.",
            Kind::Counter,
            &[("outcome", outcome)],
            n.load(Ordering::Relaxed) as f64,
        );
    }

    let registry = &gw.registry.stats;
    x.sample(
        "switchyard_registry_expired_total",
        "Connection-registry rows of stopped nodes removed.",
        Kind::Counter,
        &[],
        registry.expired.load(Ordering::Relaxed) as f64,
    );
    x.sample(
        "switchyard_registry_errors_total",
        "Connection-registry writes that failed (retried).",
        Kind::Counter,
        &[],
        registry.errors.load(Ordering::Relaxed) as f64,
    );
    if let Some(h) = &gw.history_stats {
        let history: [(&'static str, &'static str, u64); 5] = [
            (
                "switchyard_history_written_total",
                "Events written to the history store.",
                h.written.load(Ordering::Relaxed),
            ),
            (
                "switchyard_store_errors_total",
                "History writes the store refused (retried until they succeed).",
                h.errors.load(Ordering::Relaxed),
            ),
            (
                "switchyard_history_commits_total",
                "Transactions the history writer committed (events per commit: written / commits).",
                h.commits.load(Ordering::Relaxed),
            ),
            (
                "switchyard_history_commit_microseconds_total",
                "Time the history writer spent in committed transactions.",
                h.commit_us.load(Ordering::Relaxed),
            ),
            (
                "switchyard_history_trimmed_total",
                "History rows removed by retention.",
                h.trimmed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in history {
            x.sample(name, help, Kind::Counter, &[], value as f64);
        }
    }
    if let Some(b) = gw.bus.stats() {
        bus::series(&mut x, b);
    }
    bus::partition_series(&mut x, &gw.bus.owned());

    let set = gw.executor.plugins();
    for (plugin, _) in set.plugins() {
        let m = plugin.metrics();
        let l = [("plugin", plugin.name())];
        let plugin_counters: [(&'static str, &'static str, u64); 5] = [
            (
                "switchyard_plugin_calls_total",
                "Plugin calls (a batch is one call).",
                m.calls.load(Ordering::Relaxed),
            ),
            (
                "switchyard_plugin_traps_total",
                "Plugin calls that trapped.",
                m.traps.load(Ordering::Relaxed),
            ),
            (
                "switchyard_plugin_timeouts_total",
                "Plugin calls stopped by their deadline.",
                m.timeouts.load(Ordering::Relaxed),
            ),
            (
                "switchyard_plugin_memory_limits_total",
                "Plugin calls stopped by the memory cap.",
                m.memory_limits.load(Ordering::Relaxed),
            ),
            (
                "switchyard_plugin_instantiations_total",
                "Plugin instances created.",
                m.instantiations.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in plugin_counters {
            x.sample(name, help, Kind::Counter, &l, value as f64);
        }
        let buckets: Vec<(f64, u64)> = m
            .latency
            .cumulative()
            .into_iter()
            .map(|(ns, n)| (ns as f64 / 1e9, n))
            .collect();
        x.histogram(
            "switchyard_plugin_call_seconds",
            "Latency of plugin calls.",
            &l,
            &buckets,
            m.latency.sum().as_secs_f64(),
        );
        for (interface, per) in crate::plugin::Interface::ALL.iter().zip(&m.interfaces) {
            let calls = per.calls.load(Ordering::Relaxed);
            if calls == 0 {
                continue;
            }
            let l = [("plugin", plugin.name()), ("interface", interface.as_str())];
            let counters: [(&'static str, &'static str, u64); 3] = [
                (
                    "switchyard_plugin_interface_calls_total",
                    "Plugin calls, per interface.",
                    calls,
                ),
                (
                    "switchyard_plugin_interface_traps_total",
                    "Plugin calls that trapped or hit the memory cap, per interface.",
                    per.traps.load(Ordering::Relaxed),
                ),
                (
                    "switchyard_plugin_interface_timeouts_total",
                    "Plugin calls stopped by their deadline, per interface.",
                    per.timeouts.load(Ordering::Relaxed),
                ),
            ];
            for (name, help, value) in counters {
                x.sample(name, help, Kind::Counter, &l, value as f64);
            }
            let buckets: Vec<(f64, u64)> = per
                .latency
                .cumulative()
                .into_iter()
                .map(|(ns, n)| (ns as f64 / 1e9, n))
                .collect();
            x.histogram(
                "switchyard_plugin_interface_call_seconds",
                "Latency of plugin calls, per interface.",
                &l,
                &buckets,
                per.latency.sum().as_secs_f64(),
            );
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_groups_families_with_help_and_type() {
        let mut x = Exposition::default();
        x.sample("a_total", "Things.", Kind::Counter, &[("k", "v\"1")], 3.0);
        x.sample("a_total", "Things.", Kind::Counter, &[("k", "w")], 4.0);
        x.sample("b", "Level.", Kind::Gauge, &[], 1.5);
        x.histogram(
            "h_seconds",
            "Time.",
            &[("p", "x")],
            &[(0.001, 2), (0.01, 5)],
            0.02,
        );
        let text = x.render();
        assert!(text.contains("# HELP a_total Things.\n# TYPE a_total counter\na_total{k=\"v\\\"1\"} 3\na_total{k=\"w\"} 4\n"), "{text}");
        assert!(text.contains("# TYPE b gauge\nb 1.5\n"), "{text}");
        assert!(
            text.contains("h_seconds_bucket{p=\"x\",le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_bucket{p=\"x\",le=\"+Inf\"} 5\nh_seconds_sum{p=\"x\"} 0.02\nh_seconds_count{p=\"x\"} 5\n"), "{text}");
        assert_eq!(text.matches("# TYPE a_total").count(), 1);
    }
}
