//! Who is where: a presence query is scattered to every node on
//! `<prefix>.presence` and gathered until each live node (see
//! [`super::members`]) has answered, or a deadline passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::members::Members;
use crate::bus::BusError;
use crate::bus::wire::Subjects;
use crate::hub::Hub;

/// The longest a presence query waits for answers.
const QUERY_DEADLINE: Duration = Duration::from_millis(1500);

#[derive(Serialize, Deserialize)]
pub(super) struct Answer {
    node: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    sessions: serde_json::Value,
}

/// Answers presence and session count queries from the local hub, until
/// `stop`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    node_id: String,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    let (mut queries, mut counts) = match (
        client.subscribe(subjects.presence()).await,
        client.subscribe(subjects.sessions()).await,
    ) {
        (Ok(q), Ok(c)) => (q, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe to presence subjects");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(q) = queries.next() => {
                let Some(reply) = q.reply else { continue };
                let topic = String::from_utf8_lossy(&q.payload);
                let answer = Answer { node: node_id.clone(), users: hub.subscribers(&topic), sessions: serde_json::Value::Null };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
            Some(q) = counts.next() => {
                let Some(reply) = q.reply else { continue };
                let answer = Answer { node: node_id.clone(), users: Vec::new(), sessions: hub.counts() };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Asks every node for the users subscribed to `topic` and merges the
/// answers.
pub async fn query(
    client: &async_nats::Client,
    subjects: &Subjects,
    members: &Members,
    topic: &str,
) -> Result<Vec<String>, BusError> {
    let answers: Vec<Answer> = gather(client, subjects.presence(), members, topic).await?;
    let users: BTreeSet<String> = answers.into_iter().flat_map(|a| a.users).collect();
    Ok(users.into_iter().collect())
}

/// Asks every node for its session counts: `{ node: counts }`.
pub async fn query_sessions(
    client: &async_nats::Client,
    subjects: &Subjects,
    members: &Members,
) -> Result<serde_json::Map<String, serde_json::Value>, BusError> {
    let answers: Vec<Answer> = gather(client, subjects.sessions(), members, "").await?;
    Ok(answers.into_iter().map(|a| (a.node, a.sessions)).collect())
}

/// An answer to a scattered request, from one node.
pub(super) trait FromNode: serde::de::DeserializeOwned {
    /// The node that answered.
    fn node(&self) -> &str;
}

impl FromNode for Answer {
    fn node(&self) -> &str {
        &self.node
    }
}

/// Scatters a request to every node and gathers the answers until each live
/// node has answered or the deadline passes.
pub(super) async fn gather<T: FromNode>(
    client: &async_nats::Client,
    subject: String,
    members: &Members,
    payload: &str,
) -> Result<Vec<T>, BusError> {
    let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable(&e))?;
    client
        .publish_with_reply(subject, inbox, Bytes::from(payload.to_owned()))
        .await
        .map_err(|e| unavailable(&e))?;
    client.flush().await.map_err(|e| unavailable(&e))?;
    let expected: BTreeSet<String> = members.live().into_iter().collect();
    let mut heard = BTreeSet::new();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + QUERY_DEADLINE;
    while !expected.is_subset(&heard) || heard.is_empty() {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => {
                if let Ok(a) = serde_json::from_slice::<T>(&m.payload)
                    && heard.insert(a.node().to_owned())
                {
                    answers.push(a);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if heard.is_empty() {
        return Err(BusError::Unavailable("no node answered".into()));
    }
    Ok(answers)
}
