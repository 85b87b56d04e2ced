//! JWT verification with pinned algorithms: HS256 with the configured
//! secret, RS256/ES256 with the configured public keys. A token whose `alg`
//! has no configured key is refused, so `none` and HS/RS confusion fail.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Why the auth config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A PEM that does not parse.
    #[error("config key `auth.jwt_public_keys[{index}].pem`: {reason}")]
    BadKey {
        /// Which key.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// Why a token was refused. Messages are safe to show clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("the token is malformed")]
    Malformed,
    /// `alg` is not one this server accepts (including `none`).
    #[error("the token's algorithm {0} is not accepted")]
    Algorithm(String),
    /// No configured key has the token's `kid`.
    #[error("the token's key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Wrong `iss`.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// Wrong `aud`.
    #[error("the token's audience is not accepted")]
    Audience,
    /// `sub` or `exp` missing.
    #[error("the token lacks the claim `{0}`")]
    MissingClaim(String),
    /// A `sub` no user id can be: control characters would forge log lines
    /// and frame boundaries, and a huge one costs every event it rides on.
    #[error("the token's `sub` must be 1 to {MAX_SUB_BYTES} bytes without control characters")]
    BadSubject,
}

/// The longest user id (`sub`) accepted.
pub const MAX_SUB_BYTES: usize = crate::routing::published::MAX_USER_ID_BYTES;

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// `sub`.
    pub user: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Every claim.
    pub claims: Map<String, Value>,
}

struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_S: u64 = 5;

impl JwtVerifier {
    /// Builds the verifier; PEM values may be the PEM text or a file path.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.jwt_hs256_secret {
            keys.push(Key {
                alg: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for (index, k) in config.jwt_public_keys.iter().enumerate() {
            let bad = |reason: String| KeyError::BadKey { index, reason };
            let pem = if k.pem.contains("-----BEGIN") {
                k.pem.clone()
            } else {
                std::fs::read_to_string(&k.pem)
                    .map_err(|e| bad(format!("cannot read {}: {e}", k.pem)))?
            };
            let (alg, key) = match k.alg.as_str() {
                "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem.as_bytes())),
                _ => (Algorithm::ES256, DecodingKey::from_ec_pem(pem.as_bytes())),
            };
            keys.push(Key {
                alg,
                kid: k.kid.clone(),
                key: key.map_err(|e| bad(e.to_string()))?,
            });
        }
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let header = decode_header(token).map_err(|_| match raw_alg(token) {
            // A readable header with an algorithm the library does not even
            // know (`none`, say): name it.
            Some(alg) => TokenError::Algorithm(alg),
            None => TokenError::Malformed,
        })?;
        let mut candidates = self.keys.iter().filter(|k| k.alg == header.alg).peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = TokenError::UnknownKey;
        for key in candidates {
            if let (Some(want), Some(have)) = (&header.kid, &key.kid)
                && want != have
            {
                continue;
            }
            match decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return verified(data.claims),
                Err(e) => last = token_error(&e),
            }
            if last != TokenError::Signature {
                break;
            }
        }
        Err(last)
    }
}

/// The `alg` of a token's header, read without trusting anything else.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

fn verified(claims: Map<String, Value>) -> Result<VerifiedToken, TokenError> {
    let user = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TokenError::MissingClaim("sub".to_owned()))?;
    if !crate::routing::published::is_user_id(user) {
        return Err(TokenError::BadSubject);
    }
    let user = user.to_owned();
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| TokenError::MissingClaim("exp".to_owned()))?;
    Ok(VerifiedToken {
        user,
        expires_at,
        claims,
    })
}

fn token_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAudience => TokenError::Audience,
        K::InvalidSignature => TokenError::Signature,
        K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            TokenError::Algorithm("(mismatch)".to_owned())
        }
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        let config = AuthConfig {
            jwt_hs256_secret: Some(SECRET.to_owned()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..AuthConfig::default()
        };
        JwtVerifier::new(&config).expect("verifier")
    }

    fn hs256(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn a_valid_token_yields_its_claims() {
        let t = hs256(json!({"sub": "alice", "exp": now() + 60, "rooms": ["1"]}));
        let v = verifier(None, None).verify(&t).expect("valid");
        assert_eq!(v.user, "alice");
        assert_eq!(v.claims["rooms"], json!(["1"]));
    }

    #[test]
    fn time_issuer_and_audience_are_checked() {
        let v = verifier(Some("idp"), Some("gw"));
        let ok = json!({"sub": "a", "exp": now() + 60, "iss": "idp", "aud": "gw"});
        assert!(v.verify(&hs256(ok.clone())).is_ok());
        let mut expired = ok.clone();
        expired["exp"] = json!(now() - 60);
        assert_eq!(v.verify(&hs256(expired)), Err(TokenError::Expired));
        let mut early = ok.clone();
        early["nbf"] = json!(now() + 600);
        assert_eq!(v.verify(&hs256(early)), Err(TokenError::NotYetValid));
        let mut iss = ok.clone();
        iss["iss"] = json!("evil");
        assert_eq!(v.verify(&hs256(iss)), Err(TokenError::Issuer));
        let mut aud = ok;
        aud["aud"] = json!("other");
        assert_eq!(v.verify(&hs256(aud)), Err(TokenError::Audience));
        assert_eq!(
            v.verify(&hs256(json!({"sub": "a", "iss": "idp", "aud": "gw"}))),
            Err(TokenError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn a_sub_with_control_characters_or_too_long_is_refused() {
        let v = verifier(None, None);
        for sub in [
            "ann\nFORGED log line",
            "a\u{0}b",
            &"x".repeat(MAX_SUB_BYTES + 1),
        ] {
            assert_eq!(
                v.verify(&hs256(json!({"sub": sub, "exp": now() + 60}))),
                Err(TokenError::BadSubject),
                "{sub:?}"
            );
        }
        let longest = "ü".repeat(MAX_SUB_BYTES / 2);
        assert!(
            v.verify(&hs256(json!({"sub": longest, "exp": now() + 60})))
                .is_ok()
        );
    }

    #[test]
    fn alg_none_a_bad_signature_and_garbage_are_refused() {
        use base64::Engine as _;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "a", "exp": now() + 60}))
        );
        assert!(matches!(
            verifier(None, None).verify(&none),
            Err(TokenError::Algorithm(_))
        ));
        let t = hs256(json!({"sub": "a", "exp": now() + 60}));
        let tampered = format!("{}x", &t[..t.len() - 1]);
        assert!(verifier(None, None).verify(&tampered).is_err());
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-another-secret-123"),
        )
        .expect("encode");
        assert_eq!(
            verifier(None, None).verify(&other),
            Err(TokenError::Signature)
        );
        assert_eq!(
            verifier(None, None).verify("garbage"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn an_algorithm_without_a_configured_key_is_refused() {
        // Only HS256 is configured: an RS256 header must not be tried with the secret.
        use base64::Engine as _;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let rs = format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "RS256"})),
            b64(json!({"sub": "a", "exp": now() + 60}))
        );
        assert!(matches!(
            verifier(None, None).verify(&rs),
            Err(TokenError::Algorithm(_))
        ));
    }
}

#[cfg(test)]
mod public_key_tests {
    use super::*;
    use crate::config::PublicKey;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn key(name: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys");
        std::fs::read_to_string(dir.join(name)).expect("test key")
    }

    fn exp() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + 60)
            .unwrap_or(0)
    }

    fn verifier() -> JwtVerifier {
        let config = AuthConfig {
            jwt_public_keys: vec![
                PublicKey {
                    alg: "RS256".into(),
                    kid: None,
                    pem: key("rs256-public.pem"),
                },
                PublicKey {
                    alg: "ES256".into(),
                    kid: Some("ec1".into()),
                    pem: key("es256-public.pem"),
                },
            ],
            ..AuthConfig::default()
        };
        JwtVerifier::new(&config).expect("verifier")
    }

    #[test]
    fn rs256_and_es256_tokens_verify() {
        let claims = json!({"sub": "alice", "exp": exp()});
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(key("rs256-private.pem").as_bytes()).expect("rsa"),
        )
        .expect("encode");
        assert_eq!(
            verifier().verify(&rs).map(|v| v.user),
            Ok("alice".to_owned())
        );
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec1".into());
        let es = encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(key("es256-private.pem").as_bytes()).expect("ec"),
        )
        .expect("encode");
        assert_eq!(
            verifier().verify(&es).map(|v| v.user),
            Ok("alice".to_owned())
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion: HMAC keyed with the server's RSA public key.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "mallory", "exp": exp()}),
            &EncodingKey::from_secret(key("rs256-public.pem").as_bytes()),
        )
        .expect("encode");
        assert!(matches!(
            verifier().verify(&forged),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn an_unreadable_key_names_the_config_key() {
        let config = AuthConfig {
            jwt_public_keys: vec![PublicKey {
                alg: "RS256".into(),
                kid: None,
                pem: "/nonexistent.pem".into(),
            }],
            ..AuthConfig::default()
        };
        let err = JwtVerifier::new(&config)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("auth.jwt_public_keys[0].pem"), "{err}");
    }
}
