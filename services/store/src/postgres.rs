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

mod unnest;

use unnest::{Bulk, Unnest};

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
        let (table, id) = match to {
            Attach::Changes => ("incident_changes", "deploy_id"),
            Attach::Gates => ("incident_gates", "gate_id"),
        };
        let columns = [
            Unnest::Int("incident_id", |(incident, _): &(i64, String)| {
                Some(*incident)
            }),
            Unnest::Text(id, |(_, id)| Some(id)),
        ];
        let tail = format!("ON CONFLICT DO NOTHING RETURNING incident_id, {id} AS id");
        let rows = Bulk::new(table, pairs, &columns, &tail)
            .fetch(&mut self.tx)
            .await?;
        rows.iter().map(|r| pair(r, "incident_id", "id")).collect()
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let columns = [
            Unnest::Int("incident_id", |e: &NewEntry| Some(e.incident_id)),
            Unnest::Time("at", |e| Some(e.at)),
            Unnest::Text("kind", |e| Some(e.kind)),
            Unnest::Text("source", |e| Some(&e.source)),
            Unnest::Text("summary", |e| Some(&e.summary)),
            Unnest::Text("ref_id", |e| Some(&e.ref_id)),
        ];
        Bulk::new(
            "timeline",
            entries,
            &columns,
            "ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
        )
        .execute(&mut self.tx)
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
        let columns = [
            Unnest::Text("id", |(_, a): &(Option<i64>, &AlertEvent)| Some(&a.id)),
            Unnest::Int("incident_id", |(incident, _)| *incident),
            Unnest::Text("fingerprint", |(_, a)| Some(&a.fingerprint)),
            Unnest::Text("status", |(_, a)| Some(a.status.as_str())),
            Unnest::Text("alertname", |(_, a)| Some(a.alertname())),
            Unnest::Json("labels", "json", |(_, a)| Some(labels_json(&a.labels))),
            Unnest::Json("annotations", "json", |(_, a)| {
                Some(labels_json(&a.annotations))
            }),
            Unnest::Time("starts_at", |(_, a)| Some(a.starts_at)),
            Unnest::Time("ends_at", |(_, a)| a.ends_at),
            Unnest::Time("occurred_at", |(_, a)| Some(a.occurred_at())),
            Unnest::Text("generator_url", |(_, a)| Some(&a.generator_url)),
            Unnest::Int("truncated_alerts", |(_, a)| {
                Some(i64::try_from(a.truncated_alerts).unwrap_or(i64::MAX))
            }),
        ];
        Bulk::new(
            "alert_events",
            alerts,
            &columns,
            "ON CONFLICT (id) DO NOTHING",
        )
        .execute(&mut self.tx)
        .await?;
        Ok(())
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let columns = [
            Unnest::Int("incident_id", |(incident, _): &(i64, &AlertEvent)| {
                Some(*incident)
            }),
            Unnest::Text("fingerprint", |(_, a)| Some(&a.fingerprint)),
            Unnest::Text("alertname", |(_, a)| Some(a.alertname())),
            Unnest::Json("labels", "json", |(_, a)| Some(labels_json(&a.labels))),
            Unnest::Text("status", |(_, a)| Some(a.status.as_str())),
            Unnest::Time("starts_at", |(_, a)| Some(a.starts_at)),
            Unnest::Time("ends_at", |(_, a)| a.ends_at),
        ];
        // A redelivered or older alert does not overwrite a newer state.
        let newer = "ON CONFLICT (incident_id, fingerprint) DO UPDATE
             SET status = EXCLUDED.status, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
                 labels = EXCLUDED.labels
             WHERE EXCLUDED.starts_at > incident_alerts.starts_at
                OR (EXCLUDED.starts_at = incident_alerts.starts_at AND EXCLUDED.status = 'resolved')";
        Bulk::new("incident_alerts", alerts, &columns, newer)
            .execute(&mut self.tx)
            .await?;
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        if deploys.is_empty() {
            return Ok(HashSet::new());
        }
        let columns = [
            Unnest::Text("id", |d: &DeployEvent| Some(&d.id)),
            Unnest::Text("service", |d| Some(&d.service)),
            Unnest::Text("environment", |d| d.environment.as_deref()),
            Unnest::Text("version", |d| Some(&d.version)),
            Unnest::Text("previous_version", |d| d.previous_version.as_deref()),
            Unnest::Text("status", |d| Some(d.status.as_str())),
            Unnest::Text("strategy", |d| d.strategy.map(|s| s.as_str())),
            Unnest::Text("step", |d| d.step.as_deref()),
            Unnest::Time("started_at", |d| Some(d.started_at)),
            Unnest::Time("finished_at", |d| d.finished_at),
            Unnest::Text("commit_sha", |d| d.commit.as_deref()),
            Unnest::Text("url", |d| d.url.as_deref()),
            Unnest::Text("actor", |d| d.actor.as_deref()),
            Unnest::Json("flags", "jsonb", |d| serde_json::to_string(&d.flags).ok()),
            Unnest::Json("commit_times", "jsonb", |d| {
                (!d.commit_times.is_empty())
                    .then(|| serde_json::to_string(&d.commit_times).ok())
                    .flatten()
            }),
        ];
        unnest::insert_new(&mut self.tx, "deploys", deploys, &columns).await
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        if gates.is_empty() {
            return Ok(HashSet::new());
        }
        let columns = [
            Unnest::Text("id", |g: &GateResult| Some(&g.id)),
            Unnest::Text("service", |g| Some(&g.service)),
            Unnest::Text("environment", |g| g.environment.as_deref()),
            Unnest::Text("version", |g| g.version.as_deref()),
            Unnest::Text("deploy_id", |g| g.deploy_id.as_deref()),
            Unnest::Text("gate", |g| Some(&g.gate)),
            Unnest::Text("metric", |g| g.metric.as_deref()),
            Unnest::Text("comparison", |g| g.comparison.as_deref()),
            Unnest::Float("threshold", |g| g.threshold),
            Unnest::Float("baseline", |g| g.baseline),
            Unnest::Float("observed", |g| g.observed),
            Unnest::Text("window_text", |g| g.window.as_deref()),
            Unnest::Text("step", |g| g.step.as_deref()),
            Unnest::Text("verdict", |g| Some(g.verdict.as_str())),
            Unnest::Time("evaluated_at", |g| Some(g.evaluated_at)),
        ];
        unnest::insert_new(&mut self.tx, "gate_results", gates, &columns).await
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let (streams, stream_ids) = crate::log_streams(lines);
        let columns = [
            Unnest::Text("id", |(id, _): &(String, String)| Some(id)),
            Unnest::Json("labels", "json", |(_, labels)| Some(labels.clone())),
        ];
        Bulk::new(
            "log_streams",
            &streams,
            &columns,
            "ON CONFLICT (id) DO NOTHING",
        )
        .execute(&mut self.tx)
        .await?;
        let lines: Vec<(&LogLine, String)> = lines.iter().zip(stream_ids).collect();
        let columns = [
            Unnest::Text("id", |(l, _): &(&LogLine, String)| Some(&l.id)),
            Unnest::Text("service", |(l, _)| Some(&l.service)),
            Unnest::Text("environment", |(l, _)| l.environment.as_deref()),
            Unnest::Time("at", |(l, _)| Some(l.at)),
            Unnest::Text("level", |(l, _)| l.level.as_deref()),
            Unnest::Text("message", |(l, _)| Some(&l.message)),
            Unnest::Json("labels", "json", |(l, _)| Some(labels_json(&l.metadata))),
            Unnest::Text("stream_id", |(_, stream)| Some(stream)),
        ];
        Bulk::new("log_lines", &lines, &columns, "ON CONFLICT (id) DO NOTHING")
            .execute(&mut self.tx)
            .await
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
