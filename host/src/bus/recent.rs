//! The ids of the events a node fanned out lately, so that a delivery that
//! reaches it twice (by topic and by user, redelivered after a router
//! failover, or replayed after a reconnect) reaches its sessions once.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

/// A bounded set of recently seen event ids (kept as 64-bit hashes: a
/// collision costs one delivery with odds of about `capacity / 2^64`).
pub struct RecentIds {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
    hasher: RandomState,
}

impl RecentIds {
    /// Remembers at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            hasher: RandomState::new(),
        }
    }

    /// True the first time `id` is offered (within the window). Any
    /// hashable key: callers pass tuples rather than format a string.
    pub fn first_time(&mut self, id: impl std::hash::Hash) -> bool {
        let h = self.hasher.hash_one(id);
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_within_the_window_and_memory_stays_bounded() {
        let mut r = RecentIds::new(3);
        assert!(r.first_time("a"));
        assert!(!r.first_time("a"));
        for id in ["b", "c", "d"] {
            assert!(r.first_time(id));
        }
        assert_eq!(r.len(), 3);
        // "a" fell out of the window.
        assert!(r.first_time("a"));
        assert!(!r.first_time("d"));
    }
}
