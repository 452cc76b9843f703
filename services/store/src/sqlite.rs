//! SQLite (WAL): the embedded default. One writer connection (SQLite has one
//! writer per file anyway, and queuing in the pool beats SQLITE_BUSY), several
//! readers. Times are stored as INTEGER microseconds since the epoch. Batches
//! are passed as one JSON array and expanded with `json_each`, so a batch is one
//! statement: sqlx hands every SQLite statement to a worker thread, and a hop per
//! row would cost more than the insert itself.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::correlation::{IncidentHead, IncidentStatus, NewIncident};
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{AlertEvent, DeployEvent, DeployStatus, GateResult, GateVerdict, LogLine};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use crate::migrate::{self, CREATE_TABLE};
use crate::remediation::{json_text, parse_json, parse_labels, parse_status};
use crate::{
    labels_json, timeline_row, translate, ActionChange, ActionFilter, ActionRow, ActionStatus,
    AuditFilter, AuditRow, FlagRow, History, IncidentAlertRow, IncidentDetail, IncidentFilter,
    IncidentRow, LogRow, NewAction, NewAudit, OpenIncident, PostmortemRow, PostmortemSave, Result,
    RevisionRow, SaveOutcome, Store, StoreError, StoreTx, TimelineEvent, TimelineRow,
};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
}

/// Copies the WAL into the database file every half second (PASSIVE: never
/// waits for or blocks the writer), and truncates the WAL when it grew large.
async fn checkpoint_loop(pool: SqlitePool) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if pool.is_closed() {
            return;
        }
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok((_, log, done)) if log > 0 && log == done && log > 20_000 => {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&pool)
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "background WAL checkpoint did not run"),
        }
    }
}

/// Connection options shared by the store and the embedded queue: WAL, full
/// fsync on commit (an acknowledged write survives power loss), a busy timeout.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(translate)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<SqliteStore> {
        let options = connect_options(url)?;
        // The writer never checkpoints: a checkpoint (with its fsync of the
        // database file) would stall every write queued behind it. A separate
        // connection checkpoints in the background instead.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(translate)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(translate)?;
        tokio::spawn(checkpoint_loop(checkpointer.clone()));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(translate)?;
        Ok(SqliteStore {
            writer,
            reader,
            checkpointer,
        })
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn opt_time(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.map(time)
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

const INCIDENT_COLUMNS: &str =
    "id, status, service, environment, title, severity, group_key, opened_at, resolved_at";

fn incident_row(row: &SqliteRow) -> Result<IncidentRow, sqlx::Error> {
    Ok(IncidentRow {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        title: row.try_get("title")?,
        severity: row.try_get("severity")?,
        group_key: row.try_get("group_key")?,
        opened_at: time(row.try_get("opened_at")?),
        resolved_at: opt_time(row.try_get("resolved_at")?),
    })
}

const DEPLOY_COLUMNS: &str =
    "d.id, d.service, d.environment, d.version, d.previous_version, d.status, d.strategy, \
     d.step, d.started_at, d.finished_at, d.commit_sha, d.url, d.actor, d.flags";

fn deploy_row(row: &SqliteRow) -> Result<DeployEvent, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let strategy: Option<String> = row.try_get("strategy")?;
    let flags: String = row.try_get("flags")?;
    Ok(DeployEvent {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        version: row.try_get("version")?,
        previous_version: row.try_get("previous_version")?,
        status: DeployStatus::parse(&status).unwrap_or(DeployStatus::Succeeded),
        strategy: strategy.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()),
        step: row.try_get("step")?,
        started_at: time(row.try_get("started_at")?),
        finished_at: opt_time(row.try_get("finished_at")?),
        commit: row.try_get("commit_sha")?,
        url: row.try_get("url")?,
        actor: row.try_get("actor")?,
        flags: serde_json::from_str(&flags).unwrap_or_default(),
    })
}

const GATE_COLUMNS: &str =
    "g.id, g.service, g.environment, g.version, g.deploy_id, g.gate, g.metric, g.comparison, \
     g.threshold, g.baseline, g.observed, g.window_text, g.step, g.verdict, g.evaluated_at";

fn gate_row(row: &SqliteRow) -> Result<GateResult, sqlx::Error> {
    let verdict: String = row.try_get("verdict")?;
    Ok(GateResult {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        version: row.try_get("version")?,
        deploy_id: row.try_get("deploy_id")?,
        gate: row.try_get("gate")?,
        metric: row.try_get("metric")?,
        comparison: row.try_get("comparison")?,
        threshold: row.try_get("threshold")?,
        baseline: row.try_get("baseline")?,
        observed: row.try_get("observed")?,
        window: row.try_get("window_text")?,
        step: row.try_get("step")?,
        verdict: serde_json::from_value(serde_json::Value::String(verdict))
            .unwrap_or(GateVerdict::Inconclusive),
        evaluated_at: time(row.try_get("evaluated_at")?),
    })
}

const ACTION_COLUMNS: &str =
    "id, dedupe_key, playbook, playbook_version, step_index, kind, target, \
     incident_id, trigger_id, status, reason, spec, previous_state, result, attempts, decided_by, \
     created_at, updated_at, not_before, lease_until";

fn opt_json(s: Option<String>) -> Result<Option<serde_json::Value>, sqlx::Error> {
    s.map(|s| parse_json(&s)).transpose()
}

fn action_row(row: &SqliteRow) -> Result<ActionRow, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    Ok(ActionRow {
        id: row.try_get("id")?,
        dedupe_key: row.try_get("dedupe_key")?,
        playbook: row.try_get("playbook")?,
        playbook_version: row.try_get("playbook_version")?,
        step_index: row.try_get("step_index")?,
        kind: row.try_get("kind")?,
        target: row.try_get("target")?,
        incident_id: row.try_get("incident_id")?,
        trigger_id: row.try_get("trigger_id")?,
        status: parse_status(&status)?,
        reason: row.try_get("reason")?,
        spec: parse_json(&spec)?,
        previous_state: opt_json(row.try_get("previous_state")?)?,
        result: opt_json(row.try_get("result")?)?,
        attempts: row.try_get("attempts")?,
        decided_by: row.try_get("decided_by")?,
        created_at: time(row.try_get("created_at")?),
        updated_at: time(row.try_get("updated_at")?),
        not_before: time(row.try_get("not_before")?),
        lease_until: opt_time(row.try_get("lease_until")?),
    })
}

fn audit_row(row: &SqliteRow) -> Result<AuditRow, sqlx::Error> {
    let detail: String = row.try_get("detail")?;
    Ok(AuditRow {
        id: row.try_get("id")?,
        entry: NewAudit {
            at: time(row.try_get("at")?),
            actor: row.try_get("actor")?,
            event: row.try_get("event")?,
            action_id: row.try_get("action_id")?,
            incident_id: row.try_get("incident_id")?,
            playbook: row.try_get("playbook")?,
            playbook_version: row.try_get("playbook_version")?,
            detail: parse_json(&detail)?,
        },
    })
}

fn flag_row(row: &SqliteRow) -> Result<FlagRow, sqlx::Error> {
    Ok(FlagRow {
        key: row.try_get("key")?,
        enabled: row.try_get("enabled")?,
        description: row.try_get("description")?,
        updated_at: time(row.try_get("updated_at")?),
        updated_by: row.try_get("updated_by")?,
    })
}

fn history_alert(row: &SqliteRow) -> Result<(Option<i64>, AlertEvent), sqlx::Error> {
    let status: String = row.try_get("status")?;
    let labels: String = row.try_get("labels")?;
    let annotations: String = row.try_get("annotations")?;
    let truncated: i64 = row.try_get("truncated_alerts")?;
    Ok((
        row.try_get("incident_id")?,
        AlertEvent {
            id: row.try_get("id")?,
            fingerprint: row.try_get("fingerprint")?,
            status: if status == "resolved" {
                firebreak_domain::alertmanager::AlertStatus::Resolved
            } else {
                firebreak_domain::alertmanager::AlertStatus::Firing
            },
            labels: parse_labels(&labels)?,
            annotations: parse_labels(&annotations)?,
            starts_at: time(row.try_get("starts_at")?),
            ends_at: opt_time(row.try_get("ends_at")?),
            generator_url: row.try_get("generator_url")?,
            truncated_alerts: u64::try_from(truncated).unwrap_or(0),
            receiver: String::new(),
        },
    ))
}

async fn write_audit(conn: &mut SqliteConnection, rows: &[NewAudit]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO audit (at, actor, event, action_id, incident_id, playbook, playbook_version, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(micros(r.at))
        .bind(&r.actor)
        .bind(&r.event)
        .bind(r.action_id)
        .bind(r.incident_id)
        .bind(&r.playbook)
        .bind(&r.playbook_version)
        .bind(json_text(&r.detail))
        .execute(&mut *conn)
        .await
        .map_err(translate)?;
    }
    Ok(())
}

async fn write_timeline(conn: &mut SqliteConnection, entries: &[NewEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.incident_id,
                micros(e.at),
                e.kind,
                &e.source,
                &e.summary,
                &e.ref_id,
            )
        })
        .collect();
    sqlx::query(
        "INSERT INTO timeline (incident_id, at, kind, source, summary, ref_id)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
         FROM json_each(?1) WHERE true
         ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
    )
    .bind(json_list(&rows))
    .execute(&mut *conn)
    .await
    .map_err(translate)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.writer.acquire().await.map_err(translate)?;
        apply_migrations(&mut conn).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let tx = self.writer.begin().await.map_err(translate)?;
        Ok(Box::new(SqliteTx { tx }))
    }

    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRow>> {
        let sql = format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR service = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(&filter.status)
            .bind(&filter.service)
            .bind(filter.before_id)
            .bind(filter.limit)
            .fetch_all(&self.reader)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(incident_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn incident(&self, id: i64) -> Result<IncidentDetail> {
        let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)?;
        let incident = incident_row(&row.ok_or(StoreError::NotFound)?).map_err(translate)?;
        let alerts = sqlx::query(
            "SELECT fingerprint, alertname, status, labels, starts_at, ends_at FROM incident_alerts
             WHERE incident_id = ?1 ORDER BY starts_at, fingerprint",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(|r| {
            let labels: String = r.try_get("labels")?;
            Ok(IncidentAlertRow {
                fingerprint: r.try_get("fingerprint")?,
                alertname: r.try_get("alertname")?,
                status: r.try_get("status")?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                starts_at: time(r.try_get("starts_at")?),
                ends_at: opt_time(r.try_get("ends_at")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(translate)?;
        let changes = sqlx::query(&format!(
            "SELECT {DEPLOY_COLUMNS} FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
             WHERE c.incident_id = ?1 ORDER BY d.started_at DESC"
        ))
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(deploy_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(translate)?;
        let gates = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM incident_gates ig JOIN gate_results g ON g.id = ig.gate_id
             WHERE ig.incident_id = ?1 ORDER BY g.evaluated_at"
        ))
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(gate_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(translate)?;
        let timeline_entries: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM timeline WHERE incident_id = ?1)
                  + (SELECT count(*) FROM alert_events WHERE incident_id = ?1)",
        )
        .bind(id)
        .fetch_one(&self.reader)
        .await
        .map_err(translate)?;
        Ok(IncidentDetail {
            incident,
            alerts,
            changes,
            gates,
            timeline_entries,
        })
    }

    async fn timeline(
        &self,
        incident_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TimelineRow>> {
        // Alert entries come from the alert events themselves; at equal times an
        // alert sorts before what it caused (seq 0 before any stored entry).
        let rows = sqlx::query(
            "SELECT at, seq, kind, source, summary, ref_id, alertname, note FROM (
                SELECT occurred_at AS at, 0 AS seq, status AS kind, 'alertmanager' AS source,
                       NULL AS summary, id AS ref_id, alertname, annotations ->> '$.summary' AS note
                FROM alert_events WHERE incident_id = ?1
                UNION ALL
                SELECT at, id, kind, source, summary, ref_id, NULL, NULL FROM timeline WHERE incident_id = ?1
             ) ORDER BY at, seq, ref_id LIMIT ?2 OFFSET ?3",
        )
        .bind(incident_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                timeline_row(
                    time(r.try_get("at")?),
                    r.try_get("seq")?,
                    r.try_get("kind")?,
                    r.try_get("source")?,
                    r.try_get("summary")?,
                    r.try_get("ref_id")?,
                    r.try_get("alertname")?,
                    r.try_get("note")?,
                )
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(translate)
    }

    async fn event_counts(&self) -> Result<[i64; 4]> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM alert_events), (SELECT count(*) FROM deploys),
                    (SELECT count(*) FROM gate_results), (SELECT count(*) FROM log_lines)",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(translate)?;
        Ok([
            row.try_get(0).map_err(translate)?,
            row.try_get(1).map_err(translate)?,
            row.try_get(2).map_err(translate)?,
            row.try_get(3).map_err(translate)?,
        ])
    }

    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<(ActionRow, bool)>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let found: Option<(i64, String)> = sqlx::query_as(
            "SELECT a.id, a.status FROM actions a
             WHERE ((a.status = 'pending' AND a.not_before <= ?1)
                    OR (a.status = 'running' AND a.lease_until < ?1))
               AND NOT EXISTS (SELECT 1 FROM actions r
                               WHERE r.target = a.target AND r.status = 'running' AND r.id <> a.id)
             ORDER BY a.id LIMIT 1",
        )
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(translate)?;
        let Some((id, was)) = found else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "UPDATE actions SET status = 'running', attempts = attempts + 1, lease_until = ?2, updated_at = ?3
             WHERE id = ?1 RETURNING {ACTION_COLUMNS}"
        ))
        .bind(id)
        .bind(micros(lease_until))
        .bind(micros(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(translate)?;
        let action = action_row(&row).map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        Ok(Some((action, was == "running")))
    }

    async fn transition_action(
        &self,
        id: i64,
        from: &[ActionStatus],
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE actions SET status = ?3, updated_at = ?4,
                 reason = COALESCE(?5, reason), result = COALESCE(?6, result),
                 previous_state = COALESCE(?7, previous_state), decided_by = COALESCE(?8, decided_by),
                 not_before = COALESCE(?9, not_before),
                 lease_until = CASE WHEN ?3 = 'running' THEN lease_until ELSE NULL END
             WHERE id = ?1 AND status IN (SELECT value FROM json_each(?2))
             RETURNING {ACTION_COLUMNS}"
        ))
        .bind(id)
        .bind(json_list(&from))
        .bind(change.status.as_str())
        .bind(micros(change.at))
        .bind(&change.reason)
        .bind(change.result.as_ref().map(json_text))
        .bind(change.previous_state.as_ref().map(json_text))
        .bind(&change.decided_by)
        .bind(change.not_before.map(micros))
        .fetch_optional(&mut *tx)
        .await
        .map_err(translate)?;
        let Some(row) = row else { return Ok(None) };
        let action = action_row(&row).map_err(translate)?;
        write_audit(&mut tx, audit).await?;
        write_timeline(&mut tx, timeline).await?;
        tx.commit().await.map_err(translate)?;
        Ok(Some(action))
    }

    async fn action(&self, id: i64) -> Result<ActionRow> {
        let row = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE id = ?1"
        ))
        .bind(id)
        .fetch_one(&self.reader)
        .await
        .map_err(translate)?;
        action_row(&row).map_err(translate)
    }

    async fn list_actions(&self, f: &ActionFilter) -> Result<Vec<ActionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions
             WHERE (?1 IS NULL OR incident_id = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        ))
        .bind(f.incident_id)
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.since.map(micros))
        .bind(f.before_id)
        .bind(f.limit)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(action_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, event, action_id, incident_id, playbook, playbook_version, detail
             FROM audit
             WHERE (?1 IS NULL OR action_id = ?1) AND (?2 IS NULL OR incident_id = ?2)
               AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(f.action_id)
        .bind(f.incident_id)
        .bind(f.before_id)
        .bind(f.limit)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(audit_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn record(&self, audit: &[NewAudit], timeline: &[NewEntry]) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        write_audit(&mut tx, audit).await?;
        write_timeline(&mut tx, timeline).await?;
        tx.commit().await.map_err(translate)
    }

    async fn list_flags(&self) -> Result<Vec<FlagRow>> {
        let rows = sqlx::query(
            "SELECT key, enabled, description, updated_at, updated_by FROM flags ORDER BY key",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(flag_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn flag(&self, key: &str) -> Result<FlagRow> {
        let row = sqlx::query(
            "SELECT key, enabled, description, updated_at, updated_by FROM flags WHERE key = ?1",
        )
        .bind(key)
        .fetch_one(&self.reader)
        .await
        .map_err(translate)?;
        flag_row(&row).map_err(translate)
    }

    async fn set_flag(
        &self,
        key: &str,
        enabled: bool,
        description: Option<&str>,
        by: &str,
        audit: &NewAudit,
    ) -> Result<Option<bool>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let previous: Option<bool> = sqlx::query_scalar("SELECT enabled FROM flags WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?;
        sqlx::query(
            "INSERT INTO flags (key, enabled, description, updated_at, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET enabled = ?2,
                 description = COALESCE(?3, flags.description), updated_at = ?4, updated_by = ?5",
        )
        .bind(key)
        .bind(enabled)
        .bind(description)
        .bind(micros(audit.at))
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await.map_err(translate)?;
        Ok(previous)
    }

    async fn delete_flag(&self, key: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let n = sqlx::query("DELETE FROM flags WHERE key = ?1")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(translate)?
            .rows_affected();
        if n > 0 {
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await.map_err(translate)?;
        Ok(n > 0)
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)
    }

    async fn set_setting(&self, key: &str, value: &str, audit: &NewAudit) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET value = ?2, updated_at = ?3, updated_by = ?4",
        )
        .bind(key)
        .bind(value)
        .bind(micros(audit.at))
        .bind(&audit.actor)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await.map_err(translate)
    }

    async fn history_since(&self, since: DateTime<Utc>) -> Result<History> {
        let rows = sqlx::query(
            "SELECT id, incident_id, fingerprint, status, labels, annotations, starts_at, ends_at,
                    generator_url, truncated_alerts
             FROM alert_events WHERE occurred_at >= ?1 ORDER BY occurred_at, id",
        )
        .bind(micros(since))
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        let mut alerts = Vec::with_capacity(rows.len());
        for row in &rows {
            alerts.push(history_alert(row).map_err(translate)?);
        }
        let deploys = sqlx::query(&format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys d WHERE d.started_at >= ?1 ORDER BY d.started_at"
        ))
        .bind(micros(since - chrono::Duration::days(30)))
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(deploy_row)
        .collect::<Result<_, _>>()
        .map_err(translate)?;
        let gates = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM gate_results g WHERE g.evaluated_at >= ?1 ORDER BY g.evaluated_at"
        ))
        .bind(micros(since))
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(gate_row)
        .collect::<Result<_, _>>()
        .map_err(translate)?;
        Ok(History {
            alerts,
            deploys,
            gates,
        })
    }

    async fn resolve_incident_manually(
        &self,
        id: i64,
        at: DateTime<Utc>,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let n = sqlx::query(
            "UPDATE incidents SET status = 'resolved', resolved_at = ?2,
                 updated_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE id = ?1 AND status = 'open'",
        )
        .bind(id)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(translate)?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        write_timeline(&mut tx, timeline).await?;
        tx.commit().await.map_err(translate)?;
        Ok(true)
    }

    async fn claim_slack_message(
        &self,
        seq: i64,
        incident_id: i64,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO slack_messages (seq, incident_id, claimed_at) VALUES (?1, ?2, ?3) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seq)
        .bind(incident_id)
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(translate)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn slack_message_posted(&self, seq: i64, channel: &str, ts: &str) -> Result<()> {
        sqlx::query("UPDATE slack_messages SET channel = ?2, ts = ?3 WHERE seq = ?1")
            .bind(seq)
            .bind(channel)
            .bind(ts)
            .execute(&self.writer)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn release_slack_message(&self, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM slack_messages WHERE seq = ?1 AND ts IS NULL")
            .bind(seq)
            .execute(&self.writer)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn slack_thread(&self, incident_id: i64) -> Result<Option<(String, String)>> {
        sqlx::query_as(
            "SELECT channel, ts FROM slack_messages WHERE incident_id = ?1 AND ts IS NOT NULL ORDER BY seq LIMIT 1",
        )
        .bind(incident_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(translate)
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at, updated_by)
             VALUES (?1, ?2, CAST(unixepoch('subsec') * 1000000 AS INTEGER), 'firebreak')
             ON CONFLICT (key) DO UPDATE SET value = ?2, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn timeline_since(
        &self,
        after_seq: i64,
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<TimelineEvent>> {
        let rows = sqlx::query(
            "SELECT id, incident_id, at, kind, source, summary, ref_id FROM timeline
             WHERE id > ?1 AND kind IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3",
        )
        .bind(after_seq)
        .bind(json_list(kinds))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| -> Result<TimelineEvent, sqlx::Error> {
                Ok(TimelineEvent {
                    seq: r.try_get("id")?,
                    incident_id: r.try_get("incident_id")?,
                    at: time(r.try_get("at")?),
                    kind: r.try_get("kind")?,
                    source: r.try_get("source")?,
                    summary: r.try_get("summary")?,
                    ref_id: r.try_get("ref_id")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn postmortem(&self, incident_id: i64) -> Result<Option<PostmortemRow>> {
        let row = sqlx::query(
            "SELECT incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by
             FROM postmortems WHERE incident_id = ?1",
        )
        .bind(incident_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(translate)?;
        row.map(|r| postmortem_row(&r))
            .transpose()
            .map_err(translate)
    }

    async fn save_postmortem(&self, save: &PostmortemSave) -> Result<SaveOutcome> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let row = match save.expected_revision {
            None => sqlx::query(
                "INSERT INTO postmortems (incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by)
                 VALUES (?1, 1, ?2, ?3, COALESCE(?4, ''), ?5, ?5, ?6)
                 ON CONFLICT (incident_id) DO NOTHING
                 RETURNING incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by",
            )
            .bind(save.incident_id)
            .bind(&save.status)
            .bind(&save.markdown)
            .bind(&save.generated)
            .bind(micros(save.at))
            .bind(&save.author)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?,
            Some(expected) => sqlx::query(
                "UPDATE postmortems SET revision = revision + 1, status = ?3, markdown = ?4,
                     generated = COALESCE(?5, generated), updated_at = ?6, updated_by = ?7
                 WHERE incident_id = ?1 AND revision = ?2
                 RETURNING incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by",
            )
            .bind(save.incident_id)
            .bind(expected)
            .bind(&save.status)
            .bind(&save.markdown)
            .bind(&save.generated)
            .bind(micros(save.at))
            .bind(&save.author)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?,
        };
        let Some(row) = row else {
            drop(tx);
            return Ok(SaveOutcome::Stale(self.postmortem(save.incident_id).await?));
        };
        let saved = postmortem_row(&row).map_err(translate)?;
        sqlx::query(
            "INSERT INTO postmortem_revisions (incident_id, revision, kind, status, markdown, author, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(saved.incident_id)
        .bind(saved.revision)
        .bind(&save.kind)
        .bind(&saved.status)
        .bind(&saved.markdown)
        .bind(&save.author)
        .bind(micros(save.at))
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        Ok(SaveOutcome::Saved(saved))
    }

    async fn postmortem_revisions(&self, incident_id: i64) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(
            "SELECT revision, kind, status, author, created_at, markdown FROM postmortem_revisions
             WHERE incident_id = ?1 ORDER BY revision",
        )
        .bind(incident_id)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| -> Result<RevisionRow, sqlx::Error> {
                Ok(RevisionRow {
                    revision: r.try_get("revision")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    author: r.try_get("author")?,
                    created_at: time(r.try_get("created_at")?),
                    markdown: r.try_get("markdown")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn incidents_needing_postmortem(&self, limit: i64) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT i.id FROM incidents i
             WHERE i.status = 'resolved' AND NOT EXISTS (SELECT 1 FROM postmortems p WHERE p.incident_id = i.id)
             ORDER BY i.id LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)
    }

    async fn scan_logs(
        &self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        each: &mut (dyn FnMut(LogRow) + Send),
    ) -> Result<u64> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query(
            "SELECT at, level, message FROM log_lines
             WHERE service = ?1 AND (?2 IS NULL OR environment IS NULL OR environment = ?2)
               AND at BETWEEN ?3 AND ?4
             ORDER BY at",
        )
        .bind(service)
        .bind(environment)
        .bind(micros(from))
        .bind(micros(to))
        .fetch(&self.reader);
        let mut n = 0;
        while let Some(row) = rows.try_next().await.map_err(translate)? {
            each(LogRow {
                at: time(row.try_get("at").map_err(translate)?),
                level: row.try_get("level").map_err(translate)?,
                message: row.try_get("message").map_err(translate)?,
            });
            n += 1;
        }
        Ok(n)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        self.checkpointer.close().await;
    }
}

async fn apply_migrations(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    sqlx::query(CREATE_TABLE)
        .execute(&mut *conn)
        .await
        .map_err(translate)?;
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, checksum FROM firebreak_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(translate)?;
    for m in migrate::pending(migrate::SQLITE, &applied)? {
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(translate)?;
        sqlx::Executor::execute(&mut *tx, m.sql)
            .await
            .map_err(|e| {
                StoreError::Migration(format!("migration {} ({}) failed: {e}", m.version, m.name))
            })?;
        sqlx::query(
            "INSERT INTO firebreak_migrations (version, name, checksum) VALUES (?1, ?2, ?3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(m.checksum())
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn lock_groups(&mut self, _keys: &[i64]) -> Result<()> {
        // The single writer connection already serializes every write transaction.
        Ok(())
    }

    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM alert_events WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(rows.into_iter().collect())
    }

    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>> {
        let rows = sqlx::query(
            "SELECT id, group_key, status, resolved_at FROM incidents WHERE id IN (
                SELECT max(id) FROM incidents WHERE group_key IN (SELECT value FROM json_each(?1)) GROUP BY group_key)",
        )
        .bind(json_list(group_keys))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(IncidentHead {
                    id: r.try_get("id")?,
                    group_key: r.try_get("group_key")?,
                    status: IncidentStatus::parse(&status).unwrap_or(IncidentStatus::Open),
                    resolved_at: opt_time(r.try_get("resolved_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(translate)
    }

    async fn open_incidents(&mut self, incidents: &[NewIncident]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(incidents.len());
        for inc in incidents {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO incidents (group_key, service, environment, title, severity, status, opened_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6) RETURNING id",
            )
            .bind(&inc.group.key)
            .bind(&inc.group.service)
            .bind(&inc.group.environment)
            .bind(&inc.title)
            .bind(&inc.severity)
            .bind(micros(inc.opened_at))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(translate)?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn reopen_incidents(&mut self, ids: &[i64]) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET status = 'open', resolved_at = NULL,
                    updated_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'resolved'",
        )
        .bind(json_list(ids))
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = alerts
            .iter()
            .map(|(incident, a)| {
                (
                    &a.id,
                    incident,
                    &a.fingerprint,
                    a.status.as_str(),
                    a.alertname(),
                    labels_json(&a.labels),
                    labels_json(&a.annotations),
                    micros(a.starts_at),
                    a.ends_at.map(micros),
                    micros(a.occurred_at()),
                    &a.generator_url,
                    i64::try_from(a.truncated_alerts).unwrap_or(i64::MAX),
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO alert_events (id, incident_id, fingerprint, status, alertname, labels, annotations,
                                       starts_at, ends_at, occurred_at, generator_url, truncated_alerts)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
                    value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(json_list(&rows))
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = alerts
            .iter()
            .map(|(incident, a)| {
                (
                    incident,
                    &a.fingerprint,
                    a.alertname(),
                    labels_json(&a.labels),
                    a.status.as_str(),
                    micros(a.starts_at),
                    a.ends_at.map(micros),
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO incident_alerts (incident_id, fingerprint, alertname, labels, status, starts_at, ends_at)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6
             FROM json_each(?1) WHERE true
             ON CONFLICT (incident_id, fingerprint) DO UPDATE
             SET status = excluded.status, starts_at = excluded.starts_at, ends_at = excluded.ends_at,
                 labels = excluded.labels
             WHERE excluded.starts_at > incident_alerts.starts_at
                OR (excluded.starts_at = incident_alerts.starts_at AND excluded.status = 'resolved')",
        )
        .bind(json_list(&rows))
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        if deploys.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<_> = deploys
            .iter()
            .map(|d| {
                let strategy = d
                    .strategy
                    .and_then(|s| serde_json::to_value(s).ok())
                    .and_then(|v| v.as_str().map(String::from));
                (
                    (
                        &d.id,
                        &d.service,
                        &d.environment,
                        &d.version,
                        &d.previous_version,
                        d.status.as_str(),
                        strategy,
                    ),
                    (
                        &d.step,
                        micros(d.started_at),
                        d.finished_at.map(micros),
                        &d.commit,
                        &d.url,
                        &d.actor,
                    ),
                    json_list(&d.flags),
                )
            })
            .collect();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO deploys (id, service, environment, version, previous_version, status, strategy, step,
                                  started_at, finished_at, commit_sha, url, actor, flags)
             SELECT value ->> '$[0][0]', value ->> '$[0][1]', value ->> '$[0][2]', value ->> '$[0][3]',
                    value ->> '$[0][4]', value ->> '$[0][5]', value ->> '$[0][6]', value ->> '$[1][0]',
                    value ->> '$[1][1]', value ->> '$[1][2]', value ->> '$[1][3]', value ->> '$[1][4]',
                    value ->> '$[1][5]', value ->> 2
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(json_list(&rows))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(ids.into_iter().collect())
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        if gates.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<_> = gates
            .iter()
            .map(|g| {
                (
                    (
                        &g.id,
                        &g.service,
                        &g.environment,
                        &g.version,
                        &g.deploy_id,
                        &g.gate,
                        &g.metric,
                        &g.comparison,
                    ),
                    (
                        g.threshold,
                        g.baseline,
                        g.observed,
                        &g.window,
                        &g.step,
                        g.verdict.as_str(),
                        micros(g.evaluated_at),
                    ),
                )
            })
            .collect();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO gate_results (id, service, environment, version, deploy_id, gate, metric, comparison,
                                       threshold, baseline, observed, window_text, step, verdict, evaluated_at)
             SELECT value ->> '$[0][0]', value ->> '$[0][1]', value ->> '$[0][2]', value ->> '$[0][3]',
                    value ->> '$[0][4]', value ->> '$[0][5]', value ->> '$[0][6]', value ->> '$[0][7]',
                    value ->> '$[1][0]', value ->> '$[1][1]', value ->> '$[1][2]', value ->> '$[1][3]',
                    value ->> '$[1][4]', value ->> '$[1][5]', value ->> '$[1][6]'
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(json_list(&rows))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(ids.into_iter().collect())
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let rows: Vec<_> = lines
            .iter()
            .map(|l| {
                (
                    &l.id,
                    &l.service,
                    &l.environment,
                    micros(l.at),
                    &l.level,
                    &l.message,
                    labels_json(&l.labels),
                )
            })
            .collect();
        let done = sqlx::query(
            "INSERT INTO log_lines (id, service, environment, at, level, message, labels)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(json_list(&rows))
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(done.rows_affected())
    }

    async fn deploys_between(
        &mut self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DeployEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys d
             WHERE d.service = ?1 AND (?2 IS NULL OR d.environment IS NULL OR d.environment = ?2)
               AND d.started_at BETWEEN ?3 AND ?4
             ORDER BY d.started_at"
        ))
        .bind(service)
        .bind(environment)
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(deploy_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn gates_between(
        &mut self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<GateResult>> {
        let rows = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM gate_results g
             WHERE g.service = ?1 AND (?2 IS NULL OR g.environment IS NULL OR g.environment = ?2)
               AND g.evaluated_at BETWEEN ?3 AND ?4
             ORDER BY g.evaluated_at"
        ))
        .bind(service)
        .bind(environment)
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(gate_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn open_incidents_for(&mut self, services: &[String]) -> Result<Vec<OpenIncident>> {
        let rows = sqlx::query(
            "SELECT id, service, environment, opened_at FROM incidents
             WHERE status = 'open' AND service IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(services))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                Ok(OpenIncident {
                    id: r.try_get("id")?,
                    service: r.try_get("service")?,
                    environment: r.try_get("environment")?,
                    opened_at: time(r.try_get("opened_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(translate)
    }

    async fn find_deploy(
        &mut self,
        service: &str,
        environment: Option<&str>,
        version: &str,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT id FROM deploys WHERE service = ?1 AND version = ?3
               AND (?2 IS NULL OR environment IS NULL OR environment = ?2)
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(service)
        .bind(environment)
        .bind(version)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>> {
        sqlx::query_as(
            "SELECT incident_id, deploy_id FROM incident_changes
             WHERE deploy_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(deploy_ids))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn attach_changes(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "INSERT INTO incident_changes (incident_id, deploy_id)
             SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
             ON CONFLICT DO NOTHING RETURNING incident_id, deploy_id",
        )
        .bind(json_list(pairs))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "INSERT INTO incident_gates (incident_id, gate_id)
             SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
             ON CONFLICT DO NOTHING RETURNING incident_id, gate_id",
        )
        .bind(json_list(pairs))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
        write_timeline(&mut self.tx, entries).await
    }

    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, group_key, last_end FROM (
                 SELECT i.id, i.group_key,
                        (SELECT max(a.ends_at) FROM incident_alerts a WHERE a.incident_id = i.id) AS last_end
                 FROM incidents i
                 WHERE i.status = 'open'
                   AND NOT EXISTS (SELECT 1 FROM incident_alerts f WHERE f.incident_id = i.id AND f.status = 'firing')
             ) c WHERE last_end <= ?1",
        )
        .bind(micros(quiet_before))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(rows
            .into_iter()
            .map(|(id, key, at)| (id, key, time(at)))
            .collect())
    }

    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>> {
        let mut resolved = Vec::new();
        for (id, at) in incidents {
            let done: Option<i64> = sqlx::query_scalar(
                "UPDATE incidents SET status = 'resolved', resolved_at = ?2,
                        updated_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                 WHERE id = ?1 AND status = 'open'
                   AND NOT EXISTS (SELECT 1 FROM incident_alerts a WHERE a.incident_id = ?1 AND a.status = 'firing')
                 RETURNING id",
            )
            .bind(id)
            .bind(micros(*at))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(translate)?;
            resolved.extend(done);
        }
        Ok(resolved)
    }

    async fn insert_actions(&mut self, actions: &[NewAction]) -> Result<Vec<ActionRow>> {
        let mut out = Vec::new();
        for a in actions {
            let row = sqlx::query(&format!(
                "INSERT INTO actions (dedupe_key, playbook, playbook_version, step_index, kind, target,
                     incident_id, trigger_id, status, reason, spec, created_at, updated_at, not_before)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?12)
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
            .bind(a.status.as_str())
            .bind(&a.reason)
            .bind(json_text(&a.spec))
            .bind(micros(a.at))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(translate)?;
            if let Some(row) = row {
                out.push(action_row(&row).map_err(translate)?);
            }
        }
        Ok(out)
    }

    async fn actions_created_since(&mut self, since: DateTime<Utc>) -> Result<Vec<ActionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE created_at >= ?1 ORDER BY id"
        ))
        .bind(micros(since))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(action_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn tx_setting(&mut self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(translate)
    }

    async fn insert_audit(&mut self, rows: &[NewAudit]) -> Result<()> {
        write_audit(&mut self.tx, rows).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(translate)
    }
}

fn postmortem_row(r: &SqliteRow) -> Result<PostmortemRow, sqlx::Error> {
    Ok(PostmortemRow {
        incident_id: r.try_get("incident_id")?,
        revision: r.try_get("revision")?,
        status: r.try_get("status")?,
        markdown: r.try_get("markdown")?,
        generated: r.try_get("generated")?,
        created_at: time(r.try_get("created_at")?),
        updated_at: time(r.try_get("updated_at")?),
        updated_by: r.try_get("updated_by")?,
    })
}
