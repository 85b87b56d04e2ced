//! Reading a durable pull consumer: numbered requests on one wildcard
//! inbox, kept open by [`PullRequests`] (see there why async-nats's own
//! `messages()` is not used).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

use super::pull_requests::{PullRequests, request_of};
use crate::bus::BusStats;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A request could not be sent.
    #[error("sending a pull request: {0}")]
    Send(String),
    /// The consumer was deleted (another owner took over).
    #[error("the consumer was deleted")]
    Deleted,
    /// JetStream did not answer the request (no responders).
    #[error("no JetStream responder for the pull request")]
    NoResponders,
}

/// The messages of one consumer, in order.
pub struct Puller {
    context: jetstream::Context,
    subject: String,
    inbox: String,
    subscriber: Subscriber,
    requests: PullRequests,
    stats: Arc<BusStats>,
    done: bool,
}

impl Puller {
    /// Starts reading `consumer` of `stream` with requests of `batch`
    /// messages, each waiting at most `expires` at the server.
    pub async fn start(
        context: &jetstream::Context,
        stream: &str,
        consumer: &str,
        batch: usize,
        expires: Duration,
        stats: Arc<BusStats>,
    ) -> Result<Puller, PullError> {
        let client = context.client();
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| PullError::Send(e.to_string()))?;
        Ok(Puller {
            context: context.clone(),
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            subscriber,
            requests: PullRequests::new(batch, expires),
            stats,
            done: false,
        })
    }

    /// The next message; `None` once the consumer is gone for good.
    /// Cancel-safe: a request is recorded only once it went out, and a
    /// message is taken from the subscription only when it is returned.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        if self.done {
            return None;
        }
        loop {
            let now = Instant::now();
            let dropped = self.requests.expire(now);
            if dropped > 0 {
                self.stats
                    .pulls_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                tracing::debug!(subject = %self.subject, dropped, "pull requests expired without a word from the server");
            }
            while let Some(id) = self.requests.due(now) {
                if let Err(e) = self.request(id).await {
                    // The client is closed (a disconnected one buffers):
                    // nothing more will come.
                    self.done = true;
                    return Some(Err(e));
                }
                self.requests.sent(id, now);
            }
            let check = self
                .requests
                .next_check()
                .unwrap_or_else(|| now + self.requests.expires());
            let message = tokio::select! {
                m = self.subscriber.next() => m,
                () = tokio::time::sleep_until(check.into()) => continue,
            };
            let Some(message) = message else {
                self.done = true;
                return None;
            };
            let id = request_of(message.subject.as_str());
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.requests.delivered();
                    return Some(Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::NO_RESPONDERS) => {
                    if let Some(id) = id {
                        self.requests.ended(id);
                    }
                    return Some(Err(PullError::NoResponders));
                }
                Some(status) => {
                    tracing::debug!(subject = %self.subject, %status, description = ?message.description, request = ?id, "pull request ended");
                    // 408 (expired), 409 (limits, leadership): this request
                    // is over; the next is sent at the top of the loop.
                    if message.description.as_deref() == Some("Consumer Deleted") {
                        self.done = true;
                        return Some(Err(PullError::Deleted));
                    }
                    if let Some(id) = id {
                        self.requests.ended(id);
                    }
                }
            }
        }
    }

    async fn request(&self, id: u64) -> Result<(), PullError> {
        let body = format!(
            r#"{{"batch":{},"expires":{}}}"#,
            self.requests.batch(),
            self.requests.expires().as_nanos()
        );
        self.context
            .client()
            .publish_with_reply(
                self.subject.clone(),
                format!("{}.{id}", self.inbox),
                Bytes::from(body),
            )
            .await
            .map_err(|e| PullError::Send(e.to_string()))
    }
}
