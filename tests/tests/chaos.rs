//! Failures production brings, driven against the real binary under load
//! while Alertmanager keeps sending: the database cut away (a TCP proxy
//! between Firebreak and PostgreSQL stops forwarding and closes its
//! connections), the broker away, the broker blackholed (the proxy stops
//! forwarding but refuses nothing), an engine replica killed with SIGKILL
//! mid-load, an engine killed inside a kill-switch call. Nothing answered
//! 202 is lost or stored twice, nothing is dead-lettered, no action runs
//! twice, and recovery takes seconds (printed: timings never decide a test).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak_tests::{
    alert_now, deploy_now, eventually, post_retrying_to, repo_playbook, webhook, Amqp, Firebreak,
    Options, Pg, Proxy, Recorder, TestAlert,
};
use serde_json::{json, Value};

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

/// Firebreak on a fresh database and namespace, reaching PostgreSQL through
/// a proxy the test can cut.
async fn behind_a_database_proxy(
    pg: &Pg,
    amqp: &Amqp,
    dir: &std::path::Path,
) -> (Firebreak, Proxy) {
    let target = pg
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let proxy = Proxy::start(target.parse().unwrap()).await;
    let proxied = pg.url.replace(&target, &proxy.addr.to_string());
    let fb = Firebreak::start(
        dir,
        Options::backed(pg, amqp).with("FIREBREAK_DATABASE_URL", &proxied),
    )
    .await;
    (fb, proxy)
}

/// Firebreak reaching the machine's RabbitMQ through a proxy the test can
/// cut or stall, with `env` set besides.
async fn behind_a_broker_proxy(
    pg: &Pg,
    amqp: &Amqp,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Firebreak, Proxy) {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let mut options = Options::backed(pg, amqp).with("FIREBREAK_AMQP_URL", &via_proxy);
    for (k, v) in env {
        options = options.with(k, v);
    }
    (Firebreak::start(dir, options).await, proxy)
}

/// The database away for 12 s — long enough that requeueing each failed
/// batch would pass the 20-delivery limit many times over — with webhooks
/// arriving throughout: every alert is stored, none is dead-lettered.
#[tokio::test]
async fn a_database_outage_loses_nothing_and_dead_letters_nothing() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let (fb, proxy) = behind_a_database_proxy(&pg, &amqp, dir.path()).await;
    send(&fb, 0, 10).await;
    processed(&fb, 100.0, "the first 100 alerts stored").await;

    proxy.go_down();
    let down = Instant::now();
    send(&fb, 10, 20).await;
    let (s, ready) = fb.get("/readyz").await;
    assert_eq!(s, 503, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], false, "{ready}");
    assert_eq!(ready["down"], serde_json::json!(["store"]), "{ready}");
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
    let dir = tempfile::tempdir().unwrap();
    let (fb, proxy) = behind_a_broker_proxy(&pg, &amqp, dir.path(), &[]).await;
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
    let logs = fb.logs();
    assert_eq!(
        logs.matches("RabbitMQ is unavailable: ingest answers 503")
            .count(),
        1,
        "the publishing side says once that the broker went"
    );
    assert!(
        logs.contains("RabbitMQ is back"),
        "and once that it came back"
    );
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

/// The broker blackholed for 10 s: connections stay open, nothing gets
/// through, nothing is refused. Ingest answers 503 within its configured
/// publish timeout instead of hanging (so Alertmanager retries), `/readyz`
/// says the bus is down, and once packets flow again every alert the sender
/// retried is stored once.
#[tokio::test]
async fn a_blackholed_broker_gets_a_prompt_503_and_loses_nothing() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let (fb, proxy) = behind_a_broker_proxy(
        &pg,
        &amqp,
        dir.path(),
        &[("FIREBREAK_AMQP_PUBLISH_TIMEOUT", "1s")],
    )
    .await;
    send(&fb, 0, 5).await;
    processed(&fb, 50.0, "the first 50 alerts").await;

    proxy.blackhole();
    let down = Instant::now();
    let body = webhook(
        &(0..10)
            .map(|a| TestAlert::firing(format!("cut-5-{a}"), "checkout"))
            .collect::<Vec<_>>(),
    );
    let asked = Instant::now();
    let (s, answer) = fb.post("/api/v1/alerts/alertmanager", &body).await;
    let took = asked.elapsed();
    println!(
        "blackholed broker: ingest answered {s} after {:.1} s (amqp.publish_timeout = 1 s)",
        took.as_secs_f64()
    );
    assert_eq!(s, 503, "no broker answers: the sender must retry: {answer}");
    // Without a timeout of its own the request hangs until the kernel gives
    // up on the connection (minutes): this bound tells a hang from an answer.
    assert!(
        took < Duration::from_secs(15),
        "ingest hung for {took:?} behind a blackholed broker"
    );
    let (s, ready) = fb.get("/readyz").await;
    assert_eq!(s, 503, "{ready}");
    assert_eq!(ready["checks"]["bus"]["ok"], false, "{ready}");
    assert_eq!(ready["down"], json!(["bus"]), "{ready}");
    // Alertmanager keeps retrying through the outage (this webhook too).
    let sender = {
        let (base, body) = (fb.base.clone(), body.clone());
        tokio::spawn(async move {
            let (s, b) = post_retrying_to(&base, "/api/v1/alerts/alertmanager", &body, 100).await;
            assert_eq!(s, 202, "{b}");
        })
    };
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    proxy.unblock();
    let back = Instant::now();
    sender
        .await
        .expect("the retried webhook is accepted once packets flow");
    send(&fb, 6, 4).await;
    processed(&fb, 100.0, "every alert after the blackhole").await;
    println!(
        "blackhole over -> every alert processed in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    stored_once(&fb, &amqp, 100).await;
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}

fn playbooks_with(dir: &std::path::Path, name: &str, text: &str) -> String {
    let books = dir.join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    std::fs::write(books.join(name), text).unwrap();
    books.to_str().unwrap().to_string()
}

/// `n` firing checkout alerts starting now, plus `trigger`, the alert that
/// Alertmanager keeps sending again (the same alert, every webhook).
fn storm_webhook(trigger: &Value, w: usize, n: usize) -> Value {
    let mut body = trigger.clone();
    let mut alerts = vec![trigger["alerts"][0].clone()];
    for a in 0..n {
        alerts.push(
            alert_now(&format!("kill-{w}-{a}"), "HighErrorRate", "checkout", 0)["alerts"][0]
                .clone(),
        );
    }
    body["alerts"] = Value::Array(alerts);
    body
}

/// Two engines on one queue; one is killed with SIGKILL while the load runs
/// and started again, while the alert that triggers the kill switch arrives
/// again and again. Every alert is stored once, the timeline has each entry
/// once, there is one incident and exactly one kill switch action, executed
/// once.
#[tokio::test]
async fn an_engine_killed_mid_load_leaves_one_action_and_every_alert_once() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let books = playbooks_with(
        dir.path(),
        "checkout-kill-switch.yaml",
        &repo_playbook("checkout-kill-switch.yaml"),
    );
    let base = Options::backed(&pg, &amqp).with("FIREBREAK_PLAYBOOKS", &books);
    let front = Firebreak::start(&dir.path().join("front"), base.clone().roles("ingest,api")).await;
    let engine = |node: &str| {
        base.clone()
            .roles("engine")
            .with("FIREBREAK_NODE", node)
            .with("FIREBREAK_AMQP_PREFETCH", "16")
    };
    let mut a = Firebreak::start(&dir.path().join("a"), engine("engine-a")).await;
    let b = Firebreak::start(&dir.path().join("b"), engine("engine-b")).await;
    let (s, _) = front
        .post(
            "/api/v1/flags",
            &json!({"key": "checkout.new-payment-flow", "enabled": true}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        front
            .post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 7))
            .await
            .0,
        202
    );
    // The sender runs throughout, like Alertmanager, with the kill and the
    // restart happening while batches are in flight.
    let (webhooks, per) = (60, 20);
    let trigger = alert_now("trigger-0001", "HighErrorRate", "checkout", 0);
    let sender = {
        let (base, trigger) = (front.base.clone(), trigger.clone());
        tokio::spawn(async move {
            for w in 0..webhooks {
                let body = storm_webhook(&trigger, w, per);
                let (s, b) =
                    post_retrying_to(&base, "/api/v1/alerts/alertmanager", &body, 100).await;
                assert_eq!(s, 202, "{b}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually(
        "engine a is processing",
        Duration::from_secs(30),
        || async { (a.metric(PROCESSED).await > 0.0).then_some(()) },
    )
    .await;
    a.kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.restart().await;
    sender.await.unwrap();
    let total = (webhooks * per + 1) as u64;
    let (_, list) = front.get("/api/v1/incidents?service=checkout").await;
    let id = list["incidents"][0]["id"].as_i64().unwrap();
    eventually("every alert stored", Duration::from_secs(60), || async {
        let (_, d) = front.get(&format!("/api/v1/incidents/{id}")).await;
        (d["counts"]["alerts"].as_u64()? == total).then_some(())
    })
    .await;
    println!(
        "engine killed and restarted: every alert stored {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let (_, list) = front.get("/api/v1/incidents?service=checkout").await;
    assert_eq!(
        list["incidents"].as_array().unwrap().len(),
        1,
        "one incident: {list}"
    );
    let action = front.action_in("checkout-kill-switch", "succeeded").await;
    let actions = front.actions().await;
    assert_eq!(actions.len(), 1, "one action: {actions:#?}");
    assert_eq!(action["previous_state"]["enabled"], true, "{action}");
    let (_, timeline) = front
        .get(&format!("/api/v1/incidents/{id}/timeline?limit=10000"))
        .await;
    let entries = timeline["entries"].as_array().unwrap();
    let count = |kind: &str| entries.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("alert_firing") as u64, total, "each alert once");
    assert_eq!(count("incident_opened"), 1);
    assert_eq!(count("action_executed"), 1, "the kill switch ran once");
    let unique: BTreeSet<String> = entries
        .iter()
        .map(|e| format!("{}|{}", e["kind"], e["ref"]))
        .collect();
    assert_eq!(unique.len(), entries.len(), "no entry twice");
    let (_, flag) = front.get("/api/v1/flags/checkout.new-payment-flow").await;
    assert_eq!(flag["enabled"], false, "{flag}");
    drop((front, a, b));
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// The engine is killed while a kill-switch call is in flight (an HTTP flag
/// provider that acts at once and answers after 5 s). The restarted engine
/// takes the action back in doubt, reads the flag, finds it already off and
/// does not call again; the state it had before, recorded before the call,
/// is what a revert restores.
#[tokio::test]
async fn a_kill_switch_cut_short_by_a_crash_still_reverts_to_the_state_before() {
    let flag = Arc::new(Mutex::new(true));
    let shared = flag.clone();
    let rec = Recorder::slow(
        move |r| {
            let mut on = shared.lock().unwrap();
            match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/flags/pay.flag") => (200, json!({"data": {"enabled": *on}})),
                ("PUT", "/flags/pay.flag") => {
                    *on = r.body["enabled"].as_bool().unwrap();
                    (200, json!({"ok": true}))
                }
                _ => (404, json!({})),
            }
        },
        |r| {
            // The first PUT (the kill) answers late; the revert at once.
            if r.method == "PUT" && r.body["enabled"] == false {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let books = playbooks_with(
        dir.path(),
        "pay.yaml",
        "name: pay-kill\nwhen:\n  alert: { matchers: ['alertname=\"Pay\"'] }\ndo:\n  - kill_switch: { provider: custom, flag: pay.flag }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[kill_switch.custom]\ntype = \"http\"\nset_url = \"{0}/flags/{{{{flag}}}}\"\nset_method = \"PUT\"\nset_body = {{ enabled = \"{{{{enabled}}}}\" }}\nget_url = \"{0}/flags/{{{{flag}}}}\"\nstate_pointer = \"/data/enabled\"\n",
            rec.base
        ),
    )
    .unwrap();
    let mut fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap()),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("p1", "Pay", "pay", 0),
    )
    .await;
    eventually(
        "the kill switch call in flight",
        Duration::from_secs(20),
        || async { (!rec.matching("PUT", "/flags/pay.flag").is_empty()).then_some(()) },
    )
    .await;
    fb.kill9();
    assert!(!*flag.lock().unwrap(), "the provider turned the flag off");
    fb.restart().await;
    let action = fb.action_in("pay-kill", "succeeded").await;
    assert_eq!(
        rec.matching("PUT", "/flags/pay.flag").len(),
        1,
        "found already off after the crash: not called again"
    );
    assert_eq!(action["result"]["verified"], true, "{action}");
    assert_eq!(
        action["previous_state"]["enabled"], true,
        "the state before the call, not the one read after the crash: {action}"
    );
    let (s, reverted) = fb
        .post(
            &format!("/api/v1/actions/{}/revert", action["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(s, 200, "{reverted}");
    eventually("the flag back on", Duration::from_secs(20), || async {
        (*flag.lock().unwrap()).then_some(())
    })
    .await;
    fb.action_in("pay-kill", "reverted").await;
}

/// While the database is away the engine commits nothing and ingest keeps
/// publishing: the two "seconds since" gauges say so.
#[tokio::test]
async fn the_metrics_tell_how_long_since_the_last_commit_and_publish() {
    let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
    let dir = tempfile::tempdir().unwrap();
    let (fb, proxy) = behind_a_database_proxy(&pg, &amqp, dir.path()).await;
    assert_eq!(
        fb.metric_opt("firebreak_seconds_since_last_commit").await,
        None,
        "no commit yet: no figure rather than a made-up one"
    );
    send(&fb, 0, 2).await;
    processed(&fb, 20.0, "the first alerts").await;
    assert!(fb
        .metric_opt("firebreak_last_commit_timestamp_seconds")
        .await
        .is_some());
    proxy.go_down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(&fb, 2, 1).await;
    let since_commit = fb.metric("firebreak_seconds_since_last_commit").await;
    let since_publish = fb.metric("firebreak_seconds_since_last_publish").await;
    println!("database away: {since_commit:.1} s since the last commit, {since_publish:.1} s since the last publish");
    assert!(
        since_commit > since_publish,
        "the engine is the one stuck: {since_commit} vs {since_publish}"
    );
    proxy.come_back();
    processed(&fb, 30.0, "every alert").await;
    assert!(fb.metric("firebreak_seconds_since_last_commit").await < since_commit);
    drop(fb);
    amqp.cleanup().await;
    pg.drop_db().await;
}

/// A PostgreSQL server of the test's own (initdb into a temporary directory,
/// on a free port), so it can be stopped and started without touching the
/// machine's shared one.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    fn bin() -> std::path::PathBuf {
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql (Debian's postgresql package)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("pg_ctl under /usr/lib/postgresql/<version>/bin")
    }

    /// Runs a PostgreSQL tool as the `postgres` user (the server refuses
    /// to run as root).
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start() -> PrivatePg {
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let pg = PrivatePg {
            dir,
            bin: PrivatePg::bin(),
            port: firebreak_tests::free_port(),
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        pg.up();
        pg
    }

    fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The database server itself restarted mid-stream (stopped for 8 s, every
/// connection gone, then started on the same data): ingest keeps answering
/// 202, nothing is lost, doubled or dead-lettered, and the engine resumes
/// on its own.
#[tokio::test]
async fn a_database_server_restart_loses_nothing() {
    let pg = PrivatePg::start();
    let amqp = Amqp::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let fb = Firebreak::start(
        dir.path(),
        Options::embedded()
            .with("FIREBREAK_DATABASE_URL", &pg.url())
            .with("FIREBREAK_AMQP_URL", &amqp.url)
            .with("FIREBREAK_AMQP_NAMESPACE", &amqp.namespace),
    )
    .await;
    send(&fb, 0, 10).await;
    processed(&fb, 100.0, "the first 100 alerts").await;
    pg.down();
    let stopped = Instant::now();
    send(&fb, 10, 10).await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(stopped.elapsed())).await;
    pg.up();
    let back = Instant::now();
    send(&fb, 20, 10).await;
    processed(&fb, 300.0, "every alert after the restart").await;
    println!(
        "database server restarted: every alert processed {:.1} s after it was back",
        back.elapsed().as_secs_f64()
    );
    stored_once(&fb, &amqp, 300).await;
    drop(fb);
    amqp.cleanup().await;
}
