//! The one place errors become HTTP responses. 4xx bodies say what is wrong and
//! how to fix it; 5xx bodies are opaque, the details go to the log.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use firebreak_bus::BusError;
use firebreak_domain::WireError;
use firebreak_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidBody(WireError),
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("unsupported content type")]
    UnsupportedMediaType(String),
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Slow down: try again after `retry_after` seconds.
    #[error("too many requests: {message}")]
    SlowDown { retry_after: u64, message: String },
    #[error("not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition required: {0}")]
    PreconditionRequired(String),
    #[error("cannot process: {0}")]
    Unprocessable(String),
    #[error("upstream refused: {0}")]
    BadGateway(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The bulk backlog is over its bound: send again later.
    #[error("backlogged: {message}")]
    Backlogged { retry_after: u64, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("no such resource".into()),
            e if e.is_transient() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<firebreak_remediation::CommandError> for ApiError {
    fn from(e: firebreak_remediation::CommandError) -> Self {
        use firebreak_remediation::CommandError as C;
        match e {
            C::BadRequest { field, message } => ApiError::BadRequest { field, message },
            C::NotFound(m) => ApiError::NotFound(m),
            C::Forbidden(m) => ApiError::Forbidden(m),
            C::Conflict(m) => ApiError::Conflict(m),
            C::Provider(m) => ApiError::BadGateway(m),
            C::Store(e) => e.into(),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(m) | BusError::Refused(m) => ApiError::Unavailable(m),
            BusError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The one header some answers add (a challenge, when to retry).
        let mut extra: Option<(HeaderName, HeaderValue)> = None;
        let (status, body) = match &self {
            ApiError::InvalidBody(e) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_body", "message": e.to_string(), "field": e.path}),
            ),
            ApiError::BadRequest { field, message } => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message, "field": field}),
            ),
            ApiError::UnsupportedMediaType(got) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "unsupported_media_type",
                       "message": format!("expected Content-Type: application/json, got {got:?}")}),
            ),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large",
                       "message": format!("the body is larger than the limit of {limit} bytes; split it or raise ingest.max_body_bytes")}),
            ),
            ApiError::Unauthorized(why) => {
                let challenge = HeaderValue::from_static("Bearer realm=\"firebreak\"");
                extra = Some((header::WWW_AUTHENTICATE, challenge));
                (
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthorized", "message": why}),
                )
            }
            ApiError::Forbidden(why) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "message": why}),
            ),
            ApiError::SlowDown {
                retry_after,
                message,
            } => {
                extra = Some(retry(*retry_after));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "too_many_requests", "message": message, "retry_after": retry_after}),
                )
            }
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": what}),
            ),
            ApiError::Conflict(what) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": what}),
            ),
            ApiError::PreconditionRequired(what) => (
                StatusCode::PRECONDITION_REQUIRED,
                json!({"error": "precondition_required", "message": what}),
            ),
            ApiError::Unprocessable(what) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "unprocessable", "message": what}),
            ),
            ApiError::BadGateway(what) => (
                StatusCode::BAD_GATEWAY,
                json!({"error": "upstream_failed", "message": what}),
            ),
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "answering 503");
                extra = Some(retry(1));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "unavailable", "message": "temporarily unable to accept this; retry"}),
                )
            }
            ApiError::Backlogged {
                retry_after,
                message,
            } => {
                extra = Some(retry(*retry_after));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "backlogged", "message": message, "retry_after": retry_after}),
                )
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "message": "internal error"}),
                )
            }
        };
        let mut response = (status, Json(body)).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// `Retry-After: <seconds>`.
fn retry(seconds: u64) -> (HeaderName, HeaderValue) {
    (header::RETRY_AFTER, HeaderValue::from(seconds))
}

/// A 400 that names the field at fault.
pub(crate) fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// A JSON body read strictly; a 400 names the path of the field at fault.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| ApiError::BadRequest {
        field: Some(e.path().to_string()).filter(|p| p != "."),
        message: e.inner().to_string(),
    })
}

/// A JSON body, or the type's default when the body is empty.
pub(crate) fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body(bytes)
}

/// An id from the path: a positive whole number, else a 400 saying it is not
/// `what` id ("an incident", "a rollout").
pub(crate) fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    positive_id(raw).ok_or_else(|| bad("id", format!("{raw:?} is not {what} id")))
}

/// A row id: a positive whole number.
pub(crate) fn positive_id(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok().filter(|id| *id > 0)
}

/// Query strings decode like bodies: unknown parameters and bad values are
/// named in a 400, never ignored.
pub(crate) fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(t)| t)
        .map_err(|e| ApiError::BadRequest {
            field: None,
            message: e.body_text(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_one_header() {
        let bearer = HeaderValue::from_static("Bearer realm=\"firebreak\"");
        let cases = [
            (
                ApiError::Unauthorized("no token".into()),
                header::WWW_AUTHENTICATE,
                StatusCode::UNAUTHORIZED,
                Some(bearer),
            ),
            (
                ApiError::SlowDown {
                    retry_after: 7,
                    message: "too many sign-ins".into(),
                },
                header::RETRY_AFTER,
                StatusCode::TOO_MANY_REQUESTS,
                Some(HeaderValue::from(7u64)),
            ),
            (
                ApiError::Backlogged {
                    retry_after: 30,
                    message: "the bulk lane is full".into(),
                },
                header::RETRY_AFTER,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(HeaderValue::from(30u64)),
            ),
            (
                ApiError::Unavailable("bus down".into()),
                header::RETRY_AFTER,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(HeaderValue::from(1u64)),
            ),
            (
                ApiError::NotFound("no incident 9".into()),
                header::RETRY_AFTER,
                StatusCode::NOT_FOUND,
                None,
            ),
        ];
        for (error, name, status, value) in cases {
            let what = format!("{error:?}");
            let r = error.into_response();
            assert_eq!(
                (r.status(), r.headers().get(name).cloned()),
                (status, value),
                "{what}"
            );
        }
    }
}
