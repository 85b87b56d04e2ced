//! `GET /admin/partitions` from any node: each node reports the partitions
//! it owns (term, last routed id, backlog, lag), gathered on
//! `<prefix>.partitions` like a presence query; partitions no live node
//! reports show the lease table's holder, if any.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::leases::{LeaseTable, Slot};
use super::members::Members;
use super::owned::{Owned, OwnedStatus};
use crate::bus::BusError;
use crate::bus::wire::Subjects;
use crate::routing::Partition;

/// The longest a status query waits for answers.
const DEADLINE: Duration = Duration::from_millis(1500);

#[derive(Serialize, Deserialize)]
struct Answer {
    node: String,
    partitions: Vec<OwnedStatus>,
    relay: bool,
}

/// Answers status queries for this node until `stop`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    node_id: String,
    owned: Arc<Owned>,
    epoch: Arc<AtomicU64>,
    relay: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut queries = match client.subscribe(subjects.partitions()).await {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer partition queries");
            return;
        }
    };
    loop {
        tokio::select! {
            q = queries.next() => {
                let Some(q) = q else { return };
                let Some(reply) = q.reply else { continue };
                let answer = Answer {
                    node: node_id.clone(),
                    partitions: owned.status(epoch.load(Ordering::Relaxed)),
                    relay: relay.load(Ordering::Relaxed),
                };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Every partition's owner and routing state, as JSON.
pub async fn query(
    client: &async_nats::Client,
    subjects: &Subjects,
    members: &Members,
    table: &LeaseTable,
    partitions: u16,
) -> Result<serde_json::Value, BusError> {
    let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable(&e))?;
    client
        .publish_with_reply(subjects.partitions(), inbox, Bytes::new())
        .await
        .map_err(|e| unavailable(&e))?;
    client.flush().await.map_err(|e| unavailable(&e))?;
    let expected: BTreeSet<String> = members.live().into_iter().collect();
    let mut heard = BTreeSet::new();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !expected.is_subset(&heard) || heard.is_empty() {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => {
                if let Ok(a) = serde_json::from_slice::<Answer>(&m.payload)
                    && heard.insert(a.node.clone())
                {
                    answers.push(a);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut by_partition: BTreeMap<u16, serde_json::Value> = BTreeMap::new();
    let mut relay = serde_json::Value::Null;
    let mut owned_per_node = serde_json::Map::new();
    for a in answers {
        owned_per_node.insert(a.node.clone(), a.partitions.len().into());
        if a.relay {
            relay = a.node.clone().into();
        }
        for s in a.partitions {
            // Two nodes may briefly report one partition while it changes
            // hands: the higher term is the owner.
            let newer = by_partition
                .get(&s.partition)
                .and_then(|v| v["term"].as_u64())
                .is_none_or(|t| t < s.term);
            if newer {
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                v["owner"] = a.node.clone().into();
                by_partition.insert(s.partition, v);
            }
        }
    }
    let list: Vec<serde_json::Value> = (0..partitions)
        .map(|p| {
            by_partition.remove(&p).unwrap_or_else(|| {
                let holder = table.holder(Slot::Partition(Partition(p)));
                serde_json::json!({
                    "partition": p,
                    "owner": holder.map(|h| h.node),
                    "term": null,
                    "last_routed": null,
                })
            })
        })
        .collect();
    Ok(serde_json::json!({
        "partitions": list,
        "count": partitions,
        "owned": owned_per_node,
        "relay": relay,
    }))
}
