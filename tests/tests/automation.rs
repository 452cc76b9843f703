//! Safe automation where a careful SRE would expect it: a held approval
//! expires (never executed, escalated, a late approval refused saying when),
//! approving for an incident that has resolved asks for `force`, and every
//! escalation names the action it is about.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn app(hooks: &Recorder, ttl: &str) -> TestApp {
    TestApp::embedded()
        .config(&format!(
            "[automation]\napproval_ttl = \"{ttl}\"\nescalate_webhook = \"oncall\"\n\n[automation.manual]\nrequire_approval = true\n\n[notify.oncall]\ntype = \"webhook\"\nurl = \"{}/oncall\"\n",
            hooks.base
        ))
        .start()
        .await
}

/// Waits until action `id` is in `status`; the action.
async fn in_status(fb: &Firebreak, id: i64, status: &str) -> Value {
    eventually(&format!("action {id} to be {status}"), WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        (a["status"] == status).then_some(a)
    })
    .await
}

/// The escalation notices the webhook received about action `id`.
fn escalations_about(hooks: &Recorder, id: i64) -> Vec<Value> {
    hooks
        .matching("POST", "/oncall")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["firebreak"]["escalated"]["action_id"] == id)
        .collect()
}

#[tokio::test]
async fn a_held_approval_expires_is_escalated_and_a_late_approval_is_refused() {
    let hooks = Recorder::start(|_| (200, json!({"ok": true}))).await;
    let app = app(&hooks, "2s").await;
    let fb = &app.fb;
    let held = held_kill_switch(fb, "checkout.new-flow", None).await;
    let id = held["id"].as_i64().unwrap();

    let expired = in_status(fb, id, "expired").await;
    assert!(
        expired["reason"]
            .as_str()
            .unwrap()
            .contains("not approved within 2s"),
        "{expired}"
    );
    assert!(
        expired["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "expired"),
        "{expired}"
    );

    // Never executed: the flag is as it was.
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-flow").await;
    assert_eq!(flag["enabled"], true, "{flag}");

    // A late approval is refused, saying when it expired; nothing runs.
    let (s, refused) = fb
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(s, 409, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("expired at") && message.contains("automation.approval_ttl"),
        "{message}"
    );
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-flow").await;
    assert_eq!(flag["enabled"], true, "{flag}");

    // Escalated twice, each naming the action: held, then expired.
    let notices = eventually("the expiry's escalation", WAIT, || async {
        let n = escalations_about(&hooks, id);
        (n.iter()
            .any(|b| b["firebreak"]["escalated"]["status"] == "expired"))
        .then_some(n)
    })
    .await;
    let statuses: Vec<&str> = notices
        .iter()
        .map(|b| b["firebreak"]["escalated"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["held", "expired"], "{notices:?}");
    let last = notices.last().unwrap();
    assert_eq!(last["firebreak"]["escalated"]["kind"], "kill_switch");
    assert_eq!(last["firebreak"]["escalated"]["target"], held["target"]);
    let text = last["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("#{id}")) && text.contains("will not run"),
        "{text}"
    );
}

#[tokio::test]
async fn approving_after_the_incident_resolved_asks_for_force() {
    let hooks = Recorder::start(|_| (200, json!({"ok": true}))).await;
    let app = app(&hooks, "1h").await;
    let fb = &app.fb;
    let firing = TestAlert::firing("force-1", "checkout");
    let (s, b) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &webhook(&[firing.clone_alert()]),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let incident = eventually("the incident", WAIT, || async {
        let (_, list) = fb.get("/api/v1/incidents").await;
        list["incidents"][0]["id"].as_i64()
    })
    .await;
    let held = held_kill_switch(fb, "checkout.saved-cards", Some(incident)).await;
    let id = held["id"].as_i64().unwrap();

    let (s, b) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &webhook(&[firing.resolved("2026-11-23T14:20:00Z")]),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    eventually("the incident to resolve", WAIT, || async {
        let (_, i) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
        (i["status"] == "resolved").then_some(())
    })
    .await;

    let (s, refused) = fb
        .post(&format!("/api/v1/actions/{id}/approve"), &json!({}))
        .await;
    assert_eq!(s, 409, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("incident #{incident} was resolved"))
            && message.contains("force"),
        "{message}"
    );
    let (_, still) = fb.get(&format!("/api/v1/actions/{id}")).await;
    assert_eq!(still["status"], "held", "a refusal changes nothing");

    let (s, approved) = fb
        .post(
            &format!("/api/v1/actions/{id}/approve"),
            &json!({"force": true}),
        )
        .await;
    assert_eq!(s, 200, "{approved}");
    let done = in_status(fb, id, "succeeded").await;
    let approval = done["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["event"] == "approved")
        .cloned()
        .unwrap();
    assert_eq!(
        approval["detail"]["forced"], true,
        "audited as forced: {approval}"
    );
}

/// A change freeze holds what it says it holds (by default rollbacks and
/// rollouts): a playbook's rollback waits for an operator with the freeze
/// named, while its kill switch runs; a person's rollback during the freeze
/// is refused unless forced, and a forced one is audited as such.
#[tokio::test]
async fn a_freeze_holds_a_playbook_rollback_lets_the_kill_switch_run_and_asks_people_for_force() {
    let argo = Recorder::start(|_| (200, json!({"ok": true}))).await;
    let app = TestApp::embedded()
        .playbook(
            "checkout.yaml",
            "name: checkout-errors\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - kill_switch: { flag: checkout.new-flow }\n  - rollback: { provider: argocd }\n",
        )
        .config(&format!(
            "[[automation.freeze]]\nname = \"black-friday\"\nservices = [\"checkout\"]\nwindow = {{ start = \"2020-01-01T00:00:00Z\", end = \"2099-01-01T00:00:00Z\" }}\n\n[rollback.argocd]\ntype = \"http\"\nurl = \"{}/rollback/{{{{service}}}}\"\nbody = {{ id = \"{{{{target.version}}}}\" }}\n",
            argo.base
        ))
        .start()
        .await;
    let fb = &app.fb;
    flag_on(fb, "checkout.new-flow").await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v41", 180))
        .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v42", 10))
        .await;
    let (s, b) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &alert_now("freeze-1", "HighErrorRate", "checkout", 0),
        )
        .await;
    assert_eq!(s, 202, "{b}");

    let held = fb.action_in("checkout-errors", "held").await;
    assert_eq!(held["kind"], "rollback", "{held}");
    assert!(
        held["reason"]
            .as_str()
            .unwrap()
            .contains("change freeze \"black-friday\" holds this"),
        "{held}"
    );
    let killed = fb.action_in("checkout-errors", "succeeded").await;
    assert_eq!(
        killed["kind"], "kill_switch",
        "a kill switch is not held: {killed}"
    );
    assert!(argo.requests().is_empty(), "nothing rolled back yet");

    // The playbook's held rollback holds the target: an operator denies it.
    let id = held["id"].as_i64().unwrap();
    let (s, b) = fb
        .post(&format!("/api/v1/actions/{id}/deny"), &json!({}))
        .await;
    assert_eq!(s, 200, "{b}");

    // A person's rollback during the freeze: refused unless forced.
    let (s, refused) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "rollback", "service": "checkout", "provider": "argocd"}),
        )
        .await;
    assert_eq!(s, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("change freeze \"black-friday\""),
        "{refused}"
    );
    let (s, forced) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "rollback", "service": "checkout", "provider": "argocd", "force": true,
                    "reason": "the freeze owner agreed"}),
        )
        .await;
    assert_eq!(s, 202, "{forced}");
    let fid = forced["id"].as_i64().unwrap();
    let done = in_status(fb, fid, "succeeded").await;
    assert!(
        done["reason"]
            .as_str()
            .unwrap_or("")
            .contains("forced during change freeze"),
        "{done}"
    );
    let requested = done["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["event"] == "requested")
        .cloned()
        .unwrap();
    assert_eq!(requested["detail"]["forced"], true, "{requested}");
    assert_eq!(requested["detail"]["freeze"], "black-friday", "{requested}");
    assert_eq!(argo.matching("POST", "/rollback/checkout").len(), 1);
}

async fn flag_enabled(fb: &Firebreak, key: &str) -> bool {
    let (_, flag) = fb.get(&format!("/api/v1/flags/{key}")).await;
    flag["enabled"].as_bool().unwrap()
}

async fn finished(fb: &Firebreak, id: i64) -> Value {
    eventually("the action to finish", WAIT, || async {
        let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
        matches!(a["status"].as_str(), Some("succeeded" | "failed")).then_some(a)
    })
    .await
}

/// Two playbooks turn off the same flag from two alerts in one webhook: one
/// decision acts, the other is recorded as suppressed naming it; reverting
/// the one that acted restores the flag as it was before either.
#[tokio::test]
async fn two_playbooks_on_one_flag_make_one_decision_and_a_revert_restores_it() {
    let book = |name: &str, alert: &str| {
        format!("name: {name}\nwhen:\n  alert: {{ matchers: ['alertname=\"{alert}\"'] }}\ndo:\n  - kill_switch: {{ flag: pay.flow }}\n")
    };
    let app = TestApp::embedded()
        .playbook("latency.yaml", &book("latency", "PayLatency"))
        .playbook("errors.yaml", &book("errors", "PayErrors"))
        .start()
        .await;
    let fb = &app.fb;
    flag_on(fb, "pay.flow").await;
    let mut body = alert_now("p1", "PayLatency", "pay", 0);
    let second = alert_now("p2", "PayErrors", "pay", 0)["alerts"][0].clone();
    body["alerts"].as_array_mut().unwrap().push(second);
    let (s, b) = fb.post("/api/v1/alerts/alertmanager", &body).await;
    assert_eq!(s, 202, "{b}");

    let (acted, suppressed) = eventually("both decisions", WAIT, || async {
        let all = fb.actions().await;
        let acted = all.iter().find(|a| a["status"] == "succeeded")?.clone();
        let suppressed = all.iter().find(|a| a["status"] == "suppressed")?.clone();
        Some((acted, suppressed))
    })
    .await;
    assert_ne!(acted["playbook"], suppressed["playbook"]);
    let first = acted["id"].as_i64().unwrap();
    let reason = suppressed["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("action #{first} "))
            && reason.contains("one decision per target"),
        "{reason}"
    );
    let sid = suppressed["id"].as_i64().unwrap();
    let (_, detail) = fb.get(&format!("/api/v1/actions/{sid}")).await;
    let audit = detail["audit"].as_array().unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a["event"] == "suppressed" && a["detail"]["same_as"] == first),
        "audited naming the action that stands for it: {detail}"
    );
    assert_eq!(
        fb.actions().await.len(),
        2,
        "one per playbook, nothing more"
    );
    assert!(!flag_enabled(fb, "pay.flow").await);

    // The suppressed one did nothing, so there is nothing of it to revert.
    let (s, b) = fb
        .post(&format!("/api/v1/actions/{sid}/revert"), &json!({}))
        .await;
    assert_eq!(s, 409, "{b}");
    // Reverting the one that acted: the flag is as before either.
    let (s, b) = fb
        .post(&format!("/api/v1/actions/{first}/revert"), &json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(flag_enabled(fb, "pay.flow").await);
}

/// Reverting restores the state before the action; when something changed
/// the target since (a person, another action), the revert would undo that
/// unseen: it is refused naming the change, unless forced.
#[tokio::test]
async fn reverting_after_the_target_changed_names_the_change_and_needs_force() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    flag_on(fb, "cart.v2").await;
    let kill = |reason: &'static str| async move {
        let (s, a) = fb
            .post(
                "/api/v1/actions",
                &json!({"kind": "kill_switch", "flag": "cart.v2", "reason": reason}),
            )
            .await;
        assert_eq!(s, 202, "{a}");
        finished(fb, a["id"].as_i64().unwrap()).await
    };
    let a = kill("errors after the deploy").await;
    assert_eq!(a["status"], "succeeded", "{a}");
    let first = a["id"].as_i64().unwrap();

    // A person turns it back on by hand, then another kill switch turns it
    // off again (the person's change ended the first decision).
    let (s, b) = fb
        .put("/api/v1/flags/cart.v2", &json!({"enabled": true}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, refused) = fb
        .post(&format!("/api/v1/actions/{first}/revert"), &json!({}))
        .await;
    assert_eq!(s, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("changed since by token:bootstrap"),
        "names who changed it: {refused}"
    );
    let b2 = kill("errors again").await;
    assert_eq!(
        b2["status"], "succeeded",
        "not suppressed: the flag changed since #{first}: {b2}"
    );
    let second = b2["id"].as_i64().unwrap();
    let (s, refused) = fb
        .post(&format!("/api/v1/actions/{first}/revert"), &json!({}))
        .await;
    assert_eq!(s, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains(&format!("changed since by action #{second}")),
        "names the later action: {refused}"
    );
    assert!(
        !flag_enabled(fb, "cart.v2").await,
        "a refusal changes nothing"
    );

    // Forced: the state before the first action comes back, audited as such.
    let (s, b) = fb
        .post(
            &format!("/api/v1/actions/{first}/revert"),
            &json!({"force": true}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(flag_enabled(fb, "cart.v2").await);
    let (_, detail) = fb.get(&format!("/api/v1/actions/{first}")).await;
    let asked = detail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "revert_requested")
        .cloned()
        .unwrap();
    assert!(
        asked["detail"]["forced_past_change"]
            .as_str()
            .unwrap()
            .contains(&format!("action #{second}")),
        "{asked}"
    );
}
