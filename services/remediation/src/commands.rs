//! The commands people (and tools) give remediation, whatever door they come
//! in by: request an action, approve, deny, revert, pause and resume
//! automation, edit a built-in flag. Each names who gives it; each is
//! audited; a request meets the same guardrails as a playbook's step.

use std::sync::Arc;

use chrono::Utc;
use firebreak_domain::access::Identity;
use firebreak_domain::action::{ActionRow, ActionStatus, MANUAL};
use firebreak_domain::playbook::{FlagState, KillSwitchStep, NotifyStep, RollbackStep, StepAction};
use firebreak_domain::timeline::kind;
use firebreak_store::{
    ActionChange, FlagRow, NewAudit, OpenIncident, StoreError, StoreTx, SETTING_PAUSED,
};
use serde_json::{json, Value};

use crate::claims::Candidate;
use crate::facts::{self, DeployCache};
use crate::{entry, provenance, ActionSpec, Remediation};

/// What a person asks remediation to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Set a kill switch (off, by default) in a provider (`builtin` by default).
    KillSwitch {
        flag: String,
        provider: Option<String>,
        environment: Option<String>,
        state: FlagState,
    },
    /// Roll a service back to its last good deploy.
    Rollback {
        service: String,
        environment: Option<String>,
        provider: Option<String>,
    },
    /// Post a message to a Slack channel or a configured notifier.
    Notify {
        slack: Option<String>,
        webhook: Option<String>,
        message: String,
    },
}

/// How a request is made.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Attach to this incident (else to the open incident it belongs to, if any).
    pub incident: Option<i64>,
    /// Why, in the requester's words: recorded with the action.
    pub reason: Option<String>,
    /// Run even though automation is paused (recorded as forced).
    pub force: bool,
}

/// An edit of one built-in flag; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct FlagEdit {
    pub enabled: Option<bool>,
    pub description: Option<String>,
    pub owner: Option<String>,
    /// A flagd flag definition (`state`, `variants`, `defaultVariant`, `targeting`).
    pub definition: Option<Value>,
}

/// Why a command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// The identity may not do this (a rule such as four-eyes says why).
    #[error("{0}")]
    Forbidden(String),
    /// The action is not in a state this command applies to, or something
    /// else holds its target; the message names what and who.
    #[error("{0}")]
    Conflict(String),
    /// The provider refused or failed.
    #[error("the provider refused: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn bad(field: &str, message: impl Into<String>) -> CommandError {
    CommandError::BadRequest {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// The refusal while `held` waits for approval: it names the action and how
/// to move on.
fn held_conflict(held: &ActionRow) -> CommandError {
    CommandError::Conflict(format!(
        "action #{} ({}) waits for approval, requested by {}: approve or deny it before changing its target",
        held.id, held.spec.describe, held.requested_by
    ))
}

/// Refuses a direct change of built-in flag `key` while an action on it is
/// held for approval (a PUT, an import or the page's switch must not do
/// what the four-eyes rule holds back).
async fn refuse_if_held(tx: &mut dyn StoreTx, key: &str) -> Result<(), CommandError> {
    let target = firebreak_domain::action::target::kill_switch("builtin", None, key);
    match tx
        .open_actions_on(&target)
        .await?
        .iter()
        .find(|a| a.status == ActionStatus::Held)
    {
        Some(held) => Err(held_conflict(held)),
        None => Ok(()),
    }
}

/// Flag keys travel unencoded in OFREP paths: keep them to safe characters.
pub fn check_flag_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > 200
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "{key:?} is not a flag key: use 1-200 letters, digits, '.', '-' or '_'"
        ));
    }
    if key == "." || key == ".." {
        return Err(format!(
            "{key:?} is not a flag key: in a URL path it would mean this or the parent resource"
        ));
    }
    Ok(())
}

fn check_name(field: &str, value: &str) -> Result<(), CommandError> {
    if value.trim().is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
        return Err(bad(
            field,
            "must be a non-empty name of at most 200 characters",
        ));
    }
    Ok(())
}

fn newest(incidents: Vec<OpenIncident>, environment: Option<&str>) -> Option<i64> {
    incidents
        .into_iter()
        .filter(|i| match (environment, i.environment.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .map(|i| i.id)
        .max()
}

impl Remediation {
    /// A person's request: decided by the same guardrails as a playbook step
    /// (the `[automation.manual]` guard, global dry-run, pause unless
    /// `force`, budgets), claimed, attached to the named incident or the
    /// open one it belongs to, and answered with the status it was given.
    pub async fn request(
        &self,
        identity: &Identity,
        request: Request,
        opts: RequestOptions,
    ) -> Result<ActionRow, CommandError> {
        let who = identity.id.as_str();
        if let Some(reason) = &opts.reason {
            if reason.len() > 2000 {
                return Err(bad("reason", "must be at most 2000 characters"));
            }
        }
        let now = Utc::now();
        // What the incident says, when one is named.
        let named = match opts.incident {
            None => None,
            Some(id) => match self.store.incident(id).await {
                Ok(d) => Some(d.incident),
                Err(StoreError::NotFound) => {
                    return Err(CommandError::NotFound(format!("no incident {id}")))
                }
                Err(e) => return Err(e.into()),
            },
        };
        let mut tx = self.store.begin().await?;
        let (step, service, environment, incident, failure, describe, mut vars) = match request {
            Request::KillSwitch {
                flag,
                provider,
                environment,
                state,
            } => {
                check_flag_key(&flag).map_err(|m| bad("flag", m))?;
                let provider = provider.unwrap_or_else(|| "builtin".into());
                if !self.providers.kill_switches.contains_key(&provider) {
                    return Err(bad(
                        "provider",
                        format!(
                            "there is no kill switch provider {provider:?}: use builtin or one configured under [kill_switch.<name>] ({})",
                            self.providers.kill_switches.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if let Some(env) = &environment {
                    check_name("environment", env)?;
                }
                let incident = match &named {
                    Some(i) => Some(i.id),
                    None => newest(tx.open_incidents_with_flag(&flag).await?, None),
                };
                let step = StepAction::KillSwitch(KillSwitchStep {
                    flag: flag.clone(),
                    provider,
                    environment,
                    state,
                });
                let service = named
                    .as_ref()
                    .and_then(|i| i.service.clone())
                    .unwrap_or_default();
                let env = named.as_ref().and_then(|i| i.environment.clone());
                let mut vars = facts::base_vars(&service, env.as_deref(), incident, MANUAL);
                vars.insert("flag".into(), flag);
                let describe = step.describe();
                (step, service, None, incident, None, describe, vars)
            }
            Request::Rollback {
                service,
                environment,
                provider,
            } => {
                check_name("service", &service)?;
                if let Some(env) = &environment {
                    check_name("environment", env)?;
                }
                let provider = self
                    .providers
                    .rollback_provider(provider.as_deref())
                    .map_err(|m| bad("provider", m))?;
                if let Some(i) = &named {
                    if i.service.as_deref().is_some_and(|s| s != service) {
                        return Err(bad(
                            "incident",
                            format!(
                                "incident {} is about {}, not {service}",
                                i.id,
                                i.service.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                }
                let mut environment =
                    environment.or_else(|| named.as_ref().and_then(|i| i.environment.clone()));
                let mut cache = DeployCache::default();
                if environment.is_none() {
                    // Which environment: the only one the service deploys to.
                    let history = cache.history(tx.as_mut(), &service, None, now, now).await?;
                    let mut envs: Vec<&str> = history
                        .iter()
                        .filter_map(|d| d.environment.as_deref())
                        .collect();
                    envs.sort_unstable();
                    envs.dedup();
                    match envs.as_slice() {
                        [] => {}
                        [only] => environment = Some((*only).to_string()),
                        many => {
                            return Err(bad(
                                "environment",
                                format!(
                                "{service} has deploys in {}: name the environment to roll back",
                                many.join(", ")
                            ),
                            ))
                        }
                    }
                }
                let facts = cache
                    .facts(
                        tx.as_mut(),
                        &service,
                        environment.as_deref(),
                        now,
                        None,
                        now,
                    )
                    .await?;
                let incident = match &named {
                    Some(i) => Some(i.id),
                    None => newest(
                        tx.open_incidents_for(std::slice::from_ref(&service))
                            .await?,
                        environment.as_deref(),
                    ),
                };
                let failure = facts::rollback_failure(&service, &facts);
                let describe = facts::describe_rollback(&service, &provider, &facts);
                let mut vars = facts::base_vars(&service, environment.as_deref(), incident, MANUAL);
                facts::put_deploys(&mut vars, &facts);
                let step = StepAction::Rollback(RollbackStep {
                    provider,
                    to: "last_good".into(),
                });
                (
                    step,
                    service,
                    environment,
                    incident,
                    failure,
                    describe,
                    vars,
                )
            }
            Request::Notify {
                slack,
                webhook,
                message,
            } => {
                if message.trim().is_empty() || message.len() > 4000 {
                    return Err(bad("message", "must be 1-4000 characters"));
                }
                let step = StepAction::Notify(NotifyStep {
                    slack,
                    webhook,
                    message: None,
                });
                if let Some(why) = self.providers.missing(&step) {
                    return Err(bad("webhook", why));
                }
                let StepAction::Notify(n) = &step else {
                    unreachable!("built as a notification above")
                };
                match (&n.slack, &n.webhook) {
                    (None, None) => return Err(bad(
                        "slack",
                        "give a Slack channel (\"slack\") or a configured notifier (\"webhook\")",
                    )),
                    (Some(_), _) if self.providers.slack.bot_token.is_none() => return Err(bad(
                        "slack",
                        "Slack is not configured: set slack.bot_token (FIREBREAK_SLACK_BOT_TOKEN)",
                    )),
                    _ => {}
                }
                let incident = named.as_ref().map(|i| i.id);
                let service = named
                    .as_ref()
                    .and_then(|i| i.service.clone())
                    .unwrap_or_default();
                let mut vars = facts::base_vars(&service, None, incident, MANUAL);
                vars.insert("message".into(), message);
                let describe = step.describe();
                (step, service, None, incident, None, describe, vars)
            }
        };
        vars.insert("requested_by".into(), who.to_string());
        let target = self
            .providers
            .target(&step, &service, environment.as_deref());
        let open = tx.open_actions_on(&target).await?;
        // The same thing asked twice (a double click, two people at once)
        // runs once: the second request is told about the first.
        if let Some(same) = open.iter().find(|a| a.spec.step == step) {
            return Err(CommandError::Conflict(format!(
                "action #{} ({}) already does this: {} [{}]",
                same.id,
                same.status.as_str(),
                same.spec.describe,
                provenance(same)
            )));
        }
        // While another action on the target waits for approval, only
        // approving or denying it changes the target (four-eyes on every path).
        if let Some(held) = open.iter().find(|a| a.status == ActionStatus::Held) {
            return Err(held_conflict(held));
        }
        // A change freeze that holds this kind: a person acts during it only
        // on purpose (force, audited as forced).
        if !opts.force {
            if let Some(f) =
                self.config
                    .policy
                    .freeze_for(step.kind(), &service, environment.as_deref(), now)
            {
                return Err(CommandError::Conflict(format!(
                    "change freeze {:?} is in force and holds {}s for {}: ask again with force to act during it (it is audited as forced)",
                    f.name,
                    step.kind().replace('_', " "),
                    if service.is_empty() { "every service" } else { service.as_str() }
                )));
            }
        }
        let candidate = Candidate {
            playbook: MANUAL.into(),
            playbook_version: "-".into(),
            step_index: 0,
            spec: ActionSpec {
                step,
                vars,
                describe,
                four_eyes: false,
            },
            guard: self.config.policy.manual.clone(),
            step_approval: false,
            target: target.clone(),
            incident,
            trigger_id: format!("request:{who}"),
            trigger: format!("request by {who}"),
            dedupe_key: format!("manual:{who}:{target}:{}", now.timestamp_micros()),
            requested_by: who.to_string(),
            note: opts.reason.clone(),
            failure,
            force: opts.force,
            group: String::new(),
            announce: None,
        };
        let mut entries = Vec::new();
        let claimed = self
            .claim(
                tx.as_mut(),
                std::slice::from_ref(&candidate),
                &mut entries,
                now,
            )
            .await?;
        tx.insert_timeline(&entries).await?;
        let row = claimed
            .rows
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .ok_or_else(|| CommandError::Conflict("the same request is already recorded".into()))?;
        tx.commit().await?;
        if claimed.ready > 0 {
            self.wake();
        }
        tracing::info!(
            action = row.id,
            by = who,
            status = row.status.as_str(),
            "{}",
            row.spec.describe
        );
        Ok(row)
    }

    /// Approves (held -> pending) or denies (held -> denied) an action, once:
    /// deciding twice is a conflict naming who decided.
    pub async fn decide(
        &self,
        identity: &Identity,
        id: i64,
        approve: bool,
        comment: Option<&str>,
        force: bool,
    ) -> Result<ActionRow, CommandError> {
        let who = identity.id.as_str();
        let current = self.action(id).await?;
        let policy = &self.config.policy;
        if current.status == ActionStatus::Held {
            let expires = policy.approval_expires(current.updated_at);
            if expires <= Utc::now() {
                // Past its time: it expires now (the sweep would shortly).
                self.expire(&current).await?;
                return Err(expired(&current, expires));
            }
        }
        if current.status == ActionStatus::Expired {
            // The row last changed when it expired.
            return Err(expired(&current, current.updated_at));
        }
        if approve && current.status == ActionStatus::Held && !force {
            if let Some(incident) = current.incident_id {
                if let Ok(i) = self.store.incident_overview(incident).await {
                    if let Some(at) = i
                        .incident
                        .resolved_at
                        .filter(|_| i.incident.status == "resolved")
                    {
                        return Err(CommandError::Conflict(format!(
                            "incident #{incident} was resolved at {}: action #{id} ({}) would act on a world that has moved on; approve with force to run it anyway (on the incident page, tick \"Run it anyway\"; in the API, {{\"force\": true}})",
                            at.format("%Y-%m-%d %H:%M UTC"),
                            current.spec.describe
                        )));
                    }
                }
            }
        }
        if approve
            && current.status == ActionStatus::Held
            && (policy.four_eyes || current.spec.four_eyes)
        {
            let rule = if current.spec.four_eyes {
                "four-eyes (this playbook step)"
            } else {
                "four-eyes (automation.four_eyes)"
            };
            if current.requested_by == who {
                return Err(CommandError::Forbidden(format!(
                    "{rule}: action #{id} was requested by {who}; someone else must approve it"
                )));
            }
            let role = identity.effective_role();
            if role < policy.four_eyes_min_role {
                return Err(CommandError::Forbidden(format!(
                    "{rule}: approving needs the {} role or higher; {who} acts as {role}",
                    policy.four_eyes_min_role
                )));
            }
        }
        let now = Utc::now();
        let (to, event, k) = if approve {
            (ActionStatus::Pending, "approved", kind::ACTION_APPROVED)
        } else {
            (ActionStatus::Denied, "denied", kind::ACTION_DENIED)
        };
        let audit = [NewAudit::of(
            &current,
            who,
            event,
            now,
            json!({"comment": comment, "was": current.reason, "forced": force}),
        )];
        let timeline = entry(
            &current,
            k,
            now,
            format!(
                "{event} by {who}: {} [{}]",
                current.spec.describe,
                provenance(&current)
            ),
            event,
        );
        let change = ActionChange {
            decided_by: Some(who.to_string()),
            not_before: Some(now),
            ..ActionChange::to(to, now)
        };
        match self
            .store
            .transition_action(id, &[ActionStatus::Held], &change, &audit, &timeline)
            .await?
        {
            Some(row) => {
                if approve {
                    self.wake();
                }
                self.metrics
                    .action(if approve { "approved" } else { "denied" });
                Ok(row)
            }
            None => {
                let now_row = self.store.action(id).await?;
                Err(CommandError::Conflict(format!(
                    "action {id} is {}{}; only a held action can be approved or denied",
                    now_row.status.as_str(),
                    now_row
                        .decided_by
                        .map(|b| format!(" (decided by {b})"))
                        .unwrap_or_default()
                )))
            }
        }
    }

    /// Expires a held action (held longer than `automation.approval_ttl`):
    /// never executed, audited, on the incident's timeline, escalated.
    /// `false` when it was no longer held (decided or expired meanwhile).
    pub async fn expire(&self, action: &ActionRow) -> Result<bool, StoreError> {
        let now = Utc::now();
        let ttl = self.config.policy.approval_ttl;
        let audit = [NewAudit::of(
            action,
            "engine",
            "expired",
            now,
            json!({"held_since": action.updated_at, "approval_ttl_s": ttl.num_seconds()}),
        )];
        let summary = format!(
            "expired: {} was held {} without a decision (automation.approval_ttl); never executed [{}]",
            action.spec.describe,
            firebreak_domain::duration::Dur(ttl),
            provenance(action)
        );
        let timeline = entry(action, kind::ACTION_EXPIRED, now, summary, "expired");
        let change = ActionChange {
            reason: Some(format!(
                "expired: not approved within {} (was: {})",
                firebreak_domain::duration::Dur(ttl),
                action.reason.as_deref().unwrap_or("held")
            )),
            ..ActionChange::to(ActionStatus::Expired, now)
        };
        let Some(row) = self
            .store
            .transition_action(action.id, &[ActionStatus::Held], &change, &audit, &timeline)
            .await?
        else {
            return Ok(false);
        };
        self.metrics.action("expired");
        if !row.is_escalation() {
            self.escalate(
                &row,
                &format!(
                    "Firebreak expired held action #{}: {}. It was not approved within {} and will not run; ask again if it is still needed.",
                    row.id,
                    row.spec.describe,
                    firebreak_domain::duration::Dur(ttl)
                ),
            )
            .await;
        }
        Ok(true)
    }

    /// Expires every held action past `automation.approval_ttl`; returns
    /// how many this call expired (another process may expire some first).
    pub async fn expire_held(&self, now: chrono::DateTime<Utc>) -> Result<usize, StoreError> {
        let held = self
            .store
            .list_actions(&firebreak_store::ActionFilter {
                status: Some(ActionStatus::Held),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let mut expired = 0;
        for a in held
            .iter()
            .filter(|a| self.config.policy.approval_expires(a.updated_at) <= now)
        {
            if self.expire(a).await? {
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn action(&self, id: i64) -> Result<ActionRow, CommandError> {
        self.store.action(id).await.map_err(|e| match e {
            StoreError::NotFound => CommandError::NotFound(format!("no action {id}")),
            e => e.into(),
        })
    }

    /// Restores a kill switch action's previous state. The action moves
    /// succeeded -> reverting under a lease (holding its target like any
    /// running action) -> reverted. The work runs in its own task: a request
    /// that goes away does not stop it, and a process that dies mid-way
    /// leaves a lease that expires and an executor that finishes the revert.
    pub async fn revert(
        self: &Arc<Self>,
        identity: &Identity,
        id: i64,
        force: bool,
    ) -> Result<ActionRow, CommandError> {
        let who = identity.id.as_str();
        let action = self.action(id).await?;
        let StepAction::KillSwitch(_) = &action.spec.step else {
            return Err(CommandError::Conflict(format!(
                "action {id} is a {}; only kill switch actions can be reverted",
                action.kind
            )));
        };
        if action.previous_enabled().is_none() {
            return Err(CommandError::Conflict(format!(
                "action {id} has no recorded previous state to restore (status {}); set the flag by hand if you know it",
                action.status.as_str()
            )));
        }
        if self.config.policy.dry_run {
            return Err(CommandError::Conflict(
                "automation is in dry-run (automation.dry_run): nothing is called, so nothing is reverted; turn dry-run off first".into(),
            ));
        }
        let paused = self.store.setting(SETTING_PAUSED).await?.as_deref() == Some("true");
        if paused && !force {
            return Err(CommandError::Conflict(
                "automation is paused: send {\"force\": true} to revert anyway (recorded as forced)"
                    .into(),
            ));
        }
        match action.status {
            ActionStatus::Succeeded => {}
            ActionStatus::Reverting => {
                return Err(CommandError::Conflict(format!(
                    "action {id} is being reverted; an interrupted revert is finished by the executor once its lease expires"
                )))
            }
            other => {
                return Err(CommandError::Conflict(format!(
                    "action {id} is {}; only a succeeded action can be reverted",
                    other.as_str()
                )))
            }
        }
        // Reverting restores the state before this action; if something
        // changed the target since, that change would be undone unseen.
        let changed = self.changed_since(&action).await?;
        if let (Some(what), false) = (&changed, force) {
            return Err(CommandError::Conflict(format!(
                "the target of action {id} was changed since by {what}: reverting would undo that too; revert that first, or send {{\"force\": true}} to restore the state before action {id} anyway"
            )));
        }
        let now = Utc::now();
        let audit = [NewAudit::of(
            &action,
            who,
            "revert_requested",
            now,
            json!({"forced_past_pause": paused && force, "forced_past_change": changed}),
        )];
        let change = ActionChange {
            lease: Some((now + self.lease_delta(), self.owner.clone())),
            ..ActionChange::to(ActionStatus::Reverting, now)
        };
        let claimed = self
            .store
            .transition_action(id, &[ActionStatus::Succeeded], &change, &audit, &[])
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => CommandError::Conflict(
                    "another action on the same target is running; try again in a moment".into(),
                ),
                other => other.into(),
            })?;
        let Some(action) = claimed else {
            let now_row = self.store.action(id).await?;
            return Err(CommandError::Conflict(format!(
                "action {id} is {}; only a succeeded action can be reverted",
                now_row.status.as_str()
            )));
        };
        let this = self.clone();
        let who = who.to_string();
        tokio::spawn(async move { this.finish_revert(action, &who).await })
            .await
            .map_err(|e| CommandError::Store(StoreError::Internal(format!("revert task: {e}"))))?
    }

    /// What changed a succeeded kill switch's target after it acted, in
    /// words: a later action that acted on it (and was not undone), or, on
    /// a built-in flag, whoever wrote the flag last if not this action.
    async fn changed_since(&self, action: &ActionRow) -> Result<Option<String>, StoreError> {
        let mut tx = self.store.begin().await?;
        let later = tx
            .acting_actions_on(&action.target, 50)
            .await?
            .into_iter()
            .filter(|a| a.id > action.id)
            .find(|a| {
                matches!(
                    a.status,
                    ActionStatus::Running | ActionStatus::Succeeded | ActionStatus::Reverting
                )
            });
        if let Some(a) = later {
            return Ok(Some(format!(
                "action #{} ({}, {})",
                a.id,
                a.spec.describe,
                a.status.as_str()
            )));
        }
        let StepAction::KillSwitch(k) = &action.spec.step else {
            return Ok(None);
        };
        if k.provider != "builtin" {
            return Ok(None);
        }
        let flag = tx.flag_for_update(&k.flag).await?;
        Ok(flag
            .filter(|f| f.updated_by != format!("action:{}", action.id))
            .map(|f| {
                format!(
                    "{} at {}",
                    f.updated_by,
                    f.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
                )
            }))
    }

    /// Pauses or resumes automation for every process; audited.
    pub async fn set_paused(
        &self,
        identity: &Identity,
        paused: bool,
        comment: Option<&str>,
    ) -> Result<(), CommandError> {
        let who = identity.id.as_str();
        let audit = NewAudit::by(
            who,
            if paused {
                "automation_paused"
            } else {
                "automation_resumed"
            },
            json!({"comment": comment}),
        );
        self.store
            .set_setting(
                SETTING_PAUSED,
                if paused { "true" } else { "false" },
                &audit,
            )
            .await?;
        tracing::warn!(by = %who, paused, "automation pause changed");
        Ok(())
    }

    pub async fn paused(&self) -> Result<bool, CommandError> {
        Ok(self.store.setting(SETTING_PAUSED).await?.as_deref() == Some("true"))
    }

    /// Creates or replaces flags from a flagd flag file
    /// (`{"flags": {"<key>": {state, variants, defaultVariant, targeting}}}`),
    /// all or nothing: every key and definition is checked first. Returns
    /// the keys written and warnings: what flagd loads but will answer
    /// PARSE_ERROR for (an unknown operation), naming where.
    pub async fn import_flags(
        &self,
        identity: &Identity,
        file: &Value,
    ) -> Result<(Vec<String>, Vec<String>), CommandError> {
        use firebreak_domain::flagd::FlagDefinition;
        const MAX_FLAGS: usize = 1000;
        let flags = file
            .get("flags")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(
                    "flags",
                    "a flagd flag file is {\"flags\": {\"<key>\": {…}}}",
                )
            })?;
        if flags.is_empty() || flags.len() > MAX_FLAGS {
            return Err(bad("flags", format!("give 1 to {MAX_FLAGS} flags")));
        }
        // Shared evaluators (`$evaluators`), referred to by `{"$ref": name}`,
        // are resolved into each flag as flagd does when it loads a file.
        let evaluators = match file.get("$evaluators") {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(bad("$evaluators", "is an object of named JSON Logic rules")),
        };
        // The flag set's metadata, served with each flag's own (the flag's
        // wins where both name a key), as flagd merges them.
        let set_metadata = match file.get("metadata") {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(bad("metadata", "is an object of names to values")),
        };
        let mut parsed = Vec::with_capacity(flags.len());
        let mut warnings = Vec::new();
        for (key, raw) in flags {
            let field = format!("flags.{key}");
            check_flag_key(key).map_err(|m| bad(&field, m))?;
            let mut raw = raw.clone();
            if let Some(targeting) = raw.get_mut("targeting") {
                firebreak_domain::flagd::resolve_refs(targeting, &evaluators)
                    .map_err(|m| bad(&format!("{field}.targeting"), m))?;
            }
            let mut definition: FlagDefinition =
                serde_json::from_value(raw).map_err(|e| bad(&field, e.to_string()))?;
            definition.validate().map_err(|m| bad(&field, m))?;
            for (k, v) in &set_metadata {
                definition
                    .metadata
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
            warnings.extend(
                definition
                    .warnings()
                    .into_iter()
                    .map(|w| format!("{field}.{w}")),
            );
            parsed.push((key.clone(), definition));
        }
        let who = identity.id.as_str();
        {
            let mut tx = self.store.begin().await?;
            for (key, _) in &parsed {
                refuse_if_held(tx.as_mut(), key).await?;
            }
            drop(tx);
        }
        // An import replaces definitions: a flag whose targeting a running
        // rollout owns is refused, as a PUT of its definition is.
        for (key, _) in &parsed {
            self.refuse_if_rollout_owns(key).await?;
        }
        let keys: Vec<String> = parsed.iter().map(|(k, _)| k.clone()).collect();
        let audit = NewAudit::by(who, "flags_imported", json!({"flags": keys}));
        self.store.import_flags(&parsed, who, &audit).await?;
        Ok((keys, warnings))
    }

    /// Edits (or creates) one built-in flag directly — an edit, not an
    /// action: use [`Remediation::request`] for a guarded kill switch — its
    /// kill switch state, its description, owner and flagd definition, any
    /// subset. Audited as `flag_set` with what it changed. A definition is
    /// checked as an import is; while a rollout is active its steps own the
    /// targeting, so a new definition is refused until it is aborted or done.
    /// Returns the flag before (none: created) and after.
    pub async fn edit_flag(
        &self,
        identity: &Identity,
        key: &str,
        edit: FlagEdit,
    ) -> Result<(Option<FlagRow>, FlagRow), CommandError> {
        use firebreak_domain::flagd::{FlagDefinition, FlagState as DefState};
        let who = identity.id.as_str();
        check_flag_key(key).map_err(|m| bad("key", m))?;
        if edit.description.as_ref().is_some_and(|d| d.len() > 2000) {
            return Err(bad("description", "must be at most 2000 characters"));
        }
        if let Some(o) = &edit.owner {
            check_name("owner", o)?;
        }
        let definition = match &edit.definition {
            None => None,
            Some(raw) => {
                let d: FlagDefinition = serde_json::from_value(raw.clone())
                    .map_err(|e| bad("definition", e.to_string()))?;
                d.validate().map_err(|m| bad("definition", m))?;
                Some(d)
            }
        };
        if edit.enabled.is_none()
            && edit.description.is_none()
            && edit.owner.is_none()
            && definition.is_none()
        {
            return Err(bad(
                "enabled",
                "give at least one of enabled, description, owner, definition",
            ));
        }
        if definition.is_some() {
            self.refuse_if_rollout_owns(key).await?;
        }
        let changed: Vec<&str> = [
            ("enabled", edit.enabled.is_some()),
            ("description", edit.description.is_some()),
            ("owner", edit.owner.is_some()),
            ("definition", edit.definition.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        let now = Utc::now();
        let mut tx = self.store.begin().await?;
        let before = tx.flag_for_update(key).await?;
        if edit.enabled.is_some() || edit.definition.is_some() {
            refuse_if_held(tx.as_mut(), key).await?;
        }
        let mut flag = before.clone().unwrap_or_else(|| FlagRow {
            key: key.to_string(),
            enabled: true,
            description: None,
            updated_at: now,
            updated_by: who.to_string(),
            definition: None,
            owner: None,
            created_at: Some(now),
            last_evaluated_at: None,
        });
        if let Some(d) = definition {
            flag.enabled = d.state == DefState::Enabled;
            flag.definition = Some(d);
        }
        if let Some(e) = edit.enabled {
            flag.enabled = e;
            // Flipped by hand, `enabled` is the kill switch: a definition
            // first written DISABLED becomes ENABLED, so off is its off
            // variant (not the caller's default) and on serves it.
            if edit.definition.is_none() {
                if let Some(d) = flag.definition.as_mut() {
                    d.state = DefState::Enabled;
                }
            }
        }
        if let Some(d) = edit.description {
            flag.description = Some(d);
        }
        if let Some(o) = edit.owner {
            flag.owner = Some(o);
        }
        flag.updated_at = now;
        flag.updated_by = who.to_string();
        tx.put_flag(&flag).await?;
        tx.insert_audit(&[NewAudit::by(
            who,
            "flag_set",
            json!({"flag": key, "enabled": flag.enabled, "created": before.is_none(), "changed": changed,
                   "owner": flag.owner, "definition": flag.definition}),
        )])
        .await?;
        tx.commit().await?;
        Ok((before, flag))
    }

    /// Refuses a new definition for `key` while an active rollout owns its
    /// targeting (its steps write it).
    async fn refuse_if_rollout_owns(&self, key: &str) -> Result<(), CommandError> {
        match self.store.list_rollouts(Some(key), true, 1).await?.first() {
            Some(r) => Err(CommandError::Conflict(format!(
                "rollout #{} ({}) owns the targeting of {key}: abort it before replacing the definition",
                r.id,
                r.status.as_str()
            ))),
            None => Ok(()),
        }
    }

    pub async fn delete_flag(&self, identity: &Identity, key: &str) -> Result<(), CommandError> {
        let who = identity.id.as_str();
        check_flag_key(key).map_err(|m| bad("key", m))?;
        {
            let mut tx = self.store.begin().await?;
            refuse_if_held(tx.as_mut(), key).await?;
            drop(tx);
        }
        let audit = NewAudit::by(who, "flag_deleted", json!({"flag": key}));
        if self.store.delete_flag(key, &audit).await? {
            Ok(())
        } else {
            Err(CommandError::NotFound(format!("no flag {key:?}")))
        }
    }
}

fn expired(action: &ActionRow, at: chrono::DateTime<Utc>) -> CommandError {
    CommandError::Conflict(format!(
        "action #{} ({}) expired at {} without a decision (automation.approval_ttl): it will not run; ask again if it is still needed",
        action.id,
        action.spec.describe,
        at.format("%Y-%m-%d %H:%M:%S UTC")
    ))
}
