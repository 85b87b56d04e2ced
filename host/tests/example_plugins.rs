//! The three example plugins, built for wasm32-wasip2, driven through the
//! host's plugin set exactly as the gateway drives them.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use serde_json::{Value, json};
use switchyard_host::plugin::{AuthAction, AuthDecision, Delivery, RouteOutcome};
use switchyard_host::routing::{Event, EventId, Topic};
use switchyard_host::subject::Subject;

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("topic")
}

fn subject(claims: Value) -> Subject {
    let map = claims.as_object().expect("claims").clone();
    let user = map["sub"].as_str().expect("sub").to_owned();
    Subject::from_claims(&user, "s1", &map)
}

fn event(t: &str, data: Value) -> Event {
    Event::new(
        EventId { epoch: 0xe, seq: 1 },
        topic(t),
        data.to_string().into_bytes(),
    )
}

#[test]
fn acl_decides_a_batch_from_claims_and_rules() {
    let set = load(&[spec("acl", &switchyard_fixtures::acl(), &[">"], ACL_CONFIG)]).expect("load");
    let alice = subject(json!({"sub": "alice", "rooms": ["42"], "exp": 1}));
    let actions = [
        AuthAction::Connect,
        AuthAction::Subscribe(topic("chat.room.42")),
        AuthAction::Publish(topic("chat.room.43")),
        AuthAction::Subscribe(topic("user.alice")),
        AuthAction::Subscribe(topic("user.bob")),
        AuthAction::Subscribe(topic("admin.stats")),
    ];
    let calls_before = set
        .get("acl")
        .expect("acl")
        .metrics()
        .calls
        .load(Ordering::Relaxed);
    let d = set.authorize(&alice, &actions);
    assert_eq!(d[0], AuthDecision::Allow);
    assert_eq!(d[1], AuthDecision::Allow);
    assert!(
        matches!(&d[2], AuthDecision::Deny(why) if why.contains("rooms")),
        "{:?}",
        d[2]
    );
    assert_eq!(d[3], AuthDecision::Allow);
    assert!(matches!(d[4], AuthDecision::Deny(_)));
    assert!(matches!(d[5], AuthDecision::Deny(_)));
    // The whole batch is one call.
    let calls = set
        .get("acl")
        .expect("acl")
        .metrics()
        .calls
        .load(Ordering::Relaxed);
    assert_eq!(calls - calls_before, 1);

    let admin = subject(json!({"sub": "root", "role": "admin"}));
    assert_eq!(
        set.authorize(&admin, &[AuthAction::Publish(topic("admin.ban"))]),
        [AuthDecision::Allow]
    );
}

#[test]
fn authorizers_apply_only_to_their_topics_and_all_must_allow() {
    let set = load(&[spec(
        "acl",
        &switchyard_fixtures::acl(),
        &["chat.>"],
        ACL_CONFIG,
    )])
    .expect("load");
    let bob = subject(json!({"sub": "bob"}));
    let d = set.authorize(
        &bob,
        &[
            AuthAction::Subscribe(topic("chat.room.1")),
            AuthAction::Subscribe(topic("news.x")),
        ],
    );
    assert!(matches!(d[0], AuthDecision::Deny(_)));
    assert_eq!(d[1], AuthDecision::Allow, "no authorizer covers news.x");
}

#[test]
fn chat_router_routes_rooms_mentions_and_direct_messages() {
    let set = load(&[spec(
        "chat",
        &switchyard_fixtures::chat_router(),
        &["chat.>", "dm.*"],
        "",
    )])
    .expect("load");
    let mut dm = event("dm.bob", json!({"text": "hi"}));
    dm.sender = Some("alice".into());
    let events = [
        event("chat.room.1", json!({"text": "hello"})),
        event(
            "chat.room.1",
            json!({"text": "hey @carol", "mentions": ["carol"]}),
        ),
        dm,
        event("news.today", json!({"mentions": ["x"]})),
    ];
    let out = set.route(&events);
    assert_eq!(out[0], RouteOutcome::AsPublished);
    assert_eq!(
        out[1],
        RouteOutcome::Deliver {
            topics: vec!["chat.room.1".into()],
            users: vec!["carol".into()]
        }
    );
    assert_eq!(
        out[2],
        RouteOutcome::Deliver {
            topics: vec![],
            users: vec!["bob".into(), "alice".into()]
        }
    );
    assert_eq!(
        out[3],
        RouteOutcome::AsPublished,
        "not a topic of the router"
    );
    let calls = set
        .get("chat")
        .expect("chat")
        .metrics()
        .calls
        .load(Ordering::Relaxed);
    // The probe is one call; the batch of three matching events is one more.
    assert_eq!(calls, 2);
}

#[test]
fn redact_masks_for_the_public_and_withholds_internal_events() {
    let set = load(&[spec(
        "redact",
        &switchyard_fixtures::redact(),
        &["crm.>"],
        REDACT_CONFIG,
    )])
    .expect("load");
    let public = set.audience(&subject(json!({"sub": "p"})));
    let support = set.audience(&subject(json!({"sub": "s", "roles": ["support"]})));
    let staff = set.audience(&subject(json!({"sub": "t", "role": "staff"})));
    let e = event("crm.contact", json!({"name": "Ann", "email": "ann@x.io"}));
    let out = set.transform(&e, &[&public, &support, &staff]);
    let Delivery::Changed(masked) = &out[0] else {
        panic!("public: {:?}", out[0])
    };
    let masked: Value = serde_json::from_slice(&masked.data).expect("json");
    assert_eq!(masked, json!({"name": "Ann", "email": "***"}));
    assert_eq!(out[1], Delivery::Original);
    assert!(
        matches!(out[2], Delivery::Changed(_)),
        "staff without reveal is masked too"
    );

    let internal = event("crm.audit", json!({"internal": true}));
    let out = set.transform(&internal, &[&public, &support, &staff]);
    assert_eq!(
        out,
        [Delivery::Withheld, Delivery::Withheld, Delivery::Original]
    );

    let elsewhere = event("chat.room.1", json!({"email": "x"}));
    assert!(!set.transforms(&elsewhere.topic));
    assert_eq!(set.transform(&elsewhere, &[&public]), [Delivery::Original]);
}

#[test]
fn a_broadcast_to_ten_thousand_sessions_in_two_audiences_costs_one_transform_call() {
    let set = load(&[spec(
        "redact",
        &switchyard_fixtures::redact(),
        &["crm.>"],
        REDACT_CONFIG,
    )])
    .expect("load");
    let redact = set.get("redact").expect("redact");
    // 10,000 sessions, each asked for its audience once (at connect).
    let audiences: Vec<_> = (0..10_000)
        .map(|i| {
            let roles = if i % 2 == 0 {
                json!(["support"])
            } else {
                json!([])
            };
            set.audience(&subject(json!({"sub": format!("u{i}"), "roles": roles})))
        })
        .collect();
    let mut distinct: Vec<_> = audiences.clone();
    distinct.sort_by_key(|a| format!("{a:?}"));
    distinct.dedup();
    assert_eq!(distinct.len(), 2);

    let before = redact.metrics().calls.load(Ordering::Relaxed);
    let e = event("crm.contact", json!({"email": "ann@x.io"}));
    let refs: Vec<_> = distinct.iter().collect();
    let out = set.transform(&e, &refs);
    let calls = redact.metrics().calls.load(Ordering::Relaxed) - before;
    assert_eq!(calls, 1, "one call answers both audiences");
    assert_eq!(out.len(), 2);
    assert!(out.contains(&Delivery::Original));
    assert!(out.iter().any(|d| matches!(d, Delivery::Changed(_))));
}

#[test]
fn transformers_chain_in_config_order() {
    // Two instances of redact: the first masks `email`, the second `phone`.
    let first = spec(
        "mask-email",
        &switchyard_fixtures::redact(),
        &["crm.>"],
        "fields = [\"email\"]",
    );
    let second = spec(
        "mask-phone",
        &switchyard_fixtures::redact(),
        &["crm.>"],
        "fields = [\"phone\"]",
    );
    let set = load(&[first, second]).expect("load");
    let public = set.audience(&subject(json!({"sub": "p"})));
    let e = event("crm.c", json!({"email": "a", "phone": "b", "name": "c"}));
    let out = set.transform(&e, &[&public]);
    let Delivery::Changed(changed) = &out[0] else {
        panic!("{:?}", out[0])
    };
    let v: Value = serde_json::from_slice(&changed.data).expect("json");
    assert_eq!(v, json!({"email": "***", "phone": "***", "name": "c"}));
}

#[test]
fn subjects_kept_by_an_instance_are_never_confused() {
    let mut s = spec("acl", &switchyard_fixtures::acl(), &[">"], ACL_CONFIG);
    s.max_instances = Some(1);
    let set = load(&[s]).expect("load");
    // Ids 1 and 65 share a slot (64 slots): each replaces the other.
    let alice = subject(json!({"sub": "alice", "rooms": ["42"]})).with_id(1);
    let bob = subject(json!({"sub": "bob", "rooms": []})).with_id(65);
    let carol = subject(json!({"sub": "carol", "rooms": ["42"]})).with_id(2);
    let room = [AuthAction::Subscribe(topic("chat.room.42"))];
    for _ in 0..3 {
        assert_eq!(set.authorize(&alice, &room), [AuthDecision::Allow]);
        assert!(matches!(
            set.authorize(&bob, &room)[0],
            AuthDecision::Deny(_)
        ));
        assert_eq!(set.authorize(&carol, &room), [AuthDecision::Allow]);
        assert_eq!(set.authorize(&alice, &room), [AuthDecision::Allow]);
    }
    // After a trap the instance is replaced, and the new one gets subjects in full.
    let hostile = load(&[spec("h", &switchyard_fixtures::hostile(), &[">"], "")]).expect("load");
    let who = Subject::new("u", "s").with_id(7);
    assert_eq!(
        hostile.authorize(&who, &[AuthAction::Subscribe(topic("ok"))]),
        [AuthDecision::Allow]
    );
    assert!(matches!(
        hostile.authorize(&who, &[AuthAction::Subscribe(topic("trap"))])[0],
        AuthDecision::Deny(_)
    ));
    assert_eq!(
        hostile.authorize(&who, &[AuthAction::Subscribe(topic("ok"))]),
        [AuthDecision::Allow]
    );
}
