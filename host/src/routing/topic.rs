//! Topics (`chat.room.42`) and patterns (`chat.*.42`, `chat.>`), with NATS
//! subject semantics so that a topic maps onto a subject unchanged.

use std::fmt;

/// Why a topic or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Nothing at all.
    #[error("a topic cannot be empty")]
    Empty,
    /// `a..b`, `.a` or `a.`.
    #[error("topic {0:?} has an empty token")]
    EmptyToken(String),
    /// Whitespace or a character NATS reserves.
    #[error("topic {0:?} contains a space, a control character or a reserved character")]
    BadCharacter(String),
    /// `*` or `>` in a topic, where only patterns may have them.
    #[error("topic {0:?} contains a wildcard; wildcards are only allowed in patterns")]
    Wildcard(String),
    /// `>` before the last token, or a wildcard mixed into a token.
    #[error("pattern {0:?} misuses a wildcard: `*` must be a whole token and `>` the last one")]
    MisplacedWildcard(String),
    /// Longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
}

/// The longest topic accepted.
pub const MAX_TOPIC_BYTES: usize = 256;

fn check_tokens(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::BadCharacter(s.to_owned()));
    }
    if s.split('.').any(str::is_empty) {
        return Err(TopicError::EmptyToken(s.to_owned()));
    }
    Ok(())
}

/// A validated concrete topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Validates `s` as a concrete topic (no wildcards).
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_tokens(s)?;
        if s.split('.').any(|t| t.contains('*') || t.contains('>')) {
            return Err(TopicError::Wildcard(s.to_owned()));
        }
        Ok(Topic(s.to_owned()))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternToken {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more remaining tokens.
    Rest,
}

/// A topic pattern: literal tokens, `*` (one token) and a final `>` (the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    source: String,
    tokens: Vec<PatternToken>,
}

impl TopicPattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_tokens(s)?;
        let parts: Vec<&str> = s.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => PatternToken::One,
                ">" if i + 1 == parts.len() => PatternToken::Rest,
                p if p.contains('*') || p.contains('>') => {
                    return Err(TopicError::MisplacedWildcard(s.to_owned()));
                }
                p => PatternToken::Literal(p.to_owned()),
            };
            tokens.push(token);
        }
        Ok(TopicPattern {
            source: s.to_owned(),
            tokens,
        })
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match token {
                PatternToken::Rest => return parts.next().is_some(),
                PatternToken::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).expect("pattern")
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(p("chat.room.42").matches("chat.room.42"));
        assert!(!p("chat.room.42").matches("chat.room.43"));
        assert!(!p("chat.room").matches("chat.room.42"));
        assert!(!p("chat.room.42").matches("chat.room"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(p("chat.*.42").matches("chat.room.42"));
        assert!(!p("chat.*").matches("chat.room.42"));
        assert!(!p("chat.*").matches("chat"));
    }

    #[test]
    fn gt_matches_one_or_more_remaining_tokens() {
        assert!(p("chat.>").matches("chat.room"));
        assert!(p("chat.>").matches("chat.room.42"));
        assert!(!p("chat.>").matches("chat"));
        assert!(p(">").matches("anything.at.all"));
    }

    #[test]
    fn malformed_patterns_and_topics_are_refused() {
        assert_eq!(
            TopicPattern::parse("a.>.b"),
            Err(TopicError::MisplacedWildcard("a.>.b".into()))
        );
        assert!(TopicPattern::parse("a.b*").is_err());
        assert!(TopicPattern::parse("a..b").is_err());
        assert!(TopicPattern::parse("").is_err());
        assert_eq!(Topic::parse("a.*"), Err(TopicError::Wildcard("a.*".into())));
        assert!(Topic::parse("a b").is_err());
        assert!(Topic::parse(".a").is_err());
        assert!(Topic::parse(&"a".repeat(300)).is_err());
        assert_eq!(Topic::parse("a.b").map(|t| t.tokens().count()), Ok(2));
    }
}
