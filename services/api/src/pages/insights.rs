//! The insights page: DORA's metrics and the progressive-delivery figures
//! for a range, service and environment, with weekly charts drawn as SVG on
//! the server (bar geometry computed here, drawn by the template, escaped
//! like everything else).

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use serde_json::{json, Value};

use super::{base, Csrf, PageResult, Refusal};
use crate::call::Call;
use crate::insights::InsightsQuery;

/// Seconds as the incident pages show durations ("1h 5m").
fn human(seconds: f64) -> String {
    firebreak_postmortem::context::fmt_duration(chrono::Duration::milliseconds(
        (seconds * 1000.0) as i64,
    ))
}

fn row(name: &str, what: &str, v: &Value) -> Value {
    let value = v["value"].as_f64();
    let shown = match (value, v["unit"].as_str()) {
        (None, _) => "no data".to_string(),
        (Some(x), Some("seconds")) => format!(
            "{} (p90 {})",
            human(x),
            v["p90"].as_f64().map(human).unwrap_or_default()
        ),
        (Some(x), Some("ratio")) => format!("{:.1} %", x * 100.0),
        (Some(x), Some("deploys per day")) => format!("{x:.2} a day ({:.1} a week)", x * 7.0),
        (Some(x), _) => format!("{x}"),
    };
    json!({"name": name, "what": what, "value": shown, "samples": v["samples"],
           "tier": v["tier"]["tier"]})
}

const CHART_W: f64 = 640.0;
const CHART_H: f64 = 160.0;

pub async fn page(
    Call { state, identity }: Call,
    axum::Extension(csrf): Csrf,
    q: Result<Query<InsightsQuery>, QueryRejection>,
) -> PageResult {
    let (store, pages) = (&state.store, &state.pages);
    let q = q
        .map_err(|e| Refusal::new(axum::http::StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    let v = crate::insights::compute(store.as_ref(), &q).await?;
    let rows = vec![
        row(
            "Deployment frequency",
            "successful deploys",
            &v["deployment_frequency"],
        ),
        row(
            "Change lead time",
            "commit to deploy, median",
            &v["change_lead_time"],
        ),
        row(
            "Change fail rate",
            "deploys that caused a failure",
            &v["change_fail_rate"],
        ),
        row(
            "Failed deployment recovery time",
            "failed deploy to restored, median",
            &v["failed_deployment_recovery_time"],
        ),
        row(
            "Deployment rework rate",
            "rollbacks and hotfixes",
            &v["deployment_rework_rate"],
        ),
        row(
            "Time to disable a feature",
            "incident opened to kill switch off, median",
            &v["time_to_disable_feature"],
        ),
        row(
            "Time to detect",
            "suspect change to first alert, median",
            &v["time_to_detect"],
        ),
        row(
            "Time to mitigate",
            "first alert to kill switch or rollback, median",
            &v["time_to_mitigate"],
        ),
        row(
            "Time to resolve",
            "first alert to resolved, median",
            &v["time_to_resolve"],
        ),
    ];
    let weeks = v["weekly"].as_array().cloned().unwrap_or_default();
    let max = weeks
        .iter()
        .filter_map(|w| w["deployments"].as_u64())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = CHART_W / weeks.len().max(1) as f64;
    let bars: Vec<Value> = weeks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let all = w["deployments"].as_u64().unwrap_or(0) as f64;
            let failed = w["failed_deployments"].as_u64().unwrap_or(0) as f64;
            let h_all = all / max * CHART_H;
            let h_failed = failed / max * CHART_H;
            let rate = w["change_fail_rate"].as_f64();
            json!({
                "x": format!("{:.1}", i as f64 * slot + slot * 0.1),
                "w": format!("{:.1}", slot * 0.8),
                "y_ok": format!("{:.1}", CHART_H - h_all), "h_ok": format!("{:.1}", h_all - h_failed),
                "y_failed": format!("{:.1}", CHART_H - h_failed), "h_failed": format!("{h_failed:.1}"),
                "rate_y": rate.map(|r| format!("{:.1}", CHART_H - r * CHART_H)),
                "rate_x": format!("{:.1}", i as f64 * slot + slot / 2.0),
                "week": w["week"], "deployments": all as u64, "failed": failed as u64,
                "rate": rate.map(|r| format!("{:.0} %", r * 100.0)),
            })
        })
        .collect();
    let rate_line: Vec<String> = bars
        .iter()
        .filter_map(|b| {
            Some(format!(
                "{},{}",
                b["rate_x"].as_str()?,
                b["rate_y"].as_str()?
            ))
        })
        .collect();
    let strategies: Vec<Value> = v["deploy_strategies"]["value"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, s)| json!({"name": k, "count": s["count"], "share": format!("{:.0} %", s["share"].as_f64().unwrap_or(0.0) * 100.0)}))
                .collect()
        })
        .unwrap_or_default();
    let mut ctx = base(&identity, &csrf, "Insights", "insights");
    ctx.insert(
        "filter".into(),
        json!({"from": q.from, "to": q.to, "service": q.service, "environment": q.environment}),
    );
    let when = |k: &str| {
        v[k].as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
    };
    ctx.insert(
        "range".into(),
        json!({"from": when("from"), "to": when("to")}),
    );
    ctx.insert("rows".into(), json!(rows));
    ctx.insert("bars".into(), json!(bars));
    ctx.insert("rate_line".into(), json!(rate_line.join(" ")));
    ctx.insert("chart".into(), json!({"w": CHART_W, "h": CHART_H}));
    ctx.insert("strategies".into(), json!(strategies));
    ctx.insert("action_items".into(), v["action_items"].clone());
    ctx.insert(
        "bands".into(),
        json!(firebreak_domain::insights::TIER_BANDS),
    );
    Ok(pages.render("insights", &Value::Object(ctx)))
}
