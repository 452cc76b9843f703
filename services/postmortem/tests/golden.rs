//! Golden drafts: fixture incidents rendered with the repository's template
//! must match the files in tests/golden/ byte for byte. After an intended
//! change, rewrite them with `UPDATE_GOLDEN=1 cargo test -p firebreak-postmortem`
//! and review the diff.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use firebreak_domain::action::ActionSpec;
use firebreak_domain::playbook::{FlagState, KillSwitchStep, StepAction};
use firebreak_domain::{DeployEvent, DeployStatus, GateResult, GateVerdict};
use firebreak_postmortem::context::{build, Inputs};
use firebreak_postmortem::logmine::Miner;
use firebreak_postmortem::{render_template, BUILTIN_TEMPLATE};
use firebreak_store::{ActionRow, ActionStatus, IncidentAlertRow, IncidentRow, TimelineRow};
use serde_json::json;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn deploy(version: &str, at: &str, status: DeployStatus) -> DeployEvent {
    DeployEvent {
        environment: Some("prod".into()),
        previous_version: Some("v41".into()),
        commit: Some("3f9a2c1".into()),
        actor: Some("ci".into()),
        ..DeployEvent::new(format!("dp-{version}"), "checkout", version, status, t(at))
    }
}

fn entry(at: &str, kind: &str, source: &str, summary: &str) -> TimelineRow {
    TimelineRow {
        id: 0,
        at: t(at),
        kind: kind.into(),
        source: source.into(),
        summary: summary.into(),
        ref_id: String::new(),
    }
}

fn check(name: &str, rendered: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with UPDATE_GOLDEN=1)", path.display()));
    if want != rendered {
        let diff = similar::TextDiff::from_lines(want.as_str(), rendered)
            .unified_diff()
            .header("golden", "rendered")
            .to_string();
        panic!("{name} differs from the golden file:\n{diff}");
    }
}

#[test]
fn checkout_kill_switch_incident() {
    let incident = IncidentRow {
        id: 42,
        status: "resolved".into(),
        service: Some("checkout".into()),
        environment: Some("prod".into()),
        title: "HighErrorRate on checkout (prod): 5xx rate > 5%".into(),
        severity: Some("critical".into()),
        group_key: "service=checkout,env=prod".into(),
        opened_at: t("2026-11-23T14:02:00Z"),
        resolved_at: Some(t("2026-11-23T14:20:00Z")),
        response: Default::default(),
    };
    let alerts = vec![IncidentAlertRow {
        fingerprint: "9f0e".into(),
        alertname: "HighErrorRate".into(),
        status: "resolved".into(),
        labels: json!({"alertname": "HighErrorRate", "service": "checkout", "env": "prod"}),
        starts_at: t("2026-11-23T14:02:00Z"),
        ends_at: Some(t("2026-11-23T14:20:00Z")),
    }];
    let changes = vec![
        deploy("v42", "2026-11-23T13:55:00Z", DeployStatus::Succeeded),
        deploy("v41.9", "2026-11-23T12:30:00Z", DeployStatus::Succeeded),
    ];
    let gates = vec![GateResult {
        id: "gt-1".into(),
        service: "checkout".into(),
        environment: Some("prod".into()),
        version: Some("v42".into()),
        deploy_id: Some("dp-v42".into()),
        gate: "canary-error-rate".into(),
        metric: Some("http_5xx_ratio".into()),
        comparison: Some("<=".into()),
        threshold: Some(0.01),
        baseline: Some(0.002),
        observed: Some(0.07),
        window: Some("5m".into()),
        step: Some("25%".into()),
        verdict: GateVerdict::Fail,
        evaluated_at: t("2026-11-23T13:58:00Z"),
    }];
    let timeline = vec![
        entry("2026-11-23T13:55:00Z", "deploy", "deploy:ci", "checkout v42 succeeded (from v41) in prod"),
        entry("2026-11-23T13:58:00Z", "gate", "gate:canary-error-rate", "gate canary-error-rate fail: http_5xx_ratio observed 0.07 (<= 0.01) for checkout v42"),
        entry("2026-11-23T14:02:00Z", "alert_firing", "alertmanager", "HighErrorRate firing: 5xx rate > 5%"),
        entry("2026-11-23T14:02:00Z", "incident_opened", "firebreak", "Incident opened: HighErrorRate on checkout (prod): 5xx rate > 5%"),
        entry("2026-11-23T14:02:01Z", "action_executed", "playbook:checkout-kill-switch", "turn off flag checkout.new-payment-flow (builtin), verified (checkout-kill-switch@a48800c0d73b)"),
        entry("2026-11-23T14:20:00Z", "alert_resolved", "alertmanager", "HighErrorRate resolved: 5xx rate > 5%"),
        entry("2026-11-23T14:20:00Z", "incident_resolved", "firebreak", "Incident resolved: all its alerts resolved"),
    ];
    let automation = [ActionRow {
        id: 1,
        dedupe_key: "checkout-kill-switch:0:flag:builtin::checkout.new-payment-flow:incident:42"
            .into(),
        playbook: "checkout-kill-switch".into(),
        playbook_version: "a48800c0d73b".into(),
        step_index: 0,
        kind: "kill_switch".into(),
        target: "flag:builtin::checkout.new-payment-flow".into(),
        incident_id: Some(42),
        trigger_id: "al-1".into(),
        requested_by: "engine".into(),
        status: ActionStatus::Succeeded,
        reason: None,
        spec: ActionSpec {
            step: StepAction::KillSwitch(KillSwitchStep {
                flag: "checkout.new-payment-flow".into(),
                provider: "builtin".into(),
                environment: None,
                state: FlagState::Off,
            }),
            vars: Default::default(),
            describe: "turn off flag checkout.new-payment-flow (builtin)".into(),
            four_eyes: false,
        },
        previous_state: None,
        result: None,
        attempts: 1,
        decided_by: None,
        created_at: t("2026-11-23T14:02:00Z"),
        updated_at: t("2026-11-23T14:02:01Z"),
        not_before: t("2026-11-23T14:02:00Z"),
        lease_until: None,
        lease_owner: None,
    }];
    // A person's request, approved by another: named for what they did.
    let mut asked = automation[0].clone();
    asked.id = 2;
    asked.dedupe_key = "manual:notify:42".into();
    asked.playbook = "manual".into();
    asked.kind = "notify".into();
    asked.requested_by = "user:ana".into();
    asked.decided_by = Some("user:bo".into());
    asked.spec.describe = "notify #payments-oncall".into();
    asked.created_at = t("2026-11-23T14:05:00Z");
    asked.updated_at = t("2026-11-23T14:05:10Z");
    let actions = vec![automation[0].clone(), asked];
    let mut miner = Miner::new(Some(t("2026-11-23T13:55:00Z")));
    for i in 0..90 {
        miner.add(
            t("2026-11-23T13:20:00Z") + Duration::seconds(i * 40),
            Some("info"),
            &format!("GET /api/cart/{} 200 {}ms", 7000 + i, 9 + i % 5),
        );
    }
    for i in 0..40 {
        let at = t("2026-11-23T14:01:30Z") + Duration::seconds(i * 20);
        miner.add(
            at,
            Some("error"),
            &format!(
                "POST /api/payments 502 upstream timeout after {}ms to 10.1.2.{}:8443",
                3000 + i,
                i
            ),
        );
        miner.add(
            at,
            Some("error"),
            "java.net.SocketTimeoutException: Read timed out",
        );
    }
    let patterns = miner.patterns();
    let inputs = Inputs {
        incident: &incident,
        alerts: &alerts,
        changes: &changes,
        causes: &Default::default(),
        gates: &gates,
        timeline: &timeline,
        timeline_total: timeline.len() as i64,
        actions: &actions,
        action_items: &[],
        patterns: &patterns,
        log_lines: miner.lines,
        log_window: (t("2026-11-23T12:55:00Z"), t("2026-11-23T14:20:00Z")),
        lookback: Duration::hours(2),
        tz: chrono_tz::Tz::UTC,
        now: t("2026-11-23T14:20:05Z"),
    };
    let rendered = render_template("postmortem.md.hbs", BUILTIN_TEMPLATE, &build(&inputs)).unwrap();
    check("checkout-kill-switch.md", &rendered);
    assert!(
        firebreak_postmortem::lint::check(&rendered, &["ci".to_string()])
            .findings
            .is_empty()
    );
}

#[test]
fn incident_without_changes_gates_logs_or_actions() {
    let incident = IncidentRow {
        id: 7,
        status: "resolved".into(),
        service: Some("search".into()),
        environment: None,
        title: "DiskFull on search".into(),
        severity: None,
        group_key: "service=search,env=".into(),
        opened_at: t("2026-11-23T03:00:00Z"),
        resolved_at: Some(t("2026-11-23T03:45:00Z")),
        response: Default::default(),
    };
    let alerts = vec![IncidentAlertRow {
        fingerprint: "d1".into(),
        alertname: "DiskFull".into(),
        status: "resolved".into(),
        labels: json!({"alertname": "DiskFull", "service": "search"}),
        starts_at: t("2026-11-23T03:00:00Z"),
        ends_at: Some(t("2026-11-23T03:45:00Z")),
    }];
    let timeline = vec![entry(
        "2026-11-23T03:00:00Z",
        "alert_firing",
        "alertmanager",
        "DiskFull firing",
    )];
    let inputs = Inputs {
        incident: &incident,
        alerts: &alerts,
        changes: &[],
        causes: &Default::default(),
        gates: &[],
        timeline: &timeline,
        timeline_total: 1,
        actions: &[],
        action_items: &[],
        patterns: &[],
        log_lines: 0,
        log_window: (t("2026-11-23T02:00:00Z"), t("2026-11-23T03:45:00Z")),
        lookback: Duration::hours(2),
        tz: "America/New_York".parse().unwrap(),
        now: t("2026-11-23T03:45:05Z"),
    };
    let rendered = render_template("postmortem.md.hbs", BUILTIN_TEMPLATE, &build(&inputs)).unwrap();
    check("no-changes.md", &rendered);
}
