//! Limits at the node's door, kept where no session holds them: HTTP
//! publishes by users (`limits.publish_rate`, as a session's), failed
//! admin-token attempts per client address, and open connections
//! (`server.max_connections`).

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::limits::KeyedBuckets;

/// Users or addresses remembered at most; see [`KeyedBuckets`].
const MAX_KEYS: usize = 100_000;

/// Wrong admin tokens an address may send: a burst, then one a second.
const ADMIN_FAILURE_BURST: u32 = 10;
const ADMIN_FAILURE_RATE: u32 = 1;

/// The node's per-key throttles.
#[derive(Debug)]
pub struct Throttles {
    publishes: Mutex<KeyedBuckets<String>>,
    admin_failures: Mutex<KeyedBuckets<IpAddr>>,
    /// Admin requests answered 429 after too many wrong tokens.
    pub admin_throttled: AtomicU64,
    /// HTTP publishes by users answered 429.
    pub publishes_throttled: AtomicU64,
    /// TCP connections open now.
    pub connections_open: AtomicU64,
    /// Connections closed at once because `server.max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed because a request's headers did not arrive in time
    /// (idle between requests, or trickling).
    pub connections_timed_out: AtomicU64,
}

impl Throttles {
    /// HTTP publishes at `publish_rate` per user.
    pub fn new(publish_rate: u32) -> Self {
        Throttles {
            publishes: Mutex::new(KeyedBuckets::new(publish_rate, publish_rate, MAX_KEYS)),
            admin_failures: Mutex::new(KeyedBuckets::new(
                ADMIN_FAILURE_RATE,
                ADMIN_FAILURE_BURST,
                MAX_KEYS,
            )),
            admin_throttled: AtomicU64::new(0),
            publishes_throttled: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
        }
    }

    /// Takes one of `user`'s HTTP publishes.
    pub fn take_publish(&self, user: &str) -> bool {
        let mut p = self
            .publishes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.try_take(&user.to_owned(), Instant::now())
    }

    /// Whether `addr` has used up its wrong admin tokens for now.
    pub fn admin_blocked(&self, addr: IpAddr) -> bool {
        let f = self
            .admin_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !f.has_token(&addr, Instant::now())
    }

    /// Counts a wrong admin token from `addr`.
    pub fn admin_failed(&self, addr: IpAddr) {
        let mut f = self
            .admin_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.try_take(&addr, Instant::now());
    }
}
