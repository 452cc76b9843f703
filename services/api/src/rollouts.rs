//! Guarded rollouts over HTTP: start one on a built-in flag, watch it, and
//! pause, resume, abort or restart it. The commands are remediation's; this
//! module parses, authenticates (the route policy) and formats.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use firebreak_domain::rollout::{Rollout, RolloutPlan};
use firebreak_remediation::rollouts::RolloutCommand;
use firebreak_store::{ActionRow, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::{bad, body, json_body, path_id, query};
use crate::paging::page_limit;
use crate::remediation::action_json;
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rollouts", get(list).post(start))
        .route("/api/v1/rollouts/{id}", get(one))
        .route("/api/v1/rollouts/{id}/{command}", post(command))
}

pub(crate) fn rollout_json(r: &Rollout) -> Value {
    let mut v = json!(r);
    v["percent"] = json!(r.percent());
    v["step"] = json!(r.step.map(|s| s + 1));
    v["steps"] = json!(r.plan.steps.len());
    v["links"] = json!({
        "self": format!("/api/v1/rollouts/{}", r.id),
        "pause": format!("/api/v1/rollouts/{}/pause", r.id),
        "resume": format!("/api/v1/rollouts/{}/resume", r.id),
        "abort": format!("/api/v1/rollouts/{}/abort", r.id),
        "restart": format!("/api/v1/rollouts/{}/restart", r.id),
    });
    v
}

fn with_action(r: &Rollout, a: Option<&ActionRow>) -> Value {
    json!({"rollout": rollout_json(r), "action": a.map(action_json)})
}

/// `POST /api/v1/rollouts`: `{"flag": …, "service": …, "steps": [{"percent": 5, "hold": "1h"}, …], "guards": {…}}`.
async fn start(Call { state, identity }: Call, bytes: Bytes) -> Result<Response, ApiError> {
    let remediation = state.remediation.clone();
    // The plan refuses unknown keys; `flag` is taken out first.
    let mut raw: Value = body(&bytes)?;
    let flag = match raw.as_object_mut().and_then(|o| o.remove("flag")) {
        Some(Value::String(f)) => f,
        Some(_) => return Err(bad("flag", "must be the flag's key, a string")),
        None => return Err(bad("flag", "missing: name the built-in flag to roll out")),
    };
    let plan: RolloutPlan = json_body(raw.to_string().as_bytes())?;
    let (rollout, action) = remediation.start_rollout(&identity, &flag, plan).await?;
    let mut r = (
        StatusCode::CREATED,
        Json(with_action(&rollout, action.as_ref())),
    )
        .into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/rollouts/{}", rollout.id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    flag: Option<String>,
    active: Option<bool>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let store = state.store.clone();
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = store
        .list_rollouts(q.flag.as_deref(), q.active.unwrap_or(false), limit)
        .await?;
    Ok(Json(
        json!({"rollouts": rows.iter().map(rollout_json).collect::<Vec<_>>()}),
    ))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "a rollout")?;
    let store = state.store.clone();
    let rollout = store.rollout(id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("no rollout {id}")),
        e => e.into(),
    })?;
    let events = store.rollout_events(id).await?;
    let mut v = rollout_json(&rollout);
    v["events"] = json!(events);
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    comment: Option<String>,
    /// For `restart`: the step to run from, 1-based (default 1).
    step: Option<usize>,
}

async fn command(
    Call { state, identity }: Call,
    Path((id, command)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "a rollout")?;
    let b: CommandBody = body(&bytes)?;
    let command = match command.as_str() {
        "pause" => RolloutCommand::Pause,
        "resume" => RolloutCommand::Resume,
        "abort" => RolloutCommand::Abort,
        "restart" => RolloutCommand::Restart {
            step: b.step.unwrap_or(1),
        },
        other => {
            return Err(ApiError::NotFound(format!(
                "no rollout command {other:?}: use pause, resume, abort or restart"
            )))
        }
    };
    if b.step.is_some() && !matches!(command, RolloutCommand::Restart { .. }) {
        return Err(bad("step", "only restart takes a step"));
    }
    let remediation = state.remediation.clone();
    let (rollout, action) = remediation
        .rollout_command(&identity, id, command, b.comment.as_deref())
        .await?;
    Ok(Json(with_action(&rollout, action.as_ref())))
}
