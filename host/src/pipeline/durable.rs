//! A publisher waiting for its event to be durable: the local bus answers
//! a publish only once the history writer has committed the event (or,
//! for an event that joins no stream, once it is routed).
//!
//! The sending half travels with the event through the router lane to the
//! history writer; any number of waiters (a publisher, and a retry of it
//! under the same idempotency key) share one outcome.

use tokio::sync::watch;

use super::PublishError;

/// Where an event stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending,
    Durable,
    Failed(PublishError),
}

/// Settles the publish of one event. Dropped unsettled (the writer ended
/// before it), its waiters are told the gateway is stopping.
#[derive(Debug)]
pub struct Ack(watch::Sender<State>);

/// Waits for an [`Ack`].
#[derive(Debug, Clone)]
pub struct AckWait(watch::Receiver<State>);

/// A new pending publish.
pub fn pending() -> (Ack, AckWait) {
    let (tx, rx) = watch::channel(State::Pending);
    (Ack(tx), AckWait(rx))
}

impl Ack {
    /// Another waiter on this publish.
    pub fn watch(&self) -> AckWait {
        AckWait(self.0.subscribe())
    }

    /// The event is durable (or needs not be).
    pub fn durable(self) {
        self.0.send_replace(State::Durable);
    }

    /// The event could not be made durable.
    pub fn failed(self, why: PublishError) {
        self.0.send_replace(State::Failed(why));
    }
}

impl AckWait {
    /// Completes once the event is durable, or with why it is not.
    pub async fn settled(mut self) -> Result<(), PublishError> {
        self.wait().await
    }

    /// [`AckWait::settled`] without giving up the waiter.
    pub async fn wait(&mut self) -> Result<(), PublishError> {
        let state = self
            .0
            .wait_for(|s| *s != State::Pending)
            .await
            .map(|s| s.clone());
        match state {
            Ok(State::Durable) => Ok(()),
            Ok(State::Failed(why)) => Err(why),
            Ok(State::Pending) | Err(_) => Err(PublishError::Stopped),
        }
    }

    /// Whether the publish is settled, either way.
    pub fn is_settled(&self) -> bool {
        *self.0.borrow() != State::Pending || self.0.has_changed().is_err()
    }

    /// Whether the publish failed (or was dropped unsettled): a retry
    /// should then publish again rather than wait on it.
    pub fn failed(&self) -> bool {
        match *self.0.borrow() {
            State::Failed(_) => true,
            State::Pending => self.0.has_changed().is_err(),
            State::Durable => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_gets_the_one_outcome() {
        let (ack, wait) = pending();
        let again = wait.clone();
        let first = tokio::spawn(wait.settled());
        ack.durable();
        assert_eq!(first.await.expect("join"), Ok(()));
        assert_eq!(again.settled().await, Ok(()), "a later waiter too");
    }

    #[tokio::test]
    async fn a_failure_is_told_and_a_dropped_ack_means_stopping() {
        let (ack, wait) = pending();
        assert!(!wait.failed());
        ack.failed(PublishError::Overloaded);
        assert!(wait.failed());
        assert_eq!(wait.settled().await, Err(PublishError::Overloaded));
        let (ack, wait) = pending();
        drop(ack);
        assert!(wait.failed(), "dropped unsettled");
        assert_eq!(wait.settled().await, Err(PublishError::Stopped));
    }
}
