//! A TCP proxy (loopback only) that can cut its links (every open
//! connection closed at once), blackhole them (bytes held in both
//! directions, connections left open: a peer gone silent behind a NAT, or
//! a database that stops answering) and delay them (every chunk held for a
//! while, order kept).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How the proxy treats bytes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing goes through; connections stay open.
    Blackhole,
    /// Everything goes through this late.
    Delay(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Bumped by [`LinkProxy::cut`]: connections of older generations close.
    generation: u64,
}

pub struct LinkProxy {
    pub port: u16,
    state: Arc<watch::Sender<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(watch::Sender::new(State {
            mode: Mode::Pass,
            generation: 0,
        }));
        let s = state.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let generation = s.borrow().generation;
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, s.subscribe(), generation));
                tokio::spawn(pipe(sr, cw, s.subscribe(), generation));
            }
        });
        LinkProxy { port, state, task }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    /// Closes every connection open now; new ones are let through.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// One direction: a reader that stamps chunks and a writer that sends each
/// once its delay has passed and the link is not blackholed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let mut reader_state = state.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = reader_state.wait_for(|s| s.generation != generation) => return,
            };
            if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            loop {
                let s = *state.borrow_and_update();
                if s.generation != generation {
                    return;
                }
                let due = match s.mode {
                    Mode::Pass => at,
                    Mode::Delay(d) => at + d,
                    Mode::Blackhole => {
                        if state.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    r = state.changed() => if r.is_err() { return },
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer sends what was read before an end of stream; a cut ends both.
    tokio::join!(reader, writer);
}
