//! The rule table and its evaluation: pure logic, no host calls.

use serde::Deserialize;
use switchyard_sdk::{Action, ClaimValue, Subject, Topic};

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
    /// Addressing users directly (a publish's `to_users`): only rules that
    /// list it cover it.
    Direct,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Topic pattern: literal tokens, `*`, `>` (last only) and `{capture}`.
    pub topic: String,
    /// Actions covered; empty means subscribe and publish.
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

/// Most captures a pattern may have.
const MAX_CAPTURES: usize = 8;

/// A pattern token, compiled once.
#[derive(Debug)]
enum PatternToken {
    Literal(String),
    /// `*`
    One,
    /// `>`, last only.
    Rest,
    /// `{name}`: the index of the capture.
    Capture(usize),
}

/// A template part, compiled once.
#[derive(Debug)]
enum TemplatePart {
    Literal(String),
    Capture(usize),
    /// `{sub}`: the subject's user id.
    Sub,
}

/// A rule ready to evaluate without allocating.
#[derive(Debug)]
struct CompiledRule {
    pattern: Vec<PatternToken>,
    actions: Vec<RuleAction>,
    roles: Vec<String>,
    claim: Option<(String, Vec<TemplatePart>)>,
    user: Option<Vec<TemplatePart>>,
}

/// The validated, compiled rule table.
#[derive(Debug)]
pub struct RuleTable {
    default: DefaultPolicy,
    connect_roles: Vec<String>,
    rules: Vec<CompiledRule>,
}

impl AclConfig {
    /// Checks every pattern and template and compiles them.
    pub fn compile(self) -> Result<RuleTable, String> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            let (pattern, names) = compile_pattern(&rule.topic)
                .map_err(|e| format!("rules[{i}].topic = {:?}: {e}", rule.topic))?;
            let template = |t: &str| {
                compile_template(t, &names).map_err(|e| format!("rules[{i}]: template {t:?}: {e}"))
            };
            let claim = match (rule.claim, rule.claim_value) {
                (Some(c), Some(v)) => Some((c, template(&v)?)),
                (None, None) => None,
                _ => return Err(format!("rules[{i}]: `claim` and `claim_value` go together")),
            };
            let user = rule.user.as_deref().map(template).transpose()?;
            rules.push(CompiledRule {
                pattern,
                actions: rule.actions,
                roles: rule.roles,
                claim,
                user,
            });
        }
        Ok(RuleTable {
            default: self.default,
            connect_roles: self.connect_roles,
            rules,
        })
    }
}

impl RuleTable {
    /// Decides one action.
    pub fn decide(&self, subject: &Subject, action: &Action) -> Verdict {
        let (topic, kind) = match action {
            Action::Connect => return self.decide_connect(subject),
            Action::Subscribe(t) => (t, RuleAction::Subscribe),
            Action::Publish(t) => (t, RuleAction::Publish),
        };
        self.decide_on(subject, topic, kind)
    }

    /// Decides whether `subject` may address users directly on `topic`.
    pub fn decide_direct(&self, subject: &Subject, topic: &Topic) -> Verdict {
        self.decide_on(subject, topic, RuleAction::Direct)
    }

    fn decide_on(&self, subject: &Subject, topic: &Topic, kind: RuleAction) -> Verdict {
        let mut captures: [&str; MAX_CAPTURES] = [""; MAX_CAPTURES];
        for rule in &self.rules {
            let covered = if rule.actions.is_empty() {
                kind != RuleAction::Direct
            } else {
                rule.actions.contains(&kind)
            };
            if !covered {
                continue;
            }
            if match_pattern(&rule.pattern, topic, &mut captures) {
                return rule.check(subject, &captures);
            }
        }
        match self.default {
            DefaultPolicy::Allow => Verdict::Allow,
            DefaultPolicy::Deny if kind == RuleAction::Direct => Verdict::Deny(format!(
                "no rule allows addressing users directly on {}",
                topic.name
            )),
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

impl CompiledRule {
    fn check(&self, subject: &Subject, captures: &[&str]) -> Verdict {
        if !self.roles.is_empty() && !self.roles.iter().any(|r| subject.has_role(r)) {
            return Verdict::Deny(format!("needs one of the roles {:?}", self.roles));
        }
        if let Some((claim, template)) = &self.claim {
            let held = match subject.claim(claim) {
                Some(ClaimValue::Text(v)) => template_matches(template, captures, subject, v),
                Some(ClaimValue::TextList(items)) => items
                    .iter()
                    .any(|v| template_matches(template, captures, subject, v)),
                _ => false,
            };
            if !held {
                let wanted = expand(template, captures, subject);
                return Verdict::Deny(format!("claim `{claim}` does not contain {wanted:?}"));
            }
        }
        if let Some(template) = &self.user
            && !template_matches(template, captures, subject, &subject.user)
        {
            return Verdict::Deny("only its owner may use this topic".to_owned());
        }
        Verdict::Allow
    }
}

/// Compiles a pattern, returning its tokens and capture names.
fn compile_pattern(pattern: &str) -> Result<(Vec<PatternToken>, Vec<&str>), String> {
    let parts: Vec<&str> = pattern.split('.').collect();
    let mut tokens = Vec::with_capacity(parts.len());
    let mut names = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let token = match *part {
            "" => return Err("empty token".to_owned()),
            ">" if i + 1 == parts.len() => PatternToken::Rest,
            ">" => return Err("`>` may only be the last token".to_owned()),
            "*" => PatternToken::One,
            p => match p.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => {
                    if names.len() == MAX_CAPTURES {
                        return Err(format!("more than {MAX_CAPTURES} captures"));
                    }
                    names.push(name);
                    PatternToken::Capture(names.len() - 1)
                }
                None => PatternToken::Literal(p.to_owned()),
            },
        };
        tokens.push(token);
    }
    Ok((tokens, names))
}

fn compile_template(template: &str, captures: &[&str]) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            parts.push(TemplatePart::Literal(rest[..start].to_owned()));
        }
        let len = rest[start..]
            .find('}')
            .ok_or_else(|| "unclosed `{`".to_owned())?;
        let name = &rest[start + 1..start + len];
        parts.push(match captures.iter().position(|c| *c == name) {
            Some(i) => TemplatePart::Capture(i),
            None if name == "sub" => TemplatePart::Sub,
            None => return Err(format!("{{{name}}} is not captured by the topic pattern")),
        });
        rest = &rest[start + len + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// Matches `topic`, filling `captures`; no allocation.
fn match_pattern<'a>(pattern: &[PatternToken], topic: &'a Topic, captures: &mut [&'a str]) -> bool {
    let mut tokens = topic.tokens();
    for p in pattern {
        match p {
            PatternToken::Rest => return tokens.next().is_some(),
            PatternToken::One => {
                if tokens.next().is_none() {
                    return false;
                }
            }
            PatternToken::Capture(i) => match tokens.next() {
                Some(t) => captures[*i] = t,
                None => return false,
            },
            PatternToken::Literal(lit) => {
                if tokens.next() != Some(lit.as_str()) {
                    return false;
                }
            }
        }
    }
    tokens.next().is_none()
}

/// Whether `candidate` equals the expanded template; no allocation.
fn template_matches(
    parts: &[TemplatePart],
    captures: &[&str],
    subject: &Subject,
    candidate: &str,
) -> bool {
    let mut rest = candidate;
    for part in parts {
        let piece = match part {
            TemplatePart::Literal(l) => l.as_str(),
            TemplatePart::Capture(i) => captures[*i],
            TemplatePart::Sub => subject.user.as_str(),
        };
        match rest.strip_prefix(piece) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

fn expand(parts: &[TemplatePart], captures: &[&str], subject: &Subject) -> String {
    parts
        .iter()
        .map(|p| match p {
            TemplatePart::Literal(l) => l.as_str(),
            TemplatePart::Capture(i) => captures[*i],
            TemplatePart::Sub => subject.user.as_str(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, topic: &str) -> Option<Vec<String>> {
        let (p, names) = compile_pattern(pattern).expect("pattern");
        let t = Topic::new(topic);
        let mut caps = [""; MAX_CAPTURES];
        match_pattern(&p, &t, &mut caps)
            .then(|| caps[..names.len()].iter().map(|c| c.to_string()).collect())
    }

    #[test]
    fn patterns_match_like_nats_subjects() {
        assert_eq!(
            matches("chat.room.{id}", "chat.room.42"),
            Some(vec!["42".to_owned()])
        );
        assert!(matches("chat.>", "chat.room.42").is_some());
        assert!(matches("chat.*.42", "chat.room.42").is_some());
        assert!(matches("chat.*", "chat.room.42").is_none());
        assert!(matches("chat.room.42.>", "chat.room.42").is_none());
        assert!(matches("chat.room.42.x", "chat.room.42").is_none());
    }

    #[test]
    fn templates_match_and_expand_captures_and_sub() {
        let s = Subject::new("alice");
        let t = compile_template("{sub}-{id}", &["id"]).expect("template");
        assert_eq!(expand(&t, &["7"], &s), "alice-7");
        assert!(template_matches(&t, &["7"], &s, "alice-7"));
        assert!(!template_matches(&t, &["7"], &s, "alice-77"));
        assert!(!template_matches(&t, &["7"], &s, "alice-"));
    }
}
