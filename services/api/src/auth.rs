//! Optional bearer tokens, one per source. Tokens are compared in constant time
//! and never printed.

use axum::http::{header, HeaderMap};

pub use firebreak_domain::secret::Secret;

use crate::ApiError;

/// Which token each source must present; `None` means open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub alertmanager: Option<Secret>,
    pub deploy: Option<Secret>,
    pub gate: Option<Secret>,
    pub logs: Option<Secret>,
    pub api: Option<Secret>,
    /// Applications reading kill switches over OFREP.
    pub ofrep: Option<Secret>,
}

pub(crate) fn check(expected: Option<&Secret>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(presented.trim().as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        let t = Tokens {
            api: Some(s),
            ..Tokens::default()
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn bearer_checks() {
        let secret = Secret::new("t0k");
        let mut h = HeaderMap::new();
        assert!(matches!(
            check(Some(&secret), &h),
            Err(ApiError::Unauthorized)
        ));
        h.insert(
            header::AUTHORIZATION,
            "Bearer nope".parse().expect("header"),
        );
        assert!(matches!(check(Some(&secret), &h), Err(ApiError::Forbidden)));
        h.insert(header::AUTHORIZATION, "Bearer t0k".parse().expect("header"));
        assert!(check(Some(&secret), &h).is_ok());
        assert!(check(None, &HeaderMap::new()).is_ok());
    }
}
