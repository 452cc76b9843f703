//! Guarded rollouts: start, pause, resume, abort and restart (people, from
//! the API and Slack), the driver that advances them while their guards hold,
//! the engine's check that kills them at once, and the executor's step.
//!
//! Every change to the flag goes through the action path: a step is a
//! `rollout_step` action and a kill is a `kill_switch` action, both claimed
//! with the guardrails ([`Remediation::claim`]), audited, run one at a time
//! on the flag's target and recorded on the timeline. The rollout row says
//! where the rollout stands; its own timeline (`rollout_events`) keeps every
//! step, wait and command whether or not an incident is open.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firebreak_domain::access::Identity;
use firebreak_domain::action::{target, ActionRow, ActionStatus};
use firebreak_domain::correlation::{GroupKey, NewIncident};
use firebreak_domain::flagd::FlagDefinition;
use firebreak_domain::playbook::{
    FlagState, Guard, KillSwitchStep, RolloutStepAction, StepAction, Trigger,
};
use firebreak_domain::rollout::{GuardFacts, Next, Rollout, RolloutPlan, RolloutStatus};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_domain::GateVerdict;
use firebreak_store::{
    NewAudit, NewRollout, RolloutChange, RolloutEvent, ServiceWindow, StoreError, StoreTx,
    SETTING_PAUSED,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::claims::Candidate;
use crate::commands::{check_flag_key, CommandError};
use crate::{facts, ActionSpec, ExecError, Remediation};

/// The playbook name rollout actions are recorded under.
pub const ROLLOUT: &str = "rollout";

/// What a person tells a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    /// Stop, and turn the flag off for everyone (a kill switch action).
    Abort,
    /// Run again from this step (1-based), e.g. after a kill: "re-enable at 5 %".
    Restart {
        step: usize,
    },
}

fn event(
    r: &Rollout,
    at: DateTime<Utc>,
    kind: &str,
    actor: &str,
    summary: String,
    ref_id: String,
) -> RolloutEvent {
    RolloutEvent {
        rollout_id: r.id,
        at,
        kind: kind.to_string(),
        actor: actor.to_string(),
        summary,
        ref_id,
    }
}

/// Changes a rollout still running in the same run as `r`, and records what
/// `said` makes of the changed rollout; `None` (nothing written) when it had
/// moved on meanwhile (paused, killed or restarted).
async fn change_running(
    tx: &mut dyn StoreTx,
    r: &Rollout,
    change: RolloutChange,
    said: impl FnOnce(&Rollout) -> RolloutEvent,
) -> Result<Option<Rollout>, StoreError> {
    let change = RolloutChange {
        generation: Some(r.generation),
        ..change
    };
    let running = [RolloutStatus::Running];
    let Some(changed) = tx.update_rollout(r.id, &running, &change).await? else {
        return Ok(None);
    };
    tx.insert_rollout_events(&[said(&changed)]).await?;
    Ok(Some(changed))
}

/// Records on a running rollout the action that applies its current step.
async fn step_action(
    tx: &mut dyn StoreTx,
    rollout: i64,
    action: i64,
    now: DateTime<Utc>,
) -> Result<Option<Rollout>, StoreError> {
    let change = RolloutChange {
        action_id: Some(Some(action)),
        ..RolloutChange::at(now)
    };
    tx.update_rollout(rollout, &[RolloutStatus::Running], &change)
        .await
}

fn bad(field: &str, message: impl Into<String>) -> CommandError {
    CommandError::BadRequest {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// The definition a flag's rollout starts from: its own, or the plain on/off one.
fn base(flag: &firebreak_store::FlagRow) -> FlagDefinition {
    flag.definition
        .clone()
        .unwrap_or_else(|| FlagDefinition::boolean(flag.enabled))
}

/// What every action of a rollout shares: recorded under the `rollout`
/// playbook and the rollout's number, on the flag's own target, with the
/// default guard (the global policy still applies).
fn candidate(
    r: &Rollout,
    action: StepAction,
    describe: String,
    incident: Option<i64>,
    requested_by: &str,
) -> Candidate {
    let mut vars = facts::base_vars(
        &r.plan.service,
        r.plan.environment.as_deref(),
        incident,
        ROLLOUT,
    );
    vars.insert("flag".into(), r.flag.clone());
    Candidate {
        playbook: ROLLOUT.into(),
        playbook_version: format!("#{}", r.id),
        step_index: 0,
        spec: ActionSpec {
            describe,
            step: action,
            vars,
            four_eyes: false,
        },
        guard: Guard::default(),
        step_approval: false,
        target: target::kill_switch("builtin", None, &r.flag),
        incident,
        trigger_id: format!("rollout:{}", r.id),
        trigger: format!("rollout #{} of {}", r.id, r.flag),
        dedupe_key: String::new(),
        requested_by: requested_by.to_string(),
        note: None,
        failure: None,
        force: false,
        group: String::new(),
        announce: None,
    }
}

/// The action that serves step `step` (0-based) of the rollout's current run.
fn step_candidate(r: &Rollout, step: usize, requested_by: &str) -> Candidate {
    let percent = r.plan.steps[step].percent;
    let action = StepAction::RolloutStep(RolloutStepAction {
        rollout: r.id,
        generation: r.generation,
        flag: r.flag.clone(),
        step,
        percent,
    });
    let mut c = candidate(r, action.clone(), action.describe(), None, requested_by);
    c.spec.vars.insert("percent".into(), percent.to_string());
    Candidate {
        step_index: i32::try_from(step).unwrap_or(i32::MAX),
        dedupe_key: format!("rollout:{}:{}:step:{step}", r.id, r.generation),
        ..c
    }
}

/// The kill switch that turns the flag off for everyone, once per run.
fn kill_candidate(
    r: &Rollout,
    why: &str,
    incident: Option<i64>,
    trigger_id: &str,
    requested_by: &str,
    force: bool,
) -> Candidate {
    let action = StepAction::KillSwitch(KillSwitchStep {
        flag: r.flag.clone(),
        provider: "builtin".into(),
        environment: None,
        state: FlagState::Off,
    });
    let describe = format!(
        "turn off flag {} for everyone (rollout #{}: {why})",
        r.flag, r.id
    );
    Candidate {
        step_index: -1,
        trigger_id: trigger_id.to_string(),
        trigger: why.to_string(),
        dedupe_key: format!("rollout:{}:{}:kill", r.id, r.generation),
        force,
        ..candidate(r, action, describe, incident, requested_by)
    }
}

impl Remediation {
    /// Claims `candidate` in `tx`; the action row, if one was new.
    async fn claim_one(
        &self,
        tx: &mut dyn StoreTx,
        candidate: Candidate,
        entries: &mut Vec<NewEntry>,
        now: DateTime<Utc>,
    ) -> Result<Option<ActionRow>, StoreError> {
        let claimed = self
            .claim(tx, std::slice::from_ref(&candidate), entries, now)
            .await?;
        Ok(claimed.rows.into_iter().next().map(|(_, r)| r))
    }

    /// Starts a rollout of a built-in flag and claims its first step. The
    /// flag must exist; its definition (or, for a plain flag, `on`/`off`)
    /// gives the variants. Refused during a change freeze of the service.
    pub async fn start_rollout(
        &self,
        identity: &Identity,
        flag: &str,
        plan: RolloutPlan,
    ) -> Result<(Rollout, Option<ActionRow>), CommandError> {
        let who = identity.id.as_str();
        check_flag_key(flag).map_err(|m| bad("flag", m))?;
        plan.validate().map_err(|(f, m)| bad(&f, m))?;
        let now = Utc::now();
        if let Some(f) = self
            .config
            .policy
            .freeze(&plan.service, plan.environment.as_deref(), now)
        {
            return Err(CommandError::Conflict(format!(
                "change freeze {:?} is in force for {}: start the rollout after it ends",
                f.name, plan.service
            )));
        }
        let mut tx = self.store.begin().await?;
        let Some(row) = tx.flag_for_update(flag).await? else {
            return Err(CommandError::NotFound(format!(
                "no flag {flag:?}: create it first (POST /api/v1/flags or /api/v1/flags/import)"
            )));
        };
        let definition = base(&row);
        plan.definition(&definition, 0)
            .map_err(|m| bad("variant", m))?;
        let rollout = match tx
            .insert_rollout(&NewRollout {
                flag: flag.to_string(),
                plan,
                created_by: who.to_string(),
                at: now,
            })
            .await
        {
            Ok(r) => r,
            Err(StoreError::Conflict(_)) => {
                drop(tx);
                let active = self.store.list_rollouts(Some(flag), true, 1).await?;
                return Err(CommandError::Conflict(format!(
                    "flag {flag} already has an active rollout{}: pause, abort or restart it instead",
                    active
                        .first()
                        .map(|r| format!(" (#{}, {})", r.id, r.status.as_str()))
                        .unwrap_or_default()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let steps: Vec<String> = rollout
            .plan
            .steps
            .iter()
            .map(|s| format!("{}% for {}", s.percent, s.hold))
            .collect();
        let mut entries = Vec::new();
        let action = self
            .claim_one(
                tx.as_mut(),
                step_candidate(&rollout, 0, who),
                &mut entries,
                now,
            )
            .await?;
        let mut events = vec![event(
            &rollout,
            now,
            kind::ROLLOUT_STARTED,
            who,
            format!(
                "rollout of {} started by {who}: {}",
                rollout.flag,
                steps.join(", then ")
            ),
            "started".into(),
        )];
        let rollout = match &action {
            Some(a) => {
                events.push(step_claim_event(&rollout, 0, a, now));
                step_action(tx.as_mut(), rollout.id, a.id, now)
                    .await?
                    .unwrap_or(rollout)
            }
            None => rollout,
        };
        tx.insert_rollout_events(&events).await?;
        tx.insert_audit(&[NewAudit::by(
            who,
            "rollout_started",
            json!({"rollout": rollout.id, "flag": flag, "plan": rollout.plan}),
        )])
        .await?;
        tx.insert_timeline(&entries).await?;
        tx.commit().await?;
        self.wake();
        tracing::info!(rollout = rollout.id, flag, by = who, "rollout started");
        Ok((rollout, action))
    }

    /// Pause, resume, abort or restart a rollout, once: a command that does
    /// not apply to its status is a conflict naming the status.
    pub async fn rollout_command(
        &self,
        identity: &Identity,
        id: i64,
        command: RolloutCommand,
        comment: Option<&str>,
    ) -> Result<(Rollout, Option<ActionRow>), CommandError> {
        let who = identity.id.as_str();
        if comment.is_some_and(|c| c.len() > 2000) {
            return Err(bad("comment", "must be at most 2000 characters"));
        }
        let current = match self.store.rollout(id).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => {
                return Err(CommandError::NotFound(format!("no rollout {id}")))
            }
            Err(e) => return Err(e.into()),
        };
        let now = Utc::now();
        let said = comment.map(|c| format!(": {c}")).unwrap_or_default();
        let (from, change, kind, summary, audit_event): (
            &[RolloutStatus],
            RolloutChange,
            &str,
            String,
            &str,
        ) = match command {
            RolloutCommand::Pause => (
                &[RolloutStatus::Running],
                RolloutChange {
                    status: Some(RolloutStatus::Paused),
                    reason: Some(Some(format!("paused by {who}{said}"))),
                    ..RolloutChange::at(now)
                },
                kind::ROLLOUT_PAUSED,
                format!("paused at {}% by {who}{said}", current.percent()),
                "rollout_paused",
            ),
            RolloutCommand::Resume => (
                &[RolloutStatus::Paused],
                RolloutChange {
                    status: Some(RolloutStatus::Running),
                    reason: Some(None),
                    ..RolloutChange::at(now)
                },
                kind::ROLLOUT_RESUMED,
                format!("resumed at {}% by {who}{said}", current.percent()),
                "rollout_resumed",
            ),
            RolloutCommand::Abort => (
                &[RolloutStatus::Running, RolloutStatus::Paused],
                RolloutChange {
                    status: Some(RolloutStatus::Aborted),
                    reason: Some(Some(format!("aborted by {who}{said}"))),
                    waiting: Some(None),
                    action_id: Some(None),
                    ..RolloutChange::at(now)
                },
                kind::ROLLOUT_ABORTED,
                format!(
                    "aborted at {}% by {who}{said}; the flag is turned off for everyone",
                    current.percent()
                ),
                "rollout_aborted",
            ),
            RolloutCommand::Restart { step } => {
                if step == 0 || step > current.plan.steps.len() {
                    return Err(bad(
                        "step",
                        format!("give a step from 1 to {}", current.plan.steps.len()),
                    ));
                }
                if let Some(f) = self.config.policy.freeze(
                    &current.plan.service,
                    current.plan.environment.as_deref(),
                    now,
                ) {
                    return Err(CommandError::Conflict(format!(
                        "change freeze {:?} is in force for {}: restart after it ends",
                        f.name, current.plan.service
                    )));
                }
                (
                    &[
                        RolloutStatus::Running,
                        RolloutStatus::Paused,
                        RolloutStatus::Killed,
                        RolloutStatus::Aborted,
                        RolloutStatus::Completed,
                    ],
                    RolloutChange {
                        status: Some(RolloutStatus::Running),
                        reason: Some(None),
                        waiting: Some(None),
                        step: Some(None),
                        step_started_at: Some(None),
                        action_id: Some(None),
                        restart: true,
                        ..RolloutChange::at(now)
                    },
                    kind::ROLLOUT_RESTARTED,
                    format!(
                        "restarted at step {step} ({}%) by {who}{said}",
                        current.plan.steps[step - 1].percent
                    ),
                    "rollout_restarted",
                )
            }
        };
        let mut tx = self.store.begin().await?;
        let updated = match tx.update_rollout(id, from, &change).await {
            Ok(u) => u,
            // Restarting onto a flag that has another active rollout.
            Err(StoreError::Conflict(_)) => {
                return Err(CommandError::Conflict(format!(
                    "flag {} has another active rollout: abort that one first",
                    current.flag
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let Some(rollout) = updated else {
            let now_row = self.store.rollout(id).await?;
            return Err(CommandError::Conflict(format!(
                "rollout {id} is {}; {} applies to {}",
                now_row.status.as_str(),
                match command {
                    RolloutCommand::Pause => "pause",
                    RolloutCommand::Resume => "resume",
                    RolloutCommand::Abort => "abort",
                    RolloutCommand::Restart { .. } => "restart",
                },
                from.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        };
        let mut entries = Vec::new();
        let mut events = vec![event(
            &rollout,
            now,
            kind,
            who,
            summary,
            format!("{kind}:{}:{}", rollout.generation, now.timestamp_micros()),
        )];
        let action = match command {
            RolloutCommand::Abort => {
                let incident = newest_open(tx.as_mut(), &rollout).await?;
                let c = kill_candidate(
                    &rollout,
                    &format!("aborted by {who}"),
                    incident,
                    &format!("rollout:{id}"),
                    who,
                    true,
                );
                self.claim_one(tx.as_mut(), c, &mut entries, now).await?
            }
            RolloutCommand::Restart { step } => {
                let a = self
                    .claim_one(
                        tx.as_mut(),
                        step_candidate(&rollout, step - 1, who),
                        &mut entries,
                        now,
                    )
                    .await?;
                if let Some(a) = &a {
                    events.push(step_claim_event(&rollout, step - 1, a, now));
                    step_action(tx.as_mut(), id, a.id, now).await?;
                }
                a
            }
            _ => None,
        };
        tx.insert_rollout_events(&events).await?;
        tx.insert_audit(&[NewAudit::by(
            who,
            audit_event,
            json!({"rollout": id, "flag": rollout.flag, "comment": comment}),
        )])
        .await?;
        tx.insert_timeline(&entries).await?;
        tx.commit().await?;
        if action.is_some() {
            self.wake();
        }
        let rollout = self.store.rollout(id).await?;
        Ok((rollout, action))
    }

    /// Inside the engine's transaction: the rollouts `triggers` kill (a
    /// failed gate of the service, a firing alert the guards match). Each is
    /// marked killed once (whichever engine gets there first) and a kill
    /// switch action is claimed, attached to the trigger's incident, else
    /// the service's open incident, else a new incident.
    pub async fn rollout_kills(
        &self,
        tx: &mut dyn StoreTx,
        triggers: &[(Trigger<'_>, Option<i64>)],
        entries: &mut Vec<NewEntry>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let relevant = |t: &Trigger<'_>| match t {
            Trigger::Gate(g) => g.verdict == GateVerdict::Fail,
            Trigger::Alert(a) => a.status == firebreak_domain::alertmanager::AlertStatus::Firing,
            Trigger::Deploy(_) => false,
        };
        if !triggers.iter().any(|(t, _)| relevant(t)) {
            return Ok(0);
        }
        let active = tx.active_rollouts().await?;
        let mut ready = 0;
        for r in &active {
            let Some((trigger, incident, why)) = triggers
                .iter()
                .find_map(|(t, i)| r.kill_reason(t).map(|why| (t, *i, why)))
            else {
                continue;
            };
            let killed = tx
                .update_rollout(
                    r.id,
                    &[RolloutStatus::Running, RolloutStatus::Paused],
                    &RolloutChange {
                        status: Some(RolloutStatus::Killed),
                        reason: Some(Some(why.clone())),
                        waiting: Some(None),
                        action_id: Some(None),
                        generation: Some(r.generation),
                        ..RolloutChange::at(now)
                    },
                )
                .await?;
            let Some(killed) = killed else { continue };
            let incident = match incident {
                Some(i) => Some(i),
                None => match newest_open(tx, &killed).await? {
                    Some(i) => Some(i),
                    None => {
                        let id = open_incident(tx, &killed, &why, now).await?;
                        entries.push(firebreak_domain::timeline::lifecycle_entry(
                            id,
                            now,
                            kind::INCIDENT_OPENED,
                            format!("Incident opened: rollout of {} killed ({why})", killed.flag),
                        ));
                        Some(id)
                    }
                },
            };
            let c = kill_candidate(&killed, &why, incident, trigger.id(), "engine", false);
            let claimed = self
                .claim(tx, std::slice::from_ref(&c), entries, now)
                .await?;
            ready += claimed.ready;
            let summary = format!(
                "rollout #{} of {} killed at {}%: {why}; the flag goes off for everyone",
                killed.id,
                killed.flag,
                r.percent()
            );
            if let Some(incident_id) = incident {
                entries.push(NewEntry {
                    incident_id,
                    at: now,
                    kind: kind::ROLLOUT_KILLED,
                    source: format!("rollout:{}", killed.id),
                    summary: summary.clone(),
                    ref_id: format!("rollout:{}:{}:killed", killed.id, killed.generation),
                });
            }
            tx.insert_rollout_events(&[event(
                &killed,
                now,
                kind::ROLLOUT_KILLED,
                "engine",
                summary,
                format!("killed:{}", killed.generation),
            )])
            .await?;
            tracing::warn!(rollout = killed.id, flag = %killed.flag, reason = %why, "rollout killed");
        }
        Ok(ready)
    }

    /// Advances running rollouts until `shutdown`: every `every`, and at once
    /// when woken. Any process running remediation may drive: claims are
    /// unique per rollout, run and step, so two drivers claim a step once.
    pub async fn drive_rollouts(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.advance_rollouts(Utc::now()).await {
                if !e.is_transient() {
                    tracing::warn!(error = %e, "cannot advance rollouts; will try again");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One pass over the running rollouts: each takes its next step, completes,
    /// or records why it waits. Returns how many changed.
    pub async fn advance_rollouts(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let rollouts = self.store.list_rollouts(None, true, 1000).await?;
        let mut changed = 0;
        for r in rollouts
            .into_iter()
            .filter(|r| r.status == RolloutStatus::Running)
        {
            match self.advance(&r, now).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(rollout = r.id, error = %e, "cannot advance this rollout")
                }
            }
        }
        if changed > 0 {
            self.wake();
        }
        Ok(changed)
    }

    async fn advance(&self, r: &Rollout, now: DateTime<Utc>) -> Result<bool, StoreError> {
        // A step in flight: wait for it, or stop if it did not happen.
        if let Some(id) = r.action_id {
            let a = self.store.action(id).await?;
            if a.status.is_open() {
                return Ok(false);
            }
            if a.status != ActionStatus::Succeeded {
                let why = format!(
                    "step action #{id} ended {}{}",
                    a.status.as_str(),
                    a.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                return self.pause_for(r, why, now).await;
            }
        }
        let paused = self.store.setting(SETTING_PAUSED).await?.as_deref() == Some("true");
        let freeze = self
            .config
            .policy
            .freeze(&r.plan.service, r.plan.environment.as_deref(), now)
            .map(|f| f.name.clone());
        let mut tx = self.store.begin().await?;
        let open = open_incidents(tx.as_mut(), r).await?;
        let gate_passed = match r.step_started_at {
            Some(since) if r.plan.guards.require_gate_pass => tx
                .gates_between(ServiceWindow {
                    service: &r.plan.service,
                    environment: r.plan.environment.as_deref(),
                    from: since,
                    to: now,
                })
                .await?
                .iter()
                .any(|g| g.verdict == GateVerdict::Pass),
            _ => false,
        };
        let facts = GuardFacts {
            paused,
            freeze,
            open_incidents: open,
            gate_passed,
        };
        let mut entries = Vec::new();
        match r.next(&facts, now) {
            Next::Wait(why) => {
                if r.waiting.as_deref() == Some(why.as_str()) {
                    return Ok(false);
                }
                let waiting = RolloutChange {
                    waiting: Some(Some(why.clone())),
                    ..RolloutChange::at(now)
                };
                change_running(tx.as_mut(), r, waiting, |r| {
                    let step = r.step.map_or(-1, |s| s as i64);
                    event(
                        r,
                        now,
                        kind::ROLLOUT_WAITING,
                        "firebreak",
                        format!("waiting: {why}"),
                        format!("waiting:{}:{step}:{why}", r.generation),
                    )
                })
                .await?;
                tx.commit().await?;
                Ok(false)
            }
            Next::Apply(step) => {
                // The rollout row first, then the automation lock (in the
                // claim): the order the engine's kill takes them in.
                let still = tx
                    .update_rollout(
                        r.id,
                        &[RolloutStatus::Running],
                        &RolloutChange {
                            waiting: Some(None),
                            generation: Some(r.generation),
                            ..RolloutChange::at(now)
                        },
                    )
                    .await?;
                if still.is_none() {
                    return Ok(false); // killed, paused or restarted meanwhile
                }
                let c = step_candidate(r, step, "engine");
                let Some(a) = self.claim_one(tx.as_mut(), c, &mut entries, now).await? else {
                    return Ok(false); // another driver claimed it
                };
                step_action(tx.as_mut(), r.id, a.id, now).await?;
                tx.insert_rollout_events(&[step_claim_event(r, step, &a, now)])
                    .await?;
                tx.insert_timeline(&entries).await?;
                tx.commit().await?;
                Ok(true)
            }
            Next::Complete => {
                let completed = RolloutChange {
                    status: Some(RolloutStatus::Completed),
                    waiting: Some(None),
                    ..RolloutChange::at(now)
                };
                let done = change_running(tx.as_mut(), r, completed, |done| {
                    let summary = format!(
                        "rollout of {} completed: {}% with every guard holding",
                        done.flag,
                        done.percent()
                    );
                    let ref_id = format!("completed:{}", done.generation);
                    event(
                        done,
                        now,
                        kind::ROLLOUT_COMPLETED,
                        "firebreak",
                        summary,
                        ref_id,
                    )
                })
                .await?;
                if let Some(done) = done {
                    tx.insert_audit(&[NewAudit::by(
                        "engine",
                        "rollout_completed",
                        json!({"rollout": done.id, "flag": done.flag}),
                    )])
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    async fn pause_for(
        &self,
        r: &Rollout,
        why: String,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        let pause = RolloutChange {
            status: Some(RolloutStatus::Paused),
            reason: Some(Some(why.clone())),
            action_id: Some(None),
            ..RolloutChange::at(now)
        };
        let paused = change_running(tx.as_mut(), r, pause, |p| {
            let summary = format!(
                "paused at {}%: {why}; resume or restart it once fixed",
                p.percent()
            );
            let ref_id = format!(
                "paused:{}:{}",
                p.generation,
                r.action_id.unwrap_or_default()
            );
            event(p, now, kind::ROLLOUT_PAUSED, "firebreak", summary, ref_id)
        })
        .await?;
        if paused.is_some() {
            tracing::warn!(rollout = r.id, reason = %why, "rollout paused");
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The executor's part of a rollout step: in one transaction, while this
    /// process holds the action's lease and the rollout is still running in
    /// the same run, record the flag as it was, serve the step's definition
    /// (and turn the flag on), and move the rollout to the step.
    pub(crate) async fn apply_rollout_step(
        &self,
        action: &ActionRow,
        s: &RolloutStepAction,
    ) -> Result<(Value, Option<Value>), ExecError> {
        let now = Utc::now();
        let store_err = |e: StoreError| ExecError::retry(format!("built-in flag store: {e}"));
        let mut tx = self.store.begin().await.map_err(store_err)?;
        let rollout = tx
            .update_rollout(
                s.rollout,
                &[RolloutStatus::Running],
                &RolloutChange {
                    step: Some(Some(s.step)),
                    step_started_at: Some(Some(now)),
                    action_id: Some(None),
                    waiting: Some(None),
                    generation: Some(s.generation),
                    ..RolloutChange::at(now)
                },
            )
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ExecError::fatal(format!(
                    "rollout #{} is no longer running this run (paused, stopped or restarted); step not applied",
                    s.rollout
                ))
            })?;
        let mut flag = tx
            .flag_for_update(&s.flag)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ExecError::fatal(format!("flag {} no longer exists", s.flag)))?;
        let previous =
            json!({"flag": s.flag, "enabled": flag.enabled, "definition": flag.definition});
        if !tx
            .note_previous_state(action.id, &self.owner, &previous)
            .await
            .map_err(store_err)?
        {
            return Err(ExecError::fatal(
                "lost the lease before acting; not applied",
            ));
        }
        let definition = rollout
            .plan
            .definition(&base(&flag), s.step)
            .map_err(ExecError::fatal)?;
        flag.definition = Some(definition.clone());
        flag.enabled = true;
        flag.updated_at = now;
        flag.updated_by = format!("rollout:{}", rollout.id);
        tx.put_flag(&flag).await.map_err(store_err)?;
        tx.insert_audit(&[NewAudit::of(
            action,
            &format!("action:{}", action.id),
            "flag_set",
            now,
            json!({"flag": s.flag, "enabled": true, "definition": definition}),
        )])
        .await
        .map_err(store_err)?;
        tx.insert_rollout_events(&[event(
            &rollout,
            now,
            kind::ROLLOUT_STEP,
            "firebreak",
            format!(
                "step {} of {}: {} serves its new variant to {}%{}",
                s.step + 1,
                rollout.plan.steps.len(),
                s.flag,
                s.percent,
                if rollout.plan.segment.is_some() {
                    " and the segment"
                } else {
                    ""
                }
            ),
            format!("step:{}:{}", s.generation, s.step),
        )])
        .await
        .map_err(store_err)?;
        tx.commit().await.map_err(store_err)?;
        // Read back what OFREP will serve.
        let read = self.store.flag(&s.flag).await.map_err(store_err)?;
        if !read.enabled || read.definition.as_ref() != Some(&definition) {
            return Err(ExecError::retry(format!(
                "flag {} does not read back the step's definition",
                s.flag
            )));
        }
        Ok((
            json!({"verified": true, "response": {"flag": s.flag, "percent": s.percent, "step": s.step + 1}}),
            Some(previous),
        ))
    }
}

fn step_claim_event(r: &Rollout, step: usize, a: &ActionRow, now: DateTime<Utc>) -> RolloutEvent {
    event(
        r,
        now,
        kind::ROLLOUT_STEP,
        &a.requested_by,
        format!(
            "step {} ({}%) requested as action #{} ({})",
            step + 1,
            r.plan.steps[step].percent,
            a.id,
            a.status.as_str()
        ),
        format!("claim:{}:{step}", r.generation),
    )
}

/// The open incidents of the rollout's service (and environment, where
/// both name one).
async fn open_incidents(tx: &mut dyn StoreTx, r: &Rollout) -> Result<Vec<i64>, StoreError> {
    let open = tx
        .open_incidents_for(std::slice::from_ref(&r.plan.service))
        .await?;
    Ok(open
        .into_iter()
        .filter(|i| match (&r.plan.environment, &i.environment) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .map(|i| i.id)
        .collect())
}

async fn newest_open(tx: &mut dyn StoreTx, r: &Rollout) -> Result<Option<i64>, StoreError> {
    Ok(open_incidents(tx, r).await?.into_iter().max())
}

/// Opens an incident for a rollout killed by something that has none (a
/// failed gate): a person resolves it.
async fn open_incident(
    tx: &mut dyn StoreTx,
    r: &Rollout,
    why: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let ids = tx
        .open_incidents(&[NewIncident {
            group: GroupKey {
                key: format!("rollout={}", r.id),
                service: Some(r.plan.service.clone()),
                environment: r.plan.environment.clone(),
            },
            title: format!("Rollout of {} killed: {why}", r.flag),
            severity: None,
            opened_at: now,
        }])
        .await?;
    ids.into_iter()
        .next()
        .ok_or_else(|| StoreError::Internal("opening an incident returned no id".into()))
}
