//! Repairing gaps in the core-NATS fan-out from history: once every
//! partition owner says what it routed is in the store (a cover round),
//! one query per (node, partition) brings the missed events of every
//! subject that partition feeds here; after a link loss, one query brings
//! what every subscribed subject got since. What history does not keep
//! (a topic with `max_events = 0`, inboxes off) or cannot give (too far
//! behind, the store down) is reported to the sessions as lost, never
//! skipped in silence.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cover;
use crate::bus::BusStats;
use crate::bus::positions::Positions;
use crate::bus::wire::{Subjects, Target};
use crate::routing::{EventId, Origin, Partition, Routed, partition_of};
use crate::store::repair::{Found, From};
use crate::store::retention::{self, Policy};
use crate::store::{MAX_REPLAY, Store};

/// A gap to repair on one subject.
#[derive(Debug, Clone)]
pub struct Gap {
    /// The delivery subject.
    pub subject: String,
    /// The newest id handed on.
    pub after: EventId,
    /// The id known to have been sent (the position must reach it).
    pub want: EventId,
}

/// What a repair brings.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Missed events to hand on, in order, each to the subjects it missed.
    pub events: Vec<Routed>,
    /// Subjects whose sessions must be told events were lost (each once).
    pub lost: BTreeSet<String>,
}

/// How far before a link loss the repair of a subject with no position
/// starts: deliveries in flight when it broke, and clock skew between this
/// node and the store's writers.
const LOSS_MARGIN: Duration = Duration::from_secs(2);

/// The repairer of one node.
pub struct Repairer {
    pub(super) store: Store,
    pub(super) policy: Policy,
    pub(super) asker: Arc<cover::Asker>,
    pub(super) subjects: Subjects,
    pub(super) partitions: u16,
    pub(super) epoch: Arc<AtomicU64>,
    pub(super) stats: Arc<BusStats>,
}

impl Repairer {
    /// The history stream behind a delivery subject, if history keeps it.
    fn kept_stream(&self, subject: &str) -> Option<String> {
        match self.subjects.target(subject)? {
            Target::Topic(t) => (self.policy.of(&t).max_events > 0).then_some(t),
            Target::User(u) => self
                .policy
                .keeps_inbox()
                .then(|| retention::inbox_stream(&u)),
        }
    }

    fn subject_of(&self, stream: &str) -> String {
        match retention::inbox_user(stream) {
            Some(user) => self.subjects.user(user),
            None => self.subjects.topic(stream),
        }
    }

    /// Repairs the gaps of `partition`'s subjects, first waiting for a
    /// cover round if `cover` (a takeover's repair needs none: what the
    /// previous owner acknowledged is stored, what it did not the new owner
    /// routes again).
    pub async fn gaps(
        &self,
        partition: Partition,
        gaps: Vec<Gap>,
        positions: &mut Positions,
        cover: bool,
    ) -> Outcome {
        self.stats
            .gaps
            .fetch_add(gaps.len() as u64, Ordering::Relaxed);
        let mut out = Outcome::default();
        let covered = !cover || self.covered().await;
        self.partition(partition, gaps, covered, positions, &mut out)
            .await;
        self.count(&out);
        out
    }

    /// Repairs every subscribed subject after the link was lost at `at`:
    /// from its position where it has one (one query per partition), and
    /// what was stored since shortly before `at` where it has none.
    pub async fn after_loss(
        &self,
        at: SystemTime,
        subscribed: Vec<String>,
        positions: &mut Positions,
    ) -> Outcome {
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
        let mut out = Outcome::default();
        let covered = self.covered().await;
        let mut by_partition: HashMap<Partition, Vec<Gap>> = HashMap::new();
        let mut placed: HashSet<String> = HashSet::new();
        let wanted: HashSet<&String> = subscribed.iter().collect();
        for (subject, partition, last) in positions.all() {
            if wanted.contains(&subject) {
                placed.insert(subject.clone());
                by_partition.entry(partition).or_default().push(Gap {
                    subject,
                    after: last,
                    want: last,
                });
            }
        }
        for (partition, gaps) in by_partition {
            self.partition(partition, gaps, covered, positions, &mut out)
                .await;
        }
        let mut streams = Vec::new();
        for s in subscribed.into_iter().filter(|s| !placed.contains(s)) {
            match self.kept_stream(&s) {
                Some(stream) => streams.push(stream),
                None => {
                    out.lost.insert(s);
                }
            }
        }
        if !streams.is_empty() {
            let ms = at
                .checked_sub(LOSS_MARGIN)
                .unwrap_or(at)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let epoch = self.epoch.load(Ordering::Relaxed);
            let found = if covered {
                self.query(From::Since { epoch, ms }, None, &streams).await
            } else {
                None
            };
            match found {
                Some(found) => {
                    for f in found {
                        self.take(f, positions, &mut out.events);
                    }
                }
                None => out.lost.extend(streams.iter().map(|s| self.subject_of(s))),
            }
        }
        self.count(&out);
        out
    }

    /// Whether the store has everything routed so far (a cover round).
    async fn covered(&self) -> bool {
        let ok = self.asker.cover().await;
        if !ok {
            self.stats.recovery_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("repair: not every partition could say its events are stored");
        }
        ok
    }

    /// Repairs `gaps` of `partition` with one query (if `covered`); what
    /// stays short of what was sent, or reaches back past retention, is
    /// reported lost.
    async fn partition(
        &self,
        partition: Partition,
        gaps: Vec<Gap>,
        covered: bool,
        positions: &mut Positions,
        out: &mut Outcome,
    ) {
        let kept: Vec<Option<String>> = gaps.iter().map(|g| self.kept_stream(&g.subject)).collect();
        let mut streams = Vec::new();
        let mut from: Option<EventId> = None;
        for (g, stream) in gaps.iter().zip(&kept) {
            match stream {
                Some(s) => {
                    streams.push(s.clone());
                    from = Some(from.map_or(g.after, |f| f.min(g.after)));
                }
                None => {
                    out.lost.insert(g.subject.clone());
                }
            }
        }
        // Where every gap's end is known (a delivery or a beacon named it),
        // the repair stops there: what follows arrives live.
        let upto = gaps
            .iter()
            .all(|g| g.want > g.after)
            .then(|| gaps.iter().map(|g| g.want).max())
            .flatten();
        let mut trimmed: HashMap<String, u64> = HashMap::new();
        if let Some(from) = from {
            let range = match upto {
                Some(upto) => From::Between(from, upto),
                None => From::After(from),
            };
            let found = if covered {
                self.query(range, Some(partition), &streams).await
            } else {
                None
            };
            match found {
                Some(found) => {
                    for f in found {
                        self.take(f, positions, &mut out.events);
                    }
                }
                None => out.lost.extend(streams.iter().map(|s| self.subject_of(s))),
            }
            match self.store.trimmed(from.epoch, &streams).await {
                Ok(t) => trimmed = t,
                Err(e) => tracing::debug!(error = %e, "repair: trimmed ranges unknown"),
            }
        }
        for (g, stream) in gaps.into_iter().zip(kept) {
            let short = positions
                .of(&g.subject, partition)
                .is_none_or(|p| p < g.want);
            let past_retention = stream
                .and_then(|s| trimmed.get(&s).copied())
                .is_some_and(|upto| upto > g.after.seq);
            if short || past_retention {
                out.lost.insert(g.subject.clone());
            }
            if short {
                positions.advance(&g.subject, partition, g.want);
            }
        }
    }

    fn count(&self, out: &Outcome) {
        self.stats
            .recovered
            .fetch_add(out.events.len() as u64, Ordering::Relaxed);
        if !out.lost.is_empty() {
            self.stats
                .gaps_unrepaired
                .fetch_add(out.lost.len() as u64, Ordering::Relaxed);
            tracing::warn!(subjects = ?out.lost, "deliveries lost that history cannot give; sessions told");
        }
    }

    /// The events of `streams` from `from` (routed by `part`, if given), in
    /// order; `None` if too many or the store failed (the sessions are then
    /// told).
    async fn query(
        &self,
        from: From,
        part: Option<Partition>,
        streams: &[String],
    ) -> Option<Vec<Found>> {
        match self.store.repair(from, part, streams, MAX_REPLAY).await {
            Ok(Some(found)) => Some(found),
            Ok(None) => {
                tracing::warn!("repair: too far behind to replay");
                None
            }
            Err(e) => {
                self.stats.recovery_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "repair: store query failed");
                None
            }
        }
    }

    /// Hands `f` on to the subjects that have not had it yet.
    fn take(&self, f: Found, positions: &mut Positions, events: &mut Vec<Routed>) {
        let partition = partition_of(&f.event.topic, self.partitions);
        let mut topics = Vec::new();
        let mut users = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for stream in f.streams {
            let subject = self.subject_of(&stream);
            if !seen.insert(subject.clone()) {
                continue;
            }
            if positions.of(&subject, partition).is_some_and(|p| p >= f.id) {
                continue;
            }
            positions.advance(&subject, partition, f.id);
            match retention::inbox_user(&stream) {
                Some(user) => users.push(user.to_owned()),
                None => topics.push(stream),
            }
        }
        if topics.is_empty() && users.is_empty() {
            return;
        }
        events.push(Routed {
            event: Arc::new(f.event),
            topics,
            users,
            stamp: 0,
            origin: Origin { partition, term: 0 },
        });
    }
}
