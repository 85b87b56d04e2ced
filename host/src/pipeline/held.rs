//! Deliveries a router lane holds until their event is durable. On the
//! local bus with durable acks, an event published with an idempotency key
//! is delivered live only once the history writer has committed it: a
//! crash cannot take back an event clients saw whose publisher, told
//! nothing, retries it (it would be delivered again under a new id). What
//! follows a held event in its lane waits behind it, so a partition keeps
//! its order.

use std::collections::VecDeque;

use super::durable::AckWait;
use super::router::Settle;
use crate::routing::Routed;

/// A routed event on its way to the outlet.
pub struct Out {
    /// `None`: a router dropped it.
    pub routed: Option<Routed>,
    pub settle: Option<Settle>,
    /// Delivered only once this says durable; `None`: at once.
    pub durable: Option<AckWait>,
}

enum Held {
    Out(Out),
    /// Answered once everything before it is out.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What may leave the queue now, in order.
pub enum Ready {
    Deliver(Out),
    /// Its event could not be made durable: its publisher was told so.
    NotDurable(Out),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A lane's held deliveries, in lane order.
#[derive(Default)]
pub struct HeldQueue {
    items: VecDeque<Held>,
}

impl HeldQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `out` may go at once: nothing is held before it and it
    /// waits for nothing.
    pub fn passes(&self, out: &Out) -> bool {
        self.items.is_empty() && out.durable.is_none()
    }

    pub fn push(&mut self, out: Out) {
        self.items.push_back(Held::Out(out));
    }

    /// Holds a barrier; `Err` gives it back when nothing is held.
    pub fn push_barrier(
        &mut self,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), tokio::sync::oneshot::Sender<()>> {
        if self.items.is_empty() {
            return Err(done);
        }
        self.items.push_back(Held::Barrier(done));
        Ok(())
    }

    /// Whether the head waits for its event to be durable.
    pub fn head_waits(&self) -> bool {
        matches!(
            self.items.front(),
            Some(Held::Out(Out { durable: Some(w), .. })) if !w.is_settled()
        )
    }

    /// Completes once the head's event is settled (at once if it waits
    /// for nothing).
    pub async fn head_settled(&mut self) {
        if let Some(Held::Out(Out {
            durable: Some(w), ..
        })) = self.items.front_mut()
        {
            let _ = w.wait().await;
        }
    }

    /// The head, if it may leave now.
    pub fn pop_ready(&mut self) -> Option<Ready> {
        if self.head_waits() {
            return None;
        }
        Some(match self.items.pop_front()? {
            Held::Barrier(done) => Ready::Barrier(done),
            Held::Out(out) => match &out.durable {
                Some(w) if w.failed() => Ready::NotDurable(out),
                _ => Ready::Deliver(out),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PublishError;
    use crate::pipeline::durable::pending;

    fn out(durable: Option<AckWait>) -> Out {
        Out {
            routed: None,
            settle: None,
            durable,
        }
    }

    #[test]
    fn what_follows_a_held_event_waits_behind_it_in_order() {
        let mut q = HeldQueue::default();
        assert!(q.passes(&out(None)), "nothing held, nothing to wait for");
        let (first, wait) = pending();
        let held = out(Some(wait));
        assert!(!q.passes(&held));
        q.push(held);
        assert!(!q.passes(&out(None)), "behind a held event");
        q.push(out(None));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        assert!(q.push_barrier(tx).is_ok());
        assert!(q.pop_ready().is_none(), "the head is not durable yet");
        first.durable();
        assert!(matches!(q.pop_ready(), Some(Ready::Deliver(o)) if o.durable.is_some()));
        assert!(matches!(q.pop_ready(), Some(Ready::Deliver(o)) if o.durable.is_none()));
        assert!(rx.try_recv().is_err(), "the barrier is still held");
        assert!(matches!(q.pop_ready(), Some(Ready::Barrier(_))));
        assert!(q.pop_ready().is_none() && q.is_empty());
        let (tx, _rx) = tokio::sync::oneshot::channel();
        assert!(
            q.push_barrier(tx).is_err(),
            "nothing held: answered at once"
        );
    }

    #[test]
    fn an_event_that_cannot_be_made_durable_is_not_delivered() {
        let mut q = HeldQueue::default();
        let (failed, wait) = pending();
        q.push(out(Some(wait)));
        let (stopped, wait) = pending();
        q.push(out(Some(wait)));
        failed.failed(PublishError::Stopped);
        drop(stopped);
        assert!(matches!(q.pop_ready(), Some(Ready::NotDurable(_))));
        assert!(matches!(q.pop_ready(), Some(Ready::NotDurable(_))));
    }

    #[tokio::test]
    async fn the_head_is_waited_for_until_it_settles() {
        let mut q = HeldQueue::default();
        let (ack, wait) = pending();
        q.push(out(Some(wait)));
        assert!(q.head_waits());
        let settle = tokio::spawn(async move { ack.durable() });
        q.head_settled().await;
        settle.await.expect("join");
        assert!(!q.head_waits());
        assert!(matches!(q.pop_ready(), Some(Ready::Deliver(_))));
    }
}
