//! Durable consumers replaced on takeover: a new owner removes every
//! consumer of its slot (a predecessor's, of an earlier term) before it
//! creates its own, since a work-queue stream takes one consumer per
//! filter.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt;

use super::puller::Puller;

/// Messages per pull request.
const PULL_BATCH: usize = 512;
/// How long a pull request waits at the server: short, so that one lost
/// with a restarted server is replaced within seconds.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Replaces the consumers of the slot `prefix` with the durable `name`
/// filtered on `filter`, delivering from the oldest unacknowledged message,
/// each message acknowledged on its own (a work-queue stream takes nothing
/// else: nats-server refuses `AckPolicy::All` on one, error 10098); returns
/// its messages and how many waited then.
pub async fn replace(
    js: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
    prefix: &str,
    name: String,
    filter: String,
    stats: std::sync::Arc<crate::bus::BusStats>,
) -> Result<(Puller, u64), String> {
    remove_all(stream, prefix).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name),
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 20_000,
            // The stream keeps what is not acknowledged (work queue), so a
            // consumer's own state is not needed across a server restart
            // (the owner replaces it after any reconnect), and writing it
            // to a file after each ack cost the server more than storing.
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let info = consumer.cached_info();
    let messages = Puller::start(
        js,
        &info.stream_name,
        &info.name,
        PULL_BATCH,
        PULL_EXPIRES,
        stats,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((messages, info.num_pending))
}

/// Deletes the consumers of `stream` named `prefix` or `prefix-…`.
async fn remove_all(
    stream: &async_nats::jetstream::stream::Stream,
    prefix: &str,
) -> Result<(), String> {
    let mut names = stream.consumer_names();
    let mut doomed = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| e.to_string())?;
        if is_of(&name, prefix) {
            doomed.push(name);
        }
    }
    for name in doomed {
        // Already gone (another owner raced us) is as good as deleted.
        let _ = stream.delete_consumer(&name).await;
    }
    Ok(())
}

/// Whether consumer `name` belongs to the slot of `prefix`.
fn is_of(name: &str, prefix: &str) -> bool {
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_owns_its_names_only() {
        assert!(is_of("p1", "p1"));
        assert!(is_of("p1-t77", "p1"));
        assert!(!is_of("p10-t77", "p1"));
        assert!(!is_of("relay", "p1"));
        assert!(is_of("relay-t3", "relay"));
    }
}
