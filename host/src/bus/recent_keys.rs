//! Idempotency keys of the local bus's recent publishes: a publish
//! retried with the key of one within the window gets that one's id (once
//! it is durable) instead of a second event. The keys are committed with
//! their events and read back at start, so a retry after a crash is
//! recognised too.
//!
//! Bounded: keys older than the window are forgotten, and beyond `cap`
//! keys the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::pipeline::durable::AckWait;
use crate::routing::EventId;

struct Entry {
    id: EventId,
    /// The publish's outcome while it may still be pending; `None` once
    /// known durable (read back from the store).
    wait: Option<AckWait>,
    at_ms: u64,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Arc<str>, Entry>,
    order: VecDeque<(u64, Arc<str>)>,
}

/// What a publish with a key should do.
pub enum Claim {
    /// The key is new (or its publish failed): publish under this id.
    Fresh(EventId),
    /// The key was published as `id`: answer it once `wait` (if any) says
    /// the event is durable.
    Known(EventId, Option<AckWait>),
}

/// The recent keys.
pub struct RecentKeys {
    window_ms: u64,
    cap: usize,
    inner: Mutex<Inner>,
}

impl RecentKeys {
    /// Keeps keys for `window_ms`, at most `cap` of them.
    pub fn new(window_ms: u64, cap: usize) -> Self {
        RecentKeys {
            window_ms,
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    /// The id `key` was published under, or (new key, or its publish
    /// failed) a fresh id from `fresh`, claimed under `key` with `wait`
    /// as its outcome. One lock: two publishes with one key never both
    /// get a fresh id.
    pub fn claim(
        &self,
        key: &str,
        now_ms: u64,
        fresh: impl FnOnce() -> (EventId, AckWait),
    ) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.expire(&mut inner, now_ms);
        if let Some(e) = inner.keys.get(key)
            && !e.wait.as_ref().is_some_and(AckWait::failed)
        {
            return Claim::Known(e.id, e.wait.clone());
        }
        let (id, wait) = fresh();
        self.insert(&mut inner, Arc::from(key), id, Some(wait), now_ms);
        Claim::Fresh(id)
    }

    /// Takes in a key read back from the store.
    pub fn known(&self, key: Arc<str>, id: EventId, at_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.insert(&mut inner, key, id, None, at_ms);
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(
        &self,
        inner: &mut Inner,
        key: Arc<str>,
        id: EventId,
        wait: Option<AckWait>,
        at_ms: u64,
    ) {
        inner.order.push_back((at_ms, key.clone()));
        inner.keys.insert(key, Entry { id, wait, at_ms });
        while inner.keys.len() > self.cap {
            if !Self::pop_oldest(inner) {
                break;
            }
        }
    }

    fn expire(&self, inner: &mut Inner, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        while inner.order.front().is_some_and(|(at, _)| *at < horizon) {
            Self::pop_oldest(inner);
        }
    }

    /// Forgets the oldest key (unless it was claimed again since).
    fn pop_oldest(inner: &mut Inner) -> bool {
        let Some((at, key)) = inner.order.pop_front() else {
            return false;
        };
        if inner.keys.get(&key).is_some_and(|e| e.at_ms == at) {
            inner.keys.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PublishError;
    use crate::pipeline::durable::{Ack, pending};

    fn id(seq: u64) -> EventId {
        EventId { epoch: 1, seq }
    }

    fn fresh(seq: u64, acks: &mut Vec<Ack>) -> impl FnOnce() -> (EventId, AckWait) + '_ {
        move || {
            let (ack, wait) = pending();
            acks.push(ack);
            (id(seq), wait)
        }
    }

    #[test]
    fn a_key_gets_its_first_id_until_the_window_passes() {
        let keys = RecentKeys::new(1000, 10);
        let mut acks = Vec::new();
        assert!(matches!(keys.claim("a", 0, fresh(1, &mut acks)), Claim::Fresh(i) if i == id(1)));
        assert!(
            matches!(keys.claim("a", 500, fresh(2, &mut acks)), Claim::Known(i, Some(_)) if i == id(1))
        );
        assert!(matches!(
            keys.claim("b", 900, fresh(3, &mut acks)),
            Claim::Fresh(_)
        ));
        assert!(
            matches!(keys.claim("a", 1001, fresh(4, &mut acks)), Claim::Fresh(i) if i == id(4)),
            "forgotten after the window"
        );
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_failed_publish_frees_its_key_and_read_back_keys_are_known() {
        let keys = RecentKeys::new(1000, 10);
        let mut acks = Vec::new();
        keys.claim("a", 0, fresh(1, &mut acks));
        acks.pop().expect("ack").failed(PublishError::NotDurable(5));
        assert!(matches!(keys.claim("a", 1, fresh(2, &mut acks)), Claim::Fresh(i) if i == id(2)));
        keys.known(Arc::from("k"), id(9), 1);
        assert!(
            matches!(keys.claim("k", 2, fresh(3, &mut acks)), Claim::Known(i, None) if i == id(9))
        );
    }

    #[test]
    fn beyond_the_cap_the_oldest_keys_go() {
        let keys = RecentKeys::new(u64::MAX, 3);
        let mut acks = Vec::new();
        for (n, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            keys.claim(k, n as u64, fresh(n as u64 + 1, &mut acks));
        }
        assert_eq!(keys.len(), 3);
        assert!(matches!(
            keys.claim("a", 9, fresh(9, &mut acks)),
            Claim::Fresh(_)
        ));
        assert!(matches!(
            keys.claim("d", 9, fresh(10, &mut acks)),
            Claim::Known(..)
        ));
    }
}
