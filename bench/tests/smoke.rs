//! The load generator against the two peers at a small scale: every event
//! is counted once per subscriber, latencies are recorded, memory and CPU
//! are read.

use std::path::Path;
use std::time::Duration;

use switchyard_bench::scenario::{self, Spec};
use switchyard_bench::target::{Kind, Options};

fn options() -> Options {
    Options {
        plugins: false,
        two_nodes: false,
        no_history: false,
        bin_dir: bin_dir(),
        ..Options::default()
    }
}

fn bin_dir() -> Option<std::path::PathBuf> {
    Path::new(env!("CARGO_BIN_EXE_bare-broadcaster"))
        .parent()
        .map(Path::to_path_buf)
}

async fn small_run(kind: Kind) {
    small_run_with(kind, &options()).await;
}

async fn small_run_with(kind: Kind, options: &Options) {
    let spec = Spec {
        sessions: 60,
        topics: 7,
        rate: 300,
        duration: Duration::from_secs(1),
        size: 256,
        direct: false,
    };
    let o = scenario::run(kind, options, &spec)
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
    assert_eq!((o.opened, o.failures), (60, 0), "{o:?}");
    assert_eq!(o.published, 300, "{o:?}");
    // 300 events round-robin over 7 topics, 60 sessions over the same 7.
    let per_topic: Vec<u64> = (0..7)
        .map(|t| (0..60).filter(|i| i % 7 == t).count() as u64)
        .collect();
    let expected: u64 = (0..300).map(|e| per_topic[e % 7]).sum();
    assert_eq!(o.expected, expected);
    assert_eq!(o.received, expected, "{}: nothing lost: {o:?}", kind.name());
    assert!(
        o.p50_us > 0 && o.p50_us <= o.p99_us && o.p99_us <= o.p999_us,
        "{o:?}"
    );
    assert!(
        o.rss_idle_kib > 0 && o.rss_peak_kib >= o.rss_idle_kib,
        "{o:?}"
    );
    assert!(o.server_cpu_s >= 0.0 && o.deliveries_per_s > 0.0, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_delivery_on_the_bare_broadcaster() {
    small_run(Kind::Bare).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_delivery_on_nats_server_websockets() {
    small_run(Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_delivery_on_switchyard() {
    small_run(Kind::Switchyard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_delivery_on_switchyard_without_history() {
    let options = Options {
        no_history: true,
        ..options()
    };
    small_run_with(Kind::Switchyard, &options).await;
}

/// Scenario (c) at a small scale: sessions alternate between two nodes,
/// every event goes to one user, entering through the first node.
async fn direct_run(kind: Kind) {
    let spec = Spec {
        sessions: 40,
        topics: 0,
        rate: 200,
        duration: Duration::from_secs(1),
        size: 256,
        direct: true,
    };
    let options = Options {
        two_nodes: true,
        ..options()
    };
    let o = scenario::run(kind, &options, &spec)
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
    assert_eq!((o.opened, o.failures), (40, 0), "{o:?}");
    assert_eq!((o.published, o.expected), (200, 200), "{o:?}");
    assert_eq!(o.received, 200, "{}: nothing lost: {o:?}", kind.name());
    assert!(o.server_cpu_s > 0.0, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_users_on_both_switchyard_nodes() {
    direct_run(Kind::Switchyard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_cross_two_clustered_nats_servers() {
    direct_run(Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_scenario_counts_every_event_on_both_sides() {
    use switchyard_bench::routing::{self, Entry};
    let nats = routing::nats_server(2_000, 256).await.expect("nats-server");
    assert_eq!((nats.published, nats.arrived), (2_000, 2_000), "{nats:?}");
    assert_eq!(nats.duplicates, 0, "{nats:?}");
    for entry in [Entry::Partition, Entry::Relay] {
        let o = routing::switchyard(entry, 2_000, 256, bin_dir())
            .await
            .expect("switchyard");
        assert_eq!((o.published, o.arrived), (2_000, 2_000), "{entry:?}: {o:?}");
        assert_eq!(o.duplicates, 0, "{entry:?}: each event once: {o:?}");
        assert!(o.seconds > 0.0 && o.cpu_s > 0.0, "{o:?}");
    }
    let table = routing::table(&[("nats".to_owned(), nats)], "nats");
    assert!(table.contains("| nats | 2000 | 2000 | 0 |"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_scenario_times_a_kill_and_restarts_the_node() {
    // Two kills: the second needs the restarted node to own its share again.
    let times = switchyard_bench::failover::run(2, bin_dir())
        .await
        .expect("failover");
    assert_eq!(times.len(), 2);
    assert!(times.iter().all(|t| *t > 0.0 && *t < 30.0), "{times:?}");
}
