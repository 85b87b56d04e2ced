//! A client's replay cursor over several partitions, and what a session
//! keeps to tell one (pure).
//!
//! Ids order the events of one partition, not those of several. A session
//! fed by several (an SSE stream's topics and inbox, a topic a router feeds
//! from others) is shown their events interleaved, and a partition that
//! lags can route an event with a lower id than one already shown. So the
//! cursor handed with an event is its id plus, for each partition the
//! client holds up to another point, that point: a replay returns of such
//! a partition what lies above its floor, and of any other what lies above
//! the id. Its text is the id alone when every partition is at it (so
//! every event id is a cursor), else `<id>~<partition>:<seq>~…`: it always
//! starts with the id of the event it came with.

use std::fmt;

use super::{EventId, Partition};

/// Where a client resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The event the cursor came with.
    pub at: EventId,
    /// Partitions held up to another sequence than `at`'s, sorted, each
    /// once: of these the client has every event up to the floor and none
    /// above.
    floors: Vec<(Partition, u64)>,
}

impl Cursor {
    /// A cursor at one event id: of every partition, what lies above it.
    pub fn at(at: EventId) -> Self {
        Cursor {
            at,
            floors: Vec::new(),
        }
    }

    /// `at` with the given floors (those equal to `at`'s sequence say
    /// nothing and are dropped; a partition named twice keeps the first).
    pub fn with_floors(at: EventId, floors: impl IntoIterator<Item = (Partition, u64)>) -> Self {
        let mut floors: Vec<(Partition, u64)> =
            floors.into_iter().filter(|(_, f)| *f != at.seq).collect();
        floors.sort_by_key(|(p, _)| *p);
        floors.dedup_by_key(|(p, _)| *p);
        Cursor { at, floors }
    }

    /// Reads an event id, or `<id>~<partition>:<seq>~…`; `None` for
    /// anything else.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.trim().split('~');
        let at = EventId::parse(parts.next()?)?;
        let mut floors = Vec::new();
        for part in parts {
            let (p, seq) = part.split_once(':')?;
            let p = Partition(p.parse().ok()?);
            if floors.iter().any(|(q, _)| *q == p) {
                return None;
            }
            floors.push((p, seq.parse().ok()?));
        }
        Some(Cursor::with_floors(at, floors))
    }

    /// Events of `partition` above this sequence are owed.
    pub fn floor(&self, partition: Partition) -> u64 {
        self.floors
            .iter()
            .find(|(p, _)| *p == partition)
            .map_or(self.at.seq, |(_, f)| *f)
    }

    /// The lowest floor of any partition.
    pub fn lowest(&self) -> u64 {
        self.floors
            .iter()
            .map(|(_, f)| *f)
            .fold(self.at.seq, u64::min)
    }

    /// The partitions held up to another sequence than the id's, and
    /// their floors.
    pub fn floors(&self) -> &[(Partition, u64)] {
        &self.floors
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.at)?;
        for (p, seq) in &self.floors {
            write!(f, "~{p}:{seq}")?;
        }
        Ok(())
    }
}

/// What one session has been shown, per partition: the cursor to hand its
/// client with each event.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    epoch: Option<u64>,
    /// Every partition whose floor is tracked, sorted: those of the
    /// session's own topics, those it was shown events of, those the
    /// client's cursor named.
    floors: Vec<(Partition, u64)>,
}

impl Shown {
    /// A session on topics in `own` partitions, resuming from `from` or
    /// starting afresh. Its partitions start at the client's floors; with
    /// no cursor, they are tracked only once shown (as a plain event id
    /// would have them) or once [`Shown::settle`] says where they stand.
    pub fn new(own: &[Partition], from: Option<&Cursor>) -> Self {
        let Some(from) = from else {
            return Shown::default();
        };
        let mut tracked: Vec<Partition> = own.to_vec();
        tracked.extend(from.floors.iter().map(|(p, _)| *p));
        tracked.sort_unstable();
        tracked.dedup();
        Shown {
            epoch: Some(from.at.epoch),
            floors: tracked.into_iter().map(|p| (p, from.floor(p))).collect(),
        }
    }

    /// Everything up to `settled` was routed before the session went live,
    /// and what the store held of it was replayed and shown: raises every
    /// tracked partition and those in `own` to it. Call once the replay or
    /// inbox is out and before any live event (a replay's early frames must
    /// not claim what its later ones bring).
    pub fn settle(&mut self, own: &[Partition], settled: EventId) {
        if self.epoch.is_some_and(|e| e != settled.epoch) {
            return;
        }
        self.epoch = Some(settled.epoch);
        for f in &mut self.floors {
            f.1 = f.1.max(settled.seq);
        }
        for p in own {
            if let Err(i) = self.floors.binary_search_by_key(p, |(q, _)| *q) {
                self.floors.insert(i, (*p, settled.seq));
            }
        }
    }

    /// The session was shown `id`, of `partition`.
    pub fn shown(&mut self, partition: Partition, id: EventId) {
        if self.epoch.is_some_and(|e| e != id.epoch) {
            // Another epoch: nothing before it can be replayed anyway.
            self.floors.clear();
        }
        self.epoch = Some(id.epoch);
        match self.floors.binary_search_by_key(&partition, |(p, _)| *p) {
            Ok(i) => self.floors[i].1 = self.floors[i].1.max(id.seq),
            Err(i) => self.floors.insert(i, (partition, id.seq)),
        }
    }

    /// The cursor to hand with event `id` just shown, unless it is `id`
    /// itself (nearly always: every partition tracked is at it).
    pub fn cursor_at(&self, id: EventId) -> Option<Cursor> {
        if self.floors.iter().all(|(_, f)| *f == id.seq) {
            return None;
        }
        Some(Cursor {
            at: id,
            floors: self
                .floors
                .iter()
                .filter(|(_, f)| *f != id.seq)
                .copied()
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EventId {
        EventId { epoch: 0x1f, seq }
    }

    fn text(shown: &Shown, seq: u64) -> String {
        shown
            .cursor_at(id(seq))
            .map_or_else(|| id(seq).to_string(), |c| c.to_string())
    }

    #[test]
    fn cursors_round_trip_and_an_event_id_is_one() {
        let c = Cursor::with_floors(id(50), [(Partition(7), 20), (Partition(3), 61)]);
        assert_eq!(c.to_string(), "1f-50~3:61~7:20");
        assert_eq!(Cursor::parse("1f-50~3:61~7:20"), Some(c.clone()));
        assert_eq!(Cursor::parse("1f-50"), Some(Cursor::at(id(50))));
        assert_eq!(c.floor(Partition(7)), 20);
        assert_eq!(c.floor(Partition(3)), 61);
        assert_eq!(c.floor(Partition(9)), 50, "unnamed: the id");
        assert_eq!(c.lowest(), 20);
        assert_eq!(Cursor::parse("1f-50~3:50"), Some(Cursor::at(id(50))));
        for junk in [
            "",
            "1f",
            "1f-50~",
            "1f-50~3",
            "1f-50~x:1",
            "1f-50~3:1~3:2",
            "1f-50~99999:1",
        ] {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn each_cursor_starts_with_its_event_and_holds_the_other_partitions() {
        let (a, b) = (Partition(1), Partition(2));
        // Topics in a and b, everything up to 10 routed before the session.
        let mut shown = Shown::new(&[a, b], None);
        shown.settle(&[a, b], id(10));
        shown.shown(a, id(30));
        assert_eq!(text(&shown, 30), "1f-30~2:10");
        // b lags: its 20 comes after a's 30.
        shown.shown(b, id(20));
        assert_eq!(text(&shown, 20), "1f-20~1:30");
        shown.shown(b, id(35));
        assert_eq!(text(&shown, 35), "1f-35~1:30");
        shown.shown(a, id(36));
        assert_eq!(text(&shown, 36), "1f-36~2:35");
        // One partition: the event id itself.
        let mut one = Shown::new(&[a], None);
        one.settle(&[a], id(10));
        one.shown(a, id(11));
        assert_eq!(one.cursor_at(id(11)), None);
    }

    #[test]
    fn a_resumed_session_carries_the_floors_it_was_given() {
        let (a, b, routed) = (Partition(1), Partition(2), Partition(5));
        let from = Cursor::parse("1f-40~2:15~5:12").expect("cursor");
        let mut shown = Shown::new(&[a, b], Some(&from));
        // The replay's first frame claims nothing past itself on b.
        shown.shown(b, id(16));
        let c = shown.cursor_at(id(16)).expect("cursor");
        assert_eq!((c.floor(a), c.floor(b), c.floor(routed)), (40, 16, 12));
        shown.shown(b, id(18));
        // The replay is out; everything up to 14 was settled.
        shown.settle(&[a, b], id(14));
        let c = shown.cursor_at(id(18)).expect("cursor");
        assert_eq!(c.floor(a), 40);
        assert_eq!(c.floor(b), 18);
        assert_eq!(
            c.floor(routed),
            14,
            "named by the client, raised to what was settled"
        );
        // Without a settled floor a fresh session's partitions are tracked
        // only once shown: the plain-id behaviour.
        let mut fresh = Shown::new(&[a, b], None);
        fresh.shown(a, id(7));
        assert_eq!(fresh.cursor_at(id(7)), None);
        // A settled floor of another epoch says nothing.
        fresh.settle(
            &[a, b],
            EventId {
                epoch: 0x20,
                seq: 3,
            },
        );
        assert_eq!(fresh.cursor_at(id(7)), None);
    }

    #[test]
    fn another_epoch_starts_over() {
        let mut shown = Shown::new(&[Partition(1)], None);
        shown.settle(&[Partition(1)], id(3));
        shown.shown(Partition(2), id(9));
        let later = EventId {
            epoch: 0x20,
            seq: 2,
        };
        shown.shown(Partition(2), later);
        assert_eq!(shown.cursor_at(later), None);
    }
}
