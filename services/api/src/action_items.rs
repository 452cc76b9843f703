//! Postmortem action items over HTTP, and the trackers' webhooks that close
//! and reopen them. The rules are `firebreak_postmortem::action_items`'s;
//! this parses, authenticates (a tracker's webhook by its signature, checked
//! before the body is read as JSON), calls and formats.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use firebreak_domain::secret::Secret;
use firebreak_postmortem::action_items::{self, ItemError, ItemPatch, NewItem};
use firebreak_postmortem::trackers::signature_valid;
use firebreak_store::ActionItemRow;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::{body, path_id};
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/incidents/{id}/action-items",
            get(list).post(create),
        )
        .route("/api/v1/action-items/{id}", patch(change))
        .route("/api/v1/action-items/{id}/export", post(export))
        .route("/api/v1/trackers/github/webhook", post(github_webhook))
        .route("/api/v1/trackers/jira/webhook", post(jira_webhook))
}

impl From<ItemError> for ApiError {
    fn from(e: ItemError) -> ApiError {
        match e {
            ItemError::Bad { field, message } => ApiError::BadRequest {
                field: Some(field.into()),
                message,
            },
            ItemError::NotFound(m) => ApiError::NotFound(m),
            ItemError::Conflict(m) => ApiError::Conflict(m),
            ItemError::Store(e) => e.into(),
        }
    }
}

/// An action item as the API shows it.
pub(crate) fn item_json(i: &ActionItemRow) -> Value {
    json!({
        "id": i.id,
        "incident_id": i.incident_id,
        "title": i.title,
        "owner": i.owner,
        "due": i.due,
        "priority": i.priority,
        "status": i.status,
        "created_by": i.created_by,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
        "tracker": i.tracker.as_ref().map(|t| json!({
            "name": t,
            "key": i.tracker_key,
            "url": i.tracker_url,
            "export": i.export_state,
            "error": i.export_error,
            "attempts": i.export_attempts,
        })),
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    tracker: Option<String>,
}

/// `GET /api/v1/incidents/{id}/action-items`
async fn list(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let incident = path_id(&raw, "an incident")?;
    match state.store.incident(incident).await {
        Ok(_) => {}
        Err(firebreak_store::StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("no incident {incident}")))
        }
        Err(e) => return Err(e.into()),
    }
    let items = state.store.action_items(incident).await?;
    Ok(Json(json!({
        "incident_id": incident,
        "items": items.iter().map(item_json).collect::<Vec<_>>(),
    })))
}

/// `POST /api/v1/incidents/{id}/action-items` `{"title", "owner"?, "due"?, "priority"?, "tracker"?}`
async fn create(
    Call { state, identity }: Call,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let incident = path_id(&raw, "an incident")?;
    let new: NewItem = body(&bytes)?;
    let store = state.store.as_ref();
    let item = action_items::create(store, &state.trackers, incident, new, &identity.id).await?;
    state.postmortems.refresh_soon(item.incident_id);
    Ok((StatusCode::CREATED, Json(item_json(&item))))
}

/// `PATCH /api/v1/action-items/{id}` `{"title"?, "owner"?, "due"?, "priority"?, "status"?}`
async fn change(
    Call { state, identity }: Call,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let item = path_id(&raw, "an action item")?;
    let patch: ItemPatch = body(&bytes)?;
    let row = action_items::update(state.store.as_ref(), item, patch, &identity.id).await?;
    state.postmortems.refresh_soon(row.incident_id);
    Ok(Json(item_json(&row)))
}

/// `POST /api/v1/action-items/{id}/export` `{"tracker": "github" | "jira"}`:
/// 202, the export waits in the outbox.
async fn export(
    Call { state, identity }: Call,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let item = path_id(&raw, "an action item")?;
    let b: ExportBody = body(&bytes)?;
    let tracker = b
        .tracker
        .or_else(|| state.trackers.default.clone())
        .ok_or_else(|| ApiError::BadRequest {
            field: Some("tracker".into()),
            message: "name the tracker (github or jira): no trackers.default is set".into(),
        })?;
    let row = action_items::export(
        state.store.as_ref(),
        &state.trackers,
        item,
        &tracker,
        &identity.id,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(item_json(&row))))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unsigned(tracker: &str) -> ApiError {
    ApiError::Unauthorized(format!(
        "the {tracker} webhook's signature is missing or wrong: it must be signed with trackers.{tracker}.webhook_secret"
    ))
}

fn not_configured(tracker: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no {tracker} webhook here: set trackers.{tracker}.webhook_secret"
    ))
}

fn ignored(why: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "ignored", "why": why})),
    )
}

fn applied(state: &AppState, key: &str, row: Option<ActionItemRow>) -> (StatusCode, Json<Value>) {
    match row {
        Some(r) => {
            state.postmortems.refresh_soon(r.incident_id);
            (
                StatusCode::OK,
                Json(json!({"status": "applied", "item": item_json(&r)})),
            )
        }
        None => ignored(&format!("no action item is exported as {key}")),
    }
}

/// The tracker's configuration, when its webhook is configured and `bytes`
/// carry its signature.
fn verified<'a, T>(
    tracker: &str,
    config: Option<&'a T>,
    secret: fn(&T) -> Option<&Secret>,
    signature: Option<&str>,
    bytes: &[u8],
) -> Result<&'a T, ApiError> {
    let (Some(config), Some(secret)) = (config, config.and_then(secret)) else {
        return Err(not_configured(tracker));
    };
    if !signature_valid(secret.expose(), signature, bytes) {
        return Err(unsigned(tracker));
    }
    Ok(config)
}

/// A webhook's body: a JSON document, or a 400.
fn json_event(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!("not JSON: {e}"),
    })
}

/// `POST /api/v1/trackers/github/webhook`: `issues` events `closed` and
/// `reopened` of the configured repository, signed with `X-Hub-Signature-256`.
async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let signature = header(&headers, "x-hub-signature-256");
    let github = state.trackers.github.as_ref();
    let g = verified(
        "github",
        github,
        |g| g.webhook_secret.as_ref(),
        signature,
        &bytes,
    )?;
    match header(&headers, "x-github-event") {
        Some("ping") => return Ok((StatusCode::OK, Json(json!({"status": "pong"})))),
        Some("issues") => {}
        other => return Ok(ignored(&format!("event {other:?} is not an issues event"))),
    }
    let event = json_event(&bytes)?;
    if event["repository"]["full_name"].as_str() != Some(g.repo.as_str()) {
        return Ok(ignored("another repository"));
    }
    let status = match (
        event["action"].as_str(),
        event["issue"]["state_reason"].as_str(),
    ) {
        (Some("closed"), Some("not_planned")) => "wont_do",
        (Some("closed"), _) => "done",
        (Some("reopened"), _) => "open",
        (other, _) => return Ok(ignored(&format!("action {other:?} changes no status"))),
    };
    let Some(number) = event["issue"]["number"].as_i64() else {
        return Err(ApiError::BadRequest {
            field: Some("issue.number".into()),
            message: "missing".into(),
        });
    };
    let key = format!("#{number}");
    let row = action_items::follow_tracker(
        state.store.as_ref(),
        "github",
        &key,
        status,
        header(&headers, "x-github-delivery"),
    )
    .await?;
    Ok(applied(&state, &key, row))
}

/// `POST /api/v1/trackers/jira/webhook`: `jira:issue_updated` whose
/// changelog moves the status, signed with `X-Hub-Signature`; status
/// category `done` closes the item, any other reopens it.
async fn jira_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let signature = header(&headers, "x-hub-signature");
    let jira = state.trackers.jira.as_ref();
    verified(
        "jira",
        jira,
        |j| j.webhook_secret.as_ref(),
        signature,
        &bytes,
    )?;
    let event = json_event(&bytes)?;
    if event["webhookEvent"].as_str() != Some("jira:issue_updated") {
        return Ok(ignored("not jira:issue_updated"));
    }
    let Some(key) = event["issue"]["key"].as_str() else {
        return Err(ApiError::BadRequest {
            field: Some("issue.key".into()),
            message: "missing".into(),
        });
    };
    // Only a change of status moves the item (an edit of any other field
    // also sends jira:issue_updated).
    let moved = event["changelog"]["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|i| i["field"] == "status"));
    if !moved {
        return Ok(ignored("the issue's status did not change"));
    }
    let category = event["issue"]["fields"]["status"]["statusCategory"]["key"].as_str();
    let status = if category == Some("done") {
        "done"
    } else {
        "open"
    };
    let row = action_items::follow_tracker(state.store.as_ref(), "jira", key, status, None).await?;
    Ok(applied(&state, key, row))
}
