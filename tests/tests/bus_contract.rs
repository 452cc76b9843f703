//! The bus contract, run against both backends (the embedded SQLite queue and
//! RabbitMQ): every method of `Bus` and `Subscription` does what the trait
//! promises, so the engine can rely on the same behaviour from either.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firebreak_bus::{
    content_id, Bus, Delivery, EmbeddedBus, Lane, OutMessage, RabbitBus, Subscription,
};
use firebreak_tests::{eventually, Amqp};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Rabbit,
}

struct Harness {
    backend: Backend,
    bus: Arc<dyn Bus>,
    dir: tempfile::TempDir,
    amqp: Option<Amqp>,
}

/// A bus as a (new) process opens it: the same queue file or broker namespace.
async fn open(backend: Backend, dir: &std::path::Path, amqp: Option<&Amqp>) -> Arc<dyn Bus> {
    match (backend, amqp) {
        (Backend::Rabbit, Some(amqp)) => Arc::new(
            RabbitBus::connect(&amqp.url, amqp.topology(), Duration::from_secs(10))
                .await
                .unwrap(),
        ),
        _ => {
            let url = format!("sqlite://{}", dir.join("queue.db").display());
            Arc::new(EmbeddedBus::open(&url).await.unwrap())
        }
    }
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let amqp = match backend {
            Backend::Embedded => None,
            Backend::Rabbit => Some(Amqp::fresh().await),
        };
        let bus = open(backend, dir.path(), amqp.as_ref()).await;
        Harness {
            backend,
            bus,
            dir,
            amqp,
        }
    }

    /// The consuming process goes away and another opens the bus.
    async fn restart(&mut self) {
        self.bus.close().await;
        self.bus = open(self.backend, self.dir.path(), self.amqp.as_ref()).await;
    }

    async fn finish(self) {
        self.bus.close().await;
        if let Some(a) = &self.amqp {
            a.cleanup().await;
        }
    }
}

fn msg(lane: Lane, key: &str, body: &str) -> OutMessage {
    OutMessage {
        routing_key: key.to_string(),
        body: Bytes::from(body.to_string()),
        lane,
    }
}

/// Takes `n` deliveries (several batches if need be), failing after WAIT.
async fn take(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            got.extend(sub.next_batch(n - got.len()).await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} deliveries arrived", got.len()));
    got
}

/// Nothing is delivered within `for_`.
async fn nothing(sub: &mut Box<dyn Subscription>, for_: Duration) {
    if let Ok(r) = tokio::time::timeout(for_, sub.next_batch(10)).await {
        panic!("expected nothing, got {:?}", r.unwrap());
    }
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

async fn published_messages_are_delivered_in_order_and_gone_once_acked(h: &mut Harness) {
    h.bus.ping().await.unwrap();
    assert!(
        ["embedded", "rabbitmq"].contains(&h.bus.backend()),
        "{}",
        h.bus.backend()
    );
    let out: Vec<OutMessage> = (0..5)
        .map(|i| msg(Lane::Bulk, "alert.checkout", &format!("body-{i}")))
        .collect();
    h.bus.publish(&out).await.unwrap();
    let mut sub = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let got = take(&mut sub, 5).await;
    assert_eq!(
        bodies(&got),
        (0..5).map(|i| format!("body-{i}")).collect::<Vec<_>>()
    );
    assert!(got
        .iter()
        .all(|d| d.routing_key == "alert.checkout" && !d.redelivered));
    sub.ack(&got.iter().map(|d| d.tag).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(sub);
    h.restart().await;
    let mut sub = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    nothing(&mut sub, Duration::from_secs(1)).await;
}

async fn lanes_do_not_mix(h: &mut Harness) {
    h.bus
        .publish(&[
            msg(Lane::Bulk, "log.checkout", "bulk"),
            msg(Lane::Urgent, "alert.checkout", "urgent"),
        ])
        .await
        .unwrap();
    let mut urgent = h.bus.subscribe(10, Lane::Urgent).await.unwrap();
    let got = take(&mut urgent, 1).await;
    assert_eq!(bodies(&got), ["urgent"]);
    nothing(&mut urgent, Duration::from_millis(500)).await;
    let mut bulk = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let got = take(&mut bulk, 1).await;
    assert_eq!(bodies(&got), ["bulk"]);
}

async fn requeued_and_unacked_messages_come_back_marked_redelivered(h: &mut Harness) {
    h.bus
        .publish(&[msg(Lane::Bulk, "deploy.checkout", "again")])
        .await
        .unwrap();
    let mut sub = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let first = take(&mut sub, 1).await;
    sub.requeue(&[first[0].tag]).await.unwrap();
    let second = take(&mut sub, 1).await;
    assert_eq!(bodies(&second), ["again"]);
    assert!(second[0].redelivered, "a requeued message is redelivered");
    // The consumer goes away without acking: the next process gets it.
    drop(sub);
    h.restart().await;
    let mut sub = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let third = take(&mut sub, 1).await;
    assert_eq!(bodies(&third), ["again"]);
    assert!(third[0].redelivered);
    sub.ack(&[third[0].tag]).await.unwrap();
}

async fn dead_letters_are_listed_counted_and_replayed_onto_their_lane(h: &mut Harness) {
    h.bus
        .publish(&[
            msg(Lane::Urgent, "alert.checkout", "{broken"),
            msg(Lane::Bulk, "log.checkout", "also broken"),
        ])
        .await
        .unwrap();
    let mut urgent = h.bus.subscribe(10, Lane::Urgent).await.unwrap();
    let mut bulk = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let u = take(&mut urgent, 1).await.remove(0);
    let b = take(&mut bulk, 1).await.remove(0);
    urgent.dead_letter(&u, "not JSON").await.unwrap();
    bulk.dead_letter(&b, "unknown kind").await.unwrap();
    let (letters, more) = h.bus.dead_letters().await.unwrap();
    assert!(!more);
    let mut kept: Vec<(&str, &[u8])> = letters
        .iter()
        .map(|d| (d.routing_key.as_str(), d.body.as_ref()))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("alert.checkout", b"{broken".as_ref()),
            ("log.checkout", b"also broken".as_ref())
        ],
        "a dead letter keeps its routing key and body"
    );
    let mut seen: Vec<(String, Lane, String)> = letters
        .iter()
        .map(|d| (d.id.clone(), d.lane, d.reason.clone()))
        .collect();
    seen.sort_by(|a, b| a.2.cmp(&b.2));
    let urgent_id = content_id("alert.checkout", b"{broken");
    let bulk_id = content_id("log.checkout", b"also broken");
    assert_eq!(
        seen,
        [
            (urgent_id.clone(), Lane::Urgent, "not JSON".to_string()),
            (bulk_id.clone(), Lane::Bulk, "unknown kind".to_string()),
        ]
    );
    eventually("the dead-letter depth", WAIT, || async {
        (h.bus.dead_letter_depth() == Some(2)).then_some(())
    })
    .await;
    // Replaying one puts it back on its own lane; the other stays.
    assert_eq!(
        h.bus
            .replay_dead_letters(Some(std::slice::from_ref(&urgent_id)))
            .await
            .unwrap(),
        1
    );
    let again = take(&mut urgent, 1).await;
    assert_eq!(bodies(&again), ["{broken"]);
    urgent.ack(&[again[0].tag]).await.unwrap();
    let (letters, _) = h.bus.dead_letters().await.unwrap();
    assert_eq!(
        letters.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [bulk_id]
    );
    assert_eq!(h.bus.replay_dead_letters(None).await.unwrap(), 1);
    let again = take(&mut bulk, 1).await;
    assert_eq!(bodies(&again), ["also broken"]);
    bulk.ack(&[again[0].tag]).await.unwrap();
    assert!(h.bus.dead_letters().await.unwrap().0.is_empty());
}

async fn the_backlog_counts_what_waits_per_lane(h: &mut Harness) {
    let out: Vec<OutMessage> = (0..7)
        .map(|i| msg(Lane::Bulk, "log.checkout", &format!("line {i}")))
        .collect();
    h.bus.publish(&out).await.unwrap();
    eventually("the bulk backlog", WAIT, || async {
        let b = h.bus.backlog(Lane::Bulk);
        (b.depth == 7).then_some(())
    })
    .await;
    assert_eq!(h.bus.backlog(Lane::Urgent).depth, 0);
    let mut sub = h.bus.subscribe(10, Lane::Bulk).await.unwrap();
    let got = take(&mut sub, 7).await;
    sub.ack(&got.iter().map(|d| d.tag).collect::<Vec<_>>())
        .await
        .unwrap();
    eventually("an empty backlog", WAIT, || async {
        (h.bus.backlog(Lane::Bulk).depth == 0).then_some(())
    })
    .await;
}

macro_rules! bus_contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { let mut h = super::Harness::new(super::Backend::Embedded).await; super::$name(&mut h).await; h.finish().await; })*
        }
        mod rabbitmq {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { let mut h = super::Harness::new(super::Backend::Rabbit).await; super::$name(&mut h).await; h.finish().await; })*
        }
    };
}

bus_contract!(
    published_messages_are_delivered_in_order_and_gone_once_acked,
    lanes_do_not_mix,
    requeued_and_unacked_messages_come_back_marked_redelivered,
    dead_letters_are_listed_counted_and_replayed_onto_their_lane,
    the_backlog_counts_what_waits_per_lane,
);
