//! The incident list and the incident page: durations, the timeline as a
//! picture and as a list, suspect changes with their evidence, gates, log
//! patterns, actions with their decisions, and notes.

use std::collections::HashMap;

use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use firebreak_domain::access::Scope;
use firebreak_domain::response::Stage;
use firebreak_domain::timeline::kind;
use firebreak_postmortem::context::{rank, Inputs};
use firebreak_store::{
    ActionFilter, ActionStatus, IncidentFilter, IncidentTimes, StoreError, TimelineRow,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::timeline::{self, Mark};
use super::{
    base, duration, path_id, when, Confirmed, Csrf, Id, Ident, PageResult, Posted, Refusal, St, Q,
};
use crate::call::Call;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    environment: Option<String>,
    /// yyyy-mm-dd, opened on or after.
    from: Option<String>,
    /// yyyy-mm-dd, opened on or before.
    to: Option<String>,
    /// `rows`: only the table's rows (the live refresh).
    partial: Option<String>,
}

fn day(raw: &Option<String>, field: &str, end: bool) -> Result<Option<DateTime<Utc>>, Refusal> {
    match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(|d| {
                let t = if end {
                    d.and_hms_opt(23, 59, 59)
                } else {
                    d.and_hms_opt(0, 0, 0)
                };
                t.map(|t| t.and_utc())
            })
            .map_err(|_| Refusal::bad(format!("{field}: {s:?} is not a date like 2026-11-23"))),
    }
}

/// Time to detect, mitigate and resolve, as the postmortem defines them.
fn durations(i: &firebreak_store::IncidentRow, t: Option<&IncidentTimes>) -> Value {
    let first = t
        .and_then(|t| t.first_alert)
        .unwrap_or(i.opened_at)
        .min(i.opened_at);
    let mitigated = t
        .and_then(|t| t.mitigated_at)
        .or_else(|| i.resolved_at.and(t.and_then(|t| t.last_alert_end)));
    json!({
        "detect": duration(t.and_then(|t| t.suspect_at).map(|s| first - s)),
        "mitigate": duration(mitigated.map(|m| m - first)),
        "resolve": duration(i.resolved_at.map(|r| r - first)),
    })
}

pub async fn list(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    q: Result<Q<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let q = match q {
        Ok(q) => q.0,
        Err(e) => return Err(Refusal::bad(e.body_text())),
    };
    if let Some(s) = q.status.as_deref().filter(|s| !s.is_empty()) {
        if s != "open" && s != "resolved" {
            return Err(Refusal::bad("status: use open or resolved"));
        }
    }
    let (from, to) = match (day(&q.from, "from", false), day(&q.to, "to", true)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return Err(r),
    };
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    // Open incidents unless the filter says otherwise ("any" sends status=).
    let q = ListQuery {
        status: Some(q.status.clone().unwrap_or_else(|| "open".into())),
        ..q
    };
    let rows = match store
        .list_incidents(&IncidentFilter {
            status: nonempty(&q.status),
            service: nonempty(&q.service),
            before_id: None,
            limit: 500,
            ..IncidentFilter::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return Err(e.into()),
    };
    let env = nonempty(&q.environment);
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|i| env.is_none() || i.environment == env)
        .filter(|i| from.is_none_or(|f| i.opened_at >= f))
        .filter(|i| to.is_none_or(|t| i.opened_at <= t))
        .take(200)
        .collect();
    let ids: Vec<i64> = rows.iter().map(|i| i.id).collect();
    let times: HashMap<i64, IncidentTimes> = match store.incident_times(&ids).await {
        Ok(t) => t.into_iter().map(|t| (t.incident_id, t)).collect(),
        Err(e) => return Err(e.into()),
    };
    let scale = crate::incidents::severity_scale(&state);
    let now = Utc::now();
    let incidents: Vec<Value> = rows
        .iter()
        .map(|i| {
            json!({
                "id": i.id, "title": i.title, "status": i.status, "service": i.service,
                "environment": i.environment,
                "severity": scale.of(i.response.declared_severity.as_deref(), i.severity.as_deref()),
                "stage": Stage::of(&i.status, i.response.stage.as_deref()).as_str(),
                "acknowledged_by": i.response.acknowledged_by,
                "commander": i.response.commander,
                "age": duration(Some(i.resolved_at.unwrap_or(now) - i.opened_at)),
                "opened": when(i.opened_at), "open": i.status == "open",
                "durations": durations(i, times.get(&i.id)),
            })
        })
        .collect();
    let mut ctx = base(&identity, &csrf, "Incidents", "incidents");
    ctx.insert("incidents".into(), json!(incidents));
    ctx.insert(
        "filter".into(),
        json!({"status": q.status, "service": q.service, "environment": q.environment,
               "from": q.from, "to": q.to}),
    );
    if q.partial.as_deref() == Some("rows") {
        return Ok(pages.render("incident_rows", &Value::Object(ctx)));
    }
    Ok(pages.render("incidents", &Value::Object(ctx)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// Zoom: unix seconds.
    from: Option<i64>,
    to: Option<i64>,
    /// The page of the entry list (200 each).
    page: Option<usize>,
    /// What the response form just did (acknowledged, saved, …).
    done: Option<String>,
}

const LIST_PAGE: usize = 200;
/// The picture shows at most this many entries (the list and the API have all).
const PICTURE_MAX: i64 = 20_000;
/// Log lines mined for the page (the postmortem mines them all).
const PAGE_LOG_LINES: i64 = 20_000;

pub async fn detail(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    axum::extract::Path(id): Id,
    q: Result<Q<DetailQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let mut timing = super::Timing::start();
    let (store, pages) = (&state.store, &state.pages);
    let id = path_id(&id, "an incident")?;
    let q = match q {
        Ok(q) => q.0,
        Err(e) => return Err(Refusal::bad(e.body_text())),
    };
    let detail = match store.incident_overview(id).await {
        Ok(d) => d,
        Err(StoreError::NotFound) => {
            return Err(Refusal::not_found(format!("There is no incident #{id}.")))
        }
        Err(e) => return Err(e.into()),
    };
    timing.mark("incident");
    // The actions before the timeline: an action's outcome and its timeline
    // entry commit together, so a page that shows it succeeded also shows
    // when (read the other way round, a commit in between showed
    // "succeeded" without its mark on the picture).
    let mut actions = match store
        .list_actions(&ActionFilter {
            incident_id: Some(id),
            limit: 500,
            ..ActionFilter::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return Err(e.into()),
    };
    actions.reverse();
    let times = store.incident_times(&[id]).await.unwrap_or_default();
    timing.mark("actions");
    let entries = store.timeline(id, PICTURE_MAX, 0).await?;
    timing.mark("timeline");
    let i = &detail.incident;
    let first_alert = detail.first_alert.unwrap_or(i.opened_at).min(i.opened_at);
    // The suspects and log patterns as the postmortem reads them, over the
    // configured `postmortem.lookback` and `log_lead` (the page mines at
    // most PAGE_LOG_LINES lines; the draft all of them).
    let now = Utc::now();
    let generator = &state.postmortems;
    let lookback = generator.config().lookback;
    let evidence = generator
        .log_evidence(i, &detail.changes, first_alert, now, Some(PAGE_LOG_LINES))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(incident = id, error = %e, "cannot read the incident's logs for its page");
            firebreak_postmortem::LogEvidence {
                reference: None,
                window: (first_alert, now),
                patterns: Vec::new(),
                lines: 0,
            }
        });
    let (patterns, mined, (log_from, log_to)) =
        (evidence.patterns, evidence.lines, evidence.window);
    timing.mark("logs");
    let inputs = Inputs {
        incident: i,
        alerts: &[], // ranking needs only the first alert's time
        changes: &detail.changes,
        causes: &detail.causes,
        gates: &detail.gates,
        timeline: &entries,
        timeline_total: detail.timeline_entries,
        actions: &actions,
        action_items: &[],
        patterns: &patterns,
        log_lines: mined,
        log_window: (log_from, log_to),
        lookback,
        tz: chrono_tz::UTC,
        now,
    };
    let suspects = rank(&inputs, first_alert);
    // The picture's window: from the top suspect change (or the first alert)
    // to the last entry; older entries (deploys of the lookback) are counted
    // at the left edge, a link away. Or the zoomed slice.
    let start = suspects
        .first()
        .map(|s| s.deploy.started_at)
        .unwrap_or(first_alert)
        .min(first_alert);
    let (lo, hi) = match (entries.iter().find(|e| e.at >= start), entries.last()) {
        (Some(a), Some(b)) => (a.at.min(start), b.at.max(a.at + Duration::seconds(60))),
        (None, Some(b)) => (b.at, b.at + Duration::seconds(60)),
        _ => (i.opened_at - Duration::minutes(5), now),
    };
    let pad = (hi - lo) / 40;
    let mut window = (lo - pad, hi + pad);
    if let (Some(f), Some(t)) = (q.from, q.to) {
        if let (Some(f), Some(t)) = (
            DateTime::from_timestamp(f, 0),
            DateTime::from_timestamp(t, 0),
        ) {
            if t > f {
                window = (f, t);
            }
        }
    }
    let zoomed = q.from.is_some();
    let mut marks = Vec::new();
    if let Some(top) = suspects.first() {
        marks.push(Mark {
            at: top.deploy.started_at,
            label: format!("suspect: {} {}", top.deploy.service, top.deploy.version),
            class: "suspect",
        });
    }
    let kill_switches: Vec<i64> = actions
        .iter()
        .filter(|a| a.kind == "kill_switch")
        .map(|a| a.id)
        .collect();
    if let Some(off) = entries.iter().find(|e| {
        e.kind == kind::ACTION_EXECUTED
            && kill_switches
                .iter()
                .any(|k| e.ref_id == format!("action:{k}:executed"))
    }) {
        marks.push(Mark {
            at: off.at,
            label: "kill switch off".into(),
            class: "killswitch",
        });
    }
    let path = format!("/incidents/{id}");
    let svg = timeline::svg(&entries, &marks, window, &|a, b| {
        format!(
            "{path}?from={}&to={}",
            a.timestamp(),
            b.timestamp().max(a.timestamp() + 1)
        )
    });
    let in_window: Vec<&TimelineRow> = entries
        .iter()
        .filter(|e| e.at >= window.0 && e.at <= window.1)
        .collect();
    let page = q.page.unwrap_or(0);
    let pages_total = in_window.len().div_ceil(LIST_PAGE).max(1);
    let listed: Vec<Value> = in_window
        .iter()
        .skip(page * LIST_PAGE)
        .take(LIST_PAGE)
        .map(|e| {
            json!({"at": when(e.at), "kind": e.kind, "lane": timeline::LANES[timeline::lane(&e.kind)],
                   "source": e.source, "summary": e.summary})
        })
        .collect();
    let suspects_json: Vec<Value> = suspects
        .iter()
        .map(|s| {
            let marked = detail.causes.get(&s.deploy.id);
            let said = marked.map(|c| {
                format!(
                    "{} by {}{}",
                    if c.cause { "Confirmed the cause" } else { "Marked not the cause" },
                    c.by.as_deref().unwrap_or("someone"),
                    c.at.map(|t| format!(" at {}", when(t))).unwrap_or_default()
                )
            });
            json!({"cause_url": format!("/incidents/{}/changes/{}/cause", detail.incident.id,
                       firebreak_domain::playbook::url_escape(&s.deploy.id)),
                   "cause_said": said, "confirmed": marked.is_some_and(|c| c.cause),
                   "service": s.deploy.service, "version": s.deploy.version, "environment": s.deploy.environment,
                   "started": when(s.deploy.started_at), "actor": s.deploy.actor, "score": s.score,
                   "evidence": s.evidence, "strategy": s.deploy.strategy.map(|x| x.as_str())})
        })
        .collect();
    let gates: Vec<Value> = detail
        .gates
        .iter()
        .map(|g| {
            json!({"gate": g.gate, "metric": g.metric, "comparison": g.comparison, "threshold": g.threshold,
                   "baseline": g.baseline, "observed": g.observed, "verdict": g.verdict.as_str(),
                   "failed": g.verdict.as_str() == "fail", "step": g.step, "version": g.version,
                   "at": when(g.evaluated_at)})
        })
        .collect();
    let patterns_json: Vec<Value> = patterns
        .iter()
        .take(25)
        .map(|p| {
            json!({"template": p.template, "count": p.count, "new": p.is_new(), "level": p.level,
                   "first": when(p.first_seen), "example": p.example})
        })
        .collect();
    let can_operate = identity.allows(Scope::Operate);
    let actions_json: Vec<Value> = actions
        .iter()
        .rev()
        .map(|a| {
            json!({
                "id": a.id, "describe": a.spec.describe, "status": a.status.as_str(), "reason": a.reason,
                "playbook": a.playbook, "requested_by": a.requested_by, "decided_by": a.decided_by,
                "created": when(a.created_at),
                "can_decide": can_operate && a.status == ActionStatus::Held,
                "can_revert": can_operate && a.status == ActionStatus::Succeeded
                    && a.kind == "kill_switch" && a.previous_enabled().is_some(),
            })
        })
        .collect();
    // The alerts panel: one row per alert name. Links from alerts are data:
    // only http(s) URLs become links.
    let web_url = |u: &Option<String>| {
        u.clone()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    };
    let alert_groups: Vec<Value> = store
        .alert_groups(id)
        .await?
        .iter()
        .map(|g| {
            let labels: Vec<String> = g
                .labels
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "alertname")
                        .take(20)
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "alertname": g.alertname, "count": g.count, "firing": g.firing,
                "resolved": g.count - g.firing,
                "first": when(g.first_seen), "last": when(g.last_seen),
                "labels": labels,
                "runbook": web_url(&g.runbook_url), "source": web_url(&g.generator_url),
            })
        })
        .collect();
    // What waits for a person, shown at the top of the page.
    let held: Vec<Value> = actions_json
        .iter()
        .filter(|a| a["status"] == "held")
        .cloned()
        .collect();
    let t = times.first();
    let mut ctx = base(&identity, &csrf, &format!("#{id} {}", i.title), "incidents");
    ctx.insert("held".into(), json!(held));
    ctx.insert("alert_groups".into(), json!(alert_groups));
    ctx.insert(
        "incident".into(),
        json!({
            "id": id, "title": i.title, "status": i.status, "service": i.service,
            "environment": i.environment, "severity": i.severity, "open": i.status == "open",
            "opened": when(i.opened_at), "resolved": i.resolved_at.map(when),
            "durations": durations(i, t), "entries": detail.timeline_entries,
            "alerts": detail.alert_count,
            "firing": detail.alerts_firing,
        }),
    );
    let scale = crate::incidents::severity_scale(&state);
    let level = scale
        .of(
            i.response.declared_severity.as_deref(),
            i.severity.as_deref(),
        )
        .map(str::to_string);
    let stage = Stage::of(&i.status, i.response.stage.as_deref());
    let done = match q.done.as_deref() {
        Some("acknowledged") => Some("Acknowledged: the incident shows you as acknowledging it."),
        Some("already-acknowledged") => Some("It was acknowledged already; nothing changed."),
        Some("saved") => Some("Saved: the timeline names what changed."),
        Some("approved") => Some("Approved: the executor runs it now; its status below follows."),
        Some("denied") => Some("Denied: the action will not run."),
        Some("reverted") => Some("Revert requested: its status below follows."),
        _ => None,
    };
    ctx.insert(
        "response".into(),
        json!({
            "severity": level,
            "stage": stage.as_str(),
            "acknowledged_by": i.response.acknowledged_by,
            "acknowledged": i.response.acknowledged_at.map(when),
            "commander": i.response.commander,
            "summary": i.response.summary,
            "declared_by": i.response.declared_by,
            "url": format!("/incidents/{id}/response"),
            "done": done,
            "levels": scale.levels.iter().map(|l| json!({"name": l, "selected": level.as_deref() == Some(l.as_str())})).collect::<Vec<_>>(),
            "stages": Stage::ALL.iter().filter(|s| **s != Stage::Resolved).map(|s| json!({"name": s.as_str(), "selected": *s == stage})).collect::<Vec<_>>(),
        }),
    );
    ctx.insert(
        "top_suspect".into(),
        suspects_json.first().cloned().unwrap_or(Value::Null),
    );
    ctx.insert("suspects".into(), json!(suspects_json));
    ctx.insert("gates".into(), json!(gates));
    ctx.insert("patterns".into(), json!(patterns_json));
    ctx.insert(
        "logs".into(),
        json!({"mined": mined, "capped": mined as i64 >= PAGE_LOG_LINES}),
    );
    ctx.insert("actions".into(), json!(actions_json));
    ctx.insert("svg".into(), json!(svg));
    ctx.insert("zoomed".into(), json!(zoomed));
    ctx.insert(
        "list".into(),
        json!({
            "entries": listed, "shown": in_window.len(), "page": page + 1, "pages": pages_total,
            "has_prev": page > 0, "prev": page.saturating_sub(1),
            "next": (page + 1 < pages_total).then_some(page + 1),
            "query": match (q.from, q.to) { (Some(f), Some(t)) => format!("from={f}&to={t}&"), _ => String::new() },
            "truncated": detail.timeline_entries > PICTURE_MAX,
        }),
    );
    timing.mark("build");
    let mut page = pages.render("incident", &Value::Object(ctx));
    timing.mark("render");
    timing.put(&mut page);
    Ok(page)
}

#[derive(Deserialize)]
pub struct NoteForm {
    text: String,
}

pub async fn note(
    Call { state, identity }: Call,
    axum::extract::Path(id): Id,
    Posted(f): Posted<NoteForm>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    state
        .remediation
        .clone()
        .add_note(&identity, id, &f.text)
        .await?;
    Ok(Redirect::to(&format!("/incidents/{id}#notes")).into_response())
}

#[derive(serde::Deserialize)]
pub struct CauseForm {
    /// `yes`, `no` or `clear`.
    cause: String,
}

/// A person's word on a suspect change, from the incident page.
pub async fn cause(
    Call { state, identity }: Call,
    axum::extract::Path((id, deploy)): axum::extract::Path<(String, String)>,
    Posted(f): Posted<CauseForm>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    let cause = match f.cause.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        "clear" => None,
        _ => return Err(Refusal::bad("say yes, no or clear")),
    };
    state
        .remediation
        .clone()
        .mark_cause(&identity, id, &deploy, cause, None)
        .await?;
    Ok(Redirect::to(&format!("/incidents/{id}#sus-h")).into_response())
}

async fn decide(
    state: St,
    identity: Ident,
    id: Id,
    f: Posted<Confirmed>,
    verb: &str,
) -> PageResult {
    let (axum::extract::State(state), axum::Extension(identity), Posted(f)) = (state, identity, f);
    let remediation = state.remediation.clone();
    if f.confirm.as_deref() != Some("yes") && f.confirm.as_deref() != Some("on") {
        return Err(Refusal::bad(
            "Tick the confirmation box to confirm, then submit again.",
        ));
    }
    let id = path_id(&id.0, "an action")?;
    let result = match verb {
        "approve" | "deny" => {
            remediation
                .decide(
                    &identity,
                    id,
                    verb == "approve",
                    f.comment.as_deref().filter(|c| !c.is_empty()),
                    f.force.is_some(),
                )
                .await
        }
        _ => remediation.revert(&identity, id, f.force.is_some()).await,
    };
    match result {
        Ok(row) => {
            let done = match verb {
                "approve" => "approved",
                "deny" => "denied",
                _ => "reverted",
            };
            let back = row
                .incident_id
                .map(|i| format!("/incidents/{i}?done={done}#actions"))
                .unwrap_or_else(|| "/incidents".into());
            Ok(Redirect::to(&back).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn approve(s: St, i: Ident, id: Id, f: Posted<Confirmed>) -> PageResult {
    decide(s, i, id, f, "approve").await
}

pub async fn deny(s: St, i: Ident, id: Id, f: Posted<Confirmed>) -> PageResult {
    decide(s, i, id, f, "deny").await
}

pub async fn revert(s: St, i: Ident, id: Id, f: Posted<Confirmed>) -> PageResult {
    decide(s, i, id, f, "revert").await
}

#[derive(serde::Deserialize)]
pub struct ResponseForm {
    /// `acknowledge` or `save`.
    act: String,
    severity: Option<String>,
    stage: Option<String>,
    commander: Option<String>,
}

/// The response controls of the incident page: acknowledge, or save the
/// severity, stage and commander (resolving is the stage `resolved`, for
/// operators). The page says what changed.
pub async fn response(
    Call { state, identity }: Call,
    axum::extract::Path(id): Id,
    Posted(f): Posted<ResponseForm>,
) -> PageResult {
    let id = path_id(&id, "an incident")?;
    let remediation = state.remediation.clone();
    let done = match f.act.as_str() {
        "acknowledge" => {
            if remediation.acknowledge_incident(&identity, id).await? {
                "acknowledged"
            } else {
                "already-acknowledged"
            }
        }
        "save" => {
            let resolving = f.stage.as_deref() == Some("resolved");
            if resolving && !identity.allows(Scope::Operate) {
                return Err(Refusal::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "Resolving an incident needs the operator role.",
                ));
            }
            let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
            remediation
                .update_incident(
                    &identity,
                    id,
                    &firebreak_remediation::incidents::IncidentChange {
                        severity: nonempty(f.severity),
                        stage: nonempty(f.stage),
                        commander: f.commander,
                        summary: None,
                    },
                )
                .await?;
            "saved"
        }
        _ => return Err(Refusal::bad("say acknowledge or save")),
    };
    Ok(Redirect::to(&format!("/incidents/{id}?done={done}#response")).into_response())
}
