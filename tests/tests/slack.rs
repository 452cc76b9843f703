//! Slack chat-ops end to end: requests signed by Slack's own SDK (Python
//! `slack_sdk`, tests/support/slack/sign.py), a recording server standing in
//! for Slack's Web API and response_url, the real binary in between.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_tests::{alert_now, client, deploy_now, eventually, Firebreak, Options, Recorder};
use serde_json::{json, Value};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const WAIT: Duration = Duration::from_secs(20);

/// Signs `body` with Slack's SDK at `timestamp`; returns the signature.
async fn sdk_signature(secret: &str, timestamp: i64, body: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/slack/sign.py");
    let python = std::env::var("FIREBREAK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(secret)
        .arg(timestamp.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "slack_sdk did not sign (install it: pip install -r tests/support/slack/requirements.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    parsed["signature"].as_str().unwrap().to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A fresh trigger id, as Slack sends with each command and click.
fn trigger_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{}.{}.t",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

struct Slack {
    fb: Firebreak,
    api: Recorder,
    posts: Arc<Mutex<u32>>,
}

impl Slack {
    async fn send(&self, path: &str, body: &str, signature: Option<(&str, i64)>) -> (u16, Value) {
        let mut req = client()
            .post(format!("{}{path}", self.fb.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        if let Some((secret, ts)) = signature {
            req = req
                .header("X-Slack-Request-Timestamp", ts.to_string())
                .header("X-Slack-Signature", sdk_signature(secret, ts, body).await);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn command(&self, user: &str, text: &str) -> Value {
        let body = form(&[
            ("token", "legacy-unused"),
            ("team_id", "T1"),
            ("channel_id", "C1"),
            ("user_id", user),
            ("user_name", &user.to_lowercase()),
            ("command", "/firebreak"),
            ("text", text),
            (
                "response_url",
                &format!("{}/response/{user}", self.api.base),
            ),
            // Slack gives every invocation its own trigger id (so two
            // identical commands in one second are two signed requests).
            ("trigger_id", &trigger_id()),
        ]);
        let (status, answer) = self
            .send(
                "/slack/commands",
                &body,
                Some((SECRET, chrono::Utc::now().timestamp())),
            )
            .await;
        assert_eq!(status, 200, "{text}: {answer}");
        answer
    }

    async fn click(&self, user: &str, action_id: &str, value: &str) -> u16 {
        let payload = json!({
            "type": "block_actions",
            "trigger_id": trigger_id(),
            "user": {"id": user, "username": user.to_lowercase()},
            "response_url": format!("{}/response/click-{user}", self.api.base),
            "actions": [{"action_id": action_id, "value": value, "type": "button"}],
        });
        let body = form(&[("payload", &payload.to_string())]);
        self.send(
            "/slack/interactions",
            &body,
            Some((SECRET, chrono::Utc::now().timestamp())),
        )
        .await
        .0
    }
}

async fn start(dir: &Path, playbook: Option<&str>) -> Slack {
    start_with(dir, playbook, &[]).await
}

async fn start_with(dir: &Path, playbook: Option<&str>, env: &[(&str, &str)]) -> Slack {
    let posts = Arc::new(Mutex::new(0u32));
    let counter = posts.clone();
    let api = Recorder::start(move |r| match r.path.as_str() {
        "/api/chat.postMessage" => {
            let mut n = counter.lock().unwrap();
            *n += 1;
            // Slack rate-limits the very first post: Firebreak must wait and retry.
            if *n == 1 {
                return (
                    429,
                    json!({"ok": false, "error": "ratelimited", "_headers": {"Retry-After": "1"}}),
                );
            }
            (
                200,
                json!({"ok": true, "channel": "C_INC", "ts": format!("1700000000.{:06}", *n)}),
            )
        }
        "/api/usergroups.users.list" => (200, json!({"ok": true, "users": ["U_ONCALL"]})),
        p if p.starts_with("/response/") => (200, json!({})),
        p if p.starts_with("/argocd/") => (200, json!({"ok": true})),
        _ => (404, json!({"ok": false, "error": "unknown_method"})),
    })
    .await;
    let books = dir.join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    if let Some(p) = playbook {
        std::fs::write(books.join("p.yaml"), p).unwrap();
    }
    let config = dir.join("firebreak.toml");
    std::fs::write(
        &config,
        format!("[rollback.argocd]\ntype = \"http\"\nurl = \"{}/argocd/{{{{service}}}}/rollback\"\nbody = {{ id = \"{{{{target.version}}}}\" }}\n", api.base),
    )
    .unwrap();
    let mut options = Options::embedded();
    for (k, v) in env {
        options = options.with(k, v);
    }
    let fb = Firebreak::start(
        &dir.join("data"),
        options
            .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
            .with("FIREBREAK_CONFIG", config.to_str().unwrap())
            .with("FIREBREAK_SLACK_SIGNING_SECRET", SECRET)
            .with("FIREBREAK_SLACK_BOT_TOKEN", "xoxb-test")
            .with("FIREBREAK_SLACK_API_URL", &format!("{}/api", api.base))
            .with("FIREBREAK_SLACK_CHANNEL", "#incidents")
            .with("FIREBREAK_SLACK_ALLOWED_USERS", "U_ADMIN")
            .with("FIREBREAK_SLACK__ROLES__U_ALICE", "editor")
            .with("FIREBREAK_SLACK_ALLOWED_GROUPS", "S_ONCALL"),
    )
    .await;
    Slack { fb, api, posts }
}

async fn audit_len(fb: &Firebreak) -> usize {
    let (_, a) = fb.get("/api/v1/audit?limit=1000").await;
    a["entries"].as_array().unwrap().len()
}

#[tokio::test]
async fn only_requests_signed_as_slack_does_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), None).await;
    let now = chrono::Utc::now().timestamp();
    let body = form(&[
        ("user_id", "U_ADMIN"),
        ("user_name", "admin"),
        ("text", "pause"),
    ]);
    let before = audit_len(&s.fb).await;
    // Forged (another secret), stale (signed correctly 6 minutes ago), unsigned.
    assert_eq!(
        s.send("/slack/commands", &body, Some(("not-the-secret", now)))
            .await
            .0,
        401
    );
    assert_eq!(
        s.send("/slack/commands", &body, Some((SECRET, now - 360)))
            .await
            .0,
        401
    );
    assert_eq!(s.send("/slack/commands", &body, None).await.0, 401);
    let interaction = form(&[("payload", "{}")]);
    assert_eq!(
        s.send("/slack/interactions", &interaction, Some(("forged", now)))
            .await
            .0,
        401
    );
    assert_eq!(
        audit_len(&s.fb).await,
        before,
        "refused requests change nothing"
    );
    let (_, automation) = s.fb.get("/api/v1/automation").await;
    assert_eq!(automation["paused"], false);
    // The same body signed by Slack's SDK with the right secret now is accepted.
    let (status, answer) = s.send("/slack/commands", &body, Some((SECRET, now))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response_type"], "in_channel");
    let (_, automation) = s.fb.get("/api/v1/automation").await;
    assert_eq!(automation["paused"], true);

    // The same signed request again, within the 5 minutes: refused, applied once.
    let note = form(&[
        ("user_id", "U_ADMIN"),
        ("user_name", "admin"),
        ("text", "resume"),
    ]);
    let before = audit_len(&s.fb).await;
    let (status, answer) = s.send("/slack/commands", &note, Some((SECRET, now))).await;
    assert_eq!(status, 200, "{answer}");
    let after_first = audit_len(&s.fb).await;
    assert!(after_first > before);
    for _ in 0..2 {
        let r = client()
            .post(format!("{}/slack/commands", s.fb.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", now.to_string())
            .header("X-Slack-Signature", sdk_signature(SECRET, now, &note).await)
            .body(note.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("already applied"),
            "{body}"
        );
    }
    assert_eq!(
        audit_len(&s.fb).await,
        after_first,
        "a replay changes nothing"
    );
    // A timestamp of now - 2^63 cannot wrap into the window.
    let far = now.wrapping_sub(i64::MAX).wrapping_sub(1);
    assert_eq!(
        s.send("/slack/commands", &body, Some((SECRET, far)))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn every_command_works_and_destructive_ones_need_an_allowed_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), None).await;
    let fb = &s.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-payment-flow"}),
    )
    .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v41", 300))
        .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v42", 10))
        .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("sl01", "HighErrorRate", "checkout", 0),
    )
    .await;
    let id = eventually("the incident", WAIT, || async {
        let (_, l) = fb.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;

    let help = s.command("U_ALICE", "").await;
    assert!(help["text"]
        .as_str()
        .unwrap()
        .contains("killswitch <flag> off|on"));
    assert_eq!(help["response_type"], "ephemeral");
    let unknown = s.command("U_ALICE", "reboot everything").await;
    assert!(unknown["text"]
        .as_str()
        .unwrap()
        .contains("I don't know `reboot`"));
    let bad = s.command("U_ALICE", "note").await;
    assert!(bad["text"]
        .as_str()
        .unwrap()
        .contains("needs different arguments"));

    let list = s.command("U_ALICE", "list").await;
    assert!(
        list["text"].as_str().unwrap().contains(&format!("#{id}")),
        "{list}"
    );
    let ack = s.command("U_ALICE", &format!("ack {id}")).await;
    assert_eq!(ack["response_type"], "in_channel");
    s.command(
        "U_ALICE",
        &format!("note {id} checked the dashboards: <b>5xx</b> only on /pay"),
    )
    .await;
    let again = s.command("U_ALICE", &format!("ack {id}")).await;
    assert!(
        again["text"]
            .as_str()
            .unwrap()
            .contains("acknowledged already by slack:U_ALICE"),
        "{again}"
    );
    // Severity, stage and commander from Slack (editor), resolving only for operators.
    let sev = s.command("U_ALICE", &format!("sev {id} sev2")).await;
    assert!(sev["text"].as_str().unwrap().contains("SEV2"), "{sev}");
    let stage = s
        .command("U_ALICE", &format!("status {id} identified"))
        .await;
    assert!(
        stage["text"].as_str().unwrap().contains("identified"),
        "{stage}"
    );
    let cmd = s
        .command("U_ALICE", &format!("commander {id} <@U_ONCALL|oncall>"))
        .await;
    assert!(
        cmd["text"]
            .as_str()
            .unwrap()
            .contains("commander slack:U_ONCALL"),
        "{cmd}"
    );
    let bad = s.command("U_ALICE", &format!("sev {id} P0")).await;
    assert!(
        bad["text"]
            .as_str()
            .unwrap()
            .contains("SEV1, SEV2, SEV3, SEV4"),
        "{bad}"
    );
    let refused = s.command("U_ALICE", &format!("status {id} resolved")).await;
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("needs the operator role"),
        "{refused}"
    );
    let (_, one) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(
        (
            one["severity"].clone(),
            one["stage"].clone(),
            one["commander"].clone(),
            one["acknowledged_by"].clone(),
            one["status"].clone()
        ),
        (
            json!("SEV2"),
            json!("identified"),
            json!("slack:U_ONCALL"),
            json!("slack:U_ALICE"),
            json!("open")
        )
    );
    let declared = s
        .command("U_ALICE", "declare search Results are stale")
        .await;
    assert!(
        declared["text"]
            .as_str()
            .unwrap()
            .contains("declared incident #"),
        "{declared}"
    );
    let (_, l) = fb.get("/api/v1/incidents?service=search").await;
    assert_eq!(l["incidents"][0]["title"], "Results are stale");
    assert_eq!(l["incidents"][0]["declared_by"], "slack:U_ALICE");
    let status = s.command("U_ALICE", &format!("status #{id}")).await;
    let text = status["text"].as_str().unwrap();
    assert!(
        text.contains("Acknowledged by slack:U_ALICE")
            && text.contains("checkout v42")
            && text.contains("identified, SEV2")
            && text.contains("Commander: slack:U_ONCALL"),
        "{text}"
    );
    let (_, t) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
    let note = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "note")
        .unwrap();
    // One source format on every door: the identity that acted.
    assert_eq!(note["source"], "slack:U_ALICE");
    assert_eq!(
        note["summary"],
        "checked the dashboards: <b>5xx</b> only on /pay"
    );

    // Not allowed: refused, nothing changes, audited.
    let refused = s
        .command("U_ALICE", "killswitch checkout.new-payment-flow off")
        .await;
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("needs the operator role; you (U_ALICE) are editor"),
        "{refused}"
    );
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-payment-flow").await;
    assert_eq!(flag["enabled"], true);
    // Allowed by user id: the kill switch goes off, verified, and the outcome is posted later.
    let ks = s
        .command("U_ADMIN", "killswitch checkout.new-payment-flow off")
        .await;
    assert_eq!(ks["response_type"], "in_channel", "{ks}");
    eventually("the flag off", WAIT, || async {
        let (_, f) = fb.get("/api/v1/flags/checkout.new-payment-flow").await;
        (f["enabled"] == false).then_some(())
    })
    .await;
    let outcome = eventually("the follow-up", WAIT, || async {
        s.api.matching("POST", "/response/U_ADMIN").pop()
    })
    .await;
    assert!(
        outcome.body["text"]
            .as_str()
            .unwrap()
            .contains("done, verified"),
        "{:?}",
        outcome.body
    );
    // Allowed through a user group: pause and resume.
    let paused = s.command("U_ONCALL", "pause").await;
    assert!(paused["text"]
        .as_str()
        .unwrap()
        .contains("paused automation"));
    s.command("U_ONCALL", "resume").await;
    // Rollback to the last good deploy, through the configured provider.
    let rb = s.command("U_ADMIN", "rollback checkout").await;
    assert!(
        rb["text"].as_str().unwrap().contains("from v42 to v41"),
        "{rb}"
    );
    let call = eventually("the rollback call", WAIT, || async {
        s.api.matching("POST", "/argocd/checkout/rollback").pop()
    })
    .await;
    assert_eq!(call.body, json!({"id": "v41"}));
    // The postmortem answer, then resolve.
    let pm = s.command("U_ALICE", &format!("postmortem {id}")).await;
    assert!(pm["text"]
        .as_str()
        .unwrap()
        .contains("no postmortem draft yet"));
    let resolved = s.command("U_ALICE", &format!("resolve {id}")).await;
    assert!(
        resolved["text"]
            .as_str()
            .unwrap()
            .contains("needs the operator role"),
        "{resolved}"
    );
    let resolved = s.command("U_ADMIN", &format!("resolve {id}")).await;
    assert!(resolved["text"]
        .as_str()
        .unwrap()
        .contains("resolved incident"));
    let (_, i) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(i["status"], "resolved");

    let (_, audit) = fb.get("/api/v1/audit?limit=1000").await;
    let entries = audit["entries"].as_array().unwrap();
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "slack_command_refused")
        .collect();
    assert_eq!(
        refused.len(),
        3,
        "the kill switch, the stage resolved and the resolve"
    );
    assert!(refused.iter().all(|e| e["actor"] == "slack:U_ALICE"));
    let commands = entries
        .iter()
        .filter(|e| e["event"] == "slack_command")
        .count();
    assert_eq!(
        commands, 19,
        "every allowed command is audited (and the refused ones above)"
    );
}

#[tokio::test]
async fn buttons_approve_once_and_incidents_get_one_thread_despite_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        Some("name: held\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - kill_switch: { flag: pay.flag }\n    require_approval: true\n"),
    )
    .await;
    let fb = &s.fb;
    fb.post("/api/v1/flags", &json!({"key": "pay.flag"})).await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("sl02", "HighErrorRate", "payments", 0),
    )
    .await;
    let held = fb.action_in("held", "held").await;
    let id = held["id"].as_i64().unwrap().to_string();

    // The held message arrives in the incident's thread with buttons, after
    // Slack's 429 on the first post was waited out.
    let with_buttons = eventually("the held message", Duration::from_secs(30), || async {
        s.api
            .matching("POST", "/api/chat.postMessage")
            .into_iter()
            .find(|r| r.body["blocks"].is_array())
    })
    .await;
    let posts = s.api.matching("POST", "/api/chat.postMessage");
    assert!(
        *s.posts.lock().unwrap() >= 3,
        "one 429, then the thread root and the held message"
    );
    assert_eq!(posts[0].body["channel"], "#incidents");
    assert!(posts[0].body["text"]
        .as_str()
        .unwrap()
        .contains("Incident opened"));
    let root_ts = "1700000000.000002";
    assert_eq!(
        with_buttons.body["thread_ts"], root_ts,
        "held message in the incident's thread"
    );
    assert_eq!(with_buttons.body["blocks"][1]["elements"][0]["value"], id);

    // Not allowed: nothing changes.
    assert_eq!(s.click("U_ALICE", "firebreak_approve", &id).await, 200);
    let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
    assert_eq!(a["status"], "held");
    // Two clicks by an allowed user approve once.
    assert_eq!(s.click("U_ADMIN", "firebreak_approve", &id).await, 200);
    assert_eq!(s.click("U_ADMIN", "firebreak_approve", &id).await, 200);
    let done = eventually("the approved action", WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        (a["status"] == "succeeded").then_some(a)
    })
    .await;
    assert_eq!(done["decided_by"], "slack:U_ADMIN");
    let approvals = done["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "approved")
        .count();
    assert_eq!(approvals, 1);
    let (_, flag) = fb.get("/api/v1/flags/pay.flag").await;
    assert_eq!(flag["enabled"], false);
    let replies = eventually("the message updates", WAIT, || async {
        let r = s.api.matching("POST", "/response/click-U_ADMIN");
        (r.len() == 2).then_some(r)
    })
    .await;
    let replaced = replies
        .iter()
        .find(|r| r.body["replace_original"] == true)
        .unwrap();
    assert!(replaced.body["text"]
        .as_str()
        .unwrap()
        .contains("Approved by <@U_ADMIN>"));
    let second = replies
        .iter()
        .find(|r| r.body["replace_original"] == false)
        .unwrap();
    assert!(second.body["text"]
        .as_str()
        .unwrap()
        .contains("Nothing changed"));
    let refusal = s
        .api
        .matching("POST", "/response/click-U_ALICE")
        .pop()
        .unwrap();
    assert!(refusal.body["text"]
        .as_str()
        .unwrap()
        .contains("needs the operator role"));
    // The executed action is announced in the same thread.
    let executed = eventually("the executed message", WAIT, || async {
        s.api
            .matching("POST", "/api/chat.postMessage")
            .into_iter()
            .find(|r| r.body["text"].as_str().unwrap_or("").contains("verified"))
    })
    .await;
    assert_eq!(executed.body["thread_ts"], root_ts);
}

/// A kill switch or rollback asked for in Slack takes the same guarded path
/// as a playbook's: under global dry-run it is recorded and nothing is
/// called; under the pause it is held for a human.
#[tokio::test]
async fn slack_requests_meet_the_same_guardrails_as_playbooks() {
    let dir = tempfile::tempdir().unwrap();
    let slack = start_with(dir.path(), None, &[("FIREBREAK_DRY_RUN", "true")]).await;
    let fb = &slack.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-payment-flow", "enabled": true}),
    )
    .await;
    let answer = slack
        .command("U_ADMIN", "killswitch checkout.new-payment-flow off")
        .await;
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("dry run") && text.contains("nothing was called"),
        "{text}"
    );
    let actions = fb.actions().await;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["status"], "dry_run", "{}", actions[0]);
    assert_eq!(actions[0]["playbook"], "manual");
    assert_eq!(actions[0]["requested_by"], "slack:U_ADMIN");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-payment-flow").await;
    assert_eq!(flag["enabled"], true, "dry-run called nothing");
    drop(slack);

    let dir = tempfile::tempdir().unwrap();
    let slack = start(dir.path(), None).await;
    let fb = &slack.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-payment-flow", "enabled": true}),
    )
    .await;
    fb.post(
        "/api/v1/automation/pause",
        &json!({"comment": "incident commander"}),
    )
    .await;
    let text = slack
        .command("U_ADMIN", "killswitch checkout.new-payment-flow off")
        .await["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("held for a human") && text.contains("paused"),
        "{text}"
    );
    assert_eq!(fb.actions().await[0]["status"], "held");
    // The same request twice is one action.
    let again = slack
        .command("U_ADMIN", "killswitch checkout.new-payment-flow off")
        .await;
    assert!(
        again["text"]
            .as_str()
            .unwrap()
            .contains("already does this"),
        "{again}"
    );
    assert_eq!(fb.actions().await.len(), 1);
}

/// Guarded rollouts from Slack: looking is for everyone, steering for operators.
#[tokio::test]
async fn slack_starts_and_steers_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), None).await;
    let fb = &s.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-flow", "enabled": false}),
    )
    .await;
    let text = |v: Value| v["text"].as_str().unwrap_or_default().to_string();
    let percent = |id: i64| async move {
        let (_, r) = fb.get(&format!("/api/v1/rollouts/{id}")).await;
        r["percent"].as_i64()
    };
    let r = text(
        s.command(
            "U_ALICE",
            "rollout start checkout.new-flow checkout 5,25,100 1h",
        )
        .await,
    );
    assert!(r.contains("needs the operator role"), "{r}");
    let r = text(
        s.command(
            "U_ADMIN",
            "rollout start checkout.new-flow checkout 5,25,100 1h",
        )
        .await,
    );
    assert!(r.contains("started rollout #1"), "{r}");
    eventually("at 5 %", WAIT, || async {
        (percent(1).await == Some(5)).then_some(())
    })
    .await;
    let r = text(s.command("U_ALICE", "rollout 1").await);
    assert!(r.contains("running at 5%"), "{r}");
    let r = text(s.command("U_ADMIN", "rollout pause 1").await);
    assert!(r.contains("paused rollout #1"), "{r}");
    let r = text(s.command("U_ADMIN", "rollout pause 1").await);
    assert!(
        r.contains("is paused") && r.contains("Nothing was changed"),
        "{r}"
    );
    let r = text(s.command("U_ADMIN", "rollout restart 1 2").await);
    assert!(r.contains("restarted rollout #1"), "{r}");
    eventually("at 25 %", WAIT, || async {
        (percent(1).await == Some(25)).then_some(())
    })
    .await;
    let r = text(s.command("U_ADMIN", "rollout abort 1").await);
    assert!(r.contains("aborted rollout #1"), "{r}");
    let r = text(
        s.command("U_ADMIN", "rollout start checkout.new-flow checkout 5,x")
            .await,
    );
    assert!(r.contains("is not a percentage"), "{r}");
    let (_, audit) = fb.get("/api/v1/audit?limit=1000").await;
    assert!(
        audit.to_string().contains("slack:U_ADMIN"),
        "who steered is audited"
    );
}

/// An editor confirms from Slack which change caused an incident; change
/// fail rate then counts it as the confirmed cause.
#[tokio::test]
async fn slack_marks_the_cause_of_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), None).await;
    let fb = &s.fb;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 3))
        .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("c1", "HighErrorRate", "checkout", 0),
    )
    .await;
    eventually("the suspect", WAIT, || async {
        let (_, i) = fb.get("/api/v1/incidents/1").await;
        i["suspect_changes"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    let text = |v: Value| v["text"].as_str().unwrap_or_default().to_string();
    let r = text(s.command("U_VIEWER", "cause 1 v2 yes").await);
    assert!(r.contains("needs the editor role"), "{r}");
    let r = text(s.command("U_ALICE", "cause 1 v9 yes").await);
    assert!(r.contains("has no suspect change `v9`"), "{r}");
    let r = text(s.command("U_ALICE", "cause 1 v2 maybe").await);
    assert!(r.contains("End with `yes`"), "{r}");
    let r = text(s.command("U_ALICE", "cause 1 v2 yes").await);
    assert!(
        r.contains("marked change") && r.contains("as the cause of incident #1"),
        "{r}"
    );
    // The timeline names the change by service and version, not only its id.
    let (_, t) = fb.get("/api/v1/incidents/1/timeline").await;
    let marked = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "cause_marked")
        .unwrap()
        .clone();
    assert!(
        marked["summary"]
            .as_str()
            .unwrap()
            .contains("marked change checkout v2 (")
            && marked["summary"]
                .as_str()
                .unwrap()
                .contains("as the cause: from Slack"),
        "{marked}"
    );
    let (_, v) = fb.get("/api/v1/insights?service=checkout").await;
    assert_eq!(
        v["change_fail_rate"]["by_reason"],
        json!({"confirmed_cause": 1}),
        "{v}"
    );
}

/// A playbook's notify step to the channel of the incident threads is said
/// in the incident's thread (after the incident's first message, by the
/// notifier), not as a second message at the top of the channel.
#[tokio::test]
async fn a_notify_step_speaks_in_the_incident_thread() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        Some("name: tell\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - notify: { slack: \"#incidents\", message: \"checkout errors on {{service}}: look at the canary\" }\n"),
    )
    .await;
    s.fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("sl09", "HighErrorRate", "payments", 0),
    )
    .await;
    let said = eventually("the notification", Duration::from_secs(30), || async {
        s.api
            .matching("POST", "/api/chat.postMessage")
            .into_iter()
            .find(|r| {
                r.body["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("look at the canary")
            })
    })
    .await;
    let posts = s.api.matching("POST", "/api/chat.postMessage");
    assert!(
        posts.iter().any(|r| {
            r.body["text"]
                .as_str()
                .unwrap_or("")
                .contains("Incident opened")
                && r.body["thread_ts"].is_null()
        }),
        "the incident's first message starts the thread"
    );
    assert_eq!(
        said.body["thread_ts"], "1700000000.000002",
        "in the thread of the incident's first message: {:?}",
        said.body
    );
    assert_eq!(
        posts
            .iter()
            .filter(|r| r.body["text"]
                .as_str()
                .unwrap_or("")
                .contains("look at the canary"))
            .count(),
        1,
        "said once"
    );
    let action = s.fb.action_in("tell", "succeeded").await;
    assert_eq!(action["result"]["slack"]["thread"], true, "{action}");
}

/// The outbox: Firebreak dies after it claimed an announcement and before
/// Slack answered (this stand-in for Slack accepts a message only when it
/// answers, and holds the first one for a minute). The restarted process
/// takes the claim over once its lease has passed and posts it, once.
#[tokio::test]
async fn an_announcement_cut_short_by_a_crash_is_posted_after_the_restart_once() {
    use axum::routing::post;
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = {
        let (accepted, calls) = (accepted.clone(), calls.clone());
        axum::Router::new().route(
            "/api/chat.postMessage",
            post(move |body: axum::body::Bytes| {
                let (accepted, calls) = (accepted.clone(), calls.clone());
                async move {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                    accepted
                        .lock()
                        .unwrap()
                        .push(body["text"].as_str().unwrap_or("").to_string());
                    axum::Json(
                        json!({"ok": true, "channel": "C_INC", "ts": format!("1700000000.{n:06}")}),
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let mut fb = Firebreak::start(
        dir.path(),
        Options::embedded()
            .with("FIREBREAK_SLACK_BOT_TOKEN", "xoxb-test")
            .with("FIREBREAK_SLACK_API_URL", &api)
            .with("FIREBREAK_SLACK_CHANNEL", "#incidents"),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("sl10", "HighErrorRate", "payments", 0),
    )
    .await;
    eventually("the first post in flight", WAIT, || async {
        (calls.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    fb.kill9();
    let killed = std::time::Instant::now();
    fb.restart().await;
    let texts = eventually(
        "the announcement posted after the restart",
        Duration::from_secs(50),
        || async {
            let a = accepted.lock().unwrap().clone();
            (!a.is_empty()).then_some(a)
        },
    )
    .await;
    println!(
        "announcement posted {:.1} s after the crash (claim lease 30 s)",
        killed.elapsed().as_secs_f64()
    );
    assert!(texts[0].contains("Incident opened"), "{texts:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let texts = accepted.lock().unwrap().clone();
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("Incident opened"))
            .count(),
        1,
        "posted once: {texts:?}"
    );
    server.abort();
}

/// Four-eyes means another person, on every path (issue 23): a person is
/// one principal across web sign-in, Slack (`slack.people`) and the tokens
/// they made; while their kill switch waits for approval nothing else
/// changes the flag.
#[tokio::test]
async fn four_eyes_means_another_person_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(
        dir.path(),
        None,
        &[
            ("FIREBREAK_AUTOMATION__FOUR_EYES", "true"),
            ("FIREBREAK_AUTOMATION__FOUR_EYES_MIN_ROLE", "operator"),
            ("FIREBREAK_AUTOMATION__MANUAL__REQUIRE_APPROVAL", "true"),
            ("FIREBREAK_SLACK__ROLES__U_ANA", "admin"),
            ("FIREBREAK_SLACK__PEOPLE__U_ANA", "ana"),
        ],
    )
    .await;
    let fb = &s.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.flow", "enabled": true}),
    )
    .await;
    let password = "tangerine quietly orbits saturn";
    let (status, body) = fb
        .post(
            "/api/v1/users",
            &json!({"username": "ana", "password": password, "role": "admin"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Ana signs in on the web and makes a token for her scripts.
    let web = reqwest::Client::new();
    let r = web
        .post(format!("{}/api/v1/login", fb.base))
        .json(&json!({"username": "ana", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let login: Value = r.json().await.unwrap();
    let csrf = login["csrf_token"].as_str().unwrap().to_string();
    let as_ana = |method: reqwest::Method, path: &str, body: Value| {
        web.request(method, format!("{}{path}", fb.base))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("origin", &fb.base)
            .json(&body)
    };
    let r = as_ana(
        reqwest::Method::POST,
        "/api/v1/tokens",
        json!({"name": "ana-script", "scopes": ["read", "operate"]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let token: Value = r.json().await.unwrap();
    let ana_token = firebreak_tests::Caller {
        base: fb.base.clone(),
        token: token["token"].as_str().unwrap().to_string(),
    };

    // Her script asks for the kill switch: held, and it is hers.
    let (status, held) = ana_token
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
    assert_eq!(held["requested_by"], "user:ana", "{held}");
    let id = held["id"].as_i64().unwrap();

    // Nothing else changes the flag while it waits: PUT, import, delete, a
    // second request, from her session or her token.
    let put = as_ana(
        reqwest::Method::PUT,
        "/api/v1/flags/pay.flow",
        json!({"enabled": false}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(put.status().as_u16(), 409);
    let e: Value = put.json().await.unwrap();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("action #{id}"))
            && e["message"].as_str().unwrap().contains("approve or deny"),
        "{e}"
    );
    let import = json!({"flags": {"pay.flow": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}});
    let (status, e) = ana_token.post("/api/v1/flags/import", &import).await;
    assert_eq!(status, 409, "{e}");
    let (status, e) = fb.post("/api/v1/flags/import", &import).await;
    assert_eq!(status, 409, "{e}");
    let (status, e) = ana_token
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": "pay.flow", "state": "on"}),
        )
        .await;
    assert_eq!(status, 409, "{e}");
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], true, "the flag did not move");

    // She cannot approve it: not from the web, not with her token, not from Slack.
    let r = as_ana(
        reqwest::Method::POST,
        &format!("/api/v1/actions/{id}/approve"),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (status, _) = ana_token
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        s.click("U_ANA", "firebreak_approve", &id.to_string()).await,
        200
    );
    let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
    assert_eq!(a["status"], "held", "her Slack click approved nothing: {a}");

    // Another person can.
    assert_eq!(
        s.click("U_ADMIN", "firebreak_approve", &id.to_string())
            .await,
        200
    );
    let done = eventually("the approved action", WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        (a["status"] == "succeeded").then_some(a)
    })
    .await;
    assert_eq!(done["decided_by"], "slack:U_ADMIN");
    let (_, flag) = fb.get("/api/v1/flags/pay.flow").await;
    assert_eq!(flag["enabled"], false);
}
