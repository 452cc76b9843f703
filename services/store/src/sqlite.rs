//! SQLite (WAL): the embedded default's dialect. One writer connection (SQLite
//! has one writer per file anyway, and queuing in the pool beats SQLITE_BUSY),
//! several readers, and a background connection that checkpoints the WAL.
//! Times are stored as INTEGER microseconds since the epoch, JSON as TEXT.
//! Batches are passed as one JSON array and expanded with `json_each`, so a
//! batch is one statement: sqlx hands every SQLite statement to a worker
//! thread, and a hop per row would cost more than the insert itself. Lists
//! are matched the same way. Everything else is the shared SQL in `sql.rs`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::correlation::IncidentHead;
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{AlertEvent, DeployEvent, GateResult, LogLine};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

mod aggregated;

use crate::migrate;
use crate::sql::{
    column, count_each, incident_head, pair, Arg, Attach, Col, Columns, Db, Dialect, DialectTx,
    Get, Query, ACTION_COLUMNS,
};
use crate::{labels_json, Result, StoreError};

/// The SQLite dialect: one writer, several readers, one checkpointer.
///
/// Writes made inside [`crate::bulk`] (the engine's bulk-lane batches) give
/// way to every other write: one bulk write at a time waits for the writer,
/// and only while no other write does. During an alert storm the urgent
/// alert's batch, its action and the kill switch's flag update then wait
/// for at most the one bulk batch already writing, not for every queued one.
pub struct SqliteDialect {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    gate: Arc<WriteGate>,
}

/// Write transactions take the write lock when they begin. A deferred one
/// that reads first and writes later can be refused at once with
/// SQLITE_BUSY ("database is locked") when the checkpointer or another
/// process wrote in between, without the busy timeout ever applying.
const IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// Who writes next: see [`SqliteDialect`].
#[derive(Default)]
struct WriteGate {
    /// Held by the one bulk write waiting for or holding the writer.
    bulk: Arc<tokio::sync::Mutex<()>>,
    /// Other writes waiting for the writer.
    waiting: std::sync::atomic::AtomicUsize,
    /// Signalled when `waiting` drops to zero.
    clear: tokio::sync::Notify,
}

/// A bulk write's turn; dropped when its write is done.
type BulkTurn = tokio::sync::OwnedMutexGuard<()>;

impl WriteGate {
    /// Waits for the writer's pool with this task's priority; the returned
    /// turn (bulk writes only) must be held until the write is done.
    async fn acquire<T, F>(&self, connect: F) -> Result<(T, Option<BulkTurn>)>
    where
        F: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        use std::sync::atomic::Ordering;
        if crate::is_bulk() {
            let turn = self.bulk.clone().lock_owned().await;
            loop {
                let cleared = self.clear.notified();
                if self.waiting.load(Ordering::Acquire) == 0 {
                    break;
                }
                cleared.await;
            }
            return Ok((connect.await?, Some(turn)));
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let got = connect.await;
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.clear.notify_waiters();
        }
        Ok((got?, None))
    }
}

pub type SqliteStore = Db<SqliteDialect>;

/// Copies the WAL into the database file every half second (PASSIVE: never
/// waits for or blocks the writer), and truncates the WAL when it grew large.
/// The checkpointer never waits for a lock (busy timeout 0): a TRUNCATE that
/// waited for readers would hold writers back meanwhile, and a write held
/// past its busy timeout fails as "database is locked".
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
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

impl Db<SqliteDialect> {
    pub async fn connect(url: &str) -> Result<SqliteStore> {
        let options = connect_options(url)?;
        // The writer never checkpoints: a checkpoint (with its fsync of the
        // database file) would stall every write queued behind it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().busy_timeout(Duration::ZERO))
            .await?;
        tokio::spawn(checkpoint_loop(checkpointer.clone()));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Db {
            d: SqliteDialect {
                writer,
                reader,
                checkpointer,
                gate: Arc::default(),
            },
        })
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The `SELECT` list that takes apart a row sent as one JSON array of `n`
/// values: `value ->> 0, …, value ->> n-1`.
fn row_values(n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| format!("value ->> {i}")).collect();
    values.join(", ")
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn build(q: &Query) -> sqlx::query::Query<'_, Sqlite, SqliteArguments<'_>> {
    let mut query = sqlx::query(&q.sql);
    for a in &q.args {
        query = match a {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.as_deref()),
            Arg::Time(v) => query.bind(v.map(micros)),
            Arg::Json(v) => query.bind(v.as_ref().map(Value::to_string)),
            Arg::Bool(v) => query.bind(*v),
            Arg::Float(v) => query.bind(*v),
            Arg::Texts(v) => query.bind(json_list(v)),
            Arg::Ints(v) => query.bind(json_list(v)),
        };
    }
    query
}

fn to_time(col: &str, micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "column {col}: {micros} is not a time (microseconds since 1970)"
        ))
    })
}

fn to_json(col: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("column {col}: not JSON: {e}")))
}

impl Get for SqliteRow {
    fn int(&self, col: &str) -> Result<i64> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.try_get(col).map_err(column(col))
    }
    fn text(&self, col: &str) -> Result<String> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.try_get(col).map_err(column(col))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        to_time(col, self.int(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_int(col)?.map(|m| to_time(col, m)).transpose()
    }
    fn opt_json(&self, col: &str) -> Result<Option<Value>> {
        let text: Option<String> = self.try_get(col).map_err(column(col))?;
        text.map(|t| to_json(col, &t)).transpose()
    }
    fn bool(&self, col: &str) -> Result<bool> {
        self.try_get(col).map_err(column(col))
    }
    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        match self.try_get::<Option<f64>, _>(col) {
            Ok(v) => Ok(v),
            // A whole number stored in a REAL column comes back as INTEGER.
            Err(e) => self
                .try_get::<Option<i64>, _>(col)
                .map(|v| v.map(|i| i as f64))
                .map_err(|_| column(col)(e)),
        }
    }
}

#[async_trait]
impl Dialect for SqliteDialect {
    type Row = SqliteRow;
    type Tx = SqliteTx;
    const NAME: &'static str = "sqlite";

    async fn read(&self, q: Query) -> Result<Vec<SqliteRow>> {
        Ok(build(&q).fetch_all(&self.reader).await?)
    }

    async fn write(&self, q: Query) -> Result<Vec<SqliteRow>> {
        let (mut conn, _turn) = self.gate.acquire(self.writer.acquire()).await?;
        Ok(build(&q).fetch_all(&mut *conn).await?)
    }

    async fn stream(
        &self,
        q: Query,
        each: &mut (dyn for<'r> FnMut(&'r SqliteRow) -> Result<()> + Send),
    ) -> Result<u64> {
        count_each(build(&q).fetch(&self.reader), each).await
    }

    async fn read_columns(&self, cols: &[(&str, Col)], q: Query) -> Result<Columns> {
        // One aggregated JSON row: one crosses the driver instead of
        // thousands (each row costs a hand-off between threads in sqlx).
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let sql = format!(
            "SELECT json_group_array(json_array({})) AS j FROM ({}) s",
            names.join(", "),
            q.sql
        );
        let rows = self
            .read(Query {
                sql: sql.into(),
                ..q
            })
            .await?;
        let text: Option<&str> = match rows.first() {
            Some(r) => r.try_get("j").map_err(column("j"))?,
            None => None,
        };
        aggregated::columns_from_json(cols, text)
    }

    async fn begin(&self) -> Result<SqliteTx> {
        let (tx, turn) = self.gate.acquire(self.writer.begin_with(IMMEDIATE)).await?;
        Ok(SqliteTx { tx, _turn: turn })
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        apply_migrations(&mut conn).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        self.checkpointer.close().await;
    }

    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<SqliteRow>> {
        // One writer: the select and the update cannot interleave with another claim.
        let (mut tx, _turn) = self.gate.acquire(self.writer.begin_with(IMMEDIATE)).await?;
        let found: Option<(i64, String)> = sqlx::query_as(
            "SELECT a.id, a.status FROM actions a
             WHERE ((a.status = 'pending' AND a.not_before <= ?1)
                    OR (a.status IN ('running', 'reverting') AND a.lease_until < ?1))
               AND NOT EXISTS (SELECT 1 FROM actions r
                               WHERE r.target = a.target AND r.status IN ('running', 'reverting')
                                 AND r.id <> a.id)
             ORDER BY a.id LIMIT 1",
        )
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, was)) = found else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "UPDATE actions SET status = CASE WHEN status = 'reverting' THEN 'reverting' ELSE 'running' END,
                 attempts = attempts + 1, lease_until = ?2, lease_owner = ?4, updated_at = ?3
             WHERE id = ?1 RETURNING {ACTION_COLUMNS}, ?5 AS was"
        ))
        .bind(id)
        .bind(micros(lease_until))
        .bind(micros(now))
        .bind(owner)
        .bind(was)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row))
    }
}

async fn apply_migrations(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    migrate::apply_pending!(conn, migrate::SQLITE)
}

pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: Option<BulkTurn>,
}

impl SqliteTx {
    /// Inserts `rows` into `table` in one statement, each row one JSON array
    /// of its `columns` in order, skipping ids already stored; the ids that
    /// were new.
    async fn insert_new<T: serde::Serialize>(
        &mut self,
        table: &str,
        columns: &str,
        rows: &[T],
    ) -> Result<HashSet<String>> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let insert = format!(
            "INSERT INTO {table} ({columns}) SELECT {} FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING RETURNING id",
            row_values(columns.split(',').count())
        );
        let ids: Vec<String> = sqlx::query_scalar(&insert)
            .bind(json_list(rows))
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(ids.into_iter().collect())
    }
}

#[async_trait]
impl DialectTx for SqliteTx {
    type Row = SqliteRow;
    const FOR_UPDATE: &'static str = "";

    fn any(expr: &str, n: usize) -> String {
        format!("{expr} IN (SELECT value FROM json_each(${n}))")
    }

    fn json_array_has(expr: &str, n: usize) -> String {
        format!("EXISTS (SELECT 1 FROM json_each({expr}) WHERE value = ${n})")
    }

    async fn fetch(&mut self, q: Query) -> Result<Vec<SqliteRow>> {
        Ok(build(&q).fetch_all(&mut *self.tx).await?)
    }

    async fn execute(&mut self, q: Query) -> Result<u64> {
        Ok(build(&q).execute(&mut *self.tx).await?.rows_affected())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    async fn lock(&mut self, _keys: &[i64]) -> Result<()> {
        // The single writer connection already serializes every write transaction.
        Ok(())
    }

    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>> {
        let rows = sqlx::query(
            "SELECT id, group_key, status, resolved_at FROM incidents WHERE id IN (
                SELECT max(id) FROM incidents WHERE group_key IN (SELECT value FROM json_each(?1)) GROUP BY group_key)",
        )
        .bind(json_list(group_keys))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(incident_head).collect()
    }

    async fn attach(&mut self, to: Attach, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = match to {
            Attach::Changes => {
                "INSERT INTO incident_changes (incident_id, deploy_id)
                 SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
                 ON CONFLICT DO NOTHING RETURNING incident_id, deploy_id AS id"
            }
            Attach::Gates => {
                "INSERT INTO incident_gates (incident_id, gate_id)
                 SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
                 ON CONFLICT DO NOTHING RETURNING incident_id, gate_id AS id"
            }
        };
        let rows = sqlx::query(sql)
            .bind(json_list(pairs))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(|r| pair(r, "incident_id", "id")).collect()
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
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
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM alert_events WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids))
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().collect())
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
        .await?;
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
        .await?;
        Ok(())
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        let rows: Vec<_> = deploys
            .iter()
            .map(|d| {
                (
                    &d.id,
                    &d.service,
                    &d.environment,
                    &d.version,
                    &d.previous_version,
                    d.status.as_str(),
                    d.strategy.map(|s| s.as_str()),
                    &d.step,
                    micros(d.started_at),
                    d.finished_at.map(micros),
                    &d.commit,
                    &d.url,
                    &d.actor,
                    json_list(&d.flags),
                    (!d.commit_times.is_empty()).then(|| json_list(&d.commit_times)),
                )
            })
            .collect();
        let columns =
            "id, service, environment, version, previous_version, status, strategy, step, \
                       started_at, finished_at, commit_sha, url, actor, flags, commit_times";
        self.insert_new("deploys", columns, &rows).await
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        let rows: Vec<_> = gates
            .iter()
            .map(|g| {
                (
                    &g.id,
                    &g.service,
                    &g.environment,
                    &g.version,
                    &g.deploy_id,
                    &g.gate,
                    &g.metric,
                    &g.comparison,
                    g.threshold,
                    g.baseline,
                    g.observed,
                    &g.window,
                    &g.step,
                    g.verdict.as_str(),
                    micros(g.evaluated_at),
                )
            })
            .collect();
        let columns = "id, service, environment, version, deploy_id, gate, metric, comparison, \
                       threshold, baseline, observed, window_text, step, verdict, evaluated_at";
        self.insert_new("gate_results", columns, &rows).await
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let (streams, stream_ids) = crate::log_streams(lines);
        sqlx::query(
            "INSERT INTO log_streams (id, labels)
             SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(json_list(&streams))
        .execute(&mut *self.tx)
        .await?;
        let rows: Vec<_> = lines
            .iter()
            .zip(&stream_ids)
            .map(|(l, stream)| {
                (
                    &l.id,
                    &l.service,
                    &l.environment,
                    micros(l.at),
                    &l.level,
                    &l.message,
                    labels_json(&l.metadata),
                    stream,
                )
            })
            .collect();
        let done = sqlx::query(
            "INSERT INTO log_lines (id, service, environment, at, level, message, labels, stream_id)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
                    value ->> 7
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(json_list(&rows))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
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
            ?;
            resolved.extend(done);
        }
        Ok(resolved)
    }
}
