//! SQLite (WAL): the embedded default. One writer connection (SQLite has one
//! writer per file anyway, and queuing in the pool beats SQLITE_BUSY), several
//! readers. Times are stored as INTEGER microseconds since the epoch; lists are
//! passed as one JSON array and expanded with `json_each`.

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
use sqlx::{Row, Sqlite, Transaction};

use crate::migrate::{self, CREATE_TABLE};
use crate::{
    labels_json, translate, IncidentAlertRow, IncidentDetail, IncidentFilter, IncidentRow,
    OpenIncident, Result, Store, StoreError, StoreTx, TimelineRow,
};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(translate)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(translate)?;
        Ok(SqliteStore { writer, reader })
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
        let timeline_entries: i64 =
            sqlx::query_scalar("SELECT count(*) FROM timeline WHERE incident_id = ?1")
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
        let rows = sqlx::query(
            "SELECT id, at, kind, source, summary, ref_id FROM timeline WHERE incident_id = ?1
             ORDER BY at, id LIMIT ?2 OFFSET ?3",
        )
        .bind(incident_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|r| {
                Ok(TimelineRow {
                    id: r.try_get("id")?,
                    at: time(r.try_get("at")?),
                    kind: r.try_get("kind")?,
                    source: r.try_get("source")?,
                    summary: r.try_get("summary")?,
                    ref_id: r.try_get("ref_id")?,
                })
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

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
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
        for (incident, a) in alerts {
            sqlx::query(
                "INSERT INTO alert_events (id, incident_id, fingerprint, status, alertname, labels, annotations,
                                           starts_at, ends_at, generator_url, truncated_alerts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&a.id)
            .bind(incident)
            .bind(&a.fingerprint)
            .bind(a.status.as_str())
            .bind(a.alertname())
            .bind(labels_json(&a.labels))
            .bind(labels_json(&a.annotations))
            .bind(micros(a.starts_at))
            .bind(a.ends_at.map(micros))
            .bind(&a.generator_url)
            .bind(i64::try_from(a.truncated_alerts).unwrap_or(i64::MAX))
            .execute(&mut *self.tx)
            .await
            .map_err(translate)?;
        }
        Ok(())
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        for (incident, a) in alerts {
            sqlx::query(
                "INSERT INTO incident_alerts (incident_id, fingerprint, alertname, labels, status, starts_at, ends_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (incident_id, fingerprint) DO UPDATE
                 SET status = excluded.status, starts_at = excluded.starts_at, ends_at = excluded.ends_at,
                     labels = excluded.labels
                 WHERE excluded.starts_at > incident_alerts.starts_at
                    OR (excluded.starts_at = incident_alerts.starts_at AND excluded.status = 'resolved')",
            )
            .bind(incident)
            .bind(&a.fingerprint)
            .bind(a.alertname())
            .bind(labels_json(&a.labels))
            .bind(a.status.as_str())
            .bind(micros(a.starts_at))
            .bind(a.ends_at.map(micros))
            .execute(&mut *self.tx)
            .await
            .map_err(translate)?;
        }
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        let mut new = HashSet::new();
        for d in deploys {
            let strategy = d
                .strategy
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.as_str().map(String::from));
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO deploys (id, service, environment, version, previous_version, status, strategy, step,
                                      started_at, finished_at, commit_sha, url, actor, flags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )
            .bind(&d.id)
            .bind(&d.service)
            .bind(&d.environment)
            .bind(&d.version)
            .bind(&d.previous_version)
            .bind(d.status.as_str())
            .bind(strategy)
            .bind(&d.step)
            .bind(micros(d.started_at))
            .bind(d.finished_at.map(micros))
            .bind(&d.commit)
            .bind(&d.url)
            .bind(&d.actor)
            .bind(json_list(&d.flags))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(translate)?;
            new.extend(inserted);
        }
        Ok(new)
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        let mut new = HashSet::new();
        for g in gates {
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO gate_results (id, service, environment, version, deploy_id, gate, metric, comparison,
                                           threshold, baseline, observed, window_text, step, verdict, evaluated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )
            .bind(&g.id)
            .bind(&g.service)
            .bind(&g.environment)
            .bind(&g.version)
            .bind(&g.deploy_id)
            .bind(&g.gate)
            .bind(&g.metric)
            .bind(&g.comparison)
            .bind(g.threshold)
            .bind(g.baseline)
            .bind(g.observed)
            .bind(&g.window)
            .bind(&g.step)
            .bind(g.verdict.as_str())
            .bind(micros(g.evaluated_at))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(translate)?;
            new.extend(inserted);
        }
        Ok(new)
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        let mut new = 0;
        for l in lines {
            let done = sqlx::query(
                "INSERT INTO log_lines (id, service, environment, at, level, message, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&l.id)
            .bind(&l.service)
            .bind(&l.environment)
            .bind(micros(l.at))
            .bind(&l.level)
            .bind(&l.message)
            .bind(labels_json(&l.labels))
            .execute(&mut *self.tx)
            .await
            .map_err(translate)?;
            new += done.rows_affected();
        }
        Ok(new)
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
        let mut new = Vec::new();
        for (incident, deploy) in pairs {
            let done = sqlx::query("INSERT INTO incident_changes (incident_id, deploy_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .bind(incident)
                .bind(deploy)
                .execute(&mut *self.tx)
                .await
                .map_err(translate)?;
            if done.rows_affected() > 0 {
                new.push((*incident, deploy.clone()));
            }
        }
        Ok(new)
    }

    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        let mut new = Vec::new();
        for (incident, gate) in pairs {
            let done = sqlx::query("INSERT INTO incident_gates (incident_id, gate_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .bind(incident)
                .bind(gate)
                .execute(&mut *self.tx)
                .await
                .map_err(translate)?;
            if done.rows_affected() > 0 {
                new.push((*incident, gate.clone()));
            }
        }
        Ok(new)
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
        for e in entries {
            sqlx::query(
                "INSERT INTO timeline (incident_id, at, kind, source, summary, ref_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
            )
            .bind(e.incident_id)
            .bind(micros(e.at))
            .bind(e.kind)
            .bind(&e.source)
            .bind(&e.summary)
            .bind(&e.ref_id)
            .execute(&mut *self.tx)
            .await
            .map_err(translate)?;
        }
        Ok(())
    }

    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT i.id, i.group_key, max(a.ends_at) FROM incidents i JOIN incident_alerts a ON a.incident_id = i.id
             WHERE i.status = 'open' GROUP BY i.id, i.group_key
             HAVING sum(CASE WHEN a.status = 'resolved' THEN 0 ELSE 1 END) = 0 AND max(a.ends_at) <= ?1",
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

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(translate)
    }
}
