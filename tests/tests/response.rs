//! Incident response by people, end to end in both modes: declaring an
//! incident by hand, acknowledging it (once), setting its severity on the
//! scale, its stage and its commander, each on the timeline and in the audit
//! trail under the person's identity; filters on all of them; refusals that
//! name the field and what is allowed; resolving by the stage `resolved`
//! only for operators.
#![allow(clippy::unwrap_used)]

use firebreak_tests::{alert_now, eventually, TestAppBuilder};
use serde_json::{json, Value};
use std::time::Duration;

async fn kinds(fb: &firebreak_tests::Firebreak, id: i64) -> Vec<(String, String, String)> {
    let (_, t) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
    t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap_or("").to_string(),
                e["summary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn people_declare_acknowledge_and_steer_an_incident(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let editor = fb.token("ed", &["read", "edit"]).await;
    let viewer = fb.token("viewer", &["read"]).await;
    let operator = fb.token("op", &["read", "edit", "operate"]).await;

    // Declared by hand: 201, open, investigating, declared by the token.
    let (status, body) = viewer
        .post(
            "/api/v1/incidents",
            &json!({"title": "Checkout slow", "service": "checkout"}),
        )
        .await;
    assert_eq!(status, 403, "a viewer cannot declare: {body}");
    let (status, body) = editor
        .post(
            "/api/v1/incidents",
            &json!({"title": "Checkout slow", "service": "checkout", "environment": "prod",
                    "severity": "sev2", "summary": "p99 over 2 s since 14:02"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    assert_eq!(
        (
            body["status"].clone(),
            body["stage"].clone(),
            body["severity"].clone(),
            body["declared_by"].clone(),
            body["acknowledged_at"].clone(),
        ),
        (
            json!("open"),
            json!("investigating"),
            json!("SEV2"),
            json!("token:ed"),
            Value::Null
        )
    );
    for (bad, field) in [
        (json!({"service": "checkout"}), "title"),
        (
            json!({"title": "x", "service": "checkout", "severity": "P0"}),
            "severity",
        ),
        (json!({"title": "x", "service": "check out"}), "service"),
        (
            json!({"title": "x", "service": "checkout", "owner": "me"}),
            "owner",
        ),
    ] {
        let (status, e) = editor.post("/api/v1/incidents", &bad).await;
        assert_eq!(status, 400, "{bad} -> {e}");
        assert!(e.to_string().contains(field), "{bad} -> {e}");
    }
    let (status, e) = editor
        .post(
            "/api/v1/incidents",
            &json!({"title": "x", "service": "checkout", "severity": "P0"}),
        )
        .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("SEV1, SEV2, SEV3, SEV4"),
        "{status} {e}"
    );

    // Acknowledged once: the second changes nothing.
    let (status, a) = editor
        .post(&format!("/api/v1/incidents/{id}/acknowledge"), &json!({}))
        .await;
    assert_eq!(
        (status, a["acknowledged"].clone()),
        (200, json!(true)),
        "{a}"
    );
    assert_eq!(a["acknowledged_by"], "token:ed");
    let (status, again) = operator
        .post(&format!("/api/v1/incidents/{id}/acknowledge"), &json!({}))
        .await;
    assert_eq!(
        (status, again["acknowledged"].clone()),
        (200, json!(false)),
        "{again}"
    );
    assert_eq!(
        again["acknowledged_by"], "token:ed",
        "the first acknowledgement stays"
    );
    let (status, _) = viewer
        .post(&format!("/api/v1/incidents/{id}/acknowledge"), &json!({}))
        .await;
    assert_eq!(status, 403);
    let (status, _) = editor
        .post("/api/v1/incidents/99999/acknowledge", &json!({}))
        .await;
    assert_eq!(status, 404);

    // Severity, stage, commander: one timeline entry naming each change.
    let patch = |who: &firebreak_tests::Caller, body: Value| {
        let base = who.base.clone();
        let token = who.token.clone();
        async move {
            let r = firebreak_tests::anonymous()
                .patch(format!("{base}/api/v1/incidents/{id}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, row) = patch(
        &editor,
        json!({"severity": "SEV1", "stage": "identified", "commander": "ana"}),
    )
    .await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(
        (
            row["severity"].clone(),
            row["stage"].clone(),
            row["commander"].clone()
        ),
        (json!("SEV1"), json!("identified"), json!("user:ana"))
    );
    let entries = kinds(fb, id).await;
    let updated: Vec<&(String, String, String)> = entries
        .iter()
        .filter(|e| e.0 == "incident_updated")
        .collect();
    assert_eq!(updated.len(), 1, "{entries:?}");
    assert_eq!(updated[0].1, "token:ed");
    assert!(
        updated[0].2.contains("severity SEV2 -> SEV1")
            && updated[0].2.contains("stage investigating -> identified")
            && updated[0].2.contains("commander none -> user:ana"),
        "{updated:?}"
    );
    assert!(entries
        .iter()
        .any(|e| e.0 == "incident_declared" && e.1 == "token:ed"));
    assert!(entries
        .iter()
        .any(|e| e.0 == "incident_acknowledged" && e.1 == "token:ed"));
    // The same values again: nothing to say, no entry.
    let (status, _) = patch(&editor, json!({"severity": "sev1"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        kinds(fb, id)
            .await
            .iter()
            .filter(|e| e.0 == "incident_updated")
            .count(),
        1
    );
    for (bad, field) in [
        (
            json!({"stage": "done"}),
            "investigating, identified, monitoring, resolved",
        ),
        (json!({"severity": "SEV9"}), "SEV1, SEV2, SEV3, SEV4"),
        (json!({"commander": "robot:x"}), "commander"),
        (
            json!({"status": "identified", "stage": "monitoring"}),
            "status",
        ),
        (json!({"owner": "ana"}), "owner"),
        (json!({}), "give at least one"),
    ] {
        let (status, e) = patch(&editor, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {e}");
        assert!(e.to_string().contains(field), "{bad} -> {e}");
    }
    let (status, _) = patch(&viewer, json!({"severity": "SEV3"})).await;
    assert_eq!(status, 403);

    // `status` names the stage too, as people say it.
    let (status, row) = patch(&editor, json!({"status": "monitoring"})).await;
    assert_eq!(
        (status, row["stage"].clone(), row["status"].clone()),
        (200, json!("monitoring"), json!("open")),
        "{row}"
    );
    // Resolving by the stage `resolved` is for operators.
    let (status, e) = patch(&editor, json!({"stage": "resolved"})).await;
    assert_eq!(status, 403, "{e}");
    let (status, row) = patch(&operator, json!({"stage": "resolved"})).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(
        (row["status"].clone(), row["stage"].clone()),
        (json!("resolved"), json!("resolved"))
    );
    let (status, e) = patch(&operator, json!({"stage": "monitoring"})).await;
    assert_eq!(status, 409, "{e}");

    // The audit trail has each step under who took it.
    let (_, audit) = fb.get(&format!("/api/v1/audit?incident={id}")).await;
    let events: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("incident_acknowledged", "token:ed"),
        ("incident_updated", "token:ed"),
        ("resolved", "token:op"),
    ] {
        assert!(
            events.iter().any(|(e, a)| e == want.0 && a == want.1),
            "{want:?} in {events:?}"
        );
    }
}

async fn alert_incidents_map_severity_and_lists_filter_the_response(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    // alert_now sets severity="critical": SEV1 on the default scale.
    let (status, _) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &alert_now("resp0001", "HighErrorRate", "checkout", 1),
        )
        .await;
    assert_eq!(status, 202);
    let alerted = eventually("the alert's incident", Duration::from_secs(20), || async {
        let (_, l) = fb.get("/api/v1/incidents?service=checkout").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    let (_, one) = fb.get(&format!("/api/v1/incidents/{alerted}")).await;
    assert_eq!(
        (
            one["severity"].clone(),
            one["alert_severity"].clone(),
            one["stage"].clone()
        ),
        (json!("SEV1"), json!("critical"), json!("investigating"))
    );
    let (_, declared) = fb
        .post(
            "/api/v1/incidents",
            &json!({"title": "Search stale", "service": "search", "severity": "SEV3"}),
        )
        .await;
    let declared = declared["id"].as_i64().unwrap();
    fb.post(
        &format!("/api/v1/incidents/{declared}/acknowledge"),
        &json!({}),
    )
    .await;
    let ids = |q: &'static str| async move {
        let (status, l) = fb.get(&format!("/api/v1/incidents?{q}")).await;
        assert_eq!(status, 200, "{q}: {l}");
        l["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("severity=SEV1").await, [alerted]);
    assert_eq!(ids("severity=sev3").await, [declared]);
    assert_eq!(ids("acknowledged=true").await, [declared]);
    assert_eq!(ids("acknowledged=false").await, [alerted]);
    assert_eq!(ids("stage=investigating").await.len(), 2);
    let (status, e) = fb.get("/api/v1/incidents?stage=later").await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = fb.get("/api/v1/incidents?severity=P1").await;
    assert_eq!(status, 400, "{e}");
}

/// The reason a person gives for a request is on the timeline with it.
async fn a_requests_reason_is_on_the_timeline(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let (_, i) = fb
        .post(
            "/api/v1/incidents",
            &json!({"title": "Pay errors", "service": "pay"}),
        )
        .await;
    let id = i["id"].as_i64().unwrap();
    fb.post(
        "/api/v1/flags",
        &json!({"key": "pay.new-flow", "enabled": true}),
    )
    .await;
    let (status, a) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": "pay.new-flow", "incident": id,
                    "reason": "5xx on /pay since the 14:02 deploy"}),
        )
        .await;
    assert_eq!(status, 202, "{a}");
    let entries = eventually(
        "the request on the timeline",
        Duration::from_secs(20),
        || async {
            let e = kinds(fb, id).await;
            e.iter().any(|e| e.0 == "action_requested").then_some(e)
        },
    )
    .await;
    let requested = entries.iter().find(|e| e.0 == "action_requested").unwrap();
    assert!(
        requested
            .2
            .ends_with("reason: 5xx on /pay since the 14:02 deploy"),
        "{requested:?}"
    );
}

/// The incident page's alerts panel: one row per alert name with its counts,
/// labels and links; a link that is not http(s) is not made a link.
async fn the_alerts_panel_groups_alerts_by_name(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let alert = |fp: &str, name: &str, runbook: &str| {
        json!({"status": "firing",
               "labels": {"alertname": name, "service": "cart", "severity": "warning", "pod": fp},
               "annotations": {"summary": format!("{name} on cart"), "runbook_url": runbook},
               "startsAt": chrono::Utc::now().to_rfc3339(), "endsAt": "0001-01-01T00:00:00Z",
               "generatorURL": "http://prometheus:9090/graph?g0.expr=up", "fingerprint": fp})
    };
    let mut alerts: Vec<Value> = (0..5)
        .map(|i| {
            alert(
                &format!("lat{i:04}"),
                "HighLatency",
                "https://runbooks.example.com/latency",
            )
        })
        .collect();
    alerts.push(alert("err00001", "HighErrorRate", "javascript:alert(1)"));
    let body = json!({"version": "4", "groupKey": "{}:{service=\"cart\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "firebreak", "groupLabels": {"service": "cart"},
        "commonLabels": {"service": "cart"}, "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": alerts});
    let (status, b) = fb.post("/api/v1/alerts/alertmanager", &body).await;
    assert_eq!(status, 202, "{b}");
    let id = eventually(
        "the incident with six alerts",
        Duration::from_secs(20),
        || async {
            let (_, l) = fb.get("/api/v1/incidents?service=cart").await;
            let id = l["incidents"][0]["id"].as_i64()?;
            let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
            (d["alerts"].as_array()?.len() == 6).then_some(id)
        },
    )
    .await;
    let html = firebreak_tests::client()
        .get(format!("{}/incidents/{id}", fb.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let panel = &html[html.find("id=\"alert-groups\"").expect("the alerts panel")..];
    let panel = &panel[..panel.find("</table>").unwrap()];
    let latency = &panel[panel.find("data-alert=\"HighLatency\"").unwrap()..];
    let latency = &latency[..latency.find("</tr>").unwrap()];
    assert!(
        latency.contains("<td>5</td><td>5</td><td>0</td>")
            && latency.contains("href=\"https://runbooks.example.com/latency\"")
            && latency.contains("href=\"http://prometheus:9090/graph?g0.expr&#x3D;up\"")
            && latency.contains("<code>service&#x3D;cart</code>"),
        "{latency}"
    );
    let errors = &panel[panel.find("data-alert=\"HighErrorRate\"").unwrap()..];
    let errors = &errors[..errors.find("</tr>").unwrap()];
    assert!(
        errors.contains("<td>1</td>") && !errors.contains("javascript:"),
        "{errors}"
    );
    assert!(!errors.contains(">Runbook<"), "{errors}");
}

/// The incident page's picture starts at the top suspect change: an older
/// deploy of the lookback is counted at the left edge, a link away, and the
/// ticks fall on round times.
async fn the_timeline_shows_the_incidents_window(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    for (version, minutes) in [("v40", 90), ("v41", 7)] {
        let (s, _) = fb
            .post(
                "/api/v1/events/deploy",
                &firebreak_tests::deploy_now("shop", version, minutes),
            )
            .await;
        assert_eq!(s, 202);
    }
    let (s, _) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &alert_now("win00001", "HighErrorRate", "shop", 0),
        )
        .await;
    assert_eq!(s, 202);
    let id = eventually(
        "the incident with both deploys",
        Duration::from_secs(20),
        || async {
            let (_, l) = fb.get("/api/v1/incidents?service=shop").await;
            let id = l["incidents"][0]["id"].as_i64()?;
            let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
            (d["suspect_changes"].as_array()?.len() == 2).then_some(id)
        },
    )
    .await;
    let html = firebreak_tests::client()
        .get(format!("{}/incidents/{id}", fb.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert_eq!(
        svg.matches("data-kind=\"deploy\"").count(),
        1,
        "only v41 is drawn: {svg}"
    );
    assert!(
        svg.contains("data-earlier=\"1\""),
        "v40 is counted at the edge: {svg}"
    );
    let labels: Vec<&str> = svg
        .split("class=\"tick-label\"")
        .skip(1)
        .map(|t| &t[t.find('>').unwrap() + 1..t.find('<').unwrap()])
        .collect();
    assert!(!labels.is_empty());
    assert!(
        labels.iter().all(|l| l.len() == 5),
        "minutes, no seconds: {labels:?}"
    );
    let minutes: Vec<u32> = labels
        .iter()
        .map(|l| l.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let steps: Vec<u32> = minutes
        .windows(2)
        .map(|w| (w[1] + 60 - w[0]) % 60)
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] == w[1]),
        "even steps: {labels:?}"
    );
    assert!(
        minutes
            .iter()
            .all(|m| m % steps.first().copied().unwrap_or(1).max(1) == 0),
        "round: {labels:?}"
    );
}

firebreak_tests::both_modes!(
    people_declare_acknowledge_and_steer_an_incident,
    alert_incidents_map_severity_and_lists_filter_the_response,
    a_requests_reason_is_on_the_timeline,
    the_alerts_panel_groups_alerts_by_name,
    the_timeline_shows_the_incidents_window,
);
