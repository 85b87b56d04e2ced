//! The pull requests a consumer's reader has open (pure): when to send the
//! next, and when one is over. Each request is numbered (its reply subject
//! ends with the number), so a status (a 408 or 409, sent to the reply
//! subject) names the request it ends. Deliveries carry their stream
//! subject instead; the server fills requests oldest first, so each one
//! counts against the oldest open request.
//!
//! nats-server 2.9.10 can forget an expiring request without sending its
//! 408 (fixed upstream in nats-server#3942). A reader that only counts the
//! messages it is still owed then waits for a request the server dropped:
//! async-nats's `messages()` sat up to 10 s before asking again, and a
//! partition's events waited that long. Here a request is also over once
//! its expiry passed by our own clock, and a fresh one is always sent
//! before the newest is half-way to its expiry, so a dropped request costs
//! no delivery time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after its expiry by this side's clock a request that got no
/// 408 counts as over (the server's clock starts when the request arrives).
const GRACE: Duration = Duration::from_millis(100);

/// The open requests of one consumer.
#[derive(Debug)]
pub struct PullRequests {
    batch: usize,
    expires: Duration,
    next_id: u64,
    open: VecDeque<Open>,
}

#[derive(Debug)]
struct Open {
    id: u64,
    sent: Instant,
    owed: usize,
}

impl PullRequests {
    /// Requests of `batch` messages each, expiring after `expires`.
    pub fn new(batch: usize, expires: Duration) -> Self {
        PullRequests {
            batch: batch.max(1),
            expires,
            next_id: 0,
            open: VecDeque::new(),
        }
    }

    /// Messages per request.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// How long a request waits at the server.
    pub fn expires(&self) -> Duration {
        self.expires
    }

    /// The number the next request gets, if one should be sent at `now`:
    /// fewer than two batches are owed, or the newest request is past half
    /// its life. [`PullRequests::sent`] records it once it went out.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let owed: usize = self.open.iter().map(|o| o.owed).sum();
        let stale = self
            .open
            .back()
            .is_none_or(|o| now.duration_since(o.sent) >= self.expires / 2);
        (owed < 2 * self.batch || stale).then_some(self.next_id)
    }

    /// Request `id` (from [`PullRequests::due`]) was sent at `now`.
    pub fn sent(&mut self, id: u64, now: Instant) {
        self.next_id = self.next_id.max(id + 1);
        self.open.push_back(Open {
            id,
            sent: now,
            owed: self.batch,
        });
    }

    /// A message arrived: it filled part of the oldest open request.
    pub fn delivered(&mut self) {
        if let Some(oldest) = self.open.front_mut() {
            oldest.owed = oldest.owed.saturating_sub(1);
            if oldest.owed == 0 {
                self.open.pop_front();
            }
        }
    }

    /// The server ended request `id` (a 408 or 409 status).
    pub fn ended(&mut self, id: u64) {
        self.open.retain(|o| o.id != id);
    }

    /// Forgets the requests past their expiry and [`GRACE`] at `now`;
    /// returns how many there were (each one the server dropped silently).
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.open.len();
        let life = self.expires + GRACE;
        self.open.retain(|o| now.duration_since(o.sent) < life);
        before - self.open.len()
    }

    /// When [`PullRequests::due`] or [`PullRequests::expire`] next has
    /// something to do, if nothing arrives before.
    pub fn next_check(&self) -> Option<Instant> {
        let refresh = self.open.back().map(|o| o.sent + self.expires / 2);
        let expiry = self.open.front().map(|o| o.sent + self.expires + GRACE);
        match (refresh, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Requests open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// The request number at the end of a reply subject `<inbox>.<n>`.
pub fn request_of(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn send_due(r: &mut PullRequests, now: Instant) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(id) = r.due(now) {
            r.sent(id, now);
            sent.push(id);
        }
        sent
    }

    #[test]
    fn two_batches_are_kept_owed_and_a_filled_request_is_over() {
        let t = Instant::now();
        let mut r = PullRequests::new(4, 5 * S);
        assert_eq!(send_due(&mut r, t), [0, 1], "two batches owed");
        for _ in 0..3 {
            r.delivered();
        }
        assert_eq!(send_due(&mut r, t), [2], "5 of 8 owed: one more");
        r.delivered();
        assert_eq!(r.len(), 2, "request 0 filled: over");
        assert_eq!(send_due(&mut r, t), Vec::<u64>::new(), "8 owed");
        r.ended(1);
        assert_eq!(send_due(&mut r, t), [3], "a 408 ends request 1");
    }

    #[test]
    fn a_request_is_sent_before_the_newest_is_half_way_to_its_expiry() {
        let t = Instant::now();
        let mut r = PullRequests::new(4, 4 * S);
        send_due(&mut r, t);
        assert_eq!(r.next_check(), Some(t + 2 * S));
        assert!(send_due(&mut r, t + S).is_empty());
        assert_eq!(send_due(&mut r, t + 2 * S), [2], "overlaps the newest");
        assert_eq!(r.next_check(), Some(t + 4 * S));
    }

    #[test]
    fn a_request_the_server_dropped_without_a_408_is_over_after_its_expiry() {
        let t = Instant::now();
        let mut r = PullRequests::new(4, 4 * S);
        send_due(&mut r, t);
        assert_eq!(r.expire(t + 4 * S), 0, "within the grace");
        assert_eq!(r.next_check(), Some(t + 2 * S));
        let later = t + 4 * S + GRACE;
        assert_eq!(r.expire(later), 2);
        assert!(r.is_empty());
        assert_eq!(send_due(&mut r, later), [2, 3]);
        assert_eq!(r.next_check(), Some(later + 2 * S));
    }

    #[test]
    fn deliveries_fill_the_oldest_request_and_statuses_end_the_one_they_name() {
        let t = Instant::now();
        let mut r = PullRequests::new(2, 4 * S);
        send_due(&mut r, t);
        r.ended(0);
        r.delivered();
        r.delivered();
        assert!(r.is_empty(), "request 1 filled");
        r.delivered();
        assert!(r.is_empty(), "nothing open: nothing counted");
        r.ended(7);
        assert_eq!(request_of("_INBOX.abc.12"), Some(12));
        assert_eq!(request_of("_INBOX.abc"), None);
    }
}
