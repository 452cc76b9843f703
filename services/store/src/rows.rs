//! Rows besides the domain's own: action changes and filters, the audit trail,
//! built-in flags, settings, postmortems (people's rows are in `access.rs`).

use chrono::{DateTime, Utc};
use firebreak_domain::action::{ActionRow, ActionStatus};
use firebreak_domain::{AlertEvent, DeployEvent, GateResult};
use serde::Serialize;
use serde_json::Value;

/// A status change; `Some` fields are written, `None` ones left as they are.
#[derive(Debug, Clone)]
pub struct ActionChange {
    pub status: ActionStatus,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub previous_state: Option<Value>,
    pub decided_by: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    /// A new lease (until, owner); only kept when the new status holds the
    /// target (running, reverting), otherwise any lease is cleared.
    pub lease: Option<(DateTime<Utc>, String)>,
    /// Only if this owner holds the lease (an executor records the outcome
    /// of its own work, never of work another executor took over).
    pub held_by: Option<String>,
}

impl ActionChange {
    pub fn to(status: ActionStatus, at: DateTime<Utc>) -> ActionChange {
        ActionChange {
            status,
            at,
            reason: None,
            result: None,
            previous_state: None,
            decided_by: None,
            not_before: None,
            lease: None,
            held_by: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub incident_id: Option<i64>,
    pub status: Option<ActionStatus>,
    pub since: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// What claiming a Slack announcement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackClaim {
    /// Ours to post: unclaimed, or claimed by a process that stopped before
    /// it posted (the claim is older than the lease).
    Ours,
    /// Posted already.
    Posted,
    /// Claimed by someone now posting it: look again later.
    InFlight,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewAudit {
    pub at: DateTime<Utc>,
    /// `engine`, `api`, `slack:U123`, …
    pub actor: String,
    pub event: String,
    pub action_id: Option<i64>,
    pub incident_id: Option<i64>,
    pub playbook: Option<String>,
    pub playbook_version: Option<String>,
    pub detail: Value,
}

impl NewAudit {
    /// An audit row about no particular action or incident, now.
    pub fn by(actor: impl Into<String>, event: impl Into<String>, detail: Value) -> NewAudit {
        NewAudit {
            at: chrono::Utc::now(),
            actor: actor.into(),
            event: event.into(),
            action_id: None,
            incident_id: None,
            playbook: None,
            playbook_version: None,
            detail,
        }
    }

    /// An audit row about `action`, by `actor`.
    pub fn of(
        action: &ActionRow,
        actor: &str,
        event: &str,
        at: DateTime<Utc>,
        detail: Value,
    ) -> NewAudit {
        NewAudit {
            at,
            actor: actor.to_string(),
            event: event.to_string(),
            action_id: Some(action.id),
            incident_id: action.incident_id,
            playbook: Some(action.playbook.clone()),
            playbook_version: Some(action.playbook_version.clone()),
            detail,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(flatten)]
    pub entry: NewAudit,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action_id: Option<i64>,
    pub incident_id: Option<i64>,
    /// Exactly this actor (`token:ci`, `user:alice`, `engine`, …).
    pub actor: Option<String>,
    /// Exactly this event (`flag_set`, `approved`, …).
    pub event: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagRow {
    pub key: String,
    /// The kill switch: false serves the off variant to everyone.
    pub enabled: bool,
    pub description: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
    /// A flagd definition (variants and targeting); none: a plain on/off flag.
    pub definition: Option<firebreak_domain::flagd::FlagDefinition>,
    /// Who answers for the flag (a team or person), for the stale report.
    pub owner: Option<String>,
    /// When it was created (unknown for flags made before Firebreak kept it).
    pub created_at: Option<DateTime<Utc>>,
    /// When OFREP last evaluated it (recorded at most every few seconds).
    pub last_evaluated_at: Option<DateTime<Utc>>,
}

impl FlagRow {
    /// The flag as a flagd definition, for export and display: the stored
    /// definition with the kill switch applied (`enabled = false` is state
    /// DISABLED), or a plain on/off flag.
    pub fn effective(&self) -> firebreak_domain::flagd::FlagDefinition {
        use firebreak_domain::flagd::{FlagDefinition, FlagState};
        match &self.definition {
            Some(d) => {
                let mut d = d.clone();
                d.state = if self.enabled {
                    FlagState::Enabled
                } else {
                    FlagState::Disabled
                };
                d
            }
            None => FlagDefinition::boolean(self.enabled),
        }
    }

    /// Whether Firebreak's kill switch holds the flag off: `enabled` is false
    /// over a definition written ENABLED. (A definition written DISABLED, as
    /// in a flagd file, is disabled as flagd disables it.)
    pub fn killed(&self) -> bool {
        use firebreak_domain::flagd::FlagState;
        !self.enabled
            && self
                .definition
                .as_ref()
                .is_some_and(|d| d.state == FlagState::Enabled)
    }

    /// Evaluates the flag as OFREP serves it, without copying it: killed,
    /// the off variant to everyone (DISABLED); written DISABLED, no value
    /// (the caller's default), as flagd; otherwise flagd's evaluation of the
    /// definition, or a plain flag's on/off (STATIC). Returns the resolution
    /// and the flag's own metadata.
    pub fn evaluate(
        &self,
        context: &serde_json::Value,
        now: i64,
        bucketing: firebreak_domain::flagd::Bucketing,
    ) -> Result<
        (
            firebreak_domain::flagd::Resolution<'_>,
            &serde_json::Map<String, serde_json::Value>,
        ),
        firebreak_domain::flagd::EvalError,
    > {
        use firebreak_domain::flagd::{FlagDefinition, FlagState};
        use std::sync::LazyLock;
        static PLAIN: LazyLock<[FlagDefinition; 2]> = LazyLock::new(|| {
            [
                FlagDefinition::boolean(false),
                FlagDefinition::boolean(true),
            ]
        });
        let d = match &self.definition {
            None => &PLAIN[usize::from(self.enabled)],
            Some(d) if self.killed() => return Ok((d.killed(), &d.metadata)),
            Some(d) => d,
        };
        // On, even when first written DISABLED and turned on since.
        let state = if self.enabled {
            FlagState::Enabled
        } else {
            d.state
        };
        let r = d.evaluate_with(&self.key, context, now, bucketing, state);
        r.map(|r| (r, &d.metadata))
    }

    /// Why the flag may be ready to remove from code, if it is: `fully_rolled_out`
    /// (on, every user gets the same non-off variant, unchanged for `days`)
    /// and/or `not_evaluated` (no OFREP evaluation for `days`, or never since
    /// it was created that long ago).
    pub fn stale_reasons(&self, now: DateTime<Utc>, days: i64) -> Vec<&'static str> {
        let cutoff = now - chrono::Duration::days(days);
        let mut reasons = Vec::new();
        let d = self.effective();
        let serves_one = self.enabled
            && d.targeting.is_none()
            && d.default_variant.is_some()
            && d.default_variant.as_deref() != d.off_variant();
        if serves_one && self.updated_at <= cutoff {
            reasons.push("fully_rolled_out");
        }
        let last = self
            .last_evaluated_at
            .or(self.created_at)
            .unwrap_or(self.updated_at);
        if last <= cutoff {
            reasons.push("not_evaluated");
        }
        reasons
    }
}

/// Stored events since a moment, for replaying playbooks over history.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Alert notifications with the incident each was placed in.
    pub alerts: Vec<(Option<i64>, AlertEvent)>,
    pub deploys: Vec<DeployEvent>,
    pub gates: Vec<GateResult>,
}

/// The automation pause flag in `settings`.
pub const SETTING_PAUSED: &str = "automation_paused";

/// A postmortem document as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostmortemRow {
    pub incident_id: i64,
    pub revision: i64,
    pub status: String,
    pub markdown: String,
    /// The last machine render (not shown to editors; used to merge regenerations).
    #[serde(skip)]
    pub generated: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// A new revision of a postmortem.
#[derive(Debug, Clone)]
pub struct PostmortemSave {
    pub incident_id: i64,
    /// The revision the writer started from; `None` creates the document.
    pub expected_revision: Option<i64>,
    pub markdown: String,
    pub status: String,
    /// A new machine render, when this save comes from (re)generation.
    pub generated: Option<String>,
    pub author: String,
    /// `generated`, `edited`, `regenerated`, `status`.
    pub kind: String,
    pub at: DateTime<Utc>,
}

/// What a save found.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveOutcome {
    Saved(PostmortemRow),
    /// The document moved on (or exists already): nothing was written.
    Stale(Option<PostmortemRow>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevisionRow {
    pub revision: i64,
    pub kind: String,
    pub status: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
    pub markdown: String,
}

/// A service's rows in a time window, [from, to]: of one environment, or of
/// any when `environment` is `None` (rows without one match every one).
#[derive(Debug, Clone, Copy)]
pub struct ServiceWindow<'a> {
    pub service: &'a str,
    pub environment: Option<&'a str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A browser session to store (its id as a hash, never the id itself).
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    pub id_hash: &'a str,
    pub username: &'a str,
    pub csrf_token: &'a str,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// `who` has the draft of `incident` open at `now`; people seen since
/// `since` count as present, and at most `max_rows` are kept.
#[derive(Debug, Clone, Copy)]
pub struct Presence<'a> {
    pub incident: i64,
    pub who: &'a str,
    pub now: DateTime<Utc>,
    pub since: DateTime<Utc>,
    pub max_rows: i64,
}

/// A built-in flag as a person or a tool sets it (`description: None`
/// keeps the stored one).
#[derive(Debug, Clone, Copy)]
pub struct FlagWrite<'a> {
    pub key: &'a str,
    pub enabled: bool,
    pub description: Option<&'a str>,
    pub by: &'a str,
}

/// A tracker's word on one of its issues: it closed (`done`) or reopened
/// (`open`) at `at`.
#[derive(Debug, Clone, Copy)]
pub struct TrackerStatus<'a> {
    pub tracker: &'a str,
    pub key: &'a str,
    pub status: &'a str,
    pub at: DateTime<Utc>,
}

/// An outbox claim made at `at`; a claim older than `stale_before` that was
/// never delivered is taken over.
#[derive(Debug, Clone, Copy)]
pub struct OutboxClaim {
    pub at: DateTime<Utc>,
    pub stale_before: DateTime<Utc>,
}

/// One stored log line, as the postmortem's log mining reads it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub at: DateTime<Utc>,
    pub level: Option<String>,
    pub message: String,
}

/// A timeline entry with its incident and its place in the table, for
/// followers such as the Slack notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    pub seq: i64,
    pub incident_id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub source: String,
    pub summary: String,
    pub ref_id: String,
}

/// What `verify_audit` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditCheck {
    /// Rows whose hash was checked.
    pub verified: u64,
    /// Rows written before the chain began (by a version without hashes).
    pub before_chain: u64,
    /// Of the verified rows, those chained under the audit key.
    pub keyed: u64,
    /// The first keyed row.
    pub keyed_from: Option<i64>,
    /// The last row verified and its hash: compare it with a head recorded
    /// outside the database to see a removed tail.
    pub head: Option<(i64, String)>,
    /// The first row that does not match, and why.
    pub broken: Option<(i64, String)>,
}

/// When an incident's phases ended, for durations in lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentTimes {
    pub incident_id: i64,
    pub first_alert: Option<DateTime<Utc>>,
    /// The latest suspect change that started before the incident opened.
    pub suspect_at: Option<DateTime<Utc>>,
    /// The first kill switch or rollback that was executed.
    pub mitigated_at: Option<DateTime<Utc>>,
    /// When its last alert ended (when all resolved).
    pub last_alert_end: Option<DateTime<Utc>>,
}

/// A rollout about to be created.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub flag: String,
    pub plan: firebreak_domain::rollout::RolloutPlan,
    pub created_by: String,
    pub at: DateTime<Utc>,
}

/// A change to a rollout; `Some` fields are written (`Some(None)` clears).
#[derive(Debug, Clone)]
pub struct RolloutChange {
    pub at: DateTime<Utc>,
    pub status: Option<firebreak_domain::rollout::RolloutStatus>,
    pub step: Option<Option<usize>>,
    pub step_started_at: Option<Option<DateTime<Utc>>>,
    pub action_id: Option<Option<i64>>,
    pub waiting: Option<Option<String>>,
    pub reason: Option<Option<String>>,
    /// Starts a new run: generation + 1, `started_at` = `at`.
    pub restart: bool,
    /// Only if the rollout is still in this run.
    pub generation: Option<i32>,
}

impl RolloutChange {
    pub fn at(at: DateTime<Utc>) -> RolloutChange {
        RolloutChange {
            at,
            status: None,
            step: None,
            step_started_at: None,
            action_id: None,
            waiting: None,
            reason: None,
            restart: false,
            generation: None,
        }
    }
}

/// One entry of a rollout's own timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutEvent {
    pub rollout_id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub actor: String,
    pub summary: String,
    /// Written once per rollout and `ref_id`.
    #[serde(skip)]
    pub ref_id: String,
}

/// One entry of a service's own timeline (what concerns it while no
/// incident is open, such as a rollout controller's gate consultation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEvent {
    pub service: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub source: String,
    pub summary: String,
    /// Written once per service and `ref_id`.
    pub ref_id: String,
}

/// A postmortem action item: what a team decided to do, who owns it, by when,
/// and where a tracker holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionItemRow {
    pub id: i64,
    pub incident_id: i64,
    pub title: String,
    pub owner: Option<String>,
    /// `YYYY-MM-DD`.
    pub due: Option<String>,
    /// `high`, `medium` or `low`.
    pub priority: String,
    /// `open`, `done` or `wont_do`.
    pub status: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `github` or `jira`, once an export was asked for.
    pub tracker: Option<String>,
    /// The tracker's issue: `#12` on GitHub, `OPS-7` on Jira.
    pub tracker_key: Option<String>,
    pub tracker_url: Option<String>,
    /// `pending`, `exported` or `failed` (failed exports are retried).
    pub export_state: Option<String>,
    pub export_error: Option<String>,
    pub export_attempts: i64,
}

/// A new action item.
#[derive(Debug, Clone)]
pub struct NewActionItem {
    pub incident_id: i64,
    pub title: String,
    pub owner: Option<String>,
    pub due: Option<String>,
    pub priority: String,
    pub created_by: String,
    pub at: DateTime<Utc>,
    /// Export it to this tracker (through the outbox) from the start.
    pub export_to: Option<String>,
}

/// A change to an action item; `Some` fields are written (`Some(None)`
/// clears an owner or a due date).
#[derive(Debug, Clone, Default)]
pub struct ActionItemChange {
    pub title: Option<String>,
    pub owner: Option<Option<String>>,
    pub due: Option<Option<String>>,
    pub priority: Option<String>,
    pub status: Option<String>,
}

/// How an export attempt ended.
#[derive(Debug, Clone)]
pub enum ExportOutcome {
    Exported {
        key: String,
        url: String,
    },
    Failed {
        error: String,
        next_at: DateTime<Utc>,
    },
}
