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

/// The ticket store.
pub struct TicketStore {
    ttl: Duration,
    tickets: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl TicketStore {
    /// Tickets valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TicketStore {
            ttl,
            tickets: Mutex::new(HashMap::new()),
        }
    }

    /// The lifetime of a ticket.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a ticket for `identity`, or `None` when too many are outstanding.
    pub fn issue(&self, identity: Identity, now: Instant) -> Option<String> {
        let ticket =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        if tickets.len() >= MAX_OUTSTANDING {
            tickets.retain(|_, (_, expires)| *expires > now);
            if tickets.len() >= MAX_OUTSTANDING {
                return None;
            }
        }
        tickets.insert(ticket.clone(), (identity, now + self.ttl));
        Some(ticket)
    }

    /// Redeems a ticket: the identity once, if it has not expired.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Option<Identity> {
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let (identity, expires) = tickets.remove(ticket)?;
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
    fn an_expired_ticket_is_refused() {
        let store = TicketStore::new(Duration::from_secs(30));
        let now = Instant::now();
        let t = store.issue(identity(), now).expect("ticket");
        assert!(store.redeem(&t, now + Duration::from_secs(31)).is_none());
    }
}
