//! The ordered set of loaded plugins and the gateway-facing decisions:
//! authorization (fails closed), routing and per-audience transforms (each
//! following the plugin's `on_error`).
//!
//! Plugins apply to the topics their config lists, in config order:
//! - every matching authorizer must allow (connect asks every authorizer),
//!   and every matching direct-authorizer a publish's direct recipients;
//! - the first matching router that does not pass decides;
//! - matching transformers run one after the other, each on the output of
//!   the previous, once per distinct (variant, audience key), never per session.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod direct;

use super::bindings::{authorizer, router, transformer};
use super::cache::CompileCache;
use super::convert;
use super::engine::PluginEngine;
use super::error::{CallError, LoadError};
use super::interface::Interface;
use super::loaded::{LoadOptions, LoadedPlugin};
use crate::config::{OnError, PluginSpec};
use crate::routing::{Event, Topic, TopicPattern};
use crate::subject::Subject;

/// Something a subject wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAction {
    /// Open a session.
    Connect,
    /// Subscribe to a topic.
    Subscribe(Topic),
    /// Publish to a topic.
    Publish(Topic),
}

impl AuthAction {
    fn topic(&self) -> Option<&Topic> {
        match self {
            AuthAction::Connect => None,
            AuthAction::Subscribe(t) | AuthAction::Publish(t) => Some(t),
        }
    }
}

/// The answer for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Allowed.
    Allow,
    /// Refused: the reason is safe to show the client.
    Deny(String),
}

/// The reason shown when an authorizer failed: details go to the log only.
pub const AUTHORIZER_FAILED: &str = "authorization is unavailable";

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// As published: its topic's subscribers and its `to_users`.
    AsPublished,
    /// To the subscribers of these topics and to these users.
    Deliver {
        /// Topics.
        topics: Vec<String>,
        /// Users.
        users: Vec<String>,
    },
    /// Nowhere.
    Drop,
}

/// A session's audience key for each transformer of the set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Audience {
    keys: Vec<AudienceKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AudienceKey {
    Key(String),
    /// The audience call failed and the plugin's `on_error` is `drop`.
    Withhold,
}

/// What one audience receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The event as ingested (serialize it once, share it).
    Original,
    /// A changed event, shared by every session of this audience.
    Changed(Arc<Event>),
    /// Nothing.
    Withheld,
}

struct Entry {
    plugin: Arc<LoadedPlugin>,
    topics: Vec<TopicPattern>,
    interfaces: Vec<Interface>,
    on_error: OnError,
}

impl Entry {
    fn applies(&self, interface: Interface, topic: Option<&Topic>) -> bool {
        self.interfaces.contains(&interface)
            && topic.is_none_or(|t| self.topics.iter().any(|p| p.matches(t.as_str())))
    }
}

/// The plugins of one config, loaded and probed.
#[derive(Default)]
pub struct PluginSet {
    entries: Vec<Entry>,
    generation: u64,
}

impl PluginSet {
    /// Loads, checks and probes every plugin of `specs`; all or nothing.
    pub fn load(
        engine: &PluginEngine,
        cache: Option<&CompileCache>,
        specs: &[PluginSpec],
        default_instances: usize,
    ) -> Result<PluginSet, LoadError> {
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            let opts = LoadOptions {
                name: spec.name.clone(),
                path: spec.path.clone(),
                config_json: spec.config_json(),
                timeout: Duration::from_millis(spec.timeout_ms),
                memory_mb: spec.memory_mb,
                max_instances: spec.max_instances.unwrap_or(default_instances),
            };
            let plugin = LoadedPlugin::load(engine, cache, opts)?;
            let interfaces = if spec.interfaces.is_empty() {
                plugin.info().interfaces.clone()
            } else {
                spec.interfaces.clone()
            };
            if let Some(&missing) = interfaces
                .iter()
                .find(|i| !plugin.info().interfaces.contains(i))
            {
                return Err(LoadError::MissingInterface {
                    name: spec.name.clone(),
                    interface: missing,
                });
            }
            plugin.probe(&interfaces)?;
            tracing::info!(
                plugin = %spec.name,
                path = %spec.path.display(),
                sha256 = plugin.sha256(),
                interfaces = ?interfaces,
                topics = ?spec.topics,
                "plugin loaded"
            );
            entries.push(Entry {
                plugin: Arc::new(plugin),
                topics: spec.patterns(),
                interfaces,
                on_error: spec.on_error,
            });
        }
        Ok(PluginSet {
            entries,
            generation: 0,
        })
    }

    /// Which set this is: 0 at start, one more at each swap. Audiences
    /// computed by one generation are only used with that generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The loaded plugins, in config order.
    pub fn plugins(&self) -> impl Iterator<Item = (&LoadedPlugin, &[Interface])> {
        self.entries
            .iter()
            .map(|e| (&*e.plugin, e.interfaces.as_slice()))
    }

    /// The topic patterns each plugin applies to, in config order.
    pub fn topics(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.entries.iter().map(|e| {
            (
                e.plugin.name(),
                e.topics.iter().map(TopicPattern::as_str).collect(),
            )
        })
    }

    /// Decides every action for `subject`, one decision per action. Fails
    /// closed: an authorizer that traps or times out denies what it was asked.
    pub fn authorize(&self, subject: &Subject, actions: &[AuthAction]) -> Vec<AuthDecision> {
        let mut decisions = vec![AuthDecision::Allow; actions.len()];
        let mut wit_subject = None;
        for entry in &self.entries {
            let asked: Vec<usize> = (0..actions.len())
                .filter(|&i| decisions[i] == AuthDecision::Allow)
                .filter(|&i| entry.applies(Interface::Authorizer, actions[i].topic()))
                .collect();
            if asked.is_empty() {
                continue;
            }
            let s = wit_subject.get_or_insert_with(|| convert::subject(subject));
            let batch: Vec<authorizer::Action> = asked
                .iter()
                .map(|&i| convert::action(&actions[i]))
                .collect();
            match entry.plugin.authorize(s, &batch) {
                Ok(answers) => {
                    for (&i, answer) in asked.iter().zip(answers) {
                        if let authorizer::Decision::Deny(why) = answer {
                            decisions[i] = AuthDecision::Deny(why);
                        }
                    }
                }
                Err(_) => {
                    for &i in &asked {
                        decisions[i] = AuthDecision::Deny(AUTHORIZER_FAILED.to_owned());
                    }
                }
            }
        }
        decisions
    }

    /// Routes `events`, one outcome per event.
    pub fn route(&self, events: &[Event]) -> Vec<RouteOutcome> {
        let mut outcomes: Vec<Option<RouteOutcome>> = vec![None; events.len()];
        let mut converted: Vec<Option<super::bindings::types::Event>> = vec![None; events.len()];
        for entry in &self.entries {
            let asked: Vec<usize> = (0..events.len())
                .filter(|&i| outcomes[i].is_none())
                .filter(|&i| entry.applies(Interface::Router, Some(&events[i].topic)))
                .collect();
            if asked.is_empty() {
                continue;
            }
            let batch: Vec<_> = asked
                .iter()
                .map(|&i| {
                    converted[i]
                        .get_or_insert_with(|| convert::event(&events[i]))
                        .clone()
                })
                .collect();
            match entry.plugin.route(&batch) {
                Ok(answers) => {
                    for (&i, answer) in asked.iter().zip(answers) {
                        outcomes[i] = match answer {
                            router::RouteDecision::Pass => None,
                            router::RouteDecision::Drop => Some(RouteOutcome::Drop),
                            router::RouteDecision::Deliver(r) => Some(RouteOutcome::Deliver {
                                topics: r.topics,
                                users: r.users,
                            }),
                        };
                    }
                }
                Err(_) if entry.on_error == OnError::Drop => {
                    for &i in &asked {
                        outcomes[i] = Some(RouteOutcome::Drop);
                    }
                }
                Err(_) => {}
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(RouteOutcome::AsPublished))
            .collect()
    }

    /// A session's audience: its key for every transformer of the set.
    /// Computed once per session.
    pub fn audience(&self, subject: &Subject) -> Audience {
        let mut wit_subject = None;
        let keys = self
            .transformers()
            .map(|entry| {
                let s = wit_subject.get_or_insert_with(|| convert::subject(subject));
                match (entry.plugin.audience(s), entry.on_error) {
                    (Ok(key), _) => AudienceKey::Key(key),
                    (Err(_), OnError::Drop) => AudienceKey::Withhold,
                    (Err(_), OnError::Pass) => AudienceKey::Key(String::new()),
                }
            })
            .collect();
        Audience { keys }
    }

    fn transformers(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.interfaces.contains(&Interface::Transformer))
    }

    /// Whether any plugin implementing `interface` applies to `topic` (for an
    /// authorizer and `None`: to connect). Lets callers skip a call entirely.
    pub fn applies(&self, interface: Interface, topic: Option<&Topic>) -> bool {
        self.entries.iter().any(|e| e.applies(interface, topic))
    }

    /// Whether any plugin implements `interface` at all.
    pub fn has(&self, interface: Interface) -> bool {
        self.entries
            .iter()
            .any(|e| e.interfaces.contains(&interface))
    }

    /// Whether any transformer applies to `topic`: if not, every recipient
    /// gets the original and no audience work is needed.
    pub fn transforms(&self, topic: &Topic) -> bool {
        self.transformers()
            .any(|e| e.applies(Interface::Transformer, Some(topic)))
    }

    /// What each of `audiences` receives of `event`, one result per
    /// audience. Pass each distinct audience once: the transformers are
    /// called once per distinct input variant, with all its audience keys.
    pub fn transform(&self, event: &Event, audiences: &[&Audience]) -> Vec<Delivery> {
        let mut variants: Vec<Delivery> = vec![Delivery::Original];
        // Each audience's current variant; `None` once withheld.
        let mut current: Vec<Option<usize>> = vec![Some(0); audiences.len()];
        for (t, entry) in self.transformers().enumerate() {
            if !entry.applies(Interface::Transformer, Some(&event.topic)) {
                continue;
            }
            // Group audiences by the variant they hold now.
            let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
            for (a, v) in current.iter().enumerate() {
                if let Some(v) = v {
                    groups.entry(*v).or_default().push(a);
                }
            }
            let mut order: Vec<_> = groups.into_iter().collect();
            order.sort_unstable_by_key(|(v, _)| *v);
            for (v, members) in order {
                self.transform_group(
                    entry,
                    t,
                    event,
                    &mut variants,
                    v,
                    &members,
                    audiences,
                    &mut current,
                );
            }
        }
        current
            .into_iter()
            .map(|v| v.map_or(Delivery::Withheld, |v| variants[v].clone()))
            .collect()
    }

    /// One transformer call: variant `v` for the distinct keys of `members`.
    #[allow(clippy::too_many_arguments)]
    fn transform_group(
        &self,
        entry: &Entry,
        t: usize,
        event: &Event,
        variants: &mut Vec<Delivery>,
        v: usize,
        members: &[usize],
        audiences: &[&Audience],
        current: &mut [Option<usize>],
    ) {
        let mut keys: Vec<String> = Vec::new();
        let mut key_of: Vec<Option<usize>> = Vec::with_capacity(members.len());
        for &a in members {
            match audiences[a].keys.get(t) {
                Some(AudienceKey::Key(k)) => {
                    let idx = keys.iter().position(|x| x == k).unwrap_or_else(|| {
                        keys.push(k.clone());
                        keys.len() - 1
                    });
                    key_of.push(Some(idx));
                }
                // Withheld by a failed audience call, or an audience computed
                // against another plugin set: deliver nothing rather than guess.
                _ => key_of.push(None),
            }
        }
        let input = match &variants[v] {
            Delivery::Changed(e) => convert::event(e),
            _ => convert::event(event),
        };
        let results: Result<Vec<transformer::TransformResult>, CallError> = if keys.is_empty() {
            Ok(Vec::new())
        } else {
            entry.plugin.transform(&input, &keys)
        };
        let per_key: Vec<Option<usize>> = match results {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    transformer::TransformResult::Unchanged => Some(v),
                    transformer::TransformResult::Withhold => None,
                    transformer::TransformResult::Replace(rep) => {
                        let base = match &variants[v] {
                            Delivery::Changed(e) => (**e).clone(),
                            _ => event.clone(),
                        };
                        let changed = Event {
                            data: rep.data,
                            name: rep.name.unwrap_or(base.name.clone()),
                            ..base
                        };
                        variants.push(Delivery::Changed(Arc::new(changed)));
                        Some(variants.len() - 1)
                    }
                })
                .collect(),
            Err(_) => {
                let keep = (entry.on_error == OnError::Pass).then_some(v);
                vec![keep; keys.len()]
            }
        };
        for (&a, k) in members.iter().zip(key_of) {
            current[a] = k.and_then(|k| per_key[k]);
        }
    }

    /// Looks a plugin up by name.
    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.entries
            .iter()
            .find(|e| e.plugin.name() == name)
            .map(|e| &*e.plugin)
    }

    /// How many plugins are loaded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Loads a single plugin file with default limits, for the CLI.
pub fn load_single(
    engine: &PluginEngine,
    path: &Path,
    config_json: String,
) -> Result<LoadedPlugin, LoadError> {
    let name = path
        .file_stem()
        .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
    let mut opts = LoadOptions::new(name, path);
    opts.config_json = config_json;
    LoadedPlugin::load(engine, None, opts)
}

/// `subject` as the component model sees it.
pub fn wit_subject(subject: &Subject) -> super::bindings::types::Subject {
    convert::subject(subject)
}

/// `event` as the component model sees it.
pub fn wit_event(event: &Event) -> super::bindings::types::Event {
    convert::event(event)
}
