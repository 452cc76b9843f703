//! A batch that commits and then loses its ack (the connection went between
//! the commit and the ack, as seen on RabbitMQ under a broker restart): the
//! bus delivers it again, and each event is still counted once as
//! processed — the second delivery counts as redelivered, not as duplicates.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use firebreak_bus::{
    Bus, BusError, DeadLetter, Delivery, EmbeddedBus, Lane, LaneBacklog, OutMessage, Subscription,
};
use firebreak_domain::events::EventKind;
use firebreak_domain::metrics::Metrics;
use firebreak_engine::{Engine, EngineConfig};
use firebreak_store::Store;
use firebreak_tests::{eventually, webhook, TestAlert};
use tokio_util::sync::CancellationToken;

/// The embedded bus, except that the first ack is lost: the messages go back
/// to the queue (as a broker does with a dead connection's unacked ones) and
/// the subscription fails.
struct LosesFirstAck {
    inner: EmbeddedBus,
    lost: Arc<AtomicBool>,
}

struct Sub {
    inner: Box<dyn Subscription>,
    lost: Arc<AtomicBool>,
}

#[async_trait]
impl Subscription for Sub {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        self.inner.next_batch(max).await
    }
    async fn ack(&mut self, tags: &[u64]) -> Result<(), BusError> {
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.inner.requeue(tags).await?;
            return Err(BusError::Unavailable(
                "connection lost before the ack".into(),
            ));
        }
        self.inner.ack(tags).await
    }
    async fn requeue(&mut self, tags: &[u64]) -> Result<(), BusError> {
        self.inner.requeue(tags).await
    }
    async fn dead_letter(&mut self, d: &Delivery, reason: &str) -> Result<(), BusError> {
        self.inner.dead_letter(d, reason).await
    }
}

#[async_trait]
impl Bus for LosesFirstAck {
    fn backend(&self) -> &'static str {
        "embedded"
    }
    async fn publish(&self, messages: &[OutMessage]) -> Result<(), BusError> {
        self.inner.publish(messages).await
    }
    async fn subscribe(
        &self,
        prefetch: u16,
        lane: Lane,
    ) -> Result<Box<dyn Subscription>, BusError> {
        Ok(Box::new(Sub {
            inner: self.inner.subscribe(prefetch, lane).await?,
            lost: self.lost.clone(),
        }))
    }
    fn backlog(&self, lane: Lane) -> LaneBacklog {
        self.inner.backlog(lane)
    }
    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    async fn dead_letters(&self) -> Result<(Vec<DeadLetter>, bool), BusError> {
        self.inner.dead_letters().await
    }
    async fn replay_dead_letters(&self, ids: Option<&[String]>) -> Result<u64, BusError> {
        self.inner.replay_dead_letters(ids).await
    }
    fn dead_letter_depth(&self) -> Option<u64> {
        self.inner.dead_letter_depth()
    }
}

fn series(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_lost_ack_after_the_commit_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store: Arc<dyn Store> = Arc::from(firebreak_store::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    let lost = Arc::new(AtomicBool::new(false));
    let bus = Arc::new(LosesFirstAck {
        inner: EmbeddedBus::open(&queue).await.unwrap(),
        lost: lost.clone(),
    });
    let alerts: Vec<TestAlert> = (0..5)
        .map(|i| TestAlert::firing(format!("lost-ack-{i}"), "checkout"))
        .collect();
    bus.publish(&[OutMessage {
        routing_key: "alert.checkout".into(),
        body: webhook(&alerts).to_string().into(),
        lane: Lane::Bulk,
    }])
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let engine = Arc::new(Engine::new(
        store.clone(),
        bus.clone(),
        metrics.clone(),
        EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        },
    ));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    eventually(
        "the redelivery handled",
        Duration::from_secs(20),
        || async {
            (series(
                &metrics,
                "firebreak_events_redelivered_total{kind=\"alert\"}",
            ) == 5.0)
                .then_some(())
        },
    )
    .await;
    assert!(lost.load(Ordering::SeqCst), "the first ack was lost");
    assert_eq!(
        metrics.processed_total(EventKind::Alert),
        5,
        "each alert counted once as processed"
    );
    assert_eq!(
        series(&metrics, "firebreak_events_duplicate_total{kind=\"alert\"}"),
        0.0,
        "a redelivery of what committed is not a duplicate"
    );
    let incidents = store
        .list_incidents(&firebreak_store::IncidentFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(incidents.len(), 1);
    shutdown.cancel();
    running.await.unwrap();
}
