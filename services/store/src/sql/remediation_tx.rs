//! `RemediationTx` over any dialect: flags under a lock, rollouts, action
//! rows and audit rows inside a transaction.

use super::*;

#[async_trait]
impl<T: DialectTx + 'static> RemediationTx for Tx<T> {
    async fn flag_for_update(&mut self, key: &str) -> Result<Option<FlagRow>> {
        fetch_first(&mut self.tx, flag_locked::<T>(key), flag_row).await
    }

    async fn put_flag(&mut self, f: &FlagRow) -> Result<()> {
        let definition = f
            .definition
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Internal(format!("encoding flag {}: {e}", f.key)))?;
        self.tx
            .execute(upsert_flag(
                &FlagWrite {
                    key: &f.key,
                    enabled: f.enabled,
                    description: f.description.as_deref(),
                    by: &f.updated_by,
                },
                definition,
                f.owner.as_deref(),
                f.updated_at,
                f.created_at,
            ))
            .await?;
        Ok(())
    }

    async fn note_previous_state(&mut self, id: i64, owner: &str, state: &Value) -> Result<bool> {
        let rows = self
            .tx
            .fetch(fenced_previous_state(id, owner, state.clone()))
            .await?;
        Ok(!rows.is_empty())
    }

    async fn insert_rollout(&mut self, r: &NewRollout) -> Result<Rollout> {
        let plan = serde_json::to_value(&r.plan)
            .map_err(|e| StoreError::Internal(format!("encoding a rollout plan: {e}")))?;
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "INSERT INTO rollouts (flag, plan, status, generation, created_by, created_at,
                         started_at, updated_at)
                     VALUES ($1, $2, 'running', 0, $3, $4, $4, $4)
                     RETURNING {ROLLOUT_COLUMNS}"
                ))
                .bind(r.flag.as_str())
                .bind(plan)
                .bind(r.created_by.as_str())
                .bind(r.at),
            )
            .await?;
        rollout_row(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn active_rollouts(&mut self) -> Result<Vec<Rollout>> {
        fetch_all(
            &mut self.tx,
            q(format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts
                 WHERE status IN ('running', 'paused') ORDER BY id"
            )),
            rollout_row,
        )
        .await
    }

    async fn update_rollout(
        &mut self,
        id: i64,
        from: &[RolloutStatus],
        c: &RolloutChange,
    ) -> Result<Option<Rollout>> {
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        let step = c
            .step
            .map(|s| s.map(|s| i64::try_from(s).unwrap_or(i64::MAX)));
        fetch_first(
            &mut self.tx,
            q(format!(
                "UPDATE rollouts SET
                         status = COALESCE($3, status),
                         step = CASE WHEN $4 = 1 THEN $5 ELSE step END,
                         step_started_at = CASE WHEN $6 = 1 THEN $7 ELSE step_started_at END,
                         action_id = CASE WHEN $8 = 1 THEN $9 ELSE action_id END,
                         waiting = CASE WHEN $10 = 1 THEN $11 ELSE waiting END,
                         reason = CASE WHEN $12 = 1 THEN $13 ELSE reason END,
                         generation = generation + $14,
                         started_at = CASE WHEN $14 = 1 THEN $15 ELSE started_at END,
                         updated_at = $15
                     WHERE id = $1 AND {} AND ($16 IS NULL OR generation = $16)
                     RETURNING {ROLLOUT_COLUMNS}",
                T::any("status", 2)
            ))
            .bind(id)
            .bind(from)
            .bind(c.status.map(|s| s.as_str()))
            .bind(i64::from(c.step.is_some()))
            .bind(step.flatten())
            .bind(i64::from(c.step_started_at.is_some()))
            .bind(c.step_started_at.flatten())
            .bind(i64::from(c.action_id.is_some()))
            .bind(c.action_id.flatten())
            .bind(i64::from(c.waiting.is_some()))
            .bind(c.waiting.clone().flatten())
            .bind(i64::from(c.reason.is_some()))
            .bind(c.reason.clone().flatten())
            .bind(i64::from(c.restart))
            .bind(c.at)
            .bind(c.generation),
            rollout_row,
        )
        .await
    }

    async fn insert_rollout_events(&mut self, events: &[RolloutEvent]) -> Result<()> {
        let entries = events
            .iter()
            .map(|e| {
                let owner = Arg::from(e.rollout_id);
                (
                    owner,
                    e.at,
                    e.kind.as_str(),
                    e.actor.as_str(),
                    e.summary.as_str(),
                    e.ref_id.as_str(),
                )
            })
            .collect();
        append_log(&mut self.tx, &ROLLOUT_EVENTS, entries).await
    }

    async fn insert_actions(&mut self, actions: &[NewAction]) -> Result<Vec<ActionRow>> {
        let mut out = Vec::new();
        for a in actions {
            let rows = self
                .tx
                .fetch(
                    q(format!(
                        "INSERT INTO actions (dedupe_key, playbook, playbook_version, step_index, kind, target,
                             incident_id, trigger_id, requested_by, status, reason, spec,
                             created_at, updated_at, not_before)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13)
                         ON CONFLICT (dedupe_key) DO NOTHING
                         RETURNING {ACTION_COLUMNS}"
                    ))
                    .bind(&a.dedupe_key)
                    .bind(&a.playbook)
                    .bind(&a.playbook_version)
                    .bind(a.step_index)
                    .bind(&a.kind)
                    .bind(&a.target)
                    .bind(a.incident_id)
                    .bind(&a.trigger_id)
                    .bind(&a.requested_by)
                    .bind(a.status.as_str())
                    .bind(&a.reason)
                    .bind(spec_json(&a.spec)?)
                    .bind(a.at),
                )
                .await?;
            if let Some(row) = rows.first() {
                out.push(action_row(row)?);
            }
        }
        Ok(out)
    }

    async fn actions_created_since(&mut self, since: DateTime<Utc>) -> Result<Vec<ActionRow>> {
        fetch_all(
            &mut self.tx,
            q(format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE created_at >= $1 ORDER BY id"
            ))
            .bind(since)
            .plan_each(),
            action_row,
        )
        .await
    }

    async fn open_actions_on(&mut self, target: &str) -> Result<Vec<ActionRow>> {
        fetch_all(
            &mut self.tx,
            q(format!(
                "SELECT {ACTION_COLUMNS} FROM actions
                     WHERE target = $1 AND status IN ('pending', 'held', 'running', 'reverting')
                     ORDER BY id"
            ))
            .bind(target),
            action_row,
        )
        .await
    }

    async fn acting_actions_on(&mut self, target: &str, limit: i64) -> Result<Vec<ActionRow>> {
        fetch_all(&mut self.tx, q(format!(
                    "SELECT {ACTION_COLUMNS} FROM actions
                     WHERE target = $1
                       AND status IN ('pending', 'held', 'running', 'succeeded', 'reverting', 'reverted')
                     ORDER BY id DESC LIMIT $2"
                ))
                .bind(target)
                .bind(limit), action_row).await
    }

    async fn tx_setting(&mut self, key: &str) -> Result<Option<String>> {
        let rows = self
            .tx
            .fetch(q("SELECT value FROM settings WHERE key = $1").bind(key))
            .await?;
        rows.first().map(|r| r.text("value")).transpose()
    }

    async fn insert_audit(&mut self, rows: &[NewAudit]) -> Result<()> {
        write_audit(&mut self.tx, rows).await
    }
}
