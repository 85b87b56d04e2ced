//! Writing routed events: their bodies (`sy_events`), a row per stream
//! that holds each (`sy_history`) and the watermark, atomically.
//!
//! Two costs shape it (profile of scenario (b), SQLite's worker thread):
//! preparing a multi-row INSERT of a row count seen for the first time
//! (a batch's size varies from one to the next), and each statement's round
//! trip through sqlx's SQLite worker thread. So an INSERT is padded to one
//! of a few row counts by repeating its last row (a repeat is a conflict the
//! statement skips), which keeps few distinct statements, each prepared
//! once per connection; on SQLite the statements of a batch go in one
//! multi-statement query (one round trip between BEGIN and COMMIT), on
//! PostgreSQL a small batch is one statement (one round trip, no
//! transaction needed; see [`plan`]).

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::{Params, Store, StoreError, on_pool, retention};
use crate::routing::{Event, EventId, Routed};

/// Rows per multi-row INSERT (8 and 5 parameters a row; both databases
/// take far more parameters than this per statement).
const EVENT_ROWS_PER_INSERT: usize = 256;
const HISTORY_ROWS_PER_INSERT: usize = 512;
const KEY_ROWS_PER_INSERT: usize = 256;

/// The row counts above 8 a generated INSERT is padded to: steps of at
/// most 1.5×, so a statement binds at most half again its rows.
const PADDED_SIZES: [usize; 12] = [12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512];

/// The rows an INSERT of `n` rows (at most `max`) is written with: `n`
/// up to 8, else the next of [`PADDED_SIZES`], never more than `max`.
pub(crate) fn padded(n: usize, max: usize) -> usize {
    if n <= 8 {
        return n;
    }
    PADDED_SIZES
        .iter()
        .copied()
        .find(|&s| s >= n)
        .unwrap_or(n)
        .min(max)
        .max(n)
}

/// `rows`, then its last row again until there are `padded(len, max)`.
fn padded_rows<T>(rows: &[T], max: usize) -> impl Iterator<Item = &T> {
    let pad = padded(rows.len(), max) - rows.len();
    rows.iter().chain(
        rows.last()
            .into_iter()
            .flat_map(move |l| std::iter::repeat_n(l, pad)),
    )
}

/// One event body to write.
struct Body<'a> {
    id: EventId,
    event: &'a Event,
    topic: Arc<str>,
    name: Arc<str>,
    headers: Arc<str>,
    sender: Option<Arc<str>>,
}

/// One statement of a write.
enum Piece<'a> {
    Bodies(&'a [Body<'a>]),
    Streams(&'a [(Arc<str>, EventId, u16)]),
    Keys(&'a [(Arc<str>, EventId)]),
    Watermark,
}

impl Piece<'_> {
    /// The rows it is written with.
    fn rows(&self) -> usize {
        match self {
            Piece::Bodies(rows) => padded(rows.len(), EVENT_ROWS_PER_INSERT),
            Piece::Streams(rows) => padded(rows.len(), HISTORY_ROWS_PER_INSERT),
            Piece::Keys(rows) => padded(rows.len(), KEY_ROWS_PER_INSERT),
            Piece::Watermark => 1,
        }
    }

    /// The parameters it binds.
    fn width(&self) -> usize {
        self.rows()
            * match self {
                Piece::Bodies(_) => 8,
                Piece::Streams(_) => 5,
                Piece::Keys(_) => 4,
                Piece::Watermark => 2,
            }
    }

    /// Its statement, numbered parameters from `first`.
    fn sql(&self, params: Params, first: usize) -> String {
        let values = |width| params.rows_from(first, self.rows(), width);
        match self {
            Piece::Bodies(_) => format!(
                "INSERT INTO sy_events (epoch, seq, topic, name, data, headers, sender, created_ms) \
                 VALUES {} ON CONFLICT (epoch, seq) DO NOTHING",
                values(8)
            ),
            Piece::Streams(_) => format!(
                "INSERT INTO sy_history (topic, epoch, seq, created_ms, part) VALUES {} \
                 ON CONFLICT (topic, epoch, seq) DO NOTHING",
                values(5)
            ),
            Piece::Keys(_) => format!(
                "INSERT INTO sy_idempotency (key, epoch, seq, created_ms) VALUES {} \
                 ON CONFLICT (key) DO NOTHING",
                values(4)
            ),
            Piece::Watermark => format!(
                "INSERT INTO sy_watermark (epoch, upto) VALUES {} ON CONFLICT (epoch) DO UPDATE SET upto = \
                 CASE WHEN excluded.upto > sy_watermark.upto THEN excluded.upto ELSE sy_watermark.upto END",
                values(2)
            ),
        }
    }
}

/// The most parameters a PostgreSQL write puts in one statement. A small
/// batch's cost is its round trips (five as separate statements); a large
/// one's is its rows, which PostgreSQL inserts faster as separate statements
/// than as `WITH` clauses of one (`--bench history`, batches of 1,024
/// events: 43k events/s as one statement, 51–53k as separate ones).
const PG_PARAMS_PER_STATEMENT: usize = 4096;

/// How a write runs: its queries, each with the pieces it binds.
struct Plan<'a> {
    queries: Vec<(String, Vec<Piece<'a>>)>,
    params: Params,
}

impl Plan<'_> {
    /// Whether the write is a single statement, atomic alone (no
    /// transaction, so no BEGIN and COMMIT round trips). A PostgreSQL query
    /// is one statement; a SQLite one holds a statement per piece.
    fn atomic(&self) -> bool {
        match self.queries.as_slice() {
            [(_, pieces)] => self.params == Params::Numbered || pieces.len() == 1,
            _ => false,
        }
    }
}

/// SQLite: one multi-statement query (its statements take their anonymous
/// parameters in order) in a transaction. PostgreSQL: one statement whose
/// INSERTs are data-modifying `WITH` clauses, one round trip; a larger
/// write (see [`PG_PARAMS_PER_STATEMENT`]) runs a statement per piece in a
/// transaction.
fn plan(pieces: Vec<Piece<'_>>, params: Params) -> Plan<'_> {
    match params {
        Params::Anonymous => {
            let sql = pieces
                .iter()
                .map(|p| p.sql(params, 1))
                .collect::<Vec<_>>()
                .join(";\n");
            Plan {
                queries: vec![(sql, pieces)],
                params,
            }
        }
        Params::Numbered
            if pieces.iter().map(Piece::width).sum::<usize>() <= PG_PARAMS_PER_STATEMENT =>
        {
            let mut first = 1;
            let mut parts: Vec<String> = pieces
                .iter()
                .map(|p| {
                    let sql = p.sql(params, first);
                    first += p.width();
                    sql
                })
                .collect();
            let last = parts.pop().unwrap_or_default();
            let sql = if parts.is_empty() {
                last
            } else {
                let with: Vec<String> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("w{i} AS ({s})"))
                    .collect();
                format!("WITH {} {last}", with.join(", "))
            };
            Plan {
                queries: vec![(sql, pieces)],
                params,
            }
        }
        Params::Numbered => Plan {
            queries: pieces
                .into_iter()
                .map(|p| (p.sql(params, 1), vec![p]))
                .collect(),
            params,
        },
    }
}

impl Store {
    /// Writes routed events and the idempotency keys of those published
    /// with one, and moves the watermark of `epoch` to `upto` (never back),
    /// atomically (one transaction, or one statement). Returns the stream
    /// of every history row written.
    pub async fn write(
        &self,
        events: &[Routed],
        keys: &[(Arc<str>, EventId)],
        epoch: u64,
        upto: u64,
        now_ms: u64,
        policy: &retention::Policy,
    ) -> Result<Vec<Arc<str>>, StoreError> {
        let mut shared = SharedStrings::default();
        let mut bodies: Vec<Body> = Vec::with_capacity(events.len());
        let mut routes: Vec<(Arc<str>, EventId, u16)> = Vec::with_capacity(events.len());
        for r in events {
            let id = r.event.id;
            let joined = routes.len();
            for stream in policy.streams_of(r) {
                let stream = match stream {
                    std::borrow::Cow::Borrowed(s) => shared.get(s),
                    std::borrow::Cow::Owned(s) => Arc::from(s),
                };
                routes.push((stream, id, r.origin.partition.0));
            }
            // An event that joins no stream needs no body either.
            if routes.len() == joined {
                continue;
            }
            let headers = if r.event.headers.is_empty() {
                shared.get("[]")
            } else {
                Arc::from(serde_json::to_string(&r.event.headers).unwrap_or_else(|_| "[]".into()))
            };
            bodies.push(Body {
                id,
                event: &r.event,
                topic: shared.get(r.event.topic.as_str()),
                name: shared.get(&r.event.name),
                headers,
                sender: r.event.sender.as_deref().map(|s| shared.get(s)),
            });
        }
        let params = self.params();
        let pieces: Vec<Piece> = bodies
            .chunks(EVENT_ROWS_PER_INSERT)
            .map(Piece::Bodies)
            .chain(routes.chunks(HISTORY_ROWS_PER_INSERT).map(Piece::Streams))
            .chain(keys.chunks(KEY_ROWS_PER_INSERT).map(Piece::Keys))
            .chain(std::iter::once(Piece::Watermark))
            .collect();
        let plan = plan(pieces, params);
        let atomic = plan.atomic();
        on_pool!(self, |pool| {
            // Every statement here recurs: padded row counts.
            let queries = plan.queries.iter().map(|(sql, pieces)| {
                let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).persistent(true);
                for piece in pieces {
                    match piece {
                        Piece::Bodies(rows) => {
                            for r in padded_rows(rows, EVENT_ROWS_PER_INSERT) {
                                q = q
                                    .bind(r.id.epoch as i64)
                                    .bind(r.id.seq as i64)
                                    .bind(r.topic.clone())
                                    .bind(r.name.clone())
                                    .bind(r.event.data.as_slice())
                                    .bind(r.headers.clone())
                                    .bind(r.sender.clone())
                                    .bind(now_ms as i64);
                            }
                        }
                        Piece::Streams(rows) => {
                            for (stream, id, part) in padded_rows(rows, HISTORY_ROWS_PER_INSERT) {
                                q = q
                                    .bind(stream.clone())
                                    .bind(id.epoch as i64)
                                    .bind(id.seq as i64)
                                    .bind(now_ms as i64)
                                    .bind(i64::from(*part));
                            }
                        }
                        Piece::Keys(rows) => {
                            for (key, id) in padded_rows(rows, KEY_ROWS_PER_INSERT) {
                                q = q
                                    .bind(key.clone())
                                    .bind(id.epoch as i64)
                                    .bind(id.seq as i64)
                                    .bind(now_ms as i64);
                            }
                        }
                        Piece::Watermark => q = q.bind(epoch as i64).bind(upto as i64),
                    }
                }
                q
            });
            if atomic {
                for q in queries {
                    q.execute(pool).await?;
                }
            } else {
                let mut tx = pool.begin().await?;
                for q in queries {
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        });
        Ok(routes.into_iter().map(|(stream, _, _)| stream).collect())
    }
}

/// One `Arc<str>` per distinct string of a batch: sqlx's SQLite binding
/// copies a `&str` into a new `Arc<String>` (two allocations per value),
/// and binds an `Arc<str>` as it is.
#[derive(Default)]
struct SharedStrings<'a>(HashMap<&'a str, Arc<str>>);

impl<'a> SharedStrings<'a> {
    fn get(&mut self, s: &'a str) -> Arc<str> {
        self.0.entry(s).or_insert_with(|| Arc::from(s)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_are_padded_to_few_sizes_within_the_cap() {
        for n in 0..=8 {
            assert_eq!(padded(n, 256), n);
        }
        assert_eq!(padded(9, 256), 12);
        assert_eq!(padded(12, 256), 12);
        assert_eq!(padded(13, 256), 16);
        assert_eq!(padded(100, 256), 128);
        assert_eq!(padded(200, 256), 256);
        assert_eq!(padded(256, 256), 256);
        assert_eq!(padded(300, 512), 384);
        // A cap between sizes is a size of its own.
        assert_eq!(padded(90, 80), 90);
        assert_eq!(padded(70, 80), 80);
        let sizes: std::collections::BTreeSet<usize> = (1..=512).map(|n| padded(n, 512)).collect();
        assert_eq!(sizes.len(), 8 + PADDED_SIZES.len());
        for n in 9..=512 {
            let p = padded(n, 512);
            assert!(p >= n && p * 2 <= n * 3, "{n} padded to {p}");
        }
    }

    #[test]
    fn padding_repeats_the_last_row() {
        let rows: Vec<u32> = (1..=10).collect();
        let out: Vec<u32> = padded_rows(&rows, 256).copied().collect();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10]);
        let none: Vec<u32> = Vec::new();
        assert_eq!(padded_rows(&none, 256).count(), 0);
    }

    #[test]
    fn a_batch_is_one_query_on_sqlite_and_one_statement_on_postgres() {
        let ids = [(Arc::<str>::from("a"), EventId { epoch: 1, seq: 1 }, 0)];
        let pieces = || vec![Piece::Streams(&ids), Piece::Watermark];
        let sqlite = plan(pieces(), Params::Anonymous);
        assert!(!sqlite.atomic());
        assert_eq!(sqlite.queries.len(), 1);
        let (sql, parts) = &sqlite.queries[0];
        assert_eq!(parts.len(), 2);
        assert!(sql.starts_with(
            "INSERT INTO sy_history (topic, epoch, seq, created_ms, part) VALUES (?, ?, ?, ?, ?) ON CONFLICT"
        ));
        assert!(sql.contains(";\nINSERT INTO sy_watermark (epoch, upto) VALUES (?, ?)"));
        // A write of one statement needs no transaction on SQLite either.
        assert!(plan(vec![Piece::Watermark], Params::Anonymous).atomic());
        let pg = plan(pieces(), Params::Numbered);
        assert!(pg.atomic());
        assert_eq!(pg.queries.len(), 1);
        let (sql, parts) = &pg.queries[0];
        assert_eq!(parts.len(), 2);
        assert!(sql.starts_with(
            "WITH w0 AS (INSERT INTO sy_history (topic, epoch, seq, created_ms, part) VALUES ($1, $2, $3, $4, $5) ON CONFLICT"
        ));
        assert!(sql.contains(") INSERT INTO sy_watermark (epoch, upto) VALUES ($6, $7)"));
    }

    #[test]
    fn a_large_postgres_write_runs_a_statement_per_piece_in_a_transaction() {
        let ids: Vec<(Arc<str>, EventId, u16)> = (1..=2_000)
            .map(|seq| (Arc::<str>::from("a"), EventId { epoch: 1, seq }, 0))
            .collect();
        let pieces: Vec<Piece> = ids
            .chunks(HISTORY_ROWS_PER_INSERT)
            .map(Piece::Streams)
            .chain(std::iter::once(Piece::Watermark))
            .collect();
        let n = pieces.len();
        let pg = plan(pieces, Params::Numbered);
        assert!(!pg.atomic());
        assert_eq!(pg.queries.len(), n);
        assert!(
            pg.queries
                .iter()
                .all(|(sql, parts)| parts.len() == 1 && sql.contains("($1, "))
        );
    }
}
