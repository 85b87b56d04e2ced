//! The sessions of this node, indexed by topic and by user, and fan-out of
//! routed events to them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::session::SessionHandle;

#[derive(Default)]
struct Index {
    sessions: HashMap<u64, Arc<SessionHandle>>,
    topics: HashMap<String, HashSet<u64>>,
    users: HashMap<String, HashSet<u64>>,
}

/// The local session registry.
#[derive(Default)]
pub struct Hub {
    index: RwLock<Index>,
}

impl Hub {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session (with the subscriptions it already has).
    pub fn register(&self, session: Arc<SessionHandle>) {
        let mut ix = self.write();
        ix.users
            .entry(session.subject.user.clone())
            .or_default()
            .insert(session.num);
        for topic in session.subscriptions() {
            ix.topics.entry(topic).or_default().insert(session.num);
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
            remove_member(&mut ix.topics, &topic, num);
        }
        remove_member(&mut ix.users, &session.subject.user, num);
    }

    /// Subscribes a registered session to `topic`; false if it already was.
    pub fn subscribe(&self, session: &SessionHandle, topic: &str) -> bool {
        let mut ix = self.write();
        if !session.add_subscription(topic) {
            return false;
        }
        ix.topics
            .entry(topic.to_owned())
            .or_default()
            .insert(session.num);
        true
    }

    /// Unsubscribes; false if it was not subscribed.
    pub fn unsubscribe(&self, session: &SessionHandle, topic: &str) -> bool {
        let mut ix = self.write();
        if !session.remove_subscription(topic) {
            return false;
        }
        remove_member(&mut ix.topics, topic, session.num);
        true
    }

    /// Every session subscribed to one of `topics` or belonging to one of
    /// `users`, each once.
    pub fn recipients(&self, topics: &[&str], users: &[&str]) -> Vec<Arc<SessionHandle>> {
        let ix = self.read();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let members = topics
            .iter()
            .filter_map(|t| ix.topics.get(*t))
            .chain(users.iter().filter_map(|u| ix.users.get(*u)));
        for set in members {
            for num in set {
                if seen.insert(*num)
                    && let Some(s) = ix.sessions.get(num)
                {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// Users with a live session subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        let ix = self.read();
        let mut users: Vec<String> = ix
            .topics
            .get(topic)
            .into_iter()
            .flatten()
            .filter_map(|n| ix.sessions.get(n).map(|s| s.subject.user.clone()))
            .collect();
        users.sort();
        users.dedup();
        users
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

fn remove_member(map: &mut HashMap<String, HashSet<u64>>, key: &str, num: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&num);
        if set.is_empty() {
            map.remove(key);
        }
    }
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
}
