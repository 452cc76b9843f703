//! Micro-benchmarks: log pattern mining over 1,000,000 lines, and rendering a
//! postmortem from a 10,000-entry timeline.
//!   cargo bench -p firebreak-postmortem
use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firebreak_postmortem::context::{build, Inputs};
use firebreak_postmortem::logmine::Miner;
use firebreak_postmortem::{render_template, BUILTIN_TEMPLATE};
use firebreak_store::{IncidentRow, TimelineRow};

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 5 {
            0 | 1 => format!(
                "GET /api/cart/{i} 200 {}ms from 10.0.{}.{}",
                5 + i % 40,
                i % 255,
                i % 199
            ),
            2 => format!(
                "POST /api/payments 502 upstream timeout after {}ms req={:x}",
                3000 + i % 500,
                i * 7919
            ),
            3 => format!(
                "\tat com.shop.payments.Gateway.charge(Gateway.java:{})",
                100 + i % 30
            ),
            _ => format!("user {:08x}-aaaa-4bbb-8ccc-{:012x} signed in", i, i * 31),
        })
        .collect()
}

fn mining(c: &mut Criterion) {
    let data = lines(1_000_000);
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time");
    let mut g = c.benchmark_group("log_mining");
    g.sample_size(10);
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("1000000_lines", |b| {
        b.iter(|| {
            let mut m = Miner::new(Some(t0 + Duration::minutes(30)));
            for (i, l) in data.iter().enumerate() {
                m.add(t0 + Duration::milliseconds(i as i64 * 3), None, l);
            }
            m.patterns().len()
        })
    });
    g.finish();
}

fn rendering(c: &mut Criterion) {
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time");
    let incident = IncidentRow {
        id: 1,
        status: "resolved".into(),
        service: Some("checkout".into()),
        environment: Some("prod".into()),
        title: "HighErrorRate on checkout".into(),
        severity: None,
        group_key: "k".into(),
        opened_at: t0,
        resolved_at: Some(t0 + Duration::hours(1)),
        response: Default::default(),
    };
    let timeline: Vec<TimelineRow> = (0..10_000)
        .map(|i| TimelineRow {
            id: i,
            at: t0 + Duration::seconds(i),
            kind: "alert_firing".into(),
            source: "alertmanager".into(),
            summary: format!("HighErrorRate firing on pod-{i}"),
            ref_id: String::new(),
        })
        .collect();
    let mut g = c.benchmark_group("render_postmortem");
    g.bench_function("10000_timeline_entries", |b| {
        b.iter(|| {
            let inputs = Inputs {
                incident: &incident,
                alerts: &[],
                changes: &[],
                causes: &Default::default(),
                gates: &[],
                timeline: &timeline,
                timeline_total: timeline.len() as i64,
                actions: &[],
                action_items: &[],
                patterns: &[],
                log_lines: 0,
                log_window: (t0, t0 + Duration::hours(1)),
                lookback: Duration::hours(2),
                tz: chrono_tz::Tz::UTC,
                now: t0 + Duration::hours(1),
            };
            render_template("bench", BUILTIN_TEMPLATE, &build(&inputs))
                .expect("render")
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, mining, rendering);
criterion_main!(benches);
