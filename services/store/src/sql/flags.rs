//! `FlagStore` over any dialect: built-in flags, guarded rollouts, the
//! service timeline.

use super::*;

#[async_trait]
impl<D: Dialect> FlagStore for Db<D> {
    async fn list_flags(&self) -> Result<Vec<FlagRow>> {
        self.read_all(
            q(format!("SELECT {FLAG_COLUMNS} FROM flags ORDER BY key")),
            flag_row,
        )
        .await
    }

    async fn flag(&self, key: &str) -> Result<FlagRow> {
        self.read_one(
            q(format!("SELECT {FLAG_COLUMNS} FROM flags WHERE key = $1")).bind(key),
            flag_row,
        )
        .await
    }

    async fn import_flags(
        &self,
        flags: &[(String, firebreak_domain::flagd::FlagDefinition)],
        by: &str,
        audit: &NewAudit,
    ) -> Result<()> {
        use firebreak_domain::flagd::FlagState;
        let mut tx = self.d.begin().await?;
        for (key, definition) in flags {
            let text = serde_json::to_string(definition)
                .map_err(|e| StoreError::Internal(format!("encoding flag {key}: {e}")))?;
            let flag = FlagWrite {
                key,
                enabled: definition.state == FlagState::Enabled,
                description: None,
                by,
            };
            tx.execute(upsert_flag(&flag, Some(text), None, audit.at, None))
                .await?;
        }
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await
    }

    async fn set_flag(&self, flag: &FlagWrite<'_>, audit: &NewAudit) -> Result<Option<bool>> {
        Ok(self
            .write_flag(flag, audit, None)
            .await?
            .unwrap_or_default())
    }

    async fn set_flag_for_action(
        &self,
        flag: &FlagWrite<'_>,
        audit: &NewAudit,
        held: (i64, &str),
    ) -> Result<Option<Option<bool>>> {
        self.write_flag(flag, audit, Some(held)).await
    }

    async fn delete_flag(&self, key: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(q("DELETE FROM flags WHERE key = $1").bind(key))
            .await?;
        if n > 0 {
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn flags_evaluated(&self, seen: &[(String, DateTime<Utc>)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.d.begin().await?;
        for (key, at) in seen {
            tx.execute(
                q("UPDATE flags SET last_evaluated_at = $2
                   WHERE key = $1 AND (last_evaluated_at IS NULL OR last_evaluated_at < $2)")
                .bind(key.as_str())
                .bind(*at),
            )
            .await?;
        }
        tx.commit().await
    }

    async fn rollout(&self, id: i64) -> Result<Rollout> {
        self.read_one(
            q(format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
            ))
            .bind(id),
            rollout_row,
        )
        .await
    }

    async fn list_rollouts(
        &self,
        flag: Option<&str>,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<Rollout>> {
        let mut query = q(format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE TRUE"))
            .and_if("flag = {}", flag);
        if active_only {
            query = query.and_where("status IN ('running', 'paused')");
        }
        self.read_all(query.newest_first(limit), rollout_row).await
    }

    async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEvent>> {
        self.read_all(
            q(
                "SELECT rollout_id, at, kind, actor, summary, ref_id FROM rollout_events
                   WHERE rollout_id = $1 ORDER BY at, id LIMIT 10000",
            )
            .bind(id),
            rollout_event_row,
        )
        .await
    }

    async fn record_service_events(&self, events: &[ServiceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.d.begin().await?;
        let entries = events
            .iter()
            .map(|e| {
                let owner = Arg::from(e.service.as_str());
                (
                    owner,
                    e.at,
                    e.kind.as_str(),
                    e.source.as_str(),
                    e.summary.as_str(),
                    e.ref_id.as_str(),
                )
            })
            .collect();
        append_log(&mut tx, &SERVICE_TIMELINE, entries).await?;
        tx.commit().await
    }

    async fn service_timeline(&self, service: &str, limit: i64) -> Result<Vec<ServiceEvent>> {
        let rows = self
            .d
            .read(
                q(
                    "SELECT service, at, kind, source, summary, ref_id FROM service_timeline
                   WHERE service = $1 ORDER BY at DESC, id DESC LIMIT $2",
                )
                .bind(service)
                .bind(limit),
            )
            .await?;
        decode(&rows, |r| {
            Ok(from_row!(r => ServiceEvent {
                service: text, at: time, kind: text, source: text, summary: text, ref_id: text,
            }))
        })
    }
}
