//! The configuration file's shape, section by section: what `deny_unknown_fields` checks every key against.

#[allow(unused_imports)]
use super::*;

/// The file's shape. Every layer is merged into one table first; unknown
/// keys are errors naming the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default)]
    pub amqp_url: Option<String>,
    pub roles: Vec<String>,
    pub log_format: String,
    pub node: String,
    pub amqp: AmqpSection,
    pub ingest: IngestSection,
    pub http: HttpSection,
    pub api: ApiSection,
    pub engine: EngineSection,
    pub incidents: IncidentsSection,
    pub playbooks: PlaybooksSection,
    pub postmortem: PostmortemSection,
    pub automation: AutomationSection,
    pub auth: AuthSection,
    #[serde(default)]
    pub audit: AuditSection,
    pub flags: FlagsSection,
    #[serde(default)]
    pub kill_switch: BTreeMap<String, KillSwitchConfig>,
    #[serde(default)]
    pub rollback: BTreeMap<String, RollbackConfig>,
    #[serde(default)]
    pub notify: BTreeMap<String, NotifierConfig>,
    pub slack: SlackConfig,
    #[serde(default)]
    pub trackers: TrackersConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    pub namespace: String,
    pub prefetch: u16,
    /// The broker's largest message (RabbitMQ 4: 16 MiB by default).
    pub max_message_bytes: usize,
    /// A publish, subscribe or ping without an answer within this fails.
    pub publish_timeout: Dur,
    /// A cluster's nodes (instead of `amqp_url`): each connection tries the
    /// node that answered last, then the others.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    pub max_body_bytes: usize,
    /// Bulk messages waiting above which ingest answers 503 with Retry-After.
    pub max_backlog: u64,
    /// How long the oldest bulk message may wait before the same.
    pub max_backlog_age: Dur,
    pub tokens: TokensSection,
}

/// The built-in flags (OFREP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsSection {
    /// flagd's bucketing of `fractional` splits: `v2` (flagd's evaluator
    /// today) or `v1` (flagd before it), so a user lands in the same bucket
    /// here as in the flagd beside it.
    pub fractional: firebreak_domain::flagd::Bucketing,
}

/// The audit trail's protection (see `crate::audit`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The HMAC key of the audit chain; unset: `<data_dir>/audit.key`,
    /// created on first use.
    pub key: Option<Secret>,
    /// Where the chain's head is recorded as it grows; unset:
    /// `<data_dir>/audit.witness`.
    pub witness: Option<PathBuf>,
}

/// Connection limits of the HTTP server (see `crate::http`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub header_read_timeout: Dur,
    pub body_read_timeout: Dur,
    pub write_timeout: Dur,
    pub max_connections: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    #[serde(default)]
    pub alertmanager: Option<Secret>,
    #[serde(default)]
    pub deploy: Option<Secret>,
    #[serde(default)]
    pub gate: Option<Secret>,
    #[serde(default)]
    pub logs: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default)]
    pub token: Option<Secret>,
    /// Bearer token applications present on the OFREP endpoints; unset: open.
    #[serde(default)]
    pub ofrep_token: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub workers: usize,
    pub batch_max: usize,
    pub sweep_interval: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsSection {
    pub group_by: Vec<String>,
    pub reopen_window: Dur,
    pub quiet_period: Dur,
    pub deploy_lookback: Dur,
    /// The severity scale people declare on, most severe first.
    pub severities: Vec<String>,
    /// Alert `severity` label -> level, for incidents alerts open.
    pub severity_from_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybooksSection {
    /// Directory of playbook files; unset: no playbooks, no automation.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    pub reload_interval: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostmortemSection {
    /// Directory holding postmortem.md.hbs (read at every render).
    pub templates: PathBuf,
    /// IANA time zone for times in drafts, e.g. "Europe/Berlin".
    pub timezone: String,
    /// How often the engine looks for resolved incidents without a draft.
    pub interval: Dur,
    /// Logs from this long before the suspect change (or the first alert)
    /// are mined for the draft and the incident page.
    pub log_lead: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationSection {
    pub dry_run: bool,
    /// Global budget, e.g. `{ count = 10, per = "1h" }`.
    #[serde(default)]
    pub max_actions: Option<Budget>,
    /// Where held and failed actions are escalated: a Slack channel and/or a notifier.
    #[serde(default)]
    pub escalate_slack: Option<String>,
    #[serde(default)]
    pub escalate_webhook: Option<String>,
    pub max_attempts: i32,
    pub retry_backoff: Dur,
    pub lease: Dur,
    pub four_eyes: bool,
    pub four_eyes_min_role: Role,
    pub approval_ttl: Dur,
    /// The guard of people's requests.
    pub manual: Guard,
    /// Change freezes: `[[automation.freeze]]` with `name`, optional
    /// `services` and `environments`, and a `window`.
    #[serde(default)]
    pub freeze: Vec<firebreak_domain::action::Freeze>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub bootstrap_token: Option<Secret>,
    pub insecure_no_auth: bool,
    pub session_ttl: Dur,
    pub cookie_secure: String,
    pub allowed_origins: Vec<String>,
    pub proxy: ProxySection,
    pub oidc: OidcSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    pub redirect_url: String,
    pub display_name: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub email_claim: String,
    pub groups_claim: String,
    pub default_role: String,
    #[serde(default)]
    pub group_roles: BTreeMap<String, Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub trusted: Vec<String>,
    pub user_header: String,
    pub email_header: String,
    pub groups_header: String,
    pub default_role: String,
    #[serde(default)]
    pub groups: BTreeMap<String, Role>,
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
