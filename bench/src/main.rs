//! `switchyard-bench [SCENARIO…] [--targets switchyard,nats-server,bare] [--quick] [--mapped]`
//!
//! Runs each scenario against each target, one after the other on this
//! machine, and prints Markdown tables with every figure beside the bare
//! broadcaster's. Scenarios: `latency`, `fanout`, `topics`, `direct`,
//! `hot`, `routing`, `failover`, `plugins`, `history`, `held`, `idle`,
//! `publish` (default: all). `--quick` divides
//! sessions, rates and time by 10 (a smoke run, not a measurement).

use std::time::Duration;

use anyhow::bail;
use switchyard_bench::report::{self, Row};
use switchyard_bench::scenario::{self, Spec};
use switchyard_bench::target::{Kind, Options};

const ALL: [&str; 12] = [
    "latency", "fanout", "topics", "direct", "hot", "routing", "failover", "plugins", "history",
    "held", "idle", "publish",
];

/// Scenario `publish`: HTTP publishes in flight.
const IN_FLIGHT: usize = 64;

/// Scenario `failover`: owners SIGKILLed, one after the other.
const KILLS: usize = 10;

/// Scenario `routing`: events published on one topic.
const ROUTED: u64 = 200_000;

/// Scenario `hot`: (sessions, events/s) on one topic over two nodes,
/// events published into NATS.
const HOT: [(usize, u64); 4] = [(1000, 100), (1000, 300), (1000, 1000), (100, 5000)];

/// A throughput scenario: its title, sessions, topics, events/s, whether
/// events are direct messages over two nodes.
struct Load {
    title: &'static str,
    sessions: usize,
    topics: usize,
    rate: u64,
    direct: bool,
}

fn load(name: &str) -> Option<Load> {
    let (title, sessions, topics, rate, direct) = match name {
        "latency" | "held" => ("Latency", 1000, 1, 100, false),
        "fanout" => ("(a) Fan-out", 10_000, 1, 100, false),
        "topics" | "plugins" | "history" => ("(b) Many topics", 10_000, 1000, 5000, false),
        "direct" => (
            "(c) Direct messages to users, two nodes",
            10_000,
            0,
            2000,
            true,
        ),
        _ => return None,
    };
    Some(Load {
        title,
        sessions,
        topics,
        rate,
        direct,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut scenarios: Vec<String> = Vec::new();
    let mut targets = vec![Kind::Switchyard, Kind::Nats, Kind::Bare];
    let mut quick = false;
    let mut mapped = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--mapped" => mapped = true,
            "--targets" => {
                let list = args.next().unwrap_or_default();
                targets = list
                    .split(',')
                    .map(|t| match t {
                        "switchyard" => Ok(Kind::Switchyard),
                        "nats-server" | "nats" => Ok(Kind::Nats),
                        "bare" => Ok(Kind::Bare),
                        other => bail!("unknown target {other:?}"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            s if ALL.contains(&s) => scenarios.push(s.to_owned()),
            other => bail!("unknown argument {other:?}; scenarios: {}", ALL.join(", ")),
        }
    }
    if scenarios.is_empty() {
        scenarios = ALL.iter().map(|s| (*s).to_owned()).collect();
    }
    let scale = if quick { 10 } else { 1 };
    let limit = switchyard_bench::procfs::open_files_limit().unwrap_or(0);
    // Every session costs the load generator a descriptor, and the server
    // one (it inherits this process's limit, in its own process).
    let fits = limit.saturating_sub(1000) as usize;
    if fits < 10_000 / scale {
        bail!("the open-file limit is {limit}: raise it (ulimit -n 200000) for 10000 sessions");
    }
    let idle_sizes = [10_000 / scale, (50_000 / scale).min(fits)];
    if idle_sizes[1] < 50_000 / scale {
        eprintln!(
            "the open-file limit is {limit}: the large idle run has {} sessions instead of {}",
            idle_sizes[1],
            50_000 / scale
        );
    }
    let duration = Duration::from_secs((10 / scale as u64).max(2));
    println!(
        "Switchyard load generator, {} cores, {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick {
            "quick (smoke) run"
        } else {
            "full run"
        }
    );
    for name in &scenarios {
        if name == "idle" {
            idle(&targets, idle_sizes).await?;
            continue;
        }
        if name == "hot" {
            hot(&targets, scale, duration, mapped).await?;
            continue;
        }
        if name == "failover" {
            let kills = (KILLS / scale).max(2);
            eprintln!("running failover: {kills} kills");
            let times = switchyard_bench::failover::run(kills, None).await?;
            println!(
                "### Failover: two nodes on NATS and PostgreSQL, the owner of a topic's partition SIGKILLed {kills} times; seconds from the kill to the first delivery of an event published after it\n\n{}",
                switchyard_bench::failover::table(&times)
            );
            continue;
        }
        if name == "routing" {
            routing(ROUTED / scale as u64).await?;
            continue;
        }
        if name == "publish" {
            publish(duration).await?;
            continue;
        }
        let Some(l) = load(name) else {
            unreachable!("checked above")
        };
        let spec = Spec {
            sessions: l.sessions / scale,
            topics: (l.topics / scale).max(1),
            rate: l.rate / scale as u64,
            duration,
            size: 256,
            direct: l.direct,
        };
        let shape = if l.direct {
            format!("{} sessions, one user each", spec.sessions)
        } else {
            format!("{} sessions on {} topic(s)", spec.sessions, spec.topics)
        };
        if name == "plugins" {
            let mut rows: Vec<Row> = Vec::new();
            for (label, plugins) in [
                ("switchyard, no plugins", false),
                ("switchyard, 3 plugins", true),
            ] {
                eprintln!("running plugins: {label}");
                let options = Options {
                    plugins,
                    ..Options::default()
                };
                let o = scenario::run(Kind::Switchyard, &options, &spec).await?;
                rows.push((label.to_owned(), o));
            }
            println!(
                "### (f) Plugins on vs off, scenario (b): authorizer + router + transformer on every topic\n\n{}",
                report::throughput(&rows, "switchyard, no plugins")
            );
            continue;
        }
        if name == "history" {
            let mut rows: Vec<Row> = Vec::new();
            for (label, kind, no_history) in [
                ("switchyard, history on", Kind::Switchyard, false),
                ("switchyard, history off", Kind::Switchyard, true),
                ("bare", Kind::Bare, false),
            ] {
                eprintln!("running history: {label}");
                let options = Options {
                    no_history,
                    ..Options::default()
                };
                let o = scenario::run(kind, &options, &spec).await?;
                rows.push((label.to_owned(), o));
            }
            println!(
                "### History on vs off, scenario (b): SQLite history of every topic (the default) or none\n\n{}",
                report::throughput(&rows, "bare")
            );
            continue;
        }
        if name == "held" {
            let mut rows: Vec<Row> = Vec::new();
            for (label, kind, queued_acks) in [
                ("switchyard, durable acks", Kind::Switchyard, false),
                (
                    "switchyard, store.durable_ack = false",
                    Kind::Switchyard,
                    true,
                ),
                ("bare", Kind::Bare, false),
            ] {
                eprintln!("running held: {label}");
                let options = Options {
                    queued_acks,
                    ..Options::default()
                };
                let o = scenario::run(kind, &options, &spec).await?;
                rows.push((label.to_owned(), o));
            }
            println!(
                "### Durable acks on and off, latency scenario: local bus, SQLite history; keyed events are delivered once committed\n\n{}",
                report::throughput(&rows, "bare")
            );
            continue;
        }
        let options = Options {
            two_nodes: l.direct,
            mapped,
            ..Options::default()
        };
        let rows = each(&targets, &options, &spec).await?;
        println!(
            "### {}: {shape}, {} events/s, {} B, {} s\n\n{}",
            l.title,
            spec.rate,
            spec.size,
            spec.duration.as_secs(),
            report::throughput(&rows, "bare")
        );
    }
    Ok(())
}

/// One hot topic over two nodes (Switchyard on NATS and PostgreSQL,
/// clustered nats-servers; the bare broadcaster stays one process), events
/// published into NATS (Switchyard: raw `sy.in.<topic>`, relayed to the
/// topic's partition), at each load of [`HOT`].
async fn hot(
    targets: &[Kind],
    scale: usize,
    duration: Duration,
    mapped: bool,
) -> anyhow::Result<()> {
    let options = Options {
        two_nodes: true,
        mapped,
        ..Options::default()
    };
    for (sessions, rate) in HOT {
        let spec = Spec {
            sessions: sessions / scale,
            topics: 1,
            rate: rate / scale as u64,
            duration,
            size: 256,
            direct: false,
        };
        let rows = each(targets, &options, &spec).await?;
        println!(
            "### Hot topic, two nodes: {} sessions on 1 topic, {} events/s, {} B, {} s\n\n{}",
            spec.sessions,
            spec.rate,
            spec.size,
            spec.duration.as_secs(),
            report::throughput(&rows, "bare")
        );
    }
    Ok(())
}

/// One topic routed as fast as it goes: Switchyard on NATS and
/// PostgreSQL (events straight to the partition's subject, then raw
/// through the relay) beside nats-server's own publish and pull.
async fn routing(n: u64) -> anyhow::Result<()> {
    use switchyard_bench::routing::{self, Entry};
    let mut rows = Vec::new();
    eprintln!("running routing: {n} events into nats-server alone");
    rows.push((
        "nats-server: JetStream publish + pull, ack each".to_owned(),
        routing::nats_server(n, 256).await?,
    ));
    for (label, entry) in [
        ("switchyard: to the partition's subject", Entry::Partition),
        ("switchyard: raw, through the relay", Entry::Relay),
    ] {
        eprintln!("running routing: {n} events into {label}");
        rows.push((
            label.to_owned(),
            routing::switchyard(entry, n, 256, None).await?,
        ));
    }
    println!(
        "### Routing one topic: {n} events of 256 B published into JetStream ({} in flight), one session; Switchyard with history on PostgreSQL\n\n{}",
        routing::WINDOW,
        routing::table(&rows, "nats-server: JetStream publish + pull, ack each")
    );
    Ok(())
}

/// HTTP publishes answered once durable beside once queued, SQLite and
/// PostgreSQL, each pair run back to back.
async fn publish(duration: Duration) -> anyhow::Result<()> {
    use switchyard_bench::publish;
    let mut rows = Vec::new();
    for postgres_store in [false, true] {
        let store = if postgres_store {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        for queued_acks in [true, false] {
            let label = format!(
                "{store}, {}",
                if queued_acks {
                    "answered once queued"
                } else {
                    "answered once durable"
                }
            );
            eprintln!("running publish: {label}");
            let options = Options {
                postgres_store,
                queued_acks,
                ..Options::default()
            };
            let p = publish::run(&options, IN_FLIGHT, duration, 256).await?;
            rows.push((label, queued_acks, p));
        }
    }
    println!(
        "### Publish: {IN_FLIGHT} HTTP publishes in flight, 256 B, {} topics with history, {} s, local bus\n\n{}",
        100,
        duration.as_secs(),
        publish::table(&rows)
    );
    Ok(())
}

async fn idle(targets: &[Kind], sizes: [usize; 2]) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for n in sizes {
        let spec = Spec {
            sessions: n,
            topics: 1,
            rate: 0,
            duration: Duration::ZERO,
            size: 0,
            direct: false,
        };
        for (label, o) in each(targets, &Options::default(), &spec).await? {
            rows.push((format!("{label}, {n} sessions"), o));
        }
    }
    println!(
        "### (d, e) Idle sessions and connection storm\n\n{}",
        report::idle(&rows)
    );
    Ok(())
}

async fn each(targets: &[Kind], options: &Options, spec: &Spec) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &kind in targets {
        eprintln!(
            "running {} sessions, {} topics, {} events/s{} against {}",
            spec.sessions,
            spec.topics,
            spec.rate,
            if spec.direct { " (direct)" } else { "" },
            kind.name()
        );
        let o = scenario::run(kind, options, spec).await?;
        if let Some(e) = &o.first_error {
            eprintln!("  {} sessions failed; first: {e}", o.failures);
        }
        rows.push((kind.name().to_owned(), o));
    }
    Ok(rows)
}
