//! Remediation: the one path every action takes, whoever asks.
//!
//! A playbook step (matched by the engine inside the transaction that
//! processed its trigger) and a person's request (REST, Slack, pages) both
//! become a [`claims::Candidate`]; [`claims::claim`] decides its guardrails
//! with the domain's rules ([`firebreak_domain::action::decide`]: cooldown,
//! dry-run, pause, budgets, approval) under one advisory lock, and claims it
//! as a unique row. Approvals, denials, reverts, the pause and built-in flag
//! edits are the [`Remediation`] commands here; the HTTP and Slack adapters
//! only parse, authenticate, call and format.
//!
//! The executor (in `executor.rs`) takes claimed rows one at a time per
//! target under a short lease it renews while a step runs, calls the
//! provider, reads the state back and records the outcome. A lease that
//! expires (a crashed process) is reclaimed, and at start-up a process takes
//! back at once what its previous run on the same node held; an action in
//! doubt is verified before anything is repeated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use firebreak_domain::action::{target, ActionRow};
use firebreak_domain::metrics::Metrics;
use firebreak_domain::playbook::{NotifyStep, StepAction};
use firebreak_domain::timeline::NewEntry;
use firebreak_store::Store;
use serde_json::Value;
use tokio::sync::Notify;

pub mod claims;
mod commands;
mod executor;
pub mod facts;
pub mod incidents;
mod matching;
pub mod playbooks;
pub mod providers;
pub mod rollouts;
pub mod slack;

pub use commands::{check_flag_key, CommandError, FlagEdit, Request, RequestOptions};
pub use firebreak_domain::action::{ActionSpec, AutomationPolicy};
pub use playbooks::{Loaded, PlaybookSet, StepCheck};
use providers::{Builtin, KillSwitch};
pub use providers::{KillSwitchConfig, NotifierConfig, RollbackConfig, SlackConfig};

/// Why an action did not succeed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub message: String,
    pub retryable: bool,
    pub response: Option<Value>,
}

impl ExecError {
    pub fn retry(message: impl Into<String>) -> ExecError {
        ExecError {
            message: message.into(),
            retryable: true,
            response: None,
        }
    }
    pub fn fatal(message: impl Into<String>) -> ExecError {
        ExecError {
            message: message.into(),
            retryable: false,
            response: None,
        }
    }
    pub fn with_response(mut self, response: Value) -> ExecError {
        self.response = Some(response);
        self
    }
    /// The HTTP status the provider answered, if any.
    pub fn status(&self) -> Option<u64> {
        self.response.as_ref().and_then(|r| r["status"].as_u64())
    }
}

/// Everything the executor may call, built once from the configuration.
#[derive(Default)]
pub struct Providers {
    pub kill_switches: BTreeMap<String, Arc<dyn KillSwitch>>,
    pub rollbacks: BTreeMap<String, RollbackConfig>,
    pub notifiers: BTreeMap<String, NotifierConfig>,
    pub slack: SlackConfig,
}

impl Providers {
    /// `store` backs the built-in flags; `None` only for offline checks.
    pub fn new(
        store: Option<Arc<dyn Store>>,
        kill_switches: &BTreeMap<String, KillSwitchConfig>,
        rollbacks: BTreeMap<String, RollbackConfig>,
        notifiers: BTreeMap<String, NotifierConfig>,
        slack: SlackConfig,
    ) -> Providers {
        let http = providers::client(Duration::from_secs(10));
        let mut map: BTreeMap<String, Arc<dyn KillSwitch>> = BTreeMap::new();
        if let Some(store) = store {
            map.insert("builtin".into(), Arc::new(Builtin { store }));
        }
        for (name, c) in kill_switches {
            map.insert(name.clone(), c.clone().switch(&http));
        }
        Providers {
            kill_switches: map,
            rollbacks,
            notifiers,
            slack,
        }
    }

    /// Names a step refers to that are not configured (checked when playbooks load).
    pub fn missing(&self, step: &StepAction) -> Option<String> {
        match step {
            StepAction::KillSwitch(k)
                if k.provider != "builtin" && !self.kill_switches.contains_key(&k.provider) =>
            {
                Some(format!(
                    "kill switch provider {:?} is not configured: add [kill_switch.{}] to the configuration (configured: builtin{})",
                    k.provider,
                    k.provider,
                    self.kill_switches.keys().filter(|k| *k != "builtin").map(|k| format!(", {k}")).collect::<String>()
                ))
            }
            StepAction::Rollback(r) if !self.rollbacks.contains_key(&r.provider) => Some(format!(
                "rollback provider {:?} is not configured: add [rollback.{}] to the configuration",
                r.provider, r.provider
            )),
            StepAction::Notify(NotifyStep {
                webhook: Some(w), ..
            }) if !self.notifiers.contains_key(w) => Some(format!(
                "notifier {w:?} is not configured: add [notify.{w}] to the configuration"
            )),
            _ => None,
        }
    }
}

impl Providers {
    /// The one target identity of a step: a kill switch's flag in its
    /// provider and effective environment, a service's deploys in an
    /// environment, a notification's destination, a URL.
    pub fn target(&self, step: &StepAction, service: &str, environment: Option<&str>) -> String {
        match step {
            StepAction::KillSwitch(k) => {
                let env = self
                    .kill_switches
                    .get(&k.provider)
                    .and_then(|p| p.target_environment(k.environment.as_deref()))
                    .or(match self.kill_switches.get(&k.provider) {
                        // An unknown provider keeps the step's own environment.
                        None => k.environment.as_deref(),
                        Some(_) => None,
                    });
                target::kill_switch(&k.provider, env, &k.flag)
            }
            StepAction::Rollback(_) => target::rollback(service, environment),
            StepAction::Notify(n) => target::notify(n.slack.as_deref(), n.webhook.as_deref()),
            StepAction::Http(h) => target::http(&h.url),
            // The flag's own target: a step and a kill switch never run at once.
            StepAction::RolloutStep(r) => target::kill_switch("builtin", None, &r.flag),
        }
    }

    /// The rollback provider a person's request uses: the one named, else
    /// `slack.rollback_provider`, else the only one configured.
    pub fn rollback_provider(&self, named: Option<&str>) -> Result<String, String> {
        if let Some(name) = named {
            return if self.rollbacks.contains_key(name) {
                Ok(name.to_string())
            } else {
                Err(format!(
                    "rollback provider {name:?} is not configured (configured: {})",
                    self.rollback_names()
                ))
            };
        }
        if let Some(p) = &self.slack.rollback_provider {
            return Ok(p.clone());
        }
        let names: Vec<&String> = self.rollbacks.keys().collect();
        match names.as_slice() {
            [only] => Ok((*only).clone()),
            [] => Err("no rollback provider is configured: add [rollback.<name>] to the configuration".into()),
            _ => Err(format!(
                "several rollback providers are configured ({}): name one with \"provider\", or set slack.rollback_provider",
                self.rollback_names()
            )),
        }
    }

    fn rollback_names(&self) -> String {
        if self.rollbacks.is_empty() {
            "none".into()
        } else {
            self.rollbacks
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// How remediation runs in this process.
#[derive(Debug, Clone)]
pub struct RemediationConfig {
    pub policy: AutomationPolicy,
    /// How long a claimed action may go without its executor renewing the
    /// lease before another executor treats it as in doubt. Renewed every
    /// third of it while a step runs, so it is short (seconds).
    pub lease: Duration,
    pub max_attempts: i32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// How often to look for ready actions when nothing wakes the executor.
    pub poll: Duration,
    /// Actions run at once (on different targets).
    pub concurrency: usize,
    /// This process's node name (the host): leases are owned by
    /// `node/instance`, and at start-up a process takes back what an earlier
    /// run on its node held.
    pub node: String,
    /// Take back every lease at start-up, whatever its node (a single-process
    /// store such as SQLite).
    pub reclaim_all: bool,
    /// The severity scale people declare on (`incidents.severities`).
    pub severities: firebreak_domain::response::SeverityScale,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        RemediationConfig {
            policy: AutomationPolicy::default(),
            lease: Duration::from_secs(15),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            poll: Duration::from_millis(500),
            concurrency: 8,
            node: "firebreak".into(),
            reclaim_all: false,
            severities: Default::default(),
        }
    }
}

/// The remediation layer of one process: commands, claims and the executor.
pub struct Remediation {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
    config: RemediationConfig,
    wake: Arc<Notify>,
    /// `node/instance`: who holds the leases this process takes.
    owner: String,
}

impl Remediation {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
        config: RemediationConfig,
    ) -> Remediation {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let owner = format!("{}/{}-{}", config.node, std::process::id(), &instance[..8]);
        Remediation {
            store,
            providers,
            metrics,
            config,
            wake: Arc::new(Notify::new()),
            owner,
        }
    }

    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    pub fn policy(&self) -> &AutomationPolicy {
        &self.config.policy
    }

    /// The severity scale incidents are declared on.
    pub fn severities(&self) -> &firebreak_domain::response::SeverityScale {
        &self.config.severities
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Who holds this process's leases (`node/instance`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Tells this process's executor that actions are ready.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lease_delta(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.lease)
            .unwrap_or_else(|_| chrono::Duration::seconds(15))
    }
}

/// The escalation notice for `action`, as an action row to insert.
pub fn escalation(
    target_step: &NotifyStep,
    action: &ActionRow,
    message: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> firebreak_domain::action::NewAction {
    let step = StepAction::Notify(NotifyStep {
        slack: target_step.slack.clone(),
        webhook: target_step.webhook.clone(),
        message: None,
    });
    // What is escalated, for the text and for receivers (the notice's
    // payload carries these as `firebreak.escalated`).
    let mut vars = BTreeMap::new();
    let incident = action
        .incident_id
        .map(|i| format!(", incident #{i}"))
        .unwrap_or_default();
    vars.insert(
        "message".to_string(),
        format!(
            "{message} [action #{}: {} on {}{incident}]",
            action.id, action.kind, action.target
        ),
    );
    vars.insert("escalated.action_id".into(), action.id.to_string());
    vars.insert("escalated.kind".into(), action.kind.clone());
    vars.insert("escalated.target".into(), action.target.clone());
    vars.insert("escalated.status".into(), action.status.as_str().into());
    if let Some(i) = action.incident_id {
        vars.insert("escalated.incident_id".into(), i.to_string());
    }
    if let Some(r) = &action.reason {
        vars.insert("escalated.reason".into(), r.clone());
    }
    firebreak_domain::action::NewAction {
        dedupe_key: format!(
            "escalate:{}:{}:{}",
            action.id,
            action.status.as_str(),
            action.attempts
        ),
        playbook: action.playbook.clone(),
        playbook_version: action.playbook_version.clone(),
        step_index: action.step_index,
        kind: "notify".into(),
        target: target::ESCALATION.into(),
        incident_id: action.incident_id,
        trigger_id: format!("action:{}", action.id),
        requested_by: "engine".into(),
        status: firebreak_domain::action::ActionStatus::Pending,
        reason: None,
        spec: ActionSpec {
            step,
            vars,
            describe: format!("escalated action #{} to a human", action.id),
            four_eyes: false,
        },
        at,
    }
}

/// The timeline entry of an action's event, if it belongs to an incident.
pub(crate) fn entry(
    action: &ActionRow,
    kind: &'static str,
    at: chrono::DateTime<chrono::Utc>,
    summary: String,
    what: &str,
) -> Vec<NewEntry> {
    action
        .incident_id
        .map(|incident_id| NewEntry {
            incident_id,
            at,
            kind,
            source: source(action),
            summary,
            ref_id: format!("action:{}:{what}", action.id),
        })
        .into_iter()
        .collect()
}

/// Where an action came from, for timeline entries: its playbook, or who asked.
pub(crate) fn source(action: &ActionRow) -> String {
    if action.playbook == firebreak_domain::action::MANUAL {
        action.requested_by.clone()
    } else {
        format!("playbook:{}", action.playbook)
    }
}

/// `[playbook@version]`, or `[requested by …]` for a person's request.
pub(crate) fn provenance(action: &ActionRow) -> String {
    if action.playbook == firebreak_domain::action::MANUAL {
        format!("requested by {}", action.requested_by)
    } else {
        format!("{}@{}", action.playbook, action.playbook_version)
    }
}

/// What a JSON result says about verification.
pub(crate) fn verified(result: Option<&Value>) -> bool {
    result.is_some_and(|r| r["verified"] == Value::Bool(true))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_domain::playbook::{FlagState, KillSwitchStep};
    use firebreak_domain::secret::Secret;

    fn kill(provider: &str, environment: Option<&str>) -> StepAction {
        StepAction::KillSwitch(KillSwitchStep {
            flag: "checkout.new-flow".into(),
            provider: provider.into(),
            environment: environment.map(str::to_string),
            state: FlagState::Off,
        })
    }

    #[test]
    fn one_flag_is_one_target_whether_or_not_a_step_names_the_default_environment() {
        let mut switches = BTreeMap::new();
        switches.insert(
            "unleash".to_string(),
            KillSwitchConfig::Unleash {
                url: "http://unleash:4242".into(),
                token: Secret::new("t"),
                project: "default".into(),
                environment: Some("production".into()),
            },
        );
        let p = Providers::new(
            None,
            &switches,
            BTreeMap::new(),
            BTreeMap::new(),
            SlackConfig::default(),
        );
        let implicit = p.target(&kill("unleash", None), "checkout", None);
        let explicit = p.target(&kill("unleash", Some("production")), "checkout", None);
        assert_eq!(implicit, explicit);
        assert_eq!(implicit, "flag:unleash:production:checkout.new-flow");
        assert_ne!(
            p.target(&kill("unleash", Some("staging")), "checkout", None),
            implicit
        );
        let rollback = StepAction::Rollback(firebreak_domain::playbook::RollbackStep {
            provider: "argocd".into(),
            to: "last_good".into(),
        });
        assert_eq!(
            p.target(&rollback, "checkout", Some("prod")),
            "deploys:checkout:prod"
        );
    }

    #[test]
    fn a_persons_rollback_names_its_provider_or_the_only_one() {
        let none = Providers::default();
        assert!(none
            .rollback_provider(None)
            .unwrap_err()
            .contains("no rollback provider"));
        let mut one = Providers::default();
        one.rollbacks.insert(
            "argocd".into(),
            RollbackConfig::Command {
                argv: vec!["true".into()],
                timeout: None,
            },
        );
        assert_eq!(one.rollback_provider(None).unwrap(), "argocd");
        assert!(one
            .rollback_provider(Some("spinnaker"))
            .unwrap_err()
            .contains("argocd"));
        one.rollbacks.insert(
            "script".into(),
            RollbackConfig::Command {
                argv: vec!["true".into()],
                timeout: None,
            },
        );
        assert!(one.rollback_provider(None).unwrap_err().contains("several"));
    }
}
