//! The authenticated user behind a session, parsed once from the JWT claims
//! so that plugins receive it ready to use.

use serde_json::{Map, Value};

/// A decoded claim value, as plugins see it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    /// A string.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Boolean(bool),
    /// An array of strings.
    TextList(Vec<String>),
    /// Anything else, as JSON text.
    Json(String),
}

impl From<&Value> for ClaimValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::String(s) => ClaimValue::Text(s.clone()),
            Value::Bool(b) => ClaimValue::Boolean(*b),
            Value::Number(n) => n
                .as_f64()
                .map_or_else(|| ClaimValue::Json(n.to_string()), ClaimValue::Number),
            Value::Array(items) => {
                let texts: Option<Vec<String>> = items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect();
                texts.map_or_else(|| ClaimValue::Json(v.to_string()), ClaimValue::TextList)
            }
            other => ClaimValue::Json(other.to_string()),
        }
    }
}

/// Registered claims the gateway itself checks; plugins do not get them.
const REGISTERED: &[&str] = &["sub", "exp", "nbf", "iat", "iss", "aud", "jti"];

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subject {
    /// A number unique for the process's lifetime, so plugin instances can
    /// keep the subject instead of receiving it on every call; 0: not kept.
    pub id: u64,
    /// The `sub` claim.
    pub user: String,
    /// The session id.
    pub session: String,
    /// Roles from the `role` and `roles` claims.
    pub roles: Vec<String>,
    /// Every other non-registered claim.
    pub claims: Vec<(String, ClaimValue)>,
}

impl Subject {
    /// A subject with no roles or claims.
    pub fn new(user: impl Into<String>, session: impl Into<String>) -> Self {
        Subject {
            user: user.into(),
            session: session.into(),
            ..Subject::default()
        }
    }

    /// Sets the id (see [`Subject::id`]).
    pub fn with_id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// Builds the subject from a token's verified claims. `role` and `roles`
    /// become roles; registered claims are dropped; the rest are decoded.
    pub fn from_claims(user: &str, session: &str, claims: &Map<String, Value>) -> Self {
        let mut subject = Subject::new(user, session);
        for (name, value) in claims {
            match name.as_str() {
                "role" | "roles" => match value {
                    Value::String(r) => subject.roles.push(r.clone()),
                    Value::Array(items) => subject
                        .roles
                        .extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned))),
                    _ => {}
                },
                n if REGISTERED.contains(&n) => {}
                n => subject.claims.push((n.to_owned(), ClaimValue::from(value))),
            }
        }
        subject.roles.dedup();
        subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_merge_and_registered_claims_are_dropped() {
        let claims = json!({
            "sub": "alice", "exp": 1, "iss": "x",
            "role": "admin", "roles": ["staff", "ops"],
            "rooms": ["1", "2"], "tenant": "acme", "level": 3, "beta": true,
            "profile": {"a": 1}, "mixed": [1, "a"]
        });
        let s = Subject::from_claims("alice", "s1", claims.as_object().expect("object"));
        assert_eq!(s.user, "alice");
        let mut roles = s.roles.clone();
        roles.sort();
        assert_eq!(roles, ["admin", "ops", "staff"]);
        let get = |n: &str| {
            s.claims
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("rooms"),
            Some(ClaimValue::TextList(vec!["1".into(), "2".into()]))
        );
        assert_eq!(get("tenant"), Some(ClaimValue::Text("acme".into())));
        assert_eq!(get("level"), Some(ClaimValue::Number(3.0)));
        assert_eq!(get("beta"), Some(ClaimValue::Boolean(true)));
        assert_eq!(get("profile"), Some(ClaimValue::Json(r#"{"a":1}"#.into())));
        assert_eq!(get("mixed"), Some(ClaimValue::Json(r#"[1,"a"]"#.into())));
        assert!(get("exp").is_none() && get("sub").is_none() && get("role").is_none());
    }
}
