//! End to end: the firebreak binary, started as a user would, against real
//! PostgreSQL and RabbitMQ (or its embedded SQLite store and queue).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_tests::{
    anonymous, client, eventually, fixture, webhook, Amqp, Firebreak, Mode, Options, Pg, Proxy,
    TestAlert, TestAppBuilder,
};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn incidents(fb: &Firebreak) -> Vec<Value> {
    let (status, body) = fb.get("/api/v1/incidents").await;
    assert_eq!(status, 200, "{body}");
    body["incidents"].as_array().cloned().unwrap_or_default()
}

async fn timeline(fb: &Firebreak, id: i64) -> Vec<Value> {
    let (status, body) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().cloned().unwrap_or_default()
}

fn kinds(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The story of the README: a deploy, a failed canary gate, the Alertmanager
/// webhook, then the resolved webhook.
async fn webhook_to_timeline(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    if app.mode == Mode::Backed {
        let (_, ready) = fb.get("/readyz").await;
        assert_eq!(ready["checks"]["store"]["backend"], "postgres");
        assert_eq!(ready["checks"]["bus"]["backend"], "rabbitmq");
    }
    let (status, body) = fb
        .post(
            "/api/v1/events/deploy",
            &json!({"service": "checkout", "environment": "prod", "version": "v2", "previous_version": "v1",
                    "started_at": "2026-11-23T04:30:00Z", "strategy": "canary", "actor": "ci"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = fb
        .post(
            "/api/v1/events/gate",
            &json!({"service": "checkout", "environment": "prod", "version": "v2", "gate": "error-rate",
                    "verdict": "fail", "observed": 0.07, "threshold": 0.01, "evaluated_at": "2026-11-23T04:35:00Z"}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, body) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &fixture("alertmanager_webhook_sample.json"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"], 1);

    let incident = eventually("an incident for checkout", WAIT, || async {
        incidents(fb).await.into_iter().next()
    })
    .await;
    assert_eq!(incident["service"], "checkout");
    assert_eq!(incident["environment"], "prod");
    assert_eq!(incident["status"], "open");
    let id = incident["id"].as_i64().unwrap();

    // Deploys and gates travel on the urgent lane, this alert on the bulk
    // one: either may be processed first, and the timeline ends up the same.
    let entries = eventually("the deploy and the gate on the timeline", WAIT, || async {
        let entries = timeline(fb, id).await;
        (kinds(&entries).len() == 4).then_some(entries)
    })
    .await;
    assert_eq!(
        kinds(&entries),
        vec!["deploy", "gate", "alert_firing", "incident_opened"]
    );
    assert_eq!(
        entries[2]["at"], "2026-11-23T04:38:36.898740Z",
        "the alert's own time, not arrival"
    );
    assert_eq!(entries[2]["source"], "alertmanager");

    let (status, detail) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["suspect_changes"][0]["version"], "v2");
    assert_eq!(detail["suspect_changes"][0]["seconds_before_incident"], 516);
    assert_eq!(detail["gates"][0]["verdict"], "fail");
    assert_eq!(detail["alerts"][0]["fingerprint"], "69c2e62f0b0aec37");

    let (status, _) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &fixture("alertmanager_webhook_resolved_sample.json"),
        )
        .await;
    assert_eq!(status, 202);
    eventually("the incident resolves", WAIT, || async {
        let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
        (d["status"] == "resolved").then_some(())
    })
    .await;
    let entries = timeline(fb, id).await;
    assert_eq!(
        kinds(&entries)[4..],
        ["alert_resolved", "incident_resolved"]
    );
    assert_eq!(
        fb.metric("firebreak_events_processed_total{kind=\"alert\"}")
            .await,
        2.0
    );
}

async fn same_webhook_twice_gives_one_set_of_entries(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let body = webhook(&[
        TestAlert::firing("1111000000000001", "checkout"),
        TestAlert::firing("1111000000000002", "checkout"),
    ]);
    for _ in 0..2 {
        assert_eq!(fb.post("/api/v1/alerts/alertmanager", &body).await.0, 202);
    }
    eventually("both deliveries processed", WAIT, || async {
        let done = fb
            .metric("firebreak_events_processed_total{kind=\"alert\"}")
            .await
            + fb.metric("firebreak_events_duplicate_total{kind=\"alert\"}")
                .await;
        (done >= 4.0).then_some(())
    })
    .await;
    let list = incidents(fb).await;
    assert_eq!(list.len(), 1);
    let entries = timeline(fb, list[0]["id"].as_i64().unwrap()).await;
    assert_eq!(
        kinds(&entries),
        vec!["alert_firing", "alert_firing", "incident_opened"]
    );
    assert_eq!(
        fb.metric("firebreak_events_processed_total{kind=\"alert\"}")
            .await,
        2.0
    );
    assert_eq!(
        fb.metric("firebreak_events_duplicate_total{kind=\"alert\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::embedded()
        .with("FIREBREAK_MAX_BODY_BYTES", "4096")
        .with("FIREBREAK_TOKEN_DEPLOY", "deploy-secret-deploy-secret-0001");
    let fb = Firebreak::start(dir.path(), options).await;
    let url = |p: &str| format!("{}{p}", fb.base);
    let c = client();
    let send = |path: &'static str, ctype: &'static str, body: String| {
        let c = c.clone();
        let u = url(path);
        async move {
            let r = c
                .post(u)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, body) = send(
        "/api/v1/alerts/alertmanager",
        "application/json",
        "{\"version\": \"4\", ".into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_body");
    assert!(
        body["message"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    let mut missing = fixture("alertmanager_webhook_sample.json");
    missing["alerts"][0]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    let (status, body) = send(
        "/api/v1/alerts/alertmanager",
        "application/json",
        missing.to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "alerts[0]");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("missing field `labels`"),
        "{body}"
    );

    let (status, body) = send(
        "/api/v1/alerts/alertmanager",
        "text/plain",
        fixture("alertmanager_webhook_sample.json").to_string(),
    )
    .await;
    assert_eq!(status, 415, "{body}");

    let mut big = fixture("alertmanager_webhook_sample.json");
    big["commonAnnotations"]["padding"] = json!("x".repeat(8192));
    let (status, body) = send(
        "/api/v1/alerts/alertmanager",
        "application/json",
        big.to_string(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    // One bad element refuses the whole array: nothing is half-applied.
    let deploys = json!([{"service": "a", "version": "1"}, {"service": "b"}]).to_string();
    let r = anonymous()
        .post(url("/api/v1/events/deploy"))
        .bearer_auth("deploy-secret-deploy-secret-0001")
        .header("content-type", "application/json")
        .body(deploys)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "[1]");
    assert!(
        body["message"].as_str().unwrap().contains("version"),
        "{body}"
    );

    let r = anonymous()
        .post(url("/api/v1/events/deploy"))
        .json(&json!({"service": "a", "version": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a token is required");
    let r = anonymous()
        .post(url("/api/v1/events/deploy"))
        .bearer_auth("wrong")
        .json(&json!({"service": "a", "version": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "a forged token is refused like none"
    );

    let (status, body) = fb.get("/api/v1/incidents/12345").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = fb.get("/api/v1/incidents?status=maybe").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("status")));
    let (status, _) = fb.get("/api/v1/incidents?limitt=3").await;
    assert_eq!(
        status, 400,
        "unknown query parameters are named, not ignored"
    );

    // Nothing was queued or stored.
    assert_eq!(
        fb.metric("firebreak_events_received_total{kind=\"alert\"}")
            .await,
        0.0
    );
    assert_eq!(
        fb.metric("firebreak_events_received_total{kind=\"deploy\"}")
            .await,
        0.0
    );
    assert!(
        fb.metric("firebreak_events_rejected_total{kind=\"alert\"}")
            .await
            >= 4.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(incidents(&fb).await.is_empty());

    // And a good request with the token goes through.
    let r = anonymous()
        .post(url("/api/v1/events/deploy"))
        .bearer_auth("deploy-secret-deploy-secret-0001")
        .json(&json!({"service": "a", "version": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

/// Senders hammer firebreak with distinct alerts for one service; firebreak is
/// killed with SIGKILL mid-stream and started again. Every alert that was
/// answered 202 must be processed, and each exactly once.
async fn kill9_mid_stream_loses_nothing(app: TestAppBuilder) {
    let mut app = app.start().await;
    let fb = &mut app.fb;
    let accepted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sent: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..6 {
        let (accepted, sent, base) = (accepted.clone(), sent.clone(), fb.base.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            for n in 0..60 {
                let fps: Vec<String> = (0..5)
                    .map(|i| format!("{sender:04x}{n:06x}{i:06x}"))
                    .collect();
                let alerts: Vec<TestAlert> = fps
                    .iter()
                    .map(|f| TestAlert::firing(f.clone(), "checkout"))
                    .collect();
                sent.lock().unwrap().extend(fps.iter().cloned());
                let r = c
                    .post(format!("{base}/api/v1/alerts/alertmanager"))
                    .json(&webhook(&alerts))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => accepted.lock().unwrap().extend(fps),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    eventually("some webhooks accepted before the kill", WAIT, || async {
        (accepted.lock().unwrap().len() >= 400).then_some(())
    })
    .await;
    fb.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(accepted.len() < sent.len(), "the kill must land mid-stream");
    fb.restart().await;

    let id = eventually("an incident", WAIT, || async {
        incidents(fb).await.first().and_then(|i| i["id"].as_i64())
    })
    .await;
    // Bodies whose 202 the kill cut off may still be processed after the
    // restart: read the alerts and the timeline together until they settle.
    let (detail, firing) = eventually(
        "every accepted alert processed after the restart, one timeline entry each",
        Duration::from_secs(60),
        || async {
            let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
            let stored: BTreeSet<String> = d["alerts"]
                .as_array()?
                .iter()
                .filter_map(|a| a["fingerprint"].as_str().map(String::from))
                .collect();
            let firing = kinds(&timeline(fb, id).await)
                .iter()
                .filter(|k| *k == "alert_firing")
                .count();
            (accepted.is_subset(&stored) && firing == stored.len()).then_some((stored, firing))
        },
    )
    .await;
    assert!(detail.is_subset(&sent), "nothing invented");
    assert_eq!(firing, detail.len(), "exactly one timeline entry per alert");
    assert_eq!(incidents(fb).await.len(), 1);
}

firebreak_tests::both_modes!(
    webhook_to_timeline,
    same_webhook_twice_gives_one_set_of_entries,
    kill9_mid_stream_loses_nothing,
);

/// RabbitMQ connections are cut (as on a broker restart) while alerts stream in.
/// Senders retry 503s as Alertmanager does; every alert ends up processed once.
#[tokio::test]
async fn rabbitmq_connection_cut_mid_stream_recovers_without_loss() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::backed(&pg, &amqp).with("FIREBREAK_AMQP_URL", &via_proxy),
    )
    .await;

    let total = 150;
    let sender = {
        let base = fb.base.clone();
        tokio::spawn(async move {
            let c = client();
            let mut retries = 0;
            for n in 0..total {
                let alert = TestAlert::firing(format!("cafe{n:012x}"), "checkout");
                loop {
                    let r = c
                        .post(format!("{base}/api/v1/alerts/alertmanager"))
                        .json(&webhook(&[alert.clone_alert()]))
                        .send()
                        .await;
                    if matches!(&r, Ok(r) if r.status().as_u16() == 202) {
                        break;
                    }
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            retries
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(proxy.cut() > 0, "firebreak had connections to cut");
    }
    let retries = sender.await.unwrap();
    let id = eventually("an incident", WAIT, || async {
        incidents(&fb).await.first().and_then(|i| i["id"].as_i64())
    })
    .await;
    eventually(
        "all alerts processed after the cuts",
        Duration::from_secs(60),
        || async {
            let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
            (d["counts"]["alerts"].as_u64()? == total).then_some(())
        },
    )
    .await;
    let entries = timeline(&fb, id).await;
    assert_eq!(
        kinds(&entries)
            .iter()
            .filter(|k| *k == "alert_firing")
            .count() as u64,
        total
    );
    eprintln!("sender retried {retries} times across the cuts");
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// A message published straight to the exchange that cannot be parsed goes to
/// the dead-letter queue with its reason; the consumer goes on.
#[tokio::test]
async fn malformed_message_on_the_exchange_is_dead_lettered() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::backed(&pg, &amqp)).await;
    let conn = amqp.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let t = amqp.topology();
    let publish = |key: &'static str, body: Vec<u8>| {
        let ch = ch.clone();
        let exchange = t.exchange.clone();
        async move {
            ch.basic_publish(
                &exchange,
                key,
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    publish("alert.checkout", b"{this is not json".to_vec()).await;
    publish("bogus.checkout", b"{}".to_vec()).await;
    // An external system publishing a deploy straight to the exchange.
    publish(
        "deploy.checkout",
        json!({"service": "checkout", "version": "v3", "started_at": "2026-11-23T04:20:00Z"})
            .to_string()
            .into_bytes(),
    )
    .await;
    publish(
        "alert.checkout",
        fixture("alertmanager_webhook_sample.json")
            .to_string()
            .into_bytes(),
    )
    .await;

    let id = eventually("the good alert processed", WAIT, || async {
        incidents(&fb).await.first().and_then(|i| i["id"].as_i64())
    })
    .await;
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(
        detail["suspect_changes"][0]["version"], "v3",
        "a deploy published to the exchange counts"
    );

    let mut consumer = ch
        .basic_consume(
            &t.dead_queue,
            "test-dead",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a dead letter")
            .unwrap()
            .unwrap();
        let headers = d.properties.headers().clone().unwrap_or_default();
        let reason = match headers.inner().get("x-firebreak-reason") {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("no reason header: {other:?}"),
        };
        reasons.push((d.routing_key.to_string(), reason));
    }
    reasons.sort();
    assert_eq!(reasons[0].0, "alert.checkout");
    assert!(reasons[0].1.contains("malformed JSON"), "{reasons:?}");
    assert_eq!(reasons[1].0, "bogus.checkout");
    assert!(reasons[1].1.contains("unknown routing key"), "{reasons:?}");
    assert_eq!(
        fb.metric("firebreak_events_dead_lettered_total{kind=\"alert\"}")
            .await,
        1.0
    );
    assert_eq!(
        fb.metric("firebreak_events_dead_lettered_total{kind=\"unknown\"}")
            .await,
        1.0
    );
    let _ = conn.close(200, "done").await;
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// The production shape: an ingest process, two engine processes competing on
/// one queue, an API process. An Alertmanager HA pair sends every notification
/// twice; each alert is still counted once.
#[tokio::test]
async fn split_roles_with_two_engines_count_each_alert_once() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let base = Options::backed(&pg, &amqp);
    let ingest = Firebreak::start(&dir.path().join("ingest"), base.clone().roles("ingest")).await;
    let engine_a = Firebreak::start(&dir.path().join("a"), base.clone().roles("engine")).await;
    let engine_b = Firebreak::start(
        &dir.path().join("b"),
        base.clone()
            .roles("engine")
            .with("FIREBREAK_AMQP_PREFETCH", "4"),
    )
    .await;
    let api = Firebreak::start(&dir.path().join("api"), base.clone().roles("api")).await;
    assert_eq!(
        ingest.get("/api/v1/incidents").await.0,
        404,
        "the ingest role serves no read API"
    );

    let n = 40;
    let mut sends = Vec::new();
    for i in 0..n {
        let body = webhook(&[
            TestAlert::firing(format!("beef{i:012x}"), "payments"),
            TestAlert::firing(format!("feed{i:012x}"), "payments"),
        ]);
        for _ in 0..2 {
            let (c, url, body) = (
                client(),
                format!("{}/api/v1/alerts/alertmanager", ingest.base),
                body.clone(),
            );
            sends.push(tokio::spawn(async move {
                c.post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
    }
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
    let id = eventually("an incident on the API process", WAIT, || async {
        incidents(&api).await.first().and_then(|i| i["id"].as_i64())
    })
    .await;
    eventually("all alerts processed", WAIT, || async {
        let (_, d) = api.get(&format!("/api/v1/incidents/{id}")).await;
        (d["counts"]["alerts"].as_u64()? == 2 * n).then_some(())
    })
    .await;
    let processed = engine_a
        .metric("firebreak_events_processed_total{kind=\"alert\"}")
        .await
        + engine_b
            .metric("firebreak_events_processed_total{kind=\"alert\"}")
            .await;
    assert_eq!(
        processed,
        (2 * n) as f64,
        "each alert processed once across both engines"
    );
    assert_eq!(incidents(&api).await.len(), 1);
    let entries = timeline(&api, id).await;
    assert_eq!(
        kinds(&entries)
            .iter()
            .filter(|k| *k == "alert_firing")
            .count() as u64,
        2 * n
    );
    drop((ingest, engine_a, engine_b, api));
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// A real Alertmanager (Debian's prometheus-alertmanager, 0.25) delivers to
/// Firebreak with a token that may only send alerts, as the README tells
/// users to set it up.
#[tokio::test]
async fn a_real_alertmanager_delivers_with_an_ingest_only_token() {
    let app = firebreak_tests::TestApp::embedded().start().await;
    let fb = &app.fb;
    let am_token = fb.token("alertmanager", &["ingest"]).await;
    let (status, _) = am_token.get("/api/v1/incidents").await;
    assert_eq!(status, 403, "an ingest token reads nothing");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: firebreak\n  group_by: [alertname, service]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: firebreak\n    webhook_configs:\n      - url: {}/api/v1/alerts/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {}\n",
            fb.base, am_token.token
        ),
    )
    .unwrap();
    let port = firebreak_tests::free_port();
    let bin = ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .expect("Alertmanager is not installed: apt-get install prometheus-alertmanager (bash tests/run does)");
    let mut am = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let am_url = format!("http://127.0.0.1:{port}");
    eventually("Alertmanager to start", WAIT, || async {
        anonymous()
            .get(format!("{am_url}/-/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let r = anonymous()
        .post(format!("{am_url}/api/v2/alerts"))
        .json(&json!([{
            "labels": {"alertname": "HighErrorRate", "service": "checkout", "env": "prod", "severity": "critical"},
            "annotations": {"summary": "5xx rate > 5%"},
            "generatorURL": "http://prometheus.local/graph",
        }]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let incident = eventually("the incident from Alertmanager", WAIT, || async {
        incidents(fb).await.into_iter().next()
    })
    .await;
    let _ = am.kill();
    let _ = am.wait();
    assert_eq!(incident["service"], "checkout");
    let entries = timeline(fb, incident["id"].as_i64().unwrap()).await;
    assert_eq!(entries[0]["source"], "alertmanager");
    let (_, tokens) = fb.get("/api/v1/tokens").await;
    let t = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alertmanager")
        .unwrap()
        .clone();
    eventually("the token's last use recorded", WAIT, || async {
        let (_, tokens) = fb.get("/api/v1/tokens").await;
        tokens["tokens"]
            .as_array()?
            .iter()
            .find(|t| t["name"] == "alertmanager" && t["last_used_at"].is_string())
            .map(|_| ())
    })
    .await;
    assert_eq!(t["scopes"], json!(["ingest"]));
}
