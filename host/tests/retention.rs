//! Retention in the store, on SQLite and on PostgreSQL: trimming by count
//! reports how much room each stream it counted has left (what the history
//! writer uses to ask only about streams that may be over their cap), and
//! an event goes with its last history row, not before.

mod support;

use std::sync::Arc;

use support::history::{EPOCH, count, open, policy, routed, seqs_after, sqlite_url};
use switchyard_host::routing::{EventId, Routed};
use switchyard_host::store::Replay;
use switchyard_host::store::retention::Due;

fn room(trimmed: &switchyard_host::store::Trimmed, stream: &str) -> Option<u64> {
    trimmed
        .room
        .iter()
        .find(|(s, _)| s == stream)
        .map(|(_, left)| *left)
}

async fn trims_by_count_and_reports_room(url: String) {
    let store = open(url).await;
    let policy = policy();
    let now = support::now() * 1000;
    // 30 events on news.a (keeps 10); the first 5 also on keep.x (keeps 1000).
    let events: Vec<Routed> = (1..=30)
        .map(|seq| {
            if seq <= 5 {
                routed(seq, &["news.a", "keep.x"])
            } else {
                routed(seq, &["news.a"])
            }
        })
        .collect();
    store
        .write(&events, &[], EPOCH, 30, now, &policy)
        .await
        .expect("write");

    let due = Due::of(vec!["news.a".to_owned(), "keep.x".to_owned()], Vec::new());
    let t = store.trim(&policy, &due, now).await.expect("trim");
    assert_eq!(t.removed, 20, "news.a keeps its newest 10");
    assert_eq!(room(&t, "news.a"), Some(0), "trimmed to its cap");
    assert_eq!(room(&t, "keep.x"), Some(995), "5 of 1000 held");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM sy_history WHERE topic = 'news.a'"
        )
        .await,
        10
    );
    // Events 1-5 are still in keep.x's history; 6-20 are in no stream.
    assert_eq!(count(&store, "SELECT COUNT(*) FROM sy_events").await, 15);
    assert_eq!(
        seqs_after(&store, 0, "keep.x").await,
        Some(vec![1, 2, 3, 4, 5])
    );
    assert_eq!(
        seqs_after(&store, 5, "news.a").await,
        None,
        "trimmed: a reset"
    );
    assert_eq!(
        seqs_after(&store, 25, "news.a").await,
        Some((26..=30).collect())
    );

    // Three more on news.a: trimmed again to 10; nothing due, nothing done.
    let more: Vec<Routed> = (31..=33).map(|seq| routed(seq, &["news.a"])).collect();
    store
        .write(&more, &[], EPOCH, 33, now, &policy)
        .await
        .expect("write");
    // Known to be over (its room was 0): trimmed without a count.
    let over = Due::of(Vec::new(), vec!["news.a".to_owned()]);
    let t = store.trim(&policy, &over, now).await.expect("trim");
    assert_eq!((t.removed, room(&t, "news.a")), (3, Some(0)));
    assert_eq!(
        seqs_after(&store, 23, "news.a").await,
        Some((24..=33).collect())
    );
    let t = store
        .trim(&policy, &Due::default(), now)
        .await
        .expect("trim");
    assert_eq!((t.removed, t.room.len()), (0, 0));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM sy_events").await, 15);

    // A stream under its cap that was never written reports its full room.
    let empty = Due::of(vec!["news.empty".to_owned()], Vec::new());
    let t = store.trim(&policy, &empty, now).await.expect("trim");
    assert_eq!(room(&t, "news.empty"), Some(10));
}

/// Topic, name, headers, sender and data of a replayed event.
type Replayed = (
    String,
    String,
    Vec<(String, String)>,
    Option<String>,
    Vec<u8>,
);

/// Events written in one batch come back with their own name, headers
/// and sender (the writer binds each distinct string once per batch).
async fn replays_what_was_written(url: String) {
    let store = open(url).await;
    let policy = policy();
    let mut plain = routed(1, &["news.a"]);
    let mut named = routed(2, &["news.a"]);
    let mut tagged = routed(3, &["news.b", "news.a"]);
    Arc::make_mut(&mut plain.event).sender = Some("ann".into());
    {
        let e = Arc::make_mut(&mut named.event);
        e.name = "typing".into();
        e.sender = Some("bob".into());
    }
    {
        let e = Arc::make_mut(&mut tagged.event);
        *e = e.clone().with_header("x-trace", "t-1");
        e.sender = Some("ann".into());
    }
    store
        .write(
            &[plain, named, tagged],
            &[],
            EPOCH,
            3,
            support::now() * 1000,
            &policy,
        )
        .await
        .expect("write");
    let since = EventId {
        epoch: EPOCH,
        seq: 0,
    };
    let Replay::Events(events) = store
        .replay(EPOCH, since, &["news.a".to_owned()])
        .await
        .expect("replay")
    else {
        panic!("a reset");
    };
    let got: Vec<Replayed> = events
        .into_iter()
        .map(|e| {
            (
                e.topic.as_str().to_owned(),
                e.name,
                e.headers,
                e.sender,
                e.data,
            )
        })
        .collect();
    let header = vec![("x-trace".to_owned(), "t-1".to_owned())];
    assert_eq!(
        got,
        vec![
            (
                "news.a".into(),
                "message".into(),
                vec![],
                Some("ann".into()),
                b"{\"n\":1}".to_vec()
            ),
            (
                "news.a".into(),
                "typing".into(),
                vec![],
                Some("bob".into()),
                b"{\"n\":2}".to_vec()
            ),
            (
                "news.b".into(),
                "message".into(),
                header,
                Some("ann".into()),
                b"{\"n\":3}".to_vec()
            ),
        ]
    );
}

/// Batches of every shape the writer pads (sizes between its padded row
/// counts, more rows than one INSERT takes, more parameters than
/// PostgreSQL gets in one statement) store each event and each history row
/// once, and a batch written again changes nothing.
async fn writes_each_row_of_every_batch_size_once(url: String) {
    let store = open(url).await;
    let policy = policy();
    let mut seq = 0;
    let mut batches = Vec::new();
    // 257 and up: more parameters than one PostgreSQL statement gets.
    for size in [1, 8, 9, 13, 100, 257, 300, 3000] {
        let batch: Vec<Routed> = (0..size)
            .map(|_| {
                seq += 1;
                routed(seq, &["news.a", "news.b"])
            })
            .collect();
        let streams = store
            .write(&batch, &[], EPOCH, seq, support::now() * 1000, &policy)
            .await
            .expect("write");
        assert_eq!(streams.len(), 2 * size as usize);
        batches.push((batch, seq));
    }
    let (again, upto) = &batches[4];
    store
        .write(again, &[], EPOCH, *upto, support::now() * 1000, &policy)
        .await
        .expect("write again");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM sy_events").await,
        seq as i64
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM sy_history").await,
        2 * seq as i64
    );
    assert_eq!(store.watermark(EPOCH).await.expect("watermark"), seq);
    let Replay::Events(events) = store
        .replay(
            EPOCH,
            EventId {
                epoch: EPOCH,
                seq: 0,
            },
            &["news.b".to_owned()],
        )
        .await
        .expect("replay")
    else {
        panic!("a reset");
    };
    let got: Vec<(u64, Vec<u8>)> = events.iter().map(|e| (e.id.seq, e.data.clone())).collect();
    let want: Vec<(u64, Vec<u8>)> = (1..=seq)
        .map(|n| (n, format!("{{\"n\":{n}}}").into_bytes()))
        .collect();
    assert_eq!(got, want);
}

/// One event routed to more streams than one INSERT takes: a row in each,
/// the body once (on PostgreSQL, two history INSERTs in one statement).
async fn an_event_of_many_streams_is_written_once_per_stream(url: String) {
    let store = open(url).await;
    let names: Vec<String> = (0..600).map(|i| format!("fan.t{i}")).collect();
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    let streams = store
        .write(
            &[routed(1, &topics)],
            &[],
            EPOCH,
            1,
            support::now() * 1000,
            &policy(),
        )
        .await
        .expect("write");
    assert_eq!(streams.len(), 600);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM sy_events").await, 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM sy_history").await, 600);
    for stream in ["fan.t0", "fan.t511", "fan.t512", "fan.t599"] {
        assert_eq!(
            seqs_after(&store, 0, stream).await,
            Some(vec![1]),
            "{stream}"
        );
    }
}

#[tokio::test]
async fn an_event_of_many_streams_is_written_once_per_stream_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    an_event_of_many_streams_is_written_once_per_stream(sqlite_url(&dir)).await;
}

#[tokio::test]
async fn an_event_of_many_streams_is_written_once_per_stream_on_postgres() {
    an_event_of_many_streams_is_written_once_per_stream(support::fresh_postgres().await).await;
}

#[tokio::test]
async fn writes_each_row_of_every_batch_size_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    writes_each_row_of_every_batch_size_once(sqlite_url(&dir)).await;
}

#[tokio::test]
async fn writes_each_row_of_every_batch_size_once_on_postgres() {
    writes_each_row_of_every_batch_size_once(support::fresh_postgres().await).await;
}

#[tokio::test]
async fn replays_what_was_written_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    replays_what_was_written(sqlite_url(&dir)).await;
}

#[tokio::test]
async fn replays_what_was_written_on_postgres() {
    replays_what_was_written(support::fresh_postgres().await).await;
}

#[tokio::test]
async fn trims_by_count_and_reports_room_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    trims_by_count_and_reports_room(sqlite_url(&dir)).await;
}

#[tokio::test]
async fn trims_by_count_and_reports_room_on_postgres() {
    trims_by_count_and_reports_room(support::fresh_postgres().await).await;
}

/// A stream over its cap loses its rows of older epochs too: they are
/// older than any row of the current one.
#[tokio::test]
async fn trimming_by_count_removes_older_epochs_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(sqlite_url(&dir)).await;
    let policy = policy();
    let now = support::now() * 1000;
    let in_epoch = |epoch: u64, seq: u64| {
        let mut r = routed(seq, &["news.a"]);
        Arc::make_mut(&mut r.event).id = EventId { epoch, seq };
        r
    };
    let old: Vec<Routed> = (1..=4).map(|seq| in_epoch(EPOCH - 1, seq)).collect();
    store
        .write(&old, &[], EPOCH - 1, 4, now, &policy)
        .await
        .expect("write");
    let new: Vec<Routed> = (1..=12).map(|seq| in_epoch(EPOCH, seq)).collect();
    store
        .write(&new, &[], EPOCH, 12, now, &policy)
        .await
        .expect("write");
    let due = Due::of(vec!["news.a".to_owned()], Vec::new());
    let t = store.trim(&policy, &due, now).await.expect("trim");
    assert_eq!(t.removed, 6, "4 of the old epoch, 2 of the new");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM sy_history WHERE topic = 'news.a'"
        )
        .await,
        10
    );
    assert_eq!(
        count(
            &store,
            &format!("SELECT COUNT(*) FROM sy_events WHERE epoch = {}", EPOCH - 1)
        )
        .await,
        0
    );
}
