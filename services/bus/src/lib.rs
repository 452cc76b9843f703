//! Firebreak's event bus: one [`Bus`] trait with a RabbitMQ implementation and an
//! embedded durable queue in a SQLite file. Both give the same contract:
//!
//! - `publish` returns only once every message is durable (publisher confirm from
//!   a quorum queue, or a committed SQLite transaction);
//! - delivery is at-least-once: a message stays until it is acked, and a consumer
//!   that dies or loses its connection has its messages redelivered;
//! - a message that cannot be processed is dead-lettered with the reason.
//!
//! Handlers must therefore be idempotent; Firebreak's engine is.

use async_trait::async_trait;
use bytes::Bytes;

pub mod embedded;
pub mod rabbitmq;

pub use embedded::EmbeddedBus;
pub use rabbitmq::{RabbitBus, Topology};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The broker or queue file cannot be reached; retry later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (nack, or nothing to route it to).
    #[error("bus refused the message: {0}")]
    Refused(String),
    #[error("bus error: {0}")]
    Internal(String),
}

/// A message to publish. The routing key says what the body is: `alert.<service>`,
/// `deploy.<service>`, `gate.<service>` or `log.<service>`.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub routing_key: String,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    /// Identifies the delivery to `ack`, `requeue` and `dead_letter`.
    pub tag: u64,
    pub routing_key: String,
    pub body: Bytes,
    /// Delivered before and not acked (the previous consumer died or failed).
    pub redelivered: bool,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `rabbitmq` or `embedded`.
    fn backend(&self) -> &'static str;
    /// Returns once every message is durably queued; on error none should be
    /// considered accepted (some may still arrive: consumers are idempotent).
    async fn publish(&self, messages: &[OutMessage]) -> Result<(), BusError>;
    /// Starts consuming the engine queue with at most `prefetch` unacked messages.
    async fn subscribe(&self, prefetch: u16) -> Result<Box<dyn Subscription>, BusError>;
    /// Whether the bus answers now.
    async fn ping(&self) -> Result<(), BusError>;
    async fn close(&self);
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for at least one delivery, then takes whatever else is ready, up to
    /// `max`. An error means the subscription is dead: subscribe again.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError>;
    async fn ack(&mut self, tags: &[u64]) -> Result<(), BusError>;
    /// Gives messages back for redelivery (processing failed for now).
    async fn requeue(&mut self, tags: &[u64]) -> Result<(), BusError>;
    /// Moves a message to the dead-letter queue with the reason it was refused.
    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), BusError>;
}
