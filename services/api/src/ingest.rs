//! Ingest: validate a body completely, then queue it durably, then answer 202.
//! A body is either wholly accepted or wholly refused; nothing is half-applied.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use firebreak_bus::OutMessage;
use firebreak_domain::{decode, Decoded, EventKind, LogLine};
use serde_json::{json, Value};

use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/alerts/alertmanager", post(alertmanager))
        .route("/api/v1/events/deploy", post(deploy))
        .route("/api/v1/events/gate", post(gate))
        .route("/api/v1/events/logs", post(logs))
        // Loki's push path, so Promtail, Alloy or Vector can be pointed at Firebreak (JSON bodies).
        .route("/loki/api/v1/push", post(logs))
}

async fn alertmanager(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    accept(&state, EventKind::Alert, &headers, body).await
}

async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    accept(&state, EventKind::Deploy, &headers, body).await
}

async fn gate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    accept(&state, EventKind::Gate, &headers, body).await
}

async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    accept(&state, EventKind::Log, &headers, body).await
}

/// The caller was authenticated with the `ingest` scope before this runs.
async fn accept(
    state: &AppState,
    kind: EventKind,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let outcome = accept_inner(state, kind, headers, body).await;
    if let Err(e) = &outcome {
        if !matches!(e, ApiError::Unavailable(_) | ApiError::Internal(_)) {
            state.metrics.rejected(kind);
            tracing::debug!(kind = kind.as_str(), error = %e, "refused an ingest request");
        }
    }
    outcome
}

async fn accept_inner(
    state: &AppState,
    kind: EventKind,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_json_content_type(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.max_body_bytes)
        } else {
            ApiError::BadRequest {
                field: None,
                message: format!("could not read the body: {rejection}"),
            }
        }
    })?;
    let decoded = decode(kind, &body, Utc::now()).map_err(ApiError::InvalidBody)?;
    let bus = state
        .bus
        .as_ref()
        .ok_or_else(|| ApiError::Internal("ingest role without a bus".into()))?;
    let count = decoded.len();
    let messages = messages_for(&decoded, body)?;
    if !messages.is_empty() {
        bus.publish(&messages).await?;
    }
    state.metrics.received(kind, count as u64);
    let mut answer = json!({"status": "accepted", "kind": kind.as_str(), "events": count});
    match &decoded {
        Decoded::Deploys(d) => answer["ids"] = json!(d.iter().map(|d| &d.id).collect::<Vec<_>>()),
        Decoded::Gates(g) => answer["ids"] = json!(g.iter().map(|g| &g.id).collect::<Vec<_>>()),
        Decoded::Alerts(_) | Decoded::Logs(_) => {}
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = value.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(value.to_string()))
    }
}

/// Bus messages for an accepted body. Alertmanager bodies travel as they came (no
/// re-encoding on the hot path); other kinds travel normalized, ids and
/// timestamps filled in, one message per service.
fn messages_for(decoded: &Decoded, raw: Bytes) -> Result<Vec<OutMessage>, ApiError> {
    let encode = |v: &dyn erased::Encode| {
        v.encode()
            .map_err(|e| ApiError::Internal(format!("encoding an event: {e}")))
    };
    Ok(match decoded {
        Decoded::Alerts(alerts) if alerts.is_empty() => Vec::new(),
        Decoded::Alerts(alerts) => {
            let first = alerts[0].labels.get("service");
            let service = if alerts.iter().all(|a| a.labels.get("service") == first) {
                first.map(String::as_str).unwrap_or("_")
            } else {
                "_"
            };
            vec![OutMessage {
                routing_key: routing_key(EventKind::Alert, service),
                body: raw,
            }]
        }
        Decoded::Deploys(deploys) => {
            let mut by_service: BTreeMap<&str, Vec<_>> = BTreeMap::new();
            for d in deploys {
                by_service.entry(d.service.as_str()).or_default().push(d);
            }
            let mut out = Vec::with_capacity(by_service.len());
            for (service, events) in by_service {
                out.push(OutMessage {
                    routing_key: routing_key(EventKind::Deploy, service),
                    body: encode(&events)?,
                });
            }
            out
        }
        Decoded::Gates(gates) => {
            let mut by_service: BTreeMap<&str, Vec<_>> = BTreeMap::new();
            for g in gates {
                by_service.entry(g.service.as_str()).or_default().push(g);
            }
            let mut out = Vec::with_capacity(by_service.len());
            for (service, events) in by_service {
                out.push(OutMessage {
                    routing_key: routing_key(EventKind::Gate, service),
                    body: encode(&events)?,
                });
            }
            out
        }
        Decoded::Logs(lines) => {
            let mut by_stream: BTreeMap<(&str, Option<&str>), Vec<&LogLine>> = BTreeMap::new();
            for l in lines {
                by_stream
                    .entry((l.service.as_str(), l.environment.as_deref()))
                    .or_default()
                    .push(l);
            }
            let mut out = Vec::with_capacity(by_stream.len());
            for ((service, environment), lines) in by_stream {
                let body = json!({
                    "service": service,
                    "environment": environment,
                    "lines": lines.iter().map(|l| json!({
                        "id": l.id, "at": l.at, "level": l.level, "message": l.message, "labels": l.labels,
                    })).collect::<Vec<_>>(),
                });
                out.push(OutMessage {
                    routing_key: routing_key(EventKind::Log, service),
                    body: encode(&body)?,
                });
            }
            out
        }
    })
}

/// `<kind>.<service>`; the service part is cut to keep the key within AMQP's
/// 255-byte limit.
fn routing_key(kind: EventKind, service: &str) -> String {
    let mut end = service.len().min(200);
    while !service.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}.{}", kind.as_str(), &service[..end])
}

/// Lets `messages_for` encode differently typed values with one closure.
mod erased {
    use axum::body::Bytes;

    pub trait Encode {
        fn encode(&self) -> Result<Bytes, serde_json::Error>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<Bytes, serde_json::Error> {
            serde_json::to_vec(self).map(Bytes::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_bounded() {
        assert_eq!(
            routing_key(EventKind::Deploy, "checkout"),
            "deploy.checkout"
        );
        let long = "é".repeat(300);
        assert!(routing_key(EventKind::Alert, &long).len() <= 206);
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(check_json_content_type(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("header"),
        );
        assert!(check_json_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().expect("header"),
        );
        assert!(check_json_content_type(&h).is_err());
    }
}
