//! The `switchyard` binary: `serve`, `plugin check`, `plugin test`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_host::config::Config;
use switchyard_host::gateway::Gateway;
use switchyard_host::plugin::{CompileCache, EngineSettings, PluginEngine, PluginSet};

/// With `--features mimalloc`: a connection storm and a fan-out spent
/// about a tenth of the server's CPU in glibc's allocator; glibc stays the
/// default because it keeps idle sessions smaller (bench/README.md has
/// both).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A WebAssembly-extensible real-time event router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Sign a development token with `auth.jwt_hs256_secret` of a config.
    Token {
        /// The config file holding the secret.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The user (`sub`).
        #[arg(long)]
        sub: String,
        /// Extra claims as a JSON object, e.g. '{"rooms":["1"],"roles":["support"]}'.
        #[arg(long, default_value = "{}")]
        claims: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check a component: interfaces, imports, limits.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Run a component on an event as the host would; print the decisions as JSON.
    Test {
        /// The `.wasm` file.
        file: PathBuf,
        /// The event: `{"topic": ..., "data": ..., "event"?, "headers"?, "sender"?, "to_users"?}`.
        #[arg(long)]
        event: PathBuf,
        /// The subject as a JWT claim set: `{"sub": ..., "roles"?: [...], ...}`.
        #[arg(long)]
        subject: Option<PathBuf>,
        /// The plugin's config table (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // SWITCHYARD_LOG_FORMAT=json: one JSON object per line, for log shippers.
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let log = switchyard_host::logging::init(json);
    match run(Cli::parse(), log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, log: switchyard_host::logging::LogControl) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config, log),
        Command::Token {
            config,
            sub,
            claims,
            ttl,
        } => {
            println!("{}", dev_token(&config, &sub, &claims, ttl)?);
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            println!("{}", switchyard_host::cli::check(&file)?);
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    event,
                    subject,
                    config,
                },
        } => {
            let out =
                switchyard_host::cli::test(&file, &event, subject.as_deref(), config.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn dev_token(
    config: &std::path::Path,
    sub: &str,
    claims: &str,
    ttl: u64,
) -> anyhow::Result<String> {
    let config = Config::load(config)?;
    let secret = config
        .auth
        .jwt_hs256_secret
        .context("the config has no auth.jwt_hs256_secret to sign with")?;
    let mut claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(claims).context("--claims must be a JSON object")?;
    claims.insert("sub".into(), sub.into());
    claims.insert("exp".into(), (Gateway::now_s() + ttl).into());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

fn serve(path: &std::path::Path, log: switchyard_host::logging::LogControl) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let engine = PluginEngine::new(EngineSettings {
        pool_instances: config.runtime.pool_instances,
        max_memory_mb: config.runtime.max_memory_mb,
        ..EngineSettings::default()
    })?;
    let cache = CompileCache::new(&config.runtime.cache_dir);
    // Plugins load before the async runtime starts: their calls are synchronous.
    let plugins = PluginSet::load(
        &engine,
        Some(&cache),
        &config.plugins,
        config.runtime.instances_per_plugin,
    )
    .context("loading plugins")?;
    let names: Vec<String> = plugins
        .plugins()
        .map(|(p, _)| p.name().to_owned())
        .collect();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = switchyard_host::server::bind(config.server.listen)
            .with_context(|| format!("binding {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let node = config.server.node_id.clone();
        let gateway = Gateway::start(config, engine, plugins).await?;
        println!(
            "switchyard {}: node {node} listening on http://{addr}, {} plugins loaded ({})",
            env!("CARGO_PKG_VERSION"),
            names.len(),
            names.join(", ")
        );
        let _ = gateway.log.set(log);
        if let Ok(mut hup) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let gw = gateway.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    switchyard_host::reload::reload(&gw, switchyard_host::reload::Trigger::Signal)
                        .await;
                }
            });
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
            }
            println!("switchyard: draining");
        };
        switchyard_host::server::run(listener, gateway, shutdown).await?;
        anyhow::Ok(())
    })
}
