//! Postmortem drafts over HTTP: read (Markdown, JSON with an ETag, or sanitized
//! HTML), save with `If-Match` (a stale revision gets 409 and changes nothing),
//! regenerate, revision history with diffs, and the blameless check.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use firebreak_domain::access::Identity;
use firebreak_postmortem::{lint, Generator, PostmortemError};
use firebreak_store::{PostmortemRow, PostmortemSave, SaveOutcome, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::{bad, json_body, path_id};
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/incidents/{id}/postmortem", get(read).put(save))
        .route("/api/v1/incidents/{id}/postmortem.md", get(markdown))
        .route("/api/v1/incidents/{id}/postmortem.html", get(html))
        .route(
            "/api/v1/incidents/{id}/postmortem/regenerate",
            post(regenerate),
        )
        .route(
            "/api/v1/incidents/{id}/postmortem/revisions",
            get(revisions),
        )
        .route(
            "/api/v1/incidents/{id}/postmortem/revisions/{rev}",
            get(revision),
        )
        .route("/api/v1/postmortems/lint", post(lint_text))
}

pub(crate) const STATUSES: [&str; 3] = ["draft", "in_review", "published"];

fn parts(state: &AppState) -> Result<(Arc<dyn Store>, Arc<Generator>), ApiError> {
    Ok((state.store.clone(), state.postmortems.clone()))
}

fn etag(revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn from_pm(e: PostmortemError) -> ApiError {
    match e {
        PostmortemError::NoIncident(id) => ApiError::NotFound(format!("no incident {id}")),
        PostmortemError::Store(e) => e.into(),
        PostmortemError::Template { .. } => ApiError::Unprocessable(e.to_string()),
    }
}

async fn current(store: &dyn Store, id: i64) -> Result<PostmortemRow, ApiError> {
    match store.postmortem(id).await? {
        Some(pm) => Ok(pm),
        None => {
            // Distinguish "no incident" from "no draft yet".
            store.incident(id).await.map_err(|e| match e {
                StoreError::NotFound => ApiError::NotFound(format!("no incident {id}")),
                e => e.into(),
            })?;
            Err(ApiError::NotFound(format!(
                "incident {id} has no postmortem yet: drafts are written when an incident resolves, or now with POST /api/v1/incidents/{id}/postmortem/regenerate"
            )))
        }
    }
}

/// A postmortem as the API answers it, with the blameless check's findings
/// (checked off the async workers).
async fn document(pm: &PostmortemRow, people: &[String]) -> Result<Value, ApiError> {
    let (markdown, people) = (pm.markdown.clone(), people.to_vec());
    let lint = crate::offload::text(move || lint::check(&markdown, &people)).await?;
    Ok(json!({
        "incident_id": pm.incident_id,
        "revision": pm.revision,
        "status": pm.status,
        "markdown": pm.markdown,
        "lint": lint.findings,
        "lint_total": lint.total,
        "created_at": pm.created_at,
        "updated_at": pm.updated_at,
        "updated_by": pm.updated_by,
        "links": {
            "html": format!("/api/v1/incidents/{}/postmortem.html", pm.incident_id),
            "markdown": format!("/api/v1/incidents/{}/postmortem.md", pm.incident_id),
            "revisions": format!("/api/v1/incidents/{}/postmortem/revisions", pm.incident_id),
            "regenerate": format!("/api/v1/incidents/{}/postmortem/regenerate", pm.incident_id),
        },
    }))
}

fn with_etag(mut r: Response, revision: i64) -> Response {
    r.headers_mut().insert(header::ETAG, etag(revision));
    r
}

async fn read(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (store, generator) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    let pm = current(store.as_ref(), id).await?;
    let people = generator.people(id).await.map_err(from_pm)?;
    Ok(with_etag(
        Json(document(&pm, &people).await?).into_response(),
        pm.revision,
    ))
}

async fn markdown(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (store, _) = parts(&state)?;
    let pm = current(store.as_ref(), path_id(&id, "an incident")?).await?;
    // The exported document: no section markers, no guide for editors.
    let mut r = firebreak_postmortem::sections::strip_markers(&pm.markdown).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/markdown; charset=utf-8"),
    );
    Ok(with_etag(r, pm.revision))
}

async fn html(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (store, _) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    let pm = current(store.as_ref(), id).await?;
    let title = pm
        .markdown
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("Postmortem")
        .to_string();
    let markdown = pm.markdown;
    let html = crate::offload::text(move || firebreak_postmortem::to_html(&markdown, &title))
        .await?
        .into_response();
    // The export is one self-contained document: its styles are inline.
    let r = crate::pages::html_with_policy(html, "default-src 'none'; style-src 'unsafe-inline'");
    Ok(with_etag(r, pm.revision))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveBody {
    markdown: Option<String>,
    status: Option<String>,
    by: Option<String>,
}

/// The author of a save is who authenticated; a `by` is refused.
fn author(by: &Option<String>, identity: &Identity) -> Result<String, ApiError> {
    match by {
        None => Ok(identity.id.clone()),
        Some(_) => Err(bad(
            "by",
            "is no longer accepted: revisions record who authenticated (GET /api/v1/me shows who that is)",
        )),
    }
}

/// Allowed moves: draft <-> in_review <-> published.
pub(crate) fn transition_ok(from: &str, to: &str) -> bool {
    let pos = |s: &str| STATUSES.iter().position(|x| *x == s);
    match (pos(from), pos(to)) {
        (Some(a), Some(b)) => a.abs_diff(b) <= 1,
        _ => false,
    }
}

async fn save(
    Call { state, identity }: Call,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (store, generator) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    let Some(if_match) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::PreconditionRequired(
            "send If-Match with the ETag (revision) you edited, e.g. If-Match: \"3\"".into(),
        ));
    };
    let expected: i64 = if_match
        .to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("If-Match", "must be the ETag of a revision, e.g. \"3\""))?;
    let body: SaveBody = json_body(&bytes)?;
    let author = author(&body.by, &identity)?;
    let cur = current(store.as_ref(), id).await?;
    let markdown = body.markdown.unwrap_or_else(|| cur.markdown.clone());
    if markdown.len() > 5 * 1024 * 1024 {
        return Err(bad("markdown", "is larger than 5 MiB"));
    }
    let status = body.status.unwrap_or_else(|| cur.status.clone());
    if !STATUSES.contains(&status.as_str()) {
        return Err(bad(
            "status",
            format!("{status:?} is not a status: use draft, in_review or published"),
        ));
    }
    if status != cur.status && !transition_ok(&cur.status, &status) {
        return Err(bad(
            "status",
            format!(
                "cannot go from {} to {status}: the order is draft, in_review, published",
                cur.status
            ),
        ));
    }
    let kind = if markdown == cur.markdown {
        "status"
    } else {
        "edited"
    };
    let outcome = store
        .save_postmortem(&PostmortemSave {
            incident_id: id,
            expected_revision: Some(expected),
            markdown,
            status,
            generated: None,
            author,
            kind: kind.into(),
            at: Utc::now(),
        })
        .await?;
    let people = generator.people(id).await.map_err(from_pm)?;
    match outcome {
        SaveOutcome::Saved(pm) => Ok(with_etag(
            Json(document(&pm, &people).await?).into_response(),
            pm.revision,
        )),
        SaveOutcome::Stale(now) => {
            let now = now.unwrap_or(cur);
            let body = json!({
                "error": "conflict",
                "message": format!(
                    "revision {expected} is stale: {} saved revision {} at {}; merge your change into it and save with If-Match: \"{}\"",
                    now.updated_by, now.revision, now.updated_at, now.revision
                ),
                "current": document(&now, &people).await?,
            });
            Ok(with_etag(
                (StatusCode::CONFLICT, Json(body)).into_response(),
                now.revision,
            ))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegenerateBody {
    by: Option<String>,
}

async fn regenerate(
    Call { state, identity }: Call,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (_, generator) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    let body: RegenerateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RegenerateBody::default()
    } else {
        json_body(&bytes)?
    };
    let author = author(&body.by, &identity)?;
    let generated = generator.generate(id, &author).await.map_err(from_pm)?;
    let people = generator.people(id).await.map_err(from_pm)?;
    let mut doc = document(&generated.postmortem, &people).await?;
    doc["created"] = json!(generated.created);
    doc["conflicts"] = json!(generated.conflicts);
    let status = if generated.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(
        (status, Json(doc)).into_response(),
        generated.postmortem.revision,
    ))
}

async fn revisions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (store, _) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    current(store.as_ref(), id).await?;
    let revs = store.postmortem_revisions(id).await?;
    Ok(Json(json!({
        "incident_id": id,
        "revisions": revs.iter().map(|r| json!({
            "revision": r.revision, "kind": r.kind, "status": r.status, "author": r.author, "created_at": r.created_at,
            "link": format!("/api/v1/incidents/{id}/postmortem/revisions/{}", r.revision),
        })).collect::<Vec<_>>(),
    })))
}

/// Revision `rev` and the one before it (none for the first): what a diff
/// is taken between, for the API and the editor's page.
pub(crate) fn with_previous(
    revs: &[firebreak_store::RevisionRow],
    rev: i64,
) -> Option<(
    &firebreak_store::RevisionRow,
    Option<&firebreak_store::RevisionRow>,
)> {
    let r = revs.iter().find(|r| r.revision == rev)?;
    let previous = revs
        .iter()
        .filter(|p| p.revision < rev)
        .max_by_key(|p| p.revision);
    Some((r, previous))
}

async fn revision(
    State(state): State<AppState>,
    Path((id, rev)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (store, _) = parts(&state)?;
    let id = path_id(&id, "an incident")?;
    let rev: i64 = rev
        .parse()
        .map_err(|_| bad("revision", format!("{rev:?} is not a revision number")))?;
    let revs = store.postmortem_revisions(id).await?;
    let Some((r, previous)) = with_previous(&revs, rev) else {
        return Err(ApiError::NotFound(format!(
            "incident {id} has no postmortem revision {rev}"
        )));
    };
    let diff = similar::TextDiff::from_lines(
        previous.map(|p| p.markdown.as_str()).unwrap_or(""),
        &r.markdown,
    )
    .unified_diff()
    .context_radius(3)
    .header(
        &previous
            .map(|p| format!("revision {}", p.revision))
            .unwrap_or_else(|| "empty".into()),
        &format!("revision {rev}"),
    )
    .to_string();
    Ok(Json(json!({
        "revision": r.revision, "kind": r.kind, "status": r.status, "author": r.author, "created_at": r.created_at,
        "markdown": r.markdown,
        "diff": diff,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LintBody {
    text: String,
    #[serde(default)]
    people: Vec<String>,
    #[serde(default)]
    incident_id: Option<i64>,
}

async fn lint_text(State(state): State<AppState>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let (_, generator) = parts(&state)?;
    let body: LintBody = json_body(&bytes)?;
    let mut people = body.people;
    if let Some(id) = body.incident_id {
        people.extend(generator.people(id).await.map_err(from_pm)?);
    }
    let lint = crate::offload::text(move || lint::check(&body.text, &people)).await?;
    Ok(Json(
        json!({"findings": lint.findings, "count": lint.total, "truncated": lint.truncated}),
    ))
}
