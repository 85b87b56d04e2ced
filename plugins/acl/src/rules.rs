//! The rule table and its evaluation: pure logic, no host calls.

use serde::Deserialize;
use switchyard_sdk::{Action, Subject, Topic};

/// `[plugins.config]` of the acl plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default: DefaultPolicy,
    /// Roles required to connect; empty lets every authenticated user in.
    #[serde(default)]
    pub connect_roles: Vec<String>,
    /// Rules, first match decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The decision when no rule matches.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Allow.
    Allow,
    /// Deny.
    #[default]
    Deny,
}

/// Which topic actions a rule covers.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Subscribing.
    Subscribe,
    /// Publishing.
    Publish,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Topic pattern: literal tokens, `*`, `>` (last only) and `{capture}`.
    pub topic: String,
    /// Actions covered; empty means both.
    #[serde(default)]
    pub actions: Vec<RuleAction>,
    /// The subject needs one of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The subject's claim of this name must contain `claim_value`.
    pub claim: Option<String>,
    /// Template for the value the claim must contain.
    pub claim_value: Option<String>,
    /// Template the subject's user id must equal.
    pub user: Option<String>,
}

/// The outcome of evaluating the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied, with the reason.
    Deny(String),
}

impl AclConfig {
    /// Checks every pattern and template once, at load.
    pub fn validate(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            let captures = pattern_captures(&rule.topic)
                .map_err(|e| format!("rules[{i}].topic = {:?}: {e}", rule.topic))?;
            for template in [&rule.claim_value, &rule.user].into_iter().flatten() {
                check_template(template, &captures)
                    .map_err(|e| format!("rules[{i}]: template {template:?}: {e}"))?;
            }
            if rule.claim.is_some() != rule.claim_value.is_some() {
                return Err(format!("rules[{i}]: `claim` and `claim_value` go together"));
            }
        }
        Ok(())
    }

    /// Decides one action.
    pub fn decide(&self, subject: &Subject, action: &Action) -> Verdict {
        let (topic, kind) = match action {
            Action::Connect => return self.decide_connect(subject),
            Action::Subscribe(t) => (t, RuleAction::Subscribe),
            Action::Publish(t) => (t, RuleAction::Publish),
        };
        for rule in &self.rules {
            if !rule.actions.is_empty() && !rule.actions.contains(&kind) {
                continue;
            }
            if let Some(captures) = match_pattern(&rule.topic, topic) {
                return rule.check(subject, &captures);
            }
        }
        match self.default {
            DefaultPolicy::Allow => Verdict::Allow,
            DefaultPolicy::Deny => Verdict::Deny(format!("no rule allows {}", topic.name)),
        }
    }

    fn decide_connect(&self, subject: &Subject) -> Verdict {
        if self.connect_roles.is_empty() || self.connect_roles.iter().any(|r| subject.has_role(r)) {
            Verdict::Allow
        } else {
            Verdict::Deny(format!(
                "connecting needs one of the roles {:?}",
                self.connect_roles
            ))
        }
    }
}

impl Rule {
    fn check(&self, subject: &Subject, captures: &[(&str, &str)]) -> Verdict {
        if !self.roles.is_empty() && !self.roles.iter().any(|r| subject.has_role(r)) {
            return Verdict::Deny(format!("needs one of the roles {:?}", self.roles));
        }
        if let (Some(claim), Some(template)) = (&self.claim, &self.claim_value) {
            let wanted = expand(template, captures, subject);
            if !subject.claim(claim).is_some_and(|v| v.contains(&wanted)) {
                return Verdict::Deny(format!("claim `{claim}` does not contain {wanted:?}"));
            }
        }
        if let Some(template) = &self.user
            && expand(template, captures, subject) != subject.user
        {
            return Verdict::Deny("only its owner may use this topic".to_owned());
        }
        Verdict::Allow
    }
}

/// The capture names of a pattern, or why it is malformed.
fn pattern_captures(pattern: &str) -> Result<Vec<&str>, String> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let mut names = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        if tok.is_empty() {
            return Err("empty token".to_owned());
        }
        if *tok == ">" && i + 1 != tokens.len() {
            return Err("`>` may only be the last token".to_owned());
        }
        if let Some(name) = tok.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            names.push(name);
        }
    }
    Ok(names)
}

fn check_template(template: &str, captures: &[&str]) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| "unclosed `{`".to_owned())?;
        let name = &rest[start + 1..start + end];
        if name != "sub" && !captures.contains(&name) {
            return Err(format!("{{{name}}} is not captured by the topic pattern"));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

/// Matches `topic` against `pattern`, returning the captures.
fn match_pattern<'a>(pattern: &'a str, topic: &'a Topic) -> Option<Vec<(&'a str, &'a str)>> {
    let mut captures = Vec::new();
    let mut tokens = topic.tokens.iter();
    for p in pattern.split('.') {
        if p == ">" {
            return tokens.next().map(|_| captures);
        }
        let t = tokens.next()?;
        if let Some(name) = p.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            captures.push((name, t.as_str()));
        } else if p != "*" && p != t {
            return None;
        }
    }
    tokens.next().is_none().then_some(captures)
}

fn expand(template: &str, captures: &[(&str, &str)], subject: &Subject) -> String {
    let mut out = template.to_owned();
    for (name, value) in captures {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out.replace("{sub}", &subject.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_nats_subjects() {
        let t = Topic::new("chat.room.42");
        assert_eq!(
            match_pattern("chat.room.{id}", &t),
            Some(vec![("id", "42")])
        );
        assert!(match_pattern("chat.>", &t).is_some());
        assert!(match_pattern("chat.*.42", &t).is_some());
        assert!(match_pattern("chat.*", &t).is_none());
        assert!(match_pattern("chat.room.42.>", &t).is_none());
        assert!(match_pattern("chat.room.42.x", &t).is_none());
    }

    #[test]
    fn templates_expand_captures_and_sub() {
        let s = Subject::new("alice");
        assert_eq!(expand("{sub}-{id}", &[("id", "7")], &s), "alice-7");
    }
}
