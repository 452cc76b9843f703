//! `PostmortemStore` over any dialect: documents and revisions.

use super::*;

#[async_trait]
impl<D: Dialect> PostmortemStore for Db<D> {
    async fn postmortem(&self, incident_id: i64) -> Result<Option<PostmortemRow>> {
        self.read_first(
            q(format!(
                "SELECT {POSTMORTEM_COLUMNS} FROM postmortems WHERE incident_id = $1"
            ))
            .bind(incident_id),
            postmortem_row,
        )
        .await
    }

    async fn save_postmortem(&self, save: &PostmortemSave) -> Result<SaveOutcome> {
        let mut tx = self.d.begin().await?;
        // The first save creates revision 1; a later one must name the
        // revision it edited ($2 either way).
        let (write, revision) = match save.expected_revision {
            None => (
                format!(
                    "INSERT INTO postmortems ({POSTMORTEM_COLUMNS})
                     VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $6, $7)
                     ON CONFLICT (incident_id) DO NOTHING
                     RETURNING {POSTMORTEM_COLUMNS}"
                ),
                1,
            ),
            Some(expected) => (
                format!(
                    "UPDATE postmortems SET revision = revision + 1, status = $3, markdown = $4,
                         generated = COALESCE($5, generated), updated_at = $6, updated_by = $7
                     WHERE incident_id = $1 AND revision = $2
                     RETURNING {POSTMORTEM_COLUMNS}"
                ),
                expected,
            ),
        };
        let rows = tx
            .fetch(
                q(write)
                    .bind(save.incident_id)
                    .bind(revision)
                    .bind(&save.status)
                    .bind(&save.markdown)
                    .bind(&save.generated)
                    .bind(save.at)
                    .bind(&save.author),
            )
            .await?;
        let Some(row) = rows.first() else {
            drop(tx);
            return Ok(SaveOutcome::Stale(self.postmortem(save.incident_id).await?));
        };
        let saved = postmortem_row(row)?;
        tx.execute(
            q("INSERT INTO postmortem_revisions (incident_id, revision, kind, status, markdown, author, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(saved.incident_id)
            .bind(saved.revision)
            .bind(&save.kind)
            .bind(&saved.status)
            .bind(&saved.markdown)
            .bind(&save.author)
            .bind(save.at),
        )
        .await?;
        tx.commit().await?;
        Ok(SaveOutcome::Saved(saved))
    }

    async fn postmortem_revisions(&self, incident_id: i64) -> Result<Vec<RevisionRow>> {
        let rows = self
            .d
            .read(
                q("SELECT revision, kind, status, author, created_at, markdown FROM postmortem_revisions
                   WHERE incident_id = $1 ORDER BY revision")
                .bind(incident_id),
            )
            .await?;
        decode(&rows, |r| {
            Ok(from_row!(r => RevisionRow {
                revision: int, kind: text, status: text, author: text, created_at: time,
                markdown: text,
            }))
        })
    }

    async fn incidents_needing_postmortem(&self, limit: i64) -> Result<Vec<i64>> {
        let rows = self
            .d
            .read(
                q("SELECT i.id FROM incidents i
                   WHERE i.status = 'resolved'
                     AND NOT EXISTS (SELECT 1 FROM postmortems p WHERE p.incident_id = i.id)
                   ORDER BY i.id LIMIT $1")
                .bind(limit),
            )
            .await?;
        decode(&rows, |r| r.int("id"))
    }

    async fn note_presence(&self, presence: &Presence<'_>) -> Result<Vec<String>> {
        let p = presence;
        let mut tx = self.d.begin().await?;
        tx.execute(q("DELETE FROM presence WHERE seen_at < $1").bind(p.since))
            .await?;
        let updated = tx
            .execute(
                q("UPDATE presence SET seen_at = $3 WHERE incident_id = $1 AND who = $2")
                    .bind(p.incident)
                    .bind(p.who)
                    .bind(p.now),
            )
            .await?;
        if updated == 0 {
            let rows = tx.fetch(q("SELECT count(*) AS n FROM presence")).await?;
            let n = rows.first().map(|r| r.int("n")).transpose()?.unwrap_or(0);
            if n < p.max_rows {
                tx.execute(
                    q(
                        "INSERT INTO presence (incident_id, who, seen_at) VALUES ($1, $2, $3)
                       ON CONFLICT (incident_id, who) DO UPDATE SET seen_at = excluded.seen_at",
                    )
                    .bind(p.incident)
                    .bind(p.who)
                    .bind(p.now),
                )
                .await?;
            }
        }
        let others = tx
            .fetch(
                q("SELECT who FROM presence WHERE incident_id = $1 AND who <> $2 AND seen_at >= $3
                   ORDER BY who")
                .bind(p.incident)
                .bind(p.who)
                .bind(p.since),
            )
            .await?;
        let others = others
            .iter()
            .map(|r| r.text("who"))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(others)
    }
}
