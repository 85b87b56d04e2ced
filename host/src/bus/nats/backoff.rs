//! Waits between retries of a JetStream step that failed (a consumer not
//! created while the cluster elects leaders): short at first, so that a
//! cluster back in a second is used in a second, doubling to a cap, and
//! jittered, so that the partitions of every node do not retry together.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
const CAP: Duration = Duration::from_secs(4);

/// The retry schedule of one step.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { ceiling: FIRST }
    }
}

impl Backoff {
    /// The wait before the next retry: between half of and the whole
    /// current ceiling, which then doubles (up to 4 s).
    pub fn next(&mut self) -> Duration {
        let wait = jittered(self.ceiling, rand::random_range(0.0..1.0));
        self.ceiling = (self.ceiling * 2).min(CAP);
        wait
    }
}

/// `ceiling` scaled into its upper half by `r` in [0, 1).
fn jittered(ceiling: Duration, r: f64) -> Duration {
    ceiling.mul_f64(0.5 + r.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_a_quarter_second_up_to_four_seconds() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..7).map(|_| b.next()).collect();
        let ceilings = [250, 500, 1000, 2000, 4000, 4000, 4000];
        for (w, c) in waits.iter().zip(ceilings) {
            let c = Duration::from_millis(c);
            assert!(*w >= c / 2 && *w <= c, "{w:?} within [{:?}, {c:?}]", c / 2);
        }
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        let c = Duration::from_secs(2);
        assert_eq!(jittered(c, 0.0), Duration::from_secs(1));
        assert_eq!(jittered(c, 0.5), Duration::from_millis(1500));
        assert!(jittered(c, 0.999) <= c);
    }
}
