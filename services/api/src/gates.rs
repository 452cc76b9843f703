//! Firebreak as the gate of rollout controllers: Flagger's webhooks
//! (`rollback`, `confirm-rollout`, `confirm-promotion`) and an Argo Rollouts
//! Web metric. The verdict comes from what Firebreak knows about the
//! service: open incidents, failed gate results, the automation pause and
//! change freezes (`[[automation.freeze]]`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Duration, Utc};
use firebreak_domain::access::Identity;
use firebreak_domain::events::GateVerdict;
use firebreak_domain::timeline::NewEntry;
use firebreak_store::{IncidentFilter, ServiceWindow};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::bad;
use crate::paging::page_limit;
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/gates/flagger/{hook}", post(flagger))
        .route("/api/v1/gates/argo/{service}", get(argo))
        .route("/api/v1/services/{service}/timeline", get(service_timeline))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    limit: Option<i64>,
}

/// `GET /api/v1/services/{service}/timeline?limit=100`: what concerned the
/// service while no incident was open (gate consultations), newest first.
async fn service_timeline(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: Result<Query<TimelineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::error::query(query)?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let store = state.store.clone();
    let entries = store.service_timeline(&service, limit).await?;
    Ok(Json(
        json!({"service": service, "entries": entries.iter().map(|e| json!({
        "at": e.at, "kind": e.kind, "source": e.source, "summary": e.summary, "ref": e.ref_id,
    })).collect::<Vec<_>>()}),
    ))
}

/// The timeline kind of a consultation.
const GATE_CONSULTED: &str = "gate_consulted";

/// How far back a failed gate result counts when no revision is named.
const GATE_LOOKBACK_HOURS: i64 = 2;

/// What holds a service's rollout back.
struct Facts {
    open_incidents: Vec<i64>,
    failed_gates: Vec<String>,
    paused: bool,
    /// The change freeze in force, by name.
    freeze: Option<String>,
}

impl Facts {
    fn reasons(&self) -> Vec<String> {
        let mut r = Vec::new();
        if !self.open_incidents.is_empty() {
            r.push(format!(
                "open incident {}",
                self.open_incidents
                    .iter()
                    .map(|i| format!("#{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.failed_gates.is_empty() {
            r.push(format!("failed gate {}", self.failed_gates.join(", ")));
        }
        if self.paused {
            r.push("automation is paused".into());
        }
        if let Some(f) = &self.freeze {
            r.push(format!("change freeze {f}"));
        }
        r
    }
}

async fn facts(
    state: &AppState,
    service: &str,
    environment: Option<&str>,
    revision: Option<&str>,
) -> Result<Facts, ApiError> {
    let store = state.store.clone();
    let open_incidents = store
        .list_incidents(&IncidentFilter {
            status: Some("open".into()),
            service: Some(service.to_string()),
            before_id: None,
            limit: 100,
            ..IncidentFilter::default()
        })
        .await?
        .iter()
        .map(|i| i.id)
        .collect();
    let now = Utc::now();
    let mut tx = store.begin().await?;
    let gates = tx
        .gates_between(ServiceWindow {
            service,
            environment,
            from: now - Duration::hours(GATE_LOOKBACK_HOURS),
            to: now,
        })
        .await?;
    drop(tx);
    let failed_gates = gates
        .iter()
        .filter(|g| g.verdict == GateVerdict::Fail)
        .filter(|g| revision.is_none_or(|r| g.version.as_deref() == Some(r)))
        .map(|g| match &g.version {
            Some(v) => format!("{} ({v})", g.gate),
            None => g.gate.clone(),
        })
        .collect();
    let r = &state.remediation;
    let (paused, freeze) = (
        r.paused().await?,
        r.policy()
            .freeze(service, environment, now)
            .map(|f| f.name.clone()),
    );
    Ok(Facts {
        open_incidents,
        failed_gates,
        paused,
        freeze,
    })
}

/// What Flagger POSTs to a webhook.
#[derive(Deserialize)]
struct FlaggerHook {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    checksum: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// `POST /api/v1/gates/flagger/{rollback|confirm-rollout|confirm-promotion}`.
/// Flagger counts 200–202 as success: for `rollback` that means "roll back
/// now"; for the confirm hooks "go on". Any other answer (here 403, as
/// Flagger's own load tester refuses) means the opposite.
async fn flagger(
    Call { state, identity }: Call,
    Path(hook): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !matches!(
        hook.as_str(),
        "rollback" | "confirm-rollout" | "confirm-promotion"
    ) {
        return Err(ApiError::NotFound(format!(
            "no Flagger hook {hook:?}: use rollback, confirm-rollout or confirm-promotion"
        )));
    }
    let body: FlaggerHook = serde_json::from_slice(&bytes)
        .map_err(|e| bad("body", format!("not a Flagger webhook body: {e}")))?;
    let service = body
        .metadata
        .get("service")
        .cloned()
        .unwrap_or_else(|| body.name.clone());
    if service.is_empty() || service.len() > 200 {
        return Err(bad(
            "name",
            "the canary's name (or metadata.service) names the service",
        ));
    }
    let environment = body.metadata.get("environment").map(String::as_str);
    let revision = body.metadata.get("version").map(String::as_str);
    let facts = facts(&state, &service, environment, revision).await?;
    let reasons = facts.reasons();
    let (pass, verdict) = match hook.as_str() {
        "rollback" => {
            let roll_back = !facts.open_incidents.is_empty() || !facts.failed_gates.is_empty();
            (roll_back, if roll_back { "roll back" } else { "carry on" })
        }
        _ => {
            let go = reasons.is_empty();
            (go, if go { "go" } else { "hold" })
        }
    };
    let summary = format!(
        "Flagger {hook} for {service} ({}/{}, phase {}, checksum {}): {verdict}{}",
        body.namespace,
        body.name,
        body.phase,
        body.checksum,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" — {}", reasons.join("; "))
        }
    );
    record(
        &state,
        &identity,
        &service,
        &facts.open_incidents,
        summary,
        format!("flagger:{hook}:{}:{verdict}", body.checksum),
        json!({"hook": hook, "service": service, "checksum": body.checksum, "verdict": verdict, "reasons": reasons}),
    )
    .await?;
    let status = if pass {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    Ok((
        status,
        Json(json!({"service": service, "hook": hook, "verdict": verdict, "reasons": reasons})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgoQuery {
    environment: Option<String>,
    version: Option<String>,
}

/// `GET /api/v1/gates/argo/{service}`: an Argo Rollouts Web metric. Always
/// 200 with a verdict (a non-2xx is a measurement error to Argo, not a
/// verdict): `successCondition: result.verdict == "pass"`,
/// `failureCondition: result.verdict == "fail"`.
async fn argo(
    Call { state, identity }: Call,
    Path(service): Path<String>,
    query: Result<Query<ArgoQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::error::query(query)?;
    let facts = facts(
        &state,
        &service,
        q.environment.as_deref(),
        q.version.as_deref(),
    )
    .await?;
    let verdict = if !facts.open_incidents.is_empty() || !facts.failed_gates.is_empty() {
        "fail"
    } else if facts.paused || facts.freeze.is_some() {
        // Neither condition holds: Argo pauses the rollout (Inconclusive).
        "hold"
    } else {
        "pass"
    };
    let reasons = facts.reasons();
    record(
        &state,
        &identity,
        &service,
        &facts.open_incidents,
        format!(
            "Argo Rollouts analysis of {service}{}: {verdict}{}",
            q.version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" — {}", reasons.join("; "))
            }
        ),
        format!(
            "argo:{service}:{}:{verdict}",
            q.version.as_deref().unwrap_or("")
        ),
        json!({"service": service, "version": q.version, "verdict": verdict, "reasons": reasons}),
    )
    .await?;
    Ok(Json(json!({
        "service": service,
        "verdict": verdict,
        "openIncidents": facts.open_incidents,
        "failedGates": facts.failed_gates,
        "paused": facts.paused,
        "freeze": facts.freeze,
        "reasons": reasons,
    })))
}

/// The consultation and its verdict: on the timeline of each open incident
/// of the service (else on the service's own timeline), once per revision
/// and verdict however often the controller asks (it polls every analysis
/// interval).
async fn record(
    state: &AppState,
    identity: &Identity,
    service: &str,
    incidents: &[i64],
    summary: String,
    ref_id: String,
    detail: Value,
) -> Result<(), ApiError> {
    let store = &state.store;
    let kind = GATE_CONSULTED;
    let now = Utc::now();
    if incidents.is_empty() {
        // No incident open: the service's own timeline keeps it.
        store
            .record_service_events(&[firebreak_store::ServiceEvent {
                service: service.to_string(),
                at: now,
                kind: kind.to_string(),
                source: identity.id.clone(),
                summary,
                ref_id,
            }])
            .await?;
        return Ok(());
    }
    let entries: Vec<NewEntry> = incidents
        .iter()
        .map(|id| NewEntry {
            incident_id: *id,
            at: now,
            kind,
            source: identity.id.clone(),
            summary: summary.clone(),
            ref_id: ref_id.clone(),
        })
        .collect();
    tracing::debug!(%detail, "rollout gate consulted");
    store.record(&[], &entries).await?;
    Ok(())
}
