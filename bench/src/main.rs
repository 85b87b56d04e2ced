//! `switchyard-bench [SCENARIO…] [--targets switchyard,nats-server,bare] [--quick]`
//!
//! Runs each scenario against each target, one after the other on this
//! machine, and prints Markdown tables with every figure beside the bare
//! broadcaster's. Scenarios: `latency`, `fanout`, `topics`, `plugins`,
//! `idle` (default: all). `--quick` divides sessions and time by 10 (a
//! smoke run, not a measurement).

use std::time::Duration;

use anyhow::bail;
use switchyard_bench::report::{self, Row};
use switchyard_bench::scenario::{self, Spec};
use switchyard_bench::target::{Kind, Options};

const ALL: [&str; 5] = ["latency", "fanout", "topics", "plugins", "idle"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut scenarios: Vec<String> = Vec::new();
    let mut targets = vec![Kind::Switchyard, Kind::Nats, Kind::Bare];
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
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
    // Every session costs the load generator and the server a descriptor
    // each (both inherit this process's limit).
    let fits = (limit.saturating_sub(1000) / 2) as usize;
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
    let secs = |s: u64| Duration::from_secs((s / scale as u64).max(2));
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
        match name.as_str() {
            "latency" => {
                let spec = Spec {
                    sessions: 1000 / scale,
                    topics: 1,
                    rate: 100,
                    duration: secs(10),
                    size: 256,
                };
                let rows = each(&targets, &spec).await?;
                println!(
                    "### Latency: {} sessions on one topic, {} events/s, {} B\n\n{}",
                    spec.sessions,
                    spec.rate,
                    spec.size,
                    report::throughput(&rows, "bare")
                );
            }
            "fanout" => {
                let spec = Spec {
                    sessions: 10_000 / scale,
                    topics: 1,
                    rate: 100,
                    duration: secs(10),
                    size: 256,
                };
                let rows = each(&targets, &spec).await?;
                println!(
                    "### (a) Fan-out: {} sessions on one topic, {} events/s, {} B\n\n{}",
                    spec.sessions,
                    spec.rate,
                    spec.size,
                    report::throughput(&rows, "bare")
                );
            }
            "topics" => {
                let spec = Spec {
                    sessions: 10_000 / scale,
                    topics: 1000 / scale,
                    rate: 5000 / scale as u64,
                    duration: secs(10),
                    size: 256,
                };
                let rows = each(&targets, &spec).await?;
                println!(
                    "### (b) Many topics: {} sessions on {} topics, {} events/s, {} B\n\n{}",
                    spec.sessions,
                    spec.topics,
                    spec.rate,
                    spec.size,
                    report::throughput(&rows, "bare")
                );
            }
            "plugins" => {
                let spec = Spec {
                    sessions: 10_000 / scale,
                    topics: 1000 / scale,
                    rate: 5000 / scale as u64,
                    duration: secs(10),
                    size: 256,
                };
                let mut rows: Vec<Row> = Vec::new();
                for (label, plugins) in [
                    ("switchyard, no plugins", false),
                    ("switchyard, 3 plugins", true),
                ] {
                    eprintln!("running plugins: {label}");
                    let o = scenario::run(
                        Kind::Switchyard,
                        &Options {
                            plugins,
                            ..Options::default()
                        },
                        &spec,
                    )
                    .await?;
                    rows.push((label.to_owned(), o));
                }
                println!(
                    "### (f) Plugins on vs off, scenario (b): authorizer + router + transformer on every topic\n\n{}",
                    report::throughput(&rows, "switchyard, no plugins")
                );
            }
            "idle" => {
                let mut rows: Vec<Row> = Vec::new();
                for n in idle_sizes {
                    let spec = Spec {
                        sessions: n,
                        topics: 1,
                        rate: 0,
                        duration: Duration::ZERO,
                        size: 0,
                    };
                    for (label, o) in each(&targets, &spec).await? {
                        rows.push((format!("{label}, {n} sessions"), o));
                    }
                }
                println!(
                    "### (d, e) Idle sessions and connection storm\n\n{}",
                    report::idle(&rows, &format!("bare, {} sessions", 10_000 / scale))
                );
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

async fn each(targets: &[Kind], spec: &Spec) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &kind in targets {
        eprintln!(
            "running {} sessions, {} topics, {} events/s against {}",
            spec.sessions,
            spec.topics,
            spec.rate,
            kind.name()
        );
        let o = scenario::run(kind, &Options::default(), spec).await?;
        if let Some(e) = &o.first_error {
            eprintln!("  {} sessions failed; first: {e}", o.failures);
        }
        rows.push((kind.name().to_owned(), o));
    }
    Ok(rows)
}
