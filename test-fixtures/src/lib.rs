//! Paths of the plugins built for wasm32-wasip2 by this crate's build script.
//! A dev-dependency of the crates whose tests load plugins.

use std::path::PathBuf;

/// The directory holding the built `.wasm` files.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("SWITCHYARD_FIXTURE_DIR"))
}

/// The `acl` example authorizer.
pub fn acl() -> PathBuf {
    dir().join("acl.wasm")
}

/// The `chat-router` example router.
pub fn chat_router() -> PathBuf {
    dir().join("chat_router.wasm")
}

/// The `redact` example transformer.
pub fn redact() -> PathBuf {
    dir().join("redact.wasm")
}

/// A plugin implementing all three interfaces that misbehaves on request.
pub fn hostile() -> PathBuf {
    dir().join("hostile.wasm")
}

/// An authorizer importing an interface the host does not provide.
pub fn hostile_import() -> PathBuf {
    dir().join("hostile_import.wasm")
}

/// A command component: the wrong world.
pub fn wrong_world() -> PathBuf {
    dir().join("wrong-world.wasm")
}
