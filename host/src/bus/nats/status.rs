//! `GET /admin/partitions` from any node: each node reports the partitions
//! it owns (term, last routed id, backlog, lag), gathered on
//! `<prefix>.partitions` as a presence query is; partitions no live node
//! reports show the lease table's holder, if any.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::leases::{LeaseTable, Slot};
use super::members::Members;
use super::owned::{Owned, OwnedStatus};
use crate::bus::wire::Subjects;
use crate::bus::{BusError, BusStats};
use crate::routing::Partition;

#[derive(Serialize, Deserialize)]
struct Answer {
    node: String,
    partitions: Vec<OwnedStatus>,
    relay: bool,
}

impl super::scatter::FromNode for Answer {
    fn node(&self) -> &str {
        &self.node
    }
}

/// Answers status queries for this node until `stop`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    node_id: String,
    owned: Arc<Owned>,
    epoch: Arc<AtomicU64>,
    stats: Arc<BusStats>,
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
                    relay: stats.relay_owner.load(Ordering::Relaxed),
                };
                super::scatter::respond(&client, reply, &answer).await;
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
    let answers: Vec<Answer> =
        super::scatter::gather(client, subjects.partitions(), members, "").await?;
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
