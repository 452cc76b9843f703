//! Dead letters, seen and replayed, on both buses: a body the engine cannot
//! decode (sent twice: one row, count 2) and a good alert the bus gave up on
//! (its delivery limit) are listed with their reasons over the API, the
//! command line and a gauge; replaying the good one puts it on its lane and
//! it is processed; replaying everything sends the bad one round again.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_bus::{Bus, EmbeddedBus, Lane, OutMessage};
use firebreak_tests::{alert_now, eventually, Amqp, Firebreak, Options, Pg};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const BAD: &[u8] = b"{oops, not json";

fn given_up() -> Vec<u8> {
    alert_now("dl-0001", "HighErrorRate", "orders", 0)
        .to_string()
        .into_bytes()
}

async fn list(fb: &Firebreak) -> Value {
    let (s, body) = fb.get("/api/v1/dead-letters").await;
    assert_eq!(s, 200, "{body}");
    body
}

fn group<'a>(body: &'a Value, reason: &str) -> Option<&'a Value> {
    body["dead_letters"]
        .as_array()?
        .iter()
        .find(|g| g["reason"].as_str().is_some_and(|r| r.contains(reason)))
}

/// What both buses must do once the two kinds of dead letter are there.
async fn seen_and_replayed(fb: &Firebreak, backend: &str) {
    let body = eventually("both dead letters listed", WAIT, || async {
        let body = list(fb).await;
        (body["messages"] == 3).then_some(body)
    })
    .await;
    assert_eq!(body["backend"], backend);
    assert_eq!(body["truncated"], false);
    let bad = group(&body, "malformed JSON").expect("the undecodable body");
    assert_eq!(bad["count"], 2, "two copies, one row: {body}");
    assert_eq!(bad["routing_key"], "alert.orders");
    assert_eq!(bad["lane"], "bulk");
    assert!(bad["first_seen"].is_string(), "{bad}");
    let good = group(&body, "delivery limit").expect("the message the bus gave up on");
    assert_eq!(good["count"], 1);
    assert_eq!(good["lane"], "urgent", "{good}");
    assert!(good["preview"].as_str().unwrap().contains("dl-0001"));
    eventually("the gauge", WAIT, || async {
        (fb.metric_opt("firebreak_dead_letters").await == Some(3.0)).then_some(())
    })
    .await;

    // Bad requests are refused and change nothing.
    for (ask, want) in [
        (json!({"ids": ["0000000000000000"]}), 404),
        (json!({}), 400),
        (json!({"ids": [bad["id"]], "all": true}), 400),
        (json!({"id": bad["id"]}), 400),
    ] {
        let (s, answer) = fb.post("/api/v1/dead-letters/replay", &ask).await;
        assert_eq!(s, want, "{ask} -> {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    assert_eq!(list(fb).await["messages"], 3);

    // The command line reads the same.
    let (ok, out, err) = fb.cli(&["dead-letters", "list", "--json"]).await;
    assert!(ok, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");

    // The good one goes back on its lane and is processed.
    let (s, answer) = fb
        .post("/api/v1/dead-letters/replay", &json!({"ids": [good["id"]]}))
        .await;
    assert_eq!((s, &answer["replayed"]), (200, &json!(1)), "{answer}");
    eventually("the replayed alert processed", WAIT, || async {
        let (_, i) = fb.get("/api/v1/incidents?service=orders").await;
        let id = i["incidents"].as_array()?.first()?["id"].as_i64()?;
        let (_, d) = fb.get(&format!("/api/v1/incidents/{id}")).await;
        (d["counts"]["alerts"] == 1).then_some(())
    })
    .await;
    let body = list(fb).await;
    assert_eq!(body["messages"], 2, "{body}");
    assert!(group(&body, "delivery limit").is_none());

    // Everything: the bad body goes round again and comes back dead.
    let before = fb
        .metric("firebreak_events_dead_lettered_total{kind=\"alert\"}")
        .await;
    let (ok, out, err) = fb.cli(&["dead-letters", "replay", "--all"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("replayed 2"), "{out}");
    eventually("the bad body dead-lettered again", WAIT, || async {
        let after = fb
            .metric("firebreak_events_dead_lettered_total{kind=\"alert\"}")
            .await;
        (after == before + 2.0).then_some(())
    })
    .await;
    let body = eventually("listed again", WAIT, || async {
        let body = list(fb).await;
        (body["messages"] == 2).then_some(body)
    })
    .await;
    assert_eq!(group(&body, "malformed JSON").unwrap()["count"], 2);
    let (_, audit) = fb.get("/api/v1/audit?event=dead_letters_replayed").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors.contains(&"cli"), "{actors:?}");
}

#[tokio::test]
async fn embedded_dead_letters_are_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::embedded()).await;
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    // Another writer on the queue file, as a second tool would be.
    let bus = EmbeddedBus::open(&url).await.unwrap();
    for _ in 0..2 {
        bus.publish(&[OutMessage {
            routing_key: "alert.orders".into(),
            body: bytes::Bytes::from_static(BAD),
            lane: Lane::Bulk,
        }])
        .await
        .unwrap();
    }
    bus.close().await;
    // A good alert left by a delivery limit (a fault since fixed).
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (routing_key, body, reason, dead_at, lane)
         VALUES ('alert.orders', ?1, 'delivery limit reached after 20 attempts', ?2, 1)",
    )
    .bind(given_up())
    .bind(chrono::Utc::now().timestamp_micros())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    seen_and_replayed(&fb, "embedded").await;
}

#[tokio::test]
async fn rabbitmq_dead_letters_are_listed_and_replayed() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(dir.path(), Options::backed(&pg, &amqp)).await;
    let conn = amqp.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let t = amqp.topology();
    let publish = |exchange: String, body: Vec<u8>, props: BasicProperties| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                &exchange,
                "alert.orders",
                BasicPublishOptions::default(),
                &body,
                props.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    for _ in 0..2 {
        publish(t.exchange.clone(), BAD.to_vec(), BasicProperties::default()).await;
    }
    // What RabbitMQ itself adds when a quorum queue's delivery limit is hit.
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-first-death-reason", "delivery_limit"),
        ("x-first-death-exchange", t.urgent_exchange.as_str()),
        ("x-first-death-queue", t.urgent_queue.as_str()),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    publish(
        t.dead_exchange.clone(),
        given_up(),
        BasicProperties::default().with_headers(headers),
    )
    .await;
    seen_and_replayed(&fb, "rabbitmq").await;
    let _ = conn.close(200, "done").await;
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}
