//! PostgreSQL: the production store. Batches go in as arrays (`UNNEST`), so a
//! thousand-alert delivery is a few statements, not a thousand.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::correlation::{IncidentHead, IncidentStatus, NewIncident};
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{AlertEvent, DeployEvent, DeployStatus, GateResult, GateVerdict, LogLine};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::migrate::{self, CREATE_TABLE};
use crate::remediation::parse_status;
use crate::{
    labels_json, timeline_row, translate, ActionChange, ActionFilter, ActionRow, ActionStatus,
    AuditFilter, AuditRow, FlagRow, History, IncidentAlertRow, IncidentDetail, IncidentFilter,
    IncidentRow, LogRow, NewAction, NewAudit, OpenIncident, PostmortemRow, PostmortemSave, Result,
    RevisionRow, SaveOutcome, Store, StoreError, StoreTx, TimelineEvent, TimelineRow,
};

/// Key for the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x0f1e_b4ea_0001;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(translate)?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const INCIDENT_COLUMNS: &str =
    "id, status, service, environment, title, severity, group_key, opened_at, resolved_at";

fn incident_row(row: &PgRow) -> Result<IncidentRow, sqlx::Error> {
    Ok(IncidentRow {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        title: row.try_get("title")?,
        severity: row.try_get("severity")?,
        group_key: row.try_get("group_key")?,
        opened_at: row.try_get("opened_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

const DEPLOY_COLUMNS: &str =
    "d.id, d.service, d.environment, d.version, d.previous_version, d.status, d.strategy, \
     d.step, d.started_at, d.finished_at, d.commit_sha, d.url, d.actor, d.flags::text AS flags";

fn deploy_row(row: &PgRow) -> Result<DeployEvent, sqlx::Error> {
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
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        commit: row.try_get("commit_sha")?,
        url: row.try_get("url")?,
        actor: row.try_get("actor")?,
        flags: serde_json::from_str(&flags).unwrap_or_default(),
    })
}

const GATE_COLUMNS: &str =
    "g.id, g.service, g.environment, g.version, g.deploy_id, g.gate, g.metric, g.comparison, \
     g.threshold, g.baseline, g.observed, g.window_text, g.step, g.verdict, g.evaluated_at";

fn gate_row(row: &PgRow) -> Result<GateResult, sqlx::Error> {
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
        evaluated_at: row.try_get("evaluated_at")?,
    })
}

const ACTION_COLUMNS: &str =
    "id, dedupe_key, playbook, playbook_version, step_index, kind, target, \
     incident_id, trigger_id, status, reason, spec, previous_state, result, attempts, decided_by, \
     created_at, updated_at, not_before, lease_until";

fn action_row(row: &PgRow) -> Result<ActionRow, sqlx::Error> {
    let status: String = row.try_get("status")?;
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
        spec: row.try_get("spec")?,
        previous_state: row.try_get("previous_state")?,
        result: row.try_get("result")?,
        attempts: row.try_get("attempts")?,
        decided_by: row.try_get("decided_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        not_before: row.try_get("not_before")?,
        lease_until: row.try_get("lease_until")?,
    })
}

fn audit_row(row: &PgRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: row.try_get("id")?,
        entry: NewAudit {
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            event: row.try_get("event")?,
            action_id: row.try_get("action_id")?,
            incident_id: row.try_get("incident_id")?,
            playbook: row.try_get("playbook")?,
            playbook_version: row.try_get("playbook_version")?,
            detail: row.try_get("detail")?,
        },
    })
}

fn flag_row(row: &PgRow) -> Result<FlagRow, sqlx::Error> {
    Ok(FlagRow {
        key: row.try_get("key")?,
        enabled: row.try_get("enabled")?,
        description: row.try_get("description")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

async fn write_audit(conn: &mut PgConnection, rows: &[NewAudit]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO audit (at, actor, event, action_id, incident_id, playbook, playbook_version, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.at)
        .bind(&r.actor)
        .bind(&r.event)
        .bind(r.action_id)
        .bind(r.incident_id)
        .bind(&r.playbook)
        .bind(&r.playbook_version)
        .bind(&r.detail)
        .execute(&mut *conn)
        .await
        .map_err(translate)?;
    }
    Ok(())
}

async fn write_timeline(conn: &mut PgConnection, entries: &[NewEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len();
    let (mut incidents, mut ats, mut kinds, mut sources, mut summaries, mut refs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in entries {
        incidents.push(e.incident_id);
        ats.push(e.at);
        kinds.push(e.kind);
        sources.push(e.source.as_str());
        summaries.push(e.summary.as_str());
        refs.push(e.ref_id.as_str());
    }
    sqlx::query(
        "INSERT INTO timeline (incident_id, at, kind, source, summary, ref_id)
         SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
    )
    .bind(incidents)
    .bind(ats)
    .bind(kinds)
    .bind(sources)
    .bind(summaries)
    .bind(refs)
    .execute(&mut *conn)
    .await
    .map_err(translate)?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(translate)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(translate)?;
        let outcome = apply_migrations(&mut conn).await;
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        outcome?;
        unlock.map_err(translate)?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let tx = self.pool.begin().await.map_err(translate)?;
        Ok(Box::new(PgTx { tx }))
    }

    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRow>> {
        let sql = format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR service = $2)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(&filter.status)
            .bind(&filter.service)
            .bind(filter.before_id)
            .bind(filter.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(incident_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn incident(&self, id: i64) -> Result<IncidentDetail> {
        let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?;
        let incident = incident_row(&row.ok_or(StoreError::NotFound)?).map_err(translate)?;
        let alerts = sqlx::query(
            "SELECT fingerprint, alertname, status, labels, starts_at, ends_at FROM incident_alerts
             WHERE incident_id = $1 ORDER BY starts_at, fingerprint",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?
        .iter()
        .map(|r| {
            Ok(IncidentAlertRow {
                fingerprint: r.try_get("fingerprint")?,
                alertname: r.try_get("alertname")?,
                status: r.try_get("status")?,
                labels: r.try_get("labels")?,
                starts_at: r.try_get("starts_at")?,
                ends_at: r.try_get("ends_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(translate)?;
        let changes = sqlx::query(&format!(
            "SELECT {DEPLOY_COLUMNS} FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
             WHERE c.incident_id = $1 ORDER BY d.started_at DESC"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?
        .iter()
        .map(deploy_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(translate)?;
        let gates = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM incident_gates ig JOIN gate_results g ON g.id = ig.gate_id
             WHERE ig.incident_id = $1 ORDER BY g.evaluated_at"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?
        .iter()
        .map(gate_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(translate)?;
        let timeline_entries: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM timeline WHERE incident_id = $1)
                  + (SELECT count(*) FROM alert_events WHERE incident_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
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
                SELECT occurred_at AS at, 0::bigint AS seq, status AS kind, 'alertmanager' AS source,
                       NULL::text AS summary, id AS ref_id, alertname, annotations ->> 'summary' AS note
                FROM alert_events WHERE incident_id = $1
                UNION ALL
                SELECT at, id, kind, source, summary, ref_id, NULL, NULL FROM timeline WHERE incident_id = $1
             ) t ORDER BY at, seq, ref_id LIMIT $2 OFFSET $3",
        )
        .bind(incident_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                timeline_row(
                    r.try_get("at")?,
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
        .fetch_one(&self.pool)
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
        let row = sqlx::query(&format!(
            "WITH c AS (
                SELECT a.id, a.status AS was FROM actions a
                WHERE ((a.status = 'pending' AND a.not_before <= $1)
                       OR (a.status = 'running' AND a.lease_until < $1))
                  AND NOT EXISTS (SELECT 1 FROM actions r
                                  WHERE r.target = a.target AND r.status = 'running' AND r.id <> a.id)
                ORDER BY a.id LIMIT 1
                FOR UPDATE OF a SKIP LOCKED)
             UPDATE actions SET status = 'running', attempts = attempts + 1, lease_until = $2, updated_at = $1
             FROM c WHERE actions.id = c.id
             RETURNING {}, c.was",
            ACTION_COLUMNS
                .split(", ")
                .map(|c| format!("actions.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(now)
        .bind(lease_until)
        .fetch_optional(&self.pool)
        .await
        .map_err(translate)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let was: String = row.try_get("was").map_err(translate)?;
                Ok(Some((
                    action_row(&row).map_err(translate)?,
                    was == "running",
                )))
            }
        }
    }

    async fn transition_action(
        &self,
        id: i64,
        from: &[ActionStatus],
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE actions SET status = $3, updated_at = $4,
                 reason = COALESCE($5, reason), result = COALESCE($6, result),
                 previous_state = COALESCE($7, previous_state), decided_by = COALESCE($8, decided_by),
                 not_before = COALESCE($9, not_before),
                 lease_until = CASE WHEN $3 = 'running' THEN lease_until ELSE NULL END
             WHERE id = $1 AND status = ANY($2)
             RETURNING {ACTION_COLUMNS}"
        ))
        .bind(id)
        .bind(&from)
        .bind(change.status.as_str())
        .bind(change.at)
        .bind(&change.reason)
        .bind(&change.result)
        .bind(&change.previous_state)
        .bind(&change.decided_by)
        .bind(change.not_before)
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
            "SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(translate)?;
        action_row(&row).map_err(translate)
    }

    async fn list_actions(&self, f: &ActionFilter) -> Result<Vec<ActionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions
             WHERE ($1::bigint IS NULL OR incident_id = $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::bigint IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(f.incident_id)
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.since)
        .bind(f.before_id)
        .bind(f.limit)
        .fetch_all(&self.pool)
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
             WHERE ($1::bigint IS NULL OR action_id = $1) AND ($2::bigint IS NULL OR incident_id = $2)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(f.action_id)
        .bind(f.incident_id)
        .bind(f.before_id)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(audit_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn record(&self, audit: &[NewAudit], timeline: &[NewEntry]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        write_audit(&mut tx, audit).await?;
        write_timeline(&mut tx, timeline).await?;
        tx.commit().await.map_err(translate)
    }

    async fn list_flags(&self) -> Result<Vec<FlagRow>> {
        let rows = sqlx::query(
            "SELECT key, enabled, description, updated_at, updated_by FROM flags ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(flag_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn flag(&self, key: &str) -> Result<FlagRow> {
        let row = sqlx::query(
            "SELECT key, enabled, description, updated_at, updated_by FROM flags WHERE key = $1",
        )
        .bind(key)
        .fetch_one(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let previous: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM flags WHERE key = $1 FOR UPDATE")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(translate)?;
        sqlx::query(
            "INSERT INTO flags (key, enabled, description, updated_at, updated_by)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE SET enabled = $2,
                 description = COALESCE($3, flags.description), updated_at = $4, updated_by = $5",
        )
        .bind(key)
        .bind(enabled)
        .bind(description)
        .bind(audit.at)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await.map_err(translate)?;
        Ok(previous)
    }

    async fn delete_flag(&self, key: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let n = sqlx::query("DELETE FROM flags WHERE key = $1")
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
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)
    }

    async fn set_setting(&self, key: &str, value: &str, audit: &NewAudit) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = $3, updated_by = $4",
        )
        .bind(key)
        .bind(value)
        .bind(audit.at)
        .bind(&audit.actor)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await.map_err(translate)
    }

    async fn history_since(&self, since: DateTime<Utc>) -> Result<History> {
        let rows = sqlx::query(
            "SELECT id, incident_id, fingerprint, status, labels::text AS labels,
                    annotations::text AS annotations, starts_at, ends_at, generator_url, truncated_alerts
             FROM alert_events WHERE occurred_at >= $1 ORDER BY occurred_at, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        let mut alerts = Vec::with_capacity(rows.len());
        for row in &rows {
            alerts.push(history_alert(row).map_err(translate)?);
        }
        let deploys = sqlx::query(&format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys d WHERE d.started_at >= $1 - interval '30 days' ORDER BY d.started_at"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?
        .iter()
        .map(deploy_row)
        .collect::<Result<_, _>>()
        .map_err(translate)?;
        let gates = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM gate_results g WHERE g.evaluated_at >= $1 ORDER BY g.evaluated_at"
        ))
        .bind(since)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let n = sqlx::query(
            "UPDATE incidents SET status = 'resolved', resolved_at = $2, updated_at = now()
             WHERE id = $1 AND status = 'open'",
        )
        .bind(id)
        .bind(at)
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
            "INSERT INTO slack_messages (seq, incident_id, claimed_at) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seq)
        .bind(incident_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(translate)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn slack_message_posted(&self, seq: i64, channel: &str, ts: &str) -> Result<()> {
        sqlx::query("UPDATE slack_messages SET channel = $2, ts = $3 WHERE seq = $1")
            .bind(seq)
            .bind(channel)
            .bind(ts)
            .execute(&self.pool)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn release_slack_message(&self, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM slack_messages WHERE seq = $1 AND ts IS NULL")
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn slack_thread(&self, incident_id: i64) -> Result<Option<(String, String)>> {
        sqlx::query_as(
            "SELECT channel, ts FROM slack_messages WHERE incident_id = $1 AND ts IS NOT NULL ORDER BY seq LIMIT 1",
        )
        .bind(incident_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(translate)
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, now(), 'firebreak')
             ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = now()",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
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
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        let rows = sqlx::query(
            "SELECT id, incident_id, at, kind, source, summary, ref_id FROM timeline
             WHERE id > $1 AND kind = ANY($2) ORDER BY id LIMIT $3",
        )
        .bind(after_seq)
        .bind(&kinds)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| -> Result<TimelineEvent, sqlx::Error> {
                Ok(TimelineEvent {
                    seq: r.try_get("id")?,
                    incident_id: r.try_get("incident_id")?,
                    at: r.try_get("at")?,
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
             FROM postmortems WHERE incident_id = $1",
        )
        .bind(incident_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(translate)?;
        row.map(|r| postmortem_row(&r))
            .transpose()
            .map_err(translate)
    }

    async fn save_postmortem(&self, save: &PostmortemSave) -> Result<SaveOutcome> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let row = match save.expected_revision {
            None => sqlx::query(
                "INSERT INTO postmortems (incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by)
                 VALUES ($1, 1, $2, $3, COALESCE($4, ''), $5, $5, $6)
                 ON CONFLICT (incident_id) DO NOTHING
                 RETURNING incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by",
            )
            .bind(save.incident_id)
            .bind(&save.status)
            .bind(&save.markdown)
            .bind(&save.generated)
            .bind(save.at)
            .bind(&save.author)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?,
            Some(expected) => sqlx::query(
                "UPDATE postmortems SET revision = revision + 1, status = $3, markdown = $4,
                     generated = COALESCE($5, generated), updated_at = $6, updated_by = $7
                 WHERE incident_id = $1 AND revision = $2
                 RETURNING incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by",
            )
            .bind(save.incident_id)
            .bind(expected)
            .bind(&save.status)
            .bind(&save.markdown)
            .bind(&save.generated)
            .bind(save.at)
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(saved.incident_id)
        .bind(saved.revision)
        .bind(&save.kind)
        .bind(&saved.status)
        .bind(&saved.markdown)
        .bind(&save.author)
        .bind(save.at)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        Ok(SaveOutcome::Saved(saved))
    }

    async fn postmortem_revisions(&self, incident_id: i64) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(
            "SELECT revision, kind, status, author, created_at, markdown FROM postmortem_revisions
             WHERE incident_id = $1 ORDER BY revision",
        )
        .bind(incident_id)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| -> Result<RevisionRow, sqlx::Error> {
                Ok(RevisionRow {
                    revision: r.try_get("revision")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    author: r.try_get("author")?,
                    created_at: r.try_get("created_at")?,
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
             ORDER BY i.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
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
             WHERE service = $1 AND ($2::text IS NULL OR environment IS NULL OR environment = $2)
               AND at BETWEEN $3 AND $4
             ORDER BY at",
        )
        .bind(service)
        .bind(environment)
        .bind(from)
        .bind(to)
        .fetch(&self.pool);
        let mut n = 0;
        while let Some(row) = rows.try_next().await.map_err(translate)? {
            each(LogRow {
                at: row.try_get("at").map_err(translate)?,
                level: row.try_get("level").map_err(translate)?,
                message: row.try_get("message").map_err(translate)?,
            });
            n += 1;
        }
        Ok(n)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

async fn apply_migrations(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query(CREATE_TABLE)
        .execute(&mut *conn)
        .await
        .map_err(translate)?;
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, checksum FROM firebreak_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(translate)?;
    for m in migrate::pending(migrate::POSTGRES, &applied)? {
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(translate)?;
        sqlx::Executor::execute(&mut *tx, m.sql)
            .await
            .map_err(|e| {
                StoreError::Migration(format!("migration {} ({}) failed: {e}", m.version, m.name))
            })?;
        sqlx::query(
            "INSERT INTO firebreak_migrations (version, name, checksum) VALUES ($1, $2, $3)",
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

struct PgTx {
    tx: Transaction<'static, Postgres>,
}

fn pairs_split(pairs: &[(i64, String)]) -> (Vec<i64>, Vec<String>) {
    pairs.iter().map(|(i, s)| (*i, s.clone())).unzip()
}

#[async_trait]
impl StoreTx for PgTx {
    async fn lock_groups(&mut self, keys: &[i64]) -> Result<()> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k")
            .bind(keys)
            .execute(&mut *self.tx)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>> {
        let rows: Vec<String> =
            // A join, not `id = ANY($1)`: once PostgreSQL switches the prepared
            // statement to a generic plan it may scan the table and compare each
            // row with every element of a 10,000-id array.
            sqlx::query_scalar(
                "SELECT a.id FROM unnest($1::text[]) AS t(id) JOIN alert_events a ON a.id = t.id",
            )
                // Planned with the real parameters: a generic plan may scan the table.
                .persistent(false)
                .bind(ids)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(translate)?;
        Ok(rows.into_iter().collect())
    }

    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (group_key) id, group_key, status, resolved_at FROM incidents
             WHERE group_key = ANY($1) ORDER BY group_key, id DESC",
        )
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(group_keys)
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
                    resolved_at: r.try_get("resolved_at")?,
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
                 VALUES ($1, $2, $3, $4, $5, 'open', $6) RETURNING id",
            )
            .bind(&inc.group.key)
            .bind(&inc.group.service)
            .bind(&inc.group.environment)
            .bind(&inc.title)
            .bind(&inc.severity)
            .bind(inc.opened_at)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(translate)?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn reopen_incidents(&mut self, ids: &[i64]) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET status = 'open', resolved_at = NULL, updated_at = now()
             WHERE id = ANY($1) AND status = 'resolved'",
        )
        .bind(ids)
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let n = alerts.len();
        let (mut ids, mut incident_ids, mut fps, mut statuses, mut names) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (
            mut labels,
            mut annotations,
            mut starts,
            mut ends,
            mut occurred,
            mut urls,
            mut truncated,
        ) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (incident, a) in alerts {
            ids.push(a.id.as_str());
            incident_ids.push(*incident);
            fps.push(a.fingerprint.as_str());
            statuses.push(a.status.as_str());
            names.push(a.alertname());
            labels.push(labels_json(&a.labels));
            annotations.push(labels_json(&a.annotations));
            starts.push(a.starts_at);
            ends.push(a.ends_at);
            occurred.push(a.occurred_at());
            urls.push(a.generator_url.as_str());
            truncated.push(i64::try_from(a.truncated_alerts).unwrap_or(i64::MAX));
        }
        sqlx::query(
            "INSERT INTO alert_events (id, incident_id, fingerprint, status, alertname, labels, annotations,
                                       starts_at, ends_at, occurred_at, generator_url, truncated_alerts)
             SELECT id, incident_id, fingerprint, status, alertname, labels::json, annotations::json,
                    starts_at, ends_at, occurred_at, generator_url, truncated_alerts
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::bigint[])
                  AS t(id, incident_id, fingerprint, status, alertname, labels, annotations,
                       starts_at, ends_at, occurred_at, generator_url, truncated_alerts)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(incident_ids)
        .bind(fps)
        .bind(statuses)
        .bind(names)
        .bind(labels)
        .bind(annotations)
        .bind(starts)
        .bind(ends)
        .bind(occurred)
        .bind(urls)
        .bind(truncated)
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut incident_ids = Vec::with_capacity(alerts.len());
        let mut fps = Vec::with_capacity(alerts.len());
        let mut names = Vec::with_capacity(alerts.len());
        let mut labels = Vec::with_capacity(alerts.len());
        let mut statuses = Vec::with_capacity(alerts.len());
        let mut starts = Vec::with_capacity(alerts.len());
        let mut ends = Vec::with_capacity(alerts.len());
        for (incident, a) in alerts {
            incident_ids.push(*incident);
            fps.push(a.fingerprint.as_str());
            names.push(a.alertname());
            labels.push(labels_json(&a.labels));
            statuses.push(a.status.as_str());
            starts.push(a.starts_at);
            ends.push(a.ends_at);
        }
        sqlx::query(
            "INSERT INTO incident_alerts (incident_id, fingerprint, alertname, labels, status, starts_at, ends_at)
             SELECT incident_id, fingerprint, alertname, labels::json, status, starts_at, ends_at
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])
                  AS t(incident_id, fingerprint, alertname, labels, status, starts_at, ends_at)
             ON CONFLICT (incident_id, fingerprint) DO UPDATE
             SET status = EXCLUDED.status, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
                 labels = EXCLUDED.labels
             WHERE EXCLUDED.starts_at > incident_alerts.starts_at
                OR (EXCLUDED.starts_at = incident_alerts.starts_at AND EXCLUDED.status = 'resolved')",
        )
        .bind(incident_ids)
        .bind(fps)
        .bind(names)
        .bind(labels)
        .bind(statuses)
        .bind(starts)
        .bind(ends)
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        if deploys.is_empty() {
            return Ok(HashSet::new());
        }
        let col = |f: fn(&DeployEvent) -> Option<String>| deploys.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO deploys (id, service, environment, version, previous_version, status, strategy, step,
                                  started_at, finished_at, commit_sha, url, actor, flags)
             SELECT id, service, environment, version, previous_version, status, strategy, step,
                    started_at, finished_at, commit_sha, url, actor, flags::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::text[],
                         $14::text[])
                  AS t(id, service, environment, version, previous_version, status, strategy, step,
                       started_at, finished_at, commit_sha, url, actor, flags)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(col(|d| Some(d.id.clone())))
        .bind(col(|d| Some(d.service.clone())))
        .bind(col(|d| d.environment.clone()))
        .bind(col(|d| Some(d.version.clone())))
        .bind(col(|d| d.previous_version.clone()))
        .bind(col(|d| Some(d.status.as_str().to_string())))
        .bind(col(|d| d.strategy.and_then(|s| serde_json::to_value(s).ok()).and_then(|v| v.as_str().map(String::from))))
        .bind(col(|d| d.step.clone()))
        .bind(deploys.iter().map(|d| d.started_at).collect::<Vec<_>>())
        .bind(deploys.iter().map(|d| d.finished_at).collect::<Vec<_>>())
        .bind(col(|d| d.commit.clone()))
        .bind(col(|d| d.url.clone()))
        .bind(col(|d| d.actor.clone()))
        .bind(col(|d| serde_json::to_string(&d.flags).ok()))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(ids.into_iter().collect())
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        if gates.is_empty() {
            return Ok(HashSet::new());
        }
        let col = |f: fn(&GateResult) -> Option<String>| gates.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&GateResult) -> Option<f64>| gates.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO gate_results (id, service, environment, version, deploy_id, gate, metric, comparison,
                                       threshold, baseline, observed, window_text, step, verdict, evaluated_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::text[], $9::float8[], $10::float8[], $11::float8[], $12::text[],
                                  $13::text[], $14::text[], $15::timestamptz[])
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(col(|g| Some(g.id.clone())))
        .bind(col(|g| Some(g.service.clone())))
        .bind(col(|g| g.environment.clone()))
        .bind(col(|g| g.version.clone()))
        .bind(col(|g| g.deploy_id.clone()))
        .bind(col(|g| Some(g.gate.clone())))
        .bind(col(|g| g.metric.clone()))
        .bind(col(|g| g.comparison.clone()))
        .bind(num(|g| g.threshold))
        .bind(num(|g| g.baseline))
        .bind(num(|g| g.observed))
        .bind(col(|g| g.window.clone()))
        .bind(col(|g| g.step.clone()))
        .bind(col(|g| Some(g.verdict.as_str().to_string())))
        .bind(gates.iter().map(|g| g.evaluated_at).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(ids.into_iter().collect())
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let n = lines.len();
        let (mut ids, mut services, mut envs, mut ats, mut levels, mut messages, mut labels) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for l in lines {
            ids.push(l.id.as_str());
            services.push(l.service.as_str());
            envs.push(l.environment.as_deref());
            ats.push(l.at);
            levels.push(l.level.as_deref());
            messages.push(l.message.as_str());
            labels.push(labels_json(&l.labels));
        }
        let done = sqlx::query(
            "INSERT INTO log_lines (id, service, environment, at, level, message, labels)
             SELECT id, service, environment, at, level, message, labels::json
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[])
                  AS t(id, service, environment, at, level, message, labels)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(services)
        .bind(envs)
        .bind(ats)
        .bind(levels)
        .bind(messages)
        .bind(labels)
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
             WHERE d.service = $1 AND ($2::text IS NULL OR d.environment IS NULL OR d.environment = $2)
               AND d.started_at BETWEEN $3 AND $4
             ORDER BY d.started_at"
        ))
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(service)
        .bind(environment)
        .bind(from)
        .bind(to)
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
             WHERE g.service = $1 AND ($2::text IS NULL OR g.environment IS NULL OR g.environment = $2)
               AND g.evaluated_at BETWEEN $3 AND $4
             ORDER BY g.evaluated_at"
        ))
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(service)
        .bind(environment)
        .bind(from)
        .bind(to)
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
            "SELECT id, service, environment, opened_at FROM incidents WHERE status = 'open' AND service = ANY($1)",
        )
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(services)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                Ok(OpenIncident {
                    id: r.try_get("id")?,
                    service: r.try_get("service")?,
                    environment: r.try_get("environment")?,
                    opened_at: r.try_get("opened_at")?,
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
            "SELECT id FROM deploys WHERE service = $1 AND version = $3
               AND ($2::text IS NULL OR environment IS NULL OR environment = $2)
             ORDER BY started_at DESC LIMIT 1",
        )
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(service)
        .bind(environment)
        .bind(version)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>> {
        sqlx::query_as(
            "SELECT c.incident_id, c.deploy_id FROM unnest($1::text[]) AS t(id)
             JOIN incident_changes c ON c.deploy_id = t.id",
        )
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(deploy_ids)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn attach_changes(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        let (incidents, deploys) = pairs_split(pairs);
        sqlx::query_as(
            "INSERT INTO incident_changes (incident_id, deploy_id)
             SELECT * FROM unnest($1::bigint[], $2::text[])
             ON CONFLICT DO NOTHING RETURNING incident_id, deploy_id",
        )
        .bind(incidents)
        .bind(deploys)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        let (incidents, gates) = pairs_split(pairs);
        sqlx::query_as(
            "INSERT INTO incident_gates (incident_id, gate_id)
             SELECT * FROM unnest($1::bigint[], $2::text[])
             ON CONFLICT DO NOTHING RETURNING incident_id, gate_id",
        )
        .bind(incidents)
        .bind(gates)
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
        sqlx::query_as(
            "SELECT id, group_key, last_end FROM (
                 SELECT i.id, i.group_key,
                        (SELECT max(a.ends_at) FROM incident_alerts a WHERE a.incident_id = i.id) AS last_end
                 FROM incidents i
                 WHERE i.status = 'open'
                   AND NOT EXISTS (SELECT 1 FROM incident_alerts f WHERE f.incident_id = i.id AND f.status = 'firing')
             ) c WHERE last_end <= $1",
        )
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(quiet_before)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>> {
        let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = incidents.iter().copied().unzip();
        sqlx::query_scalar(
            "UPDATE incidents i SET status = 'resolved', resolved_at = t.at, updated_at = now()
             FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, at)
             WHERE i.id = t.id AND i.status = 'open'
               AND NOT EXISTS (SELECT 1 FROM incident_alerts a WHERE a.incident_id = i.id AND a.status = 'firing')
             RETURNING i.id",
        )
        .bind(ids)
        .bind(ats)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn insert_actions(&mut self, actions: &[NewAction]) -> Result<Vec<ActionRow>> {
        let mut out = Vec::new();
        for a in actions {
            let row = sqlx::query(&format!(
                "INSERT INTO actions (dedupe_key, playbook, playbook_version, step_index, kind, target,
                     incident_id, trigger_id, status, reason, spec, created_at, updated_at, not_before)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $12)
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
            .bind(&a.spec)
            .bind(a.at)
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
            "SELECT {ACTION_COLUMNS} FROM actions WHERE created_at >= $1 ORDER BY id"
        ))
        // Planned with the real parameters: a generic plan may scan the table.
        .persistent(false)
        .bind(since)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(action_row)
            .collect::<Result<_, _>>()
            .map_err(translate)
    }

    async fn tx_setting(&mut self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
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

fn history_alert(row: &PgRow) -> Result<(Option<i64>, AlertEvent), sqlx::Error> {
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
            labels: crate::remediation::parse_labels(&labels)?,
            annotations: crate::remediation::parse_labels(&annotations)?,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
            generator_url: row.try_get("generator_url")?,
            truncated_alerts: u64::try_from(truncated).unwrap_or(0),
            receiver: String::new(),
        },
    ))
}

fn postmortem_row(r: &PgRow) -> Result<PostmortemRow, sqlx::Error> {
    Ok(PostmortemRow {
        incident_id: r.try_get("incident_id")?,
        revision: r.try_get("revision")?,
        status: r.try_get("status")?,
        markdown: r.try_get("markdown")?,
        generated: r.try_get("generated")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        updated_by: r.try_get("updated_by")?,
    })
}
