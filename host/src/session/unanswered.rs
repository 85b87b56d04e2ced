//! A session's publishes handed to the bus and not yet answered. The bus
//! takes each publish in order at once; its answer (durable, or refused)
//! comes later, and the session reads on meanwhile. A session that waited
//! for each commit before reading the next frame delayed every publish of
//! a busy publisher by the commits of the ones before it. Answers go out
//! in the order the publishes came; past a bound, the session stops
//! reading until the oldest is answered.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;

/// Publishes a session may have unanswered before it stops reading.
pub const MAX_UNANSWERED: usize = 256;

/// Answers still to come, in publish order.
pub struct Unanswered<R> {
    pending: FuturesOrdered<BoxFuture<'static, R>>,
    max: usize,
}

impl<R: Send + 'static> Unanswered<R> {
    /// Empty, holding up to `max` before [`Unanswered::is_full`].
    pub fn new(max: usize) -> Self {
        Unanswered {
            pending: FuturesOrdered::new(),
            max: max.max(1),
        }
    }

    /// Adds the answer of the latest publish (one already decided too, so
    /// that it keeps its place behind earlier ones).
    pub fn push(&mut self, answer: impl Future<Output = R> + Send + 'static) {
        self.pending.push_back(Box::pin(answer));
    }

    /// Whether the session should stop reading until an answer is out.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max
    }

    /// Whether no answer is still to come.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest answer, once it is ready; never completes while none is
    /// pending (so it can sit in a `select!`).
    pub async fn next(&mut self) -> R {
        match self.pending.next().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Every answer still to come, in order (each is bounded by the bus's
    /// own timeout).
    pub async fn finish(&mut self) -> Vec<R> {
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(r) = self.pending.next().await {
            out.push(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn answers_go_out_in_publish_order_whatever_order_they_are_ready_in() {
        let mut u = Unanswered::new(8);
        let (tx1, rx1) = oneshot::channel::<u32>();
        let (tx2, rx2) = oneshot::channel::<u32>();
        u.push(async move { rx1.await.unwrap_or(0) });
        u.push(async move { rx2.await.unwrap_or(0) });
        u.push(std::future::ready(3));
        tx2.send(2).expect("receiver waits");
        assert!(u.next().now_or_never().is_none(), "the first is not ready");
        tx1.send(1).expect("receiver waits");
        assert_eq!(u.next().await, 1);
        assert_eq!(u.next().await, 2);
        assert_eq!(u.finish().await, vec![3]);
        assert!(u.is_empty());
    }

    #[tokio::test]
    async fn nothing_pending_never_completes_and_the_bound_says_full() {
        let mut u: Unanswered<u32> = Unanswered::new(2);
        assert!(u.next().now_or_never().is_none());
        u.push(std::future::ready(1));
        assert!(!u.is_full());
        u.push(std::future::ready(2));
        assert!(u.is_full());
        assert_eq!(u.next().await, 1);
        assert!(!u.is_full());
    }
}
