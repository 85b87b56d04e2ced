//! Per-plugin counters and a lock-free latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in nanoseconds: 250 ns to ~1 s, doubling.
const BOUNDS_NS: [u64; 23] = {
    let mut b = [0u64; 23];
    let mut i = 0;
    let mut v = 250;
    while i < 23 {
        b[i] = v;
        v *= 2;
        i += 1;
    }
    b
};

/// A latency histogram with fixed, doubling buckets.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None`
    /// without observations. Past the last bound, the last bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let bound = BOUNDS_NS
                    .get(i)
                    .copied()
                    .unwrap_or(BOUNDS_NS[BOUNDS_NS.len() - 1]);
                return Some(Duration::from_nanos(bound));
            }
        }
        None
    }

    /// `(upper bound ns, cumulative count)` pairs, for Prometheus.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut seen = 0;
        BOUNDS_NS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                seen += c.load(Ordering::Relaxed);
                (*b, seen)
            })
            .collect()
    }

    /// Sum of all observations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }
}

/// Counters of one interface of a plugin.
#[derive(Debug, Default)]
pub struct InterfaceMetrics {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that trapped or hit the memory cap.
    pub traps: AtomicU64,
    /// Calls stopped by the deadline.
    pub timeouts: AtomicU64,
    /// Latency.
    pub latency: LatencyHistogram,
}

/// Counters of one loaded plugin.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    /// Calls made (each batch is one call).
    pub calls: AtomicU64,
    /// Calls that trapped.
    pub traps: AtomicU64,
    /// Calls stopped by the deadline.
    pub timeouts: AtomicU64,
    /// Calls stopped by the memory cap.
    pub memory_limits: AtomicU64,
    /// Fresh instances created.
    pub instantiations: AtomicU64,
    /// Latency of successful and failed calls alike.
    pub latency: LatencyHistogram,
    /// The same per interface, in [`crate::plugin::Interface::ALL`] order.
    pub interfaces: [InterfaceMetrics; crate::plugin::Interface::ALL.len()],
}

impl PluginMetrics {
    /// The counters of `interface`.
    pub fn interface(&self, interface: crate::plugin::Interface) -> &InterfaceMetrics {
        let i = crate::plugin::Interface::ALL
            .iter()
            .position(|x| *x == interface)
            .unwrap_or(0);
        &self.interfaces[i]
    }
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Calls made.
    pub calls: u64,
    /// Traps.
    pub traps: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Memory-limit hits.
    pub memory_limits: u64,
    /// Instances created.
    pub instantiations: u64,
    /// Median latency, microseconds (bucket bound).
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds (bucket bound).
    pub p99_us: Option<f64>,
}

impl PluginMetrics {
    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            memory_limits: self.memory_limits.load(Ordering::Relaxed),
            instantiations: self.instantiations.load(Ordering::Relaxed),
            p50_us: us(self.latency.quantile(0.5)),
            p99_us: us(self.latency.quantile(0.99)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..90 {
            h.record(Duration::from_nanos(300)); // bucket <= 500 ns
        }
        for _ in 0..10 {
            h.record(Duration::from_micros(100)); // bucket <= 128 µs
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(Duration::from_nanos(500)));
        assert_eq!(h.quantile(0.9), Some(Duration::from_nanos(500)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_nanos(128_000)));
        assert_eq!(h.cumulative().last().map(|(_, c)| *c), Some(100));
    }

    #[test]
    fn huge_observations_land_in_the_overflow_bucket() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_secs(100));
        assert_eq!(h.count(), 1);
        assert!(h.quantile(1.0).is_some());
    }
}
