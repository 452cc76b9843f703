//! Configuration: embedded defaults, then an optional TOML file, then
//! `FIREBREAK_*` environment variables, then command-line flags. Validated once
//! at boot; every error names the key and what would be right.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use firebreak_actions::{KillSwitchConfig, NotifierConfig, RollbackConfig, SlackConfig};
use firebreak_api::{Secret, Tokens};
use firebreak_domain::correlation::CorrelationPolicy;
use firebreak_domain::playbook::{Budget, NotifyStep};
use firebreak_engine::{AutomationPolicy, EngineConfig};
use serde::Deserialize;

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

/// The file's shape (and the defaults). Unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub amqp_url: Option<String>,
    pub roles: Vec<String>,
    pub log_format: String,
    pub amqp: AmqpSection,
    pub ingest: IngestSection,
    pub api: ApiSection,
    pub engine: EngineSection,
    pub incidents: IncidentsSection,
    pub playbooks: PlaybooksSection,
    pub postmortem: PostmortemSection,
    pub automation: AutomationSection,
    pub kill_switch: BTreeMap<String, KillSwitchConfig>,
    pub rollback: BTreeMap<String, RollbackConfig>,
    pub notify: BTreeMap<String, NotifierConfig>,
    pub slack: SlackConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybooksSection {
    /// Directory of playbook files; unset: no playbooks, no automation.
    pub dir: Option<PathBuf>,
    pub reload_interval: String,
}

impl Default for PlaybooksSection {
    fn default() -> Self {
        PlaybooksSection {
            dir: None,
            reload_interval: "2s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostmortemSection {
    /// Directory holding postmortem.md.hbs (read at every render).
    pub templates: PathBuf,
    /// IANA time zone for times in drafts, e.g. "Europe/Berlin".
    pub timezone: String,
    /// How often the engine looks for resolved incidents without a draft.
    pub interval: String,
}

impl Default for PostmortemSection {
    fn default() -> Self {
        PostmortemSection {
            templates: PathBuf::from("templates"),
            timezone: "UTC".into(),
            interval: "2s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutomationSection {
    pub dry_run: bool,
    /// Global budget, e.g. `{ count = 10, per = "1h" }`.
    pub max_actions: Option<Budget>,
    /// Where held and failed actions are escalated: a Slack channel and/or a notifier.
    pub escalate_slack: Option<String>,
    pub escalate_webhook: Option<String>,
    pub max_attempts: i32,
    pub retry_backoff: String,
    pub lease: String,
}

impl Default for AutomationSection {
    fn default() -> Self {
        AutomationSection {
            dry_run: false,
            max_actions: None,
            escalate_slack: None,
            escalate_webhook: None,
            max_attempts: 3,
            retry_backoff: "1s".into(),
            lease: "10m".into(),
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            amqp_url: None,
            roles: vec!["ingest".into(), "engine".into(), "api".into()],
            log_format: "text".into(),
            amqp: AmqpSection::default(),
            ingest: IngestSection::default(),
            api: ApiSection::default(),
            engine: EngineSection::default(),
            incidents: IncidentsSection::default(),
            playbooks: PlaybooksSection::default(),
            postmortem: PostmortemSection::default(),
            automation: AutomationSection::default(),
            kill_switch: BTreeMap::new(),
            rollback: BTreeMap::new(),
            notify: BTreeMap::new(),
            slack: SlackConfig::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSection {
    pub namespace: String,
    pub prefetch: u16,
}

impl Default for AmqpSection {
    fn default() -> Self {
        AmqpSection {
            namespace: "firebreak".into(),
            prefetch: 256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    pub max_body_bytes: usize,
    pub tokens: TokensSection,
}

impl Default for IngestSection {
    fn default() -> Self {
        // A 10,000-alert storm in one webhook is about 10 MB; leave room.
        IngestSection {
            max_body_bytes: 32 * 1024 * 1024,
            tokens: TokensSection::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensSection {
    pub alertmanager: Option<Secret>,
    pub deploy: Option<Secret>,
    pub gate: Option<Secret>,
    pub logs: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub token: Option<Secret>,
    /// Bearer token applications present on the OFREP endpoints; unset: open.
    pub ofrep_token: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub workers: usize,
    pub batch_max: usize,
    pub sweep_interval: String,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            workers: 2,
            batch_max: 64,
            sweep_interval: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsSection {
    pub group_by: Vec<String>,
    pub reopen_window: String,
    pub quiet_period: String,
    pub deploy_lookback: String,
}

impl Default for IncidentsSection {
    fn default() -> Self {
        IncidentsSection {
            group_by: vec!["service".into(), "env|environment".into()],
            reopen_window: "30m".into(),
            quiet_period: "5m".into(),
            deploy_lookback: "2h".into(),
        }
    }
}

/// A connection URL that may carry a password: `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Url(pub String);

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", firebreak_store::redact_url(&self.0))
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&firebreak_store::redact_url(&self.0))
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
    pub roles: Roles,
    pub json_logs: bool,
    pub tokens: Tokens,
    pub max_body_bytes: usize,
    pub engine: EngineConfig,
    pub playbooks_dir: Option<PathBuf>,
    pub playbooks_reload: Duration,
    pub postmortem: firebreak_postmortem::PostmortemConfig,
    pub postmortem_interval: Duration,
    pub executor: firebreak_actions::ExecutorConfig,
    pub kill_switches: BTreeMap<String, KillSwitchConfig>,
    pub rollbacks: BTreeMap<String, RollbackConfig>,
    pub notifiers: BTreeMap<String, NotifierConfig>,
    pub slack: SlackConfig,
}

impl Config {
    pub fn queue_url(&self) -> String {
        format!("sqlite://{}", self.data_dir.join("queue.db").display())
    }

    pub fn uses_sqlite_dir(&self) -> bool {
        self.database_url.0.starts_with("sqlite:") || self.amqp_url.is_none()
    }
}

/// Environment variables and the key each sets. Flags (`--listen`, `--data-dir`,
/// `--roles`, `--log-format`) read their own twins.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("FIREBREAK_DATABASE_URL", "database_url"),
    ("FIREBREAK_AMQP_URL", "amqp_url"),
    ("FIREBREAK_AMQP_NAMESPACE", "amqp.namespace"),
    ("FIREBREAK_AMQP_PREFETCH", "amqp.prefetch"),
    ("FIREBREAK_MAX_BODY_BYTES", "ingest.max_body_bytes"),
    ("FIREBREAK_TOKEN_ALERTMANAGER", "ingest.tokens.alertmanager"),
    ("FIREBREAK_TOKEN_DEPLOY", "ingest.tokens.deploy"),
    ("FIREBREAK_TOKEN_GATE", "ingest.tokens.gate"),
    ("FIREBREAK_TOKEN_LOGS", "ingest.tokens.logs"),
    ("FIREBREAK_API_TOKEN", "api.token"),
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
    ("FIREBREAK_OFREP_TOKEN", "api.ofrep_token"),
    ("FIREBREAK_SLACK_BOT_TOKEN", "slack.bot_token"),
    ("FIREBREAK_SLACK_API_URL", "slack.api_url"),
    ("FIREBREAK_SLACK_SIGNING_SECRET", "slack.signing_secret"),
    ("FIREBREAK_SLACK_CHANNEL", "slack.channel"),
    ("FIREBREAK_SLACK_ALLOWED_USERS", "slack.allowed_users"),
    ("FIREBREAK_SLACK_ALLOWED_GROUPS", "slack.allowed_groups"),
    ("FIREBREAK_PUBLIC_URL", "slack.public_url"),
];

const BOOL_KEYS: &[&str] = &["automation.dry_run"];

const INTEGER_KEYS: &[&str] = &[
    "amqp.prefetch",
    "ingest.max_body_bytes",
    "engine.workers",
    "engine.batch_max",
];
const LIST_KEYS: &[&str] = &[
    "incidents.group_by",
    "slack.allowed_users",
    "slack.allowed_groups",
];

/// Flag values (already merged with their env twins by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub roles: Option<String>,
    pub log_format: Option<String>,
    pub playbooks: Option<PathBuf>,
    pub templates: Option<PathBuf>,
}

pub fn load(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Config, String> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for (var, key) in ENV_KEYS {
        let Some(raw) = env(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = if BOOL_KEYS.contains(key) {
            toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(format!("{var} (key `{key}`): {raw:?} is not true or false")),
            })
        } else if INTEGER_KEYS.contains(key) {
            toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| format!("{var} (key `{key}`): {raw:?} is not a whole number"))?,
            )
        } else if LIST_KEYS.contains(key) {
            toml::Value::Array(
                raw.split(',')
                    .map(|s| toml::Value::String(s.trim().to_string()))
                    .collect(),
            )
        } else {
            toml::Value::String(raw)
        };
        set_path(&mut table, key, value);
    }
    let origin = file
        .map(|p| format!("config file {}", p.display()))
        .unwrap_or_else(|| "environment".into());
    // Provider tokens and headers may name secrets kept in the environment.
    for section in ["kill_switch", "rollback", "notify", "slack"] {
        if let Some(v) = table.get_mut(section) {
            expand_secrets(v, section, &env)?;
        }
    }
    let parsed: FileConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("{origin}: {}", e.message()))?;
    validate(parsed, overrides)
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
    let amqp_url = match f.amqp_url.filter(|u| !u.is_empty()) {
        Some(url) if url.starts_with("amqp://") => Some(url),
        Some(url) if url.starts_with("amqps://") => {
            return Err("key `amqp_url`: amqps:// (TLS) is not supported by this build; use amqp:// on a trusted network".into())
        }
        Some(url) => {
            return Err(format!("key `amqp_url`: {:?} is not an amqp:// URL", firebreak_store::redact_url(&url)))
        }
        None => None,
    };
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
    if f.amqp.prefetch == 0 {
        return Err("key `amqp.prefetch`: must be at least 1".into());
    }
    if f.ingest.max_body_bytes < 1024 {
        return Err("key `ingest.max_body_bytes`: must be at least 1024".into());
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
    let sweep_interval = duration("engine.sweep_interval", &f.engine.sweep_interval)?;
    if sweep_interval.is_zero() {
        return Err("key `engine.sweep_interval`: must be more than 0s".into());
    }
    let playbooks_reload = duration("playbooks.reload_interval", &f.playbooks.reload_interval)?;
    let timezone: chrono_tz::Tz = f.postmortem.timezone.parse().map_err(|_| {
        format!(
            "key `postmortem.timezone`: {:?} is not an IANA time zone: use e.g. UTC, Europe/Berlin, America/New_York",
            f.postmortem.timezone
        )
    })?;
    let postmortem_interval = duration("postmortem.interval", &f.postmortem.interval)?;
    if postmortem_interval.is_zero() {
        return Err("key `postmortem.interval`: must be more than 0s".into());
    }
    if playbooks_reload.is_zero() {
        return Err("key `playbooks.reload_interval`: must be more than 0s".into());
    }
    if !(1..=20).contains(&f.automation.max_attempts) {
        return Err("key `automation.max_attempts`: must be between 1 and 20".into());
    }
    if let Some(b) = &f.automation.max_actions {
        if b.count == 0 {
            return Err("key `automation.max_actions.count`: must be at least 1".into());
        }
    }
    if let Some(w) = &f.automation.escalate_webhook {
        if !f.notify.contains_key(w) {
            return Err(format!(
                "key `automation.escalate_webhook`: notifier {w:?} is not configured: add [notify.{w}]"
            ));
        }
    }
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
    // A running action whose lease expires is treated as in doubt by the next
    // executor: the lease must outlast the slowest provider call.
    let lease = duration("automation.lease", &f.automation.lease)?;
    for (name, r) in &f.rollback {
        let (timeout, default) = match r {
            RollbackConfig::Http { timeout, .. } => (timeout, Duration::from_secs(30)),
            RollbackConfig::Command { timeout, .. } => (timeout, Duration::from_secs(300)),
        };
        let t = timeout.and_then(|d| d.0.to_std().ok()).unwrap_or(default);
        if lease < t + Duration::from_secs(30) {
            return Err(format!(
                "key `automation.lease`: {} is shorter than rollback.{name}'s timeout ({}s) plus 30s; a running rollback would be taken for a crashed one",
                f.automation.lease,
                t.as_secs()
            ));
        }
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
        reopen_window: chrono_duration("incidents.reopen_window", &f.incidents.reopen_window)?,
        quiet_period: chrono_duration("incidents.quiet_period", &f.incidents.quiet_period)?,
        deploy_lookback: chrono_duration(
            "incidents.deploy_lookback",
            &f.incidents.deploy_lookback,
        )?,
    };
    let policy_lookback = policy.deploy_lookback;
    Ok(Config {
        listen,
        data_dir,
        database_url: Url(database_url),
        amqp_url: amqp_url.map(Url),
        amqp_namespace: f.amqp.namespace,
        roles,
        json_logs,
        tokens: Tokens {
            alertmanager: f.ingest.tokens.alertmanager,
            deploy: f.ingest.tokens.deploy,
            gate: f.ingest.tokens.gate,
            logs: f.ingest.tokens.logs,
            api: f.api.token,
            ofrep: f.api.ofrep_token,
        },
        max_body_bytes: f.ingest.max_body_bytes,
        engine: EngineConfig {
            policy,
            batch_max: f.engine.batch_max,
            prefetch: f.amqp.prefetch,
            workers: f.engine.workers,
            sweep_interval,
            automation: AutomationPolicy {
                dry_run: f.automation.dry_run,
                max_actions: f.automation.max_actions,
                escalate: escalate.clone(),
            },
        },
        playbooks_dir: o.playbooks.clone().or(f.playbooks.dir),
        playbooks_reload,
        postmortem: firebreak_postmortem::PostmortemConfig {
            templates: o.templates.clone().unwrap_or(f.postmortem.templates),
            timezone,
            lookback: policy_lookback,
            ..firebreak_postmortem::PostmortemConfig::default()
        },
        postmortem_interval,
        executor: firebreak_actions::ExecutorConfig {
            lease,
            max_attempts: f.automation.max_attempts,
            backoff: duration("automation.retry_backoff", &f.automation.retry_backoff)?,
            escalate,
            ..firebreak_actions::ExecutorConfig::default()
        },
        kill_switches: f.kill_switch,
        rollbacks: f.rollback,
        notifiers: f.notify,
        slack: f.slack,
    })
}

/// `90s`, `5m`, `2h`, `1h30m`, `1d`, `0s`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut number = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        let unit_ms = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(value.checked_mul(unit_ms)?)?;
    }
    if !number.is_empty() {
        return None;
    }
    Some(Duration::from_millis(total))
}

fn duration(key: &str, raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| {
        format!("key `{key}`: {raw:?} is not a duration: use e.g. 500ms, 30s, 5m, 2h, 1h30m")
    })
}

fn chrono_duration(key: &str, raw: &str) -> Result<chrono::Duration, String> {
    let d = duration(key, raw)?;
    chrono::Duration::from_std(d).map_err(|_| format!("key `{key}`: {raw:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(file: Option<&str>, env: &[(&str, &str)], o: Overrides) -> Result<Config, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("firebreak.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).expect("write");
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(
            file.map(|_| path.as_path()),
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &o,
        )
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
    }

    #[test]
    fn file_then_env_then_flags() {
        let file = "listen = \"127.0.0.1:9000\"\n[incidents]\nquiet_period = \"1m\"\n[engine]\nworkers = 3\n";
        let c = load_with(
            Some(file),
            &[
                ("FIREBREAK_QUIET_PERIOD", "10s"),
                ("FIREBREAK_DATABASE_URL", "postgres://u:p@h/db"),
            ],
            Overrides {
                listen: Some("127.0.0.1:9100".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.engine.policy.quiet_period, chrono::Duration::seconds(10));
        assert_eq!(c.engine.workers, 3);
        assert_eq!(c.database_url.0, "postgres://u:p@h/db");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_with(
            Some("[incidents]\nquiet_period = \"5x\"\n"),
            &[],
            Overrides::default(),
        )
        .expect_err("bad");
        assert!(e.contains("incidents.quiet_period"), "{e}");
        let e = load_with(Some("lisen = \"x\"\n"), &[], Overrides::default()).expect_err("typo");
        assert!(e.contains("lisen"), "{e}");
        let e = load_with(
            None,
            &[("FIREBREAK_ENGINE_WORKERS", "many")],
            Overrides::default(),
        )
        .expect_err("bad");
        assert!(e.contains("FIREBREAK_ENGINE_WORKERS"), "{e}");
        let e = load_with(
            None,
            &[("FIREBREAK_DATABASE_URL", "mysql://u:pw@h/db")],
            Overrides::default(),
        )
        .expect_err("bad");
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
    }

    #[test]
    fn secrets_do_not_print() {
        let c = load_with(
            None,
            &[
                ("FIREBREAK_API_TOKEN", "s3cret"),
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
    fn the_action_lease_must_outlast_rollback_timeouts() {
        let file = "[automation]\nlease = \"1m\"\n\n[rollback.script]\ntype = \"command\"\nargv = [\"/bin/true\"]\ntimeout = \"5m\"\n";
        let err = load_with(Some(file), &[], Overrides::default())
            .expect_err("a lease shorter than a rollback timeout is refused");
        assert!(
            err.contains("automation.lease") && err.contains("rollback.script"),
            "{err}"
        );
        let ok = file.replace("lease = \"1m\"", "lease = \"6m\"");
        assert!(load_with(Some(&ok), &[], Overrides::default()).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
