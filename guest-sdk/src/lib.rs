//! Write Switchyard plugins as plain Rust types.
//!
//! A plugin implements [`Plugin`] (every hook has a default) and exports the
//! interfaces it implements with [`export_plugin!`]:
//!
//! ```
//! use switchyard_sdk::{export_plugin, Action, Config, Decision, Plugin, Subject};
//!
//! struct OnlyAdmins;
//!
//! impl Plugin for OnlyAdmins {
//!     fn new(_config: &Config) -> Result<Self, String> {
//!         Ok(OnlyAdmins)
//!     }
//!     fn authorize(&self, subject: &Subject, _action: &Action) -> Decision {
//!         if subject.has_role("admin") { Decision::Allow } else { Decision::Deny("admins only".into()) }
//!     }
//! }
//!
//! export_plugin!(OnlyAdmins: authorizer);
//!
//! // Natively, the plugin is an ordinary value to test:
//! let p = OnlyAdmins::new(&Config::empty()).unwrap();
//! assert!(p.authorize(&Subject::new("a").with_role("admin"), &Action::Connect).is_allow());
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm`
//! file is the component the gateway loads.
//!
//! Instances are reused between calls, so the plugin value (built once by
//! [`Plugin::new`]) and any memory persist across calls; the host may also
//! replace an instance at any time, so never rely on state surviving.

#![cfg_attr(target_arch = "wasm32", allow(unsafe_code))]

extern crate self as switchyard_sdk;

mod config;
mod host;
mod types;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod glue;

pub use config::Config;
pub use host::{Level, log, now_ms};
pub use serde_json;
pub use types::{
    Action, Claim, ClaimValue, Decision, Event, Header, Replacement, RouteDecision, Routing,
    Subject, Topic, TransformResult,
};

/// A Switchyard plugin. Implement the hooks of the interfaces you export;
/// the others keep their defaults.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config table. Called once per instance,
    /// before the first call. An error makes every call of this instance fail
    /// (authorization then fails closed; routing and transforms follow the
    /// plugin's `on_error`), and the host refuses to load it.
    fn new(config: &Config) -> Result<Self, String>;

    /// `authorizer`: may `subject` do `action`? Authorizers matching a topic
    /// all have to allow, so the default, allow, means "no objection".
    fn authorize(&self, subject: &Subject, action: &Action) -> Decision {
        let _ = (subject, action);
        Decision::Allow
    }

    /// `direct-authorizer`: may `subject` publish on `topic` addressed to
    /// each of `users` directly (a publish's `to_users`, delivered whatever
    /// they subscribed to)? Direct-authorizers matching a topic all have to
    /// allow; with none, a user needs the `direct` scope. The default allows.
    fn authorize_direct(&self, subject: &Subject, topic: &Topic, users: &[String]) -> Decision {
        let _ = (subject, topic, users);
        Decision::Allow
    }

    /// `router`: who receives `event`. The default passes: deliver as published.
    fn route(&self, event: &Event) -> RouteDecision {
        let _ = event;
        RouteDecision::Pass
    }

    /// `transformer`: the audience key of a session, i.e. everything
    /// [`Plugin::transform`] depends on besides the event. The default puts
    /// every session in one audience.
    fn audience(&self, subject: &Subject) -> String {
        let _ = subject;
        String::new()
    }

    /// `transformer`: the event as `audience` should see it. The default
    /// leaves it unchanged.
    fn transform(&self, event: &Event, audience: &str) -> TransformResult {
        let _ = (event, audience);
        TransformResult::Unchanged
    }

    /// `transformer`: one result per audience, in order. Override it to do
    /// shared work (parsing the payload, say) once for all audiences.
    fn transform_all(&self, event: &Event, audiences: &[String]) -> Vec<TransformResult> {
        audiences.iter().map(|a| self.transform(event, a)).collect()
    }
}

/// Exports a [`Plugin`] type as a component implementing the listed
/// interfaces (`authorizer`, `direct_authorizer`, `router`, `transformer`):
///
/// ```ignore
/// switchyard_sdk::export_plugin!(MyRouter: router, transformer);
/// ```
///
/// On native targets it only checks that the type is a [`Plugin`], so the
/// crate builds and tests natively.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty : $($iface:ident),+ $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SwitchyardInstance;
            impl $crate::glue::Instance for __SwitchyardInstance {
                type Plugin = $ty;
                fn get() -> &'static $ty {
                    static PLUGIN: ::std::sync::OnceLock<$ty> = ::std::sync::OnceLock::new();
                    PLUGIN.get_or_init($crate::glue::init::<$ty>)
                }
            }
            type __SwitchyardGlue = $crate::glue::Glue<__SwitchyardInstance>;
            $( $crate::__switchyard_export_interface!($iface, __SwitchyardGlue); )+
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __switchyard_is_plugin<T: $crate::Plugin>() {}
            let _ = __switchyard_is_plugin::<$ty>;
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __switchyard_export_interface {
    (authorizer, $glue:ident) => {
        $crate::glue::authorizer_world::__export_authorizer!($glue with_types_in $crate::glue::authorizer_world);
    };
    (direct_authorizer, $glue:ident) => {
        $crate::glue::direct_world::__export_direct!($glue with_types_in $crate::glue::direct_world);
    };
    (router, $glue:ident) => {
        $crate::glue::router_world::__export_router!($glue with_types_in $crate::glue::router_world);
    };
    (transformer, $glue:ident) => {
        $crate::glue::transformer_world::__export_transformer!($glue with_types_in $crate::glue::transformer_world);
    };
    ($other:ident, $glue:ident) => {
        compile_error!(concat!(
            "unknown Switchyard interface `",
            stringify!($other),
            "`: expected authorizer, direct_authorizer, router or transformer"
        ));
    };
}
