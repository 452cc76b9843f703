//! Runs claimed actions. Each runs under a short lease this process renews
//! while the step runs; every outcome is recorded only while the lease is
//! still ours (a process that lost it — paused, partitioned — records
//! nothing, and the one that took over decides). Kill switches record the
//! state they found before they act, so a crash at any point leaves a revert
//! that can restore it; an action found in doubt after a crash is verified
//! (a kill switch is read back) or escalated (a rollback, a notification or
//! a webhook is never sent twice blindly).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use firebreak_domain::action::{ActionRow, ActionStatus};
use firebreak_domain::playbook::{render, render_json, FlagState, KillSwitchStep, StepAction};
use firebreak_domain::secret;
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{ActionChange, NewAudit, StoreError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::commands::CommandError;
use crate::providers::{Fence, FencedSet, KillSwitch};
use crate::{entry, escalation, provenance, providers, verified, ExecError, Remediation};

const ACTOR: &str = "engine";

struct Done {
    result: Value,
    previous: Option<Value>,
}

/// How often held actions are checked for expiry.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl Remediation {
    /// Claims and runs ready actions until `shutdown`. First takes back, at
    /// once, what an earlier run of this process on this node held.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.reclaim_at_start().await;
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        let mut expiry_checked = std::time::Instant::now() - EXPIRY_CHECK;
        loop {
            // Held actions past automation.approval_ttl expire (any engine
            // may do it; each action expires once).
            if expiry_checked.elapsed() >= EXPIRY_CHECK {
                expiry_checked = std::time::Instant::now();
                match self.expire_held(Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "held actions expired without a decision"),
                    Err(e) if e.is_transient() => {}
                    Err(e) => tracing::warn!(error = %e, "cannot expire held actions"),
                }
            }
            // Take everything ready now, then wait for a wake-up or the poll.
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let now = Utc::now();
                match self
                    .store
                    .claim_action(now, now + self.lease_delta(), &self.owner)
                    .await
                {
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

    /// Ends the leases an earlier run of this process held (same node, other
    /// instance): a kill -9 mid-action is picked up now, not when its lease runs out.
    pub async fn reclaim_at_start(&self) {
        let prefix = if self.config.reclaim_all {
            String::new()
        } else {
            format!("{}/", self.config.node)
        };
        match self
            .store
            .expire_leases(&prefix, &self.owner, Utc::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(actions = n, "taking back actions an earlier run left running; each is verified before anything is repeated");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take back earlier leases; they expire on their own")
            }
        }
    }

    /// Runs `work` while renewing the lease on `id`; if the lease is lost,
    /// `work` still finishes but its outcome will not be recorded.
    async fn leased<F: std::future::Future>(&self, id: i64, work: F) -> F::Output {
        let every = (self.config.lease / 3).max(Duration::from_millis(100));
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                match self
                    .store
                    .renew_lease(id, &self.owner, Utc::now() + self.lease_delta())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            action = id,
                            "lost the lease on this action; another executor decides its outcome"
                        );
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(action = id, error = %e, "cannot renew the action's lease")
                    }
                }
            }
        };
        tokio::select! {
            out = work => out,
            _ = renew => unreachable!("the renewal loop never ends"),
        }
    }

    /// Runs one claimed action and records what happened.
    #[tracing::instrument(skip_all, fields(action = action.id, playbook = %action.playbook, kind = %action.kind))]
    pub async fn execute(self: &Arc<Self>, action: ActionRow, in_doubt: bool) {
        if action.status == ActionStatus::Reverting {
            // A revert that its process left unfinished: finish it.
            let _ = self.finish_revert(action, ACTOR).await;
            return;
        }
        let outcome = self
            .leased(action.id, self.perform(&action, in_doubt))
            .await;
        match outcome {
            Ok(done) => self.finish_ok(&action, done).await,
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
        in_doubt: bool,
    ) -> Result<Done, (ExecError, Option<Value>)> {
        let spec = &action.spec;
        match &spec.step {
            StepAction::KillSwitch(k) => self.kill_switch(action, k, in_doubt).await,
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
                let mut context = json!({
                    "action_id": action.id,
                    "incident_id": action.incident_id,
                    "playbook": action.playbook,
                });
                // An escalation names the action it is about (`action_id`
                // above is the notice's own).
                if let Some(id) = spec.vars.get("escalated.action_id") {
                    let var = |k: &str| spec.vars.get(&format!("escalated.{k}"));
                    context["escalated"] = json!({
                        "action_id": id.parse::<i64>().ok(),
                        "kind": var("kind"),
                        "target": var("target"),
                        "status": var("status"),
                        "reason": var("reason"),
                        "incident_id": var("incident_id").and_then(|i| i.parse::<i64>().ok()),
                    });
                }
                // To the channel of the incident threads: posted in the
                // incident's thread, in order, by the Slack notifier (its
                // outbox), from this action's `action_executed` entry.
                let slack = &self.providers.slack;
                let in_thread = action.incident_id.is_some()
                    && slack.bot_token.is_some()
                    && n.slack.is_some()
                    && n.slack == slack.channel;
                let response = providers::notify(
                    &self.providers.notifiers,
                    slack,
                    n.webhook.as_deref(),
                    n.slack.as_deref().filter(|_| !in_thread),
                    &text,
                    context,
                )
                .await
                .map_err(|e| (e, None))?;
                let mut result = json!({"response": response, "message": text});
                if in_thread {
                    result["slack"] = json!({"thread": true, "channel": n.slack});
                }
                Ok(Done {
                    result,
                    previous: None,
                })
            }
            StepAction::RolloutStep(step) => {
                // One transaction under the lease: safe to run again in doubt.
                let (result, previous) = self
                    .apply_rollout_step(action, step)
                    .await
                    .map_err(|e| (e, None))?;
                Ok(Done { result, previous })
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
                let url =
                    firebreak_domain::playbook::render_url(&h.url, &spec.vars).map_err(fail)?;
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

    /// The provider a kill-switch step names.
    fn kill_switch_of(&self, k: &KillSwitchStep) -> Result<&Arc<dyn KillSwitch>, ExecError> {
        self.providers
            .kill_switches
            .get(&k.provider)
            .ok_or_else(|| {
                ExecError::fatal(format!(
                    "kill switch provider {:?} is not configured",
                    k.provider
                ))
            })
    }

    /// Sets a flag through its provider and reads it back. The state before
    /// the first attempt is the one a revert restores: a provider that can
    /// (the built-in store) sets the flag and records it on the action in one
    /// step; any other has it recorded first, then is called.
    async fn kill_switch(
        &self,
        action: &ActionRow,
        k: &KillSwitchStep,
        in_doubt: bool,
    ) -> Result<Done, (ExecError, Option<Value>)> {
        let provider = self.kill_switch_of(k).map_err(|e| (e, None))?;
        let env = k.environment.as_deref();
        let want = k.state.enabled();
        let by = format!("action:{}", action.id);
        let lost = || {
            (
                ExecError::fatal("lost the lease before acting; not called"),
                None,
            )
        };
        if action.previous_state.is_none() && !in_doubt {
            let fence = Fence {
                flag: &k.flag,
                env,
                action_id: action.id,
                owner: &self.owner,
                by: &by,
            };
            match provider.set_fenced(fence, want).await {
                Ok(FencedSet::Set { before }) => {
                    let previous = json!({"flag": k.flag, "enabled": before});
                    let response = json!({"flag": k.flag, "enabled": want, "previous": before});
                    return read_back(provider.as_ref(), k, response, previous).await;
                }
                Ok(FencedSet::LostLease) => return Err(lost()),
                Err(e) => return Err((e, None)),
                Ok(FencedSet::Unsupported) => {}
            }
        }
        let current = provider.get(&k.flag, env).await.map_err(|e| (e, None))?;
        let previous = match &action.previous_state {
            Some(p) => p.clone(),
            None => {
                let p = json!({"flag": k.flag, "enabled": current});
                match self
                    .store
                    .record_previous_state(action.id, &self.owner, &p)
                    .await
                {
                    Ok(true) => p,
                    Ok(false) => return Err(lost()),
                    Err(e) => {
                        return Err((
                            ExecError::retry(format!("cannot record the state before acting: {e}")),
                            None,
                        ))
                    }
                }
            }
        };
        if in_doubt && current == Some(want) {
            return Ok(Done {
                result: json!({"verified": true, "note": "found already set after a restart; not called again"}),
                previous: Some(previous),
            });
        }
        let response = provider
            .set(&k.flag, env, want, &by)
            .await
            .map_err(|e| (e, Some(previous.clone())))?;
        read_back(provider.as_ref(), k, response, previous).await
    }

    /// A change recorded only while this process still holds the lease.
    fn ours(&self, change: ActionChange) -> ActionChange {
        ActionChange {
            held_by: Some(self.owner.clone()),
            ..change
        }
    }

    async fn finish_ok(&self, action: &ActionRow, done: Done) {
        let now = Utc::now();
        let is_verified = verified(Some(&done.result));
        let mut audit = vec![NewAudit::of(
            action,
            ACTOR,
            "executed",
            now,
            json!({"attempt": action.attempts, "result": done.result}),
        )];
        if is_verified {
            audit.push(NewAudit::of(
                action,
                ACTOR,
                "verified",
                now,
                json!({"state": done.result.get("response")}),
            ));
        }
        // A notification's entry carries what it said (the Slack notifier
        // posts it in the incident's thread).
        let said = match (&action.spec.step, done.result["message"].as_str()) {
            (StepAction::Notify(_), Some(m)) => format!(": {m}"),
            _ => String::new(),
        };
        let summary = format!(
            "{}{}{said} ({})",
            action.spec.describe,
            if is_verified { ", verified" } else { "" },
            provenance(action)
        );
        let timeline = entry(action, kind::ACTION_EXECUTED, now, summary, "executed");
        let change = self.ours(ActionChange {
            result: Some(done.result),
            previous_state: done.previous,
            ..ActionChange::to(ActionStatus::Succeeded, now)
        });
        match self.settle(action, &change, &audit, &timeline).await {
            Ok(Some(_)) => {
                self.metrics.action("succeeded");
                tracing::info!(action = action.id, "{}", action.spec.describe);
            }
            Ok(None) => tracing::warn!(
                action = action.id,
                "the action changed hands while it ran; outcome not recorded (the executor that holds it verifies)"
            ),
            Err(e) => {
                tracing::error!(action = action.id, error = %e, "action ran but its outcome could not be recorded; it will be verified when its lease expires")
            }
        }
    }

    /// Records how a running action ended, if this executor still holds
    /// it (`None`: it changed hands; nothing was written).
    async fn settle(
        &self,
        action: &ActionRow,
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>, StoreError> {
        let running = [ActionStatus::Running];
        (self.store)
            .transition_action(action.id, &running, change, audit, timeline)
            .await
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
        let change = self.ours(ActionChange {
            reason: Some(err.message.clone()),
            previous_state: previous,
            not_before: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
            ..ActionChange::to(ActionStatus::Pending, now)
        });
        tracing::warn!(action = action.id, attempt = action.attempts, error = %err.message, "action failed; will retry");
        if let Err(e) = self.settle(action, &change, &audit, &[]).await {
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
        let summary = format!(
            "{} failed: {} ({})",
            action.spec.describe,
            err.message,
            provenance(action)
        );
        let timeline = entry(action, kind::ACTION_FAILED, now, summary.clone(), "failed");
        let change = self.ours(ActionChange {
            reason: Some(err.message.clone()),
            result: err.response.clone().map(|r| json!({"response": r})),
            previous_state: previous,
            ..ActionChange::to(ActionStatus::Failed, now)
        });
        tracing::error!(action = action.id, error = %err.message, "action failed; escalating to a human");
        match self.settle(action, &change, &audit, &timeline).await {
            Ok(Some(_)) => {
                self.metrics.action("failed");
                // A failed escalation is not escalated again.
                if !action.is_escalation() {
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
        let Some(target) = &self.config.policy.escalate else {
            tracing::warn!(action = action.id, "{message} (no escalation target configured: set [automation] escalate_slack or escalate_webhook)");
            return;
        };
        let notice = escalation(target, action, message, Utc::now());
        let queued = async {
            let mut tx = self.store.begin().await?;
            tx.insert_actions(&[notice]).await?;
            tx.commit().await
        };
        if let Err(e) = queued.await {
            tracing::error!(action = action.id, error = %e, "cannot queue the escalation");
        }
        self.wake();
    }

    /// Sets a reverting kill switch back to its recorded previous state,
    /// under the lease, and records the outcome. Idempotent: a revert
    /// resumed after a crash reads the flag first.
    pub(crate) async fn finish_revert(
        &self,
        action: ActionRow,
        who: &str,
    ) -> Result<ActionRow, CommandError> {
        let id = action.id;
        let StepAction::KillSwitch(k) = &action.spec.step else {
            return Err(CommandError::Conflict(format!(
                "action {id} is not a kill switch"
            )));
        };
        let previous = action.previous_enabled();
        let result = self
            .leased(id, async {
                let previous = previous.ok_or_else(|| {
                    ExecError::fatal("no recorded previous state to restore".to_string())
                })?;
                let provider = self.kill_switch_of(k)?;
                let env = k.environment.as_deref();
                if provider.get(&k.flag, env).await? == Some(previous) {
                    return Ok((previous, json!({"note": "already restored"})));
                }
                let resp = provider.set(&k.flag, env, previous, who).await?;
                match provider.get(&k.flag, env).await? {
                    Some(v) if v == previous => Ok((previous, resp)),
                    other => Err(ExecError::fatal(format!(
                        "flag {} reads back {other:?} after restoring it",
                        k.flag
                    ))),
                }
            })
            .await;
        let now = Utc::now();
        match result {
            Ok((previous, resp)) => {
                let state = FlagState::from_enabled(previous).as_str();
                let audit = [NewAudit::of(
                    &action,
                    who,
                    "reverted",
                    now,
                    json!({"flag": k.flag, "restored": state, "response": resp}),
                )];
                let timeline = entry(
                    &action,
                    kind::ACTION_REVERTED,
                    now,
                    format!(
                        "flag {} restored to {state} by {who} ({})",
                        k.flag,
                        provenance(&action)
                    ),
                    "reverted",
                );
                let done = self
                    .store
                    .transition_action(
                        id,
                        &[ActionStatus::Reverting],
                        &self.ours(ActionChange::to(ActionStatus::Reverted, now)),
                        &audit,
                        &timeline,
                    )
                    .await?
                    .ok_or_else(|| {
                        CommandError::Conflict(
                            "the action changed hands while it was reverted".into(),
                        )
                    })?;
                self.metrics.action("reverted");
                Ok(done)
            }
            Err(e) => {
                let audit = [NewAudit::of(
                    &action,
                    who,
                    "revert_failed",
                    now,
                    json!({"error": e.message, "response": e.response}),
                )];
                self.store
                    .transition_action(
                        id,
                        &[ActionStatus::Reverting],
                        &self.ours(ActionChange::to(ActionStatus::Succeeded, now)),
                        &audit,
                        &[],
                    )
                    .await?;
                Err(CommandError::Provider(e.message))
            }
        }
    }
}

/// Reads a flag back after setting it: verified only if it reads as set.
async fn read_back(
    provider: &dyn KillSwitch,
    k: &KillSwitchStep,
    response: Value,
    previous: Value,
) -> Result<Done, (ExecError, Option<Value>)> {
    let want = k.state.enabled();
    let read = provider
        .get(&k.flag, k.environment.as_deref())
        .await
        .map_err(|e| (e, Some(previous.clone())))?;
    if read != Some(want) {
        return Err((
            ExecError::retry(format!(
                "flag {} reads back {} after setting it {}",
                k.flag,
                read.map(|b| FlagState::from_enabled(b).as_str())
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
