//! Test kit: real services, fresh per test.
//!
//! - PostgreSQL: a new database per test on `FIREBREAK_TEST_POSTGRES` (default
//!   `postgres://postgres@127.0.0.1:5432`), dropped afterwards.
//! - RabbitMQ: a new namespace (exchange and queue prefix) per test on
//!   `FIREBREAK_TEST_AMQP` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! - SQLite: a temporary directory.
//!
//! A missing service fails the test with a message saying how to start it; no
//! test skips silently.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub fn postgres_base() -> String {
    std::env::var("FIREBREAK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("FIREBREAK_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A name for a database (`sep` `_`) or queue namespace (`sep` `-`) that this
/// test process owns: `fbtest<sep><pid><sep><what>`. `bash tests/run` drops
/// the leftovers of processes that have ended
/// (`tests/support/clean-stale.sh`) and keeps a running suite's.
pub fn owned_name(sep: char, what: &str) -> String {
    format!("fbtest{sep}{}{sep}{what}", std::process::id())
}

/// A fresh PostgreSQL database.
pub struct Pg {
    pub url: String,
    name: String,
}

impl Pg {
    pub async fn fresh() -> Pg {
        let base = postgres_base();
        let admin_url = format!("{base}/postgres");
        let mut admin = sqlx_connect(&admin_url).await;
        let name = owned_name('_', &short_id());
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create test database on {base}: {e}"));
        Pg {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_db(self) {
        let mut admin = sqlx_connect(&format!("{}/postgres", postgres_base())).await;
        let _ = sqlx::Executor::execute(
            &mut admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str(),
        )
        .await;
    }
}

async fn sqlx_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url}: {e}\n\
             Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             (or point FIREBREAK_TEST_POSTGRES at one)"
        )
    })
}

/// A fresh RabbitMQ namespace; `cleanup` deletes its queues and exchanges.
pub struct Amqp {
    pub url: String,
    pub namespace: String,
}

impl Amqp {
    pub async fn fresh() -> Amqp {
        let amqp = Amqp {
            url: amqp_url(),
            namespace: owned_name('-', &short_id()),
        };
        // Fail early and clearly if the broker is not there.
        let conn = amqp.connect().await;
        let _ = conn.close(200, "probe").await;
        amqp
    }

    pub async fn connect(&self) -> lapin::Connection {
        let props = lapin::ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        lapin::Connection::connect(&self.url, props)
            .await
            .unwrap_or_else(|e| {
                panic!(
                "RabbitMQ is not reachable at {}: {e}\nStart it with: rabbitmq-server -detached\n\
                 (or point FIREBREAK_TEST_AMQP at one)",
                self.url
            )
            })
    }

    pub fn topology(&self) -> firebreak_bus::Topology {
        firebreak_bus::Topology::new(&self.namespace)
    }

    pub async fn cleanup(&self) {
        let conn = self.connect().await;
        if let Ok(ch) = conn.create_channel().await {
            let t = self.topology();
            for q in [&t.queue, &t.urgent_queue, &t.dead_queue] {
                let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
            }
            for e in [&t.exchange, &t.urgent_exchange, &t.dead_exchange] {
                let _ = ch
                    .exchange_delete(e, ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "cleanup").await;
    }
}

/// The firebreak binary built by this `cargo test` run.
pub fn firebreak_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/firebreak
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("firebreak{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: run the tests with `cargo test --workspace` (it builds the binary) or `cargo build -p firebreak`",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running firebreak process.
pub struct Firebreak {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub base: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

/// How to start firebreak: extra environment, and the data directory to use.
#[derive(Clone, Default)]
pub struct Options {
    pub env: Vec<(String, String)>,
    pub roles: Option<String>,
}

/// The admin token every test Firebreak is started with (as its bootstrap
/// token), and that [`client`] sends.
pub const TEST_TOKEN: &str = "fbtest-bootstrap-admin-0123456789abcdef";

impl Options {
    /// Embedded store and queue, authentication on (the bootstrap admin token
    /// [`TEST_TOKEN`]), fast sweeps.
    pub fn embedded() -> Options {
        Options::open().with("FIREBREAK_AUTH__BOOTSTRAP_TOKEN", TEST_TOKEN)
    }

    /// Like [`Options::embedded`] but with no authentication configured:
    /// loopback-only, as a fresh install.
    pub fn open() -> Options {
        Options::default()
            .with("FIREBREAK_SWEEP_INTERVAL", "100ms")
            .with("FIREBREAK_QUIET_PERIOD", "0s")
    }

    pub fn without(mut self, key: &str) -> Options {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn backed(pg: &Pg, amqp: &Amqp) -> Options {
        Options::embedded()
            .with("FIREBREAK_DATABASE_URL", &pg.url)
            .with("FIREBREAK_AMQP_URL", &amqp.url)
            .with("FIREBREAK_AMQP_NAMESPACE", &amqp.namespace)
    }

    pub fn with(mut self, key: &str, value: &str) -> Options {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn roles(mut self, roles: &str) -> Options {
        self.roles = Some(roles.to_string());
        self
    }
}

impl Firebreak {
    /// Starts firebreak with its data in `data_dir` and waits until it is ready.
    /// A `FIREBREAK_LISTEN` in `options` chooses the address (a test that
    /// must name Firebreak's address in advance); otherwise a free port.
    pub async fn start(data_dir: &Path, options: Options) -> Firebreak {
        let mut env = options.env.clone();
        let addr: SocketAddr = match env.iter().find(|(k, _)| k == "FIREBREAK_LISTEN") {
            Some((_, listen)) => listen.parse().expect("FIREBREAK_LISTEN is an address"),
            None => {
                let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
                env.push(("FIREBREAK_LISTEN".into(), format!("{addr}")));
                addr
            }
        };
        let port = addr.port();
        env.push(("FIREBREAK_DATA_DIR".into(), data_dir.display().to_string()));
        if let Some(roles) = &options.roles {
            env.push(("FIREBREAK_ROLES".into(), roles.clone()));
        }
        let log = data_dir.join(format!("firebreak-{port}.log"));
        let mut fb = Firebreak {
            child: None,
            addr,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            log,
            env,
        };
        fb.spawn().await;
        fb
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(firebreak_bin());
        cmd.arg("serve").stdout(Stdio::null()).stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("FIREBREAK_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info,sqlx=warn,lapin=warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn firebreak"));
        let client = client();
        for _ in 0..300 {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("firebreak exited at start with {status}:\n{}", self.logs());
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("firebreak did not become ready in 30s:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// kill -9: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Stops gracefully, sets one environment variable (`FIREBREAK_ROLES`,
    /// say) and starts again on the same data directory and port.
    pub async fn restart_with(&mut self, key: &str, value: &str) {
        self.stop().await;
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self.spawn().await;
    }

    /// The peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client()
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client()
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("PUT");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs a `firebreak` command against this instance's store and
    /// configuration; its exit status, stdout and stderr.
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new(firebreak_bin());
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("FIREBREAK_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .envs(
                self.env
                    .iter()
                    .filter(|(k, _)| k != "FIREBREAK_LISTEN")
                    .cloned(),
            )
            .output()
            .await
            .expect("run firebreak");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a machine token (as the test admin) and returns a caller that uses it.
    pub async fn token(&self, name: &str, scopes: &[&str]) -> Caller {
        let (status, body) = self
            .post("/api/v1/tokens", &json!({"name": name, "scopes": scopes}))
            .await;
        assert_eq!(status, 201, "creating token {name}: {body}");
        Caller {
            base: self.base.clone(),
            token: body["token"].as_str().expect("token").to_string(),
        }
    }

    /// The value of one series on `/metrics`; fails the test naming the
    /// series (and the ones of the same name that exist) when it is missing.
    pub async fn metric(&self, series: &str) -> f64 {
        if let Some(v) = self.metric_opt(series).await {
            return v;
        }
        let name = series.split('{').next().unwrap_or(series);
        let text = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!("no series {series} on /metrics; series of {name}: {similar:?}")
    }

    /// The value of one series, `None` when it is not exported (yet).
    pub async fn metric_opt(&self, series: &str) -> Option<f64> {
        let text = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// POSTs like Alertmanager does: a 503 (or a refused connection) is
    /// retried with backoff, at most `attempts` times; any other answer is
    /// returned. Fails the test when every attempt was refused.
    pub async fn post_retrying(&self, path: &str, body: &Value, attempts: u32) -> (u16, Value) {
        post_retrying_to(&self.base, path, body, attempts).await
    }
}

/// [`Firebreak::post_retrying`] against a base URL, for a sender that runs in
/// a task of its own while the test kills or restarts the process.
pub async fn post_retrying_to(base: &str, path: &str, body: &Value, attempts: u32) -> (u16, Value) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..attempts.max(1) {
        match client()
            .post(format!("{base}{path}"))
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() != 503 => {
                let status = r.status().as_u16();
                return (status, r.json().await.unwrap_or(Value::Null));
            }
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    panic!("POST {path}: still refused after {attempts} attempts");
}

/// Which Firebreak a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite store and the embedded queue, zero configuration.
    Embedded,
    /// A fresh PostgreSQL database and RabbitMQ namespace.
    Backed,
}

/// Starts Firebreak in either mode; everything it made (process, data
/// directory, database, queues) goes away when the [`TestApp`] is dropped.
pub struct TestAppBuilder {
    mode: Mode,
    options: Options,
    playbooks: Vec<(String, String)>,
    config: Option<String>,
}

pub struct TestApp {
    pub fb: Firebreak,
    pub mode: Mode,
    pub dir: tempfile::TempDir,
    pg: Option<Pg>,
    amqp: Option<Amqp>,
}

impl TestApp {
    pub fn builder(mode: Mode) -> TestAppBuilder {
        TestAppBuilder {
            mode,
            options: Options::embedded(),
            playbooks: Vec::new(),
            config: None,
        }
    }

    pub fn embedded() -> TestAppBuilder {
        TestApp::builder(Mode::Embedded)
    }

    pub fn backed() -> TestAppBuilder {
        TestApp::builder(Mode::Backed)
    }

    /// The PostgreSQL URL of a backed app.
    pub fn database_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.url.as_str())
    }
}

impl TestAppBuilder {
    pub fn env(mut self, key: &str, value: &str) -> TestAppBuilder {
        self.options = self.options.with(key, value);
        self
    }

    /// No authentication configured: a fresh install, loopback only.
    pub fn without_auth(mut self) -> TestAppBuilder {
        self.options = self.options.without("FIREBREAK_AUTH__BOOTSTRAP_TOKEN");
        self
    }

    pub fn roles(mut self, roles: &str) -> TestAppBuilder {
        self.options = self.options.roles(roles);
        self
    }

    /// A playbook file (name, YAML) in the app's playbook directory.
    pub fn playbook(mut self, name: &str, yaml: &str) -> TestAppBuilder {
        self.playbooks.push((name.to_string(), yaml.to_string()));
        self
    }

    /// The app's configuration file (TOML).
    pub fn config(mut self, toml: &str) -> TestAppBuilder {
        self.config = Some(toml.to_string());
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = self.options;
        let (pg, amqp) = match self.mode {
            Mode::Embedded => (None, None),
            Mode::Backed => {
                let (pg, amqp) = (Pg::fresh().await, Amqp::fresh().await);
                options = options
                    .with("FIREBREAK_DATABASE_URL", &pg.url)
                    .with("FIREBREAK_AMQP_URL", &amqp.url)
                    .with("FIREBREAK_AMQP_NAMESPACE", &amqp.namespace);
                (Some(pg), Some(amqp))
            }
        };
        if !self.playbooks.is_empty() {
            let books = dir.path().join("playbooks");
            std::fs::create_dir_all(&books).expect("playbook dir");
            for (name, yaml) in &self.playbooks {
                std::fs::write(books.join(name), yaml).expect("write playbook");
            }
            options = options.with("FIREBREAK_PLAYBOOKS", &books.display().to_string());
        }
        if let Some(toml) = &self.config {
            let path = dir.path().join("firebreak.toml");
            std::fs::write(&path, toml).expect("write config");
            options = options.with("FIREBREAK_CONFIG", &path.display().to_string());
        }
        let fb = Firebreak::start(&dir.path().join("data"), options).await;
        TestApp {
            fb,
            mode: self.mode,
            dir,
            pg,
            amqp,
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = Firebreak;
    fn deref(&self) -> &Firebreak {
        &self.fb
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Firebreak {
        &mut self.fb
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.fb.kill9();
        let (pg, amqp) = (self.pg.take(), self.amqp.take());
        if pg.is_none() && amqp.is_none() {
            return;
        }
        // Drop is not async: clean up on a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Some(amqp) = amqp {
                    amqp.cleanup().await;
                }
                if let Some(pg) = pg {
                    pg.drop_db().await;
                }
            });
        })
        .join();
    }
}

/// One test body, run in both modes: `both_modes!(name, …)` makes
/// `embedded::name` and `backed::name`, each calling `name(builder)` with a
/// [`TestAppBuilder`] for its mode.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name($crate::TestApp::builder($crate::Mode::Embedded)).await; })*
        }
        mod backed {
            $(#[tokio::test] async fn $name() { super::$name($crate::TestApp::builder($crate::Mode::Backed)).await; })*
        }
    };
}

impl Drop for Firebreak {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client that authenticates as the test admin ([`TEST_TOKEN`]).
pub fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TEST_TOKEN}")).expect("header"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// An HTTP client that sends no credentials.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Requests to a Firebreak as one identity (a bearer token).
pub struct Caller {
    pub base: String,
    pub token: String,
}

impl Caller {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = anonymous()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = anonymous()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// Runs SQL on an embedded store's SQLite file as the file's owner could
/// (triggers and all), through Python's sqlite3; fails the test naming why.
pub fn sqlite_as_owner(db: &Path, sql: &str) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` until it returns `Some`, or panics naming what never happened.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A playbook file of the repository's `playbooks/` directory.
pub fn repo_playbook(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../playbooks")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("playbook {}: {e}", path.display()))
}

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// One alert of a synthetic webhook.
pub struct TestAlert<'a> {
    pub fingerprint: String,
    pub alertname: &'a str,
    pub service: &'a str,
    pub firing: bool,
    pub starts_at: &'a str,
    pub ends_at: &'a str,
}

impl<'a> TestAlert<'a> {
    pub fn firing(fingerprint: impl Into<String>, service: &'a str) -> TestAlert<'a> {
        TestAlert {
            fingerprint: fingerprint.into(),
            alertname: "HighErrorRate",
            service,
            firing: true,
            starts_at: "2026-11-23T14:02:00.123456789Z",
            ends_at: "0001-01-01T00:00:00Z",
        }
    }

    pub fn clone_alert(&self) -> TestAlert<'a> {
        TestAlert {
            fingerprint: self.fingerprint.clone(),
            ..*self
        }
    }

    pub fn resolved(mut self, ends_at: &'a str) -> TestAlert<'a> {
        self.firing = false;
        self.ends_at = ends_at;
        self
    }
}

/// An Alertmanager v4 webhook body shaped like the real ones in `fixtures/`.
pub fn webhook(alerts: &[TestAlert]) -> Value {
    let status = if alerts.iter().any(|a| a.firing) {
        "firing"
    } else {
        "resolved"
    };
    json!({
        "receiver": "firebreak",
        "status": status,
        "alerts": alerts.iter().map(|a| json!({
            "status": if a.firing { "firing" } else { "resolved" },
            "labels": {"alertname": a.alertname, "service": a.service, "env": "prod", "severity": "critical",
                       "instance": format!("{}-{}", a.service, a.fingerprint)},
            "annotations": {"summary": "5xx rate > 5%"},
            "startsAt": a.starts_at,
            "endsAt": a.ends_at,
            "generatorURL": "http://prometheus.local/graph?g0.expr=rate",
            "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {"alertname": "HighErrorRate", "env": "prod"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"HighErrorRate\"}",
        "truncatedAlerts": 0
    })
}

/// A TCP proxy whose connections can be cut, to simulate a broker or database
/// going away without touching the machine's shared services, or stalled,
/// to simulate a network that drops packets.
pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
    /// Off: new connections are closed at once (see [`Proxy::go_down`]).
    up: Arc<std::sync::atomic::AtomicBool>,
    /// False while blackholed: nothing is forwarded either way.
    flowing: tokio::sync::watch::Sender<bool>,
}

/// Copies one direction of a connection while `flowing` says so. Bytes
/// wait (in this task and the kernel's buffers) while it does not, as they
/// would behind a network that drops packets until TCP retransmits them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if flowing.wait_for(|f| *f).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flowing.wait_for(|f| *f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let tracked = connections.clone();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = up.clone();
        let (flowing, watch) = tokio::sync::watch::channel(true);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !open.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let watch = watch.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, watch.clone()),
                            pump(out_read, in_write, watch)
                        );
                    }
                });
                tracked.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            connections,
            accept,
            up,
            flowing,
        }
    }

    /// The network starts dropping packets: connections stay open (and new
    /// ones are accepted) but nothing gets through either way until
    /// [`Proxy::unblock`]. Nothing is refused, so only a client's own
    /// timeouts notice.
    pub fn blackhole(&self) {
        self.flowing.send_replace(false);
    }

    /// What waited flows again, as after a network partition heals.
    pub fn unblock(&self) {
        self.flowing.send_replace(true);
    }

    /// The upstream goes away: every open connection is dropped and new ones
    /// are closed at once, until [`Proxy::come_back`].
    pub fn go_down(&self) -> usize {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut()
    }

    pub fn come_back(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every open connection (new ones are still let through).
    pub fn cut(&self) -> usize {
        let mut conns = self.connections.lock().unwrap();
        let n = conns.len();
        for c in conns.drain(..) {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Value,
}

type Responder = dyn Fn(&Recorded) -> (u16, Value) + Send + Sync;
type Delay = dyn Fn(&Recorded) -> Duration + Send + Sync;

/// A local HTTP server standing in for a SaaS API (Slack, LaunchDarkly, Argo
/// CD): it records every request and answers with `respond`; a `_headers`
/// object in the answer is sent as response headers.
pub struct Recorder {
    pub addr: SocketAddr,
    pub base: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(
        respond: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static,
    ) -> Recorder {
        Recorder::slow(respond, |_| Duration::ZERO).await
    }

    /// Like [`Recorder::start`], but each answer waits `delay(request)`
    /// after the request was recorded and `respond` ran (a provider that acts
    /// at once and answers late).
    pub async fn slow(
        respond: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static,
        delay: impl Fn(&Recorded) -> Duration + Send + Sync + 'static,
    ) -> Recorder {
        use axum::extract::Request;
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let respond: std::sync::Arc<Responder> = std::sync::Arc::new(respond);
        let delay: std::sync::Arc<Delay> = std::sync::Arc::new(delay);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let log = requests.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let log = log.clone();
            let respond = respond.clone();
            let delay = delay.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 10 << 20)
                    .await
                    .unwrap_or_default();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or("").to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
                };
                let (status, mut answer) = respond(&rec);
                let wait = delay(&rec);
                log.lock().expect("recorder lock").push(rec);
                tokio::time::sleep(wait).await;
                // `_headers` in an answer become response headers (e.g. Retry-After).
                let mut headers = axum::http::HeaderMap::new();
                if let Some(Value::Object(h)) =
                    answer.as_object_mut().and_then(|o| o.remove("_headers"))
                {
                    for (k, v) in h {
                        if let (Ok(name), Some(Ok(value))) = (
                            axum::http::HeaderName::from_bytes(k.as_bytes()),
                            v.as_str().map(axum::http::HeaderValue::from_str),
                        ) {
                            headers.insert(name, value);
                        }
                    }
                }
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    headers,
                    axum::Json(answer),
                )
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            addr,
            base: format!("http://{addr}"),
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("recorder lock").clone()
    }

    /// Requests whose method and path match.
    pub fn matching(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Evaluates a boolean flag with the real OpenFeature Python SDK and its OFREP
/// provider (`tests/support/ofrep`), as an application would.
pub async fn openfeature_bool(base: &str, flag: &str, token: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/ofrep/evaluate.py");
    let python = std::env::var("FIREBREAK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(base)
        .arg(flag)
        .arg("true")
        .arg("--bearer")
        .arg(token)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the OpenFeature client did not answer with JSON (install it: pip install -r tests/support/ofrep/requirements.txt)\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A webhook of one firing alert for `service` starting `minutes_ago`.
pub fn alert_now(fingerprint: &str, alertname: &str, service: &str, minutes_ago: i64) -> Value {
    let starts = (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "firebreak",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "service": service},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": alertname, "service": service, "severity": "critical"},
            "annotations": {"summary": format!("{alertname} on {service}")},
            "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": fingerprint,
        }],
    })
}

/// A deploy event of `service` `version` that started `minutes_ago`.
pub fn deploy_now(service: &str, version: &str, minutes_ago: i64) -> Value {
    serde_json::json!({
        "service": service,
        "version": version,
        "status": "succeeded",
        "started_at": (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339(),
    })
}

impl Firebreak {
    /// Waits until the action list has an action of `playbook` in `status`.
    pub async fn action_in(&self, playbook: &str, status: &str) -> Value {
        eventually(
            &format!("an action of {playbook} in status {status}"),
            Duration::from_secs(20),
            || async {
                let (_, body) = self.get("/api/v1/actions?limit=500").await;
                body["actions"]
                    .as_array()?
                    .iter()
                    .find(|a| a["playbook"] == playbook && a["status"] == status)
                    .cloned()
            },
        )
        .await
    }

    /// Every action, oldest first.
    pub async fn actions(&self) -> Vec<Value> {
        let (_, body) = self.get("/api/v1/actions?limit=500").await;
        let mut v = body["actions"].as_array().cloned().unwrap_or_default();
        v.reverse();
        v
    }
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Runs a scenario of tests/support/browser/pages.mjs in Debian's chromium
/// (driven by playwright-core) and returns what it reported on its last
/// line; fails saying what is missing when node, playwright-core or the
/// browser is not installed. Screenshots go to
/// target/browser-screenshots/<scenario>/.
pub async fn browser(scenario: &str, input: Value) -> Value {
    let dir = repo_root().join("tests/support/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `bash tests/run` (it installs it) or `npm ci` in tests/support/browser"
    );
    let chromium =
        std::env::var("FIREBREAK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no browser at {chromium}: `apt-get install chromium` (bash tests/run does), or set FIREBREAK_TEST_CHROMIUM"
    );
    let shots = repo_root()
        .join("target/browser-screenshots")
        .join(scenario);
    let mut input = input;
    input["shots"] = json!(shots.display().to_string());
    let run = tokio::process::Command::new("node")
        .arg("pages.mjs")
        .arg(scenario)
        .arg(input.to_string())
        .current_dir(&dir)
        .env("FIREBREAK_TEST_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("the {scenario} browser scenario took over 3 minutes"))
        .expect("node runs (install Node.js: apt-get install nodejs npm)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {scenario} browser scenario failed:\n{stderr}\n{stdout}\n(screenshots in {})",
        shots.display()
    );
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from the browser: {stdout}\n{stderr}"));
    assert_eq!(
        report["trouble"],
        json!([]),
        "no dialog, CSP violation or script error on any page"
    );
    report
}

/// A built-in flag `flag`, on, and a person's request to turn it off
/// (for `incident`), which the test's configuration holds for approval.
pub async fn held_kill_switch(fb: &Firebreak, flag: &str, incident: Option<i64>) -> Value {
    flag_on(fb, flag).await;
    let (s, held) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": flag, "incident": incident,
                    "reason": "errors follow the v2 deploy"}),
        )
        .await;
    assert_eq!((s, held["status"].as_str()), (202, Some("held")), "{held}");
    held
}

/// Creates the built-in flag `key`, on.
pub async fn flag_on(fb: &Firebreak, key: &str) {
    let (s, b) = fb
        .post("/api/v1/flags", &json!({"key": key, "enabled": true}))
        .await;
    assert_eq!(s, 201, "{b}");
}
