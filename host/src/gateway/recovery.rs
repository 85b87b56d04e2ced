//! Catching a session up: a replay from a client's cursor, and the
//! offline inbox on connect. Both run with the session held and
//! subscribed, so what is routed meanwhile follows without a gap.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Gateway;
use crate::routing::{Cursor, Event, Partition, partition_of_str};
use crate::session::SessionHandle;
use crate::store::ReplayStream;
use crate::store::inbox::InboxCursor;
use crate::subject::Subject;

/// How long a replay may wait for the store.
const REPLAY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// What a reconnecting client's cursor yields.
pub enum Recovery {
    /// Every missed event (transformed for the session), in order; live
    /// events resume after `upto`.
    Replayed {
        /// The events to send first.
        frames: Vec<Arc<crate::session::EventFrame>>,
        /// Every event the replay covered (sent, or withheld from this
        /// session): held live copies of these are dropped on release.
        ids: std::collections::HashSet<crate::routing::EventId>,
        /// Per recovered topic with replayed events, the newest of them: a
        /// live copy of an older event of the topic is a duplicate.
        floors: Vec<(String, crate::routing::EventId)>,
    },
    /// The gap cannot be filled (past retention, another epoch, no history):
    /// the client must be told.
    Reset,
    /// The replay cannot be made now (history not confirmed complete while
    /// a partition changes owner, the store unreachable): the cursor stays
    /// good, and the client should ask again with it.
    Unavailable(String),
}

impl Gateway {
    /// Replays what a client missed on `topics` (and, given the user's
    /// inbox cursor as read when the session was opened, in their inbox)
    /// since the event id `since`. Call with the session held
    /// ([`SessionHandle::hold`]) and subscribed, then queue the frames and
    /// release it with the replayed ids.
    pub async fn recover(
        &self,
        subject: &Subject,
        since: &str,
        topics: &[String],
        inbox: Option<&InboxCursor>,
    ) -> Recovery {
        let Some(cursor) = Cursor::parse(since) else {
            return Recovery::Reset;
        };
        if !sane(&cursor, self.config.bus.partitions) {
            return Recovery::Reset;
        }
        let since = cursor.at;
        let inbox = inbox.filter(|_| self.retention.keeps_inbox());
        let with_inbox = inbox.is_some();
        // A topic that keeps no history cannot be replayed.
        if topics.iter().any(|t| self.retention.of(t).max_events == 0) {
            return Recovery::Reset;
        }
        let epoch = self.bus.epoch();
        if since.epoch != epoch {
            return Recovery::Reset;
        }
        // A cursor past every id handed out is not "nothing missed": its
        // live events would all fall below it and be dropped as seen.
        let furthest = cursor
            .floors()
            .iter()
            .map(|(_, f)| *f)
            .fold(since.seq, u64::max);
        match self.bus.assigned(furthest).await {
            Some(true) => {}
            Some(false) => {
                tracing::info!(cursor = %cursor, "a cursor ahead of every id handed out: reset");
                return Recovery::Reset;
            }
            None => return Recovery::Unavailable("the newest id is unknown now".into()),
        }
        if !self.bus.cover().await {
            tracing::warn!("history not confirmed complete; cannot replay now");
            return Recovery::Unavailable("history is catching up".into());
        }
        let mut streams = replay_streams(&cursor, topics, self.config.bus.partitions);
        if with_inbox {
            // The inbox is best kept: below the newest id, what was not
            // shown comes from its own cursors (`lagged_inbox`).
            streams.push(ReplayStream {
                name: crate::store::retention::inbox_stream(&subject.user),
                floor: since.seq,
            });
        }
        let read = async {
            match self.store.replay_from(epoch, &cursor, &streams).await {
                Ok(crate::store::Replay::Events(events)) => match inbox {
                    Some(cursor) => self
                        .lagged_inbox(epoch, &subject.user, since, cursor)
                        .await
                        .map(|below| crate::store::Replay::Events(merged(events, below))),
                    None => Ok(crate::store::Replay::Events(events)),
                },
                other => other,
            }
        };
        // An unreachable store would hold the client until the pool gives
        // up (sqlx: 30 s); it is told to come back sooner.
        let Ok(replay) = tokio::time::timeout(REPLAY_READ_TIMEOUT, read).await else {
            tracing::warn!("history not read in time; cannot replay now");
            return Recovery::Unavailable("history cannot be read now".into());
        };
        match replay {
            Ok(crate::store::Replay::Events(events)) => {
                if with_inbox {
                    self.inbox_delivered(&subject.user, &events).await;
                }
                self.stats
                    .replayed
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                let floors = floors(topics, &events);
                self.replayed(subject, events, floors).await
            }
            Ok(crate::store::Replay::Reset) => Recovery::Reset,
            Err(e) => {
                tracing::warn!(error = %e, "replay failed");
                Recovery::Unavailable("history cannot be read now".into())
            }
        }
    }

    /// The inbox events below `since` that no session of `user` was shown:
    /// a partition that lagged behind the one `since` came from routed
    /// them while the client was away.
    async fn lagged_inbox(
        &self,
        epoch: u64,
        user: &str,
        since: crate::routing::EventId,
        cursor: &InboxCursor,
    ) -> Result<Vec<Event>, crate::store::StoreError> {
        let events = self
            .store
            .undelivered(epoch, user, &cursor.capped(since.seq))
            .await?;
        Ok(events.into_iter().filter(|e| e.id < since).collect())
    }

    /// The events waiting in `subject`'s user inbox (addressed to them
    /// while no session of theirs was live), to send on connect; they are
    /// marked delivered. Call with the session held and registered, then
    /// queue the frames and release it.
    pub async fn undelivered(&self, session: &SessionHandle) -> Recovery {
        let none = Recovery::Replayed {
            frames: Vec::new(),
            ids: Default::default(),
            floors: Vec::new(),
        };
        let Some(cursor) = session.inbox_cursor.get() else {
            return none;
        };
        let subject = &session.subject;
        let epoch = self.bus.epoch();
        if !self.bus.cover().await {
            tracing::warn!("history not confirmed complete; inbox not delivered now");
            return none;
        }
        // Most connecting users have nothing waiting: one batched query
        // over many sessions says so, instead of one inbox query each.
        match self
            .inbox_heads
            .get(crate::store::retention::inbox_stream(&subject.user))
            .await
        {
            Ok(heads) if !cursor.behind(heads.as_deref().unwrap_or_default()) => {
                return none;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inbox not delivered");
                return none;
            }
        }
        match self.store.undelivered(epoch, &subject.user, cursor).await {
            Ok(events) => {
                if !events.is_empty() {
                    tracing::debug!(user = %subject.user, events = events.len(), "delivering the offline inbox");
                }
                self.inbox_delivered(&subject.user, &events).await;
                self.stats
                    .inbox_delivered
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                // An inbox covers only part of each topic: no floors.
                self.replayed(subject, events, Vec::new()).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox not delivered");
                none
            }
        }
    }

    /// Moves `user`'s inbox cursors past `events`, before they are sent:
    /// a reconnect right after must not get them again.
    async fn inbox_delivered(&self, user: &str, events: &[Event]) {
        let newest = events.iter().map(|e| e.id).max();
        if let Some(id) = newest
            && let Err(e) = self.store.mark_shown_upto(user, id).await
        {
            tracing::warn!(error = %e, %user, "inbox cursor not written");
        }
    }

    async fn replayed(
        &self,
        subject: &Subject,
        events: Vec<Event>,
        floors: Vec<(String, crate::routing::EventId)>,
    ) -> Recovery {
        let ids = events.iter().map(|e| e.id).collect();
        let frames = crate::pipeline::edge::replay_frames(&self.executor, subject, events).await;
        Recovery::Replayed {
            frames,
            ids,
            floors,
        }
    }
}

/// `after` (events after a cursor, in order) and `below` (older ones,
/// in order) as one replay in order, each event once.
fn merged(after: Vec<Event>, below: Vec<Event>) -> Vec<Event> {
    let mut all: Vec<Event> = below.into_iter().chain(after).collect();
    all.sort_by_key(|e| e.id);
    all.dedup_by_key(|e| e.id);
    all
}

/// Whether a client's cursor names only partitions this bus has and
/// sequences the store can hold.
fn sane(cursor: &Cursor, partitions: u16) -> bool {
    let storable = |seq: u64| i64::try_from(seq).is_ok();
    storable(cursor.at.seq)
        && cursor
            .floors()
            .iter()
            .all(|(p, f)| p.0 < partitions && storable(*f))
}

/// The topics to replay from `cursor`, each with the lowest floor owed of
/// it: that of its own partition, and that of any partition the cursor
/// names that is no topic's own (a router may feed a topic from it).
fn replay_streams(cursor: &Cursor, topics: &[String], partitions: u16) -> Vec<ReplayStream> {
    let own: Vec<Partition> = topics
        .iter()
        .map(|t| partition_of_str(t, partitions))
        .collect();
    let routed = cursor
        .floors()
        .iter()
        .filter(|(p, _)| !own.contains(p))
        .map(|(_, f)| *f)
        .min()
        .unwrap_or(cursor.at.seq);
    topics
        .iter()
        .zip(&own)
        .map(|(t, p)| ReplayStream {
            name: t.clone(),
            floor: cursor.floor(*p).min(routed),
        })
        .collect()
}

/// Per topic replayed from, its newest replayed event: a live copy at or
/// below it is a duplicate. Not `since` for a topic with none: a topic's
/// partition may lag behind the one `since` came from, so its next live
/// event can have a lower id and still be new to the client.
fn floors(topics: &[String], events: &[Event]) -> Vec<(String, crate::routing::EventId)> {
    topics
        .iter()
        .filter_map(|t| {
            let newest = events
                .iter()
                .filter(|e| e.topic.as_str() == t)
                .map(|e| e.id)
                .max()?;
            Some((t.clone(), newest))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{EventId, Topic};

    #[test]
    fn lagged_events_come_first_in_id_order_and_once() {
        let event = |seq| {
            Event::new(
                EventId { epoch: 0x10, seq },
                Topic::parse("t").expect("t"),
                Vec::new(),
            )
        };
        let ids = |events: Vec<Event>| {
            events
                .into_iter()
                .map(|e| e.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(merged(
                vec![event(101), event(103)],
                vec![event(95), event(103)]
            )),
            ["10-95", "10-101", "10-103"]
        );
        assert_eq!(ids(merged(vec![event(7)], Vec::new())), ["10-7"]);
    }

    #[test]
    fn a_topic_may_be_cut_only_below_the_floors_that_apply_to_it() {
        let (a, b) = ("news.a".to_owned(), "news.b".to_owned());
        let pa = partition_of_str(&a, 64);
        let pb = partition_of_str(&b, 64);
        assert_ne!(pa, pb);
        let epoch = 7;
        let newest = EventId { epoch, seq: 100 };
        let floors = |c: &Cursor| {
            replay_streams(c, &[a.clone(), b.clone()], 64)
                .into_iter()
                .map(|s| s.floor)
                .collect::<Vec<_>>()
        };
        assert_eq!(floors(&Cursor::at(newest)), [100, 100]);
        // b lags: only b's history must reach below the newest id.
        assert_eq!(floors(&Cursor::with_floors(newest, [(pb, 60)])), [100, 60]);
        // A partition that is no topic's own (a router's source) may feed either.
        let other = (0..64)
            .map(Partition)
            .find(|p| *p != pa && *p != pb)
            .expect("another partition");
        assert_eq!(
            floors(&Cursor::with_floors(newest, [(pb, 60), (other, 40)])),
            [40, 40]
        );
    }

    #[test]
    fn a_cursor_naming_what_cannot_be_is_refused() {
        let parse = |s: &str| Cursor::parse(s).expect("cursor");
        assert!(sane(&parse("a-10~63:5"), 64));
        assert!(!sane(&parse("a-10~64:5"), 64), "no partition 64 of 64");
        assert!(!sane(&parse("a-10~3:18446744073709551615"), 64));
        assert!(!sane(&parse("a-18446744073709551615"), 64));
    }

    #[test]
    fn only_a_topic_with_replayed_events_gets_a_floor() {
        let event = |topic: &str, seq| {
            Event::new(
                EventId { epoch: 0xa, seq },
                Topic::parse(topic).expect("topic"),
                Vec::new(),
            )
        };
        let topics = ["fast".to_owned(), "lagging".to_owned()];
        let replayed = [event("fast", 8), event("fast", 9)];
        assert_eq!(
            floors(&topics, &replayed),
            [("fast".to_owned(), EventId { epoch: 10, seq: 9 })],
            "the lagging topic's next live event (id 5, say) is not a duplicate"
        );
    }
}
