//! Hot reload of the plugin set from the config file: on `POST
//! /admin/reload`, SIGHUP, or a change to the config file or a plugin file
//! it references. The candidate is parsed, validated, compiled (reusing
//! cached compilations), instantiated and probed off to the side; only if
//! all of that succeeds is it swapped in. Calls under way finish on the set
//! they started on; sessions' audiences are recomputed on first use.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::plugin::{CompileCache, LoadError, PluginSet};

/// What asked for the reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `POST /admin/reload`.
    Api,
    /// SIGHUP.
    Signal,
    /// A watched file changed.
    Watch,
}

/// Why a candidate was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was not started from a file.
    #[error("the gateway was started without a config file; nothing to reload")]
    NoConfigFile,
    /// The config file does not parse or validate.
    #[error("config refused: {0}")]
    Config(#[from] ConfigError),
    /// A plugin does not load, check or pass its probe.
    #[error("plugins refused: {0}")]
    Plugins(#[from] LoadError),
    /// The loading thread failed.
    #[error("reload failed: {0}")]
    Internal(String),
}

/// A plugin of an applied set.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRecord {
    /// Its name.
    pub name: String,
    /// The sha256 of its file.
    pub sha256: String,
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// When it finished (ms since the epoch).
    pub at_ms: u64,
    /// What asked for it.
    pub trigger: Trigger,
    /// Whether the candidate now serves.
    pub applied: bool,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The plugins now serving (when applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginRecord>,
    /// Changed settings that only take effect on restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
}

/// Outcomes kept for `GET /admin/plugins`.
const KEPT: usize = 20;

/// Reload state: one reload at a time, recent outcomes, counters.
#[derive(Default)]
pub struct Reloads {
    running: tokio::sync::Mutex<()>,
    recent: Mutex<VecDeque<Outcome>>,
    /// Candidates swapped in.
    pub applied: AtomicU64,
    /// Candidates refused.
    pub refused: AtomicU64,
}

impl Reloads {
    /// Recent outcomes, newest first.
    pub fn recent(&self) -> Vec<Outcome> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn record(&self, outcome: &Outcome) {
        let counter = if outcome.applied {
            &self.applied
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.push_front(outcome.clone());
        recent.truncate(KEPT);
    }
}

/// Settings outside `[[plugins]]` that differ between what runs and the
/// candidate: they need a restart.
pub fn restart_needed(running: &Config, candidate: &Config) -> Vec<String> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut keys = Vec::new();
    let sections: [(&str, bool); 5] = [
        ("server", differs(&running.server, &candidate.server)),
        ("auth", differs(&running.auth, &candidate.auth)),
        ("bus", differs(&running.bus, &candidate.bus)),
        ("store", differs(&running.store, &candidate.store)),
        ("limits", differs(&running.limits, &candidate.limits)),
    ];
    keys.extend(
        sections
            .iter()
            .filter(|(_, d)| *d)
            .map(|(k, _)| (*k).to_owned()),
    );
    let (r, c) = (&running.runtime, &candidate.runtime);
    if r.pool_instances != c.pool_instances {
        keys.push("runtime.pool_instances".into());
    }
    if r.max_memory_mb != c.max_memory_mb {
        keys.push("runtime.max_memory_mb".into());
    }
    keys
}

/// Reloads the plugin set of `gw` from its config file.
pub async fn reload(gw: &Gateway, trigger: Trigger) -> Outcome {
    let _one_at_a_time = gw.reloads.running.lock().await;
    let result = candidate(gw).await;
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let outcome = match result {
        Ok((set, needs_restart)) => {
            let plugins = set
                .plugins()
                .map(|(p, _)| PluginRecord {
                    name: p.name().to_owned(),
                    sha256: p.sha256().to_owned(),
                })
                .collect();
            gw.executor.swap(set);
            Outcome {
                at_ms,
                trigger,
                applied: true,
                error: None,
                plugins,
                needs_restart,
            }
        }
        Err(e) => Outcome {
            at_ms,
            trigger,
            applied: false,
            error: Some(e.to_string()),
            plugins: Vec::new(),
            needs_restart: Vec::new(),
        },
    };
    if outcome.applied {
        tracing::info!(?trigger, plugins = ?outcome.plugins.iter().map(|p| &p.name).collect::<Vec<_>>(), needs_restart = ?outcome.needs_restart, "plugins reloaded");
    } else {
        tracing::warn!(
            ?trigger,
            error = outcome.error.as_deref().unwrap_or(""),
            "reload refused; the running plugins keep serving"
        );
    }
    gw.reloads.record(&outcome);
    let trigger = match trigger {
        Trigger::Api => "api",
        Trigger::Signal => "signal",
        Trigger::Watch => "watch",
    };
    record_deployment(gw, trigger, &outcome.plugins, outcome.error.as_deref()).await;
    outcome
}

/// Writes a deployment record to the store; a store failure is logged, not
/// fatal: the plugins serve either way.
pub async fn record_deployment(
    gw: &Gateway,
    trigger: &str,
    plugins: &[PluginRecord],
    error: Option<&str>,
) {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let plugins = serde_json::to_value(plugins).unwrap_or_default();
    if let Err(e) = gw
        .store
        .record_deployment(
            &gw.config.server.node_id,
            at_ms,
            trigger,
            error.is_none(),
            &plugins,
            error,
        )
        .await
    {
        tracing::warn!(error = %e, "plugin deployment not recorded in the store");
    }
}

async fn candidate(gw: &Gateway) -> Result<(PluginSet, Vec<String>), ReloadError> {
    let path = gw.config.source.clone().ok_or(ReloadError::NoConfigFile)?;
    let candidate = Config::load(&path)?;
    let needs_restart = restart_needed(&gw.config, &candidate);
    let engine = gw.engine.clone();
    // Loading compiles and runs plugin code synchronously: not on the async workers.
    let set = tokio::task::spawn_blocking(move || {
        let cache = CompileCache::new(&candidate.runtime.cache_dir);
        PluginSet::load(
            &engine,
            Some(&cache),
            &candidate.plugins,
            candidate.runtime.instances_per_plugin,
        )
    })
    .await
    .map_err(|e| ReloadError::Internal(e.to_string()))??;
    Ok((set, needs_restart))
}

/// How often watched files are looked at.
const POLL: Duration = Duration::from_millis(250);

type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.clone(), meta)
        })
        .collect()
}

fn watched(config: &Path) -> Vec<PathBuf> {
    let mut paths = vec![config.to_owned()];
    if let Ok(c) = Config::load(config) {
        paths.extend(c.plugins.into_iter().map(|p| p.path));
    }
    paths
}

/// Reloads when the config file or a plugin file it references changes,
/// until the gateway drains. Polls metadata (modification time and size)
/// rather than relying on inotify, so editors that save by writing a new
/// file and renaming it over the old one are seen like any other write; a
/// change is acted on once it has been stable for one poll.
pub async fn watch(gw: Arc<Gateway>) {
    let Some(path) = gw.config.source.clone() else {
        return;
    };
    let mut paths = watched(&path);
    let mut settled = fingerprint(&paths);
    let mut pending: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = gw.draining.cancelled() => return,
        }
        let now = fingerprint(&paths);
        if now == settled {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            // Changed since the last look: wait for it to settle.
            pending = Some(now);
            continue;
        }
        tracing::info!(config = %path.display(), "a watched file changed; reloading");
        let _ = reload(&gw, Trigger::Watch).await;
        // The candidate may reference other plugin files: watch those now.
        paths = watched(&path);
        settled = fingerprint(&paths);
        pending = None;
    }
}
