//! `ActionStore` over any dialect: actions under leases, their status
//! changes, the hash-chained audit trail.

use super::*;

#[async_trait]
impl<D: Dialect> ActionStore for Db<D> {
    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<(ActionRow, bool)>> {
        match self.d.claim_action(now, lease_until, owner).await? {
            None => Ok(None),
            Some(row) => {
                let was = row.text("was")?;
                Ok(Some((action_row(&row)?, was != "pending")))
            }
        }
    }

    async fn renew_lease(&self, id: i64, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let rows = self
            .d
            .write(
                q("UPDATE actions SET lease_until = $3
                   WHERE id = $1 AND lease_owner = $2 AND status IN ('running', 'reverting')
                   RETURNING id")
                .bind(id)
                .bind(owner)
                .bind(until),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn expire_leases(
        &self,
        owner_prefix: &str,
        except: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let rows = self
            .d
            .write(
                q("UPDATE actions SET lease_until = $3
                   WHERE status IN ('running', 'reverting') AND lease_owner <> $2
                     AND substr(lease_owner, 1, length($1)) = $1 AND lease_until >= $3
                   RETURNING id")
                .bind(owner_prefix)
                .bind(except)
                .bind(now - chrono::Duration::microseconds(1)),
            )
            .await?;
        Ok(rows.len() as u64)
    }

    async fn record_previous_state(&self, id: i64, owner: &str, state: &Value) -> Result<bool> {
        let rows = self
            .d
            .write(fenced_previous_state(id, owner, state.clone()))
            .await?;
        Ok(!rows.is_empty())
    }

    async fn transition_action(
        &self,
        id: i64,
        from: &[ActionStatus],
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>> {
        let mut tx = self.d.begin().await?;
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        let (lease_until, lease_owner) = match &change.lease {
            Some((until, owner)) => (Some(*until), Some(owner.clone())),
            None => (None, None),
        };
        let keeps_lease = change.status.holds_target();
        let rows = tx
            .fetch(
                q(format!(
                    "UPDATE actions SET status = $3, updated_at = $4,
                         reason = COALESCE($5, reason), result = COALESCE($6, result),
                         previous_state = COALESCE($7, previous_state), decided_by = COALESCE($8, decided_by),
                         not_before = COALESCE($9, not_before),
                         lease_until = CASE WHEN $10 THEN COALESCE($11, lease_until) ELSE NULL END,
                         lease_owner = CASE WHEN $10 THEN COALESCE($12, lease_owner) ELSE NULL END
                     WHERE id = $1 AND {} AND ($13 IS NULL OR lease_owner = $13)
                     RETURNING {ACTION_COLUMNS}",
                    <D::Tx as DialectTx>::any("status", 2)
                ))
                .bind(id)
                .bind(from)
                .bind(change.status.as_str())
                .bind(change.at)
                .bind(&change.reason)
                .bind(&change.result)
                .bind(&change.previous_state)
                .bind(&change.decided_by)
                .bind(change.not_before)
                .bind(keeps_lease)
                .bind(lease_until)
                .bind(lease_owner)
                .bind(&change.held_by),
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let action = action_row(row)?;
        write_audit(&mut tx, audit).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await?;
        Ok(Some(action))
    }

    async fn action(&self, id: i64) -> Result<ActionRow> {
        self.read_one(
            q(format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"
            ))
            .bind(id),
            action_row,
        )
        .await
    }

    async fn list_actions(&self, f: &ActionFilter) -> Result<Vec<ActionRow>> {
        let query = q(format!("SELECT {ACTION_COLUMNS} FROM actions WHERE TRUE"))
            .and_if("incident_id = {}", f.incident_id)
            .and_if("status = {}", f.status.map(|s| s.as_str()))
            .and_if("created_at >= {}", f.since)
            .and_if("id < {}", f.before_id)
            .newest_first(f.limit);
        self.read_all(query, action_row).await
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let query = q(format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE TRUE"))
            .and_if("action_id = {}", f.action_id)
            .and_if("incident_id = {}", f.incident_id)
            .and_if("id < {}", f.before_id)
            .and_if("actor = {}", f.actor.as_deref())
            .and_if("event = {}", f.event.as_deref())
            .newest_first(f.limit);
        self.read_all(query, audit_row).await
    }

    async fn record(&self, audit: &[NewAudit], timeline: &[NewEntry]) -> Result<()> {
        let mut tx = self.d.begin().await?;
        write_audit(&mut tx, audit).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await
    }

    async fn verify_audit(&self) -> Result<crate::AuditCheck> {
        let mut check = crate::AuditCheck::default();
        let mut after = 0i64;
        let mut prev: Option<String> = None;
        let mut last_keyed: Option<i64> = None;
        loop {
            let rows = self
                .d
                .read(
                    q(format!(
                        "SELECT {AUDIT_COLUMNS}, prev_hash, hash FROM audit WHERE id > $1 ORDER BY id LIMIT 1000"
                    ))
                    .bind(after),
                )
                .await?;
            if rows.is_empty() {
                return Ok(check);
            }
            for r in &rows {
                let row = audit_row(r)?;
                after = row.id;
                let (stored_prev, stored) = (r.opt_text("prev_hash")?, r.opt_text("hash")?);
                let Some(stored) = stored else {
                    if prev.is_none() {
                        check.before_chain += 1;
                        continue;
                    }
                    check.broken = Some((row.id, "has no hash inside the chain".into()));
                    return Ok(check);
                };
                let expected_prev = prev.clone().unwrap_or_default();
                if stored_prev.as_deref().unwrap_or("") != expected_prev {
                    check.broken = Some((
                        row.id,
                        "does not follow the row before it (a row was removed, inserted or changed)".into(),
                    ));
                    return Ok(check);
                }
                let why = if stored.starts_with(KEYED) {
                    match (AUDIT_KEY.get(), last_keyed) {
                        (None, _) => Some("is keyed, and no audit key is configured: set audit.key, or keep the key file beside the data".to_string()),
                        (Some(_), Some(last)) if row.id != last + 1 => Some(format!(
                            "follows row {last}: rows {} to {} are missing",
                            last + 1,
                            row.id - 1
                        )),
                        (Some(key), _) if keyed_audit_hash(key, &expected_prev, row.id, &row.entry, row.entry.at) != stored => {
                            Some("its content does not match its keyed hash (the row was changed, or the key is not the one it was written with)".into())
                        }
                        _ => None,
                    }
                } else if last_keyed.is_some() {
                    Some(
                        "is not keyed although the rows before it are (rewritten without the key)"
                            .into(),
                    )
                } else if audit_hash(&expected_prev, &row.entry, row.entry.at) != stored {
                    Some("its content does not match its hash (the row was changed)".into())
                } else {
                    None
                };
                if let Some(why) = why {
                    check.broken = Some((row.id, why));
                    return Ok(check);
                }
                if stored.starts_with(KEYED) {
                    last_keyed = Some(row.id);
                    check.keyed += 1;
                    check.keyed_from.get_or_insert(row.id);
                }
                check.verified += 1;
                check.head = Some((row.id, stored.clone()));
                prev = Some(stored);
            }
        }
    }

    async fn audit_hash_at(&self, id: Option<i64>) -> Result<Option<(i64, Option<String>)>> {
        let rows = match id {
            None => {
                self.d
                    .read(q("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"))
                    .await?
            }
            Some(id) => {
                self.d
                    .read(q("SELECT id, hash FROM audit WHERE id = $1").bind(id))
                    .await?
            }
        };
        rows.first()
            .map(|r| Ok((r.int("id")?, r.opt_text("hash")?)))
            .transpose()
    }
}
