//! The component glue: wit-bindgen bindings and their conversion to the SDK's
//! types. Plugin crates never see this module; `export_plugin!` uses it.
//!
//! One world per interface is generated, so a plugin exports exactly the
//! interfaces it lists; the shared `types` and `host` bindings are generated
//! once and reused by the others.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::{Plugin, types as sdk};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings for `authorizer-plugin`, which also own `types` and `host`.
pub mod authorizer_world {
    wit_bindgen::generate!({
        world: "authorizer-plugin",
        path: "../wit",
        runtime_path: "switchyard_sdk::glue::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_authorizer",
        default_bindings_module: "switchyard_sdk::glue::authorizer_world",
    });
}

/// Bindings for `direct-authorizer-plugin`.
pub mod direct_world {
    wit_bindgen::generate!({
        world: "direct-authorizer-plugin",
        path: "../wit",
        runtime_path: "switchyard_sdk::glue::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_direct",
        default_bindings_module: "switchyard_sdk::glue::direct_world",
        with: {
            "switchyard:plugin/types@0.1.0": crate::glue::authorizer_world::switchyard::plugin::types,
            "switchyard:plugin/host@0.1.0": crate::glue::authorizer_world::switchyard::plugin::host,
        },
    });
}

/// Bindings for `router-plugin`.
pub mod router_world {
    wit_bindgen::generate!({
        world: "router-plugin",
        path: "../wit",
        runtime_path: "switchyard_sdk::glue::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_router",
        default_bindings_module: "switchyard_sdk::glue::router_world",
        with: {
            "switchyard:plugin/types@0.1.0": crate::glue::authorizer_world::switchyard::plugin::types,
            "switchyard:plugin/host@0.1.0": crate::glue::authorizer_world::switchyard::plugin::host,
        },
    });
}

/// Bindings for `transformer-plugin`.
pub mod transformer_world {
    wit_bindgen::generate!({
        world: "transformer-plugin",
        path: "../wit",
        runtime_path: "switchyard_sdk::glue::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_transformer",
        default_bindings_module: "switchyard_sdk::glue::transformer_world",
        with: {
            "switchyard:plugin/types@0.1.0": crate::glue::authorizer_world::switchyard::plugin::types,
            "switchyard:plugin/host@0.1.0": crate::glue::authorizer_world::switchyard::plugin::host,
        },
    });
}

use authorizer_world::exports::switchyard::plugin::authorizer as wit_auth;
use authorizer_world::switchyard::plugin::{host as wit_host, types as wit};
use direct_world::exports::switchyard::plugin::direct_authorizer as wit_direct;
use router_world::exports::switchyard::plugin::router as wit_router;
use transformer_world::exports::switchyard::plugin::transformer as wit_transform;

/// The one plugin value of this instance, built on first use.
pub trait Instance: 'static {
    /// The plugin type.
    type Plugin: Plugin;
    /// The plugin value.
    fn get() -> &'static Self::Plugin;
}

/// Implements the generated `Guest` traits for the plugin behind `I`.
pub struct Glue<I>(PhantomData<I>);

/// Builds the plugin from the host's config. A failure traps: the host then
/// applies the plugin's error policy and refuses it at load.
pub fn init<P: Plugin>() -> P {
    std::panic::set_hook(Box::new(|info| {
        wit_host::log(wit_host::Level::Error, &format!("plugin panicked: {info}"));
    }));
    let built = crate::Config::from_json(&wit_host::config()).and_then(|c| P::new(&c));
    match built {
        Ok(plugin) => plugin,
        Err(e) => panic!("plugin initialisation failed: {e}"),
    }
}

pub(crate) fn log(level: crate::Level, message: &str) {
    let level = match level {
        crate::Level::Trace => wit_host::Level::Trace,
        crate::Level::Debug => wit_host::Level::Debug,
        crate::Level::Info => wit_host::Level::Info,
        crate::Level::Warn => wit_host::Level::Warn,
        crate::Level::Error => wit_host::Level::Error,
    };
    wit_host::log(level, message);
}

pub(crate) fn now_ms() -> u64 {
    wit_host::now_ms()
}

fn topic(t: wit::Topic) -> sdk::Topic {
    sdk::Topic { name: t.name }
}

/// Subject slots, mirrored by the host per instance (see `subject-ref`).
const SUBJECT_SLOTS: u64 = 64;

thread_local! {
    static SUBJECTS: RefCell<Vec<Option<(u64, Rc<sdk::Subject>)>>> =
        RefCell::new(vec![None; SUBJECT_SLOTS as usize]);
}

fn resolve(r: wit::SubjectRef) -> Rc<sdk::Subject> {
    match r {
        wit::SubjectRef::Full(s) => {
            let id = s.id;
            let converted = Rc::new(subject(s));
            if id != 0 {
                let kept = converted.clone();
                SUBJECTS.with(|t| t.borrow_mut()[(id % SUBJECT_SLOTS) as usize] = Some((id, kept)));
            }
            converted
        }
        wit::SubjectRef::Cached(id) => {
            SUBJECTS.with(|t| match &t.borrow()[(id % SUBJECT_SLOTS) as usize] {
                Some((kept, s)) if *kept == id => s.clone(),
                // The host only sends ids it knows this instance holds: a miss
                // means the two disagree, and trapping gets a fresh instance.
                _ => panic!("subject {id} is not cached in this instance"),
            })
        }
    }
}

fn subject(s: wit::Subject) -> sdk::Subject {
    sdk::Subject {
        user: s.user,
        session: s.session,
        roles: s.roles,
        claims: s
            .claims
            .into_iter()
            .map(|c| sdk::Claim {
                name: c.name,
                value: match c.value {
                    wit::ClaimValue::Text(v) => sdk::ClaimValue::Text(v),
                    wit::ClaimValue::Number(v) => sdk::ClaimValue::Number(v),
                    wit::ClaimValue::Boolean(v) => sdk::ClaimValue::Boolean(v),
                    wit::ClaimValue::TextList(v) => sdk::ClaimValue::TextList(v),
                    wit::ClaimValue::Json(v) => sdk::ClaimValue::Json(v),
                },
            })
            .collect(),
    }
}

fn event(e: wit::Event) -> sdk::Event {
    sdk::Event {
        id: e.id,
        topic: topic(e.topic),
        name: e.name,
        data: e.data,
        headers: e
            .headers
            .into_iter()
            .map(|h| sdk::Header {
                name: h.name,
                value: h.value,
            })
            .collect(),
        sender: e.sender,
        to_users: e.to_users,
    }
}

fn authorize_one<P: Plugin>(
    plugin: &P,
    s: &sdk::Subject,
    a: wit_auth::Action,
) -> wit_auth::Decision {
    let a = match a {
        wit_auth::Action::Connect => sdk::Action::Connect,
        wit_auth::Action::Subscribe(t) => sdk::Action::Subscribe(topic(t)),
        wit_auth::Action::Publish(t) => sdk::Action::Publish(topic(t)),
    };
    match plugin.authorize(s, &a) {
        sdk::Decision::Allow => wit_auth::Decision::Allow,
        sdk::Decision::Deny(why) => wit_auth::Decision::Deny(why),
    }
}

impl<I: Instance> wit_auth::Guest for Glue<I> {
    fn authorize(s: wit::SubjectRef, action: wit_auth::Action) -> wit_auth::Decision {
        authorize_one(I::get(), &resolve(s), action)
    }

    fn authorize_batch(
        s: wit::SubjectRef,
        actions: Vec<wit_auth::Action>,
    ) -> Vec<wit_auth::Decision> {
        let plugin = I::get();
        let s = resolve(s);
        actions
            .into_iter()
            .map(|a| authorize_one(plugin, &s, a))
            .collect()
    }
}

impl<I: Instance> wit_direct::Guest for Glue<I> {
    fn authorize_direct(
        s: wit::SubjectRef,
        t: wit::Topic,
        users: Vec<String>,
    ) -> Result<(), String> {
        match I::get().authorize_direct(&resolve(s), &topic(t), &users) {
            sdk::Decision::Allow => Ok(()),
            sdk::Decision::Deny(why) => Err(why),
        }
    }
}

fn route_one<P: Plugin>(plugin: &P, e: wit::Event) -> wit_router::RouteDecision {
    match plugin.route(&event(e)) {
        sdk::RouteDecision::Pass => wit_router::RouteDecision::Pass,
        sdk::RouteDecision::Drop => wit_router::RouteDecision::Drop,
        sdk::RouteDecision::Deliver(r) => wit_router::RouteDecision::Deliver(wit_router::Routing {
            topics: r.topics,
            users: r.users,
        }),
    }
}

impl<I: Instance> wit_router::Guest for Glue<I> {
    fn route(e: wit::Event) -> wit_router::RouteDecision {
        route_one(I::get(), e)
    }

    fn route_batch(events: Vec<wit::Event>) -> Vec<wit_router::RouteDecision> {
        let plugin = I::get();
        events.into_iter().map(|e| route_one(plugin, e)).collect()
    }
}

impl<I: Instance> wit_transform::Guest for Glue<I> {
    fn audience(s: wit::SubjectRef) -> String {
        I::get().audience(&resolve(s))
    }

    fn transform(e: wit::Event, audiences: Vec<String>) -> Vec<wit_transform::TransformResult> {
        I::get()
            .transform_all(&event(e), &audiences)
            .into_iter()
            .map(|r| match r {
                sdk::TransformResult::Unchanged => wit_transform::TransformResult::Unchanged,
                sdk::TransformResult::Withhold => wit_transform::TransformResult::Withhold,
                sdk::TransformResult::Replace(r) => {
                    wit_transform::TransformResult::Replace(wit_transform::Replacement {
                        data: r.data,
                        name: r.name,
                    })
                }
            })
            .collect()
    }
}
