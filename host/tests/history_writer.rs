//! The history writer applies retention beside its writes: a stream is
//! trimmed each time it goes over its cap, and a trim that waits in the
//! database holds no barrier (what ingest acknowledgements and replays
//! wait for).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Connection;
use support::eventually;
use support::history::{count, open, policy, routed, seqs_after, sqlite_url};
use switchyard_host::store::history::{History, Record};

/// The history writer counts a stream once, then trims it by what it
/// wrote since: a stream that goes over its cap after it was counted is
/// trimmed on the next tick, and again each time it goes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_trims_a_stream_each_time_it_goes_over_its_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(sqlite_url(&dir)).await;
    let history = History::start(store.for_writer().await.expect("writer"), policy());
    let held = || {
        count(
            &store,
            "SELECT COUNT(*) FROM sy_history WHERE topic = 'news.a'",
        )
    };
    let mut seq = 0;
    let mut record = async |n: u64| {
        for _ in 0..n {
            seq += 1;
            history
                .record(Record::Routed(routed(seq, &["news.a"])))
                .await;
        }
    };

    // 5 of 10: counted on the first tick, nothing to trim.
    record(5).await;
    eventually("5 written", Duration::from_secs(10), async || {
        history.stats.written.load(Ordering::Relaxed) == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(history.stats.trimmed.load(Ordering::Relaxed), 0);
    // 10 more: 5 past the room counted before, trimmed without a recount.
    record(10).await;
    eventually("trimmed to 10", Duration::from_secs(10), async || {
        history.stats.trimmed.load(Ordering::Relaxed) == 5
    })
    .await;
    assert_eq!(held().await, 10);
    // One more: over again, trimmed again.
    record(1).await;
    eventually("trimmed again", Duration::from_secs(10), async || {
        history.stats.trimmed.load(Ordering::Relaxed) == 6
    })
    .await;
    assert_eq!(held().await, 10);
    assert_eq!(
        seqs_after(&store, 6, "news.a").await,
        Some((7..=16).collect())
    );
    history.flush_and_stop().await;
}

/// Before, retention ran in the writer's loop: a trim of a hot topic on
/// PostgreSQL took seconds, every barrier waited for it, so no ingest
/// message was acknowledged meanwhile and partition owners stalled at
/// their consumer's limit of unacknowledged events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_is_answered_while_a_trim_waits_in_the_database() {
    let url = support::fresh_postgres().await;
    let store = open(url.clone()).await;
    // The cut a trim records waits for this lock (reads go on).
    let mut locker = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE sy_trimmed IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    let history = History::start(store.for_writer().await.expect("writer"), policy());
    for seq in 1..=20 {
        history
            .record(Record::Routed(routed(seq, &["news.a"])))
            .await;
    }
    eventually(
        "a trim of news.a (20 of 10) waits for the lock",
        Duration::from_secs(20),
        async || {
            count(
                &store,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO sy_trimmed%'",
            )
            .await
                == 1
        },
    )
    .await;
    history
        .record(Record::Routed(routed(21, &["news.a"])))
        .await;
    tokio::time::timeout(Duration::from_secs(30), history.barrier())
        .await
        .expect("the barrier is answered while the trim waits");
    assert_eq!(history.stats.written.load(Ordering::Relaxed), 21);
    assert_eq!(history.stats.trimmed.load(Ordering::Relaxed), 0);
    sqlx::query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("commit");
    eventually(
        "trimmed once the lock is gone",
        Duration::from_secs(20),
        async || {
            count(
                &store,
                "SELECT COUNT(*) FROM sy_history WHERE topic = 'news.a'",
            )
            .await
                == 10
        },
    )
    .await;
    assert_eq!(
        seqs_after(&store, 11, "news.a").await,
        Some((12..=21).collect())
    );
    history.flush_and_stop().await;
}
