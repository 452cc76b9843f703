//! The read side: incidents, their details and their timelines.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use firebreak_store::{IncidentFilter, IncidentRow, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::query;
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/incidents", get(list))
        .route("/api/v1/incidents/{id}", get(detail))
        .route("/api/v1/incidents/{id}/timeline", get(timeline))
}

const MAX_PAGE: i64 = 500;
const MAX_TIMELINE_PAGE: i64 = 10_000;

fn store(state: &AppState) -> Result<Arc<dyn Store>, ApiError> {
    state
        .store
        .clone()
        .ok_or_else(|| ApiError::Internal("api role without a store".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field: Some(field.into()),
        message: message.into(),
    }
}

fn incident_json(row: &IncidentRow, now: DateTime<Utc>) -> Value {
    let end = row.resolved_at.unwrap_or(now);
    json!({
        "id": row.id,
        "status": row.status,
        "service": row.service,
        "environment": row.environment,
        "title": row.title,
        "severity": row.severity,
        "group_key": row.group_key,
        "opened_at": row.opened_at,
        "resolved_at": row.resolved_at,
        "duration_seconds": (end - row.opened_at).num_seconds().max(0),
    })
}

async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&state)?;
    let q = query(q)?;
    if let Some(status) = &q.status {
        if status != "open" && status != "resolved" {
            return Err(bad(
                "status",
                format!("{status:?} is not a status: use open or resolved"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let filter = IncidentFilter {
        status: q.status,
        service: q.service,
        before_id: q.before,
        limit,
    };
    let rows = store.list_incidents(&filter).await?;
    let now = Utc::now();
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(json!({
        "incidents": rows.iter().map(|r| incident_json(r, now)).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| bad("id", format!("{raw:?} is not an incident id")))
}

async fn detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&state)?;
    let id = parse_id(&id)?;
    let detail = store.incident(id).await.map_err(|e| match e {
        firebreak_store::StoreError::NotFound => ApiError::NotFound(format!("no incident {id}")),
        e => e.into(),
    })?;
    let now = Utc::now();
    let opened = detail.incident.opened_at;
    let mut body = incident_json(&detail.incident, now);
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
    let store = store(&state)?;
    let id = parse_id(&id)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_TIMELINE_PAGE).contains(&limit) {
        return Err(bad(
            "limit",
            format!("must be between 1 and {MAX_TIMELINE_PAGE}"),
        ));
    }
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
