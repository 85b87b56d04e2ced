//! The values a plugin receives and returns, mirroring `wit/plugin.wit`.
//!
//! These are plain Rust types: a plugin author builds them directly in native
//! unit tests (see the builder methods), and the export glue converts the
//! component-model values into them without copying payloads.

use serde::de::DeserializeOwned;

/// A topic such as `chat.room.42` (validated by the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The full topic.
    pub name: String,
}

impl Topic {
    /// A topic from its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The tokens, split on `.` without allocating.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.name.split('.')
    }

    /// The `i`-th token, if there is one.
    pub fn token(&self, i: usize) -> Option<&str> {
        self.tokens().nth(i)
    }

    /// The tokens after `prefix` (given as tokens), if the topic starts with it.
    pub fn strip_prefix<'a>(&'a self, prefix: &[String]) -> Option<std::str::Split<'a, char>> {
        let mut tokens = self.tokens();
        for p in prefix {
            if tokens.next() != Some(p.as_str()) {
                return None;
            }
        }
        Some(tokens)
    }
}

/// The value of one JWT claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    /// A JSON string.
    Text(String),
    /// A JSON number.
    Number(f64),
    /// A JSON boolean.
    Boolean(bool),
    /// A JSON array of strings.
    TextList(Vec<String>),
    /// Anything else, as JSON text.
    Json(String),
}

impl ClaimValue {
    /// The value as a string, when it is one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ClaimValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the value is `item` or a list containing `item`.
    pub fn contains(&self, item: &str) -> bool {
        match self {
            ClaimValue::Text(s) => s == item,
            ClaimValue::TextList(items) => items.iter().any(|i| i == item),
            _ => false,
        }
    }
}

/// One JWT claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The claim's name.
    pub name: String,
    /// Its value.
    pub value: ClaimValue,
}

/// The authenticated user behind a session.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subject {
    /// The user id (`sub`).
    pub user: String,
    /// The session id.
    pub session: String,
    /// Roles from the `role` and `roles` claims.
    pub roles: Vec<String>,
    /// The other claims of the token.
    pub claims: Vec<Claim>,
}

impl Subject {
    /// A subject for `user`, with session id `test-session`.
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            session: "test-session".to_owned(),
            ..Self::default()
        }
    }

    /// Adds a role.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds a claim.
    pub fn with_claim(mut self, name: impl Into<String>, value: ClaimValue) -> Self {
        self.claims.push(Claim {
            name: name.into(),
            value,
        });
        self
    }

    /// Adds a string-list claim.
    pub fn with_list_claim<I, S>(self, name: impl Into<String>, items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list = items.into_iter().map(Into::into).collect();
        self.with_claim(name, ClaimValue::TextList(list))
    }

    /// The claim called `name`, if present.
    pub fn claim(&self, name: &str) -> Option<&ClaimValue> {
        self.claims
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.value)
    }

    /// Whether the subject holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// One header; names are lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Lower-case name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// An event flowing through the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The id assigned at ingest.
    pub id: String,
    /// The topic it was published to.
    pub topic: Topic,
    /// The event name (default `message`).
    pub name: String,
    /// The payload, usually JSON.
    pub data: Vec<u8>,
    /// Headers with lower-case names.
    pub headers: Vec<Header>,
    /// The publishing user, if a client published it.
    pub sender: Option<String>,
    /// Users addressed directly.
    pub to_users: Vec<String>,
}

impl Event {
    /// An event named `message` on `topic` whose data is `data` serialized as JSON.
    pub fn json(topic: &str, data: &serde_json::Value) -> Self {
        Self::bytes(topic, data.to_string().into_bytes())
    }

    /// An event named `message` on `topic` carrying `data` as it is.
    pub fn bytes(topic: &str, data: Vec<u8>) -> Self {
        Self {
            id: "test-event".to_owned(),
            topic: Topic::new(topic),
            name: "message".to_owned(),
            data,
            headers: Vec::new(),
            sender: None,
            to_users: Vec::new(),
        }
    }

    /// Sets the sender.
    pub fn from_user(mut self, sender: impl Into<String>) -> Self {
        self.sender = Some(sender.into());
        self
    }

    /// Adds a header (the name is lower-cased, as the host does).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        });
        self
    }

    /// The value of header `name` (give it lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// The payload parsed as JSON into `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// What a subject wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a session.
    Connect,
    /// Subscribe to a topic.
    Subscribe(Topic),
    /// Publish to a topic.
    Publish(Topic),
}

impl Action {
    /// Subscribe to the topic called `name`.
    pub fn subscribe(name: &str) -> Self {
        Action::Subscribe(Topic::new(name))
    }

    /// Publish to the topic called `name`.
    pub fn publish(name: &str) -> Self {
        Action::Publish(Topic::new(name))
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused, with the reason shown to the client.
    Deny(String),
}

impl Decision {
    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    /// Deliver to the subscribers of these topics.
    pub topics: Vec<String>,
    /// Deliver to every session (or the inbox) of these users.
    pub users: Vec<String>,
}

/// A routing decision for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// No opinion: deliver as published, or let the next router decide.
    Pass,
    /// Deliver exactly here.
    Deliver(Routing),
    /// Deliver nowhere.
    Drop,
}

/// A changed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The new payload.
    pub data: Vec<u8>,
    /// A new event name, or `None` to keep it.
    pub name: Option<String>,
}

/// A transform's answer for one audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformResult {
    /// Deliver as it is.
    Unchanged,
    /// Deliver this instead.
    Replace(Replacement),
    /// Do not deliver to this audience.
    Withhold,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_tokens_are_split_on_dots() {
        let t = Topic::new("chat.room.42");
        assert_eq!(t.tokens().collect::<Vec<_>>(), ["chat", "room", "42"]);
        assert_eq!(t.token(2), Some("42"));
        assert_eq!(t.token(3), None);
        let prefix = ["chat".to_owned(), "room".to_owned()];
        assert_eq!(
            t.strip_prefix(&prefix).map(|r| r.collect::<Vec<_>>()),
            Some(vec!["42"])
        );
        assert!(t.strip_prefix(&["news".to_owned()]).is_none());
    }

    #[test]
    fn claims_and_roles_are_found() {
        let s = Subject::new("alice")
            .with_role("admin")
            .with_list_claim("rooms", ["1", "2"]);
        assert!(s.has_role("admin"));
        assert!(!s.has_role("staff"));
        assert!(s.claim("rooms").is_some_and(|c| c.contains("2")));
        assert!(s.claim("missing").is_none());
    }

    #[test]
    fn event_headers_are_lower_cased_and_json_parses() {
        let e = Event::json("a.b", &serde_json::json!({"x": 1})).with_header("X-Kind", "k");
        assert_eq!(e.header("x-kind"), Some("k"));
        let v: serde_json::Value = e.data_as().expect("json");
        assert_eq!(v["x"], 1);
    }
}
