//! Ingest: validate a body completely, then queue it durably, then answer 202.
//! A body is either wholly accepted or wholly refused; nothing is half-applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{post, MethodRouter};
use axum::{Json, Router};
use chrono::Utc;
use firebreak_bus::{Lane, OutMessage};
use firebreak_domain::{decode, AlertEvent, Decoded, EventKind, LogLine};
use serde_json::{json, Value};

use crate::{ApiError, IngestState};

pub(crate) fn router() -> Router<IngestState> {
    Router::new()
        .route("/api/v1/alerts/alertmanager", ingest(EventKind::Alert))
        .route("/api/v1/events/deploy", ingest(EventKind::Deploy))
        .route("/api/v1/events/gate", ingest(EventKind::Gate))
        .route("/api/v1/events/logs", ingest(EventKind::Log))
        // Loki's push path, so Promtail, Alloy or Vector can be pointed at Firebreak (JSON bodies).
        .route("/loki/api/v1/push", ingest(EventKind::Log))
}

/// `POST` of one kind of event.
fn ingest(kind: EventKind) -> MethodRouter<IngestState> {
    post(
        move |State(state): State<IngestState>,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| async move {
            let outcome = accept(&state, kind, &headers, body).await;
            if let Err(e) = &outcome {
                refused(&state, kind, e);
            }
            outcome
        },
    )
}

/// Counts a request refused for what it sent (not for what was down here).
fn refused(state: &IngestState, kind: EventKind, e: &ApiError) {
    if !matches!(
        e,
        ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::Backlogged { .. }
    ) {
        state.metrics.rejected(kind);
        tracing::debug!(kind = kind.as_str(), error = %e, "refused an ingest request");
    }
}

/// Bounds on the bulk lane's backlog: above either, ingest answers 503 with
/// `Retry-After` to senders whose events no playbook acts on (Alertmanager
/// retries), so the backlog stays bounded; urgent events are always taken.
#[derive(Debug, Clone)]
pub struct Backpressure {
    /// Messages waiting on the bulk lane (a webhook is one message, or part
    /// of one when small ones are packed).
    pub max_depth: u64,
    /// How long the oldest bulk message may have waited.
    pub max_age: std::time::Duration,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            max_depth: 20_000,
            max_age: std::time::Duration::from_secs(30),
        }
    }
}

/// What ingest needs beyond the bus: the packer of small webhooks and the
/// backlog bounds.
pub struct Ingest {
    pub packer: crate::packer::Packer,
    pub backpressure: Backpressure,
    /// The largest queue message the bus takes: a body that would need a
    /// larger one is refused (400), never answered "retry" (which could
    /// never succeed).
    pub max_message_bytes: usize,
}

/// The caller was authenticated with the `ingest` scope before this runs.
async fn accept(
    state: &IngestState,
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
    let bus = &state.bus;
    let count = decoded.len();
    let urgent = urgent_alerts(state, &decoded);
    // Small bodies of alerts no playbook acts on are packed with others into
    // one queue message (always far below the bus's message limit).
    let ingest = &state.ingest;
    let packed = matches!(&decoded, Decoded::Alerts(a) if !a.is_empty())
        && urgent.is_none()
        && body.len() <= crate::packer::SMALL_BODY
        && body.first() == Some(&b'{');
    if packed {
        check_backlog(bus.as_ref(), &ingest.backpressure, kind, state)?;
        let service = alert_service(&decoded).map(str::to_string);
        ingest.packer.publish(body, service).await?;
    } else {
        let messages = messages_for(&decoded, body, urgent.as_deref())?;
        let max_message = ingest.max_message_bytes;
        if let Some(big) = messages.iter().find(|m| m.body.len() > max_message) {
            return Err(ApiError::BadRequest {
                field: None,
                message: format!(
                    "this body becomes a queue message of {} bytes, over the bus's limit of {max_message} (amqp.max_message_bytes): split it into smaller requests",
                    big.body.len()
                ),
            });
        }
        // Urgent events are always taken; the rest only while the backlog is bounded.
        if messages.iter().all(|m| m.lane == Lane::Bulk) {
            check_backlog(bus.as_ref(), &ingest.backpressure, kind, state)?;
        }
        if !messages.is_empty() {
            bus.publish(&messages).await?;
        }
    }
    state.metrics.published();
    state.metrics.received(kind, count as u64);
    let mut answer = json!({"status": "accepted", "kind": kind.as_str(), "events": count});
    match &decoded {
        Decoded::Deploys(d) => answer["ids"] = json!(d.iter().map(|d| &d.id).collect::<Vec<_>>()),
        Decoded::Gates(g) => answer["ids"] = json!(g.iter().map(|g| &g.id).collect::<Vec<_>>()),
        Decoded::Alerts(_) | Decoded::Logs(_) => {}
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

fn check_backlog(
    bus: &dyn firebreak_bus::Bus,
    limits: &Backpressure,
    kind: EventKind,
    state: &IngestState,
) -> Result<(), ApiError> {
    let backlog = bus.backlog(Lane::Bulk);
    let age = backlog.oldest_seconds.unwrap_or(0.0);
    let max_age = limits.max_age.as_secs_f64();
    if backlog.depth <= limits.max_depth && age <= max_age {
        return Ok(());
    }
    state.metrics.throttled(kind);
    // Ask for a wait of about what the backlog is over its bound, 1 to 30 s.
    let over = if age > max_age { age - max_age } else { 1.0 };
    let retry_after = over.clamp(1.0, 30.0).ceil() as u64;
    Err(ApiError::Backlogged {
        retry_after,
        message: format!(
            "Firebreak is behind: {} messages wait to be processed (limit {}), the oldest for {:.0} s (limit {:.0} s); this was not accepted, send it again after {retry_after} s (events a playbook acts on are always accepted)",
            backlog.depth, limits.max_depth, age, max_age
        ),
    })
}

/// The service every alert of a webhook names, if they all name one.
fn alert_service(decoded: &Decoded) -> Option<&str> {
    let Decoded::Alerts(alerts) = decoded else {
        return None;
    };
    let first = alerts.first()?.labels.get("service")?;
    alerts
        .iter()
        .all(|a| a.labels.get("service") == Some(first))
        .then_some(first.as_str())
}

/// Which alerts a loaded playbook's trigger names (by index), if any.
fn urgent_alerts(state: &IngestState, decoded: &Decoded) -> Option<Vec<usize>> {
    let Decoded::Alerts(alerts) = decoded else {
        return None;
    };
    state.playbooks.as_ref()?.current().urgent_alerts(alerts)
}

/// An Alertmanager webhook (version 4) of just these alerts: what travels on
/// the urgent lane when only some alerts of a body are urgent. The engine
/// decodes it to the same events (same ids) as the whole body, which follows
/// on the bulk lane and finds them already processed.
fn webhook_of(alerts: &[&AlertEvent]) -> Result<Bytes, ApiError> {
    let body = json!({
        "version": "4", "status": "firing", "receiver": "", "groupKey": "",
        "truncatedAlerts": alerts.first().map(|a| a.truncated_alerts).unwrap_or(0),
        "alerts": alerts.iter().map(|a| json!({
            "status": a.status.as_str(), "labels": a.labels, "annotations": a.annotations,
            "startsAt": a.starts_at, "endsAt": a.ends_at.map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "generatorURL": a.generator_url, "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("encoding urgent alerts: {e}")))
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
/// re-encoding on the hot path) on the bulk lane, and the alerts a playbook
/// names also on the urgent lane (or the whole body there when all are);
/// deploys and gate verdicts always go urgent (playbooks decide with them);
/// logs go bulk. Other kinds travel normalized, ids and timestamps filled in,
/// one message per service (per stream for logs).
fn messages_for(
    decoded: &Decoded,
    raw: Bytes,
    urgent: Option<&[usize]>,
) -> Result<Vec<OutMessage>, ApiError> {
    let encode = |v: &dyn erased::Encode| {
        v.encode()
            .map_err(|e| ApiError::Internal(format!("encoding an event: {e}")))
    };
    Ok(match decoded {
        Decoded::Alerts(alerts) if alerts.is_empty() => Vec::new(),
        Decoded::Alerts(alerts) => {
            let key = routing_key(EventKind::Alert, alert_service(decoded).unwrap_or("_"));
            match urgent {
                Some(u) if u.len() == alerts.len() => vec![OutMessage {
                    routing_key: key,
                    body: raw,
                    lane: Lane::Urgent,
                }],
                Some(u) => {
                    let picked: Vec<&AlertEvent> = u.iter().map(|i| &alerts[*i]).collect();
                    let service = picked[0]
                        .labels
                        .get("service")
                        .filter(|s| picked.iter().all(|a| a.labels.get("service") == Some(*s)))
                        .map(String::as_str)
                        .unwrap_or("_");
                    vec![
                        OutMessage {
                            routing_key: routing_key(EventKind::Alert, service),
                            body: webhook_of(&picked)?,
                            lane: Lane::Urgent,
                        },
                        OutMessage {
                            routing_key: key,
                            body: raw,
                            lane: Lane::Bulk,
                        },
                    ]
                }
                None => vec![OutMessage {
                    routing_key: key,
                    body: raw,
                    lane: Lane::Bulk,
                }],
            }
        }
        Decoded::Deploys(deploys) => per_service(EventKind::Deploy, deploys, |d| &d.service)?,
        Decoded::Gates(gates) => per_service(EventKind::Gate, gates, |g| &g.service)?,
        Decoded::Logs(lines) => {
            // One message per stream: its labels once, then its lines (a
            // stream's lines share one label set; copying it into every line
            // would multiply the body by the number of lines).
            type Stream<'a> = (&'a str, Option<&'a str>, *const BTreeMap<String, String>);
            let mut streams: BTreeMap<Stream<'_>, Vec<&LogLine>> = BTreeMap::new();
            for l in lines {
                streams
                    .entry((
                        l.service.as_str(),
                        l.environment.as_deref(),
                        Arc::as_ptr(&l.labels),
                    ))
                    .or_default()
                    .push(l);
            }
            let mut out = Vec::with_capacity(streams.len());
            for ((service, environment, _), lines) in streams {
                let body = json!({
                    "service": service,
                    "environment": environment,
                    "labels": &*lines[0].labels,
                    "lines": lines.iter().map(|l| {
                        let mut line = json!({"id": l.id, "at": l.at, "level": l.level, "message": l.message});
                        if !l.metadata.is_empty() {
                            line["labels"] = json!(l.metadata);
                        }
                        line
                    }).collect::<Vec<_>>(),
                });
                out.push(OutMessage {
                    routing_key: routing_key(EventKind::Log, service),
                    body: encode(&body)?,
                    lane: Lane::Bulk,
                });
            }
            out
        }
    })
}

/// `<kind>.<service>`; the service part is cut to keep the key within AMQP's
/// 255-byte limit.
/// One urgent message per service, its events in the order they came.
fn per_service<T: serde::Serialize>(
    kind: EventKind,
    events: &[T],
    service: impl Fn(&T) -> &String,
) -> Result<Vec<OutMessage>, ApiError> {
    let mut by_service: BTreeMap<&str, Vec<&T>> = BTreeMap::new();
    for e in events {
        by_service.entry(service(e).as_str()).or_default().push(e);
    }
    by_service
        .into_iter()
        .map(|(service, events)| {
            Ok(OutMessage {
                routing_key: routing_key(kind, service),
                body: serde_json::to_vec(&events)
                    .map(Bytes::from)
                    .map_err(|e| ApiError::Internal(format!("encoding an event: {e}")))?,
                lane: Lane::Urgent,
            })
        })
        .collect()
}

pub(crate) fn routing_key(kind: EventKind, service: &str) -> String {
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
