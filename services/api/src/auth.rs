//! Authentication and authorization, in one place. Every request passes the
//! middleware here: its route's [`Access`] comes from [`POLICY`]; the
//! identity comes from a bearer token (machine tokens, `fbk_…`, stored as a
//! hash; or the configured static tokens), a browser session cookie, a
//! trusted reverse proxy's user header, or — only with no authentication
//! configured and only from loopback — the local operator. A request whose
//! identity lacks the scope is refused before any handler runs.
//!
//! Browser-borne requests (session, proxy, local) that change state must come
//! from Firebreak's own origin, and a session's must carry its CSRF token;
//! every state change must be JSON (or have no body). A cross-site form can
//! do nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use firebreak_domain::access::{Identity, Role, Scope, Via};
use firebreak_store::credentials::{
    constant_time_eq, random_hex, sha256, sha256_hex, verify_password, MAX_PASSWORD_BYTES,
    MAX_USERNAME_BYTES, TOKEN_PREFIX,
};
use firebreak_store::{Store, TokenRow};
use sha2::Sha256;

pub use firebreak_domain::secret::Secret;

use crate::ApiError;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (liveness, readiness, the login itself).
    Public,
    /// Any authenticated identity.
    Authenticated,
    /// Slack's signature, checked by the handler before it reads the body.
    Slack,
    /// A tracker's webhook signature (GitHub, Jira), checked by the handler
    /// before it reads the body.
    Signed,
    Scope(Scope),
}

use Access::{Authenticated, Public, Signed, Slack};

const fn s(scope: Scope) -> Access {
    Access::Scope(scope)
}

/// Every route and what it needs. A route not listed needs `admin`.
pub const POLICY: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", s(Scope::Read)),
    ("GET", "/metrics/insights", s(Scope::Read)),
    ("GET", "/api/v1/insights", s(Scope::Read)),
    ("GET", "/api/v1/dead-letters", s(Scope::Read)),
    ("POST", "/api/v1/dead-letters/replay", s(Scope::Operate)),
    (
        "POST",
        "/api/v1/incidents/{id}/changes/{deploy}/cause",
        s(Scope::Edit),
    ),
    ("POST", "/api/v1/alerts/alertmanager", s(Scope::Ingest)),
    ("POST", "/api/v1/events/deploy", s(Scope::Ingest)),
    ("POST", "/api/v1/events/gate", s(Scope::Ingest)),
    ("POST", "/api/v1/events/logs", s(Scope::Ingest)),
    ("POST", "/loki/api/v1/push", s(Scope::Ingest)),
    ("GET", "/api/v1/incidents", s(Scope::Read)),
    ("POST", "/api/v1/incidents", s(Scope::Edit)),
    ("GET", "/api/v1/incidents/{id}", s(Scope::Read)),
    // Resolving by the stage `resolved` also needs operate (checked in the handler).
    ("PATCH", "/api/v1/incidents/{id}", s(Scope::Edit)),
    ("POST", "/api/v1/incidents/{id}/acknowledge", s(Scope::Edit)),
    ("GET", "/api/v1/incidents/{id}/timeline", s(Scope::Read)),
    ("POST", "/api/v1/incidents/{id}/notes", s(Scope::Edit)),
    ("GET", "/api/v1/incidents/{id}/postmortem", s(Scope::Read)),
    ("PUT", "/api/v1/incidents/{id}/postmortem", s(Scope::Edit)),
    (
        "POST",
        "/api/v1/incidents/{id}/postmortem/regenerate",
        s(Scope::Edit),
    ),
    (
        "GET",
        "/api/v1/incidents/{id}/postmortem/revisions",
        s(Scope::Read),
    ),
    (
        "GET",
        "/api/v1/incidents/{id}/postmortem/revisions/{rev}",
        s(Scope::Read),
    ),
    (
        "GET",
        "/api/v1/incidents/{id}/postmortem.md",
        s(Scope::Read),
    ),
    (
        "GET",
        "/api/v1/incidents/{id}/postmortem.html",
        s(Scope::Read),
    ),
    ("POST", "/api/v1/postmortems/lint", s(Scope::Read)),
    ("GET", "/api/v1/incidents/{id}/action-items", s(Scope::Read)),
    (
        "POST",
        "/api/v1/incidents/{id}/action-items",
        s(Scope::Edit),
    ),
    ("PATCH", "/api/v1/action-items/{id}", s(Scope::Edit)),
    ("POST", "/api/v1/action-items/{id}/export", s(Scope::Edit)),
    ("POST", "/api/v1/trackers/github/webhook", Signed),
    ("POST", "/api/v1/trackers/jira/webhook", Signed),
    ("GET", "/api/v1/playbooks", s(Scope::Read)),
    ("POST", "/api/v1/playbooks/reload", s(Scope::Admin)),
    ("GET", "/api/v1/actions", s(Scope::Read)),
    ("POST", "/api/v1/actions", s(Scope::Operate)),
    ("GET", "/api/v1/actions/{id}", s(Scope::Read)),
    ("POST", "/api/v1/actions/{id}/approve", s(Scope::Operate)),
    ("POST", "/api/v1/actions/{id}/deny", s(Scope::Operate)),
    ("POST", "/api/v1/actions/{id}/revert", s(Scope::Operate)),
    ("GET", "/api/v1/automation", s(Scope::Read)),
    ("POST", "/api/v1/automation/pause", s(Scope::Operate)),
    ("POST", "/api/v1/automation/resume", s(Scope::Operate)),
    ("GET", "/api/v1/audit", s(Scope::Read)),
    ("GET", "/api/v1/flags", s(Scope::Read)),
    ("POST", "/api/v1/flags", s(Scope::Operate)),
    ("GET", "/api/v1/flags/{key}", s(Scope::Read)),
    ("PUT", "/api/v1/flags/{key}", s(Scope::Operate)),
    ("DELETE", "/api/v1/flags/{key}", s(Scope::Operate)),
    ("POST", "/api/v1/flags/import", s(Scope::Operate)),
    ("GET", "/api/v1/flags/export", s(Scope::Read)),
    ("GET", "/api/v1/flags/stale", s(Scope::Read)),
    ("GET", "/api/v1/rollouts", s(Scope::Read)),
    ("POST", "/api/v1/rollouts", s(Scope::Operate)),
    ("GET", "/api/v1/rollouts/{id}", s(Scope::Read)),
    ("POST", "/api/v1/rollouts/{id}/{command}", s(Scope::Operate)),
    ("POST", "/api/v1/gates/flagger/{hook}", s(Scope::Read)),
    ("GET", "/api/v1/gates/argo/{service}", s(Scope::Read)),
    ("GET", "/api/v1/services/{service}/timeline", s(Scope::Read)),
    ("POST", "/ofrep/v1/evaluate/flags", s(Scope::FlagsRead)),
    (
        "POST",
        "/ofrep/v1/evaluate/flags/{key}",
        s(Scope::FlagsRead),
    ),
    ("GET", "/ofrep/v1/configuration", s(Scope::FlagsRead)),
    ("POST", "/slack/commands", Slack),
    ("POST", "/slack/interactions", Slack),
    ("GET", "/api/v1/tokens", s(Scope::Admin)),
    ("POST", "/api/v1/tokens", s(Scope::Admin)),
    ("DELETE", "/api/v1/tokens/{id}", s(Scope::Admin)),
    ("GET", "/api/v1/users", s(Scope::Admin)),
    ("POST", "/api/v1/users", s(Scope::Admin)),
    ("DELETE", "/api/v1/users/{name}", s(Scope::Admin)),
    ("POST", "/api/v1/postmortems/preview", s(Scope::Read)),
    (
        "POST",
        "/api/v1/incidents/{id}/postmortem/presence",
        s(Scope::Read),
    ),
    // Pages.
    ("GET", "/", Public),
    ("GET", "/static/{file}", Public),
    ("GET", "/login", Public),
    ("GET", "/auth/oidc/login", Public),
    ("GET", "/auth/oidc/callback", Public),
    ("POST", "/login", Public),
    ("POST", "/logout", Authenticated),
    ("GET", "/incidents", s(Scope::Read)),
    ("GET", "/incidents/{id}", s(Scope::Read)),
    ("POST", "/incidents/{id}/notes", s(Scope::Edit)),
    ("POST", "/incidents/{id}/response", s(Scope::Edit)),
    ("POST", "/incidents/{id}/action-items", s(Scope::Edit)),
    (
        "POST",
        "/incidents/{id}/action-items/{item}",
        s(Scope::Edit),
    ),
    (
        "POST",
        "/incidents/{id}/changes/{deploy}/cause",
        s(Scope::Edit),
    ),
    ("POST", "/actions/{id}/approve", s(Scope::Operate)),
    ("POST", "/actions/{id}/deny", s(Scope::Operate)),
    ("POST", "/actions/{id}/revert", s(Scope::Operate)),
    ("GET", "/incidents/{id}/postmortem", s(Scope::Read)),
    ("POST", "/incidents/{id}/postmortem", s(Scope::Edit)),
    (
        "POST",
        "/incidents/{id}/postmortem/regenerate",
        s(Scope::Edit),
    ),
    (
        "GET",
        "/incidents/{id}/postmortem/revisions/{rev}",
        s(Scope::Read),
    ),
    ("GET", "/flags", s(Scope::Read)),
    ("GET", "/flags/{key}", s(Scope::Read)),
    ("POST", "/flags/{key}", s(Scope::Operate)),
    ("GET", "/playbooks", s(Scope::Read)),
    ("POST", "/playbooks/test", s(Scope::Read)),
    ("GET", "/audit", s(Scope::Read)),
    ("GET", "/insights", s(Scope::Read)),
    ("POST", "/api/v1/login", Public),
    ("POST", "/api/v1/logout", Authenticated),
    ("GET", "/api/v1/me", Authenticated),
];

/// What `method` on `route` needs (unknown routes: admin).
pub fn access(method: &Method, route: &str) -> Access {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    POLICY
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, a)| *a)
        .unwrap_or(Access::Scope(Scope::Admin))
}

/// A token that lives in the configuration, not the store: the bootstrap
/// admin token, and the older per-source tokens.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub name: String,
    pub secret: Secret,
    pub scopes: Vec<Scope>,
}

/// A network a trusted proxy connects from: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// `10.0.0.0/8`, `127.0.0.1`, `::1`, `fd00::/8`.
    pub fn parse(s: &str) -> Result<Net, String> {
        let bad = || format!("{s:?} is not an address or network like 10.0.0.0/8 or 127.0.0.1");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A reverse proxy (oauth2-proxy, Pomerium) that authenticates people and
/// names them in headers; trusted only from its own addresses.
#[derive(Debug, Clone)]
pub struct ProxyAuth {
    pub trusted: Vec<Net>,
    pub user_header: String,
    pub email_header: String,
    pub groups_header: String,
    /// Group (as the proxy names it) -> role; the highest applies.
    pub groups: std::collections::BTreeMap<String, Role>,
    /// The role of a proxied user in none of `groups`; `None`: refused.
    pub default_role: Option<Role>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// `Secure` when the request came over TLS (`X-Forwarded-Proto: https`)
    /// or `public_url` is https.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub static_tokens: Vec<StaticToken>,
    pub proxy: Option<ProxyAuth>,
    pub session_ttl: Duration,
    pub cookie_secure: CookieSecure,
    /// Origins besides Firebreak's own from which browsers may change state.
    pub allowed_origins: Vec<String>,
    /// Firebreak's address as people reach it (its origin is allowed).
    pub public_url: Option<String>,
    /// Serve without authentication on any address (a gateway in front
    /// authenticates): every request acts as the local operator.
    pub insecure_no_auth: bool,
    /// Sign-in through an OpenID provider.
    pub oidc: Option<crate::oidc::OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            static_tokens: Vec::new(),
            proxy: None,
            session_ttl: Duration::from_secs(12 * 3600),
            cookie_secure: CookieSecure::Auto,
            allowed_origins: Vec::new(),
            public_url: None,
            insecure_no_auth: false,
            oidc: None,
        }
    }
}

pub const SESSION_COOKIE: &str = "firebreak_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a verified token is trusted without asking the store again (a
/// revocation in another process takes effect within this).
const TOKEN_CACHE: Duration = Duration::from_secs(30);

struct Cached {
    identity: Identity,
    token_id: String,
    token_name: String,
    until: Instant,
}

/// The authenticator of one process.
pub struct Auth {
    config: AuthConfig,
    store: Option<Arc<dyn Store>>,
    /// Whether anyone can authenticate (a configured token or proxy, or a
    /// token or user in the store). When not, only loopback is served.
    required: AtomicBool,
    /// When the store was last asked whether credentials exist now (another
    /// process, `firebreak users add`, may have made the first).
    checked: Mutex<Option<Instant>>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    touched: Mutex<HashMap<String, Instant>>,
    sign_ins: crate::signin::Guard,
    /// Derives the CSRF token of page forms for identities without a session
    /// (proxy, local); shared by every process through the store.
    page_secret: std::sync::RwLock<String>,
    /// Sign-in through an OpenID provider, when configured.
    oidc: Option<Arc<crate::oidc::Oidc>>,
}

/// Who a stored token acts as: a token a person created acts as that person
/// (`user:<name>`, within the token's scopes), so four-eyes and the audit
/// trail see one principal whether they sign in or use their token; a
/// token created by a machine or the CLI acts as itself (`token:<name>`).
fn token_identity(row: &TokenRow) -> Identity {
    let mut identity = Identity::token(&row.name, row.scopes.clone());
    if row.created_by.starts_with("user:") || row.created_by.starts_with("oidc:") {
        identity.id = row.created_by.clone();
    }
    identity
}

/// The address a request came from, as the connection shows it.
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Auth {
    /// An authenticator; a configured OpenID provider is not asked yet
    /// (see [`crate::oidc::Oidc::warm_up`]). `auth.oidc` is checked where
    /// the configuration is read ([`crate::oidc::Oidc::new`]); one that does
    /// not pass is left out here.
    pub fn new(config: AuthConfig, store: Option<Arc<dyn Store>>) -> Auth {
        let required =
            !config.static_tokens.is_empty() || config.proxy.is_some() || config.oidc.is_some();
        let oidc = config
            .oidc
            .clone()
            .and_then(|c| crate::oidc::Oidc::new(c).ok())
            .map(Arc::new);
        Auth {
            oidc,
            config,
            store,
            required: AtomicBool::new(required),
            checked: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            sign_ins: crate::signin::Guard::default(),
            page_secret: std::sync::RwLock::new(random_hex(2)),
        }
    }

    /// Uses the secret every process shares for page CSRF tokens.
    pub fn set_page_secret(&self, secret: &str) {
        if let Ok(mut s) = self.page_secret.write() {
            *s = secret.to_string();
        }
    }

    /// The CSRF token of page forms for an identity without a session.
    pub fn page_csrf(&self, identity: &str) -> String {
        self.mac(b"", identity.as_bytes())
    }

    /// The signature of an OpenID sign-in's flow cookie (every process
    /// shares the key, so any of them may answer the callback).
    pub fn flow_mac(&self, body: &[u8]) -> String {
        self.mac(b"oidc-flow\0", body)
    }

    /// The sign-in through an OpenID provider, when configured.
    pub fn oidc(&self) -> Option<&Arc<crate::oidc::Oidc>> {
        self.oidc.as_ref()
    }

    /// HMAC-SHA256 with the shared page secret over `domain` then `data`,
    /// its first 16 bytes in hex.
    fn mac(&self, domain: &[u8], data: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let secret = self
            .page_secret
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return String::new();
        };
        mac.update(domain);
        mac.update(data);
        mac.finalize()
            .into_bytes()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether anyone can authenticate; reads the store once more.
    pub async fn refresh(&self) -> bool {
        if self.required.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(store) = &self.store {
            if store.count_credentials(Utc::now()).await.unwrap_or(0) > 0 {
                self.required.store(true, Ordering::Relaxed);
            }
        }
        self.required.load(Ordering::Relaxed)
    }

    /// Whether Firebreak still runs without authentication: asks the store
    /// again at most once a second, so the first token or user made by
    /// another process (the CLI) turns authentication on without a restart.
    pub async fn still_open(&self) -> bool {
        if self.required() {
            return false;
        }
        let due = {
            let mut checked = self
                .checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *checked = Some(Instant::now());
            }
            due
        };
        if due && self.refresh().await {
            tracing::info!("a token or user exists now: authentication is required from here on");
        }
        !self.required()
    }

    /// Authentication is now on (a token or user was just created).
    pub fn credentials_exist(&self) {
        self.required.store(true, Ordering::Relaxed);
    }

    pub fn required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// How this process authenticates, in words (for `/readyz` and the log).
    pub fn mode(&self) -> &'static str {
        if self.required() {
            "required"
        } else if self.config.insecure_no_auth {
            "none (--insecure-no-auth: a gateway in front must authenticate)"
        } else {
            "none: loopback only (no authentication configured)"
        }
    }

    /// Forgets cached verifications of a token (after revoking it).
    pub fn forget(&self, token_id_or_name: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|_, v| v.token_id != token_id_or_name && v.token_name != token_id_or_name);
        }
    }

    /// The identity of a bearer token, or why it is refused.
    pub async fn token(&self, presented: &str) -> Result<Identity, ApiError> {
        let key = sha256(presented.as_bytes());
        if let Some(identity) = self.known(&key, presented) {
            return Ok(identity);
        }
        let refused = || {
            ApiError::Unauthorized(
                "the bearer token is not valid (unknown, revoked or expired)".into(),
            )
        };
        let Some((id, secret)) = presented
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Err(refused());
        };
        let Some(store) = &self.store else {
            return Err(refused());
        };
        let found = match store.token_secret(id).await {
            Ok(found) => found,
            Err(e) if e.is_transient() => {
                // The store is down: a token verified in the last hour still
                // works, so ingest keeps accepting alerts through an outage.
                if let Ok(c) = self.cache.lock() {
                    if let Some(hit) = c
                        .get(&key)
                        .filter(|h| h.until + Duration::from_secs(3600) > Instant::now())
                    {
                        return Ok(hit.identity.clone());
                    }
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let Some((row, hash)) = found else {
            return Err(refused());
        };
        if !constant_time_eq(sha256_hex(secret).as_bytes(), hash.as_bytes()) {
            return Err(refused());
        }
        let now = Utc::now();
        if row.revoked_at.is_some() || row.expires_at.is_some_and(|e| e <= now) {
            return Err(refused());
        }
        let identity = token_identity(&row);
        let mut until = Instant::now() + TOKEN_CACHE;
        if let Some(e) = row.expires_at {
            let left = (e - now).to_std().unwrap_or_default();
            until = until.min(Instant::now() + left);
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 10_000 {
                c.clear();
            }
            c.insert(
                key,
                Cached {
                    identity: identity.clone(),
                    token_id: row.id.clone(),
                    token_name: row.name.clone(),
                    until,
                },
            );
        }
        self.touch(store.clone(), &row);
        Ok(identity)
    }

    /// The request path's fast answer: a token verified in the last 30
    /// seconds, or a configured one. `key` is the SHA-256 of `presented`.
    pub fn known(&self, key: &[u8; 32], presented: &str) -> Option<Identity> {
        if let Ok(c) = self.cache.lock() {
            if let Some(hit) = c.get(key).filter(|h| h.until > Instant::now()) {
                return Some(hit.identity.clone());
            }
        }
        self.config
            .static_tokens
            .iter()
            .find(|t| constant_time_eq(presented.as_bytes(), t.secret.expose().as_bytes()))
            .map(|t| Identity::token(&t.name, t.scopes.clone()))
    }

    /// Records a token's use, at most once a minute, off the request path.
    fn touch(&self, store: Arc<dyn Store>, row: &TokenRow) {
        let due = self.touched.lock().is_ok_and(|mut t| {
            let due = t
                .get(&row.id)
                .is_none_or(|at| at.elapsed() > Duration::from_secs(60));
            if due {
                t.insert(row.id.clone(), Instant::now());
            }
            due
        });
        if due {
            let id = row.id.clone();
            tokio::spawn(async move {
                let _ = store.touch_token(&id, Utc::now()).await;
            });
        }
    }

    fn proxy_identity(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Identity>, ApiError> {
        let (Some(proxy), Some(peer)) = (&self.config.proxy, peer) else {
            return Ok(None);
        };
        if !proxy.trusted.iter().any(|n| n.contains(peer)) {
            return Ok(None);
        }
        let value = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let Some(user) = value(&proxy.user_header).or_else(|| value(&proxy.email_header)) else {
            return Ok(None);
        };
        let role = value(&proxy.groups_header)
            .into_iter()
            .flat_map(|g| g.split(','))
            .filter_map(|g| proxy.groups.get(g.trim()).copied())
            .max()
            .or(proxy.default_role)
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "{user} is signed in but has no Firebreak role: add one of their groups to auth.proxy.groups, or set auth.proxy.default_role"
                ))
            })?;
        Ok(Some(Identity::person(
            format!("user:{user}"),
            Via::Proxy,
            role,
        )))
    }

    /// Checks a password, slowing down guessing (see [`crate::signin`]):
    /// bounded input first, then a reserved place in the failure counters,
    /// then the hash on a bounded pool.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<firebreak_store::UserRow, ApiError> {
        let Some(store) = &self.store else {
            return Err(ApiError::Internal("no store".into()));
        };
        if username.starts_with("oidc:") {
            return Err(ApiError::Unauthorized(
                "people from the identity provider sign in with it, not with a password".into(),
            ));
        }
        if username.len() > MAX_USERNAME_BYTES {
            return Err(ApiError::BadRequest {
                field: Some("username".into()),
                message: format!("a user name is at most {MAX_USERNAME_BYTES} bytes"),
            });
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(ApiError::BadRequest {
                field: Some("password".into()),
                message: format!("a password is at most {MAX_PASSWORD_BYTES} bytes"),
            });
        }
        let reservation = self
            .sign_ins
            .reserve(username, address, Instant::now())
            .map_err(|wait| ApiError::SlowDown {
                retry_after: wait.as_secs().max(1),
                message: format!(
                    "too many failed sign-ins for this user from this address; try again in {} s",
                    wait.as_secs().max(1)
                ),
            })?;
        let found = match store.user_secret(username).await {
            Ok(found) => found,
            Err(e) => {
                self.sign_ins.not_checked(reservation);
                return Err(e.into());
            }
        };
        // Hash even for an unknown user, so timing does not tell who exists.
        let phc = found
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0000000000000000000000000000000000000000000".into());
        let password = password.to_string();
        let ok = match crate::offload::hash(move || verify_password(&password, &phc)).await {
            Ok(ok) => ok,
            Err(e) => {
                self.sign_ins.not_checked(reservation);
                return Err(e);
            }
        };
        match found {
            Some((user, _)) if ok => {
                self.sign_ins.succeeded(reservation);
                Ok(user)
            }
            _ => Err(ApiError::Unauthorized("wrong user name or password".into())),
        }
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the last address it put in `X-Forwarded-For`.
    pub fn client_address(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = self
            .config
            .proxy
            .as_ref()
            .is_some_and(|p| p.trusted.iter().any(|n| n.contains(peer)));
        if !trusted {
            return Some(peer);
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .next_back()
            .or(Some(peer))
    }

    /// Sign-in failure counters held now (bounded by [`crate::signin::MAX_TRACKED`]).
    pub fn sign_in_counters(&self) -> usize {
        self.sign_ins.tracked()
    }

    /// The `Set-Cookie` value for a session (or its removal, for `None`).
    pub fn session_cookie(&self, value: Option<&str>, headers: &HeaderMap) -> HeaderValue {
        let secure = self.cookie_secure(headers);
        let (v, age) = match value {
            Some(v) => (v, self.config.session_ttl.as_secs()),
            None => ("", 0),
        };
        let cookie = format!(
            "{SESSION_COOKIE}={v}; Path=/; HttpOnly; SameSite=Lax; Max-Age={age}{}",
            if secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether cookies set for this request get `Secure`.
    pub fn cookie_secure(&self, headers: &HeaderMap) -> bool {
        match self.config.cookie_secure {
            CookieSecure::Always => true,
            CookieSecure::Never => false,
            CookieSecure::Auto => {
                headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.eq_ignore_ascii_case("https"))
                    || self
                        .config
                        .public_url
                        .as_deref()
                        .is_some_and(|u| u.starts_with("https://"))
            }
        }
    }

    /// Whether a browser's `Origin` may change state here: Firebreak's own
    /// (the `Host` it was asked at, or `public_url`), or an allowed one.
    pub fn origin_allowed(&self, origin: &str, headers: &HeaderMap) -> bool {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if let (Some(a), Some(h)) = (authority, host) {
            if a.eq_ignore_ascii_case(h) {
                return true;
            }
        }
        let own = self
            .config
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_string());
        own.iter()
            .chain(self.config.allowed_origins.iter())
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true; // HTTP/1.0 without Host: not a browser
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn json_or_empty(headers: &HeaderMap) -> Result<(), ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::UnsupportedMediaType(ct.to_string()))
            }
        }
        None if length.unwrap_or(1) == 0 => Ok(()),
        None if headers.contains_key(header::TRANSFER_ENCODING) || length.is_some() => {
            Err(ApiError::UnsupportedMediaType(String::new()))
        }
        None => Ok(()),
    }
}

/// The middleware: resolves the identity, checks the route's access and the
/// cross-site rules, and hands the identity to the handler.
pub(crate) async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let page = route.as_deref().is_some_and(crate::pages::is_page);
    match check(&auth, &mut req).await {
        Ok(()) => next.run(req).await,
        Err(e) if page => {
            // A person in a browser: sign in, or a page that says why.
            match e {
                ApiError::Unauthorized(_) if req.method() == Method::GET => {
                    let target = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_else(|| "/".into());
                    let encoded: String = target
                        .bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                                char::from(b).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect();
                    axum::response::Redirect::to(&format!("/login?next={encoded}")).into_response()
                }
                ApiError::Unauthorized(m) => {
                    crate::pages::error_page(axum::http::StatusCode::UNAUTHORIZED, &m)
                }
                ApiError::Forbidden(m) => {
                    crate::pages::error_page(axum::http::StatusCode::FORBIDDEN, &m)
                }
                other => other.into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

async fn check(auth: &Auth, req: &mut Request) -> Result<(), ApiError> {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        return Ok(()); // no route: the fallback answers 404
    };
    let method = req.method().clone();
    let needed = access(&method, &route);
    let page = crate::pages::is_page(&route);
    if matches!(needed, Access::Public | Access::Slack | Access::Signed) {
        if needed == Access::Public && unsafe_method(&method) && route.starts_with("/api/") {
            json_or_empty(req.headers())?;
        }
        return Ok(());
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let headers = req.headers();
    let mut req_csrf: Option<String> = None;
    let identity = if let Some(presented) = bearer(headers) {
        auth.token(presented).await?
    } else if let Some(value) = cookie(headers, SESSION_COOKIE) {
        let store = auth
            .store
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("no sessions here".into()))?;
        let session = store
            .session(&sha256_hex(value), Utc::now())
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the session has ended: sign in again".into()))?;
        // Page forms carry the token in the form; their handlers check it.
        if unsafe_method(&method) && !page {
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|t| constant_time_eq(t.as_bytes(), session.csrf_token.as_bytes()))
            {
                return Err(ApiError::Forbidden(
                    "missing or wrong CSRF token: a browser session's changes carry the X-CSRF-Token it was given at sign-in".into(),
                ));
            }
        }
        req_csrf = Some(session.csrf_token.clone());
        Identity::person(
            firebreak_domain::access::user_principal(&session.user.username),
            Via::Session,
            session.user.role,
        )
    } else if let Some(identity) = auth.proxy_identity(headers, peer)? {
        identity
    } else if auth.still_open().await
        && (auth.config.insecure_no_auth
            || (peer.is_some_and(|p| p.is_loopback()) && loopback_host(headers)))
    {
        Identity::local()
    } else {
        return Err(ApiError::Unauthorized(if auth.required() {
            "authenticate: send Authorization: Bearer <token> (firebreak tokens create), or sign in"
                .into()
        } else {
            "no authentication is configured, so Firebreak only answers on loopback (localhost); create a token to serve others".into()
        }));
    };
    // Browser-borne changes must come from Firebreak's own pages.
    if unsafe_method(&method) && identity.via != Via::Token {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            if !auth.origin_allowed(origin, headers) {
                return Err(ApiError::Forbidden(format!(
                    "cross-site request refused: Origin {origin} is not Firebreak's own (add it to auth.allowed_origins if it should be)"
                )));
            }
        }
    }
    // Ingest checks its own content type; OFREP answers a bad body with its own error codes.
    let own_body_rules = route.starts_with("/api/v1/alerts")
        || route.starts_with("/api/v1/events")
        || route.starts_with("/ofrep/")
        || route == "/loki/api/v1/push"
        || page;
    if unsafe_method(&method) && !own_body_rules {
        json_or_empty(headers)?;
    }
    match needed {
        Access::Scope(scope) if !identity.allows(scope) => {
            return Err(ApiError::Forbidden(match identity.role {
                Some(role) => format!(
                    "{} is {role}; this needs the {scope} scope ({})",
                    identity.id,
                    min_role(scope)
                ),
                None => format!(
                    "{} has the scopes {}; this needs {scope}",
                    identity.id,
                    identity
                        .scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }));
        }
        _ => {}
    }
    let csrf = crate::pages::PageCsrf {
        token: req_csrf.unwrap_or_else(|| auth.page_csrf(&identity.id)),
        exempt: identity.via == Via::Token,
    };
    req.extensions_mut().insert(csrf);
    req.extensions_mut().insert(identity);
    Ok(())
}

fn min_role(scope: Scope) -> &'static str {
    match scope {
        Scope::Read | Scope::FlagsRead => "any role",
        Scope::Edit => "editor or higher",
        Scope::Operate => "operator or higher",
        Scope::Admin | Scope::Ingest => "admin",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.9".parse().unwrap()), "v4-mapped");
        let one = Net::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Net::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("example.com").is_err());
    }

    #[test]
    fn every_route_has_one_rule() {
        let mut seen = std::collections::HashSet::new();
        for (m, r, _) in POLICY {
            assert!(seen.insert((m, r)), "{m} {r} twice");
        }
        assert_eq!(
            access(&Method::POST, "/unknown"),
            Access::Scope(Scope::Admin)
        );
        assert_eq!(access(&Method::HEAD, "/healthz"), Access::Public);
    }

    #[test]
    fn loopback_hosts_only_for_the_local_operator() {
        let mut h = HeaderMap::new();
        for (host, ok) in [
            ("localhost:8080", true),
            ("127.0.0.1:8080", true),
            ("[::1]:8080", true),
            ("evil.example:8080", false),
            ("10.0.0.5", false),
        ] {
            h.insert(header::HOST, host.parse().unwrap());
            assert_eq!(loopback_host(&h), ok, "{host}");
        }
    }

    #[test]
    fn state_changes_are_json_or_empty() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "0".parse().unwrap());
        assert!(json_or_empty(&h).is_ok());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(json_or_empty(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(json_or_empty(&h).is_ok());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        assert!(json_or_empty(&h).is_err(), "a body must say it is JSON");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        let t = StaticToken {
            name: "x".into(),
            secret: s,
            scopes: vec![],
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
