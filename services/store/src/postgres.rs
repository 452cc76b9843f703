//! PostgreSQL: the production store's dialect. What differs from SQLite:
//! batches go in as arrays (`UNNEST`), so a thousand-alert delivery is a few
//! statements; actions are claimed with `FOR UPDATE SKIP LOCKED`; incident
//! groups are serialized with transaction-scoped advisory locks; lists are
//! matched with `= ANY($n)`. Everything else is the shared SQL in `sql.rs`.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::correlation::IncidentHead;
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{AlertEvent, DeployEvent, GateResult, LogLine};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::migrate;
use crate::sql::{
    column, count_each, incident_head, pair, Arg, Attach, Col, Column, Columns, Db, Dialect,
    DialectTx, Get, Query, ACTION_COLUMNS,
};
use crate::{labels_json, Result};

/// Key for the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x0f1e_b4ea_0001;

/// The PostgreSQL dialect: a connection pool.
pub struct PgDialect {
    pool: PgPool,
}

pub type PgStore = Db<PgDialect>;

impl Db<PgDialect> {
    pub async fn connect(url: &str) -> Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Db {
            d: PgDialect { pool },
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.d.pool
    }
}

fn build(q: &Query) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    let mut query = sqlx::query(&q.sql).persistent(!q.plan_each);
    for a in &q.args {
        query = match a {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.as_deref()),
            Arg::Time(v) => query.bind(*v),
            Arg::Json(v) => query.bind(v.as_ref()),
            Arg::Bool(v) => query.bind(*v),
            Arg::Float(v) => query.bind(*v),
            Arg::Texts(v) => query.bind(v.as_slice()),
            Arg::Ints(v) => query.bind(v.as_slice()),
        };
    }
    query
}

/// An integer column by name or position: BIGINT, or INTEGER (step_index,
/// attempts, integer literals) widened.
fn opt_int_at<I>(row: &PgRow, i: I) -> std::result::Result<Option<i64>, sqlx::Error>
where
    I: sqlx::ColumnIndex<PgRow> + Copy,
{
    match row.try_get::<Option<i64>, _>(i) {
        Ok(v) => Ok(v),
        Err(e) => row
            .try_get::<Option<i32>, _>(i)
            .map(|v| v.map(i64::from))
            .map_err(|_| e),
    }
}

impl Get for PgRow {
    fn int(&self, col: &str) -> Result<i64> {
        match self.try_get::<i64, _>(col) {
            Ok(v) => Ok(v),
            // INTEGER columns (step_index, attempts) and integer literals.
            Err(e) => self
                .try_get::<i32, _>(col)
                .map(i64::from)
                .map_err(|_| column(col)(e)),
        }
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        opt_int_at(self, col).map_err(column(col))
    }
    fn text(&self, col: &str) -> Result<String> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.try_get(col).map_err(column(col))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_json(&self, col: &str) -> Result<Option<Value>> {
        self.try_get(col).map_err(column(col))
    }
    fn bool(&self, col: &str) -> Result<bool> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        self.try_get(col).map_err(column(col))
    }
}

#[async_trait]
impl Dialect for PgDialect {
    type Row = PgRow;
    type Tx = PgTx;
    const NAME: &'static str = "postgres";

    async fn read(&self, q: Query) -> Result<Vec<PgRow>> {
        Ok(build(&q).fetch_all(&self.pool).await?)
    }

    async fn write(&self, q: Query) -> Result<Vec<PgRow>> {
        Ok(build(&q).fetch_all(&self.pool).await?)
    }

    async fn stream(
        &self,
        q: Query,
        each: &mut (dyn for<'r> FnMut(&'r PgRow) -> Result<()> + Send),
    ) -> Result<u64> {
        count_each(build(&q).fetch(&self.pool), each).await
    }

    async fn read_columns(&self, cols: &[(&str, Col)], q: Query) -> Result<Columns> {
        // Rows are decoded into the columns as they arrive, by position (not
        // by name) and straight to their types: the driver's row objects go
        // at once and decoding overlaps the transfer.
        use futures_util::TryStreamExt;
        let mut columns: Vec<Column> = cols.iter().map(|(_, k)| Column::empty(*k)).collect();
        let mut rows = build(&q).fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            for (i, (col, (name, _))) in columns.iter_mut().zip(cols).enumerate() {
                let e = column(name);
                match col {
                    Column::Text(c) => c.push(row.try_get(i).map_err(e)?),
                    Column::Int(c) => c.push(opt_int_at(&row, i).map_err(e)?),
                    Column::Time(c) => c.push(row.try_get(i).map_err(e)?),
                }
            }
        }
        Columns::new(columns)
    }

    async fn begin(&self) -> Result<PgTx> {
        Ok(PgTx {
            tx: self.pool.begin().await?,
        })
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let outcome = apply_migrations(&mut conn).await;
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        outcome?;
        unlock?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<PgRow>> {
        let columns = ACTION_COLUMNS
            .split(", ")
            .map(|c| format!("actions.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "WITH c AS (
                SELECT a.id, a.status AS was FROM actions a
                WHERE ((a.status = 'pending' AND a.not_before <= $1)
                       OR (a.status IN ('running', 'reverting') AND a.lease_until < $1))
                  AND NOT EXISTS (SELECT 1 FROM actions r
                                  WHERE r.target = a.target AND r.status IN ('running', 'reverting')
                                    AND r.id <> a.id)
                ORDER BY a.id LIMIT 1
                FOR UPDATE OF a SKIP LOCKED)
             UPDATE actions SET status = CASE WHEN c.was = 'reverting' THEN 'reverting' ELSE 'running' END,
                 attempts = attempts + 1, lease_until = $2, lease_owner = $3, updated_at = $1
             FROM c WHERE actions.id = c.id
             RETURNING {columns}, c.was"
        ))
        .bind(now)
        .bind(lease_until)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }
}

async fn apply_migrations(conn: &mut sqlx::PgConnection) -> Result<()> {
    migrate::apply_pending!(conn, migrate::POSTGRES)
}

pub struct PgTx {
    tx: Transaction<'static, Postgres>,
}

fn pairs_split(pairs: &[(i64, String)]) -> (Vec<i64>, Vec<String>) {
    pairs.iter().map(|(i, s)| (*i, s.clone())).unzip()
}

#[async_trait]
impl DialectTx for PgTx {
    type Row = PgRow;
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    fn any(expr: &str, n: usize) -> String {
        format!("{expr} = ANY(${n})")
    }

    fn json_array_has(expr: &str, n: usize) -> String {
        format!("{expr} @> jsonb_build_array(${n}::text)")
    }

    async fn fetch(&mut self, q: Query) -> Result<Vec<PgRow>> {
        Ok(build(&q).fetch_all(&mut *self.tx).await?)
    }

    async fn execute(&mut self, q: Query) -> Result<u64> {
        Ok(build(&q).execute(&mut *self.tx).await?.rows_affected())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    async fn lock(&mut self, keys: &[i64]) -> Result<()> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k")
            .bind(keys)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
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
        .await?;
        rows.iter().map(incident_head).collect()
    }

    async fn attach(&mut self, to: Attach, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        let (incidents, ids) = pairs_split(pairs);
        let sql = match to {
            Attach::Changes => {
                "INSERT INTO incident_changes (incident_id, deploy_id)
                 SELECT * FROM unnest($1::bigint[], $2::text[])
                 ON CONFLICT DO NOTHING RETURNING incident_id, deploy_id AS id"
            }
            Attach::Gates => {
                "INSERT INTO incident_gates (incident_id, gate_id)
                 SELECT * FROM unnest($1::bigint[], $2::text[])
                 ON CONFLICT DO NOTHING RETURNING incident_id, gate_id AS id"
            }
        };
        let rows = sqlx::query(sql)
            .bind(incidents)
            .bind(ids)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(|r| pair(r, "incident_id", "id")).collect()
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
        .await?;
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
                ?;
        Ok(rows.into_iter().collect())
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
        .await?;
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
        .await?;
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        if deploys.is_empty() {
            return Ok(HashSet::new());
        }
        let col = |f: fn(&DeployEvent) -> Option<String>| deploys.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO deploys (id, service, environment, version, previous_version, status, strategy, step,
                                  started_at, finished_at, commit_sha, url, actor, flags, commit_times)
             SELECT id, service, environment, version, previous_version, status, strategy, step,
                    started_at, finished_at, commit_sha, url, actor, flags::jsonb, commit_times::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::text[],
                         $14::text[], $15::text[])
                  AS t(id, service, environment, version, previous_version, status, strategy, step,
                       started_at, finished_at, commit_sha, url, actor, flags, commit_times)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(col(|d| Some(d.id.clone())))
        .bind(col(|d| Some(d.service.clone())))
        .bind(col(|d| d.environment.clone()))
        .bind(col(|d| Some(d.version.clone())))
        .bind(col(|d| d.previous_version.clone()))
        .bind(col(|d| Some(d.status.as_str().to_string())))
        .bind(col(|d| d.strategy.map(|s| s.as_str().to_string())))
        .bind(col(|d| d.step.clone()))
        .bind(deploys.iter().map(|d| d.started_at).collect::<Vec<_>>())
        .bind(deploys.iter().map(|d| d.finished_at).collect::<Vec<_>>())
        .bind(col(|d| d.commit.clone()))
        .bind(col(|d| d.url.clone()))
        .bind(col(|d| d.actor.clone()))
        .bind(col(|d| serde_json::to_string(&d.flags).ok()))
        .bind(col(|d| {
            (!d.commit_times.is_empty())
                .then(|| serde_json::to_string(&d.commit_times).ok())
                .flatten()
        }))
        .fetch_all(&mut *self.tx)
        .await?;
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
        .await?;
        Ok(ids.into_iter().collect())
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let (streams, stream_ids) = crate::log_streams(lines);
        let (stream_keys, stream_labels): (Vec<String>, Vec<String>) = streams.into_iter().unzip();
        sqlx::query(
            "INSERT INTO log_streams (id, labels)
             SELECT id, labels::json FROM unnest($1::text[], $2::text[]) AS t(id, labels)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(stream_keys)
        .bind(stream_labels)
        .execute(&mut *self.tx)
        .await?;
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
            labels.push(labels_json(&l.metadata));
        }
        let done = sqlx::query(
            "INSERT INTO log_lines (id, service, environment, at, level, message, labels, stream_id)
             SELECT id, service, environment, at, level, message, labels::json, stream_id
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
                         $8::text[])
                  AS t(id, service, environment, at, level, message, labels, stream_id)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(services)
        .bind(envs)
        .bind(ats)
        .bind(levels)
        .bind(messages)
        .bind(labels)
        .bind(stream_ids)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
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
        .map_err(Into::into)
    }
}
