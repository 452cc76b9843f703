//! Firebreak's storage: one [`Store`] trait with a PostgreSQL and a SQLite
//! implementation. Callers never see `sqlx::Error`: it is translated here into
//! [`StoreError`], which says whether trying again can help.
//!
//! The write side is a transaction ([`StoreTx`]) with batch operations, so the
//! engine processes a whole delivery (up to thousands of events) in a handful of
//! round trips. The read side answers the API.
//!
//! Both backends are one implementation (`sql.rs`) over two dialects
//! (`postgres.rs`, `sqlite.rs`); what is stored is decoded into the domain's
//! types here, and a value the domain does not know is an error naming the
//! table, row and column ([`StoreError::Corrupt`]), never a silent default.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firebreak_domain::correlation::{IncidentHead, NewIncident};
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::{AlertEvent, DeployEvent, GateResult, LogLine};
use serde::Serialize;

mod migrate;
pub mod postgres;
/// Every store trait, for `use firebreak_store::prelude::*` where a store is
/// implemented or used generically (`dyn Store` and `dyn StoreTx` callers
/// need no import: a trait object has its supertraits' methods).
pub mod prelude {
    pub use crate::{
        AccessStore, ActionItemStore, ActionStore, BatchTx, FlagStore, IncidentStore, InsightStore,
        PostmortemStore, RemediationTx, SlackStore, Store, StoreTx,
    };
}
mod access;
pub mod credentials;
mod rows;
mod sql;
pub mod sqlite;

pub use access::{NewToken, NewUser, SessionRow, TokenRow, UserRow};
pub use firebreak_domain::action::{ActionRow, ActionStatus, NewAction};
pub use firebreak_domain::rollout::{Rollout, RolloutStatus};
pub use postgres::PgStore;
pub use rows::{
    ActionChange, ActionFilter, AuditCheck, AuditFilter, AuditRow, FlagRow, History, IncidentTimes,
    LogRow, NewAudit, PostmortemRow, PostmortemSave, RevisionRow, SaveOutcome, SlackClaim,
    TimelineEvent, SETTING_PAUSED,
};
pub use rows::{
    ActionItemChange, ActionItemRow, ExportOutcome, FlagWrite, NewActionItem, NewRollout,
    NewSession, OutboxClaim, Presence, RolloutChange, RolloutEvent, ServiceEvent, ServiceWindow,
    TrackerStatus,
};
pub use sql::{keyed_audit_hash, set_audit_key};
pub use sqlite::SqliteStore;

tokio::task_local! {
    static BULK: ();
}

/// Runs `f` as bulk work: on SQLite, its writes give way to every other
/// write (the engine's bulk-lane batches behind the urgent lane's and the
/// actions'). PostgreSQL has many writers and ignores it.
pub async fn bulk<F: std::future::Future>(f: F) -> F::Output {
    BULK.scope((), f).await
}

pub(crate) fn is_bulk() -> bool {
    BULK.try_with(|_| ()).is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// Lost a race with another writer (deadlock, serialization failure, unique
    /// violation); the whole transaction may be retried.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is overloaded; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A migration on disk differs from the one applied, or the schema is newer.
    #[error("migration error: {0}")]
    Migration(String),
    /// A stored value this version cannot read (an unknown status, a bad
    /// timestamp): names the table, row and column.
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether running the same work again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Translates a driver error into what callers can act on.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> StoreError {
        translate(err)
    }
}

fn translate(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                // PostgreSQL: unique violation, serialization failure, deadlock.
                "23505" | "40001" | "40P01" => StoreError::Conflict(db.to_string()),
                // PostgreSQL: insufficient resources (disk full, out of
                // memory, too many connections), connection failures, shutting
                // down, cannot connect now, read-only after a failover.
                c if c.starts_with("53") || c.starts_with("08") => {
                    StoreError::Unavailable(db.to_string())
                }
                "57P01" | "57P02" | "57P03" | "25006" => StoreError::Unavailable(db.to_string()),
                // SQLite: busy, locked (primary and extended codes), disk full,
                // I/O errors (primary and extended), cannot open.
                "5" | "6" | "261" | "262" | "517" | "13" | "14" => {
                    StoreError::Unavailable(db.to_string())
                }
                c if c.parse::<u32>().is_ok_and(|n| n & 0xff == 10) => {
                    StoreError::Unavailable(db.to_string())
                }
                // SQLite: unique constraint.
                "2067" | "1555" => StoreError::Conflict(db.to_string()),
                _ => StoreError::Internal(db.to_string()),
            }
        }
        other => StoreError::Internal(other.to_string()),
    }
}

/// One incident as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentRow {
    pub id: i64,
    pub status: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub title: String,
    pub severity: Option<String>,
    pub group_key: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// What people set during the response.
    #[serde(flatten)]
    pub response: IncidentResponse,
}

/// What people set on an incident while they respond to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IncidentResponse {
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    /// A level of the severity scale a person declared (`None`: the level
    /// the alerts' `severity` label maps to).
    pub declared_severity: Option<String>,
    /// `identified` or `monitoring` once a person said so (`None`:
    /// investigating while open).
    pub stage: Option<String>,
    pub commander: Option<String>,
    pub summary: Option<String>,
    /// Who declared it by hand (`None`: alerts opened it).
    pub declared_by: Option<String>,
}

/// An incident a person declares, no alert needed.
#[derive(Debug, Clone)]
pub struct NewDeclaredIncident {
    pub title: String,
    pub service: String,
    pub environment: Option<String>,
    pub severity: Option<String>,
    pub summary: Option<String>,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// A change people make to an incident: `Some` fields are written
/// (`Some(None)` clears).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentUpdate {
    pub declared_severity: Option<Option<String>>,
    pub stage: Option<Option<String>>,
    pub commander: Option<Option<String>>,
    pub summary: Option<Option<String>>,
}

/// An incident's alerts of one name, for its page's alerts panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertGroup {
    pub alertname: String,
    pub count: i64,
    pub firing: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The labels of its latest notification.
    pub labels: serde_json::Value,
    /// The `runbook_url` annotation of its latest notification, if any.
    pub runbook_url: Option<String>,
    /// Alertmanager's `generatorURL` of its latest notification, if any.
    pub generator_url: Option<String>,
}

/// The current state of one alert within an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentAlertRow {
    pub fingerprint: String,
    pub alertname: String,
    pub status: String,
    pub labels: serde_json::Value,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineRow {
    /// Order among entries at the same time (0 for alert entries).
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub source: String,
    pub summary: String,
    pub ref_id: String,
}

/// An open incident a deploy or gate may attach to.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    pub id: i64,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub status: Option<String>,
    pub service: Option<String>,
    /// Any of these: a declared level, or an alert label mapping to it.
    pub severities: Option<Vec<String>>,
    /// `investigating` also matches open incidents nobody staged.
    pub stage: Option<String>,
    pub acknowledged: Option<bool>,
    pub commander: Option<String>,
    /// Only incidents with an id below this (the previous page's last id).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// An incident with its alerts counted, not listed.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentOverview {
    pub incident: IncidentRow,
    pub alert_count: i64,
    pub alerts_firing: i64,
    pub first_alert: Option<DateTime<Utc>>,
    pub changes: Vec<DeployEvent>,
    /// A person's word on each change in `changes`, by deploy id (only the
    /// changes someone marked).
    pub causes: BTreeMap<String, ChangeCause>,
    pub gates: Vec<GateResult>,
    pub timeline_entries: i64,
}

/// A person's word on whether a suspect change caused an incident.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChangeCause {
    /// `true`: the cause; `false`: not the cause.
    pub cause: bool,
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// A person's word on whether a linked change caused an incident (`None`:
/// not known).
#[derive(Debug, Clone, Copy)]
pub struct CauseWord<'a> {
    pub incident_id: i64,
    pub deploy_id: &'a str,
    pub cause: Option<bool>,
}

/// Everything the detail view of one incident shows.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentDetail {
    pub incident: IncidentRow,
    pub alerts: Vec<IncidentAlertRow>,
    pub changes: Vec<DeployEvent>,
    pub causes: BTreeMap<String, ChangeCause>,
    pub gates: Vec<GateResult>,
    pub timeline_entries: i64,
}

/// Incidents as people read them: lists, one incident, its timeline, its
/// logs, a person's resolution and word on a cause.
#[async_trait]
pub trait IncidentStore: Send + Sync {
    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRow>>;
    async fn incident(&self, id: i64) -> Result<IncidentDetail>;
    /// The incident without its alert rows: their count, how many fire and
    /// when the first started (for pages of incidents with many alerts).
    async fn incident_overview(&self, id: i64) -> Result<IncidentOverview>;
    async fn timeline(&self, incident_id: i64, limit: i64, offset: i64)
        -> Result<Vec<TimelineRow>>;
    /// Timeline table entries after `after_seq` whose kind is one of `kinds`, in order.
    async fn timeline_since(
        &self,
        after_seq: i64,
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<TimelineEvent>>;
    /// The moments durations are measured between, for these incidents.
    async fn incident_times(&self, ids: &[i64]) -> Result<Vec<IncidentTimes>>;
    /// The incident's alerts grouped by name (at most 200 names, in the order
    /// they first fired): counts, firing, first and last seen, and the labels
    /// and links of each name's latest notification.
    async fn alert_groups(&self, id: i64) -> Result<Vec<AlertGroup>>;
    /// Opens an incident a person declares, with its audit row and timeline
    /// entries (the entries' `incident_id` is filled in).
    async fn declare_incident(
        &self,
        incident: &NewDeclaredIncident,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<IncidentRow>;
    /// Records the first acknowledgement, by the audit row's actor at its
    /// time: `Some(true)` when this one was it, `Some(false)` when it was
    /// acknowledged already (nothing written), `None` without such an
    /// incident.
    async fn acknowledge_incident(
        &self,
        id: i64,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<Option<bool>>;
    /// Writes what people changed, with its audit row and timeline entries,
    /// in one transaction; returns the incident after. `NotFound` without it.
    async fn update_incident(
        &self,
        id: i64,
        update: &IncidentUpdate,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<IncidentRow>;
    /// Resolves an open incident at the audit row's time, whatever its
    /// alerts say (a person decided); writes the audit row and timeline
    /// entries with it. `false` when it was not open.
    async fn resolve_incident_manually(
        &self,
        id: i64,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool>;
    /// Records a person's word on whether a linked change caused the
    /// incident (`None` clears it), with its audit row and timeline entry;
    /// `false` when the change is not linked to the incident.
    async fn set_cause(
        &self,
        word: &CauseWord<'_>,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool>;
    /// Streams the log lines of a service (any environment when `None`) in
    /// [from, to] to `each`, in time order, at most `limit` of them, without
    /// holding them; returns how many.
    async fn scan_logs(
        &self,
        window: ServiceWindow<'_>,
        limit: Option<i64>,
        each: &mut (dyn FnMut(LogRow) + Send),
    ) -> Result<u64>;
}

/// Actions through their life (claimed by executors under leases, moved
/// between statuses) and the audit trail they leave.
#[async_trait]
pub trait ActionStore: Send + Sync {
    /// Claims the oldest action ready to run (pending and due, or running or
    /// reverting with an expired lease) whose target nothing else holds, under
    /// a lease held by `owner`. Returns it with `true` when its lease had
    /// expired: a crash left it in doubt. A reverting action stays `reverting`.
    async fn claim_action(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
    ) -> Result<Option<(ActionRow, bool)>>;
    /// Extends the lease `owner` holds on a running or reverting action;
    /// `false` when it holds it no longer.
    async fn renew_lease(&self, id: i64, owner: &str, until: DateTime<Utc>) -> Result<bool>;
    /// Ends the leases of owners that start with `owner_prefix` other than
    /// `except` (an earlier run of this process on this node): their actions
    /// are claimable at once. Returns how many.
    async fn expire_leases(
        &self,
        owner_prefix: &str,
        except: &str,
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// Records the state before an action acts, once (a later call keeps the
    /// first), while `owner` holds its lease.
    async fn record_previous_state(
        &self,
        id: i64,
        owner: &str,
        state: &serde_json::Value,
    ) -> Result<bool>;
    /// Moves an action to a new status if its status is one of `from`, writing
    /// audit rows and timeline entries in the same transaction. `None` when the
    /// action was not in `from` (someone else decided first): nothing written.
    async fn transition_action(
        &self,
        id: i64,
        from: &[ActionStatus],
        change: &ActionChange,
        audit: &[NewAudit],
        timeline: &[NewEntry],
    ) -> Result<Option<ActionRow>>;
    async fn action(&self, id: i64) -> Result<ActionRow>;
    async fn list_actions(&self, filter: &ActionFilter) -> Result<Vec<ActionRow>>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>>;
    /// Writes audit rows and timeline entries in one transaction.
    async fn record(&self, audit: &[NewAudit], timeline: &[NewEntry]) -> Result<()>;
    /// Recomputes the audit trail's hash chain and names the first row that
    /// does not match.
    async fn verify_audit(&self) -> Result<AuditCheck>;
    /// The id and hash of audit row `id`, or of the last row (`None`).
    async fn audit_hash_at(&self, id: Option<i64>) -> Result<Option<(i64, Option<String>)>>;
}

/// Built-in flags, guarded rollouts and the service timeline they write.
#[async_trait]
pub trait FlagStore: Send + Sync {
    async fn list_flags(&self) -> Result<Vec<FlagRow>>;
    async fn flag(&self, key: &str) -> Result<FlagRow>;
    /// Creates or replaces flags from flagd definitions in one transaction
    /// (`enabled` follows each definition's `state`), with one audit row.
    async fn import_flags(
        &self,
        flags: &[(String, firebreak_domain::flagd::FlagDefinition)],
        by: &str,
        audit: &NewAudit,
    ) -> Result<()>;
    /// Creates or sets a built-in flag; returns its previous state (`None`: it
    /// did not exist). The audit row is written in the same transaction.
    async fn set_flag(&self, flag: &FlagWrite<'_>, audit: &NewAudit) -> Result<Option<bool>>;
    /// Sets a built-in flag for a running action in one transaction, and
    /// records on the action the state the flag had (once). `held` is the
    /// action's id and its lease owner; `None`: that owner no longer holds
    /// the lease, and nothing was written.
    async fn set_flag_for_action(
        &self,
        flag: &FlagWrite<'_>,
        audit: &NewAudit,
        held: (i64, &str),
    ) -> Result<Option<Option<bool>>>;
    async fn delete_flag(&self, key: &str, audit: &NewAudit) -> Result<bool>;
    /// Records when flags were last evaluated (only ever moves forward).
    async fn flags_evaluated(&self, seen: &[(String, DateTime<Utc>)]) -> Result<()>;
    async fn rollout(&self, id: i64) -> Result<Rollout>;
    /// Rollouts, newest first: of one flag, or only the active ones, or all.
    async fn list_rollouts(
        &self,
        flag: Option<&str>,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<Rollout>>;
    /// A rollout's own timeline, oldest first.
    async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEvent>>;
    /// Adds entries to services' timelines; one per (service, ref_id).
    async fn record_service_events(&self, events: &[ServiceEvent]) -> Result<()>;
    /// A service's timeline, newest first, at most `limit` entries.
    async fn service_timeline(&self, service: &str, limit: i64) -> Result<Vec<ServiceEvent>>;
}

/// Who may do what: machine tokens, local users, browser sessions.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Stores a token (a duplicate name is `Conflict`), with its audit row.
    async fn create_token(&self, token: &NewToken, audit: &NewAudit) -> Result<TokenRow>;
    /// A token and its secret hash, by its public id.
    async fn token_secret(&self, id: &str) -> Result<Option<(TokenRow, String)>>;
    async fn list_tokens(&self) -> Result<Vec<TokenRow>>;
    /// Revokes a token by id or name; `false` if there is no such active token.
    async fn revoke_token(&self, id_or_name: &str, audit: &NewAudit) -> Result<bool>;
    /// Records when a token was last used (callers throttle this).
    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// Active tokens plus enabled users: whether anyone can authenticate.
    async fn count_credentials(&self, now: DateTime<Utc>) -> Result<u64>;
    /// Stores a user (a duplicate name is `Conflict`), with its audit row.
    async fn create_user(&self, user: &NewUser<'_>, audit: &NewAudit) -> Result<UserRow>;
    /// An enabled user and their password hash.
    async fn user_secret(&self, username: &str) -> Result<Option<(UserRow, String)>>;
    async fn list_users(&self) -> Result<Vec<UserRow>>;
    /// A person an identity provider vouched for (`oidc:<name>`), stored as
    /// a user who has no password: created, or given the role their groups
    /// map to now, with `audit` written when either happens. `None` when an
    /// admin has disabled them (they may not sign in).
    async fn sign_in_external(
        &self,
        username: &str,
        role: firebreak_domain::access::Role,
        audit: &NewAudit,
    ) -> Result<Option<UserRow>>;
    /// Disables a user and ends their sessions; `false` if there is no such enabled user.
    async fn disable_user(&self, username: &str, audit: &NewAudit) -> Result<bool>;
    async fn create_session(&self, session: &NewSession<'_>) -> Result<()>;
    /// A live session (not expired, its user enabled).
    async fn session(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<SessionRow>>;
    async fn delete_session(&self, id_hash: &str) -> Result<()>;
}

/// Postmortem documents and their revisions.
#[async_trait]
pub trait PostmortemStore: Send + Sync {
    async fn postmortem(&self, incident_id: i64) -> Result<Option<PostmortemRow>>;
    /// Writes a new revision if the document is at `expected_revision` (or
    /// does not exist, for `None`); otherwise writes nothing.
    async fn save_postmortem(&self, save: &PostmortemSave) -> Result<SaveOutcome>;
    async fn postmortem_revisions(&self, incident_id: i64) -> Result<Vec<RevisionRow>>;
    /// Resolved incidents that have no postmortem yet, oldest first.
    async fn incidents_needing_postmortem(&self, limit: i64) -> Result<Vec<i64>>;
    /// Records that `who` has the draft open (unless `max_rows`
    /// people-and-drafts are present already) and answers who else was seen
    /// there since `since`. Older rows are removed.
    async fn note_presence(&self, presence: &Presence<'_>) -> Result<Vec<String>>;
}

/// Postmortem action items and their tracker outbox.
#[async_trait]
pub trait ActionItemStore: Send + Sync {
    /// Adds an item, with its audit row and timeline entry, in one transaction.
    async fn create_action_item(
        &self,
        item: &NewActionItem,
        audit: &NewAudit,
        entry: &NewEntry,
    ) -> Result<ActionItemRow>;
    /// An incident's items, oldest first.
    async fn action_items(&self, incident_id: i64) -> Result<Vec<ActionItemRow>>;
    async fn action_item(&self, id: i64) -> Result<ActionItemRow>;
    /// Applies `change` (nothing if it changes nothing) at the audit row's
    /// time, with the audit row and timeline entries, in one transaction.
    async fn update_action_item(
        &self,
        id: i64,
        change: &ActionItemChange,
        audit: &NewAudit,
        entries: &[NewEntry],
    ) -> Result<ActionItemRow>;
    /// Puts an item in the tracker outbox, due at the audit row's time.
    /// `Conflict` if it is already in a tracker.
    async fn request_action_item_export(
        &self,
        id: i64,
        tracker: &str,
        audit: &NewAudit,
    ) -> Result<ActionItemRow>;
    /// Claims the outbox's next due export until `until` (one process at a time).
    async fn claim_action_item_export(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<ActionItemRow>>;
    /// Records how an export attempt ended.
    async fn finish_action_item_export(
        &self,
        id: i64,
        outcome: &ExportOutcome,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// A tracker said its issue closed or reopened: the item with that key
    /// takes `status` (`None`: no such item).
    async fn set_action_item_status_by_tracker(
        &self,
        word: &TrackerStatus<'_>,
        audit: &NewAudit,
        entry_for: &(dyn for<'r> Fn(&'r ActionItemRow) -> NewEntry + Send + Sync),
    ) -> Result<Option<ActionItemRow>>;
    /// Open action items, and those of them past their due date on `today`
    /// (`YYYY-MM-DD`).
    async fn action_item_counts(&self, today: &str) -> Result<(i64, i64)>;
}

/// Deploys and incidents, as the insights are computed from them.
pub type InsightsData = (
    Vec<firebreak_domain::insights::Deployment>,
    Vec<firebreak_domain::insights::IncidentRecord>,
);

/// What the insights are computed from.
#[async_trait]
pub trait InsightStore: Send + Sync {
    /// What insights are computed from: deploys with a final status since
    /// `from` (later ones too: they restore earlier failures), and incidents
    /// opened in [from, to) with their linked changes and when a kill switch
    /// or rollback first ran for them; of one service and environment when given.
    async fn insights_data(
        &self,
        range: &firebreak_domain::insights::Range,
        service: Option<&str>,
        environment: Option<&str>,
    ) -> Result<InsightsData>;
}

/// The Slack outbox: one thread per incident, messages claimed once.
#[async_trait]
pub trait SlackStore: Send + Sync {
    /// Claims the Slack announcement of timeline entry `seq` at `at`. A
    /// claim made before `stale_before` and never posted was left by a
    /// process that stopped mid-way: it is taken over (the outbox's
    /// at-least-once).
    async fn claim_slack_message(
        &self,
        seq: i64,
        incident: i64,
        claim: OutboxClaim,
    ) -> Result<SlackClaim>;
    async fn slack_message_posted(&self, seq: i64, channel: &str, ts: &str) -> Result<()>;
    /// Gives a claim back after a failed post, so it is tried again.
    async fn release_slack_message(&self, seq: i64) -> Result<()>;
    /// The channel and ts of an incident's first posted message: its thread.
    async fn slack_thread(&self, incident_id: i64) -> Result<Option<(String, String)>>;
}

/// The whole store, one concern per trait: what a process holds as
/// `Arc<dyn Store>`; this trait itself holds the connection's life and the
/// settings.
#[async_trait]
pub trait Store:
    IncidentStore
    + ActionStore
    + FlagStore
    + AccessStore
    + PostmortemStore
    + ActionItemStore
    + InsightStore
    + SlackStore
    + Send
    + Sync
    + 'static
{
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations; refuses if an applied one was changed.
    async fn migrate(&self) -> Result<()>;
    async fn ping(&self) -> Result<()>;
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
    /// Events stored per kind, for tests and operators: (alerts, deploys, gates, log lines).
    async fn event_counts(&self) -> Result<[i64; 4]>;
    async fn setting(&self, key: &str) -> Result<Option<String>>;
    async fn set_setting(&self, key: &str, value: &str, audit: &NewAudit) -> Result<()>;
    /// Sets a setting with no audit row (bookkeeping such as cursors).
    async fn put_setting(&self, key: &str, value: &str) -> Result<()>;
    /// Alerts, deploys and gates stored since `since`, oldest first.
    async fn history_since(&self, since: DateTime<Utc>) -> Result<History>;
    async fn close(&self);
}

/// The write side: one transaction. Dropping it without `commit` rolls back.
/// What the engine writes while it applies a batch of events: alerts,
/// incidents, deploys, gates, logs, timeline entries.
#[async_trait]
pub trait BatchTx: Send {
    /// Serializes work on the same incident groups across processes (PostgreSQL
    /// advisory locks, taken in sorted order; SQLite has one writer anyway).
    async fn lock_groups(&mut self, keys: &[i64]) -> Result<()>;
    /// Which of these alert event ids are stored already.
    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>>;
    /// The latest incident of each group key that has one.
    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>>;
    /// Opens incidents; returns their ids in input order.
    async fn open_incidents(&mut self, incidents: &[NewIncident]) -> Result<Vec<i64>>;
    async fn reopen_incidents(&mut self, ids: &[i64]) -> Result<()>;
    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()>;
    /// Updates each alert's current state within its incident; an older
    /// notification never overwrites a newer one. At most one row per
    /// (incident, fingerprint) per call.
    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()>;
    /// Stores deploys; returns the ids that were new.
    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>>;
    /// Stores gate results; returns the ids that were new.
    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>>;
    /// Stores log lines; returns how many were new.
    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64>;
    /// Deploys of a service (and environment, when given) that started in [from, to].
    async fn deploys_between(&mut self, window: ServiceWindow<'_>) -> Result<Vec<DeployEvent>>;
    /// Gate results of a service (and environment, when given) evaluated in [from, to].
    async fn gates_between(&mut self, window: ServiceWindow<'_>) -> Result<Vec<GateResult>>;
    async fn open_incidents_for(&mut self, services: &[String]) -> Result<Vec<OpenIncident>>;
    /// Open incidents whose suspect changes turned on this flag (deploy `flags`).
    async fn open_incidents_with_flag(&mut self, flag: &str) -> Result<Vec<OpenIncident>>;
    /// The id of the most recent deploy of a service version.
    async fn find_deploy(
        &mut self,
        service: &str,
        environment: Option<&str>,
        version: &str,
    ) -> Result<Option<String>>;
    /// (incident, deploy) pairs for incidents these deploys are attached to.
    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>>;
    /// Attaches deploys as suspect changes; returns the pairs that were new.
    async fn attach_changes(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>>;
    /// Attaches gate results to incidents; returns the pairs that were new.
    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>>;
    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()>;
    /// Open incidents whose alerts are all resolved, the last one at or before
    /// `quiet_before`: (id, group key, time of the last resolution).
    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>>;
    /// Resolves these incidents if they are still open with nothing firing;
    /// returns the ids it resolved.
    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>>;
}

/// What remediation reads and writes inside a transaction: flags under a
/// lock, rollouts, action rows, the audit trail.
#[async_trait]
pub trait RemediationTx: Send {
    /// A flag, locked for the rest of the transaction (PostgreSQL).
    async fn flag_for_update(&mut self, key: &str) -> Result<Option<FlagRow>>;
    /// Creates or replaces a flag row whole.
    async fn put_flag(&mut self, flag: &FlagRow) -> Result<()>;
    /// Records an action's state before it acts, once, while `owner` holds
    /// its running lease; `false` when it does not (nothing written).
    async fn note_previous_state(
        &mut self,
        id: i64,
        owner: &str,
        state: &serde_json::Value,
    ) -> Result<bool>;
    /// Creates a rollout (`Conflict` when the flag has an active one).
    async fn insert_rollout(&mut self, rollout: &NewRollout) -> Result<Rollout>;
    /// Running and paused rollouts.
    async fn active_rollouts(&mut self) -> Result<Vec<Rollout>>;
    /// Changes a rollout if its status is one of `from` (and its generation
    /// is `change.generation`, when given); `None`: it was not, nothing written.
    async fn update_rollout(
        &mut self,
        id: i64,
        from: &[RolloutStatus],
        change: &RolloutChange,
    ) -> Result<Option<Rollout>>;
    /// Adds entries to rollouts' timelines; one per (rollout, ref_id).
    async fn insert_rollout_events(&mut self, events: &[RolloutEvent]) -> Result<()>;
    /// Claims actions; returns the rows that were new (a dedupe key seen before
    /// claims nothing).
    async fn insert_actions(&mut self, actions: &[NewAction]) -> Result<Vec<ActionRow>>;
    /// Actions created at or after `since`, for cooldowns and budgets.
    async fn actions_created_since(&mut self, since: DateTime<Utc>) -> Result<Vec<ActionRow>>;
    /// Actions on `target` that are not finished (pending, held, running, reverting).
    async fn open_actions_on(&mut self, target: &str) -> Result<Vec<ActionRow>>;
    /// The newest actions on `target` that acted or will act (pending, held,
    /// running, succeeded, reverting, reverted), newest first, at most `limit`.
    async fn acting_actions_on(&mut self, target: &str, limit: i64) -> Result<Vec<ActionRow>>;
    async fn tx_setting(&mut self, key: &str) -> Result<Option<String>>;
    async fn insert_audit(&mut self, rows: &[NewAudit]) -> Result<()>;
}

/// One transaction: the engine's batch writes and remediation's, committed
/// together.
#[async_trait]
pub trait StoreTx: BatchTx + RemediationTx + Send {
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Connects to the store a URL names: `postgres://…` or `sqlite://…`.
pub async fn connect(url: &str) -> Result<Box<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Box::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Internal(format!(
            "unsupported database URL scheme in {:?}: use postgres://… or sqlite://…",
            redact_url(url)
        )))
    }
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    // A cluster's nodes, comma-separated: each one's password hidden.
    if url.contains(',') {
        return url
            .split(',')
            .map(|u| redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Builds a timeline row from the union of stored entries and alert events (for
/// which `alertname` is set and `kind` holds the alert's status).
#[allow(clippy::too_many_arguments)]
pub(crate) fn timeline_row(
    at: DateTime<Utc>,
    seq: i64,
    kind: String,
    source: String,
    summary: Option<String>,
    ref_id: String,
    alertname: Option<String>,
    note: Option<String>,
) -> TimelineRow {
    match alertname {
        Some(alertname) => TimelineRow {
            id: seq,
            at,
            kind: firebreak_domain::timeline::alert_kind(&kind).to_string(),
            summary: firebreak_domain::timeline::alert_summary(&alertname, &kind, note.as_deref()),
            source,
            ref_id,
        },
        None => TimelineRow {
            id: seq,
            at,
            kind,
            source,
            summary: summary.unwrap_or_default(),
            ref_id,
        },
    }
}

pub(crate) fn labels_json(map: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

/// The distinct streams of a batch of log lines, each once as (id, labels
/// JSON), and each line's stream id. Lines of one stream share one label
/// set (one `Arc`), so each set is encoded and hashed once.
pub(crate) fn log_streams(lines: &[LogLine]) -> (Vec<(String, String)>, Vec<String>) {
    use sha2::Digest;
    let mut seen: std::collections::HashMap<
        *const std::collections::BTreeMap<String, String>,
        String,
    > = std::collections::HashMap::new();
    let mut streams: Vec<(String, String)> = Vec::new();
    let mut ids = Vec::with_capacity(lines.len());
    for l in lines {
        let id = seen
            .entry(std::sync::Arc::as_ptr(&l.labels))
            .or_insert_with(|| {
                let json = labels_json(&l.labels);
                let digest = sha2::Sha256::digest(json.as_bytes());
                let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                if !streams.iter().any(|(known, _)| *known == id) {
                    streams.push((id.clone(), json));
                }
                id
            })
            .clone();
        ids.push(id);
    }
    (streams, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }
}
