//! Insights against a fixture history with hand-computed expected values, on
//! both stores (SQLite and PostgreSQL): deploys with strategies and commit
//! times, incidents with suspects confirmed and not, a rollback, a failed
//! gate, kill switches. Then the API end to end: an empty range, bad
//! ranges, a cause marked through the API and Slack-free, and the gauges.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use firebreak_domain::action::{ActionSpec, ActionStatus, NewAction};
use firebreak_domain::correlation::{GroupKey, NewIncident};
use firebreak_domain::insights::{compute, Range};
use firebreak_domain::playbook::{FlagState, KillSwitchStep, RollbackStep, StepAction};
use firebreak_domain::{decode, Decoded, EventKind};
use firebreak_store::{CauseWord, NewAudit, Store};
use firebreak_tests::{eventually, webhook, Pg, TestAlert, TestApp};
use serde_json::{json, Value};

/// Monday 2026-10-05 00:00 UTC: the range is two whole weeks from here.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-10-05T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// `d` days and `hh:mm` after t0.
fn at(d: i64, hm: &str) -> DateTime<Utc> {
    let (h, m) = hm.split_once(':').unwrap();
    t0() + Duration::days(d)
        + Duration::hours(h.parse().unwrap())
        + Duration::minutes(m.parse().unwrap())
}

fn deploy(
    id: &str,
    service: &str,
    version: &str,
    status: &str,
    strategy: Option<&str>,
    finished: DateTime<Utc>,
    commits: &[DateTime<Utc>],
) -> Value {
    let mut d = json!({
        "id": id, "service": service, "environment": "prod", "version": version, "status": status,
        "started_at": (finished - Duration::minutes(10)).to_rfc3339(), "finished_at": finished.to_rfc3339(),
        "commits": commits.iter().map(|c| json!({"sha": format!("{id}-{}", c.timestamp()), "at": c.to_rfc3339()})).collect::<Vec<_>>(),
    });
    if let Some(s) = strategy {
        d["strategy"] = json!(s);
    }
    d
}

async fn open_store(backend: &str) -> (Arc<dyn Store>, tempfile::TempDir, Option<Pg>) {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = if backend == "sqlite" {
        (
            format!("sqlite://{}", dir.path().join("store.db").display()),
            None,
        )
    } else {
        let pg = Pg::fresh().await;
        (pg.url.clone(), Some(pg))
    };
    let store: Arc<dyn Store> = Arc::from(firebreak_store::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    (store, dir, pg)
}

async fn incident(
    store: &dyn Store,
    key: &str,
    severity: &str,
    opened: DateTime<Utc>,
    resolved: DateTime<Utc>,
    changes: &[&str],
) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let id = tx
        .open_incidents(&[NewIncident {
            group: GroupKey {
                key: key.into(),
                service: Some("checkout".into()),
                environment: Some("prod".into()),
            },
            title: key.into(),
            severity: Some(severity.into()),
            opened_at: opened,
        }])
        .await
        .unwrap()[0];
    tx.attach_changes(
        &changes
            .iter()
            .map(|c| (id, c.to_string()))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    tx.resolve_incidents(&[(id, resolved)]).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// An executed (and, for a kill switch, verified) action of an incident at `when`.
async fn acted(
    store: &dyn Store,
    incident: i64,
    step: StepAction,
    when: DateTime<Utc>,
    verified: Option<DateTime<Utc>>,
) {
    let mut tx = store.begin().await.unwrap();
    let row = tx
        .insert_actions(&[NewAction {
            dedupe_key: format!("fixture:{incident}:{}", when.timestamp()),
            playbook: "fixture".into(),
            playbook_version: "1".into(),
            step_index: 0,
            kind: step.kind().into(),
            target: format!("fixture:{incident}"),
            incident_id: Some(incident),
            trigger_id: "fixture".into(),
            requested_by: "engine".into(),
            status: ActionStatus::Succeeded,
            reason: None,
            spec: ActionSpec {
                describe: step.describe(),
                step,
                vars: Default::default(),
                four_eyes: false,
            },
            at: when - Duration::minutes(1),
        }])
        .await
        .unwrap()
        .remove(0);
    let mut audit = vec![NewAudit::of(&row, "engine", "executed", when, json!({}))];
    if let Some(v) = verified {
        audit.push(NewAudit::of(&row, "engine", "verified", v, json!({})));
    }
    tx.insert_audit(&audit).await.unwrap();
    tx.commit().await.unwrap();
}

/// The fixture history (see the expected values in `history_gives_the_hand_computed_figures`).
async fn seed(store: &dyn Store) {
    let deploys = json!([
        deploy(
            "D1",
            "checkout",
            "v1",
            "succeeded",
            Some("canary"),
            at(1, "10:00"),
            &[at(1, "08:00"), at(1, "06:00")]
        ),
        deploy(
            "D2",
            "checkout",
            "v2",
            "succeeded",
            Some("blue-green"),
            at(2, "12:00"),
            &[at(2, "11:00")]
        ),
        deploy(
            "D3",
            "checkout",
            "v3",
            "succeeded",
            Some("canary"),
            at(3, "09:00"),
            &[at(3, "07:00")]
        ),
        deploy(
            "D4",
            "checkout",
            "v4",
            "rolled_back",
            Some("canary"),
            at(4, "10:00"),
            &[]
        ),
        deploy(
            "D5",
            "checkout",
            "v5",
            "succeeded",
            Some("rolling"),
            at(4, "11:00"),
            &[at(4, "10:30")]
        ),
        deploy(
            "D6",
            "checkout",
            "v6",
            "succeeded",
            Some("flag"),
            at(8, "10:00"),
            &[at(8, "09:00")]
        ),
        deploy(
            "D7",
            "checkout",
            "v7",
            "succeeded",
            Some("canary"),
            at(9, "10:00"),
            &[at(9, "04:00")]
        ),
        deploy("D8", "checkout", "v8", "failed", None, at(10, "10:00"), &[]),
        deploy(
            "D9",
            "checkout",
            "v9",
            "succeeded",
            Some("canary"),
            at(11, "10:00"),
            &[at(11, "09:30")]
        ),
        // Outside: after the range, in progress, another service.
        deploy(
            "D10",
            "checkout",
            "v10",
            "succeeded",
            Some("canary"),
            at(15, "10:00"),
            &[at(15, "09:00")]
        ),
        deploy(
            "D11",
            "checkout",
            "v11",
            "started",
            Some("canary"),
            at(12, "10:00"),
            &[]
        ),
        deploy(
            "D12",
            "search",
            "s1",
            "succeeded",
            Some("canary"),
            at(3, "10:00"),
            &[at(3, "09:00")]
        ),
    ]);
    let decoded = decode(
        EventKind::Deploy,
        &serde_json::to_vec(&deploys).unwrap(),
        t0(),
    )
    .unwrap();
    let Decoded::Deploys(deploys) = decoded else {
        panic!("deploys")
    };
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.insert_deploys(&deploys).await.unwrap().len(), 12);
    let gate = json!({"service": "checkout", "environment": "prod", "version": "v6", "gate": "error-rate",
                      "verdict": "fail", "evaluated_at": at(8, "10:20").to_rfc3339()});
    let Decoded::Gates(gates) =
        decode(EventKind::Gate, &serde_json::to_vec(&gate).unwrap(), t0()).unwrap()
    else {
        panic!("gate")
    };
    tx.insert_gates(&gates).await.unwrap();
    tx.commit().await.unwrap();

    // I1: D2 is its top suspect (not confirmed); first alert 12:20; a kill
    // switch executed 12:40, verified off 12:41; resolved 13:20.
    let i1 = incident(
        store,
        "i1",
        "critical",
        at(2, "12:30"),
        at(2, "13:20"),
        &["D2"],
    )
    .await;
    let mut alert = TestAlert::firing("fp-i1", "checkout");
    let starts = at(2, "12:20").to_rfc3339();
    alert.starts_at = &starts;
    let Decoded::Alerts(alerts) = decode(
        EventKind::Alert,
        &serde_json::to_vec(&webhook(&[alert])).unwrap(),
        t0(),
    )
    .unwrap() else {
        panic!("alert")
    };
    let mut tx = store.begin().await.unwrap();
    tx.insert_alerts(&[(Some(i1), &alerts[0])]).await.unwrap();
    tx.upsert_incident_alerts(&[(i1, &alerts[0])])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let kill = StepAction::KillSwitch(KillSwitchStep {
        flag: "checkout.new-flow".into(),
        provider: "builtin".into(),
        environment: None,
        state: FlagState::Off,
    });
    acted(store, i1, kill, at(2, "12:40"), Some(at(2, "12:41"))).await;

    // I2: D7 linked but a person said it was not the cause; resolved after 2 h.
    let i2 = incident(
        store,
        "i2",
        "warning",
        at(9, "11:00"),
        at(9, "13:00"),
        &["D7"],
    )
    .await;
    let audit = NewAudit::by("user:ana", "cause_marked", json!({}));
    assert!(store
        .set_cause(
            &CauseWord {
                incident_id: i2,
                deploy_id: "D7",
                cause: Some(false)
            },
            &audit,
            &[],
        )
        .await
        .unwrap());

    // I3: D8 confirmed as the cause; a rollback executed 10:45; resolved 11:30.
    let i3 = incident(
        store,
        "i3",
        "critical",
        at(10, "10:30"),
        at(10, "11:30"),
        &["D8"],
    )
    .await;
    assert!(store
        .set_cause(
            &CauseWord {
                incident_id: i3,
                deploy_id: "D8",
                cause: Some(true)
            },
            &audit,
            &[],
        )
        .await
        .unwrap());
    let marked = store.incident(i3).await.unwrap().causes;
    assert_eq!(
        (marked.len(), marked["D8"].cause, marked["D8"].by.as_deref()),
        (1, true, Some("user:ana")),
        "the incident carries the person's word"
    );
    assert!(
        !store
            .set_cause(
                &CauseWord {
                    incident_id: i3,
                    deploy_id: "D1",
                    cause: Some(true)
                },
                &audit,
                &[],
            )
            .await
            .unwrap(),
        "D1 is not linked to I3"
    );
    let rollback = StepAction::Rollback(RollbackStep {
        provider: "argocd".into(),
        to: "last_good".into(),
    });
    acted(store, i3, rollback, at(10, "10:45"), None).await;
}

fn near(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6)
}

async fn history_gives_the_hand_computed_figures(backend: &str) {
    let (store, _dir, pg) = open_store(backend).await;
    seed(store.as_ref()).await;
    let range = Range {
        from: t0(),
        to: t0() + Duration::days(14),
    };
    let (deployments, incidents) = store.insights_data(&range, None, None).await.unwrap();
    let deployments: Vec<_> = deployments
        .into_iter()
        .filter(|d| d.service == "checkout")
        .collect();
    let v = compute(&range, &deployments, &incidents);
    let check = |path: &str, want: f64| {
        let got = path.split('.').fold(&v, |v, k| &v[k]);
        assert!(
            near(got, want),
            "{backend}: {path} = {got}, want {want}\n{v:#}"
        );
    };
    // 7 successful deployments (D1 D2 D3 D5 D6 D7 D9) in 14 days.
    check("deployment_frequency.value", 0.5);
    check("deployment_frequency.per_week", 3.5);
    check("deployment_frequency.samples", 7.0);
    assert_eq!(v["deployment_frequency"]["tier"]["tier"], "high");
    assert!(v["deployment_frequency"]["tier"]["bands"]
        .as_str()
        .unwrap()
        .contains("2024"));
    // Lead times (s): 1800 1800 3600 3600 7200 7200 14400 21600.
    check("change_lead_time.value", 5400.0);
    check("change_lead_time.p90", 16560.0);
    check("change_lead_time.samples", 8.0);
    assert_eq!(v["change_lead_time"]["tier"]["tier"], "elite");
    // Failed: D2 (top suspect of I1), D4 (rolled back), D6 (failed gate),
    // D8 (confirmed cause of I3, ahead of its own failed status); D7 was
    // said not to be the cause of I2. 4 of 9.
    check("change_fail_rate.value", 4.0 / 9.0);
    check("change_fail_rate.samples", 9.0);
    assert_eq!(
        v["change_fail_rate"]["by_reason"],
        json!({"confirmed_cause": 1, "failed_gate": 1, "rolled_back": 1, "top_suspect": 1})
    );
    assert_eq!(v["change_fail_rate"]["tier"]["tier"], "low");
    // Recovery (s): D2 → I1 mitigated 40 min; D4 → D5 1 h; D6 → D7 24 h;
    // D8 → I3 mitigated 45 min.
    check("failed_deployment_recovery_time.value", 3150.0);
    check("failed_deployment_recovery_time.p90", 61560.0);
    check("failed_deployment_recovery_time.samples", 4.0);
    check("failed_deployment_recovery_time.unrecovered", 0.0);
    assert_eq!(
        v["failed_deployment_recovery_time"]["tier"]["tier"],
        "elite"
    );
    // Rework: the rollback D4 and the hotfixes D5 and D7 (they restored D4 and D6).
    check("deployment_rework_rate.value", 3.0 / 9.0);
    check("deployment_rework_rate.rollbacks", 1.0);
    check("deployment_rework_rate.hotfixes", 2.0);
    // I1: opened 12:30, kill switch verified off 12:41.
    check("time_to_disable_feature.value", 660.0);
    check("time_to_disable_feature.samples", 1.0);
    assert_eq!(
        v["deploy_strategies"]["value"],
        json!({
            "blue-green": {"count": 1, "share": 1.0 / 9.0}, "canary": {"count": 5, "share": 5.0 / 9.0},
            "flag": {"count": 1, "share": 1.0 / 9.0}, "rolling": {"count": 1, "share": 1.0 / 9.0},
            "unknown": {"count": 1, "share": 1.0 / 9.0},
        })
    );
    // Detect: I1 D2 started 11:50 → first alert 12:20; I3 D8 started 09:50 → opened 10:30.
    check("time_to_detect.value", 2100.0);
    check("time_to_detect.p90", 2340.0);
    check("time_to_detect.samples", 2.0);
    // Mitigate: I1 12:20 → 12:40; I3 10:30 → 10:45.
    check("time_to_mitigate.value", 1050.0);
    check("time_to_mitigate.p90", 1170.0);
    // Resolve: I1 1 h, I2 2 h, I3 1 h.
    check("time_to_resolve.value", 3600.0);
    check("time_to_resolve.p90", 6480.0);
    let by = v["time_to_resolve"]["by"].as_array().unwrap();
    assert_eq!(by.len(), 2, "{by:?}");
    assert_eq!(
        (by[0]["severity"].as_str(), by[0]["samples"].as_u64()),
        (Some("critical"), Some(2))
    );
    assert!(near(&by[1]["value"], 7200.0), "{by:?}");
    // Weekly: 5 deployments, 2 failed; then 4, 2 failed.
    let weeks = v["weekly"].as_array().unwrap();
    assert_eq!(weeks.len(), 2);
    assert_eq!(
        (
            weeks[0]["week"].as_str(),
            weeks[0]["deployments"].as_u64(),
            weeks[0]["failed_deployments"].as_u64()
        ),
        (Some("2026-10-05"), Some(5), Some(2))
    );
    assert!(near(&weeks[1]["change_fail_rate"], 0.5));
    assert!(!v.to_string().contains("NaN"));
    store.close().await;
    if let Some(pg) = pg {
        pg.drop_db().await;
    }
}

#[tokio::test]
async fn sqlite_history_gives_the_hand_computed_figures() {
    history_gives_the_hand_computed_figures("sqlite").await;
}

#[tokio::test]
async fn postgres_history_gives_the_hand_computed_figures() {
    history_gives_the_hand_computed_figures("postgres").await;
}

/// The API end to end: filters, empty ranges, bad ranges, marking a cause,
/// and the same figures as Prometheus gauges.
#[tokio::test]
async fn the_insights_api_and_gauges() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let (s, v) = fb
        .get("/api/v1/insights?from=2020-01-01&to=2020-01-31")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deployment_frequency"]["samples"], 0);
    assert!(
        v["change_fail_rate"]["value"].is_null() && v["change_fail_rate"]["samples"] == 0,
        "{v}"
    );
    for key in [
        "deployment_frequency",
        "change_lead_time",
        "change_fail_rate",
        "failed_deployment_recovery_time",
        "deployment_rework_rate",
        "time_to_disable_feature",
        "deploy_strategies",
        "time_to_detect",
        "time_to_mitigate",
        "time_to_resolve",
    ] {
        assert!(v[key].is_object(), "{key} in {v}");
        assert!(
            v[key]["unit"].is_string() && v[key]["samples"].is_u64(),
            "{key}: {}",
            v[key]
        );
    }
    for (q, field) in [
        ("from=2026-02-30", "from"),
        ("from=2026-03-01&to=2026-02-01", "from"),
        ("to=yesterday", "to"),
        ("colour=red", ""),
    ] {
        let (s, b) = fb.get(&format!("/api/v1/insights?{q}")).await;
        assert_eq!(s, 400, "{q}: {b}");
        if !field.is_empty() {
            assert_eq!(b["field"], field, "{q}: {b}");
        }
    }

    // A deploy with commit times, then an alert: the deploy is the incident's suspect.
    let now = Utc::now();
    let (s, b) = fb
        .post(
            "/api/v1/events/deploy",
            &json!({"service": "checkout", "environment": "prod", "version": "v2",
              "strategy": "canary", "started_at": (now - Duration::minutes(5)).to_rfc3339(),
              "committed_at": (now - Duration::hours(2)).to_rfc3339()}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mut alert = firebreak_tests::alert_now("c1", "HighErrorRate", "checkout", 0);
    alert["alerts"][0]["labels"]["env"] = json!("prod");
    let (s, b) = fb.post("/api/v1/alerts/alertmanager", &alert).await;
    assert_eq!(s, 202, "{b}");
    let (incident, deploy) = eventually(
        "the incident with its suspect",
        std::time::Duration::from_secs(20),
        || async {
            let (_, l) = fb.get("/api/v1/incidents?service=checkout").await;
            let id = l["incidents"][0]["id"].as_i64()?;
            let (_, i) = fb.get(&format!("/api/v1/incidents/{id}")).await;
            let deploy = i["suspect_changes"][0]["id"].as_str()?.to_string();
            Some((id, deploy))
        },
    )
    .await;
    let (_, v) = fb
        .get("/api/v1/insights?service=checkout&environment=prod")
        .await;
    assert_eq!(v["deployment_frequency"]["samples"], 1, "{v}");
    let lead = v["change_lead_time"]["value"].as_f64().unwrap();
    assert!(
        (lead - 6900.0).abs() < 0.01,
        "2 h minus 5 min (to the millisecond): {v}"
    );
    assert_eq!(
        v["change_fail_rate"]["by_reason"],
        json!({"top_suspect": 1}),
        "{v}"
    );

    // A person says it was not the cause: the rate drops, the timeline says who.
    let path = format!("/api/v1/incidents/{incident}/changes/{deploy}/cause");
    let (s, b) = fb
        .post(
            &path,
            &json!({"cause": false, "comment": "a config push did it"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, v) = fb.get("/api/v1/insights?service=checkout").await;
    assert_eq!(v["change_fail_rate"]["failed"], 0, "{v}");
    let (_, t) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    assert!(
        t.to_string()
            .contains("as not the cause: a config push did it"),
        "{t}"
    );
    // The incident says what the person said, and who.
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
    let change = detail["suspect_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == deploy)
        .cloned()
        .unwrap();
    assert_eq!(change["cause"], false, "{change}");
    assert!(
        change["cause_by"].is_string() && change["cause_at"].is_string(),
        "{change}"
    );
    let (s, b) = fb
        .post(
            &format!("/api/v1/incidents/{incident}/changes/nope/cause"),
            &json!({"cause": true}),
        )
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = fb.post(&path, &json!({})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("cause")), "{b}");
    let (s, _) = fb
        .token("viewer", &["read"])
        .await
        .post(&path, &json!({"cause": true}))
        .await;
    assert_eq!(s, 403, "marking a cause needs edit");
    fb.post(&path, &json!({"cause": true})).await;
    let (_, detail) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
    assert_eq!(detail["suspect_changes"][0]["cause"], true, "{detail}");
    let text_of = |path: String| {
        let url = format!("{}{path}", fb.base);
        async move {
            let r = firebreak_tests::client().get(url).send().await.unwrap();
            r.text().await.unwrap()
        }
    };
    let html = text_of(format!("/incidents/{incident}")).await;
    assert!(html.contains("Confirmed the cause by "), "{html}");

    let text = text_of("/metrics/insights".into()).await;
    assert!(
        text.contains("# TYPE firebreak_dora_change_fail_rate gauge"),
        "{text}"
    );
    assert!(
        text.contains(
            "firebreak_dora_change_fail_rate{service=\"checkout\",environment=\"prod\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("firebreak_dora_deployment_frequency_per_day{service=\"checkout\",environment=\"prod\"}"), "{text}");

    // The page: the same figures, a chart of the weeks, escaped input.
    let page = |q: &'static str| {
        let url = format!("{}/insights{q}", fb.base);
        async move {
            let r = firebreak_tests::client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, html) = page("?service=checkout").await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("Change fail rate") && html.contains("100.0 %"),
        "{html}"
    );
    assert!(
        html.contains("<svg id=\"weekly-chart\"") && html.contains("<rect"),
        "{html}"
    );
    assert!(html.contains("canary: 1 (100 %)"), "{html}");
    let (s, html) = page("?service=%3Cscript%3E").await;
    assert_eq!(s, 200);
    assert!(
        html.contains("&lt;script&gt;") && !html.contains("<script>"),
        "{html}"
    );
    let (s, _) = page("?from=never").await;
    assert_eq!(s, 400);

    // The incident page asks the same question, and its answer counts.
    let r = firebreak_tests::client()
        .get(format!("{}/incidents/{incident}", fb.base))
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Did this change cause the incident?"),
        "{html}"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .post(format!("{}{}", fb.base, path.trim_start_matches("/api/v1")))
        .bearer_auth(firebreak_tests::TEST_TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("cause=no")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let (_, v) = fb.get("/api/v1/insights?service=checkout").await;
    assert_eq!(v["change_fail_rate"]["failed"], 0, "{v}");
}
