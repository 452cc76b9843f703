//! Firebreak's HTTP surface. Routers are merged per role: ingest (webhooks and
//! event endpoints), api (read side); operations endpoints are always served.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use firebreak_bus::Bus;
use firebreak_domain::metrics::Metrics;
use firebreak_store::Store;
use serde_json::json;

mod access;
pub mod auth;
pub mod dead_letters;
mod error;
mod gates;
mod incidents;
pub mod ingest;
mod insights;
mod offload;
mod ops;
pub mod packer;
pub mod pages;
mod postmortems;
pub mod remediation;
mod rollouts;
pub mod signin;
mod slack;

pub use auth::{Auth, AuthConfig, Secret};
pub use error::ApiError;

/// What the HTTP layer needs; roles that do not run leave their parts out.
#[derive(Clone)]
pub struct AppState {
    pub store: Option<Arc<dyn Store>>,
    pub bus: Option<Arc<dyn Bus>>,
    pub metrics: Arc<Metrics>,
    /// Who is asking, and may they: every route passes it.
    pub auth: Arc<Auth>,
    pub max_body_bytes: usize,
    /// The active playbooks (api role); `None` when no directory is configured.
    pub playbooks: Option<Arc<firebreak_engine::PlaybookSet>>,
    /// Every action command (request, approve, deny, revert, pause, flags)
    /// goes through the one remediation path.
    pub remediation: Option<Arc<firebreak_remediation::Remediation>>,
    /// Renders postmortem drafts (api role).
    pub postmortems: Option<Arc<firebreak_postmortem::Generator>>,
    /// The web pages (api role).
    pub pages: Option<Arc<pages::Pages>>,
    /// The packer of small webhooks and the backlog bounds (ingest role).
    pub ingest: Option<Arc<ingest::Ingest>>,
    /// Slack commands and buttons (when a signing secret is configured).
    pub slack: Option<Arc<firebreak_remediation::slack::SlackClient>>,
    /// When OFREP last evaluated each flag (written every few seconds).
    pub flag_usage: Arc<remediation::FlagUsage>,
    /// flagd's bucketing generation for percentage splits (`flags.fractional`).
    pub fractional: firebreak_domain::flagd::Bucketing,
}

/// Builds the router for the roles this process runs.
pub fn router(state: AppState, ingest: bool, api: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if ingest {
        router = router.merge(ingest::router().layer(DefaultBodyLimit::max(state.max_body_bytes)));
    }
    if api {
        router = router
            .merge(incidents::router())
            .merge(remediation::router())
            .merge(gates::router())
            .merge(rollouts::router())
            .merge(insights::router())
            .merge(dead_letters::router())
            .merge(postmortems::router())
            .merge(access::router())
            .merge(pages::router())
            .merge(slack::router());
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .fallback(move || not_found(api))
        .with_state(state)
}

/// An unknown path. A process without the api role says where the pages and
/// the API are (a newcomer opening the ingest port in a browser).
async fn not_found(api: bool) -> impl IntoResponse {
    let message = if api {
        "no such endpoint; see docs/http-api.md for the API"
    } else {
        "no such endpoint here: this process does not run the api role, so the web pages and the API are served by another process (in docker-compose.yml: http://localhost:8081); this one takes webhooks and events (docs/http-api.md)"
    };
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": message})),
    )
}
