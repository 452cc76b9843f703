//! The engine's one way in: [`Remediation::on_events`], inside the
//! transaction that processed the triggering events. Guarded rollouts' kills
//! come first; then playbook matching, where a match becomes one candidate per
//! step, whose guardrails are decided and which are claimed as unique rows
//! (per playbook, step, target and incident), so a duplicate delivery, a
//! restart or a second engine claims nothing new.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use firebreak_domain::playbook::{Facts, Playbook, StepAction, Trigger, Verdict};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{NewAudit, StoreError, StoreTx};
use serde_json::json;

use crate::claims::Candidate;
use crate::facts::{self, DeployCache, DeployFacts};
use crate::playbooks::Loaded;
use crate::{ActionSpec, Remediation};

struct Decision<'a> {
    playbook: Arc<Playbook>,
    trigger: Trigger<'a>,
    incident: Option<i64>,
    deploys: DeployFacts,
}

impl Remediation {
    /// Everything fresh events call for: `triggers` (with the incident each
    /// belongs to) kill the guarded rollouts they fail, and are matched
    /// against `set`'s playbooks, whose steps are claimed. Timeline entries
    /// go to `entries`, written in the same transaction. Returns how many
    /// actions are ready for an executor ([`Remediation::wake`] after commit).
    pub async fn on_events(
        &self,
        tx: &mut dyn StoreTx,
        set: &Loaded,
        triggers: &[(Trigger<'_>, Option<i64>)],
        entries: &mut Vec<NewEntry>,
    ) -> Result<usize, StoreError> {
        if triggers.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        // Guarded rollouts first: a kill is the most urgent thing a batch can do.
        let mut ready = self.rollout_kills(tx, triggers, entries, now).await?;
        if set.playbooks.is_empty() {
            return Ok(ready);
        }
        let mut decisions: Vec<Decision<'_>> = Vec::new();
        // One decision per (playbook, incident) per batch: an alert storm in one
        // incident is one claim, not thousands of lookups.
        let mut decided: HashSet<(String, String)> = HashSet::new();
        let mut skipped: HashSet<(String, i64)> = HashSet::new();
        let mut deploys = DeployCache::default();
        for (trigger, incident) in triggers {
            let scope = scope(trigger, *incident);
            for pb in &set.playbooks {
                if decided.contains(&(pb.name().to_string(), scope.clone())) {
                    continue;
                }
                let mut verdict = pb.evaluate(trigger, &Facts::default(), now);
                let mut known = DeployFacts::default();
                // Matches are rare: only then look up the deploy the conditions
                // and the steps' values need.
                if verdict != Verdict::NoMatch {
                    if let Some(service) = trigger.service() {
                        let given = match trigger {
                            Trigger::Deploy(d) => Some(*d),
                            _ => None,
                        };
                        known = deploys
                            .facts(tx, service, trigger.environment(), trigger.at(), given, now)
                            .await?;
                    }
                    verdict = pb.evaluate(
                        trigger,
                        &Facts {
                            latest_deploy: known.suspect.as_ref(),
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
                            deploys: known,
                        });
                    }
                }
            }
        }
        if decisions.is_empty() {
            return Ok(ready);
        }
        let candidates: Vec<Candidate> = decisions
            .iter()
            .flat_map(|d| candidates(self, d, now))
            .collect();
        ready += self.claim(tx, &candidates, entries, now).await?.ready;
        Ok(ready)
    }
}

/// Where one match belongs: its incident, or the event itself.
fn scope(trigger: &Trigger<'_>, incident: Option<i64>) -> String {
    incident
        .map(|i| format!("incident:{i}"))
        .unwrap_or_else(|| format!("event:{}", trigger.id()))
}

/// One candidate per step of a matched playbook.
fn candidates(
    remediation: &Remediation,
    d: &Decision<'_>,
    now: chrono::DateTime<Utc>,
) -> Vec<Candidate> {
    let pb = &d.playbook;
    let service = d.trigger.service().unwrap_or("").to_string();
    let env = d.trigger.environment().map(str::to_string);
    let scope = scope(&d.trigger, d.incident);
    let announce = NewAudit {
        at: now,
        actor: "engine".into(),
        event: "matched".into(),
        action_id: None,
        incident_id: d.incident,
        playbook: Some(pb.name().to_string()),
        playbook_version: Some(pb.version.clone()),
        detail: json!({"trigger": d.trigger.describe(), "trigger_id": d.trigger.id(), "file": pb.file}),
    };
    pb.spec
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let mut vars = facts::base_vars(&service, env.as_deref(), d.incident, pb.name());
            trigger_vars(&mut vars, &d.trigger);
            facts::put_deploys(&mut vars, &d.deploys);
            let mut failure = None;
            let describe = match &step.action {
                StepAction::KillSwitch(k) => {
                    vars.insert("flag".into(), k.flag.clone());
                    step.action.describe()
                }
                StepAction::Rollback(r) => {
                    failure = facts::rollback_failure(&service, &d.deploys);
                    facts::describe_rollback(&service, &r.provider, &d.deploys)
                }
                other => other.describe(),
            };
            let target = remediation
                .providers()
                .target(&step.action, &service, env.as_deref());
            Candidate {
                playbook: pb.name().to_string(),
                playbook_version: pb.version.clone(),
                step_index: i32::try_from(index).unwrap_or(i32::MAX),
                spec: ActionSpec {
                    step: step.action.clone(),
                    vars,
                    describe,
                    four_eyes: step.four_eyes,
                },
                guard: pb.spec.guard.clone(),
                step_approval: step.require_approval,
                dedupe_key: format!("{}:{}:{}:{}", pb.name(), index, target, scope),
                target,
                incident: d.incident,
                trigger_id: d.trigger.id().to_string(),
                trigger: d.trigger.describe(),
                requested_by: "engine".into(),
                note: None,
                failure,
                force: false,
                group: format!("{}:{scope}", pb.name()),
                announce: Some(announce.clone()),
            }
        })
        .collect()
}

/// Placeholders from the trigger: its description and id, labels, annotations.
fn trigger_vars(v: &mut std::collections::BTreeMap<String, String>, trigger: &Trigger<'_>) {
    v.insert("trigger".into(), trigger.describe());
    v.insert("trigger.id".into(), trigger.id().to_string());
    v.insert("trigger.kind".into(), trigger.kind().to_string());
    for (k, val) in trigger.labels().iter() {
        v.insert(format!("labels.{k}"), val.clone());
    }
    if let Trigger::Alert(a) = trigger {
        v.insert("alertname".into(), a.alertname().to_string());
        for (k, val) in &a.annotations {
            v.insert(format!("annotations.{k}"), val.clone());
        }
    }
}
