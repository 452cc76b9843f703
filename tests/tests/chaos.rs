//! Failures production brings, driven against the real binary under load:
//! the database cut away (a TCP proxy between Firebreak and PostgreSQL stops
//! forwarding and closes its connections) while Alertmanager keeps sending.
//! Nothing answered 202 is lost, nothing is dead-lettered, and the engine
//! catches up within seconds of the database coming back.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use firebreak_tests::{eventually, webhook, Amqp, Firebreak, Options, Pg, Proxy, TestAlert};

async fn dead_letters(amqp: &Amqp) -> u32 {
    let conn = amqp.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            &format!("{}.dead", amqp.namespace),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the dead-letter queue exists (its name is <namespace>.dead)");
    let n = q.message_count();
    let _ = conn.close(0, "").await;
    n
}

async fn send(fb: &Firebreak, from: usize, n: usize) {
    for w in from..from + n {
        let fps: Vec<String> = (0..10).map(|a| format!("cut-{w}-{a}")).collect();
        let alerts: Vec<TestAlert> = fps
            .iter()
            .map(|fp| TestAlert::firing(fp.clone(), "checkout"))
            .collect();
        let (s, b) = fb
            .post_retrying("/api/v1/alerts/alertmanager", &webhook(&alerts), 50)
            .await;
        assert_eq!(s, 202, "{b}");
    }
}

const PROCESSED: &str = "firebreak_events_processed_total{kind=\"alert\"}";

/// Waits until `n` alerts were processed.
async fn processed(fb: &Firebreak, n: f64, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        (fb.metric(PROCESSED).await >= n).then_some(())
    })
    .await;
}

/// Every one of `n` alerts is in the incident once, counted once, and
/// nothing was dead-lettered.
async fn stored_once(fb: &Firebreak, amqp: &Amqp, n: u64) {
    let (_, i) = fb.get("/api/v1/incidents?service=checkout").await;
    let id = i["incidents"][0]["id"].as_i64().unwrap();
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(
        detail["counts"]["alerts"], n,
        "each alert once: {}",
        detail["counts"]
    );
    assert_eq!(fb.metric(PROCESSED).await, n as f64, "counted once each");
    assert_eq!(dead_letters(amqp).await, 0, "nothing dead-lettered");
}

/// The database away for 12 s — long enough that requeueing each failed
/// batch would pass the 20-delivery limit many times over — with webhooks
/// arriving throughout: every alert is stored, none is dead-lettered.
#[tokio::test]
async fn a_database_outage_loses_nothing_and_dead_letters_nothing() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let target = pg
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let proxy = Proxy::start(target.parse().unwrap()).await;
    let proxied = pg.url.replace(&target, &proxy.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::backed(&pg, &amqp).with("FIREBREAK_DATABASE_URL", &proxied),
    )
    .await;
    send(&fb, 0, 10).await;
    processed(&fb, 100.0, "the first 100 alerts stored").await;

    proxy.go_down();
    let down = Instant::now();
    send(&fb, 10, 20).await;
    let (s, ready) = fb.get("/readyz").await;
    assert_eq!(s, 503, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], false, "{ready}");
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(down.elapsed())).await;
    assert_eq!(
        dead_letters(&amqp).await,
        0,
        "nothing dead-lettered while the database was away"
    );
    proxy.come_back();
    let back = Instant::now();
    processed(&fb, 300.0, "every alert stored").await;
    println!(
        "engine caught up {:.1} s after the database came back",
        back.elapsed().as_secs_f64()
    );
    stored_once(&fb, &amqp, 300).await;
    assert!(
        fb.logs().contains("store is unavailable"),
        "the outage is logged"
    );
    assert!(fb.logs().contains("store is back"), "and its end");
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// RabbitMQ away for 15 s (connections dropped, new ones closed) while a
/// sender retries like Alertmanager: every alert answered 202 is stored
/// once, and the engine resumes soon after the broker is back (printed: a
/// timing never decides a test).
#[tokio::test]
async fn a_broker_outage_loses_nothing_and_the_engine_comes_back() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::backed(&pg, &amqp).with("FIREBREAK_AMQP_URL", &via_proxy),
    )
    .await;
    send(&fb, 0, 5).await;
    processed(&fb, 50.0, "the first 50 alerts").await;

    proxy.go_down();
    let (s, _) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &webhook(&[TestAlert::firing("during", "checkout")]),
        )
        .await;
    assert_eq!(
        s, 503,
        "no broker: ingest refuses rather than losing the alert"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.come_back();
    let back = Instant::now();
    // Alertmanager retries: the webhooks go in once the broker answers.
    send(&fb, 5, 5).await;
    processed(&fb, 100.0, "every alert after the outage").await;
    println!(
        "broker back -> 50 more alerts processed in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    stored_once(&fb, &amqp, 100).await;
    let warnings = fb
        .logs()
        .matches("cannot subscribe: the bus is unavailable")
        .count();
    assert!(
        warnings <= 4,
        "the outage is logged once per consumer, not once per try ({warnings} times)"
    );
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}
