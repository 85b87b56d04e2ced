//! The local bus's sequence, reserved durably in blocks before any id of
//! a block is handed out: after a crash the bus resumes above the last
//! block, so no id a client saw (acknowledged, or only delivered live) is
//! ever given to another event. The unused rest of a block is skipped.
//!
//! A block is reserved ahead, once half of the current one is used, so a
//! publish waits for a reservation only when ids run out faster than the
//! store takes one write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::pipeline::PublishError;
use crate::store::StoreError;

/// Ids per reservation.
pub const BLOCK: u64 = 65_536;

/// Writes a reservation: every id up to the argument may be handed out.
pub type Reserve = Box<dyn Fn(u64) -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

/// The next reservation to make, if the one held is more than half used.
pub fn next_block(given: u64, reserved: u64) -> Option<u64> {
    (reserved.saturating_sub(given) < BLOCK / 2).then(|| given.max(reserved) + BLOCK)
}

/// The sequence of one epoch.
pub struct IdBlocks {
    /// The last sequence handed out (or being handed out).
    given: AtomicU64,
    /// Reserved up to here, for the fast path.
    reserved_now: AtomicU64,
    /// Reserved up to here, for those waiting on a reservation.
    reserved: watch::Sender<u64>,
    refill: Notify,
}

impl IdBlocks {
    /// Starts above `resume` (the highest sequence that may have been
    /// handed out before), with a first block reserved before it returns,
    /// and keeps reserving until `stop`.
    pub async fn start(
        resume: u64,
        reserve: Reserve,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let first = resume + BLOCK;
        reserve(first).await?;
        let blocks = Arc::new(IdBlocks {
            given: AtomicU64::new(resume),
            reserved_now: AtomicU64::new(first),
            reserved: watch::Sender::new(first),
            refill: Notify::new(),
        });
        tokio::spawn(reserve_ahead(blocks.clone(), reserve, stop));
        Ok(blocks)
    }

    /// The next sequence, taken at once; it may be used only once
    /// [`IdBlocks::covered`] says it is reserved.
    pub fn next(&self) -> u64 {
        let seq = self.given.fetch_add(1, Ordering::SeqCst) + 1;
        let reserved = self.reserved_now.load(Ordering::Acquire);
        if next_block(seq, reserved).is_some() {
            self.refill.notify_one();
        }
        seq
    }

    /// Completes once `seq` is reserved (at once, nearly always), or fails
    /// after `within` (the store is not taking the reservation).
    pub async fn covered(&self, seq: u64, within: Duration) -> Result<(), PublishError> {
        if seq <= self.reserved_now.load(Ordering::Acquire) {
            return Ok(());
        }
        self.refill.notify_one();
        let mut reserved = self.reserved.subscribe();
        match tokio::time::timeout(within, reserved.wait_for(|r| *r >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(PublishError::Stopped),
            Err(_) => Err(PublishError::NotDurable(within.as_millis() as u64)),
        }
    }

    /// The last sequence handed out.
    pub fn head(&self) -> u64 {
        self.given.load(Ordering::SeqCst)
    }
}

/// Reserves the next block whenever the current one is half used; a
/// failed write is retried (publishes past the block wait meanwhile).
async fn reserve_ahead(blocks: Arc<IdBlocks>, reserve: Reserve, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = blocks.refill.notified() => {}
            () = stop.cancelled() => return,
        }
        let mut delay = Duration::from_millis(20);
        loop {
            let given = blocks.given.load(Ordering::SeqCst);
            let reserved = blocks.reserved_now.load(Ordering::Acquire);
            let Some(upto) = next_block(given, reserved) else {
                break;
            };
            match reserve(upto).await {
                Ok(()) => {
                    blocks.reserved_now.store(upto, Ordering::Release);
                    blocks.reserved.send_replace(upto);
                    delay = Duration::from_millis(20);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reserve ids; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_block_is_reserved_once_half_of_the_last_is_used() {
        assert_eq!(next_block(0, BLOCK), None);
        assert_eq!(next_block(BLOCK / 2, BLOCK), None, "half left");
        assert_eq!(
            next_block(BLOCK / 2 + 1, BLOCK),
            Some(2 * BLOCK),
            "the next"
        );
        assert_eq!(
            next_block(BLOCK + 5, BLOCK),
            Some(2 * BLOCK + 5),
            "ran past"
        );
    }

    fn recording(fail: Arc<AtomicBool>) -> (Reserve, Arc<Mutex<Vec<u64>>>) {
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let log = seen.clone();
        let reserve: Reserve = Box::new(move |upto| {
            let log = log.clone();
            let fail = fail.clone();
            Box::pin(async move {
                if fail.load(Ordering::SeqCst) {
                    return Err(StoreError::Batch("down".into()));
                }
                log.lock().expect("lock").push(upto);
                Ok(())
            })
        });
        (reserve, seen)
    }

    #[tokio::test]
    async fn ids_continue_above_the_resume_point_and_blocks_stay_ahead() {
        let fail = Arc::new(AtomicBool::new(false));
        let (reserve, seen) = recording(fail);
        let stop = CancellationToken::new();
        let blocks = IdBlocks::start(1000, reserve, stop.clone())
            .await
            .expect("start");
        assert_eq!(*seen.lock().expect("lock"), [1000 + BLOCK]);
        let within = Duration::from_secs(5);
        let mut last = 1000;
        for _ in 0..(2 * BLOCK) {
            let seq = blocks.next();
            assert_eq!(seq, last + 1);
            blocks.covered(seq, within).await.expect("covered");
            last = seq;
        }
        let reserved = seen.lock().expect("lock").clone();
        assert!(reserved.windows(2).all(|w| w[0] < w[1]), "{reserved:?}");
        assert!(
            *reserved.last().expect("some") >= last,
            "{last} handed out beyond {reserved:?}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn an_id_past_the_reservation_waits_for_the_store_and_fails_in_time() {
        let fail = Arc::new(AtomicBool::new(false));
        let (reserve, _) = recording(fail.clone());
        let stop = CancellationToken::new();
        let blocks = IdBlocks::start(0, reserve, stop.clone())
            .await
            .expect("start");
        fail.store(true, Ordering::SeqCst);
        // Skip to the end of the block.
        blocks.given.store(BLOCK, Ordering::SeqCst);
        let seq = blocks.next();
        assert_eq!(seq, BLOCK + 1);
        let err = blocks
            .covered(seq, Duration::from_millis(100))
            .await
            .expect_err("the store is down");
        assert_eq!(err, PublishError::NotDurable(100));
        fail.store(false, Ordering::SeqCst);
        blocks
            .covered(seq, Duration::from_secs(10))
            .await
            .expect("reserved once the store is back");
        stop.cancel();
    }
}
