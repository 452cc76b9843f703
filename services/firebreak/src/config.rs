//! Configuration: one layered loader. Embedded defaults (`defaults.toml`),
//! then an optional TOML file, then environment variables, then
//! command-line flags; validated once at boot, and every error names the key
//! (and the variable, when one set it) and what would be right.
//!
//! Every key has an environment twin: `FIREBREAK_` followed by the key's path
//! in capitals with `__` between levels (`engine.workers` is
//! `FIREBREAK_ENGINE__WORKERS`, `kill_switch.unleash.token` is
//! `FIREBREAK_KILL_SWITCH__UNLEASH__TOKEN`); top-level keys have one level
//! (`FIREBREAK_LISTEN`). The short names of earlier versions
//! (`FIREBREAK_DRY_RUN`, …, see [`ALIASES`]) still work. Durations, addresses
//! and URLs are typed: a bad one is refused at start, not at first use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebreak_api::auth::{AuthConfig, CookieSecure, Net, ProxyAuth, StaticToken};
use firebreak_api::oidc::OidcConfig;
use firebreak_api::Secret;
use firebreak_domain::access::{Role, Scope};
use firebreak_domain::action::AutomationPolicy;
use firebreak_domain::correlation::CorrelationPolicy;
use firebreak_domain::duration::Dur;
use firebreak_domain::playbook::{Budget, Guard, NotifyStep};
use firebreak_engine::EngineConfig;
use firebreak_postmortem::trackers::TrackersConfig;
use firebreak_remediation::{
    KillSwitchConfig, NotifierConfig, RemediationConfig, RollbackConfig, SlackConfig,
};
use serde::Deserialize;

mod file;
pub use file::*;

/// The first layer.
pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub engine: bool,
    pub api: bool,
}

impl Roles {
    pub fn parse(list: &[String]) -> Result<Roles, String> {
        let mut roles = Roles {
            ingest: false,
            engine: false,
            api: false,
        };
        for role in list {
            match role.trim() {
                "ingest" => roles.ingest = true,
                "engine" => roles.engine = true,
                "api" => roles.api = true,
                "all" => {
                    roles = Roles {
                        ingest: true,
                        engine: true,
                        api: true,
                    }
                }
                other => {
                    return Err(format!(
                        "{other:?} is not a role: use ingest, engine, api (or all)"
                    ))
                }
            }
        }
        if !(roles.ingest || roles.engine || roles.api) {
            return Err("no roles: give at least one of ingest, engine, api".into());
        }
        Ok(roles)
    }

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.ingest, "ingest"),
            (self.engine, "engine"),
            (self.api, "api"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The validated configuration the process runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Url,
    /// `None`: the embedded queue in `<data_dir>/queue.db`.
    pub amqp_url: Option<Url>,
    pub amqp_namespace: String,
    /// See `amqp.publish_timeout`.
    pub amqp_publish_timeout: Duration,
    pub roles: Roles,
    pub json_logs: bool,
    pub auth: AuthConfig,
    pub max_body_bytes: usize,
    pub http: crate::http::Limits,
    pub backpressure: firebreak_api::ingest::Backpressure,
    /// The largest queue message the bus takes.
    pub max_message_bytes: usize,
    pub engine: EngineConfig,
    pub playbooks_dir: Option<PathBuf>,
    pub playbooks_reload: Duration,
    pub postmortem: firebreak_postmortem::PostmortemConfig,
    pub postmortem_interval: Duration,
    pub remediation: RemediationConfig,
    pub kill_switches: BTreeMap<String, KillSwitchConfig>,
    pub rollbacks: BTreeMap<String, RollbackConfig>,
    pub notifiers: BTreeMap<String, NotifierConfig>,
    pub slack: SlackConfig,
    /// Where action items are exported (`[trackers.github]`, `[trackers.jira]`).
    pub trackers: TrackersConfig,
    /// The audit chain's key as configured (`None`: the key file).
    pub audit_key: Option<Secret>,
    pub audit_witness: PathBuf,
    /// See `flags.fractional`.
    pub fractional: firebreak_domain::flagd::Bucketing,
}

/// The embedded queue's largest message (SQLite's own limit is 1 GB).
const EMBEDDED_MAX_MESSAGE: usize = 256 * 1024 * 1024;

impl Config {
    pub fn queue_url(&self) -> String {
        format!("sqlite://{}", self.data_dir.join("queue.db").display())
    }

    pub fn uses_sqlite_dir(&self) -> bool {
        self.database_url.0.starts_with("sqlite:") || self.amqp_url.is_none()
    }
}

/// Short environment names of earlier versions and the key each sets; the
/// generic twin (`FIREBREAK_SECTION__KEY`) works for these keys as well.
pub const ALIASES: &[(&str, &str)] = &[
    ("FIREBREAK_AMQP_NAMESPACE", "amqp.namespace"),
    ("FIREBREAK_AMQP_PREFETCH", "amqp.prefetch"),
    ("FIREBREAK_AMQP_PUBLISH_TIMEOUT", "amqp.publish_timeout"),
    ("FIREBREAK_MAX_BACKLOG", "ingest.max_backlog"),
    ("FIREBREAK_MAX_BODY_BYTES", "ingest.max_body_bytes"),
    ("FIREBREAK_TOKEN_ALERTMANAGER", "ingest.tokens.alertmanager"),
    ("FIREBREAK_TOKEN_DEPLOY", "ingest.tokens.deploy"),
    ("FIREBREAK_TOKEN_GATE", "ingest.tokens.gate"),
    ("FIREBREAK_TOKEN_LOGS", "ingest.tokens.logs"),
    ("FIREBREAK_API_TOKEN", "api.token"),
    ("FIREBREAK_OFREP_TOKEN", "api.ofrep_token"),
    ("FIREBREAK_ENGINE_WORKERS", "engine.workers"),
    ("FIREBREAK_ENGINE_BATCH_MAX", "engine.batch_max"),
    ("FIREBREAK_SWEEP_INTERVAL", "engine.sweep_interval"),
    ("FIREBREAK_GROUP_BY", "incidents.group_by"),
    ("FIREBREAK_REOPEN_WINDOW", "incidents.reopen_window"),
    ("FIREBREAK_QUIET_PERIOD", "incidents.quiet_period"),
    ("FIREBREAK_DEPLOY_LOOKBACK", "incidents.deploy_lookback"),
    ("FIREBREAK_PLAYBOOKS", "playbooks.dir"),
    ("FIREBREAK_TEMPLATES", "postmortem.templates"),
    ("FIREBREAK_TIMEZONE", "postmortem.timezone"),
    ("FIREBREAK_DRY_RUN", "automation.dry_run"),
    ("FIREBREAK_ESCALATE_SLACK", "automation.escalate_slack"),
    ("FIREBREAK_ESCALATE_WEBHOOK", "automation.escalate_webhook"),
    ("FIREBREAK_SLACK_BOT_TOKEN", "slack.bot_token"),
    ("FIREBREAK_SLACK_API_URL", "slack.api_url"),
    ("FIREBREAK_SLACK_SIGNING_SECRET", "slack.signing_secret"),
    ("FIREBREAK_SLACK_CHANNEL", "slack.channel"),
    ("FIREBREAK_SLACK_ALLOWED_USERS", "slack.allowed_users"),
    ("FIREBREAK_SLACK_ALLOWED_GROUPS", "slack.allowed_groups"),
    ("FIREBREAK_PUBLIC_URL", "slack.public_url"),
];

/// Top-level keys: their twin has one level (`FIREBREAK_LISTEN`).
const TOP_LEVEL: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "amqp_url",
    "roles",
    "log_format",
    "node",
];

/// Variables that start with `FIREBREAK_` but are not configuration keys.
const NOT_KEYS: &[&str] = &[
    "FIREBREAK_CONFIG",
    "FIREBREAK_SECRET_",
    "FIREBREAK_TEST_",
    "FIREBREAK_BENCH_",
    "FIREBREAK_BIN",
];

/// Optional keys (no default) whose value is not a string, so their twin is typed.
const TYPED_OPTIONAL: &[(&str, Kind)] = &[
    ("automation.max_actions.count", Kind::Integer),
    ("automation.manual.max_runs.count", Kind::Integer),
    ("amqp.urls", Kind::List),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    List,
    Text,
}

/// Flag values (already merged with their env twins by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub roles: Option<String>,
    pub log_format: Option<String>,
    pub playbooks: Option<PathBuf>,
    pub templates: Option<PathBuf>,
    pub insecure_no_auth: bool,
}

/// Loads and validates the configuration. `vars` lists the process's
/// environment (name, value); `env` looks one up (for `${FIREBREAK_SECRET_…}`).
pub fn load(
    file: Option<&Path>,
    vars: &[(String, String)],
    overrides: &Overrides,
) -> Result<Config, String> {
    let defaults: toml::Table = DEFAULTS
        .parse()
        .map_err(|e| format!("embedded defaults: {e}"))?;
    let mut table = defaults.clone();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let layer: toml::Table = text
            .parse()
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        merge(&mut table, layer);
    }
    // Which variable set which key, for error messages.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut sets: Vec<(String, &str, &str)> = Vec::new();
    for (var, key) in ALIASES {
        if let Some((_, v)) = vars.iter().find(|(n, v)| n == var && !v.is_empty()) {
            sets.push((key.to_string(), var, v));
        }
    }
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("FIREBREAK_") else {
            continue;
        };
        if value.is_empty()
            || ALIASES.iter().any(|(a, _)| a == var)
            || NOT_KEYS.iter().any(|p| var.starts_with(p))
        {
            continue;
        }
        let mut parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        // Keys of maps that name outside things keep their case (Slack ids, proxy groups).
        let originals: Vec<&str> = rest.split("__").collect();
        if parts.len() == 3
            && ((parts[0] == "slack" && (parts[1] == "roles" || parts[1] == "people"))
                || (parts[0] == "auth" && parts[1] == "groups"))
        {
            parts[2] = originals[2].to_string();
        }
        if parts.len() == 4
            && parts[0] == "auth"
            && ((parts[1] == "proxy" && parts[2] == "groups")
                || (parts[1] == "oidc" && parts[2] == "group_roles"))
        {
            parts[3] = originals[3].to_string();
        }
        let key = parts.join(".");
        if !rest.contains("__") && !TOP_LEVEL.contains(&key.as_str()) {
            // One level that is not a top-level key: not ours (e.g. FIREBREAK_LISTEN is,
            // FIREBREAK_FOO is not); serve's flags read FIREBREAK_ROLES etc. themselves.
            continue;
        }
        sets.push((key, var, value));
    }
    for (key, var, raw) in sets {
        let value = typed(&defaults, &key, raw).map_err(|e| format!("{var} (key `{key}`): {e}"))?;
        set_path(&mut table, &key, value);
        origin.insert(key, var.to_string());
    }
    // Provider tokens and headers may name secrets kept in the environment.
    let env = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    for section in ["kill_switch", "rollback", "notify", "slack", "trackers"] {
        if let Some(v) = table.get_mut(section) {
            expand_secrets(v, section, &env)?;
        }
    }
    let parsed: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let key = path.trim_start_matches('.');
            let source = origin
                .iter()
                .find(|(k, _)| key == k.as_str() || key.starts_with(&format!("{k}.")))
                .map(|(_, var)| format!(" (set by {var})"))
                .or_else(|| file.map(|f| format!(" (in {})", f.display())))
                .unwrap_or_default();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            if key.is_empty() || key == "?" {
                format!("{message}{source}")
            } else {
                format!("key `{key}`{source}: {message}")
            }
        },
    )?;
    validate(parsed, overrides)
}

/// The type a key's twin is read as: its default's, else string (or a known optional type).
fn typed(defaults: &toml::Table, key: &str, raw: &str) -> Result<toml::Value, String> {
    let kind = lookup(defaults, key)
        .map(|v| match v {
            toml::Value::Boolean(_) => Kind::Bool,
            toml::Value::Integer(_) => Kind::Integer,
            toml::Value::Array(_) => Kind::List,
            _ => Kind::Text,
        })
        .or_else(|| {
            TYPED_OPTIONAL
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, kind)| *kind)
        })
        .unwrap_or(
            if key.ends_with(".dry_run") || key.ends_with(".require_approval") {
                Kind::Bool
            } else {
                Kind::Text
            },
        );
    Ok(match kind {
        Kind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
        }),
        Kind::Integer => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        Kind::Text => toml::Value::String(raw.to_string()),
    })
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut current = table.get(parts.next()?)?;
    for part in parts {
        current = current.as_table()?.get(part)?;
    }
    Some(current)
}

/// Deep merge: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn expand_secrets(
    v: &mut toml::Value,
    path: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = firebreak_domain::secret::expand(s, env)
                .map_err(|e| format!("key `{path}`: {e}"))?;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_secrets(v, &format!("{path}.{k}"), env)?;
            }
        }
        toml::Value::Array(a) => {
            for v in a.iter_mut() {
                expand_secrets(v, path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => current = t,
            _ => return,
        }
    }
    current.insert(last.to_string(), value);
}

fn positive(key: &str, d: Dur) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("key `{key}`: must be more than 0s"));
    }
    Ok(d.to_std())
}

/// The host name, for lease owners: `/proc/sys/kernel/hostname` or `$HOSTNAME`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "firebreak".into())
}

fn validate(f: FileConfig, o: &Overrides) -> Result<Config, String> {
    let listen_raw = o.listen.clone().unwrap_or(f.listen);
    let listen: SocketAddr = listen_raw.parse().map_err(|_| {
        format!("key `listen`: {listen_raw:?} is not an address like 127.0.0.1:8080")
    })?;
    let data_dir = o.data_dir.clone().unwrap_or(f.data_dir);
    let database_url = match f.database_url.filter(|u| !u.is_empty()) {
        Some(url) => {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(format!(
                    "key `database_url`: {:?} is not supported: use postgres://… or sqlite://…",
                    firebreak_store::redact_url(&url)
                ));
            }
            url
        }
        None => format!("sqlite://{}", data_dir.join("firebreak.db").display()),
    };
    // One broker, or a cluster's nodes: `amqp_url` with commas, or `amqp.urls`.
    let nodes: Vec<String> = match (f.amqp_url.filter(|u| !u.is_empty()), &f.amqp.urls) {
        (Some(_), Some(list)) if !list.is_empty() => {
            return Err("keys `amqp_url` and `amqp.urls` both name brokers: set one".into())
        }
        (Some(url), _) => firebreak_bus::rabbitmq::broker_urls(&url),
        (None, Some(list)) => list
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect(),
        (None, None) => Vec::new(),
    };
    for url in &nodes {
        if url.starts_with("amqps://") {
            return Err("key `amqp_url`: amqps:// (TLS) is not supported by this build; use amqp:// on a trusted network".into());
        }
        if !url.starts_with("amqp://") {
            return Err(format!(
                "key `amqp_url`: {:?} is not an amqp:// URL (several nodes are separated by commas)",
                firebreak_store::redact_url(url)
            ));
        }
    }
    let amqp_url = (!nodes.is_empty()).then(|| nodes.join(","));
    let roles = match &o.roles {
        Some(list) => Roles::parse(&list.split(',').map(String::from).collect::<Vec<_>>()),
        None => Roles::parse(&f.roles),
    }
    .map_err(|e| format!("key `roles`: {e}"))?;
    let log_format = o.log_format.clone().unwrap_or(f.log_format);
    let json_logs = match log_format.as_str() {
        "json" => true,
        "text" => false,
        other => {
            return Err(format!(
                "key `log_format`: {other:?} is not a log format: use text or json"
            ))
        }
    };
    if f.amqp.namespace.is_empty() || f.amqp.namespace.contains(char::is_whitespace) {
        return Err("key `amqp.namespace`: must be a non-empty name without spaces".into());
    }
    if f.ingest.max_backlog == 0 {
        return Err("key `ingest.max_backlog`: must be at least 1".into());
    }
    if f.amqp.max_message_bytes < 1024 * 1024 {
        return Err("key `amqp.max_message_bytes`: must be at least 1048576 (1 MiB)".into());
    }
    if f.amqp.prefetch == 0 {
        return Err("key `amqp.prefetch`: must be at least 1".into());
    }
    if f.amqp.publish_timeout.to_std() < Duration::from_millis(100)
        || f.amqp.publish_timeout.to_std() > Duration::from_secs(120)
    {
        return Err("key `amqp.publish_timeout`: must be between 100ms and 120s".into());
    }
    if f.ingest.max_body_bytes < 1024 {
        return Err("key `ingest.max_body_bytes`: must be at least 1024".into());
    }
    for (key, d) in [
        ("http.header_read_timeout", &f.http.header_read_timeout),
        ("http.body_read_timeout", &f.http.body_read_timeout),
        ("http.write_timeout", &f.http.write_timeout),
    ] {
        if d.to_std() < Duration::from_secs(1) || d.to_std() > Duration::from_secs(600) {
            return Err(format!("key `{key}`: must be between 1s and 10m"));
        }
    }
    if !(16..=100_000).contains(&f.http.max_connections) {
        return Err("key `http.max_connections`: must be between 16 and 100000".into());
    }
    if f.engine.workers == 0 || f.engine.workers > 64 {
        return Err("key `engine.workers`: must be between 1 and 64".into());
    }
    if f.engine.batch_max == 0 || f.engine.batch_max > 10_000 {
        return Err("key `engine.batch_max`: must be between 1 and 10000".into());
    }
    if f.incidents.group_by.is_empty() || f.incidents.group_by.iter().any(|g| g.trim().is_empty()) {
        return Err("key `incidents.group_by`: list at least one label, e.g. [\"service\", \"env|environment\"]".into());
    }
    let sweep_interval = positive("engine.sweep_interval", f.engine.sweep_interval)?;
    let playbooks_reload = positive("playbooks.reload_interval", f.playbooks.reload_interval)?;
    let timezone: chrono_tz::Tz = f.postmortem.timezone.parse().map_err(|_| {
        format!(
            "key `postmortem.timezone`: {:?} is not an IANA time zone: use e.g. UTC, Europe/Berlin, America/New_York",
            f.postmortem.timezone
        )
    })?;
    let postmortem_interval = positive("postmortem.interval", f.postmortem.interval)?;
    if !(1..=20).contains(&f.automation.max_attempts) {
        return Err("key `automation.max_attempts`: must be between 1 and 20".into());
    }
    for (key, budget) in [
        ("automation.max_actions", f.automation.max_actions),
        ("automation.manual.max_runs", f.automation.manual.max_runs),
    ] {
        if budget.is_some_and(|b| b.count == 0) {
            return Err(format!("key `{key}.count`: must be at least 1"));
        }
    }
    if let Some(w) = &f.automation.escalate_webhook {
        if !f.notify.contains_key(w) {
            return Err(format!(
                "key `automation.escalate_webhook`: notifier {w:?} is not configured: add [notify.{w}]"
            ));
        }
    }
    f.trackers.check()?;
    if f.slack.channel.is_some() && f.slack.bot_token.is_none() {
        return Err(
            "key `slack.channel`: needs slack.bot_token (FIREBREAK_SLACK_BOT_TOKEN) to post".into(),
        );
    }
    if f.automation.escalate_slack.is_some() && f.slack.bot_token.is_none() {
        return Err(
            "key `automation.escalate_slack`: needs slack.bot_token (FIREBREAK_SLACK_BOT_TOKEN)"
                .into(),
        );
    }
    for (key, url) in [
        ("slack.api_url", Some(&f.slack.api_url)),
        ("slack.public_url", f.slack.public_url.as_ref()),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "key `{key}`: {url:?} is not an http:// or https:// URL"
                ));
            }
        }
    }
    // Leases are renewed every third of their length while a step runs: a
    // few seconds is enough, and a crashed process's work is taken over fast.
    let lease = f.automation.lease.to_std();
    if lease < Duration::from_secs(3) || lease > Duration::from_secs(600) {
        return Err(format!(
            "key `automation.lease`: {} is out of range: use 3s to 10m (15s by default; it is renewed while a step runs)",
            f.automation.lease
        ));
    }
    let escalate = (f.automation.escalate_slack.is_some()
        || f.automation.escalate_webhook.is_some())
    .then(|| NotifyStep {
        slack: f.automation.escalate_slack.clone(),
        webhook: f.automation.escalate_webhook.clone(),
        message: None,
    });
    let policy = CorrelationPolicy {
        group_by: f.incidents.group_by,
        reopen_window: f.incidents.reopen_window.0,
        quiet_period: f.incidents.quiet_period.0,
        deploy_lookback: f.incidents.deploy_lookback.0,
    };
    let policy_lookback = policy.deploy_lookback;
    let node = if f.node.trim().is_empty() {
        host_name()
    } else if f.node.contains('/') || f.node.chars().any(char::is_whitespace) {
        return Err(format!(
            "key `node`: {:?} must not contain '/' or spaces",
            f.node
        ));
    } else {
        f.node
    };
    let reclaim_all = database_url.starts_with("sqlite:");
    let auth = auth_config(
        &f.auth,
        &f.api,
        &f.ingest.tokens,
        f.slack.public_url.clone(),
        o,
    )?;
    let audit_witness = f
        .audit
        .witness
        .clone()
        .unwrap_or_else(|| data_dir.join("audit.witness"));
    Ok(Config {
        listen,
        data_dir,
        database_url: Url(database_url),
        amqp_url: amqp_url.clone().map(Url),
        amqp_namespace: f.amqp.namespace,
        amqp_publish_timeout: f.amqp.publish_timeout.to_std(),
        roles,
        json_logs,
        auth,
        max_body_bytes: f.ingest.max_body_bytes,
        http: crate::http::Limits {
            header_read_timeout: f.http.header_read_timeout.to_std(),
            body_read_timeout: f.http.body_read_timeout.to_std(),
            write_timeout: f.http.write_timeout.to_std(),
            max_connections: f.http.max_connections,
        },
        backpressure: firebreak_api::ingest::Backpressure {
            max_depth: f.ingest.max_backlog,
            max_age: f.ingest.max_backlog_age.to_std(),
        },
        max_message_bytes: if amqp_url.is_some() {
            f.amqp.max_message_bytes
        } else {
            EMBEDDED_MAX_MESSAGE
        },
        engine: EngineConfig {
            policy,
            batch_max: f.engine.batch_max,
            prefetch: f.amqp.prefetch,
            workers: f.engine.workers,
            sweep_interval,
        },
        playbooks_dir: o.playbooks.clone().or(f.playbooks.dir),
        playbooks_reload,
        postmortem: firebreak_postmortem::PostmortemConfig {
            templates: o.templates.clone().unwrap_or(f.postmortem.templates),
            timezone,
            lookback: policy_lookback,
            log_lead: f.postmortem.log_lead.0,
        },
        postmortem_interval,
        remediation: RemediationConfig {
            policy: AutomationPolicy {
                dry_run: f.automation.dry_run,
                max_actions: f.automation.max_actions,
                escalate,
                manual: f.automation.manual,
                four_eyes: f.automation.four_eyes,
                four_eyes_min_role: f.automation.four_eyes_min_role,
                freezes: f.automation.freeze,
                approval_ttl: {
                    positive("automation.approval_ttl", f.automation.approval_ttl)?;
                    f.automation.approval_ttl.0
                },
            },
            lease,
            max_attempts: f.automation.max_attempts,
            backoff: f.automation.retry_backoff.to_std(),
            node,
            reclaim_all,
            severities: {
                let scale = firebreak_domain::response::SeverityScale {
                    levels: f.incidents.severities.clone(),
                    from_labels: f
                        .incidents
                        .severity_from_labels
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                };
                scale.validate()?;
                scale
            },
            ..RemediationConfig::default()
        },
        kill_switches: f.kill_switch,
        rollbacks: f.rollback,
        notifiers: f.notify,
        slack: f.slack,
        trackers: f.trackers,
        audit_witness,
        audit_key: f.audit.key,
        fractional: f.flags.fractional,
    })
}

/// Static tokens (the bootstrap admin token, and the older per-purpose
/// tokens with the scopes they always had), the proxy, cookies and origins.
fn auth_config(
    a: &AuthSection,
    api: &ApiSection,
    ingest: &TokensSection,
    public_url: Option<String>,
    o: &Overrides,
) -> Result<AuthConfig, String> {
    let mut static_tokens = Vec::new();
    let mut add = |key: &str, secret: &Option<Secret>, scopes: Vec<Scope>| -> Result<(), String> {
        if let Some(secret) = secret {
            if secret.expose().len() < 24 {
                return Err(format!(
                    "key `{key}`: a token must be at least 24 characters (e.g. openssl rand -hex 32)"
                ));
            }
            static_tokens.push(StaticToken {
                name: key.to_string(),
                secret: secret.clone(),
                scopes,
            });
        }
        Ok(())
    };
    add(
        "auth.bootstrap_token",
        &a.bootstrap_token,
        vec![Scope::Admin],
    )?;
    add(
        "api.token",
        &api.token,
        vec![Scope::Read, Scope::Edit, Scope::Operate, Scope::Admin],
    )?;
    add("api.ofrep_token", &api.ofrep_token, vec![Scope::FlagsRead])?;
    for (key, t) in [
        ("ingest.tokens.alertmanager", &ingest.alertmanager),
        ("ingest.tokens.deploy", &ingest.deploy),
        ("ingest.tokens.gate", &ingest.gate),
        ("ingest.tokens.logs", &ingest.logs),
    ] {
        add(key, t, vec![Scope::Ingest])?;
    }
    for t in &mut static_tokens {
        if t.name == "auth.bootstrap_token" {
            t.name = "bootstrap".into();
        }
    }
    let p = &a.proxy;
    let proxy = if p.trusted.is_empty() {
        None
    } else {
        let trusted = p
            .trusted
            .iter()
            .map(|t| Net::parse(t).map_err(|e| format!("key `auth.proxy.trusted`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let default_role = match p.default_role.trim() {
            "" => None,
            r => Some(Role::parse(r).map_err(|e| format!("key `auth.proxy.default_role`: {e}"))?),
        };
        for (key, h) in [
            ("user_header", &p.user_header),
            ("email_header", &p.email_header),
            ("groups_header", &p.groups_header),
        ] {
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!(
                    "key `auth.proxy.{key}`: {h:?} is not a header name"
                ));
            }
        }
        Some(ProxyAuth {
            trusted,
            user_header: p.user_header.to_ascii_lowercase(),
            email_header: p.email_header.to_ascii_lowercase(),
            groups_header: p.groups_header.to_ascii_lowercase(),
            groups: p.groups.clone(),
            default_role,
        })
    };
    let cookie_secure = match a.cookie_secure.as_str() {
        "auto" => CookieSecure::Auto,
        "always" | "true" => CookieSecure::Always,
        "never" | "false" => CookieSecure::Never,
        other => {
            return Err(format!(
                "key `auth.cookie_secure`: {other:?} is not auto, always or never"
            ))
        }
    };
    for origin in &a.allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://"))
            || origin.matches('/').count() > 2
        {
            return Err(format!(
                "key `auth.allowed_origins`: {origin:?} is not an origin like https://firebreak.example.com"
            ));
        }
    }
    Ok(AuthConfig {
        static_tokens,
        proxy,
        oidc: oidc_config(&a.oidc)?,
        session_ttl: positive("auth.session_ttl", a.session_ttl)?,
        cookie_secure,
        allowed_origins: a.allowed_origins.clone(),
        public_url,
        insecure_no_auth: a.insecure_no_auth || o.insecure_no_auth,
    })
}

/// `[auth.oidc]`: off with an empty issuer; otherwise every key it needs,
/// checked here so that a mistake stops the start with the key named.
fn oidc_config(o: &OidcSection) -> Result<Option<OidcConfig>, String> {
    if o.issuer.trim().is_empty() {
        return Ok(None);
    }
    let secret = o
        .client_secret
        .clone()
        .filter(|s| !s.expose().is_empty())
        .ok_or("key `auth.oidc.client_secret`: missing (set FIREBREAK_AUTH__OIDC__CLIENT_SECRET from your provider's client)")?;
    if o.client_id.trim().is_empty() {
        return Err(
            "key `auth.oidc.client_id`: missing (the client id your provider gave Firebreak)"
                .into(),
        );
    }
    let callback_ok = reqwest::Url::parse(&o.redirect_url)
        .is_ok_and(|u| u.path() == "/auth/oidc/callback" && matches!(u.scheme(), "http" | "https"));
    if !callback_ok {
        return Err(format!(
            "key `auth.oidc.redirect_url`: {:?} is not Firebreak's callback as browsers reach it, like https://firebreak.example.com/auth/oidc/callback",
            o.redirect_url
        ));
    }
    let default_role = match o.default_role.trim() {
        "" => None,
        r => Some(Role::parse(r).map_err(|e| format!("key `auth.oidc.default_role`: {e}"))?),
    };
    let config = OidcConfig {
        issuer: o.issuer.trim().to_string(),
        client_id: o.client_id.trim().to_string(),
        client_secret: secret,
        redirect_url: o.redirect_url.clone(),
        display_name: o.display_name.clone(),
        scopes: o.scopes.clone(),
        username_claim: o.username_claim.clone(),
        email_claim: o.email_claim.clone(),
        groups_claim: o.groups_claim.clone(),
        group_roles: o.group_roles.clone(),
        default_role,
    };
    firebreak_api::oidc::Oidc::new(config.clone())?;
    Ok(Some(config))
}

/// Parses a duration with the one grammar (`500ms`, `30s`, `5m`, `2h`, `1h30m`, `7d`).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    Dur::parse(raw).ok().map(Dur::to_std)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error loading gives for one environment variable.
    fn refused_env(key: &str, value: &str) -> String {
        load_with(None, &[(key, value)], Overrides::default()).expect_err("the value is refused")
    }

    fn load_with(file: Option<&str>, env: &[(&str, &str)], o: Overrides) -> Result<Config, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("firebreak.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).expect("write");
        }
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(file.map(|_| path.as_path()), &vars, &o)
    }

    #[test]
    fn zero_configuration_is_embedded() {
        let c = load_with(None, &[], Overrides::default()).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url.0, "sqlite://./data/firebreak.db");
        assert!(c.amqp_url.is_none());
        assert_eq!(
            c.roles,
            Roles {
                ingest: true,
                engine: true,
                api: true
            }
        );
        assert_eq!(c.engine.policy.quiet_period, chrono::Duration::minutes(5));
        assert_eq!(c.remediation.lease, Duration::from_secs(15));
        assert!(
            c.remediation.reclaim_all,
            "SQLite is one process: reclaim every lease at start"
        );
    }

    #[test]
    fn a_cluster_is_a_list_of_brokers_and_no_password_is_repeated() {
        let list = "amqp://fb:p1@r1:5672/%2f,amqp://fb:p2@r2:5672/%2f, amqp://fb:p3@r3:5672/%2f";
        let c = load_with(None, &[("FIREBREAK_AMQP_URL", list)], Overrides::default())
            .expect("a list is valid");
        let url = c.amqp_url.expect("brokers set");
        assert_eq!(url.0.split(',').count(), 3);
        let shown = url.to_string();
        assert!(
            !shown.contains("p1") && !shown.contains("p2") && !shown.contains("p3"),
            "{shown}"
        );
        let c = load_with(
            None,
            &[("FIREBREAK_AMQP__URLS", "amqp://a:5672,amqp://b:5672")],
            Overrides::default(),
        )
        .expect("amqp.urls is valid");
        assert_eq!(
            c.amqp_url.expect("brokers set").0,
            "amqp://a:5672,amqp://b:5672"
        );
        let err = load_with(
            None,
            &[(
                "FIREBREAK_AMQP_URL",
                "amqp://fb:secret@r1,http://fb:secret@r2",
            )],
            Overrides::default(),
        )
        .expect_err("an http URL is refused");
        assert!(
            err.contains("is not an amqp:// URL") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn oidc_is_off_until_an_issuer_is_set_then_each_missing_key_is_named() {
        let c = load_with(None, &[], Overrides::default()).expect("defaults");
        assert!(c.auth.oidc.is_none());
        let file = r#"
[auth.oidc]
issuer = "https://id.example.com/realms/ops"
client_id = "firebreak"
redirect_url = "https://fb.example.com/auth/oidc/callback"
default_role = "viewer"
[auth.oidc.group_roles]
SRE-Oncall = "operator"
"#;
        let err = load_with(Some(file), &[], Overrides::default()).expect_err("no secret");
        assert!(err.contains("auth.oidc.client_secret"), "{err}");
        let secret = [(
            "FIREBREAK_AUTH__OIDC__CLIENT_SECRET",
            "s3cret-from-the-provider",
        )];
        let c = load_with(Some(file), &secret, Overrides::default()).expect("complete");
        let o = c.auth.oidc.expect("configured");
        assert_eq!(
            o.group_roles.get("SRE-Oncall"),
            Some(&Role::Operator),
            "group names keep their case"
        );
        assert_eq!(o.default_role, Some(Role::Viewer));
        assert!(
            !format!("{o:?}").contains("s3cret"),
            "the secret is never printed"
        );
        let elsewhere = file.replace("/auth/oidc/callback", "/callback");
        let err = load_with(Some(&elsewhere), &secret, Overrides::default())
            .expect_err("not the callback");
        assert!(err.contains("auth.oidc.redirect_url"), "{err}");
    }

    #[test]
    fn file_then_env_then_flags() {
        let file = "listen = \"127.0.0.1:9000\"\n[incidents]\nquiet_period = \"1m\"\n[engine]\nworkers = 3\nbatch_max = 10\n";
        let c = load_with(
            Some(file),
            &[
                ("FIREBREAK_QUIET_PERIOD", "10s"),
                ("FIREBREAK_DATABASE_URL", "postgres://u:p@h/db"),
                ("FIREBREAK_ENGINE__BATCH_MAX", "20"),
            ],
            Overrides {
                listen: Some("127.0.0.1:9100".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.engine.policy.quiet_period, chrono::Duration::seconds(10));
        assert_eq!(
            c.engine.workers, 3,
            "the file keeps what the environment does not set"
        );
        assert_eq!(c.engine.batch_max, 20, "the environment beats the file");
        assert_eq!(c.database_url.0, "postgres://u:p@h/db");
        assert!(!c.remediation.reclaim_all);
    }

    #[test]
    fn every_key_has_an_environment_twin() {
        let c = load_with(
            None,
            &[
                ("FIREBREAK_AUTOMATION__DRY_RUN", "true"),
                ("FIREBREAK_AUTOMATION__LEASE", "30s"),
                ("FIREBREAK_AUTOMATION__MANUAL__REQUIRE_APPROVAL", "yes"),
                ("FIREBREAK_AUTOMATION__MANUAL__COOLDOWN", "5m"),
                ("FIREBREAK_AUTOMATION__MAX_ACTIONS__COUNT", "7"),
                ("FIREBREAK_AUTOMATION__MAX_ACTIONS__PER", "1h"),
                ("FIREBREAK_INCIDENTS__GROUP_BY", "team, env"),
                ("FIREBREAK_SLACK__ALLOWED_USERS", "U1,U2"),
                ("FIREBREAK_KILL_SWITCH__UNLEASH__TYPE", "unleash"),
                ("FIREBREAK_KILL_SWITCH__UNLEASH__URL", "http://unleash:4242"),
                ("FIREBREAK_KILL_SWITCH__UNLEASH__TOKEN", "tok"),
                ("FIREBREAK_LISTEN", "127.0.0.1:9200"),
                ("FIREBREAK_NODE", "engine-2"),
                ("FIREBREAK_SECRET_UNUSED", "whatever"),
            ],
            Overrides::default(),
        )
        .expect("valid");
        let p = &c.remediation.policy;
        assert!(p.dry_run && p.manual.require_approval);
        assert_eq!(
            p.manual.cooldown.map(|d| d.to_string()).as_deref(),
            Some("5m")
        );
        assert_eq!(p.max_actions.map(|b| b.count), Some(7));
        assert_eq!(c.remediation.lease, Duration::from_secs(30));
        assert_eq!(c.engine.policy.group_by, vec!["team", "env"]);
        assert_eq!(c.slack.allowed_users, vec!["U1", "U2"]);
        assert!(c.kill_switches.contains_key("unleash"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9200");
        assert_eq!(c.remediation.node, "engine-2");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_with(
            Some("[incidents]\nquiet_period = \"5x\"\n"),
            &[],
            Overrides::default(),
        )
        .expect_err("bad");
        assert!(
            e.contains("incidents.quiet_period") && e.contains("is not a duration"),
            "{e}"
        );
        let e = load_with(Some("lisen = \"x\"\n"), &[], Overrides::default()).expect_err("typo");
        assert!(e.contains("lisen"), "{e}");
        let e = refused_env("FIREBREAK_ENGINE_WORKERS", "many");
        assert!(e.contains("FIREBREAK_ENGINE_WORKERS"), "{e}");
        let e = refused_env("FIREBREAK_INCIDENTS__QUIET_PERIOD", "soon");
        assert!(
            e.contains("incidents.quiet_period") && e.contains("FIREBREAK_INCIDENTS__QUIET_PERIOD"),
            "{e}"
        );
        let e = refused_env("FIREBREAK_ENGINE__WORKRS", "3");
        assert!(e.contains("workrs"), "{e}");
        let e = refused_env("FIREBREAK_DATABASE_URL", "mysql://u:pw@h/db");
        assert!(e.contains("database_url") && !e.contains("pw"), "{e}");
        let e = load_with(
            None,
            &[],
            Overrides {
                roles: Some("ingest,egnine".into()),
                ..Overrides::default()
            },
        )
        .expect_err("bad role");
        assert!(e.contains("roles") && e.contains("egnine"), "{e}");
        let e = refused_env("FIREBREAK_SLACK__PUBLIC_URL", "firebreak.example.com");
        assert!(e.contains("slack.public_url"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = load_with(
            None,
            &[
                ("FIREBREAK_API_TOKEN", "s3cret-s3cret-s3cret-s3cret"),
                ("FIREBREAK_DATABASE_URL", "postgres://fb:pw0rd@db/firebreak"),
            ],
            Overrides::default(),
        )
        .expect("valid");
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("pw0rd"),
            "{printed}"
        );
    }

    #[test]
    fn a_freeze_window_reads_in_a_named_time_zone() {
        let file = "[[automation.freeze]]\nname = \"office-hours\"\nwindow = { days = [\"mon-fri\"], from = \"09:00\", to = \"17:00\", timezone = \"America/New_York\" }\n";
        let c = load_with(Some(file), &[], Overrides::default()).expect("valid");
        let freeze = &c.remediation.policy.freezes[0];
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().expect("time");
        // 13:30 UTC is 09:30 in New York in summer (EDT) but 08:30 in winter (EST).
        assert!(freeze.applies("checkout", None, at("2026-07-01T13:30:00Z")));
        assert!(!freeze.applies("checkout", None, at("2026-12-01T13:30:00Z")));
        let bad = file.replace("America/New_York", "America/Gotham");
        let err = load_with(Some(&bad), &[], Overrides::default())
            .expect_err("a misspelt zone is refused");
        assert!(
            err.contains("\"America/Gotham\" is not an IANA time zone"),
            "{err}"
        );
    }

    #[test]
    fn leases_are_short_and_bounded() {
        let err = load_with(
            Some("[automation]\nlease = \"1s\"\n"),
            &[],
            Overrides::default(),
        )
        .expect_err("a lease under 3s is refused");
        assert!(err.contains("automation.lease"), "{err}");
        assert!(load_with(
            Some("[automation]\nlease = \"5s\"\n"),
            &[],
            Overrides::default()
        )
        .is_ok());
    }

    #[test]
    fn durations_share_the_playbook_grammar() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1w"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
