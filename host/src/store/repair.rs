//! The query behind a gap repair on the bus: the events of a set of
//! streams after a position (or written since a time), each with the
//! streams of that set it belongs to, so that one query serves every
//! subject of a node that one partition feeds.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::{LOOKUP_BATCH, Params, Store, StoreError, on_pool};
use crate::routing::{Event, EventId, Partition};

/// Where a repair starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// After this event.
    After(EventId),
    /// After the first event, up to and including the second (same epoch):
    /// a gap whose end is known; what follows it arrives live.
    Between(EventId, EventId),
    /// Events of this epoch written at or after this time (ms): after a
    /// link loss, when a subject's position may not be known.
    Since {
        /// The epoch.
        epoch: u64,
        /// The time.
        ms: u64,
    },
}

/// An event a repair found, with the streams of the asked set it is in.
#[derive(Debug)]
pub struct Found {
    /// The event.
    pub event: Event,
    /// Its id.
    pub id: EventId,
    /// The asked streams it belongs to.
    pub streams: Vec<String>,
}

impl Store {
    /// The events of `streams` from `from` (routed by `part`, if given),
    /// oldest first (rows of one event merged), or `None` if there are
    /// `limit` or more. Streams are asked [`LOOKUP_BATCH`] at a time.
    pub async fn repair(
        &self,
        from: From,
        part: Option<Partition>,
        streams: &[String],
        limit: usize,
    ) -> Result<Option<Vec<Found>>, StoreError> {
        let mut all: Vec<Found> = Vec::new();
        for chunk in streams.chunks(LOOKUP_BATCH) {
            match self.repair_chunk(from, part, chunk, limit).await? {
                Some(found) => all.extend(found),
                None => return Ok(None),
            }
        }
        if streams.len() > LOOKUP_BATCH {
            // Chunks each come in order; one event may be in several.
            all.sort_by_key(|f| f.id);
            let mut merged: Vec<Found> = Vec::with_capacity(all.len());
            for f in all {
                match merged.last_mut() {
                    Some(last) if last.id == f.id => last.streams.extend(f.streams),
                    _ => merged.push(f),
                }
            }
            all = merged;
        }
        Ok((all.len() < limit).then_some(all))
    }

    async fn repair_chunk(
        &self,
        from: From,
        part: Option<Partition>,
        streams: &[String],
        limit: usize,
    ) -> Result<Option<Vec<Found>>, StoreError> {
        if streams.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // Rows, not events: an event in k of the streams is k rows.
        let cap = limit.saturating_mul(4);
        let (epoch, bound, column, upto) = match from {
            From::After(id) => (id.epoch, id.seq, "h.seq >", None),
            From::Between(a, b) => (a.epoch, a.seq, "h.seq >", Some(b.seq)),
            From::Since { epoch, ms } => (epoch, ms, "h.created_ms >=", None),
        };
        let list = Params::Numbered.list(2, streams.len());
        let n = streams.len();
        // Placeholders numbered in the order they appear (SQLite binds
        // `$n` by first appearance).
        let mut next = n + 3;
        let mut and = String::new();
        if upto.is_some() {
            and.push_str(&format!(" AND h.seq <= ${next}"));
            next += 1;
        }
        if part.is_some() {
            and.push_str(&format!(" AND h.part = ${next}"));
            next += 1;
        }
        let sql = format!(
            "SELECT h.topic, e.seq, e.topic, e.name, e.data, e.headers, e.sender \
             FROM sy_history h JOIN sy_events e ON e.epoch = h.epoch AND e.seq = h.seq \
             WHERE h.epoch = $1 AND h.topic IN ({list}) AND {column} ${}{and} \
             ORDER BY e.seq LIMIT ${next}",
            n + 2,
        );
        type Row = (String, i64, String, String, Vec<u8>, String, Option<String>);
        let rows: Vec<Row> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql.clone())).bind(epoch as i64);
            for s in streams {
                q = q.bind(s.as_str());
            }
            q = q.bind(bound as i64);
            if let Some(u) = upto {
                q = q.bind(u as i64);
            }
            if let Some(p) = part {
                q = q.bind(i64::from(p.0));
            }
            q.bind(cap as i64).fetch_all(pool).await
        })?;
        if rows.len() >= cap {
            return Ok(None);
        }
        let mut found: Vec<Found> = Vec::new();
        for (stream, seq, topic, name, data, headers, sender) in rows {
            let id = EventId {
                epoch,
                seq: seq as u64,
            };
            if let Some(last) = found.last_mut()
                && last.id == id
            {
                last.streams.push(stream);
                continue;
            }
            if found.len() == limit {
                return Ok(None);
            }
            let Some(event) = super::event_from_row(id, &topic, name, data, &headers, sender)
            else {
                continue;
            };
            found.push(Found {
                event,
                id,
                streams: vec![stream],
            });
        }
        Ok(Some(found))
    }

    /// For those of `streams` that retention trimmed in `epoch`, the newest
    /// sequence removed: a gap reaching back before it cannot be repaired.
    pub async fn trimmed(
        &self,
        epoch: u64,
        streams: &[String],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut trimmed = HashMap::new();
        for chunk in streams.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "SELECT topic, MAX(upto) FROM sy_trimmed WHERE epoch = $1 AND topic IN ({}) GROUP BY topic",
                Params::Numbered.list(2, chunk.len())
            );
            let rows: Vec<(String, i64)> = on_pool!(self, |pool| {
                let mut q = sqlx::query_as(AssertSqlSafe(sql.clone())).bind(epoch as i64);
                for s in chunk {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(pool).await
            })?;
            trimmed.extend(rows.into_iter().map(|(s, u)| (s, u as u64)));
        }
        Ok(trimmed)
    }
}
