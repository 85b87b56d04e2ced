//! The four plugin interfaces and how a component is recognised as a plugin.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::LoadError;

/// A Switchyard plugin interface.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// Decides connect, subscribe and publish.
    Authorizer,
    /// Decides a publish's direct recipients (`to_users`).
    #[serde(rename = "direct-authorizer")]
    DirectAuthorizer,
    /// Decides recipients.
    Router,
    /// Changes events per audience.
    Transformer,
}

impl Interface {
    /// All interfaces.
    pub const ALL: [Interface; 4] = [
        Interface::Authorizer,
        Interface::DirectAuthorizer,
        Interface::Router,
        Interface::Transformer,
    ];

    /// The lower-case name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Authorizer => "authorizer",
            Interface::DirectAuthorizer => "direct-authorizer",
            Interface::Router => "router",
            Interface::Transformer => "transformer",
        }
    }

    /// The export's name in a component.
    pub fn export_name(self) -> &'static str {
        match self {
            Interface::Authorizer => "switchyard:plugin/authorizer@0.1.0",
            Interface::DirectAuthorizer => "switchyard:plugin/direct-authorizer@0.1.0",
            Interface::Router => "switchyard:plugin/router@0.1.0",
            Interface::Transformer => "switchyard:plugin/transformer@0.1.0",
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Interface::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| {
                format!("unknown interface {s:?}: expected authorizer, direct-authorizer, router or transformer")
            })
    }
}

/// What a component imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The Switchyard interfaces it exports.
    pub interfaces: Vec<Interface>,
    /// Every import name.
    pub imports: Vec<String>,
    /// Every export name.
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// Reads a compiled component's type.
    pub fn of(engine: &Engine, component: &Component) -> Self {
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let interfaces = Interface::ALL
            .into_iter()
            .filter(|i| exports.iter().any(|e| e == i.export_name()))
            .collect();
        ComponentInfo {
            interfaces,
            imports,
            exports,
        }
    }

    /// Refuses a component that implements no interface, or that imports
    /// something outside what the host offers. The linker has the last word
    /// (an unsupported WASI version fails there); this gives the clear message.
    pub fn check(&self, path: &Path) -> Result<(), LoadError> {
        if self.interfaces.is_empty() {
            return Err(LoadError::WrongWorld {
                path: path.to_owned(),
                exports: self.exports.join(", "),
            });
        }
        if let Some(bad) = self.imports.iter().find(|i| !import_allowed(i)) {
            return Err(LoadError::UnknownImport {
                path: path.to_owned(),
                import: bad.clone(),
            });
        }
        Ok(())
    }
}

/// Imports the host may satisfy: its own interfaces and WASI 0.2.
fn import_allowed(name: &str) -> bool {
    name.starts_with("switchyard:plugin/") || (name.starts_with("wasi:") && name.contains("@0.2."))
}

/// Refuses, with a useful message, bytes that are not a component.
pub fn check_wasm_kind(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            path: path.to_owned(),
        });
    }
    // Core modules have layer 0 in bytes 6..8; components layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_parse_from_config_names() {
        assert_eq!("router".parse::<Interface>(), Ok(Interface::Router));
        assert_eq!(
            "direct-authorizer".parse::<Interface>(),
            Ok(Interface::DirectAuthorizer)
        );
        assert!("routers".parse::<Interface>().is_err());
    }

    #[test]
    fn only_host_and_wasi_02_imports_are_allowed() {
        assert!(import_allowed("switchyard:plugin/host@0.1.0"));
        assert!(import_allowed("wasi:io/streams@0.2.6"));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.3.0"));
        assert!(!import_allowed("evil:net/socket"));
    }

    #[test]
    fn file_kinds_are_told_apart() {
        let p = Path::new("x.wasm");
        assert!(matches!(
            check_wasm_kind(p, b"hello world"),
            Err(LoadError::NotWasm { .. })
        ));
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(
            check_wasm_kind(p, core),
            Err(LoadError::CoreModule { .. })
        ));
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_wasm_kind(p, component).is_ok());
    }
}
