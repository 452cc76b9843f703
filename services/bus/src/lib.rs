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
//!
//! Messages travel on one of two lanes. The urgent lane carries what a
//! playbook may act on (and the deploys and gate verdicts those decisions
//! read); every engine drains it first, with a consumer of its own, so a
//! kill switch is not queued behind an alert storm on the bulk lane.

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

/// Which queue a message waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// What a playbook may act on, and the facts it decides with.
    Urgent,
    /// Everything else.
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Urgent, Lane::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Bulk => "bulk",
        }
    }
}

/// A message to publish. The routing key says what the body is: `alert.<service>`,
/// `deploy.<service>`, `gate.<service>` or `log.<service>`.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub routing_key: String,
    pub body: Bytes,
    pub lane: Lane,
}

/// How much waits on one lane.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneBacklog {
    /// Messages waiting (RabbitMQ: ready, not yet delivered).
    pub depth: u64,
    /// Seconds the oldest waiting message has waited, when known.
    pub oldest_seconds: Option<f64>,
}

/// A message the engine refused (it cannot be decoded, or its routing key
/// names no kind) or the bus gave up on (its delivery limit).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The same for every copy of one routing key and body: see [`content_id`].
    pub id: String,
    pub routing_key: String,
    /// The lane it came from and goes back to when replayed.
    pub lane: Lane,
    pub reason: String,
    /// When it was dead-lettered (Unix seconds), when known.
    pub dead_at: Option<i64>,
    pub body: Bytes,
}

/// At most this many dead letters are read by one list or replay; the
/// answer says so when more wait.
pub const DEAD_LETTER_SCAN: usize = 10_000;

/// A stable id for a message: 64-bit FNV-1a of its routing key and body, in
/// hex. Copies of one message share it, so a list can count them and a
/// replay can name them, in either backend.
pub fn content_id(routing_key: &str, body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in routing_key
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(body)
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
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
    /// Starts consuming one lane with at most `prefetch` unacked messages.
    async fn subscribe(&self, prefetch: u16, lane: Lane)
        -> Result<Box<dyn Subscription>, BusError>;
    /// What waits on a lane, as last sampled (about once a second; cheap to call).
    fn backlog(&self, lane: Lane) -> LaneBacklog;
    /// Whether the bus answers now.
    async fn ping(&self) -> Result<(), BusError>;
    async fn close(&self);
    /// Dead letters, oldest first, at most [`DEAD_LETTER_SCAN`]; nothing is
    /// removed. The second value says whether more were left unread.
    async fn dead_letters(&self) -> Result<(Vec<DeadLetter>, bool), BusError>;
    /// Puts the dead letters with these ids (every one when `None`) back on
    /// their lane, each once durably queued before it leaves the dead
    /// letters; returns how many went back.
    async fn replay_dead_letters(&self, ids: Option<&[String]>) -> Result<u64, BusError>;
    /// Dead letters waiting, as last sampled (about once a second).
    fn dead_letter_depth(&self) -> Option<u64>;
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
