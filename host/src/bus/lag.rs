//! How far behind each partition's routing is, as its owner last reported
//! it (pure): publishes to a partition whose oldest unacknowledged event is
//! older than `bus.max_lag_ms` are refused, rather than grow a backlog
//! nobody will see in time. A report older than the staleness bound counts
//! for nothing (its owner died or stopped lagging and went quiet).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::routing::Partition;

/// Reports older than this are ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// The lag reported for each partition.
#[derive(Debug, Default)]
pub struct Lags {
    reported: HashMap<Partition, (u64, Instant)>,
}

impl Lags {
    /// `partition` was `lag_ms` behind at `now`.
    pub fn report(&mut self, partition: Partition, lag_ms: u64, now: Instant) {
        if lag_ms == 0 {
            self.reported.remove(&partition);
        } else {
            self.reported.insert(partition, (lag_ms, now));
        }
    }

    /// The lag of `partition` if it is past `max_ms` by a fresh report.
    pub fn behind(&self, partition: Partition, max_ms: u64, now: Instant) -> Option<u64> {
        let (lag, at) = self.reported.get(&partition)?;
        (*lag > max_ms && now.saturating_duration_since(*at) < STALE_AFTER).then_some(*lag)
    }

    /// Drops stale reports (bounded memory).
    pub fn forget_stale(&mut self, now: Instant) {
        self.reported
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < STALE_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_report_past_the_bound_refuses_and_a_stale_one_does_not() {
        let mut lags = Lags::default();
        let t = Instant::now();
        let p = Partition(3);
        assert_eq!(lags.behind(p, 1000, t), None);
        lags.report(p, 500, t);
        assert_eq!(lags.behind(p, 1000, t), None, "within the bound");
        lags.report(p, 1500, t);
        assert_eq!(lags.behind(p, 1000, t), Some(1500));
        assert_eq!(lags.behind(Partition(4), 1000, t), None, "per partition");
        assert_eq!(lags.behind(p, 1000, t + STALE_AFTER), None, "stale");
        lags.report(p, 0, t);
        assert_eq!(lags.behind(p, 1000, t), None, "caught up");
        lags.report(p, 1500, t);
        lags.forget_stale(t + STALE_AFTER);
        assert!(lags.reported.is_empty());
    }
}
