//! The subjects of one bus, derived from its prefix (pure): ingest, the
//! partitioned ingest subjects, deliveries per topic and user, beacons,
//! and the request subjects between nodes.

use base64::Engine as _;

use crate::routing::Partition;

/// The subjects of one bus, derived from its prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Where services publish events of `topic`.
    pub fn ingest(&self, topic: &str) -> String {
        format!("{}.in.{topic}", self.prefix)
    }

    /// Every raw ingest subject (what the relay reads).
    pub fn ingest_all(&self) -> String {
        format!("{}.in.>", self.prefix)
    }

    /// The ingest subject of `topic` in its partition.
    pub fn partitioned(&self, partition: Partition, topic: &str) -> String {
        format!("{}.ip.{partition}.{topic}", self.prefix)
    }

    /// Every ingest subject of `partition` (its consumer's filter).
    pub fn partition_filter(&self, partition: Partition) -> String {
        format!("{}.ip.{partition}.>", self.prefix)
    }

    /// Every partitioned ingest subject.
    pub fn partitioned_all(&self) -> String {
        format!("{}.ip.>", self.prefix)
    }

    /// Cover requests: "is everything you routed so far in the store?"
    pub fn cover(&self) -> String {
        format!("{}.cover", self.prefix)
    }

    /// Partition status queries.
    pub fn partitions(&self) -> String {
        format!("{}.partitions", self.prefix)
    }

    /// Deliveries to subscribers of `topic`.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.out.t.{topic}", self.prefix)
    }

    /// Deliveries to every session of `user`. User ids may hold any
    /// character, so they travel base64url-encoded.
    pub fn user(&self, user: &str) -> String {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user.as_bytes());
        // An empty user cannot be an empty token.
        format!(
            "{}.out.u.{}",
            self.prefix,
            if token.is_empty() { "_" } else { &token }
        )
    }

    /// Whom a delivery subject reaches.
    pub fn target(&self, subject: &str) -> Option<Target> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        if let Some(topic) = rest.strip_prefix(".out.t.") {
            return Some(Target::Topic(topic.to_owned()));
        }
        let token = rest.strip_prefix(".out.u.")?;
        if token == "_" {
            return Some(Target::User(String::new()));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        String::from_utf8(bytes).ok().map(Target::User)
    }

    /// The beacons of `partition`'s owner.
    pub fn beacon(&self, partition: Partition) -> String {
        format!("{}.beacon.{partition}", self.prefix)
    }

    /// Every partition's beacons.
    pub fn beacons_all(&self) -> String {
        format!("{}.beacon.>", self.prefix)
    }

    /// Whether `subject` is a beacon.
    pub fn is_beacon(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|r| r.starts_with(".beacon."))
    }

    /// A subject nobody answers: a request to it is a round trip through
    /// the server.
    pub fn sync(&self) -> String {
        format!("{}.sync", self.prefix)
    }

    /// Partition lag reports.
    pub fn lag(&self) -> String {
        format!("{}.lag", self.prefix)
    }

    /// Presence queries.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Session count queries.
    pub fn sessions(&self) -> String {
        format!("{}.sessions", self.prefix)
    }

    /// Node heartbeats.
    pub fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    /// The topic of an ingest subject, raw or partitioned.
    pub fn ingest_topic<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        if let Some(topic) = rest.strip_prefix(".in.") {
            return Some(topic);
        }
        let (partition, topic) = rest.strip_prefix(".ip.")?.split_once('.')?;
        partition.parse::<u16>().ok().map(|_| topic)
    }

    /// A name for JetStream objects: the prefix, upper-cased, with anything
    /// a stream name cannot hold replaced.
    pub fn stream_name(&self, suffix: &str) -> String {
        let base: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{base}_{suffix}")
    }
}

/// Whom a delivery subject reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The subscribers of a topic.
    Topic(String),
    /// Every session of a user.
    User(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("sy")
    }

    #[test]
    fn subjects_are_valid_nats_subjects() {
        let s = subjects();
        assert_eq!(s.ingest("a.b"), "sy.in.a.b");
        assert_eq!(s.ingest_topic("sy.in.a.b"), Some("a.b"));
        assert_eq!(s.ingest_topic("sy.inx.a"), None);
        assert_eq!(s.partitioned(Partition(7), "a.b"), "sy.ip.7.a.b");
        assert_eq!(s.ingest_topic("sy.ip.7.a.b"), Some("a.b"));
        assert_eq!(s.ingest_topic("sy.ip.x.a.b"), None);
        assert_eq!(s.partition_filter(Partition(3)), "sy.ip.3.>");
        let u = s.user("x.y *>");
        assert!(
            u.starts_with("sy.out.u.") && !u["sy.out.u.".len()..].contains(['.', ' ', '*', '>'])
        );
        assert_ne!(s.user("a"), s.user("b"));
        assert_eq!(s.target(&u), Some(Target::User("x.y *>".into())));
        assert_eq!(s.target(&s.user("")), Some(Target::User(String::new())));
        assert_eq!(s.target(&s.topic("a.b")), Some(Target::Topic("a.b".into())));
        assert_eq!(s.target("sy.in.a"), None);
        assert!(s.is_beacon(&s.beacon(Partition(3))) && !s.is_beacon("sy.out.t.beacon"));
        assert_eq!(Subjects::new("my.app").stream_name("IN"), "MY_APP_IN");
    }
}
