//! Durable consumers replaced on takeover: a new owner removes every
//! consumer of its slot (a predecessor's, of an earlier term) before it
//! creates its own, since a work-queue stream takes one consumer per
//! filter.

use futures_util::StreamExt;

/// Deletes the consumers of `stream` named `prefix` or `prefix-…`.
pub async fn remove_all(
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
