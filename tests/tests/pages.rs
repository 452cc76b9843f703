//! The web pages in a real browser: Debian's chromium driven by
//! playwright-core (tests/support/browser/pages.mjs). Each test seeds a
//! Firebreak over its API, runs one browser scenario, and checks what the
//! browser saw and what the store then holds. Screenshots are kept in
//! target/browser-screenshots/<test>/.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_tests::*;
use serde_json::{json, Value};

/// A person with a password, signed in through the login page by the browser.
async fn person(fb: &Firebreak, name: &str, role: &str) -> Value {
    let password = format!("tangerine {} quietly orbits", name.len() * 7919);
    let (status, body) = fb
        .post(
            "/api/v1/users",
            &json!({"username": name, "password": password, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    json!({"user": name, "pass": password, "id": format!("user:{name}")})
}

const XSS: &str = "<img src=x onerror=alert(1)>";

/// A deploy, its failed gate, and an alert whose annotation is an XSS
/// attempt: one incident. Returns its id.
async fn seed_incident(fb: &Firebreak) -> i64 {
    let (s, b) = fb
        .post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 9))
        .await;
    assert_eq!(s, 202, "{b}");
    let evaluated = (chrono::Utc::now() - chrono::Duration::minutes(6)).to_rfc3339();
    let (s, b) = fb
        .post(
            "/api/v1/events/gate",
            &json!({"service": "checkout", "version": "v2", "gate": "error-rate",
                    "metric": "http_5xx_ratio", "comparison": "<=", "threshold": 0.01,
                    "observed": 0.07, "verdict": "fail", "step": 2, "evaluated_at": evaluated}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mut alert = alert_now("xss1", "HighErrorRate", "checkout", 2);
    alert["alerts"][0]["annotations"]["summary"] = json!(format!("5xx > 5% {XSS}"));
    let (s, b) = fb.post("/api/v1/alerts/alertmanager", &alert).await;
    assert_eq!(s, 202, "{b}");
    eventually("the incident", Duration::from_secs(20), || async {
        let (_, body) = fb.get("/api/v1/incidents?service=checkout").await;
        body["incidents"][0]["id"].as_i64()
    })
    .await
}

/// A Firebreak whose manual actions wait for approval, with the kill switch
/// `checkout.new-payment-flow` on and one incident (`seed_incident`) for
/// which turning it off is held. Returns the app, the incident and the action.
async fn held_kill_switch() -> (TestApp, i64, i64) {
    let app = TestApp::embedded()
        .config("[automation.manual]\nrequire_approval = true\n")
        .start()
        .await;
    let fb = &app.fb;
    let (s, b) = fb
        .post(
            "/api/v1/flags",
            &json!({"key": "checkout.new-payment-flow", "enabled": true}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let incident = seed_incident(fb).await;
    let (s, held) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": "checkout.new-payment-flow", "incident": incident,
                    "reason": "errors follow the v2 deploy"}),
        )
        .await;
    assert_eq!((s, held["status"].as_str()), (202, Some("held")), "{held}");
    let action = held["id"].as_i64().unwrap();
    (app, incident, action)
}

/// An approval through the page, as the page and the store tell it: the page
/// said so, the action ran as decided by olivia, the flag is off, and the
/// audit has her approval (`forced` as given).
async fn approved_by_olivia(fb: &Firebreak, seen: &Value, action: i64, forced: bool) {
    assert!(
        seen["approved_said"]
            .as_str()
            .unwrap()
            .starts_with("Approved"),
        "{seen}"
    );
    let (_, a) = fb.get(&format!("/api/v1/actions/{action}")).await;
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(a["decided_by"], "user:olivia", "{a}");
    let (_, flag) = fb.get("/api/v1/flags/checkout.new-payment-flow").await;
    assert_eq!(flag["enabled"], false, "{flag}");
    let (_, audit) = fb.get(&format!("/api/v1/audit?action={action}")).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "user:olivia"
                && e["event"] == "approved"
                && e["detail"]["forced"] == forced),
        "{audit}"
    );
}

/// The incident list, the incident page with its timeline picture, a held
/// action approved through the page, a note, a viewer on a phone, and the
/// page without JavaScript.
#[tokio::test]
async fn an_operator_reads_the_incident_and_approves_the_held_kill_switch() {
    let (app, incident, action) = held_kill_switch().await;
    let fb = &app.fb;
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
    let entries = detail["counts"]["timeline_entries"].as_i64().unwrap();
    let (s, b) = fb
        .post(
            &format!("/api/v1/incidents/{incident}/postmortem/regenerate"),
            &json!({}),
        )
        .await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let operator = person(fb, "olivia", "operator").await;
    let viewer = person(fb, "victor", "viewer").await;

    let seen = browser(
        "incident",
        json!({"base": fb.base, "operator": operator, "viewer": viewer,
               "incident": incident, "action": action}),
    )
    .await;

    assert_eq!(
        seen["first_tab"], "skip",
        "the first Tab reaches 'Skip to content'"
    );
    assert_eq!(seen["lanes"], 4, "{seen}");
    assert_eq!(
        seen["dots"].as_i64(),
        Some(entries),
        "one mark per timeline entry: {seen}"
    );
    assert_eq!(seen["marks"], seen["dots"], "{seen}");
    assert_eq!(seen["suspect_marker"], 1, "the suspect deploy is marked");
    assert!(
        seen["header_suspect"]
            .as_str()
            .unwrap()
            .contains("checkout v2"),
        "{seen}"
    );
    assert_eq!(
        seen["still_held"], "held",
        "an unticked box submits nothing"
    );
    assert_eq!(seen["status_after"], "succeeded", "{seen}");
    assert!(
        seen["banner"]
            .as_str()
            .unwrap()
            .contains("turn off flag checkout.new-payment-flow"),
        "{seen}"
    );
    assert_eq!(
        seen["banner_confirms"], 2,
        "Approve and Deny each confirmed"
    );
    assert_eq!(seen["banner_after"], 0, "nothing waits any more: {seen}");
    assert!(
        seen["acknowledged"]
            .as_str()
            .unwrap()
            .contains("by user:olivia"),
        "{seen}"
    );
    assert!(
        seen["ack_done"].as_str().unwrap().contains("Acknowledged"),
        "{seen}"
    );
    assert_eq!(seen["ack_button_after"], 0, "acknowledged once: {seen}");
    assert_eq!(
        (seen["severity"].clone(), seen["stage"].clone()),
        (json!("SEV1"), json!("identified")),
        "{seen}"
    );
    assert_eq!(seen["updated_entry"], 1, "{seen}");
    assert_eq!(
        (seen["live_stage"].clone(), seen["live_same_load"].clone()),
        (json!("monitoring"), json!("yes")),
        "another person's change shows without a reload: {seen}"
    );
    assert_eq!(
        seen["viewer_response_forms"], 0,
        "a viewer has no response controls"
    );
    assert_eq!(seen["operator_phone_controls"], 4, "{seen}");
    assert_eq!(
        seen["operator_phone_revert"], 1,
        "the revert is offered: {seen}"
    );
    assert!(
        seen["list_phone_overflow"].as_i64().unwrap() <= 0
            && seen["list_phone_rows_offscreen"] == 0,
        "the incident list fits a 390 px phone: {seen}"
    );
    assert_eq!(
        seen["operator_phone_controls_offscreen"], 0,
        "at 390 px every response control is on screen: {seen}"
    );
    assert!(
        seen["operator_phone_overflow"].as_i64().unwrap() <= 0,
        "no sideways scrolling at 390 px: {seen}"
    );
    assert_eq!(
        seen["killswitch_marker"], 1,
        "the moment the kill switch went off is marked"
    );
    assert_eq!(
        seen["revert_offered"], 1,
        "a succeeded kill switch can be reverted"
    );
    assert_eq!(
        seen["note_shown"], 1,
        "the note is on the timeline, as text"
    );
    assert_eq!(
        seen["viewer_decide_forms"], 0,
        "a viewer is offered no decisions"
    );
    assert_eq!(seen["viewer_note_form"], 0, "nor the note form");
    assert!(
        seen["phone_overflow"].as_i64().unwrap() <= 0,
        "the page fits a phone's width: {seen}"
    );
    assert!(seen["nojs_marks"].as_i64().unwrap() >= entries, "{seen}");
    assert!(seen["nojs_entries"].as_i64().unwrap() >= entries, "{seen}");
    assert_eq!(
        seen["nojs_editor"], 1,
        "the editor is readable without JavaScript"
    );

    // What the store holds: the person decided, the flag is off.
    approved_by_olivia(fb, &seen, action, false).await;
    let (_, timeline) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    assert!(
        timeline["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "note"
                && e["source"] == "user:olivia"
                && e["summary"] == "Checked the dashboards <b>bold?</b>"),
        "{timeline}"
    );
}

/// A held action whose incident has since resolved: approving it through the
/// page is refused with the reason, the approve form offers "Run it anyway",
/// and ticked, it runs (audited as forced). The resolved incident's response
/// form then saves a commander without touching the stage.
#[tokio::test]
async fn a_resolved_incident_offers_to_run_a_held_action_anyway_and_saves_its_response() {
    let (app, incident, action) = held_kill_switch().await;
    let fb = &app.fb;
    // The alert resolves, and with it the incident.
    let mut resolved = alert_now("xss1", "HighErrorRate", "checkout", 2);
    resolved["status"] = json!("resolved");
    resolved["alerts"][0]["status"] = json!("resolved");
    resolved["alerts"][0]["endsAt"] = json!(chrono::Utc::now().to_rfc3339());
    let (s, b) = fb.post("/api/v1/alerts/alertmanager", &resolved).await;
    assert_eq!(s, 202, "{b}");
    eventually("the incident resolved", Duration::from_secs(20), || async {
        let (_, i) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
        (i["status"] == "resolved").then_some(())
    })
    .await;
    let operator = person(fb, "olivia", "operator").await;

    let seen = browser(
        "forced",
        json!({"base": fb.base, "operator": operator, "incident": incident, "action": action}),
    )
    .await;

    assert_eq!(seen["force_offered"], 1, "{seen}");
    let refused = seen["refused"].as_str().unwrap();
    assert!(
        refused.contains(&format!("incident #{incident} was resolved"))
            && refused.contains("Run it anyway"),
        "the refusal names why and what to tick: {refused}"
    );
    assert_eq!(seen["held_after_refusal"], 1, "{seen}");
    assert_eq!(
        (
            seen["commander_after"].as_str(),
            seen["stage_choices"].as_i64()
        ),
        (Some("user:olivia"), Some(0)),
        "a resolved incident's response form saves, and offers no stage: {seen}"
    );
    let (_, i) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
    assert_eq!(i["status"], "resolved", "{i}");
    approved_by_olivia(fb, &seen, action, true).await;
}

/// Two people edit the draft at once: different sections merge by
/// themselves; the same line shows both versions to resolve; the blameless
/// check's hints appear as they type; who else is editing is shown.
#[tokio::test]
async fn two_people_edit_the_postmortem_at_once() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let incident = seed_incident(fb).await;
    let (s, b) = fb
        .post(
            &format!("/api/v1/incidents/{incident}/postmortem/regenerate"),
            &json!({}),
        )
        .await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let alice = person(fb, "alice", "editor").await;
    let bob = person(fb, "bob", "editor").await;

    let seen = browser(
        "editor",
        json!({"base": fb.base, "a": alice, "b": bob, "incident": incident}),
    )
    .await;

    assert!(
        seen["alice_sees"].as_str().unwrap().contains("user:bob"),
        "{seen}"
    );
    assert!(
        seen["bob_flash"]
            .as_str()
            .unwrap()
            .contains("combined with the changes saved meanwhile"),
        "{seen}"
    );
    let merged = seen["merged_text"].as_str().unwrap();
    assert!(
        merged.contains("Checkout's v2 deploy broke payments for 12 minutes.")
            && merged.contains("- The kill switch turned the new flow off within a second."),
        "both edits kept: {merged}"
    );
    assert!(
        seen["clash_ours"]
            .as_str()
            .unwrap()
            .contains("Bob: the runbook named the old flag."),
        "{seen}"
    );
    assert!(
        seen["clash_theirs"]
            .as_str()
            .unwrap()
            .contains("Alice: the page came 4 minutes after the errors."),
        "{seen}"
    );
    assert_eq!(seen["markers_refused"], 1, "{seen}");
    let resolved = seen["resolved_text"].as_str().unwrap();
    assert!(
        resolved.contains("Alice: the page came") && resolved.contains("Bob: the runbook"),
        "{resolved}"
    );
    assert!(!resolved.contains("<<<<<<<"), "{resolved}");
    let added = seen["item_added"].as_str().unwrap();
    assert!(
        added.contains("Add a canary gate on checkout error rate")
            && added.contains("bob")
            && added.contains("2026-12-20")
            && added.contains("high")
            && added.contains("open"),
        "{added}"
    );
    assert_eq!(seen["item_closed"], "done", "{seen}");
    assert_eq!(seen["item_reopen_offered"], 1, "{seen}");
    let (_, items) = fb
        .get(&format!("/api/v1/incidents/{incident}/action-items"))
        .await;
    assert_eq!(items["items"][0]["status"], "done", "{items}");
    assert_eq!(items["items"][0]["created_by"], "user:bob", "{items}");
    assert!(
        seen["finding"].as_str().unwrap().contains("Try:"),
        "a hint with its suggestion: {seen}"
    );
    assert_eq!(
        seen["preview_imgs"], 0,
        "raw HTML in the draft is not rendered"
    );

    // The store: every save is a revision; the last is what Bob resolved.
    let (_, pm) = fb
        .get(&format!("/api/v1/incidents/{incident}/postmortem"))
        .await;
    let text = pm["markdown"].as_str().unwrap();
    assert!(
        text.contains("Checkout's v2 deploy broke payments")
            && text.contains("The kill switch turned the new flow off")
            && text.contains("Alice: the page came")
            && text.contains("Bob: the runbook"),
        "{text}"
    );
    let (_, revs) = fb
        .get(&format!(
            "/api/v1/incidents/{incident}/postmortem/revisions"
        ))
        .await;
    let kinds: Vec<&str> = revs["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"merged"), "{kinds:?}");
    assert!(
        revs["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["author"] == "user:bob"),
        "{revs}"
    );
}

/// An incident of 10,000 timeline entries: the picture shows counts per
/// time slice, each a link that zooms in, down to single entries.
#[tokio::test]
async fn a_dense_timeline_is_drawn_as_counts_and_zooms() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let minutes = 100i64;
    let start = chrono::Utc::now() - chrono::Duration::minutes(minutes);
    let alerts: Vec<Value> = (0..10_000)
        .map(|i| {
            let at = start + chrono::Duration::milliseconds(i * minutes * 60_000 / 10_000);
            json!({"status": "firing", "fingerprint": format!("dense{i:05}"),
                   "labels": {"alertname": "Dense", "service": "dense", "instance": format!("i{i}")},
                   "annotations": {"summary": "dense"}, "startsAt": at.to_rfc3339(),
                   "endsAt": "0001-01-01T00:00:00Z", "generatorURL": ""})
        })
        .collect();
    let (s, b) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &json!({"version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "dense",
                    "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                    "externalURL": "http://am", "truncatedAlerts": 0, "alerts": alerts}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let incident = eventually("10,000 entries", Duration::from_secs(60), || async {
        let (_, list) = fb.get("/api/v1/incidents?service=dense").await;
        let id = list["incidents"][0]["id"].as_i64()?;
        let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
        (d["counts"]["timeline_entries"].as_i64()? > 10_000).then_some(id)
    })
    .await;
    let viewer = person(fb, "vera", "viewer").await;

    let seen = browser(
        "dense",
        json!({"base": fb.base, "viewer": viewer, "incident": incident}),
    )
    .await;

    let buckets = seen["buckets"].as_i64().unwrap();
    assert!(
        (10..=60).contains(&buckets),
        "alerts drawn as counts: {seen}"
    );
    assert_eq!(
        seen["bucket_total"], 10_000,
        "the counts add up to every alert: {seen}"
    );
    assert!(
        seen["dots"].as_i64().unwrap() < 600,
        "no lane draws more than it can show: {seen}"
    );
    assert_eq!(seen["list_rows"], 200, "the list is paged: {seen}");
    assert!(seen["overflow"].as_i64().unwrap() <= 0, "{seen}");
    assert!(seen["zoom_depth"].as_i64().unwrap() >= 1, "{seen}");
    assert!(
        seen["zoomed_dots"].as_i64().unwrap() > 0,
        "zoomed in far enough, single entries show: {seen}"
    );
}
