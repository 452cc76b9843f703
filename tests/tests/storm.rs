//! Alert storms, end to end against the real binary in both modes: the alert
//! a playbook acts on overtakes a bulk backlog on the urgent lane, the bulk
//! backlog is bounded with 503 + Retry-After (never for urgent events, never
//! losing what was accepted), small webhooks are packed into few queue
//! messages, and what one body can cost in memory and disk is bounded.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use firebreak_tests::{
    alert_now, client, deploy_now, eventually, openfeature_bool, repo_playbook, Mode,
    TestAppBuilder,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const FLAG: &str = "checkout.new-payment-flow";
const PROCESSED: &str = "firebreak_events_processed_total{kind=\"alert\"}";

/// A webhook of `n` firing alerts of `service` named `alertname`, fingerprints
/// `{tag}{i}`: none of them is one a playbook acts on unless the name and
/// service say so.
fn storm_webhook(tag: &str, service: &str, alertname: &str, n: usize) -> Value {
    let mut body = alert_now("x", alertname, service, 0);
    let one = body["alerts"][0].clone();
    body["alerts"] = (0..n)
        .map(|i| {
            let mut a = one.clone();
            a["fingerprint"] = json!(format!("{tag}{i:06}"));
            a["labels"]["instance"] = json!(format!("{service}-{i}"));
            a
        })
        .collect();
    body
}

/// POSTs every body, `parallel` at a time; returns each answer's status.
async fn send_all(base: &str, path: &str, bodies: Vec<Value>, parallel: usize) -> Vec<u16> {
    let url = format!("{base}{path}");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for body in bodies {
        let (c, url, sem) = (client(), url.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            c.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Alerts this process's engine has processed (0 before the first).
async fn processed(fb: &firebreak_tests::Firebreak) -> f64 {
    fb.metric_opt(PROCESSED).await.unwrap_or(0.0)
}

async fn flag_value(fb: &firebreak_tests::Firebreak) -> Option<bool> {
    let (status, body) = fb
        .post(
            &format!("/ofrep/v1/evaluate/flags/{FLAG}"),
            &json!({"context": {}}),
        )
        .await;
    (status == 200).then(|| body["value"].as_bool()).flatten()
}

/// The issue's storm, scaled to a test: 100,000 alerts no playbook acts on
/// wait in the queue (the engine is not running yet), then the alert that
/// `playbooks/checkout-kill-switch.yaml` acts on. When the engine starts, the
/// flag is off while most of the backlog is still waiting; afterwards every
/// alert is processed, and the checkout alerts of the storm joined the
/// incident the urgent alert opened.
async fn urgent_alert_overtakes_a_bulk_backlog(app: TestAppBuilder) {
    let mut app = app
        .roles("ingest,api")
        .env("FIREBREAK_INGEST__MAX_BACKLOG_AGE", "10m")
        .playbook(
            "checkout-kill-switch.yaml",
            &repo_playbook("checkout-kill-switch.yaml"),
        )
        .start()
        .await;
    let (status, body) = app
        .post(
            "/api/v1/flags",
            &json!({"key": FLAG, "enabled": true, "description": "new payment flow"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        app.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 5))
            .await
            .0,
        202
    );

    // 1,000 webhooks of 100 alerts over 20 services; checkout's are
    // HighLatency, which no playbook names, so they travel on the bulk lane.
    let mut bodies = Vec::new();
    for w in 0..1000 {
        let service = if w % 20 == 0 {
            "checkout".to_string()
        } else {
            format!("svc-{:02}", w % 20)
        };
        bodies.push(storm_webhook(
            &format!("b{w:04}x"),
            &service,
            "HighLatency",
            100,
        ));
    }
    let bulk = 1000 * 100;
    let checkout_bulk = 50 * 100;
    let answers = send_all(&app.base, "/api/v1/alerts/alertmanager", bodies, 8).await;
    assert!(
        answers.iter().all(|s| *s == 202),
        "bulk answers: {answers:?}"
    );
    let urgent = alert_now("c0ffee01", "HighErrorRate", "checkout", 0);
    assert_eq!(
        app.post("/api/v1/alerts/alertmanager", &urgent).await.0,
        202
    );
    assert_eq!(flag_value(&app).await, Some(true), "no engine runs yet");

    app.restart_with("FIREBREAK_ROLES", "ingest,api,engine")
        .await;
    let processed_when_off = eventually("the kill switch off", WAIT, || async {
        (flag_value(&app).await == Some(false)).then_some(())?;
        Some(processed(&app).await)
    })
    .await;
    eprintln!("the flag was off after {processed_when_off} of {bulk} bulk alerts");
    assert!(
        processed_when_off < (bulk / 5) as f64,
        "the flag went off only after {processed_when_off} of {bulk} bulk alerts were processed"
    );

    eventually(
        "every alert processed",
        Duration::from_secs(120),
        || async { (processed(&app).await >= (bulk + 1) as f64).then_some(()) },
    )
    .await;
    assert_eq!(processed(&app).await, (bulk + 1) as f64);

    let action = app.action_in("checkout-kill-switch", "succeeded").await;
    let incident = action["incident_id"].as_i64().unwrap();
    let (_, list) = app
        .get("/api/v1/incidents?service=checkout&limit=100")
        .await;
    let checkout: Vec<&Value> = list["incidents"].as_array().unwrap().iter().collect();
    assert_eq!(
        checkout.len(),
        1,
        "the storm's checkout alerts joined the urgent alert's incident: {checkout:#?}"
    );
    assert_eq!(checkout[0]["id"].as_i64(), Some(incident));
    let (_, detail) = app.get(&format!("/api/v1/incidents/{incident}")).await;
    assert_eq!(
        detail["counts"]["alerts"].as_u64(),
        Some(checkout_bulk + 1),
        "{detail}"
    );
    assert_eq!(app.actions().await.len(), 1, "one action for the storm");
    let sdk = app.token("checkout-sdk", &["flags:read"]).await;
    let seen = openfeature_bool(&app.base, FLAG, &sdk.token).await;
    assert_eq!(seen["value"], false, "{seen}");
}

/// Above `ingest.max_backlog` waiting messages, an alert no playbook acts on is
/// answered 503 with `Retry-After` and is not queued; the alert a playbook acts
/// on and deploy events are still taken. Once an engine drains the backlog,
/// everything answered 202 is processed, and ingest takes bulk alerts again.
async fn backlog_is_bounded_for_bulk_events_only(app: TestAppBuilder) {
    let mut app = app
        .roles("ingest,api")
        .env("FIREBREAK_INGEST__MAX_BACKLOG", "5")
        .playbook(
            "checkout-kill-switch.yaml",
            &repo_playbook("checkout-kill-switch.yaml"),
        )
        .start()
        .await;
    // Larger than the packer takes, so each webhook is one queue message.
    let big = |tag: &str| storm_webhook(tag, "search", "HighLatency", 400);
    let mut accepted = 0u64;
    for w in 0..8 {
        let (status, body) = app
            .post("/api/v1/alerts/alertmanager", &big(&format!("q{w}x")))
            .await;
        assert_eq!(status, 202, "{body}");
        accepted += 400;
    }
    let depth = eventually("the bulk lane's depth on /metrics", WAIT, || async {
        let d = app.metric("firebreak_queue_depth{lane=\"bulk\"}").await;
        (d >= 8.0).then_some(d)
    })
    .await;
    assert_eq!(depth, 8.0);
    if matches!(app.mode, Mode::Embedded) {
        // RabbitMQ tells the age of its oldest message only as it delivers one.
        assert!(app
            .metric_opt("firebreak_queue_oldest_seconds{lane=\"bulk\"}")
            .await
            .is_some());
    }

    let r = client()
        .post(format!("{}/api/v1/alerts/alertmanager", app.base))
        .json(&big("over"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "Retry-After: {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "backlogged", "{body}");
    assert_eq!(body["retry_after"].as_u64(), Some(retry));
    let message = body["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("limit 5") && message.contains("send it again"),
        "{body}"
    );
    assert_eq!(
        app.metric("firebreak_events_throttled_total{kind=\"alert\"}")
            .await,
        1.0
    );

    // Urgent events are never refused.
    assert_eq!(
        app.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 5))
            .await
            .0,
        202
    );
    let urgent = alert_now("c0ffee02", "HighErrorRate", "checkout", 0);
    assert_eq!(
        app.post("/api/v1/alerts/alertmanager", &urgent).await.0,
        202
    );
    accepted += 1;

    app.restart_with("FIREBREAK_ROLES", "ingest,api,engine")
        .await;
    eventually("the accepted alerts processed", WAIT, || async {
        (processed(&app).await >= accepted as f64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        processed(&app).await,
        accepted as f64,
        "the refused webhook was not queued"
    );
    eventually("bulk alerts taken again", WAIT, || async {
        let (status, _) = app.post("/api/v1/alerts/alertmanager", &big("after")).await;
        (status == 202).then_some(())
    })
    .await;
}

/// Many one-alert webhooks at once become fewer queue messages (a group
/// commit: while one publish is in flight the next ones gather), and every
/// alert is still processed exactly once.
async fn small_webhooks_are_packed(app: TestAppBuilder) {
    let mut app = app.roles("ingest,api").start().await;
    let n = 400;
    let bodies = (0..n)
        .map(|i| {
            storm_webhook(
                &format!("p{i:04}x"),
                &format!("svc-{}", i % 7),
                "HighLatency",
                1,
            )
        })
        .collect();
    let answers = send_all(&app.base, "/api/v1/alerts/alertmanager", bodies, 64).await;
    assert!(answers.iter().all(|s| *s == 202), "{answers:?}");
    let depth = eventually("the bulk lane's depth", WAIT, || async {
        let d = app.metric("firebreak_queue_depth{lane=\"bulk\"}").await;
        (d > 0.0).then_some(d)
    })
    .await;
    assert!(
        depth < n as f64,
        "{n} webhooks became {depth} queue messages"
    );
    app.restart_with("FIREBREAK_ROLES", "ingest,api,engine")
        .await;
    eventually("every packed alert processed", WAIT, || async {
        (processed(&app).await >= n as f64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(processed(&app).await, n as f64);
    let (_, list) = app.get("/api/v1/incidents?limit=100").await;
    assert_eq!(list["incidents"].as_array().unwrap().len(), 7);
}

firebreak_tests::both_modes!(
    urgent_alert_overtakes_a_bulk_backlog,
    backlog_is_bounded_for_bulk_events_only,
    small_webhooks_are_packed,
);

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The issue's amplification cases: a webhook's `receiver` is no longer
/// copied into every alert, stream labels are stored once per stream, and a
/// label too large for any sensible stream is refused by name (400), never
/// answered "retry".
#[tokio::test]
async fn one_body_costs_bounded_memory_and_disk() {
    let app = firebreak_tests::TestApp::embedded().start().await;

    // 15,000 alerts and a 100 KB receiver: about 4 MB of JSON.
    let mut body = storm_webhook("amp", "search", "HighLatency", 15_000);
    body["receiver"] = json!("r".repeat(100_000));
    let (status, answer) = app.post("/api/v1/alerts/alertmanager", &body).await;
    assert_eq!(status, 202, "{answer}");
    eventually("the 15,000 alerts processed", WAIT, || async {
        (processed(&app).await >= 15_000.0).then_some(())
    })
    .await;
    let peak = app.peak_rss();
    eprintln!(
        "peak resident memory after the 15,000-alert webhook: {} MB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 300 * 1024 * 1024,
        "peak resident memory {} MB after a 1.6 MB webhook",
        peak / (1024 * 1024)
    );

    // A Loki push whose stream has a 100 KB label: refused, naming the label.
    let push = |labels: Value, values: Vec<Value>| json!({"streams": [{"stream": labels, "values": values}]});
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let line = |i: i64| {
        json!([
            (now + i).to_string(),
            format!("error: payment {i} declined")
        ])
    };
    let (status, answer) = app
        .post(
            "/loki/api/v1/push",
            &push(
                json!({"service": "checkout", "trace": "t".repeat(100_000)}),
                (0..10).map(line).collect(),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer.to_string();
    assert!(message.contains("streams[0].stream.trace"), "{answer}");
    assert_eq!(
        app.metric_opt("firebreak_events_processed_total{kind=\"log\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );

    // 10,000 lines of a stream with 60 labels of 3 KB each (180 KB of labels,
    // all within the limits): stored once for the stream, so the data
    // directory grows by little more than the lines themselves.
    let before = dir_size(&app.fb.data_dir);
    let labels: serde_json::Map<String, Value> =
        std::iter::once(("service".to_string(), json!("checkout")))
            .chain((0..60).map(|i| (format!("l{i:02}"), json!("v".repeat(3000)))))
            .collect();
    let (status, answer) = app
        .post(
            "/loki/api/v1/push",
            &push(Value::Object(labels), (0..10_000).map(line).collect()),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    eventually("the 10,000 lines stored", WAIT, || async {
        (app.metric_opt("firebreak_events_processed_total{kind=\"log\"}")
            .await
            .unwrap_or(0.0)
            >= 10_000.0)
            .then_some(())
    })
    .await;
    let grown = dir_size(&app.fb.data_dir).saturating_sub(before);
    eprintln!(
        "the data directory grew by {} KB for 10,000 lines",
        grown / 1024
    );
    assert!(
        grown < 64 * 1024 * 1024,
        "the data directory grew by {} MB for 10,000 short lines",
        grown / (1024 * 1024)
    );
}
