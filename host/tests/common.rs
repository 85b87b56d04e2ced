//! Shared by the plugin runtime tests: one engine and compile cache per test binary.

#![allow(dead_code, missing_docs)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use switchyard_host::config::{OnError, PluginSpec};
use switchyard_host::plugin::{
    CompileCache, EngineSettings, Interface, LoadError, PluginEngine, PluginSet,
};

pub fn engine() -> Arc<PluginEngine> {
    static ENGINE: OnceLock<Arc<PluginEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| PluginEngine::new(EngineSettings::default()).expect("engine"))
        .clone()
}

pub fn cache() -> &'static CompileCache {
    static CACHE: OnceLock<(tempfile::TempDir, CompileCache)> = OnceLock::new();
    &CACHE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let cache = CompileCache::new(dir.path());
            (dir, cache)
        })
        .1
}

pub fn spec(name: &str, path: &Path, topics: &[&str], config: &str) -> PluginSpec {
    PluginSpec {
        name: name.to_owned(),
        path: path.to_owned(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        interfaces: Vec::new(),
        timeout_ms: 10,
        memory_mb: 16,
        on_error: OnError::Drop,
        max_instances: None,
        config: toml::from_str(config).expect("plugin config"),
    }
}

pub fn with_interfaces(mut spec: PluginSpec, interfaces: &[Interface]) -> PluginSpec {
    spec.interfaces = interfaces.to_vec();
    spec
}

pub fn load(specs: &[PluginSpec]) -> Result<PluginSet, LoadError> {
    PluginSet::load(&engine(), Some(cache()), specs, 4)
}

pub const ACL_CONFIG: &str = r#"
default = "deny"
rules = [
  { topic = "chat.room.{room}", actions = ["subscribe", "publish"], claim = "rooms", claim_value = "{room}" },
  { topic = "admin.>", roles = ["admin"] },
  { topic = "user.{owner}", actions = ["subscribe"], user = "{owner}" },
]
"#;

pub const REDACT_CONFIG: &str = r#"
fields = ["email", "phone"]
reveal_roles = ["support"]
staff_roles = ["staff"]
"#;
