//! The fault suite's checker: what each subscriber received across its
//! reconnects, against what the publishers were told was stored.
//!
//! A publisher owns a stream (one topic) and numbers its events from 1; it
//! publishes the next only once the last was acknowledged, so a stream's
//! acknowledged order is its sequence order. Per subscriber and stream:
//! - **lost**: acknowledged, never received;
//! - **duplicated**: an event id received twice, or a sequence number
//!   received under two ids (a retried publish stored twice);
//! - **reordered**: received after a later event of its stream;
//! - **resets**: the gateway said it could not replay from the cursor;
//! - **max pause**: the longest time between two events received, from
//!   the start of the run to the first, or from the last to the end of
//!   publishing (deliveries that stopped).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// One event as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub stream: String,
    pub seq: u64,
    pub id: String,
    pub at: Instant,
}

/// What one subscriber saw, in arrival order, across its reconnects.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub events: Vec<Received>,
    pub resets: usize,
    pub reconnects: usize,
    /// Sessions that got as far as being subscribed to every topic.
    pub ready: usize,
    /// The distinct sequence numbers received per stream, kept as they
    /// come so that waiting for a count costs no pass over `events`.
    pub distinct: HashMap<String, HashSet<u64>>,
}

impl Seen {
    /// Records an event as it arrives.
    pub fn push(&mut self, r: Received) {
        self.distinct
            .entry(r.stream.clone())
            .or_default()
            .insert(r.seq);
        self.events.push(r);
    }
}

/// The acknowledged events: per stream, sequence number → event id.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    pub by_stream: BTreeMap<String, BTreeMap<u64, String>>,
}

impl Acks {
    pub fn record(&mut self, stream: &str, seq: u64, id: String) {
        self.by_stream
            .entry(stream.to_owned())
            .or_default()
            .insert(seq, id);
    }
}

/// The checker's findings for one subscriber, or summed over several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub expected: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    pub resets: usize,
    pub reconnects: usize,
    pub max_pause: Duration,
    /// A few examples of what went wrong, for the failure message.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Nothing lost, duplicated or reordered, and no reset.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.resets == 0
    }

    /// Adds another subscriber's findings.
    pub fn merge(&mut self, other: Verdict) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.resets += other.resets;
        self.reconnects += other.reconnects;
        self.max_pause = self.max_pause.max(other.max_pause);
        for e in other.examples {
            if self.examples.len() < 8 {
                self.examples.push(e);
            }
        }
    }
}

/// Checks what a subscriber of `streams` saw against `acks`; the run began
/// at `start` and publishing stopped at `end`.
pub fn check(
    acks: &Acks,
    streams: &[String],
    seen: &Seen,
    (start, end): (Instant, Instant),
) -> Verdict {
    let mut v = Verdict {
        resets: seen.resets,
        reconnects: seen.reconnects,
        ..Verdict::default()
    };
    let note = |v: &mut Verdict, what: String| {
        if v.examples.len() < 8 {
            v.examples.push(what);
        }
    };
    let mut ids = HashSet::new();
    let mut seqs: HashMap<(&str, u64), &str> = HashMap::new();
    let mut newest: HashMap<&str, u64> = HashMap::new();
    let mut last = start;
    for r in &seen.events {
        v.max_pause = v.max_pause.max(r.at.saturating_duration_since(last));
        last = last.max(r.at);
        if !ids.insert(r.id.as_str()) {
            v.duplicated += 1;
            note(
                &mut v,
                format!("{} #{} again under {}", r.stream, r.seq, r.id),
            );
            continue;
        }
        if let Some(first) = seqs.insert((&r.stream, r.seq), &r.id) {
            v.duplicated += 1;
            note(
                &mut v,
                format!("{} #{} under {first} and {}", r.stream, r.seq, r.id),
            );
            continue;
        }
        v.received += 1;
        let top = newest.entry(&r.stream).or_default();
        if r.seq < *top {
            v.reordered += 1;
            note(&mut v, format!("{} #{} after #{}", r.stream, r.seq, top));
        }
        *top = (*top).max(r.seq);
    }
    v.max_pause = v.max_pause.max(end.saturating_duration_since(last));
    for stream in streams {
        let Some(acked) = acks.by_stream.get(stream) else {
            continue;
        };
        v.expected += acked.len();
        for (seq, id) in acked {
            if !seqs.contains_key(&(stream.as_str(), *seq)) {
                v.lost += 1;
                note(&mut v, format!("{stream} #{seq} ({id}) never came"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(start: Instant, events: &[(&str, u64, &str, u64)]) -> Seen {
        Seen {
            events: events
                .iter()
                .map(|&(s, seq, id, ms)| Received {
                    stream: s.to_owned(),
                    seq,
                    id: id.to_owned(),
                    at: start + Duration::from_millis(ms),
                })
                .collect(),
            ..Seen::default()
        }
    }

    fn acks(entries: &[(&str, u64, &str)]) -> Acks {
        let mut a = Acks::default();
        for &(s, seq, id) in entries {
            a.record(s, seq, id.to_owned());
        }
        a
    }

    #[test]
    fn a_complete_ordered_run_is_clean() {
        let t = Instant::now();
        let a = acks(&[("s", 1, "1"), ("s", 2, "2")]);
        let end = t + Duration::from_millis(40);
        let v = check(
            &a,
            &["s".into()],
            &seen(t, &[("s", 1, "1", 10), ("s", 2, "2", 30)]),
            (t, end),
        );
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.expected, v.received), (2, 2));
        assert_eq!(v.max_pause, Duration::from_millis(20));
        // Deliveries that stop count until publishing ended.
        let v = check(
            &a,
            &["s".into()],
            &seen(t, &[("s", 1, "1", 10), ("s", 2, "2", 30)]),
            (t, t + Duration::from_millis(530)),
        );
        assert_eq!(v.max_pause, Duration::from_millis(500));
    }

    #[test]
    fn lost_duplicated_and_reordered_events_are_counted() {
        let t = Instant::now();
        let a = acks(&[("s", 1, "1"), ("s", 2, "2"), ("s", 3, "3"), ("s", 4, "4")]);
        let got = seen(
            t,
            &[
                ("s", 2, "2", 1),
                ("s", 1, "1", 2),
                ("s", 1, "1", 3),
                ("s", 2, "9", 4),
            ],
        );
        let v = check(&a, &["s".into()], &got, (t, t));
        assert_eq!(v.reordered, 1, "{v:?}");
        assert_eq!(
            v.duplicated, 2,
            "the same id, and the same seq under another id"
        );
        assert_eq!(v.lost, 2, "3 and 4");
        assert!(!v.clean());
    }

    #[test]
    fn unacknowledged_events_may_come_or_not_and_other_streams_do_not_count() {
        let t = Instant::now();
        let a = acks(&[("s", 1, "1"), ("other", 1, "5")]);
        let v = check(
            &a,
            &["s".into()],
            &seen(t, &[("s", 1, "1", 1), ("s", 2, "2", 2)]),
            (t, t),
        );
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.expected, 1);
    }

    #[test]
    fn a_reset_is_not_clean_and_the_pause_counts_from_the_start() {
        let t = Instant::now();
        let mut s = seen(t, &[("s", 1, "1", 500)]);
        s.resets = 1;
        let v = check(&acks(&[("s", 1, "1")]), &["s".into()], &s, (t, t));
        assert!(!v.clean());
        assert_eq!(v.max_pause, Duration::from_millis(500));
    }
}
