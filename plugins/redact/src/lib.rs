//! `redact`: masks personal fields and withholds internal events.
//!
//! - JSON fields named in `fields` (at any depth) are replaced by `mask` for
//!   sessions holding none of `reveal_roles`;
//! - events marked internal (a top-level `"internal": true`, or the header
//!   `x-internal: true`) are withheld from sessions holding none of `staff_roles`.
//!
//! Output depends only on those two facts, so a session's audience is one of
//! four keys and a broadcast costs at most four evaluations per event.
//!
//! ```toml
//! [plugins.config]
//! fields = ["email", "phone"]
//! reveal_roles = ["support", "admin"]
//! staff_roles = ["staff", "admin"]
//! mask = "***"
//! ```

use serde::Deserialize;
use switchyard_sdk::{
    Config, Event, Plugin, Replacement, Subject, TransformResult, export_plugin, serde_json,
};

use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactConfig {
    fields: Vec<String>,
    #[serde(default)]
    reveal_roles: Vec<String>,
    #[serde(default)]
    staff_roles: Vec<String>,
    #[serde(default = "default_mask")]
    mask: String,
}

fn default_mask() -> String {
    "***".to_owned()
}

/// The redact transformer.
pub struct Redact {
    config: RedactConfig,
}

/// What a session may see, encoded in its audience key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Audience {
    reveal: bool,
    staff: bool,
}

impl Audience {
    fn key(self) -> &'static str {
        match (self.reveal, self.staff) {
            (true, true) => "reveal+staff",
            (true, false) => "reveal",
            (false, true) => "staff",
            (false, false) => "public",
        }
    }

    /// Unknown keys get the most restricted view.
    fn from_key(key: &str) -> Self {
        Audience {
            reveal: key.starts_with("reveal"),
            staff: key.ends_with("staff"),
        }
    }
}

impl Plugin for Redact {
    fn new(config: &Config) -> Result<Self, String> {
        let config: RedactConfig = config.parse()?;
        Ok(Redact { config })
    }

    fn audience(&self, subject: &Subject) -> String {
        let any = |roles: &[String]| roles.iter().any(|r| subject.has_role(r));
        Audience {
            reveal: any(&self.config.reveal_roles),
            staff: any(&self.config.staff_roles),
        }
        .key()
        .to_owned()
    }

    fn transform(&self, event: &Event, audience: &str) -> TransformResult {
        self.transform_all(event, &[audience.to_owned()])
            .pop()
            .unwrap_or(TransformResult::Withhold)
    }

    fn transform_all(&self, event: &Event, audiences: &[String]) -> Vec<TransformResult> {
        // Parse once for every audience.
        let parsed: Option<Value> = event.data_as().ok();
        let internal = event.header("x-internal") == Some("true")
            || parsed.as_ref().and_then(|v| v.get("internal")) == Some(&Value::Bool(true));
        let mut masked: Option<TransformResult> = None;
        audiences
            .iter()
            .map(|key| {
                let audience = Audience::from_key(key);
                if internal && !audience.staff {
                    return TransformResult::Withhold;
                }
                if audience.reveal {
                    return TransformResult::Unchanged;
                }
                masked
                    .get_or_insert_with(|| self.mask(parsed.as_ref()))
                    .clone()
            })
            .collect()
    }
}

impl Redact {
    fn mask(&self, parsed: Option<&Value>) -> TransformResult {
        let Some(value) = parsed else {
            return TransformResult::Unchanged;
        };
        let mut copy = value.clone();
        if !mask_fields(&mut copy, &self.config.fields, &self.config.mask) {
            return TransformResult::Unchanged;
        }
        TransformResult::Replace(Replacement {
            data: copy.to_string().into_bytes(),
            name: None,
        })
    }
}

/// Masks every field named in `fields`, at any depth; says whether any was.
fn mask_fields(value: &mut Value, fields: &[String], mask: &str) -> bool {
    let mut changed = false;
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if fields.iter().any(|f| f == key) && !v.is_null() {
                    *v = Value::String(mask.to_owned());
                    changed = true;
                } else {
                    changed |= mask_fields(v, fields, mask);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                changed |= mask_fields(v, fields, mask);
            }
        }
        _ => {}
    }
    changed
}

export_plugin!(Redact: transformer);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redact() -> Redact {
        let c = Config::from_value(json!({
            "fields": ["email", "phone"],
            "reveal_roles": ["support"],
            "staff_roles": ["staff"]
        }))
        .expect("config");
        Redact::new(&c).expect("redact")
    }

    fn data(r: &TransformResult) -> Value {
        match r {
            TransformResult::Replace(r) => serde_json::from_slice(&r.data).expect("json"),
            other => panic!("expected a replacement, got {other:?}"),
        }
    }

    #[test]
    fn audiences_come_from_roles() {
        let r = redact();
        assert_eq!(r.audience(&Subject::new("a")), "public");
        assert_eq!(
            r.audience(&Subject::new("a").with_role("support")),
            "reveal"
        );
        assert_eq!(r.audience(&Subject::new("a").with_role("staff")), "staff");
        let both = Subject::new("a").with_role("staff").with_role("support");
        assert_eq!(r.audience(&both), "reveal+staff");
    }

    #[test]
    fn fields_are_masked_at_any_depth_for_the_public() {
        let e = Event::json(
            "crm.contacts",
            &json!({"name": "Ann", "email": "a@x.io", "more": [{"phone": "123", "email": null}]}),
        );
        let out = data(&redact().transform(&e, "public"));
        assert_eq!(
            out,
            json!({"name": "Ann", "email": "***", "more": [{"phone": "***", "email": null}]})
        );
        assert_eq!(redact().transform(&e, "reveal"), TransformResult::Unchanged);
    }

    #[test]
    fn nothing_to_mask_or_not_json_is_unchanged() {
        let r = redact();
        let plain = Event::json("a", &json!({"name": "Ann"}));
        assert_eq!(r.transform(&plain, "public"), TransformResult::Unchanged);
        let bytes = Event::bytes("a", b"email=a@x.io".to_vec());
        assert_eq!(r.transform(&bytes, "public"), TransformResult::Unchanged);
    }

    #[test]
    fn internal_events_reach_staff_only() {
        let r = redact();
        let by_field = Event::json("ops", &json!({"internal": true, "email": "a@x.io"}));
        let by_header = Event::json("ops", &json!({})).with_header("X-Internal", "true");
        for e in [by_field, by_header] {
            assert_eq!(r.transform(&e, "public"), TransformResult::Withhold);
            assert_eq!(r.transform(&e, "reveal"), TransformResult::Withhold);
            assert_ne!(r.transform(&e, "staff"), TransformResult::Withhold);
        }
    }

    #[test]
    fn one_call_answers_every_audience_in_order() {
        let e = Event::json("a", &json!({"email": "a@x.io", "internal": true}));
        let keys = ["public", "reveal+staff", "staff"].map(String::from);
        let out = redact().transform_all(&e, &keys);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], TransformResult::Withhold);
        assert_eq!(out[1], TransformResult::Unchanged);
        assert_eq!(data(&out[2])["email"], "***");
    }

    #[test]
    fn config_needs_fields() {
        assert!(Redact::new(&Config::empty()).is_err());
    }
}
