//! The embedded durable queue: a table in its own SQLite file (WAL, fsync on
//! commit). Enqueueing is a commit; consuming leases messages, and a message is
//! removed only when acked, so a crash anywhere redelivers rather than loses.
//!
//! The queue lives in a file of its own, not in the store's, so that ingest
//! (writing the queue) and the engine (writing the store) never wait for each
//! other's write lock. Each message has a lane; a consumer claims from one
//! lane, so the urgent lane's consumer never waits behind the bulk backlog.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::Notify;

use crate::{
    content_id, Bus, BusError, DeadLetter, Delivery, Lane, LaneBacklog, OutMessage, Subscription,
    DEAD_LETTER_SCAN,
};

/// How long a consumer holds a message before it is offered again.
const LEASE: Duration = Duration::from_secs(60);
/// After this many deliveries a message is dead-lettered (a poison message must
/// not loop forever).
pub const DELIVERY_LIMIT: i64 = 20;
/// How often an idle consumer looks for messages another process may have queued.
const POLL: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key TEXT NOT NULL,
    body        BLOB NOT NULL,
    enqueued_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_ready ON queue (lease_until, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key TEXT NOT NULL,
    body        BLOB NOT NULL,
    reason      TEXT NOT NULL,
    dead_at     INTEGER NOT NULL
);
";

/// Added after the first release: queues made before it get the column.
const LANES: &str = "
ALTER TABLE queue ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
";
/// Dead letters made before replay keep no lane: they go back on bulk.
const DEAD_LANES: &str = "
ALTER TABLE dead_letters ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
";
const LANE_INDEX: &str = "CREATE INDEX IF NOT EXISTS queue_lane ON queue (lane, lease_until, id)";

fn lane_code(lane: Lane) -> i64 {
    match lane {
        Lane::Bulk => 0,
        Lane::Urgent => 1,
    }
}

fn lane_of(code: i64) -> Lane {
    if code == lane_code(Lane::Urgent) {
        Lane::Urgent
    } else {
        Lane::Bulk
    }
}

/// One wake-up per lane: a publish on the urgent lane wakes its consumer.
#[derive(Default)]
struct Wakers {
    urgent: Notify,
    bulk: Notify,
}

impl Wakers {
    fn of(&self, lane: Lane) -> &Notify {
        match lane {
            Lane::Urgent => &self.urgent,
            Lane::Bulk => &self.bulk,
        }
    }
}

pub struct EmbeddedBus {
    pool: SqlitePool,
    notify: Arc<Wakers>,
    backlog: Arc<std::sync::Mutex<[LaneBacklog; 2]>>,
    /// Dead letters waiting, as last sampled.
    dead: Arc<std::sync::atomic::AtomicU64>,
    /// Publishes waiting for the group committer.
    commits: tokio::sync::mpsc::Sender<Publish>,
    /// Whether this process has taken over messages a dead predecessor leased.
    recovered: AtomicBool,
}

/// One caller's messages and where to tell it they are durable.
struct Publish {
    messages: Vec<(String, bytes::Bytes, Lane)>,
    done: tokio::sync::oneshot::Sender<Result<(), BusError>>,
}

/// Publishes that arrive while a commit is in flight are written together in
/// the next transaction: one fsync for many webhooks, and each caller still
/// hears back only once its own messages are durable.
async fn group_committer(
    pool: SqlitePool,
    notify: Arc<Wakers>,
    mut rx: tokio::sync::mpsc::Receiver<Publish>,
) {
    const MAX_GROUP: usize = 512;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let result = commit_group(&pool, &group).await;
        if result.is_ok() {
            for lane in Lane::ALL {
                if group
                    .iter()
                    .any(|p| p.messages.iter().any(|(_, _, l)| *l == lane))
                {
                    notify.of(lane).notify_one();
                }
            }
        }
        for p in group {
            let _ = p.done.send(result.clone());
        }
    }
}

async fn commit_group(pool: &SqlitePool, group: &[Publish]) -> Result<(), BusError> {
    let now = now_micros();
    let mut tx = write_tx(pool).await?;
    for p in group {
        for (key, body, lane) in &p.messages {
            sqlx::query(
                "INSERT INTO queue (routing_key, body, enqueued_at, lane) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(key)
            .bind(body.as_ref())
            .bind(now)
            .bind(lane_code(*lane))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
    }
    tx.commit().await.map_err(unavailable)
}

/// Samples each lane's depth and oldest message once a second, on a
/// connection of its own (a count over a large queue must not hold up the
/// writer).
async fn sample_backlog(
    reader: SqlitePool,
    queue: SqlitePool,
    out: Arc<std::sync::Mutex<[LaneBacklog; 2]>>,
    dead: Arc<std::sync::atomic::AtomicU64>,
) {
    while !queue.is_closed() {
        let rows: Result<Vec<(i64, i64, Option<i64>)>, _> =
            sqlx::query_as("SELECT lane, count(*), min(enqueued_at) FROM queue GROUP BY lane")
                .fetch_all(&reader)
                .await;
        if let Ok(rows) = rows {
            let now = now_micros();
            let mut fresh = [LaneBacklog::default(); 2];
            for (lane, depth, oldest) in rows {
                let i = usize::from(lane == lane_code(Lane::Urgent));
                fresh[i] = LaneBacklog {
                    depth: u64::try_from(depth).unwrap_or_default(),
                    oldest_seconds: oldest.map(|t| (now - t).max(0) as f64 / 1e6),
                };
            }
            if let Ok(mut b) = out.lock() {
                *b = fresh;
            }
        }
        let dead_letters: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&reader)
            .await;
        if let Ok(n) = dead_letters {
            dead.store(u64::try_from(n).unwrap_or_default(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    reader.close().await;
}

/// PASSIVE checkpoints twice a second while the queue is open; a TRUNCATE now
/// and then keeps the WAL file from growing.
async fn checkpoints(checkpointer: SqlitePool, queue: SqlitePool) {
    while !queue.is_closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&checkpointer)
            .await;
        if let Ok((_, log, copied)) = done {
            if log > 20_000 && log == copied {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&checkpointer)
                    .await;
            }
        }
    }
    checkpointer.close().await;
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn unavailable(e: sqlx::Error) -> BusError {
    BusError::Unavailable(format!("embedded queue: {e}"))
}

/// A write transaction that takes SQLite's write lock at once (no upgrade
/// from a read lock that could fail with "database is locked" mid-way).
async fn write_tx(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, BusError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)
}

impl EmbeddedBus {
    /// Opens (creating if needed) the queue at a `sqlite://` URL.
    pub async fn open(url: &str) -> Result<EmbeddedBus, BusError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| BusError::Internal(format!("bad queue URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // One connection: every queue operation is a write, and SQLite has one
        // writer. It never checkpoints; a second connection does, in the
        // background, so no publish waits behind a checkpoint's fsync.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(unavailable)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        sqlx::Executor::execute(&pool, SCHEMA)
            .await
            .map_err(unavailable)?;
        // Files from before lanes (and before replayable dead letters) get
        // the column in place.
        for (table, upgrade) in [("queue", LANES), ("dead_letters", DEAD_LANES)] {
            let has_lane: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'lane'",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .map_err(unavailable)?;
            if !has_lane {
                sqlx::Executor::execute(&pool, upgrade)
                    .await
                    .map_err(unavailable)?;
            }
        }
        sqlx::Executor::execute(&pool, LANE_INDEX)
            .await
            .map_err(unavailable)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        let notify = Arc::new(Wakers::default());
        let backlog = Arc::new(std::sync::Mutex::new([LaneBacklog::default(); 2]));
        let dead = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(checkpoints(checkpointer, pool.clone()));
        tokio::spawn(sample_backlog(
            reader,
            pool.clone(),
            backlog.clone(),
            dead.clone(),
        ));
        let (commits, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(group_committer(pool.clone(), notify.clone(), rx));
        Ok(EmbeddedBus {
            pool,
            notify,
            backlog,
            dead,
            commits,
            recovered: AtomicBool::new(false),
        })
    }

    /// Messages waiting (including leased ones), for tests and operators.
    pub async fn depth(&self) -> Result<i64, BusError> {
        sqlx::query_scalar("SELECT count(*) FROM queue")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    /// The oldest dead letters with their row ids.
    async fn dead_rows(&self) -> Result<(Vec<(i64, DeadLetter)>, bool), BusError> {
        let scan = i64::try_from(DEAD_LETTER_SCAN).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, Vec<u8>, String, i64, i64)> = sqlx::query_as(
            "SELECT id, routing_key, body, reason, dead_at, lane FROM dead_letters ORDER BY id LIMIT ?1",
        )
        .bind(scan + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > DEAD_LETTER_SCAN;
        let letters = rows
            .into_iter()
            .take(DEAD_LETTER_SCAN)
            .map(|(row, routing_key, body, reason, dead_at, lane)| {
                let letter = DeadLetter {
                    id: content_id(&routing_key, &body),
                    routing_key,
                    lane: lane_of(lane),
                    reason,
                    dead_at: Some(dead_at / 1_000_000),
                    body: Bytes::from(body),
                };
                (row, letter)
            })
            .collect();
        Ok((letters, more))
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, messages: &[OutMessage]) -> Result<(), BusError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let publish = Publish {
            messages: messages
                .iter()
                .map(|m| (m.routing_key.clone(), m.body.clone(), m.lane))
                .collect(),
            done,
        };
        self.commits
            .send(publish)
            .await
            .map_err(|_| BusError::Unavailable("embedded queue: the committer stopped".into()))?;
        wait.await
            .map_err(|_| BusError::Unavailable("embedded queue: the committer stopped".into()))?
    }

    fn backlog(&self, lane: Lane) -> LaneBacklog {
        self.backlog
            .lock()
            .map(|b| b[usize::from(lane == Lane::Urgent)])
            .unwrap_or_default()
    }

    async fn subscribe(
        &self,
        _prefetch: u16,
        lane: Lane,
    ) -> Result<Box<dyn Subscription>, BusError> {
        // The embedded queue has one consuming process. When it starts, anything
        // still leased was leased by a process that died (kill -9, power loss):
        // offer it again now rather than when the lease runs out.
        if !self.recovered.swap(true, Ordering::SeqCst) {
            let released = sqlx::query("UPDATE queue SET lease_until = 0 WHERE lease_until > 0")
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
            if released > 0 {
                tracing::info!(
                    released,
                    "redelivering messages left in flight by a previous process"
                );
            }
        }
        Ok(Box::new(EmbeddedSubscription {
            pool: self.pool.clone(),
            notify: self.notify.clone(),
            lane,
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn dead_letters(&self) -> Result<(Vec<DeadLetter>, bool), BusError> {
        let (rows, more) = self.dead_rows().await?;
        Ok((rows.into_iter().map(|(_, l)| l).collect(), more))
    }

    async fn replay_dead_letters(&self, ids: Option<&[String]>) -> Result<u64, BusError> {
        let (rows, _) = self.dead_rows().await?;
        let chosen: Vec<u64> = rows
            .iter()
            .filter(|(_, l)| ids.is_none_or(|ids| ids.contains(&l.id)))
            .map(|(row, _)| u64::try_from(*row).unwrap_or_default())
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let list = tag_list(&chosen);
        let mut tx = write_tx(&self.pool).await?;
        // Back on the queue and out of the dead letters in one transaction.
        sqlx::query(
            "INSERT INTO queue (routing_key, body, enqueued_at, lane)
             SELECT routing_key, body, ?2, lane FROM dead_letters
             WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
        )
        .bind(&list)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let replayed =
            sqlx::query("DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(&list)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        for lane in Lane::ALL {
            self.notify.of(lane).notify_one();
        }
        Ok(replayed)
    }

    fn dead_letter_depth(&self) -> Option<u64> {
        Some(self.dead.load(Ordering::Relaxed))
    }
}

/// The lane's messages past the delivery limit (`?1` now, `?2` the limit,
/// `?3` the lane).
macro_rules! poisoned {
    () => {
        "FROM queue WHERE lane = ?3 AND lease_until < ?1 AND attempts >= ?2"
    };
}

/// Moves poisoned messages to the dead letters: copy, then delete.
const POISON: [&str; 2] = [
    concat!(
        "INSERT INTO dead_letters (routing_key, body, reason, dead_at, lane)
         SELECT routing_key, body, 'delivery limit reached after ' || attempts || ' attempts', ?1, lane ",
        poisoned!()
    ),
    concat!("DELETE ", poisoned!()),
];

struct EmbeddedSubscription {
    pool: SqlitePool,
    notify: Arc<Wakers>,
    lane: Lane,
}

impl EmbeddedSubscription {
    async fn claim(&self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let now = now_micros();
        let lease_until = now + i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = write_tx(&self.pool).await?;
        // Poison messages first: past the delivery limit they go to dead letters.
        for sql in POISON {
            sqlx::query(sql)
                .bind(now)
                .bind(DELIVERY_LIMIT)
                .bind(lane_code(self.lane))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let rows = sqlx::query(
            "UPDATE queue SET lease_until = ?1, attempts = attempts + 1
             WHERE id IN (SELECT id FROM queue WHERE lane = ?4 AND lease_until < ?2 ORDER BY id LIMIT ?3)
             RETURNING id, routing_key, body, attempts",
        )
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .bind(lane_code(self.lane))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let attempts: i64 = r.try_get("attempts")?;
                let body: Vec<u8> = r.try_get("body")?;
                Ok(Delivery {
                    tag: u64::try_from(id).unwrap_or_default(),
                    routing_key: r.try_get("routing_key")?,
                    body: Bytes::from(body),
                    redelivered: attempts > 1,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(unavailable)?;
        out.sort_by_key(|d| d.tag);
        Ok(out)
    }
}

fn tag_list(tags: &[u64]) -> String {
    let mut s = String::from("[");
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&t.to_string());
    }
    s.push(']');
    s
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        loop {
            let batch = self.claim(max.max(1)).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let _ = tokio::time::timeout(POLL, self.notify.of(self.lane).notified()).await;
        }
    }

    async fn ack(&mut self, tags: &[u64]) -> Result<(), BusError> {
        if tags.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(tag_list(tags))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn requeue(&mut self, tags: &[u64]) -> Result<(), BusError> {
        if tags.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE queue SET lease_until = 0 WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(tag_list(tags))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        self.notify.of(self.lane).notify_one();
        Ok(())
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let mut tx = write_tx(&self.pool).await?;
        sqlx::query(
            "INSERT INTO dead_letters (routing_key, body, reason, dead_at, lane) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&delivery.routing_key)
        .bind(delivery.body.as_ref())
        .bind(reason)
        .bind(now_micros())
        .bind(lane_code(self.lane))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM queue WHERE id = ?1")
            .bind(i64::try_from(delivery.tag).unwrap_or_default())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    //! What only the embedded queue does. What every bus does (order, acks,
    //! redelivery, lanes, dead letters and their replay) is the bus
    //! contract suite's, run against both backends (tests/tests/bus_contract.rs).
    use super::*;

    async fn bus(dir: &tempfile::TempDir) -> EmbeddedBus {
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        EmbeddedBus::open(&url).await.expect("open queue")
    }

    fn msg(key: &str, body: &str) -> OutMessage {
        OutMessage {
            routing_key: key.into(),
            body: Bytes::from(body.to_string()),
            lane: Lane::Bulk,
        }
    }

    #[tokio::test]
    async fn the_urgent_lane_is_claimed_apart_from_the_bulk_backlog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = bus(&dir).await;
        let bulk: Vec<OutMessage> = (0..500).map(|i| msg("alert.a", &i.to_string())).collect();
        bus.publish(&bulk).await.expect("publish");
        let urgent = OutMessage {
            lane: Lane::Urgent,
            ..msg("alert.b", "urgent")
        };
        bus.publish(&[urgent]).await.expect("publish");
        let mut fast = bus.subscribe(10, Lane::Urgent).await.expect("subscribe");
        let got = fast.next_batch(10).await.expect("batch");
        assert_eq!(got.len(), 1, "only the urgent message");
        assert_eq!(got[0].body.as_ref(), b"urgent");
        fast.ack(&[got[0].tag]).await.expect("ack");
        let mut slow = bus.subscribe(10, Lane::Bulk).await.expect("subscribe");
        let first = slow.next_batch(10).await.expect("batch");
        assert_eq!(first[0].body.as_ref(), b"0", "the bulk lane in order");
        // The sampler reports both lanes within about a second.
        let mut seen = LaneBacklog::default();
        for _ in 0..30 {
            seen = bus.backlog(Lane::Bulk);
            if seen.depth == 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.depth, 500, "{seen:?}");
        assert!(seen.oldest_seconds.is_some());
        assert_eq!(bus.backlog(Lane::Urgent).depth, 0);
    }

    #[tokio::test]
    async fn a_queue_from_before_lanes_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        {
            let pool = SqlitePool::connect_with(
                SqliteConnectOptions::from_str(&url)
                    .expect("url")
                    .create_if_missing(true),
            )
            .await
            .expect("open");
            sqlx::Executor::execute(&pool, SCHEMA)
                .await
                .expect("old schema");
            sqlx::query(
                "INSERT INTO queue (routing_key, body, enqueued_at) VALUES ('alert.a', x'7b7d', 1)",
            )
            .execute(&pool)
            .await
            .expect("old message");
            pool.close().await;
        }
        let bus = EmbeddedBus::open(&url).await.expect("open upgraded");
        let mut sub = bus.subscribe(10, Lane::Bulk).await.expect("subscribe");
        let got = sub.next_batch(10).await.expect("batch");
        assert_eq!(
            got[0].body.as_ref(),
            b"{}",
            "the old message is kept, on the bulk lane"
        );
    }

    #[tokio::test]
    async fn dead_letter_keeps_reason_and_removes_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = bus(&dir).await;
        bus.publish(&[msg("alert.a", "{not json")])
            .await
            .expect("publish");
        let mut sub = bus.subscribe(10, Lane::Bulk).await.expect("subscribe");
        let batch = sub.next_batch(10).await.expect("batch");
        sub.dead_letter(&batch[0], "malformed JSON")
            .await
            .expect("dead letter");
        assert_eq!(bus.depth().await.expect("depth"), 0);
        let (dead, more) = bus.dead_letters().await.expect("dead letters");
        assert!(!more);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (
                dead[0].routing_key.as_str(),
                dead[0].body.as_ref(),
                dead[0].reason.as_str(),
                dead[0].lane
            ),
            (
                "alert.a",
                b"{not json".as_ref(),
                "malformed JSON",
                Lane::Bulk
            )
        );
        assert_eq!(dead[0].id, content_id("alert.a", b"{not json"));
        assert!(dead[0].dead_at.is_some_and(|t| t > 1_700_000_000));
    }
}
