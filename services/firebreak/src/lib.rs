//! The `firebreak` binary's library: command line, configuration, telemetry and
//! the wiring of roles. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firebreak_api::AppState;
use firebreak_bus::{Bus, EmbeddedBus, RabbitBus, Topology};
use firebreak_domain::metrics::Metrics;
use firebreak_engine::Engine;
use firebreak_store::Store;
use tokio_util::sync::CancellationToken;

pub mod config;

use config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "firebreak",
    version,
    about = "Incident remediation and postmortem service"
)]
pub struct Cli {
    /// TOML configuration file (optional; defaults, then this file, then FIREBREAK_* variables, then flags).
    #[arg(long, global = true, env = "FIREBREAK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Firebreak (every role by default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FIREBREAK_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the embedded SQLite store and queue.
    #[arg(long, env = "FIREBREAK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Roles to run, comma-separated: ingest, engine, api.
    #[arg(long, env = "FIREBREAK_ROLES")]
    pub roles: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "FIREBREAK_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            roles: self.roles.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

/// Parses the command line and runs it; the process exit code follows the result.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Serve(a) | Command::Migrate(a) => a,
    };
    let config = match config::load(
        cli.config.as_deref(),
        |k| std::env::var(k).ok(),
        &args.overrides(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("firebreak: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_telemetry(config.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firebreak: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => serve(config, shutdown_signal()).await,
            Command::Migrate(_) => migrate(&config).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "firebreak stopped");
            eprintln!("firebreak: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_telemetry(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: finishing work in flight");
        trigger.cancel();
    });
    token
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    prepare_data_dir(config)?;
    let store = open_store(config).await?;
    store.close().await;
    println!(
        "migrations applied to {} ({})",
        config.database_url,
        store.backend()
    );
    Ok(())
}

fn prepare_data_dir(config: &Config) -> anyhow::Result<()> {
    if config.uses_sqlite_dir() {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    Ok(())
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = retry("database", &config.database_url.to_string(), || {
        firebreak_store::connect(&config.database_url.0)
    })
    .await?;
    store.migrate().await.context("applying migrations")?;
    Ok(Arc::from(store))
}

async fn open_bus(config: &Config) -> anyhow::Result<Arc<dyn Bus>> {
    match &config.amqp_url {
        Some(url) => {
            let topology = Topology::new(&config.amqp_namespace);
            let bus = retry("RabbitMQ", &url.to_string(), || {
                RabbitBus::connect(&url.0, topology.clone())
            })
            .await?;
            Ok(Arc::new(bus))
        }
        None => {
            let url = config.queue_url();
            let bus = EmbeddedBus::open(&url)
                .await
                .with_context(|| format!("opening the embedded queue {url}"))?;
            Ok(Arc::new(bus))
        }
    }
}

/// Services may come up after Firebreak (docker compose, a restart); keep trying
/// for a while, saying so, before giving up with the cause.
async fn retry<T, E, F, Fut>(what: &str, target: &str, mut connect: F) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(250);
    loop {
        match connect().await {
            Ok(t) => return Ok(t),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%target, error = %e, "cannot reach the {what} yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => anyhow::bail!("cannot reach the {what} at {target}: {e}"),
        }
    }
}

/// Runs the configured roles until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    prepare_data_dir(&config)?;
    let roles = config.roles;
    let metrics = Arc::new(Metrics::default());
    let store = if roles.engine || roles.api {
        Some(open_store(&config).await?)
    } else {
        None
    };
    let bus = if roles.engine || roles.ingest {
        Some(open_bus(&config).await?)
    } else {
        None
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another process using it? set --listen)",
                config.listen
            )
        })?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        listen = %local,
        roles = ?roles.names(),
        store = store.as_ref().map(|s| s.backend()),
        bus = bus.as_ref().map(|b| b.backend()),
        data_dir = %config.data_dir.display(),
        "firebreak started"
    );

    let engine_task = match (&store, &bus, roles.engine) {
        (Some(store), Some(bus), true) => {
            let engine = Arc::new(Engine::new(
                store.clone(),
                bus.clone(),
                metrics.clone(),
                config.engine.clone(),
            ));
            let token = shutdown.clone();
            Some(tokio::spawn(async move { engine.run(token).await }))
        }
        _ => None,
    };

    let state = AppState {
        store: if roles.api || roles.engine {
            store.clone()
        } else {
            None
        },
        bus: bus.clone(),
        metrics,
        tokens: Arc::new(config.tokens.clone()),
        max_body_bytes: config.max_body_bytes,
    };
    let app = firebreak_api::router(state, roles.ingest, roles.api);
    let http_shutdown = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .context("HTTP server failed")?;

    if let Some(task) = engine_task {
        let _ = task.await;
    }
    if let Some(bus) = bus {
        bus.close().await;
    }
    if let Some(store) = store {
        store.close().await;
    }
    tracing::info!("firebreak stopped");
    Ok(())
}
