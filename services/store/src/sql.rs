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
use firebreak_domain::correlation::{IncidentHead, NewIncident};
use firebreak_domain::insights::{Deployment, IncidentRecord, LinkedChange};
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{
    AlertEvent, DeployEvent, DeployStatus, DeployStrategy, GateResult, GateVerdict, LogLine,
};
use serde_json::Value;

use crate::{
    ActionChange, ActionFilter, AuditFilter, AuditRow, ChangeCause, FlagRow, History,
    IncidentAlertRow, IncidentDetail, IncidentFilter, IncidentOverview, IncidentRow, LogRow,
    NewAudit, NewRollout, OpenIncident, PostmortemRow, PostmortemSave, Result, RevisionRow,
    Rollout, RolloutChange, RolloutEvent, RolloutStatus, SaveOutcome, ServiceEvent, SlackClaim,
    Store, StoreError, StoreTx, TimelineEvent, TimelineRow,
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

/// A stored value the domain does not know: an error naming table, row and column.
pub fn corrupt(table: &str, row: impl std::fmt::Display, col: &str, what: String) -> StoreError {
    StoreError::Corrupt(format!(
        "{table} row {row}, column {col}: {what}; fix or remove the row (it was not written by this version of Firebreak)"
    ))
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

pub const INCIDENT_COLUMNS: &str =
    "id, status, service, environment, title, severity, group_key, opened_at, resolved_at";

pub fn incident_row(r: &impl Get) -> Result<IncidentRow> {
    let id = r.int("id")?;
    let read = || -> Result<IncidentRow> {
        let status = r.text("status")?;
        if firebreak_domain::correlation::IncidentStatus::parse(&status).is_none() {
            return Err(StoreError::Corrupt(format!(
                "column status: unknown incident status {status:?}"
            )));
        }
        Ok(IncidentRow {
            id,
            status,
            service: r.opt_text("service")?,
            environment: r.opt_text("environment")?,
            title: r.text("title")?,
            severity: r.opt_text("severity")?,
            group_key: r.text("group_key")?,
            opened_at: r.time("opened_at")?,
            resolved_at: r.opt_time("resolved_at")?,
        })
    };
    read().map_err(in_row("incidents", id.to_string()))
}

pub const DEPLOY_COLUMNS: &str =
    "d.id, d.service, d.environment, d.version, d.previous_version, d.status, d.strategy, \
     d.step, d.started_at, d.finished_at, d.commit_sha, d.url, d.actor, d.flags, d.commit_times";

pub fn deploy_row(r: &impl Get) -> Result<DeployEvent> {
    let id = r.text("id")?;
    let read = || -> Result<DeployEvent> {
        let status = r.text("status")?;
        let status = DeployStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("column status: unknown deploy status {status:?}"))
        })?;
        let strategy = match r.opt_text("strategy")? {
            None => None,
            Some(s) => Some(DeployStrategy::parse(&s).ok_or_else(|| {
                StoreError::Corrupt(format!("column strategy: unknown deploy strategy {s:?}"))
            })?),
        };
        let flags: Vec<String> = serde_json::from_value(r.json("flags")?).map_err(|e| {
            StoreError::Corrupt(format!("column flags: not a list of flag keys: {e}"))
        })?;
        Ok(DeployEvent {
            id: id.clone(),
            service: r.text("service")?,
            environment: r.opt_text("environment")?,
            version: r.text("version")?,
            previous_version: r.opt_text("previous_version")?,
            status,
            strategy,
            step: r.opt_text("step")?,
            started_at: r.time("started_at")?,
            finished_at: r.opt_time("finished_at")?,
            commit: r.opt_text("commit_sha")?,
            url: r.opt_text("url")?,
            actor: r.opt_text("actor")?,
            flags,
            commit_times: match r.opt_json("commit_times")? {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v).map_err(|e| {
                    StoreError::Corrupt(format!("column commit_times: not a list of times: {e}"))
                })?,
            },
        })
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
        let verdict = r.text("verdict")?;
        let verdict = GateVerdict::parse(&verdict).ok_or_else(|| {
            StoreError::Corrupt(format!("column verdict: unknown gate verdict {verdict:?}"))
        })?;
        Ok(GateResult {
            id: id.clone(),
            service: r.text("service")?,
            environment: r.opt_text("environment")?,
            version: r.opt_text("version")?,
            deploy_id: r.opt_text("deploy_id")?,
            gate: r.text("gate")?,
            metric: r.opt_text("metric")?,
            comparison: r.opt_text("comparison")?,
            threshold: r.opt_float("threshold")?,
            baseline: r.opt_float("baseline")?,
            observed: r.opt_float("observed")?,
            window: r.opt_text("window_text")?,
            step: r.opt_text("step")?,
            verdict,
            evaluated_at: r.time("evaluated_at")?,
        })
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
        let status = r.text("status")?;
        let status = ActionStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("column status: unknown action status {status:?}"))
        })?;
        let spec: ActionSpec = serde_json::from_value(r.json("spec")?)
            .map_err(|e| StoreError::Corrupt(format!("column spec: not an action spec: {e}")))?;
        Ok(ActionRow {
            id,
            dedupe_key: r.text("dedupe_key")?,
            playbook: r.text("playbook")?,
            playbook_version: r.text("playbook_version")?,
            step_index: i32::try_from(r.int("step_index")?)
                .map_err(|_| StoreError::Corrupt("column step_index: out of range".into()))?,
            kind: r.text("kind")?,
            target: r.text("target")?,
            incident_id: r.opt_int("incident_id")?,
            trigger_id: r.text("trigger_id")?,
            requested_by: r.text("requested_by")?,
            status,
            reason: r.opt_text("reason")?,
            spec,
            previous_state: r.opt_json("previous_state")?,
            result: r.opt_json("result")?,
            attempts: i32::try_from(r.int("attempts")?)
                .map_err(|_| StoreError::Corrupt("column attempts: out of range".into()))?,
            decided_by: r.opt_text("decided_by")?,
            created_at: r.time("created_at")?,
            updated_at: r.time("updated_at")?,
            not_before: r.time("not_before")?,
            lease_until: r.opt_time("lease_until")?,
            lease_owner: r.opt_text("lease_owner")?,
        })
    };
    read().map_err(in_row("actions", id.to_string()))
}

pub const AUDIT_COLUMNS: &str =
    "id, at, actor, event, action_id, incident_id, playbook, playbook_version, detail";

pub fn audit_row(r: &impl Get) -> Result<AuditRow> {
    let id = r.int("id")?;
    let read = || -> Result<AuditRow> {
        Ok(AuditRow {
            id,
            entry: NewAudit {
                at: r.time("at")?,
                actor: r.text("actor")?,
                event: r.text("event")?,
                action_id: r.opt_int("action_id")?,
                incident_id: r.opt_int("incident_id")?,
                playbook: r.opt_text("playbook")?,
                playbook_version: r.opt_text("playbook_version")?,
                detail: r.json("detail")?,
            },
        })
    };
    read().map_err(in_row("audit", id.to_string()))
}

const FLAG_COLUMNS: &str =
    "key, enabled, description, updated_at, updated_by, definition, owner, created_at, last_evaluated_at";

pub fn flag_row(r: &impl Get) -> Result<FlagRow> {
    let key = r.text("key")?;
    let read = || -> Result<FlagRow> {
        Ok(FlagRow {
            key: key.clone(),
            enabled: r.bool("enabled")?,
            description: r.opt_text("description")?,
            updated_at: r.time("updated_at")?,
            updated_by: r.text("updated_by")?,
            definition: match r.opt_text("definition")? {
                None => None,
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                    corrupt("flags", format!("{key:?}"), "definition", e.to_string())
                })?),
            },
            owner: r.opt_text("owner")?,
            created_at: r.opt_time("created_at")?,
            last_evaluated_at: r.opt_time("last_evaluated_at")?,
        })
    };
    read().map_err(in_row("flags", format!("{key:?}")))
}

const ROLLOUT_COLUMNS: &str =
    "id, flag, plan, status, step, generation, step_started_at, action_id,
     waiting, reason, created_by, created_at, started_at, updated_at";

pub fn rollout_row(r: &impl Get) -> Result<Rollout> {
    let id = r.int("id")?;
    let read = || -> Result<Rollout> {
        let status = r.text("status")?;
        Ok(Rollout {
            id,
            flag: r.text("flag")?,
            plan: serde_json::from_value(r.json("plan")?)
                .map_err(|e| corrupt("rollouts", id, "plan", e.to_string()))?,
            status: RolloutStatus::parse(&status).ok_or_else(|| {
                corrupt(
                    "rollouts",
                    id,
                    "status",
                    format!("unknown status {status:?}"),
                )
            })?,
            step: r
                .opt_int("step")?
                .map(|s| {
                    usize::try_from(s)
                        .map_err(|_| corrupt("rollouts", id, "step", format!("{s} is negative")))
                })
                .transpose()?,
            generation: i32::try_from(r.int("generation")?)
                .map_err(|e| corrupt("rollouts", id, "generation", e.to_string()))?,
            step_started_at: r.opt_time("step_started_at")?,
            action_id: r.opt_int("action_id")?,
            waiting: r.opt_text("waiting")?,
            reason: r.opt_text("reason")?,
            created_by: r.text("created_by")?,
            created_at: r.time("created_at")?,
            started_at: r.time("started_at")?,
            updated_at: r.time("updated_at")?,
        })
    };
    read().map_err(in_row("rollouts", id.to_string()))
}

fn rollout_event_row(r: &impl Get) -> Result<RolloutEvent> {
    Ok(RolloutEvent {
        rollout_id: r.int("rollout_id")?,
        at: r.time("at")?,
        kind: r.text("kind")?,
        actor: r.text("actor")?,
        summary: r.text("summary")?,
        ref_id: r.text("ref_id")?,
    })
}

const POSTMORTEM_COLUMNS: &str =
    "incident_id, revision, status, markdown, generated, created_at, updated_at, updated_by";

pub fn postmortem_row(r: &impl Get) -> Result<PostmortemRow> {
    let id = r.int("incident_id")?;
    let read = || -> Result<PostmortemRow> {
        Ok(PostmortemRow {
            incident_id: id,
            revision: r.int("revision")?,
            status: r.text("status")?,
            markdown: r.text("markdown")?,
            generated: r.text("generated")?,
            created_at: r.time("created_at")?,
            updated_at: r.time("updated_at")?,
            updated_by: r.text("updated_by")?,
        })
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
            AlertEvent {
                id: id.clone(),
                fingerprint: r.text("fingerprint")?,
                status,
                labels: labels(r, "labels")?,
                annotations: labels(r, "annotations")?,
                starts_at: r.time("starts_at")?,
                ends_at: r.opt_time("ends_at")?,
                generator_url: r.text("generator_url")?,
                truncated_alerts: u64::try_from(r.int("truncated_alerts")?).unwrap_or(0),
            },
        ))
    };
    read().map_err(in_row("alert_events", format!("{id:?}")))
}

fn open_incident(r: &impl Get) -> Result<OpenIncident> {
    Ok(OpenIncident {
        id: r.int("id")?,
        service: r.opt_text("service")?,
        environment: r.opt_text("environment")?,
        opened_at: r.time("opened_at")?,
    })
}

fn pair(r: &impl Get, a: &str, b: &str) -> Result<(i64, String)> {
    Ok((r.int(a)?, r.text(b)?))
}

fn decode<R, T>(rows: &[R], f: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

fn spec_json(spec: &ActionSpec) -> Result<Value> {
    serde_json::to_value(spec)
        .map_err(|e| StoreError::Internal(format!("cannot encode an action spec: {e}")))
}

// --- statements shared by the store and its transactions ----------------------

/// The key of the audit chain's HMAC: set once per process, before the store
/// writes, from outside the database (`audit.key`, or the key file beside
/// the data). Without one, rows are chained with plain SHA-256 (as before
/// keys existed), which anyone who can write the table can recompute.
static AUDIT_KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A keyed row's hash: `k1:` and the HMAC-SHA256 hex.
const KEYED: &str = "k1:";

/// Sets the audit chain's key for this process; `false` if another key was
/// set already.
pub fn set_audit_key(key: &[u8]) -> bool {
    AUDIT_KEY.set(key.to_vec()).is_ok() || AUDIT_KEY.get().is_some_and(|k| k == key)
}

/// Appends audit rows, each hashed with the one before it, under a lock.
/// Ids are given here (the last id plus one), not by the database's
/// sequence, so a rolled-back write leaves no gap: in a keyed chain a
/// missing id is a removed row.
async fn write_audit<T: DialectTx>(tx: &mut T, rows: &[NewAudit]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.lock(&[firebreak_domain::ids::lock_key("firebreak:audit")])
        .await?;
    let last = tx
        .fetch(q("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"))
        .await?;
    let mut last_id = last.first().map(|r| r.int("id")).transpose()?.unwrap_or(0);
    let mut prev = last
        .first()
        .map(|r| r.opt_text("hash"))
        .transpose()?
        .flatten()
        .unwrap_or_default();
    for r in rows {
        let at = micros_only(r.at);
        let id = last_id + 1;
        let hash = match AUDIT_KEY.get() {
            Some(key) => keyed_audit_hash(key, &prev, id, r, at),
            None => audit_hash(&prev, r, at),
        };
        tx.execute(
            q("INSERT INTO audit (id, at, actor, event, action_id, incident_id, playbook, playbook_version, detail,
                                  prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(id)
            .bind(at)
            .bind(&r.actor)
            .bind(&r.event)
            .bind(r.action_id)
            .bind(r.incident_id)
            .bind(&r.playbook)
            .bind(&r.playbook_version)
            .bind(&r.detail)
            .bind(prev.clone())
            .bind(hash.clone()),
        )
        .await?;
        last_id = id;
        prev = hash;
    }
    Ok(())
}

/// Both stores keep microseconds: hash what is stored.
fn micros_only(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The hash of an audit row: SHA-256 over the previous row's hash and the
/// row's content in a canonical form (keys sorted, times in microseconds).
pub fn audit_hash(prev: &str, r: &NewAudit, at: DateTime<Utc>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(audit_content(r, at).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an audit row's hash covers besides its place in the chain: its
/// content as canonical JSON (keys sorted, the time in microseconds).
fn audit_content(r: &NewAudit, at: DateTime<Utc>) -> String {
    let mut text = String::new();
    canonical(
        &serde_json::json!({
            "at": at.timestamp_micros(), "actor": r.actor, "event": r.event,
            "action_id": r.action_id, "incident_id": r.incident_id,
            "playbook": r.playbook, "playbook_version": r.playbook_version,
            "detail": r.detail,
        }),
        &mut text,
    );
    text
}

/// The hash of an audit row in a keyed chain: HMAC-SHA256, under a key kept
/// outside the database, over the previous row's hash, the row's id and its
/// content in canonical form.
pub fn keyed_audit_hash(
    key: &[u8],
    prev: &str,
    id: i64,
    r: &NewAudit,
    at: DateTime<Utc>,
) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(prev.as_bytes());
    mac.update(b"\n");
    mac.update(id.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(audit_content(r, at).as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(KEYED.len() + 64);
    out.push_str(KEYED);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// JSON with object keys sorted at every level, whatever order the value
/// (or a database's JSON type) keeps them in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

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
        Ok(crate::TokenRow {
            id: id.clone(),
            name: r.text("name")?,
            scopes,
            created_at: r.time("created_at")?,
            created_by: r.text("created_by")?,
            expires_at: r.opt_time("expires_at")?,
            last_used_at: r.opt_time("last_used_at")?,
            revoked_at: r.opt_time("revoked_at")?,
        })
    };
    read().map_err(in_row("api_tokens", format!("{id:?}")))
}

const USER_COLUMNS: &str = "username, role, created_at, created_by, disabled_at";

fn user_row(r: &impl Get) -> Result<crate::UserRow> {
    let name = r.text("username")?;
    let read = || -> Result<crate::UserRow> {
        let role = firebreak_domain::access::Role::parse(&r.text("role")?)
            .map_err(|e| StoreError::Corrupt(format!("column role: {e}")))?;
        Ok(crate::UserRow {
            username: name.clone(),
            role,
            created_at: r.time("created_at")?,
            created_by: r.text("created_by")?,
            disabled_at: r.opt_time("disabled_at")?,
        })
    };
    read().map_err(in_row("users", format!("{name:?}")))
}

fn deploys_between_q(
    service: &str,
    environment: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Query {
    q(format!(
        "SELECT {DEPLOY_COLUMNS} FROM deploys d
         WHERE d.service = $1 AND ($2 IS NULL OR d.environment IS NULL OR d.environment = $2)
           AND d.started_at BETWEEN $3 AND $4
         ORDER BY d.started_at"
    ))
    .bind(service)
    .bind(environment)
    .bind(from)
    .bind(to)
    .plan_each()
}

/// The SQL store over one dialect. `PgStore` and `SqliteStore` are this.
pub struct Db<D> {
    pub(crate) d: D,
}

/// A write transaction of a [`Db`].
pub struct Tx<T> {
    tx: T,
}

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

    async fn list_incidents(&self, f: &IncidentFilter) -> Result<Vec<IncidentRow>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR service = $2)
                       AND ($3 IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4"
                ))
                .bind(&f.status)
                .bind(&f.service)
                .bind(f.before_id)
                .bind(f.limit),
            )
            .await?;
        decode(&rows, incident_row)
    }

    async fn incident_overview(&self, id: i64) -> Result<IncidentOverview> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        let incident = incident_row(rows.first().ok_or(StoreError::NotFound)?)?;
        let alerts = self
            .d
            .read(
                q("SELECT count(*) AS n,
                          COALESCE(SUM(CASE WHEN status = 'firing' THEN 1 ELSE 0 END), 0) AS firing,
                          MIN(starts_at) AS first
                   FROM incident_alerts WHERE incident_id = $1")
                .bind(id),
            )
            .await?;
        let (alert_count, alerts_firing, first_alert) = match alerts.first() {
            Some(r) => (r.int("n")?, r.int("firing")?, r.opt_time("first")?),
            None => (0, 0, None),
        };
        let changes = self
            .d
            .read(
                q(format!(
                    "SELECT {DEPLOY_COLUMNS} FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
                     WHERE c.incident_id = $1 ORDER BY d.started_at DESC"
                ))
                .bind(id),
            )
            .await?;
        let marked = self
            .d
            .read(
                q(
                    "SELECT deploy_id, CASE WHEN cause THEN 1 ELSE 0 END AS cause_n, cause_by,
                          cause_at AS cause_at
                   FROM incident_changes WHERE incident_id = $1 AND cause IS NOT NULL",
                )
                .bind(id),
            )
            .await?;
        let mut causes = BTreeMap::new();
        for r in &marked {
            let read = || -> Result<(String, ChangeCause)> {
                Ok((
                    r.text("deploy_id")?,
                    ChangeCause {
                        cause: r.int("cause_n")? == 1,
                        by: r.opt_text("cause_by")?,
                        at: r.opt_time("cause_at")?,
                    },
                ))
            };
            let (deploy, cause) =
                read().map_err(in_row("incident_changes", format!("of incident {id}")))?;
            causes.insert(deploy, cause);
        }
        let gates = self
            .d
            .read(
                q(format!(
                    "SELECT {GATE_COLUMNS} FROM incident_gates ig JOIN gate_results g ON g.id = ig.gate_id
                     WHERE ig.incident_id = $1 ORDER BY g.evaluated_at"
                ))
                .bind(id),
            )
            .await?;
        let count = self
            .d
            .read(
                q(
                    "SELECT (SELECT count(*) FROM timeline WHERE incident_id = $1)
                        + (SELECT count(*) FROM alert_events WHERE incident_id = $1) AS n",
                )
                .bind(id),
            )
            .await?;
        Ok(IncidentOverview {
            incident,
            alert_count,
            alerts_firing,
            first_alert,
            changes: decode(&changes, deploy_row)?,
            causes,
            gates: decode(&gates, gate_row)?,
            timeline_entries: count.first().map(|r| r.int("n")).transpose()?.unwrap_or(0),
        })
    }

    async fn incident(&self, id: i64) -> Result<IncidentDetail> {
        let o = self.incident_overview(id).await?;
        let alerts = self
            .d
            .read(
                q("SELECT fingerprint, alertname, status, labels, starts_at, ends_at FROM incident_alerts
                   WHERE incident_id = $1 ORDER BY starts_at, fingerprint")
                .bind(id),
            )
            .await?;
        let alerts = decode(&alerts, |r| {
            Ok(IncidentAlertRow {
                fingerprint: r.text("fingerprint")?,
                alertname: r.text("alertname")?,
                status: r.text("status")?,
                labels: r.json("labels")?,
                starts_at: r.time("starts_at")?,
                ends_at: r.opt_time("ends_at")?,
            })
        })
        .map_err(in_row("incident_alerts", format!("of incident {id}")))?;
        Ok(IncidentDetail {
            incident: o.incident,
            alerts,
            changes: o.changes,
            causes: o.causes,
            gates: o.gates,
            timeline_entries: o.timeline_entries,
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
        let rows = self
            .d
            .read(
                q("SELECT at, seq, kind, source, summary, ref_id, alertname, note FROM (
                      SELECT occurred_at AS at, 0 AS seq, status AS kind, 'alertmanager' AS source,
                             NULL AS summary, id AS ref_id, alertname, annotations ->> 'summary' AS note
                      FROM alert_events WHERE incident_id = $1
                      UNION ALL
                      SELECT at, id, kind, source, summary, ref_id, NULL, NULL FROM timeline WHERE incident_id = $1
                   ) t ORDER BY at, seq, ref_id LIMIT $2 OFFSET $3")
                .bind(incident_id)
                .bind(limit)
                .bind(offset),
            )
            .await?;
        decode(&rows, |r| {
            Ok(crate::timeline_row(
                r.time("at")?,
                r.int("seq")?,
                r.text("kind")?,
                r.text("source")?,
                r.opt_text("summary")?,
                r.text("ref_id")?,
                r.opt_text("alertname")?,
                r.opt_text("note")?,
            ))
        })
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

    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<(ActionRow, bool)>> {
        match self.d.claim_action(now, lease_until, owner).await? {
            None => Ok(None),
            Some(row) => {
                let was = row.text("was")?;
                Ok(Some((action_row(&row)?, was != "pending")))
            }
        }
    }

    async fn renew_lease(&self, id: i64, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let rows = self
            .d
            .write(
                q("UPDATE actions SET lease_until = $3
                   WHERE id = $1 AND lease_owner = $2 AND status IN ('running', 'reverting')
                   RETURNING id")
                .bind(id)
                .bind(owner)
                .bind(until),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn expire_leases(
        &self,
        owner_prefix: &str,
        except: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let rows = self
            .d
            .write(
                q("UPDATE actions SET lease_until = $3
                   WHERE status IN ('running', 'reverting') AND lease_owner <> $2
                     AND substr(lease_owner, 1, length($1)) = $1 AND lease_until >= $3
                   RETURNING id")
                .bind(owner_prefix)
                .bind(except)
                .bind(now - chrono::Duration::microseconds(1)),
            )
            .await?;
        Ok(rows.len() as u64)
    }

    async fn record_previous_state(&self, id: i64, owner: &str, state: &Value) -> Result<bool> {
        let rows = self
            .d
            .write(
                q(
                    "UPDATE actions SET previous_state = COALESCE(previous_state, $3)
                   WHERE id = $1 AND lease_owner = $2 AND status = 'running'
                   RETURNING id",
                )
                .bind(id)
                .bind(owner)
                .bind(state),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn transition_action(
        &self,
        id: i64,
        from: &[ActionStatus],
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>> {
        let mut tx = self.d.begin().await?;
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        let (lease_until, lease_owner) = match &change.lease {
            Some((until, owner)) => (Some(*until), Some(owner.clone())),
            None => (None, None),
        };
        let keeps_lease = change.status.holds_target();
        let rows = tx
            .fetch(
                q(format!(
                    "UPDATE actions SET status = $3, updated_at = $4,
                         reason = COALESCE($5, reason), result = COALESCE($6, result),
                         previous_state = COALESCE($7, previous_state), decided_by = COALESCE($8, decided_by),
                         not_before = COALESCE($9, not_before),
                         lease_until = CASE WHEN $10 THEN COALESCE($11, lease_until) ELSE NULL END,
                         lease_owner = CASE WHEN $10 THEN COALESCE($12, lease_owner) ELSE NULL END
                     WHERE id = $1 AND {} AND ($13 IS NULL OR lease_owner = $13)
                     RETURNING {ACTION_COLUMNS}",
                    <D::Tx as DialectTx>::any("status", 2)
                ))
                .bind(id)
                .bind(from)
                .bind(change.status.as_str())
                .bind(change.at)
                .bind(&change.reason)
                .bind(&change.result)
                .bind(&change.previous_state)
                .bind(&change.decided_by)
                .bind(change.not_before)
                .bind(keeps_lease)
                .bind(lease_until)
                .bind(lease_owner)
                .bind(&change.held_by),
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let action = action_row(row)?;
        write_audit(&mut tx, audit).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await?;
        Ok(Some(action))
    }

    async fn action(&self, id: i64) -> Result<ActionRow> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        action_row(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn list_actions(&self, f: &ActionFilter) -> Result<Vec<ActionRow>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {ACTION_COLUMNS} FROM actions
                     WHERE ($1 IS NULL OR incident_id = $1) AND ($2 IS NULL OR status = $2)
                       AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR id < $4)
                     ORDER BY id DESC LIMIT $5"
                ))
                .bind(f.incident_id)
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.since)
                .bind(f.before_id)
                .bind(f.limit),
            )
            .await?;
        decode(&rows, action_row)
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit
                     WHERE ($1 IS NULL OR action_id = $1) AND ($2 IS NULL OR incident_id = $2)
                       AND ($3 IS NULL OR id < $3) AND ($5 IS NULL OR actor = $5)
                       AND ($6 IS NULL OR event = $6)
                     ORDER BY id DESC LIMIT $4"
                ))
                .bind(f.action_id)
                .bind(f.incident_id)
                .bind(f.before_id)
                .bind(f.limit)
                .bind(&f.actor)
                .bind(&f.event),
            )
            .await?;
        decode(&rows, audit_row)
    }

    async fn record(&self, audit: &[NewAudit], timeline: &[NewEntry]) -> Result<()> {
        let mut tx = self.d.begin().await?;
        write_audit(&mut tx, audit).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await
    }

    async fn list_flags(&self) -> Result<Vec<FlagRow>> {
        let rows = self
            .d
            .read(q(format!("SELECT {FLAG_COLUMNS} FROM flags ORDER BY key")))
            .await?;
        decode(&rows, flag_row)
    }

    async fn flag(&self, key: &str) -> Result<FlagRow> {
        let rows = self
            .d
            .read(q(format!("SELECT {FLAG_COLUMNS} FROM flags WHERE key = $1")).bind(key))
            .await?;
        flag_row(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn set_flag(
        &self,
        key: &str,
        enabled: bool,
        description: Option<&str>,
        by: &str,
        audit: &NewAudit,
    ) -> Result<Option<bool>> {
        Ok(self
            .write_flag(key, enabled, description, by, audit, None)
            .await?
            .unwrap_or_default())
    }

    async fn set_flag_for_action(
        &self,
        key: &str,
        enabled: bool,
        audit: &NewAudit,
        action_id: i64,
        owner: &str,
    ) -> Result<Option<Option<bool>>> {
        self.write_flag(
            key,
            enabled,
            None,
            &audit.actor,
            audit,
            Some((action_id, owner)),
        )
        .await
    }

    async fn import_flags(
        &self,
        flags: &[(String, firebreak_domain::flagd::FlagDefinition)],
        by: &str,
        audit: &NewAudit,
    ) -> Result<()> {
        use firebreak_domain::flagd::FlagState;
        let mut tx = self.d.begin().await?;
        for (key, definition) in flags {
            let text = serde_json::to_string(definition)
                .map_err(|e| StoreError::Internal(format!("encoding flag {key}: {e}")))?;
            tx.execute(
                q(
                    "INSERT INTO flags (key, enabled, description, updated_at, updated_by, definition, created_at)
                   VALUES ($1, $2, NULL, $3, $4, $5, $3)
                   ON CONFLICT (key) DO UPDATE SET enabled = $2, updated_at = $3,
                       updated_by = $4, definition = $5",
                )
                .bind(key.as_str())
                .bind(definition.state == FlagState::Enabled)
                .bind(audit.at)
                .bind(by)
                .bind(text),
            )
            .await?;
        }
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await
    }

    async fn delete_flag(&self, key: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(q("DELETE FROM flags WHERE key = $1").bind(key))
            .await?;
        if n > 0 {
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn flags_evaluated(&self, seen: &[(String, DateTime<Utc>)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.d.begin().await?;
        for (key, at) in seen {
            tx.execute(
                q("UPDATE flags SET last_evaluated_at = $2
                   WHERE key = $1 AND (last_evaluated_at IS NULL OR last_evaluated_at < $2)")
                .bind(key.as_str())
                .bind(*at),
            )
            .await?;
        }
        tx.commit().await
    }

    async fn rollout(&self, id: i64) -> Result<Rollout> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        rollout_row(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn list_rollouts(
        &self,
        flag: Option<&str>,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<Rollout>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts
                     WHERE ($1 IS NULL OR flag = $1)
                       AND ($2 = 0 OR status IN ('running', 'paused'))
                     ORDER BY id DESC LIMIT $3"
                ))
                .bind(flag)
                .bind(i64::from(active_only))
                .bind(limit),
            )
            .await?;
        decode(&rows, rollout_row)
    }

    async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEvent>> {
        let rows = self
            .d
            .read(
                q(
                    "SELECT rollout_id, at, kind, actor, summary, ref_id FROM rollout_events
                   WHERE rollout_id = $1 ORDER BY at, id LIMIT 10000",
                )
                .bind(id),
            )
            .await?;
        decode(&rows, rollout_event_row)
    }

    async fn record_service_events(&self, events: &[ServiceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.d.begin().await?;
        for e in events {
            tx.execute(
                q(
                    "INSERT INTO service_timeline (service, at, kind, source, summary, ref_id)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (service, ref_id) DO NOTHING",
                )
                .bind(e.service.as_str())
                .bind(e.at)
                .bind(e.kind.as_str())
                .bind(e.source.as_str())
                .bind(e.summary.as_str())
                .bind(e.ref_id.as_str()),
            )
            .await?;
        }
        tx.commit().await
    }

    async fn service_timeline(&self, service: &str, limit: i64) -> Result<Vec<ServiceEvent>> {
        let rows = self
            .d
            .read(
                q(
                    "SELECT service, at, kind, source, summary, ref_id FROM service_timeline
                   WHERE service = $1 ORDER BY at DESC, id DESC LIMIT $2",
                )
                .bind(service)
                .bind(limit),
            )
            .await?;
        decode(&rows, |r| {
            Ok(ServiceEvent {
                service: r.text("service")?,
                at: r.time("at")?,
                kind: r.text("kind")?,
                source: r.text("source")?,
                summary: r.text("summary")?,
                ref_id: r.text("ref_id")?,
            })
        })
    }

    async fn insights_data(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        service: Option<&str>,
        environment: Option<&str>,
    ) -> Result<(Vec<Deployment>, Vec<IncidentRecord>)> {
        use firebreak_domain::playbook::{FlagState, StepAction};
        // Independent reads, run at once (each on its own connection).
        let (mut d, mut g, mut inc, mut first, mut changes, mut acted) = tokio::try_join!(
            self.d.read_columns(
                &[
                    ("id", Col::Text),
                    ("service", Col::Text),
                    ("environment", Col::Text),
                    ("version", Col::Text),
                    ("status", Col::Text),
                    ("strategy", Col::Text),
                    ("started_at", Col::Time),
                    ("finished_at", Col::Time),
                    ("commit_times", Col::Text),
                ],
                q("SELECT id, service, environment, version, status, strategy,
                          started_at AS started_at, finished_at AS finished_at,
                          CAST(commit_times AS TEXT) AS commit_times
                   FROM deploys
                   WHERE status IN ('succeeded', 'failed', 'rolled_back')
                     AND COALESCE(finished_at, started_at) >= $1
                     AND ($2 IS NULL OR service = $2) AND ($3 IS NULL OR environment = $3)")
                .bind(from)
                .bind(service)
                .bind(environment),
            ),
            self.d.read_columns(
                &[
                    ("service", Col::Text),
                    ("environment", Col::Text),
                    ("version", Col::Text),
                    ("deploy_id", Col::Text),
                ],
                q(
                    "SELECT service, environment, version, deploy_id FROM gate_results
                   WHERE verdict = 'fail' AND evaluated_at >= $1 AND ($2 IS NULL OR service = $2)",
                )
                .bind(from - chrono::Duration::days(1))
                .bind(service),
            ),
            self.d.read_columns(
                &[("id", Col::Int), ("service", Col::Text), ("environment", Col::Text), ("severity", Col::Text),
                  ("opened_at", Col::Time), ("resolved_at", Col::Time)],
                q("SELECT id, service, environment, severity, opened_at AS opened_at, resolved_at AS resolved_at
                   FROM incidents WHERE opened_at >= $1 AND opened_at < $2
                     AND ($3 IS NULL OR service = $3) AND ($4 IS NULL OR environment = $4)")
                .bind(from)
                .bind(to)
                .bind(service)
                .bind(environment),
            ),
            self.d.read_columns(
                &[("incident_id", Col::Int), ("first_alert", Col::Time)],
                q("SELECT a.incident_id, min(a.starts_at) AS first_alert
                   FROM incident_alerts a JOIN incidents i ON i.id = a.incident_id
                   WHERE i.opened_at >= $1 AND i.opened_at < $2
                   GROUP BY a.incident_id")
                .bind(from)
                .bind(to),
            ),
            self.d.read_columns(
                &[("incident_id", Col::Int), ("deploy_id", Col::Text), ("started_at", Col::Time), ("cause_n", Col::Int)],
                q("SELECT c.incident_id, c.deploy_id, d.started_at AS started_at,
                          CASE WHEN c.cause IS NULL THEN -1 WHEN c.cause THEN 1 ELSE 0 END AS cause_n
                   FROM incident_changes c
                   JOIN incidents i ON i.id = c.incident_id
                   JOIN deploys d ON d.id = c.deploy_id
                   WHERE i.opened_at >= $1 AND i.opened_at < $2")
                .bind(from)
                .bind(to),
            ),
            self.d.read_columns(
                &[
                    ("incident_id", Col::Int),
                    ("id", Col::Int),
                    ("spec", Col::Text),
                    ("event", Col::Text),
                    ("at", Col::Time),
                ],
                // The spec as its text, parsed straight into an action spec.
                q("SELECT a.incident_id, a.id, CAST(a.spec AS TEXT) AS spec, au.event, au.at AS at
                   FROM actions a JOIN audit au ON au.action_id = a.id
                   WHERE a.incident_id IS NOT NULL AND a.kind IN ('kill_switch', 'rollback')
                     AND au.event IN ('executed', 'verified') AND a.created_at >= $1")
                .bind(from),
            ),
        )?;
        let any_failed_gate = g.rows() > 0;
        let mut by_deploy: HashSet<String> = HashSet::new();
        let mut by_version: HashSet<(String, String)> = HashSet::new();
        let mut by_version_env: HashSet<(String, String, String)> = HashSet::new();
        for (((service, env), version), deploy) in g
            .texts(0)?
            .zip(g.texts(1)?)
            .zip(g.texts(2)?)
            .zip(g.texts(3)?)
        {
            let service = service.unwrap_or_default();
            if let Some(d) = deploy {
                by_deploy.insert(d);
            }
            if let Some(v) = version {
                match env {
                    None => {
                        by_version.insert((service, v));
                    }
                    Some(e) => {
                        by_version_env.insert((service, v, e));
                    }
                }
            }
        }
        let mut deployments = Vec::with_capacity(d.rows());
        let (mut services, mut environments, mut versions) =
            (d.texts(1)?, d.texts(2)?, d.texts(3)?);
        let (mut statuses, mut strategies) = (d.texts(4)?, d.texts(5)?);
        let (mut started, mut finished, mut commits) = (d.times(6)?, d.times(7)?, d.texts(8)?);
        for id in d.texts(0)? {
            // The columns are of equal length (`Columns::new`).
            let id = id.unwrap_or_default();
            let bad = |col: &str, what: String| corrupt("deploys", &id, col, what);
            let status = statuses.next().flatten().unwrap_or_default();
            let status = DeployStatus::parse(&status)
                .ok_or_else(|| bad("status", format!("unknown status {status:?}")))?;
            let strategy = match strategies.next().flatten() {
                None => None,
                Some(s) => Some(
                    DeployStrategy::parse(&s)
                        .ok_or_else(|| bad("strategy", format!("unknown strategy {s:?}")))?,
                ),
            };
            let service = services.next().flatten().unwrap_or_default();
            let environment = environments.next().flatten();
            let version = versions.next().flatten().unwrap_or_default();
            // Failed gates are few: look them up only when there are any.
            let gate_failed = any_failed_gate
                && (by_deploy.contains(&id)
                    || by_version.contains(&(service.clone(), version.clone()))
                    || environment.as_ref().is_some_and(|e| {
                        by_version_env.contains(&(service.clone(), version.clone(), e.clone()))
                    })
                    || (environment.is_none()
                        && by_version_env
                            .iter()
                            .any(|(s, v, _)| *s == service && *v == version)));
            let started = started
                .next()
                .flatten()
                .ok_or_else(|| bad("started_at", "NULL".into()))?;
            let commit_times = match commits.next().flatten() {
                None => Vec::new(),
                Some(t) => parse_commit_times(&t).map_err(|e| bad("commit_times", e))?,
            };
            deployments.push(Deployment {
                at: finished.next().flatten().unwrap_or(started),
                commit_times,
                id,
                service,
                environment,
                version,
                status,
                strategy,
                gate_failed,
            });
        }
        let mut records: HashMap<i64, IncidentRecord> = HashMap::with_capacity(inc.rows());
        let (mut services, mut environments, mut severities) =
            (inc.texts(1)?, inc.texts(2)?, inc.texts(3)?);
        let (mut opened, mut resolved) = (inc.times(4)?, inc.times(5)?);
        for id in inc.ints(0)? {
            let id = id.unwrap_or_default();
            records.insert(
                id,
                IncidentRecord {
                    id,
                    service: services.next().flatten(),
                    environment: environments.next().flatten(),
                    severity: severities.next().flatten(),
                    opened_at: opened
                        .next()
                        .flatten()
                        .ok_or_else(|| corrupt("incidents", id, "opened_at", "NULL".into()))?,
                    first_alert: None,
                    mitigated_at: None,
                    resolved_at: resolved.next().flatten(),
                    feature_disabled_at: None,
                    changes: Vec::new(),
                },
            );
        }
        for (id, at) in first.ints(0)?.zip(first.times(1)?) {
            if let Some(i) = records.get_mut(&id.unwrap_or_default()) {
                i.first_alert = at;
            }
        }
        let (mut deploys, mut started, mut causes) =
            (changes.texts(1)?, changes.times(2)?, changes.ints(3)?);
        for id in changes.ints(0)? {
            let (deploy_id, started_at, cause) = (
                deploys.next().flatten(),
                started.next().flatten(),
                causes.next().flatten(),
            );
            if let (Some(i), Some(started_at)) =
                (records.get_mut(&id.unwrap_or_default()), started_at)
            {
                i.changes.push(LinkedChange {
                    deploy_id: deploy_id.unwrap_or_default(),
                    started_at,
                    cause: match cause {
                        Some(1) => Some(true),
                        Some(0) => Some(false),
                        _ => None,
                    },
                });
            }
        }
        let (mut actions, mut specs) = (acted.ints(1)?, acted.texts(2)?);
        let (mut events, mut ats) = (acted.texts(3)?, acted.times(4)?);
        for id in acted.ints(0)? {
            let (action, spec, event, at) = (
                actions.next().flatten().unwrap_or_default(),
                specs.next().flatten().unwrap_or_default(),
                events.next().flatten(),
                ats.next().flatten(),
            );
            let (Some(i), Some(at)) = (records.get_mut(&id.unwrap_or_default()), at) else {
                continue;
            };
            let spec = serde_json::from_str::<ActionSpec>(&spec)
                .map_err(|e| corrupt("actions", action, "spec", e.to_string()))?;
            let turns_off =
                matches!(&spec.step, StepAction::KillSwitch(k) if k.state == FlagState::Off);
            let mitigates = turns_off || matches!(spec.step, StepAction::Rollback(_));
            let event = event.unwrap_or_default();
            if event == "executed" && mitigates {
                i.mitigated_at = Some(i.mitigated_at.map_or(at, |m| m.min(at)));
            }
            if event == "verified" && turns_off {
                i.feature_disabled_at = Some(i.feature_disabled_at.map_or(at, |m| m.min(at)));
            }
        }
        let mut records: Vec<IncidentRecord> = records.into_values().collect();
        records.sort_by_key(|i| i.id);
        Ok((deployments, records))
    }

    async fn set_cause(
        &self,
        incident_id: i64,
        deploy_id: &str,
        cause: Option<bool>,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q(
                    "UPDATE incident_changes SET cause = $3, cause_by = $4, cause_at = $5
                   WHERE incident_id = $1 AND deploy_id = $2",
                )
                .bind(incident_id)
                .bind(deploy_id)
                .bind(Arg::Bool(cause))
                .bind(cause.map(|_| audit.actor.clone()))
                .bind(cause.map(|_| audit.at)),
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await?;
        Ok(true)
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

    async fn resolve_incident_manually(
        &self,
        id: i64,
        at: DateTime<Utc>,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q(
                    "UPDATE incidents SET status = 'resolved', resolved_at = $2, updated_at = $3
                   WHERE id = $1 AND status = 'open'",
                )
                .bind(id)
                .bind(at)
                .bind(Utc::now()),
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.insert_timeline(timeline).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_slack_message(
        &self,
        seq: i64,
        incident_id: i64,
        at: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<SlackClaim> {
        let rows = self
            .d
            .write(
                q(
                    "INSERT INTO slack_messages (seq, incident_id, claimed_at) VALUES ($1, $2, $3)
                   ON CONFLICT (seq) DO NOTHING RETURNING seq",
                )
                .bind(seq)
                .bind(incident_id)
                .bind(at),
            )
            .await?;
        if !rows.is_empty() {
            return Ok(SlackClaim::Ours);
        }
        // Claimed before: take it over if its claimer never posted it and
        // has had longer than a post takes (one writer wins).
        let taken = self
            .d
            .write(
                q("UPDATE slack_messages SET claimed_at = $2
                   WHERE seq = $1 AND ts IS NULL AND claimed_at < $3 RETURNING seq")
                .bind(seq)
                .bind(at)
                .bind(stale_before),
            )
            .await?;
        if !taken.is_empty() {
            return Ok(SlackClaim::Ours);
        }
        let posted = self
            .d
            .read(q("SELECT ts FROM slack_messages WHERE seq = $1").bind(seq))
            .await?;
        Ok(match posted.first().map(|r| r.opt_text("ts")) {
            Some(Ok(Some(_))) => SlackClaim::Posted,
            Some(Err(e)) => return Err(e),
            // Released between the two statements: the next look claims it.
            Some(Ok(None)) | None => SlackClaim::InFlight,
        })
    }

    async fn slack_message_posted(&self, seq: i64, channel: &str, ts: &str) -> Result<()> {
        self.d
            .write(
                q("UPDATE slack_messages SET channel = $2, ts = $3 WHERE seq = $1")
                    .bind(seq)
                    .bind(channel)
                    .bind(ts),
            )
            .await?;
        Ok(())
    }

    async fn release_slack_message(&self, seq: i64) -> Result<()> {
        self.d
            .write(q("DELETE FROM slack_messages WHERE seq = $1 AND ts IS NULL").bind(seq))
            .await?;
        Ok(())
    }

    async fn slack_thread(&self, incident_id: i64) -> Result<Option<(String, String)>> {
        let rows = self
            .d
            .read(
                q("SELECT channel, ts FROM slack_messages
                   WHERE incident_id = $1 AND ts IS NOT NULL ORDER BY seq LIMIT 1")
                .bind(incident_id),
            )
            .await?;
        rows.first()
            .map(|r| Ok((r.text("channel")?, r.text("ts")?)))
            .transpose()
    }

    async fn timeline_since(
        &self,
        after_seq: i64,
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<TimelineEvent>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT id, incident_id, at, kind, source, summary, ref_id FROM timeline
                     WHERE id > $1 AND {} ORDER BY id LIMIT $3",
                    <D::Tx as DialectTx>::any("kind", 2)
                ))
                .bind(after_seq)
                .bind(kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                .bind(limit),
            )
            .await?;
        decode(&rows, |r| {
            Ok(TimelineEvent {
                seq: r.int("id")?,
                incident_id: r.int("incident_id")?,
                at: r.time("at")?,
                kind: r.text("kind")?,
                source: r.text("source")?,
                summary: r.text("summary")?,
                ref_id: r.text("ref_id")?,
            })
        })
    }

    async fn postmortem(&self, incident_id: i64) -> Result<Option<PostmortemRow>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {POSTMORTEM_COLUMNS} FROM postmortems WHERE incident_id = $1"
                ))
                .bind(incident_id),
            )
            .await?;
        rows.first().map(postmortem_row).transpose()
    }

    async fn save_postmortem(&self, save: &PostmortemSave) -> Result<SaveOutcome> {
        let mut tx = self.d.begin().await?;
        let rows = match save.expected_revision {
            None => {
                tx.fetch(
                    q(format!(
                        "INSERT INTO postmortems ({POSTMORTEM_COLUMNS})
                         VALUES ($1, 1, $2, $3, COALESCE($4, ''), $5, $5, $6)
                         ON CONFLICT (incident_id) DO NOTHING
                         RETURNING {POSTMORTEM_COLUMNS}"
                    ))
                    .bind(save.incident_id)
                    .bind(&save.status)
                    .bind(&save.markdown)
                    .bind(&save.generated)
                    .bind(save.at)
                    .bind(&save.author),
                )
                .await?
            }
            Some(expected) => {
                tx.fetch(
                    q(format!(
                        "UPDATE postmortems SET revision = revision + 1, status = $3, markdown = $4,
                             generated = COALESCE($5, generated), updated_at = $6, updated_by = $7
                         WHERE incident_id = $1 AND revision = $2
                         RETURNING {POSTMORTEM_COLUMNS}"
                    ))
                    .bind(save.incident_id)
                    .bind(expected)
                    .bind(&save.status)
                    .bind(&save.markdown)
                    .bind(&save.generated)
                    .bind(save.at)
                    .bind(&save.author),
                )
                .await?
            }
        };
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
            Ok(RevisionRow {
                revision: r.int("revision")?,
                kind: r.text("kind")?,
                status: r.text("status")?,
                author: r.text("author")?,
                created_at: r.time("created_at")?,
                markdown: r.text("markdown")?,
            })
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

    async fn scan_logs(
        &self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: Option<i64>,
        each: &mut (dyn FnMut(LogRow) + Send),
    ) -> Result<u64> {
        let query = q("SELECT at, level, message FROM log_lines
                       WHERE service = $1 AND ($2 IS NULL OR environment IS NULL OR environment = $2)
                         AND at BETWEEN $3 AND $4
                       ORDER BY at LIMIT $5")
        .bind(service)
        .bind(environment)
        .bind(from)
        .bind(to)
        .bind(limit.unwrap_or(i64::MAX));
        self.d
            .stream(query, &mut |r| {
                each(LogRow {
                    at: r.time("at")?,
                    level: r.opt_text("level")?,
                    message: r.text("message")?,
                });
                Ok(())
            })
            .await
    }

    async fn create_token(&self, t: &crate::NewToken, audit: &NewAudit) -> Result<crate::TokenRow> {
        let mut tx = self.d.begin().await?;
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        let rows = tx
            .fetch(
                q(format!(
                    "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at, created_by, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.secret_hash)
                .bind(serde_json::json!(scopes))
                .bind(t.at)
                .bind(&t.created_by)
                .bind(t.expires_at),
            )
            .await?;
        let row = token_row(rows.first().ok_or(StoreError::NotFound)?)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn token_secret(&self, id: &str) -> Result<Option<(crate::TokenRow, String)>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        rows.first()
            .map(|r| Ok((token_row(r)?, r.text("secret_hash")?)))
            .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<crate::TokenRow>> {
        let rows = self
            .d
            .read(q(format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            )))
            .await?;
        decode(&rows, token_row)
    }

    async fn revoke_token(&self, id_or_name: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q("UPDATE api_tokens SET revoked_at = $2
                   WHERE (id = $1 OR name = $1) AND revoked_at IS NULL")
                .bind(id_or_name)
                .bind(audit.at),
            )
            .await?;
        if n > 0 {
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        self.d
            .write(
                q("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at),
            )
            .await?;
        Ok(())
    }

    async fn count_credentials(&self, now: DateTime<Utc>) -> Result<u64> {
        let rows = self
            .d
            .read(
                q("SELECT (SELECT count(*) FROM api_tokens
                           WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1))
                        + (SELECT count(*) FROM users WHERE disabled_at IS NULL) AS n")
                .bind(now),
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.int("n"))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64)
    }

    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: firebreak_domain::access::Role,
        audit: &NewAudit,
    ) -> Result<crate::UserRow> {
        let mut tx = self.d.begin().await?;
        let rows = tx
            .fetch(
                q(format!(
                    "INSERT INTO users (username, password_hash, role, created_at, created_by)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
                ))
                .bind(username)
                .bind(password_hash)
                .bind(role.as_str())
                .bind(audit.at)
                .bind(&audit.actor),
            )
            .await?;
        let row = user_row(rows.first().ok_or(StoreError::NotFound)?)?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn user_secret(&self, username: &str) -> Result<Option<(crate::UserRow, String)>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {USER_COLUMNS}, password_hash FROM users
                     WHERE username = $1 AND disabled_at IS NULL"
                ))
                .bind(username),
            )
            .await?;
        rows.first()
            .map(|r| Ok((user_row(r)?, r.text("password_hash")?)))
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<crate::UserRow>> {
        let rows = self
            .d
            .read(q(format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username"
            )))
            .await?;
        decode(&rows, user_row)
    }

    async fn disable_user(&self, username: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q("UPDATE users SET disabled_at = $2 WHERE username = $1 AND disabled_at IS NULL")
                    .bind(username)
                    .bind(audit.at),
            )
            .await?;
        if n > 0 {
            tx.execute(q("DELETE FROM sessions WHERE username = $1").bind(username))
                .await?;
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn create_session(
        &self,
        id_hash: &str,
        username: &str,
        csrf_token: &str,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.d.begin().await?;
        // Expired sessions go as new ones come.
        tx.execute(q("DELETE FROM sessions WHERE expires_at < $1").bind(at))
            .await?;
        tx.execute(
            q(
                "INSERT INTO sessions (id_hash, username, csrf_token, created_at, expires_at)
               VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(username)
            .bind(csrf_token)
            .bind(at)
            .bind(expires_at),
        )
        .await?;
        tx.commit().await
    }

    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<crate::SessionRow>> {
        let rows = self
            .d
            .read(
                q(
                    "SELECT u.username, u.role, u.created_at, u.created_by, u.disabled_at,
                          s.csrf_token, s.expires_at
                   FROM sessions s JOIN users u ON u.username = s.username
                   WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL",
                )
                .bind(id_hash)
                .bind(now),
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(crate::SessionRow {
                    user: user_row(r)?,
                    csrf_token: r.text("csrf_token")?,
                    expires_at: r.time("expires_at")?,
                })
            })
            .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        self.d
            .write(q("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash))
            .await?;
        Ok(())
    }

    async fn verify_audit(&self) -> Result<crate::AuditCheck> {
        let mut check = crate::AuditCheck::default();
        let mut after = 0i64;
        let mut prev: Option<String> = None;
        let mut last_keyed: Option<i64> = None;
        loop {
            let rows = self
                .d
                .read(
                    q(format!(
                        "SELECT {AUDIT_COLUMNS}, prev_hash, hash FROM audit WHERE id > $1 ORDER BY id LIMIT 1000"
                    ))
                    .bind(after),
                )
                .await?;
            if rows.is_empty() {
                return Ok(check);
            }
            for r in &rows {
                let row = audit_row(r)?;
                after = row.id;
                let (stored_prev, stored) = (r.opt_text("prev_hash")?, r.opt_text("hash")?);
                let Some(stored) = stored else {
                    if prev.is_none() {
                        check.before_chain += 1;
                        continue;
                    }
                    check.broken = Some((row.id, "has no hash inside the chain".into()));
                    return Ok(check);
                };
                let expected_prev = prev.clone().unwrap_or_default();
                if stored_prev.as_deref().unwrap_or("") != expected_prev {
                    check.broken = Some((
                        row.id,
                        "does not follow the row before it (a row was removed, inserted or changed)".into(),
                    ));
                    return Ok(check);
                }
                let why = if stored.starts_with(KEYED) {
                    match (AUDIT_KEY.get(), last_keyed) {
                        (None, _) => Some("is keyed, and no audit key is configured: set audit.key, or keep the key file beside the data".to_string()),
                        (Some(_), Some(last)) if row.id != last + 1 => Some(format!(
                            "follows row {last}: rows {} to {} are missing",
                            last + 1,
                            row.id - 1
                        )),
                        (Some(key), _) if keyed_audit_hash(key, &expected_prev, row.id, &row.entry, row.entry.at) != stored => {
                            Some("its content does not match its keyed hash (the row was changed, or the key is not the one it was written with)".into())
                        }
                        _ => None,
                    }
                } else if last_keyed.is_some() {
                    Some(
                        "is not keyed although the rows before it are (rewritten without the key)"
                            .into(),
                    )
                } else if audit_hash(&expected_prev, &row.entry, row.entry.at) != stored {
                    Some("its content does not match its hash (the row was changed)".into())
                } else {
                    None
                };
                if let Some(why) = why {
                    check.broken = Some((row.id, why));
                    return Ok(check);
                }
                if stored.starts_with(KEYED) {
                    last_keyed = Some(row.id);
                    check.keyed += 1;
                    check.keyed_from.get_or_insert(row.id);
                }
                check.verified += 1;
                check.head = Some((row.id, stored.clone()));
                prev = Some(stored);
            }
        }
    }

    async fn audit_hash_at(&self, id: Option<i64>) -> Result<Option<(i64, Option<String>)>> {
        let rows = match id {
            None => {
                self.d
                    .read(q("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"))
                    .await?
            }
            Some(id) => {
                self.d
                    .read(q("SELECT id, hash FROM audit WHERE id = $1").bind(id))
                    .await?
            }
        };
        rows.first()
            .map(|r| Ok((r.int("id")?, r.opt_text("hash")?)))
            .transpose()
    }

    async fn incident_times(&self, ids: &[i64]) -> Result<Vec<crate::IncidentTimes>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT i.id,
                       (SELECT min(al.starts_at) FROM incident_alerts al WHERE al.incident_id = i.id) AS first_alert,
                       (SELECT max(d.started_at) FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
                         WHERE c.incident_id = i.id AND d.started_at <= i.opened_at) AS suspect_at,
                       (SELECT min(au.at) FROM audit au JOIN actions a ON a.id = au.action_id
                         WHERE a.incident_id = i.id AND au.event = 'executed'
                           AND a.kind IN ('kill_switch', 'rollback')) AS mitigated_at,
                       (SELECT max(al.ends_at) FROM incident_alerts al WHERE al.incident_id = i.id) AS last_end
                     FROM incidents i WHERE {}",
                    <D::Tx as DialectTx>::any("i.id", 1)
                ))
                .bind(ids.to_vec()),
            )
            .await?;
        decode(&rows, |r| {
            Ok(crate::IncidentTimes {
                incident_id: r.int("id")?,
                first_alert: r.opt_time("first_alert")?,
                suspect_at: r.opt_time("suspect_at")?,
                mitigated_at: r.opt_time("mitigated_at")?,
                last_alert_end: r.opt_time("last_end")?,
            })
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
    /// Sets a built-in flag in one transaction; for an action, also records
    /// the state it found on the action (`None`: `owner` no longer holds the
    /// action's lease, and nothing was written).
    async fn write_flag(
        &self,
        key: &str,
        enabled: bool,
        description: Option<&str>,
        by: &str,
        audit: &NewAudit,
        for_action: Option<(i64, &str)>,
    ) -> Result<Option<Option<bool>>> {
        let mut tx = self.d.begin().await?;
        let found = tx
            .fetch(
                q(format!(
                    "SELECT {FLAG_COLUMNS} FROM flags WHERE key = $1{}",
                    <D::Tx as DialectTx>::FOR_UPDATE
                ))
                .bind(key),
            )
            .await?;
        let found = found.first().map(flag_row).transpose()?;
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
            let n = tx
                .execute(
                    q(
                        "UPDATE actions SET previous_state = COALESCE(previous_state, $3)
                       WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(state),
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
        }
        tx.execute(
            q(
                "INSERT INTO flags (key, enabled, description, updated_at, updated_by, created_at)
               VALUES ($1, $2, $3, $4, $5, $4)
               ON CONFLICT (key) DO UPDATE SET enabled = $2,
                   description = COALESCE($3, flags.description), updated_at = $4, updated_by = $5,
                   definition = COALESCE($6, flags.definition)",
            )
            .bind(key)
            .bind(enabled)
            .bind(description)
            .bind(audit.at)
            .bind(by)
            .bind(definition),
        )
        .await?;
        write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(Some(previous))
    }
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
    async fn flag_for_update(&mut self, key: &str) -> Result<Option<FlagRow>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT {FLAG_COLUMNS} FROM flags WHERE key = $1{}",
                    T::FOR_UPDATE
                ))
                .bind(key),
            )
            .await?;
        rows.first().map(flag_row).transpose()
    }

    async fn put_flag(&mut self, f: &FlagRow) -> Result<()> {
        let definition = f
            .definition
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Internal(format!("encoding flag {}: {e}", f.key)))?;
        self.tx
            .execute(
                q("INSERT INTO flags (key, enabled, description, updated_at, updated_by, definition,
                        owner, created_at, last_evaluated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (key) DO UPDATE SET enabled = $2, description = $3, updated_at = $4,
                       updated_by = $5, definition = $6, owner = $7,
                       created_at = COALESCE(flags.created_at, $8)")
                .bind(f.key.as_str())
                .bind(f.enabled)
                .bind(f.description.as_deref())
                .bind(f.updated_at)
                .bind(f.updated_by.as_str())
                .bind(definition)
                .bind(f.owner.as_deref())
                .bind(f.created_at)
                .bind(f.last_evaluated_at),
            )
            .await?;
        Ok(())
    }

    async fn note_previous_state(&mut self, id: i64, owner: &str, state: &Value) -> Result<bool> {
        let n = self
            .tx
            .execute(
                q(
                    "UPDATE actions SET previous_state = COALESCE(previous_state, $3)
                   WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(owner)
                .bind(state),
            )
            .await?;
        Ok(n > 0)
    }

    async fn insert_rollout(&mut self, r: &NewRollout) -> Result<Rollout> {
        let plan = serde_json::to_value(&r.plan)
            .map_err(|e| StoreError::Internal(format!("encoding a rollout plan: {e}")))?;
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "INSERT INTO rollouts (flag, plan, status, generation, created_by, created_at,
                         started_at, updated_at)
                     VALUES ($1, $2, 'running', 0, $3, $4, $4, $4)
                     RETURNING {ROLLOUT_COLUMNS}"
                ))
                .bind(r.flag.as_str())
                .bind(plan)
                .bind(r.created_by.as_str())
                .bind(r.at),
            )
            .await?;
        rollout_row(rows.first().ok_or(StoreError::NotFound)?)
    }

    async fn active_rollouts(&mut self) -> Result<Vec<Rollout>> {
        let rows = self
            .tx
            .fetch(q(format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts
                 WHERE status IN ('running', 'paused') ORDER BY id"
            )))
            .await?;
        decode(&rows, rollout_row)
    }

    async fn update_rollout(
        &mut self,
        id: i64,
        from: &[RolloutStatus],
        c: &RolloutChange,
    ) -> Result<Option<Rollout>> {
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        let step = c
            .step
            .map(|s| s.map(|s| i64::try_from(s).unwrap_or(i64::MAX)));
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "UPDATE rollouts SET
                         status = COALESCE($3, status),
                         step = CASE WHEN $4 = 1 THEN $5 ELSE step END,
                         step_started_at = CASE WHEN $6 = 1 THEN $7 ELSE step_started_at END,
                         action_id = CASE WHEN $8 = 1 THEN $9 ELSE action_id END,
                         waiting = CASE WHEN $10 = 1 THEN $11 ELSE waiting END,
                         reason = CASE WHEN $12 = 1 THEN $13 ELSE reason END,
                         generation = generation + $14,
                         started_at = CASE WHEN $14 = 1 THEN $15 ELSE started_at END,
                         updated_at = $15
                     WHERE id = $1 AND {} AND ($16 IS NULL OR generation = $16)
                     RETURNING {ROLLOUT_COLUMNS}",
                    T::any("status", 2)
                ))
                .bind(id)
                .bind(from)
                .bind(c.status.map(|s| s.as_str()))
                .bind(i64::from(c.step.is_some()))
                .bind(step.flatten())
                .bind(i64::from(c.step_started_at.is_some()))
                .bind(c.step_started_at.flatten())
                .bind(i64::from(c.action_id.is_some()))
                .bind(c.action_id.flatten())
                .bind(i64::from(c.waiting.is_some()))
                .bind(c.waiting.clone().flatten())
                .bind(i64::from(c.reason.is_some()))
                .bind(c.reason.clone().flatten())
                .bind(i64::from(c.restart))
                .bind(c.at)
                .bind(c.generation),
            )
            .await?;
        rows.first().map(rollout_row).transpose()
    }

    async fn insert_rollout_events(&mut self, events: &[RolloutEvent]) -> Result<()> {
        for e in events {
            self.tx
                .execute(
                    q(
                        "INSERT INTO rollout_events (rollout_id, at, kind, actor, summary, ref_id)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (rollout_id, ref_id) DO NOTHING",
                    )
                    .bind(e.rollout_id)
                    .bind(e.at)
                    .bind(e.kind.as_str())
                    .bind(e.actor.as_str())
                    .bind(e.summary.as_str())
                    .bind(e.ref_id.as_str()),
                )
                .await?;
        }
        Ok(())
    }

    async fn lock_groups(&mut self, keys: &[i64]) -> Result<()> {
        self.tx.lock(keys).await
    }

    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>> {
        self.tx.existing_alert_ids(ids).await
    }

    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>> {
        self.tx.latest_incidents(group_keys).await
    }

    async fn open_incidents(&mut self, incidents: &[NewIncident]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(incidents.len());
        for inc in incidents {
            let rows = self
                .tx
                .fetch(
                    q("INSERT INTO incidents (group_key, service, environment, title, severity, status, opened_at)
                       VALUES ($1, $2, $3, $4, $5, 'open', $6) RETURNING id")
                    .bind(&inc.group.key)
                    .bind(&inc.group.service)
                    .bind(&inc.group.environment)
                    .bind(&inc.title)
                    .bind(&inc.severity)
                    .bind(inc.opened_at),
                )
                .await?;
            ids.push(rows.first().ok_or(StoreError::NotFound)?.int("id")?);
        }
        Ok(ids)
    }

    async fn reopen_incidents(&mut self, ids: &[i64]) -> Result<()> {
        self.tx
            .execute(
                q(format!(
                    "UPDATE incidents SET status = 'open', resolved_at = NULL, updated_at = $2
                     WHERE {} AND status = 'resolved'",
                    T::any("id", 1)
                ))
                .bind(ids.to_vec())
                .bind(Utc::now()),
            )
            .await?;
        Ok(())
    }

    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()> {
        self.tx.insert_alerts(alerts).await
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        self.tx.upsert_incident_alerts(alerts).await
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        self.tx.insert_deploys(deploys).await
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        self.tx.insert_gates(gates).await
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        self.tx.insert_logs(lines).await
    }

    async fn deploys_between(
        &mut self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DeployEvent>> {
        let rows = self
            .tx
            .fetch(deploys_between_q(service, environment, from, to))
            .await?;
        decode(&rows, deploy_row)
    }

    async fn gates_between(
        &mut self,
        service: &str,
        environment: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<GateResult>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT {GATE_COLUMNS} FROM gate_results g
                     WHERE g.service = $1 AND ($2 IS NULL OR g.environment IS NULL OR g.environment = $2)
                       AND g.evaluated_at BETWEEN $3 AND $4
                     ORDER BY g.evaluated_at"
                ))
                .bind(service)
                .bind(environment)
                .bind(from)
                .bind(to)
                .plan_each(),
            )
            .await?;
        decode(&rows, gate_row)
    }

    async fn open_incidents_for(&mut self, services: &[String]) -> Result<Vec<OpenIncident>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT id, service, environment, opened_at FROM incidents
                     WHERE status = 'open' AND {}",
                    T::any("service", 1)
                ))
                .bind(services.to_vec())
                .plan_each(),
            )
            .await?;
        decode(&rows, open_incident)
    }

    async fn open_incidents_with_flag(&mut self, flag: &str) -> Result<Vec<OpenIncident>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT DISTINCT i.id, i.service, i.environment, i.opened_at
                     FROM incidents i
                     JOIN incident_changes c ON c.incident_id = i.id
                     JOIN deploys d ON d.id = c.deploy_id
                     WHERE i.status = 'open' AND {}
                     ORDER BY i.id",
                    T::json_array_has("d.flags", 1)
                ))
                .bind(flag),
            )
            .await?;
        decode(&rows, open_incident)
    }

    async fn find_deploy(
        &mut self,
        service: &str,
        environment: Option<&str>,
        version: &str,
    ) -> Result<Option<String>> {
        let rows = self
            .tx
            .fetch(
                q("SELECT id FROM deploys WHERE service = $1 AND version = $3
                     AND ($2 IS NULL OR environment IS NULL OR environment = $2)
                   ORDER BY started_at DESC LIMIT 1")
                .bind(service)
                .bind(environment)
                .bind(version)
                .plan_each(),
            )
            .await?;
        rows.first().map(|r| r.text("id")).transpose()
    }

    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT incident_id, deploy_id FROM incident_changes WHERE {}",
                    T::any("deploy_id", 1)
                ))
                .bind(deploy_ids.to_vec())
                .plan_each(),
            )
            .await?;
        decode(&rows, |r| pair(r, "incident_id", "deploy_id"))
    }

    async fn attach_changes(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        self.tx.attach(Attach::Changes, pairs).await
    }

    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        self.tx.attach(Attach::Gates, pairs).await
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
        self.tx.insert_timeline(entries).await
    }

    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>> {
        let rows = self
            .tx
            .fetch(
                q("SELECT id, group_key, last_end FROM (
                       SELECT i.id, i.group_key,
                              (SELECT max(a.ends_at) FROM incident_alerts a WHERE a.incident_id = i.id) AS last_end
                       FROM incidents i
                       WHERE i.status = 'open'
                         AND NOT EXISTS (SELECT 1 FROM incident_alerts f
                                         WHERE f.incident_id = i.id AND f.status = 'firing')
                   ) c WHERE last_end <= $1")
                .bind(quiet_before)
                .plan_each(),
            )
            .await?;
        decode(&rows, |r| {
            Ok((r.int("id")?, r.text("group_key")?, r.time("last_end")?))
        })
    }

    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>> {
        self.tx.resolve_incidents(incidents).await
    }

    async fn insert_actions(&mut self, actions: &[NewAction]) -> Result<Vec<ActionRow>> {
        let mut out = Vec::new();
        for a in actions {
            let rows = self
                .tx
                .fetch(
                    q(format!(
                        "INSERT INTO actions (dedupe_key, playbook, playbook_version, step_index, kind, target,
                             incident_id, trigger_id, requested_by, status, reason, spec,
                             created_at, updated_at, not_before)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13)
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
                    .bind(&a.requested_by)
                    .bind(a.status.as_str())
                    .bind(&a.reason)
                    .bind(spec_json(&a.spec)?)
                    .bind(a.at),
                )
                .await?;
            if let Some(row) = rows.first() {
                out.push(action_row(row)?);
            }
        }
        Ok(out)
    }

    async fn actions_created_since(&mut self, since: DateTime<Utc>) -> Result<Vec<ActionRow>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT {ACTION_COLUMNS} FROM actions WHERE created_at >= $1 ORDER BY id"
                ))
                .bind(since)
                .plan_each(),
            )
            .await?;
        decode(&rows, action_row)
    }

    async fn open_actions_on(&mut self, target: &str) -> Result<Vec<ActionRow>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT {ACTION_COLUMNS} FROM actions
                     WHERE target = $1 AND status IN ('pending', 'held', 'running', 'reverting')
                     ORDER BY id"
                ))
                .bind(target),
            )
            .await?;
        decode(&rows, action_row)
    }

    async fn tx_setting(&mut self, key: &str) -> Result<Option<String>> {
        let rows = self
            .tx
            .fetch(q("SELECT value FROM settings WHERE key = $1").bind(key))
            .await?;
        rows.first().map(|r| r.text("value")).transpose()
    }

    async fn insert_audit(&mut self, rows: &[NewAudit]) -> Result<()> {
        write_audit(&mut self.tx, rows).await
    }

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
