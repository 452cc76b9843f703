//! People's rows: machine tokens, local users, browser sessions.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A machine token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRow {
    /// The public part of `fbk_<id>_<secret>`.
    pub id: String,
    pub name: String,
    pub scopes: Vec<firebreak_domain::access::Scope>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A local user about to be stored (the password only as its hash).
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: firebreak_domain::access::Role,
}

/// A token about to be stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
    pub scopes: Vec<firebreak_domain::access::Scope>,
    pub created_by: String,
    pub at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A local user as stored (never the password hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    pub username: String,
    pub role: firebreak_domain::access::Role,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A browser session, found by the hash of its cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub user: UserRow,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}
