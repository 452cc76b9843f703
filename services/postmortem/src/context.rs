//! What the template sees: the facts of one incident, computed from its
//! timeline, suspect changes, gate results, actions and log patterns. Pure:
//! the generator gathers the inputs, this shapes them.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use firebreak_domain::{DeployEvent, DeployStatus, GateResult, GateVerdict};
use std::collections::BTreeMap;

use firebreak_store::{
    ActionItemRow, ActionRow, ActionStatus, ChangeCause, IncidentAlertRow, IncidentRow, TimelineRow,
};
use serde_json::{json, Value};

use crate::logmine::Pattern;

/// Timeline entries written into the document at most; the API has them all.
pub const TIMELINE_IN_DOCUMENT: usize = 500;
/// Timeline entries a draft reads to pick its key moments from (alerts
/// are grouped by name, so most of a storm's entries fold away).
pub const TIMELINE_READ: usize = 5_000;
/// Log patterns written into the document at most.
pub const PATTERNS_IN_DOCUMENT: usize = 25;

pub struct Inputs<'a> {
    pub incident: &'a IncidentRow,
    pub alerts: &'a [IncidentAlertRow],
    pub changes: &'a [DeployEvent],
    /// People's word on which change caused the incident, by deploy id.
    pub causes: &'a BTreeMap<String, ChangeCause>,
    pub gates: &'a [GateResult],
    pub timeline: &'a [TimelineRow],
    pub timeline_total: i64,
    pub actions: &'a [ActionRow],
    /// The team's follow-ups, oldest first.
    pub action_items: &'a [ActionItemRow],
    pub patterns: &'a [Pattern],
    pub log_lines: u64,
    pub log_window: (DateTime<Utc>, DateTime<Utc>),
    pub lookback: Duration,
    pub tz: Tz,
    pub now: DateTime<Utc>,
}

pub fn fmt_time(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.num_seconds();
    let (sign, s) = if s < 0 { ("-", -s) } else { ("", s) };
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{sign}{h}h {m}m")
    } else if m > 0 {
        format!("{sign}{m}m {sec}s")
    } else {
        format!("{sign}{sec}s")
    }
}

/// A suspect change with its score and the evidence behind it.
#[derive(Debug, Clone)]
pub struct Suspect<'a> {
    pub deploy: &'a DeployEvent,
    pub score: u32,
    pub evidence: Vec<String>,
}

/// The first kill switch or rollback that took effect (and may have been
/// reverted since): when the incident was mitigated.
fn first_mitigation(actions: &[ActionRow]) -> Option<&ActionRow> {
    actions
        .iter()
        .filter(|a| {
            matches!(a.kind.as_str(), "kill_switch" | "rollback")
                && matches!(a.status, ActionStatus::Succeeded | ActionStatus::Reverted)
        })
        .min_by_key(|a| a.updated_at)
}

/// Ranks suspect changes: closeness before the first alert, same service,
/// failed gates, and whether a remediation after it was followed by recovery.
pub fn rank<'a>(i: &Inputs<'a>, first_alert: DateTime<Utc>) -> Vec<Suspect<'a>> {
    let lookback_min = i.lookback.num_minutes().max(1) as f64;
    let remediation = first_mitigation(i.actions);
    let mut out: Vec<Suspect<'a>> = i
        .changes
        .iter()
        .map(|d| {
            let mut score = 0f64;
            let mut evidence = Vec::new();
            let before = first_alert - d.started_at;
            if before >= Duration::zero() {
                let closeness = (1.0 - before.num_minutes() as f64 / lookback_min).max(0.0);
                score += 40.0 * closeness;
                evidence.push(format!(
                    "started {} before the first alert",
                    fmt_duration(before)
                ));
            } else {
                score += 5.0;
                evidence.push(format!(
                    "started {} after the first alert",
                    fmt_duration(-before)
                ));
            }
            if i.incident.service.as_deref() == Some(d.service.as_str()) {
                score += 20.0;
                evidence.push(format!("same service ({})", d.service));
            }
            for g in i.gates.iter().filter(|g| gate_of(g, d)) {
                match g.verdict {
                    GateVerdict::Fail => {
                        score += 25.0;
                        evidence.push(format!("gate {} failed{}", g.gate, gate_numbers(g)));
                    }
                    GateVerdict::Inconclusive => {
                        score += 10.0;
                        evidence.push(format!(
                            "gate {} was inconclusive{}",
                            g.gate,
                            gate_numbers(g)
                        ));
                    }
                    GateVerdict::Pass => {
                        evidence.push(format!("gate {} passed{}", g.gate, gate_numbers(g)));
                    }
                }
            }
            if d.status == DeployStatus::Failed {
                score += 5.0;
                evidence.push("the deploy itself reported failure".into());
            }
            (
                Suspect {
                    deploy: d,
                    score: score.round() as u32,
                    evidence,
                },
                before,
            )
        })
        .map(|(s, _)| s)
        .collect();
    out.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then(b.deploy.started_at.cmp(&a.deploy.started_at))
    });
    // Recovery after a remediation counts for the change it most plausibly undid:
    // the latest one before it.
    if let (Some(action), Some(resolved)) = (remediation, i.incident.resolved_at) {
        if let Some(s) = out
            .iter_mut()
            .filter(|s| s.deploy.started_at <= action.updated_at)
            .max_by_key(|s| s.deploy.started_at)
        {
            let after = resolved - action.updated_at;
            if after <= Duration::minutes(30) {
                s.score += 15;
                s.evidence.push(format!(
                    "alerts resolved {} after the {} ({})",
                    fmt_duration(after.max(Duration::zero())),
                    if action.kind == "rollback" {
                        "rollback"
                    } else {
                        "kill switch"
                    },
                    action.spec.describe.as_str()
                ));
            }
        }
        out.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then(b.deploy.started_at.cmp(&a.deploy.started_at))
        });
    }
    out
}

fn gate_of(g: &GateResult, d: &DeployEvent) -> bool {
    g.deploy_id.as_deref() == Some(d.id.as_str())
        || (g.deploy_id.is_none()
            && g.service == d.service
            && g.version.as_deref() == Some(d.version.as_str()))
}

fn gate_numbers(g: &GateResult) -> String {
    match (&g.metric, g.observed, g.threshold) {
        (Some(m), Some(o), Some(t)) => format!(
            ": {m} observed {o}, threshold {}{t}",
            g.comparison
                .as_deref()
                .map(|c| format!("{c} "))
                .unwrap_or_default()
        ),
        _ => String::new(),
    }
}

fn opt(v: Option<f64>) -> Value {
    v.map(|x| json!(x)).unwrap_or(json!(""))
}

/// When the incident began: its first alert, or its opening if that came
/// earlier (or it has no alert).
pub fn first_alert(incident: &IncidentRow, alerts: &[IncidentAlertRow]) -> DateTime<Utc> {
    alerts
        .iter()
        .map(|a| a.starts_at)
        .min()
        .map_or(incident.opened_at, |t| t.min(incident.opened_at))
}

pub fn build(i: &Inputs<'_>) -> Value {
    let tz = i.tz;
    let first_alert = first_alert(i.incident, i.alerts);
    let suspects = rank(i, first_alert);
    let top = suspects.first().filter(|s| {
        s.deploy.started_at <= first_alert && first_alert - s.deploy.started_at <= i.lookback
    });
    let end = i.incident.resolved_at.unwrap_or(i.now);
    let impact_start = top.map(|s| s.deploy.started_at).unwrap_or(first_alert);
    let mitigation = first_mitigation(i.actions);
    let (mitigated_at, mitigated_by) = match (mitigation, i.incident.resolved_at) {
        (Some(a), _) => (Some(a.updated_at), a.spec.describe.clone()),
        (None, Some(r)) => (
            Some(r),
            "the alerts resolving (no remediation action ran)".to_string(),
        ),
        (None, None) => (None, String::new()),
    };
    let services: Vec<Value> = {
        let mut s: Vec<(String, String)> = i
            .alerts
            .iter()
            .map(|a| {
                (
                    a.labels["service"].as_str().unwrap_or("").to_string(),
                    a.labels["env"]
                        .as_str()
                        .or(a.labels["environment"].as_str())
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .chain(std::iter::once((
                i.incident.service.clone().unwrap_or_default(),
                i.incident.environment.clone().unwrap_or_default(),
            )))
            .filter(|(s, _)| !s.is_empty())
            .collect();
        s.sort();
        s.dedup();
        s.into_iter()
            .map(|(service, environment)| json!({"service": service, "environment": environment}))
            .collect()
    };
    let mut alert_names: Vec<(String, u64, u64)> = Vec::new();
    for a in i.alerts {
        match alert_names.iter_mut().find(|(n, _, _)| *n == a.alertname) {
            Some(e) => {
                e.1 += 1;
                e.2 += u64::from(a.status == "firing");
            }
            None => alert_names.push((a.alertname.clone(), 1, u64::from(a.status == "firing"))),
        }
    }
    // The change a person confirmed as the cause (the latest word wins).
    let cause = i
        .changes
        .iter()
        .filter_map(|d| i.causes.get(&d.id).filter(|c| c.cause).map(|c| (d, c)))
        .max_by_key(|(_, c)| c.at);
    let reference = top.map(|s| s.deploy.started_at);
    let mut patterns: Vec<&Pattern> = i.patterns.iter().collect();
    patterns.sort_by(|a, b| b.is_new().cmp(&a.is_new()).then(b.count.cmp(&a.count)));
    let rel = |t: DateTime<Utc>| match reference {
        Some(r) if t >= r => format!("+{} after the deploy", fmt_duration(t - r)),
        Some(r) => format!("{} before the deploy", fmt_duration(r - t)),
        None => fmt_time(t, tz),
    };
    json!({
        "incident": {
            "id": i.incident.id,
            "title": i.incident.title,
            "status": i.incident.status,
            "service": i.incident.service.clone().unwrap_or_default(),
            "environment": i.incident.environment.clone().unwrap_or_default(),
            "severity": i.incident.severity.clone().unwrap_or_default(),
            "opened_at": fmt_time(i.incident.opened_at, tz),
            "resolved_at": i.incident.resolved_at.map(|t| fmt_time(t, tz)).unwrap_or_default(),
        },
        "timezone": tz.name(),
        "generated_at": fmt_time(i.now, tz),
        "impact": {
            "start": fmt_time(impact_start, tz),
            "start_basis": match top {
                Some(s) => format!("the start of the suspect deploy {} {}", s.deploy.service, s.deploy.version),
                None => "the start of the first alert".to_string(),
            },
            "end": fmt_time(end, tz),
            "ongoing": i.incident.resolved_at.is_none(),
            "duration": fmt_duration(end - impact_start),
        },
        "metrics": {
            "first_alert": fmt_time(first_alert, tz),
            "ttd_known": top.is_some(),
            "ttd": top.map(|s| fmt_duration(first_alert - s.deploy.started_at)).unwrap_or_else(|| "not known (no suspect change before the first alert)".into()),
            "mitigated_at": mitigated_at.map(|t| fmt_time(t, tz)).unwrap_or_default(),
            "mitigated_by": mitigated_by,
            "ttm": mitigated_at.map(|t| fmt_duration(t - first_alert)).unwrap_or_else(|| "not yet".into()),
            "resolved_at": i.incident.resolved_at.map(|t| fmt_time(t, tz)).unwrap_or_default(),
            "ttr": i.incident.resolved_at.map(|t| fmt_duration(t - first_alert)).unwrap_or_else(|| "not yet".into()),
        },
        "services": services,
        "alerts": alert_names.iter().map(|(n, c, f)| json!({"alertname": n, "count": c, "firing": f})).collect::<Vec<_>>(),
        "alerts_total": i.alerts.len(),
        "alerts_said": match i.alerts.len() { 1 => "1 alert".to_string(), n => format!("{n} alerts") },
        "cause": cause.map(|(d, c)| json!({
            "service": d.service,
            "version": d.version,
            "previous_version": d.previous_version.clone().unwrap_or_default(),
            "by": c.by.as_deref().map(person).unwrap_or_default(),
        })),
        "response": {
            "acknowledged_at": i.incident.response.acknowledged_at.map(|t| fmt_time(t, tz)).unwrap_or_default(),
            "acknowledged_by": i.incident.response.acknowledged_by.as_deref().map(person).unwrap_or_default(),
            "commander": i.incident.response.commander.as_deref().map(person).unwrap_or_default(),
        },
        "timeline": key_moments(i).into_iter().take(TIMELINE_IN_DOCUMENT).map(|(at, summary, source)| json!({
            "at": fmt_time(at, tz), "summary": summary, "source": source,
        })).collect::<Vec<_>>(),
        "timeline_total": i.timeline_total,
        "timeline_omitted": (i.timeline_total - i.timeline.len() as i64).max(0),
        "suspects": suspects.iter().enumerate().map(|(n, s)| json!({
            "confirmed": match i.causes.get(&s.deploy.id) {
                Some(c) if c.cause => "the cause",
                Some(_) => "not the cause",
                None => "",
            },
            "rank": n + 1,
            "service": s.deploy.service,
            "environment": s.deploy.environment.clone().unwrap_or_default(),
            "version": s.deploy.version,
            "previous_version": s.deploy.previous_version.clone().unwrap_or_default(),
            "commit": s.deploy.commit.clone().unwrap_or_default(),
            "started_at": fmt_time(s.deploy.started_at, tz),
            "score": s.score,
            "evidence": s.evidence,
        })).collect::<Vec<_>>(),
        "gates": i.gates.iter().map(|g| json!({
            "gate": g.gate,
            "metric": g.metric.clone().unwrap_or_default(),
            "comparison": g.comparison.clone().unwrap_or_default(),
            "threshold": opt(g.threshold),
            "baseline": opt(g.baseline),
            "observed": opt(g.observed),
            "verdict": g.verdict.as_str(),
            "step": g.step.clone().unwrap_or_default(),
            "version": g.version.clone().unwrap_or_default(),
            "at": fmt_time(g.evaluated_at, tz),
        })).collect::<Vec<_>>(),
        "logs": {
            "lines": i.log_lines,
            "from": fmt_time(i.log_window.0, tz),
            "to": fmt_time(i.log_window.1, tz),
            "reference": reference.map(|r| fmt_time(r, tz)).unwrap_or_default(),
            "templates": i.patterns.len(),
            "new": i.patterns.iter().filter(|p| p.is_new()).count(),
            "patterns": patterns.iter().take(PATTERNS_IN_DOCUMENT).map(|p| json!({
                "template": p.template,
                "count": p.count,
                "level": p.level.clone().unwrap_or_default(),
                "first_seen": rel(p.first_seen),
                "last_seen": rel(p.last_seen),
                "new": p.is_new(),
                "before": p.before,
                "after": p.after,
                "example": p.example,
            })).collect::<Vec<_>>(),
        },
        "actions": i.actions.iter().filter(|a| !a.dedupe_key.starts_with("escalate:")).map(|a| json!({
            "at": fmt_time(a.created_at, tz),
            "what": a.spec.describe,
            "by": actor(a),
            "playbook": a.playbook,
            "status": a.status.as_str(),
            "reason": a.reason.clone().unwrap_or_default(),
        })).collect::<Vec<_>>(),
        "action_items": i.action_items.iter().map(|it| json!({
            "id": it.id,
            "title": it.title,
            "owner": it.owner.as_deref().map(person).unwrap_or_default(),
            "due": it.due.clone().unwrap_or_default(),
            "priority": it.priority,
            "status": it.status.replace('_', " "),
            "key": it.tracker_key.clone().unwrap_or_default(),
            "url": it.tracker_url.clone().unwrap_or_default(),
            "export": match (it.tracker.as_deref(), it.export_state.as_deref()) {
                (Some(t), Some("pending")) => format!("going to {t}"),
                (Some(t), Some("failed")) => format!("{t} export failing, retried"),
                _ => String::new(),
            },
        })).collect::<Vec<_>>(),
    })
}

/// The timeline's key moments: every entry but the alerts', which come as
/// one line per alert name when the first of them fired and one when the
/// last resolved (85 alerts of one name are two lines, not 170).
fn key_moments(i: &Inputs<'_>) -> Vec<(DateTime<Utc>, String, String)> {
    let mut out: Vec<(DateTime<Utc>, String, String)> = i
        .timeline
        .iter()
        .filter(|e| !matches!(e.kind.as_str(), "alert_firing" | "alert_resolved"))
        .map(|e| (e.at, e.summary.clone(), e.source.clone()))
        .collect();
    let mut names: BTreeMap<&str, Vec<&IncidentAlertRow>> = BTreeMap::new();
    for a in i.alerts {
        names.entry(a.alertname.as_str()).or_default().push(a);
    }
    for (name, alerts) in names {
        let n = alerts.len();
        let first = alerts.iter().map(|a| a.starts_at).min();
        let plural = if n == 1 { "alert" } else { "alerts" };
        if let Some(first) = first {
            out.push((
                first,
                format!("{name} fired ({n} {plural} in this incident)"),
                "alertmanager".into(),
            ));
        }
        let all_resolved = alerts.iter().all(|a| a.status == "resolved");
        if let (true, Some(last)) = (all_resolved, alerts.iter().filter_map(|a| a.ends_at).max()) {
            out.push((
                last,
                format!("{name} resolved (the last of its {n} {plural})"),
                "alertmanager".into(),
            ));
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out
}

/// A person as the document names them (`user:ana` -> `ana`).
fn person(who: &str) -> String {
    who.split_once(':').map_or(who, |(_, n)| n).to_string()
}

/// Who an action was by: the person who asked for it, or automation (and
/// who approved it, if someone did).
fn actor(a: &ActionRow) -> String {
    let asked = a.requested_by.as_str();
    let by_person = a.playbook == "manual" || !(asked.is_empty() || asked == "engine");
    let who = if by_person {
        person(asked)
    } else {
        "automation".to_string()
    };
    match a.decided_by.as_deref() {
        Some(d) if d != asked => format!("{who}, approved by {}", person(d)),
        _ => who,
    }
}
