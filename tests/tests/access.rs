//! Access control end to end, against the real binary: every endpoint with
//! every scope and every role, forged, expired and revoked tokens, cross-site
//! attempts, the proxy header, four-eyes, the hash-chained audit trail, and
//! the refusal to serve a network without authentication.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use firebreak_api::auth::{Access, POLICY};
use firebreak_tests::{
    anonymous, firebreak_bin, free_port, Firebreak, Options, TestApp, TEST_TOKEN,
};
use reqwest::Method;
use serde_json::{json, Value};

/// What each route needs, written out here independently of the server's
/// table (the test asserts both list the same routes).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "public"),
    ("GET", "/readyz", "public"),
    ("GET", "/metrics", "read"),
    ("POST", "/api/v1/alerts/alertmanager", "ingest"),
    ("POST", "/api/v1/events/deploy", "ingest"),
    ("POST", "/api/v1/events/gate", "ingest"),
    ("POST", "/api/v1/events/logs", "ingest"),
    ("POST", "/loki/api/v1/push", "ingest"),
    ("GET", "/api/v1/incidents", "read"),
    ("GET", "/api/v1/incidents/{id}", "read"),
    ("GET", "/api/v1/incidents/{id}/timeline", "read"),
    ("POST", "/api/v1/incidents/{id}/notes", "edit"),
    ("POST", "/api/v1/incidents", "edit"),
    ("PATCH", "/api/v1/incidents/{id}", "edit"),
    ("POST", "/api/v1/incidents/{id}/acknowledge", "edit"),
    ("GET", "/api/v1/incidents/{id}/postmortem", "read"),
    ("PUT", "/api/v1/incidents/{id}/postmortem", "edit"),
    (
        "POST",
        "/api/v1/incidents/{id}/postmortem/regenerate",
        "edit",
    ),
    ("GET", "/api/v1/incidents/{id}/postmortem/revisions", "read"),
    (
        "GET",
        "/api/v1/incidents/{id}/postmortem/revisions/{rev}",
        "read",
    ),
    ("GET", "/api/v1/incidents/{id}/postmortem.md", "read"),
    ("GET", "/api/v1/incidents/{id}/postmortem.html", "read"),
    ("POST", "/api/v1/postmortems/lint", "read"),
    ("GET", "/api/v1/incidents/{id}/action-items", "read"),
    ("POST", "/api/v1/incidents/{id}/action-items", "edit"),
    ("PATCH", "/api/v1/action-items/{id}", "edit"),
    ("POST", "/api/v1/action-items/{id}/export", "edit"),
    ("POST", "/api/v1/trackers/github/webhook", "signed"),
    ("POST", "/api/v1/trackers/jira/webhook", "signed"),
    ("GET", "/api/v1/playbooks", "read"),
    ("POST", "/api/v1/playbooks/reload", "admin"),
    ("GET", "/api/v1/actions", "read"),
    ("POST", "/api/v1/actions", "operate"),
    ("GET", "/api/v1/actions/{id}", "read"),
    ("POST", "/api/v1/actions/{id}/approve", "operate"),
    ("POST", "/api/v1/actions/{id}/deny", "operate"),
    ("POST", "/api/v1/actions/{id}/revert", "operate"),
    ("GET", "/api/v1/automation", "read"),
    ("POST", "/api/v1/automation/pause", "operate"),
    ("POST", "/api/v1/automation/resume", "operate"),
    ("GET", "/api/v1/audit", "read"),
    ("GET", "/api/v1/flags", "read"),
    ("POST", "/api/v1/flags", "operate"),
    ("GET", "/api/v1/flags/{key}", "read"),
    ("PUT", "/api/v1/flags/{key}", "operate"),
    ("DELETE", "/api/v1/flags/{key}", "operate"),
    ("POST", "/api/v1/flags/import", "operate"),
    ("GET", "/api/v1/flags/export", "read"),
    ("GET", "/api/v1/flags/stale", "read"),
    ("GET", "/metrics/insights", "read"),
    ("GET", "/api/v1/insights", "read"),
    ("GET", "/insights", "read"),
    ("GET", "/api/v1/dead-letters", "read"),
    ("POST", "/api/v1/dead-letters/replay", "operate"),
    (
        "POST",
        "/api/v1/incidents/{id}/changes/{deploy}/cause",
        "edit",
    ),
    ("GET", "/api/v1/rollouts", "read"),
    ("POST", "/api/v1/rollouts", "operate"),
    ("GET", "/api/v1/rollouts/{id}", "read"),
    ("POST", "/api/v1/rollouts/{id}/{command}", "operate"),
    ("POST", "/api/v1/gates/flagger/{hook}", "read"),
    ("GET", "/api/v1/gates/argo/{service}", "read"),
    ("GET", "/api/v1/services/{service}/timeline", "read"),
    ("POST", "/ofrep/v1/evaluate/flags", "flags:read"),
    ("POST", "/ofrep/v1/evaluate/flags/{key}", "flags:read"),
    ("GET", "/ofrep/v1/configuration", "flags:read"),
    ("POST", "/slack/commands", "slack"),
    ("POST", "/slack/interactions", "slack"),
    ("GET", "/api/v1/tokens", "admin"),
    ("POST", "/api/v1/tokens", "admin"),
    ("DELETE", "/api/v1/tokens/{id}", "admin"),
    ("GET", "/api/v1/users", "admin"),
    ("POST", "/api/v1/users", "admin"),
    ("DELETE", "/api/v1/users/{name}", "admin"),
    ("POST", "/api/v1/login", "public"),
    ("POST", "/api/v1/logout", "authenticated"),
    ("GET", "/api/v1/me", "authenticated"),
    ("POST", "/api/v1/postmortems/preview", "read"),
    ("POST", "/api/v1/incidents/{id}/postmortem/presence", "read"),
    // The web pages.
    ("GET", "/", "public"),
    ("GET", "/static/{file}", "public"),
    ("GET", "/login", "public"),
    ("GET", "/auth/oidc/login", "public"),
    ("GET", "/auth/oidc/callback", "public"),
    ("POST", "/login", "public"),
    ("POST", "/logout", "authenticated"),
    ("GET", "/incidents", "read"),
    ("GET", "/incidents/{id}", "read"),
    ("POST", "/incidents/{id}/notes", "edit"),
    ("POST", "/incidents/{id}/response", "edit"),
    ("POST", "/incidents/{id}/action-items", "edit"),
    ("POST", "/incidents/{id}/action-items/{item}", "edit"),
    ("POST", "/incidents/{id}/changes/{deploy}/cause", "edit"),
    ("POST", "/actions/{id}/approve", "operate"),
    ("POST", "/actions/{id}/deny", "operate"),
    ("POST", "/actions/{id}/revert", "operate"),
    ("GET", "/incidents/{id}/postmortem", "read"),
    ("POST", "/incidents/{id}/postmortem", "edit"),
    ("POST", "/incidents/{id}/postmortem/regenerate", "edit"),
    ("GET", "/incidents/{id}/postmortem/revisions/{rev}", "read"),
    ("GET", "/flags", "read"),
    ("GET", "/flags/{key}", "read"),
    ("POST", "/flags/{key}", "operate"),
    ("GET", "/playbooks", "read"),
    ("POST", "/playbooks/test", "read"),
    ("GET", "/audit", "read"),
];

/// A web page (not the API or a protocol): people are sent to sign in, and
/// forms carry a CSRF token instead of a header.
fn is_page(route: &str) -> bool {
    !["/api/", "/ofrep/", "/slack/", "/loki/", "/metrics"]
        .iter()
        .any(|p| route.starts_with(p))
        && !["/healthz", "/readyz"].contains(&route)
}

/// Who asks: nobody, a token with one scope, or a signed-in person.
#[derive(Debug, Clone)]
enum Who {
    Nobody,
    Token(&'static str, String),
    Person(&'static str, String, String),
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::Nobody => "nobody".into(),
            Who::Token(s, _) => format!("token with {s}"),
            Who::Person(r, _, _) => format!("{r} (session)"),
        }
    }

    /// What this identity may do, from the README's table.
    fn may(&self, needed: &str) -> bool {
        match (self, needed) {
            (_, "public") => true,
            (Who::Nobody, _) => false,
            (_, "authenticated") => true,
            (Who::Token(scope, _), needed) => *scope == needed || *scope == "admin",
            (Who::Person(role, _, _), needed) => match needed {
                "read" | "flags:read" => true,
                "edit" => ["editor", "operator", "admin"].contains(role),
                "operate" => ["operator", "admin"].contains(role),
                _ => *role == "admin",
            },
        }
    }

    fn request(&self, method: Method, url: String) -> reqwest::RequestBuilder {
        let req = no_redirects().request(method, url);
        match self {
            Who::Nobody => req,
            Who::Token(_, t) => req.bearer_auth(t),
            Who::Person(_, cookie, csrf) => req
                .header("cookie", format!("firebreak_session={cookie}"))
                .header("x-csrf-token", csrf),
        }
    }
}

async fn sign_in(fb: &Firebreak, username: &str, password: &str) -> (u16, Value, Option<String>) {
    let r = anonymous()
        .post(format!("{}/api/v1/login", fb.base))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let value = cookie.as_deref().and_then(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.strip_prefix("firebreak_session="))
            .map(str::to_string)
    });
    let body = r.json().await.unwrap_or(Value::Null);
    assert!(
        status != 200
            || cookie
                .as_deref()
                .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax")),
        "{cookie:?}"
    );
    (status, body, value)
}

async fn person(fb: &Firebreak, role: &'static str) -> Who {
    let name = format!("{role}-person");
    let password = "correct horse battery staple";
    let (status, body) = fb
        .post(
            "/api/v1/users",
            &json!({"username": name, "password": password, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body, cookie) = sign_in(fb, &name, password).await;
    assert_eq!(status, 200, "{body}");
    Who::Person(
        role,
        cookie.unwrap(),
        body["csrf_token"].as_str().unwrap().to_string(),
    )
}

fn concrete(route: &str) -> String {
    route
        .replace("{id}", "1")
        .replace("{rev}", "1")
        .replace("{item}", "1")
        .replace("{key}", "a.flag")
        .replace("{name}", "nobody-at-all")
        .replace("{file}", "app.css")
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Every endpoint, asked by nobody, by a token with each scope, and by a
/// person with each role: 401 without credentials, 403 without the scope,
/// and neither when allowed (the handler then answers on its own terms).
#[tokio::test]
async fn every_endpoint_with_every_scope_and_role() {
    let server: BTreeSet<(String, String)> = POLICY
        .iter()
        .map(|(m, r, _)| (m.to_string(), r.to_string()))
        .collect();
    let here: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(m, r, _)| (m.to_string(), r.to_string()))
        .collect();
    assert_eq!(
        server, here,
        "this table and the server's list the same routes"
    );
    for (m, r, a) in POLICY {
        let want = EXPECTED
            .iter()
            .find(|(em, er, _)| em == m && er == r)
            .unwrap()
            .2;
        let got = match a {
            Access::Public => "public".to_string(),
            Access::Authenticated => "authenticated".to_string(),
            Access::Slack => "slack".to_string(),
            Access::Signed => "signed".to_string(),
            Access::Scope(s) => s.as_str().to_string(),
        };
        assert_eq!(got, want, "{m} {r}");
    }

    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let mut who = vec![Who::Nobody];
    for scope in ["ingest", "flags:read", "read", "edit", "operate", "admin"] {
        let t = fb
            .token(&format!("only-{}", scope.replace(':', "-")), &[scope])
            .await;
        who.push(Who::Token(scope, t.token));
    }
    for role in ["viewer", "editor", "operator", "admin"] {
        who.push(person(fb, role).await);
    }
    let mut checked = 0;
    for (method, route, needed) in EXPECTED {
        if *needed == "slack" || *needed == "signed" || route.ends_with("/logout") {
            continue; // signed by Slack or a tracker (tests/slack.rs, tests/action_items.rs); logout ends the session
        }
        let page = is_page(route);
        for w in &who {
            let url = format!("{}{}", fb.base, concrete(route));
            let method: Method = method.parse().unwrap();
            let mut req = w.request(method.clone(), url);
            if method != Method::GET && page {
                // A page's form, with the session's CSRF token (bearer
                // tokens need none).
                let csrf = match w {
                    Who::Person(_, _, csrf) => csrf.clone(),
                    _ => String::new(),
                };
                req = req
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("csrf_token={csrf}"));
            } else if method != Method::GET {
                req = req.json(&json!({}));
            }
            let response = req.send().await.unwrap();
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            let what = format!("{} {route} as {}: {status}", method, w.label());
            let body = if status == 403 || status == 401 {
                response.text().await.unwrap_or_default()
            } else {
                String::new()
            };
            let what = format!("{what} {}", &body[..body.len().min(300)]);
            if w.may(needed) {
                assert!(
                    status != 401 && status != 403,
                    "{what}, expected it to be let through"
                );
            } else if matches!(w, Who::Nobody) && page && method == Method::GET {
                // A browser is sent to sign in, and back afterwards.
                assert_eq!(status, 303, "{what}");
                let to = location.unwrap_or_default();
                assert!(
                    to.starts_with("/login?next=%2F") || to.starts_with("/login?next=/"),
                    "{what}: {to}"
                );
            } else if matches!(w, Who::Nobody) {
                assert_eq!(status, 401, "{what}");
            } else {
                assert_eq!(status, 403, "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "{checked}");
    // Logout ends the session: the cookie no longer works.
    let Who::Person(_, cookie, csrf) = who.last().unwrap().clone() else {
        unreachable!()
    };
    let ended = Who::Person("admin", cookie, csrf);
    let r = ended
        .request(Method::POST, format!("{}/api/v1/logout", fb.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = ended
        .request(Method::GET, format!("{}/api/v1/me", fb.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn forged_expired_and_revoked_tokens_get_401() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let reader = fb.token("reader", &["read"]).await;
    let (status, me) = reader.get("/api/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["id"], "token:reader");
    assert_eq!(me["scopes"], json!(["read"]));
    // Forged: the right id, a wrong secret.
    let id = reader.token.split('_').nth(1).unwrap();
    let forged = firebreak_tests::Caller {
        base: fb.base.clone(),
        token: format!("fbk_{id}_{}", "0".repeat(64)),
    };
    assert_eq!(forged.get("/api/v1/incidents").await.0, 401);
    // Expired.
    let (status, short) = fb
        .post(
            "/api/v1/tokens",
            &json!({"name": "short", "scopes": ["read"], "expires_in": "1s"}),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let short = firebreak_tests::Caller {
        base: fb.base.clone(),
        token: short["token"].as_str().unwrap().to_string(),
    };
    assert_eq!(short.get("/api/v1/incidents").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(short.get("/api/v1/incidents").await.0, 401, "expired");
    // Revoked: refused at once by this process.
    let (status, _) = anonymous()
        .delete(format!("{}/api/v1/tokens/reader", fb.base))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 204);
    let (status, body) = reader.get("/api/v1/incidents").await;
    assert_eq!(status, 401, "{body}");
    // The list shows tokens without their secrets, and when they were used.
    let (_, list) = fb.get("/api/v1/tokens").await;
    let text = list.to_string();
    assert!(!text.contains(&reader.token[20..]), "no secret in the list");
    let r = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader")
        .unwrap()
        .clone();
    assert!(
        r["revoked_at"].is_string() && r["last_used_at"].is_string(),
        "{r}"
    );
    // A duplicate name is refused.
    let (status, _) = fb
        .post(
            "/api/v1/tokens",
            &json!({"name": "short", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_viewer_cannot_flip_a_kill_switch_and_nothing_changes() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.flow", "enabled": true}),
    )
    .await;
    let viewer = person(fb, "viewer").await;
    let audit_before = fb.get("/api/v1/audit?limit=1000").await.1["entries"]
        .as_array()
        .unwrap()
        .len();
    let r = viewer
        .request(Method::PUT, format!("{}/api/v1/flags/pay.flow", fb.base))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("viewer"),
        "{body}"
    );
    let r = viewer
        .request(Method::POST, format!("{}/api/v1/actions", fb.base))
        .json(&json!({"kind": "kill_switch", "flag": "pay.flow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], true);
    assert!(fb.actions().await.is_empty());
    let audit_after = fb.get("/api/v1/audit?limit=1000").await.1["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_before, audit_after, "nothing written");
}

/// What a script-free form on another site could send: refused.
#[tokio::test]
async fn cross_site_attempts_are_refused() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.flow", "enabled": false}),
    )
    .await;
    let operator = person(fb, "operator").await;
    let Who::Person(_, cookie, csrf) = &operator else {
        unreachable!()
    };
    let url = format!("{}/api/v1/flags/pay.flow", fb.base);
    let session =
        |req: reqwest::RequestBuilder| req.header("cookie", format!("firebreak_session={cookie}"));
    // A form post: text/plain (or urlencoded), no CSRF token.
    let r = session(anonymous().put(&url))
        .header("content-type", "text/plain")
        .header("x-csrf-token", csrf)
        .body("{\"enabled\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415, "not JSON");
    let r = session(anonymous().put(&url))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "no CSRF token");
    let r = session(anonymous().put(&url))
        .header("x-csrf-token", "guessed")
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a wrong CSRF token");
    let r = session(anonymous().put(&url))
        .header("x-csrf-token", csrf)
        .header("origin", "https://evil.example")
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a foreign origin");
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], false, "nothing changed");
    // From Firebreak's own page, with the token, it works.
    let r = session(anonymous().put(&url))
        .header("x-csrf-token", csrf)
        .header("origin", fb.base.clone())
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The web page's form: the CSRF token is a form field, and is required.
    let page = format!("{}/flags/pay.flow", fb.base);
    let form = |token: &str| format!("csrf_token={token}&enabled=false&confirm=yes");
    let post_form = |body: String| {
        session(no_redirects().post(&page))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let r = post_form("enabled=false&confirm=yes".into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a page form without its CSRF token"
    );
    let r = post_form(form("guessed")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "a page form with a wrong one");
    let r = post_form(form(csrf))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a page form from a foreign origin"
    );
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], true, "nothing changed");
    let r = post_form(form(csrf))
        .header("origin", fb.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "Firebreak's own form works");
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], false);

    // A fresh Firebreak with no authentication configured: the local
    // operator only, and still no cross-site changes.
    let open = TestApp::embedded().without_auth().start().await;
    let fb = &open.fb;
    let (_, ready) = fb.get("/readyz").await;
    assert!(
        ready["auth"].as_str().unwrap().contains("loopback only"),
        "{ready}"
    );
    let (status, me) = anonymous()
        .get(format!("{}/api/v1/me", fb.base))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .map(|(s, _)| (s, Value::Null))
        .unwrap();
    assert_eq!(status, 200, "{me}");
    let pause = format!("{}/api/v1/automation/pause", fb.base);
    for (ctype, body) in [
        ("text/plain", "x"),
        ("application/x-www-form-urlencoded", "a=1"),
        ("multipart/form-data; boundary=x", "--x--"),
    ] {
        let r = anonymous()
            .post(&pause)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{ctype}");
    }
    let r = anonymous()
        .post(&pause)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a foreign origin with an empty body"
    );
    let r = anonymous()
        .post(&pause)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "a rebound host name is not loopback"
    );
    let (_, state) = anonymous()
        .get(format!("{}/api/v1/automation", fb.base))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    let state: Value = state.json().await.unwrap();
    assert_eq!(state["paused"], false, "nothing paused");
    // A page form posted to localhost by another site's page (no Origin
    // sent, as some browsers do): refused without the page's CSRF token.
    let r = anonymous()
        .post(format!("{}/playbooks/test", fb.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("kind=alert&event=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "the local operator's forms need the token too"
    );
}

#[tokio::test]
async fn a_network_address_without_authentication_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(firebreak_bin())
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .env("FIREBREAK_DATA_DIR", dir.path())
        .env_remove("FIREBREAK_AUTH__BOOTSTRAP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0")
            && stderr.contains("firebreak tokens create")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    // With a token in the store it starts; the CLI makes it, shown once.
    let out = Command::new(firebreak_bin())
        .args(["tokens", "create", "--name", "ops", "--scope", "admin"])
        .env("FIREBREAK_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("fbk_"), "{token}");
    let mut fb = Firebreak::start(
        dir.path(),
        Options::open().with("FIREBREAK_LISTEN", &format!("0.0.0.0:{}", free_port())),
    )
    .await;
    let caller = firebreak_tests::Caller {
        base: fb.base.clone(),
        token: token.clone(),
    };
    let (status, me) = caller.get("/api/v1/me").await;
    assert_eq!((status, me["id"].as_str()), (200, Some("token:ops")));
    let (_, ready) = fb.get("/readyz").await;
    assert_eq!(ready["auth"], "required");
    fb.stop().await;
}

/// A fresh install answers the local operator on loopback; the first user
/// made with the CLI (another process) turns authentication on within a
/// second, without a restart, and can sign in. `--data-dir` names the store.
#[tokio::test]
async fn the_first_user_made_by_the_cli_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut fb = Firebreak::start(&data, Options::open()).await;
    let status = |r: reqwest::Response| r.status().as_u16();
    let r = anonymous()
        .get(format!("{}/api/v1/incidents", fb.base))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 200, "open on loopback before any credential");
    let out = tokio::process::Command::new(firebreak_bin())
        .args([
            "users",
            "create",
            "--name",
            "ana",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("FIREBREAK_DATA_DIR")
        .env("FIREBREAK_USER_PASSWORD", "correct horse battery staple 42")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    firebreak_tests::eventually("authentication on", Duration::from_secs(10), || async {
        let r = anonymous()
            .get(format!("{}/api/v1/incidents", fb.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16() == 401).then_some(())
    })
    .await;
    let (status, _, cookie) = sign_in(&fb, "ana", "correct horse battery staple 42").await;
    assert!(cookie.is_some(), "signed in: {status}");
    let (_, ready) = fb.get("/readyz").await;
    assert_eq!(ready["auth"], "required");
    fb.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_person_and_an_untrusted_one_is_ignored() {
    let app = TestApp::embedded()
        .config("[auth.proxy]\ntrusted = [\"127.0.0.1\"]\ndefault_role = \"viewer\"\n\n[auth.proxy.groups]\nsre = \"operator\"\n")
        .start()
        .await;
    let me = |user: &str, groups: Option<&str>| {
        let mut req = anonymous()
            .get(format!("{}/api/v1/me", app.fb.base))
            .header("x-forwarded-user", user.to_string());
        if let Some(g) = groups {
            req = req.header("x-forwarded-groups", g.to_string());
        }
        req
    };
    let r: Value = me("pat", Some("dev, sre"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["id"].as_str(), r["role"].as_str()),
        (Some("user:pat"), Some("operator"))
    );
    let r: Value = me("sam", None).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["role"], "viewer");

    let untrusted = TestApp::embedded()
        .config(
            "[auth.proxy]\ntrusted = [\"10.0.0.0/8\"]\n\n[auth.proxy.groups]\nsre = \"admin\"\n",
        )
        .start()
        .await;
    let r = anonymous()
        .get(format!("{}/api/v1/me", untrusted.fb.base))
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-groups", "sre")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "headers from an untrusted address mean nothing"
    );
}

#[tokio::test]
async fn passwords_are_checked_and_guessing_is_slowed() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let (status, e) = fb
        .post(
            "/api/v1/users",
            &json!({"username": "lee", "password": "short", "role": "editor"}),
        )
        .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("password")));
    fb.post(
        "/api/v1/users",
        &json!({"username": "lee", "password": "a long enough passphrase", "role": "editor"}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(sign_in(fb, "lee", "wrong wrong wrong").await.0, 401);
    }
    assert_eq!(
        sign_in(fb, "lee", "a long enough passphrase").await.0,
        429,
        "five failures lock the name for a while"
    );
    assert_eq!(sign_in(fb, "nobody", "whatever it is").await.0, 401);
    let (_, users) = fb.get("/api/v1/users").await;
    assert!(
        !users.to_string().contains("argon2"),
        "no hashes in the list"
    );
}

#[tokio::test]
async fn four_eyes_keeps_a_requester_from_approving_their_own_action() {
    let app = TestApp::embedded()
        .config("[automation]\nfour_eyes = true\nfour_eyes_min_role = \"admin\"\n\n[automation.manual]\nrequire_approval = true\n")
        .start()
        .await;
    let fb = &app.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.flow", "enabled": true}),
    )
    .await;
    let alice = fb.token("alice", &["read", "operate"]).await;
    let bob = fb.token("bob", &["read", "operate"]).await;
    let (status, held) = alice
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": "pay.flow"}),
        )
        .await;
    assert_eq!(
        (status, held["status"].as_str()),
        (202, Some("held")),
        "{held}"
    );
    let id = held["id"].as_i64().unwrap();
    let (status, e) = alice
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("four-eyes")
            && e["message"]
                .as_str()
                .unwrap()
                .contains("requested by token:alice"),
        "{e}"
    );
    let (status, e) = bob
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("needs the admin role"),
        "{e}"
    );
    let (status, ok) = fb
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["decided_by"], "token:bootstrap");
}

#[tokio::test]
async fn the_audit_trail_is_hash_chained_and_verified() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    for key in ["a.flag", "b.flag", "c.flag"] {
        fb.post("/api/v1/flags", &json!({"key": key, "enabled": true}))
            .await;
    }
    fb.post("/api/v1/automation/pause", &json!({})).await;
    let (_, audit) = fb.get("/api/v1/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.len() >= 4);
    assert!(
        entries.iter().all(|e| e["actor"] == "token:bootstrap"),
        "{audit}"
    );
    let verify = || {
        Command::new(firebreak_bin())
            .args(["audit", "verify"])
            .env("FIREBREAK_DATA_DIR", &fb.data_dir)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    // Someone with the database file rewrites history: the chain says where.
    let db = fb.data_dir.join("firebreak.db");
    let sql = |q: &str| firebreak_tests::sqlite_as_owner(&db, q);
    let second = entries[entries.len() - 2]["id"].as_i64().unwrap();
    sql(&format!(
        "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'mallory' WHERE id = {second};"
    ));
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("row {second}")) && stderr.contains("changed"),
        "{stderr}"
    );
    sql(&format!(
        "UPDATE audit SET actor = 'token:bootstrap' WHERE id = {second}; DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE id = {second};"
    ));
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not follow"), "{stderr}");
}
