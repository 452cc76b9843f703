//! Past one machine, from real parts: a 3-node RabbitMQ cluster (three
//! `rabbitmq-server` nodes joined, quorum queues across them; started by
//! tests/ha/rabbitmq-cluster.sh), PostgreSQL as a primary and a streaming
//! replica under Patroni with etcd, behind HAProxy routing to the primary
//! (tests/ha/postgres-cluster.sh), and Firebreak as 2 ingest + 2 engine +
//! 2 api processes given every broker node and HAProxy's address. A sender
//! retries as Alertmanager does (until 202), some alerts trigger a playbook.
//! Faults: (a) kill -9 the RabbitMQ node leading the queues; (b) kill -9 the
//! PostgreSQL primary (Patroni promotes the replica); (c) kill -9 one process
//! of each role; (d) a rolling restart of every Firebreak process. After
//! each: every alert answered 202 is stored once, one action per trigger, no
//! dead letters; the time to recover is printed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak_tests::{alert_now, client, eventually, Firebreak, Options};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
/// The alert name the playbook acts on (one action per incident).
const TRIGGER: &str = "HACheckoutDown";

struct Cluster {
    dir: tempfile::TempDir,
    urls: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ha/rabbitmq-cluster.sh")
}

fn pg_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ha/postgres-cluster.sh")
}

fn run(args: &[&str]) -> String {
    run_script(&script(), args)
}

fn run_script(script: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{} {args:?} failed (are Debian's rabbitmq-server, patroni, etcd-server and haproxy installed? bash tests/run installs them):\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A base port with `offsets` above it free.
fn free_base(offsets: &[u16]) -> u16 {
    for _ in 0..200 {
        let base = 40_000 + (rand_u16() % 500) * 10;
        let free = offsets
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free ports for a RabbitMQ cluster")
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    ((nanos ^ std::process::id()) % 65_000) as u16
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // The nodes' AMQP ports (base+1..3) and distribution ports (base+101..103).
        let base = free_base(&[1, 2, 3, 101, 102, 103]).to_string();
        let urls = run(&["start", dir.path().to_str().unwrap(), &base]);
        Cluster { dir, urls }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn kill(&self, node: u8) {
        run(&["kill", self.path(), &node.to_string()]);
    }

    fn restart(&self, node: u8) {
        run(&["restart", self.path(), &node.to_string()]);
    }

    fn leader(&self, queue: &str) -> u8 {
        run(&["leader", self.path(), queue]).parse().unwrap_or(1)
    }

    /// Messages waiting in a queue, read from any node that answers.
    fn depth(&self, queue: &str) -> u64 {
        run(&["depth", self.path(), queue]).parse().unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.path()])
            .output();
    }
}

/// PostgreSQL under Patroni, reached through HAProxy.
struct PgCluster {
    dir: tempfile::TempDir,
    url: String,
}

impl PgCluster {
    fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let base = free_base(&[1, 2, 11, 12, 21, 22, 30]).to_string();
        let url = run_script(
            &pg_script(),
            &["start", dir.path().to_str().unwrap(), &base],
        );
        PgCluster { dir, url }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn primary(&self) -> String {
        run_script(&pg_script(), &["primary", self.path()])
    }

    fn kill(&self, node: &str) {
        run_script(&pg_script(), &["kill", self.path(), node]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(pg_script())
            .args(["stop", self.path()])
            .output();
    }
}

/// Six Firebreak processes on one database and one cluster.
struct Fleet {
    procs: Vec<(&'static str, Firebreak)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    async fn start(db: &str, cluster: &Cluster, namespace: &str, playbooks: &Path) -> Fleet {
        let mut procs = Vec::new();
        let mut dirs = Vec::new();
        for role in ["ingest", "ingest", "engine", "engine", "api", "api"] {
            let dir = tempfile::tempdir().unwrap();
            let options = Options::embedded()
                .with("FIREBREAK_DATABASE_URL", db)
                .with("FIREBREAK_AMQP_URL", &cluster.urls)
                .with("FIREBREAK_AMQP_NAMESPACE", namespace)
                .with("FIREBREAK_AMQP__PUBLISH_TIMEOUT", "3s")
                .with(
                    "FIREBREAK_AUDIT__KEY",
                    "ha-test-audit-key-shared-by-all-processes-0123",
                )
                .with("FIREBREAK_PLAYBOOKS", &playbooks.display().to_string())
                .roles(role);
            procs.push((role, Firebreak::start(dir.path(), options).await));
            dirs.push(dir);
        }
        Fleet { procs, _dirs: dirs }
    }

    fn of(&self, role: &str) -> Vec<&Firebreak> {
        self.procs
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, f)| f)
            .collect()
    }
}

/// What the senders did: alerts answered 202, and when sending last failed
/// and recovered.
#[derive(Default)]
struct Sent {
    accepted: BTreeSet<String>,
    triggers: BTreeSet<String>,
    /// The longest run of failed attempts (a webhook retried until 202).
    worst_gap: Duration,
    /// Webhooks given up after a minute of retrying (must stay empty).
    given_up: Vec<String>,
}

/// Senders that post webhooks to the ingest processes in turn, each one
/// retried (every 200 ms, to the next ingest process) until it is answered
/// 202, as Alertmanager does.
fn send(
    ingest: Vec<String>,
    phase: &'static str,
    sender: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Sent>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        let n = AtomicUsize::new(0);
        while !stop.load(Ordering::Relaxed) {
            let k = n.fetch_add(1, Ordering::Relaxed);
            // Every tenth webhook is a trigger, each in its own incident.
            let (fp, name, service) = if k.is_multiple_of(10) {
                (
                    format!("{phase}-t-{sender}-{k:06}"),
                    TRIGGER,
                    format!("checkout-{phase}-{sender}-{k}"),
                )
            } else {
                (
                    format!("{phase}-a-{sender}-{k:06}"),
                    "HAQueueLag",
                    format!("svc-{phase}"),
                )
            };
            let body = alert_now(&fp, name, &service, 1);
            let first = Instant::now();
            let mut attempt = 0usize;
            loop {
                let target = &ingest[(k + attempt) % ingest.len()];
                let ok = c
                    .post(format!("{target}/api/v1/alerts/alertmanager"))
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                if ok {
                    let mut s = sent.lock().unwrap();
                    s.worst_gap = s.worst_gap.max(first.elapsed());
                    if name == TRIGGER {
                        s.triggers.insert(fp.clone());
                    }
                    s.accepted.insert(fp);
                    break;
                }
                attempt += 1;
                if first.elapsed() > Duration::from_secs(60) {
                    sent.lock().unwrap().given_up.push(fp);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// A phase's senders at work.
struct Load {
    name: &'static str,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Sent>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    before: usize,
    fault_at: Instant,
}

/// Starts two senders on the ingest processes; returns once they have had
/// a few seconds of steady load, when the fault is due.
async fn load(name: &'static str, fleet: &Fleet) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let ingest: Vec<String> = fleet.of("ingest").iter().map(|f| f.base.clone()).collect();
    let senders: Vec<_> = (0..2)
        .map(|i| send(ingest.clone(), name, i, stop.clone(), sent.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = sent.lock().unwrap().accepted.len();
    Load {
        name,
        stop,
        sent,
        senders,
        before,
        fault_at: Instant::now(),
    }
}

/// Sends on for a while after the fault, stops, and checks what was stored.
async fn check(load: Load, fleet: &Fleet, cluster: &Cluster, namespace: &str, db: &str) {
    let name = load.name;
    let fault_took = load.fault_at.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    load.stop.store(true, Ordering::Relaxed);
    for s in load.senders {
        s.await.unwrap();
    }
    let (accepted, triggers, worst) = {
        let s = load.sent.lock().unwrap();
        assert!(
            s.given_up.is_empty(),
            "{name}: {} webhooks were refused for a minute (first {:?})",
            s.given_up.len(),
            s.given_up.first()
        );
        (s.accepted.clone(), s.triggers.clone(), s.worst_gap)
    };
    assert!(
        accepted.len() > load.before,
        "{name}: webhooks were accepted after the fault"
    );
    // Every accepted alert is stored, once, with one timeline entry.
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let (stored, entries) = stored_alerts(db, name).await.unwrap_or_default();
        if accepted.is_subset(&stored) && entries == stored.len() as i64 {
            break stored;
        }
        if Instant::now() > deadline {
            let logs: String = fleet
                .procs
                .iter()
                .filter(|(r, _)| *r == "engine")
                .map(|(_, p)| {
                    let l = p.logs();
                    let tail: Vec<&str> = l.lines().rev().take(30).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                })
                .collect::<Vec<_>>()
                .join("\n----\n");
            panic!(
                "{name}: {} of {} accepted alerts stored ({entries} timeline entries) after {:?}; engine logs:\n{logs}",
                accepted.intersection(&stored).count(),
                accepted.len(),
                WAIT
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let caught_up = load.fault_at.elapsed();
    assert_eq!(stored, accepted, "{name}: nothing invented, nothing lost");
    // One action per trigger (each trigger is its own incident).
    let actions = eventually(&format!("{name}: one action per trigger"), WAIT, || async {
        let n = trigger_actions(db, name).await;
        (n >= triggers.len()).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = trigger_actions(db, name).await;
    assert_eq!(
        (actions, settled),
        (triggers.len(), triggers.len()),
        "{name}: one action per trigger, none doubled"
    );
    let t = firebreak_bus::Topology::new(namespace);
    assert_eq!(cluster.depth(&t.dead_queue), 0, "{name}: no dead letters");
    println!(
        "HA {name}: {} alerts accepted ({} triggers, {} actions), all stored once; the fault took {:.1} s; the longest a webhook waited for its 202 (retrying): {:.1} s; everything stored {:.1} s after the fault (sending stopped at {:.1} s)",
        accepted.len(),
        triggers.len(),
        settled,
        fault_took.as_secs_f64(),
        worst.as_secs_f64(),
        caught_up.as_secs_f64(),
        fault_took.as_secs_f64() + 6.0
    );
}

/// The phase's alerts as stored, and their events (what the timeline shows);
/// `None` while the database does not answer (a failover).
async fn stored_alerts(db: &str, phase: &str) -> Option<(BTreeSet<String>, i64)> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db).await.ok()?;
    let like = format!("{phase}-%");
    let fps: Vec<String> =
        sqlx::query_scalar("SELECT fingerprint FROM incident_alerts WHERE fingerprint LIKE $1")
            .bind(&like)
            .fetch_all(&mut c)
            .await
            .ok()?;
    // The timeline shows alert events (one per alert here): each stored once.
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_events WHERE fingerprint LIKE $1 AND incident_id IS NOT NULL",
    )
    .bind(&like)
    .fetch_one(&mut c)
    .await
    .ok()?;
    let n = fps.len();
    let set: BTreeSet<String> = fps.into_iter().collect();
    assert_eq!(set.len(), n, "{phase}: an alert stored twice");
    Some((set, entries))
}

/// The playbook's actions for the phase's triggers (0 while the database
/// does not answer).
async fn trigger_actions(db: &str, phase: &str) -> usize {
    use sqlx::Connection;
    let Ok(mut c) = sqlx::PgConnection::connect(db).await else {
        return 0;
    };
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM actions WHERE playbook = 'ha-kill-switch' AND incident_id IN
           (SELECT incident_id FROM incident_alerts WHERE fingerprint LIKE $1)",
    )
    .bind(format!("{phase}-t-%"))
    .fetch_one(&mut c)
    .await
    .unwrap_or(0);
    n as usize
}

#[tokio::test]
async fn a_cluster_loses_nothing_when_a_node_or_a_process_dies_or_everything_restarts() {
    let cluster = Cluster::start();
    let pg = PgCluster::start();
    let namespace = format!("fbha-{}", std::process::id());
    let books = tempfile::tempdir().unwrap();
    std::fs::write(
        books.path().join("ha.yaml"),
        format!(
            "name: ha-kill-switch\nwhen:\n  alert:\n    matchers: ['alertname=\"{TRIGGER}\"']\ndo:\n  - kill_switch: {{ flag: ha.flow }}\n"
        ),
    )
    .unwrap();
    let mut fleet = Fleet::start(&pg.url, &cluster, &namespace, books.path()).await;
    let api = fleet.of("api")[0].base.clone();
    let status = client()
        .put(format!("{api}/api/v1/flags/ha.flow"))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        status == 200 || status == 201,
        "creating the flag: {status}"
    );
    let t = firebreak_bus::Topology::new(&namespace);

    // (a) The node leading the bulk lane's quorum queue dies, and comes back.
    let leader = cluster.leader(&t.queue);
    let l = load("node", &fleet).await;
    println!(
        "HA node: kill -9 RabbitMQ node {leader}, the leader of {}",
        t.queue
    );
    cluster.kill(leader);
    check(l, &fleet, &cluster, &namespace, &pg.url).await;
    cluster.restart(leader);

    // (b) The PostgreSQL primary dies; Patroni promotes the replica, and
    // HAProxy sends new connections to it.
    let primary = pg.primary();
    let l = load("database", &fleet).await;
    println!("HA database: kill -9 the PostgreSQL primary (node {primary}) and its Patroni");
    pg.kill(&primary);
    check(l, &fleet, &cluster, &namespace, &pg.url).await;
    println!("HA database: node {} is the primary now", pg.primary());

    // (c) One process of each role dies (kill -9), and is started again.
    let l = load("process", &fleet).await;
    for role in ["ingest", "engine", "api"] {
        if let Some((_, p)) = fleet.procs.iter_mut().rev().find(|(r, _)| *r == role) {
            p.kill9();
        }
    }
    check(l, &fleet, &cluster, &namespace, &pg.url).await;
    for (_, p) in fleet.procs.iter_mut() {
        p.restart().await;
    }

    // (d) Every process restarts (SIGTERM, then start), one after the other.
    let l = load("rolling", &fleet).await;
    for (_, p) in fleet.procs.iter_mut() {
        p.stop().await;
        p.restart().await;
    }
    check(l, &fleet, &cluster, &namespace, &pg.url).await;
    drop(fleet);
}
