//! Guarded rollouts of built-in flags, end to end in both modes: each step
//! applied through the action path and served over OFREP exactly as flagd
//! buckets; a passing gate advances a step that asks for one; a failed gate
//! turns the flag off for everyone, opens an incident and is on its
//! timeline; "restart at step 1" re-enables at the first percentage; pause,
//! resume and abort from the API and Slack; a matching alert kills a rollout
//! and joins the alert's incident. Change freezes refuse a start and hold
//! Flagger and Argo Rollouts. Flag lifecycle: owner, dates, the stale report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_domain::flagd::bucket;
use firebreak_tests::{alert_now, eventually, Firebreak, TestApp, TestAppBuilder};
use serde_json::{json, Value};

const FLAG: &str = "checkout.new-flow";

/// 200 targeting keys: enough to see both sides of every split.
fn keys() -> Vec<String> {
    (0..200).map(|i| format!("user-{i}")).collect()
}

/// The variant flagd gives `key` at `percent` % (its bucketing, from the domain).
fn flagd_variant(key: &str, percent: u64) -> &'static str {
    bucket(
        &format!("{FLAG}{key}"),
        &[("on", percent), ("off", 100 - percent)],
    )
    .unwrap()
}

async fn evaluate(fb: &Firebreak, key: &str) -> Value {
    let (s, b) = fb
        .post(
            &format!("/ofrep/v1/evaluate/flags/{FLAG}"),
            &json!({"context": {"targetingKey": key}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Every key gets the variant flagd would give it at `percent` %.
async fn served_at(fb: &Firebreak, percent: u64) {
    for key in keys() {
        let b = evaluate(fb, &key).await;
        let want = if percent == 100 {
            "on"
        } else {
            flagd_variant(&key, percent)
        };
        assert_eq!(b["variant"], want, "{key} at {percent}%: {b}");
    }
}

async fn rollout(fb: &Firebreak, id: i64) -> Value {
    let (s, b) = fb.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn at_step(fb: &Firebreak, id: i64, step: i64) -> Value {
    eventually(
        &format!("rollout {id} at step {step}"),
        Duration::from_secs(20),
        || async {
            let r = rollout(fb, id).await;
            (r["step"] == step && r["action_id"].is_null()).then_some(r)
        },
    )
    .await
}

async fn status_is(fb: &Firebreak, id: i64, status: &str) -> Value {
    eventually(
        &format!("rollout {id} {status}"),
        Duration::from_secs(20),
        || async {
            let r = rollout(fb, id).await;
            (r["status"] == status).then_some(r)
        },
    )
    .await
}

async fn gate(fb: &Firebreak, verdict: &str, version: &str) {
    let (s, b) = fb
        .post(
            "/api/v1/events/gate",
            &json!({"service": "checkout", "environment": "prod", "version": version,
                    "gate": "error-rate", "verdict": verdict, "observed": 0.002, "threshold": 0.01}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
}

async fn guarded_rollout_advances_kills_and_restarts(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let (s, b) = fb
        .put(
            &format!("/api/v1/flags/{FLAG}"),
            &json!({"owner": "team-checkout", "definition": {
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["flag"]["owner"], "team-checkout");

    // Bad plans change nothing and say which field.
    for (plan, field) in [
        (
            json!({"flag": FLAG, "service": "checkout", "steps": [{"percent": 10}, {"percent": 5}]}),
            "steps[1].percent",
        ),
        (
            json!({"flag": FLAG, "service": "checkout", "steps": []}),
            "steps",
        ),
        (
            json!({"flag": FLAG, "service": "checkout", "steps": [{"percent": 5, "hold": "soon"}]}),
            "steps[0].hold",
        ),
        (
            json!({"service": "checkout", "steps": [{"percent": 5}]}),
            "flag",
        ),
    ] {
        let (s, b) = fb.post("/api/v1/rollouts", &plan).await;
        assert_eq!((s, b["field"].as_str()), (400, Some(field)), "{plan}: {b}");
    }
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": "nope", "service": "checkout", "steps": [{"percent": 5}]}),
        )
        .await;
    assert_eq!(s, 404, "{b}");
    let (_, list) = fb.get("/api/v1/rollouts").await;
    assert_eq!(list["rollouts"], json!([]), "nothing was created");

    // 10 % → 50 % → 100 %, each step waiting for a passing gate; the last holds an hour.
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": FLAG, "service": "checkout", "environment": "prod",
                    "steps": [{"percent": 10}, {"percent": 50}, {"percent": 100, "hold": "1h"}],
                    "guards": {"require_gate_pass": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["rollout"]["id"].as_i64().unwrap();
    assert_eq!(b["action"]["kind"], "rollout_step", "{b}");
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": FLAG, "service": "checkout", "steps": [{"percent": 5}]}),
        )
        .await;
    assert_eq!(s, 409, "one active rollout per flag: {b}");
    assert!(
        b["message"].as_str().unwrap().contains(&format!("#{id}")),
        "{b}"
    );

    at_step(fb, id, 1).await;
    served_at(fb, 10).await;
    // An import over the flag the rollout owns is refused, as a PUT is, and
    // the split stays.
    let (s, b) = fb
        .post(
            "/api/v1/flags/import",
            &json!({"flags": {FLAG: {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains(&format!("rollout #{id}")),
        "{b}"
    );
    served_at(fb, 10).await;
    let r = eventually("waiting for a gate", Duration::from_secs(20), || async {
        let r = rollout(fb, id).await;
        r["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("passing gate"))
            .then_some(r)
    })
    .await;
    assert_eq!(r["percent"], 10, "{r}");

    gate(fb, "pass", "v2").await;
    at_step(fb, id, 2).await;
    served_at(fb, 50).await;
    gate(fb, "pass", "v2-b").await;
    let r = at_step(fb, id, 3).await;
    assert_eq!(r["percent"], 100);
    served_at(fb, 100).await;
    let r = eventually("holding the last step", Duration::from_secs(20), || async {
        let r = rollout(fb, id).await;
        r["waiting"]
            .as_str()
            .is_some_and(|w| w.starts_with("holding 100%"))
            .then_some(r)
    })
    .await;
    assert_eq!(r["status"], "running", "{r}");

    // A failed gate: the flag goes off for everyone, an incident opens, and
    // its timeline says why.
    gate(fb, "fail", "v2-c").await;
    let r = status_is(fb, id, "killed").await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("gate error-rate failed"),
        "{r}"
    );
    let off = eventually("the flag off", Duration::from_secs(20), || async {
        let b = evaluate(fb, "user-1").await;
        (b["reason"] == "DISABLED").then_some(b)
    })
    .await;
    assert_eq!(
        (off["value"].clone(), off["variant"].clone()),
        (json!(false), json!("off"))
    );
    for key in keys().iter().take(20) {
        assert_eq!(
            evaluate(fb, key).await["value"],
            false,
            "{key}: killed for everyone"
        );
    }
    let incident = eventually("the incident", Duration::from_secs(20), || async {
        let (_, l) = fb.get("/api/v1/incidents?service=checkout").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    let (_, i) = fb.get(&format!("/api/v1/incidents/{incident}")).await;
    assert!(
        i.to_string()
            .contains("Rollout of checkout.new-flow killed"),
        "{i}"
    );
    let entries = eventually(
        "the kill on the timeline",
        Duration::from_secs(20),
        || async {
            let (_, t) = fb
                .get(&format!("/api/v1/incidents/{incident}/timeline"))
                .await;
            let kinds: Vec<String> = t["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string())
                .collect();
            (kinds.contains(&"rollout_killed".to_string())
                && kinds.contains(&"action_executed".to_string()))
            .then_some(t)
        },
    )
    .await;
    assert!(entries.to_string().contains("killed at 100%"), "{entries}");
    let (_, actions) = fb
        .get(&format!("/api/v1/actions?incident={incident}"))
        .await;
    let kill = &actions["actions"].as_array().unwrap()[0];
    assert_eq!(
        (kill["kind"].as_str(), kill["playbook"].as_str()),
        (Some("kill_switch"), Some("rollout")),
        "{kill}"
    );

    // Pausing a killed rollout is refused; "re-enable at 10 % to verify the
    // fix" is one restart.
    let (s, b) = fb
        .post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(b["message"].as_str().unwrap().contains("killed"), "{b}");
    let (s, b) = fb
        .post(
            &format!("/api/v1/rollouts/{id}/restart"),
            &json!({"step": 1, "comment": "fix deployed"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rollout"]["generation"], 1, "{b}");
    at_step(fb, id, 1).await;
    served_at(fb, 10).await;

    // Pause and resume; abort turns the flag off through a kill switch action.
    let (s, b) = fb
        .post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await;
    assert_eq!(
        (s, b["rollout"]["status"].as_str()),
        (200, Some("paused")),
        "{b}"
    );
    gate(fb, "pass", "v3").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rollout(fb, id).await["step"],
        1,
        "a paused rollout does not advance"
    );
    let (s, _) = fb
        .post(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, b) = fb
        .post(
            &format!("/api/v1/rollouts/{id}/abort"),
            &json!({"comment": "not today"}),
        )
        .await;
    assert_eq!(
        (s, b["rollout"]["status"].as_str()),
        (200, Some("aborted")),
        "{b}"
    );
    eventually(
        "the flag off after abort",
        Duration::from_secs(20),
        || async { (evaluate(fb, "user-1").await["reason"] == "DISABLED").then_some(()) },
    )
    .await;

    // The rollout's own timeline has every step and command, once each.
    let r = rollout(fb, id).await;
    let kinds: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "rollout_started",
        "rollout_step",
        "rollout_waiting",
        "rollout_killed",
        "rollout_restarted",
        "rollout_paused",
        "rollout_resumed",
        "rollout_aborted",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let applied = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["summary"]
                .as_str()
                .unwrap()
                .contains("serves its new variant")
        })
        .count();
    assert_eq!(applied, 4, "10, 50, 100, then 10 again: {r}");
    let (_, audit) = fb.get("/api/v1/audit?limit=500").await;
    for event in ["rollout_started", "rollout_restarted", "rollout_aborted"] {
        assert!(audit.to_string().contains(event), "{event} audited");
    }

    // A firing alert the guards match kills a rollout and joins the alert's incident.
    fb.post(
        "/api/v1/flags",
        &json!({"key": "search.v2", "enabled": false}),
    )
    .await;
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": "search.v2", "service": "search",
                    "steps": [{"percent": 25, "hold": "1h"}, {"percent": 100}],
                    "guards": {"alerts": ["alertname=\"SearchLatency\""]}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let search = b["rollout"]["id"].as_i64().unwrap();
    eventually("search at 25 %", Duration::from_secs(20), || async {
        (rollout(fb, search).await["percent"] == 25).then_some(())
    })
    .await;
    // Another service's alert does not match the guard.
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("c9", "CheckoutSlow", "checkout", 0),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("s1", "SearchLatency", "search", 0),
    )
    .await;
    let r = status_is(fb, search, "killed").await;
    assert!(
        r["reason"].as_str().unwrap().contains("SearchLatency"),
        "{r}"
    );
    let search_incident = eventually("the search incident", Duration::from_secs(20), || async {
        let (_, l) = fb.get("/api/v1/incidents?service=search").await;
        l["incidents"][0]["id"].as_i64()
    })
    .await;
    eventually(
        "the kill joined the alert's incident",
        Duration::from_secs(20),
        || async {
            let (_, t) = fb
                .get(&format!("/api/v1/incidents/{search_incident}/timeline"))
                .await;
            t.to_string().contains("rollout_killed").then_some(())
        },
    )
    .await;
    let (_, f) = fb.get("/api/v1/flags/search.v2").await;
    assert_eq!(f["enabled"], false, "{f}");
}

/// A change freeze: no rollout starts, and Flagger and Argo Rollouts hold.
#[tokio::test]
async fn a_change_freeze_holds_rollouts_and_rollout_controllers() {
    let start = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let end = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let app = TestApp::embedded()
        .config(&format!(
            "[[automation.freeze]]\nname = \"black-friday\"\nservices = [\"checkout\"]\nwindow = {{ start = \"{start}\", end = \"{end}\" }}\n"
        ))
        .start()
        .await;
    let fb = &app.fb;
    fb.post("/api/v1/flags", &json!({"key": FLAG, "enabled": false}))
        .await;
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": FLAG, "service": "checkout", "steps": [{"percent": 5}]}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("black-friday"),
        "{b}"
    );
    let hook = json!({"name": "checkout", "namespace": "shop", "phase": "Promoting", "checksum": "abc123", "metadata": {}});
    let (s, b) = fb
        .post("/api/v1/gates/flagger/confirm-promotion", &hook)
        .await;
    assert_eq!((s, b["verdict"].as_str()), (403, Some("hold")), "{b}");
    assert!(
        b["reasons"]
            .to_string()
            .contains("change freeze black-friday"),
        "{b}"
    );
    let (s, b) = fb.post("/api/v1/gates/flagger/rollback", &hook).await;
    assert_eq!(s, 403, "a freeze is no reason to roll back: {b}");
    let (_, b) = fb.get("/api/v1/gates/argo/checkout").await;
    assert_eq!(b["verdict"], "hold", "{b}");
    // Another service is not frozen.
    let mut other = hook.clone();
    other["name"] = json!("search");
    assert_eq!(
        fb.post("/api/v1/gates/flagger/confirm-promotion", &other)
            .await
            .0,
        200
    );
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": FLAG, "service": "search", "steps": [{"percent": 5}]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

/// Sets a flag's last change and last evaluation `days` ago, in the store itself.
async fn age_flag(app: &TestApp, key: &str, days: i64) {
    let at = chrono::Utc::now() - chrono::Duration::days(days);
    match app.database_url() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query("UPDATE flags SET updated_at = $2, created_at = $2, last_evaluated_at = $2 WHERE key = $1")
                .bind(key)
                .bind(at)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        None => {
            let path = app.fb.data_dir.join("firebreak.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query("UPDATE flags SET updated_at = $2, created_at = $2, last_evaluated_at = $2 WHERE key = $1")
                .bind(key)
                .bind(at.timestamp_micros())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
}

async fn flag_lifecycle_and_the_stale_report(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    for (key, enabled) in [("old.on", true), ("old.off", false), ("fresh", true)] {
        let (s, b) = fb
            .post(
                "/api/v1/flags",
                &json!({"key": key, "enabled": enabled, "owner": "team-a"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        assert!(b["flag"]["created_at"].is_string(), "{b}");
        assert!(b["flag"]["last_evaluated_at"].is_null(), "{b}");
    }
    let (_, b) = fb.get("/api/v1/flags/stale?days=30").await;
    assert_eq!(b["stale"], json!([]), "nothing is stale on day one: {b}");

    // Evaluations are recorded (a few seconds later, off the request path).
    fb.post("/ofrep/v1/evaluate/flags/fresh", &json!({})).await;
    eventually(
        "last evaluated recorded",
        Duration::from_secs(20),
        || async {
            let (_, f) = fb.get("/api/v1/flags/fresh").await;
            f["last_evaluated_at"].as_str().map(str::to_string)
        },
    )
    .await;

    age_flag(&app, "old.on", 45).await;
    age_flag(&app, "old.off", 45).await;
    let (_, b) = fb.get("/api/v1/flags/stale?days=30").await;
    let stale: Vec<(String, Value)> = b["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap().to_string(), f["reasons"].clone()))
        .collect();
    assert_eq!(
        stale,
        vec![
            ("old.off".to_string(), json!(["not_evaluated"])),
            (
                "old.on".to_string(),
                json!(["fully_rolled_out", "not_evaluated"])
            ),
        ],
        "{b}"
    );
    assert_eq!(b["stale"][0]["owner"], "team-a");
    let (s, b) = fb.get("/api/v1/flags/stale?days=0").await;
    assert_eq!((s, b["field"].as_str()), (400, Some("days")), "{b}");

    let (ok, out, err) = fb.cli(&["flags", "stale", "--days", "30"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("old.on") && out.contains("fully_rolled_out,not_evaluated"),
        "{out}"
    );
    assert!(!out.contains("fresh"), "{out}");
    let (ok, out, _) = fb.cli(&["flags", "stale", "--days", "60"]).await;
    assert!(ok && out.contains("no stale flags"), "{out}");

    // A definition through PUT: checked, and kept whole.
    let (s, b) = fb
        .put("/api/v1/flags/fresh", &json!({"definition": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}))
        .await;
    assert_eq!((s, b["field"].as_str()), (400, Some("definition")), "{b}");
    let def = json!({"state": "ENABLED", "variants": {"blue": "#00c", "red": "#c00"}, "defaultVariant": "red",
                     "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "blue", null]}});
    let (s, b) = fb
        .put("/api/v1/flags/fresh", &json!({"definition": def}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = fb
        .post(
            "/ofrep/v1/evaluate/flags/fresh",
            &json!({"context": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(
        (b["value"].as_str(), b["variant"].as_str()),
        (Some("#00c"), Some("blue")),
        "{b}"
    );
    let (_, f) = fb.get("/api/v1/flags/fresh").await;
    assert_eq!(f["definition"], def);
    assert_eq!(f["owner"], "team-a", "an edit keeps what it does not name");
}

firebreak_tests::both_modes!(
    guarded_rollout_advances_kills_and_restarts,
    flag_lifecycle_and_the_stale_report
);

/// The flag pages show what a flag serves: variants of any type, the
/// targeting, the rollout and its timeline, all escaped.
#[tokio::test]
async fn the_flag_pages_show_variants_targeting_and_the_rollout() {
    let app = TestApp::embedded().start().await;
    let fb = &app.fb;
    let (s, b) = fb
        .post(
            "/api/v1/flags/import",
            &json!({"flags": {
                "banner.text": {"state": "ENABLED", "variants": {"new": "<b>Sale</b>", "off": ""},
                                "defaultVariant": "off"},
                "price.limit": {"state": "ENABLED", "variants": {"low": 10, "high": 1000}, "defaultVariant": "low",
                                "targeting": {"if": [{"in": [{"var": "country"}, ["DE", "FR"]]}, "high", null]}},
            }}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = fb
        .post(
            "/api/v1/rollouts",
            &json!({"flag": "banner.text", "service": "web", "variant": "new",
                    "steps": [{"percent": 20, "hold": "1h"}, {"percent": 100}]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["rollout"]["id"].as_i64().unwrap();
    eventually("at 20 %", Duration::from_secs(20), || async {
        (rollout(fb, id).await["percent"] == 20).then_some(())
    })
    .await;
    let page = |path: &'static str| {
        let url = format!("{}{path}", fb.base);
        async move {
            let r = firebreak_tests::client().get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.text().await.unwrap()
        }
    };
    let list = page("/flags").await;
    assert!(list.contains("by targeting, else low"), "{list}");
    assert!(
        list.contains(&format!("rollout #{id} running at 20%")),
        "{list}"
    );
    let one = page("/flags/banner.text").await;
    assert!(
        one.contains("&lt;b&gt;Sale&lt;/b&gt;"),
        "values are escaped: {one}"
    );
    assert!(!one.contains("<b>Sale</b>"), "{one}");
    assert!(
        one.contains("fractional"),
        "the rollout's split is shown: {one}"
    );
    assert!(
        one.contains("step 1 of 2") && one.contains("serves its new variant to 20%"),
        "{one}"
    );
    let (s, b) = fb
        .put(
            "/api/v1/flags/price.limit",
            &json!({"owner": "team-pricing"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let price = page("/flags/price.limit").await;
    assert!(
        price.contains("changed its owner (it is on)"),
        "an edit is in the history as what it changed: {price}"
    );
    assert!(
        price.contains("1000") && !price.contains("served when killed"),
        "{price}"
    );
}
