//! Remediation over HTTP: playbooks loaded, actions (approve, deny, revert),
//! the automation pause, the audit trail, the built-in flags, and the OpenFeature
//! Remote Evaluation Protocol that serves those flags to applications.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use firebreak_domain::access::Identity;
use firebreak_domain::playbook::FlagState;
use firebreak_remediation::{FlagEdit, Request, RequestOptions};
use firebreak_store::{
    ActionFilter, ActionRow, ActionStatus, AuditFilter, FlagRow, Store, StoreError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::call::Call;
use crate::error::{bad, body, path_id, query};
use crate::paging::{next_before, page_limit};
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/playbooks", get(playbooks))
        .route("/api/v1/playbooks/reload", post(reload))
        .route("/api/v1/actions", get(list_actions).post(request_action))
        .route("/api/v1/actions/{id}", get(action))
        .route("/api/v1/actions/{id}/approve", decide(true))
        .route("/api/v1/actions/{id}/deny", decide(false))
        .route("/api/v1/actions/{id}/revert", post(revert))
        .route("/api/v1/automation", get(automation))
        .route("/api/v1/automation/pause", post(pause))
        .route("/api/v1/automation/resume", post(resume))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/flags", get(list_flags).post(create_flag))
        .route("/api/v1/flags/import", post(import_flags))
        .route("/api/v1/flags/export", get(export_flags))
        .route("/api/v1/flags/stale", get(stale_flags))
        .route(
            "/api/v1/flags/{key}",
            get(get_flag).put(put_flag).delete(delete_flag),
        )
        .route("/ofrep/v1/evaluate/flags", post(ofrep_bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_one))
        .route("/ofrep/v1/configuration", get(ofrep_configuration))
}

fn not_found(what: String) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(what.clone()),
        e => e.into(),
    }
}

/// Who did it: the body's `by`, else `api`. Recorded, never trusted for auth.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    by: Option<String>,
    comment: Option<String>,
    /// Approve although the incident has resolved (audited as forced).
    #[serde(default)]
    force: bool,
}

impl Decision {
    fn check(&self) -> Result<(), ApiError> {
        no_by(&self.by)
    }
}

/// `by` was how callers named themselves; the audit trail now records the
/// authenticated identity, so a `by` is refused rather than ignored.
fn no_by(by: &Option<String>) -> Result<(), ApiError> {
    match by {
        None => Ok(()),
        Some(_) => Err(bad(
            "by",
            "is no longer accepted: the audit trail records who authenticated (GET /api/v1/me shows who that is)",
        )),
    }
}

async fn playbooks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let Some(set) = &state.playbooks else {
        return Ok(Json(json!({"playbooks": [], "errors": [], "dir": null})));
    };
    let loaded = set.current();
    Ok(Json(json!({
        "dir": loaded.dir,
        "loaded_at": loaded.loaded_at,
        "playbooks": loaded.view(),
        "errors": loaded.errors.iter().map(|e| json!({
            "file": e.file, "line": e.line, "column": e.column, "message": e.message, "text": e.to_string(),
        })).collect::<Vec<_>>(),
    })))
}

async fn reload(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let Some(set) = &state.playbooks else {
        return Err(ApiError::NotFound(
            "no playbook directory is configured".into(),
        ));
    };
    let loaded = set.reload();
    Ok(Json(json!({
        "playbooks": loaded.playbooks.len(),
        "errors": loaded.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionsQuery {
    status: Option<String>,
    incident: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub(crate) fn action_json(a: &ActionRow) -> Value {
    let mut v = json!(a);
    v["describe"] = json!(a.spec.describe);
    v["links"] = json!({
        "approve": format!("/api/v1/actions/{}/approve", a.id),
        "deny": format!("/api/v1/actions/{}/deny", a.id),
        "revert": format!("/api/v1/actions/{}/revert", a.id),
    });
    v
}

async fn list_actions(
    State(state): State<AppState>,
    q: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let q = query(q)?;
    let status = match &q.status {
        None => None,
        Some(s) => Some(ActionStatus::parse(s).ok_or_else(|| {
            bad(
                "status",
                format!(
                    "{s:?} is not an action status: use one of {}",
                    ActionStatus::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let limit = page_limit(q.limit, 50, 500)?;
    let rows = store
        .list_actions(&ActionFilter {
            incident_id: q.incident,
            status,
            since: None,
            before_id: q.before,
            limit,
        })
        .await?;
    let next = next_before(&rows, limit, |r| r.id);
    Ok(Json(json!({
        "actions": rows.iter().map(action_json).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

async fn action(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let id = path_id(&id, "an action")?;
    let row = store
        .action(id)
        .await
        .map_err(not_found(format!("no action {id}")))?;
    let audit = store
        .list_audit(&AuditFilter {
            action_id: Some(id),
            limit: 500,
            ..AuditFilter::default()
        })
        .await?;
    let mut v = action_json(&row);
    v["audit"] = json!(audit.into_iter().rev().collect::<Vec<_>>());
    Ok(Json(v))
}

/// `POST` approving (`true`) or denying a held action. Deciding twice
/// changes nothing: the second call gets 409 naming who decided.
fn decide(approve: bool) -> MethodRouter<AppState> {
    post(
        move |Call { state, identity }: Call, Path(id): Path<String>, bytes: Bytes| async move {
            let id = path_id(&id, "an action")?;
            let d: Decision = body(&bytes)?;
            d.check()?;
            let row = state
                .remediation
                .decide(&identity, id, approve, d.comment.as_deref(), d.force)
                .await?;
            Ok::<_, ApiError>(Json(action_json(&row)))
        },
    )
}

/// `{"by"?, "force"?}`: a revert meets the pause like any request.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevertBody {
    by: Option<String>,
    force: Option<bool>,
}

async fn revert(
    Call { state, identity }: Call,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let remediation = state.remediation.clone();
    let id = path_id(&id, "an action")?;
    let b: RevertBody = body(&bytes)?;
    no_by(&b.by)?;
    let row = remediation
        .revert(&identity, id, b.force.unwrap_or(false))
        .await?;
    Ok(Json(action_json(&row)))
}

/// `POST /api/v1/actions`: a person's (or a tool's) request, through the same
/// guardrails as a playbook step. The kinds and their fields:
/// `kill_switch` (`flag`, `provider`?, `environment`?, `state`?),
/// `rollback` (`service`, `environment`?, `provider`?),
/// `notify` (`slack` or `webhook`, `message`); for every kind `incident`?,
/// `reason`?, `force`? (run past the automation pause) and `by`?.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    kind: Option<String>,
    flag: Option<String>,
    provider: Option<String>,
    environment: Option<String>,
    state: Option<FlagState>,
    service: Option<String>,
    slack: Option<String>,
    webhook: Option<String>,
    message: Option<String>,
    incident: Option<i64>,
    reason: Option<String>,
    force: Option<bool>,
    by: Option<String>,
}

impl RequestBody {
    fn into_request(self) -> Result<(Request, RequestOptions, Option<String>), ApiError> {
        let kind = self
            .kind
            .clone()
            .ok_or_else(|| bad("kind", "missing: give kill_switch, rollback or notify"))?;
        let fields: &[&str] = match kind.as_str() {
            "kill_switch" => &["flag", "provider", "environment", "state"],
            "rollback" => &["service", "environment", "provider"],
            "notify" => &["slack", "webhook", "message"],
            "http" => {
                return Err(bad(
                    "kind",
                    "http steps run only from playbooks (reviewed files): a request to an arbitrary URL from the API would let anyone who may operate make Firebreak call anything",
                ))
            }
            other => {
                return Err(bad(
                    "kind",
                    format!("{other:?} is not an action kind: use kill_switch, rollback or notify"),
                ))
            }
        };
        let given = [
            ("flag", self.flag.is_some()),
            ("state", self.state.is_some()),
            ("service", self.service.is_some()),
            ("provider", self.provider.is_some()),
            ("environment", self.environment.is_some()),
            ("slack", self.slack.is_some()),
            ("webhook", self.webhook.is_some()),
            ("message", self.message.is_some()),
        ];
        if let Some((field, _)) = given
            .iter()
            .find(|(field, present)| *present && !fields.contains(field))
        {
            return Err(bad(
                field,
                format!("{field} does not apply to a {kind} request"),
            ));
        }
        let missing = |field: &str, what: &str| bad(field, format!("missing: {what}"));
        let request = match kind.as_str() {
            "kill_switch" => Request::KillSwitch {
                flag: self
                    .flag
                    .ok_or_else(|| missing("flag", "the kill switch's flag key"))?,
                provider: self.provider,
                environment: self.environment,
                state: self.state.unwrap_or_default(),
            },
            "rollback" => Request::Rollback {
                service: self
                    .service
                    .ok_or_else(|| missing("service", "the service to roll back"))?,
                environment: self.environment,
                provider: self.provider,
            },
            _ => Request::Notify {
                slack: self.slack,
                webhook: self.webhook,
                message: self
                    .message
                    .ok_or_else(|| missing("message", "what to say"))?,
            },
        };
        Ok((
            request,
            RequestOptions {
                incident: self.incident,
                reason: self.reason,
                force: self.force.unwrap_or(false),
            },
            self.by,
        ))
    }
}

async fn request_action(
    Call { state, identity }: Call,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let remediation = state.remediation.clone();
    let b: RequestBody = body(&bytes)?;
    let (request, opts, by) = b.into_request()?;
    no_by(&by)?;
    let row = remediation.request(&identity, request, opts).await?;
    let mut r = (StatusCode::ACCEPTED, Json(action_json(&row))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/actions/{}", row.id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(r)
}

async fn automation(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let remediation = state.remediation.clone();
    let paused = remediation.paused().await?;
    Ok(Json(
        json!({"paused": paused, "dry_run": remediation.policy().dry_run}),
    ))
}

async fn set_paused(
    state: AppState,
    identity: Identity,
    bytes: Bytes,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    let remediation = state.remediation.clone();
    let d: Decision = body(&bytes)?;
    d.check()?;
    remediation
        .set_paused(&identity, paused, d.comment.as_deref())
        .await?;
    Ok(Json(json!({"paused": paused, "by": identity.id})))
}

async fn pause(Call { state, identity }: Call, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    set_paused(state, identity, bytes, true).await
}

async fn resume(Call { state, identity }: Call, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    set_paused(state, identity, bytes, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    action: Option<i64>,
    incident: Option<i64>,
    actor: Option<String>,
    event: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(state): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let q = query(q)?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = store
        .list_audit(&AuditFilter {
            action_id: q.action,
            incident_id: q.incident,
            actor: q.actor,
            event: q.event,
            before_id: q.before,
            limit,
        })
        .await?;
    let next = next_before(&rows, limit, |r| r.id);
    Ok(Json(json!({"entries": rows, "next_before": next})))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    firebreak_remediation::check_flag_key(key).map_err(|m| bad("key", m))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlagBody {
    key: Option<String>,
    enabled: Option<bool>,
    description: Option<String>,
    owner: Option<String>,
    /// A flagd flag definition.
    definition: Option<Value>,
    by: Option<String>,
}

impl FlagBody {
    fn edit(self) -> Result<FlagEdit, ApiError> {
        no_by(&self.by)?;
        Ok(FlagEdit {
            enabled: self.enabled,
            description: self.description,
            owner: self.owner,
            definition: self.definition,
        })
    }
}

async fn list_flags(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    Ok(Json(json!({"flags": store.list_flags().await?})))
}

/// `POST /api/v1/flags/import`: a flagd flag file, all or nothing.
async fn import_flags(
    Call { state, identity }: Call,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let remediation = state.remediation.clone();
    let file: Value = body(&bytes)?;
    let (keys, warnings) = remediation.import_flags(&identity, &file).await?;
    Ok(Json(json!({"imported": keys, "warnings": warnings})))
}

/// `GET /api/v1/flags/export`: every built-in flag as a flagd flag file (a
/// killed flag is `DISABLED`; a plain flag has variants `on` and `off`).
async fn export_flags(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let flags: serde_json::Map<String, Value> = store
        .list_flags()
        .await?
        .iter()
        .map(|f| (f.key.clone(), json!(f.effective())))
        .collect();
    Ok(Json(json!({"flags": flags})))
}

async fn get_flag(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    check_key(&key)?;
    let flag = store
        .flag(&key)
        .await
        .map_err(not_found(format!("no flag {key:?}")))?;
    Ok(Json(json!(flag)))
}

/// A flag after an edit, what it was, and what flagd would load but answer
/// PARSE_ERROR for (an unknown operation in its definition).
fn flag_answer(before: Option<FlagRow>, flag: FlagRow) -> Value {
    let warnings = flag
        .definition
        .as_ref()
        .map(|d| d.warnings())
        .unwrap_or_default();
    json!({"flag": flag, "previous_enabled": before.map(|b| b.enabled), "warnings": warnings})
}

/// `POST /api/v1/flags`: creates a flag (201) or edits it (200); a new
/// flag without a definition or `enabled` is on.
async fn create_flag(Call { state, identity }: Call, bytes: Bytes) -> Result<Response, ApiError> {
    let remediation = state.remediation.clone();
    let mut f: FlagBody = body(&bytes)?;
    let key = f
        .key
        .take()
        .ok_or_else(|| bad("key", "missing: give the flag's key"))?;
    if f.enabled.is_none() && f.definition.is_none() {
        f.enabled = Some(true);
    }
    let (before, flag) = remediation.edit_flag(&identity, &key, f.edit()?).await?;
    let status = if before.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(flag_answer(before, flag))).into_response())
}

/// `PUT /api/v1/flags/{key}`: any of `enabled`, `description`, `owner` and
/// `definition` (a flagd flag definition); what is left out stays.
async fn put_flag(
    Call { state, identity }: Call,
    Path(key): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let remediation = state.remediation.clone();
    let mut f: FlagBody = body(&bytes)?;
    if f.key.take().is_some_and(|k| k != key) {
        return Err(bad("key", "differs from the key in the path"));
    }
    let (before, flag) = remediation.edit_flag(&identity, &key, f.edit()?).await?;
    Ok(Json(flag_answer(before, flag)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaleQuery {
    days: Option<i64>,
}

/// `GET /api/v1/flags/stale?days=30`: flags fully rolled out or not
/// evaluated for `days` days, with the reasons, owner and dates.
async fn stale_flags(
    State(state): State<AppState>,
    q: Result<Query<StaleQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let days = q.days.unwrap_or(30);
    if !(1..=3650).contains(&days) {
        return Err(bad("days", "must be 1 to 3650"));
    }
    let store = state.store.clone();
    let now = chrono::Utc::now();
    let stale: Vec<Value> = store
        .list_flags()
        .await?
        .iter()
        .filter_map(|f| {
            let reasons = f.stale_reasons(now, days);
            (!reasons.is_empty()).then(|| {
                json!({
                    "key": f.key, "reasons": reasons, "owner": f.owner, "enabled": f.enabled,
                    "created_at": f.created_at, "last_changed_at": f.updated_at,
                    "last_evaluated_at": f.last_evaluated_at,
                })
            })
        })
        .collect();
    Ok(Json(json!({"days": days, "stale": stale})))
}

async fn delete_flag(
    Call { state, identity }: Call,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let remediation = state.remediation.clone();
    remediation.delete_flag(&identity, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- OFREP -----------------------------------------------------------------

/// When each flag was last evaluated, kept in memory (one entry per existing
/// flag) and written to the store every few seconds by [`keep_flag_usage`]:
/// evaluations stay off the write path.
#[derive(Default)]
pub struct FlagUsage {
    seen: std::sync::Mutex<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>>,
}

impl FlagUsage {
    pub fn saw<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in keys {
            match seen.get_mut(key) {
                Some(t) => *t = at,
                None => {
                    seen.insert(key.to_string(), at);
                }
            }
        }
    }

    fn take(&self) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.drain().collect()
    }
}

/// Writes what [`FlagUsage`] saw every `every`, and once more at shutdown.
pub async fn keep_flag_usage(
    store: Arc<dyn Store>,
    usage: Arc<FlagUsage>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let last = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        let seen = usage.take();
        if let Err(e) = store.flags_evaluated(&seen).await {
            tracing::warn!(error = %e, flags = seen.len(), "cannot record when flags were last evaluated; trying again");
            let now = chrono::Utc::now();
            usage.saw(seen.iter().map(|(k, _)| k.as_str()), now);
        }
        if last {
            return;
        }
    }
}

fn ofrep_error(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    (status, Json(body)).into_response()
}

/// The request body: `{"context": {...}}`, context optional; the context is
/// what targeting reads (`targetingKey` buckets percentage splits).
fn ofrep_context(bytes: &Bytes, key: Option<&str>) -> Result<Value, Box<Response>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Err(e) => Err(Box::new(ofrep_error(
            StatusCode::BAD_REQUEST,
            key,
            "PARSE_ERROR",
            format!("the body is not JSON: {e}"),
        ))),
        Ok(Value::Object(mut o)) => match o.remove("context") {
            None | Some(Value::Null) => Ok(Value::Object(Default::default())),
            Some(c @ Value::Object(_)) => Ok(c),
            Some(_) => Err(Box::new(ofrep_error(
                StatusCode::BAD_REQUEST,
                key,
                "INVALID_CONTEXT",
                "context must be a JSON object".into(),
            ))),
        },
        Ok(_) => Err(Box::new(ofrep_error(
            StatusCode::BAD_REQUEST,
            key,
            "PARSE_ERROR",
            "the body must be a JSON object".into(),
        ))),
    }
}

/// One flag evaluated for a context: `Ok` an OFREP success body, `Err` the
/// status and OFREP error body. A success without a value (a disabled flag,
/// no default variant) omits `value`, so the caller uses its own default,
/// and answers `"variant": null` (OFREP providers read `variant` as given).
fn evaluation(
    f: &FlagRow,
    context: &Value,
    bucketing: firebreak_domain::flagd::Bucketing,
) -> Result<Value, (StatusCode, Value)> {
    use firebreak_domain::flagd::ErrorCode;
    match f.evaluate(context, chrono::Utc::now().timestamp(), bucketing) {
        Ok((r, metadata)) => {
            // The flag's own metadata as written (with its flag set's);
            // who changed it when is the flags API's, not OFREP's.
            let mut body = json!({
                "key": f.key,
                "reason": r.reason.as_str(),
                "variant": r.variant,
                "metadata": metadata,
            });
            if let Some(v) = r.value {
                body["value"] = v.clone();
            }
            Ok(body)
        }
        Err(e) => {
            let status = match e.code {
                ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            Err((
                status,
                json!({"key": f.key, "errorCode": e.code.as_str(), "errorDetails": e.details}),
            ))
        }
    }
}

async fn ofrep_one(
    State(state): State<AppState>,
    Path(key): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let context = match ofrep_context(&bytes, Some(&key)) {
        Ok(c) => c,
        Err(r) => return Ok(*r),
    };
    match store.flag(&key).await {
        Ok(f) => {
            state.flag_usage.saw([f.key.as_str()], chrono::Utc::now());
            Ok(match evaluation(&f, &context, state.fractional) {
                Ok(body) => Json(body).into_response(),
                Err((status, body)) => (status, Json(body)).into_response(),
            })
        }
        Err(StoreError::NotFound) => Ok(ofrep_error(
            StatusCode::NOT_FOUND,
            Some(&key),
            "FLAG_NOT_FOUND",
            format!("flag {key} not found; create it with POST /api/v1/flags"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Every flag for one context. The `ETag` covers the flags and the context,
/// so a client polling with the same context gets `304` until a flag changes.
async fn ofrep_bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let context = match ofrep_context(&bytes, None) {
        Ok(c) => c,
        Err(r) => return Ok(*r),
    };
    let flags = store.list_flags().await?;
    state
        .flag_usage
        .saw(flags.iter().map(|f| f.key.as_str()), chrono::Utc::now());
    let mut hasher = Sha256::new();
    hasher.update(context.to_string().as_bytes());
    for f in &flags {
        hasher.update(f.key.as_bytes());
        hasher.update([u8::from(f.enabled), 0]);
        hasher.update(f.updated_at.timestamp_micros().to_le_bytes());
    }
    let digest = hasher.finalize();
    let etag = format!(
        "\"{}\"",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    if matches {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag_value);
        return Ok(r);
    }
    let results: Vec<Value> = flags
        .iter()
        .map(|f| evaluation(f, &context, state.fractional).unwrap_or_else(|(_, body)| body))
        .collect();
    let mut r = Json(json!({"flags": results})).into_response();
    r.headers_mut().insert(header::ETAG, etag_value);
    Ok(r)
}

async fn ofrep_configuration() -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({
        "name": "Firebreak",
        "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": true, "minPollingIntervalMs": 1000}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "integer", "float", "object"]},
        },
    })))
}
