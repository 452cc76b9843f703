//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::OpsState;

pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when every backend this process uses answers.
pub(crate) async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    let mut check = |name: &str, backend: &str, error: Option<String>| {
        ready &= error.is_none();
        checks.insert(
            name.into(),
            json!({"backend": backend, "ok": error.is_none(), "error": error}),
        );
    };
    if let Some(store) = &state.store {
        let result = store.ping().await;
        check(
            "store",
            store.backend(),
            result.err().map(|e| e.to_string()),
        );
    }
    if let Some(bus) = &state.bus {
        let result = bus.ping().await;
        check("bus", bus.backend(), result.err().map(|e| e.to_string()));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // What is down, by name, so an operator reads it without parsing checks.
    let down: Vec<&str> = checks
        .iter()
        .filter(|(_, c)| c["ok"] == false)
        .map(|(name, _)| name.as_str())
        .collect();
    (
        status,
        Json(
            json!({"status": if ready { "ready" } else { "not_ready" }, "down": down,
                    "checks": checks, "auth": state.auth.mode()}),
        ),
    )
}

pub(crate) async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    if let Some(bus) = &state.bus {
        use std::fmt::Write;
        let lanes = firebreak_bus::Lane::ALL.map(|l| (l, bus.backlog(l)));
        let _ = writeln!(text, "# HELP firebreak_queue_depth Messages waiting on a lane of the bus (sampled each second).\n# TYPE firebreak_queue_depth gauge");
        for (lane, b) in &lanes {
            let _ = writeln!(
                text,
                "firebreak_queue_depth{{lane=\"{}\"}} {}",
                lane.as_str(),
                b.depth
            );
        }
        let _ = writeln!(text, "# HELP firebreak_queue_oldest_seconds How long the oldest waiting message of a lane has waited (RabbitMQ: the wait of the last delivered).\n# TYPE firebreak_queue_oldest_seconds gauge");
        for (lane, b) in &lanes {
            if let Some(age) = b.oldest_seconds {
                let _ = writeln!(
                    text,
                    "firebreak_queue_oldest_seconds{{lane=\"{}\"}} {age:.3}",
                    lane.as_str()
                );
            }
        }
        if let Some(dead) = bus.dead_letter_depth() {
            let _ = writeln!(text, "# HELP firebreak_dead_letters Messages waiting in the dead-letter queue (GET /api/v1/dead-letters; sampled each second).\n# TYPE firebreak_dead_letters gauge\nfirebreak_dead_letters {dead}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
