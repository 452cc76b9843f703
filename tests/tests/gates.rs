//! Firebreak as the gate of rollout controllers, with requests in the shapes
//! Flagger's controller and Argo Rollouts' Web metric provider send, and the
//! answers they act on: Flagger counts 200–202 as success (for `rollback`:
//! "roll back now"), Argo reads a 200 JSON verdict.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_tests::{alert_now, eventually, Firebreak, TestAppBuilder};
use serde_json::{json, Value};

/// What Flagger's controller POSTs to a webhook (`CanaryWebhookPayload`).
fn flagger_body(version: Option<&str>) -> Value {
    let mut metadata = json!({"service": "checkout", "environment": "prod"});
    if let Some(v) = version {
        metadata["version"] = json!(v);
    }
    json!({"name": "checkout", "namespace": "shop", "phase": "Progressing",
           "checksum": "6d5c6b9b8f", "metadata": metadata})
}

async fn hook(fb: &Firebreak, name: &str, body: &Value) -> (u16, Value) {
    fb.post(&format!("/api/v1/gates/flagger/{name}"), body)
        .await
}

async fn rollout_gates_follow_incidents_gates_and_the_pause(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    // A controller holds a token that may read and nothing else.
    let flagger = fb.token("flagger", &["read"]).await;

    // Nothing wrong: promotion goes on, no rollback, Argo passes.
    let (s, b) = flagger
        .post("/api/v1/gates/flagger/confirm-rollout", &flagger_body(None))
        .await;
    assert_eq!((s, b["verdict"].clone()), (200, json!("go")), "{b}");
    assert_eq!(
        hook(fb, "confirm-promotion", &flagger_body(None)).await.0,
        200
    );
    let (s, b) = hook(fb, "rollback", &flagger_body(None)).await;
    assert_eq!((s, b["verdict"].clone()), (403, json!("carry on")), "{b}");
    let (s, b) = flagger.get("/api/v1/gates/argo/checkout").await;
    assert_eq!((s, b["verdict"].clone()), (200, json!("pass")), "{b}");
    // No incident open: the consultations are on the service's own
    // timeline, once per hook and verdict however often asked.
    hook(fb, "confirm-rollout", &flagger_body(None)).await;
    let (s, t) = fb.get("/api/v1/services/checkout/timeline").await;
    assert_eq!(s, 200, "{t}");
    let summaries: Vec<&str> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(summaries.len(), 4, "{summaries:?}");
    assert_eq!(
        summaries
            .iter()
            .filter(|s| s.starts_with("Flagger confirm-rollout"))
            .count(),
        1,
        "{summaries:?}"
    );
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("Argo Rollouts analysis of checkout: pass")),
        "{summaries:?}"
    );

    // A failed gate of v2: roll v2 back, hold its promotion; v3 is not held by it.
    let (s, _) = fb
        .post(
            "/api/v1/events/gate",
            &json!({"service": "checkout", "environment": "prod", "version": "v2",
                    "gate": "error-rate", "verdict": "fail", "observed": 0.07, "threshold": 0.01}),
        )
        .await;
    assert_eq!(s, 202);
    eventually(
        "the gate result stored",
        Duration::from_secs(20),
        || async {
            let (_, b) = fb.get("/api/v1/gates/argo/checkout?version=v2").await;
            (b["verdict"] == "fail").then_some(())
        },
    )
    .await;
    let (s, b) = hook(fb, "rollback", &flagger_body(Some("v2"))).await;
    assert_eq!((s, b["verdict"].clone()), (200, json!("roll back")), "{b}");
    assert!(
        b["reasons"][0]
            .as_str()
            .unwrap()
            .contains("error-rate (v2)"),
        "{b}"
    );
    let (s, b) = hook(fb, "confirm-promotion", &flagger_body(Some("v2"))).await;
    assert_eq!((s, b["verdict"].clone()), (403, json!("hold")), "{b}");
    assert_eq!(
        hook(fb, "confirm-promotion", &flagger_body(Some("v3")))
            .await
            .0,
        200
    );
    let (_, b) = fb.get("/api/v1/gates/argo/checkout?version=v3").await;
    assert_eq!(b["verdict"], "pass", "{b}");

    // An open incident on the service: roll back whatever the revision, and
    // the consultation is on the incident's timeline once, however often asked.
    assert_eq!(
        fb.post(
            "/api/v1/alerts/alertmanager",
            &alert_now("g1", "HighErrorRate", "checkout", 0)
        )
        .await
        .0,
        202
    );
    let incident = eventually("the incident", Duration::from_secs(20), || async {
        let (_, l) = fb.get("/api/v1/incidents?service=checkout").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    for _ in 0..3 {
        let (s, b) = hook(fb, "rollback", &flagger_body(Some("v3"))).await;
        assert_eq!(s, 200, "{b}");
        assert!(
            b["reasons"][0]
                .as_str()
                .unwrap()
                .contains(&format!("#{incident}")),
            "{b}"
        );
    }
    let (_, b) = fb.get("/api/v1/gates/argo/checkout?version=v3").await;
    assert_eq!(b["verdict"], "fail", "{b}");
    assert_eq!(b["openIncidents"], json!([incident]));
    let (_, t) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    let consulted: Vec<&str> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "gate_consulted")
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        consulted
            .iter()
            .filter(|s| s.starts_with("Flagger rollback"))
            .count(),
        1,
        "{consulted:?}"
    );
    assert!(
        consulted
            .iter()
            .any(|s| s.starts_with("Argo Rollouts analysis of checkout v3: fail")),
        "{consulted:?}"
    );

    // The automation pause holds promotions everywhere; Argo gets neither
    // pass nor fail (Inconclusive: it pauses the rollout).
    fb.post("/api/v1/automation/pause", &json!({})).await;
    let mut search = flagger_body(None);
    search["metadata"]["service"] = json!("search");
    let (s, b) = hook(fb, "confirm-rollout", &search).await;
    assert_eq!((s, b["verdict"].clone()), (403, json!("hold")), "{b}");
    assert!(b["reasons"].to_string().contains("paused"), "{b}");
    let (_, b) = fb.get("/api/v1/gates/argo/search").await;
    assert_eq!(b["verdict"], "hold", "{b}");

    // Bad requests are named; an unknown hook is not a verdict.
    let (s, b) = hook(fb, "confirm-rollout", &json!({"namespace": "shop"})).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(hook(fb, "pre-rollout", &flagger_body(None)).await.0, 404);
    assert_eq!(
        fb.get("/api/v1/gates/argo/checkout?versoin=v2").await.0,
        400
    );
    let (s, _) = fb
        .token("alertmanager", &["ingest"])
        .await
        .get("/api/v1/gates/argo/checkout")
        .await;
    assert_eq!(s, 403, "an ingest token consults no gate");
}

firebreak_tests::both_modes!(rollout_gates_follow_incidents_gates_and_the_pause);
