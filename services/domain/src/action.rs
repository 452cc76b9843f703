//! Actions: the unit of remediation. A playbook step or a person's request
//! becomes one action row; its status moves through the rules here, and its
//! guardrail decision (run, hold, suppress, dry-run) is made by [`decide`],
//! the same function for playbooks, Slack, REST and pages.
//!
//! Pure: the remediation layer gathers the facts (recent actions, the pause,
//! the policy) and asks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::playbook::{Budget, Guard, NotifyStep, StepAction};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Claimed, waiting for an executor.
    Pending,
    /// Waiting for a human: approval required, over a budget, or automation paused.
    Held,
    /// An executor holds its lease and is calling the provider.
    Running,
    Succeeded,
    Failed,
    Denied,
    /// Recorded what would have happened; nothing was called.
    DryRun,
    /// Inside a cooldown (or the same request already open): recorded, not run.
    Suppressed,
    /// A kill switch's previous state is being restored (under a lease).
    Reverting,
    Reverted,
    /// Held for approval longer than `automation.approval_ttl`: never executed.
    Expired,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 11] = [
        ActionStatus::Pending,
        ActionStatus::Held,
        ActionStatus::Running,
        ActionStatus::Succeeded,
        ActionStatus::Failed,
        ActionStatus::Denied,
        ActionStatus::DryRun,
        ActionStatus::Suppressed,
        ActionStatus::Reverting,
        ActionStatus::Reverted,
        ActionStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Held => "held",
            ActionStatus::Running => "running",
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::Denied => "denied",
            ActionStatus::DryRun => "dry_run",
            ActionStatus::Suppressed => "suppressed",
            ActionStatus::Reverting => "reverting",
            ActionStatus::Reverted => "reverted",
            ActionStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ActionStatus> {
        ActionStatus::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether an action in this status counts as a run against budgets and cooldowns.
    pub fn counts_as_run(self) -> bool {
        matches!(
            self,
            ActionStatus::Pending
                | ActionStatus::Running
                | ActionStatus::Succeeded
                | ActionStatus::Failed
                | ActionStatus::Reverting
                | ActionStatus::Reverted
        )
    }

    /// Holds its target: no other action on it may run meanwhile (enforced by
    /// a unique index over these statuses).
    pub fn holds_target(self) -> bool {
        matches!(self, ActionStatus::Running | ActionStatus::Reverting)
    }

    /// Not finished: will still do something, or waits for someone.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ActionStatus::Pending
                | ActionStatus::Held
                | ActionStatus::Running
                | ActionStatus::Reverting
        )
    }
}

/// What an action does and the values it runs with, fixed when it is claimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSpec {
    pub step: StepAction,
    /// Placeholder values (service, environment, incident, suspect and target deploys, labels).
    pub vars: BTreeMap<String, String>,
    /// One line for people: what this action does.
    pub describe: String,
    /// Approval must come from someone other than the requester (the step's own rule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub four_eyes: bool,
}

/// How far back a rollback looks for the last good deploy.
pub const ROLLBACK_HISTORY_DAYS: i64 = 30;

/// The playbook name person-made requests are recorded under.
pub const MANUAL: &str = "manual";

/// An action about to be claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    /// Unique: playbook, step, target and incident (or trigger event).
    pub dedupe_key: String,
    pub playbook: String,
    pub playbook_version: String,
    pub step_index: i32,
    pub kind: String,
    /// The one identity of the thing acted on (see [`target`]).
    pub target: String,
    pub incident_id: Option<i64>,
    pub trigger_id: String,
    /// Who asked: `engine` for playbooks, the person's identity otherwise.
    pub requested_by: String,
    pub status: ActionStatus,
    pub reason: Option<String>,
    pub spec: ActionSpec,
    pub at: DateTime<Utc>,
}

/// An action as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRow {
    pub id: i64,
    pub dedupe_key: String,
    pub playbook: String,
    pub playbook_version: String,
    pub step_index: i32,
    pub kind: String,
    pub target: String,
    pub incident_id: Option<i64>,
    pub trigger_id: String,
    pub requested_by: String,
    pub status: ActionStatus,
    pub reason: Option<String>,
    pub spec: ActionSpec,
    pub previous_state: Option<Value>,
    pub result: Option<Value>,
    pub attempts: i32,
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub not_before: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    /// The executor holding the lease (`node/instance`).
    pub lease_owner: Option<String>,
}

impl ActionRow {
    /// The kill switch state before this action first acted, if recorded.
    pub fn previous_enabled(&self) -> Option<bool> {
        self.previous_state
            .as_ref()
            .and_then(|p| p.get("enabled"))
            .and_then(Value::as_bool)
    }

    pub fn is_escalation(&self) -> bool {
        self.target == target::ESCALATION
    }
}

/// Target identities: one string per physical thing, so the one-running-per-
/// target rule holds whoever asks. Callers pass the *effective* environment
/// (the step's, else the provider's default; none for providers without
/// environments), never the raw one.
pub mod target {
    /// Escalation notices: never limited by the one-running rule's intent, but a
    /// target of their own so they never block a real one.
    pub const ESCALATION: &str = "escalation";

    pub fn kill_switch(provider: &str, environment: Option<&str>, flag: &str) -> String {
        format!("flag:{provider}:{}:{flag}", environment.unwrap_or(""))
    }

    pub fn rollback(service: &str, environment: Option<&str>) -> String {
        format!("deploys:{service}:{}", environment.unwrap_or(""))
    }

    /// Where a notification goes: a cooldown keeps a channel from being flooded.
    pub fn notify(slack: Option<&str>, webhook: Option<&str>) -> String {
        format!("notify:{}:{}", slack.unwrap_or(""), webhook.unwrap_or(""))
    }

    pub fn http(url: &str) -> String {
        format!("http:{url}")
    }
}

/// A change freeze: while it is in force, rollouts do not advance and
/// rollout controllers asking Firebreak (Flagger, Argo Rollouts) are told to hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    pub name: String,
    /// The services it applies to; empty: every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// The environments it applies to; empty: every environment. A rollout
    /// or request that names no environment is frozen by any of them.
    #[serde(default)]
    pub environments: Vec<String>,
    /// When: weekly (`days`, `from`, `to`, `timezone` or `utc_offset`) or absolute (`start`, `end`).
    pub window: crate::playbook::Window,
    /// What it holds: automation of these kinds waits for a person, and a
    /// person's request of them needs `force`. Default: rollbacks and
    /// rollouts (a kill switch reduces the blast radius and runs).
    #[serde(default = "Hold::defaults")]
    pub holds: Vec<Hold>,
}

/// What a change freeze can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    Rollback,
    /// Guarded rollouts: their start, restart and steps.
    Rollout,
    KillSwitch,
    Notify,
    Http,
}

impl Hold {
    pub fn defaults() -> Vec<Hold> {
        vec![Hold::Rollback, Hold::Rollout]
    }

    /// The hold that covers an action of `kind` (`rollout_step` is a rollout's).
    pub fn of_kind(kind: &str) -> Option<Hold> {
        Some(match kind {
            "rollback" => Hold::Rollback,
            "rollout_step" => Hold::Rollout,
            "kill_switch" => Hold::KillSwitch,
            "notify" => Hold::Notify,
            "http" => Hold::Http,
            _ => return None,
        })
    }
}

impl Freeze {
    pub fn applies(&self, service: &str, environment: Option<&str>, at: DateTime<Utc>) -> bool {
        (self.services.is_empty() || self.services.iter().any(|s| s == service))
            && (self.environments.is_empty()
                || environment.is_none_or(|e| self.environments.iter().any(|x| x == e)))
            && self.window.contains(at)
    }
}

/// Automation limits that apply to every playbook and every person's request.
#[derive(Debug, Clone)]
pub struct AutomationPolicy {
    /// Everything runs in dry-run: record, call nothing.
    pub dry_run: bool,
    /// At most this many actions across all playbooks and people per window; over it, held.
    pub max_actions: Option<Budget>,
    /// Who hears about held and failed actions.
    pub escalate: Option<NotifyStep>,
    /// The guard for people's requests (REST, Slack, pages): cooldown, budget,
    /// approval and dry-run, as a playbook's guard.
    pub manual: Guard,
    /// A held action must be approved by someone other than who asked for it…
    pub four_eyes: bool,
    /// …with at least this role.
    pub four_eyes_min_role: crate::access::Role,
    /// Change freezes (`[[automation.freeze]]`).
    pub freezes: Vec<Freeze>,
    /// A held action not decided within this expires, never executed.
    pub approval_ttl: chrono::Duration,
}

impl AutomationPolicy {
    /// When a held action (held since `held_at`) stops being approvable.
    pub fn approval_expires(&self, held_at: DateTime<Utc>) -> DateTime<Utc> {
        held_at + self.approval_ttl
    }

    /// The first freeze in force for a service (and environment) at `at`
    /// that holds guarded rollouts.
    pub fn freeze(
        &self,
        service: &str,
        environment: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<&Freeze> {
        self.freeze_for("rollout_step", service, environment, at)
    }

    /// The first freeze in force for a service (and environment) at `at`
    /// that holds actions of `kind`.
    pub fn freeze_for(
        &self,
        kind: &str,
        service: &str,
        environment: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<&Freeze> {
        let hold = Hold::of_kind(kind)?;
        self.freezes
            .iter()
            .find(|f| f.holds.contains(&hold) && f.applies(service, environment, at))
    }
}

impl Default for AutomationPolicy {
    fn default() -> Self {
        AutomationPolicy {
            dry_run: false,
            max_actions: None,
            escalate: None,
            manual: Guard::default(),
            four_eyes: false,
            four_eyes_min_role: crate::access::Role::Operator,
            freezes: Vec::new(),
            approval_ttl: chrono::Duration::hours(1),
        }
    }
}

/// Everything the guardrail decision looks at, besides recent actions.
#[derive(Debug, Clone, Copy)]
pub struct Guardrails<'a> {
    /// The playbook (or [`MANUAL`]) the action belongs to.
    pub playbook: &'a str,
    pub target: &'a str,
    pub guard: &'a Guard,
    /// The step asks for approval on its own.
    pub step_approval: bool,
    pub policy: &'a AutomationPolicy,
    /// The global automation pause is on.
    pub paused: bool,
    /// A person explicitly runs past the pause (audited by the caller).
    pub force: bool,
    /// A reason the action cannot run at all (nothing to roll back to, …).
    pub failure: Option<&'a str>,
    /// The change freeze in force that holds this action's kind, by name.
    pub freeze: Option<&'a str>,
}

/// The status an action is claimed with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: ActionStatus,
    pub reason: Option<String>,
}

impl Decision {
    fn new(status: ActionStatus, reason: impl Into<String>) -> Decision {
        Decision {
            status,
            reason: Some(reason.into()),
        }
    }
}

/// Decides an action's guardrails. `recent` holds the actions created within
/// the longest window any guard looks at (the caller reads them under the
/// automation lock, so two deciders never both spend the last run of a budget).
///
/// In order: a precondition failure; a cooldown on the same target; dry-run
/// (the playbook's, the manual guard's, or global); the automation pause
/// (unless forced); the playbook's run budget; the global budget; approval.
pub fn decide(g: &Guardrails<'_>, recent: &[ActionRow], now: DateTime<Utc>) -> Decision {
    if let Some(why) = g.failure {
        return Decision::new(ActionStatus::Failed, why);
    }
    let runs = |since: DateTime<Utc>, same_playbook: bool| {
        recent
            .iter()
            .filter(|r| {
                r.status.counts_as_run()
                    && !r.is_escalation()
                    && r.created_at >= since
                    && (!same_playbook || r.playbook == g.playbook)
            })
            .count()
    };
    if let Some(c) = g.guard.cooldown {
        let previous = recent.iter().find(|r| {
            r.playbook == g.playbook
                && r.target == g.target
                && r.status.counts_as_run()
                && r.created_at >= now - c.0
        });
        if let Some(prev) = previous {
            return Decision::new(
                ActionStatus::Suppressed,
                format!(
                    "cooldown {c}: action #{} ran for this target at {}",
                    prev.id,
                    prev.created_at.format("%H:%M:%S UTC")
                ),
            );
        }
    }
    if g.guard.dry_run {
        let whose = if g.playbook == MANUAL {
            "manual requests are in dry-run ([automation.manual] dry_run)"
        } else {
            "playbook is in dry-run"
        };
        return Decision::new(ActionStatus::DryRun, whose);
    }
    if g.policy.dry_run {
        return Decision::new(ActionStatus::DryRun, "automation is in dry-run");
    }
    if g.paused && !g.force {
        return Decision::new(
            ActionStatus::Held,
            if g.playbook == MANUAL {
                "automation is paused (ask again with force to run past the pause)"
            } else {
                "automation is paused"
            },
        );
    }
    if let Some(name) = g.freeze {
        if g.playbook != MANUAL {
            return Decision::new(
                ActionStatus::Held,
                format!("change freeze {name:?} holds this: an operator approves it to run"),
            );
        }
        if !g.force {
            return Decision::new(
                ActionStatus::Held,
                format!(
                    "change freeze {name:?} is in force (ask again with force to act during it)"
                ),
            );
        }
    }
    if let Some(b) = g
        .guard
        .max_runs
        .filter(|b| runs(now - b.per.0, true) >= b.count as usize)
    {
        return Decision::new(
            ActionStatus::Held,
            format!("over budget: max_runs {} per {}", b.count, b.per),
        );
    }
    if let Some(b) = g
        .policy
        .max_actions
        .filter(|b| runs(now - b.per.0, false) >= b.count as usize)
    {
        return Decision::new(
            ActionStatus::Held,
            format!("over the global budget: {} actions per {}", b.count, b.per),
        );
    }
    if g.guard.require_approval || g.step_approval {
        return Decision::new(ActionStatus::Held, "approval required");
    }
    if let (Some(name), true) = (g.freeze, g.force) {
        return Decision::new(
            ActionStatus::Pending,
            format!("forced during change freeze {name:?}"),
        );
    }
    if g.paused && g.force {
        return Decision::new(ActionStatus::Pending, "forced past the automation pause");
    }
    Decision {
        status: ActionStatus::Pending,
        reason: None,
    }
}

/// The longest window any of these guards (and the policy) looks back over.
pub fn lookback<'a>(
    guards: impl IntoIterator<Item = &'a Guard>,
    policy: &AutomationPolicy,
) -> chrono::Duration {
    guards
        .into_iter()
        .flat_map(|g| [g.cooldown.map(|c| c.0), g.max_runs.map(|b| b.per.0)])
        .chain([policy.max_actions.map(|b| b.per.0)])
        .flatten()
        .max()
        .unwrap_or_else(chrono::Duration::zero)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::duration::Dur;
    use crate::playbook::{FlagState, KillSwitchStep};

    fn row(id: i64, playbook: &str, target: &str, status: ActionStatus, ago_s: i64) -> ActionRow {
        let at = Utc::now() - chrono::Duration::seconds(ago_s);
        ActionRow {
            id,
            dedupe_key: format!("k{id}"),
            playbook: playbook.into(),
            playbook_version: "v".into(),
            step_index: 0,
            kind: "kill_switch".into(),
            target: target.into(),
            incident_id: None,
            trigger_id: "t".into(),
            requested_by: "engine".into(),
            status,
            reason: None,
            spec: ActionSpec {
                step: StepAction::KillSwitch(KillSwitchStep {
                    flag: "f".into(),
                    provider: "builtin".into(),
                    environment: None,
                    state: FlagState::Off,
                }),
                vars: BTreeMap::new(),
                describe: "turn off f".into(),
                four_eyes: false,
            },
            previous_state: None,
            result: None,
            attempts: 0,
            decided_by: None,
            created_at: at,
            updated_at: at,
            not_before: at,
            lease_until: None,
            lease_owner: None,
        }
    }

    fn rails<'a>(guard: &'a Guard, policy: &'a AutomationPolicy) -> Guardrails<'a> {
        Guardrails {
            playbook: "pb",
            target: "flag:builtin::f",
            guard,
            step_approval: false,
            policy,
            paused: false,
            force: false,
            failure: None,
            freeze: None,
        }
    }

    #[test]
    fn nothing_in_the_way_runs() {
        let (g, p) = (Guard::default(), AutomationPolicy::default());
        assert_eq!(
            decide(&rails(&g, &p), &[], Utc::now()).status,
            ActionStatus::Pending
        );
    }

    #[test]
    fn order_of_the_rules() {
        let now = Utc::now();
        let g = Guard {
            cooldown: Some(Dur::parse("10m").unwrap()),
            max_runs: Some(Budget {
                count: 1,
                per: Dur::parse("1h").unwrap(),
            }),
            require_approval: true,
            dry_run: false,
        };
        let p = AutomationPolicy::default();
        let recent = [row(7, "pb", "flag:builtin::f", ActionStatus::Succeeded, 60)];
        // Cooldown first: same playbook and target within 10 minutes.
        let d = decide(&rails(&g, &p), &recent, now);
        assert_eq!(d.status, ActionStatus::Suppressed);
        assert!(d.reason.unwrap().contains("#7"));
        // Another target: the budget of one run per hour holds it.
        let other = Guardrails {
            target: "flag:builtin::g",
            ..rails(&g, &p)
        };
        let d = decide(&other, &recent, now);
        assert_eq!(d.status, ActionStatus::Held);
        assert!(d.reason.unwrap().contains("max_runs 1 per 1h"));
        // Nothing recent: approval.
        let d = decide(&other, &[], now);
        assert_eq!(d, Decision::new(ActionStatus::Held, "approval required"));
        // A failure beats everything.
        let failing = Guardrails {
            failure: Some("nothing to roll back to"),
            ..other
        };
        assert_eq!(decide(&failing, &recent, now).status, ActionStatus::Failed);
    }

    #[test]
    fn dry_run_then_pause_and_force() {
        let now = Utc::now();
        let g = Guard::default();
        let dry = AutomationPolicy {
            dry_run: true,
            ..AutomationPolicy::default()
        };
        let paused = Guardrails {
            paused: true,
            ..rails(&g, &dry)
        };
        // Dry-run wins over the pause, and force does not leave dry-run.
        assert_eq!(decide(&paused, &[], now).status, ActionStatus::DryRun);
        let forced = Guardrails {
            force: true,
            ..paused
        };
        assert_eq!(decide(&forced, &[], now).status, ActionStatus::DryRun);
        let p = AutomationPolicy::default();
        let paused = Guardrails {
            paused: true,
            ..rails(&g, &p)
        };
        assert_eq!(decide(&paused, &[], now).status, ActionStatus::Held);
        let forced = Guardrails {
            force: true,
            ..paused
        };
        let d = decide(&forced, &[], now);
        assert_eq!(d.status, ActionStatus::Pending);
        assert!(d.reason.unwrap().contains("forced"));
    }

    #[test]
    fn the_global_budget_counts_every_playbook_but_not_escalations() {
        let now = Utc::now();
        let g = Guard::default();
        let p = AutomationPolicy {
            max_actions: Some(Budget {
                count: 2,
                per: Dur::parse("1h").unwrap(),
            }),
            ..AutomationPolicy::default()
        };
        let mut recent = vec![
            row(1, "other", "flag:builtin::x", ActionStatus::Succeeded, 100),
            row(2, MANUAL, "flag:builtin::y", ActionStatus::Held, 100),
            row(3, "pb", target::ESCALATION, ActionStatus::Succeeded, 100),
        ];
        assert_eq!(
            decide(&rails(&g, &p), &recent, now).status,
            ActionStatus::Pending
        );
        recent.push(row(4, MANUAL, "flag:builtin::z", ActionStatus::Failed, 100));
        let d = decide(&rails(&g, &p), &recent, now);
        assert_eq!(d.status, ActionStatus::Held);
        assert!(d.reason.unwrap().contains("global budget"));
        // Outside the window it no longer counts.
        recent[0] = row(1, "other", "flag:builtin::x", ActionStatus::Succeeded, 7200);
        assert_eq!(
            decide(&rails(&g, &p), &recent, now).status,
            ActionStatus::Pending
        );
    }

    #[test]
    fn statuses_round_trip_and_unknown_is_none() {
        for s in ActionStatus::ALL {
            assert_eq!(ActionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ActionStatus::parse("exploded"), None);
        assert!(ActionStatus::Reverting.holds_target());
        assert!(!ActionStatus::Succeeded.is_open());
    }

    #[test]
    fn one_identity_per_target() {
        assert_eq!(
            target::kill_switch("unleash", Some("production"), "checkout.new"),
            "flag:unleash:production:checkout.new"
        );
        assert_eq!(target::kill_switch("builtin", None, "f"), "flag:builtin::f");
        assert_eq!(target::rollback("checkout", None), "deploys:checkout:");
    }

    #[test]
    fn lookback_is_the_longest_window() {
        let g1 = Guard {
            cooldown: Some(Dur::parse("30m").unwrap()),
            ..Guard::default()
        };
        let g2 = Guard {
            max_runs: Some(Budget {
                count: 3,
                per: Dur::parse("2h").unwrap(),
            }),
            ..Guard::default()
        };
        assert_eq!(
            lookback([&g1, &g2], &AutomationPolicy::default()),
            chrono::Duration::hours(2)
        );
        assert_eq!(
            lookback([], &AutomationPolicy::default()),
            chrono::Duration::zero()
        );
    }
}
