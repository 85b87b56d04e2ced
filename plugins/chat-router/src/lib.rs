//! `chat-router`: routes chat traffic.
//!
//! - a message on a room topic (`chat.room.<id>`) reaches the room's
//!   subscribers, and each user listed in its `mentions` field too;
//! - a direct message on `dm.<user>` reaches only that user and the sender;
//! - other topics pass (deliver as published).
//!
//! ```toml
//! [plugins.config]
//! room_prefix = "chat.room"   # defaults shown
//! dm_prefix = "dm"
//! mentions_field = "mentions"
//! ```

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use switchyard_sdk::{
    Config, Event, Level, Plugin, RouteDecision, Routing, Topic, export_plugin, log, serde_json,
};

/// `[plugins.config]` of chat-router.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RouterConfig {
    room_prefix: String,
    dm_prefix: String,
    mentions_field: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            room_prefix: "chat.room".to_owned(),
            dm_prefix: "dm".to_owned(),
            mentions_field: "mentions".to_owned(),
        }
    }
}

/// The chat router.
pub struct ChatRouter {
    room_prefix: Vec<String>,
    dm_prefix: Vec<String>,
    mentions_field: String,
}

/// The one token following `prefix`, when the topic is `prefix` plus one token.
fn single_token_after<'a>(topic: &'a Topic, prefix: &[String]) -> Option<&'a str> {
    let mut rest = topic.strip_prefix(prefix)?;
    let token = rest.next()?;
    rest.next().is_none().then_some(token)
}

fn tokens(prefix: &str) -> Vec<String> {
    prefix.split('.').map(str::to_owned).collect()
}

impl Plugin for ChatRouter {
    fn new(config: &Config) -> Result<Self, String> {
        let c: RouterConfig = config.parse()?;
        Ok(ChatRouter {
            room_prefix: tokens(&c.room_prefix),
            dm_prefix: tokens(&c.dm_prefix),
            mentions_field: c.mentions_field,
        })
    }

    fn route(&self, event: &Event) -> RouteDecision {
        if let Some(recipient) = single_token_after(&event.topic, &self.dm_prefix) {
            let mut users = vec![recipient.to_owned()];
            if let Some(sender) = &event.sender
                && *sender != users[0]
            {
                users.push(sender.clone());
            }
            return RouteDecision::Deliver(Routing {
                topics: Vec::new(),
                users,
            });
        }
        if single_token_after(&event.topic, &self.room_prefix).is_some() {
            let mentions = self.mentions(event);
            if mentions.is_empty() {
                return RouteDecision::Pass;
            }
            return RouteDecision::Deliver(Routing {
                topics: vec![event.topic.name.clone()],
                users: mentions,
            });
        }
        RouteDecision::Pass
    }
}

impl ChatRouter {
    /// The users named in the payload's mentions field, without duplicates.
    fn mentions(&self, event: &Event) -> Vec<String> {
        // A cheap test before parsing: most messages mention nobody.
        if !contains(&event.data, self.mentions_field.as_bytes()) {
            return Vec::new();
        }
        // Only the mentions field is decoded; the rest is skipped unparsed.
        let mut de = serde_json::Deserializer::from_slice(&event.data);
        let found = match (MentionsSeed {
            field: &self.mentions_field,
        })
        .deserialize(&mut de)
        {
            Ok(found) => found,
            Err(e) => {
                log(
                    Level::Debug,
                    &format!("event {}: no usable mentions: {e}", event.id),
                );
                return Vec::new();
            }
        };
        let mut users: Vec<String> = Vec::with_capacity(found.len());
        for user in found {
            if !users.contains(&user) {
                users.push(user);
            }
        }
        users
    }
}

/// Reads one field of a JSON object as a list of strings, skipping the rest.
struct MentionsSeed<'a> {
    field: &'a str,
}

impl<'de> DeserializeSeed<'de> for MentionsSeed<'_> {
    type Value = Vec<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MentionsSeed<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.field {
                found = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

export_plugin!(ChatRouter: router);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::serde_json::json;

    fn router() -> ChatRouter {
        ChatRouter::new(&Config::empty()).expect("router")
    }

    #[test]
    fn room_messages_go_to_the_room() {
        let e = Event::json("chat.room.42", &json!({"text": "hi"})).from_user("alice");
        assert_eq!(router().route(&e), RouteDecision::Pass);
    }

    #[test]
    fn mentions_also_reach_each_mentioned_user_once() {
        let e = Event::json(
            "chat.room.42",
            &json!({"text": "hi @bob @carol", "mentions": ["bob", "carol", "bob"]}),
        );
        let expected = Routing {
            topics: vec!["chat.room.42".into()],
            users: vec!["bob".into(), "carol".into()],
        };
        assert_eq!(router().route(&e), RouteDecision::Deliver(expected));
    }

    #[test]
    fn direct_messages_reach_only_the_recipient_and_the_sender() {
        let e = Event::json("dm.bob", &json!({"text": "psst"})).from_user("alice");
        let expected = Routing {
            topics: vec![],
            users: vec!["bob".into(), "alice".into()],
        };
        assert_eq!(router().route(&e), RouteDecision::Deliver(expected));
        // A note to self is delivered once; a service DM has no sender.
        let to_self = Event::json("dm.bob", &json!({})).from_user("bob");
        let from_service = Event::json("dm.bob", &json!({}));
        for e in [to_self, from_service] {
            let RouteDecision::Deliver(r) = router().route(&e) else {
                panic!("not delivered")
            };
            assert_eq!(r.users, ["bob"]);
        }
    }

    #[test]
    fn other_topics_and_bad_payloads_pass() {
        let r = router();
        assert_eq!(
            r.route(&Event::json("news.x", &json!({}))),
            RouteDecision::Pass
        );
        assert_eq!(
            r.route(&Event::json("dm.a.b", &json!({}))),
            RouteDecision::Pass
        );
        let garbage = Event::bytes("chat.room.1", b"mentions: not json".to_vec());
        assert_eq!(r.route(&garbage), RouteDecision::Pass);
    }

    #[test]
    fn prefixes_are_configurable() {
        let c = Config::from_value(json!({"dm_prefix": "direct.to"})).expect("config");
        let r = ChatRouter::new(&c).expect("router");
        let e = Event::json("direct.to.bob", &json!({}));
        assert!(matches!(r.route(&e), RouteDecision::Deliver(_)));
        let bad = Config::from_value(json!({"dm_prefx": "x"})).expect("config");
        assert!(ChatRouter::new(&bad).is_err());
    }
}
