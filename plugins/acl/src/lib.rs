//! `acl`: an authorizer driven by JWT claims and a rule table.
//!
//! ```toml
//! [plugins.config]
//! default = "deny"                  # when no rule matches: "allow" or "deny"
//! connect_roles = []                # empty: every authenticated user may connect
//!
//! [[plugins.config.rules]]          # first matching rule decides
//! topic = "chat.room.{room}"        # `*`, `>` and `{capture}` tokens
//! actions = ["subscribe", "publish"]
//! claim = "rooms"                   # the claim must contain...
//! claim_value = "{room}"            # ...this (captures and {sub} expand)
//!
//! [[plugins.config.rules]]
//! topic = "admin.>"
//! roles = ["admin"]                 # any of these roles
//!
//! [[plugins.config.rules]]
//! topic = "user.{owner}"
//! actions = ["subscribe"]
//! user = "{owner}"                  # the subject must be this user
//!
//! [[plugins.config.rules]]
//! topic = "support.>"
//! actions = ["direct"]              # a publish's `to_users`: only rules
//! roles = ["support"]               # listing "direct" cover it
//! ```

mod rules;

use rules::{AclConfig, RuleTable, Verdict};
use switchyard_sdk::{Action, Config, Decision, Plugin, Subject, Topic, export_plugin};

/// The ACL plugin: its parsed rule table.
pub struct Acl {
    rules: RuleTable,
}

impl Plugin for Acl {
    fn new(config: &Config) -> Result<Self, String> {
        let config: AclConfig = config.parse()?;
        Ok(Acl {
            rules: config.compile()?,
        })
    }

    fn authorize(&self, subject: &Subject, action: &Action) -> Decision {
        match self.rules.decide(subject, action) {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny(why) => Decision::Deny(why),
        }
    }

    fn authorize_direct(&self, subject: &Subject, topic: &Topic, _users: &[String]) -> Decision {
        match self.rules.decide_direct(subject, topic) {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny(why) => Decision::Deny(why),
        }
    }
}

export_plugin!(Acl: authorizer, direct_authorizer);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::serde_json::json;

    fn acl() -> Acl {
        let config = Config::from_value(json!({
            "default": "deny",
            "rules": [
                {"topic": "chat.room.{room}", "actions": ["subscribe", "publish"],
                 "claim": "rooms", "claim_value": "{room}"},
                {"topic": "admin.>", "roles": ["admin"]},
                {"topic": "user.{owner}", "actions": ["subscribe"], "user": "{owner}"},
                {"topic": "news.*", "actions": ["subscribe"]},
                {"topic": "support.>", "actions": ["direct", "publish"], "roles": ["support"]}
            ]
        }))
        .expect("config");
        Acl::new(&config).expect("acl")
    }

    fn member(rooms: &[&str]) -> Subject {
        Subject::new("alice").with_list_claim("rooms", rooms.iter().copied())
    }

    #[test]
    fn room_members_may_subscribe_and_publish_others_may_not() {
        let acl = acl();
        let alice = member(&["42", "7"]);
        assert!(
            acl.authorize(&alice, &Action::subscribe("chat.room.42"))
                .is_allow()
        );
        assert!(
            acl.authorize(&alice, &Action::publish("chat.room.7"))
                .is_allow()
        );
        let d = acl.authorize(&alice, &Action::subscribe("chat.room.43"));
        assert!(
            matches!(d, Decision::Deny(ref why) if why.contains("rooms")),
            "{d:?}"
        );
        let nobody = Subject::new("bob");
        assert!(
            !acl.authorize(&nobody, &Action::subscribe("chat.room.42"))
                .is_allow()
        );
    }

    #[test]
    fn admin_topics_need_the_admin_role() {
        let acl = acl();
        let admin = Subject::new("root").with_role("admin");
        assert!(
            acl.authorize(&admin, &Action::publish("admin.users.ban"))
                .is_allow()
        );
        assert!(
            !acl.authorize(&member(&[]), &Action::subscribe("admin.stats"))
                .is_allow()
        );
    }

    #[test]
    fn users_may_subscribe_to_their_own_topic_only() {
        let acl = acl();
        let alice = member(&[]);
        assert!(
            acl.authorize(&alice, &Action::subscribe("user.alice"))
                .is_allow()
        );
        assert!(
            !acl.authorize(&alice, &Action::subscribe("user.bob"))
                .is_allow()
        );
        // The rule covers subscribe only: publishing falls through to the default.
        assert!(
            !acl.authorize(&alice, &Action::publish("user.alice"))
                .is_allow()
        );
    }

    #[test]
    fn unmatched_topics_follow_the_default_and_connect_is_open() {
        let acl = acl();
        let alice = member(&[]);
        assert!(
            !acl.authorize(&alice, &Action::subscribe("other.thing"))
                .is_allow()
        );
        assert!(
            acl.authorize(&alice, &Action::subscribe("news.sport"))
                .is_allow()
        );
        assert!(
            !acl.authorize(&alice, &Action::subscribe("news.sport.x"))
                .is_allow()
        );
        assert!(acl.authorize(&alice, &Action::Connect).is_allow());
    }

    #[test]
    fn only_rules_listing_direct_let_a_user_address_users() {
        let acl = acl();
        let topic = Topic::new("support.tickets");
        let agent = Subject::new("sam").with_role("support");
        let users = ["ann".to_owned()];
        assert!(acl.authorize_direct(&agent, &topic, &users).is_allow());
        assert!(
            !acl.authorize_direct(&member(&[]), &topic, &users)
                .is_allow()
        );
        // A rule without `actions` covers subscribe and publish, not direct.
        let admin = Subject::new("root").with_role("admin");
        let d = acl.authorize_direct(&admin, &Topic::new("admin.x"), &users);
        assert!(
            matches!(d, Decision::Deny(ref why) if why.contains("directly")),
            "{d:?}"
        );
    }

    #[test]
    fn connect_can_require_roles() {
        let config = Config::from_value(json!({"connect_roles": ["staff"]})).expect("config");
        let acl = Acl::new(&config).expect("acl");
        assert!(
            !acl.authorize(&Subject::new("a"), &Action::Connect)
                .is_allow()
        );
        assert!(
            acl.authorize(&Subject::new("a").with_role("staff"), &Action::Connect)
                .is_allow()
        );
    }

    #[test]
    fn bad_config_is_refused_with_the_reason() {
        let bad = Config::from_value(json!({"rules": [{"topic": "a.>.b"}]})).expect("config");
        let err = Acl::new(&bad).err().expect("refused");
        assert!(err.contains("a.>.b"), "{err}");
        let bad = Config::from_value(json!({"rules": [{"topic": "a", "actions": ["fly"]}]}))
            .expect("config");
        assert!(Acl::new(&bad).is_err());
        let bad = Config::from_value(json!({"rules": [{"topic": "a.{x}", "user": "{y}"}]}))
            .expect("config");
        let err = Acl::new(&bad).err().expect("refused");
        assert!(err.contains("{y}"), "{err}");
    }
}
