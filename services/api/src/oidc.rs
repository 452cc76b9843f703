//! Sign-in through an OpenID provider (`[auth.oidc]`): the authorization
//! code flow with PKCE (S256), `state` and `nonce`, configured from the
//! provider's discovery document. The `openidconnect` crate checks the ID
//! token (its signature against the provider's JWKS, `iss`, `aud`, `exp`,
//! `nonce`); this module adds what the crate leaves to its caller: `iat` no
//! older than ten minutes, the `iss` of the callback (RFC 9207), a JWKS
//! refreshed when a token names a key it does not know, and the map from
//! the person's groups to a Firebreak role.
//!
//! Nothing is held in the process between the two legs of the flow: state,
//! nonce, PKCE verifier and the page to return to travel in a short-lived
//! cookie signed with the secret every process shares, so any api process
//! may answer the callback and no caller can make memory grow. What is
//! cached is the provider's metadata and keys, one copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::Utc;
use firebreak_domain::access::Role;
use firebreak_domain::secret::Secret;
use firebreak_store::credentials::{constant_time_eq, from_hex as unhex, to_hex as hex};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken,
    IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `[auth.oidc]`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its discovery document names it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Firebreak's callback as the provider knows it:
    /// `https://<firebreak>/auth/oidc/callback`.
    pub redirect_url: String,
    /// The sign-in button's words: "Sign in with <display_name>".
    pub display_name: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The claim that names the person (`preferred_username`, `email`,
    /// `sub`, or any string claim); `sub` when it is missing or not a name.
    pub username_claim: String,
    /// The claim that holds the person's email address (for the audit trail).
    pub email_claim: String,
    /// The claim that lists the person's groups (or roles).
    pub groups_claim: String,
    /// Group -> role; the highest role of the person's groups applies.
    pub group_roles: BTreeMap<String, Role>,
    /// The role of a person in none of `group_roles`; `None`: refused.
    pub default_role: Option<Role>,
}

/// The claims besides the standard ones (`groups`, and whatever the
/// configuration names), kept as the provider sent them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: HashMap<String, Value>,
}
impl AdditionalClaims for OtherClaims {}

type Fields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type OidcIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The cookie that carries the flow between its two legs.
pub const FLOW_COOKIE: &str = "firebreak_oidc";
/// How long a person has at the provider before the flow must start again.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// How old an ID token may be when it arrives.
const MAX_TOKEN_AGE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// A failed discovery is not retried sooner than this (callers get the
/// last error meanwhile), so a provider outage costs one request per 10 s.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);
/// Keys are fetched again for an unknown `kid` at most this often (only a
/// token the provider's own token endpoint returned can ask for it).
const JWKS_REFRESH: Duration = Duration::from_secs(10);
/// The most groups of one person looked at.
const MAX_GROUPS: usize = 1000;

/// Why a sign-in through the provider did not happen, for the sign-in page.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

fn fail(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

/// Who the provider vouched for, and the role their groups give.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// `oidc:<name>`.
    pub principal: String,
    pub role: Role,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

struct Discovered {
    client: OidcClient,
    end_session: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Provider {
    discovered: Option<Arc<Discovered>>,
    failed: Option<(Instant, String)>,
}

/// The flow's cookie: what the callback must see again.
#[derive(Serialize, Deserialize)]
struct Flow {
    /// `state`.
    s: String,
    /// `nonce`.
    n: String,
    /// The PKCE verifier.
    v: String,
    /// Where to go once signed in.
    x: String,
    /// Unix seconds after which the flow is void.
    e: i64,
}

/// The sign-in with one OpenID provider.
pub struct Oidc {
    config: OidcConfig,
    /// Follows no redirect (the provider's endpoints answer directly).
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Provider>,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Oidc, String> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| format!("key `auth.oidc.issuer`: {e}"))?;
        RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| format!("key `auth.oidc.redirect_url`: {e}"))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("auth.oidc: no HTTP client: {e}"))?;
        Ok(Oidc {
            config,
            http,
            provider: tokio::sync::Mutex::new(Provider::default()),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Reads the provider's discovery document and keys, once; again when
    /// `refresh` and the copy is older than [`JWKS_REFRESH`]. One caller at
    /// a time asks the provider; a failure is remembered for
    /// [`DISCOVERY_RETRY`].
    async fn discovered(&self, refresh: bool) -> Result<Arc<Discovered>, Failure> {
        let mut p = self.provider.lock().await;
        if let Some(d) = &p.discovered {
            if !refresh || d.at.elapsed() < JWKS_REFRESH {
                return Ok(d.clone());
            }
        }
        if let Some((at, why)) = &p.failed {
            if at.elapsed() < DISCOVERY_RETRY {
                return match &p.discovered {
                    Some(d) => Ok(d.clone()),
                    None => Err(down(&self.config, why)),
                };
            }
        }
        match self.discover().await {
            Ok(d) => {
                let d = Arc::new(d);
                p.discovered = Some(d.clone());
                p.failed = None;
                Ok(d)
            }
            Err(why) => {
                tracing::warn!(issuer = %self.config.issuer, error = %why, "the OpenID provider cannot be reached");
                p.failed = Some((Instant::now(), why.clone()));
                match &p.discovered {
                    Some(d) => Ok(d.clone()),
                    None => Err(down(&self.config, &why)),
                }
            }
        }
    }

    async fn discover(&self) -> Result<Discovered, String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        let end_session = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().to_string());
        let redirect =
            RedirectUrl::new(self.config.redirect_url.clone()).map_err(|e| e.to_string())?;
        let client = OidcClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().to_string(),
            )),
        )
        .set_redirect_uri(redirect);
        Ok(Discovered {
            client,
            end_session,
            at: Instant::now(),
        })
    }

    /// Asks the provider at start, so the log says at once whether it can
    /// be reached; Firebreak starts either way.
    pub async fn warm_up(&self) {
        if self.discovered(false).await.is_ok() {
            tracing::info!(issuer = %self.config.issuer, "OpenID provider ready for sign-in");
        }
    }

    /// The first leg: where to send the browser, and the flow's cookie.
    /// `mac` signs the cookie with the secret every process shares.
    pub async fn begin(
        &self,
        next: &str,
        mac: impl Fn(&[u8]) -> String,
    ) -> Result<(String, String), Failure> {
        let d = self.discovered(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = d.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.config.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let flow = Flow {
            s: state.secret().clone(),
            n: nonce.secret().clone(),
            v: verifier.secret().clone(),
            x: next.to_string(),
            e: Utc::now().timestamp() + FLOW_TTL.as_secs() as i64,
        };
        let body = hex(&serde_json::to_vec(&flow).unwrap_or_default());
        let signature = mac(body.as_bytes());
        Ok((url.to_string(), format!("{body}.{signature}")))
    }

    /// The second leg: the provider's answer (`code`, `state`, `iss`, or
    /// `error`) and the flow's cookie, checked; the code exchanged; the ID
    /// token verified; the person and their role. Returns where to go next.
    pub async fn finish(
        &self,
        query: &HashMap<String, String>,
        cookie: Option<&str>,
        mac: impl Fn(&[u8]) -> String,
    ) -> Result<(Person, String), Failure> {
        let flow = read_flow(cookie, &mac)?;
        let state = query.get("state").map(String::as_str).unwrap_or("");
        if !constant_time_eq(state.as_bytes(), flow.s.as_bytes()) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "this sign-in answer does not belong to the sign-in this browser started (wrong state): sign in again",
            ));
        }
        if let Some(iss) = query.get("iss") {
            if iss.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the sign-in answer comes from {iss:?}, not from the configured provider {:?}",
                        self.config.issuer
                    ),
                ));
            }
        }
        if let Some(error) = query.get("error") {
            let why = query
                .get("error_description")
                .map(|d| format!(" ({})", clip(d)))
                .unwrap_or_default();
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{} did not sign you in: {}{why}",
                    self.config.display_name,
                    clip(error)
                ),
            ));
        }
        let Some(code) = query.get("code").filter(|c| !c.is_empty()) else {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "the sign-in answer has no code: sign in again",
            ));
        };
        let d = self.discovered(false).await?;
        let exchange = d
            .client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .map_err(|e| down(&self.config, &e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.v.clone()));
        let tokens = match exchange.request_async(&self.http).await {
            Ok(t) => t,
            Err(RequestTokenError::ServerResponse(e)) => {
                return Err(fail(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "{} refused the sign-in code ({}): it was used already or has expired; sign in again",
                        self.config.display_name,
                        e.error().as_ref()
                    ),
                ))
            }
            Err(e) => return Err(down(&self.config, &error_chain(&e))),
        };
        let Some(token) = tokens.id_token() else {
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                format!("{} sent no ID token", self.config.display_name),
            ));
        };
        let nonce = Nonce::new(flow.n.clone());
        let claims = match self.verify(&d, token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: fetch them again
                // (at most once a minute) and check once more.
                let fresh = self.discovered(true).await?;
                self.verify(&fresh, token, &nonce)
            }
            other => other,
        }
        .map_err(|e| {
            fail(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the ID token from {} was refused: {e}; sign in again",
                    self.config.display_name
                ),
            )
        })?;
        let person = self.person(&claims)?;
        Ok((person, flow.x))
    }

    fn verify(
        &self,
        d: &Discovered,
        token: &OidcIdToken,
        nonce: &Nonce,
    ) -> Result<Person0, ClaimsVerificationError> {
        let now = Utc::now();
        let verifier = d
            .client
            .id_token_verifier()
            .set_issue_time_verifier_fn(move |iat| {
                if iat > now + chrono::TimeDelta::seconds(60) {
                    Err(format!("it was issued in the future ({iat})"))
                } else if now - iat > MAX_TOKEN_AGE {
                    Err(format!("it was issued at {iat}, over 10 minutes ago"))
                } else {
                    Ok(())
                }
            });
        let claims = token.claims(&verifier, nonce)?;
        let other = &claims.additional_claims().claims;
        let claim = |name: &str| -> Option<String> {
            match name {
                "sub" => Some(claims.subject().to_string()),
                "preferred_username" => claims.preferred_username().map(|u| u.to_string()),
                "email" => claims.email().map(|e| e.to_string()),
                other_name => other
                    .get(other_name)
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }
        };
        Ok(Person0 {
            subject: claims.subject().to_string(),
            name: claim(&self.config.username_claim),
            email: claim(&self.config.email_claim),
            groups: groups(other.get(&self.config.groups_claim)),
        })
    }

    fn person(&self, p: &Person0) -> Result<Person, Failure> {
        let name = p
            .name
            .as_deref()
            .filter(|n| is_name(n))
            .or(Some(p.subject.as_str()).filter(|s| is_name(s)))
            .ok_or_else(|| {
                fail(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the provider names you {:?} (claim {}) and {:?} (sub): neither is a name Firebreak can use (1-100 letters, digits, '.', '-', '_' or '@'); set auth.oidc.username_claim",
                        clip(p.name.as_deref().unwrap_or("")),
                        self.config.username_claim,
                        clip(&p.subject)
                    ),
                )
            })?;
        let role = p
            .groups
            .iter()
            .filter_map(|g| self.config.group_roles.get(g).copied())
            .max()
            .or(self.config.default_role)
            .ok_or_else(|| {
                let who = format!("{name} signed in with {}", self.config.display_name);
                let message = if p.groups.is_empty() {
                    format!(
                        "{who}, but the ID token lists no groups (claim {}), so there is no Firebreak role to give: an admin makes the provider send that claim (see the README's provider notes) or sets auth.oidc.default_role",
                        self.config.groups_claim
                    )
                } else {
                    let shown: Vec<&str> =
                        p.groups.iter().take(10).map(String::as_str).collect();
                    format!(
                        "{who}, but none of their groups ({}) has a Firebreak role: an admin adds one of them to auth.oidc.group_roles, or sets auth.oidc.default_role",
                        clip(&shown.join(", "))
                    )
                };
                fail(StatusCode::FORBIDDEN, message)
            })?;
        Ok(Person {
            principal: format!("oidc:{name}"),
            role,
            email: p.email.clone(),
            groups: p.groups.clone(),
        })
    }

    /// Where to send a browser signing out, to end its session at the
    /// provider too (RP-initiated logout), when the provider offers it.
    pub async fn logout_url(&self, back_to: &str) -> Option<String> {
        let d = self.provider.lock().await.discovered.clone()?;
        let end = d.end_session.as_deref()?;
        let mut url = reqwest::Url::parse(end).ok()?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.config.client_id)
            .append_pair("post_logout_redirect_uri", back_to);
        Some(url.to_string())
    }
}

/// What the ID token says, before the configuration judges it.
struct Person0 {
    subject: String,
    name: Option<String>,
    email: Option<String>,
    groups: Vec<String>,
}

fn down(config: &OidcConfig, why: &str) -> Failure {
    fail(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{} cannot be reached now ({}): sign in with a password, or try again in a minute",
            config.display_name,
            clip(why)
        ),
    )
}

/// The groups claim: a list of strings, or one string.
fn groups(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .take(MAX_GROUPS)
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn is_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

/// At most 200 characters of something the provider or the browser sent.
fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn read_flow(cookie: Option<&str>, mac: &impl Fn(&[u8]) -> String) -> Result<Flow, Failure> {
    let again = |why: &str| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("{why}: sign in again from Firebreak's sign-in page"),
        )
    };
    let Some(cookie) = cookie else {
        return Err(again(
            "this browser has no sign-in in progress (it was finished, has expired, or began elsewhere)",
        ));
    };
    let (body, signature) = cookie
        .split_once('.')
        .ok_or_else(|| again("the sign-in cookie is damaged"))?;
    if !constant_time_eq(mac(body.as_bytes()).as_bytes(), signature.as_bytes()) {
        return Err(again("the sign-in cookie is not Firebreak's"));
    }
    let flow: Flow = unhex(body)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| again("the sign-in cookie is damaged"))?;
    if flow.e < Utc::now().timestamp() {
        return Err(again("the sign-in took over 10 minutes"));
    }
    Ok(flow)
}

/// The `Set-Cookie` of the flow (or its removal, for `None`): sent back only
/// to the callback, gone after 10 minutes.
pub fn flow_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let (v, age) = match value {
        Some(v) => (v, FLOW_TTL.as_secs()),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={v}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={age}{}",
        if secure { "; Secure" } else { "" }
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The flow's cookie in a request, if any.
pub fn flow_from(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == FLOW_COOKIE)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://id.example.com".into(),
            client_id: "firebreak".into(),
            client_secret: Secret::new("s3cret"),
            redirect_url: "https://fb.example.com/auth/oidc/callback".into(),
            display_name: "Example SSO".into(),
            scopes: vec!["openid".into(), "profile".into()],
            username_claim: "preferred_username".into(),
            email_claim: "email".into(),
            groups_claim: "groups".into(),
            group_roles: BTreeMap::from([
                ("sre".to_string(), Role::Operator),
                ("admins".to_string(), Role::Admin),
            ]),
            default_role: None,
        }
    }

    fn mac(b: &[u8]) -> String {
        hex(&b.iter().map(|x| x ^ 0x5a).take(8).collect::<Vec<_>>())
    }

    fn claims(name: Option<&str>, groups: &[&str]) -> Person0 {
        Person0 {
            subject: "248289761001".into(),
            name: name.map(str::to_string),
            email: Some("ana@example.com".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn the_highest_role_of_a_persons_groups_applies() {
        let o = Oidc::new(config()).unwrap();
        let p = o
            .person(&claims(Some("ana"), &["sre", "admins", "x"]))
            .unwrap();
        assert_eq!((p.principal.as_str(), p.role), ("oidc:ana", Role::Admin));
    }

    #[test]
    fn a_person_in_no_mapped_group_is_refused_saying_why_unless_there_is_a_default() {
        let o = Oidc::new(config()).unwrap();
        let f = o.person(&claims(Some("bo"), &["viewers"])).unwrap_err();
        assert_eq!(f.status, StatusCode::FORBIDDEN);
        assert!(
            f.message.contains("viewers") && f.message.contains("auth.oidc.group_roles"),
            "{}",
            f.message
        );
        let mut c = config();
        c.default_role = Some(Role::Viewer);
        let o = Oidc::new(c).unwrap();
        assert_eq!(
            o.person(&claims(Some("bo"), &[])).unwrap().role,
            Role::Viewer
        );
    }

    #[test]
    fn a_name_that_is_not_one_falls_back_to_the_subject() {
        let o = Oidc::new(config()).unwrap();
        let p = o.person(&claims(Some("Ana María <x>"), &["sre"])).unwrap();
        assert_eq!(p.principal, "oidc:248289761001");
        let p = o.person(&claims(None, &["sre"])).unwrap();
        assert_eq!(p.principal, "oidc:248289761001");
    }

    #[test]
    fn groups_come_as_a_list_or_one_string_and_are_bounded() {
        assert_eq!(groups(Some(&serde_json::json!("sre"))), ["sre"]);
        assert_eq!(groups(Some(&serde_json::json!(["a", 1, "b"]))), ["a", "b"]);
        let many: Vec<String> = (0..5000).map(|i| format!("g{i}")).collect();
        assert_eq!(groups(Some(&serde_json::json!(many))).len(), MAX_GROUPS);
        assert!(groups(None).is_empty());
    }

    #[test]
    fn the_flow_cookie_is_refused_when_forged_damaged_or_expired() {
        let flow = Flow {
            s: "st".into(),
            n: "no".into(),
            v: "ve".into(),
            x: "/incidents".into(),
            e: Utc::now().timestamp() + 60,
        };
        let body = hex(&serde_json::to_vec(&flow).unwrap());
        let good = format!("{body}.{}", mac(body.as_bytes()));
        assert_eq!(read_flow(Some(&good), &mac).unwrap().x, "/incidents");
        assert!(read_flow(Some(&format!("{body}.00")), &mac).is_err());
        assert!(read_flow(Some("zz.zz"), &mac).is_err());
        assert!(read_flow(None, &mac).is_err());
        let old = Flow {
            e: Utc::now().timestamp() - 1,
            ..flow
        };
        let body = hex(&serde_json::to_vec(&old).unwrap());
        let expired = format!("{body}.{}", mac(body.as_bytes()));
        let Err(f) = read_flow(Some(&expired), &mac) else {
            panic!("an expired flow is refused")
        };
        assert!(f.message.contains("10 minutes"), "{}", f.message);
    }

    #[test]
    fn a_bad_issuer_or_callback_is_a_configuration_error() {
        let mut c = config();
        c.issuer = "not a url".into();
        let Err(e) = Oidc::new(c) else {
            panic!("a bad issuer is refused")
        };
        assert!(e.contains("auth.oidc.issuer"), "{e}");
    }
}
