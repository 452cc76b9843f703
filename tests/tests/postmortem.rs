//! Postmortem drafts end to end: written when Alertmanager's resolved webhook
//! resolves the incident, filled from real data, edited with conflict
//! detection, regenerated without losing a word, exported as safe HTML.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_tests::{client, eventually, Firebreak, Options};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Times relative to one moment per test process, so durations come out exact.
fn ago(minutes: i64) -> String {
    ago_s(minutes * 60)
}

fn ago_s(seconds: i64) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| chrono::Utc::now() - chrono::Duration::seconds(1));
    (*base - chrono::Duration::seconds(seconds)).to_rfc3339()
}

fn webhook(status: &str, starts: &str, ends: &str, summary: &str) -> Value {
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "firebreak",
        "groupLabels": {"alertname": "HighErrorRate"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "HighErrorRate", "service": "checkout", "env": "prod", "severity": "critical"},
            "annotations": {"summary": summary},
            "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": "9f0e1d2c3b4a5968",
        }],
    })
}

async fn put(
    fb: &Firebreak,
    id: i64,
    if_match: Option<&str>,
    body: &Value,
) -> (u16, Value, String) {
    put_as(fb, firebreak_tests::TEST_TOKEN, id, if_match, body).await
}

/// Saves as the holder of `token` (the revision records who).
async fn put_as(
    fb: &Firebreak,
    token: &str,
    id: i64,
    if_match: Option<&str>,
    body: &Value,
) -> (u16, Value, String) {
    let mut req = firebreak_tests::anonymous()
        .put(format!("{}/api/v1/incidents/{id}/postmortem", fb.base))
        .bearer_auth(token)
        .json(body);
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.json().await.unwrap_or(Value::Null), etag)
}

/// The story of an incident, told to Firebreak the way real senders would.
async fn resolved_incident(fb: &Firebreak) -> i64 {
    let starts = ago(20);
    fb.post("/api/v1/events/deploy", &json!({"service": "checkout", "environment": "prod", "version": "v41", "status": "succeeded", "started_at": ago(300)})).await;
    fb.post(
        "/api/v1/events/deploy",
        &json!({"service": "checkout", "environment": "prod", "version": "v42", "previous_version": "v41",
                "status": "succeeded", "actor": "mallory", "commit": "3f9a2c1", "started_at": ago(27)}),
    )
    .await;
    fb.post(
        "/api/v1/events/gate",
        &json!({"service": "checkout", "environment": "prod", "version": "v42", "gate": "canary-error-rate",
                "metric": "http_5xx_ratio", "comparison": "<=", "threshold": 0.01, "baseline": 0.002,
                "observed": 0.07, "verdict": "fail", "step": "25%", "evaluated_at": ago(24)}),
    )
    .await;
    // Logs: healthy traffic before and after the deploy, a new error after it,
    // and a hostile line that must not become HTML.
    let mut lines = Vec::new();
    for i in 0..120 {
        lines.push(json!({"at": ago(80 - i / 2), "level": "info", "message": format!("GET /api/cart/{} 200 {}ms", 1000 + i, 10 + i % 7)}));
    }
    for i in 0..60 {
        lines.push(json!({"at": ago_s(22 * 60 - i * 6), "level": "error",
            "message": format!("POST /api/payments 502 upstream timeout after {}ms to 10.1.2.{}:8443", 3000 + i, i)}));
        lines.push(json!({"at": ago_s(22 * 60 - i * 6), "level": "error", "message": "\tat com.shop.payments.Gateway.charge(Gateway.java:118)"}));
    }
    lines.push(json!({"at": ago(21), "level": "error", "message": "bad input <script>alert('x')</script>"}));
    let (status, _) = fb
        .post(
            "/api/v1/events/logs",
            &json!({"service": "checkout", "environment": "prod", "lines": lines}),
        )
        .await;
    assert_eq!(status, 202);
    fb.post(
        "/api/v1/alerts/alertmanager",
        &webhook("firing", &starts, "0001-01-01T00:00:00Z", "5xx rate > 5%"),
    )
    .await;
    let id = eventually("the incident", WAIT, || async {
        let (_, l) = fb.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    // Alertmanager's resolved notification resolves it (quiet period 0 here).
    fb.post(
        "/api/v1/alerts/alertmanager",
        &webhook("resolved", &starts, &ago(2), "5xx rate > 5%"),
    )
    .await;
    id
}

#[tokio::test]
async fn resolving_through_alertmanager_writes_a_draft_from_real_data() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::embedded().with("FIREBREAK_TIMEZONE", "Europe/Berlin"),
    )
    .await;
    let id = resolved_incident(&fb).await;
    let doc = eventually("the draft", WAIT, || async {
        let (status, d) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        (status == 200).then_some(d)
    })
    .await;
    assert_eq!(doc["revision"], 1);
    assert_eq!(doc["status"], "draft");
    let md = doc["markdown"].as_str().unwrap();
    for needle in [
        "# Postmortem: HighErrorRate on checkout (prod): 5xx rate > 5%",
        "| Fact | Value |",
        "| Cause | not confirmed yet (mark it on the incident page) |",
        "## Impact",
        "## Detection",
        "**Time to detect**: 7m 0s",
        "## Response",
        "**Time to resolve**: 18m 0s",
        "## Contributing factors",
        "HighErrorRate fired (1 alert in this incident)",
        "HighErrorRate resolved (the last of its 1 alert)",
        "Times are Europe/Berlin",
        "| 1 | checkout v42 (from v41) |",
        "gate canary-error-rate failed: http_5xx_ratio observed 0.07, threshold <= 0.01",
        "| canary-error-rate | http_5xx_ratio | <= 0.01 | 0.002 | 0.07 | **fail** | 25% | v42 |",
        "`POST /api/payments <NUM> upstream timeout after <DUR> to <IP>` | 60 |",
        "`at com.shop.payments.Gateway.charge(Gateway.java:<NUM>)` | 60 |",
        "`GET /api/cart/<NUM> <NUM> <DUR>` | 120 |",
        "## What went well",
        "## Action items",
    ] {
        assert!(md.contains(needle), "draft lacks {needle:?}:\n{md}");
    }
    let timeout_row = md.lines().find(|l| l.contains("upstream timeout")).unwrap();
    assert!(
        timeout_row.contains("**new**") && timeout_row.contains("after the deploy"),
        "{timeout_row}"
    );
    let cart_row = md.lines().find(|l| l.contains("/api/cart/")).unwrap();
    assert!(cart_row.contains("also before"), "{cart_row}");
    assert!(md.contains("CET"), "times in the configured zone");
    assert_eq!(doc["lint"], json!([]), "the machine draft is blameless");

    // HTML export: sanitized.
    let r = client()
        .get(format!("{}/api/v1/incidents/{id}/postmortem.html", fb.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let html = r.text().await.unwrap();
    assert!(html.contains("<table>"));
    assert!(
        !html.contains("<script>"),
        "a log line never becomes markup"
    );
    assert!(
        !html.contains("&lt;!-- firebreak:begin"),
        "markers are stripped"
    );
    assert!(
        !html.contains("firebreak:guide") && !html.contains("Sections between"),
        "the editors' guide is not exported"
    );
    let exported = client()
        .get(format!("{}/api/v1/incidents/{id}/postmortem.md", fb.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !exported.contains("<!-- firebreak") && !exported.contains("Sections between"),
        "{exported}"
    );
    assert!(exported.contains("## Action items"), "{exported}");

    // A person confirms the cause; the draft states it, and the suspect row
    // says who said so.
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    let deploy = detail["suspect_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["version"] == "v42")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = fb
        .post(
            &format!("/api/v1/incidents/{id}/changes/{deploy}/cause"),
            &json!({"cause": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = fb
        .post(
            &format!("/api/v1/incidents/{id}/postmortem/regenerate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, doc) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
    let md = doc["markdown"].as_str().unwrap();
    assert!(
        md.contains("| Cause | checkout v42 (from v41), confirmed by bootstrap |"),
        "{md}"
    );
    let v42 = md
        .lines()
        .find(|l| l.starts_with("| 1 | checkout v42"))
        .unwrap();
    assert!(v42.ends_with("| the cause |"), "{v42}");
}

#[tokio::test]
async fn editors_save_with_if_match_and_a_stale_revision_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let id = resolved_incident(&fb).await;
    let doc = eventually("the draft", WAIT, || async {
        let (status, d) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        (status == 200).then_some(d)
    })
    .await;
    let md = doc["markdown"].as_str().unwrap().to_string();

    // No If-Match: refused, nothing written.
    let (status, body, _) = put(&fb, id, None, &json!({"markdown": "x"})).await;
    assert_eq!(status, 428, "{body}");

    // Two editors start from revision 1 and save at the same moment.
    let alice = md.replace(
        "_What happened, in two or three sentences, for someone who was not there._",
        "The v42 deploy removed the payment client's timeout; checkout returned 5xx for 18 minutes.",
    );
    let bob = md.replace(
        "## What went well\n\n- ",
        "## What went well\n\n- The kill switch worked.",
    );
    let (alice, bob) = (json!({"markdown": alice}), json!({"markdown": bob}));
    let (alice_t, bob_t) = (
        fb.token("alice", &["read", "edit"]).await.token,
        fb.token("bob", &["read", "edit"]).await.token,
    );
    let (a, b) = tokio::join!(
        put_as(&fb, &alice_t, id, Some("\"1\""), &alice),
        put_as(&fb, &bob_t, id, Some("\"1\""), &bob)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "exactly one save wins: {a:?} {b:?}");
    let (winner, loser) = if a.0 == 200 { (a, b) } else { (b, a) };
    assert_eq!(winner.1["revision"], 2);
    assert_eq!(winner.2, "\"2\"");
    assert_eq!(
        loser.1["current"]["revision"], 2,
        "the 409 carries the current revision"
    );
    assert!(loser.1["message"].as_str().unwrap().contains("stale"));
    assert!(
        ["token:alice", "token:bob"].contains(&winner.1["updated_by"].as_str().unwrap()),
        "the revision records who authenticated: {}",
        winner.1
    );
    let (status, e, _) = put(
        &fb,
        id,
        Some("\"2\""),
        &json!({"markdown": "x", "by": "mallory"}),
    )
    .await;
    assert_eq!(status, 400, "a self-asserted author is refused: {e}");
    assert_eq!(e["field"], "by");

    // The loser merges into revision 2 and saves; nothing was lost.
    let current = loser.1["current"]["markdown"].as_str().unwrap().to_string();
    let merged = current
        .replace(
            "_What happened, in two or three sentences, for someone who was not there._",
            "The v42 deploy removed the payment client's timeout; checkout returned 5xx for 18 minutes.",
        )
        .replace("## What went well\n\n- \n", "## What went well\n\n- The kill switch worked.\n");
    let (status, saved, etag) = put(&fb, id, Some("\"2\""), &json!({"markdown": merged})).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(etag, "\"3\"");
    let text = saved["markdown"].as_str().unwrap();
    assert!(
        text.contains("removed the payment client's timeout")
            && text.contains("The kill switch worked.")
    );

    // The blameless check runs on every save; it informs, it does not block.
    let blaming = text.replace(
        "- The kill switch worked.",
        "- The kill switch worked.\n\nRoot cause: human error, mallory should have waited.",
    );
    let (status, saved, _) = put(
        &fb,
        id,
        Some("\"3\""),
        &json!({"markdown": blaming, "status": "in_review"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(saved["status"], "in_review");
    let rules: Vec<&str> = saved["lint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"human-error") && rules.contains(&"counterfactual"),
        "{rules:?}"
    );
    assert!(saved["lint"][0]["suggestion"].as_str().unwrap().len() > 10);

    // Status moves one step at a time.
    let (status, body, _) = put(&fb, id, Some("\"4\""), &json!({"status": "archived"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = put(&fb, id, Some("\"4\""), &json!({"status": "published"})).await;
    assert_eq!(status, 200);

    // History with diffs.
    let (_, revs) = fb
        .get(&format!("/api/v1/incidents/{id}/postmortem/revisions"))
        .await;
    let kinds: Vec<&str> = revs["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["generated", "edited", "edited", "edited", "status"]);
    let (_, r3) = fb
        .get(&format!("/api/v1/incidents/{id}/postmortem/revisions/3"))
        .await;
    let diff = r3["diff"].as_str().unwrap();
    assert!(
        diff.contains("+- The kill switch worked.") || diff.contains("+The v42 deploy"),
        "{diff}"
    );
    assert!(diff.starts_with("--- revision 2"), "{diff}");
}

#[tokio::test]
async fn regenerating_keeps_human_edits_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let id = resolved_incident(&fb).await;
    let doc = eventually("the draft", WAIT, || async {
        let (status, d) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        (status == 200).then_some(d)
    })
    .await;
    let md = doc["markdown"].as_str().unwrap();
    // A person writes the summary and annotates the gates section.
    let edited = md
        .replace(
            "_What happened, in two or three sentences, for someone who was not there._",
            "Our summary, written by the team.",
        )
        .replace("| **fail** |", "| **fail** (the canary caught it) |");
    let (status, _, _) = put(&fb, id, Some("\"1\""), &json!({"markdown": edited})).await;
    assert_eq!(status, 200);

    // New data arrives: a note-worthy gate result and more logs.
    fb.post(
        "/api/v1/events/gate",
        &json!({"service": "checkout", "environment": "prod", "version": "v42", "gate": "canary-latency",
                "metric": "p99_ms", "threshold": 300.0, "observed": 950.0, "verdict": "fail", "evaluated_at": ago(23)}),
    )
    .await;
    fb.post(
        "/api/v1/events/logs",
        &json!({"service": "checkout", "environment": "prod", "lines": [{"at": ago(15), "level": "error", "message": "circuit breaker open for payments-gateway"}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client()
        .post(format!(
            "{}/api/v1/incidents/{id}/postmortem/regenerate",
            fb.base
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let regen: Value = r.json().await.unwrap();
    assert_eq!(regen["revision"], 3);
    let text = regen["markdown"].as_str().unwrap();
    assert!(
        text.contains("Our summary, written by the team."),
        "human text kept"
    );
    assert!(
        text.contains("(the canary caught it)"),
        "edited machine section kept"
    );
    let gates = text
        .split("<!-- firebreak:begin gates -->")
        .nth(1)
        .unwrap()
        .split("<!-- firebreak:end gates -->")
        .next()
        .unwrap();
    assert!(
        !gates.contains("canary-latency"),
        "…so the gates table was not replaced: {gates}"
    );
    assert!(
        text.contains("gate canary-latency fail"),
        "the timeline (untouched) was updated"
    );
    assert!(
        text.contains("`circuit breaker open for payments-gateway`"),
        "untouched sections updated:\n{text}"
    );
    let conflicts = regen["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["section"], "gates");
    assert!(conflicts[0]["generated"]
        .as_str()
        .unwrap()
        .contains("canary-latency"));

    // Regenerating again with nothing new writes no revision, even when the
    // draft's "generated at" stamp has moved on by a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = client()
        .post(format!(
            "{}/api/v1/incidents/{id}/postmortem/regenerate",
            fb.base
        ))
        .send()
        .await
        .unwrap();
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["revision"], 3);

    // On demand for an open incident, and 404s that say what to do.
    let (status, body) = fb.get("/api/v1/incidents/999/postmortem").await;
    assert_eq!(status, 404);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no incident 999"));
}

#[tokio::test]
async fn lint_endpoint_flags_blame_and_leaves_neutral_text() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let (status, body) = fb
        .post("/api/v1/postmortems/lint", &json!({"text": "It was Bob's fault: he should have known.\nA careless deploy.", "people": ["Bob"]}))
        .await;
    assert_eq!(status, 200);
    let found: Vec<(&str, i64)> = body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["rule"].as_str().unwrap(), f["line"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        found,
        [("fault", 1), ("counterfactual", 1), ("judgement", 2)]
    );
    let (_, body) = fb
        .post("/api/v1/postmortems/lint", &json!({"text": "The v42 deploy removed a timeout. The canary gate caught the regression at 25%."}))
        .await;
    assert_eq!(body["count"], 0);
    let (status, _) = fb
        .post("/api/v1/postmortems/lint", &json!({"txt": "x"}))
        .await;
    assert_eq!(status, 400);
}

/// Teams change the template without rebuilding: Firebreak reads it at every
/// render; a broken one is refused with the file and the problem, and nothing
/// is written.
#[tokio::test]
async fn a_changed_template_applies_to_the_next_draft_and_a_broken_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("postmortem.md.hbs"),
        "# {{incident.title}}\n\nDetected in {{metrics.ttd}}.\n<!-- firebreak:begin facts -->\n{{impact.duration}}\n<!-- firebreak:end facts -->\n",
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded().with("FIREBREAK_TEMPLATES", templates.to_str().unwrap()),
    )
    .await;
    let id = resolved_incident(&fb).await;
    let doc = eventually("the draft", WAIT, || async {
        let (status, d) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        (status == 200).then_some(d)
    })
    .await;
    assert!(
        doc["markdown"]
            .as_str()
            .unwrap()
            .contains("Detected in 7m 0s."),
        "{doc}"
    );
    std::fs::write(
        templates.join("postmortem.md.hbs"),
        "# {{incident.titel}}\n",
    )
    .unwrap();
    let r = client()
        .post(format!(
            "{}/api/v1/incidents/{id}/postmortem/regenerate",
            fb.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("postmortem.md.hbs") && message.contains("titel"),
        "{message}"
    );
    let (_, still) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
    assert_eq!(still["revision"], 1, "nothing written");
}

/// The incident page reads suspects and logs over the configured windows, as
/// the draft does: a deploy 4 h before the first alert is a suspect with
/// `incidents.deploy_lookback = 6h`, and a log line 3 h back is mined with
/// `postmortem.log_lead = 2h` (the page once used fixed 2 h and 1 h).
#[tokio::test]
async fn the_incident_page_follows_the_configured_lookback_and_log_lead() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::embedded()
            .with("FIREBREAK_DEPLOY_LOOKBACK", "6h")
            .with("FIREBREAK_POSTMORTEM__LOG_LEAD", "2h"),
    )
    .await;
    fb.post(
        "/api/v1/events/deploy",
        &json!({"service": "checkout", "environment": "prod", "version": "v9",
                "status": "succeeded", "started_at": ago(260)}),
    )
    .await;
    let (status, _) = fb
        .post(
            "/api/v1/events/logs",
            &json!({"service": "checkout", "environment": "prod", "lines": [
                {"at": ago(180), "level": "error", "message": "search index rebuild failed on replica"}
            ]}),
        )
        .await;
    assert_eq!(status, 202);
    fb.post(
        "/api/v1/alerts/alertmanager",
        &webhook("firing", &ago(20), "0001-01-01T00:00:00Z", "5xx rate > 5%"),
    )
    .await;
    let id = eventually("the incident", WAIT, || async {
        let (_, l) = fb.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    let html = eventually("the page with the log line", WAIT, || async {
        let html = client()
            .get(format!("{}/incidents/{id}", fb.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        html.contains("search index rebuild failed").then_some(html)
    })
    .await;
    assert!(html.contains("suspect: checkout v9"), "{html}");
}

#[tokio::test]
async fn a_revision_page_shows_only_the_changed_hunks() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let id = resolved_incident(&fb).await;
    let doc = eventually("the draft", WAIT, || async {
        let (status, d) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        (status == 200).then_some(d)
    })
    .await;
    let md = doc["markdown"].as_str().unwrap();
    // Two edits far apart: the summary near the top, a line near the end.
    let edited = md
        .replacen(
            "_What happened, in two or three sentences, for someone who was not there._",
            "Checkout returned 502s for 18 minutes after the v42 deploy.",
            1,
        )
        .replacen(
            "## Where we got lucky\n\n- ",
            "## Where we got lucky\n\n- The deploy went out at a quiet hour.",
            1,
        );
    assert_ne!(edited, md);
    let (status, saved, _) = put(&fb, id, Some("\"1\""), &json!({"markdown": edited})).await;
    assert_eq!(status, 200, "{saved}");
    let page = client()
        .get(format!("{}/incidents/{id}/postmortem/revisions/2", fb.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("<h2 class=\"hunk\">").count(), 2, "{page}");
    assert!(page.contains("+ Checkout returned 502s"), "{page}");
    assert!(
        page.contains("+ - The deploy went out at a quiet hour."),
        "{page}"
    );
    assert!(
        !page.contains("Gate results") && !page.contains("Log patterns"),
        "unchanged sections far from both edits are left out: {page}"
    );
    assert!(
        !page.contains("</span>\n<span"),
        "one line per line, not double-spaced"
    );
}

#[tokio::test]
async fn presence_is_shared_by_every_api_process() {
    let pg = firebreak_tests::Pg::fresh().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = || {
        Options::embedded()
            .with("FIREBREAK_DATABASE_URL", &pg.url)
            .with(
                "FIREBREAK_AUDIT__KEY",
                "presence-test-audit-key-0123456789abcdef",
            )
    };
    let one = Firebreak::start(d1.path(), options()).await;
    let two = Firebreak::start(d2.path(), options().roles("api")).await;
    let (status, _) = one
        .post(
            "/api/v1/alerts/alertmanager",
            &firebreak_tests::alert_now("pres000000000001", "HighErrorRate", "checkout", 2),
        )
        .await;
    assert_eq!(status, 202);
    let id = eventually("the incident", WAIT, || async {
        let (_, l) = one.get("/api/v1/incidents").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    let ana = one.token("ana", &["read", "edit"]).await;
    let bo = one.token("bo", &["read", "edit"]).await;
    let path = format!("/api/v1/incidents/{id}/postmortem/presence");
    let at = |fb: &Firebreak, token: &str| {
        let url = format!("{}{path}", fb.base);
        let token = token.to_string();
        async move {
            firebreak_tests::anonymous()
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(at(&one, &ana.token).await["others"], json!([]));
    // Bo's editor talks to the other process, and still sees Ana.
    assert_eq!(at(&two, &bo.token).await["others"], json!(["token:ana"]));
    assert_eq!(at(&one, &ana.token).await["others"], json!(["token:bo"]));
    drop((one, two));
    pg.drop_db().await;
}
