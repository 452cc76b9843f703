//! Timeline entries: what happened to an incident, at the time it happened.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alertmanager::AlertStatus;
use crate::events::{DeployEvent, GateResult};

/// Entry kinds, as the API shows them.
pub mod kind {
    pub const INCIDENT_OPENED: &str = "incident_opened";
    pub const INCIDENT_REOPENED: &str = "incident_reopened";
    pub const INCIDENT_RESOLVED: &str = "incident_resolved";
    pub const ALERT_FIRING: &str = "alert_firing";
    pub const ALERT_RESOLVED: &str = "alert_resolved";
    pub const ALERTS_TRUNCATED: &str = "alerts_truncated";
    pub const DEPLOY: &str = "deploy";
    pub const GATE: &str = "gate";
    pub const PLAYBOOK_SKIPPED: &str = "playbook_skipped";
    pub const ACTION_REQUESTED: &str = "action_requested";
    pub const ACTION_HELD: &str = "action_held";
    pub const ACTION_SUPPRESSED: &str = "action_suppressed";
    pub const ACTION_DRY_RUN: &str = "action_dry_run";
    pub const ACTION_APPROVED: &str = "action_approved";
    pub const ACTION_DENIED: &str = "action_denied";
    pub const ACTION_EXPIRED: &str = "action_expired";
    pub const ACTION_EXECUTED: &str = "action_executed";
    pub const ACTION_FAILED: &str = "action_failed";
    pub const ACTION_REVERTED: &str = "action_reverted";
    pub const NOTE: &str = "note";
    pub const INCIDENT_ACKNOWLEDGED: &str = "incident_acknowledged";
    pub const INCIDENT_DECLARED: &str = "incident_declared";
    pub const INCIDENT_UPDATED: &str = "incident_updated";
    pub const ACTION_ITEM: &str = "action_item";
    // A rollout's steps, on its own timeline and its incidents'.
    pub const ROLLOUT_STARTED: &str = "rollout_started";
    pub const ROLLOUT_STEP: &str = "rollout_step";
    pub const ROLLOUT_WAITING: &str = "rollout_waiting";
    pub const ROLLOUT_PAUSED: &str = "rollout_paused";
    pub const ROLLOUT_RESUMED: &str = "rollout_resumed";
    pub const ROLLOUT_COMPLETED: &str = "rollout_completed";
    pub const ROLLOUT_ABORTED: &str = "rollout_aborted";
    pub const ROLLOUT_KILLED: &str = "rollout_killed";
    pub const ROLLOUT_RESTARTED: &str = "rollout_restarted";
}

/// A new entry for the timeline. `ref_id` names what it is about (an event id, or
/// a synthetic key for lifecycle entries) so that writing it twice changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEntry {
    pub incident_id: i64,
    pub at: DateTime<Utc>,
    pub kind: &'static str,
    pub source: String,
    pub summary: String,
    pub ref_id: String,
}

/// The timeline summary of an alert notification. Alert entries are not stored
/// in the timeline table: the store reads them from the alert events themselves.
pub fn alert_summary(alertname: &str, status: &str, summary: Option<&str>) -> String {
    let verb = if status == AlertStatus::Resolved.as_str() {
        "resolved"
    } else {
        "firing"
    };
    match summary {
        Some(s) if !s.is_empty() => format!("{alertname} {verb}: {s}"),
        _ => format!("{alertname} {verb}"),
    }
}

/// The timeline kind of an alert notification with this status.
pub fn alert_kind(status: &str) -> &'static str {
    if status == AlertStatus::Resolved.as_str() {
        kind::ALERT_RESOLVED
    } else {
        kind::ALERT_FIRING
    }
}

pub fn deploy_entry(incident_id: i64, deploy: &DeployEvent) -> NewEntry {
    let mut summary = format!(
        "{} {} {}",
        deploy.service,
        deploy.version,
        deploy.status.as_str().replace('_', " ")
    );
    if let Some(prev) = &deploy.previous_version {
        summary.push_str(&format!(" (from {prev})"));
    }
    if let Some(env) = &deploy.environment {
        summary.push_str(&format!(" in {env}"));
    }
    if let Some(step) = &deploy.step {
        summary.push_str(&format!(", step {step}"));
    }
    NewEntry {
        incident_id,
        at: deploy.started_at,
        kind: kind::DEPLOY,
        source: deploy
            .actor
            .clone()
            .map(|a| format!("deploy:{a}"))
            .unwrap_or_else(|| "deploy".into()),
        summary,
        ref_id: deploy.id.clone(),
    }
}

pub fn gate_entry(incident_id: i64, gate: &GateResult) -> NewEntry {
    let mut summary = format!("gate {} {}", gate.gate, gate.verdict.as_str());
    if let Some(metric) = &gate.metric {
        summary.push_str(&format!(": {metric}"));
    }
    if let Some(observed) = gate.observed {
        summary.push_str(&format!(" observed {observed}"));
    }
    if let Some(threshold) = gate.threshold {
        let cmp = gate.comparison.as_deref().unwrap_or("threshold");
        summary.push_str(&format!(" ({cmp} {threshold})"));
    }
    if let Some(version) = &gate.version {
        summary.push_str(&format!(" for {} {version}", gate.service));
    }
    NewEntry {
        incident_id,
        at: gate.evaluated_at,
        kind: kind::GATE,
        source: format!("gate:{}", gate.gate),
        summary,
        ref_id: gate.id.clone(),
    }
}

pub fn lifecycle_entry(
    incident_id: i64,
    at: DateTime<Utc>,
    kind: &'static str,
    summary: String,
) -> NewEntry {
    NewEntry {
        incident_id,
        at,
        kind,
        source: "firebreak".into(),
        ref_id: format!("{kind}@{}", at.timestamp_micros()),
        summary,
    }
}
