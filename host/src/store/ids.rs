//! What keeps the local bus's ids unique across crashes, and its
//! idempotency keys across restarts: reserved id blocks and recent keys.

use std::sync::Arc;

use super::{Store, StoreError, on_pool};
use crate::routing::EventId;

impl Store {
    /// Where the local bus resumes: the newest epoch written or reserved,
    /// with the highest sequence of it that may have been handed out.
    pub async fn latest_epoch(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let row: Option<(i64, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT epoch, MAX(upto) FROM (SELECT epoch, upto FROM sy_watermark \
             UNION ALL SELECT epoch, upto FROM sy_id_blocks) AS t \
             GROUP BY epoch ORDER BY epoch DESC LIMIT 1"
        )
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(e, u)| (e as u64, u as u64)))
    }

    /// Reserves the ids of `epoch` up to `upto` (never moving back): once
    /// this returns, none of them is given out again after a crash.
    pub async fn reserve_ids(&self, epoch: u64, upto: u64) -> Result<(), StoreError> {
        self.raise(
            "INSERT INTO sy_id_blocks (epoch, upto) VALUES ($1, $2) ON CONFLICT (epoch) DO UPDATE \
             SET upto = CASE WHEN excluded.upto > sy_id_blocks.upto THEN excluded.upto \
             ELSE sy_id_blocks.upto END",
            epoch,
            upto,
        )
        .await
    }

    /// Marks every sequence of `epoch` up to `upto` as handled: those of a
    /// reserved block a crash left unused will never come.
    pub async fn skip_to(&self, epoch: u64, upto: u64) -> Result<(), StoreError> {
        self.raise(
            "INSERT INTO sy_watermark (epoch, upto) VALUES ($1, $2) ON CONFLICT (epoch) DO UPDATE \
             SET upto = CASE WHEN excluded.upto > sy_watermark.upto THEN excluded.upto \
             ELSE sy_watermark.upto END",
            epoch,
            upto,
        )
        .await
    }

    /// Runs an upsert of `(epoch, upto)`.
    async fn raise(&self, sql: &'static str, epoch: u64, upto: u64) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query(sql)
            .bind(epoch as i64)
            .bind(upto as i64)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The newest `limit` idempotency keys written at or after `since_ms`,
    /// oldest first, with their events' ids and when they were written.
    pub async fn recent_keys(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Arc<str>, EventId, u64)>, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT key, epoch, seq, created_ms FROM sy_idempotency WHERE created_ms >= $1 \
             ORDER BY created_ms DESC LIMIT $2"
        )
        .bind(since_ms as i64)
        .bind(limit as i64)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|(key, epoch, seq, at)| {
                let id = EventId {
                    epoch: epoch as u64,
                    seq: seq as u64,
                };
                (Arc::from(key), id, at as u64)
            })
            .collect())
    }

    /// Forgets the idempotency keys written before `before_ms`.
    pub async fn trim_keys(&self, before_ms: u64) -> Result<u64, StoreError> {
        let done = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM sy_idempotency WHERE created_ms < $1"
        )
        .bind(before_ms as i64)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }
}
