//! The store written once. Every query both dialects can share is here, with
//! `$n` placeholders (sqlx binds them on SQLite too), typed arguments
//! ([`Arg`]) that each dialect encodes its own way (timestamps, JSON, lists),
//! and one decoder per row type that turns what is stored into the domain's
//! types, refusing (with table, row and column) anything it does not know.
//!
//! What really differs lives in `postgres.rs` and `sqlite.rs` behind
//! [`Dialect`] and [`DialectTx`]: connection set-up and migrations, the batch
//! writers of the engine's hot path (`UNNEST` arrays vs. one `json_each`
//! statement), action claims (`SKIP LOCKED` vs. a single writer), advisory
//! locks, and how a list is matched.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::action::{ActionRow, ActionSpec, ActionStatus, NewAction};
use firebreak_domain::alertmanager::AlertStatus;
use firebreak_domain::correlation::{IncidentHead, IncidentStatus, NewIncident};
use firebreak_domain::insights::{Deployment, IncidentRecord, LinkedChange};
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{
    AlertEvent, DeployEvent, DeployStatus, DeployStrategy, GateResult, GateVerdict, LogLine,
};
use serde_json::Value;

#[allow(unused_imports)]
use crate::prelude::{
    AccessStore, ActionItemStore, ActionStore, BatchTx, FlagStore, IncidentStore, InsightStore,
    PostmortemStore, RemediationTx, SlackStore,
};
use crate::{
    ActionChange, ActionFilter, ActionItemChange, ActionItemRow, AuditFilter, AuditRow, CauseWord,
    ChangeCause, ExportOutcome, FlagRow, FlagWrite, History, IncidentAlertRow, IncidentDetail,
    IncidentFilter, IncidentOverview, IncidentRow, InsightsData, LogRow, NewActionItem, NewAudit,
    NewRollout, NewSession, OpenIncident, OutboxClaim, PostmortemRow, PostmortemSave, Presence,
    Result, RevisionRow, Rollout, RolloutChange, RolloutEvent, RolloutStatus, SaveOutcome,
    ServiceEvent, ServiceWindow, SlackClaim, Store, StoreError, StoreTx, TimelineEvent,
    TimelineRow, TrackerStatus,
};

/// One bound value. Each dialect encodes it: a time is `timestamptz` on
/// PostgreSQL and microseconds on SQLite; a list is an array on PostgreSQL
/// and JSON text on SQLite (matched with [`Dialect::any`]).
#[derive(Debug, Clone)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Time(Option<DateTime<Utc>>),
    Json(Option<Value>),
    Bool(Option<bool>),
    Float(Option<f64>),
    Texts(Vec<String>),
    Ints(Vec<i64>),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl From<$t> for Arg { fn from($v: $t) -> Arg { $e } })*
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v));
    i32 => |v| Arg::Int(Some(i64::from(v)));
    Option<i64> => |v| Arg::Int(v);
    Option<i32> => |v| Arg::Int(v.map(i64::from));
    &str => |v| Arg::Text(Some(v.to_string()));
    String => |v| Arg::Text(Some(v));
    &String => |v| Arg::Text(Some(v.clone()));
    Option<&str> => |v| Arg::Text(v.map(str::to_string));
    Option<String> => |v| Arg::Text(v);
    &Option<String> => |v| Arg::Text(v.clone());
    DateTime<Utc> => |v| Arg::Time(Some(v));
    Option<DateTime<Utc>> => |v| Arg::Time(v);
    bool => |v| Arg::Bool(Some(v));
    Value => |v| Arg::Json(Some(v));
    &Value => |v| Arg::Json(Some(v.clone()));
    Option<Value> => |v| Arg::Json(v);
    &Option<Value> => |v| Arg::Json(v.clone());
    Vec<String> => |v| Arg::Texts(v);
    Vec<i64> => |v| Arg::Ints(v);
}

/// A statement and its arguments.
#[derive(Debug, Clone)]
pub struct Query {
    pub sql: Cow<'static, str>,
    pub args: Vec<Arg>,
    /// PostgreSQL: plan with the real parameters every time (never a generic
    /// plan, which may scan a large table). Used for the engine's lookups.
    pub plan_each: bool,
}

pub fn q(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
        plan_each: false,
    }
}

impl Query {
    pub fn bind(mut self, arg: impl Into<Arg>) -> Query {
        self.args.push(arg.into());
        self
    }

    pub fn plan_each(mut self) -> Query {
        self.plan_each = true;
        self
    }

    /// The number the next bind's placeholder takes (`$n`).
    pub fn next_param(&self) -> usize {
        self.args.len() + 1
    }

    /// Narrows the query by ` AND {cond}`, where `{}` in `cond` stands for
    /// the placeholder `value` is bound to.
    pub fn and(mut self, cond: &str, value: impl Into<Arg>) -> Query {
        let param = format!("${}", self.next_param());
        self.args.push(value.into());
        let sql = self.sql.to_mut();
        sql.push_str(" AND ");
        sql.push_str(&cond.replace("{}", &param));
        self
    }

    /// [`Query::and`] when `value` is given; the query unchanged when not.
    /// An optional filter is written into the statement only when used.
    pub fn and_if<A: Into<Arg>>(self, cond: &str, value: Option<A>) -> Query {
        match value {
            Some(v) => self.and(cond, v),
            None => self,
        }
    }

    /// Narrows the query by ` AND {cond}`, a condition without a bind.
    pub fn and_where(mut self, cond: &str) -> Query {
        let sql = self.sql.to_mut();
        sql.push_str(" AND ");
        sql.push_str(cond);
        self
    }

    /// One page, newest first: ` ORDER BY id DESC LIMIT $n`.
    pub fn newest_first(mut self, limit: i64) -> Query {
        let param = format!(" ORDER BY id DESC LIMIT ${}", self.next_param());
        self.args.push(limit.into());
        self.sql.to_mut().push_str(&param);
        self
    }

    /// Locks the rows read for the rest of the transaction, where the
    /// dialect can (`FOR UPDATE`; SQLite's one writer needs nothing).
    pub fn for_update<T: DialectTx>(mut self) -> Query {
        self.sql.to_mut().push_str(T::FOR_UPDATE);
        self
    }
}

/// Reading one column of a stored row, whatever the dialect stored it as.
/// Errors name the column; decoders add the table and row.
pub trait Get {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    fn opt_json(&self, col: &str) -> Result<Option<Value>>;
    fn bool(&self, col: &str) -> Result<bool>;
    fn opt_float(&self, col: &str) -> Result<Option<f64>>;

    fn json(&self, col: &str) -> Result<Value> {
        self.opt_json(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {col} is NULL")))
    }
}

/// Reads a row into a struct: each `field: get` before the `;` reads the
/// column named like the field with that [`Get`] method; each field after it
/// is a local of that name, or `field = expression` (a renamed, computed or
/// checked column).
macro_rules! from_row {
    (@value $field:ident) => { $field };
    (@value $field:ident $value:expr) => { $value };
    ($r:ident => $($ty:ident)::+ {
        $($field:ident: $get:ident),* $(,)?
        $(; $($other:ident $(= $value:expr)?),* $(,)?)?
    }) => {
        $($ty)::+ {
            $($field: $r.$get(stringify!($field))?,)*
            $($($other: from_row!(@value $other $($value)?),)*)?
        }
    };
}

/// A stored value the domain does not know: an error naming table, row and column.
pub fn corrupt(table: &str, row: impl std::fmt::Display, col: &str, what: String) -> StoreError {
    StoreError::Corrupt(format!(
        "{table} row {row}, column {col}: {what}; fix or remove the row (it was not written by this version of Firebreak)"
    ))
}

/// A driver's error reading column `col`, as the store's: a column the
/// query lacks is Firebreak's bug; a value it cannot read is corrupt.
pub(crate) fn column(col: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| match e {
        sqlx::Error::ColumnNotFound(_) => {
            StoreError::Internal(format!("no column {col} in the query"))
        }
        e => StoreError::Corrupt(format!("column {col}: {e}")),
    }
}

/// Hands each row of a driver's stream to `each` without holding them;
/// how many there were.
pub(crate) async fn count_each<R, S>(
    mut rows: S,
    each: &mut (dyn for<'r> FnMut(&'r R) -> Result<()> + Send),
) -> Result<u64>
where
    S: futures_util::Stream<Item = std::result::Result<R, sqlx::Error>> + Unpin,
{
    use futures_util::TryStreamExt;
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        each(&row)?;
        n += 1;
    }
    Ok(n)
}

/// The head of an incident, as correlation reads it.
pub(crate) fn incident_head(r: &impl Get) -> Result<IncidentHead> {
    let id = r.int("id")?;
    let status = r.text("status")?;
    Ok(IncidentHead {
        id,
        group_key: r.text("group_key")?,
        status: firebreak_domain::correlation::IncidentStatus::parse(&status).ok_or_else(|| {
            corrupt(
                "incidents",
                id,
                "status",
                format!("unknown incident status {status:?}"),
            )
        })?,
        resolved_at: r.opt_time("resolved_at")?,
    })
}

/// Adds the table and row to a column error.
fn in_row(table: &'static str, row: String) -> impl Fn(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{table} row {row}: {m}")),
        other => other,
    }
}

/// The dialect a [`Db`] runs on: how it connects, reads, writes and what it
/// does its own way.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    type Row: Get + Send + Sync + 'static;
    type Tx: DialectTx<Row = Self::Row> + 'static;
    const NAME: &'static str;

    /// Runs on a read connection.
    async fn read(&self, q: Query) -> Result<Vec<Self::Row>>;
    /// Runs one statement on the writer, as its own transaction.
    async fn write(&self, q: Query) -> Result<Vec<Self::Row>>;
    /// Streams rows to `each` without holding them (log mining).
    async fn stream(
        &self,
        q: Query,
        each: &mut (dyn for<'r> FnMut(&'r Self::Row) -> Result<()> + Send),
    ) -> Result<u64>;
    /// Reads a query's rows column by column ([`Columns`]), each column
    /// (named as the query names it) read as `cols` says. For reads of many
    /// rows: a year of deploys for insights.
    async fn read_columns(&self, cols: &[(&str, Col)], q: Query) -> Result<Columns>;
    async fn begin(&self) -> Result<Self::Tx>;
    async fn migrate(&self) -> Result<()>;
    async fn ping(&self) -> Result<()>;
    async fn close(&self);

    /// Moves the oldest ready action to `running` under a lease, skipping
    /// targets something else holds; the row carries its old status as `was`.
    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<Self::Row>>;
}

/// One write transaction of a dialect.
#[async_trait]
pub trait DialectTx: Send {
    type Row: Get + Send + Sync + 'static;
    /// Row locks for a read-then-write (` FOR UPDATE`), where they exist.
    const FOR_UPDATE: &'static str;

    /// `expr` is one of the list bound at `$n` ([`Arg::Texts`] / [`Arg::Ints`]).
    fn any(expr: &str, n: usize) -> String;
    /// The JSON array of strings in `expr` contains the text bound at `$n`.
    fn json_array_has(expr: &str, n: usize) -> String;

    async fn fetch(&mut self, q: Query) -> Result<Vec<Self::Row>>;
    async fn execute(&mut self, q: Query) -> Result<u64>;
    async fn commit(self) -> Result<()>;

    // The engine's batch writers and lookups, tuned per dialect.
    async fn lock(&mut self, keys: &[i64]) -> Result<()>;
    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>>;
    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>>;
    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()>;
    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()>;
    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>>;
    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>>;
    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64>;
    /// Inserts (incident, id) pairs into `incident_changes` or `incident_gates`.
    async fn attach(&mut self, to: Attach, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>>;
    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()>;
    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>>;
}

#[derive(Debug, Clone, Copy)]
pub enum Attach {
    Changes,
    Gates,
}

// --- column lists and decoders ----------------------------------------------

/// A stored word the domain knows (a status, a verdict), parsed; else
/// `Corrupt`, naming the column and what it should have been.
fn known<T>(r: &impl Get, col: &str, what: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    word(r.text(col)?, col, what, parse)
}

/// [`known`] for a column that may be NULL.
fn known_opt<T>(
    r: &impl Get,
    col: &str,
    what: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    r.opt_text(col)?
        .map(|w| word(w, col, what, parse))
        .transpose()
}

fn word<T>(word: String, col: &str, what: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(&word)
        .ok_or_else(|| StoreError::Corrupt(format!("column {col}: unknown {what} {word:?}")))
}

pub const INCIDENT_COLUMNS: &str =
    "id, status, service, environment, title, severity, group_key, opened_at, resolved_at,
     acknowledged_at, acknowledged_by, declared_severity, stage, commander, summary, declared_by";

pub fn incident_row(r: &impl Get) -> Result<IncidentRow> {
    let id = r.int("id")?;
    let read = || -> Result<IncidentRow> {
        let status = known(r, "status", "incident status", IncidentStatus::parse)?;
        let status = status.as_str().to_string();
        let response = from_row!(r => crate::IncidentResponse {
            acknowledged_at: opt_time, acknowledged_by: opt_text, declared_severity: opt_text,
            stage: opt_text, commander: opt_text, summary: opt_text, declared_by: opt_text,
        });
        Ok(from_row!(r => IncidentRow {
            service: opt_text, environment: opt_text, title: text, severity: opt_text,
            group_key: text, opened_at: time, resolved_at: opt_time;
            id, status, response
        }))
    };
    read().map_err(in_row("incidents", id.to_string()))
}

pub const DEPLOY_COLUMNS: &str =
    "d.id, d.service, d.environment, d.version, d.previous_version, d.status, d.strategy, \
     d.step, d.started_at, d.finished_at, d.commit_sha, d.url, d.actor, d.flags, d.commit_times";

pub fn deploy_row(r: &impl Get) -> Result<DeployEvent> {
    let id = r.text("id")?;
    let read = || -> Result<DeployEvent> {
        let status = known(r, "status", "deploy status", DeployStatus::parse)?;
        let strategy = known_opt(r, "strategy", "deploy strategy", DeployStrategy::parse)?;
        let flags: Vec<String> = serde_json::from_value(r.json("flags")?).map_err(|e| {
            StoreError::Corrupt(format!("column flags: not a list of flag keys: {e}"))
        })?;
        Ok(from_row!(r => DeployEvent {
            service: text, environment: opt_text, version: text, previous_version: opt_text,
            step: opt_text, started_at: time, finished_at: opt_time, url: opt_text,
            actor: opt_text;
            id = id.clone(), status, strategy, flags, commit = r.opt_text("commit_sha")?,
            commit_times = match r.opt_json("commit_times")? {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v).map_err(|e| {
                    StoreError::Corrupt(format!("column commit_times: not a list of times: {e}"))
                })?,
            }
        }))
    };
    read().map_err(in_row("deploys", format!("{id:?}")))
}

/// The stored `commit_times` (a JSON list of RFC 3339 times, as
/// [`DeployEvent`] serializes them). Read as borrowed strings and parsed by
/// chrono's RFC 3339 parser: a year of deploys holds hundreds of thousands.
fn parse_commit_times(text: &str) -> std::result::Result<Vec<DateTime<Utc>>, String> {
    let times: Option<Vec<&str>> =
        serde_json::from_str(text).map_err(|e| format!("not a list of times: {e}"))?;
    times
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("{t:?} is not a time: {e}"))
        })
        .collect()
}

pub const GATE_COLUMNS: &str =
    "g.id, g.service, g.environment, g.version, g.deploy_id, g.gate, g.metric, g.comparison, \
     g.threshold, g.baseline, g.observed, g.window_text, g.step, g.verdict, g.evaluated_at";

pub fn gate_row(r: &impl Get) -> Result<GateResult> {
    let id = r.text("id")?;
    let read = || -> Result<GateResult> {
        let verdict = known(r, "verdict", "gate verdict", GateVerdict::parse)?;
        Ok(from_row!(r => GateResult {
            service: text, environment: opt_text, version: opt_text, deploy_id: opt_text,
            gate: text, metric: opt_text, comparison: opt_text, threshold: opt_float,
            baseline: opt_float, observed: opt_float, step: opt_text, evaluated_at: time;
            id = id.clone(), verdict, window = r.opt_text("window_text")?
        }))
    };
    read().map_err(in_row("gate_results", format!("{id:?}")))
}

pub const ACTION_COLUMNS: &str =
    "id, dedupe_key, playbook, playbook_version, step_index, kind, target, \
     incident_id, trigger_id, requested_by, status, reason, spec, previous_state, result, attempts, \
     decided_by, created_at, updated_at, not_before, lease_until, lease_owner";

pub fn action_row(r: &impl Get) -> Result<ActionRow> {
    let id = r.int("id")?;
    let read = || -> Result<ActionRow> {
        let status = known(r, "status", "action status", ActionStatus::parse)?;
        let spec: ActionSpec = serde_json::from_value(r.json("spec")?)
            .map_err(|e| StoreError::Corrupt(format!("column spec: not an action spec: {e}")))?;
        let small = |col: &str| {
            i32::try_from(r.int(col)?)
                .map_err(|_| StoreError::Corrupt(format!("column {col}: out of range")))
        };
        Ok(from_row!(r => ActionRow {
            dedupe_key: text, playbook: text, playbook_version: text, kind: text, target: text,
            incident_id: opt_int, trigger_id: text, requested_by: text, reason: opt_text,
            previous_state: opt_json, result: opt_json, decided_by: opt_text, created_at: time,
            updated_at: time, not_before: time, lease_until: opt_time, lease_owner: opt_text;
            id, status, spec, step_index = small("step_index")?, attempts = small("attempts")?
        }))
    };
    read().map_err(in_row("actions", id.to_string()))
}

pub const AUDIT_COLUMNS: &str =
    "id, at, actor, event, action_id, incident_id, playbook, playbook_version, detail";

pub fn audit_row(r: &impl Get) -> Result<AuditRow> {
    let id = r.int("id")?;
    let read = || -> Result<AuditRow> {
        let entry = from_row!(r => NewAudit {
            at: time, actor: text, event: text, action_id: opt_int, incident_id: opt_int,
            playbook: opt_text, playbook_version: opt_text, detail: json,
        });
        Ok(AuditRow { id, entry })
    };
    read().map_err(in_row("audit", id.to_string()))
}

const FLAG_COLUMNS: &str =
    "key, enabled, description, updated_at, updated_by, definition, owner, created_at, last_evaluated_at";

pub fn flag_row(r: &impl Get) -> Result<FlagRow> {
    let key = r.text("key")?;
    let read = || -> Result<FlagRow> {
        let definition =
            match r.opt_text("definition")? {
                None => None,
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                    corrupt("flags", format!("{key:?}"), "definition", e.to_string())
                })?),
            };
        Ok(from_row!(r => FlagRow {
            enabled: bool, description: opt_text, updated_at: time, updated_by: text,
            owner: opt_text, created_at: opt_time, last_evaluated_at: opt_time;
            key = key.clone(), definition
        }))
    };
    read().map_err(in_row("flags", format!("{key:?}")))
}

const ROLLOUT_COLUMNS: &str =
    "id, flag, plan, status, step, generation, step_started_at, action_id,
     waiting, reason, created_by, created_at, started_at, updated_at";

pub fn rollout_row(r: &impl Get) -> Result<Rollout> {
    let id = r.int("id")?;
    let read = || -> Result<Rollout> {
        let status = known(r, "status", "rollout status", RolloutStatus::parse)?;
        let bad = |col: &str, what: String| corrupt("rollouts", id, col, what);
        let plan =
            serde_json::from_value(r.json("plan")?).map_err(|e| bad("plan", e.to_string()))?;
        let step = r
            .opt_int("step")?
            .map(|s| usize::try_from(s).map_err(|_| bad("step", format!("{s} is negative"))))
            .transpose()?;
        let generation =
            i32::try_from(r.int("generation")?).map_err(|e| bad("generation", e.to_string()))?;
        Ok(from_row!(r => Rollout {
            flag: text, step_started_at: opt_time, action_id: opt_int, waiting: opt_text,
            reason: opt_text, created_by: text, created_at: time, started_at: time,
            updated_at: time;
            id, plan, status, step, generation
        }))
    };
    read().map_err(in_row("rollouts", id.to_string()))
}

fn rollout_event_row(r: &impl Get) -> Result<RolloutEvent> {
    Ok(from_row!(r => RolloutEvent {
        rollout_id: int, at: time, kind: text, actor: text, summary: text, ref_id: text,
    }))
}

const POSTMORTEM_COLUMNS: &str =
    "incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by";

pub fn postmortem_row(r: &impl Get) -> Result<PostmortemRow> {
    let id = r.int("incident_id")?;
    let read = || -> Result<PostmortemRow> {
        Ok(from_row!(r => PostmortemRow {
            revision: int, status: text, markdown: text, generated: text, created_at: time,
            updated_at: time, updated_by: text;
            incident_id = id
        }))
    };
    read().map_err(in_row("postmortems", id.to_string()))
}

fn labels(r: &impl Get, col: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_value(r.json(col)?)
        .map_err(|e| StoreError::Corrupt(format!("column {col}: not a label map: {e}")))
}

fn history_alert(r: &impl Get) -> Result<(Option<i64>, AlertEvent)> {
    let id = r.text("id")?;
    let read = || -> Result<(Option<i64>, AlertEvent)> {
        let status = match r.text("status")?.as_str() {
            "firing" => AlertStatus::Firing,
            "resolved" => AlertStatus::Resolved,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "column status: unknown alert status {other:?}"
                )))
            }
        };
        Ok((
            r.opt_int("incident_id")?,
            from_row!(r => AlertEvent {
                fingerprint: text, starts_at: time, ends_at: opt_time, generator_url: text;
                id = id.clone(), status, labels = labels(r, "labels")?,
                annotations = labels(r, "annotations")?,
                truncated_alerts = u64::try_from(r.int("truncated_alerts")?).unwrap_or(0)
            }),
        ))
    };
    read().map_err(in_row("alert_events", format!("{id:?}")))
}

fn open_incident(r: &impl Get) -> Result<OpenIncident> {
    Ok(from_row!(r => OpenIncident {
        id: int, service: opt_text, environment: opt_text, opened_at: time,
    }))
}

pub(crate) fn pair(r: &impl Get, a: &str, b: &str) -> Result<(i64, String)> {
    Ok((r.int(a)?, r.text(b)?))
}

fn decode<R, T>(rows: &[R], f: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Every row `query` reads in the transaction, decoded by `row`.
async fn fetch_all<T: DialectTx, R>(
    tx: &mut T,
    query: Query,
    row: fn(&T::Row) -> Result<R>,
) -> Result<Vec<R>> {
    decode(&tx.fetch(query).await?, row)
}

/// The first row `query` reads in the transaction, decoded; `None` without one.
async fn fetch_first<T: DialectTx, R>(
    tx: &mut T,
    query: Query,
    row: fn(&T::Row) -> Result<R>,
) -> Result<Option<R>> {
    tx.fetch(query).await?.first().map(row).transpose()
}

/// The one row a statement returns (`INSERT … RETURNING`, an `UPDATE` of a
/// row known to exist), decoded; `NotFound` when it returned none.
async fn fetch_one<T: DialectTx, R>(
    tx: &mut T,
    query: Query,
    row: fn(&T::Row) -> Result<R>,
) -> Result<R> {
    fetch_first(tx, query, row)
        .await?
        .ok_or(StoreError::NotFound)
}

fn spec_json(spec: &ActionSpec) -> Result<Value> {
    serde_json::to_value(spec)
        .map_err(|e| StoreError::Internal(format!("cannot encode an action spec: {e}")))
}

// --- statements shared by the store and its transactions ----------------------

/// Ends a person's change to an incident: its audit row and timeline
/// entries, then the commit.
async fn commit_with<T: DialectTx>(
    mut tx: T,
    audit: &NewAudit,
    timeline: &[NewEntry],
) -> Result<()> {
    write_audit(&mut tx, std::slice::from_ref(audit)).await?;
    tx.insert_timeline(timeline).await?;
    tx.commit().await
}

/// [`commit_with`] when the change's statement changed a row (`true`);
/// otherwise nothing is written (`false`).
async fn commit_if_changed<T: DialectTx>(
    tx: T,
    changed: u64,
    audit: &NewAudit,
    timeline: &[NewEntry],
) -> Result<bool> {
    if changed == 0 {
        return Ok(false);
    }
    commit_with(tx, audit, timeline).await?;
    Ok(true)
}

/// An append-only log keyed by its owner and each entry's ref, so that a
/// replayed entry changes nothing: the service timeline and rollout events.
struct Log {
    table: &'static str,
    /// The column naming whose log it is (`service`, `rollout_id`).
    owner: &'static str,
    /// The column naming who or what wrote the entry (`source`, `actor`).
    by: &'static str,
}

/// One entry of a [`Log`]: owner, time, kind, by, summary and ref.
type LogEntry<'a> = (Arg, DateTime<Utc>, &'a str, &'a str, &'a str, &'a str);

async fn append_log<T: DialectTx>(tx: &mut T, log: &Log, entries: Vec<LogEntry<'_>>) -> Result<()> {
    let Log { table, owner, by } = log;
    let sql = format!(
        "INSERT INTO {table} ({owner}, at, kind, {by}, summary, ref_id) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT ({owner}, ref_id) DO NOTHING"
    );
    for (owner, at, kind, by, summary, ref_id) in entries {
        let query = q(sql.clone())
            .bind(owner)
            .bind(at)
            .bind(kind)
            .bind(by)
            .bind(summary)
            .bind(ref_id);
        tx.execute(query).await?;
    }
    Ok(())
}

const SERVICE_TIMELINE: Log = Log {
    table: "service_timeline",
    owner: "service",
    by: "source",
};

const ROLLOUT_EVENTS: Log = Log {
    table: "rollout_events",
    owner: "rollout_id",
    by: "actor",
};

const TOKEN_COLUMNS: &str =
    "id, name, scopes, created_at, created_by, expires_at, last_used_at, revoked_at";

fn token_row(r: &impl Get) -> Result<crate::TokenRow> {
    let id = r.text("id")?;
    let read = || -> Result<crate::TokenRow> {
        let scopes: Vec<String> = serde_json::from_value(r.json("scopes")?)
            .map_err(|e| StoreError::Corrupt(format!("column scopes: {e}")))?;
        let scopes = scopes
            .iter()
            .map(|s| {
                firebreak_domain::access::Scope::parse(s)
                    .map_err(|e| StoreError::Corrupt(format!("column scopes: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(from_row!(r => crate::TokenRow {
            name: text, created_at: time, created_by: text, expires_at: opt_time,
            last_used_at: opt_time, revoked_at: opt_time;
            id = id.clone(), scopes
        }))
    };
    read().map_err(in_row("api_tokens", format!("{id:?}")))
}

const USER_COLUMNS: &str = "username, role, created_at, created_by, disabled_at";

fn user_row(r: &impl Get) -> Result<crate::UserRow> {
    let name = r.text("username")?;
    let read = || -> Result<crate::UserRow> {
        let role = firebreak_domain::access::Role::parse(&r.text("role")?)
            .map_err(|e| StoreError::Corrupt(format!("column role: {e}")))?;
        Ok(from_row!(r => crate::UserRow {
            created_at: time, created_by: text, disabled_at: opt_time;
            username = name.clone(), role
        }))
    };
    read().map_err(in_row("users", format!("{name:?}")))
}

/// `select` (one table, with `service` and `environment` columns) narrowed
/// to a [`ServiceWindow`] on its `time` column, in time order, then `tail`
/// (whose parameters start at `$5`).
fn in_window(select: &str, time: &str, tail: &str, w: ServiceWindow<'_>) -> Query {
    q(format!(
        "{select}
         WHERE service = $1 AND ($2 IS NULL OR environment IS NULL OR environment = $2)
           AND {time} BETWEEN $3 AND $4
         ORDER BY {time}{tail}"
    ))
    .bind(w.service)
    .bind(w.environment)
    .bind(w.from)
    .bind(w.to)
}

/// The SQL store over one dialect. `PgStore` and `SqliteStore` are this.
pub struct Db<D> {
    pub(crate) d: D,
}

/// A write transaction of a [`Db`].
pub struct Tx<T> {
    tx: T,
}

// One file per concern, each `impl`ementing its trait over any dialect with
// the shared SQL here.
mod access;
mod action_items;
mod actions;
mod audit;
mod batch;
mod flags;
mod incidents;
mod insights;
mod postmortems;
mod remediation_tx;
mod slack;

use audit::{audit_hash, write_audit, AUDIT_KEY, KEYED};
pub use audit::{keyed_audit_hash, set_audit_key};

#[async_trait]
impl<D: Dialect> Store for Db<D> {
    fn backend(&self) -> &'static str {
        D::NAME
    }

    async fn migrate(&self) -> Result<()> {
        self.d.migrate().await
    }

    async fn ping(&self) -> Result<()> {
        self.d.ping().await
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(Tx {
            tx: self.d.begin().await?,
        }))
    }

    async fn event_counts(&self) -> Result<[i64; 4]> {
        let rows = self
            .d
            .read(q(
                "SELECT (SELECT count(*) FROM alert_events) AS a, (SELECT count(*) FROM deploys) AS d,
                        (SELECT count(*) FROM gate_results) AS g, (SELECT count(*) FROM log_lines) AS l",
            ))
            .await?;
        let r = rows.first().ok_or(StoreError::NotFound)?;
        Ok([r.int("a")?, r.int("d")?, r.int("g")?, r.int("l")?])
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        let rows = self
            .d
            .read(q("SELECT value FROM settings WHERE key = $1").bind(key))
            .await?;
        rows.first().map(|r| r.text("value")).transpose()
    }

    async fn set_setting(&self, key: &str, value: &str, audit: &NewAudit) -> Result<()> {
        let mut tx = self.d.begin().await?;
        tx.execute(upsert_setting(key, value, audit.at, &audit.actor))
            .await?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.d
            .write(upsert_setting(key, value, Utc::now(), "firebreak"))
            .await?;
        Ok(())
    }

    async fn history_since(&self, since: DateTime<Utc>) -> Result<History> {
        let alerts = self
            .d
            .read(
                q("SELECT id, incident_id, fingerprint, status, labels, annotations, starts_at, ends_at,
                          generator_url, truncated_alerts
                   FROM alert_events WHERE occurred_at >= $1 ORDER BY occurred_at, id")
                .bind(since),
            )
            .await?;
        // Deploys reach further back: the last good deploy before a suspect one.
        let deploys = self
            .d
            .read(
                q(format!(
                    "SELECT {DEPLOY_COLUMNS} FROM deploys d WHERE d.started_at >= $1 ORDER BY d.started_at"
                ))
                .bind(since - chrono::Duration::days(firebreak_domain::action::ROLLBACK_HISTORY_DAYS)),
            )
            .await?;
        let gates = self
            .d
            .read(
                q(format!(
                    "SELECT {GATE_COLUMNS} FROM gate_results g WHERE g.evaluated_at >= $1 ORDER BY g.evaluated_at"
                ))
                .bind(since),
            )
            .await?;
        Ok(History {
            alerts: decode(&alerts, history_alert)?,
            deploys: decode(&deploys, deploy_row)?,
            gates: decode(&gates, gate_row)?,
        })
    }

    async fn close(&self) {
        self.d.close().await;
    }
}

/// What a column read by [`Dialect::read_columns`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Text,
    Int,
    Time,
}

/// One column of a query's result.
#[derive(Debug)]
pub enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl Column {
    pub fn empty(kind: Col) -> Column {
        match kind {
            Col::Text => Column::Text(Vec::new()),
            Col::Int => Column::Int(Vec::new()),
            Col::Time => Column::Time(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Time(v) => v.len(),
        }
    }
}

/// A query's result read column by column, as typed vectors instead of a
/// row object each (PostgreSQL decodes each row by position as it arrives;
/// SQLite aggregates the rows into one JSON text, decoded straight into the
/// columns): what makes a year of insights cheap. Columns are taken out by
/// position, in the order they were asked for.
#[derive(Debug)]
pub struct Columns {
    rows: usize,
    cols: Vec<Option<Column>>,
}

macro_rules! take_column {
    ($($name:ident => $variant:ident($t:ty);)*) => {
        $(pub fn $name(&mut self, i: usize) -> Result<std::vec::IntoIter<Option<$t>>> {
            match self.cols.get_mut(i).and_then(Option::take) {
                Some(Column::$variant(v)) => Ok(v.into_iter()),
                other => Err(StoreError::Internal(format!(
                    "column {i} of a column read is {other:?}, not {}",
                    stringify!($variant)
                ))),
            }
        })*
    };
}

impl Columns {
    /// Columns of equal length (a driver that gave anything else is a bug).
    pub fn new(cols: Vec<Column>) -> Result<Columns> {
        let rows = cols.first().map_or(0, Column::len);
        if cols.iter().any(|c| c.len() != rows) {
            return Err(StoreError::Internal(
                "a column read gave columns of different lengths".into(),
            ));
        }
        Ok(Columns {
            rows,
            cols: cols.into_iter().map(Some).collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    take_column! {
        texts => Text(String);
        ints => Int(i64);
        times => Time(DateTime<Utc>);
    }
}

impl<D: Dialect> Db<D> {
    /// Every row `query` reads, decoded by `row`.
    async fn read_all<T>(&self, query: Query, row: fn(&D::Row) -> Result<T>) -> Result<Vec<T>> {
        decode(&self.d.read(query).await?, row)
    }

    /// The first row `query` reads, decoded; `None` without one.
    async fn read_first<T>(
        &self,
        query: Query,
        row: fn(&D::Row) -> Result<T>,
    ) -> Result<Option<T>> {
        self.d.read(query).await?.first().map(row).transpose()
    }

    /// The first row `query` reads, decoded; `NotFound` without one.
    async fn read_one<T>(&self, query: Query, row: fn(&D::Row) -> Result<T>) -> Result<T> {
        self.read_first(query, row)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Sets a built-in flag in one transaction; for an action, also records
    /// the state it found on the action (`None`: `owner` no longer holds the
    /// action's lease, and nothing was written).
    async fn write_flag(
        &self,
        flag: &FlagWrite<'_>,
        audit: &NewAudit,
        for_action: Option<(i64, &str)>,
    ) -> Result<Option<Option<bool>>> {
        let FlagWrite { key, enabled, .. } = *flag;
        let mut tx = self.d.begin().await?;
        let found = fetch_first(&mut tx, flag_locked::<D::Tx>(key), flag_row).await?;
        let previous = found.as_ref().map(|f| f.enabled);
        // Turned on, a definition first written DISABLED (as in a flagd
        // file) is ENABLED from now on, so that a later kill serves its off
        // variant rather than the caller's default.
        let definition = match found.and_then(|f| f.definition) {
            Some(mut d) if enabled && d.state == firebreak_domain::flagd::FlagState::Disabled => {
                d.state = firebreak_domain::flagd::FlagState::Enabled;
                Some(
                    serde_json::to_string(&d)
                        .map_err(|e| StoreError::Internal(format!("encoding flag {key}: {e}")))?,
                )
            }
            _ => None,
        };
        if let Some((id, owner)) = for_action {
            let state = serde_json::json!({"flag": key, "enabled": previous});
            if tx
                .fetch(fenced_previous_state(id, owner, state))
                .await?
                .is_empty()
            {
                return Ok(None);
            }
        }
        tx.execute(upsert_flag(flag, definition, None, audit.at, None))
            .await?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(Some(previous))
    }
}

/// Reads a flag row, locked for the transaction.
fn flag_locked<T: DialectTx>(key: &str) -> Query {
    q(format!("SELECT {FLAG_COLUMNS} FROM flags WHERE key = $1"))
        .bind(key)
        .for_update::<T>()
}

/// The one write of a flag row: creates it, or updates `enabled` and who
/// changed it when, and each of `description`, `definition` and `owner`
/// that is given (`None` keeps what is stored). `created_at` defaults to `at`.
fn upsert_flag(
    flag: &FlagWrite<'_>,
    definition: Option<String>,
    owner: Option<&str>,
    at: DateTime<Utc>,
    created_at: Option<DateTime<Utc>>,
) -> Query {
    q(
        "INSERT INTO flags (key, enabled, description, updated_at, updated_by, definition, owner,
            created_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, $4))
       ON CONFLICT (key) DO UPDATE SET enabled = $2,
           description = COALESCE($3, flags.description), updated_at = $4, updated_by = $5,
           definition = COALESCE($6, flags.definition), owner = COALESCE($7, flags.owner),
           created_at = COALESCE(flags.created_at, $8)",
    )
    .bind(flag.key)
    .bind(flag.enabled)
    .bind(flag.description)
    .bind(at)
    .bind(flag.by)
    .bind(definition)
    .bind(owner)
    .bind(created_at)
}

/// Records the state an action found, once (a later call keeps the first),
/// only while `owner` holds its running lease; returns the id when it did.
fn fenced_previous_state(id: i64, owner: &str, state: Value) -> Query {
    q(
        "UPDATE actions SET previous_state = COALESCE(previous_state, $3)
       WHERE id = $1 AND lease_owner = $2 AND status = 'running'
       RETURNING id",
    )
    .bind(id)
    .bind(owner)
    .bind(state)
}

fn upsert_setting(key: &str, value: &str, at: DateTime<Utc>, by: &str) -> Query {
    q(
        "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
       ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = $3, updated_by = $4",
    )
    .bind(key)
    .bind(value)
    .bind(at)
    .bind(by)
}

#[async_trait]
impl<T: DialectTx + 'static> StoreTx for Tx<T> {
    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn commit_times_read_back_as_deploy_events_store_them() {
        let times = vec![
            Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap(),
            Utc.timestamp_micros(1_772_000_000_123_456).unwrap(),
        ];
        let stored = serde_json::to_string(&times).unwrap();
        assert_eq!(parse_commit_times(&stored).unwrap(), times);
        assert!(parse_commit_times("null").unwrap().is_empty());
        let err = parse_commit_times(r#"["yesterday"]"#).unwrap_err();
        assert!(err.contains("\"yesterday\" is not a time"), "{err}");
        assert!(parse_commit_times("{}").is_err());
    }
}
