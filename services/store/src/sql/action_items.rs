//! `ActionItemStore` over any dialect: postmortem action items and the
//! tracker outbox kept on their rows.

use super::*;

const COLUMNS: &str =
    "id, incident_id, title, owner, due, priority, status, created_by, created_at,
    updated_at, tracker, tracker_key, tracker_url, export_state, export_error, export_attempts";

fn item_row(r: &impl Get) -> Result<ActionItemRow> {
    let id = r.int("id")?;
    let read = || -> Result<ActionItemRow> {
        Ok(from_row!(r => ActionItemRow {
            incident_id: int, title: text, owner: opt_text, due: opt_text, priority: text,
            status: text, created_by: text, created_at: time, updated_at: time,
            tracker: opt_text, tracker_key: opt_text, tracker_url: opt_text,
            export_state: opt_text, export_error: opt_text, export_attempts: int;
            id
        }))
    };
    read().map_err(in_row("action_items", id.to_string()))
}

/// The audit row, naming the item it is about.
fn about(audit: &NewAudit, id: i64) -> NewAudit {
    let mut audit = audit.clone();
    if let Value::Object(m) = &mut audit.detail {
        m.insert("action_item_id".into(), Value::from(id));
    }
    audit
}

async fn one<T: DialectTx>(tx: &mut T, id: i64) -> Result<ActionItemRow> {
    let query = q(format!("SELECT {COLUMNS} FROM action_items WHERE id = $1"))
        .bind(id)
        .for_update::<T>();
    fetch_first(tx, query, item_row)
        .await?
        .ok_or(StoreError::NotFound)
}

#[async_trait]
impl<D: Dialect> ActionItemStore for Db<D> {
    async fn create_action_item(
        &self,
        item: &NewActionItem,
        audit: &NewAudit,
        entry: &NewEntry,
    ) -> Result<ActionItemRow> {
        let mut tx = self.d.begin().await?;
        let incident = tx
            .fetch(q("SELECT id FROM incidents WHERE id = $1").bind(item.incident_id))
            .await?;
        if incident.is_empty() {
            return Err(StoreError::NotFound);
        }
        let rows = tx
            .fetch(
                q(format!(
                    "INSERT INTO action_items (incident_id, title, owner, due, priority, status, created_by,
                                               created_at, updated_at, tracker, export_state, export_next_at)
                     VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $7, $8, $9, $10)
                     RETURNING {COLUMNS}"
                ))
                .bind(item.incident_id)
                .bind(&item.title)
                .bind(&item.owner)
                .bind(&item.due)
                .bind(&item.priority)
                .bind(&item.created_by)
                .bind(item.at)
                .bind(&item.export_to)
                .bind(item.export_to.as_ref().map(|_| "pending"))
                .bind(item.export_to.as_ref().map(|_| item.at)),
            )
            .await?;
        let row = rows
            .first()
            .map(item_row)
            .transpose()?
            .ok_or_else(|| StoreError::Internal("an insert returned no row".into()))?;
        let entry = NewEntry {
            ref_id: format!("action-item:{}", row.id),
            ..entry.clone()
        };
        commit_with(tx, &about(audit, row.id), &[entry]).await?;
        Ok(row)
    }

    async fn action_items(&self, incident_id: i64) -> Result<Vec<ActionItemRow>> {
        self.read_all(
            q(format!(
                "SELECT {COLUMNS} FROM action_items WHERE incident_id = $1 ORDER BY id"
            ))
            .bind(incident_id),
            item_row,
        )
        .await
    }

    async fn action_item(&self, id: i64) -> Result<ActionItemRow> {
        self.read_one(
            q(format!("SELECT {COLUMNS} FROM action_items WHERE id = $1")).bind(id),
            item_row,
        )
        .await
    }

    async fn update_action_item(
        &self,
        id: i64,
        change: &ActionItemChange,
        audit: &NewAudit,
        entries: &[NewEntry],
    ) -> Result<ActionItemRow> {
        let mut tx = self.d.begin().await?;
        let now = one(&mut tx, id).await?;
        let next = ActionItemRow {
            title: change.title.clone().unwrap_or_else(|| now.title.clone()),
            owner: change.owner.clone().unwrap_or_else(|| now.owner.clone()),
            due: change.due.clone().unwrap_or_else(|| now.due.clone()),
            priority: change
                .priority
                .clone()
                .unwrap_or_else(|| now.priority.clone()),
            status: change.status.clone().unwrap_or_else(|| now.status.clone()),
            ..now.clone()
        };
        if next == now {
            return Ok(now);
        }
        let row = fetch_one(
            &mut tx,
            q(format!(
                "UPDATE action_items SET title = $2, owner = $3, due = $4, priority = $5,
                     status = $6, updated_at = $7
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(&next.title)
            .bind(&next.owner)
            .bind(&next.due)
            .bind(&next.priority)
            .bind(&next.status)
            .bind(audit.at),
            item_row,
        )
        .await?;
        commit_with(tx, &about(audit, id), entries).await?;
        Ok(row)
    }

    async fn request_action_item_export(
        &self,
        id: i64,
        tracker: &str,
        audit: &NewAudit,
    ) -> Result<ActionItemRow> {
        let mut tx = self.d.begin().await?;
        let now = one(&mut tx, id).await?;
        if let (Some(t), Some(key)) = (&now.tracker, &now.tracker_key) {
            return Err(StoreError::Conflict(format!(
                "action item {id} is already in {t} as {key}"
            )));
        }
        let row = fetch_one(
            &mut tx,
            q(format!(
                "UPDATE action_items SET tracker = $2, export_state = 'pending', export_error = NULL,
                     export_attempts = 0, export_next_at = $3, export_claimed_until = NULL,
                     updated_at = $3
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(tracker)
            .bind(audit.at),
            item_row,
        )
        .await?;
        commit_with(tx, &about(audit, id), &[]).await?;
        Ok(row)
    }

    async fn claim_action_item_export(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<ActionItemRow>> {
        // The inner pick and the outer re-check: a second process that picked
        // the same row finds it claimed once the first commits, and takes none.
        let rows = self
            .d
            .write(
                q(format!(
                    "UPDATE action_items SET export_claimed_until = $2
                     WHERE id = (SELECT id FROM action_items
                                 WHERE export_state IN ('pending', 'failed') AND export_next_at <= $1
                                   AND (export_claimed_until IS NULL OR export_claimed_until < $1)
                                 ORDER BY export_next_at, id LIMIT 1)
                       AND (export_claimed_until IS NULL OR export_claimed_until < $1)
                     RETURNING {COLUMNS}"
                ))
                .bind(now)
                .bind(until),
            )
            .await?;
        rows.first().map(item_row).transpose()
    }

    async fn finish_action_item_export(
        &self,
        id: i64,
        outcome: &ExportOutcome,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let query = match outcome {
            ExportOutcome::Exported { key, url } => q(
                "UPDATE action_items SET export_state = 'exported', tracker_key = $2, tracker_url = $3,
                     export_error = NULL, export_attempts = export_attempts + 1,
                     export_next_at = NULL, export_claimed_until = NULL, updated_at = $4
                 WHERE id = $1",
            )
            .bind(id)
            .bind(key)
            .bind(url)
            .bind(at),
            ExportOutcome::Failed { error, next_at } => q(
                "UPDATE action_items SET export_state = 'failed', export_error = $2,
                     export_attempts = export_attempts + 1, export_next_at = $3,
                     export_claimed_until = NULL, updated_at = $4
                 WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .bind(*next_at)
            .bind(at),
        };
        self.d.write(query).await?;
        Ok(())
    }

    async fn set_action_item_status_by_tracker(
        &self,
        word: &TrackerStatus<'_>,
        audit: &NewAudit,
        entry_for: &(dyn for<'r> Fn(&'r ActionItemRow) -> NewEntry + Send + Sync),
    ) -> Result<Option<ActionItemRow>> {
        let mut tx = self.d.begin().await?;
        let found = q(format!(
            "SELECT {COLUMNS} FROM action_items WHERE tracker = $1 AND tracker_key = $2"
        ))
        .bind(word.tracker)
        .bind(word.key)
        .for_update::<D::Tx>();
        let Some(now) = fetch_first(&mut tx, found, item_row).await? else {
            return Ok(None);
        };
        if now.status == word.status {
            return Ok(Some(now));
        }
        let row = fetch_one(
            &mut tx,
            q(format!(
                "UPDATE action_items SET status = $2, updated_at = $3 WHERE id = $1
                 RETURNING {COLUMNS}"
            ))
            .bind(now.id)
            .bind(word.status)
            .bind(word.at),
            item_row,
        )
        .await?;
        let entry = entry_for(&row);
        commit_with(tx, &about(audit, row.id), &[entry]).await?;
        Ok(Some(row))
    }

    async fn action_item_counts(&self, today: &str) -> Result<(i64, i64)> {
        let rows = self
            .d
            .read(
                q("SELECT COUNT(*) AS open,
                          COALESCE(SUM(CASE WHEN due IS NOT NULL AND due < $1 THEN 1 ELSE 0 END), 0) AS overdue
                   FROM action_items WHERE status = 'open'")
                .bind(today),
            )
            .await?;
        match rows.first() {
            Some(r) => Ok((r.int("open")?, r.int("overdue")?)),
            None => Ok((0, 0)),
        }
    }
}
