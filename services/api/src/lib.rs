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
mod action_items;
pub mod auth;
mod call;
pub mod dead_letters;
mod error;
mod gates;
mod incidents;
pub mod ingest;
mod insights;
mod offload;
pub mod oidc;
mod ops;
pub mod packer;
pub mod pages;
mod paging;
mod postmortems;
pub mod remediation;
mod rollouts;
pub mod signin;
mod slack;

pub use auth::{Auth, AuthConfig, Secret};
pub use error::ApiError;

/// What every process serves, whatever its roles: health, readiness and
/// metrics of the backends it has.
#[derive(Clone)]
pub struct OpsState {
    pub store: Option<Arc<dyn Store>>,
    pub bus: Option<Arc<dyn Bus>>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
}

/// The ingest role: webhooks and events, checked and put on the bus.
#[derive(Clone)]
pub struct IngestState {
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The active playbooks: alerts one could act on take the urgent lane.
    pub playbooks: Option<Arc<firebreak_remediation::PlaybookSet>>,
    /// The packer of small webhooks and the backlog bounds.
    pub ingest: Arc<ingest::Ingest>,
}

/// The api role: the REST API, OFREP, Slack and the web pages. Built once,
/// whole: a handler never asks whether a part is there. What stays optional
/// is optional by configuration (playbooks, Slack) or names the role that
/// has it (the bus, for dead letters).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Only in a process that also runs ingest or the engine.
    pub bus: Option<Arc<dyn Bus>>,
    pub metrics: Arc<Metrics>,
    /// Who is asking, and may they: every route passes it.
    pub auth: Arc<Auth>,
    pub max_body_bytes: usize,
    /// The active playbooks; `None` when no directory is configured.
    pub playbooks: Option<Arc<firebreak_remediation::PlaybookSet>>,
    /// Every action command (request, approve, deny, revert, pause, flags)
    /// goes through the one remediation path.
    pub remediation: Arc<firebreak_remediation::Remediation>,
    /// Renders postmortem drafts.
    pub postmortems: Arc<firebreak_postmortem::Generator>,
    /// The web pages.
    pub pages: Arc<pages::Pages>,
    /// Slack commands and buttons (when a signing secret is configured).
    pub slack: Option<Arc<firebreak_remediation::slack::SlackClient>>,
    /// Where action items are exported, and the trackers' webhook secrets.
    pub trackers: Arc<firebreak_postmortem::trackers::TrackersConfig>,
    /// When OFREP last evaluated each flag (written every few seconds).
    pub flag_usage: Arc<remediation::FlagUsage>,
    /// flagd's bucketing generation for percentage splits (`flags.fractional`).
    pub fractional: firebreak_domain::flagd::Bucketing,
}

/// The states of the roles this process runs.
pub struct Roles {
    pub ops: OpsState,
    pub ingest: Option<IngestState>,
    pub api: Option<AppState>,
}

/// Builds the router for the roles this process runs.
pub fn router(roles: Roles) -> Router {
    let auth = roles.ops.auth.clone();
    let has_api = roles.api.is_some();
    let mut router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(roles.ops);
    if let Some(state) = roles.ingest {
        let limit = DefaultBodyLimit::max(state.max_body_bytes);
        router = router.merge(ingest::router().layer(limit).with_state(state));
    }
    if let Some(state) = roles.api {
        router = router.merge(
            Router::new()
                .merge(incidents::router())
                .merge(remediation::router())
                .merge(gates::router())
                .merge(rollouts::router())
                .merge(insights::router())
                .merge(dead_letters::router())
                .merge(postmortems::router())
                .merge(action_items::router())
                .merge(access::router())
                .merge(pages::router())
                .merge(slack::router())
                .with_state(state),
        );
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ))
        .fallback(move || not_found(has_api))
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
