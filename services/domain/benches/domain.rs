//! Micro-benchmarks of the pure hot paths: matching one alert against many
//! playbooks, and decoding Alertmanager webhooks of 1 and 10,000 alerts.
//!   cargo bench -p firebreak-domain
use std::collections::BTreeMap;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use firebreak_domain::alertmanager::AlertStatus;
use firebreak_domain::playbook::{Facts, Playbook, Trigger, Verdict};
use firebreak_domain::{decode, AlertEvent, EventKind};

fn playbooks(n: usize) -> Vec<Playbook> {
    (0..n)
        .map(|i| {
            let text = format!(
                "name: p{i}\nwhen:\n  alert:\n    matchers: ['alertname=~\"HighErrorRate|HighLatency\"', 'service=\"svc-{i}\"', 'severity!=\"info\"']\ndo:\n  - kill_switch: {{ flag: f{i} }}\n"
            );
            Playbook::parse("bench.yaml", &text).expect("playbook")
        })
        .collect()
}

fn alert() -> AlertEvent {
    let labels: BTreeMap<String, String> = [
        ("alertname", "HighErrorRate"),
        ("service", "svc-7"),
        ("severity", "critical"),
        ("env", "prod"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    AlertEvent {
        id: "al-1".into(),
        fingerprint: "f".into(),
        status: AlertStatus::Firing,
        labels,
        annotations: BTreeMap::new(),
        starts_at: Utc::now(),
        ends_at: None,
        generator_url: String::new(),
        truncated_alerts: 0,
    }
}

fn matching(c: &mut Criterion) {
    let a = alert();
    let now = Utc::now();
    let mut g = c.benchmark_group("match_one_alert");
    for n in [10usize, 1_000, 10_000] {
        let books = playbooks(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &books, |b, books| {
            b.iter(|| {
                books
                    .iter()
                    .filter(|p| {
                        p.evaluate(&Trigger::Alert(&a), &Facts::default(), now) == Verdict::Match
                    })
                    .count()
            })
        });
    }
    g.finish();
}

fn webhook(n: usize) -> Vec<u8> {
    let alerts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "status": "firing",
                "labels": {"alertname": "HighErrorRate", "service": format!("svc-{}", i % 50), "env": "prod", "instance": format!("10.0.0.{}:9100", i % 250)},
                "annotations": {"summary": "5xx rate above 5%"},
                "startsAt": "2026-11-23T14:02:00.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
                "fingerprint": format!("{i:016x}"),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": "firing", "receiver": "fb",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am", "alerts": alerts,
    }))
    .expect("json")
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_alertmanager");
    for n in [1usize, 10_000] {
        let body = webhook(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| decode(EventKind::Alert, body, Utc::now()).expect("decode"))
        });
    }
    g.finish();
}

/// A targeted flag as the rollout issue describes it: enterprise customers in
/// the EU first, then a percentage of everyone by targeting key.
fn flag_evaluation(c: &mut Criterion) {
    use firebreak_domain::flagd::FlagDefinition;
    let flag: FlagDefinition = serde_json::from_value(serde_json::json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [
            {"and": [{"==": [{"var": "plan"}, "enterprise"]}, {"ends_with": [{"var": "email"}, ".eu"]}]}, "on",
            {"fractional": [["on", 25], ["off", 75]]}
        ]}
    }))
    .expect("definition");
    let context =
        serde_json::json!({"targetingKey": "user-4711", "plan": "free", "email": "a@shop.com"});
    let mut g = c.benchmark_group("flag");
    g.throughput(Throughput::Elements(1));
    g.bench_function("evaluate a targeted flag (rules, then a 25% split)", |b| {
        b.iter(|| {
            flag.evaluate("checkout.new-flow", &context, 0)
                .map(|r| r.reason)
        })
    });
    g.finish();
}

criterion_group!(benches, matching, parsing, flag_evaluation);
criterion_main!(benches);
