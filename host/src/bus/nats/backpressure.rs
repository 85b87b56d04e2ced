//! Backpressure across nodes: each node reports every half second how far
//! behind the partitions it owns are (`<prefix>.lag`), and every node
//! keeps the latest reports, so that a publish on any node to a partition
//! past `bus.max_lag_ms` is refused at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::owned::Owned;
use crate::bus::lag::Lags;
use crate::bus::wire::Subjects;
use crate::routing::Partition;

/// How often a node reports its partitions' lag.
const REPORT_EVERY: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
struct Report {
    /// (partition, lag in ms)
    lag: Vec<(u16, u64)>,
}

/// The lag of every partition, as reported.
#[derive(Default)]
pub struct Backpressure {
    lags: Mutex<Lags>,
}

impl Backpressure {
    /// How far `partition` is past `max_ms`, if it is.
    pub fn behind(&self, partition: Partition, max_ms: u64) -> Option<u64> {
        self.lags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .behind(partition, max_ms, Instant::now())
    }

    /// Reports this node's partitions and hears the others' until `stop`.
    pub async fn run(
        self: Arc<Self>,
        client: async_nats::Client,
        subjects: Subjects,
        owned: Arc<Owned>,
        stop: CancellationToken,
    ) {
        let mut reports = match client.subscribe(subjects.lag()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot hear lag reports; publishes are not held back");
                return;
            }
        };
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let lag = owned.lags();
                    if !lag.is_empty()
                        && let Ok(json) = serde_json::to_vec(&Report { lag })
                    {
                        let _ = client.publish(subjects.lag(), json.into()).await;
                    }
                    self.lags
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .forget_stale(Instant::now());
                }
                m = reports.next() => {
                    let Some(m) = m else { return };
                    let Ok(r) = serde_json::from_slice::<Report>(&m.payload) else { continue };
                    let now = Instant::now();
                    let mut lags = self.lags.lock().unwrap_or_else(PoisonError::into_inner);
                    for (p, ms) in r.lag {
                        lags.report(Partition(p), ms, now);
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}
