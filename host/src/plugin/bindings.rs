#![allow(missing_docs)]
//! The one `bindgen!` of the host: the `plugin` world of `wit/`, which
//! imports `host` and exports all four interfaces. A component may export
//! any subset; the host loads each interface's exports separately.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});

pub use exports::switchyard::plugin::{authorizer, direct_authorizer, router, transformer};
pub use switchyard::plugin::{host, types};
