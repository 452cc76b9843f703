//! Identities over HTTP: who am I, sign in and out, machine tokens and local
//! users (admins), and notes on an incident's timeline (editors).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use firebreak_domain::access::{Identity, Role, Scope};
use firebreak_domain::duration::Dur;
use firebreak_store::{NewAudit, NewSession, NewUser, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{self, SESSION_COOKIE};
use crate::call::Call;
use crate::error::{bad, json_body};
use crate::{ApiError, AppState};
use firebreak_store::credentials::{self, sha256_hex};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", delete(disable_user))
        .route("/api/v1/incidents/{id}/notes", post(add_note))
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
    {
        return Err(bad(
            field,
            format!("{name:?} is not a name: use 1-100 letters, digits, '.', '-', '_' or '@'"),
        ));
    }
    Ok(())
}

async fn me(Extension(identity): Extension<Identity>) -> Json<Value> {
    let scopes: Vec<&str> = Scope::ALL
        .into_iter()
        .filter(|s| identity.allows(*s))
        .map(Scope::as_str)
        .collect();
    Json(json!({
        "id": identity.id,
        "via": identity.via,
        "role": identity.role,
        "scopes": scopes,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    peer: auth::Peer,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: LoginBody = json_body(&bytes)?;
    let address = state.auth.client_address(&headers, peer.0);
    let user = state.auth.login(&b.username, &b.password, address).await?;
    let (cookie, csrf, expires) = start_session(&state, &user, &headers).await?;
    let mut r = Json(json!({
        "id": firebreak_domain::access::user_principal(&user.username),
        "role": user.role,
        "csrf_token": csrf,
        "expires_at": expires,
    }))
    .into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(r)
}

/// Opens a session for a signed-in user: the cookie to set, its CSRF token
/// and when it ends. Audited.
pub(crate) async fn start_session(
    state: &AppState,
    user: &firebreak_store::UserRow,
    headers: &HeaderMap,
) -> Result<(axum::http::HeaderValue, String, chrono::DateTime<Utc>), ApiError> {
    let store = state.store.clone();
    let value = credentials::random_hex(2);
    let csrf = credentials::random_hex(1);
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(state.auth.config().session_ttl)
        .unwrap_or_else(|_| chrono::Duration::hours(12));
    store
        .create_session(&NewSession {
            id_hash: &sha256_hex(&value),
            username: &user.username,
            csrf_token: &csrf,
            at: now,
            expires_at: now + ttl,
        })
        .await?;
    store
        .record(
            &[NewAudit::by(
                firebreak_domain::access::user_principal(&user.username),
                "signed_in",
                json!({"role": user.role}),
            )],
            &[],
        )
        .await?;
    Ok((
        state.auth.session_cookie(Some(&value), headers),
        csrf,
        now + ttl,
    ))
}

/// Ends the session a request's cookie names (if any); the cookie that clears it.
pub(crate) async fn end_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<axum::http::HeaderValue, ApiError> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string());
    if let Some(v) = cookie {
        state.store.clone().delete_session(&sha256_hex(&v)).await?;
    }
    Ok(state.auth.session_cookie(None, headers))
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let clear = end_session(&state, &headers).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear);
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    scopes: Vec<String>,
    /// How long it is valid, e.g. "90d"; none: until revoked.
    expires_in: Option<String>,
}

async fn create_token(Call { state, identity }: Call, bytes: Bytes) -> Result<Response, ApiError> {
    let b: TokenBody = json_body(&bytes)?;
    check_name("name", &b.name)?;
    credentials::check_token_name(&b.name).map_err(|m| bad("name", m))?;
    if b.scopes.is_empty() {
        return Err(bad(
            "scopes",
            "give at least one of ingest, flags:read, read, edit, operate, admin",
        ));
    }
    let scopes = b
        .scopes
        .iter()
        .map(|s| Scope::parse(s).map_err(|m| bad("scopes", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = match &b.expires_in {
        None => None,
        Some(d) => {
            let d = Dur::parse(d).map_err(|m| bad("expires_in", m))?;
            if d.is_zero() {
                return Err(bad("expires_in", "must be more than 0s"));
            }
            Some(Utc::now() + d.0)
        }
    };
    let (shown, new) = credentials::new_token(&b.name, scopes, &identity.id, expires_at);
    let audit = NewAudit::by(
        identity.id.clone(),
        "token_created",
        json!({"token": new.id, "name": new.name, "scopes": new.scopes, "expires_at": new.expires_at}),
    );
    let row = match state.store.clone().create_token(&new, &audit).await {
        Ok(r) => r,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(format!(
                "a token named {:?} exists: revoke it first or choose another name",
                b.name
            )))
        }
        Err(e) => return Err(e.into()),
    };
    state.auth.credentials_exist();
    let mut v = json!(row);
    v["token"] = json!(shown);
    v["note"] = json!("this is the only time the token is shown; store it now");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_tokens(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"tokens": state.store.clone().list_tokens().await?}),
    ))
}

async fn revoke_token(
    Call { state, identity }: Call,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let audit = NewAudit::by(identity.id.clone(), "token_revoked", json!({"token": id}));
    if state.store.clone().revoke_token(&id, &audit).await? {
        state.auth.forget(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no active token {id:?}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    username: String,
    password: String,
    role: String,
}

async fn create_user(Call { state, identity }: Call, bytes: Bytes) -> Result<Response, ApiError> {
    let b: UserBody = json_body(&bytes)?;
    check_name("username", &b.username)?;
    let role = Role::parse(&b.role).map_err(|m| bad("role", m))?;
    let (password, username) = (b.password.clone(), b.username.clone());
    let hash = crate::offload::hash(move || {
        credentials::check_password(&password, &username).map_err(|m| bad("password", m))?;
        credentials::hash_password(&password).map_err(ApiError::Internal)
    })
    .await??;
    let audit = NewAudit::by(
        identity.id.clone(),
        "user_created",
        json!({"username": b.username, "role": role}),
    );
    match state
        .store
        .clone()
        .create_user(
            &NewUser {
                username: &b.username,
                password_hash: &hash,
                role,
            },
            &audit,
        )
        .await
    {
        Ok(u) => {
            state.auth.credentials_exist();
            Ok((StatusCode::CREATED, Json(json!(u))).into_response())
        }
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(format!(
            "a user named {:?} exists",
            b.username
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn list_users(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"users": state.store.clone().list_users().await?}),
    ))
}

async fn disable_user(
    Call { state, identity }: Call,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let audit = NewAudit::by(
        identity.id.clone(),
        "user_disabled",
        json!({"username": name}),
    );
    if state.store.clone().disable_user(&name, &audit).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no enabled user {name:?}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    text: String,
}

/// A person's note on an incident's timeline, attributed to who authenticated.
async fn add_note(
    Call { state, identity }: Call,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("id", format!("{id:?} is not an incident id")))?;
    let b: NoteBody = json_body(&bytes)?;
    let entry = state
        .remediation
        .clone()
        .add_note(&identity, id, &b.text)
        .await?;
    let now = entry.at;
    Ok((
        StatusCode::CREATED,
        Json(json!({"incident_id": id, "at": now, "kind": entry.kind, "source": entry.source, "summary": entry.summary})),
    )
        .into_response())
}
