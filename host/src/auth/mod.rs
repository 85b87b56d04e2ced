//! Who is calling: JWTs (header or single-use ticket) for clients, service
//! keys for services, the admin token for `/admin`.

pub mod jwt;
pub mod ticket;

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::subject::Subject;
pub use jwt::{JwtVerifier, KeyError, TokenError, VerifiedToken};
pub use ticket::TicketStore;

/// An authenticated client.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The subject plugins see (its session is set when a session opens).
    pub subject: Subject,
    /// Token expiry, seconds since the epoch: the session closes then.
    pub expires_at: u64,
    /// The token's claims.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// Whether the token grants `scope` (claim `scope`, space-separated, or `scopes`).
    pub fn has_scope(&self, scope: &str) -> bool {
        let in_str = |v: &Value| v.as_str().is_some_and(|s| s.split(' ').any(|x| x == scope));
        let in_list = |v: &Value| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(scope)))
        };
        self.claims.get("scope").is_some_and(in_str)
            || self.claims.get("scopes").is_some_and(in_list)
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error("authentication required: send `Authorization: Bearer <jwt>` or `?ticket=`")]
    Missing,
    /// A bad token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// An unknown, used or expired ticket.
    #[error("the ticket is unknown, used or expired")]
    Ticket,
}

/// Verifies every kind of credential the gateway accepts.
pub struct Authenticator {
    jwt: JwtVerifier,
    tickets: TicketStore,
    service_keys: Vec<String>,
    admin_token: Option<String>,
}

impl Authenticator {
    /// From `[auth]`.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        Ok(Authenticator {
            jwt: JwtVerifier::new(config)?,
            tickets: TicketStore::new(Duration::from_secs(config.ticket_ttl_s)),
            service_keys: config.service_keys.clone(),
            admin_token: config.admin_token.clone(),
        })
    }

    /// Verifies a JWT.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let v = self.jwt.verify(token)?;
        Ok(Identity {
            subject: Subject::from_claims(&v.user, "", &v.claims),
            expires_at: v.expires_at,
            claims: v.claims,
        })
    }

    /// A client from a bearer token, or else a ticket.
    pub fn identify(
        &self,
        bearer: Option<&str>,
        ticket: Option<&str>,
    ) -> Result<Identity, AuthError> {
        match (bearer, ticket) {
            (Some(token), _) => self.verify_token(token),
            (None, Some(ticket)) => self
                .tickets
                .redeem(ticket, Instant::now())
                .ok_or(AuthError::Ticket),
            (None, None) => Err(AuthError::Missing),
        }
    }

    /// Issues a single-use ticket for `identity`.
    pub fn issue_ticket(&self, identity: Identity) -> Option<String> {
        self.tickets.issue(identity, Instant::now())
    }

    /// How long tickets live.
    pub fn ticket_ttl(&self) -> Duration {
        self.tickets.ttl()
    }

    /// Whether `key` is a configured service key.
    pub fn is_service_key(&self, key: &str) -> bool {
        self.service_keys
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
    }

    /// Whether `token` is the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }
}

/// Compares secrets without leaking through timing where they differ, nor
/// how long the secret is: both are hashed to digests of one length first.
fn constant_time_eq(secret: &[u8], guess: &[u8]) -> bool {
    use sha2::Digest as _;
    let (a, b) = (sha2::Sha256::digest(secret), sha2::Sha256::digest(guess));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_compare_whatever_the_guess_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        for guess in [
            &b""[..],
            b"s",
            b"s3cre",
            b"s3creT",
            b"s3cret!",
            b"s3crets3cret",
        ] {
            assert!(!constant_time_eq(b"s3cret", guess), "{guess:?}");
        }
    }

    #[test]
    fn bearer_headers_parse() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn scopes_come_from_scope_or_scopes() {
        let id = |claims: Value| Identity {
            subject: Subject::new("a", ""),
            expires_at: 0,
            claims: claims.as_object().cloned().unwrap_or_default(),
        };
        assert!(id(json!({"scope": "read publish"})).has_scope("publish"));
        assert!(id(json!({"scopes": ["publish"]})).has_scope("publish"));
        assert!(!id(json!({"scope": "publisher"})).has_scope("publish"));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
