//! Runbook playbooks: which events they answer (triggers and conditions), what
//! they do (steps), and the guardrails around it. Parsing is strict: an unknown
//! key, a bad matcher or a bad duration is an error naming file, line and problem.
//!
//! Matching is pure: the engine gathers the facts a condition needs (the latest
//! deploy of the service) and asks [`Playbook::evaluate`].

use std::collections::BTreeMap;
use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveTime, Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alertmanager::AlertStatus;
pub use crate::duration::Dur;
use crate::events::{DeployEvent, DeployStatus, GateResult, GateVerdict};
use crate::matcher::Matcher;
use crate::AlertEvent;

mod template;
mod window;
pub use template::*;
pub use window::*;

/// A loaded playbook: its parsed spec, where it came from and a hash of the file.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub spec: PlaybookSpec,
    pub file: String,
    /// First 12 hex digits of the file's SHA-256: which version acted.
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub when: When,
    #[serde(rename = "do")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub guard: Guard,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub alert: Option<AlertTrigger>,
    #[serde(default)]
    pub gate: Option<GateTrigger>,
    #[serde(default)]
    pub deploy: Option<DeployTrigger>,
    /// A deploy of the same service (and environment) started this long before.
    #[serde(default)]
    pub deployed_within: Option<Dur>,
    /// The event's `severity` label is one of these.
    #[serde(default)]
    pub severity: Option<OneOrMany>,
    /// The event's environment (`env`/`environment` label, or the event field).
    #[serde(default)]
    pub environment: Option<OneOrMany>,
    /// Only inside one of these windows.
    #[serde(default)]
    pub during: Vec<Window>,
    /// Never inside one of these windows (e.g. a change freeze).
    #[serde(default)]
    pub not_during: Vec<Window>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTrigger {
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    #[serde(default = "default_alert_status")]
    pub status: AlertStatusSel,
}

fn default_alert_status() -> AlertStatusSel {
    AlertStatusSel::Firing
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatusSel {
    Firing,
    Resolved,
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateTrigger {
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// Verdicts that trigger; default `[fail]`.
    #[serde(default = "default_verdicts")]
    pub verdict: Vec<GateVerdict>,
}

fn default_verdicts() -> Vec<GateVerdict> {
    vec![GateVerdict::Fail]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployTrigger {
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// Deploy statuses that trigger; default any.
    #[serde(default)]
    pub status: Vec<DeployStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            OneOrMany::One(s) => s == v,
            OneOrMany::Many(list) => list.iter().any(|s| s == v),
        }
    }
}

/// One step: exactly one of the action keys, plus per-step options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawStep")]
pub struct Step {
    pub action: StepAction,
    /// Hold this step for a human even if the guard does not ask for it.
    pub require_approval: bool,
    /// Its approval must come from someone other than who asked for it.
    pub four_eyes: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    kill_switch: Option<KillSwitchStep>,
    #[serde(default)]
    rollback: Option<RollbackStep>,
    #[serde(default)]
    notify: Option<NotifyStep>,
    #[serde(default)]
    http: Option<HttpStep>,
    #[serde(default)]
    require_approval: bool,
    #[serde(default)]
    four_eyes: bool,
}

impl TryFrom<RawStep> for Step {
    type Error = String;
    fn try_from(r: RawStep) -> Result<Step, String> {
        let mut actions = Vec::new();
        if let Some(k) = r.kill_switch {
            actions.push(StepAction::KillSwitch(k));
        }
        if let Some(k) = r.rollback {
            actions.push(StepAction::Rollback(k));
        }
        if let Some(k) = r.notify {
            if k.slack.is_none() && k.webhook.is_none() {
                return Err(
                    "notify needs `slack: \"#channel\"` or `webhook: <notifier name>`".into(),
                );
            }
            actions.push(StepAction::Notify(k));
        }
        if let Some(k) = r.http {
            actions.push(StepAction::Http(k));
        }
        if actions.len() != 1 {
            return Err(
                "each step needs exactly one of kill_switch, rollback, notify, http".into(),
            );
        }
        Ok(Step {
            action: actions.remove(0),
            require_approval: r.require_approval || r.four_eyes,
            four_eyes: r.four_eyes,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    KillSwitch(KillSwitchStep),
    Rollback(RollbackStep),
    Notify(NotifyStep),
    Http(HttpStep),
    /// A guarded rollout's step (never written in a playbook file: rollouts
    /// claim these themselves).
    RolloutStep(RolloutStepAction),
}

/// Serve step `step` of rollout `rollout` (run `generation`) on a built-in flag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutStepAction {
    pub rollout: i64,
    pub generation: i32,
    pub flag: String,
    /// 0-based.
    pub step: usize,
    pub percent: u8,
}

impl StepAction {
    /// One line for people, before values are filled in.
    pub fn describe(&self) -> String {
        match self {
            StepAction::KillSwitch(k) => format!(
                "turn {} flag {} ({}{})",
                k.state.as_str(),
                k.flag,
                k.provider,
                k.environment
                    .as_deref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ),
            StepAction::Rollback(r) => {
                format!("roll back to the last good deploy ({})", r.provider)
            }
            StepAction::Notify(n) => match (&n.slack, &n.webhook) {
                (Some(c), _) => format!("notify Slack {c}"),
                (None, Some(w)) => format!("notify {w}"),
                _ => "notify".into(),
            },
            StepAction::Http(h) => format!("{} {}", h.method, h.url),
            StepAction::RolloutStep(r) => format!(
                "roll flag {} out to {}% (rollout #{}, step {})",
                r.flag,
                r.percent,
                r.rollout,
                r.step + 1
            ),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StepAction::KillSwitch(_) => "kill_switch",
            StepAction::Rollback(_) => "rollback",
            StepAction::Notify(_) => "notify",
            StepAction::Http(_) => "http",
            StepAction::RolloutStep(_) => "rollout_step",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchStep {
    pub flag: String,
    /// A provider configured under `[kill_switch.<name>]`, or `builtin`.
    #[serde(default = "builtin")]
    pub provider: String,
    #[serde(default)]
    pub environment: Option<String>,
    /// The state to set: `off` (the default: a kill switch kills) or `on`.
    #[serde(default)]
    pub state: FlagState,
}

fn builtin() -> String {
    "builtin".into()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlagState {
    #[default]
    Off,
    On,
}

impl FlagState {
    pub fn enabled(self) -> bool {
        self == FlagState::On
    }
    pub fn from_enabled(enabled: bool) -> FlagState {
        if enabled {
            FlagState::On
        } else {
            FlagState::Off
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            FlagState::Off => "off",
            FlagState::On => "on",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RollbackStep {
    /// A provider configured under `[rollback.<name>]`.
    pub provider: String,
    /// Only `last_good`: the last successful deploy before the suspect one.
    #[serde(default = "default_rollback_to")]
    pub to: String,
}

fn default_rollback_to() -> String {
    "last_good".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyStep {
    #[serde(default)]
    pub slack: Option<String>,
    /// A notifier configured under `[notify.<name>]`.
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    /// Header values may name secrets as `${FIREBREAK_SECRET_…}` (from the environment).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body; `{{…}}` placeholders in its strings are filled as data.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

fn post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// After a run for a target, later matches for the same target are suppressed this long.
    #[serde(default)]
    pub cooldown: Option<Dur>,
    /// At most `count` runs per `per`; over it, actions are held for a human.
    #[serde(default)]
    pub max_runs: Option<Budget>,
    #[serde(default)]
    pub require_approval: bool,
    /// Record what would have happened; call nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub count: u32,
    pub per: Dur,
}

/// A playbook file that failed to load: where and what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl Playbook {
    /// Parses one playbook file's text. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Playbook, LoadError> {
        let err = |line: Option<usize>, column: Option<usize>, message: String| LoadError {
            file: file.to_string(),
            line,
            column,
            message,
        };
        let spec: PlaybookSpec = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            // The message carries "at line N column M" already; keep it plain.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            err(
                loc.as_ref().map(|l| l.line()),
                loc.as_ref().map(|l| l.column()),
                msg,
            )
        })?;
        // Cheap matchers first: equality rejects most playbooks before any
        // regular expression runs.
        let mut spec = spec;
        for matchers in [
            spec.when.alert.as_mut().map(|t| &mut t.matchers),
            spec.when.gate.as_mut().map(|t| &mut t.matchers),
            spec.when.deploy.as_mut().map(|t| &mut t.matchers),
        ]
        .into_iter()
        .flatten()
        {
            matchers.sort_by_key(|m| match m.op {
                crate::matcher::MatchOp::Equal => 0,
                crate::matcher::MatchOp::NotEqual => 1,
                _ => 2,
            });
        }
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        if spec.name.trim().is_empty()
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(err(
                line_of("name:"),
                None,
                format!(
                    "name {:?} must be non-empty letters, digits, '-', '_' or '.'",
                    spec.name
                ),
            ));
        }
        let triggers = [
            spec.when.alert.is_some(),
            spec.when.gate.is_some(),
            spec.when.deploy.is_some(),
        ]
        .iter()
        .filter(|t| **t)
        .count();
        if triggers != 1 {
            return Err(err(
                line_of("when:"),
                None,
                "`when` needs exactly one trigger: alert, gate or deploy".into(),
            ));
        }
        if spec.steps.is_empty() {
            return Err(err(
                line_of("do:"),
                None,
                "`do` needs at least one step".into(),
            ));
        }
        if let Some(b) = &spec.guard.max_runs {
            if b.count == 0 || b.per.0 <= Duration::zero() {
                return Err(err(
                    line_of("max_runs"),
                    None,
                    "max_runs needs a count above 0 and a positive window".into(),
                ));
            }
        }
        for step in &spec.steps {
            if let StepAction::Http(h) = &step.action {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(err(
                        line_of(&h.url),
                        None,
                        format!("http url {:?} must start with http:// or https://", h.url),
                    ));
                }
            }
        }
        let digest = Sha256::digest(text.as_bytes());
        let version = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Playbook {
            spec,
            file: file.to_string(),
            version,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether this playbook answers `event` at `now`, given `facts`.
    /// Whether the event is of the kind, status, labels, severity and
    /// environment this playbook's trigger names: what ingest uses to send
    /// an event on the urgent lane (time windows and deploy facts are for
    /// the engine to check).
    pub fn could_match(&self, event: &Trigger<'_>) -> bool {
        !matches!(self.trigger_match(event), Verdict::NoMatch)
    }

    fn trigger_match(&self, event: &Trigger<'_>) -> Verdict {
        let w = &self.spec.when;
        let labels = event.labels();
        let ok = match (event, &w.alert, &w.gate, &w.deploy) {
            (Trigger::Alert(a), Some(t), _, _) => {
                let status_ok = match t.status {
                    AlertStatusSel::Any => true,
                    AlertStatusSel::Firing => a.status == AlertStatus::Firing,
                    AlertStatusSel::Resolved => a.status == AlertStatus::Resolved,
                };
                status_ok && t.matchers.iter().all(|m| m.matches(&labels))
            }
            (Trigger::Gate(g), _, Some(t), _) => {
                t.verdict.contains(&g.verdict) && t.matchers.iter().all(|m| m.matches(&labels))
            }
            (Trigger::Deploy(d), _, _, Some(t)) => {
                (t.status.is_empty() || t.status.contains(&d.status))
                    && t.matchers.iter().all(|m| m.matches(&labels))
            }
            _ => false,
        };
        if !ok {
            return Verdict::NoMatch;
        }
        if let Some(sev) = &w.severity {
            if !sev.contains(labels.get("severity").map(String::as_str)) {
                return Verdict::NoMatch;
            }
        }
        if let Some(env) = &w.environment {
            if !env.contains(event.environment()) {
                return Verdict::NoMatch;
            }
        }
        Verdict::Match
    }

    pub fn evaluate(&self, event: &Trigger<'_>, facts: &Facts<'_>, now: DateTime<Utc>) -> Verdict {
        if self.trigger_match(event) == Verdict::NoMatch {
            return Verdict::NoMatch;
        }
        let w = &self.spec.when;
        let at = event.at();
        if !w.during.is_empty() && !w.during.iter().any(|win| win.contains(now)) {
            return Verdict::Unmet("outside its `during` windows".into());
        }
        if w.not_during.iter().any(|win| win.contains(now)) {
            return Verdict::Unmet("inside a `not_during` window".into());
        }
        if let Some(within) = w.deployed_within {
            match facts.latest_deploy {
                Some(d) if d.started_at <= at && at - d.started_at <= within.0 => {}
                Some(d) if d.started_at <= at => {
                    return Verdict::Unmet(format!(
                        "last deploy of {} ({}) was more than {within} before",
                        d.service, d.version
                    ))
                }
                _ => return Verdict::Unmet(format!("no deploy of the service within {within}")),
            }
        }
        Verdict::Match
    }
}

/// The event a playbook is asked about.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    Alert(&'a AlertEvent),
    Gate(&'a GateResult),
    Deploy(&'a DeployEvent),
}

impl<'a> Trigger<'a> {
    /// The labels matchers see: the alert's own (borrowed), or the event's fields.
    pub fn labels(&self) -> std::borrow::Cow<'a, BTreeMap<String, String>> {
        use std::borrow::Cow;
        fn put(m: &mut BTreeMap<String, String>, k: &str, v: Option<&str>) {
            if let Some(v) = v {
                m.insert(k.to_string(), v.to_string());
            }
        }
        match *self {
            Trigger::Alert(a) => Cow::Borrowed(&a.labels),
            Trigger::Gate(g) => {
                let mut m = BTreeMap::new();
                put(&mut m, "service", Some(&g.service));
                put(&mut m, "environment", g.environment.as_deref());
                put(&mut m, "version", g.version.as_deref());
                put(&mut m, "gate", Some(&g.gate));
                put(&mut m, "metric", g.metric.as_deref());
                put(&mut m, "step", g.step.as_deref());
                put(&mut m, "verdict", Some(g.verdict.as_str()));
                Cow::Owned(m)
            }
            Trigger::Deploy(d) => {
                let mut m = BTreeMap::new();
                put(&mut m, "service", Some(&d.service));
                put(&mut m, "environment", d.environment.as_deref());
                put(&mut m, "version", Some(&d.version));
                put(&mut m, "status", Some(d.status.as_str()));
                put(&mut m, "actor", d.actor.as_deref());
                Cow::Owned(m)
            }
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Trigger::Alert(a) => &a.id,
            Trigger::Gate(g) => &g.id,
            Trigger::Deploy(d) => &d.id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Alert(_) => "alert",
            Trigger::Gate(_) => "gate",
            Trigger::Deploy(_) => "deploy",
        }
    }

    pub fn service(&self) -> Option<&str> {
        match self {
            Trigger::Alert(a) => a.labels.get("service").map(String::as_str),
            Trigger::Gate(g) => Some(&g.service),
            Trigger::Deploy(d) => Some(&d.service),
        }
    }

    pub fn environment(&self) -> Option<&str> {
        match self {
            Trigger::Alert(a) => a
                .labels
                .get("env")
                .or_else(|| a.labels.get("environment"))
                .map(String::as_str),
            Trigger::Gate(g) => g.environment.as_deref(),
            Trigger::Deploy(d) => d.environment.as_deref(),
        }
    }

    /// When the event happened.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Trigger::Alert(a) => a.occurred_at(),
            Trigger::Gate(g) => g.evaluated_at,
            Trigger::Deploy(d) => d.started_at,
        }
    }

    /// A one-line description for the timeline and audit.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Alert(a) => format!("alert {} {}", a.alertname(), a.status.as_str()),
            Trigger::Gate(g) => format!("gate {} {} for {}", g.gate, g.verdict.as_str(), g.service),
            Trigger::Deploy(d) => format!(
                "deploy of {} {} {}",
                d.service,
                d.version,
                d.status.as_str()
            ),
        }
    }
}

/// What the engine knows beyond the event itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts<'a> {
    /// The latest deploy of the event's service (and environment) at or before the event.
    pub latest_deploy: Option<&'a DeployEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Trigger and conditions hold.
    Match,
    /// The trigger matched but a condition did not hold (recorded, nothing done).
    Unmet(String),
    NoMatch,
}

/// The last successful deploy before `suspect` in `history` (any order).
pub fn last_good<'a>(suspect: &DeployEvent, history: &'a [DeployEvent]) -> Option<&'a DeployEvent> {
    history
        .iter()
        .filter(|d| {
            d.id != suspect.id
                && d.service == suspect.service
                && d.environment == suspect.environment
                && d.status == DeployStatus::Succeeded
                && d.started_at < suspect.started_at
                && d.version != suspect.version
        })
        .max_by_key(|d| d.started_at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const CHECKOUT: &str = r#"
name: checkout-kill-switch
when:
  alert:
    matchers: ['alertname="HighErrorRate"', 'service="checkout"']
    status: firing
  deployed_within: 30m
do:
  - kill_switch: { flag: checkout.new-payment-flow }
guard: { cooldown: 30m, max_runs: { count: 3, per: 1h } }
"#;

    fn alert(service: &str, at: &str) -> AlertEvent {
        AlertEvent {
            id: "al-1".into(),
            fingerprint: "f1".into(),
            status: AlertStatus::Firing,
            labels: [
                ("alertname", "HighErrorRate"),
                ("service", service),
                ("severity", "critical"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: BTreeMap::new(),
            starts_at: at.parse().unwrap(),
            ends_at: None,
            generator_url: String::new(),
            truncated_alerts: 0,
        }
    }

    fn deploy(version: &str, at: &str, status: DeployStatus) -> DeployEvent {
        DeployEvent::new(
            format!("dp-{version}"),
            "checkout",
            version,
            status,
            at.parse().unwrap(),
        )
    }

    #[test]
    fn checkout_playbook_matches_within_the_deploy_window_only() {
        let pb = Playbook::parse("checkout.yaml", CHECKOUT).unwrap();
        assert_eq!(pb.version.len(), 12);
        let now = Utc::now();
        let a = alert("checkout", "2026-11-23T14:02:00Z");
        let recent = deploy("v2", "2026-11-23T13:55:00Z", DeployStatus::Succeeded);
        let old = deploy("v1", "2026-11-23T12:00:00Z", DeployStatus::Succeeded);
        let t = Trigger::Alert(&a);
        assert_eq!(
            pb.evaluate(
                &t,
                &Facts {
                    latest_deploy: Some(&recent)
                },
                now
            ),
            Verdict::Match
        );
        assert!(matches!(
            pb.evaluate(
                &t,
                &Facts {
                    latest_deploy: Some(&old)
                },
                now
            ),
            Verdict::Unmet(_)
        ));
        assert!(matches!(
            pb.evaluate(&t, &Facts::default(), now),
            Verdict::Unmet(_)
        ));
        let other = alert("payments", "2026-11-23T14:02:00Z");
        assert_eq!(
            pb.evaluate(
                &Trigger::Alert(&other),
                &Facts {
                    latest_deploy: Some(&recent)
                },
                now
            ),
            Verdict::NoMatch
        );
    }

    #[test]
    fn unknown_keys_and_bad_matchers_name_file_and_line() {
        let bad = CHECKOUT.replace("status: firing", "statuz: firing");
        let e = Playbook::parse("a.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("statuz"), "{e}");
        let bad = CHECKOUT.replace(r#"'service="checkout"'"#, r#"'service=~"("'"#);
        let e = Playbook::parse("b.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("bad regular expression"), "{e}");
        assert!(e.to_string().starts_with("b.yaml:5:"), "{e}");
        let bad = CHECKOUT.replace("cooldown: 30m", "cooldown: 30 minutes");
        let e = Playbook::parse("c.yaml", &bad).unwrap_err();
        assert!(e.message.contains("not a duration"), "{e}");
        let bad = CHECKOUT.replace("kill_switch:", "kill_swich:");
        let e = Playbook::parse("d.yaml", &bad).unwrap_err();
        assert!(e.message.contains("kill_swich"), "{e}");
    }

    #[test]
    fn steps_need_exactly_one_action() {
        let bad = CHECKOUT.replace(
            "- kill_switch: { flag: checkout.new-payment-flow }",
            "- require_approval: true",
        );
        let e = Playbook::parse("e.yaml", &bad).unwrap_err();
        assert!(e.message.contains("exactly one of"), "{e}");
    }

    #[test]
    fn change_freeze_windows() {
        let text = format!("{CHECKOUT}\n").replace(
            "  deployed_within: 30m\n",
            "  not_during:\n    - { days: [fri-sun], from: \"18:00\", to: \"06:00\" }\n    - { start: 2026-12-20T00:00:00Z, end: 2027-01-04T00:00:00Z }\n",
        );
        let pb = Playbook::parse("f.yaml", &text).unwrap();
        let a = alert("checkout", "2026-11-23T14:02:00Z");
        let t = Trigger::Alert(&a);
        let at = |s: &str| Utc.from_utc_datetime(&s.parse().unwrap());
        // Monday afternoon: allowed.
        assert_eq!(
            pb.evaluate(&t, &Facts::default(), at("2026-11-23T14:00:00")),
            Verdict::Match
        );
        // Saturday 02:00 (after Friday 18:00, across midnight): frozen.
        assert!(matches!(
            pb.evaluate(&t, &Facts::default(), at("2026-11-28T02:00:00")),
            Verdict::Unmet(_)
        ));
        // Monday 02:00 belongs to Sunday's window: frozen. Monday 07:00 is not.
        assert!(matches!(
            pb.evaluate(&t, &Facts::default(), at("2026-11-30T02:00:00")),
            Verdict::Unmet(_)
        ));
        assert_eq!(
            pb.evaluate(&t, &Facts::default(), at("2026-11-30T07:00:00")),
            Verdict::Match
        );
        // Holiday freeze.
        assert!(matches!(
            pb.evaluate(&t, &Facts::default(), at("2026-12-24T12:00:00")),
            Verdict::Unmet(_)
        ));
    }

    #[test]
    fn weekly_windows_follow_a_named_time_zone_through_daylight_saving() {
        let w: Window = serde_yaml_ng::from_str(
            "{ days: [mon-fri], from: \"09:00\", to: \"17:00\", timezone: Europe/Berlin }",
        )
        .unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // Summer (CEST, +02:00): 07:30 UTC is 09:30 in Berlin.
        assert!(w.contains(at("2026-07-01T07:30:00Z")));
        assert!(!w.contains(at("2026-07-01T15:30:00Z")));
        // Winter (CET, +01:00): 07:30 UTC is 08:30, 08:30 UTC is 09:30.
        assert!(!w.contains(at("2026-12-01T07:30:00Z")));
        assert!(w.contains(at("2026-12-01T08:30:00Z")));
        // The day is Berlin's: Friday 23:30 UTC in summer is Saturday there.
        let fri: Window = serde_yaml_ng::from_str(
            "{ days: [fri], from: \"00:00\", to: \"23:59\", timezone: Europe/Berlin }",
        )
        .unwrap();
        assert!(!fri.contains(at("2026-07-03T23:30:00Z")));
        assert!(fri.contains(at("2026-07-03T21:30:00Z")));
        // A fixed offset does not move with the seasons.
        let fixed: Window = serde_yaml_ng::from_str(
            "{ days: [mon-fri], from: \"09:00\", to: \"17:00\", utc_offset: \"+01:00\" }",
        )
        .unwrap();
        assert!(!fixed.contains(at("2026-07-01T07:30:00Z")));
        assert!(fixed.contains(at("2026-07-01T08:30:00Z")));
    }

    #[test]
    fn window_zones_are_refused_with_their_fix() {
        for (yaml, says) in [
            ("{ days: [mon], timezone: Europe/Berlinn }", "not an IANA time zone"),
            (
                "{ days: [mon], timezone: UTC, utc_offset: \"+01:00\" }",
                "utc_offset or timezone, not both",
            ),
            (
                "{ start: 2026-12-20T00:00:00Z, end: 2027-01-04T00:00:00Z, timezone: Europe/Berlin }",
                "carry their own offset",
            ),
            (
                "{ start: 2026-12-20T00:00:00Z, end: 2027-01-04T00:00:00Z, utc_offset: \"+01:00\" }",
                "carry their own offset",
            ),
        ] {
            let err = serde_yaml_ng::from_str::<Window>(yaml).unwrap_err().to_string();
            assert!(err.contains(says), "{yaml}: {err}");
        }
    }

    #[test]
    fn gate_and_deploy_triggers_see_event_fields_as_labels() {
        let pb = Playbook::parse(
            "g.yaml",
            "name: g\nwhen:\n  gate: { matchers: ['gate=~\"canary.*\"'], verdict: [fail, inconclusive] }\ndo:\n  - rollback: { provider: argocd }\n    require_approval: true\n",
        )
        .unwrap();
        assert!(pb.spec.steps[0].require_approval);
        let gate = GateResult {
            id: "gt-1".into(),
            service: "checkout".into(),
            environment: None,
            version: Some("v2".into()),
            deploy_id: None,
            gate: "canary-error-rate".into(),
            metric: None,
            comparison: None,
            threshold: None,
            baseline: None,
            observed: None,
            window: None,
            step: None,
            verdict: GateVerdict::Inconclusive,
            evaluated_at: Utc::now(),
        };
        assert_eq!(
            pb.evaluate(&Trigger::Gate(&gate), &Facts::default(), Utc::now()),
            Verdict::Match
        );
        let pass = GateResult {
            verdict: GateVerdict::Pass,
            ..gate
        };
        assert_eq!(
            pb.evaluate(&Trigger::Gate(&pass), &Facts::default(), Utc::now()),
            Verdict::NoMatch
        );
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::minutes(90));
        assert_eq!(Dur::parse("7d").unwrap().to_string(), "7d");
        assert!(Dur::parse("30").is_err());
        assert!(Dur::parse("m").is_err());
    }

    #[test]
    fn url_values_in_the_path_are_one_segment() {
        let vars = |service: &str| -> BTreeMap<String, String> {
            [
                ("service".to_string(), service.to_string()),
                ("labels.env".to_string(), String::new()),
            ]
            .into()
        };
        let url = "https://argocd/api/v1/applications/{{service}}/rollback?env={{labels.env}}";
        assert_eq!(
            render_url(url, &vars("check out")).unwrap(),
            "https://argocd/api/v1/applications/check%20out/rollback?env="
        );
        for bad in ["..", ".", ""] {
            let e = render_url(url, &vars(bad)).unwrap_err();
            assert!(
                e.contains("{{service}}") && e.contains("another resource"),
                "{e}"
            );
        }
        // In the query, any value is data.
        assert_eq!(
            render_url("https://x/a?s={{service}}", &vars("..")).unwrap(),
            "https://x/a?s=.."
        );
        // Encoded dots are data too: they arrive encoded twice.
        assert_eq!(
            render_url(url, &vars("%2e%2e")).unwrap(),
            "https://argocd/api/v1/applications/%252e%252e/rollback?env="
        );
        assert!(render_url("{{nope}}", &vars("x"))
            .unwrap_err()
            .contains("unknown placeholder"));
    }

    #[test]
    fn templates_fill_data_and_refuse_unknown_names() {
        let vars: BTreeMap<String, String> =
            [("service".to_string(), "a b/c&d".to_string())].into();
        assert_eq!(
            render("/apps/{{service}}/x", &vars, url_escape).unwrap(),
            "/apps/a%20b%2Fc%26d/x"
        );
        assert!(render("{{nope}}", &vars, url_escape)
            .unwrap_err()
            .contains("unknown placeholder"));
        let body = serde_json::json!({"name": "{{service}}\"", "n": 1});
        let out = render_json(&body, &vars).unwrap();
        assert_eq!(out["name"], "a b/c&d\"");
    }

    #[test]
    fn last_good_is_the_previous_successful_different_version() {
        let history = vec![
            deploy("v1", "2026-11-23T10:00:00Z", DeployStatus::Succeeded),
            deploy("v1.5", "2026-11-23T11:00:00Z", DeployStatus::Failed),
            deploy("v2", "2026-11-23T13:55:00Z", DeployStatus::Succeeded),
        ];
        assert_eq!(last_good(&history[2], &history).unwrap().version, "v1");
        assert!(last_good(&history[0], &history).is_none());
    }
}
