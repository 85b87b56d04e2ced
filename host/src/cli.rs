//! `switchyard plugin check` and `switchyard plugin test`: inspect a
//! component and run it as the gateway would, without starting a gateway.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::plugin::wit::{authorizer, router, transformer, types};
use crate::plugin::{CallError, EngineSettings, Interface, LoadError, LoadedPlugin, PluginEngine};
use crate::routing::{Event, Topic};
use crate::subject::Subject;

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] crate::plugin::engine::EngineError),
    /// An input file is missing or malformed.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn input_error(path: &Path, message: impl fmt::Display) -> CliError {
    CliError::Input {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn engine() -> Result<Arc<PluginEngine>, CliError> {
    Ok(PluginEngine::new(EngineSettings {
        pool_instances: 8,
        ..EngineSettings::default()
    })?)
}

/// What `plugin check` found.
#[derive(Debug)]
pub struct CheckReport {
    path: PathBuf,
    sha256: String,
    bytes: u64,
    interfaces: Vec<Interface>,
    imports: Vec<String>,
    timeout_ms: u128,
    memory_mb: u32,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.as_str()).collect();
        writeln!(f, "{}: a Switchyard plugin", self.path.display())?;
        writeln!(f, "  sha256:     {}", self.sha256)?;
        writeln!(f, "  size:       {} bytes", self.bytes)?;
        writeln!(f, "  interfaces: {}", names.join(", "))?;
        writeln!(f, "  imports:")?;
        for import in &self.imports {
            let note = if import.starts_with("wasi:") {
                "  (sandboxed: no files, network or environment)"
            } else {
                ""
            };
            writeln!(f, "    {import}{note}")?;
        }
        write!(
            f,
            "  limits:     timeout_ms = {}, memory_mb = {} (defaults; set per plugin in [[plugins]])",
            self.timeout_ms, self.memory_mb
        )
    }
}

/// Compiles and checks a component: its interfaces, its imports, and that
/// the host can link it.
pub fn check(path: &Path) -> Result<CheckReport, CliError> {
    let engine = engine()?;
    let plugin = crate::plugin::set::load_single(&engine, path, "{}".to_owned())?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(CheckReport {
        path: path.to_owned(),
        sha256: plugin.sha256().to_owned(),
        bytes,
        interfaces: plugin.info().interfaces.clone(),
        imports: plugin.info().imports.clone(),
        timeout_ms: plugin.timeout().as_millis(),
        memory_mb: plugin.memory_mb(),
    })
}

/// An event file: the body of `POST /v1/publish`, plus optional metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    topic: String,
    #[serde(default)]
    data: Value,
    event: Option<String>,
    id: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    sender: Option<String>,
    #[serde(default)]
    to_users: Vec<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| input_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| input_error(path, e))
}

fn read_event(path: &Path) -> Result<Event, CliError> {
    let f: EventFile = read_json(path)?;
    let topic = Topic::parse(&f.topic).map_err(|e| input_error(path, e))?;
    let data = match f.data {
        Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let id = match f.id {
        Some(id) => crate::routing::EventId::parse(&id).ok_or_else(|| {
            input_error(
                path,
                format!("id {id:?} is not an event id (<hex epoch>-<sequence>)"),
            )
        })?,
        None => crate::routing::EventId { epoch: 0, seq: 1 },
    };
    let mut event = Event::new(id, topic, data);
    if let Some(name) = f.event {
        event.name = name;
    }
    for (k, v) in f.headers {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        event = event.with_header(&k, v);
    }
    event.sender = f.sender;
    event.to_users = f.to_users;
    Ok(event)
}

/// A subject file is a JWT claim set: `{"sub": "alice", "roles": [...], ...}`.
fn read_subject(path: Option<&Path>) -> Result<Subject, CliError> {
    let Some(path) = path else {
        return Ok(Subject::new("test-user", "test-session"));
    };
    let claims: serde_json::Map<String, Value> = read_json(path)?;
    let user = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| input_error(path, "the claim set needs a string `sub`"))?
        .to_owned();
    Ok(Subject::from_claims(&user, "test-session", &claims))
}

fn read_config(path: Option<&Path>) -> Result<String, CliError> {
    let Some(path) = path else {
        return Ok("{}".to_owned());
    };
    let text = std::fs::read_to_string(path).map_err(|e| input_error(path, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| input_error(path, e))?;
    serde_json::to_string(&table).map_err(|e| input_error(path, e))
}

/// Payload bytes as the wire shows them: JSON as JSON, else a string, else base64-free hex.
fn data_value(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| match std::str::from_utf8(data) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "encoding": "hex", "data": hex::encode(data) }),
    })
}

fn error_value(e: &CallError) -> Value {
    json!({ "kind": e.kind(), "message": e.to_string() })
}

/// Runs `file` on `event` as the host would and returns the decisions as JSON.
pub fn test(
    file: &Path,
    event: &Path,
    subject: Option<&Path>,
    config: Option<&Path>,
) -> Result<Value, CliError> {
    let event = read_event(event)?;
    let subject = read_subject(subject)?;
    let config_json = read_config(config)?;
    let engine = engine()?;
    let plugin = crate::plugin::set::load_single(&engine, file, config_json)?;
    let mut out = json!({
        "plugin": plugin.name(),
        "sha256": plugin.sha256(),
        "interfaces": plugin.info().interfaces,
    });
    for &interface in &plugin.info().interfaces {
        let result = match interface {
            Interface::Authorizer => test_authorizer(&plugin, &subject, &event),
            Interface::DirectAuthorizer => test_direct(&plugin, &subject, &event),
            Interface::Router => test_router(&plugin, &event),
            Interface::Transformer => test_transformer(&plugin, &subject, &event),
        };
        out[interface.as_str()] = result;
    }
    Ok(out)
}

fn test_authorizer(plugin: &LoadedPlugin, subject: &Subject, event: &Event) -> Value {
    let topic = types::Topic {
        name: event.topic.as_str().to_owned(),
    };
    let actions = [
        authorizer::Action::Connect,
        authorizer::Action::Subscribe(topic.clone()),
        authorizer::Action::Publish(topic),
    ];
    match plugin.authorize(&wit_subject(subject), &actions) {
        Ok(decisions) => {
            let d = |d: &authorizer::Decision| match d {
                authorizer::Decision::Allow => json!({ "decision": "allow" }),
                authorizer::Decision::Deny(why) => json!({ "decision": "deny", "reason": why }),
            };
            json!({ "connect": d(&decisions[0]), "subscribe": d(&decisions[1]), "publish": d(&decisions[2]) })
        }
        // Authorization fails closed.
        Err(e) => json!({ "decision": "deny", "error": error_value(&e) }),
    }
}

/// The event's `to_users` as the direct recipients of its publish.
fn test_direct(plugin: &LoadedPlugin, subject: &Subject, event: &Event) -> Value {
    let topic = types::Topic {
        name: event.topic.as_str().to_owned(),
    };
    match plugin.authorize_direct(&wit_subject(subject), &topic, &event.to_users) {
        Ok(Ok(())) => json!({ "decision": "allow", "users": event.to_users }),
        Ok(Err(why)) => json!({ "decision": "deny", "reason": why, "users": event.to_users }),
        Err(e) => json!({ "decision": "deny", "error": error_value(&e) }),
    }
}

fn test_router(plugin: &LoadedPlugin, event: &Event) -> Value {
    match plugin.route(std::slice::from_ref(&wit_event(event))) {
        Ok(mut d) => match d.pop() {
            Some(router::RouteDecision::Pass) => json!({ "decision": "pass" }),
            Some(router::RouteDecision::Drop) => json!({ "decision": "drop" }),
            Some(router::RouteDecision::Deliver(r)) => {
                json!({ "decision": "deliver", "topics": r.topics, "users": r.users })
            }
            None => json!({ "decision": "none" }),
        },
        Err(e) => {
            json!({ "error": error_value(&e), "note": "the host applies the plugin's on_error (drop or pass)" })
        }
    }
}

fn test_transformer(plugin: &LoadedPlugin, subject: &Subject, event: &Event) -> Value {
    let audience = match plugin.audience(&wit_subject(subject)) {
        Ok(a) => a,
        Err(e) => return json!({ "error": error_value(&e) }),
    };
    match plugin.transform(&wit_event(event), std::slice::from_ref(&audience)) {
        Ok(mut r) => {
            let result = match r.pop() {
                Some(transformer::TransformResult::Unchanged) => json!("unchanged"),
                Some(transformer::TransformResult::Withhold) => json!("withhold"),
                Some(transformer::TransformResult::Replace(rep)) => json!({
                    "replace": { "data": data_value(&rep.data), "event": rep.name.unwrap_or_else(|| event.name.clone()) }
                }),
                None => Value::Null,
            };
            json!({ "audience": audience, "result": result })
        }
        Err(e) => json!({ "audience": audience, "error": error_value(&e) }),
    }
}

fn wit_subject(s: &Subject) -> types::Subject {
    crate::plugin::set::wit_subject(s)
}

fn wit_event(e: &Event) -> types::Event {
    crate::plugin::set::wit_event(e)
}
