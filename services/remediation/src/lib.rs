//! Runs the actions playbooks claimed. The engine claims an action (a unique
//! row) in the same transaction that processed its trigger; the [`Executor`]
//! here takes claimed rows one at a time per target, calls the provider, reads
//! the state back where it can, and records the outcome, the timeline entry and
//! the audit rows. A failure is retried with backoff, then escalated to a human.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use firebreak_domain::metrics::Metrics;
use firebreak_domain::playbook::{render, render_json, FlagState, NotifyStep, StepAction};
use firebreak_domain::secret;
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{
    ActionChange, ActionRow, ActionStatus, NewAction, NewAudit, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub mod providers;
pub mod slack;

use providers::{Builtin, HttpKillSwitch, KillSwitch, LaunchDarkly, Unleash};
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

/// What the engine stores in `actions.spec`: the step and the values it runs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionSpec {
    pub step: StepAction,
    /// Placeholder values (service, environment, incident, suspect and target deploys, labels).
    pub vars: BTreeMap<String, String>,
    /// One line for people: what this action does.
    pub describe: String,
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
            let ks: Arc<dyn KillSwitch> = match c.clone() {
                KillSwitchConfig::Unleash {
                    url,
                    token,
                    project,
                    environment,
                } => Arc::new(Unleash {
                    url,
                    token,
                    project,
                    environment,
                    http: http.clone(),
                }),
                KillSwitchConfig::Launchdarkly {
                    url,
                    token,
                    project,
                    environment,
                } => Arc::new(LaunchDarkly {
                    url,
                    token,
                    project,
                    environment,
                    http: http.clone(),
                }),
                KillSwitchConfig::Http {
                    set_url,
                    set_method,
                    set_body,
                    get_url,
                    state_pointer,
                    headers,
                    environment,
                } => Arc::new(HttpKillSwitch {
                    set_url,
                    set_method,
                    set_body,
                    get_url,
                    state_pointer,
                    headers,
                    environment,
                    http: http.clone(),
                }),
            };
            map.insert(name.clone(), ks);
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

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// How long a claimed action may run before another executor treats it as in doubt.
    pub lease: Duration,
    pub max_attempts: i32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// How often to look for ready actions when nothing wakes the executor.
    pub poll: Duration,
    /// Who hears about held and failed actions.
    pub escalate: Option<NotifyStep>,
    /// Actions run at once (on different targets).
    pub concurrency: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            lease: Duration::from_secs(120),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            poll: Duration::from_millis(500),
            escalate: None,
            concurrency: 8,
        }
    }
}

pub struct Executor {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
    config: ExecutorConfig,
    wake: Arc<Notify>,
}

const ACTOR: &str = "engine";

impl Executor {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
        config: ExecutorConfig,
        wake: Arc<Notify>,
    ) -> Executor {
        Executor {
            store,
            providers,
            metrics,
            config,
            wake,
        }
    }

    /// Claims and runs ready actions until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        loop {
            // Take everything ready now, then wait for a wake-up or the poll.
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let now = Utc::now();
                let lease = chrono::Duration::from_std(self.config.lease).unwrap_or_default();
                match self.store.claim_action(now, now + lease).await {
                    Ok(Some((action, in_doubt))) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.execute(action, in_doubt).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !e.is_transient() {
                            tracing::warn!(error = %e, "cannot claim actions");
                        }
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    /// Runs one claimed action and records what happened.
    #[tracing::instrument(skip_all, fields(action = action.id, playbook = %action.playbook, kind = %action.kind))]
    pub async fn execute(&self, action: ActionRow, in_doubt: bool) {
        let spec: ActionSpec = match serde_json::from_value(action.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                let err = ExecError::fatal(format!("stored action cannot be read: {e}"));
                self.finish_failed(&action, None, &err).await;
                return;
            }
        };
        let outcome = self.perform(&action, &spec, in_doubt).await;
        match outcome {
            Ok(done) => self.finish_ok(&action, &spec, done).await,
            Err((err, previous)) => {
                if err.retryable && action.attempts < self.config.max_attempts {
                    self.retry_later(&action, previous, &err).await;
                } else {
                    self.finish_failed(&action, previous, &err).await;
                }
            }
        }
    }

    async fn perform(
        &self,
        action: &ActionRow,
        spec: &ActionSpec,
        in_doubt: bool,
    ) -> Result<Done, (ExecError, Option<Value>)> {
        match &spec.step {
            StepAction::KillSwitch(k) => {
                let provider = self
                    .providers
                    .kill_switches
                    .get(&k.provider)
                    .ok_or_else(|| {
                        (
                            ExecError::fatal(format!(
                                "kill switch provider {:?} is not configured",
                                k.provider
                            )),
                            None,
                        )
                    })?;
                let env = k.environment.as_deref();
                let want = k.state.enabled();
                let current = provider.get(&k.flag, env).await.map_err(|e| (e, None))?;
                // The state before the first attempt is the one to restore.
                let previous = action
                    .previous_state
                    .clone()
                    .unwrap_or_else(|| json!({"flag": k.flag, "enabled": current}));
                if in_doubt && current == Some(want) {
                    return Ok(Done {
                        result: json!({"verified": true, "note": "found already set after a restart; not called again"}),
                        previous: Some(previous),
                    });
                }
                let by = format!("action:{}", action.id);
                let response = provider
                    .set(&k.flag, env, want, &by)
                    .await
                    .map_err(|e| (e, Some(previous.clone())))?;
                let read_back = provider
                    .get(&k.flag, env)
                    .await
                    .map_err(|e| (e, Some(previous.clone())))?;
                if read_back != Some(want) {
                    return Err((
                        ExecError::retry(format!(
                            "flag {} reads back {} after setting it {}",
                            k.flag,
                            read_back
                                .map(|b| FlagState::from_enabled(b).as_str())
                                .unwrap_or("missing"),
                            k.state.as_str()
                        ))
                        .with_response(response),
                        Some(previous),
                    ));
                }
                Ok(Done {
                    result: json!({"verified": true, "response": response}),
                    previous: Some(previous),
                })
            }
            StepAction::Rollback(r) => {
                if in_doubt {
                    return Err((ExecError::fatal(
                        "in doubt: Firebreak stopped while this rollback ran; check the deploy system before running it again",
                    ), None));
                }
                let config = self.providers.rollbacks.get(&r.provider).ok_or_else(|| {
                    (
                        ExecError::fatal(format!(
                            "rollback provider {:?} is not configured",
                            r.provider
                        )),
                        None,
                    )
                })?;
                let response = providers::rollback(config, &spec.vars)
                    .await
                    .map_err(|e| (e, None))?;
                Ok(Done {
                    result: json!({"verified": false, "response": response}),
                    previous: None,
                })
            }
            StepAction::Notify(n) => {
                if in_doubt {
                    return Err((ExecError::fatal("in doubt: Firebreak stopped while this notification was sent; not sent twice"), None));
                }
                let text = match &n.message {
                    Some(m) => render(m, &spec.vars, str::to_string)
                        .map_err(|e| (ExecError::fatal(e), None))?,
                    None => spec
                        .vars
                        .get("message")
                        .cloned()
                        .unwrap_or_else(|| spec.describe.clone()),
                };
                let context = json!({
                    "action_id": action.id,
                    "incident_id": action.incident_id,
                    "playbook": action.playbook,
                });
                let response = providers::notify(
                    &self.providers.notifiers,
                    &self.providers.slack,
                    n.webhook.as_deref(),
                    n.slack.as_deref(),
                    &text,
                    context,
                )
                .await
                .map_err(|e| (e, None))?;
                Ok(Done {
                    result: json!({"response": response}),
                    previous: None,
                })
            }
            StepAction::Http(h) => {
                if in_doubt {
                    return Err((
                        ExecError::fatal(
                            "in doubt: Firebreak stopped while this request ran; not sent twice",
                        ),
                        None,
                    ));
                }
                let fail = |e: String| (ExecError::fatal(e), None);
                let url = render(&h.url, &spec.vars, firebreak_domain::playbook::url_escape)
                    .map_err(fail)?;
                let method = reqwest::Method::from_bytes(h.method.as_bytes())
                    .map_err(|_| fail(format!("bad HTTP method {:?}", h.method)))?;
                let mut req = providers::client(Duration::from_secs(15)).request(method, url);
                for (k, v) in &h.headers {
                    let v = secret::expand(v, |k| std::env::var(k).ok()).map_err(fail)?;
                    req = req.header(k, v);
                }
                if let Some(body) = &h.body {
                    let body = render_json(body, &spec.vars).map_err(fail)?;
                    req = req
                        .header("Content-Type", "application/json")
                        .body(body.to_string());
                }
                let response = providers::send(req, "http step")
                    .await
                    .map_err(|e| (e, None))?;
                Ok(Done {
                    result: json!({"response": response}),
                    previous: None,
                })
            }
        }
    }

    async fn finish_ok(&self, action: &ActionRow, spec: &ActionSpec, done: Done) {
        let now = Utc::now();
        let verified = done.result["verified"] == Value::Bool(true);
        let mut audit = vec![NewAudit::of(
            action,
            ACTOR,
            "executed",
            now,
            json!({"attempt": action.attempts, "result": done.result}),
        )];
        if verified {
            audit.push(NewAudit::of(
                action,
                ACTOR,
                "verified",
                now,
                json!({"state": done.result.get("response")}),
            ));
        }
        let summary = format!(
            "{}{} ({}@{})",
            spec.describe,
            if verified { ", verified" } else { "" },
            action.playbook,
            action.playbook_version
        );
        let timeline = entry(action, kind::ACTION_EXECUTED, now, summary, "executed");
        let change = ActionChange {
            result: Some(done.result),
            previous_state: done.previous,
            ..ActionChange::to(ActionStatus::Succeeded, now)
        };
        match self
            .store
            .transition_action(
                action.id,
                &[ActionStatus::Running],
                &change,
                &audit,
                &timeline,
            )
            .await
        {
            Ok(Some(_)) => {
                self.metrics.action("succeeded");
                tracing::info!(action = action.id, "{}", spec.describe);
            }
            Ok(None) => tracing::warn!(
                action = action.id,
                "action changed while it ran; outcome not recorded"
            ),
            Err(e) => {
                tracing::error!(action = action.id, error = %e, "action ran but its outcome could not be recorded; it will be verified when its lease expires")
            }
        }
    }

    async fn retry_later(&self, action: &ActionRow, previous: Option<Value>, err: &ExecError) {
        let now = Utc::now();
        let factor = 2u32.saturating_pow(u32::try_from(action.attempts.max(1) - 1).unwrap_or(0));
        let delay = self.config.backoff.saturating_mul(factor);
        let audit = [NewAudit::of(
            action,
            ACTOR,
            "retry",
            now,
            json!({"attempt": action.attempts, "error": err.message, "response": err.response, "retry_in_ms": delay.as_millis() as u64}),
        )];
        let change = ActionChange {
            reason: Some(err.message.clone()),
            previous_state: previous,
            not_before: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
            ..ActionChange::to(ActionStatus::Pending, now)
        };
        tracing::warn!(action = action.id, attempt = action.attempts, error = %err.message, "action failed; will retry");
        if let Err(e) = self
            .store
            .transition_action(action.id, &[ActionStatus::Running], &change, &audit, &[])
            .await
        {
            tracing::error!(action = action.id, error = %e, "cannot schedule the retry; the lease will bring it back");
        }
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            wake.notify_one();
        });
    }

    async fn finish_failed(&self, action: &ActionRow, previous: Option<Value>, err: &ExecError) {
        let now = Utc::now();
        let audit = [NewAudit::of(
            action,
            ACTOR,
            "failed",
            now,
            json!({"attempt": action.attempts, "error": err.message, "response": err.response}),
        )];
        let describe = action.spec["describe"]
            .as_str()
            .unwrap_or(&action.kind)
            .to_string();
        let summary = format!(
            "{describe} failed: {} ({}@{})",
            err.message, action.playbook, action.playbook_version
        );
        let timeline = entry(action, kind::ACTION_FAILED, now, summary.clone(), "failed");
        let change = ActionChange {
            reason: Some(err.message.clone()),
            result: err.response.clone().map(|r| json!({"response": r})),
            previous_state: previous,
            ..ActionChange::to(ActionStatus::Failed, now)
        };
        tracing::error!(action = action.id, error = %err.message, "action failed; escalating to a human");
        match self
            .store
            .transition_action(
                action.id,
                &[ActionStatus::Running],
                &change,
                &audit,
                &timeline,
            )
            .await
        {
            Ok(Some(_)) => {
                self.metrics.action("failed");
                // A failed escalation is not escalated again.
                if action.kind != "notify" || !action.dedupe_key.starts_with("escalate:") {
                    self.escalate(
                        action,
                        &format!("Firebreak: {summary}. A human needs to look."),
                    )
                    .await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(action = action.id, error = %e, "cannot record the failure"),
        }
    }

    /// Queues a notification to the configured escalation target about `action`.
    pub async fn escalate(&self, action: &ActionRow, message: &str) {
        if let Err(e) = escalate(
            self.store.as_ref(),
            self.config.escalate.as_ref(),
            action,
            message,
        )
        .await
        {
            tracing::error!(action = action.id, error = %e, "cannot queue the escalation");
        }
        self.wake.notify_one();
    }
}

/// Queues an escalation notice (an action of its own, once per action and reason).
pub async fn escalate(
    store: &dyn Store,
    target: Option<&NotifyStep>,
    action: &ActionRow,
    message: &str,
) -> Result<(), StoreError> {
    let Some(target) = target else {
        tracing::warn!(action = action.id, "{message} (no escalation target configured: set [automation] escalate_slack or escalate_webhook)");
        return Ok(());
    };
    let notice = escalation(target, action, message, Utc::now());
    let mut tx = store.begin().await?;
    tx.insert_actions(&[notice]).await?;
    tx.commit().await
}

/// The escalation notice for `action`, as an action row to insert.
pub fn escalation(
    target: &NotifyStep,
    action: &ActionRow,
    message: &str,
    at: chrono::DateTime<Utc>,
) -> NewAction {
    let step = StepAction::Notify(NotifyStep {
        slack: target.slack.clone(),
        webhook: target.webhook.clone(),
        message: None,
    });
    let mut vars = BTreeMap::new();
    vars.insert("message".to_string(), message.to_string());
    let spec = ActionSpec {
        step,
        vars,
        describe: format!("escalated action #{} to a human", action.id),
    };
    NewAction {
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
        target: "escalation".into(),
        incident_id: action.incident_id,
        trigger_id: format!("action:{}", action.id),
        status: ActionStatus::Pending,
        reason: None,
        spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
        at,
    }
}

struct Done {
    result: Value,
    previous: Option<Value>,
}

fn entry(
    action: &ActionRow,
    kind: &'static str,
    at: chrono::DateTime<Utc>,
    summary: String,
    what: &str,
) -> Vec<NewEntry> {
    action
        .incident_id
        .map(|incident_id| NewEntry {
            incident_id,
            at,
            kind,
            source: format!("playbook:{}", action.playbook),
            summary,
            ref_id: format!("action:{}:{what}", action.id),
        })
        .into_iter()
        .collect()
}

/// Restores a kill switch action's previous state (`POST /api/v1/actions/{id}/revert`).
/// The action moves succeeded -> running (one action per target at a time) -> reverted.
pub async fn revert(
    store: &dyn Store,
    providers: &Providers,
    metrics: &Metrics,
    id: i64,
    actor: &str,
) -> Result<ActionRow, RevertError> {
    let action = store.action(id).await.map_err(RevertError::Store)?;
    let StepAction::KillSwitch(k) = serde_json::from_value::<ActionSpec>(action.spec.clone())
        .map_err(|e| RevertError::NotRevertible(format!("stored action cannot be read: {e}")))?
        .step
    else {
        return Err(RevertError::NotRevertible(format!(
            "action {id} is a {}; only kill switch actions can be reverted",
            action.kind
        )));
    };
    let previous = action
        .previous_state
        .as_ref()
        .and_then(|p| p.get("enabled"))
        .and_then(Value::as_bool);
    let Some(previous) = previous else {
        return Err(RevertError::NotRevertible(format!(
            "action {id} has no recorded previous state to restore (status {})",
            action.status.as_str()
        )));
    };
    let now = Utc::now();
    let claimed = store
        .transition_action(
            id,
            &[ActionStatus::Succeeded],
            &ActionChange::to(ActionStatus::Running, now),
            &[],
            &[],
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => RevertError::Busy,
            other => RevertError::Store(other),
        })?;
    let Some(action) = claimed else {
        return Err(RevertError::NotRevertible(format!(
            "action {id} is {}; only a succeeded action can be reverted",
            action.status.as_str()
        )));
    };
    let provider = providers.kill_switches.get(&k.provider);
    let result = match provider {
        None => Err(ExecError::fatal(format!(
            "kill switch provider {:?} is not configured",
            k.provider
        ))),
        Some(p) => match p
            .set(&k.flag, k.environment.as_deref(), previous, actor)
            .await
        {
            Ok(resp) => match p.get(&k.flag, k.environment.as_deref()).await {
                Ok(Some(v)) if v == previous => Ok(resp),
                Ok(other) => Err(ExecError::fatal(format!(
                    "flag {} reads back {other:?} after restoring it",
                    k.flag
                ))),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    let now = Utc::now();
    match result {
        Ok(resp) => {
            let state = FlagState::from_enabled(previous).as_str();
            let audit = [NewAudit::of(
                &action,
                actor,
                "reverted",
                now,
                json!({"flag": k.flag, "restored": state, "response": resp}),
            )];
            let timeline = entry(
                &action,
                kind::ACTION_REVERTED,
                now,
                format!(
                    "flag {} restored to {state} by {actor} ({}@{})",
                    k.flag, action.playbook, action.playbook_version
                ),
                "reverted",
            );
            let done = store
                .transition_action(
                    id,
                    &[ActionStatus::Running],
                    &ActionChange::to(ActionStatus::Reverted, now),
                    &audit,
                    &timeline,
                )
                .await
                .map_err(RevertError::Store)?
                .ok_or_else(|| {
                    RevertError::NotRevertible("action changed while it was reverted".into())
                })?;
            metrics.action("reverted");
            Ok(done)
        }
        Err(e) => {
            let audit = [NewAudit::of(
                &action,
                actor,
                "revert_failed",
                now,
                json!({"error": e.message, "response": e.response}),
            )];
            store
                .transition_action(
                    id,
                    &[ActionStatus::Running],
                    &ActionChange::to(ActionStatus::Succeeded, now),
                    &audit,
                    &[],
                )
                .await
                .map_err(RevertError::Store)?;
            Err(RevertError::Provider(e.message))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error("{0}")]
    NotRevertible(String),
    #[error("another action on the same target is running; try again in a moment")]
    Busy,
    #[error("the provider refused: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(StoreError),
}
