//! Rate limits as token buckets. Pure: the caller passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there at `now`, taking none.
    pub fn has_token(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= 1.0
    }

    /// Whether the bucket is full at `now`: forgetting it changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// A bucket per key (a user, an address) where there is no session to
/// keep one in, holding at most `cap` keys.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: u32,
    burst: u32,
    cap: usize,
    buckets: HashMap<K, TokenBucket>,
    last_sweep: Option<Instant>,
}

/// How often a full map may be swept for buckets that refilled: a sweep
/// walks every key.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// `rate` per second and `burst` per key, at most `cap` keys.
    pub fn new(rate: u32, burst: u32, cap: usize) -> Self {
        KeyedBuckets {
            rate,
            burst,
            cap: cap.max(1),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Takes one token of `key`'s bucket if there is one.
    pub fn try_take(&mut self, key: &K, now: Instant) -> bool {
        if let Some(b) = self.buckets.get_mut(key) {
            return b.try_take(now);
        }
        if self.buckets.len() >= self.cap {
            self.make_room(now);
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let taken = bucket.try_take(now);
        self.buckets.insert(key.clone(), bucket);
        taken
    }

    /// Forgets the buckets that refilled (a new one starts full anyway); if
    /// none did, or a sweep ran within [`SWEEP_EVERY`], any one key, so the
    /// map stays bounded at the price of one key's limit starting over.
    fn make_room(&mut self, now: Instant) {
        let swept = self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY);
        if !swept {
            self.last_sweep = Some(now);
            self.buckets.retain(|_, b| !b.is_full(now));
        }
        if self.buckets.len() >= self.cap
            && let Some(k) = self.buckets.keys().next().cloned()
        {
            self.buckets.remove(&k);
        }
    }

    /// Whether `key` has a token at `now`, taking none.
    pub fn has_token(&self, key: &K, now: Instant) -> bool {
        self.buckets.get(key).is_none_or(|b| b.has_token(now))
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        // 10/s: one token after 100 ms, not before.
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(101)));
        assert!(!b.try_take(t0 + Duration::from_millis(102)));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn each_key_has_its_own_bucket_and_the_map_stays_bounded() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(1, 2, 3);
        assert!(k.try_take(&"ann", t0) && k.try_take(&"ann", t0));
        assert!(!k.try_take(&"ann", t0), "ann's burst is spent");
        assert!(k.try_take(&"bob", t0), "bob is not held to ann's bucket");
        assert!(k.try_take(&"cy", t0));
        // Full: a fourth key makes room and the map keeps its cap.
        assert!(k.try_take(&"dee", t0));
        assert_eq!(k.len(), 3);
        // Later every bucket has refilled: a sweep forgets them all.
        let later = t0 + Duration::from_secs(10);
        for user in ["e", "f", "g", "h"] {
            assert!(k.try_take(&user, later));
        }
        assert!(k.len() <= 3);
    }
}
