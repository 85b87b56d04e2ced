//! Which partition a topic lives in. Pure.
//!
//! The partition of a topic is FNV-1a 32 over its tokens concatenated
//! without the dots, modulo the partition count: the number nats-server's
//! `{{partition(n,1,…,k)}}` subject mapping computes over the wildcard
//! tokens of `<prefix>.in.*…*`, so operators may map raw publishes to
//! their partition on the server instead of through the relay.

use super::Topic;

/// The default `bus.partitions`.
pub const DEFAULT_PARTITIONS: u16 = 64;

/// A partition number, below the partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Partition(pub u16);

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a 32 over the tokens of `topic` joined with no separator.
fn fnv1a_tokens(topic: &str) -> u32 {
    topic
        .bytes()
        .filter(|b| *b != b'.')
        .fold(FNV_OFFSET, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
        })
}

/// The partition of a topic's text (any dot-separated subject tail).
pub fn partition_of_str(topic: &str, count: u16) -> Partition {
    Partition((fnv1a_tokens(topic) % u32::from(count.max(1))) as u16)
}

/// The partition of `topic` among `count`.
pub fn partition_of(topic: &Topic, count: u16) -> Partition {
    partition_of_str(topic.as_str(), count)
}

/// The server-side mapping that sends raw publishes on `<prefix>.in.…` to
/// their partition's subject, one rule per topic depth up to `depth`
/// (nats-server 2.9 hashes only `*` tokens, and every source wildcard
/// must appear in the destination): the `mappings` block of a
/// nats-server config file.
pub fn server_mappings(prefix: &str, count: u16, depth: usize) -> String {
    let mut out = String::from("mappings = {\n");
    for d in 1..=depth.max(1) {
        let stars = vec!["*"; d].join(".");
        let tokens: Vec<String> = (1..=d).map(|i| i.to_string()).collect();
        let wildcards: Vec<String> = (1..=d).map(|i| format!("{{{{wildcard({i})}}}}")).collect();
        out.push_str(&format!(
            "  \"{prefix}.in.{stars}\": \"{prefix}.ip.{{{{partition({count},{})}}}}.{}\"\n",
            tokens.join(","),
            wildcards.join(".")
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_what_nats_server_computes() {
        // Stored by nats-server 2.9.10 under the mapping of `server_mappings`
        // with 64 partitions.
        for (topic, p) in [
            ("chat.room.1", 39),
            ("chat.room.2", 58),
            ("orders", 44),
            ("a.b", 10),
            ("x.y.z", 32),
        ] {
            assert_eq!(partition_of_str(topic, 64), Partition(p), "{topic}");
        }
        // The nats documentation's tables.
        let three: Vec<u16> = (1..=6)
            .map(|i| partition_of_str(&format!("customerid{i}"), 3).0)
            .collect();
        assert_eq!(three, [0, 2, 1, 2, 1, 0]);
        let ten: Vec<u16> = ["1.a", "1.b", "2.b", "2.a"]
            .iter()
            .map(|t| partition_of_str(t, 10).0)
            .collect();
        assert_eq!(ten, [1, 0, 9, 2]);
    }

    #[test]
    fn one_partition_holds_everything() {
        assert_eq!(partition_of_str("any.topic", 1), Partition(0));
        assert_eq!(partition_of_str("any.topic", 0), Partition(0));
    }

    #[test]
    fn the_server_mapping_has_a_rule_per_depth() {
        let m = server_mappings("sy", 64, 2);
        assert!(m.contains("\"sy.in.*\": \"sy.ip.{{partition(64,1)}}.{{wildcard(1)}}\""));
        assert!(m.contains(
            "\"sy.in.*.*\": \"sy.ip.{{partition(64,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}\""
        ));
    }
}
