//! A call's time budget counted in the CPU time of the thread running it.
//!
//! The epoch ticks in wall time. On a loaded machine (a reload compiling
//! beside the calls, other processes) a plugin thread can wait for a core
//! longer than the whole deadline, and a healthy call was then stopped as a
//! runaway: its event dropped or withheld under `on_error`. At each expired
//! epoch deadline the call is stopped only once its thread has run for the
//! budget; a guest that blocks instead of running is still stopped after a
//! wall-clock cap.

use std::time::{Duration, Instant};

/// Wall time a call may take, per unit of CPU budget: room for a thread
/// that gets a twentieth of a core.
const WALL_FACTOR: u32 = 20;

/// The least wall time a call may take before it is stopped regardless.
const MIN_WALL: Duration = Duration::from_millis(500);

/// What the running call may still use.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    cpu_start: Duration,
    wall_start: Instant,
    cpu: Duration,
    wall: Duration,
}

impl Budget {
    /// A budget of `cpu` starting now on this thread.
    pub fn start(cpu: Duration) -> Self {
        Budget {
            cpu_start: thread_cpu_time(),
            wall_start: Instant::now(),
            cpu,
            wall: (cpu * WALL_FACTOR).max(MIN_WALL),
        }
    }

    /// At an expired epoch deadline: `None` to stop the call, or how many
    /// more ticks of `tick` it may run.
    pub fn on_deadline(&self, tick: Duration) -> Option<u64> {
        verdict(
            thread_cpu_time().saturating_sub(self.cpu_start),
            self.wall_start.elapsed(),
            self.cpu,
            self.wall,
            tick,
        )
    }
}

/// Pure: stop once `cpu_used` reached `cpu` or `wall_used` reached `wall`;
/// else continue for what is left of the CPU budget, in ticks, at least one.
fn verdict(
    cpu_used: Duration,
    wall_used: Duration,
    cpu: Duration,
    wall: Duration,
    tick: Duration,
) -> Option<u64> {
    if cpu_used >= cpu || wall_used >= wall {
        return None;
    }
    let left = (cpu - cpu_used).as_nanos();
    let tick = tick.as_nanos().max(1);
    Some(
        u64::try_from(left.div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1),
    )
}

/// The CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_call_is_stopped_for_what_it_ran_not_for_what_it_waited() {
        // Waited 30 ms for a core, ran 4: 6 more ticks.
        assert_eq!(verdict(4 * MS, 30 * MS, 10 * MS, 500 * MS, MS), Some(6));
        assert_eq!(verdict(10 * MS, 12 * MS, 10 * MS, 500 * MS, MS), None);
        // Blocked without running: the wall cap stops it.
        assert_eq!(verdict(MS, 500 * MS, 10 * MS, 500 * MS, MS), None);
        // Nearly spent: at least one tick more.
        assert_eq!(
            verdict(10 * MS - Duration::from_nanos(1), MS, 10 * MS, 500 * MS, MS),
            Some(1)
        );
    }

    #[test]
    fn the_thread_clock_counts_running_not_sleeping() {
        let before = thread_cpu_time();
        std::thread::sleep(20 * MS);
        let slept = thread_cpu_time() - before;
        assert!(slept < 10 * MS, "{slept:?}");
        // Bounded by wall time, not asserted on it: a loaded machine may
        // give this thread little of a core.
        let start = Instant::now();
        while thread_cpu_time() - before < 2 * MS && start.elapsed() < Duration::from_secs(10) {
            std::hint::black_box(0);
        }
        assert!(thread_cpu_time() - before >= 2 * MS);
    }
}
