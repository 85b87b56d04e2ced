//! The sessions of this node, indexed by topic and by user, and fan-out of
//! routed events to them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::mpsc;

use crate::session::SessionHandle;

/// A change in what this node needs from the bus: the first local session
/// of a topic or user arrived (`true`), or the last one left (`false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Subscribers of a topic.
    Topic(String, bool),
    /// Sessions of a user.
    User(String, bool),
}

/// Sessions by number. Members are kept with their handle so that a fan-out
/// walks one map per topic, not a map of numbers and then the sessions.
type Members = HashMap<u64, Arc<SessionHandle>, BuildNumHasher>;

#[derive(Default)]
struct Index {
    sessions: HashMap<u64, Arc<SessionHandle>>,
    topics: HashMap<String, Members>,
    users: HashMap<String, Members>,
}

/// Session numbers are distinct counters: a multiply-shift mixes them
/// well enough, at a fraction of SipHash's cost per fan-out member.
#[derive(Default, Clone, Copy)]
struct BuildNumHasher;

impl std::hash::BuildHasher for BuildNumHasher {
    type Hasher = NumHasher;
    fn build_hasher(&self) -> NumHasher {
        NumHasher(0)
    }
}

struct NumHasher(u64);

impl std::hash::Hasher for NumHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend
        // on every bit of the number.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The local session registry.
#[derive(Default)]
pub struct Hub {
    index: RwLock<Index>,
    /// Told of every interest change, in order (sent under the index lock,
    /// so that a quick subscribe/unsubscribe cannot arrive reversed).
    interest: Option<mpsc::UnboundedSender<Interest>>,
    /// Interest changes sent so far.
    sent: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// A hub that reports interest changes to `interest`.
    pub fn with_interest(interest: mpsc::UnboundedSender<Interest>) -> Self {
        Hub {
            index: RwLock::default(),
            interest: Some(interest),
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn tell(&self, change: Interest) {
        if let Some(tx) = &self.interest {
            let _ = tx.send(change);
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many interest changes were sent so far (wait for the bus to
    /// apply this many to know a subscription is in effect).
    pub fn interest_sent(&self) -> u64 {
        // Read under the lock so no change in progress is missed.
        let _ix = self.read();
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every topic and user with a local session, as interest changes (to
    /// restore them on a fresh bus connection).
    pub fn interests(&self) -> Vec<Interest> {
        let ix = self.read();
        ix.topics
            .keys()
            .map(|t| Interest::Topic(t.clone(), true))
            .chain(ix.users.keys().map(|u| Interest::User(u.clone(), true)))
            .collect()
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session (with the subscriptions it already has).
    pub fn register(&self, session: Arc<SessionHandle>) {
        let mut ix = self.write();
        let user = &session.subject.user;
        if add_member(&mut ix.users, user, &session) {
            self.tell(Interest::User(user.clone(), true));
        }
        for topic in session.subscriptions() {
            if add_member(&mut ix.topics, &topic, &session) {
                self.tell(Interest::Topic(topic, true));
            }
        }
        ix.sessions.insert(session.num, session);
    }

    /// Removes a session and all its subscriptions.
    pub fn unregister(&self, num: u64) {
        let mut ix = self.write();
        let Some(session) = ix.sessions.remove(&num) else {
            return;
        };
        for topic in session.subscriptions() {
            if remove_member(&mut ix.topics, &topic, num) {
                self.tell(Interest::Topic(topic, false));
            }
        }
        if remove_member(&mut ix.users, &session.subject.user, num) {
            self.tell(Interest::User(session.subject.user.clone(), false));
        }
    }

    /// Subscribes a registered session to `topic`; false if it already was.
    pub fn subscribe(&self, session: &SessionHandle, topic: &str) -> bool {
        let mut ix = self.write();
        if !session.add_subscription(topic) {
            return false;
        }
        let Some(handle) = ix.sessions.get(&session.num).cloned() else {
            // Not registered (yet): the subscription is indexed on register.
            return true;
        };
        if add_member(&mut ix.topics, topic, &handle) {
            self.tell(Interest::Topic(topic.to_owned(), true));
        }
        true
    }

    /// Unsubscribes; false if it was not subscribed.
    pub fn unsubscribe(&self, session: &SessionHandle, topic: &str) -> bool {
        let mut ix = self.write();
        if !session.remove_subscription(topic) {
            return false;
        }
        if remove_member(&mut ix.topics, topic, session.num) {
            self.tell(Interest::Topic(topic.to_owned(), false));
        }
        true
    }

    /// Every session subscribed to one of `topics` or belonging to one of
    /// `users`, each once.
    pub fn recipients(&self, topics: &[&str], users: &[&str]) -> Vec<Arc<SessionHandle>> {
        let ix = self.read();
        let sets: Vec<&Members> = topics
            .iter()
            .filter_map(|t| ix.topics.get(*t))
            .chain(users.iter().filter_map(|u| ix.users.get(*u)))
            .collect();
        if let [only] = sets.as_slice() {
            // The common case (one topic, or one user): no duplicates.
            return only.values().cloned().collect();
        }
        let mut seen: HashSet<u64, BuildNumHasher> = HashSet::default();
        let mut out = Vec::new();
        for set in sets {
            for (num, s) in set {
                if seen.insert(*num) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// Whether `user` has a live session here.
    pub fn has_user(&self, user: &str) -> bool {
        self.read().users.contains_key(user)
    }

    /// Users with a live session subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        let ix = self.read();
        let mut users: Vec<String> = ix
            .topics
            .get(topic)
            .into_iter()
            .flat_map(|set| set.values())
            .map(|s| s.subject.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Live sessions by protocol: `{ "total", "json", "stomp", "sse" }`.
    pub fn counts(&self) -> serde_json::Value {
        let ix = self.read();
        let count =
            |p: crate::session::Protocol| ix.sessions.values().filter(|s| s.protocol == p).count();
        serde_json::json!({
            "total": ix.sessions.len(),
            "json": count(crate::session::Protocol::Json),
            "stomp": count(crate::session::Protocol::Stomp),
            "sse": count(crate::session::Protocol::Sse),
        })
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.read().sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session (for drain and admin).
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.read().sessions.values().cloned().collect()
    }
}

/// Adds `session` under `key`; true if `key` had no member before.
fn add_member(map: &mut HashMap<String, Members>, key: &str, session: &Arc<SessionHandle>) -> bool {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(session.num, session.clone());
            false
        }
        None => {
            let mut set = Members::default();
            set.insert(session.num, session.clone());
            map.insert(key.to_owned(), set);
            true
        }
    }
}

/// Removes `num` from `key`; true if that was the last member.
fn remove_member(map: &mut HashMap<String, Members>, key: &str, num: u64) -> bool {
    if let Some(set) = map.get_mut(key) {
        set.remove(&num);
        if set.is_empty() {
            map.remove(key);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::session::Protocol;
    use crate::subject::Subject;

    fn session(num: u64, user: &str) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(
            num,
            "n1",
            Subject::new(user, ""),
            Protocol::Json,
            8,
            SlowConsumerPolicy::Disconnect,
            std::time::Duration::ZERO,
        ))
    }

    fn nums(v: Vec<Arc<SessionHandle>>) -> Vec<u64> {
        let mut n: Vec<u64> = v.iter().map(|s| s.num).collect();
        n.sort();
        n
    }

    #[test]
    fn recipients_are_topic_subscribers_and_user_sessions_once_each() {
        let hub = Hub::default();
        let (a1, a2, b) = (session(1, "alice"), session(2, "alice"), session(3, "bob"));
        for s in [&a1, &a2, &b] {
            hub.register(s.clone());
        }
        hub.subscribe(&a1, "chat.1");
        hub.subscribe(&b, "chat.1");
        assert_eq!(nums(hub.recipients(&["chat.1"], &[])), [1, 3]);
        assert_eq!(nums(hub.recipients(&[], &["alice"])), [1, 2]);
        assert_eq!(
            nums(hub.recipients(&["chat.1"], &["alice", "bob"])),
            [1, 2, 3]
        );
        assert_eq!(hub.subscribers("chat.1"), ["alice", "bob"]);
    }

    #[test]
    fn unsubscribing_and_leaving_clean_the_indexes() {
        let hub = Hub::default();
        let a = session(1, "alice");
        hub.register(a.clone());
        assert!(hub.subscribe(&a, "t"));
        assert!(!hub.subscribe(&a, "t"));
        assert!(hub.unsubscribe(&a, "t"));
        assert!(!hub.unsubscribe(&a, "t"));
        assert!(hub.recipients(&["t"], &[]).is_empty());
        hub.subscribe(&a, "t");
        hub.unregister(1);
        assert!(hub.recipients(&["t"], &["alice"]).is_empty());
        assert!(hub.is_empty());
    }

    #[test]
    fn interest_is_reference_counted_per_topic_and_user() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Hub::with_interest(tx);
        let (a1, a2) = (session(1, "alice"), session(2, "alice"));
        hub.register(a1.clone());
        hub.register(a2.clone());
        hub.subscribe(&a1, "t");
        hub.subscribe(&a2, "t");
        hub.unsubscribe(&a1, "t");
        hub.unregister(2);
        hub.unregister(1);
        let mut changes = Vec::new();
        while let Ok(c) = rx.try_recv() {
            changes.push(c);
        }
        assert_eq!(
            changes,
            [
                Interest::User("alice".into(), true),
                Interest::Topic("t".into(), true),
                Interest::Topic("t".into(), false),
                Interest::User("alice".into(), false),
            ]
        );
    }
}
