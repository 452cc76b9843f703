//! Web pages, rendered on the server from `templates/web/*.hbs` with
//! handlebars (every value escaped; the only raw HTML is what Firebreak
//! itself built and escaped: the timeline picture and the sanitized
//! Markdown preview). Styles and a small script are embedded in the binary
//! and served from `/static`; pages work without the script, which adds live
//! refresh, live preview, presence and confirmation dialogs. Forms carry a
//! CSRF token and controls appear only to identities that may use them.

use std::path::Path;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use firebreak_domain::access::{Identity, Scope, Via};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{ApiError, AppState};

mod admin;
mod editor;
mod incident;
mod insights;
pub mod timeline;

/// The CSRF token a page's forms carry (the session's, or one derived for
/// the identity), put in the request by the authentication middleware.
/// Requests with a bearer token are exempt: a token is never sent by a
/// browser on its own, so another site cannot borrow it.
#[derive(Debug, Clone)]
pub struct PageCsrf {
    pub token: String,
    pub exempt: bool,
}

const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout",
        include_str!("../../../../templates/web/layout.hbs"),
    ),
    ("login", include_str!("../../../../templates/web/login.hbs")),
    (
        "incidents",
        include_str!("../../../../templates/web/incidents.hbs"),
    ),
    (
        "incident_rows",
        include_str!("../../../../templates/web/incident_rows.hbs"),
    ),
    (
        "incident",
        include_str!("../../../../templates/web/incident.hbs"),
    ),
    (
        "editor",
        include_str!("../../../../templates/web/editor.hbs"),
    ),
    (
        "conflict",
        include_str!("../../../../templates/web/conflict.hbs"),
    ),
    (
        "revision",
        include_str!("../../../../templates/web/revision.hbs"),
    ),
    ("flags", include_str!("../../../../templates/web/flags.hbs")),
    ("flag", include_str!("../../../../templates/web/flag.hbs")),
    (
        "playbooks",
        include_str!("../../../../templates/web/playbooks.hbs"),
    ),
    ("audit", include_str!("../../../../templates/web/audit.hbs")),
    (
        "insights",
        include_str!("../../../../templates/web/insights.hbs"),
    ),
];
const APP_CSS: &str = include_str!("../../../../templates/web/static/app.css");
const APP_JS: &str = include_str!("../../../../templates/web/static/app.js");

/// The compiled page templates.
pub struct Pages {
    hb: Handlebars<'static>,
}

impl Pages {
    /// The built-in templates, each replaced by `<dir>/web/<name>.hbs` when that exists.
    pub fn load(dir: Option<&Path>) -> Result<Pages, String> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(false);
        for (name, builtin) in TEMPLATES {
            let custom = dir
                .map(|d| d.join("web").join(format!("{name}.hbs")))
                .filter(|p| p.is_file());
            let (text, origin) = match &custom {
                Some(p) => (
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
                    p.display().to_string(),
                ),
                None => (
                    (*builtin).to_string(),
                    format!("templates/web/{name}.hbs (built in)"),
                ),
            };
            hb.register_template_string(name, text)
                .map_err(|e| format!("{origin}: {e}"))?;
        }
        // Partials: the layout, and the rows the incident list refreshes.
        for name in ["layout", "incident_rows"] {
            let t = hb
                .get_template(name)
                .cloned()
                .ok_or_else(|| format!("template {name} missing"))?;
            hb.register_template(&format!("{name}_partial"), t);
        }
        Ok(Pages { hb })
    }

    pub fn render(&self, name: &str, ctx: &Value) -> Response {
        self.render_status(StatusCode::OK, name, ctx)
    }

    pub fn render_status(&self, status: StatusCode, name: &str, ctx: &Value) -> Response {
        match self.hb.render(name, ctx) {
            Ok(html) => html_response(status, html),
            Err(e) => {
                tracing::error!(template = name, error = %e, "cannot render a page");
                html_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>Error</title><p>This page could not be rendered; the log says why.</p>".into(),
                )
            }
        }
    }
}

/// How long a person counts as present after their editor last said so.
pub const PRESENCE_SECONDS: u64 = 20;
/// People-and-drafts present at once, over every process (a caller past
/// that sees the others but is not recorded).
pub const MAX_PRESENCE: i64 = 10_000;

/// An HTML answer: its content type, `policy` as its
/// Content-Security-Policy, and no MIME sniffing.
pub fn html_with_policy(mut r: Response, policy: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Security headers every page carries: no inline script, no framing.
pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut r = html_with_policy(
        (status, html).into_response(),
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    let h = r.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error as a page (for page routes), escaped.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let m = timeline::esc(message);
    html_response(
        status,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} — Firebreak</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main class=\"narrow\"><h1>{}</h1><p>{m}</p><p><a href=\"/incidents\">Incidents</a> · <a href=\"/login\">Sign in</a></p></main></body></html>",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        ),
    )
}

/// Whether a route is a page (not the API, a protocol, or a static file).
pub fn is_page(route: &str) -> bool {
    ![
        "/api/", "/ofrep/", "/slack/", "/loki/", "/static/", "/metrics",
    ]
    .iter()
    .any(|p| route.starts_with(p))
        && !["/healthz", "/readyz"].contains(&route)
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/incidents") }))
        .route("/static/{file}", get(static_file))
        .route("/login", get(admin::login_form).post(admin::login))
        .route("/logout", post(admin::logout))
        .route("/auth/oidc/login", get(admin::oidc_login))
        .route("/auth/oidc/callback", get(admin::oidc_callback))
        .route("/incidents", get(incident::list))
        .route("/incidents/{id}", get(incident::detail))
        .route("/incidents/{id}/notes", post(incident::note))
        .route("/incidents/{id}/response", post(incident::response))
        .route(
            "/incidents/{id}/changes/{deploy}/cause",
            post(incident::cause),
        )
        .route("/actions/{id}/approve", post(incident::approve))
        .route("/actions/{id}/deny", post(incident::deny))
        .route("/actions/{id}/revert", post(incident::revert))
        .route(
            "/incidents/{id}/postmortem",
            get(editor::editor).post(editor::save),
        )
        .route(
            "/incidents/{id}/postmortem/regenerate",
            post(editor::regenerate),
        )
        .route(
            "/incidents/{id}/postmortem/revisions/{rev}",
            get(editor::revision),
        )
        .route("/incidents/{id}/action-items", post(editor::add_item))
        .route(
            "/incidents/{id}/action-items/{item}",
            post(editor::change_item),
        )
        .route("/flags", get(admin::flags))
        .route("/flags/{key}", get(admin::flag).post(admin::set_flag))
        .route("/playbooks", get(admin::playbooks))
        .route("/playbooks/test", post(admin::test_playbooks))
        .route("/audit", get(admin::audit))
        .route("/insights", get(insights::page))
        .route("/api/v1/postmortems/preview", post(editor::preview))
        .route(
            "/api/v1/incidents/{id}/postmortem/presence",
            post(editor::presence),
        )
}

async fn static_file(UrlPath(file): UrlPath<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return error_page(StatusCode::NOT_FOUND, "no such file"),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// What every page's layout needs: who is signed in, what they may do, the
/// CSRF token, the title and which section is active.
pub fn base(identity: &Identity, csrf: &PageCsrf, title: &str, nav: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("title".into(), json!(title));
    m.insert("nav".into(), json!(nav));
    m.insert("csrf".into(), json!(csrf.token));
    m.insert(
        "me".into(),
        json!({
            "id": identity.id,
            "role": identity.role.map(|r| r.as_str()).unwrap_or("token"),
            "session": identity.via == Via::Session,
            "local": identity.via == Via::Local,
            "can_edit": identity.allows(Scope::Edit),
            "can_operate": identity.allows(Scope::Operate),
            "can_admin": identity.allows(Scope::Admin),
        }),
    );
    m
}

/// A form body, decoded.
pub fn form<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Refusal> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| Refusal::bad(format!("the form could not be read: {e}")))
}

/// Why a page cannot be shown or a form was refused: answered as a page
/// that says so (escaped), never as JSON.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

/// An id from the path: a positive whole number, else a 400 page saying it
/// is not `what` id ("an incident").
pub(crate) fn path_id(raw: &str, what: &str) -> Result<i64, Refusal> {
    crate::error::positive_id(raw).ok_or_else(|| Refusal::bad(format!("not {what} id")))
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_page(self.status, &self.message)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        match e {
            ApiError::NotFound(m) => Refusal::not_found(m),
            ApiError::BadRequest { message, .. } => Refusal::bad(message),
            ApiError::Conflict(m) => Refusal::new(StatusCode::CONFLICT, m),
            ApiError::Forbidden(m) => Refusal::new(StatusCode::FORBIDDEN, m),
            ApiError::BadGateway(m) => Refusal::new(StatusCode::BAD_GATEWAY, m),
            ApiError::Unavailable(_) => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable; try again in a moment.",
            ),
            e => {
                tracing::error!(error = %e, "page failed");
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong; the log says what.",
                )
            }
        }
    }
}

impl From<firebreak_store::StoreError> for Refusal {
    fn from(e: firebreak_store::StoreError) -> Refusal {
        ApiError::from(e).into()
    }
}

impl From<firebreak_postmortem::action_items::ItemError> for Refusal {
    fn from(e: firebreak_postmortem::action_items::ItemError) -> Refusal {
        ApiError::from(e).into()
    }
}

impl From<firebreak_remediation::CommandError> for Refusal {
    fn from(e: firebreak_remediation::CommandError) -> Refusal {
        ApiError::from(e).into()
    }
}

/// What a page handler answers.
pub type PageResult = Result<Response, Refusal>;

/// A form's CSRF token must be this page's.
pub fn check_csrf(sent: Option<&str>, csrf: &PageCsrf) -> Result<(), Refusal> {
    match sent {
        _ if csrf.exempt => Ok(()),
        Some(s) if firebreak_store::credentials::constant_time_eq(s.as_bytes(), csrf.token.as_bytes()) => Ok(()),
        _ => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "This form is stale or came from elsewhere (its CSRF token does not match). Go back, reload the page and try again.",
        )),
    }
}

/// A page form as posted: its CSRF token checked against the page's, then
/// the body read as `T`. A stale token (403) or a body that cannot be read
/// (400) is refused as a page that says why, before the handler runs.
pub struct Posted<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Posted<T> {
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Refusal> {
        #[derive(Deserialize)]
        struct Token {
            csrf_token: Option<String>,
        }
        let csrf = req.extensions().get::<PageCsrf>().cloned();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Refusal::new(e.status(), e.body_text()))?;
        let token: Token = form(&bytes)?;
        let csrf = csrf.ok_or_else(|| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this form has no page to come from",
            )
        })?;
        check_csrf(token.csrf_token.as_deref(), &csrf)?;
        form(&bytes).map(Posted)
    }
}

/// Where a page's time went, for the `Server-Timing` header (a browser's
/// network panel shows it; `firebreak bench --page-probes` reads `total`).
pub struct Timing {
    started: Instant,
    last: Instant,
    stages: Vec<(&'static str, f64)>,
}

impl Timing {
    pub fn start() -> Timing {
        let now = Instant::now();
        Timing {
            started: now,
            last: now,
            stages: Vec::new(),
        }
    }

    /// The stage that just ended.
    pub fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.stages
            .push((stage, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }

    pub fn put(&self, response: &mut Response) {
        let mut v: Vec<String> = self
            .stages
            .iter()
            .map(|(s, ms)| format!("{s};dur={ms:.1}"))
            .collect();
        v.push(format!(
            "total;dur={:.1}",
            self.started.elapsed().as_secs_f64() * 1000.0
        ));
        if let Ok(h) = HeaderValue::from_str(&v.join(", ")) {
            response.headers_mut().insert("server-timing", h);
        }
    }
}

/// A time for people, in UTC.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn duration(d: Option<chrono::Duration>) -> Value {
    match d {
        Some(d) if d >= chrono::Duration::zero() => {
            json!(firebreak_postmortem::context::fmt_duration(d))
        }
        _ => Value::Null,
    }
}

/// Where to go after signing in: only a path on this site. It starts with
/// exactly one `/` and holds no backslash, whitespace or control character
/// (browsers drop tabs and newlines from a URL and read `\\` as `/`, so
/// `/\t/evil.example/` would leave the site); anything else goes to the
/// incidents.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n[1..].starts_with('/')
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_whitespace() || c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/incidents".into(),
    }
}

#[derive(Deserialize, Default)]
pub struct Confirmed {
    pub csrf_token: Option<String>,
    pub confirm: Option<String>,
    pub comment: Option<String>,
    pub force: Option<String>,
}

pub(crate) type Ident = Extension<Identity>;
pub(crate) type Csrf = Extension<PageCsrf>;
pub(crate) type St = State<AppState>;
pub(crate) type Id = UrlPath<String>;
pub(crate) type Q<T> = Query<T>;

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_origin() {
        for bad in [
            "//evil.example/",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\\evil.example/",
            "\\\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/ /evil.example",
            "/\u{0}/x",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/incidents", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/incidents");
        for good in ["/incidents/4", "/flags?x=1", "/%2F%2Fevil.example", "/"] {
            assert_eq!(safe_next(Some(good)), good);
        }
    }
}
