//! Playbook matching and action claims, inside the transaction that processed
//! the triggering events. Claims are unique rows (playbook, step, target,
//! incident), so a duplicate delivery, a restart or a second engine claims
//! nothing new. Guardrails are decided here, under one advisory lock, so two
//! engines cannot both spend the last run of a budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use firebreak_actions::{escalation, ActionSpec};
use firebreak_domain::ids::lock_key;
use firebreak_domain::playbook::{last_good, Facts, Playbook, Step, StepAction, Trigger, Verdict};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_domain::DeployEvent;
use firebreak_store::{
    ActionRow, ActionStatus, NewAction, NewAudit, StoreError, StoreTx, SETTING_PAUSED,
};
use serde_json::json;

use crate::Engine;

/// How far back a rollback looks for the last good deploy.
const ROLLBACK_HISTORY_DAYS: i64 = 30;

/// Automation limits that apply to every playbook.
#[derive(Debug, Clone, Default)]
pub struct AutomationPolicy {
    /// Every playbook runs in dry-run: record, call nothing.
    pub dry_run: bool,
    /// At most this many actions across all playbooks per window; over it, held.
    pub max_actions: Option<firebreak_domain::playbook::Budget>,
    /// Who hears about held and failed actions.
    pub escalate: Option<firebreak_domain::playbook::NotifyStep>,
}

struct Decision<'a> {
    playbook: Arc<Playbook>,
    trigger: Trigger<'a>,
    incident: Option<i64>,
    latest: Option<DeployEvent>,
    /// The last good deploy before `latest`.
    good: Option<DeployEvent>,
}

impl Engine {
    /// Matches `triggers` (fresh events, with the incident each belongs to)
    /// against the playbooks and claims the actions they call for.
    pub(crate) async fn remediate(
        &self,
        tx: &mut dyn StoreTx,
        triggers: &[(Trigger<'_>, Option<i64>)],
        entries: &mut Vec<NewEntry>,
        ready: &mut usize,
    ) -> Result<(), StoreError> {
        let set = self.playbooks.current();
        if set.playbooks.is_empty() || triggers.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut decisions: Vec<Decision<'_>> = Vec::new();
        // One decision per (playbook, incident) per batch: an alert storm in one
        // incident is one claim, not thousands of lookups.
        let mut decided: HashSet<(String, String)> = HashSet::new();
        let mut skipped: HashSet<(String, i64)> = HashSet::new();
        let mut deploys: HashMap<(String, Option<String>), Vec<DeployEvent>> = HashMap::new();
        for (trigger, incident) in triggers {
            let scope = incident
                .map(|i| format!("incident:{i}"))
                .unwrap_or_else(|| format!("event:{}", trigger.id()));
            for pb in &set.playbooks {
                if decided.contains(&(pb.name().to_string(), scope.clone())) {
                    continue;
                }
                let mut verdict = pb.evaluate(trigger, &Facts::default(), now);
                let (mut latest, mut good) = (None, None);
                // Matches are rare: only then look up the deploy the conditions
                // and the steps' values need.
                if verdict != Verdict::NoMatch {
                    (latest, good) = deploy_facts(tx, trigger, &mut deploys, now).await?;
                    verdict = pb.evaluate(
                        trigger,
                        &Facts {
                            latest_deploy: latest.as_ref(),
                        },
                        now,
                    );
                }
                match verdict {
                    Verdict::NoMatch => {}
                    Verdict::Unmet(why) => {
                        if let Some(incident) = incident {
                            if skipped.insert((pb.name().to_string(), *incident)) {
                                entries.push(NewEntry {
                                    incident_id: *incident,
                                    at: now,
                                    kind: kind::PLAYBOOK_SKIPPED,
                                    source: format!("playbook:{}", pb.name()),
                                    summary: format!(
                                        "{}@{} matched {} but did not act: {why}",
                                        pb.name(),
                                        pb.version,
                                        trigger.describe()
                                    ),
                                    ref_id: format!("{}@{}", pb.name(), pb.version),
                                });
                            }
                        }
                    }
                    Verdict::Match => {
                        decided.insert((pb.name().to_string(), scope.clone()));
                        decisions.push(Decision {
                            playbook: pb.clone(),
                            trigger: *trigger,
                            incident: *incident,
                            latest,
                            good,
                        });
                    }
                }
            }
        }
        if decisions.is_empty() {
            return Ok(());
        }
        // One lock for every automation decision across engines: they are rare,
        // and budgets must be counted by one decider at a time.
        tx.lock_groups(&[lock_key("firebreak:automation")]).await?;
        let paused = tx.tx_setting(SETTING_PAUSED).await?.as_deref() == Some("true");
        let policy = &self.config.automation;
        let window = decisions
            .iter()
            .flat_map(|d| {
                let g = &d.playbook.spec.guard;
                [g.cooldown.map(|c| c.0), g.max_runs.map(|b| b.per.0)]
            })
            .chain([policy.max_actions.map(|b| b.per.0)])
            .flatten()
            .max()
            .unwrap_or_else(Duration::zero);
        let mut recent: Vec<ActionRow> = if window > Duration::zero() {
            tx.actions_created_since(now - window).await?
        } else {
            Vec::new()
        };
        let mut audit = Vec::new();
        for d in &decisions {
            let mut matched_recorded = false;
            for (index, step) in d.playbook.spec.steps.iter().enumerate() {
                let claim = self.claim(d, index, step, paused, &recent, now);
                let Some(row) = tx
                    .insert_actions(std::slice::from_ref(&claim.action))
                    .await?
                    .pop()
                else {
                    continue; // claimed before: a duplicate delivery or another engine
                };
                if !matched_recorded {
                    // Recorded once, with the first claim: a re-match of an incident
                    // whose actions are claimed already writes nothing.
                    matched_recorded = true;
                    audit.push(NewAudit {
                        at: now,
                        actor: "engine".into(),
                        event: "matched".into(),
                        action_id: None,
                        incident_id: d.incident,
                        playbook: Some(d.playbook.name().to_string()),
                        playbook_version: Some(d.playbook.version.clone()),
                        detail: json!({"trigger": d.trigger.describe(), "trigger_id": d.trigger.id(), "file": d.playbook.file}),
                    });
                }
                let outcome = match row.status {
                    ActionStatus::Pending => "requested",
                    other => other.as_str(),
                };
                self.metrics.action(outcome);
                if row.status == ActionStatus::Pending {
                    *ready += 1;
                }
                audit.push(NewAudit::of(
                    &row,
                    "engine",
                    outcome,
                    now,
                    json!({"step": claim.spec.describe, "reason": row.reason, "trigger": d.trigger.describe(), "vars": claim.spec.vars}),
                ));
                if let Some(incident) = row.incident_id {
                    let (k, text) = match row.status {
                        ActionStatus::Pending => (
                            kind::ACTION_REQUESTED,
                            format!("requested: {}", claim.spec.describe),
                        ),
                        ActionStatus::Held => (
                            kind::ACTION_HELD,
                            format!(
                                "held for a human: {} ({})",
                                claim.spec.describe,
                                row.reason.as_deref().unwrap_or("")
                            ),
                        ),
                        ActionStatus::Suppressed => (
                            kind::ACTION_SUPPRESSED,
                            format!(
                                "not repeated: {} ({})",
                                claim.spec.describe,
                                row.reason.as_deref().unwrap_or("")
                            ),
                        ),
                        ActionStatus::DryRun => (
                            kind::ACTION_DRY_RUN,
                            format!("dry run, would have: {}", claim.spec.describe),
                        ),
                        _ => (
                            kind::ACTION_FAILED,
                            format!(
                                "cannot: {} ({})",
                                claim.spec.describe,
                                row.reason.as_deref().unwrap_or("")
                            ),
                        ),
                    };
                    entries.push(NewEntry {
                        incident_id: incident,
                        at: now,
                        kind: k,
                        source: format!("playbook:{}", row.playbook),
                        summary: format!("{text} [{}@{}]", row.playbook, row.playbook_version),
                        ref_id: format!("action:{}:{}", row.id, row.status.as_str()),
                    });
                }
                if matches!(row.status, ActionStatus::Held | ActionStatus::Failed) {
                    if let Some(target) = &policy.escalate {
                        let message = format!(
                            "Firebreak {} action #{}{}: {} ({}). {}",
                            if row.status == ActionStatus::Held {
                                "held"
                            } else {
                                "could not run"
                            },
                            row.id,
                            row.incident_id
                                .map(|i| format!(" for incident #{i}"))
                                .unwrap_or_default(),
                            claim.spec.describe,
                            row.reason.as_deref().unwrap_or(""),
                            if row.status == ActionStatus::Held {
                                format!("Approve with POST /api/v1/actions/{}/approve or deny with …/deny.", row.id)
                            } else {
                                "A human needs to look.".into()
                            }
                        );
                        if !tx
                            .insert_actions(&[escalation(target, &row, &message, now)])
                            .await?
                            .is_empty()
                        {
                            *ready += 1;
                        }
                    } else {
                        tracing::warn!(action = row.id, reason = ?row.reason, "action held for a human; no escalation target configured");
                    }
                }
                recent.push(row);
            }
        }
        tx.insert_audit(&audit).await?;
        Ok(())
    }

    /// Builds the claim for one step and decides its guardrails.
    fn claim(
        &self,
        d: &Decision<'_>,
        index: usize,
        step: &Step,
        paused: bool,
        recent: &[ActionRow],
        now: DateTime<Utc>,
    ) -> Claim {
        let pb = &d.playbook;
        let service = d.trigger.service().unwrap_or("").to_string();
        let env = d.trigger.environment().map(str::to_string);
        let mut vars = base_vars(&d.trigger, d.incident, pb);
        let mut failure = None;
        if let Some(latest) = &d.latest {
            put_deploy(&mut vars, "suspect", latest);
        }
        if let Some(good) = &d.good {
            put_deploy(&mut vars, "target", good);
        }
        let (target, describe) = match &step.action {
            StepAction::KillSwitch(k) => {
                vars.insert("flag".into(), k.flag.clone());
                (
                    format!(
                        "flag:{}:{}:{}",
                        k.provider,
                        k.environment.as_deref().unwrap_or(""),
                        k.flag
                    ),
                    step.action.describe(),
                )
            }
            StepAction::Rollback(r) => {
                let target = format!("deploys:{}:{}", service, env.as_deref().unwrap_or(""));
                match &d.latest {
                    None => {
                        failure = Some(format!(
                            "no deploy of {service} is known, so there is nothing to roll back"
                        ));
                        (target, format!("roll back {service} ({})", r.provider))
                    }
                    Some(suspect) => match &d.good {
                        Some(good) => (
                            target,
                            format!(
                                "roll back {service} from {} to {} ({})",
                                suspect.version, good.version, r.provider
                            ),
                        ),
                        None => {
                            failure = Some(format!(
                                "no successful deploy of {service} before {} in the last {ROLLBACK_HISTORY_DAYS} days to roll back to",
                                suspect.version
                            ));
                            (
                                target,
                                format!(
                                    "roll back {service} from {} ({})",
                                    suspect.version, r.provider
                                ),
                            )
                        }
                    },
                }
            }
            // The target of a notification is where it goes: a cooldown keeps a
            // channel from being flooded across incidents.
            StepAction::Notify(n) => (
                format!(
                    "notify:{}:{}",
                    n.slack.as_deref().unwrap_or(""),
                    n.webhook.as_deref().unwrap_or("")
                ),
                match (&n.slack, &n.webhook) {
                    (Some(c), _) => format!("notify Slack {c}"),
                    (None, Some(w)) => format!("notify {w}"),
                    _ => "notify".into(),
                },
            ),
            StepAction::Http(h) => (format!("http:{}", h.url), format!("{} {}", h.method, h.url)),
        };
        let dedupe_key = format!(
            "{}:{}:{}:{}",
            pb.name(),
            index,
            target,
            d.incident
                .map(|i| format!("incident:{i}"))
                .unwrap_or_else(|| format!("event:{}", d.trigger.id()))
        );
        let g = &pb.spec.guard;
        let runs = |since: DateTime<Utc>, same_playbook: bool| {
            recent
                .iter()
                .filter(|r| {
                    r.status.counts_as_run()
                        && !r.dedupe_key.starts_with("escalate:")
                        && r.created_at >= since
                        && (!same_playbook || r.playbook == pb.name())
                })
                .count()
        };
        let cooled = g.cooldown.and_then(|c| {
            recent.iter().find(|r| {
                r.playbook == pb.name()
                    && r.target == target
                    && r.status.counts_as_run()
                    && r.created_at >= now - c.0
            })
        });
        let (status, reason) = if let Some(why) = failure {
            (ActionStatus::Failed, Some(why))
        } else if let (Some(prev), Some(c)) = (cooled, g.cooldown) {
            (
                ActionStatus::Suppressed,
                Some(format!(
                    "cooldown {c}: action #{} ran for this target at {}",
                    prev.id,
                    prev.created_at.format("%H:%M:%S UTC")
                )),
            )
        } else if g.dry_run || self.config.automation.dry_run {
            (
                ActionStatus::DryRun,
                Some(if g.dry_run {
                    "playbook is in dry-run".to_string()
                } else {
                    "automation is in dry-run".to_string()
                }),
            )
        } else if paused {
            (ActionStatus::Held, Some("automation is paused".to_string()))
        } else if let Some(b) = g
            .max_runs
            .filter(|b| runs(now - b.per.0, true) >= b.count as usize)
        {
            (
                ActionStatus::Held,
                Some(format!("over budget: max_runs {} per {}", b.count, b.per)),
            )
        } else if let Some(b) = self
            .config
            .automation
            .max_actions
            .filter(|b| runs(now - b.per.0, false) >= b.count as usize)
        {
            (
                ActionStatus::Held,
                Some(format!(
                    "over the global budget: {} actions per {}",
                    b.count, b.per
                )),
            )
        } else if g.require_approval || step.require_approval {
            (ActionStatus::Held, Some("approval required".to_string()))
        } else {
            (ActionStatus::Pending, None)
        };
        let spec = ActionSpec {
            step: step.action.clone(),
            vars,
            describe,
        };
        Claim {
            action: NewAction {
                dedupe_key,
                playbook: pb.name().to_string(),
                playbook_version: pb.version.clone(),
                step_index: i32::try_from(index).unwrap_or(i32::MAX),
                kind: step.action.kind().to_string(),
                target,
                incident_id: d.incident,
                trigger_id: d.trigger.id().to_string(),
                status,
                reason,
                spec: serde_json::to_value(&spec).unwrap_or_default(),
                at: now,
            },
            spec,
        }
    }
}

struct Claim {
    action: NewAction,
    spec: ActionSpec,
}

/// The latest deploy of the trigger's service (and environment) at or before
/// it (the suspect), and the last good deploy before that (what a rollback
/// goes back to). Deploys are read once per (service, environment) per batch.
async fn deploy_facts(
    tx: &mut dyn StoreTx,
    trigger: &Trigger<'_>,
    cache: &mut HashMap<(String, Option<String>), Vec<DeployEvent>>,
    now: DateTime<Utc>,
) -> Result<(Option<DeployEvent>, Option<DeployEvent>), StoreError> {
    let Some(service) = trigger.service() else {
        return Ok((None, None));
    };
    let key = (
        service.to_string(),
        trigger.environment().map(str::to_string),
    );
    if !cache.contains_key(&key) {
        let from = now.min(trigger.at()) - Duration::days(ROLLBACK_HISTORY_DAYS);
        let found = tx
            .deploys_between(
                service,
                trigger.environment(),
                from,
                now + Duration::days(1),
            )
            .await?;
        cache.insert(key.clone(), found);
    }
    let history = cache.get(&key).map(Vec::as_slice).unwrap_or_default();
    let at = trigger.at();
    let latest = match trigger {
        Trigger::Deploy(d) => Some((*d).clone()),
        _ => history
            .iter()
            .filter(|d| d.started_at <= at)
            .max_by_key(|d| d.started_at)
            .cloned(),
    };
    let good = latest.as_ref().and_then(|l| last_good(l, history)).cloned();
    Ok((latest, good))
}

/// Placeholder values every step can use.
fn base_vars(
    trigger: &Trigger<'_>,
    incident: Option<i64>,
    pb: &Playbook,
) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert(
        "service".into(),
        trigger.service().unwrap_or("").to_string(),
    );
    v.insert(
        "environment".into(),
        trigger.environment().unwrap_or("").to_string(),
    );
    v.insert(
        "incident.id".into(),
        incident.map(|i| i.to_string()).unwrap_or_default(),
    );
    v.insert("trigger".into(), trigger.describe());
    v.insert("trigger.id".into(), trigger.id().to_string());
    v.insert("trigger.kind".into(), trigger.kind().to_string());
    v.insert("playbook".into(), pb.name().to_string());
    for (k, val) in trigger.labels().iter() {
        v.insert(format!("labels.{k}"), val.clone());
    }
    if let Trigger::Alert(a) = trigger {
        v.insert("alertname".into(), a.alertname().to_string());
        for (k, val) in &a.annotations {
            v.insert(format!("annotations.{k}"), val.clone());
        }
    }
    v
}

fn put_deploy(vars: &mut BTreeMap<String, String>, prefix: &str, d: &DeployEvent) {
    vars.insert(format!("{prefix}.id"), d.id.clone());
    vars.insert(format!("{prefix}.version"), d.version.clone());
    vars.insert(
        format!("{prefix}.commit"),
        d.commit.clone().unwrap_or_default(),
    );
    vars.insert(format!("{prefix}.started_at"), d.started_at.to_rfc3339());
}
