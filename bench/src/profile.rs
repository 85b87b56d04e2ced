//! Go CPU profiles of the backplane nats-server during a run's publishing,
//! when `SWITCHYARD_BENCH_NATS_PROFILE` names a directory: the server is
//! started with `--profile <port>` and the profile written there as
//! `backplane-<unix ms>.pb.gz` (read it with `go tool pprof` or any pprof
//! decoder). With `SWITCHYARD_BENCH_PERF` set too, the Switchyard nodes
//! are recorded by `perf record -g` over the same window, into
//! `nodes-<unix ms>.perf.data`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The directory profiles go to, if asked for.
pub fn directory() -> Option<PathBuf> {
    std::env::var_os("SWITCHYARD_BENCH_NATS_PROFILE").map(PathBuf::from)
}

/// Fetches a `seconds`-long CPU profile from the pprof listener on `port`
/// and writes it to the profile directory; reports where on stderr.
pub fn capture(port: u16, seconds: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(dir) = directory() else { return };
        match fetch(port, seconds).await {
            Ok(body) => {
                let path = dir.join(format!("backplane-{}.pb.gz", unix_ms()));
                match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, body)) {
                    Ok(()) => eprintln!("backplane profile: {}", path.display()),
                    Err(e) => eprintln!("backplane profile not written: {e}"),
                }
            }
            Err(e) => eprintln!("backplane profile not taken: {e}"),
        }
    })
}

/// Records `pids` with `perf` for `seconds`, if asked for.
pub fn perf(pids: &[u32], seconds: u64) -> Option<tokio::task::JoinHandle<()>> {
    let dir = directory()?;
    std::env::var_os("SWITCHYARD_BENCH_PERF")?;
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let path = dir.join(format!("nodes-{}.perf.data", unix_ms()));
    Some(tokio::spawn(async move {
        let _ = std::fs::create_dir_all(&dir);
        let status = tokio::process::Command::new("perf")
            .args(["record", "-q", "-F", "499", "-g", "-p", &pids, "-o"])
            .arg(&path)
            .args(["--", "sleep", &seconds.to_string()])
            .status()
            .await;
        match status {
            Ok(s) if s.success() => eprintln!("nodes' perf record: {}", path.display()),
            other => eprintln!("perf record failed: {other:?}"),
        }
    }))
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

async fn fetch(port: u16, seconds: u64) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request =
        format!("GET /debug/pprof/profile?seconds={seconds} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(seconds + 30),
        s.read_to_end(&mut response),
    )
    .await
    .map_err(|_| std::io::Error::other("timed out"))??;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    if !response.starts_with(b"HTTP/1.0 200") && !response.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not 200"));
    }
    Ok(response[body + 4..].to_vec())
}
