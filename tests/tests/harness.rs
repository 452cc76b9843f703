//! The test harness's own promise: `bash tests/run` drops what test runs that
//! have ended left behind (databases and queues named after their process,
//! `owned_name`), and leaves alone those of a suite running beside it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use firebreak_tests::{owned_name, postgres_base, Amqp, Pg};
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

/// Runs tests/run's clean-up, as tests/run does.
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
    let admin_url = format!("{}/postgres", postgres_base());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let live = Pg::fresh().await;
    let live_name = live.url.rsplit('/').next().unwrap().to_string();
    let ended = format!("fbtest_{}_left_behind", ended_pid());
    // The form before names carried a process id: an older run's.
    let older = "fbtest_0123456789ab".to_string();
    for name in [&ended, &older] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    clean_up(&["postgres", &admin_url]);

    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname = ANY($1) ORDER BY datname",
    )
    .bind(vec![live_name.clone(), ended.clone(), older.clone()])
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![live_name],
        "this running process's database stays; the ended run's and the older one go"
    );
    live.drop_db().await;
}

async fn queue_exists(amqp: &Amqp, name: &str) -> bool {
    let conn = amqp.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(name, passive, FieldTable::default())
        .await
        .is_ok();
    let _ = conn.close(0, "").await;
    found
}

#[tokio::test]
async fn the_clean_up_drops_queues_of_ended_runs_and_keeps_a_running_ones() {
    assert!(
        std::env::var("FIREBREAK_TEST_AMQP").is_err(),
        "this test checks tests/run's clean-up of the local RabbitMQ (rabbitmqctl); \
         FIREBREAK_TEST_AMQP points the suite elsewhere, where tests/run cleans nothing"
    );
    let amqp = Amqp::fresh().await;
    let live = format!("{}.engine", amqp.namespace);
    let ended = format!("fbtest-{}-left-behind.engine", ended_pid());
    assert!(live.starts_with(&owned_name('-', "")), "{live}");
    let conn = amqp.connect().await;
    let channel = conn.create_channel().await.unwrap();
    for name in [&live, &ended] {
        channel
            .queue_declare(name, QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }

    clean_up(&["rabbitmq"]);

    assert!(
        queue_exists(&amqp, &live).await,
        "this running process's queue stays"
    );
    assert!(
        !queue_exists(&amqp, &ended).await,
        "the ended run's queue goes"
    );
    channel
        .queue_delete(&live, Default::default())
        .await
        .unwrap();
    let _ = conn.close(0, "").await;
}
