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
use firebreak_postmortem::Generator;
use firebreak_remediation::slack::SlackClient;
use firebreak_remediation::{PlaybookSet, StepCheck};
use firebreak_remediation::{Providers, Remediation};
use firebreak_store::Store;
use tokio_util::sync::CancellationToken;

mod admin;
pub mod audit;
pub mod bench;
pub mod config;
pub mod http;
pub mod playbooks_cli;

use config::{Config, Overrides};

/// How often running rollouts are looked at (hold times are this precise).
/// How often the tracker outbox is looked at (action items to export).
const EXPORT_EVERY: Duration = Duration::from_secs(2);
const ROLLOUT_TICK: Duration = Duration::from_secs(1);
/// How often the last evaluation time of flags is written.
const FLAG_USAGE_EVERY: Duration = Duration::from_secs(5);

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
    Migrate(StoreArgs),
    /// Check, test and replay playbooks.
    #[command(subcommand)]
    Playbooks(playbooks_cli::PlaybooksCommand),
    /// Load generator against a running Firebreak (see bench/run.sh).
    Bench(bench::BenchArgs),
    /// Machine tokens: create (shown once), list, revoke.
    Tokens {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: admin::TokensCommand,
    },
    /// Local users (people who sign in with a password).
    Users {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: admin::UsersCommand,
    },
    /// The audit trail.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: admin::AuditCommand,
    },
    /// Built-in flags: the stale-flag report.
    Flags {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: admin::FlagsCommand,
    },
    /// Messages the engine refused or the bus gave up on: list, replay.
    DeadLetters {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: admin::DeadLettersCommand,
    },
}

/// Where an admin command finds the store: the same data directory (or
/// `FIREBREAK_DATABASE_URL` / the configuration file) as `serve`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store and queue (as `serve --data-dir`;
    /// ignored when database_url names PostgreSQL).
    #[arg(long, env = "FIREBREAK_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            ..Overrides::default()
        }
    }
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
    /// Directory of playbook files (none: no automation).
    #[arg(long, env = "FIREBREAK_PLAYBOOKS")]
    pub playbooks: Option<PathBuf>,
    /// Directory of templates (postmortem.md.hbs); default ./templates, else built in.
    #[arg(long, env = "FIREBREAK_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Serve without authentication on any address: only behind a gateway
    /// that authenticates every request itself.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            roles: self.roles.clone(),
            log_format: self.log_format.clone(),
            playbooks: self.playbooks.clone(),
            templates: self.templates.clone(),
            insecure_no_auth: self.insecure_no_auth,
        }
    }
}

/// Parses the command line and runs it; the process exit code follows the result.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Bench(args) = cli.command {
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => match rt.block_on(bench::run(args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("firebreak bench: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("firebreak: cannot start the async runtime: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let overrides = match &cli.command {
        Command::Serve(a) => a.overrides(),
        Command::Playbooks(p) => p.overrides(),
        Command::Migrate(store)
        | Command::Tokens { store, .. }
        | Command::Users { store, .. }
        | Command::Audit { store, .. }
        | Command::Flags { store, .. }
        | Command::DeadLetters { store, .. } => store.overrides(),
        Command::Bench(_) => Overrides::default(),
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let config = match config::load(cli.config.as_deref(), &vars, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("firebreak: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Playbooks(p) = &cli.command {
        // Offline commands: no telemetry noise on the terminal.
        return playbooks_cli::run(p, &config);
    }
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
            Command::Tokens { command, .. } => admin::tokens(&config, &command).await,
            Command::Users { command, .. } => admin::users(&config, &command).await,
            Command::Audit { command, .. } => admin::audit(&config, &command).await,
            Command::Flags { command, .. } => admin::flags(&config, &command).await,
            Command::DeadLetters { command, .. } => admin::dead_letters(&config, &command).await,
            Command::Playbooks(_) | Command::Bench(_) => Ok(()),
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

/// Opens the store for the server and every admin command alike: the data
/// directory of the embedded default is created first, and a SQLite file is
/// opened once (a local file does not come up later: retrying would only
/// hide the cause), a database server is waited for.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    prepare_data_dir(config)?;
    audit::install_key(config)?;
    let store = if config.database_url.0.starts_with("sqlite:") {
        firebreak_store::connect(&config.database_url.0)
            .await
            .with_context(|| {
                format!(
                    "cannot open the SQLite database {}: check that its directory exists and is writable, or set FIREBREAK_DATABASE_URL",
                    config.database_url
                )
            })?
    } else {
        retry("database", &config.database_url.to_string(), || {
            firebreak_store::connect(&config.database_url.0)
        })
        .await?
    };
    store.migrate().await.context("applying migrations")?;
    Ok(Arc::from(store))
}

pub(crate) async fn open_bus(config: &Config) -> anyhow::Result<Arc<dyn Bus>> {
    match &config.amqp_url {
        Some(url) => {
            let topology = Topology::new(&config.amqp_namespace);
            let bus = retry("RabbitMQ", &url.to_string(), || {
                RabbitBus::connect(&url.0, topology.clone(), config.amqp_publish_timeout)
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
    let roles = config.roles;
    let metrics = Arc::new(Metrics::default());
    // Every role opens the store: even ingest checks tokens kept there.
    // Waiting for a database or a broker that is not up yet ends at once on
    // SIGTERM (an orchestrator stopping a pod that never became ready).
    let store = tokio::select! {
        store = open_store(&config) => Some(store?),
        _ = shutdown.cancelled() => {
            tracing::info!("stopped while waiting for the database");
            return Ok(());
        }
    };
    let bus = if roles.engine || roles.ingest {
        tokio::select! {
            bus = open_bus(&config) => Some(bus?),
            _ = shutdown.cancelled() => {
                tracing::info!("stopped while waiting for the broker");
                if let Some(store) = store {
                    store.close().await;
                }
                return Ok(());
            }
        }
    } else {
        None
    };

    let auth = Arc::new(firebreak_api::Auth::new(config.auth.clone(), store.clone()));
    if let (Some(oidc), true) = (auth.oidc().cloned(), roles.api) {
        // Only the api role signs people in. Ask the provider now, so the
        // log says whether it answers; a provider that is down does not
        // keep Firebreak from starting.
        tokio::spawn(async move { oidc.warm_up().await });
    }
    if !auth.refresh().await && !config.listen.ip().is_loopback() {
        if config.auth.insecure_no_auth {
            tracing::warn!(listen = %config.listen, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth): every request acts as an admin; a gateway in front must authenticate");
        } else {
            anyhow::bail!(
                "refusing to listen on {} without authentication: anyone who can reach it could flip kill switches. \
                 Create an admin token (firebreak tokens create --name admin --scope admin), set \
                 FIREBREAK_AUTH__BOOTSTRAP_TOKEN, configure [auth.proxy], listen on 127.0.0.1, \
                 or pass --insecure-no-auth if a gateway in front authenticates every request",
                config.listen
            );
        }
    }
    if !auth.required() && config.listen.ip().is_loopback() {
        tracing::warn!("no authentication is configured: answering only requests from this machine (loopback); create a token to serve others");
    }
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

    let providers = store.as_ref().map(|store| {
        Arc::new(Providers::new(
            Some(store.clone()),
            &config.kill_switches,
            config.rollbacks.clone(),
            config.notifiers.clone(),
            config.slack.clone(),
        ))
    });
    let playbooks = match (&config.playbooks_dir, &providers) {
        (Some(dir), Some(providers)) => {
            if !dir.is_dir() {
                anyhow::bail!(
                    "the playbook directory {} does not exist (set --playbooks or FIREBREAK_PLAYBOOKS)",
                    dir.display()
                );
            }
            let set = Arc::new(PlaybookSet::load(
                dir.clone(),
                step_check(providers),
                metrics.clone(),
            ));
            tokio::spawn(set.clone().watch(config.playbooks_reload, shutdown.clone()));
            Some(set)
        }
        _ => None,
    };
    if config.remediation.policy.dry_run {
        tracing::warn!(
            "automation is in dry-run: playbooks and requests record what they would do and call nothing"
        );
    }
    let remediation = match (&store, &providers) {
        (Some(store), Some(providers)) => Some(Arc::new(Remediation::new(
            store.clone(),
            providers.clone(),
            metrics.clone(),
            config.remediation.clone(),
        ))),
        _ => None,
    };
    let slack = (config.slack.signing_secret.is_some() || config.slack.bot_token.is_some())
        .then(|| Arc::new(SlackClient::new(config.slack.clone())));
    let operator = firebreak_domain::access::Role::Operator;
    if config.slack.signing_secret.is_some()
        && config.slack.default_role < operator
        && config.slack.roles.values().all(|r| *r < operator)
        && config.slack.allowed_users.is_empty()
        && config.slack.allowed_groups.is_empty()
    {
        tracing::warn!("Slack commands are on but no Slack user or group has the operator role (slack.roles, slack.default_role): nobody may run killswitch, rollback, pause/resume or approve from Slack");
    }
    let postmortems = store
        .as_ref()
        .map(|store| Arc::new(Generator::new(store.clone(), config.postmortem.clone())));

    let pages = match (&store, roles.api) {
        (Some(store), true) => {
            let pages = firebreak_api::pages::Pages::load(Some(&config.postmortem.templates))
                .map_err(|e| anyhow::anyhow!("a page template does not compile: {e}"))?;
            auth.set_page_secret(&page_secret(store.as_ref()).await?);
            Some(Arc::new(pages))
        }
        _ => None,
    };

    let mut background = Vec::new();
    if let Some(store) = &store {
        background.push(tokio::spawn(audit::witness(
            store.clone(),
            metrics.clone(),
            config.audit_witness.clone(),
            shutdown.clone(),
        )));
    }
    if let (Some(store), Some(bus), true) = (&store, &bus, roles.engine) {
        let mut engine = Engine::new(
            store.clone(),
            bus.clone(),
            metrics.clone(),
            config.engine.clone(),
        );
        if let Some(remediation) = &remediation {
            engine = engine.with_remediation(remediation.clone());
        }
        if let (Some(set), Some(remediation)) = (&playbooks, &remediation) {
            engine = engine.with_playbooks(set.clone(), remediation.clone());
        }
        let engine = Arc::new(engine);
        let token = shutdown.clone();
        background.push(tokio::spawn(async move { engine.run(token).await }));
        if let Some(slack) = &slack {
            let token = shutdown.clone();
            background.push(tokio::spawn(firebreak_remediation::slack::run_notifier(
                store.clone(),
                slack.clone(),
                token,
            )));
        }
        if let (true, Some(generator)) = (
            config.trackers.github.is_some() || config.trackers.jira.is_some(),
            &postmortems,
        ) {
            background.push(tokio::spawn(firebreak_postmortem::trackers::run_exporter(
                store.clone(),
                generator.clone(),
                config.trackers.clone(),
                config.slack.public_url.clone(),
                EXPORT_EVERY,
                shutdown.clone(),
            )));
        }
        if let Some(generator) = &postmortems {
            let token = shutdown.clone();
            background.push(tokio::spawn(draft_loop(
                store.clone(),
                generator.clone(),
                config.postmortem_interval,
                token,
            )));
        }
        if let Some(remediation) = &remediation {
            let executor = remediation.clone();
            let token = shutdown.clone();
            background.push(tokio::spawn(async move { executor.run(token).await }));
            let driver = remediation.clone();
            let token = shutdown.clone();
            background.push(tokio::spawn(driver.drive_rollouts(ROLLOUT_TICK, token)));
        }
    }

    let flag_usage = Arc::new(firebreak_api::remediation::FlagUsage::default());
    if let (Some(store), true) = (&store, roles.api) {
        background.push(tokio::spawn(firebreak_api::remediation::keep_flag_usage(
            store.clone(),
            flag_usage.clone(),
            FLAG_USAGE_EVERY,
            shutdown.clone(),
        )));
    }
    let ingest = match (&bus, roles.ingest) {
        (Some(bus), true) => Some(firebreak_api::IngestState {
            bus: bus.clone(),
            metrics: metrics.clone(),
            max_body_bytes: config.max_body_bytes,
            playbooks: playbooks.clone(),
            ingest: Arc::new(firebreak_api::ingest::Ingest {
                packer: firebreak_api::packer::Packer::start(bus.clone()),
                backpressure: config.backpressure.clone(),
                max_message_bytes: config.max_message_bytes,
            }),
        }),
        _ => None,
    };
    let api = match (&store, remediation, postmortems, pages, roles.api) {
        (Some(store), Some(remediation), Some(postmortems), Some(pages), true) => Some(AppState {
            store: store.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            max_body_bytes: config.max_body_bytes,
            playbooks,
            remediation,
            postmortems,
            pages,
            slack,
            trackers: Arc::new(config.trackers.clone()),
            flag_usage,
            fractional: config.fractional,
        }),
        _ => None,
    };
    let ops = firebreak_api::OpsState {
        store: store.clone().filter(|_| roles.api || roles.engine),
        bus: bus.clone(),
        metrics,
        auth: auth.clone(),
    };
    let app = firebreak_api::router(firebreak_api::Roles { ops, ingest, api });
    let mut limits = config.http;
    let (fits, soft) = http::fit_to_open_files(limits.max_connections);
    if fits < limits.max_connections {
        tracing::warn!(
            http.max_connections = limits.max_connections,
            serving = fits,
            open_files_limit = soft,
            "http.max_connections is above what the open-files limit allows: serving at most {fits} connections; raise the limit (ulimit -n, systemd LimitNOFILE=) to serve more"
        );
        limits.max_connections = fits;
    }
    http::serve(listener, app, limits, shutdown.clone())
        .await
        .context("HTTP server failed")?;

    for task in background {
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

/// Checks playbook steps against the configured providers.
pub fn step_check(providers: &Arc<Providers>) -> StepCheck {
    let p = providers.clone();
    Arc::new(move |step| p.missing(step))
}

/// Writes the first draft of every resolved incident that has none. Polling the
/// store (rather than hooking the resolution) means a draft is never lost to a
/// crash between resolving and writing; several engines may race, and the
/// store's create-if-absent keeps one draft.
async fn draft_loop(
    store: Arc<dyn Store>,
    generator: Arc<Generator>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut failing: std::collections::HashMap<i64, (u32, tokio::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids = match store.incidents_needing_postmortem(50).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for incidents needing a postmortem");
                continue;
            }
        };
        for id in ids {
            if let Some((_, next)) = failing.get(&id) {
                if tokio::time::Instant::now() < *next {
                    continue;
                }
            }
            match generator.generate(id, "firebreak").await {
                Ok(g) => {
                    failing.remove(&id);
                    tracing::info!(
                        incident = id,
                        revision = g.postmortem.revision,
                        "postmortem draft written"
                    );
                }
                Err(e) => {
                    let tries = failing.get(&id).map_or(1, |(n, _)| n + 1);
                    let wait = Duration::from_secs(5u64.saturating_mul(1 << tries.min(8)));
                    failing.insert(id, (tries, tokio::time::Instant::now() + wait));
                    tracing::error!(incident = id, error = %e, retry_in_s = wait.as_secs(), "cannot write the postmortem draft");
                }
            }
        }
    }
}

/// The key page forms' CSRF tokens are derived with, for identities without
/// a session (tokens, the proxy, local mode): made once, kept in the store
/// so every process and restart agrees.
async fn page_secret(store: &dyn firebreak_store::Store) -> anyhow::Result<String> {
    const KEY: &str = "page_csrf_secret";
    if let Some(s) = store
        .setting(KEY)
        .await
        .context("reading the page secret")?
    {
        return Ok(s);
    }
    let fresh = firebreak_store::credentials::random_hex(2);
    store
        .put_setting(KEY, &fresh)
        .await
        .context("saving the page secret")?;
    // Another process may have raced: everyone uses what the store holds.
    Ok(store.setting(KEY).await?.unwrap_or(fresh))
}
