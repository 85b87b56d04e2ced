//! The real `switchyard` binary as a gateway node, for tests that kill it
//! (SIGKILL) or pause it (SIGSTOP) as a crash or a stall would.

use std::path::Path;
use std::time::Duration;

use super::nats::free_port;
use super::{ADMIN_TOKEN, SECRET, SERVICE_KEY};

pub struct GatewayProcess {
    pub url: String,
    child: tokio::process::Child,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts node `node` with `sections` (its `[bus]`, `[store]` …; a
    /// SQLite file of its own without `[store]`) and waits until it
    /// answers `/healthz`.
    pub async fn start(node: &str, sections: &str) -> Self {
        Self::start_with_server(node, "", sections).await
    }

    /// [`GatewayProcess::start`] with more `[server]` keys (`server`, one
    /// `key = value` a line).
    pub async fn start_with_server(node: &str, server: &str, sections: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let sections = if sections.contains("[store]") {
            sections.to_owned()
        } else {
            format!(
                "{sections}[store]\nurl = \"sqlite://{}\"\n",
                dir.path().join("store.db").display()
            )
        };
        let port = free_port();
        let path = dir.path().join(format!("{node}.toml"));
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nnode_id = \"{node}\"\n{server}\
                 [auth]\njwt_hs256_secret = \"{SECRET}\"\nservice_keys = [\"{SERVICE_KEY}\"]\n\
                 admin_token = \"{ADMIN_TOKEN}\"\n{sections}[runtime]\ncache_dir = \"cache\"\n"
            ),
        )
        .expect("config");
        let child = spawn(&path);
        let url = format!("http://127.0.0.1:{port}");
        let p = GatewayProcess {
            url,
            child,
            config: path,
            _dir: dir,
        };
        p.answering().await;
        p
    }

    async fn answering(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.get("/healthz").await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not start",
                self.config.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it again after [`GatewayProcess::kill`]: the same config,
    /// port and store.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.config);
        self.answering().await;
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig}");
    }

    /// Freezes the process (SIGSTOP): it neither beats nor routes.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Stops it as an operator would (SIGTERM): it drains, telling its
    /// sessions to reconnect elsewhere, and exits.
    pub async fn terminate(&mut self) {
        self.signal("-TERM");
        let _ = self.child.wait().await;
    }

    /// Kills it at once (SIGKILL), without a drain.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// GET with the admin token: the status and body, `None` if it does
    /// not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// The value of an unlabelled series in `/metrics`, if it answers.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }
}

fn spawn(config: &Path) -> tokio::process::Child {
    // `SWITCHYARD_NODE_LOG=<filter>` shows the nodes' logs on stderr.
    let log = std::env::var("SWITCHYARD_NODE_LOG").ok();
    let stderr = match log {
        Some(_) => std::process::Stdio::inherit(),
        None => std::process::Stdio::null(),
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(log.map(|filter| ("RUST_LOG", filter)))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard runs")
}
