//! The history writer: routed events are written in batches (ingest never
//! waits on one insert per event), with the watermark below which every
//! sequence of the epoch has been handled, and retention applied as it goes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::Store;
use super::retention::{Headroom, Policy};
use crate::routing::{EventId, Routed};

/// What the router stage tells the writer.
#[derive(Debug)]
pub enum Record {
    /// An event and where it went.
    Routed(Routed),
    /// A sequence handled without history (dropped by a router, malformed).
    Skipped(EventId),
    /// An event addressed to `user` reached one of their live sessions:
    /// their inbox is delivered up to it.
    Delivered {
        /// The user.
        user: String,
        /// The event.
        id: EventId,
    },
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
    /// Times the watermark skipped a sequence that never came.
    pub skipped_gaps: AtomicU64,
}

/// The sending side, shared by the router lanes.
pub struct History {
    tx: mpsc::Sender<Record>,
    task: TaskTracker,
    stop: tokio_util::sync::CancellationToken,
    /// Counters.
    pub stats: Arc<HistoryStats>,
    written: tokio::sync::watch::Receiver<(u64, u64)>,
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
/// A missing sequence the watermark waits for before moving past it.
const GAP_PATIENCE: Duration = Duration::from_secs(10);

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
        let (written_tx, written) = tokio::sync::watch::channel((0, 0));
        task.spawn(write_loop(
            store,
            retention,
            rx,
            stats.clone(),
            stop.clone(),
            written_tx,
        ));
        task.close();
        History {
            tx,
            task,
            stop,
            stats,
            written,
        }
    }

    /// Hands a record to the writer, waiting for room.
    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::warn!("history writer stopped; record lost");
        }
    }

    /// Hands a record over if there is room at once (else the watermark
    /// passes the sequence after its patience).
    pub fn try_record(&self, record: Record) {
        let _ = self.tx.try_send(record);
    }

    /// `(epoch, upto)`: every sequence of the epoch up to `upto` is in the
    /// store. Closed once the writer stopped (everything sent is written).
    pub fn written(&self) -> tokio::sync::watch::Receiver<(u64, u64)> {
        self.written.clone()
    }

    /// Stops taking records and waits until everything sent is written.
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        self.task.wait().await;
    }
}

/// The watermark of one epoch: every sequence up to `upto` was handled.
#[derive(Debug)]
pub struct Watermark {
    /// The epoch.
    pub epoch: u64,
    next: u64,
    pending: BTreeSet<u64>,
    stuck_since: Option<Instant>,
}

impl Watermark {
    /// Starts after `upto`.
    pub fn new(epoch: u64, upto: u64) -> Self {
        Watermark {
            epoch,
            next: upto + 1,
            pending: BTreeSet::new(),
            stuck_since: None,
        }
    }

    /// Every sequence up to this one was handled.
    pub fn upto(&self) -> u64 {
        self.next - 1
    }

    /// Marks `seq` handled.
    pub fn mark(&mut self, seq: u64) {
        if seq >= self.next {
            self.pending.insert(seq);
        }
        while self.pending.remove(&self.next) {
            self.next += 1;
        }
    }

    /// Moves past a missing sequence that has not come for `patience`
    /// (expired from the ingest stream, say); true if it did.
    pub fn give_up_waiting(&mut self, now: Instant, patience: Duration) -> bool {
        let Some(&first) = self.pending.first() else {
            self.stuck_since = None;
            return false;
        };
        let since = *self.stuck_since.get_or_insert(now);
        if now.duration_since(since) < patience {
            return false;
        }
        self.next = first;
        self.mark(first);
        self.stuck_since = None;
        true
    }
}

async fn write_loop(
    store: Store,
    retention: Policy,
    mut rx: mpsc::Receiver<Record>,
    stats: Arc<HistoryStats>,
    stop: tokio_util::sync::CancellationToken,
    written: tokio::sync::watch::Sender<(u64, u64)>,
) {
    let mut closing = false;
    let mut batch = Vec::with_capacity(BATCH);
    let mut mark: Option<Watermark> = None;
    let mut headroom = Headroom::default();
    let mut last_trim = Instant::now();
    let mut last_recount = Instant::now();
    let mut written_upto: Option<(u64, u64)> = None;
    loop {
        batch.clear();
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = tokio::time::sleep(TRIM_EVERY) => 0,
            // Take no more, but write what was sent.
            () = stop.cancelled(), if !closing => {
                rx.close();
                closing = true;
                continue;
            }
        };
        if n == 0 && closing {
            break;
        }
        if n > 0 && n < BATCH / 2 && !closing {
            // A trickle of events: wait a moment for more, so that a batch
            // is one transaction of many rows rather than one per event
            // (each statement is two thread hand-offs through sqlx's SQLite
            // worker). Replay waits on the watermark, so it sees this too.
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        let mut routed = Vec::with_capacity(batch.len());
        let mut delivered: HashMap<String, EventId> = HashMap::new();
        for record in batch.drain(..) {
            let id = match &record {
                Record::Routed(r) => EventId::parse(&r.event.id),
                Record::Skipped(id) => Some(*id),
                Record::Delivered { user, id } => {
                    let newest = delivered.entry(user.clone()).or_insert(*id);
                    *newest = (*newest).max(*id);
                    continue;
                }
            };
            let Some(id) = id else { continue };
            if mark.as_ref().is_none_or(|m| m.epoch != id.epoch) {
                let upto = store.watermark(id.epoch).await.unwrap_or(0);
                mark = Some(Watermark::new(id.epoch, upto));
            }
            if let Some(m) = mark.as_mut() {
                m.mark(id.seq);
            }
            if let Record::Routed(r) = record {
                routed.push(r);
            }
        }
        if let Some(m) = mark.as_mut()
            && m.give_up_waiting(Instant::now(), GAP_PATIENCE)
        {
            stats.skipped_gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                epoch = m.epoch,
                upto = m.upto(),
                "history watermark moved past sequences that never came"
            );
        }
        if let Some(m) = &mark
            && !(routed.is_empty() && written_upto == Some((m.epoch, m.upto())))
        {
            // Retried until it goes through: history is not lost to a blip.
            let mut delay = Duration::from_millis(50);
            loop {
                match store
                    .write(&routed, m.epoch, m.upto(), now_ms(), &retention)
                    .await
                {
                    Ok(streams) => {
                        for stream in &streams {
                            headroom.wrote(stream, 1);
                        }
                        stats
                            .written
                            .fetch_add(routed.len() as u64, Ordering::Relaxed);
                        written_upto = Some((m.epoch, m.upto()));
                        written.send_replace((m.epoch, m.upto()));
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
        if !delivered.is_empty() {
            let cursors: Vec<(String, EventId)> = delivered.into_iter().collect();
            // Not retried: a cursor left behind only means an event shown
            // live is offered again on the next connect.
            if let Err(e) = store.mark_delivered(&cursors).await {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "inbox delivery cursors not written");
            }
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            match store.trim(&retention, &headroom.due(), now_ms()).await {
                Ok(trimmed) => {
                    stats.trimmed.fetch_add(trimmed.removed, Ordering::Relaxed);
                    for (stream, left) in &trimmed.room {
                        headroom.counted(stream, *left);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "history retention failed"),
            }
            if last_recount.elapsed() >= RECOUNT_EVERY {
                last_recount = Instant::now();
                headroom.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_advances_over_contiguous_sequences_only() {
        let mut w = Watermark::new(1, 10);
        w.mark(12);
        assert_eq!(w.upto(), 10);
        w.mark(11);
        assert_eq!(w.upto(), 12);
        w.mark(5);
        assert_eq!(w.upto(), 12, "old sequences change nothing");
        w.mark(14);
        let t0 = Instant::now();
        assert!(!w.give_up_waiting(t0, Duration::from_secs(10)));
        assert!(w.give_up_waiting(t0 + Duration::from_secs(11), Duration::from_secs(10)));
        assert_eq!(w.upto(), 14, "13 never came");
    }
}
