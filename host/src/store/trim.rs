//! Retention applied to the store: which rows each stream is over by
//! (by age, by count) and their removal, with the bodies no stream holds
//! any more. It runs beside the history writer, not in its way: a trim
//! of a hot topic removes thousands of rows.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::gate::WriteGate;
use super::{LOOKUP_BATCH, Params, Store, StoreError, on_pool, recurring, retention};

impl Store {
    /// Applies `policy`: none older than `max_age_s`, and at most
    /// `max_events` in each of the streams `due` (those that may be over:
    /// see [`retention::Headroom`]); records what was removed so that older
    /// cursors reset.
    pub async fn trim(
        &self,
        policy: &retention::Policy,
        due: &retention::Due,
        now_ms: u64,
    ) -> Result<Trimmed, StoreError> {
        self.trim_in_turn(policy, due, now_ms, &WriteGate::default())
            .await
    }

    /// [`Store::trim`], each cut in its turn at `gate`.
    pub async fn trim_in_turn(
        &self,
        policy: &retention::Policy,
        due: &retention::Due,
        now_ms: u64,
        gate: &WriteGate,
    ) -> Result<Trimmed, StoreError> {
        let cutoff = |age_s: u64| now_ms.saturating_sub(age_s.saturating_mul(1000)) as i64;
        let mut cut: HashMap<(String, i64), i64> = HashMap::new();
        let mut trimmed = Trimmed::default();
        // By age: the streams holding a row older than the shortest age
        // any stream keeps, then each against its own age.
        let candidates: Vec<(String,)> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT DISTINCT topic FROM sy_history WHERE created_ms < $1")
                .bind(cutoff(policy.shortest_age_s()))
                .fetch_all(pool)
                .await
        })?;
        for (stream,) in candidates {
            let old: Vec<(i64, i64)> = on_pool!(self, |pool| {
                sqlx::query_as(
                    "SELECT epoch, MAX(seq) FROM sy_history WHERE topic = $1 AND created_ms < $2 \
                     GROUP BY epoch",
                )
                .bind(stream.as_str())
                .bind(cutoff(policy.of(&stream).max_age_s))
                .fetch_all(pool)
                .await
            })?;
            for (epoch, seq) in old {
                cut.insert((stream.clone(), epoch), seq);
            }
        }
        // By count: how many rows each stream never counted holds (a query
        // per batch of streams); for those over their cap, and those known
        // to be, the newest row past it.
        let params = self.params();
        let mut over: Vec<&String> = due.over.iter().collect();
        for chunk in due.count.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "SELECT topic, COUNT(*) FROM sy_history WHERE topic IN ({}) GROUP BY topic",
                params.list(1, chunk.len())
            );
            let held: HashMap<String, i64> = on_pool!(self, |pool| {
                let mut q = sqlx::query_as(AssertSqlSafe(sql.clone()))
                    .persistent(recurring(chunk.len(), LOOKUP_BATCH));
                for stream in chunk {
                    q = q.bind(stream.as_str());
                }
                q.fetch_all(pool).await
            })?
            .into_iter()
            .collect();
            for stream in chunk {
                let max = policy.of(stream).max_events;
                let n = held.get(stream).map_or(0, |n| (*n).max(0) as u64);
                if n <= max {
                    trimmed.room.push((stream.clone(), max - n));
                } else {
                    over.push(stream);
                }
            }
        }
        for stream in over {
            let past: Option<(i64, i64)> = on_pool!(self, |pool| {
                sqlx::query_as(
                    "SELECT epoch, seq FROM sy_history WHERE topic = $1 \
                     ORDER BY epoch DESC, seq DESC LIMIT 1 OFFSET $2",
                )
                .bind(stream.as_str())
                .bind(policy.of(stream).max_events as i64)
                .fetch_optional(pool)
                .await
            })?;
            if let Some((epoch, seq)) = past {
                // Rows of older epochs are older still: they go too (else
                // the stream would stay over its cap until they age out).
                let older: Vec<(i64, i64)> = on_pool!(self, |pool| {
                    sqlx::query_as(
                        "SELECT epoch, MAX(seq) FROM sy_history WHERE topic = $1 AND epoch < $2 \
                         GROUP BY epoch",
                    )
                    .bind(stream.as_str())
                    .bind(epoch)
                    .fetch_all(pool)
                    .await
                })?;
                for (epoch, seq) in older.into_iter().chain([(epoch, seq)]) {
                    let e = cut.entry((stream.clone(), epoch)).or_insert(seq);
                    *e = (*e).max(seq);
                }
            }
            trimmed.room.push((stream.clone(), 0));
        }
        for ((topic, epoch), upto) in &cut {
            let _turn = gate.turn().await;
            trimmed.removed += self.cut(topic, *epoch, *upto).await?;
        }
        Ok(trimmed)
    }

    /// Removes the rows of `topic` in `epoch` up to `upto`, records the cut
    /// (older cursors reset) and deletes the bodies of those events no
    /// stream holds any more, in one transaction (an error between them
    /// would leave bodies nothing removes); returns the rows removed.
    async fn cut(&self, topic: &str, epoch: i64, upto: i64) -> Result<u64, StoreError> {
        let removed = on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let seqs: Vec<i64> = sqlx::query_scalar(
                "DELETE FROM sy_history WHERE topic = $1 AND epoch = $2 AND seq <= $3 RETURNING seq",
            )
            .bind(topic)
            .bind(epoch)
            .bind(upto)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO sy_trimmed (topic, epoch, upto) VALUES ($1, $2, $3) \
                 ON CONFLICT (topic, epoch) DO UPDATE SET upto = \
                 CASE WHEN excluded.upto > sy_trimmed.upto THEN excluded.upto ELSE sy_trimmed.upto END",
            )
            .bind(topic)
            .bind(epoch)
            .bind(upto)
            .execute(&mut *tx)
            .await?;
            Unheld::delete(&mut *tx, epoch, &seqs).await?;
            tx.commit().await?;
            seqs.len()
        });
        Ok(removed as u64)
    }
}

const UNHELD: &str = "NOT EXISTS (SELECT 1 FROM sy_history h \
     WHERE h.epoch = sy_events.epoch AND h.seq = sy_events.seq)";

/// Deleting the bodies of events of `epoch` among `seqs` that no history
/// row holds, on one database's connection.
trait Unheld {
    async fn delete(&mut self, epoch: i64, seqs: &[i64]) -> Result<(), sqlx::Error>;
}

impl Unheld for sqlx::PgConnection {
    /// One statement for the whole cut: one anti-join against history,
    /// where a statement per batch of bodies scanned it (and its dead
    /// rows) again each time.
    async fn delete(&mut self, epoch: i64, seqs: &[i64]) -> Result<(), sqlx::Error> {
        let sql = format!("DELETE FROM sy_events WHERE epoch = $1 AND seq = ANY($2) AND {UNHELD}");
        sqlx::query(AssertSqlSafe(sql))
            .bind(epoch)
            .bind(seqs)
            .execute(self)
            .await
            .map(drop)
    }
}

impl Unheld for sqlx::SqliteConnection {
    /// SQLite has no arrays: batches of bound keys, each looked up by index.
    async fn delete(&mut self, epoch: i64, seqs: &[i64]) -> Result<(), sqlx::Error> {
        for chunk in seqs.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "DELETE FROM sy_events WHERE epoch = {} AND seq IN ({}) AND {UNHELD}",
                Params::Anonymous.list(1, 1),
                Params::Anonymous.list(2, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(recurring(chunk.len(), LOOKUP_BATCH))
                .bind(epoch);
            for seq in chunk {
                q = q.bind(*seq);
            }
            q.execute(&mut *self).await?;
        }
        Ok(())
    }
}

/// What [`Store::trim`] did.
#[derive(Debug, Default)]
pub struct Trimmed {
    /// History rows removed.
    pub removed: u64,
    /// Of the streams counted, how many more rows each takes before its cap.
    pub room: Vec<(String, u64)>,
}
