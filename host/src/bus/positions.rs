//! Gap detection on the core-NATS fan-out (pure): each delivery subject is
//! fed by one or more partitions, each in id order, so an edge keeps, per
//! (subject, partition), the newest id it has handed on. A delivery names
//! the id its partition last sent on that subject: if that is newer than
//! what the edge has, something in between was lost. A beacon from each
//! partition owner names the newest id of each subject it sent lately:
//! still newer than the edge's a beacon later, the tail was lost.
//! A delivery at or below the position is a repeat (a failover routes
//! again from the first unacknowledged event), unless the bus stored it
//! after the event at the position: then the bus lost its last writes and
//! reused their sequences, and it is a new event.

use std::collections::HashMap;

use crate::routing::{EventId, Origin, Partition};

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it on.
    Deliver,
    /// Seen already (at or below the position).
    Repeat,
    /// From an owner its partition has had a successor of.
    Fenced,
    /// Events before it are missing: repair from `after`, then offer it
    /// again.
    Gap {
        /// The newest id handed on.
        after: EventId,
    },
}

#[derive(Debug, Clone, Copy)]
struct Position {
    last: EventId,
    /// When the bus stored `last` (ns; 0 unknown).
    stamp: u64,
    /// The newest id a beacon named that was not yet handed on, and that
    /// beacon's round: a gap if still short at a later round.
    announced: Option<(EventId, u64)>,
}

/// The positions of one node's delivery subjects.
#[derive(Debug, Default)]
pub struct Positions {
    /// By partition, then subject: a beacon reads one partition's.
    at: HashMap<Partition, HashMap<String, Position>>,
    terms: HashMap<Partition, u64>,
    /// Per partition, what its owner under a term said it had sent last
    /// when it handed the partition over (its closing beacon).
    closed: HashMap<Partition, (u64, HashMap<String, EventId>)>,
}

impl Positions {
    /// Whether a delivery from `origin` may pass, remembering its term. A
    /// newer term's owner counts beacon rounds afresh: what the previous
    /// one announced is left to the takeover's repair.
    fn admit_term(&mut self, origin: Origin) -> bool {
        let newest = self.terms.entry(origin.partition).or_insert(0);
        if origin.term < *newest {
            return false;
        }
        if origin.term > *newest {
            *newest = origin.term;
            if let Some(part) = self.at.get_mut(&origin.partition) {
                for pos in part.values_mut() {
                    pos.announced = None;
                }
            }
        }
        true
    }

    /// Whether `origin` is a newer owner of its partition than the one this
    /// node heard last (not the first heard): what the previous owner sent
    /// last may have been lost unnoticed.
    pub fn is_takeover(&self, origin: Origin) -> bool {
        self.terms
            .get(&origin.partition)
            .is_some_and(|t| *t > 0 && origin.term > *t)
    }

    /// Takes (one part of) the closing beacon of `origin`'s owner, sent
    /// when it handed the partition over: the newest id it sent on each
    /// subject.
    pub fn closing(&mut self, origin: Origin, last: &[(String, EventId)]) {
        if !self.admit_term(origin) {
            return;
        }
        let closed = self
            .closed
            .entry(origin.partition)
            .or_insert_with(|| (origin.term, HashMap::new()));
        if closed.0 != origin.term {
            *closed = (origin.term, HashMap::new());
        }
        closed.1.extend(last.iter().cloned());
    }

    /// Every subject of `partition` with its position, but those the owner
    /// heard last vouched for when it handed over (this node has all it
    /// said it sent): what a takeover checks against history.
    pub fn unvouched(&mut self, partition: Partition) -> Vec<(String, EventId)> {
        let heard = self.terms.get(&partition).copied().unwrap_or(0);
        let closed = self
            .closed
            .remove(&partition)
            .filter(|(term, _)| *term == heard)
            .map(|(_, last)| last)
            .unwrap_or_default();
        self.at
            .get(&partition)
            .map(|part| {
                part.iter()
                    .filter(|(s, p)| {
                        !closed
                            .get(*s)
                            .is_some_and(|sent| sent.epoch == p.last.epoch && *sent <= p.last)
                    })
                    .map(|(s, p)| (s.clone(), p.last))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Judges a delivery of `id` (stored by the bus at `stamp`) on
    /// `subject` from `origin`, whose owner last sent `prev` on that
    /// subject (`None`: not known to it, as after a takeover). Moves the
    /// position when it says deliver.
    pub fn offer(
        &mut self,
        subject: &str,
        origin: Origin,
        id: EventId,
        stamp: u64,
        prev: Option<EventId>,
    ) -> Verdict {
        if !self.admit_term(origin) {
            return Verdict::Fenced;
        }
        let part = self.at.entry(origin.partition).or_default();
        let Some(pos) = part.get_mut(subject) else {
            part.insert(
                subject.to_owned(),
                Position {
                    last: id,
                    stamp,
                    announced: None,
                },
            );
            return Verdict::Deliver;
        };
        if id.epoch != pos.last.epoch {
            if id.epoch < pos.last.epoch {
                return Verdict::Repeat;
            }
            // A new ingest stream: positions start over.
            *pos = Position {
                last: id,
                stamp,
                announced: None,
            };
            return Verdict::Deliver;
        }
        if id <= pos.last {
            if stamp > pos.stamp && pos.stamp > 0 {
                // A reused sequence: stored after what the position holds.
                *pos = Position {
                    last: id,
                    stamp,
                    announced: None,
                };
                return Verdict::Deliver;
            }
            return Verdict::Repeat;
        }
        if let Some(prev) = prev
            && prev.epoch == id.epoch
            && prev > pos.last
        {
            return Verdict::Gap { after: pos.last };
        }
        pos.last = id;
        pos.stamp = stamp;
        if pos.announced.is_some_and(|(a, _)| a <= id) {
            pos.announced = None;
        }
        Verdict::Deliver
    }

    /// Moves the position of `subject` in `partition` to `id` (a repaired
    /// event, or a gap given up on) if it is newer.
    pub fn advance(&mut self, subject: &str, partition: Partition, id: EventId) {
        let pos = self
            .at
            .entry(partition)
            .or_default()
            .entry(subject.to_owned())
            .or_insert(Position {
                last: id,
                stamp: 0,
                announced: None,
            });
        if id > pos.last {
            pos.last = id;
            // Its storage time is not known: no reuse is told after it.
            pos.stamp = 0;
        }
        if pos.announced.is_some_and(|(a, _)| a <= pos.last) {
            pos.announced = None;
        }
    }

    /// Takes (one part of) beacon `round` of `origin`'s owner, naming the
    /// newest id it sent on each subject lately; returns the subjects this
    /// node has that lost their tail (announced in an earlier round and
    /// still not here), with the position to repair from and the id
    /// announced.
    pub fn beacon(
        &mut self,
        origin: Origin,
        round: u64,
        newest: &[(String, EventId)],
    ) -> Vec<(String, EventId, EventId)> {
        if !self.admit_term(origin) {
            return Vec::new();
        }
        let mut lost = Vec::new();
        let Some(part) = self.at.get_mut(&origin.partition) else {
            return lost;
        };
        for (subject, pos) in part.iter_mut() {
            if let Some((a, r)) = pos.announced
                && r < round
                && a > pos.last
            {
                lost.push((subject.clone(), pos.last, a));
                pos.announced = None;
            }
        }
        for (subject, id) in newest {
            if let Some(pos) = part.get_mut(subject.as_str())
                && id.epoch == pos.last.epoch
                && *id > pos.last
            {
                pos.announced = match pos.announced {
                    Some((a, r)) if a >= *id => Some((a, r)),
                    _ => Some((*id, round)),
                };
            }
        }
        lost
    }

    /// The position of every (subject, partition) this node has.
    pub fn all(&self) -> Vec<(String, Partition, EventId)> {
        self.at
            .iter()
            .flat_map(|(p, part)| part.iter().map(|(s, pos)| (s.clone(), *p, pos.last)))
            .collect()
    }

    /// The position of `subject` in `partition`.
    pub fn of(&self, subject: &str, partition: Partition) -> Option<EventId> {
        self.at.get(&partition)?.get(subject).map(|p| p.last)
    }

    /// Forgets `subject` (no longer subscribed).
    pub fn forget(&mut self, subject: &str) {
        for part in self.at.values_mut() {
            part.remove(subject);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: u64 = 100;

    fn id(seq: u64) -> EventId {
        EventId { epoch: 7, seq }
    }
    fn o(p: u16, term: u64) -> Origin {
        Origin {
            partition: Partition(p),
            term,
        }
    }

    #[test]
    fn a_chain_passes_and_a_missing_link_is_a_gap() {
        let mut pos = Positions::default();
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(10), STAMP, None),
            Verdict::Deliver
        );
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(12), STAMP, Some(id(10))),
            Verdict::Deliver
        );
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(20), STAMP, Some(id(15))),
            Verdict::Gap { after: id(12) }
        );
        // Nothing moved: the repair brings 15, then 20 is offered again.
        pos.advance("t.a", Partition(1), id(15));
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(20), STAMP, Some(id(15))),
            Verdict::Deliver
        );
        assert_eq!(pos.of("t.a", Partition(1)), Some(id(20)));
    }

    #[test]
    fn repeats_are_dropped_by_position_per_subject_and_partition() {
        let mut pos = Positions::default();
        pos.offer("t.a", o(1, 1), id(10), STAMP, None);
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(10), STAMP, None),
            Verdict::Repeat
        );
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(3), STAMP, None),
            Verdict::Repeat
        );
        // Another partition feeding the same subject has its own order.
        assert_eq!(
            pos.offer("t.a", o(2, 1), id(3), STAMP, None),
            Verdict::Deliver
        );
        // A successor routing again from the first unacknowledged event.
        assert_eq!(
            pos.offer("t.a", o(1, 2), id(9), STAMP, None),
            Verdict::Repeat
        );
        assert_eq!(
            pos.offer("t.a", o(1, 2), id(11), STAMP, None),
            Verdict::Deliver
        );
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(12), STAMP, None),
            Verdict::Fenced
        );
        // A new ingest stream starts over.
        let next = EventId { epoch: 8, seq: 1 };
        assert_eq!(
            pos.offer("t.a", o(1, 2), next, STAMP, None),
            Verdict::Deliver
        );
    }

    #[test]
    fn a_lost_tail_shows_at_the_beacon_after_the_one_that_named_it() {
        let mut pos = Positions::default();
        pos.offer("t.a", o(1, 1), id(10), STAMP, None);
        pos.offer("t.b", o(1, 1), id(11), STAMP, None);
        let beacon = vec![("t.a".to_owned(), id(14)), ("t.b".to_owned(), id(11))];
        assert!(
            pos.beacon(o(1, 1), 1, &beacon).is_empty(),
            "may be in flight"
        );
        // 14 arrives for t.a before the next beacon: no gap.
        pos.offer("t.a", o(1, 1), id(14), STAMP, Some(id(10)));
        assert!(pos.beacon(o(1, 1), 2, &[]).is_empty());
        // Named and never arrives; another part of the same round checks
        // nothing.
        pos.beacon(o(1, 1), 3, &[("t.b".to_owned(), id(16))]);
        assert!(pos.beacon(o(1, 1), 3, &[]).is_empty());
        assert_eq!(
            pos.beacon(o(1, 1), 4, &[]),
            vec![("t.b".to_owned(), id(11), id(16))]
        );
        // A deposed owner's beacon counts for nothing; a successor's rounds
        // start afresh.
        pos.offer("t.a", o(1, 3), id(15), STAMP, None);
        pos.beacon(o(1, 2), 9, &[("t.a".to_owned(), id(99))]);
        assert!(pos.beacon(o(1, 3), 1, &[]).is_empty());
        pos.beacon(o(1, 3), 1, &[("t.a".to_owned(), id(20))]);
        assert_eq!(pos.beacon(o(1, 3), 2, &[]).len(), 1);
    }

    #[test]
    fn a_sequence_reused_after_the_bus_lost_writes_is_a_new_event() {
        let mut pos = Positions::default();
        pos.offer("t.a", o(1, 1), id(10), 100, None);
        assert_eq!(pos.offer("t.a", o(1, 1), id(9), 90, None), Verdict::Repeat);
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(9), 200, None),
            Verdict::Deliver
        );
        assert_eq!(
            pos.offer("t.a", o(1, 1), id(10), 210, None),
            Verdict::Deliver
        );
    }

    #[test]
    fn a_newer_owner_is_a_takeover_once_an_owner_was_heard() {
        let mut pos = Positions::default();
        assert!(!pos.is_takeover(o(1, 4)), "the first owner heard");
        pos.offer("t.a", o(1, 4), id(10), STAMP, None);
        assert!(!pos.is_takeover(o(1, 4)));
        assert!(pos.is_takeover(o(1, 5)));
        assert_eq!(
            pos.unvouched(Partition(1)),
            vec![("t.a".to_owned(), id(10))]
        );
    }

    #[test]
    fn a_clean_handover_vouches_for_what_arrived() {
        let mut pos = Positions::default();
        pos.offer("t.a", o(1, 4), id(10), STAMP, None);
        pos.offer("t.b", o(1, 4), id(11), STAMP, None);
        pos.offer("t.c", o(1, 4), id(12), STAMP, None);
        // The owner of term 4 hands over: it sent 10 on t.a (here), 13 on
        // t.b (not here), and t.c too long ago to name.
        pos.closing(
            o(1, 4),
            &[("t.a".to_owned(), id(10)), ("t.b".to_owned(), id(13))],
        );
        let mut unsure = pos.unvouched(Partition(1));
        unsure.sort();
        assert_eq!(
            unsure,
            vec![("t.b".to_owned(), id(11)), ("t.c".to_owned(), id(12))]
        );
        // Read once, at the takeover; a closing of an owner before the one
        // heard last vouches for nothing.
        assert_eq!(pos.unvouched(Partition(1)).len(), 3);
        pos.closing(o(1, 3), &[("t.a".to_owned(), id(10))]);
        assert_eq!(pos.unvouched(Partition(1)).len(), 3);
    }

    #[test]
    fn subjects_are_forgotten_when_unsubscribed() {
        let mut pos = Positions::default();
        pos.offer("t.a", o(1, 1), id(10), STAMP, None);
        pos.offer("t.a", o(2, 1), id(11), STAMP, None);
        pos.forget("t.a");
        assert!(pos.all().is_empty());
    }
}
