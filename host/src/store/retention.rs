//! Retention policy (pure): how many events, and how old, each history
//! stream keeps. A stream is a topic, or a user's inbox.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::StoreConfig;
use crate::routing::{Routed, TopicPattern};

/// Limits of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events kept.
    pub max_events: u64,
    /// Oldest kept, in seconds.
    pub max_age_s: u64,
}

/// Retention of every stream.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<(TopicPattern, Limits)>,
    topics: Limits,
    inbox: Limits,
    key_window_ms: u64,
}

/// The history stream of a user's inbox. Topics cannot contain spaces, so
/// the name never collides with a topic.
pub fn inbox_stream(user: &str) -> String {
    format!("{INBOX_PREFIX}{user}")
}

const INBOX_PREFIX: &str = "@inbox ";

/// The user whose inbox `stream` is.
pub fn inbox_user(stream: &str) -> Option<&str> {
    stream.strip_prefix(INBOX_PREFIX)
}

/// Whether `stream` is a user's inbox.
pub fn is_inbox(stream: &str) -> bool {
    stream.starts_with(INBOX_PREFIX)
}

impl Policy {
    /// From `[store]` (patterns are validated with the config; an invalid
    /// one is ignored here).
    pub fn from_config(store: &StoreConfig) -> Self {
        let topics = Limits {
            max_events: store.history_retention,
            max_age_s: store.history_max_age_s,
        };
        let rules = store
            .retention
            .iter()
            .filter_map(|r| {
                let pattern = TopicPattern::parse(&r.topics).ok()?;
                Some((
                    pattern,
                    Limits {
                        max_events: r.max_events.unwrap_or(topics.max_events),
                        max_age_s: r.max_age_s.unwrap_or(topics.max_age_s),
                    },
                ))
            })
            .collect();
        Policy {
            rules,
            topics,
            inbox: Limits {
                max_events: store.inbox_max_events,
                max_age_s: store.inbox_retention_s,
            },
            key_window_ms: store.idempotency_window_s.saturating_mul(1000),
        }
    }

    /// How long an idempotency key is kept (ms).
    pub fn key_window_ms(&self) -> u64 {
        self.key_window_ms
    }

    /// The limits of `stream`.
    pub fn of(&self, stream: &str) -> Limits {
        if is_inbox(stream) {
            return self.inbox;
        }
        self.rules
            .iter()
            .find(|(p, _)| p.matches(stream))
            .map_or(self.topics, |(_, l)| *l)
    }

    /// The shortest age any stream keeps: rows younger than this are kept
    /// whatever their stream.
    pub fn shortest_age_s(&self) -> u64 {
        self.rules
            .iter()
            .map(|(_, l)| l.max_age_s)
            .chain([self.topics.max_age_s, self.inbox.max_age_s])
            .min()
            .unwrap_or(0)
    }

    /// Whether topic history is kept at all (some stream keeps events).
    pub fn keeps_topics(&self) -> bool {
        self.topics.max_events > 0 || self.rules.iter().any(|(_, l)| l.max_events > 0)
    }

    /// Whether user inboxes are kept.
    pub fn keeps_inbox(&self) -> bool {
        self.inbox.max_events > 0 && self.inbox.max_age_s > 0
    }

    /// The streams a routed event joins in history: its topics that keep
    /// events, and the inboxes of the users it was addressed to (when
    /// inboxes are kept).
    pub fn streams_of<'a>(&'a self, r: &'a Routed) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let topics = r
            .topics
            .iter()
            .filter(|t| self.of(t).max_events > 0)
            .map(|t| Cow::Borrowed(t.as_str()));
        let inboxes = r
            .users
            .iter()
            .filter(|_| self.keeps_inbox())
            .map(|u| Cow::Owned(inbox_stream(u)));
        topics.chain(inboxes)
    }
}

/// How many more rows each stream written lately can take before it may
/// hold more than its `max_events`, from what the writer counted and wrote
/// since. Retention by count asks the store only about the streams that
/// may be over (or were never counted), so a trim costs queries in
/// proportion to the streams at their cap, not to the streams written.
///
/// What other writers add (another node that routed while this one did
/// not) is not seen: [`Headroom::forget`] at an interval bounds how long a
/// stream can stay over its cap, and the memory held.
#[derive(Debug, Default)]
pub struct Headroom {
    streams: HashMap<String, Entry>,
}

/// What [`Headroom::due`] asks the store to look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Streams never counted.
    pub count: Vec<String>,
    /// Streams written past their room: over their cap.
    pub over: Vec<String>,
    /// Rows written to each stream due, up to then: a count that comes
    /// back takes off what was written while it ran.
    written: HashMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Written, never counted.
    Unknown,
    /// Rows it takes before reaching its cap.
    Left(u64),
    /// Written past what it could take.
    Over,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    room: Room,
    /// Rows written since it was tracked.
    written: u64,
}

impl Due {
    /// Streams to count and streams over their cap, none written since.
    pub fn of(count: Vec<String>, over: Vec<String>) -> Due {
        Due {
            count,
            over,
            written: HashMap::new(),
        }
    }
}

impl Headroom {
    /// `rows` more rows were written to `stream`.
    pub fn wrote(&mut self, stream: &str, rows: u64) {
        match self.streams.get_mut(stream) {
            Some(entry) => {
                entry.written += rows;
                entry.room = match entry.room {
                    Room::Left(left) if rows <= left => Room::Left(left - rows),
                    Room::Left(_) | Room::Over => Room::Over,
                    Room::Unknown => Room::Unknown,
                }
            }
            None => {
                self.streams.insert(
                    stream.to_owned(),
                    Entry {
                        room: Room::Unknown,
                        written: rows,
                    },
                );
            }
        }
    }

    /// The streams to count, and those known to be over their cap (to
    /// trim without counting first).
    pub fn due(&self) -> Due {
        let mut due = Due::default();
        for (stream, entry) in &self.streams {
            match entry.room {
                Room::Unknown => due.count.push(stream.clone()),
                Room::Over => due.over.push(stream.clone()),
                Room::Left(_) => continue,
            }
            due.written.insert(stream.clone(), entry.written);
        }
        due
    }

    /// `stream`, due in `due`, was counted: it took `left` more rows then
    /// (0 once trimmed to its cap), less what was written since.
    pub fn counted(&mut self, stream: &str, left: u64, due: &Due) {
        if let Some(entry) = self.streams.get_mut(stream) {
            let then = due.written.get(stream).copied().unwrap_or(entry.written);
            let since = entry.written.saturating_sub(then);
            entry.room = if since <= left {
                Room::Left(left - since)
            } else {
                Room::Over
            };
        }
    }

    /// Streams tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is tracked.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Forgets every count (keeping the streams still due): a stream
    /// written after this is counted afresh.
    pub fn forget(&mut self) {
        self.streams
            .retain(|_, entry| !matches!(entry.room, Room::Left(_)));
        self.streams.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetentionRule;

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Every stream due, counted or over.
    fn due(h: &Headroom) -> Vec<String> {
        let d = h.due();
        sorted(d.count.into_iter().chain(d.over).collect())
    }

    #[test]
    fn only_streams_never_counted_or_written_past_their_room_are_due() {
        let mut h = Headroom::default();
        h.wrote("a", 3);
        h.wrote("b", 1);
        assert_eq!(sorted(h.due().count), ["a", "b"], "never counted");
        let d = h.due();
        h.counted("a", 5, &d);
        h.counted("b", 0, &d);
        assert_eq!(h.due(), Due::default());
        h.wrote("a", 5);
        assert_eq!(
            h.due(),
            Due::default(),
            "a fills its room exactly: still at most its cap"
        );
        h.wrote("a", 1);
        h.wrote("b", 1);
        assert_eq!(
            sorted(h.due().over),
            ["a", "b"],
            "over: trimmed without a count"
        );
        let d = h.due();
        h.counted("a", 0, &d);
        assert_eq!(due(&h), ["b"]);
        h.wrote("b", 7);
        assert_eq!(h.due().over, ["b"], "over stays over until counted");
    }

    #[test]
    fn rows_written_while_a_count_ran_come_off_its_room() {
        let mut h = Headroom::default();
        h.wrote("a", 4);
        let d = h.due();
        h.wrote("a", 3);
        h.counted("a", 5, &d);
        h.wrote("a", 2);
        assert_eq!(
            h.due(),
            Due::default(),
            "5 left then, 3 written since: 2 left"
        );
        h.wrote("a", 1);
        assert_eq!(h.due().over, ["a"]);
        let d = h.due();
        h.wrote("a", 9);
        h.counted("a", 0, &d);
        assert_eq!(
            h.due().over,
            ["a"],
            "written past its cap while it was trimmed"
        );
    }

    #[test]
    fn counting_a_stream_not_written_lately_tracks_nothing_and_forget_keeps_only_what_is_due() {
        let mut h = Headroom::default();
        h.counted("ghost", 3, &Due::default());
        assert!(h.is_empty());
        h.wrote("a", 1);
        h.counted("a", 10, &h.due());
        h.wrote("b", 1);
        h.counted("b", 0, &h.due());
        h.wrote("b", 1);
        h.wrote("c", 1);
        h.forget();
        assert_eq!(due(&h), ["b", "c"], "over and never counted are kept");
        assert_eq!(h.len(), 2);
        h.wrote("a", 1);
        assert_eq!(
            sorted(h.due().count),
            ["a", "c"],
            "a is counted afresh after forget"
        );
    }

    #[test]
    fn an_event_joins_its_topics_that_keep_history_and_the_inboxes_of_its_users() {
        let mut p = policy();
        let event = crate::routing::Event::new(
            crate::routing::EventId { epoch: 1, seq: 1 },
            crate::routing::Topic::parse("news.x").expect("topic"),
            Vec::new(),
        );
        let r = Routed {
            event: std::sync::Arc::new(event),
            topics: vec!["news.x".into(), "chat.a".into()],
            users: vec!["ann".into()],
            stamp: 0,
            origin: Default::default(),
        };
        let streams: Vec<String> = p.streams_of(&r).map(Cow::into_owned).collect();
        assert_eq!(streams, ["news.x", "chat.a", "@inbox ann"]);
        p.rules[0].1.max_events = 0;
        p.inbox.max_age_s = 0;
        let streams: Vec<String> = p.streams_of(&r).map(Cow::into_owned).collect();
        assert_eq!(streams, ["news.x"], "chat.> keeps nothing, inboxes off");
    }

    fn policy() -> Policy {
        Policy::from_config(&StoreConfig {
            history_retention: 100,
            history_max_age_s: 3600,
            inbox_retention_s: 60,
            inbox_max_events: 7,
            retention: vec![
                RetentionRule {
                    topics: "chat.>".into(),
                    max_events: Some(5),
                    max_age_s: None,
                },
                RetentionRule {
                    topics: "chat.room.*".into(),
                    max_events: Some(50),
                    max_age_s: Some(10),
                },
            ],
            ..StoreConfig::default()
        })
    }

    #[test]
    fn the_first_matching_rule_wins_and_unset_limits_take_the_defaults() {
        let p = policy();
        assert_eq!(
            p.of("chat.room.1"),
            Limits {
                max_events: 5,
                max_age_s: 3600
            }
        );
        assert_eq!(
            p.of("news.x"),
            Limits {
                max_events: 100,
                max_age_s: 3600
            }
        );
        assert_eq!(p.shortest_age_s(), 10);
    }

    #[test]
    fn inboxes_have_their_own_limits_and_never_match_a_topic_rule() {
        let p = policy();
        let s = inbox_stream("chat.room.1");
        assert!(is_inbox(&s));
        assert!(crate::routing::Topic::parse(&s).is_err());
        assert_eq!(
            p.of(&s),
            Limits {
                max_events: 7,
                max_age_s: 60
            }
        );
        assert!(p.keeps_inbox() && p.keeps_topics());
    }
}
