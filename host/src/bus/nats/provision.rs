//! The JetStream objects a node needs, made if missing and brought up to
//! date: the ingest stream (its partition count recorded in its
//! description) and the lease bucket; the delivery log of earlier
//! versions is removed.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::super::BusError;
use crate::bus::wire::Subjects;

/// The single router's consumer of the ingest stream before partitions.
const LEGACY_CONSUMER: &str = "router";

fn setup(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BusError + '_ {
    move |e| BusError::Setup {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// The partition count as the ingest stream's description records it.
fn described_partitions(description: Option<&str>) -> Option<u16> {
    description?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("partitions="))?
        .parse()
        .ok()
}

/// Creates (or finds, and brings up to date) the ingest stream and the
/// lease bucket; returns the ingest stream's epoch
/// and the bucket. Refuses a partition count other than the stream's.
pub async fn provision(
    js: &jetstream::Context,
    bus: &crate::config::BusConfig,
    subjects: &Subjects,
) -> Result<(u64, kv::Store), BusError> {
    let ingest_stream = subjects.stream_name("IN");
    let fail = setup(&ingest_stream);
    let wanted = stream::Config {
        name: ingest_stream.clone(),
        description: Some(format!("switchyard ingest partitions={}", bus.partitions)),
        subjects: vec![subjects.ingest_all(), subjects.partitioned_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: bus.replicas,
        max_age: Duration::from_secs(bus.ingest_max_age_s),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| fail(&e))?;
    let info = stream.info().await.map_err(|e| fail(&e))?.clone();
    match described_partitions(info.config.description.as_deref()) {
        Some(found) if found != bus.partitions => {
            return Err(BusError::Partitions {
                stream: ingest_stream.clone(),
                configured: bus.partitions,
                found,
            });
        }
        Some(_) => {}
        None => {
            // A stream made before partitions (one router for all): take
            // the partitioned subjects too, and drop its single unfiltered
            // consumer, which would keep per-partition consumers off a
            // work queue. Its unrouted events reach their partitions
            // through the relay.
            let mut config = info.config.clone();
            config.description = wanted.description.clone();
            for subject in &wanted.subjects {
                if !config.subjects.contains(subject) {
                    config.subjects.push(subject.clone());
                }
            }
            let _ = stream.delete_consumer(LEGACY_CONSUMER).await;
            js.update_stream(config).await.map_err(|e| fail(&e))?;
            tracing::info!(stream = %ingest_stream, partitions = bus.partitions, "ingest stream moved to partitions");
        }
    }
    let created = info.created;
    let epoch = (created.unix_timestamp_nanos() / 1_000_000) as u64;
    // The delivery log of earlier versions: it would go on storing every
    // core delivery, which now goes out unstored and is repaired from
    // history instead.
    let out_stream = subjects.stream_name("OUT");
    match js.delete_stream(&out_stream).await {
        Ok(_) => tracing::info!(stream = %out_stream, "delivery log of an earlier version removed"),
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => {
            tracing::warn!(stream = %out_stream, error = %e, "cannot remove the delivery log of an earlier version")
        }
    }
    let bucket = subjects.stream_name("ROUTER");
    // The bucket's stream is made here rather than by `create_key_value`,
    // which first asks for account details in a form NATS 2.9 does not send.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_millis(bus.lease_ttl_ms),
        storage: stream::StorageType::File,
        num_replicas: bus.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| setup(&bucket)(&e))?;
    let lease = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| setup(&bucket)(&e))?;
    Ok((epoch, lease))
}
