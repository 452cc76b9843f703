//! What every authenticated REST handler starts from.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use firebreak_domain::access::Identity;

use crate::{ApiError, AppState};

/// An authenticated call: the service's state and who is calling. The auth
/// middleware has put the identity on the request before any handler runs;
/// a route without it is a wiring mistake, answered 500.
pub(crate) struct Call {
    pub state: AppState,
    pub identity: Identity,
}

impl FromRequestParts<AppState> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Call, ApiError> {
        let identity = parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
            ApiError::Internal("an authenticated route ran without an identity".into())
        })?;
        Ok(Call {
            state: state.clone(),
            identity,
        })
    }
}
