//! Offline inboxes: what of a user's inbox stream their sessions have
//! been shown, and what still waits for their next connect.
//!
//! An inbox is fed by every partition that routes an event to its user,
//! and partitions route at their own pace, so ids reach it out of order: a
//! lagging partition writes an id lower than one another partition wrote
//! already. A single "delivered up to" id would hide that event for good.
//! So cursors are kept per (user, epoch, source partition), and history
//! rows say which partition fed them.

use std::collections::{BTreeMap, HashMap};

use sqlx::AssertSqlSafe;

use super::{
    CURSOR_ROWS_PER_INSERT, EventRow, LOOKUP_BATCH, MAX_REPLAY, Store, StoreError,
    events_from_rows, on_pool, recurring, retention,
};
use crate::routing::{Event, EventId, Partition};

/// The partition key of history rows written before rows named their
/// partition (NULL in `sy_history.part`): they were routed in id order.
const UNPARTITIONED: i64 = -1;

/// How far a user's inbox has been shown, in one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxCursor {
    /// Where partitions without a cursor of their own start: the cursor
    /// kept before cursors were per partition (0 if none, or another epoch).
    base: u64,
    /// Per source partition (or [`UNPARTITIONED`]), the newest id shown.
    parts: BTreeMap<i64, u64>,
}

impl InboxCursor {
    /// What of partition `part` (`None`: an unpartitioned row) has been shown.
    pub fn shown(&self, part: Option<Partition>) -> u64 {
        let key = part.map_or(UNPARTITIONED, |p| i64::from(p.0));
        self.parts.get(&key).copied().unwrap_or(self.base)
    }

    /// This cursor with no partition past `seq`: with `seq` a client's own
    /// cursor, what it has not seen of the inbox lies after it (on the
    /// client's side) or after what no session was shown (on a partition
    /// that lagged while the client was away).
    pub fn capped(&self, seq: u64) -> InboxCursor {
        InboxCursor {
            base: self.base.min(seq),
            parts: self
                .parts
                .iter()
                .map(|(p, s)| (*p, (*s).min(seq)))
                .collect(),
        }
    }

    /// Whether any of `heads` (the newest row of each partition in an
    /// inbox) is newer than what was shown.
    pub fn behind(&self, heads: &[InboxHead]) -> bool {
        heads.iter().any(|h| h.seq > self.shown(h.part))
    }
}

/// The newest row one partition wrote to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxHead {
    /// The partition (`None`: rows written before rows named one).
    pub part: Option<Partition>,
    /// Its newest sequence.
    pub seq: u64,
}

/// Whose cursor a live delivery moves: a user's, for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shown {
    /// The user.
    pub user: String,
    /// The partition that routed it.
    pub part: Partition,
}

fn part_of(column: Option<i32>) -> Option<Partition> {
    column.and_then(|p| u16::try_from(p).ok()).map(Partition)
}

impl Store {
    /// The inbox cursors in `epoch` of those of `users` that have one.
    pub async fn inbox_cursors(
        &self,
        epoch: u64,
        users: Vec<String>,
    ) -> Result<HashMap<String, InboxCursor>, StoreError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let list = self.params().list(1, users.len());
        let legacy_sql =
            format!("SELECT user_id, epoch, seq FROM sy_inbox_cursor WHERE user_id IN ({list})");
        let legacy: Vec<(String, i64, i64)> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(legacy_sql.clone()))
                .persistent(recurring(users.len(), LOOKUP_BATCH));
            for u in &users {
                q = q.bind(u.as_str());
            }
            q.fetch_all(pool).await
        })?;
        let sql = format!(
            "SELECT user_id, part, seq FROM sy_inbox_cursors WHERE epoch = $1 AND user_id IN ({})",
            super::Params::Numbered.list(2, users.len())
        );
        let rows: Vec<(String, i32, i64)> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql.clone()))
                .persistent(recurring(users.len(), LOOKUP_BATCH))
                .bind(epoch as i64);
            for u in &users {
                q = q.bind(u.as_str());
            }
            q.fetch_all(pool).await
        })?;
        let mut cursors: HashMap<String, InboxCursor> = HashMap::new();
        for (user, e, seq) in legacy {
            if e as u64 == epoch {
                cursors.entry(user).or_default().base = seq as u64;
            }
        }
        for (user, part, seq) in rows {
            cursors
                .entry(user)
                .or_default()
                .parts
                .insert(i64::from(part), seq as u64);
        }
        Ok(cursors)
    }

    /// For each of `streams` that has rows in `epoch`, the newest row of
    /// each partition that wrote to it (a connecting session skips the
    /// inbox query when nothing is newer than its cursor).
    pub async fn stream_heads(
        &self,
        epoch: u64,
        streams: Vec<String>,
    ) -> Result<HashMap<String, Vec<InboxHead>>, StoreError> {
        if streams.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT topic, part, MAX(seq) FROM sy_history WHERE epoch = $1 AND topic IN ({}) \
             GROUP BY topic, part",
            super::Params::Numbered.list(2, streams.len())
        );
        let rows: Vec<(String, Option<i32>, i64)> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql.clone()))
                .persistent(recurring(streams.len(), LOOKUP_BATCH))
                .bind(epoch as i64);
            for t in &streams {
                q = q.bind(t.as_str());
            }
            q.fetch_all(pool).await
        })?;
        let mut heads: HashMap<String, Vec<InboxHead>> = HashMap::new();
        for (stream, part, seq) in rows {
            heads.entry(stream).or_default().push(InboxHead {
                part: part_of(part),
                seq: seq as u64,
            });
        }
        Ok(heads)
    }

    /// The events of `user`'s inbox in `epoch` not shown as of `cursor`
    /// (each partition's rows after that partition's cursor), oldest
    /// first, at most [`MAX_REPLAY`]. `cursor` is read before the session
    /// goes live: live deliveries move the stored one past what waited.
    /// What retention removed is gone: the inbox is best kept, not a cursor
    /// the client holds.
    pub async fn undelivered(
        &self,
        epoch: u64,
        user: &str,
        cursor: &InboxCursor,
    ) -> Result<Vec<Event>, StoreError> {
        // The cursor of the row's partition, as `CASE part WHEN … ELSE base`.
        let mut shown = String::new();
        let mut n = 3;
        for _ in &cursor.parts {
            shown.push_str(&format!(" WHEN ${n} THEN ${}", n + 1));
            n += 2;
        }
        let shown = if shown.is_empty() {
            format!("${n}")
        } else {
            format!("CASE COALESCE(h.part, {UNPARTITIONED}){shown} ELSE ${n} END")
        };
        let sql = format!(
            "SELECT e.seq, e.topic, e.name, e.data, e.headers, e.sender FROM sy_events e \
             WHERE e.epoch = $1 AND e.seq IN (SELECT h.seq FROM sy_history h \
             WHERE h.epoch = $1 AND h.topic = $2 AND h.seq > {shown}) \
             ORDER BY e.seq LIMIT ${}",
            n + 1
        );
        let stream = retention::inbox_stream(user);
        let rows: Vec<EventRow> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql.clone()))
                .persistent(cursor.parts.len() <= 1)
                .bind(epoch as i64)
                .bind(stream.as_str());
            for (part, seq) in &cursor.parts {
                q = q.bind(*part).bind(*seq as i64);
            }
            q.bind(cursor.base as i64)
                .bind(MAX_REPLAY as i64)
                .fetch_all(pool)
                .await
        })?;
        Ok(events_from_rows(epoch, rows))
    }

    /// Marks `user`'s inbox shown up to `upto` in every partition: call
    /// with the newest id of a replay that returned each row of the inbox
    /// up to it not shown before, while the session is subscribed (what a
    /// lagging partition writes below `upto` afterwards reaches it live).
    pub async fn mark_shown_upto(&self, user: &str, upto: EventId) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO sy_inbox_cursors (user_id, epoch, part, seq) \
             SELECT $1, epoch, COALESCE(part, {UNPARTITIONED}), MAX(seq) FROM sy_history \
             WHERE topic = $2 AND epoch = $3 AND seq <= $4 GROUP BY epoch, COALESCE(part, {UNPARTITIONED}) \
             ON CONFLICT (user_id, epoch, part) DO UPDATE SET seq = excluded.seq \
             WHERE excluded.seq > sy_inbox_cursors.seq"
        );
        let stream = retention::inbox_stream(user);
        on_pool!(self, |pool| sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(user)
            .bind(stream.as_str())
            .bind(upto.epoch as i64)
            .bind(upto.seq as i64)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Moves users' per-partition cursors forward (never back) to events
    /// their live sessions were shown.
    pub async fn mark_delivered(&self, shown: &[(Shown, EventId)]) -> Result<(), StoreError> {
        for chunk in shown.chunks(CURSOR_ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO sy_inbox_cursors (user_id, epoch, part, seq) VALUES {} \
                 ON CONFLICT (user_id, epoch, part) DO UPDATE SET seq = excluded.seq \
                 WHERE excluded.seq > sy_inbox_cursors.seq",
                self.params().rows(chunk.len(), 4)
            );
            on_pool!(self, |pool| {
                let mut q = sqlx::query(AssertSqlSafe(sql.clone()))
                    .persistent(recurring(chunk.len(), CURSOR_ROWS_PER_INSERT));
                for (s, id) in chunk {
                    q = q
                        .bind(s.user.as_str())
                        .bind(id.epoch as i64)
                        .bind(i64::from(s.part.0))
                        .bind(id.seq as i64);
                }
                q.execute(pool).await.map(|_| ())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(base: u64, parts: &[(i64, u64)]) -> InboxCursor {
        InboxCursor {
            base,
            parts: parts.iter().copied().collect(),
        }
    }

    #[test]
    fn each_partition_is_shown_from_its_own_cursor_or_the_base() {
        let c = cursor(5, &[(3, 40), (UNPARTITIONED, 7)]);
        assert_eq!(c.shown(Some(Partition(3))), 40);
        assert_eq!(c.shown(Some(Partition(9))), 5, "no cursor: the base");
        assert_eq!(c.shown(None), 7);
    }

    #[test]
    fn a_capped_cursor_shows_nothing_past_the_cap() {
        let c = cursor(50, &[(3, 40), (9, 120)]).capped(100);
        assert_eq!(c.shown(Some(Partition(3))), 40, "below the cap: kept");
        assert_eq!(c.shown(Some(Partition(9))), 100, "past it: the cap");
        assert_eq!(c.shown(Some(Partition(5))), 50, "the base, below the cap");
        assert_eq!(cursor(150, &[]).capped(100).shown(None), 100);
    }

    #[test]
    fn a_lagging_partition_below_another_ones_cursor_is_still_behind() {
        // Partition 3 showed 40; partition 9 wrote 12 since: it waits.
        let c = cursor(0, &[(3, 40)]);
        let heads = |p: u16, seq| InboxHead {
            part: Some(Partition(p)),
            seq,
        };
        assert!(c.behind(&[heads(3, 40), heads(9, 12)]));
        assert!(!c.behind(&[heads(3, 40)]), "all shown");
        assert!(!InboxCursor::default().behind(&[]));
    }
}
