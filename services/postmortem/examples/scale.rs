//! How long a draft takes, and how much memory, for a big incident: 10,000
//! timeline entries and 1,000,000 log lines (web server traffic, timeouts,
//! stack traces, with ids, IPs and durations that vary).
//!
//!   cargo run --release -p firebreak-postmortem --example scale [LOG_LINES] [TIMELINE_ENTRIES]
//!
//! Uses SQLite in a temp dir, or PostgreSQL with FIREBREAK_BENCH_DATABASE_URL.
//! Prints a table and one JSON line. Peak memory is the process's VmHWM,
//! reset after the data is loaded, so it covers the draft alone.

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use firebreak_domain::correlation::{GroupKey, NewIncident};
use firebreak_domain::ids::content_id;
use firebreak_domain::timeline::NewEntry;
use firebreak_domain::LogLine;
use firebreak_postmortem::{Generator, PostmortemConfig};
use firebreak_store::Store;

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let lines: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let entries: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let url = std::env::var("FIREBREAK_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store: Arc<dyn Store> = Arc::from(firebreak_store::connect(&url).await?);
    store.migrate().await?;

    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .ok_or("time")?;
    let load = Instant::now();
    let mut tx = store.begin().await?;
    let group = GroupKey {
        key: "service=checkout,env=prod".into(),
        service: Some("checkout".into()),
        environment: Some("prod".into()),
    };
    let id = tx
        .open_incidents(&[NewIncident {
            group,
            title: "HighErrorRate on checkout (prod)".into(),
            severity: Some("critical".into()),
            opened_at: t0 + Duration::minutes(60),
        }])
        .await?[0];
    let timeline: Vec<NewEntry> = (0..entries)
        .map(|i| NewEntry {
            incident_id: id,
            at: t0 + Duration::minutes(60) + Duration::milliseconds(i as i64 * 200),
            kind: "gate",
            source: "bench".into(),
            summary: format!("entry {i}"),
            ref_id: format!("bench-{i}"),
        })
        .collect();
    tx.insert_timeline(&timeline).await?;
    tx.commit().await?;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..lines {
        let at = t0 + Duration::milliseconds(i as i64 * 7_200_000 / lines.max(1) as i64);
        let message = match i % 10 {
            0..=5 => format!(
                "GET /api/cart/{} 200 {}ms from 10.0.{}.{}",
                i,
                5 + i % 40,
                i % 255,
                i % 199
            ),
            6 if at > t0 + Duration::minutes(55) => format!(
                "POST /api/payments 502 upstream timeout after {}ms to 10.1.2.{}:8443 req={:x}",
                3000 + i % 500,
                i % 250,
                i * 7919
            ),
            6 => format!("POST /api/payments 200 {}ms", 40 + i % 60),
            7 => format!(
                "\tat com.shop.payments.Gateway.charge(Gateway.java:{})",
                100 + i % 30
            ),
            8 => format!("user {:08x}-aaaa-4bbb-8ccc-{:012x} signed in", i, i * 31),
            _ => format!(
                "cache miss for key product:{} ratio {:.2}",
                i % 1000,
                (i % 100) as f64 / 100.0
            ),
        };
        batch.push(LogLine {
            id: content_id("lg", &[&i.to_string()]),
            service: "checkout".into(),
            environment: Some("prod".into()),
            at,
            level: Some(if i % 10 >= 6 { "error" } else { "info" }.into()),
            message,
            labels: Default::default(),
            metadata: Default::default(),
        });
        if batch.len() == 10_000 || i + 1 == lines {
            let mut tx = store.begin().await?;
            tx.insert_logs(&batch).await?;
            tx.commit().await?;
            batch.clear();
        }
    }
    // The incident resolves; the suspect deploy is at +55m.
    let mut tx = store.begin().await?;
    tx.insert_deploys(&[firebreak_domain::DeployEvent {
        environment: Some("prod".into()),
        previous_version: Some("v41".into()),
        ..firebreak_domain::DeployEvent::new(
            "dp-bench",
            "checkout",
            "v42",
            firebreak_domain::DeployStatus::Succeeded,
            t0 + Duration::minutes(55),
        )
    }])
    .await?;
    tx.attach_changes(&[(id, "dp-bench".into())]).await?;
    tx.resolve_incidents(&[(id, t0 + Duration::minutes(119))])
        .await?;
    tx.commit().await?;
    let load_s = load.elapsed().as_secs_f64();

    let generator = Generator::new(
        store.clone(),
        PostmortemConfig {
            templates: std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../templates"
            )),
            ..PostmortemConfig::default()
        },
    );
    reset_peak();
    let rss_before = peak_rss_kb();
    let start = Instant::now();
    let draft = generator.draft(id).await?;
    let draft_s = start.elapsed().as_secs_f64();
    let rss_peak = peak_rss_kb();
    let patterns = draft.context["logs"]["templates"].as_u64().unwrap_or(0);
    println!("backend            {}", store.backend());
    println!("log lines          {}", draft.log_lines);
    println!("timeline entries   {entries}");
    println!("patterns           {patterns}");
    println!(
        "draft              {draft_s:.2} s ({:.0} lines/s)",
        draft.log_lines as f64 / draft_s
    );
    println!("markdown           {} bytes", draft.markdown.len());
    println!(
        "peak RSS           {} MB (before the draft: {} MB)",
        rss_peak / 1024,
        rss_before / 1024
    );
    println!("(loading the data took {load_s:.1} s)");
    println!(
        "{}",
        serde_json::json!({
            "bench": "postmortem_draft", "backend": store.backend(), "log_lines": draft.log_lines,
            "timeline_entries": entries, "patterns": patterns, "draft_seconds": draft_s,
            "peak_rss_mb": rss_peak / 1024, "rss_before_mb": rss_before / 1024,
        })
    );
    store.close().await;
    Ok(())
}
