//! Publishers of the fault suite: one per stream, over HTTP with the
//! service key. Each numbers its events from 1, sends the next only once the
//! last was acknowledged, and retries an unanswered or refused publish with
//! the same idempotency key (to the next address in turn) until it is
//! acknowledged or the run stops. Only acknowledged events are recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::checker::Acks;
use crate::support::SERVICE_KEY;

/// A publish not answered within this is retried.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

pub struct Publisher {
    /// The highest sequence number acknowledged.
    pub acked: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Publishes to topic `stream` through `addrs` every `every` until `stop`.
    pub fn start(
        stream: String,
        addrs: Vec<String>,
        every: Duration,
        acks: Arc<Mutex<Acks>>,
        stop: CancellationToken,
    ) -> Self {
        let acked = Arc::new(Mutex::new(0));
        let highest = acked.clone();
        let s = stream.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut attempt = 0usize;
            for seq in 1u64.. {
                let body = json!({
                    "topic": s,
                    "data": { "stream": s, "seq": seq },
                    "idempotency_key": format!("{s}-{seq}"),
                });
                loop {
                    if stop.is_cancelled() {
                        return;
                    }
                    let addr = &addrs[attempt % addrs.len()];
                    match publish(&http, addr, &body).await {
                        Some(id) => {
                            acks.lock().expect("acks").record(&s, seq, id);
                            *highest.lock().expect("acked") = seq;
                            break;
                        }
                        None => {
                            attempt += 1;
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {},
                                _ = stop.cancelled() => return,
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {},
                    _ = stop.cancelled() => return,
                }
            }
        });
        Publisher { acked, task }
    }

    pub fn acked(&self) -> u64 {
        *self.acked.lock().expect("acked")
    }

    /// Stops after the publish in flight (acknowledged or not).
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// The id a publish was acknowledged under, or `None` if it was not.
async fn publish(http: &reqwest::Client, addr: &str, body: &Value) -> Option<String> {
    let resp = http
        .post(format!("http://{addr}/v1/publish"))
        .bearer_auth(SERVICE_KEY)
        .json(body)
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let answer: Value = resp.json().await.ok()?;
    answer["id"].as_str().map(str::to_owned)
}
