//! Playbooks and remediation end to end, against the real binary: kill switches
//! read back by a real OpenFeature client, guardrails, approvals, rollbacks
//! against a recording Argo CD, and exactly-once claims across two engines.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_tests::{
    alert_now, client, deploy_now, eventually, openfeature_bool, repo_playbook, Amqp, Firebreak,
    Options, Pg, Recorder, TestApp, TestAppBuilder,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn timeline_kinds(fb: &Firebreak, incident: i64) -> Vec<String> {
    let (_, t) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The story: 13:55 deploy, 14:02 HighErrorRate on checkout. The
/// repository's example playbook turns the built-in flag off once, however many
/// duplicates arrive; an application using OpenFeature's OFREP provider sees it
/// off; one call reverts it.
#[tokio::test]
async fn checkout_kill_switch_example_flips_the_builtin_flag_once() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "checkout-kill-switch.yaml",
        &repo_playbook("checkout-kill-switch.yaml"),
    );
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded().with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap()),
    )
    .await;

    let (status, _) = fb
        .post("/api/v1/flags", &json!({"key": "checkout.new-payment-flow", "enabled": true, "description": "new payment flow"}))
        .await;
    assert_eq!(status, 201);
    // The application's SDK holds a token that can only read flags.
    let sdk = fb.token("checkout-sdk", &["flags:read"]).await;
    let (status, _) = sdk.get("/api/v1/incidents").await;
    assert_eq!(status, 403, "a flags:read token reads flags, nothing else");
    let before = openfeature_bool(&fb.base, "checkout.new-payment-flow", &sdk.token).await;
    assert_eq!(before["value"], true, "{before}");

    assert_eq!(
        fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 7))
            .await
            .0,
        202
    );
    let webhook = alert_now("c0ffee01", "HighErrorRate", "checkout", 0);
    for _ in 0..3 {
        // Alertmanager HA pairs and retries deliver the same notification again.
        assert_eq!(
            fb.post("/api/v1/alerts/alertmanager", &webhook).await.0,
            202
        );
    }
    let action = fb.action_in("checkout-kill-switch", "succeeded").await;
    assert_eq!(action["result"]["verified"], true);
    assert_eq!(action["previous_state"]["enabled"], true);

    let after = openfeature_bool(&fb.base, "checkout.new-payment-flow", &sdk.token).await;
    assert_eq!(
        after["value"], false,
        "the application sees the kill switch off: {after}"
    );
    assert_eq!(after["reason"], "STATIC");

    // However many duplicates, and a storm of other alerts in the same
    // incident: one action, one "matched" audit row.
    let storm: Vec<Value> = (0..50)
        .map(|i| {
            alert_now(&format!("st{i:04}"), "HighErrorRate", "checkout", 0)["alerts"][0].clone()
        })
        .collect();
    let mut storm_body = webhook.clone();
    storm_body["alerts"] = Value::Array(storm);
    assert_eq!(
        fb.post("/api/v1/alerts/alertmanager", &storm_body).await.0,
        202
    );
    eventually("the storm processed", WAIT, || async {
        (fb.metric("firebreak_events_processed_total{kind=\"alert\"}")
            .await
            >= 51.0)
            .then_some(())
    })
    .await;
    let actions = fb.actions().await;
    assert_eq!(actions.len(), 1, "{actions:#?}");

    let incident = action["incident_id"].as_i64().unwrap();
    let kinds = timeline_kinds(&fb, incident).await;
    for k in [
        "deploy",
        "alert_firing",
        "incident_opened",
        "action_requested",
        "action_executed",
    ] {
        assert!(
            kinds.contains(&k.to_string()),
            "timeline lacks {k}: {kinds:?}"
        );
    }

    let id = action["id"].as_i64().unwrap();
    let (_, audit) = fb.get(&format!("/api/v1/audit?action={id}")).await;
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for e in ["requested", "executed", "verified"] {
        assert!(events.contains(&e), "audit lacks {e}: {events:?}");
    }
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["playbook_version"] == action["playbook_version"]));
    let (_, matched) = fb.get(&format!("/api/v1/audit?incident={incident}")).await;
    let matched = matched["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "matched")
        .count();
    assert_eq!(matched, 1);

    // Revert restores the previous state, once.
    let (status, reverted) = fb
        .post(&format!("/api/v1/actions/{id}/revert"), &json!({}))
        .await;
    assert_eq!(status, 200, "{reverted}");
    assert_eq!(reverted["status"], "reverted");
    let restored = openfeature_bool(&fb.base, "checkout.new-payment-flow", &sdk.token).await;
    assert_eq!(restored["value"], true, "{restored}");
    let (status, again) = fb
        .post(&format!("/api/v1/actions/{id}/revert"), &json!({}))
        .await;
    assert_eq!(status, 409, "{again}");
    let kinds = timeline_kinds(&fb, incident).await;
    assert!(kinds.contains(&"action_reverted".to_string()), "{kinds:?}");

    // A missing flag is a FLAG_NOT_FOUND the SDK understands (it falls back to its default).
    let missing = openfeature_bool(&fb.base, "no.such-flag", &sdk.token).await;
    assert_eq!(missing["error_code"], "FLAG_NOT_FOUND", "{missing}");
    assert_eq!(missing["value"], true);
}

/// An alert long after the last deploy matches the trigger but not
/// `deployed_within`: nothing runs, and the timeline says why.
#[tokio::test]
async fn unmet_conditions_do_nothing_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "checkout-kill-switch.yaml",
        &repo_playbook("checkout-kill-switch.yaml"),
    );
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded().with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap()),
    )
    .await;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-payment-flow"}),
    )
    .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 90))
        .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("c0ffee02", "HighErrorRate", "checkout", 0),
    )
    .await;
    let id = eventually("the incident", WAIT, || async {
        let (_, l) = fb.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    let summary = eventually("a playbook_skipped entry", WAIT, || async {
        let (_, t) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
        t["entries"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "playbook_skipped")
            .cloned()
    })
    .await;
    assert!(
        summary["summary"]
            .as_str()
            .unwrap()
            .contains("more than 30m"),
        "{summary}"
    );
    assert!(fb.actions().await.is_empty());
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-payment-flow").await;
    assert_eq!(flag["enabled"], true);
}

/// Cooldown suppresses a repeat on the same target; a budget holds the next
/// action for a human and escalates; approval runs it once; a pause holds new
/// actions; dry-run records and calls nothing.
#[tokio::test]
async fn guardrails_suppress_hold_escalate_approve_pause_and_dry_run() {
    let hooks = Recorder::start(|_| (200, json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "cooldown.yaml",
        "name: cooldown\nwhen:\n  alert: { matchers: ['alertname=\"Cool\"'] }\ndo:\n  - kill_switch: { flag: shared.flag }\nguard: { cooldown: 1h }\n",
    );
    write(
        &books,
        "budget.yaml",
        "name: budget\nwhen:\n  alert: { matchers: ['alertname=\"Budget\"'] }\ndo:\n  - notify: { webhook: team, message: \"budget {{service}}\" }\nguard: { max_runs: { count: 1, per: 1h } }\n",
    );
    write(
        &books,
        "paused.yaml",
        "name: paused\nwhen:\n  alert: { matchers: ['alertname=\"Paused\"'] }\ndo:\n  - notify: { webhook: team, message: \"paused {{service}}\" }\n",
    );
    write(
        &books,
        "dry.yaml",
        "name: dry\nwhen:\n  alert: { matchers: ['alertname=\"Dry\"'] }\ndo:\n  - kill_switch: { flag: dry.flag }\nguard: { dry_run: true }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[automation]\nescalate_webhook = \"oncall\"\n\n[notify.team]\ntype = \"webhook\"\nurl = \"{0}/team\"\n\n[notify.oncall]\ntype = \"webhook\"\nurl = \"{0}/oncall\"\nheaders = {{ Authorization = \"Bearer ${{FIREBREAK_SECRET_HOOK}}\" }}\n",
            hooks.base
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
            .with("FIREBREAK_CONFIG", config.to_str().unwrap())
            .with("FIREBREAK_SECRET_HOOK", "s3cret"),
    )
    .await;
    let (_, loaded) = fb.get("/api/v1/playbooks").await;
    assert_eq!(loaded["playbooks"].as_array().unwrap().len(), 4, "{loaded}");
    fb.post("/api/v1/flags", &json!({"key": "shared.flag"}))
        .await;
    fb.post("/api/v1/flags", &json!({"key": "dry.flag"})).await;

    // Cooldown: the second incident's action on the same flag is suppressed.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("a1", "Cool", "svc-a", 0),
    )
    .await;
    fb.action_in("cooldown", "succeeded").await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("a2", "Cool", "svc-b", 0),
    )
    .await;
    let suppressed = fb.action_in("cooldown", "suppressed").await;
    assert!(
        suppressed["reason"]
            .as_str()
            .unwrap()
            .contains("cooldown 1h"),
        "{suppressed}"
    );

    // Budget: one run per hour; the second is held and escalated, not dropped.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("b1", "Budget", "svc-a", 0),
    )
    .await;
    fb.action_in("budget", "succeeded").await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("b2", "Budget", "svc-b", 0),
    )
    .await;
    let held = fb.action_in("budget", "held").await;
    assert!(
        held["reason"].as_str().unwrap().contains("over budget"),
        "{held}"
    );
    let escalation = eventually("the escalation", WAIT, || async {
        hooks.matching("POST", "/oncall").pop()
    })
    .await;
    assert_eq!(escalation.headers["authorization"], "Bearer s3cret");
    let text = escalation.body["text"].as_str().unwrap();
    assert!(text.contains("held") && text.contains("approve"), "{text}");
    assert_eq!(hooks.matching("POST", "/team").len(), 1);
    // The escalation names what it escalates, in its text and its payload.
    let id = held["id"].as_i64().unwrap();
    let about = &escalation.body["firebreak"]["escalated"];
    assert_eq!(about["action_id"], id, "{}", escalation.body);
    assert_eq!(about["kind"], held["kind"], "{}", escalation.body);
    assert_eq!(about["target"], held["target"], "{}", escalation.body);
    assert_eq!(about["status"], "held", "{}", escalation.body);
    assert_eq!(
        about["incident_id"], held["incident_id"],
        "{}",
        escalation.body
    );
    assert!(
        text.contains(&format!("action #{id}")) && text.contains(held["target"].as_str().unwrap()),
        "{text}"
    );

    // Approve releases it exactly once; a second decision is refused.
    let alice = fb.token("alice", &["read", "operate"]).await;
    let bob = fb.token("bob", &["read", "operate"]).await;
    let (status, approved) = alice
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["decided_by"], "token:alice");
    let (status, twice) = bob
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 409, "{twice}");
    assert!(
        twice["message"].as_str().unwrap().contains("alice"),
        "{twice}"
    );
    eventually("the approved notification", WAIT, || async {
        (hooks.matching("POST", "/team").len() == 2).then_some(())
    })
    .await;
    let (status, _) = fb
        .post(&format!("/api/v1/actions/{id}/deny"), &json!({}))
        .await;
    assert_eq!(status, 409);

    // Pause: new actions wait for a human.
    assert_eq!(
        fb.post(
            "/api/v1/automation/pause",
            &json!({"comment": "change freeze"})
        )
        .await
        .0,
        200
    );
    let (_, state) = fb.get("/api/v1/automation").await;
    assert_eq!(state["paused"], true);
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("p1", "Paused", "svc-a", 0),
    )
    .await;
    let held = fb.action_in("paused", "held").await;
    assert_eq!(held["reason"], "automation is paused");
    let (status, denied) = fb
        .post(
            &format!("/api/v1/actions/{}/deny", held["id"]),
            &json!({"comment": "not now"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(denied["status"], "denied");
    fb.post("/api/v1/automation/resume", &json!({})).await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("p2", "Paused", "svc-b", 0),
    )
    .await;
    fb.action_in("paused", "succeeded").await;
    let (_, audit) = fb.get("/api/v1/audit?limit=1000").await;
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for e in [
        "automation_paused",
        "automation_resumed",
        "approved",
        "denied",
        "held",
        "suppressed",
    ] {
        assert!(events.contains(&e), "audit lacks {e}: {events:?}");
    }

    // Dry run: recorded, flag untouched.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("d1", "Dry", "svc-a", 0),
    )
    .await;
    let dry = fb.action_in("dry", "dry_run").await;
    let incident = dry["incident_id"].as_i64().unwrap();
    assert!(timeline_kinds(&fb, incident)
        .await
        .contains(&"action_dry_run".to_string()));
    let (_, flag) = fb.get("/api/v1/flags/dry.flag").await;
    assert_eq!(flag["enabled"], true);
    assert!(fb.metric("firebreak_actions_total{outcome=\"held\"}").await >= 2.0);
}

/// A failed canary gate proposes a rollback of checkout to its last good
/// deploy; it waits for approval, then calls Argo CD's rollback API once, with
/// the token from the environment and the target's values as data.
#[tokio::test]
async fn failed_gate_rollback_waits_for_approval_then_calls_argocd_once() {
    let argocd = Recorder::start(|r| {
        if r.path.starts_with("/api/v1/applications/") {
            (200, json!({"metadata": {"name": "checkout"}}))
        } else if r.path == "/slack/chat.postMessage" {
            (200, json!({"ok": true, "ts": "1.2"}))
        } else {
            (404, json!({"error": "unknown path"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "canary-rollback.yaml",
        &repo_playbook("with-argocd/canary-rollback.yaml"),
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[rollback.argocd]\ntype = \"http\"\nurl = \"{0}/api/v1/applications/{{{{service}}}}/rollback\"\nheaders = {{ Authorization = \"Bearer ${{FIREBREAK_SECRET_ARGOCD_TOKEN}}\" }}\nbody = {{ id = \"{{{{target.version}}}}\", prune = false, dryRun = false }}\n\n[slack]\nbot_token = \"xoxb-test\"\napi_url = \"{0}/slack\"\n",
            argocd.base
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
            .with("FIREBREAK_CONFIG", config.to_str().unwrap())
            .with("FIREBREAK_SECRET_ARGOCD_TOKEN", "argo-t0ken"),
    )
    .await;
    let (_, loaded) = fb.get("/api/v1/playbooks").await;
    assert_eq!(loaded["errors"], json!([]), "{loaded}");

    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v41", 180))
        .await;
    fb.post("/api/v1/events/deploy", &json!({"service": "checkout", "version": "v41.5", "status": "failed", "started_at": (chrono::Utc::now() - chrono::Duration::minutes(60)).to_rfc3339()})).await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v42", 10))
        .await;
    fb.post(
        "/api/v1/events/gate",
        &json!({"service": "checkout", "version": "v42", "gate": "canary-error-rate", "metric": "http_5xx_ratio",
                "threshold": 0.01, "observed": 0.07, "verdict": "fail", "evaluated_at": chrono::Utc::now().to_rfc3339()}),
    )
    .await;
    let held = fb.action_in("canary-rollback", "held").await;
    assert_eq!(held["reason"], "approval required");
    assert_eq!(
        held["spec"]["vars"]["target.version"], "v41",
        "last good skips the failed v41.5"
    );
    assert_eq!(held["spec"]["vars"]["suspect.version"], "v42");
    // The notify step of the same playbook runs without approval.
    let note = eventually("the Slack message", WAIT, || async {
        argocd.matching("POST", "/slack/chat.postMessage").pop()
    })
    .await;
    assert_eq!(note.headers["authorization"], "Bearer xoxb-test");
    assert_eq!(note.body["channel"], "#deploys");
    assert!(
        note.body["text"]
            .as_str()
            .unwrap()
            .contains("rollback to v41"),
        "{:?}",
        note.body
    );
    assert!(
        argocd
            .matching("POST", "/api/v1/applications/checkout/rollback")
            .is_empty(),
        "nothing before approval"
    );

    let id = held["id"].as_i64().unwrap();
    let dana = fb.token("dana", &["read", "operate"]).await;
    let erin = fb.token("erin", &["read", "operate"]).await;
    let (status, _) = dana
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200);
    erin.post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    let done = eventually("the rollback to finish", WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        (a["status"] == "succeeded").then_some(a)
    })
    .await;
    assert_eq!(done["decided_by"], "token:dana");
    let audit: Vec<&str> = done["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        audit,
        ["held", "approved", "executed"],
        "approved once, by dana"
    );
    let calls = argocd.matching("POST", "/api/v1/applications/checkout/rollback");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].headers["authorization"], "Bearer argo-t0ken");
    assert_eq!(
        calls[0].body,
        json!({"id": "v41", "prune": false, "dryRun": false})
    );
    assert!(
        !fb.logs().contains("argo-t0ken"),
        "the token never reaches the log"
    );
}

/// Two engine processes compete for one RabbitMQ queue while every webhook
/// arrives twice: each incident gets its notification exactly once.
#[tokio::test]
async fn two_engines_and_duplicate_webhooks_run_each_action_once() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let hooks = Recorder::start(|_| (200, json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "page.yaml",
        "name: page\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - notify: { webhook: team, message: \"incident {{incident.id}} {{service}}\" }\n  - kill_switch: { flag: global.flag }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[notify.team]\ntype = \"webhook\"\nurl = \"{}/team\"\n",
            hooks.base
        ),
    )
    .unwrap();
    let base = Options::backed(&pg, &amqp)
        .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
        .with("FIREBREAK_CONFIG", config.to_str().unwrap());
    let front = Firebreak::start(&dir.path().join("front"), base.clone().roles("ingest,api")).await;
    let e1 = Firebreak::start(&dir.path().join("e1"), base.clone().roles("engine")).await;
    let e2 = Firebreak::start(&dir.path().join("e2"), base.clone().roles("engine")).await;
    front
        .post("/api/v1/flags", &json!({"key": "global.flag"}))
        .await;

    let services = 20;
    let mut sends = Vec::new();
    for i in 0..services {
        let body = alert_now(&format!("fe{i:04}"), "HighErrorRate", &format!("svc{i}"), 0);
        for _ in 0..2 {
            let front = &front;
            let body = body.clone();
            sends.push(async move { front.post("/api/v1/alerts/alertmanager", &body).await.0 });
        }
    }
    for status in futures_util::future::join_all(sends).await {
        assert_eq!(status, 202);
    }
    eventually(
        "every incident notified",
        Duration::from_secs(60),
        || async {
            // Each incident's notification, and one kill switch: the flag
            // is one target, so the first decision stands for the others.
            let actions = front.actions().await;
            let done = actions
                .iter()
                .filter(|a| a["status"] == "succeeded" || a["status"] == "suppressed")
                .count();
            (done == 2 * services).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let actions = front.actions().await;
    assert_eq!(
        actions.len(),
        2 * services,
        "one claim per step and incident"
    );
    let sent = hooks.matching("POST", "/team");
    assert_eq!(
        sent.len(),
        services,
        "each incident notified once across two engines"
    );
    let mut texts: Vec<String> = sent
        .iter()
        .map(|r| r.body["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), services);
    let kills: Vec<&Value> = actions
        .iter()
        .filter(|a| a["kind"] == "kill_switch")
        .collect();
    let ran: Vec<&&Value> = kills
        .iter()
        .filter(|a| a["status"] == "succeeded")
        .collect();
    assert_eq!(ran.len(), 1, "one decision per target: {kills:?}");
    let first = ran[0]["id"].as_i64().unwrap();
    for k in kills.iter().filter(|a| a["status"] != "succeeded") {
        assert_eq!(k["status"], "suppressed", "{k}");
        assert!(
            k["reason"]
                .as_str()
                .unwrap()
                .starts_with(&format!("action #{first} ")),
            "names the action that stands for it: {k}"
        );
    }
    let (_, flag) = front.get("/api/v1/flags/global.flag").await;
    assert_eq!(flag["enabled"], false);
    drop((front, e1, e2));
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// Files are reloaded on change; a broken file keeps its previous good version
/// and is reported with file and line.
#[tokio::test]
async fn playbooks_reload_and_a_bad_file_keeps_the_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
            .with("FIREBREAK_CONFIG", "/dev/null"),
    )
    .await;
    let good = "name: reloaded\nwhen:\n  alert: { matchers: ['alertname=\"X\"'] }\ndo:\n  - kill_switch: { flag: x }\n";
    write(&books, "reloaded.yaml", good);
    let listed = eventually("the new playbook", WAIT, || async {
        let (_, l) = fb.get("/api/v1/playbooks").await;
        (l["playbooks"].as_array()?.len() == 1).then_some(l)
    })
    .await;
    let version = listed["playbooks"][0]["version"].clone();
    write(
        &books,
        "reloaded.yaml",
        &good.replace("matchers:", "matcherz:"),
    );
    let broken = eventually("the load error", WAIT, || async {
        let (_, l) = fb.get("/api/v1/playbooks").await;
        (!l["errors"].as_array()?.is_empty()).then_some(l)
    })
    .await;
    let err = &broken["errors"][0];
    assert_eq!(err["line"], 3, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("matcherz"),
        "{err}"
    );
    assert_eq!(
        broken["playbooks"][0]["version"], version,
        "the good version stays"
    );
    assert_eq!(broken["playbooks"][0]["stale"], true);
    assert_eq!(fb.metric("firebreak_playbook_load_errors").await, 1.0);
    // And it still acts.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("r1", "X", "svc", 0),
    )
    .await;
    fb.action_in("reloaded", "succeeded").await;
}

#[tokio::test]
async fn flags_and_ofrep_answer_by_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let c = firebreak_tests::client();
    let (status, _) = fb.post("/api/v1/flags", &json!({"key": "bad key!"})).await;
    assert_eq!(status, 400);
    fb.post("/api/v1/flags", &json!({"key": "a.flag", "enabled": false}))
        .await;
    let r = c
        .post(format!("{}/ofrep/v1/evaluate/flags/a.flag", fb.base))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorCode"], "PARSE_ERROR");
    let r = c
        .post(format!("{}/ofrep/v1/evaluate/flags", fb.base))
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["flags"][0],
        json!({"key": "a.flag", "value": false, "reason": "STATIC", "variant": "off", "metadata": body["flags"][0]["metadata"]})
    );
    let r = c
        .post(format!("{}/ofrep/v1/evaluate/flags", fb.base))
        .header("If-None-Match", &etag)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .put(format!("{}/api/v1/flags/a.flag", fb.base))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/ofrep/v1/evaluate/flags", fb.base))
        .header("If-None-Match", &etag)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a changed flag changes the ETag");
}

/// `firebreak playbooks replay` backtests the playbooks over stored history:
/// what each would have done, against what actually ran.
#[tokio::test]
async fn replay_compares_what_would_have_run_with_what_ran() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "checkout-kill-switch.yaml",
        &repo_playbook("checkout-kill-switch.yaml"),
    );
    let data = dir.path().join("data");
    let mut fb = Firebreak::start(
        &data,
        Options::embedded().with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap()),
    )
    .await;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "checkout.new-payment-flow"}),
    )
    .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 7))
        .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("rp01", "HighErrorRate", "checkout", 0),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("rp02", "HighLatency", "payments", 0),
    )
    .await;
    let action = fb.action_in("checkout-kill-switch", "succeeded").await;
    let incident = action["incident_id"].as_i64().unwrap();
    fb.stop().await;

    // A candidate playbook nobody ran yet.
    let candidate = dir.path().join("candidate");
    std::fs::create_dir_all(&candidate).unwrap();
    write(
        &candidate,
        "checkout-kill-switch.yaml",
        &repo_playbook("checkout-kill-switch.yaml"),
    );
    write(
        &candidate,
        "payments-latency-notify.yaml",
        &repo_playbook("payments-latency-notify.yaml"),
    );
    let out = tokio::process::Command::new(firebreak_tests::firebreak_bin())
        .args(["playbooks", "replay", "--since", "1d"])
        .arg(&candidate)
        .env("FIREBREAK_DATA_DIR", &data)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkout = stdout.split("checkout-kill-switch@").nth(1).unwrap();
    assert!(
        checkout.contains(&format!("would act on: #{incident}")),
        "{stdout}"
    );
    assert!(
        checkout.contains(&format!("actually ran: #{incident} (succeeded)")),
        "{stdout}"
    );
    let payments = stdout.split("payments-latency-notify@").nth(1).unwrap();
    assert!(payments.contains("actually ran: nothing"), "{stdout}");
    assert!(
        payments.contains("would act where nothing ran: #"),
        "{stdout}"
    );
}

/// The notify-only example posts to Slack's chat.postMessage with the bot token.
#[tokio::test]
async fn notify_only_example_posts_to_slack() {
    let slack = Recorder::start(|r| {
        if r.path == "/api/chat.postMessage" {
            (200, json!({"ok": true, "channel": "C1", "ts": "1.1"}))
        } else {
            (404, json!({"ok": false, "error": "unknown_method"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    write(
        &books,
        "payments-latency-notify.yaml",
        &repo_playbook("payments-latency-notify.yaml"),
    );
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", books.to_str().unwrap())
            .with("FIREBREAK_SLACK_BOT_TOKEN", "xoxb-1")
            .with("FIREBREAK_SLACK_API_URL", &format!("{}/api", slack.base)),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("n1", "HighLatency", "payments", 0),
    )
    .await;
    fb.action_in("payments-latency-notify", "succeeded").await;
    let sent = slack.matching("POST", "/api/chat.postMessage");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["authorization"], "Bearer xoxb-1");
    assert_eq!(sent[0].body["channel"], "#inc-payments");
    assert_eq!(
        sent[0].body["text"],
        "HighLatency for payments (): HighLatency on payments"
    );
    // Not for other services, and not twice within the cooldown.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("n2", "HighLatency", "search", 0),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("n3", "SlowRequests", "checkout", 0),
    )
    .await;
    let suppressed = fb.action_in("payments-latency-notify", "suppressed").await;
    assert!(suppressed["reason"]
        .as_str()
        .unwrap()
        .contains("cooldown 15m"));
    assert_eq!(slack.matching("POST", "/api/chat.postMessage").len(), 1);
}

async fn request(fb: &Firebreak, body: Value) -> (u16, Value) {
    fb.post("/api/v1/actions", &body).await
}

async fn settled(fb: &Firebreak, id: i64) -> Value {
    eventually(&format!("action {id} to finish"), WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        (!["pending", "running"].contains(&a["status"].as_str().unwrap_or("pending"))).then_some(a)
    })
    .await
}

/// A person's request over REST takes the path a playbook's step takes: it
/// attaches to the incident whose suspect deploy turned the flag on, is
/// executed and verified, meets the manual guard's cooldown, the pause (and
/// `force`), the global budget, and asking twice is one action.
#[tokio::test]
async fn requests_take_the_same_guarded_path_as_playbooks() {
    let app = TestApp::embedded()
        .config("[automation]\nmax_actions = { count = 3, per = \"1h\" }\n\n[automation.manual]\ncooldown = \"10m\"\n")
        .start()
        .await;
    let fb = &app.fb;
    for key in [
        "checkout.new-flow",
        "search.ranker",
        "ads.banner",
        "cart.v2",
        "promo.x",
    ] {
        fb.post("/api/v1/flags", &json!({"key": key, "enabled": true}))
            .await;
    }
    let mut deploy = deploy_now("checkout", "v2", 7);
    deploy["flags"] = json!(["checkout.new-flow"]);
    assert_eq!(fb.post("/api/v1/events/deploy", &deploy).await.0, 202);
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("r1", "HighErrorRate", "checkout", 0),
    )
    .await;
    let incident = eventually("the incident", WAIT, || async {
        let (_, l) = fb.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    eventually("the deploy attached as a suspect", WAIT, || async {
        let (_, d) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
        (d["suspect_changes"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let alice = fb.token("alice", &["read", "operate"]).await;
    let (status, a) = alice
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": "checkout.new-flow", "reason": "5xx after v2"}),
        )
        .await;
    assert_eq!(status, 202, "{a}");
    assert_eq!(a["status"], "pending");
    assert_eq!(a["playbook"], "manual");
    assert_eq!(a["requested_by"], "token:alice");
    assert_eq!(
        a["incident_id"], incident,
        "derived from the suspect deploy's flags"
    );
    let done = settled(fb, a["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["verified"], true);
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-flow").await;
    assert_eq!(flag["enabled"], false);
    let (_, t) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    let mine: Vec<(&str, &str)> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "token:alice")
        .map(|e| (e["kind"].as_str().unwrap(), e["summary"].as_str().unwrap()))
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0].0, "action_requested");
    assert!(
        mine[1].0 == "action_executed" && mine[1].1.contains("requested by token:alice"),
        "{mine:?}"
    );
    let (_, audit) = fb.get(&format!("/api/v1/audit?action={}", a["id"])).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "requested"
            && e["actor"] == "token:alice"
            && e["detail"]["note"] == "5xx after v2"));

    // The manual guard's cooldown: the same target again is not repeated.
    let (_, again) = request(
        fb,
        json!({"kind": "kill_switch", "flag": "checkout.new-flow"}),
    )
    .await;
    assert_eq!(again["status"], "suppressed", "{again}");
    assert!(again["reason"].as_str().unwrap().contains("cooldown 10m"));

    // Paused: held, and the same request again is the same action.
    fb.post("/api/v1/automation/pause", &json!({})).await;
    let (_, held) = request(fb, json!({"kind": "kill_switch", "flag": "search.ranker"})).await;
    assert_eq!(held["status"], "held", "{held}");
    assert!(held["reason"].as_str().unwrap().contains("force"));
    let (status, dup) = request(fb, json!({"kind": "kill_switch", "flag": "search.ranker"})).await;
    assert_eq!(status, 409, "{dup}");
    assert!(dup["message"]
        .as_str()
        .unwrap()
        .contains(&format!("action #{}", held["id"])));
    // force runs past the pause, and says so.
    let (_, forced) = request(
        fb,
        json!({"kind": "kill_switch", "flag": "ads.banner", "force": true}),
    )
    .await;
    assert_eq!(forced["status"], "pending", "{forced}");
    assert!(forced["reason"].as_str().unwrap().contains("forced"));
    assert_eq!(
        settled(fb, forced["id"].as_i64().unwrap()).await["status"],
        "succeeded"
    );
    fb.post("/api/v1/automation/resume", &json!({})).await;

    // The global budget (3 per hour) counts people's actions like playbooks'.
    let (_, third) = request(fb, json!({"kind": "kill_switch", "flag": "cart.v2"})).await;
    assert_eq!(third["status"], "pending", "{third}");
    let (_, over) = request(fb, json!({"kind": "kill_switch", "flag": "promo.x"})).await;
    assert_eq!(over["status"], "held", "{over}");
    assert!(over["reason"].as_str().unwrap().contains("global budget"));

    // Bad requests name the field and change nothing.
    let before = fb.actions().await.len();
    for (body, field) in [
        (json!({"kind": "kill_switch"}), "flag"),
        (
            json!({"kind": "kill_switch", "flag": "x", "provider": "nope"}),
            "provider",
        ),
        (json!({"kind": "kill_switch", "flag": "bad key!"}), "flag"),
        (
            json!({"kind": "rollback", "service": "checkout"}),
            "provider",
        ),
        (
            json!({"kind": "http", "url": "http://169.254.169.254/"}),
            "url",
        ),
        (json!({"kind": "http"}), "kind"),
        (json!({"kind": "reboot"}), "kind"),
        (
            json!({"kind": "kill_switch", "flag": "x", "service": "y"}),
            "service",
        ),
        (json!({"flag": "x"}), "kind"),
    ] {
        let (status, e) = request(fb, body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["field"], field, "{body}: {e}");
    }
    let (status, e) = request(
        fb,
        json!({"kind": "kill_switch", "flag": "x", "incident": 9999}),
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    assert_eq!(fb.actions().await.len(), before, "nothing recorded");

    // And the revert of a person's kill switch restores it.
    let (status, r) = fb
        .post(&format!("/api/v1/actions/{}/revert", a["id"]), &json!({}))
        .await;
    assert_eq!(
        (status, r["status"].as_str()),
        (200, Some("reverted")),
        "{r}"
    );
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-flow").await;
    assert_eq!(flag["enabled"], true);
}

/// Under global dry-run a person's request is recorded and calls nothing, as
/// a playbook's step would.
#[tokio::test]
async fn requests_under_global_dry_run_call_nothing() {
    let app = TestApp::embedded()
        .env("FIREBREAK_DRY_RUN", "true")
        .start()
        .await;
    let fb = &app.fb;
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.flag", "enabled": true}),
    )
    .await;
    let (status, a) = request(fb, json!({"kind": "kill_switch", "flag": "pay.flag"})).await;
    assert_eq!(status, 202);
    assert_eq!(a["status"], "dry_run", "{a}");
    assert_eq!(a["reason"], "automation is in dry-run");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, flag) = fb.get("/api/v1/flags/pay.flag").await;
    assert_eq!(flag["enabled"], true);
}

/// A kill switch provider that acts at once and answers `delay` later.
async fn slow_switch(delay: Duration) -> (Recorder, Arc<Mutex<bool>>) {
    let state = Arc::new(Mutex::new(true));
    let shared = state.clone();
    let rec = Recorder::slow(
        move |r| {
            let mut on = shared.lock().unwrap();
            match r.method.as_str() {
                "GET" => (200, json!({"data": {"enabled": *on}})),
                "PUT" => {
                    *on = r.body["enabled"].as_bool().unwrap();
                    (200, json!({"ok": true}))
                }
                _ => (404, json!({})),
            }
        },
        move |r| {
            if r.method == "PUT" {
                delay
            } else {
                Duration::ZERO
            }
        },
    )
    .await;
    (rec, state)
}

fn slow_switch_config(base: &str) -> String {
    // A 10-minute lease: anything picked up within this test's waits was
    // taken back at start-up, not by the lease running out.
    format!(
        "[automation]\nlease = \"10m\"\n\n[kill_switch.slow]\ntype = \"http\"\nset_url = \"{base}/flags/{{{{flag}}}}\"\nset_method = \"PUT\"\nset_body = {{ enabled = \"{{{{enabled}}}}\" }}\nget_url = \"{base}/flags/{{{{flag}}}}\"\nstate_pointer = \"/data/enabled\"\n"
    )
}

/// kill -9 while a kill switch call is in flight: the restarted process
/// takes the action back at once (not when its 10-minute lease runs out),
/// finds the flag already set and does not call again, and knows the state
/// to restore because it wrote it down before calling. Then a revert killed
/// mid-way is finished after the next restart, and the flag takes new actions.
async fn kill9_mid_action_and_mid_revert(app: TestAppBuilder) {
    let (rec, state) = slow_switch(Duration::from_secs(3)).await;
    let mut app = app.config(&slow_switch_config(&rec.base)).start().await;
    let (status, a) = request(
        &app.fb,
        json!({"kind": "kill_switch", "flag": "pay.flag", "provider": "slow"}),
    )
    .await;
    assert_eq!(status, 202, "{a}");
    let id = a["id"].as_i64().unwrap();
    eventually("the provider called", WAIT, || async {
        (!rec.matching("PUT", "/flags/pay.flag").is_empty()).then_some(())
    })
    .await;
    app.fb.restart().await; // kill -9, then start again
    let done = eventually(
        "the action taken back after the restart",
        Duration::from_secs(30),
        || async {
            let (_, a) = app.fb.get(&format!("/api/v1/actions/{id}")).await;
            (a["status"] == "succeeded").then_some(a)
        },
    )
    .await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["result"]["verified"], true);
    assert!(
        done["result"]["note"]
            .as_str()
            .unwrap()
            .contains("not called again"),
        "{done}"
    );
    assert_eq!(
        done["previous_state"]["enabled"], true,
        "written down before the call"
    );
    assert_eq!(
        rec.matching("PUT", "/flags/pay.flag").len(),
        1,
        "called once"
    );
    assert!(!*state.lock().unwrap());

    // A revert killed while the provider is restoring the flag.
    let base = app.fb.base.clone();
    let pending_revert = tokio::spawn(async move {
        let _ = client()
            .post(format!("{base}/api/v1/actions/{id}/revert"))
            .json(&json!({}))
            .send()
            .await;
    });
    eventually("the revert called the provider", WAIT, || async {
        (rec.matching("PUT", "/flags/pay.flag").len() == 2).then_some(())
    })
    .await;
    app.fb.restart().await;
    let _ = pending_revert.await;
    let reverted = eventually(
        "the interrupted revert finished",
        Duration::from_secs(30),
        || async {
            let (_, a) = app.fb.get(&format!("/api/v1/actions/{id}")).await;
            (a["status"] == "reverted").then_some(a)
        },
    )
    .await;
    assert_eq!(reverted["lease_owner"], Value::Null);
    assert!(*state.lock().unwrap(), "restored");
    // The flag is not blocked: a new action on it runs.
    let (_, next) = request(
        &app.fb,
        json!({"kind": "kill_switch", "flag": "pay.flag", "provider": "slow"}),
    )
    .await;
    let next = eventually(
        "a new action on the flag",
        Duration::from_secs(30),
        || async {
            let (_, a) = app.fb.get(&format!("/api/v1/actions/{}", next["id"])).await;
            (a["status"] == "succeeded").then_some(a)
        },
    )
    .await;
    assert_eq!(next["result"]["verified"], true);
    assert!(!*state.lock().unwrap());
}

firebreak_tests::both_modes!(kill9_mid_action_and_mid_revert);
