//! The test harness's own promise: `bash tests/run` drops what test runs that
//! have ended left behind (databases and queues named after their process,
//! `owned_name`), and leaves alone those of a suite running beside it.
//!
//! The clean-up is run here with a prefix of this test's own
//! (`clean-stale.sh … PREFIX`), so that it touches nothing but what the test
//! made, whichever server the suite points at.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use firebreak_tests::{owned_name, postgres_base, Amqp};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sqlx::Connection;

/// The id of a process that has exited.
fn ended_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A prefix no other test or run uses.
fn own_prefix() -> String {
    format!(
        "fbclean{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Runs tests/run's clean-up.
fn clean_up(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/clean-stale.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clean-stale.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_clean_up_drops_databases_of_ended_runs_and_keeps_a_running_ones() {
    let me = std::process::id();
    // What the clean-up parses is what the kit names.
    assert_eq!(owned_name('_', "x"), format!("fbtest_{me}_x"));
    let admin_url = format!("{}/postgres", postgres_base());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url}: {e}"));
    let prefix = own_prefix();
    let live = format!("{prefix}_{me}_running");
    let ended = format!("{prefix}_{}_left_behind", ended_pid());
    // The form before names carried a process id: an older run's.
    let older = format!("{prefix}_0123456789ab");
    for name in [&live, &ended, &older] {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    clean_up(&["postgres", &admin_url, &prefix]);

    let left: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![live.clone()],
        "this running process's database stays; the ended run's and the older one go"
    );
    sqlx::query(&format!("DROP DATABASE {live}"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// The clean-up of queues is of the local broker (`rabbitmqctl` on this
/// node), which is where tests/run starts one.
const LOCAL_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn local_broker() -> lapin::Connection {
    let listed = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name"])
        .output();
    assert!(
        listed.as_ref().is_ok_and(|o| o.status.success()),
        "tests/run cleans the local RabbitMQ's queues with rabbitmqctl, which did not answer \
         ({listed:?}); start it with: rabbitmq-server -detached"
    );
    let local = Amqp {
        url: LOCAL_AMQP.into(),
        namespace: String::new(),
    };
    local.connect().await
}

async fn queue_exists(conn: &lapin::Connection, name: &str) -> bool {
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(name, passive, FieldTable::default())
        .await
        .is_ok();
    let _ = channel.close(0, "").await;
    found
}

#[tokio::test]
async fn the_clean_up_drops_queues_of_ended_runs_and_keeps_a_running_ones() {
    let me = std::process::id();
    assert_eq!(owned_name('-', "x"), format!("fbtest-{me}-x"));
    let conn = local_broker().await;
    let prefix = own_prefix();
    let live = format!("{prefix}-{me}-running.engine");
    let ended = format!("{prefix}-{}-left-behind.engine", ended_pid());
    let channel = conn.create_channel().await.unwrap();
    for name in [&live, &ended] {
        channel
            .queue_declare(name, QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }

    clean_up(&["rabbitmq", &prefix]);

    assert!(
        queue_exists(&conn, &live).await,
        "this running process's queue stays"
    );
    assert!(
        !queue_exists(&conn, &ended).await,
        "the ended run's queue goes"
    );
    channel
        .queue_delete(&live, Default::default())
        .await
        .unwrap();
    let _ = conn.close(0, "").await;
}
