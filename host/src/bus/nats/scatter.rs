//! Scatter-gather between nodes: a request published to every node, each
//! answering on the reply subject, gathered until every live node has.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::members::Members;
use crate::bus::BusError;

/// The longest a query waits for answers.
const QUERY_DEADLINE: Duration = Duration::from_millis(1500);

/// An answer to a scattered request, from one node.
pub trait FromNode: serde::de::DeserializeOwned {
    /// The node that answered.
    fn node(&self) -> &str;
}

/// Scatters a request to every node and gathers the answers until each live
/// node has answered or the deadline passes.
pub async fn gather<T: FromNode>(
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

/// Answers a request with `answer` as JSON (a lost answer is the asker's
/// deadline to handle).
pub async fn respond(
    client: &async_nats::Client,
    reply: async_nats::Subject,
    answer: &impl serde::Serialize,
) {
    if let Ok(body) = serde_json::to_vec(answer) {
        let _ = client.publish(reply, body.into()).await;
    }
}
