//! The servers under test, started as their own processes (how sessions
//! and publishers talk to them: `protocol`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use crate::protocol::{Publisher, bearer, session, token};

/// A client's WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub use crate::config::{ADMIN_TOKEN, Options, SECRET, SERVICE_KEY, workspace};
use crate::config::{partition_mappings, switchyard_config};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Switchyard, JSON protocol, local bus, SQLite history.
    Switchyard,
    /// nats-server's WebSocket listener, NATS text protocol.
    Nats,
    /// The bare tokio-tungstenite broadcaster of this crate.
    Bare,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchyard => "switchyard",
            Kind::Nats => "nats-server",
            Kind::Bare => "bare",
        }
    }
}

/// A running server: every process of the target (killed when dropped).
pub struct Server {
    /// Which.
    pub kind: Kind,
    /// Its processes (their CPU and memory are summed).
    pub pids: Vec<u32>,
    /// Where WebSocket clients connect: session `i` to `ws_addrs[i % len]`.
    pub ws_addrs: Vec<SocketAddr>,
    /// nats-server, or Switchyard on NATS: where the publisher connects.
    pub nats_url: Option<String>,
    /// Switchyard on NATS, profiled: the backplane's pprof port.
    pub profile_port: Option<u16>,
    children: Vec<tokio::process::Child>,
    /// Switchyard: each node's config file and its index in `children`.
    nodes: Vec<(PathBuf, usize)>,
    bin_dir: Option<PathBuf>,
    database: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        if let Some(db) = &self.database {
            let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// The machine's PostgreSQL (trust auth), as the tests use it.
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

fn psql(sql: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("psql")
        .args([&format!("{POSTGRES}/postgres"), "-qc", sql])
        .output()
        .context("running psql (the two-node scenario needs PostgreSQL at 127.0.0.1:5432)")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A binary in `dir`, or next to this one (built in the same profile).
fn sibling(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match dir {
        Some(d) => d.join(name),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.exists() {
        bail!(
            "{} is missing: build it in the same profile (cargo build --release -p switchyard-host -p switchyard-bench)",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(mut cmd: tokio::process::Command, dir: &Path) -> anyhow::Result<tokio::process::Child> {
    let program = format!("{:?}", cmd.as_std().get_program());
    cmd.current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))
}

async fn listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl Server {
    /// Starts `kind` and waits until it accepts connections.
    pub async fn start(kind: Kind, options: &Options) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut server = Server {
            kind,
            pids: Vec::new(),
            ws_addrs: Vec::new(),
            nats_url: None,
            profile_port: None,
            children: Vec::new(),
            nodes: Vec::new(),
            bin_dir: options.bin_dir.clone(),
            database: None,
            _dir: dir,
        };
        let dir = server._dir.path().to_path_buf();
        let nodes = if options.two_nodes { 2 } else { 1 };
        match kind {
            Kind::Switchyard => {
                let mut backplane = None;
                let mut store = None;
                if options.postgres_store {
                    let db = format!("switchyard_bench_{}_{}", std::process::id(), free_port()?);
                    psql(&format!("CREATE DATABASE {db}"))?;
                    server.database = Some(db.clone());
                    store = Some(format!("{POSTGRES}/{db}"));
                }
                if options.two_nodes || options.backplane {
                    // The backplane is part of the target: its CPU counts.
                    let port = free_port()?;
                    let mut c = tokio::process::Command::new("nats-server");
                    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                        .arg(dir.join("jetstream"));
                    if crate::profile::directory().is_some() {
                        let port = free_port()?;
                        c.args(["--profile", &port.to_string()]);
                        server.profile_port = Some(port);
                    }
                    if options.mapped {
                        let file = dir.join("mapped.conf");
                        std::fs::write(&file, partition_mappings(64, 3))?;
                        c.arg("-c").arg(file);
                    }
                    server.add(spawn(c, &dir)?)?;
                    listening(([127, 0, 0, 1], port).into(), "nats-server").await?;
                    let url = format!("nats://127.0.0.1:{port}");
                    let db = format!("switchyard_bench_{}_{}", std::process::id(), free_port()?);
                    psql(&format!("CREATE DATABASE {db}"))?;
                    server.database = Some(db.clone());
                    server.nats_url = Some(url.clone());
                    backplane = Some((url, format!("{POSTGRES}/{db}")));
                }
                for node in 0..nodes {
                    let port = free_port()?;
                    let config = dir.join(format!("bench-{node}.toml"));
                    std::fs::write(
                        &config,
                        switchyard_config(
                            port,
                            node,
                            options,
                            backplane.as_ref(),
                            store.as_deref(),
                        ),
                    )?;
                    let c = switchyard_command(options.bin_dir.as_deref(), &config)?;
                    server.add(spawn(c, &dir)?)?;
                    server.nodes.push((config, server.children.len() - 1));
                    let addr = ([127, 0, 0, 1], port).into();
                    listening(addr, "switchyard").await?;
                    server.ws_addrs.push(addr);
                }
            }
            Kind::Nats => {
                let cluster_ports = [free_port()?, free_port()?];
                for node in 0..nodes {
                    let (client_port, port) = (free_port()?, free_port()?);
                    let mut text = format!(
                        "listen: 127.0.0.1:{client_port}\nmax_connections: 1000000\n\
                         websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\n"
                    );
                    if options.jetstream {
                        text.push_str(&format!(
                            "jetstream {{\n  store_dir: {:?}\n}}\n",
                            dir.join(format!("jetstream-{node}")).display().to_string()
                        ));
                    }
                    if options.two_nodes {
                        let other = cluster_ports[1 - node];
                        text.push_str(&format!(
                            "cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [\"nats://127.0.0.1:{other}\"]\n}}\n",
                            cluster_ports[node]
                        ));
                    }
                    let config = dir.join(format!("nats-{node}.conf"));
                    std::fs::write(&config, text)?;
                    if node == 0 {
                        server.nats_url = Some(format!("nats://127.0.0.1:{client_port}"));
                    }
                    let mut c = tokio::process::Command::new("nats-server");
                    c.arg("-c").arg(&config);
                    server.add(spawn(c, &dir)?)?;
                    let addr = ([127, 0, 0, 1], port).into();
                    listening(addr, "nats-server").await?;
                    server.ws_addrs.push(addr);
                }
                if options.two_nodes {
                    // Let the route form before sessions subscribe.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Kind::Bare => {
                let port = free_port()?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                let mut c = tokio::process::Command::new(sibling(
                    options.bin_dir.as_deref(),
                    "bare-broadcaster",
                )?);
                c.args(["--listen", &addr.to_string()]);
                server.add(spawn(c, &dir)?)?;
                listening(addr, "bare-broadcaster").await?;
                server.ws_addrs.push(addr);
            }
        }
        Ok(server)
    }

    /// SIGKILLs Switchyard node `node`.
    pub async fn kill_node(&mut self, node: usize) -> anyhow::Result<()> {
        let (_, i) = self.nodes.get(node).context("no such node")?;
        let child = &mut self.children[*i];
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Starts Switchyard node `node` again with its config, and waits
    /// until it listens.
    pub async fn restart_node(&mut self, node: usize) -> anyhow::Result<()> {
        let (config, i) = self.nodes.get(node).context("no such node")?.clone();
        let c = switchyard_command(self.bin_dir.as_deref(), &config)?;
        let child = spawn(c, self._dir.path())?;
        self.pids[i] = child.id().context("server pid")?;
        self.children[i] = child;
        listening(self.ws_addrs[node], "switchyard").await
    }

    fn add(&mut self, child: tokio::process::Child) -> anyhow::Result<()> {
        self.pids.push(child.id().context("server pid")?);
        self.children.push(child);
        Ok(())
    }

    /// CPU seconds of all its processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids
            .iter()
            .filter_map(|p| crate::procfs::cpu_seconds(*p))
            .sum()
    }

    /// Resident memory of all its processes (KiB).
    pub fn rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| crate::procfs::rss_kib(*p))
            .sum()
    }

    /// Peak resident memory, summed over its processes (KiB).
    pub fn peak_rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| crate::procfs::peak_rss_kib(*p))
            .sum()
    }
}

fn switchyard_command(
    bin_dir: Option<&Path>,
    config: &Path,
) -> anyhow::Result<tokio::process::Command> {
    let mut c = tokio::process::Command::new(sibling(bin_dir, "switchyard")?);
    c.args(["serve", "--config"]).arg(config);
    // `SWITCHYARD_BENCH_LOG` sets the gateway's log filter (warnings only
    // by default: logging costs CPU).
    c.env(
        "RUST_LOG",
        std::env::var("SWITCHYARD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    Ok(c)
}
