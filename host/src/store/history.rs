//! The history writer: routed events are written in batches (ingest never
//! waits on one insert per event), with the newest sequence of the epoch
//! it has handled (where the local bus resumes after a restart), and
//! retention applied as it goes.
//!
//! Records are written in the order they are sent, so a [`Record::Barrier`]
//! completes once everything sent before it is in the store: what a
//! replay waits for, and what an ingest acknowledgement waits for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::Store;
use super::gate::WriteGate;
use super::retention::{Headroom, Policy};
use crate::routing::{EventId, Routed};

/// What the router stage tells the writer.
#[derive(Debug)]
pub enum Record {
    /// An event and where it went.
    Routed(Routed),
    /// An event whose publisher waits until it is committed.
    Acked(Routed, crate::pipeline::durable::Ack),
    /// A sequence handled without history (dropped by a router, malformed).
    Skipped(EventId),
    /// An event addressed to a user reached one of their live sessions:
    /// their inbox is delivered up to it, for the partition that routed it.
    Delivered {
        /// The user and the partition.
        shown: super::inbox::Shown,
        /// The event.
        id: EventId,
    },
    /// Answered once every record sent before it is written.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Events written.
    pub written: AtomicU64,
    /// Batches that failed (retried).
    pub errors: AtomicU64,
    /// History rows removed by retention.
    pub trimmed: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Time spent in committed transactions (µs).
    pub commit_us: AtomicU64,
}

/// The sending side, shared by the router lanes.
pub struct History {
    tx: mpsc::Sender<Record>,
    retention: Policy,
    task: TaskTracker,
    stop: tokio_util::sync::CancellationToken,
    /// Counters.
    pub stats: Arc<HistoryStats>,
}

/// Records waiting for the writer before router lanes wait.
const BACKLOG: usize = 65_536;
/// The most records in one transaction.
const BATCH: usize = 1024;
/// How long a small batch waits for more records.
const LINGER: Duration = Duration::from_millis(5);
/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How often the writer forgets what it counted of each stream (see
/// [`Headroom`]): rows another node wrote are seen at this node's first
/// write to the stream after that.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// The idempotency key a publisher gave the event.
pub fn idempotency_key(event: &crate::routing::Event) -> Option<&str> {
    event
        .headers
        .iter()
        .find(|(k, _)| k == crate::bus::wire::IDEMPOTENCY_HEADER)
        .map(|(_, v)| v.as_str())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl History {
    /// Starts the writer on `store`.
    pub fn start(store: Store, retention: Policy) -> Self {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let stats = Arc::new(HistoryStats::default());
        let task = TaskTracker::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let headroom = Arc::new(Mutex::new(Headroom::default()));
        let gate = WriteGate::for_store(&store);
        task.spawn(trim_loop(
            store.clone(),
            retention.clone(),
            gate.clone(),
            headroom.clone(),
            stats.clone(),
            stop.clone(),
        ));
        task.spawn(write_loop(
            store,
            retention.clone(),
            gate,
            headroom,
            rx,
            stats.clone(),
            stop.clone(),
        ));
        task.close();
        History {
            tx,
            retention,
            task,
            stop,
            stats,
        }
    }

    /// Whether the writer stores something of `routed` (a row in a stream,
    /// or its idempotency key): then its publisher waits for the commit.
    pub fn keeps(&self, routed: &Routed) -> bool {
        idempotency_key(&routed.event).is_some()
            || self.retention.streams_of(routed).next().is_some()
    }

    /// Hands a record to the writer, waiting for room.
    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::warn!("history writer stopped; record lost");
        }
    }

    /// Hands a record over if there is room at once (else it is lost: an
    /// inbox cursor left behind, or a skipped sequence the high mark passes
    /// anyway).
    pub fn try_record(&self, record: Record) {
        let _ = self.tx.try_send(record);
    }

    /// Completes once every record sent before this call is in the store
    /// (once the writer has ended, if it is closing).
    pub async fn barrier(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Record::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        } else {
            // Closing: it writes what it had before it ends.
            self.task.wait().await;
        }
    }

    /// Stops taking records and waits until everything sent is written.
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        self.task.wait().await;
    }
}

/// The newest sequence of the epoch handled so far (written or skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighMark {
    /// The epoch.
    pub epoch: u64,
    /// The newest sequence.
    pub upto: u64,
}

impl HighMark {
    /// Takes `id` into account: a newer epoch starts over.
    pub fn mark(mark: &mut Option<HighMark>, id: EventId) {
        match mark {
            Some(m) if m.epoch == id.epoch => m.upto = m.upto.max(id.seq),
            Some(m) if m.epoch > id.epoch => {}
            _ => {
                *mark = Some(HighMark {
                    epoch: id.epoch,
                    upto: id.seq,
                })
            }
        }
    }
}

/// Applies retention every [`TRIM_EVERY`], beside the writer: a barrier
/// (what acknowledgements and replays wait for) never waits for a trim.
async fn trim_loop(
    store: Store,
    retention: Policy,
    gate: WriteGate,
    headroom: Arc<Mutex<Headroom>>,
    stats: Arc<HistoryStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let lock = || headroom.lock().unwrap_or_else(PoisonError::into_inner);
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_recount = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let due = lock().due();
        match store.trim_in_turn(&retention, &due, now_ms(), &gate).await {
            Ok(trimmed) => {
                stats.trimmed.fetch_add(trimmed.removed, Ordering::Relaxed);
                let mut headroom = lock();
                for (stream, left) in &trimmed.room {
                    headroom.counted(stream, *left, &due);
                }
            }
            Err(e) => tracing::warn!(error = %e, "history retention failed"),
        }
        let horizon = now_ms().saturating_sub(retention.key_window_ms());
        let trimmed_keys = {
            let _turn = gate.turn().await;
            store.trim_keys(horizon).await
        };
        if let Err(e) = trimmed_keys {
            tracing::warn!(error = %e, "idempotency keys not trimmed");
        }
        if last_recount.elapsed() >= RECOUNT_EVERY {
            last_recount = Instant::now();
            lock().forget();
        }
    }
}

async fn write_loop(
    store: Store,
    retention: Policy,
    gate: WriteGate,
    headroom: Arc<Mutex<Headroom>>,
    mut rx: mpsc::Receiver<Record>,
    stats: Arc<HistoryStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut closing = false;
    let mut batch = Vec::with_capacity(BATCH);
    let mut mark: Option<HighMark> = None;
    let mut written_upto: Option<(u64, u64)> = None;
    loop {
        batch.clear();
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            // Take no more, but write what was sent.
            () = stop.cancelled(), if !closing => {
                rx.close();
                closing = true;
                continue;
            }
        };
        if n == 0 {
            // Closed, and everything sent is written.
            break;
        }
        let waited_on = |b: &Vec<Record>| {
            b.iter()
                .any(|r| matches!(r, Record::Barrier(_) | Record::Acked(..)))
        };
        if n > 0 && n < BATCH / 2 && !closing && !waited_on(&batch) {
            // A trickle of events: wait a moment for more, so that a batch
            // is one transaction of many rows rather than one per event
            // (each statement is two thread hand-offs through sqlx's SQLite
            // worker). A barrier or a waiting publisher skips the wait:
            // publishes that come while one commit runs share the next.
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        let mut routed = Vec::with_capacity(batch.len());
        let mut keys = Vec::new();
        let mut delivered: HashMap<super::inbox::Shown, EventId> = HashMap::new();
        let mut barriers = Vec::new();
        let mut acks = Vec::new();
        for record in batch.drain(..) {
            let id = match record {
                Record::Routed(r) => {
                    let id = Some(r.event.id);
                    routed.push(r);
                    id
                }
                Record::Acked(r, ack) => {
                    let id = Some(r.event.id);
                    if let Some(key) = idempotency_key(&r.event) {
                        keys.push((Arc::<str>::from(key), r.event.id));
                    }
                    routed.push(r);
                    acks.push(ack);
                    id
                }
                Record::Skipped(id) => Some(id),
                Record::Delivered { shown, id } => {
                    let newest = delivered.entry(shown).or_insert(id);
                    *newest = (*newest).max(id);
                    None
                }
                Record::Barrier(done) => {
                    barriers.push(done);
                    None
                }
            };
            if let Some(id) = id {
                HighMark::mark(&mut mark, id);
            }
        }
        if let Some(m) = &mark
            && !(routed.is_empty() && written_upto == Some((m.epoch, m.upto)))
        {
            // Retried until it goes through: history is not lost to a blip.
            let mut delay = Duration::from_millis(50);
            loop {
                let turn = gate.turn().await;
                let began = Instant::now();
                let wrote = store
                    .write(&routed, &keys, m.epoch, m.upto, now_ms(), &retention)
                    .await;
                drop(turn);
                match wrote {
                    Ok(streams) => {
                        let mut headroom = headroom.lock().unwrap_or_else(PoisonError::into_inner);
                        for stream in &streams {
                            headroom.wrote(stream, 1);
                        }
                        drop(headroom);
                        stats
                            .written
                            .fetch_add(routed.len() as u64, Ordering::Relaxed);
                        written_upto = Some((m.epoch, m.upto));
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        stats
                            .commit_us
                            .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "history write failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        // Before the inbox cursors: a waiting publisher is answered as soon
        // as its commit is through.
        for ack in acks {
            ack.durable();
        }
        if !delivered.is_empty() {
            let cursors: Vec<(super::inbox::Shown, EventId)> = delivered.into_iter().collect();
            // Not retried: a cursor left behind only means an event shown
            // live is offered again on the next connect.
            let marked = {
                let _turn = gate.turn().await;
                store.mark_delivered(&cursors).await
            };
            if let Err(e) = marked {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "inbox delivery cursors not written");
            }
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_mark_keeps_the_newest_sequence_of_the_newest_epoch() {
        let mut m = None;
        HighMark::mark(&mut m, EventId { epoch: 2, seq: 10 });
        HighMark::mark(&mut m, EventId { epoch: 2, seq: 7 });
        assert_eq!(m, Some(HighMark { epoch: 2, upto: 10 }));
        HighMark::mark(&mut m, EventId { epoch: 1, seq: 99 });
        assert_eq!(
            m,
            Some(HighMark { epoch: 2, upto: 10 }),
            "older epochs change nothing"
        );
        HighMark::mark(&mut m, EventId { epoch: 3, seq: 1 });
        assert_eq!(m, Some(HighMark { epoch: 3, upto: 1 }));
    }
}
