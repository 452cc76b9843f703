//! Sign-in through a real OpenID provider: `oidc-provider` from npm (a
//! certified implementation, tests/support/oidc/provider.mjs) with one client
//! and two people in different groups, its own sign-in and consent pages
//! driven by Debian's chromium (tests/support/browser/pages.mjs). Firebreak
//! starts before the provider does (it must start anyway and say the
//! provider is down), then people sign in; forged, expired and misdirected
//! ID tokens, a replayed code, a wrong `state` and a person in no mapped
//! group are refused with a page that says why, and leave no session.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use firebreak_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const CLIENT_SECRET: &str = "oidc-test-client-secret-0123456789";

/// The provider, running until dropped.
struct Provider {
    _child: tokio::process::Child,
    issuer: String,
}

async fn provider(port: u16, firebreak: &str) -> Provider {
    let dir = repo_root().join("tests/support/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `bash tests/run` (it installs it) or `npm ci` in tests/support/oidc"
    );
    let input = json!({
        "port": port, "client_id": "firebreak", "client_secret": CLIENT_SECRET,
        "redirect_uri": format!("{firebreak}/auth/oidc/callback"),
        "post_logout_redirect_uri": format!("{firebreak}/login"),
    });
    let mut child = tokio::process::Command::new("node")
        .arg("provider.mjs")
        .arg(input.to_string())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install Node.js: apt-get install nodejs npm)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("ready ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the OpenID provider did not start");
    // Keep reading what it says, so its writes never meet a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Provider {
        _child: child,
        issuer: format!("http://127.0.0.1:{port}"),
    }
}

/// A Firebreak that signs people in with the provider on `provider_port`
/// (not started yet), on a port chosen here so both can name each other.
async fn firebreak(provider_port: u16) -> TestApp {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    TestApp::embedded()
        .env("FIREBREAK_LISTEN", &format!("127.0.0.1:{port}"))
        .env("FIREBREAK_AUTH__OIDC__CLIENT_SECRET", CLIENT_SECRET)
        .config(&format!(
            r#"
[automation.manual]
require_approval = true

[auth.oidc]
issuer = "http://127.0.0.1:{provider_port}"
client_id = "firebreak"
redirect_url = "{base}/auth/oidc/callback"
display_name = "Test IdP"
scopes = ["openid", "profile", "email", "groups"]

[auth.oidc.group_roles]
sre-oncall = "operator"
viewers = "viewer"
platform-admins = "admin"
"#
        ))
        .start()
        .await
}

/// GET without following redirects, no credentials.
async fn anonymous_get(url: &str) -> (u16, String, Option<String>) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), location)
}

/// Waits until Firebreak's sign-in sends browsers to the provider (it asks
/// a provider it could not reach again after 10 s).
async fn provider_found(fb: &Firebreak) {
    eventually(
        "the provider to be found",
        Duration::from_secs(30),
        || async {
            let (status, _, _) = anonymous_get(&format!("{}/auth/oidc/login", fb.base)).await;
            (status == 303).then_some(())
        },
    )
    .await;
}

async fn an_incident(fb: &Firebreak) -> i64 {
    let (s, b) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &webhook(&[TestAlert::firing("oidc-1", "checkout")]),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    eventually("the alert's incident", Duration::from_secs(20), || async {
        let (_, list) = fb.get("/api/v1/incidents").await;
        list["incidents"][0]["id"].as_i64()
    })
    .await
}

#[tokio::test]
async fn people_sign_in_with_the_provider_and_their_groups_decide_what_they_may_do() {
    let provider_port = free_port();
    let app = firebreak(provider_port).await;
    let fb = &app.fb;

    // The provider is not up yet: Firebreak started anyway, and its sign-in
    // says the provider cannot be reached.
    let (status, page, _) = anonymous_get(&format!("{}/auth/oidc/login", fb.base)).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Test IdP cannot be reached"), "{page}");
    let (status, page, _) = anonymous_get(&format!("{}/login", fb.base)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Sign in with Test IdP"), "{page}");

    let idp = provider(provider_port, &fb.base).await;
    // A failed discovery is retried after 10 s at the most.
    let location = eventually(
        "sign-in to send the browser to the provider",
        Duration::from_secs(30),
        || async {
            let (status, _, location) =
                anonymous_get(&format!("{}/auth/oidc/login?next=/incidents", fb.base)).await;
            location.filter(|_| status == 303)
        },
    )
    .await;
    let to = reqwest::Url::parse(&location).unwrap();
    let query: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(
        to.as_str().split('?').next(),
        Some(format!("{}/auth", idp.issuer).as_str())
    );
    assert_eq!(query["code_challenge_method"], "S256", "{location}");
    assert_eq!(query["response_type"], "code");
    for key in ["state", "nonce", "code_challenge"] {
        assert!(query[key].len() >= 16, "{key} in {location}");
    }
    assert!(query["scope"].contains("openid") && query["scope"].contains("groups"));

    let incident = an_incident(fb).await;
    let first = held_kill_switch(fb, "checkout.new-payment-flow", Some(incident)).await["id"]
        .as_i64()
        .unwrap();
    let second = held_kill_switch(fb, "checkout.saved-cards", Some(incident)).await["id"]
        .as_i64()
        .unwrap();

    let seen = browser(
        "oidc",
        json!({"base": fb.base, "provider_name": "Test IdP", "incident": incident, "issuer": idp.issuer,
               "action": first, "second_action": second}),
    )
    .await;

    assert_eq!(
        seen["alice_landed"],
        format!("/incidents/{incident}"),
        "back where she started: {seen}"
    );
    assert_eq!(seen["alice"]["body"]["id"], "oidc:alice", "{seen}");
    assert_eq!(seen["alice"]["body"]["role"], "operator", "{seen}");
    assert!(
        seen["alice_approved"]
            .as_str()
            .unwrap()
            .starts_with("Approved"),
        "{seen}"
    );
    assert_eq!(
        seen["dana"]["body"]["role"], "admin",
        "the highest of her groups' roles: {seen}"
    );
    assert_eq!(seen["dana_token"]["status"], 201, "{seen}");
    let token = seen["dana_token"]["body"]["token"].as_str().unwrap();
    let me: Value = anonymous()
        .get(format!("{}/api/v1/me", fb.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], "oidc:dana", "her token acts as her: {me}");
    assert_eq!(seen["bob"]["body"]["id"], "oidc:bob", "{seen}");
    assert_eq!(seen["bob"]["body"]["role"], "viewer", "{seen}");
    assert_eq!(seen["bob_offered"], 0, "a viewer is offered no decision");
    assert_eq!(seen["bob_approve"]["status"], 403, "{seen}");
    assert_eq!(seen["after_logout"], "/login", "{seen}");
    assert_eq!(seen["alice_after_logout"]["status"], 401, "{seen}");

    // The approval is alice's, under her provider identity; bob's attempt
    // changed nothing.
    let (_, action) = fb.get(&format!("/api/v1/actions/{first}")).await;
    assert_eq!(action["decided_by"], "oidc:alice", "{action}");
    let (_, other) = fb.get(&format!("/api/v1/actions/{second}")).await;
    assert_eq!(other["status"], "held", "{other}");
    // Both are people Firebreak knows now, with the role their groups gave.
    let (_, users) = fb.get("/api/v1/users").await;
    let roles: Vec<(String, String)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().to_string(),
                u["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("oidc:alice".to_string(), "operator".to_string()),
            ("oidc:bob".to_string(), "viewer".to_string()),
            ("oidc:dana".to_string(), "admin".to_string())
        ]
    );
    // Their first sign-in is audited with the role, email and groups the
    // provider gave.
    let (_, audit) = fb
        .get("/api/v1/audit?actor=oidc:alice&event=oidc_user")
        .await;
    let first = &audit["entries"][0];
    assert_eq!(first["detail"]["email"], "alice@example.test", "{audit}");
    assert_eq!(first["detail"]["role"], "operator", "{audit}");
    assert_eq!(first["detail"]["groups"], json!(["sre-oncall"]), "{audit}");
    // And no password signs them in.
    let (s, b) = anonymous_post(
        &fb.base,
        "/api/v1/login",
        &json!({"username": "oidc:alice", "password": "anything at all, really"}),
    )
    .await;
    assert_eq!(s, 401, "{b}");
}

#[tokio::test]
async fn forged_expired_replayed_and_misdirected_answers_are_refused_saying_why() {
    let provider_port = free_port();
    let app = firebreak(provider_port).await;
    let fb = &app.fb;
    let idp = provider(provider_port, &fb.base).await;
    provider_found(fb).await;

    let seen = browser(
        "oidc-refusals",
        json!({"base": fb.base, "provider_name": "Test IdP", "issuer": idp.issuer}),
    )
    .await;

    let refused = |case: &str, status: u16, says: &str| {
        let c = &seen[case];
        assert_eq!(c["status"], status, "{case}: {c}");
        assert!(
            c["error"].as_str().unwrap_or("").contains(says),
            "{case} should say {says:?}: {c}"
        );
        assert_eq!(c["me"], 401, "{case} left no session: {c}");
    };
    refused("forged", 401, "ID token from Test IdP was refused");
    refused("unknown-kid", 401, "ID token from Test IdP was refused");
    refused("expired", 401, "ID token from Test IdP was refused");
    refused("wrong-audience", 401, "ID token from Test IdP was refused");
    refused("wrong-nonce", 401, "ID token from Test IdP was refused");
    refused("no_group", 403, "no Firebreak role to give");
    assert_eq!(seen["first_use"]["me"], 200, "{seen}");
    refused("replayed", 401, "refused the sign-in code");
    refused("wrong_state", 400, "wrong state");

    let logs = fb.logs();
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret never reaches the log"
    );
}

async fn anonymous_post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = anonymous()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The provider rotates its signing key (here: restarts with a new one,
/// under a new key id): the next sign-in fetches the keys again and works,
/// with no restart of Firebreak.
#[tokio::test]
async fn a_rotated_signing_key_is_fetched_again() {
    let provider_port = free_port();
    let app = firebreak(provider_port).await;
    let fb = &app.fb;
    let idp = provider(provider_port, &fb.base).await;
    provider_found(fb).await;
    let input = json!({"base": fb.base, "provider_name": "Test IdP", "login": "alice"});
    let first = browser("oidc-sign-in", input.clone()).await;
    assert_eq!(first["me"]["body"]["id"], "oidc:alice", "{first}");

    drop(idp);
    let _rotated = provider(provider_port, &fb.base).await;
    // Keys are fetched again at most every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let second = browser("oidc-sign-in", input).await;
    assert_eq!(second["status"], 303, "{second}");
    assert_eq!(second["me"]["body"]["id"], "oidc:alice", "{second}");
}
