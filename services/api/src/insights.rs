//! Insights over HTTP: DORA's metrics and the progressive-delivery figures
//! for a time range, service and environment (`GET /api/v1/insights`), the
//! same as Prometheus gauges per service and environment over the last 30
//! days (`GET /metrics/insights`), and a person's word on which change
//! caused an incident (`POST /api/v1/incidents/{id}/changes/{deploy}/cause`).

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use firebreak_domain::insights::{self, Deployment, IncidentRecord, Range};
use firebreak_store::Store;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::query;
use crate::error::{bad, body};
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/insights", get(api))
        .route("/metrics/insights", get(gauges))
        .route("/api/v1/incidents/{id}/changes/{deploy}/cause", post(cause))
}

/// The longest range one request may ask for.
const MAX_DAYS: i64 = 3660;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct InsightsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub service: Option<String>,
    pub environment: Option<String>,
}

fn moment(field: &str, raw: &str, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
        bad(
            field,
            format!("{raw:?} is not a time: use 2026-11-01 or 2026-11-01T00:00:00Z"),
        )
    })?;
    let day = if end_of_day {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

/// The range asked for: `to` now and `from` 30 days before it by default; a
/// date as `to` includes that whole day.
pub(crate) fn range(q: &InsightsQuery, now: DateTime<Utc>) -> Result<Range, ApiError> {
    let to = match &q.to {
        Some(t) => moment("to", t, true)?,
        None => now,
    };
    let from = match &q.from {
        Some(f) => moment("from", f, false)?,
        None => to - Duration::days(30),
    };
    if from >= to {
        return Err(bad("from", "must be before `to`"));
    }
    if to - from > Duration::days(MAX_DAYS) {
        return Err(bad("from", format!("a range is at most {MAX_DAYS} days")));
    }
    Ok(Range { from, to })
}

/// Computes the insights for a query (shared with the page).
pub(crate) async fn compute(store: &dyn Store, q: &InsightsQuery) -> Result<Value, ApiError> {
    let range = range(q, Utc::now())?;
    // The store narrows to the service and environment asked for.
    let (deployments, incidents) = store
        .insights_data(&range, q.service.as_deref(), q.environment.as_deref())
        .await?;
    let mut v = insights::compute(&range, &deployments, &incidents);
    let (open, overdue) = store
        .action_item_counts(&Utc::now().format("%Y-%m-%d").to_string())
        .await?;
    // Follow-ups of every incident (not narrowed to the range): what is
    // still to do now.
    v["action_items"] = json!({"open": open, "overdue": overdue});
    v["service"] = json!(q.service);
    v["environment"] = json!(q.environment);
    Ok(v)
}

/// `GET /api/v1/insights?from=&to=&service=&environment=`.
async fn api(
    State(state): State<AppState>,
    q: Result<Query<InsightsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let store = state.store.clone();
    let started = std::time::Instant::now();
    let mut v = compute(store.as_ref(), &q).await?;
    v["computed_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
    Ok(Json(v))
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics/insights`: the last 30 days per service and environment,
/// as Prometheus gauges (recomputed at every scrape).
async fn gauges(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let store = state.store.clone();
    let now = Utc::now();
    let range = Range {
        from: now - Duration::days(30),
        to: now,
    };
    let (deployments, incidents) = store.insights_data(&range, None, None).await?;
    let mut groups: BTreeMap<(String, String), (Vec<Deployment>, Vec<IncidentRecord>)> =
        BTreeMap::new();
    for d in deployments {
        let key = (d.service.clone(), d.environment.clone().unwrap_or_default());
        groups.entry(key).or_default().0.push(d);
    }
    for i in incidents {
        let key = (
            i.service.clone().unwrap_or_default(),
            i.environment.clone().unwrap_or_default(),
        );
        groups.entry(key).or_default().1.push(i);
    }
    let series: [(&str, &str, &str, Option<&str>); 10] = [
        (
            "firebreak_dora_deployment_frequency_per_day",
            "Successful deploys per day over the last 30 days.",
            "deployment_frequency",
            None,
        ),
        (
            "firebreak_dora_change_lead_time_seconds",
            "Median deploy time minus commit time over the last 30 days.",
            "change_lead_time",
            None,
        ),
        (
            "firebreak_dora_change_lead_time_p90_seconds",
            "p90 of deploy time minus commit time.",
            "change_lead_time",
            Some("p90"),
        ),
        (
            "firebreak_dora_change_fail_rate",
            "Deployments that caused a failure / deployments.",
            "change_fail_rate",
            None,
        ),
        (
            "firebreak_dora_failed_deployment_recovery_seconds",
            "Median failed deployment -> service restored.",
            "failed_deployment_recovery_time",
            None,
        ),
        (
            "firebreak_dora_deployment_rework_rate",
            "Rollbacks and hotfixes / deployments.",
            "deployment_rework_rate",
            None,
        ),
        (
            "firebreak_time_to_disable_feature_seconds",
            "Median incident opened -> kill switch verified off.",
            "time_to_disable_feature",
            None,
        ),
        (
            "firebreak_time_to_detect_seconds",
            "Median suspect change -> first alert.",
            "time_to_detect",
            None,
        ),
        (
            "firebreak_time_to_mitigate_seconds",
            "Median first alert -> first kill switch or rollback.",
            "time_to_mitigate",
            None,
        ),
        (
            "firebreak_time_to_resolve_seconds",
            "Median first alert -> resolved.",
            "time_to_resolve",
            None,
        ),
    ];
    let computed: Vec<((String, String), Value)> = groups
        .iter()
        .map(|(k, (d, i))| (k.clone(), insights::compute(&range, d, i)))
        .collect();
    let mut text = String::new();
    for (name, help, key, field) in series {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((service, env), v) in &computed {
            if let Some(x) = v[key][field.unwrap_or("value")].as_f64() {
                let _ = writeln!(
                    text,
                    "{name}{{service=\"{}\",environment=\"{}\"}} {x}",
                    label(service),
                    label(env)
                );
            }
        }
    }
    let (open, overdue) = store
        .action_item_counts(&now.format("%Y-%m-%d").to_string())
        .await?;
    let _ = writeln!(text, "# HELP firebreak_action_items_open Postmortem action items not done yet.\n# TYPE firebreak_action_items_open gauge\nfirebreak_action_items_open {open}");
    let _ = writeln!(text, "# HELP firebreak_action_items_overdue Open action items past their due date.\n# TYPE firebreak_action_items_overdue gauge\nfirebreak_action_items_overdue {overdue}");
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CauseBody {
    /// true: it caused the incident; false: it did not; null: not known.
    cause: Option<bool>,
    comment: Option<String>,
}

/// `POST /api/v1/incidents/{id}/changes/{deploy}/cause` `{"cause": true|false|null}`.
async fn cause(
    Call { state, identity }: Call,
    Path((id, deploy)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("id", format!("{id:?} is not an incident id")))?;
    let raw: Value = body(&bytes)?;
    if raw.get("cause").is_none() {
        return Err(bad(
            "cause",
            "missing: true (it caused the incident), false (it did not) or null (not known)",
        ));
    }
    let b: CauseBody = serde_json::from_value(raw).map_err(|e| bad("cause", e.to_string()))?;
    state
        .remediation
        .clone()
        .mark_cause(&identity, id, &deploy, b.cause, b.comment.as_deref())
        .await?;
    Ok(Json(
        json!({"incident": id, "deploy": deploy, "cause": b.cause}),
    ))
}
