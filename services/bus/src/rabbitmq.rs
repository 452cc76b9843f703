//! RabbitMQ: topic exchange `<ns>.events`, a durable quorum queue `<ns>.engine`
//! shared by every engine process (competing consumers), dead-letter exchange and
//! queue `<ns>.dead`. The urgent lane is its own topic exchange and quorum
//! queue, `<ns>.urgent`, consumed apart. Publisher confirms and persistent
//! messages on the way in; manual acks, sent only after the database commit,
//! on the way out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::Mutex;

use crate::{
    content_id, Bus, BusError, DeadLetter, Delivery, Lane, LaneBacklog, OutMessage, Subscription,
    DEAD_LETTER_SCAN,
};

/// How long a publish may wait for the broker's confirm before the sender is told
/// to retry (a blocked broker must not hang every ingest request).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries of one message before the quorum queue dead-letters it by itself.
const DELIVERY_LIMIT: i64 = 20;

/// Names of the exchanges and queues, all under one namespace (default
/// `firebreak`), so that tests and several installations can share a broker.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub dead_exchange: String,
    pub queue: String,
    pub dead_queue: String,
    pub urgent_exchange: String,
    pub urgent_queue: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Topology {
        Topology {
            exchange: format!("{namespace}.events"),
            dead_exchange: format!("{namespace}.dead"),
            queue: format!("{namespace}.engine"),
            dead_queue: format!("{namespace}.dead"),
            urgent_exchange: format!("{namespace}.urgent"),
            urgent_queue: format!("{namespace}.urgent"),
        }
    }

    fn exchange_of(&self, lane: Lane) -> &str {
        match lane {
            Lane::Urgent => &self.urgent_exchange,
            Lane::Bulk => &self.exchange,
        }
    }

    fn queue_of(&self, lane: Lane) -> &str {
        match lane {
            Lane::Urgent => &self.urgent_queue,
            Lane::Bulk => &self.queue,
        }
    }
}

/// Per lane: messages ready (sampled), and how long the last delivered
/// message had waited (its publish timestamp to its delivery).
#[derive(Default)]
struct Stats {
    ready: [u64; 2],
    waited: [Option<f64>; 2],
    /// Messages in the dead-letter queue.
    dead: Option<u64>,
}

fn slot(lane: Lane) -> usize {
    usize::from(lane == Lane::Urgent)
}

pub struct RabbitBus {
    brokers: Brokers,
    topology: Topology,
    publisher: Mutex<Option<(Connection, Channel)>>,
    consumer_seq: AtomicU64,
    stats: Arc<std::sync::Mutex<Stats>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// How long a publish, a subscribe or a ping may take before it fails
    /// (`amqp.publish_timeout`): a broker that drops packets instead of
    /// refusing them must not hang ingest until the OS gives up.
    timeout: Duration,
    /// Since when publishing fails (logged once when it starts and once
    /// when it ends, not once per webhook).
    down_since: std::sync::Mutex<Option<std::time::Instant>>,
}

fn unavailable(e: lapin::Error) -> BusError {
    BusError::Unavailable(format!("rabbitmq: {e}"))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// The largest frame Firebreak proposes when `amqp_url` sets no `frame_max`.
/// lapin keeps a receive and a send buffer of 32 frames per connection,
/// written in full up front: at RabbitMQ's default of 128 KiB that is 8 MiB
/// per connection, resident while idle, and a process holds up to five
/// connections (publisher, depth sampler, two consumer lanes, dead
/// letters). At 32 KiB it is 2 MiB; a larger message goes as several frames.
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// `url` as lapin takes it, proposing [`DEFAULT_FRAME_MAX`] unless the URL
/// says otherwise (`?frame_max=`, the AMQP URI query of the same name).
fn amqp_uri(url: &str) -> Result<AMQPUri, BusError> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| {
        // The URL holds the password: never repeat it.
        let why = if e.contains(url) {
            "not of the form amqp://user:password@host:port/vhost".to_string()
        } else {
            e
        };
        BusError::Unavailable(format!("rabbitmq: amqp_url is not an AMQP URI: {why}"))
    })?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(uri)
}

/// The broker addresses of a cluster, and which one answered last: every
/// connection (publisher, consumers, the depth sampler, dead letters) tries
/// that one first and the others after it, so a node that dies costs one
/// refused connection, not an outage.
#[derive(Clone)]
struct Brokers {
    urls: Arc<Vec<String>>,
    preferred: Arc<AtomicU64>,
    /// How long one node may take to accept a connection before the next is tried.
    each: Duration,
}

/// The nodes of `urls`: one AMQP URL, or several separated by commas.
pub fn broker_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// A node as logs name it: its host and port, never its credentials.
fn node_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split(['/', '?']).next().unwrap_or(host).to_string()
}

impl Brokers {
    async fn connect(&self) -> Result<Connection, BusError> {
        let n = self.urls.len().max(1);
        let start = (self.preferred.load(Ordering::Relaxed) as usize) % n;
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let Some(url) = self.urls.get(i) else {
                break;
            };
            match tokio::time::timeout(self.each, connect(url)).await {
                Ok(Ok(conn)) => {
                    if i != start {
                        tracing::warn!(
                            node = %node_name(url),
                            "connected to another RabbitMQ node: {} did not answer",
                            self.urls.get(start).map(|u| node_name(u)).unwrap_or_default()
                        );
                        self.preferred.store(i as u64, Ordering::Relaxed);
                    }
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", node_name(url))),
                Err(_) => failures.push(format!(
                    "{}: no answer within {:.1} s",
                    node_name(url),
                    self.each.as_secs_f64()
                )),
            }
        }
        Err(BusError::Unavailable(if failures.len() == 1 {
            failures.remove(0)
        } else {
            format!("rabbitmq: no node answered ({})", failures.join("; "))
        }))
    }
}

async fn connect(url: &str) -> Result<Connection, BusError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(LongString::from("firebreak"));
    Connection::connect_uri(amqp_uri(url)?, props)
        .await
        .map_err(unavailable)
}

/// Declares the topology; idempotent, so every process does it at start.
async fn declare(channel: &Channel, t: &Topology) -> Result<(), BusError> {
    let dead = AMQPValue::LongString(LongString::from(t.dead_exchange.as_str()));
    // The dead-letter queue itself has no dead-letter exchange of its own.
    lane(channel, &t.dead_exchange, &t.dead_queue, &[]).await?;
    for (exchange, queue) in [
        (&t.exchange, &t.queue),
        (&t.urgent_exchange, &t.urgent_queue),
    ] {
        lane(
            channel,
            exchange,
            queue,
            &[
                ("x-dead-letter-exchange", dead.clone()),
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
            ],
        )
        .await?;
    }
    Ok(())
}

/// A durable topic exchange and a durable quorum queue bound to all of it.
async fn lane(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    arguments: &[(&str, AMQPValue)],
) -> Result<(), BusError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = vec![(
        "x-queue-type",
        AMQPValue::LongString(LongString::from("quorum")),
    )];
    args.extend(arguments.iter().cloned());
    channel
        .queue_declare(queue, durable_queue, table(&args))
        .await
        .map_err(unavailable)?;
    channel
        .queue_bind(
            queue,
            exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Samples how many messages are ready on each lane, once a second, on a
/// channel of its own (a passive declare answers with the count).
async fn sample_ready(
    brokers: Brokers,
    topology: Topology,
    stats: Arc<std::sync::Mutex<Stats>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut channel: Option<(Connection, Channel)> = None;
    while !closed.load(Ordering::Relaxed) {
        if channel
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            channel = match brokers.connect().await {
                Ok(conn) => match conn.create_channel().await {
                    Ok(ch) => Some((conn, ch)),
                    Err(_) => None,
                },
                Err(_) => None,
            };
        }
        if let Some((_, ch)) = &channel {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let queues = [
                (Some(Lane::Urgent), topology.queue_of(Lane::Urgent)),
                (Some(Lane::Bulk), topology.queue_of(Lane::Bulk)),
                (None, topology.dead_queue.as_str()),
            ];
            for (lane, queue) in queues {
                let declared = tokio::time::timeout(
                    Duration::from_secs(5),
                    ch.queue_declare(queue, passive, FieldTable::default()),
                )
                .await;
                match declared {
                    Ok(Ok(q)) => {
                        if let Ok(mut s) = stats.lock() {
                            let n = u64::from(q.message_count());
                            match lane {
                                Some(lane) => s.ready[slot(lane)] = n,
                                None => s.dead = Some(n),
                            }
                        }
                    }
                    Ok(Err(_)) => {}
                    // No answer: the broker is unreachable; connect afresh.
                    Err(_) => {
                        channel = None;
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some((conn, _)) = channel {
        let _ = conn.close(200, "closing").await;
    }
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, BusError> {
    let channel = conn.create_channel().await.map_err(unavailable)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(channel)
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

/// Publishes and waits for every confirm. Unroutable messages come back with an
/// Ack carrying the returned message: that is a failure, not a success.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    messages: &[(String, &[u8], BasicProperties)],
) -> Result<(), BusError> {
    let mut confirms = Vec::with_capacity(messages.len());
    for (key, body, props) in messages {
        let confirm = channel
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props.clone(),
            )
            .await
            .map_err(unavailable)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| BusError::Unavailable("rabbitmq: no publisher confirm within 10s".into()))?
            .map_err(unavailable)?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(returned)) => {
                return Err(BusError::Refused(format!(
                    "no queue bound for routing key {:?} ({})",
                    returned.delivery.routing_key.as_str(),
                    returned.reply_text.as_str()
                )))
            }
            // A nack says the broker could not take the message now (a
            // quorum queue between leaders, say), not that it never will:
            // the publisher reconnects, and the sender gets 503 and retries.
            // A channel opened while a queue's leader was being elected can
            // keep nacking until it is closed.
            Confirmation::Nack(_) => {
                return Err(BusError::Unavailable(
                    "rabbitmq: the broker nacked the message (retry)".into(),
                ))
            }
        }
    }
    Ok(())
}

impl RabbitBus {
    /// Connects, declares the topology and keeps a confirm channel for publishing.
    /// `timeout` bounds each publish, subscribe and ping (see the field).
    pub async fn connect(
        url: &str,
        topology: Topology,
        timeout: Duration,
    ) -> Result<RabbitBus, BusError> {
        let urls = broker_urls(url);
        if urls.is_empty() {
            return Err(BusError::Unavailable(
                "rabbitmq: amqp_url names no broker".into(),
            ));
        }
        for u in &urls {
            amqp_uri(u)?;
        }
        // One node's share of the timeout, so trying every node fits in it.
        let each = (timeout / urls.len() as u32).max(Duration::from_secs(1));
        let bus = RabbitBus {
            timeout,
            down_since: std::sync::Mutex::new(None),
            brokers: Brokers {
                urls: Arc::new(urls),
                preferred: Arc::new(AtomicU64::new(0)),
                each,
            },
            topology,
            publisher: Mutex::new(None),
            consumer_seq: AtomicU64::new(0),
            stats: Arc::new(std::sync::Mutex::new(Stats::default())),
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        bus.bounded("connecting", bus.publisher_channel()).await?;
        tokio::spawn(sample_ready(
            bus.brokers.clone(),
            bus.topology.clone(),
            bus.stats.clone(),
            bus.closed.clone(),
        ));
        Ok(bus)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The shared publishing channel, reconnecting if the broker went away.
    async fn publisher_channel(&self) -> Result<Channel, BusError> {
        let mut guard = self.publisher.lock().await;
        if let Some((conn, channel)) = guard.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        if let Some((conn, _)) = guard.take() {
            close_soon(conn);
        }
        let conn = self.brokers.connect().await?;
        let channel = confirm_channel(&conn).await?;
        declare(&channel, &self.topology).await?;
        *guard = Some((conn, channel.clone()));
        Ok(channel)
    }

    async fn drop_publisher(&self) {
        if let Some((conn, _)) = self.publisher.lock().await.take() {
            close_soon(conn);
        }
    }

    /// `work` within the configured timeout, or `Unavailable` naming it. On
    /// a timeout the publishing connection is dropped (if no one holds it)
    /// so the next call connects afresh instead of waiting on a dead one.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                if let Ok(mut guard) = self.publisher.try_lock() {
                    if let Some((conn, _)) = guard.take() {
                        close_soon(conn);
                    }
                }
                Err(BusError::Unavailable(format!(
                    "rabbitmq: no answer to {what} within {:.1} s (amqp.publish_timeout): the broker is unreachable or blocked",
                    self.timeout.as_secs_f64()
                )))
            }
        }
    }

    /// A connection of its own for reading the dead-letter queue: closing it
    /// gives back every message it got and did not ack.
    async fn dead_channel(&self) -> Result<(Connection, Channel), BusError> {
        let conn = self.brokers.connect().await?;
        let channel = confirm_channel(&conn).await?;
        declare(&channel, &self.topology).await?;
        Ok((conn, channel))
    }

    fn dead_letter_of(&self, d: &lapin::message::Delivery) -> DeadLetter {
        let headers = d.properties.headers().as_ref();
        let header = |name: &str| headers.and_then(|h| h.inner().get(name));
        let text = |name: &str| match header(name) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
            _ => None,
        };
        // Refused by the engine: its own headers. Given up by the broker
        // (the delivery limit): RabbitMQ's x-first-death-* headers.
        let reason = text("x-firebreak-reason").unwrap_or_else(|| match text("x-first-death-reason") {
            Some(r) if r == "delivery_limit" => format!(
                "delivery limit reached after {DELIVERY_LIMIT} attempts (the broker dead-lettered it)"
            ),
            Some(r) => format!("dead-lettered by the broker: {r}"),
            None => "dead-lettered (no reason recorded)".into(),
        });
        let lane = match text("x-firebreak-lane").or_else(|| text("x-first-death-exchange")) {
            Some(l) if l == "urgent" || l == self.topology.urgent_exchange => Lane::Urgent,
            _ => Lane::Bulk,
        };
        let died_at = match header("x-firebreak-dead-at") {
            Some(AMQPValue::LongLongInt(t)) => Some(*t),
            _ => match header("x-death") {
                Some(AMQPValue::FieldArray(deaths)) => {
                    deaths.as_slice().first().and_then(|d| match d {
                        AMQPValue::FieldTable(t) => match t.inner().get("time") {
                            Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
                            _ => None,
                        },
                        _ => None,
                    })
                }
                _ => None,
            },
        };
        let routing_key = d.routing_key.as_str().to_string();
        DeadLetter {
            id: content_id(&routing_key, &d.data),
            routing_key,
            lane,
            reason,
            dead_at: died_at.or_else(|| {
                d.properties
                    .timestamp()
                    .as_ref()
                    .and_then(|t| i64::try_from(*t).ok())
            }),
            body: Bytes::from(d.data.clone()),
        }
    }

    /// The next dead letter on `channel`, unacked, while `left` (how many
    /// waited when the read began, counted down) allows: a message that
    /// dies again meanwhile is not read twice.
    async fn next_dead(
        &self,
        channel: &Channel,
        left: &mut usize,
    ) -> Result<Option<lapin::message::Delivery>, BusError> {
        if *left == 0 {
            return Ok(None);
        }
        let got = channel
            .basic_get(&self.topology.dead_queue, BasicGetOptions { no_ack: false })
            .await
            .map_err(unavailable)?;
        Ok(got.map(|message| {
            *left = (*left).min(message.message_count as usize + 1) - 1;
            message.delivery
        }))
    }

    async fn read_dead(&self) -> Result<(Vec<DeadLetter>, bool), BusError> {
        let (conn, channel) = self.dead_channel().await?;
        let mut out = Vec::new();
        let mut more = false;
        let mut left = usize::MAX;
        while let Some(delivery) = self.next_dead(&channel, &mut left).await? {
            if out.len() == DEAD_LETTER_SCAN {
                more = true;
                break;
            }
            out.push(self.dead_letter_of(&delivery));
        }
        // Nothing was acked: closing gives every message back, before this
        // returns (a replay right after must find them).
        close_now(conn).await;
        Ok((out, more))
    }

    async fn replay_dead(&self, ids: Option<&[String]>) -> Result<u64, BusError> {
        let (conn, channel) = self.dead_channel().await?;
        let now = u64::try_from(chrono_now_secs()).unwrap_or_default();
        let mut replayed = 0;
        // Only what waited when the replay began: a replayed message that
        // fails again and comes back dead must not be replayed in a loop.
        let mut left = DEAD_LETTER_SCAN;
        while let Some(delivery) = self.next_dead(&channel, &mut left).await? {
            let letter = self.dead_letter_of(&delivery);
            if ids.is_some_and(|ids| !ids.contains(&letter.id)) {
                continue;
            }
            // Confirmed on its lane before it leaves the dead letters.
            publish_confirmed(
                &channel,
                self.topology.exchange_of(letter.lane),
                &[(
                    letter.routing_key.clone(),
                    letter.body.as_ref(),
                    persistent().with_timestamp(now),
                )],
            )
            .await?;
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                .await
                .map_err(unavailable)?;
            replayed += 1;
        }
        close_now(conn).await;
        Ok(replayed)
    }
}

/// Closes a connection and waits (at most 2 s) for the broker to take back
/// what it held.
async fn close_now(conn: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done")).await;
}

/// Closes a connection in the background, giving up after a second (a
/// connection to an unreachable broker never answers the close).
fn close_soon(conn: Connection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, "closing")).await;
        });
    }
}

#[async_trait]
impl Bus for RabbitBus {
    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, messages: &[OutMessage]) -> Result<(), BusError> {
        let result = self
            .bounded("a publish", self.publish_confirmed_lanes(messages))
            .await;
        let mut down = self
            .down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&result, *down) {
            (Err(BusError::Unavailable(e)), None) => {
                *down = Some(std::time::Instant::now());
                tracing::error!(error = %e, "RabbitMQ is unavailable: ingest answers 503 (senders retry) until it is back");
            }
            (Ok(()), Some(since)) => {
                *down = None;
                tracing::warn!(
                    down_seconds = since.elapsed().as_secs_f64(),
                    "RabbitMQ is back: publishing again"
                );
            }
            _ => {}
        }
        result
    }

    fn backlog(&self, lane: Lane) -> LaneBacklog {
        self.stats
            .lock()
            .map(|s| {
                let depth = s.ready[slot(lane)];
                LaneBacklog {
                    depth,
                    oldest_seconds: if depth > 0 {
                        s.waited[slot(lane)]
                    } else {
                        Some(0.0)
                    },
                }
            })
            .unwrap_or_default()
    }

    async fn subscribe(
        &self,
        prefetch: u16,
        lane: Lane,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.bounded("a subscribe", self.subscribe_lane(prefetch, lane))
            .await
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.bounded("a ping", self.publisher_channel())
            .await
            .map(|_| ())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.drop_publisher().await;
    }

    async fn dead_letters(&self) -> Result<(Vec<DeadLetter>, bool), BusError> {
        tokio::time::timeout(self.timeout * 6, self.read_dead())
            .await
            .map_err(|_| {
                BusError::Unavailable("rabbitmq: reading the dead letters timed out".into())
            })?
    }

    async fn replay_dead_letters(&self, ids: Option<&[String]>) -> Result<u64, BusError> {
        // Not bounded: every message is confirmed before its dead copy goes,
        // so a replay cut short loses nothing (run it again for the rest).
        self.replay_dead(ids).await
    }

    fn dead_letter_depth(&self) -> Option<u64> {
        self.stats.lock().ok().and_then(|s| s.dead)
    }
}

impl RabbitBus {
    async fn publish_confirmed_lanes(&self, messages: &[OutMessage]) -> Result<(), BusError> {
        let now = u64::try_from(chrono_now_secs()).unwrap_or_default();
        let batch = |lane: Lane| -> Vec<(String, &[u8], BasicProperties)> {
            messages
                .iter()
                .filter(|m| m.lane == lane)
                .map(|m| {
                    (
                        m.routing_key.clone(),
                        m.body.as_ref(),
                        persistent().with_timestamp(now),
                    )
                })
                .collect()
        };
        let (urgent, bulk) = (batch(Lane::Urgent), batch(Lane::Bulk));
        // One retry on a fresh connection: a broker restart between two requests
        // should cost the sender nothing. Consumers are idempotent, so a message
        // that did reach the broker before the failure is harmless when sent again.
        for attempt in 0..2 {
            let channel = self.publisher_channel().await?;
            let mut sent = Ok(());
            for (lane, batch) in [(Lane::Urgent, &urgent), (Lane::Bulk, &bulk)] {
                if !batch.is_empty() && sent.is_ok() {
                    sent =
                        publish_confirmed(&channel, self.topology.exchange_of(lane), batch).await;
                }
            }
            match sent {
                Ok(()) => return Ok(()),
                Err(BusError::Unavailable(e)) if attempt == 0 => {
                    tracing::debug!(error = %e, "publish failed; reconnecting to RabbitMQ");
                    self.drop_publisher().await;
                }
                Err(e @ BusError::Unavailable(_)) => {
                    // Not even a fresh connection took it: the next publish
                    // starts on another fresh one.
                    self.drop_publisher().await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(BusError::Unavailable(
            "rabbitmq: publish failed after reconnecting".into(),
        ))
    }

    async fn subscribe_lane(
        &self,
        prefetch: u16,
        lane: Lane,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let conn = self.brokers.connect().await?;
        let channel = confirm_channel(&conn).await?;
        declare(&channel, &self.topology).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let tag = format!(
            "firebreak-engine-{}-{}",
            std::process::id(),
            self.consumer_seq.fetch_add(1, Ordering::Relaxed)
        );
        let consumer = channel
            .basic_consume(
                self.topology.queue_of(lane),
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(RabbitSubscription {
            conn: Some(conn),
            channel,
            consumer,
            topology: self.topology.clone(),
            lane,
            stats: self.stats.clone(),
        }))
    }
}

fn chrono_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or_default())
        .unwrap_or_default()
}

struct RabbitSubscription {
    conn: Option<Connection>,
    channel: Channel,
    consumer: Consumer,
    topology: Topology,
    lane: Lane,
    stats: Arc<std::sync::Mutex<Stats>>,
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        // Closing the connection returns unacked messages to the queue at once
        // instead of when the broker notices the socket is gone.
        if let (Some(conn), Ok(runtime)) = (self.conn.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = conn.close(200, "consumer stopped").await;
            });
        }
    }
}

fn delivery(d: lapin::message::Delivery) -> Delivery {
    Delivery {
        tag: d.delivery_tag,
        routing_key: d.routing_key.as_str().to_string(),
        body: Bytes::from(d.data),
        redelivered: d.redelivered,
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let first = match self.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(unavailable(e)),
            None => {
                return Err(BusError::Unavailable(
                    "rabbitmq: consumer was cancelled".into(),
                ))
            }
        };
        // How long the newest message of the batch waited: the lane's lag.
        let mut published = first.properties.timestamp().as_ref().copied();
        let mut batch = vec![delivery(first)];
        while batch.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => {
                    published = d.properties.timestamp().as_ref().copied().or(published);
                    batch.push(delivery(d));
                }
                Some(Some(Err(e))) => return Err(unavailable(e)),
                Some(None) | None => break,
            }
        }
        if let (Some(at), Ok(mut s)) = (published, self.stats.lock()) {
            let now = u64::try_from(chrono_now_secs()).unwrap_or_default();
            s.waited[slot(self.lane)] = Some(now.saturating_sub(at) as f64);
        }
        Ok(batch)
    }

    async fn ack(&mut self, tags: &[u64]) -> Result<(), BusError> {
        for tag in tags {
            self.channel
                .basic_ack(*tag, BasicAckOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn requeue(&mut self, tags: &[u64]) -> Result<(), BusError> {
        for tag in tags {
            self.channel
                .basic_nack(
                    *tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn dead_letter(&mut self, d: &Delivery, reason: &str) -> Result<(), BusError> {
        // Published explicitly (rather than nack without requeue) so the reason
        // travels with the message; acked only once the dead-letter copy is safe.
        let headers = table(&[
            (
                "x-firebreak-reason",
                AMQPValue::LongString(LongString::from(reason)),
            ),
            (
                "x-firebreak-routing-key",
                AMQPValue::LongString(LongString::from(d.routing_key.as_str())),
            ),
            (
                "x-firebreak-lane",
                AMQPValue::LongString(LongString::from(self.lane.as_str())),
            ),
            (
                "x-firebreak-dead-at",
                AMQPValue::LongLongInt(chrono_now_secs()),
            ),
        ]);
        let props = persistent().with_headers(headers);
        publish_confirmed(
            &self.channel,
            &self.topology.dead_exchange,
            &[(d.routing_key.clone(), d.body.as_ref(), props)],
        )
        .await?;
        self.channel
            .basic_ack(d.tag, BasicAckOptions::default())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_its_nodes_named_without_credentials() {
        let urls = broker_urls(
            "amqp://fb:s3cret@rabbit-1:5672/%2f, amqp://fb:s3cret@rabbit-2:5673/%2f,,amqp://rabbit-3",
        );
        assert_eq!(urls.len(), 3);
        assert_eq!(urls[1], "amqp://fb:s3cret@rabbit-2:5673/%2f");
        assert_eq!(node_name(&urls[0]), "rabbit-1:5672");
        assert_eq!(node_name(&urls[2]), "rabbit-3");
        assert!(urls.iter().all(|u| !node_name(u).contains("s3cret")));
    }

    #[test]
    fn connections_propose_a_small_frame_unless_the_url_sets_one() {
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_its_password() {
        // The parser's own message would repeat the first URL whole; the
        // second's names only the scheme.
        for (url, says) in [
            (
                "amqp:guest:s3cret@host",
                "not of the form amqp://user:password@host",
            ),
            ("http://guest:s3cret@host/", "Invalid AMQP scheme: http"),
        ] {
            let err = amqp_uri(url).unwrap_err().to_string();
            assert!(err.contains("amqp_url is not an AMQP URI"), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
