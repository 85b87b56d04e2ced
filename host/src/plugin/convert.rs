//! Host values into component-model values. Done once per call batch.

use super::bindings::{authorizer, types};
use crate::routing::{Event, Topic};
use crate::subject::{ClaimValue, Subject};

pub(super) fn topic(t: &Topic) -> types::Topic {
    types::Topic {
        name: t.as_str().to_owned(),
    }
}

pub(super) fn subject(s: &Subject) -> types::Subject {
    types::Subject {
        id: s.id,
        user: s.user.clone(),
        session: s.session.clone(),
        roles: s.roles.clone(),
        claims: s
            .claims
            .iter()
            .map(|(name, value)| types::Claim {
                name: name.clone(),
                value: match value {
                    ClaimValue::Text(v) => types::ClaimValue::Text(v.clone()),
                    ClaimValue::Number(v) => types::ClaimValue::Number(*v),
                    ClaimValue::Boolean(v) => types::ClaimValue::Boolean(*v),
                    ClaimValue::TextList(v) => types::ClaimValue::TextList(v.clone()),
                    ClaimValue::Json(v) => types::ClaimValue::Json(v.clone()),
                },
            })
            .collect(),
    }
}

pub(super) fn event(e: &Event) -> types::Event {
    types::Event {
        id: e.id.to_string(),
        topic: topic(&e.topic),
        name: e.name.clone(),
        data: e.data.clone(),
        headers: e
            .headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        sender: e.sender.clone(),
        to_users: e.to_users.clone(),
    }
}

pub(super) fn action(a: &super::AuthAction) -> authorizer::Action {
    match a {
        super::AuthAction::Connect => authorizer::Action::Connect,
        super::AuthAction::Subscribe(t) => authorizer::Action::Subscribe(topic(t)),
        super::AuthAction::Publish(t) => authorizer::Action::Publish(topic(t)),
    }
}
