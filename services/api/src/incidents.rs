//! Incidents over HTTP: lists, details and timelines, and what people do in
//! a response (declare, acknowledge, severity, stage, commander, summary),
//! which the remediation core carries out.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use firebreak_domain::response::{SeverityScale, Stage};
use firebreak_remediation::incidents::IncidentChange;
use firebreak_store::{IncidentFilter, IncidentRow};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::{bad, path_id, query};
use crate::paging::{next_before, page_limit};
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/incidents", get(list).post(declare))
        .route("/api/v1/incidents/{id}", get(detail).patch(update))
        .route("/api/v1/incidents/{id}/acknowledge", post(acknowledge))
        .route("/api/v1/incidents/{id}/timeline", get(timeline))
}

const MAX_PAGE: i64 = 500;
const MAX_TIMELINE_PAGE: i64 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    severity: Option<String>,
    stage: Option<String>,
    acknowledged: Option<bool>,
    commander: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

/// An incident as the API shows it: `severity` on the configured scale
/// (declared, or mapped from the alerts' label, which `alert_severity`
/// keeps), `stage` of the response, and who acknowledged and commands it.
pub(crate) fn incident_json(row: &IncidentRow, scale: &SeverityScale, now: DateTime<Utc>) -> Value {
    let end = row.resolved_at.unwrap_or(now);
    let r = &row.response;
    json!({
        "id": row.id,
        "status": row.status,
        "stage": Stage::of(&row.status, r.stage.as_deref()).as_str(),
        "service": row.service,
        "environment": row.environment,
        "title": row.title,
        "severity": scale.of(r.declared_severity.as_deref(), row.severity.as_deref()),
        "alert_severity": row.severity,
        "acknowledged_at": r.acknowledged_at,
        "acknowledged_by": r.acknowledged_by,
        "commander": r.commander,
        "summary": r.summary,
        "declared_by": r.declared_by,
        "group_key": row.group_key,
        "opened_at": row.opened_at,
        "resolved_at": row.resolved_at,
        "duration_seconds": (end - row.opened_at).num_seconds().max(0),
    })
}

/// The severity scale incidents are declared on (the remediation core's).
pub(crate) fn severity_scale(state: &AppState) -> SeverityScale {
    state.remediation.severities().clone()
}

async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let q = query(q)?;
    if let Some(status) = &q.status {
        if status != "open" && status != "resolved" {
            return Err(bad(
                "status",
                format!("{status:?} is not a status: use open or resolved"),
            ));
        }
    }
    let limit = page_limit(q.limit, 50, MAX_PAGE)?;
    let scale = severity_scale(&state);
    let severities = match &q.severity {
        None => None,
        Some(v) => {
            let level = scale.level(v).ok_or_else(|| {
                bad(
                    "severity",
                    format!(
                        "{v:?} is not a severity: one of {}",
                        scale.levels.join(", ")
                    ),
                )
            })?;
            let mut all = scale.labels_of(level);
            all.push(level.to_string());
            Some(all)
        }
    };
    let stage = match &q.stage {
        None => None,
        Some(v) => Some(Stage::parse(v).ok_or_else(|| {
            bad(
                "stage",
                format!(
                    "{v:?} is not a stage: one of {}",
                    Stage::ALL.map(Stage::as_str).join(", ")
                ),
            )
        })?),
    };
    // `resolved` is the incident's status; the others are stages of open ones.
    let (status, stage) = match stage {
        Some(Stage::Resolved) => (Some("resolved".to_string()), None),
        Some(s) => (q.status.clone(), Some(s.as_str().to_string())),
        None => (q.status.clone(), None),
    };
    let commander = q
        .commander
        .as_deref()
        .map(firebreak_domain::response::identity_name)
        .transpose()
        .map_err(|m| bad("commander", m))?;
    let filter = IncidentFilter {
        status,
        service: q.service,
        severities,
        stage,
        acknowledged: q.acknowledged,
        commander,
        before_id: q.before,
        limit,
    };
    let rows = store.list_incidents(&filter).await?;
    let now = Utc::now();
    let next = next_before(&rows, limit, |r| r.id);
    Ok(Json(json!({
        "incidents": rows.iter().map(|r| incident_json(r, &scale, now)).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

async fn detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let id = path_id(&id, "an incident")?;
    let detail = store.incident(id).await.map_err(|e| match e {
        firebreak_store::StoreError::NotFound => ApiError::NotFound(format!("no incident {id}")),
        e => e.into(),
    })?;
    let now = Utc::now();
    let opened = detail.incident.opened_at;
    let mut body = incident_json(&detail.incident, &severity_scale(&state), now);
    body["alerts"] = json!(detail.alerts);
    body["suspect_changes"] = json!(detail
        .changes
        .iter()
        .map(|d| {
            let mut v = json!(d);
            v["seconds_before_incident"] = json!((opened - d.started_at).num_seconds());
            // A person's word (POST …/changes/{deploy}/cause): null until someone says.
            let marked = detail.causes.get(&d.id);
            v["cause"] = json!(marked.map(|c| c.cause));
            v["cause_by"] = json!(marked.and_then(|c| c.by.as_deref()));
            v["cause_at"] = json!(marked.and_then(|c| c.at));
            v
        })
        .collect::<Vec<_>>());
    body["gates"] = json!(detail.gates);
    body["counts"] = json!({
        "alerts": detail.alerts.len(),
        "alerts_firing": detail.alerts.iter().filter(|a| a.status == "firing").count(),
        "timeline_entries": detail.timeline_entries,
    });
    body["links"] = json!({"timeline": format!("/api/v1/incidents/{id}/timeline")});
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn timeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let id = path_id(&id, "an incident")?;
    let q = query(q)?;
    let limit = page_limit(q.limit, 1000, MAX_TIMELINE_PAGE)?;
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(bad("offset", "must not be negative"));
    }
    // A missing incident is a 404, not an empty timeline.
    store.incident(id).await.map_err(|e| match e {
        firebreak_store::StoreError::NotFound => ApiError::NotFound(format!("no incident {id}")),
        e => e.into(),
    })?;
    let rows = store.timeline(id, limit, offset).await?;
    let next = if rows.len() as i64 == limit {
        Some(offset + limit)
    } else {
        None
    };
    Ok(Json(json!({
        "incident_id": id,
        "entries": rows.iter().map(|r| json!({
            "at": r.at, "kind": r.kind, "source": r.source, "summary": r.summary, "ref": r.ref_id,
        })).collect::<Vec<_>>(),
        "next_offset": next,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    title: Option<String>,
    service: Option<String>,
    environment: Option<String>,
    severity: Option<String>,
    summary: Option<String>,
}

/// `POST /api/v1/incidents`: a person declares an incident (201).
async fn declare(Call { state, identity }: Call, bytes: Bytes) -> Result<Response, ApiError> {
    let b: DeclareBody = crate::error::body(&bytes)?;
    let title = b
        .title
        .ok_or_else(|| bad("title", "missing: say in a few words what is wrong"))?;
    let service = b
        .service
        .ok_or_else(|| bad("service", "missing: the service that is affected"))?;
    let row = state
        .remediation
        .clone()
        .declare_incident(
            &identity,
            &title,
            &service,
            b.environment.as_deref(),
            b.severity.as_deref(),
            b.summary.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(incident_json(&row, &severity_scale(&state), Utc::now())),
    )
        .into_response())
}

/// `POST /api/v1/incidents/{id}/acknowledge`: 200 whether this was the first
/// acknowledgement or not; `acknowledged` says whether it changed anything.
async fn acknowledge(
    Call { state, identity }: Call,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "an incident")?;
    let remediation = state.remediation.clone();
    let first = remediation.acknowledge_incident(&identity, id).await?;
    let row = remediation.store().incident_overview(id).await?.incident;
    let mut body = incident_json(&row, &severity_scale(&state), Utc::now());
    body["acknowledged"] = json!(first);
    Ok(Json(body))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    severity: Option<String>,
    stage: Option<String>,
    /// The stage by the name people use (`status`: investigating,
    /// identified, monitoring, resolved); the answer's `status` stays
    /// `open` / `resolved` and its `stage` carries this.
    status: Option<String>,
    commander: Option<String>,
    summary: Option<String>,
}

/// `PATCH /api/v1/incidents/{id}`: any of severity, stage, commander, summary.
async fn update(
    Call { state, identity }: Call,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "an incident")?;
    let mut b: UpdateBody = crate::error::body(&bytes)?;
    match (b.stage.take(), b.status.take()) {
        (Some(a), Some(s)) if !a.eq_ignore_ascii_case(&s) => {
            return Err(bad(
                "status",
                "status and stage name the same thing here; give one (or the same value)",
            ))
        }
        (a, s) => b.stage = a.or(s),
    }
    if b.stage.as_deref().and_then(Stage::parse) == Some(Stage::Resolved)
        && !identity.allows(firebreak_domain::access::Scope::Operate)
    {
        return Err(ApiError::Forbidden(format!(
            "resolving an incident needs the operate scope (operator role); {} may only edit",
            identity.id
        )));
    }
    if b.severity.is_none() && b.stage.is_none() && b.commander.is_none() && b.summary.is_none() {
        return Err(bad(
            "severity",
            "give at least one of severity, stage, commander, summary",
        ));
    }
    let row = state
        .remediation
        .clone()
        .update_incident(
            &identity,
            id,
            &IncidentChange {
                severity: b.severity,
                stage: b.stage,
                commander: b.commander,
                summary: b.summary,
            },
        )
        .await?;
    Ok(Json(incident_json(
        &row,
        &severity_scale(&state),
        Utc::now(),
    )))
}
