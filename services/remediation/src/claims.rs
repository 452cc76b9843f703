//! Claiming actions: the guarded path every action takes. A candidate (a
//! playbook step the engine matched, or a person's request) gets its
//! guardrail decision from [`firebreak_domain::action::decide`] and becomes
//! a row unique per dedupe key, inside the caller's transaction, under one
//! advisory lock (`firebreak:automation`) so two deciders never both spend
//! the last run of a budget. Claiming writes the audit rows, the timeline
//! entries and, for held and failed actions, the escalation notice.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use firebreak_domain::action::{self, ActionRow, ActionStatus, Guardrails, NewAction};
use firebreak_domain::ids::lock_key;
use firebreak_domain::playbook::{FlagState, Guard, StepAction};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{NewAudit, StoreError, StoreTx, SETTING_PAUSED};
use serde_json::json;

use crate::{escalation, provenance, source, ActionSpec, Remediation};

/// An action about to be decided and claimed.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The playbook, or [`action::MANUAL`] for a person's request.
    pub playbook: String,
    pub playbook_version: String,
    pub step_index: i32,
    pub spec: ActionSpec,
    /// The playbook's guard, or the manual guard.
    pub guard: Guard,
    /// The step asks for approval on its own.
    pub step_approval: bool,
    pub target: String,
    pub incident: Option<i64>,
    pub trigger_id: String,
    /// The trigger in words, for the audit trail.
    pub trigger: String,
    pub dedupe_key: String,
    /// `engine` for playbooks; the person's identity otherwise.
    pub requested_by: String,
    /// Why a person asked, recorded with the request.
    pub note: Option<String>,
    /// A precondition that failed (nothing to roll back to, …).
    pub failure: Option<String>,
    /// Run past the automation pause (a person's explicit, audited choice).
    pub force: bool,
    /// Candidates of one match share a group: its `announce` row (the
    /// "matched" audit) is written once, with the first new claim.
    pub group: String,
    pub announce: Option<NewAudit>,
}

/// What claiming did.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The rows that were new, with the index of their candidate.
    pub rows: Vec<(usize, ActionRow)>,
    /// How many are ready for an executor (pending, escalations).
    pub ready: usize,
}

impl Remediation {
    /// Decides and claims `candidates` in `tx`. Candidates whose dedupe key
    /// was claimed before (a duplicate delivery, another engine) claim
    /// nothing. Audit rows are written in `tx`; timeline entries are added
    /// to `entries` for the caller to write with the rest of its work.
    pub async fn claim(
        &self,
        tx: &mut dyn StoreTx,
        candidates: &[Candidate],
        entries: &mut Vec<NewEntry>,
        now: DateTime<Utc>,
    ) -> Result<Claimed, StoreError> {
        let mut claimed = Claimed::default();
        if candidates.is_empty() {
            return Ok(claimed);
        }
        // One lock for every automation decision across engines and people:
        // they are rare, and budgets must be counted by one decider at a time.
        tx.lock_groups(&[lock_key("firebreak:automation")]).await?;
        let paused = tx.tx_setting(SETTING_PAUSED).await?.as_deref() == Some("true");
        let policy = &self.config.policy;
        let window = action::lookback(candidates.iter().map(|c| &c.guard), policy);
        let mut recent: Vec<ActionRow> = if window > chrono::Duration::zero() {
            tx.actions_created_since(now - window).await?
        } else {
            Vec::new()
        };
        let mut audit = Vec::new();
        let mut announced: HashSet<&str> = HashSet::new();
        for (index, c) in candidates.iter().enumerate() {
            let var = |k: &str| {
                c.spec
                    .vars
                    .get(k)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty())
            };
            let freeze = policy
                .freeze_for(
                    c.spec.step.kind(),
                    var("service").unwrap_or(""),
                    var("environment"),
                    now,
                )
                .map(|f| f.name.as_str());
            // One decision per target and state: an earlier action that set
            // (or will set) this target to the same state stands for this one.
            let same = if c.failure.is_none() {
                in_effect(tx, &c.spec.step, &c.target, c.incident).await?
            } else {
                None
            };
            let decided = action::decide(
                &Guardrails {
                    playbook: &c.playbook,
                    target: &c.target,
                    guard: &c.guard,
                    step_approval: c.step_approval,
                    policy,
                    paused,
                    force: c.force,
                    failure: c.failure.as_deref(),
                    freeze,
                },
                &recent,
                now,
            );
            // A cooldown, dry-run or failure says more; what would run or
            // wait for a person is suppressed instead.
            let same = same
                .filter(|_| matches!(decided.status, ActionStatus::Pending | ActionStatus::Held));
            let decision = if let Some(prev) = &same {
                action::Decision {
                    status: ActionStatus::Suppressed,
                    reason: Some(format!(
                        "action #{} ({}) already {} {}: one decision per target",
                        prev.id,
                        prev.status.as_str(),
                        if prev.status == ActionStatus::Succeeded {
                            "set"
                        } else {
                            "sets"
                        },
                        desired_words(&c.spec.step)
                    )),
                }
            } else {
                decided
            };
            let new = NewAction {
                dedupe_key: c.dedupe_key.clone(),
                playbook: c.playbook.clone(),
                playbook_version: c.playbook_version.clone(),
                step_index: c.step_index,
                kind: c.spec.step.kind().to_string(),
                target: c.target.clone(),
                incident_id: c.incident,
                trigger_id: c.trigger_id.clone(),
                requested_by: c.requested_by.clone(),
                status: decision.status,
                reason: decision.reason,
                spec: c.spec.clone(),
                at: now,
            };
            let Some(row) = tx.insert_actions(std::slice::from_ref(&new)).await?.pop() else {
                continue; // claimed before: a duplicate delivery or another engine
            };
            if let Some(a) = &c.announce {
                if announced.insert(c.group.as_str()) {
                    audit.push(a.clone());
                }
            }
            let outcome = match row.status {
                ActionStatus::Pending => "requested",
                other => other.as_str(),
            };
            self.metrics.action(outcome);
            if row.status == ActionStatus::Pending {
                claimed.ready += 1;
            }
            audit.push(NewAudit::of(
                &row,
                &c.requested_by,
                outcome,
                now,
                json!({
                    "step": c.spec.describe, "reason": row.reason, "trigger": c.trigger,
                    "vars": c.spec.vars, "note": c.note,
                    "forced": c.force && (paused || freeze.is_some()), "freeze": freeze,
                    "same_as": same.as_ref().map(|a| a.id),
                }),
            ));
            if let Some(incident) = row.incident_id {
                entries.push(claim_entry(&row, c.note.as_deref(), incident, now));
            }
            if matches!(row.status, ActionStatus::Held | ActionStatus::Failed) {
                if let Some(target) = &policy.escalate {
                    let message = escalation_message(&row);
                    if !tx
                        .insert_actions(&[escalation(target, &row, &message, now)])
                        .await?
                        .is_empty()
                    {
                        claimed.ready += 1;
                    }
                } else {
                    tracing::warn!(action = row.id, reason = ?row.reason, "action held for a human; no escalation target configured");
                }
            }
            recent.push(row.clone());
            claimed.rows.push((index, row));
        }
        tx.insert_audit(&audit).await?;
        Ok(claimed)
    }
}

/// The timeline entry of a claim; a person's reason for a request is quoted.
fn claim_entry(row: &ActionRow, note: Option<&str>, incident: i64, now: DateTime<Utc>) -> NewEntry {
    let describe = &row.spec.describe;
    let why = row.reason.as_deref().unwrap_or("");
    let (k, text) = match row.status {
        ActionStatus::Pending => (kind::ACTION_REQUESTED, format!("requested: {describe}")),
        ActionStatus::Held => (
            kind::ACTION_HELD,
            format!("held for a human: {describe} ({why})"),
        ),
        ActionStatus::Suppressed => (
            kind::ACTION_SUPPRESSED,
            format!("not repeated: {describe} ({why})"),
        ),
        ActionStatus::DryRun => (
            kind::ACTION_DRY_RUN,
            format!("dry run, would have: {describe}"),
        ),
        _ => (kind::ACTION_FAILED, format!("cannot: {describe} ({why})")),
    };
    NewEntry {
        incident_id: incident,
        at: now,
        kind: k,
        source: source(row),
        summary: format!(
            "{text} [{}]{}",
            provenance(row),
            note.filter(|n| !n.trim().is_empty())
                .map(|n| format!(" — reason: {}", n.trim()))
                .unwrap_or_default()
        ),
        ref_id: format!("action:{}:{}", row.id, row.status.as_str()),
    }
}

fn escalation_message(row: &ActionRow) -> String {
    let held = row.status == ActionStatus::Held;
    format!(
        "Firebreak {} action #{}{}: {} ({}). {}",
        if held { "held" } else { "could not run" },
        row.id,
        row.incident_id
            .map(|i| format!(" for incident #{i}"))
            .unwrap_or_default(),
        row.spec.describe,
        row.reason.as_deref().unwrap_or(""),
        if held {
            format!(
                "Approve with POST /api/v1/actions/{}/approve or deny with …/deny.",
                row.id
            )
        } else {
            "A human needs to look.".into()
        }
    )
}

/// The state a step sets its target to, when one decision should stand for
/// every step that wants it: a kill switch's on or off, a rollback.
fn desired(step: &StepAction) -> Option<(bool, FlagState)> {
    match step {
        StepAction::KillSwitch(k) => Some((true, k.state)),
        StepAction::Rollback(_) => Some((false, FlagState::Off)),
        _ => None,
    }
}

fn desired_words(step: &StepAction) -> String {
    match step {
        StepAction::KillSwitch(k) => format!(
            "turns flag {} {}",
            k.flag,
            if k.state.enabled() { "on" } else { "off" }
        ),
        StepAction::Rollback(_) => "rolls this service back".into(),
        other => other.describe(),
    }
}

/// The earlier action that stands for `step` on `target`: the newest action
/// on the target that acted or will act, when it wants the same state and
/// its effect is still in place. In flight (pending, held, running) it
/// always is. A succeeded kill switch on a built-in flag is while the flag's
/// last writer is that action (nobody changed it since); on another
/// provider, whose changes Firebreak cannot see, only within the same
/// incident. A succeeded rollback is history, not a decision in force.
pub(crate) async fn in_effect(
    tx: &mut dyn StoreTx,
    step: &StepAction,
    target: &str,
    incident: Option<i64>,
) -> Result<Option<ActionRow>, StoreError> {
    let Some(want) = desired(step) else {
        return Ok(None);
    };
    // The newest action that acted (or will) decides.
    let Some(a) = tx.acting_actions_on(target, 1).await?.pop() else {
        return Ok(None);
    };
    if desired(&a.spec.step) != Some(want) {
        return Ok(None);
    }
    let still = match a.status {
        ActionStatus::Pending | ActionStatus::Held | ActionStatus::Running => true,
        ActionStatus::Succeeded => match &a.spec.step {
            StepAction::KillSwitch(k) if k.provider == "builtin" => tx
                .flag_for_update(&k.flag)
                .await?
                .is_some_and(|f| f.updated_by == format!("action:{}", a.id)),
            StepAction::KillSwitch(_) => incident.is_some() && a.incident_id == incident,
            _ => false,
        },
        // Reverting or reverted: the target is back where it was before.
        _ => false,
    };
    Ok(still.then_some(a))
}
