//! What a partition owner sent lately on each delivery subject (pure): the
//! id each delivery names as its predecessor, and the beacons that reveal
//! a lost tail. Subjects silent longer than the forget time are dropped,
//! so memory follows the subjects in use: by then beacons have named
//! their last id often enough for any edge to have noticed a loss.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::routing::{EventId, Origin, Partition};

#[derive(Debug, Default)]
struct PartitionSent {
    term: u64,
    last: HashMap<String, (EventId, Instant)>,
}

/// The sent log of one node's partition owners.
#[derive(Debug, Default)]
pub struct SentLog {
    parts: HashMap<Partition, PartitionSent>,
}

/// What one beacon says.
pub type BeaconEntries = (Origin, Vec<(String, EventId)>);

impl SentLog {
    /// Notes that `id` went out on `subject` from `origin`; returns what
    /// went out there before it under the same term.
    pub fn record(
        &mut self,
        origin: Origin,
        subject: &str,
        id: EventId,
        now: Instant,
    ) -> Option<EventId> {
        let part = self.parts.entry(origin.partition).or_default();
        if part.term != origin.term {
            // A new lease: what an earlier term sent is not this one's to
            // vouch for.
            part.term = origin.term;
            part.last.clear();
        }
        match part.last.get_mut(subject) {
            Some(entry) => {
                let prev = entry.0;
                *entry = (id.max(prev), now);
                Some(prev)
            }
            None => {
                part.last.insert(subject.to_owned(), (id, now));
                None
            }
        }
    }

    /// Every subject `origin` sent on that is not yet forgotten, with its
    /// newest id: what its closing beacon names when it hands over.
    pub fn sent_under(&self, origin: Origin) -> Vec<(String, EventId)> {
        self.parts
            .get(&origin.partition)
            .filter(|part| part.term == origin.term)
            .map(|part| {
                part.last
                    .iter()
                    .map(|(s, (id, _))| (s.clone(), *id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The beacons to send now: per partition, the subjects sent on within
    /// `window`, with their newest id; forgets subjects silent for
    /// `forget`.
    pub fn beacons(
        &mut self,
        now: Instant,
        window: Duration,
        forget: Duration,
    ) -> Vec<BeaconEntries> {
        let mut out = Vec::new();
        self.parts.retain(|partition, part| {
            part.last
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < forget);
            let recent: Vec<(String, EventId)> = part
                .last
                .iter()
                .filter(|(_, (_, at))| now.saturating_duration_since(*at) < window)
                .map(|(s, (id, _))| (s.clone(), *id))
                .collect();
            if !recent.is_empty() {
                out.push((
                    Origin {
                        partition: *partition,
                        term: part.term,
                    },
                    recent,
                ));
            }
            !part.last.is_empty()
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EventId {
        EventId { epoch: 1, seq }
    }
    fn o(p: u16, term: u64) -> Origin {
        Origin {
            partition: Partition(p),
            term,
        }
    }

    #[test]
    fn each_delivery_names_its_predecessor_per_subject_and_term() {
        let mut log = SentLog::default();
        let t = Instant::now();
        assert_eq!(log.record(o(1, 5), "a", id(1), t), None);
        assert_eq!(log.record(o(1, 5), "b", id(2), t), None);
        assert_eq!(log.record(o(1, 5), "a", id(3), t), Some(id(1)));
        assert_eq!(log.record(o(2, 5), "a", id(4), t), None, "per partition");
        assert_eq!(log.record(o(1, 6), "a", id(5), t), None, "a new term");
        assert_eq!(log.sent_under(o(1, 6)), vec![("a".to_owned(), id(5))]);
        assert!(
            log.sent_under(o(1, 5)).is_empty(),
            "not the term's to vouch for"
        );
    }

    #[test]
    fn beacons_name_recent_subjects_and_silent_ones_are_forgotten() {
        let mut log = SentLog::default();
        let t = Instant::now();
        log.record(o(1, 5), "a", id(1), t);
        log.record(o(1, 5), "b", id(2), t + Duration::from_secs(5));
        let later = t + Duration::from_secs(6);
        let b = log.beacons(later, Duration::from_secs(3), Duration::from_secs(30));
        assert_eq!(b, vec![(o(1, 5), vec![("b".to_owned(), id(2))])]);
        let much_later = t + Duration::from_secs(40);
        assert!(
            log.beacons(much_later, Duration::from_secs(3), Duration::from_secs(30))
                .is_empty()
        );
        assert_eq!(
            log.record(o(1, 5), "b", id(9), much_later),
            None,
            "forgotten"
        );
    }
}
