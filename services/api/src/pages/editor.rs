//! The postmortem editor: Markdown with a preview, the blameless check's
//! findings by line with their suggestions, the status workflow, revisions
//! with diffs, exports — and saving that never loses a word: a save made
//! from an older revision is merged three ways with what was saved since
//! (different lines combine by themselves; the same lines are shown side by
//! side to resolve).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::Utc;
use firebreak_postmortem::lint;
use firebreak_postmortem::merge::{merge3, Merged, OURS_MARK, THEIRS_MARK};
use firebreak_store::{PostmortemRow, PostmortemSave, Presence, SaveOutcome, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{base, error_page, path_id, when, Csrf, Id, PageResult, Posted, Refusal, St};
use crate::call::Call;
use crate::postmortems::{transition_ok, STATUSES};
use crate::ApiError;

/// Findings by line, with the line's text, for showing next to the source.
/// The blameless check's findings as the editor shows them, and how many
/// there were in all.
fn findings(markdown: &str, people: &[String]) -> (Vec<Value>, usize) {
    let lint = lint::check(markdown, people);
    let shown = lint
        .findings
        .into_iter()
        .map(|f| {
            json!({
                "line": f.line, "column": f.column, "text": f.text, "rule": f.rule,
                "message": f.message, "suggestion": f.suggestion, "excerpt": f.excerpt,
            })
        })
        .collect();
    (shown, lint.total)
}

/// The preview and the findings of a draft, computed off the async workers.
async fn render_and_check(
    markdown: String,
    people: Vec<String>,
) -> Result<(String, Vec<Value>, usize), ApiError> {
    crate::offload::text(move || {
        let html = firebreak_postmortem::markdown_html(&markdown);
        let (findings, total) = findings(&markdown, &people);
        (html, findings, total)
    })
    .await
}

#[derive(Deserialize, Default)]
pub struct EditorQuery {
    saved: Option<i64>,
    merged: Option<String>,
}

pub async fn editor(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    axum::extract::Path(id): Id,
    axum::extract::Query(q): axum::extract::Query<EditorQuery>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let id = path_id(&id, "an incident")?;
    let incident = match store.incident_overview(id).await {
        Ok(d) => d.incident,
        Err(StoreError::NotFound) => {
            return Err(Refusal::not_found(format!("There is no incident #{id}.")))
        }
        Err(e) => return Err(e.into()),
    };
    let pm = match store.postmortem(id).await {
        Ok(p) => p,
        Err(e) => return Err(e.into()),
    };
    let people = state.postmortems.people(id).await.unwrap_or_default();
    let mut ctx = base(&identity, &csrf, &format!("Postmortem #{id}"), "incidents");
    ctx.insert(
        "incident".into(),
        json!({"id": id, "title": incident.title, "status": incident.status}),
    );
    ctx.insert("saved".into(), json!(q.saved));
    ctx.insert("merged".into(), json!(q.merged.is_some()));
    let items = store.action_items(id).await?;
    ctx.insert(
        "items".into(),
        json!(items.iter().map(|i| json!({
            "id": i.id, "title": i.title,
            "owner": i.owner.as_deref().map(|o| o.split_once(':').map_or(o, |(_, n)| n)),
            "due": i.due, "priority": i.priority, "status": i.status.replace('_', " "),
            "open": i.status == "open",
            "key": i.tracker_key, "url": i.tracker_url, "tracker": i.tracker,
            "export": i.export_state, "error": i.export_error,
            "exportable": i.tracker_key.is_none() && i.export_state.as_deref() != Some("pending"),
        })).collect::<Vec<_>>()),
    );
    ctx.insert(
        "trackers".into(),
        json!(firebreak_postmortem::trackers::TRACKERS
            .iter()
            .filter(|t| state.trackers.configured(t))
            .collect::<Vec<_>>()),
    );
    match pm {
        None => {
            ctx.insert("postmortem".into(), Value::Null);
        }
        Some(pm) => {
            let revisions = store.postmortem_revisions(id).await.unwrap_or_default();
            let statuses: Vec<Value> = STATUSES
                .iter()
                .map(|s| {
                    json!({"name": s, "label": s.replace('_', " "), "current": *s == pm.status,
                           "reachable": *s != pm.status && transition_ok(&pm.status, s)})
                })
                .collect();
            let (preview, findings, total) = render_and_check(pm.markdown.clone(), people).await?;
            ctx.insert(
                "postmortem".into(),
                json!({
                    "revision": pm.revision, "status": pm.status, "markdown": pm.markdown,
                    "updated_by": pm.updated_by, "updated": when(pm.updated_at),
                    "preview": preview,
                }),
            );
            ctx.insert("statuses".into(), json!(statuses));
            ctx.insert(
                "findings_more".into(),
                json!(total.saturating_sub(findings.len())),
            );
            ctx.insert("findings".into(), json!(findings));
            ctx.insert(
                "revisions".into(),
                json!(revisions
                    .iter()
                    .rev()
                    .map(
                        |r| json!({"revision": r.revision, "kind": r.kind, "status": r.status,
                                    "author": r.author, "at": when(r.created_at)})
                    )
                    .collect::<Vec<_>>()),
            );
        }
    }
    Ok(pages.render("editor", &Value::Object(ctx)))
}

#[derive(Deserialize)]
pub struct SaveForm {
    base_revision: i64,
    markdown: String,
    status: Option<String>,
}

pub async fn save(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    axum::extract::Path(id): Id,
    Posted(f): Posted<SaveForm>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let id = path_id(&id, "an incident")?;
    // Browsers send CRLF from text areas; the document keeps LF.
    let mine = f.markdown.replace("\r\n", "\n");
    if mine.len() > 5 * 1024 * 1024 {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The draft is larger than 5 MiB.",
        ));
    }
    // Three tries: a save that lost a race with another merges again.
    for _ in 0..3 {
        let current = match store.postmortem(id).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Refusal::not_found("This incident has no draft yet.")),
            Err(e) => return Err(e.into()),
        };
        let status = f
            .status
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| current.status.clone());
        if !STATUSES.contains(&status.as_str())
            || (status != current.status && !transition_ok(&current.status, &status))
        {
            return Err(Refusal::bad(format!(
                "A draft goes draft → in review → published one step at a time; it is {} now.",
                current.status.replace('_', " ")
            )));
        }
        if has_markers(&mine) {
            let view = Conflict {
                id,
                current: &current,
                mine: &mine,
                resolution: &mine,
                clashes: &[],
                problem: Some("The draft still has a clash marked in it (a line <<<<<<< yours or >>>>>>> saved meanwhile). Keep the version you want, delete the marker lines, and save again. Nothing was saved."),
            };
            return Ok(conflict(pages, &identity, &csrf, &view));
        }
        let (text, merged) = if f.base_revision == current.revision {
            (mine.clone(), false)
        } else {
            let base = match base_text(store.as_ref(), id, f.base_revision).await {
                Ok(b) => b,
                Err(e) => return Err(e.into()),
            };
            match merge3(&base, &mine, &current.markdown) {
                Merged::Clean(t) => (t, true),
                Merged::Clashes(marked, clashes) => {
                    let view = Conflict {
                        id,
                        current: &current,
                        mine: &mine,
                        resolution: &marked,
                        clashes: &clashes,
                        problem: None,
                    };
                    return Ok(conflict(pages, &identity, &csrf, &view));
                }
            }
        };
        let kind = if text == current.markdown {
            "status"
        } else if merged {
            "merged"
        } else {
            "edited"
        };
        match store
            .save_postmortem(&PostmortemSave {
                incident_id: id,
                expected_revision: Some(current.revision),
                markdown: text,
                status,
                generated: None,
                author: identity.id.clone(),
                kind: kind.into(),
                at: Utc::now(),
            })
            .await
        {
            Ok(SaveOutcome::Saved(pm)) => {
                let merged = if merged { "&merged=1" } else { "" };
                return Ok(Redirect::to(&format!(
                    "/incidents/{id}/postmortem?saved={}{merged}",
                    pm.revision
                ))
                .into_response());
            }
            Ok(SaveOutcome::Stale(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(error_page(
        StatusCode::CONFLICT,
        "The draft keeps changing under this save; reload and try again.",
    ))
}

async fn base_text(
    store: &dyn firebreak_store::Store,
    id: i64,
    rev: i64,
) -> Result<String, ApiError> {
    store
        .postmortem_revisions(id)
        .await?
        .into_iter()
        .find(|r| r.revision == rev)
        .map(|r| r.markdown)
        .ok_or_else(|| ApiError::BadRequest {
            field: Some("base_revision".into()),
            message: format!("there is no revision {rev} to merge from"),
        })
}

/// What the resolve page shows.
struct Conflict<'a> {
    id: i64,
    current: &'a PostmortemRow,
    /// The text as its author submitted it.
    mine: &'a str,
    /// The text to resolve: both versions of each clash between markers.
    resolution: &'a str,
    clashes: &'a [firebreak_postmortem::merge::Clash],
    /// Why the page is shown again, when it is.
    problem: Option<&'a str>,
}

/// The same lines were changed by both: show both, side by side, and a
/// text to resolve them in, to be saved on top of the current revision.
fn conflict(
    pages: &super::Pages,
    identity: &firebreak_domain::access::Identity,
    csrf: &super::PageCsrf,
    c: &Conflict<'_>,
) -> Response {
    let id = c.id;
    let mut ctx = base(
        identity,
        csrf,
        &format!("Postmortem #{id}: resolve"),
        "incidents",
    );
    ctx.insert("incident".into(), json!({"id": id}));
    ctx.insert(
        "current".into(),
        json!({"revision": c.current.revision, "updated_by": c.current.updated_by,
               "updated": when(c.current.updated_at), "status": c.current.status}),
    );
    ctx.insert(
        "clashes".into(),
        json!(c
            .clashes
            .iter()
            .map(
                |c| json!({"line": c.base_line, "ours": c.ours, "theirs": c.theirs, "base": c.base})
            )
            .collect::<Vec<_>>()),
    );
    ctx.insert("resolution".into(), json!(c.resolution));
    ctx.insert("yours".into(), json!(c.mine));
    ctx.insert("problem".into(), json!(c.problem));
    let status = if c.problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CONFLICT
    };
    pages.render_status(status, "conflict", &Value::Object(ctx))
}

/// Whether a text still has a clash marked in it.
fn has_markers(text: &str) -> bool {
    text.lines()
        .any(|l| l == OURS_MARK.trim_end() || l == THEIRS_MARK.trim_end())
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct NoFields {}

pub async fn regenerate(
    Call { state, identity }: Call,
    axum::extract::Path(id): Id,
    Posted(_): Posted<NoFields>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    let generator = state.postmortems.clone();
    match generator.generate(id, &identity.id).await {
        Ok(g) => Ok(Redirect::to(&format!(
            "/incidents/{id}/postmortem?saved={}",
            g.postmortem.revision
        ))
        .into_response()),
        Err(e) => Ok(error_page(StatusCode::BAD_REQUEST, &e.to_string())),
    }
}

pub async fn revision(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    axum::extract::Path((id, rev)): axum::extract::Path<(String, String)>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let id = path_id(&id, "an incident")?;
    let Ok(rev) = rev.parse::<i64>() else {
        return Err(Refusal::bad("not a revision number"));
    };
    let revs = match store.postmortem_revisions(id).await {
        Ok(r) => r,
        Err(e) => return Err(e.into()),
    };
    let Some((r, previous)) = crate::postmortems::with_previous(&revs, rev) else {
        return Err(Refusal::not_found(format!("There is no revision {rev}.")));
    };
    let diff = similar::TextDiff::from_lines(
        previous.map(|p| p.markdown.as_str()).unwrap_or(""),
        &r.markdown,
    );
    // Only what changed, with three lines of context around each change.
    let hunks: Vec<Value> = diff
        .grouped_ops(3)
        .iter()
        .map(|group| {
            let (old, new) = match (group.first(), group.last()) {
                (Some(f), Some(l)) => (
                    f.old_range().start..l.old_range().end,
                    f.new_range().start..l.new_range().end,
                ),
                _ => (0..0, 0..0),
            };
            let lines: Vec<Value> = group
                .iter()
                .flat_map(|op| diff.iter_changes(op))
                .map(|c| {
                    let class = match c.tag() {
                        similar::ChangeTag::Delete => "del",
                        similar::ChangeTag::Insert => "ins",
                        similar::ChangeTag::Equal => "same",
                    };
                    json!({"class": class, "text": c.value().trim_end_matches('\n')})
                })
                .collect();
            json!({
                "header": format!(
                    "lines {}–{} (before: {}–{})",
                    new.start + 1,
                    new.end.max(new.start + 1),
                    old.start + 1,
                    old.end.max(old.start + 1)
                ),
                "lines": lines,
            })
        })
        .collect();
    let mut ctx = base(
        &identity,
        &csrf,
        &format!("Postmortem #{id}, revision {rev}"),
        "incidents",
    );
    ctx.insert("incident".into(), json!({"id": id}));
    ctx.insert(
        "revision".into(),
        json!({"revision": r.revision, "kind": r.kind, "status": r.status, "author": r.author,
               "at": when(r.created_at), "previous": previous.map(|p| p.revision)}),
    );
    ctx.insert("hunks".into(), json!(hunks));
    Ok(pages.render("revision", &Value::Object(ctx)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    markdown: String,
    #[serde(default)]
    incident_id: Option<i64>,
}

/// `POST /api/v1/postmortems/preview`: the Markdown as the page shows it
/// (sanitized HTML) and the blameless check's findings.
pub async fn preview(
    axum::extract::State(state): St,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: PreviewBody = crate::error::json_body(&bytes)?;
    let people = match body.incident_id {
        Some(id) => state.postmortems.people(id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let (html, findings, total) = render_and_check(body.markdown, people).await?;
    Ok(Json(json!({
        "html": html,
        "findings_total": total,
        "findings": findings,
    })))
}

/// `POST /api/v1/incidents/{id}/postmortem/presence`: I have the draft
/// open; who else does (seen in the last 20 seconds, through any process:
/// presence is kept in the store).
pub async fn presence(
    Call { state, identity }: Call,
    axum::extract::Path(id): Id,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest {
        field: Some("id".into()),
        message: "not an incident id".into(),
    })?;
    // Only real incidents are tracked: made-up ids would grow the map.
    match state.store.incident(id).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err(ApiError::NotFound(format!("no incident {id}"))),
        Err(e) => return Err(e.into()),
    }
    let now = Utc::now();
    let others = state
        .store
        .note_presence(&Presence {
            incident: id,
            who: &identity.id,
            now,
            since: now - chrono::Duration::seconds(super::PRESENCE_SECONDS as i64),
            max_rows: super::MAX_PRESENCE,
        })
        .await?;
    Ok(Json(json!({ "others": others })))
}

#[derive(Deserialize)]
pub struct ItemForm {
    title: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    due: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    tracker: String,
}

/// Blank form fields are "not given".
fn given(v: String) -> Option<String> {
    let v = v.trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// Adds an action item from the postmortem page.
pub async fn add_item(
    Call { state, identity }: Call,
    axum::extract::Path(id): Id,
    Posted(f): Posted<ItemForm>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    let item = firebreak_postmortem::action_items::create(
        state.store.as_ref(),
        &state.trackers,
        id,
        firebreak_postmortem::action_items::NewItem {
            title: f.title,
            owner: given(f.owner),
            due: given(f.due),
            priority: given(f.priority),
            tracker: given(f.tracker),
        },
        &identity.id,
    )
    .await?;
    state.postmortems.refresh_soon(id);
    Ok(Redirect::to(&format!("/incidents/{id}/postmortem#item-{}", item.id)).into_response())
}

#[derive(Deserialize)]
pub struct ItemChangeForm {
    /// `open`, `done` or `wont_do`.
    status: Option<String>,
    /// A tracker to export to.
    export: Option<String>,
}

/// Closes, reopens or exports an action item from the postmortem page.
pub async fn change_item(
    Call { state, identity }: Call,
    axum::extract::Path((id, item)): axum::extract::Path<(String, String)>,
    Posted(f): Posted<ItemChangeForm>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    let item = path_id(&item, "an action item")?;
    // The item must be this incident's: a form cannot reach another one.
    let row = match state.store.action_item(item).await {
        Ok(r) if r.incident_id == id => r,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(Refusal::not_found(format!(
                "Incident #{id} has no action item {item}."
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(tracker) = f.export.and_then(given) {
        firebreak_postmortem::action_items::export(
            state.store.as_ref(),
            &state.trackers,
            row.id,
            &tracker,
            &identity.id,
        )
        .await?;
    } else if let Some(status) = f.status.and_then(given) {
        firebreak_postmortem::action_items::update(
            state.store.as_ref(),
            row.id,
            firebreak_postmortem::action_items::ItemPatch {
                status: Some(status),
                ..Default::default()
            },
            &identity.id,
        )
        .await?;
        state.postmortems.refresh_soon(id);
    } else {
        return Err(Refusal::bad("Choose what to do with the item."));
    }
    Ok(Redirect::to(&format!("/incidents/{id}/postmortem#item-{item}")).into_response())
}
