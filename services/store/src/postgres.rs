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
use sqlx::{Postgres, Row, Transaction};

use crate::migrate::{self, CREATE_TABLE};
use crate::{
    labels_json, timeline_row, translate, IncidentAlertRow, IncidentDetail, IncidentFilter,
    IncidentRow, OpenIncident, Result, Store, StoreError, StoreTx, TimelineRow,
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
            sqlx::query_scalar("SELECT id FROM alert_events WHERE id = ANY($1)")
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
        .bind(service)
        .bind(environment)
        .bind(version)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(translate)
    }

    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>> {
        sqlx::query_as(
            "SELECT incident_id, deploy_id FROM incident_changes WHERE deploy_id = ANY($1)",
        )
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
        .execute(&mut *self.tx)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>> {
        sqlx::query_as(
            "SELECT i.id, i.group_key, max(a.ends_at) FROM incidents i JOIN incident_alerts a ON a.incident_id = i.id
             WHERE i.status = 'open' GROUP BY i.id, i.group_key
             HAVING sum(CASE WHEN a.status = 'resolved' THEN 0 ELSE 1 END) = 0 AND max(a.ends_at) <= $1",
        )
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

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(translate)
    }
}
