//! A lease renewed in the background, so that the work done under it never
//! waits for the lease store. A routing loop that renewed inline stopped
//! routing for every renewal JetStream was slow to answer (up to its
//! request timeout, each third of the TTL), which, while the lease bucket
//! elected a new leader after a server died, was all of the time. The
//! keeper retries a failed renewal at once and often, so that a bucket
//! back within the TTL keeps the lease; the holder learns of a loss from
//! [`KeptLease::lost`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::leases::{Lease, LeaseError};

/// What the keeper does next, given when the last renewal that succeeded
/// was sent and whether the last attempt failed.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Renew after this long.
    RenewIn(Duration),
    /// The lease ran out: others may hold it now.
    Expired,
}

/// When to renew: each third of `ttl` while renewals succeed, every
/// twentieth (at least 50 ms) while they fail, and never past the TTL
/// counted from the last renewal sent.
fn next(since_renewed: Duration, failing: bool, ttl: Duration) -> Next {
    let Some(left) = ttl.checked_sub(since_renewed).filter(|l| !l.is_zero()) else {
        return Next::Expired;
    };
    let wait = if failing {
        (ttl / 20).max(Duration::from_millis(50))
    } else {
        (ttl / 3).saturating_sub(since_renewed)
    };
    Next::RenewIn(wait.min(left))
}

/// How long one renewal may take: a renewal answered later than this is
/// retried rather than waited for.
fn attempt_budget(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(100))
}

/// A lease whose renewal runs on its own task.
pub struct KeptLease {
    term: u64,
    ttl: Duration,
    lease: Arc<Mutex<Lease>>,
    lost: CancellationToken,
    // Dropped unreleased (its task aborted), the lease stops being renewed.
    stop: tokio_util::sync::DropGuard,
    keeper: tokio::task::JoinHandle<()>,
}

impl KeptLease {
    /// Starts renewing `lease`.
    pub fn keep(lease: Lease) -> KeptLease {
        let term = lease.term;
        let ttl = lease.ttl();
        let lease = Arc::new(Mutex::new(lease));
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(keep(lease.clone(), ttl, lost.clone(), stop.clone()));
        KeptLease {
            term,
            ttl,
            lease,
            lost,
            stop: stop.drop_guard(),
            keeper,
        }
    }

    /// The revision the lease was taken at.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Completes once the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Renews now: `Ok` once this node held the lease a moment ago (before
    /// a step that would harm a successor, such as replacing consumers).
    pub async fn confirm(&self) -> Result<(), LeaseError> {
        if self.lost.is_cancelled() {
            return Err(LeaseError::Lost);
        }
        let mut lease = self.lease.lock().await;
        match tokio::time::timeout(attempt_budget(self.ttl), lease.try_renew()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(LeaseError::Lost)) => {
                self.lost.cancel();
                Err(LeaseError::Lost)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LeaseError::Unavailable("renewal timed out".into())),
        }
    }

    /// Stops renewing and gives the slot up for the next owner (unless it
    /// was lost already).
    pub async fn release(self) {
        drop(self.stop);
        let _ = self.keeper.await;
        if self.lost.is_cancelled() {
            return;
        }
        if let Ok(lease) = Arc::try_unwrap(self.lease) {
            lease.into_inner().release().await;
        }
    }
}

async fn keep(
    lease: Arc<Mutex<Lease>>,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let renewed = lease.lock().await.renewed();
        let wait = match next(renewed.elapsed(), failing, ttl) {
            Next::RenewIn(wait) => wait,
            Next::Expired => {
                tracing::warn!("lease not renewed in time");
                lost.cancel();
                return;
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = lost.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        // `confirm` may have renewed meanwhile.
        let renewed = lease.lock().await.renewed();
        let expires = tokio::time::Instant::from_std(renewed + ttl);
        let attempt = async {
            let mut l = lease.lock().await;
            tokio::time::timeout(attempt_budget(ttl), l.try_renew()).await
        };
        tokio::select! {
            () = stop.cancelled() => return,
            r = attempt => match r {
                Ok(Ok(())) => failing = false,
                Ok(Err(LeaseError::Lost)) => {
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "lease renewal failed; retrying");
                    failing = true;
                }
                Err(_) => {
                    tracing::debug!("lease renewal timed out; retrying");
                    failing = true;
                }
            },
            // A renewal still unanswered when the lease runs out cannot save it.
            () = tokio::time::sleep_until(expires.max(tokio::time::Instant::now())) => {
                // The attempt is dropped by now: read what it left.
                if lease.lock().await.renewed().elapsed() >= ttl {
                    tracing::warn!("lease not renewed in time");
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(9);

    #[test]
    fn renewals_come_each_third_of_the_ttl_while_they_succeed() {
        assert_eq!(
            next(Duration::ZERO, false, TTL),
            Next::RenewIn(Duration::from_secs(3))
        );
        assert_eq!(
            next(Duration::from_secs(1), false, TTL),
            Next::RenewIn(Duration::from_secs(2))
        );
        assert_eq!(
            next(Duration::from_secs(4), false, TTL),
            Next::RenewIn(Duration::ZERO),
            "late: at once"
        );
    }

    #[test]
    fn a_failing_renewal_is_retried_often_but_never_past_the_ttl() {
        assert_eq!(
            next(Duration::from_secs(4), true, TTL),
            Next::RenewIn(Duration::from_millis(450))
        );
        assert_eq!(
            next(Duration::from_millis(8_900), true, TTL),
            Next::RenewIn(Duration::from_millis(100))
        );
        assert_eq!(next(TTL, true, TTL), Next::Expired);
        assert_eq!(next(TTL * 2, false, TTL), Next::Expired);
        assert_eq!(
            next(Duration::ZERO, true, Duration::from_millis(500)),
            Next::RenewIn(Duration::from_millis(50)),
            "at least 50 ms apart"
        );
    }

    #[test]
    fn one_attempt_takes_a_fifth_of_the_ttl_at_most() {
        assert_eq!(attempt_budget(TTL), Duration::from_millis(1_800));
        assert_eq!(
            attempt_budget(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
