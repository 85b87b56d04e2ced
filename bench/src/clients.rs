//! Client sessions: opened in parallel (the connect rate is measured), each
//! a task reading frames, finding payloads and recording their latency.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::payload;
use crate::target::{Kind, Server, session};

/// What every session saw.
pub struct Tally {
    /// Payloads received, all sessions.
    pub received: AtomicU64,
    /// When the last one came (ns since the epoch).
    pub last_ns: AtomicU64,
    /// Sessions the server closed.
    pub ended: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

const SHARDS: usize = 32;
/// Latency samples a session keeps before adding them to a shared histogram.
const LOCAL: usize = 128;

impl Tally {
    /// Empty.
    pub fn new() -> Arc<Self> {
        Arc::new(Tally {
            received: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        })
    }

    fn add(&self, shard: usize, samples: &mut Vec<u64>) {
        let mut h = self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in samples.drain(..) {
            h.saturating_record(s);
        }
    }

    /// Latency of every payload received (µs).
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = all.add(&*h);
        }
        all
    }
}

fn latency_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Sessions opened.
pub struct Sessions {
    /// Session tasks (they end when told to stop, or when the server closes).
    pub tasks: Vec<JoinHandle<()>>,
    /// Sessions that could not be opened.
    pub failures: u64,
    /// Time to open them all.
    pub elapsed: Duration,
    /// The first failure, if any.
    pub first_error: Option<String>,
    stop: watch::Sender<bool>,
}

impl Sessions {
    /// Tells every session to stop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Local addresses the sessions connect from (one source address has
/// ~28,000 ephemeral ports).
fn source(i: usize) -> IpAddr {
    [127, 0, 0, (i % 8 + 1) as u8].into()
}

/// Opens `n` sessions, session `i` subscribed to `topics_of(i)`, at most
/// `parallel` handshakes at a time.
pub async fn open(
    server: &Arc<Server>,
    n: usize,
    topics_of: impl Fn(usize) -> Vec<String>,
    parallel: usize,
    tally: &Arc<Tally>,
) -> Sessions {
    let (stop, stopped) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(parallel));
    let bearers: Vec<Option<String>> = (0..n)
        .map(|i| crate::target::bearer(server, &format!("user{i}")))
        .collect();
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::with_capacity(n);
    for (i, bearer) in bearers.into_iter().enumerate() {
        let server = server.clone();
        let topics = topics_of(i);
        let tally = tally.clone();
        let gate = gate.clone();
        let done = done_tx.clone();
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = session(&server, i, source(i), bearer.as_deref(), &topics).await;
            drop(permit);
            match opened {
                Ok(ws) => {
                    let _ = done.send(Ok(()));
                    drop(done);
                    read(ws, server.kind, i, &tally, stopped).await;
                }
                Err(e) => {
                    let _ = done.send(Err(format!("{e:#}")));
                }
            }
        }));
    }
    drop(done_tx);
    let mut failures = 0;
    let mut first_error = None;
    for _ in 0..n {
        match done_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    Sessions {
        tasks,
        failures,
        elapsed: started.elapsed(),
        first_error,
        stop,
    }
}

async fn read(
    mut ws: crate::target::Ws,
    kind: Kind,
    index: usize,
    tally: &Tally,
    mut stopped: watch::Receiver<bool>,
) {
    let mut samples = Vec::with_capacity(LOCAL);
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = stopped.changed() => break,
        };
        let bytes = match msg {
            Some(Ok(Message::Text(t))) => t.into(),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                tally.ended.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let now = payload::now_ns();
        let mut got = 0;
        payload::scan(&bytes, |_, sent| {
            samples.push(now.saturating_sub(sent) / 1000);
            got += 1;
        });
        if got > 0 {
            tally.received.fetch_add(got, Ordering::Relaxed);
            tally.last_ns.fetch_max(now, Ordering::Relaxed);
            if samples.len() >= LOCAL {
                tally.add(index, &mut samples);
            }
        }
        // nats-server pings idle clients; unanswered, it disconnects them.
        if kind == Kind::Nats && bytes.windows(6).any(|w| w == b"PING\r\n") {
            let _ = ws.send(Message::binary(b"PONG\r\n".to_vec())).await;
        }
    }
    tally.add(index, &mut samples);
}
