//! Signing in and out, the built-in kill switches, the playbooks (with a
//! dry run of a pasted event) and the audit trail.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use firebreak_domain::playbook::{Facts, Trigger, Verdict};
use firebreak_domain::{decode, Decoded, EventKind};
use firebreak_store::{ActionFilter, AuditFilter};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    base, check_csrf, form, safe_next, when, Confirmed, Csrf, Id, Ident, PageResult, Posted,
    Refusal, St,
};
use crate::call::Call;

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
}

fn login_page(
    state: &crate::AppState,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    state.pages.render_status(
        status,
        "login",
        &json!({"title": "Sign in", "next": next, "error": error,
                "proxy": state.auth.config().proxy.is_some(),
                "oidc": state.auth.oidc().map(|o| json!({
                    "name": o.config().display_name,
                    "href": format!("/auth/oidc/login?{}",
                        serde_urlencoded::to_string([("next", next)]).unwrap_or_default()),
                })),
                "open": !state.auth.required()}),
    )
}

/// Sends the browser to the OpenID provider (the flow's first leg).
pub async fn oidc_login(
    axum::extract::State(state): St,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> PageResult {
    let next = safe_next(q.next.as_deref());
    let Some(oidc) = state.auth.oidc() else {
        return Ok(login_page(
            &state,
            &next,
            Some("no identity provider is configured here (auth.oidc)"),
            StatusCode::NOT_FOUND,
        ));
    };
    match oidc.begin(&next, |b| state.auth.flow_mac(b)).await {
        Ok((url, flow)) => {
            let mut r = Redirect::to(&url).into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                crate::oidc::flow_cookie(Some(&flow), state.auth.cookie_secure(&headers)),
            );
            Ok(r)
        }
        Err(f) => Ok(login_page(&state, &next, Some(&f.message), f.status)),
    }
}

/// The provider's answer (the flow's second leg): a session like a
/// password's, or the sign-in page saying what went wrong. The flow's
/// cookie is cleared either way, so an answer counts once.
pub async fn oidc_callback(
    axum::extract::State(state): St,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> PageResult {
    let secure = state.auth.cookie_secure(&headers);
    let clear = crate::oidc::flow_cookie(None, secure);
    let refused = |message: &str, status: StatusCode| {
        let mut r = login_page(&state, "/incidents", Some(message), status);
        r.headers_mut().append(header::SET_COOKIE, clear.clone());
        r
    };
    let Some(oidc) = state.auth.oidc() else {
        return Ok(refused(
            "no identity provider is configured here (auth.oidc)",
            StatusCode::NOT_FOUND,
        ));
    };
    let flow = crate::oidc::flow_from(&headers);
    let (person, next) = match oidc.finish(&q, flow, |b| state.auth.flow_mac(b)).await {
        Ok(done) => done,
        Err(f) => {
            tracing::info!(status = f.status.as_u16(), reason = %f.message, "OpenID sign-in refused");
            return Ok(refused(&f.message, f.status));
        }
    };
    let audit = firebreak_store::NewAudit::by(
        person.principal.clone(),
        "oidc_user",
        json!({"role": person.role, "email": person.email,
               "issuer": oidc.config().issuer, "groups": person.groups.iter().take(20).collect::<Vec<_>>()}),
    );
    let user = match state
        .store
        .sign_in_external(&person.principal, person.role, &audit)
        .await
    {
        Ok(Some(user)) => user,
        Ok(None) => {
            return Ok(refused(
                &format!(
                    "{} is disabled in Firebreak: an admin enables them again (firebreak users), or they stay out",
                    person.principal
                ),
                StatusCode::FORBIDDEN,
            ))
        }
        Err(e) => return Err(crate::ApiError::from(e).into()),
    };
    state.auth.credentials_exist();
    match crate::access::start_session(&state, &user, &headers).await {
        Ok((cookie, _, _)) => {
            let mut r = Redirect::to(&safe_next(Some(&next))).into_response();
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            r.headers_mut().append(header::SET_COOKIE, clear);
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn login_form(
    axum::extract::State(state): St,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> PageResult {
    let next = safe_next(q.next.as_deref());
    Ok(login_page(&state, &next, None, StatusCode::OK))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn login(
    axum::extract::State(state): St,
    peer: crate::auth::Peer,
    headers: HeaderMap,
    bytes: Bytes,
) -> PageResult {
    // A sign-in form posted from another site would sign the browser in as
    // someone else: only Firebreak's own page may post it.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        if !state.auth.origin_allowed(origin, &headers) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "sign in from Firebreak's own page",
            ));
        }
    }
    let f: LoginForm = form(&bytes)?;
    let next = safe_next(f.next.as_deref());
    let address = state.auth.client_address(&headers, peer.0);
    let refused = |status, message: String| Ok(login_page(&state, &next, Some(&message), status));
    let user = match state
        .auth
        .login(f.username.trim(), &f.password, address)
        .await
    {
        Ok(u) => u,
        Err(crate::ApiError::SlowDown { message, .. }) => {
            return refused(StatusCode::TOO_MANY_REQUESTS, message)
        }
        Err(crate::ApiError::BadRequest { message, .. }) => {
            return refused(StatusCode::BAD_REQUEST, message)
        }
        Err(crate::ApiError::Unauthorized(m)) => return refused(StatusCode::UNAUTHORIZED, m),
        Err(e) => return Err(e.into()),
    };
    match crate::access::start_session(&state, &user, &headers).await {
        Ok((cookie, _, _)) => {
            let mut r = Redirect::to(&next).into_response();
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn logout(
    axum::extract::State(state): St,
    axum::Extension(csrf): Csrf,
    axum::Extension(identity): Ident,
    headers: HeaderMap,
    bytes: Bytes,
) -> PageResult {
    let f: Confirmed = form(&bytes).unwrap_or_default();
    check_csrf(f.csrf_token.as_deref(), &csrf)?;
    // A person from the identity provider signs out there too, when it
    // offers that (RP-initiated logout), and comes back to the sign-in page.
    // The pages' policy lets forms go nowhere but Firebreak, so the way on
    // to the provider is a page that moves on by itself (and a link).
    let mut provider = None;
    if let Some(oidc) = state
        .auth
        .oidc()
        .filter(|_| identity.id.starts_with("oidc:"))
    {
        let back = reqwest::Url::parse(&oidc.config().redirect_url)
            .and_then(|u| u.join("/login"))
            .map(|u| u.to_string());
        if let Ok(back) = back {
            if let Some(url) = oidc.logout_url(&back).await {
                provider = Some(json!({"href": url, "name": oidc.config().display_name}));
            }
        }
    }
    match crate::access::end_session(&state, &headers).await {
        Ok(clear) => {
            let mut r = match provider {
                Some(p) => state.pages.render(
                    "login",
                    &json!({"title": "Signed out", "next": "/incidents",
                            "signed_out_at": p, "open": false}),
                ),
                None => Redirect::to("/login").into_response(),
            };
            r.headers_mut().insert(header::SET_COOKIE, clear);
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn flags(Call { state, identity }: Call, axum::Extension(csrf): Csrf) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let flags = match store.list_flags().await {
        Ok(f) => f,
        Err(e) => return Err(e.into()),
    };
    let rollouts = store
        .list_rollouts(None, true, 1000)
        .await
        .unwrap_or_default();
    let mut ctx = base(&identity, &csrf, "Kill switches", "flags");
    ctx.insert(
        "flags".into(),
        json!(flags
            .iter()
            .map(|f| {
                let rollout = rollouts.iter().find(|r| r.flag == f.key);
                json!({"key": f.key, "enabled": f.enabled, "description": f.description,
                       "serves": serves(f), "owner": f.owner,
                       "rollout": rollout.map(|r| json!({"id": r.id, "percent": r.percent(), "status": r.status.as_str()})),
                       "updated": when(f.updated_at), "updated_by": f.updated_by})
            })
            .collect::<Vec<_>>()),
    );
    Ok(pages.render("flags", &Value::Object(ctx)))
}

pub async fn flag(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    axum::extract::Path(key): Id,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let f = match store.flag(&key).await {
        Ok(f) => f,
        Err(firebreak_store::StoreError::NotFound) => {
            return Err(Refusal::not_found(format!("There is no flag {key:?}.")))
        }
        Err(e) => return Err(e.into()),
    };
    let history = store
        .list_audit(&AuditFilter {
            event: Some("flag_set".into()),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap_or_default();
    let history: Vec<Value> = history
        .iter()
        .filter(|a| a.entry.detail["flag"] == key.as_str())
        .take(100)
        .map(|a| {
            let d = &a.entry.detail;
            let state = if d["enabled"] == true { "on" } else { "off" };
            let others: Vec<&str> = d["changed"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .filter(|c| *c != "enabled")
                        .collect()
                })
                .unwrap_or_default();
            // Older rows and kill switches name no fields: they set the state.
            let sets_state = d["changed"]
                .as_array()
                .is_none_or(|c| c.iter().any(|c| c == "enabled"));
            let what = match (sets_state, others.is_empty()) {
                (true, true) => format!("turned it {state}"),
                (true, false) => format!("turned it {state} and changed its {}", others.join(", ")),
                (false, _) => format!("changed its {} (it is {state})", others.join(", ")),
            };
            json!({"at": when(a.entry.at), "actor": a.entry.actor, "what": what})
        })
        .collect();
    let rollout = store
        .list_rollouts(Some(&key), false, 1)
        .await
        .unwrap_or_default()
        .into_iter()
        .next();
    let events = match &rollout {
        Some(r) => store.rollout_events(r.id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let definition = f.effective();
    let mut ctx = base(&identity, &csrf, &format!("Kill switch {key}"), "flags");
    ctx.insert(
        "flag".into(),
        json!({"key": f.key, "enabled": f.enabled, "description": f.description,
               "serves": serves(&f), "owner": f.owner,
               "created": f.created_at.map(when), "evaluated": f.last_evaluated_at.map(when),
               "variants": definition.variants.iter().map(|(k, v)| json!({
                   "name": k, "value": v.to_string(),
                   "default": definition.default_variant.as_deref() == Some(k.as_str()),
                   "off": definition.off_variant() == Some(k.as_str()),
               })).collect::<Vec<_>>(),
               "targeting": definition.targeting.as_ref().and_then(|t| serde_json::to_string_pretty(t).ok()),
               "updated": when(f.updated_at), "updated_by": f.updated_by}),
    );
    ctx.insert(
        "rollout".into(),
        json!(rollout.map(|r| json!({
            "id": r.id, "status": r.status.as_str(), "percent": r.percent(),
            "step": r.step.map(|s| s + 1), "steps": r.plan.steps.len(), "service": r.plan.service,
            "waiting": r.waiting, "reason": r.reason,
            "events": events.iter().rev().take(50).map(|e| json!({"at": when(e.at), "summary": e.summary})).collect::<Vec<_>>(),
        }))),
    );
    ctx.insert("history".into(), json!(history));
    Ok(pages.render("flag", &Value::Object(ctx)))
}

/// What a flag serves now, in a few words.
fn serves(f: &firebreak_store::FlagRow) -> String {
    let d = f.effective();
    if !f.enabled {
        return match (f.killed() || f.definition.is_none(), d.off_variant()) {
            (true, Some(off)) => format!("{off} to everyone (killed)"),
            (true, None) => "no value: callers get their own default (killed)".into(),
            (false, _) => "no value: callers get their own default (disabled)".into(),
        };
    }
    match (&d.targeting, &d.default_variant) {
        (None, Some(v)) => format!("{v} to everyone"),
        (None, None) => "no default variant".into(),
        (Some(_), Some(v)) => format!("by targeting, else {v}"),
        (Some(_), None) => "by targeting".into(),
    }
}

#[derive(Deserialize)]
pub struct FlagForm {
    enabled: String,
    confirm: Option<String>,
}

pub async fn set_flag(
    Call { state, identity }: Call,
    axum::extract::Path(key): Id,
    Posted(f): Posted<FlagForm>,
) -> PageResult {
    if f.confirm.is_none() {
        return Err(Refusal::bad(
            "Tick the confirmation box, then submit again.",
        ));
    }
    let remediation = state.remediation.clone();
    let enabled = f.enabled == "true";
    let edit = firebreak_remediation::FlagEdit {
        enabled: Some(enabled),
        ..Default::default()
    };
    match remediation.edit_flag(&identity, &key, edit).await {
        Ok(_) => Ok(Redirect::to("/flags").into_response()),
        Err(e) => Err(e.into()),
    }
}

pub async fn playbooks(Call { state, identity }: Call, axum::Extension(csrf): Csrf) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let mut ctx = base(&identity, &csrf, "Playbooks", "playbooks");
    playbooks_context(&state, store.as_ref(), &mut ctx).await;
    Ok(pages.render("playbooks", &Value::Object(ctx)))
}

async fn playbooks_context(
    state: &crate::AppState,
    store: &dyn firebreak_store::Store,
    ctx: &mut serde_json::Map<String, Value>,
) {
    let recent = store
        .list_actions(&ActionFilter {
            limit: 500,
            ..ActionFilter::default()
        })
        .await
        .unwrap_or_default();
    let Some(set) = &state.playbooks else {
        ctx.insert("configured".into(), json!(false));
        return;
    };
    let loaded = set.current();
    let books: Vec<Value> = loaded
        .view()
        .into_iter()
        .map(|p| {
            let runs: Vec<Value> = recent
                .iter()
                .filter(|a| a.playbook == p.name)
                .take(5)
                .map(|a| json!({"id": a.id, "status": a.status.as_str(), "describe": a.spec.describe,
                                "at": when(a.created_at), "incident": a.incident_id}))
                .collect();
            json!({"name": p.name, "file": p.file, "version": p.version, "description": p.description,
                   "trigger": p.trigger, "steps": p.steps, "stale": p.stale, "runs": runs})
        })
        .collect();
    ctx.insert("configured".into(), json!(true));
    ctx.insert("dir".into(), json!(loaded.dir));
    ctx.insert("playbooks".into(), json!(books));
    ctx.insert(
        "errors".into(),
        json!(loaded
            .errors
            .iter()
            .map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
            .collect::<Vec<_>>()),
    );
}

#[derive(Deserialize)]
pub struct TestForm {
    kind: String,
    event: String,
}

/// A dry run: which playbooks a pasted event would match, and what their
/// steps would do. Nothing is stored or claimed.
pub async fn test_playbooks(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    Posted(f): Posted<TestForm>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let kind = match f.kind.as_str() {
        "alert" => EventKind::Alert,
        "deploy" => EventKind::Deploy,
        "gate" => EventKind::Gate,
        _ => return Err(Refusal::bad("kind: alert, deploy or gate")),
    };
    let now = Utc::now();
    let mut ctx = base(&identity, &csrf, "Playbooks", "playbooks");
    ctx.insert("tested".into(), json!({"kind": f.kind, "event": f.event}));
    let decoded = match decode(kind, f.event.as_bytes(), now) {
        Ok(d) => d,
        Err(e) => {
            ctx.insert("test_error".into(), json!(e.to_string()));
            playbooks_context(&state, store.as_ref(), &mut ctx).await;
            return Ok(pages.render_status(
                StatusCode::BAD_REQUEST,
                "playbooks",
                &Value::Object(ctx),
            ));
        }
    };
    let triggers: Vec<Trigger<'_>> = match &decoded {
        Decoded::Alerts(a) => a.iter().map(Trigger::Alert).collect(),
        Decoded::Deploys(d) => d.iter().map(Trigger::Deploy).collect(),
        Decoded::Gates(g) => g.iter().map(Trigger::Gate).collect(),
        Decoded::Logs(_) => Vec::new(),
    };
    let mut results = Vec::new();
    if let Some(set) = &state.playbooks {
        let loaded = set.current();
        let mut cache = firebreak_remediation::facts::DeployCache::default();
        let mut tx = match store.begin().await {
            Ok(t) => t,
            Err(e) => return Err(e.into()),
        };
        for t in &triggers {
            let known = match t.service() {
                Some(service) => cache
                    .facts(tx.as_mut(), service, t.environment(), t.at(), None, now)
                    .await
                    .unwrap_or_default(),
                None => Default::default(),
            };
            for pb in &loaded.playbooks {
                let verdict = pb.evaluate(
                    t,
                    &Facts {
                        latest_deploy: known.suspect.as_ref(),
                    },
                    now,
                );
                let (outcome, why) = match &verdict {
                    Verdict::Match => ("would act", None),
                    Verdict::Unmet(why) => ("matched, would not act", Some(why.clone())),
                    Verdict::NoMatch => continue,
                };
                results.push(json!({
                    "trigger": t.describe(), "playbook": pb.name(), "outcome": outcome, "why": why,
                    "acts": verdict == Verdict::Match,
                    "steps": pb.spec.steps.iter().map(|s| s.action.describe()).collect::<Vec<_>>(),
                }));
            }
        }
        drop(tx); // read only: nothing was written
    }
    ctx.insert("results".into(), json!(results));
    ctx.insert("triggers".into(), json!(triggers.len()));
    playbooks_context(&state, store.as_ref(), &mut ctx).await;
    Ok(pages.render("playbooks", &Value::Object(ctx)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    incident: Option<String>,
    actor: Option<String>,
    event: Option<String>,
    before: Option<i64>,
}

pub async fn audit(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    q: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let q = match q {
        Ok(q) => q.0,
        Err(e) => return Err(Refusal::bad(e.body_text())),
    };
    let num = |s: &Option<String>, field: &str| -> Result<Option<i64>, Refusal> {
        match s.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Refusal::bad(format!("{field}: {v:?} is not a number"))),
        }
    };
    let (action, incident) = match (num(&q.action, "action"), num(&q.incident, "incident")) {
        (Ok(a), Ok(i)) => (a, i),
        (Err(r), _) | (_, Err(r)) => return Err(r),
    };
    let text = |s: &Option<String>| {
        s.clone()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let rows = match store
        .list_audit(&AuditFilter {
            action_id: action,
            incident_id: incident,
            actor: text(&q.actor),
            event: text(&q.event),
            before_id: q.before,
            limit: 200,
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return Err(e.into()),
    };
    let next = (rows.len() == 200)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let mut ctx = base(&identity, &csrf, "Audit trail", "audit");
    ctx.insert(
        "entries".into(),
        json!(rows
            .iter()
            .map(|r| json!({"id": r.id, "at": when(r.entry.at), "actor": r.entry.actor, "event": r.entry.event,
                            "action": r.entry.action_id, "incident": r.entry.incident_id,
                            "playbook": r.entry.playbook, "detail": r.entry.detail.to_string()}))
            .collect::<Vec<_>>()),
    );
    ctx.insert(
        "filter".into(),
        json!({"action": q.action, "incident": q.incident, "actor": q.actor, "event": q.event}),
    );
    // The link to older rows keeps the filters, URL-encoded.
    let older = next.map(|before| {
        let mut pairs = vec![("before", before.to_string())];
        for (k, v) in [
            ("action", &q.action),
            ("incident", &q.incident),
            ("actor", &q.actor),
            ("event", &q.event),
        ] {
            if let Some(v) = text(v) {
                pairs.push((k, v));
            }
        }
        format!(
            "/audit?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    });
    ctx.insert("older".into(), json!(older));
    Ok(pages.render("audit", &Value::Object(ctx)))
}
