//! Real `nats-server` processes with JetStream on free ports: one server,
//! or a cluster of three, which tests kill and restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free TCP port on 127.0.0.1 (released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

pub struct NatsServer {
    pub name: String,
    pub port: u16,
    monitor: u16,
    args: Vec<String>,
    child: Option<Child>,
    _store: std::sync::Arc<tempfile::TempDir>,
}

impl NatsServer {
    /// One server with JetStream.
    pub fn single() -> Self {
        let store = std::sync::Arc::new(tempfile::tempdir().expect("store dir"));
        let port = free_port();
        Self::spawn("solo".into(), port, store, Vec::new())
    }

    /// One server with JetStream, started from a config file holding
    /// `config` (a `mappings` block, say); flags give its port and store.
    pub fn single_with_config(config: &str) -> Self {
        let store = std::sync::Arc::new(tempfile::tempdir().expect("store dir"));
        let file = store.path().join("nats.conf");
        std::fs::write(&file, config).expect("nats config");
        let port = free_port();
        Self::spawn(
            "conf".into(),
            port,
            store,
            vec!["-c".into(), file.display().to_string()],
        )
    }

    /// Three clustered servers with JetStream.
    pub fn cluster() -> Vec<Self> {
        let store = std::sync::Arc::new(tempfile::tempdir().expect("store dir"));
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster))| {
                Self::spawn(
                    format!("n{i}"),
                    *port,
                    store.clone(),
                    vec![
                        "--cluster_name".into(),
                        "sy-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{cluster}"),
                        "--routes".into(),
                        routes.clone(),
                    ],
                )
            })
            .collect()
    }

    fn spawn(
        name: String,
        port: u16,
        store: std::sync::Arc<tempfile::TempDir>,
        extra: Vec<String>,
    ) -> Self {
        let dir: PathBuf = store.path().join(&name);
        let monitor = free_port();
        let mut args = vec![
            "-m".into(),
            monitor.to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.display().to_string(),
            "-n".into(),
            name.clone(),
        ];
        args.extend(extra);
        let mut s = NatsServer {
            name,
            port,
            monitor,
            args,
            child: None,
            _store: store,
        };
        s.start();
        s
    }

    /// Starts (or restarts, on the same port and store) the process and
    /// waits until it accepts connections.
    pub fn start(&mut self) {
        let child = Command::new(binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM, as an operator or a supervisor
    /// would: the server writes its store out before it exits (a SIGKILL of
    /// a single server can lose the last writes its store had not synced).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Waits until this server's replica of every stream is current, as
    /// the stream's leader sees it: an operator restarting servers one at a
    /// time waits for this before the next. (Not `/healthz`: it also waits
    /// for every consumer, and the replica of an in-memory consumer on a
    /// restarted 2.9 server stayed "not current" for over a minute.)
    pub async fn caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.streams_current().await {
                Ok(true) => return,
                Ok(false) => last = "a replica is behind".into(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "nats-server {} not caught up within 60 s: {last}",
            self.name
        );
    }

    async fn streams_current(&self) -> Result<bool, String> {
        use futures_util::StreamExt;
        let client = async_nats::connect(self.url())
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let mut names = js.stream_names();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| e.to_string())?;
            let mut stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            let Some(cluster) = &info.cluster else {
                continue;
            };
            if cluster.leader.as_deref() == Some(self.name.as_str()) {
                continue;
            }
            let current = cluster
                .replicas
                .iter()
                .any(|p| p.name == self.name && p.current && !p.offline);
            if !current {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[bus]` section for a node on these servers.
pub fn bus_section(urls: &[String], replicas: usize) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[bus]\nkind = \"nats\"\nurls = [{urls}]\nreplicas = {replicas}\n")
}

/// A service's JetStream context on `url`.
pub async fn service(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url).await.expect("service connects");
    async_nats::jetstream::new(client)
}

/// Publishes like a service: to `sy.in.<topic>`, metadata in headers;
/// returns the stream sequence once JetStream has it.
pub async fn publish_nats(
    js: &async_nats::jetstream::Context,
    topic: &str,
    data: Value,
    headers: &[(&str, &str)],
) -> Result<u64, String> {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    let ack = js
        .publish_with_headers(format!("sy.in.{topic}"), h, data.to_string().into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}
