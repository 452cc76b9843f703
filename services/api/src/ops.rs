//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when every backend this process uses answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    if let Some(store) = &state.store {
        let result = store.ping().await;
        ready &= result.is_ok();
        checks.insert(
            "store".into(),
            json!({"backend": store.backend(), "ok": result.is_ok(), "error": result.err().map(|e| e.to_string())}),
        );
    }
    if let Some(bus) = &state.bus {
        let result = bus.ping().await;
        ready &= result.is_ok();
        checks.insert(
            "bus".into(),
            json!({"backend": bus.backend(), "ok": result.is_ok(), "error": result.err().map(|e| e.to_string())}),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks,
                    "auth": state.auth.mode()}),
        ),
    )
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
