//! Single-use, short-lived tickets for browsers that cannot set headers
//! (`EventSource`, `WebSocket`): `POST /v1/tickets` with a JWT returns one,
//! and `?ticket=` redeems it once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::Identity;

/// Outstanding tickets held at most; issuing past it purges expired ones
/// and then refuses.
const MAX_OUTSTANDING: usize = 100_000;

/// Outstanding tickets per user: one user cannot exhaust the store.
const MAX_PER_USER: usize = 16;

/// The ticket store.
pub struct TicketStore {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tickets: HashMap<String, (Identity, Instant)>,
    per_user: HashMap<String, usize>,
}

impl Inner {
    fn purge(&mut self, now: Instant) {
        self.tickets.retain(|_, (_, expires)| *expires > now);
        self.per_user.clear();
        for (identity, _) in self.tickets.values() {
            *self
                .per_user
                .entry(identity.subject.user.clone())
                .or_default() += 1;
        }
    }

    fn full_for(&self, user: &str) -> bool {
        self.tickets.len() >= MAX_OUTSTANDING
            || self.per_user.get(user).copied().unwrap_or(0) >= MAX_PER_USER
    }
}

impl TicketStore {
    /// Tickets valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TicketStore {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The lifetime of a ticket.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a ticket for `identity`, or `None` when too many are
    /// outstanding, in all or for this user.
    pub fn issue(&self, identity: Identity, now: Instant) -> Option<String> {
        let ticket =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let user = identity.subject.user.clone();
        if inner.full_for(&user) {
            inner.purge(now);
            if inner.full_for(&user) {
                return None;
            }
        }
        *inner.per_user.entry(user).or_default() += 1;
        inner
            .tickets
            .insert(ticket.clone(), (identity, now + self.ttl));
        Some(ticket)
    }

    /// Redeems a ticket: the identity once, if it has not expired.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Option<Identity> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (identity, expires) = inner.tickets.remove(ticket)?;
        if let Some(n) = inner.per_user.get_mut(&identity.subject.user) {
            *n = n.saturating_sub(1);
        }
        (expires > now).then_some(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::Subject;

    fn identity() -> Identity {
        Identity {
            subject: Subject::new("alice", ""),
            expires_at: u64::MAX,
            claims: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_ticket_is_redeemed_once() {
        let store = TicketStore::new(Duration::from_secs(30));
        let now = Instant::now();
        let t = store.issue(identity(), now).expect("ticket");
        assert!(t.len() >= 32);
        assert_eq!(
            store.redeem(&t, now).map(|i| i.subject.user),
            Some("alice".into())
        );
        assert!(store.redeem(&t, now).is_none());
        assert!(store.redeem("made-up", now).is_none());
    }

    #[test]
    fn one_user_cannot_hold_more_than_a_few_tickets() {
        let store = TicketStore::new(Duration::from_secs(30));
        let now = Instant::now();
        for _ in 0..MAX_PER_USER {
            assert!(store.issue(identity(), now).is_some());
        }
        assert!(store.issue(identity(), now).is_none());
        // Once they expire, new ones are issued.
        assert!(
            store
                .issue(identity(), now + Duration::from_secs(31))
                .is_some()
        );
    }

    #[test]
    fn an_expired_ticket_is_refused() {
        let store = TicketStore::new(Duration::from_secs(30));
        let now = Instant::now();
        let t = store.issue(identity(), now).expect("ticket");
        assert!(store.redeem(&t, now + Duration::from_secs(31)).is_none());
    }
}
