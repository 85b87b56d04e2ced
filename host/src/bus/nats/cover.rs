//! "Is everything routed so far in the store?" A replay must not miss an
//! event that was delivered live before the session was held but written
//! to history only after the replay read it. Each node answers for the
//! partitions it owns once everything its router stage took before the
//! question is written (and, for a partition it took over, once the
//! backlog it found is routed: events its dead predecessor delivered but
//! never wrote); the asker waits until every partition is answered for.
//! Concurrent askers share one round.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::owned::Owned;
use crate::bus::BusStats;
use crate::bus::wire::Subjects;
use crate::pipeline::Router;
use crate::store::history::History;

/// How long a round waits for every partition to be answered for.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long to wait before asking again when some partition had no
/// caught-up owner (one is taking it over). Answers wait for history, so
/// not sooner.
const ASK_AGAIN: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Answer {
    node: String,
    partitions: Vec<u16>,
}

/// Answers cover questions for this node until `stop`.
#[allow(missing_docs)]
pub struct Responder {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub node_id: String,
    pub owned: Arc<Owned>,
    pub router: Arc<Router>,
    pub history: Option<Arc<History>>,
}

impl Responder {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut questions = match self.client.subscribe(self.subjects.cover()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot answer cover questions: replays will reset");
                return;
            }
        };
        let me = Arc::new(self);
        loop {
            tokio::select! {
                q = questions.next() => {
                    let Some(q) = q else { return };
                    let Some(reply) = q.reply else { continue };
                    let me = me.clone();
                    tokio::spawn(async move { me.answer(reply).await });
                }
                () = stop.cancelled() => return,
            }
        }
    }

    async fn answer(&self, reply: async_nats::Subject) {
        // Snapshot first: a partition counts only if it was caught up
        // before the barriers below.
        let partitions = self.owned.caught_up();
        self.router.barrier().await;
        if let Some(h) = &self.history {
            h.barrier().await;
        }
        let answer = Answer {
            node: self.node_id.clone(),
            partitions,
        };
        super::scatter::respond(&self.client, reply, &answer).await;
    }
}

/// Asks the cluster, sharing rounds between concurrent askers.
pub struct Asker {
    client: async_nats::Client,
    subjects: Subjects,
    partitions: u16,
    stats: Arc<BusStats>,
    requested: AtomicU64,
    kick: Notify,
    /// The newest finished round: the tickets it served, and its outcome.
    done: watch::Sender<(u64, bool)>,
}

impl Asker {
    /// An asker for a cluster of `partitions`; its rounds run until `stop`.
    pub fn start(
        client: async_nats::Client,
        subjects: Subjects,
        partitions: u16,
        stats: Arc<BusStats>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let asker = Arc::new(Asker {
            client,
            subjects,
            partitions,
            stats,
            requested: AtomicU64::new(0),
            kick: Notify::new(),
            done: watch::Sender::new((0, true)),
        });
        tokio::spawn(asker.clone().rounds(stop));
        asker
    }

    /// Completes once everything routed before the call is in the store;
    /// false if that could not be made sure of in time.
    pub async fn cover(&self) -> bool {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.subscribe();
        self.kick.notify_one();
        loop {
            let (served, ok) = *done.borrow_and_update();
            if served >= ticket {
                return ok;
            }
            if done.changed().await.is_err() {
                return false;
            }
        }
    }

    async fn rounds(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.kick.notified() => {}
                () = stop.cancelled() => {
                    // Anyone still waiting is told no.
                    self.done.send_replace((u64::MAX, false));
                    return;
                }
            }
            let upto = self.requested.load(Ordering::Acquire);
            let ok = self.round().await;
            if !ok {
                self.stats.cover_failures.fetch_add(1, Ordering::Relaxed);
            }
            self.done.send_replace((upto, ok));
        }
    }

    async fn round(&self) -> bool {
        match self.gather().await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    partitions = self.partitions,
                    "not every partition's history could be confirmed in time"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cover question failed");
                false
            }
        }
    }

    /// Asks, and asks again while some partition is not answered for (its
    /// new owner may be catching up), until every one is or the deadline.
    async fn gather(&self) -> Result<bool, async_nats::Error> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await?;
        let mut covered: BTreeSet<u16> = BTreeSet::new();
        let mut again = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if now >= again {
                self.client
                    .publish_with_reply(self.subjects.cover(), inbox.clone(), Bytes::new())
                    .await?;
                self.client.flush().await?;
                again = now + ASK_AGAIN;
            }
            match tokio::time::timeout_at(again.min(deadline), replies.next()).await {
                Ok(Some(m)) => {
                    if let Ok(a) = serde_json::from_slice::<Answer>(&m.payload) {
                        covered.extend(a.partitions.into_iter().filter(|p| *p < self.partitions));
                        if covered.len() >= usize::from(self.partitions) {
                            return Ok(true);
                        }
                    }
                }
                Ok(None) => return Ok(false),
                Err(_) => {}
            }
        }
    }
}
