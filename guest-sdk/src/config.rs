//! The plugin's config table (`[plugins.config]` in the gateway's TOML).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A plugin's config table, as the host hands it over (a JSON object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    table: Map<String, Value>,
}

impl Config {
    /// An empty table.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A table from a JSON value; anything but an object is refused.
    pub fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Object(table) => Ok(Self { table }),
            other => Err(format!("plugin config must be a table, not {other}")),
        }
    }

    /// A table from JSON text, as the host passes it.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("plugin config is not JSON: {e}"))?;
        Self::from_value(value)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.table.get(key)
    }

    /// The whole table deserialized into the plugin's own config type, with
    /// an error that names what is wrong.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(Value::Object(self.table.clone()))
            .map_err(|e| format!("invalid plugin config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        fields: Vec<String>,
    }

    #[test]
    fn parses_into_a_typed_config_and_names_errors() {
        let c = Config::from_json(r#"{"fields":["email"]}"#).expect("config");
        let r: Rules = c.parse().expect("rules");
        assert_eq!(r.fields, ["email"]);

        let bad = Config::from_json(r#"{"fieldz":[]}"#).expect("config");
        let err = bad.parse::<Rules>().expect_err("unknown key");
        assert!(err.contains("fieldz"), "{err}");
        assert!(Config::from_json("[1]").is_err());
    }
}
