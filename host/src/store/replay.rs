//! Replays from a client's cursor: the events of some streams (topics,
//! an inbox) it does not have, per source partition.

use sqlx::AssertSqlSafe;

use super::{EventRow, MAX_REPLAY, Params, Replay, Store, StoreError, events_from_rows, on_pool};
use crate::routing::{Cursor, Event, EventId};

/// A stream to replay, and the lowest floor of the cursor that applies to
/// it: retention having cut it above that floor means something owed is
/// gone.
#[derive(Debug, Clone)]
pub struct ReplayStream {
    /// The stream's name.
    pub name: String,
    /// Events of it at or below this may have been cut without loss.
    pub floor: u64,
}

impl Store {
    /// The events of `streams` (topics, inboxes) after `since`, in order,
    /// or [`Replay::Reset`] when `since` is from another epoch than
    /// `current`, older than what retention kept, or more than
    /// [`MAX_REPLAY`] behind.
    pub async fn replay(
        &self,
        current_epoch: u64,
        since: EventId,
        streams: &[String],
    ) -> Result<Replay, StoreError> {
        let streams: Vec<ReplayStream> = streams
            .iter()
            .map(|name| ReplayStream {
                name: name.clone(),
                floor: since.seq,
            })
            .collect();
        self.replay_from(current_epoch, &Cursor::at(since), &streams)
            .await
    }

    /// The events of `streams` a client at `cursor` does not have (of each
    /// partition the cursor names, those above its floor; of any other,
    /// those after its newest id), in order, each once; or
    /// [`Replay::Reset`] as for [`Store::replay`].
    pub async fn replay_from(
        &self,
        current_epoch: u64,
        cursor: &Cursor,
        streams: &[ReplayStream],
    ) -> Result<Replay, StoreError> {
        if cursor.at.epoch != current_epoch {
            return Ok(Replay::Reset);
        }
        if streams.is_empty() {
            return Ok(Replay::Events(Vec::new()));
        }
        let names: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
        let trimmed = self.trimmed(current_epoch, &names).await?;
        if streams
            .iter()
            .any(|s| trimmed.get(&s.name).is_some_and(|upto| *upto > s.floor))
        {
            return Ok(Replay::Reset);
        }
        let events = self.events_after(cursor, &names, MAX_REPLAY + 1).await?;
        if events.len() > MAX_REPLAY {
            return Ok(Replay::Reset);
        }
        Ok(Replay::Events(events))
    }

    /// Up to `limit` events of `streams` a client at `cursor` lacks, in
    /// order, each once.
    async fn events_after(
        &self,
        cursor: &Cursor,
        streams: &[String],
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let epoch = cursor.at.epoch;
        let floors = cursor.floors();
        let mut n = streams.len() + 2;
        // The floor of the row's partition, as `CASE part WHEN … ELSE newest`.
        let mut owed = String::new();
        for _ in floors {
            owed.push_str(&format!(" WHEN ${n} THEN ${}", n + 1));
            n += 2;
        }
        let above = if owed.is_empty() {
            format!("h.seq > ${n}")
        } else {
            // The first bound lets the index on (topic, epoch, seq) narrow the scan.
            format!(
                "h.seq > ${} AND h.seq > CASE h.part{owed} ELSE ${n} END",
                n + 1
            )
        };
        let limit_param = if owed.is_empty() { n + 1 } else { n + 2 };
        // DISTINCT: an event in two of the streams comes back once.
        let sql = format!(
            "SELECT e.seq, e.topic, e.name, e.data, e.headers, e.sender FROM sy_events e \
             WHERE e.epoch = $1 AND e.seq IN (SELECT DISTINCT h.seq FROM sy_history h \
             WHERE h.epoch = $1 AND h.topic IN ({}) AND {above}) \
             ORDER BY e.seq LIMIT ${limit_param}",
            Params::Numbered.list(2, streams.len()),
        );
        let rows: Vec<EventRow> = on_pool!(self, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql.clone())).bind(epoch as i64);
            for t in streams {
                q = q.bind(t.as_str());
            }
            for (p, floor) in floors {
                q = q.bind(i32::from(p.0)).bind(*floor as i64);
            }
            q = q.bind(cursor.at.seq as i64);
            if !floors.is_empty() {
                q = q.bind(cursor.lowest() as i64);
            }
            q.bind(limit as i64).fetch_all(pool).await
        })?;
        Ok(events_from_rows(epoch, rows))
    }
}
