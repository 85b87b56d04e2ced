//! Who is where: a presence query is scattered to every node on
//! `<prefix>.presence` and gathered until each live node (see
//! [`super::members`]) has answered, or a deadline passes.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::members::Members;
use super::scatter::respond;
use crate::bus::BusError;
use crate::bus::wire::Subjects;
use crate::hub::Hub;

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
                respond(&client, reply, &answer).await;
            }
            Some(q) = counts.next() => {
                let Some(reply) = q.reply else { continue };
                let answer = Answer { node: node_id.clone(), users: Vec::new(), sessions: hub.counts() };
                respond(&client, reply, &answer).await;
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
    let answers: Vec<Answer> =
        super::scatter::gather(client, subjects.presence(), members, topic).await?;
    let users: BTreeSet<String> = answers.into_iter().flat_map(|a| a.users).collect();
    Ok(users.into_iter().collect())
}

/// Asks every node for its session counts: `{ node: counts }`.
pub async fn query_sessions(
    client: &async_nats::Client,
    subjects: &Subjects,
    members: &Members,
) -> Result<serde_json::Map<String, serde_json::Value>, BusError> {
    let answers: Vec<Answer> =
        super::scatter::gather(client, subjects.sessions(), members, "").await?;
    Ok(answers.into_iter().map(|a| (a.node, a.sessions)).collect())
}

impl super::scatter::FromNode for Answer {
    fn node(&self) -> &str {
        &self.node
    }
}
