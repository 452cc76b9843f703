//! The outside systems an action calls: kill switch providers (built-in flag
//! store, Unleash, LaunchDarkly, generic HTTP), rollback providers (HTTP
//! templates, a command run without a shell) and notifiers (webhook, Slack).
//!
//! Values that come from alerts are data everywhere: percent-encoded in URLs,
//! JSON-escaped in bodies (bodies are built as JSON values, then serialized),
//! and passed as single argv elements to commands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use firebreak_domain::access::Role;
use firebreak_domain::duration::Dur;
use firebreak_domain::limits::truncate;
use firebreak_domain::playbook::{path_segment, render, render_json, render_url, url_escape};
use firebreak_domain::secret::Secret;
use firebreak_store::{FlagWrite, NewAudit, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ExecError;

/// `[kill_switch.<name>]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum KillSwitchConfig {
    Unleash {
        url: String,
        token: Secret,
        #[serde(default = "default_project")]
        project: String,
        #[serde(default)]
        environment: Option<String>,
    },
    Launchdarkly {
        #[serde(default = "launchdarkly_url")]
        url: String,
        token: Secret,
        project: String,
        #[serde(default)]
        environment: Option<String>,
    },
    Http(HttpSwitchConfig),
}

/// `type = "http"`: any flag service reachable by two HTTP calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSwitchConfig {
    /// Sets the state; placeholders: `{{flag}}`, `{{environment}}`, `{{state}}`
    /// (`on`/`off`); a body string that is exactly `{{enabled}}` becomes a JSON boolean.
    set_url: String,
    #[serde(default = "put")]
    set_method: String,
    #[serde(default)]
    set_body: Option<Value>,
    /// Reads the state back; `state_pointer` (JSON pointer) finds the boolean.
    get_url: String,
    state_pointer: String,
    #[serde(default)]
    headers: BTreeMap<String, Secret>,
    #[serde(default)]
    environment: Option<String>,
}

impl KillSwitchConfig {
    /// The switch this configures, calling out through `http`.
    pub fn switch(self, http: &reqwest::Client) -> Arc<dyn KillSwitch> {
        let http = http.clone();
        // Unleash and LaunchDarkly differ only in the API spoken.
        let api = match self {
            KillSwitchConfig::Unleash { .. } => FlagApi::Unleash,
            _ => FlagApi::LaunchDarkly,
        };
        match self {
            KillSwitchConfig::Unleash {
                url,
                token,
                project,
                environment,
            }
            | KillSwitchConfig::Launchdarkly {
                url,
                token,
                project,
                environment,
            } => Arc::new(FlagService {
                api,
                url,
                token,
                project,
                environment,
                http,
            }),
            KillSwitchConfig::Http(config) => Arc::new(HttpKillSwitch { config, http }),
        }
    }
}

fn default_project() -> String {
    "default".into()
}
fn launchdarkly_url() -> String {
    "https://app.launchdarkly.com".into()
}
fn put() -> String {
    "PUT".into()
}
fn post() -> String {
    "POST".into()
}

/// `[rollback.<name>]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RollbackConfig {
    Http {
        url: String,
        #[serde(default = "post")]
        method: String,
        #[serde(default)]
        headers: BTreeMap<String, Secret>,
        #[serde(default)]
        body: Option<Value>,
        #[serde(default)]
        timeout: Option<Dur>,
    },
    Command {
        argv: Vec<String>,
        #[serde(default)]
        timeout: Option<Dur>,
    },
}

/// `[notify.<name>]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifierConfig {
    Webhook {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, Secret>,
    },
}

/// `[slack]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Bot token for chat.postMessage (FIREBREAK_SLACK_BOT_TOKEN).
    pub bot_token: Option<Secret>,
    /// Verifies requests from Slack (FIREBREAK_SLACK_SIGNING_SECRET).
    pub signing_secret: Option<Secret>,
    pub api_url: String,
    /// Channel for incident threads (opened, actions, resolved); unset: none.
    pub channel: Option<String>,
    /// Slack users (`U…`) and user groups (`S…`) and their roles.
    pub roles: BTreeMap<String, Role>,
    /// The role of Slack users not mapped (`viewer` by default: read-only commands).
    pub default_role: Role,
    /// Older form: these users act as operators.
    pub allowed_users: Vec<String>,
    /// Older form: members of these groups act as operators.
    pub allowed_groups: Vec<String>,
    /// Rollback provider `/firebreak rollback` uses (default: the only one configured).
    pub rollback_provider: Option<String>,
    /// Firebreak's address as people reach it, for links in messages.
    pub public_url: Option<String>,
    /// Slack users (`U…`) who are Firebreak users: `{ U024BE7LH = "ana" }`.
    /// A mapped user acts in Slack as `user:ana`, the same person as on the
    /// web (four-eyes counts them once); others act as `slack:<id>`.
    pub people: BTreeMap<String, String>,
}

fn slack_api() -> String {
    "https://slack.com/api".into()
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            bot_token: None,
            signing_secret: None,
            api_url: slack_api(),
            channel: None,
            roles: BTreeMap::new(),
            default_role: Role::Viewer,
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            rollback_provider: None,
            public_url: None,
            people: BTreeMap::new(),
        }
    }
}

/// A kill switch: read a flag's state, set it.
#[async_trait]
pub trait KillSwitch: Send + Sync {
    /// `None`: the flag does not exist.
    async fn get(&self, flag: &str, env: Option<&str>) -> Result<Option<bool>, ExecError>;
    /// Sets the flag; returns what the provider answered.
    async fn set(
        &self,
        flag: &str,
        env: Option<&str>,
        enabled: bool,
        by: &str,
    ) -> Result<Value, ExecError>;
    /// The environment a step acts in: the step's, else this provider's
    /// default. It is part of the action's target, so one flag is one target
    /// whether or not a step names the default environment.
    fn target_environment<'a>(&'a self, step: Option<&'a str>) -> Option<&'a str>;
    /// The fenced variant of [`KillSwitch::set`], for a running action: sets
    /// the flag and records on the action the state it had, in one step, only
    /// while `owner` holds the action's lease. A provider behind an outside
    /// API cannot (the default): the executor then records the state first
    /// and sets it after.
    async fn set_fenced(&self, _fence: Fence<'_>, _enabled: bool) -> Result<FencedSet, ExecError> {
        Ok(FencedSet::Unsupported)
    }
}

/// Which flag a fenced set is for, and for which action and lease holder.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub flag: &'a str,
    pub env: Option<&'a str>,
    pub action_id: i64,
    pub owner: &'a str,
    /// Who the audit trail names (`action:<id>`).
    pub by: &'a str,
}

/// What [`KillSwitch::set_fenced`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedSet {
    /// Set; the state before (`None`: the flag did not exist) is on the action.
    Set { before: Option<bool> },
    /// The lease had been lost: nothing was written.
    LostLease,
    /// This provider cannot set and record in one step.
    Unsupported,
}

pub struct Builtin {
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl KillSwitch for Builtin {
    fn target_environment<'a>(&'a self, _step: Option<&'a str>) -> Option<&'a str> {
        // Built-in flags have no environments.
        None
    }

    async fn get(&self, flag: &str, _env: Option<&str>) -> Result<Option<bool>, ExecError> {
        match self.store.flag(flag).await {
            Ok(f) => Ok(Some(f.enabled)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(ExecError::retry(format!("built-in flag store: {e}"))),
        }
    }

    async fn set(
        &self,
        flag: &str,
        _env: Option<&str>,
        enabled: bool,
        by: &str,
    ) -> Result<Value, ExecError> {
        let audit = NewAudit::by(
            by.to_string(),
            "flag_set",
            json!({"flag": flag, "enabled": enabled}),
        );
        let previous = self
            .store
            .set_flag(
                &FlagWrite {
                    key: flag,
                    enabled,
                    description: None,
                    by,
                },
                &audit,
            )
            .await
            .map_err(|e| ExecError::retry(format!("built-in flag store: {e}")))?;
        Ok(json!({"flag": flag, "enabled": enabled, "previous": previous}))
    }

    async fn set_fenced(&self, fence: Fence<'_>, enabled: bool) -> Result<FencedSet, ExecError> {
        let audit = NewAudit::by(
            fence.by,
            "flag_set",
            json!({"flag": fence.flag, "enabled": enabled}),
        );
        match self
            .store
            .set_flag_for_action(
                &FlagWrite {
                    key: fence.flag,
                    enabled,
                    description: None,
                    by: fence.by,
                },
                &audit,
                (fence.action_id, fence.owner),
            )
            .await
        {
            Ok(Some(before)) => Ok(FencedSet::Set { before }),
            Ok(None) => Ok(FencedSet::LostLease),
            Err(e) => Err(ExecError::retry(format!("built-in flag store: {e}"))),
        }
    }
}

pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// Sends a request; 2xx returns the body (JSON if it parses), 429/5xx and
/// network errors are worth retrying, other statuses are not.
pub(crate) async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<Value, ExecError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ExecError::retry(format!("{what}: {}", without_url(&e))))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str::<Value>(&text)
        .unwrap_or_else(|_| Value::String(truncate(&text, 2000)));
    if status.is_success() {
        return Ok(json!({"status": status.as_u16(), "body": body}));
    }
    let message = format!("{what}: HTTP {} {}", status.as_u16(), truncate(&text, 300));
    let response = json!({"status": status.as_u16(), "body": body});
    if status.as_u16() == 429 || status.is_server_error() {
        Err(ExecError::retry(message).with_response(response))
    } else {
        Err(ExecError::fatal(message).with_response(response))
    }
}

/// reqwest's errors print the URL, which may carry a token in its query.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Reads a flag's state: `None` when the provider answers 404, else the
/// boolean `extract` finds in the answer's body, or `missing` as the error.
async fn read_state(
    req: reqwest::RequestBuilder,
    what: &str,
    extract: impl FnOnce(&Value) -> Option<bool>,
    missing: impl FnOnce() -> String,
) -> Result<Option<bool>, ExecError> {
    match send(req, what).await {
        Ok(v) => extract(&v["body"])
            .map(Some)
            .ok_or_else(|| ExecError::fatal(missing())),
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

fn trim_slash(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The flag services Firebreak speaks to by their own APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagApi {
    /// Unleash's admin API: a feature's environments, toggled by `…/on` and `…/off`.
    Unleash,
    /// LaunchDarkly's REST API v2: a flag read per environment, turned on or
    /// off by a semantic patch.
    LaunchDarkly,
}

impl FlagApi {
    fn name(self) -> &'static str {
        match self {
            FlagApi::Unleash => "Unleash",
            FlagApi::LaunchDarkly => "LaunchDarkly",
        }
    }
}

/// An Unleash or LaunchDarkly kill switch: where the service is, the token it
/// takes, the project and the default environment.
pub struct FlagService {
    pub api: FlagApi,
    pub url: String,
    pub token: Secret,
    pub project: String,
    pub environment: Option<String>,
    pub http: reqwest::Client,
}

impl FlagService {
    /// The environment a step names, else the provider's.
    fn env<'a>(&'a self, step: Option<&'a str>) -> Result<&'a str, ExecError> {
        self.target_environment(step).ok_or_else(|| {
            ExecError::fatal(format!(
                "{} needs an environment: set `environment` in the step or the provider",
                self.api.name()
            ))
        })
    }

    /// The flag's resource, each value one escaped path segment.
    fn flag_url(&self, flag: &str) -> Result<String, ExecError> {
        let (api, between) = match self.api {
            FlagApi::Unleash => ("api/admin/projects", "features/"),
            FlagApi::LaunchDarkly => ("api/v2/flags", ""),
        };
        Ok(format!(
            "{}/{api}/{}/{between}{}",
            trim_slash(&self.url),
            segment("project", &self.project)?,
            segment("flag", flag)?
        ))
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Authorization", self.token.expose())
    }
}

/// A value as one path segment of a provider's URL, or the step fails naming it.
fn segment(what: &str, value: &str) -> Result<String, ExecError> {
    path_segment(value).map_err(|why| ExecError::fatal(format!("the {what} {why}")))
}

#[async_trait]
impl KillSwitch for FlagService {
    fn target_environment<'a>(&'a self, step: Option<&'a str>) -> Option<&'a str> {
        step.or(self.environment.as_deref())
    }

    async fn get(&self, flag: &str, env: Option<&str>) -> Result<Option<bool>, ExecError> {
        let env = self.env(env)?;
        let url = self.flag_url(flag)?;
        let name = self.api.name();
        let missing = || format!("{name}: flag {flag:?} has no environment {env:?}");
        match self.api {
            FlagApi::Unleash => {
                let req = self.request(reqwest::Method::GET, url);
                let state = |body: &Value| {
                    body["environments"]
                        .as_array()?
                        .iter()
                        .find(|e| e["name"] == env)?["enabled"]
                        .as_bool()
                };
                read_state(req, name, state, missing).await
            }
            FlagApi::LaunchDarkly => {
                let req = self.request(
                    reqwest::Method::GET,
                    format!("{url}?env={}", url_escape(env)),
                );
                let state = |body: &Value| body["environments"][env]["on"].as_bool();
                read_state(req, name, state, missing).await
            }
        }
    }

    async fn set(
        &self,
        flag: &str,
        env: Option<&str>,
        enabled: bool,
        by: &str,
    ) -> Result<Value, ExecError> {
        let env = self.env(env)?;
        let url = self.flag_url(flag)?;
        let req = match self.api {
            FlagApi::Unleash => {
                let on_off = if enabled { "on" } else { "off" };
                let env = segment("environment", env)?;
                let url = format!("{url}/environments/{env}/{on_off}");
                self.request(reqwest::Method::POST, url)
            }
            FlagApi::LaunchDarkly => {
                let kind = if enabled { "turnFlagOn" } else { "turnFlagOff" };
                let body = json!({
                    "environmentKey": env,
                    "instructions": [{"kind": kind}],
                    "comment": format!("Firebreak ({by})"),
                });
                self.request(reqwest::Method::PATCH, url)
                    .header(
                        "Content-Type",
                        "application/json; domain-model=launchdarkly.semanticpatch",
                    )
                    .body(body.to_string())
            }
        };
        send(req, self.api.name()).await
    }
}

pub struct HttpKillSwitch {
    config: HttpSwitchConfig,
    http: reqwest::Client,
}

impl HttpKillSwitch {
    fn vars(
        &self,
        flag: &str,
        env: Option<&str>,
        enabled: Option<bool>,
    ) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        v.insert("flag".to_string(), flag.to_string());
        v.insert(
            "environment".to_string(),
            env.or(self.config.environment.as_deref())
                .unwrap_or("")
                .to_string(),
        );
        if let Some(e) = enabled {
            v.insert("enabled".to_string(), e.to_string());
            v.insert(
                "state".to_string(),
                if e { "on" } else { "off" }.to_string(),
            );
        }
        v
    }

    fn with_headers(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (k, v) in &self.config.headers {
            req = req.header(k, v.expose());
        }
        req
    }
}

#[async_trait]
impl KillSwitch for HttpKillSwitch {
    fn target_environment<'a>(&'a self, step: Option<&'a str>) -> Option<&'a str> {
        step.or(self.config.environment.as_deref())
    }

    async fn get(&self, flag: &str, env: Option<&str>) -> Result<Option<bool>, ExecError> {
        let url = render_url(&self.config.get_url, &self.vars(flag, env, None))
            .map_err(ExecError::fatal)?;
        read_state(
            self.with_headers(self.http.get(url)),
            "kill switch",
            |body| {
                body.pointer(&self.config.state_pointer)
                    .and_then(Value::as_bool)
            },
            || {
                format!(
                    "kill switch: no boolean at {} in the answer",
                    self.config.state_pointer
                )
            },
        )
        .await
    }

    async fn set(
        &self,
        flag: &str,
        env: Option<&str>,
        enabled: bool,
        _by: &str,
    ) -> Result<Value, ExecError> {
        let vars = self.vars(flag, env, Some(enabled));
        let url = render_url(&self.config.set_url, &vars).map_err(ExecError::fatal)?;
        let method =
            reqwest::Method::from_bytes(self.config.set_method.as_bytes()).map_err(|_| {
                ExecError::fatal(format!("bad HTTP method {:?}", self.config.set_method))
            })?;
        let mut req = self.with_headers(self.http.request(method, url));
        if let Some(body) = &self.config.set_body {
            let body = typed_enabled(render_json(body, &vars).map_err(ExecError::fatal)?, enabled);
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        send(req, "kill switch").await
    }
}

/// A body string that is exactly the enabled state becomes a JSON boolean.
fn typed_enabled(v: Value, enabled: bool) -> Value {
    match v {
        Value::String(s) if s == enabled.to_string() => Value::Bool(enabled),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| typed_enabled(v, enabled)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, typed_enabled(v, enabled)))
                .collect(),
        ),
        other => other,
    }
}

/// Runs a rollback with the action's values.
pub async fn rollback(
    config: &RollbackConfig,
    vars: &BTreeMap<String, String>,
) -> Result<Value, ExecError> {
    match config {
        RollbackConfig::Http {
            url,
            method,
            headers,
            body,
            timeout,
        } => {
            let timeout = timeout
                .map(|d| d.0.to_std().unwrap_or_default())
                .unwrap_or(Duration::from_secs(30));
            let url = render_url(url, vars).map_err(ExecError::fatal)?;
            let method = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|_| ExecError::fatal(format!("bad HTTP method {method:?}")))?;
            let mut req = client(timeout).request(method, url);
            for (k, v) in headers {
                req = req.header(k, v.expose());
            }
            if let Some(body) = body {
                let body = render_json(body, vars).map_err(ExecError::fatal)?;
                req = req
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            send(req, "rollback").await
        }
        RollbackConfig::Command { argv, timeout } => {
            let timeout = timeout
                .map(|d| d.0.to_std().unwrap_or_default())
                .unwrap_or(Duration::from_secs(300));
            let args: Vec<String> = argv
                .iter()
                .map(|a| render(a, vars, str::to_string))
                .collect::<Result<_, _>>()
                .map_err(ExecError::fatal)?;
            let (program, rest) = args
                .split_first()
                .ok_or_else(|| ExecError::fatal("rollback command has an empty argv"))?;
            // No shell: each element is one argument, whatever it contains.
            let child = tokio::process::Command::new(program)
                .args(rest)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(timeout, child)
                .await
                .map_err(|_| {
                    ExecError::retry(format!(
                        "rollback command timed out after {}s",
                        timeout.as_secs()
                    ))
                })?
                .map_err(|e| ExecError::fatal(format!("cannot run {program:?}: {e}")))?;
            let response = json!({
                "exit_code": out.status.code(),
                "stdout": truncate(&String::from_utf8_lossy(&out.stdout), 2000),
                "stderr": truncate(&String::from_utf8_lossy(&out.stderr), 2000),
            });
            match out.status.code() {
                Some(0) => Ok(response),
                // EX_TEMPFAIL: the command says trying again may help.
                Some(75) => Err(
                    ExecError::retry("rollback command exited 75 (temporary failure)")
                        .with_response(response),
                ),
                code => Err(ExecError::fatal(format!(
                    "rollback command failed with exit code {code:?}"
                ))
                .with_response(response)),
            }
        }
    }
}

/// Sends a notification to a webhook notifier or a Slack channel.
pub async fn notify(
    notifiers: &BTreeMap<String, NotifierConfig>,
    slack: &SlackConfig,
    webhook: Option<&str>,
    slack_channel: Option<&str>,
    text: &str,
    context: Value,
) -> Result<Value, ExecError> {
    let http = client(Duration::from_secs(10));
    let mut results = serde_json::Map::new();
    if let Some(name) = webhook {
        let Some(NotifierConfig::Webhook { url, headers }) = notifiers.get(name) else {
            return Err(ExecError::fatal(format!(
                "notifier {name:?} is not configured: add [notify.{name}] to the configuration"
            )));
        };
        let mut req = http
            .post(url)
            .json(&json!({"text": text, "firebreak": context}));
        for (k, v) in headers {
            req = req.header(k, v.expose());
        }
        results.insert("webhook".into(), send(req, "notify webhook").await?);
    }
    if let Some(channel) = slack_channel {
        let token = slack.bot_token.as_ref().ok_or_else(|| {
            ExecError::fatal(
                "Slack is not configured: set FIREBREAK_SLACK_BOT_TOKEN or [slack] bot_token",
            )
        })?;
        let resp = send(
            http.post(format!("{}/chat.postMessage", trim_slash(&slack.api_url)))
                .bearer_auth(token.expose())
                .json(&json!({"channel": channel, "text": text})),
            "Slack",
        )
        .await?;
        if resp["body"]["ok"] != Value::Bool(true) {
            return Err(ExecError::fatal(format!(
                "Slack refused the message: {}",
                resp["body"]["error"].as_str().unwrap_or("unknown error")
            ))
            .with_response(resp));
        }
        results.insert("slack".into(), resp);
    }
    Ok(Value::Object(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_switch_is_read_from_its_table_and_a_misspelt_key_is_refused() {
        let table = json!({
            "type": "http",
            "set_url": "http://flags/{{flag}}",
            "get_url": "http://flags/{{flag}}",
            "state_pointer": "/enabled",
        });
        let config: KillSwitchConfig = serde_json::from_value(table.clone()).expect("valid");
        let KillSwitchConfig::Http(http) = config else {
            panic!("not the http variant: {config:?}");
        };
        assert_eq!(http.set_method, "PUT");
        let mut misspelt = table;
        misspelt["state_ponter"] = json!("/enabled");
        let err = serde_json::from_value::<KillSwitchConfig>(misspelt)
            .expect_err("an unknown key is refused");
        assert!(err.to_string().contains("state_ponter"), "{err}");
    }
}
