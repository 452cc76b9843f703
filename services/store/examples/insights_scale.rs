//! How long insights take over a year of history: 100,000 deploys (with
//! commit times and strategies) and 10,000 incidents (each with suspect
//! changes, half mitigated by a kill switch), across 50 services.
//!
//!   cargo run --release -p firebreak-store --example insights_scale [DEPLOYS] [INCIDENTS]
//!
//! Uses SQLite in a temp dir, or PostgreSQL with FIREBREAK_BENCH_DATABASE_URL
//! (an empty database). Times what `GET /api/v1/insights` does — read the
//! store, compute, encode the JSON — for every service and for one, nine
//! times each, and prints the median and the slowest.

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use firebreak_domain::action::{ActionSpec, ActionStatus, NewAction};
use firebreak_domain::correlation::{GroupKey, NewIncident};
use firebreak_domain::insights::{compute, Range};
use firebreak_domain::playbook::{FlagState, KillSwitchStep, StepAction};
use firebreak_domain::{DeployEvent, DeployStatus, DeployStrategy};
use firebreak_store::{NewAudit, Store};

const SERVICES: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let deploys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let incidents: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let url = std::env::var("FIREBREAK_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store: Arc<dyn Store> = Arc::from(firebreak_store::connect(&url).await?);
    store.migrate().await?;
    let start = Utc
        .with_ymd_and_hms(2025, 12, 1, 0, 0, 0)
        .single()
        .ok_or("time")?;
    let year = Duration::days(365);

    let load = Instant::now();
    let step = year / i32::try_from(deploys.max(1))?;
    let mut batch = Vec::with_capacity(1000);
    for n in 0..deploys {
        let at = start + step * i32::try_from(n)?;
        let status = match n % 20 {
            0 => DeployStatus::RolledBack,
            1 => DeployStatus::Failed,
            _ => DeployStatus::Succeeded,
        };
        batch.push(DeployEvent {
            environment: Some("prod".into()),
            strategy: Some(DeployStrategy::ALL[n % 4]),
            finished_at: Some(at),
            commit: Some(format!("{n:040x}")),
            commit_times: vec![
                at - Duration::hours(3),
                at - Duration::minutes(40 + (n % 60) as i64),
            ],
            ..DeployEvent::new(
                format!("d{n}"),
                format!("svc-{}", n % SERVICES),
                format!("v{n}"),
                status,
                at - Duration::minutes(10),
            )
        });
        if batch.len() == 1000 || n + 1 == deploys {
            let mut tx = store.begin().await?;
            tx.insert_deploys(&batch).await?;
            tx.commit().await?;
            batch.clear();
        }
    }
    let every = deploys / incidents.max(1);
    for chunk in (0..incidents).collect::<Vec<_>>().chunks(500) {
        let mut tx = store.begin().await?;
        let new: Vec<NewIncident> = chunk
            .iter()
            .map(|i| NewIncident {
                group: GroupKey {
                    key: format!("bench-{i}"),
                    service: Some(format!("svc-{}", (i * every) % SERVICES)),
                    environment: Some("prod".into()),
                },
                title: format!("incident {i}"),
                severity: Some(if i % 3 == 0 { "critical" } else { "warning" }.into()),
                opened_at: start
                    + step * i32::try_from(i * every).unwrap_or(0)
                    + Duration::minutes(20),
            })
            .collect();
        let ids = tx.open_incidents(&new).await?;
        let pairs: Vec<(i64, String)> = chunk
            .iter()
            .zip(&ids)
            .flat_map(|(i, id)| {
                [
                    (*id, format!("d{}", i * every)),
                    (*id, format!("d{}", (i * every).saturating_sub(SERVICES))),
                ]
            })
            .collect();
        tx.attach_changes(&pairs).await?;
        let resolved: Vec<(i64, chrono::DateTime<Utc>)> = new
            .iter()
            .zip(&ids)
            .map(|(n, id)| (*id, n.opened_at + Duration::minutes(50)))
            .collect();
        tx.resolve_incidents(&resolved).await?;
        for ((i, id), n) in chunk.iter().zip(&ids).zip(&new) {
            if i % 2 != 0 {
                continue;
            }
            let step = StepAction::KillSwitch(KillSwitchStep {
                flag: format!("flag-{i}"),
                provider: "builtin".into(),
                environment: None,
                state: FlagState::Off,
            });
            let rows = tx
                .insert_actions(&[NewAction {
                    dedupe_key: format!("bench:{i}"),
                    playbook: "bench".into(),
                    playbook_version: "1".into(),
                    step_index: 0,
                    kind: "kill_switch".into(),
                    target: format!("flag:builtin::flag-{i}"),
                    incident_id: Some(*id),
                    trigger_id: "bench".into(),
                    requested_by: "engine".into(),
                    status: ActionStatus::Succeeded,
                    reason: None,
                    spec: ActionSpec {
                        describe: step.describe(),
                        step,
                        vars: Default::default(),
                        four_eyes: false,
                    },
                    at: n.opened_at,
                }])
                .await?;
            let audit: Vec<NewAudit> = rows
                .iter()
                .flat_map(|r| {
                    [
                        NewAudit::of(
                            r,
                            "engine",
                            "executed",
                            n.opened_at + Duration::minutes(2),
                            serde_json::json!({}),
                        ),
                        NewAudit::of(
                            r,
                            "engine",
                            "verified",
                            n.opened_at + Duration::minutes(2),
                            serde_json::json!({}),
                        ),
                    ]
                })
                .collect();
            tx.insert_audit(&audit).await?;
        }
        tx.commit().await?;
    }
    let loaded = load.elapsed();
    // A year-old PostgreSQL database has statistics (autovacuum analyses
    // tables as they change); a freshly loaded one may not have them yet,
    // and its planner then joins the suspects row by row.
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        pool.close().await;
    }

    let range = Range {
        from: start,
        to: start + year,
    };
    let mut rows = Vec::new();
    for service in [None, Some("svc-7")] {
        let mut took = Vec::new();
        let mut reads = Vec::new();
        let mut size = 0;
        for _ in 0..9 {
            let t = Instant::now();
            let (d, i) = store.insights_data(&range, service, None).await?;
            reads.push(t.elapsed().as_secs_f64() * 1000.0);
            let v = compute(&range, &d, &i);
            size = serde_json::to_string(&v)?.len();
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        reads.sort_by(f64::total_cmp);
        println!(
            "{:<10} {:<8} {deploys} deploys, {incidents} incidents: median {:.0} ms (reading the store {:.0} ms), max {:.0} ms ({size} bytes of JSON)",
            store.backend(),
            service.unwrap_or("all"),
            took[4],
            reads[4],
            took[8]
        );
        rows.push(serde_json::json!({"service": service, "median_ms": took[4], "read_median_ms": reads[4], "max_ms": took[8]}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "insights", "backend": store.backend(), "deploys": deploys,
                           "incidents": incidents, "load_s": loaded.as_secs_f64(), "runs": rows})
    );
    store.close().await;
    Ok(())
}
