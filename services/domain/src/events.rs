//! Normalized events: what the engine processes, whatever door they came in by.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alertmanager::AlertStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Alert,
    Deploy,
    Gate,
    Log,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Alert,
        EventKind::Deploy,
        EventKind::Gate,
        EventKind::Log,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Alert => "alert",
            EventKind::Deploy => "deploy",
            EventKind::Gate => "gate",
            EventKind::Log => "log",
        }
    }

    /// The kind a bus routing key (`alert.checkout`, `deploy.payments`, …) carries.
    pub fn from_routing_key(key: &str) -> Option<EventKind> {
        let prefix = key.split('.').next().unwrap_or(key);
        match prefix {
            "alert" => Some(EventKind::Alert),
            "deploy" => Some(EventKind::Deploy),
            "gate" => Some(EventKind::Gate),
            "log" => Some(EventKind::Log),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One alert notification (one element of a webhook's `alerts`), with the
/// webhook-level facts the timeline needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub id: String,
    pub fingerprint: String,
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub generator_url: String,
    /// How many alerts Alertmanager dropped from this notification (`max_alerts`).
    pub truncated_alerts: u64,
}

impl AlertEvent {
    pub fn alertname(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("unnamed alert")
    }

    /// When this notification's fact happened: the start for a firing alert, the
    /// end for a resolved one.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self.status {
            AlertStatus::Firing => self.starts_at,
            AlertStatus::Resolved => self.ends_at.unwrap_or(self.starts_at),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    Started,
    Succeeded,
    Failed,
    RolledBack,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Started => "started",
            DeployStatus::Succeeded => "succeeded",
            DeployStatus::Failed => "failed",
            DeployStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<DeployStatus> {
        match s {
            "started" => Some(DeployStatus::Started),
            "succeeded" => Some(DeployStatus::Succeeded),
            "failed" => Some(DeployStatus::Failed),
            "rolled_back" => Some(DeployStatus::RolledBack),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    Canary,
    BlueGreen,
    Rolling,
    Flag,
}

impl DeployStrategy {
    pub const ALL: [DeployStrategy; 4] = [
        DeployStrategy::Canary,
        DeployStrategy::BlueGreen,
        DeployStrategy::Rolling,
        DeployStrategy::Flag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStrategy::Canary => "canary",
            DeployStrategy::BlueGreen => "blue-green",
            DeployStrategy::Rolling => "rolling",
            DeployStrategy::Flag => "flag",
        }
    }

    pub fn parse(s: &str) -> Option<DeployStrategy> {
        DeployStrategy::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub id: String,
    pub service: String,
    pub environment: Option<String>,
    pub version: String,
    pub previous_version: Option<String>,
    pub status: DeployStatus,
    pub strategy: Option<DeployStrategy>,
    pub step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub commit: Option<String>,
    pub url: Option<String>,
    pub actor: Option<String>,
    pub flags: Vec<String>,
    /// When the deployed commits were made (`committed_at`, `commits[].at`):
    /// what change lead time measures from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commit_times: Vec<DateTime<Utc>>,
}

impl DeployEvent {
    /// A deploy with what every deploy has; the optional facts empty.
    pub fn new(
        id: impl Into<String>,
        service: impl Into<String>,
        version: impl Into<String>,
        status: DeployStatus,
        started_at: DateTime<Utc>,
    ) -> DeployEvent {
        DeployEvent {
            id: id.into(),
            service: service.into(),
            environment: None,
            version: version.into(),
            previous_version: None,
            status,
            strategy: None,
            step: None,
            started_at,
            finished_at: None,
            commit: None,
            url: None,
            actor: None,
            flags: Vec::new(),
            commit_times: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateVerdict {
    Pass,
    Fail,
    Inconclusive,
}

impl GateVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            GateVerdict::Pass => "pass",
            GateVerdict::Fail => "fail",
            GateVerdict::Inconclusive => "inconclusive",
        }
    }

    pub fn parse(s: &str) -> Option<GateVerdict> {
        match s {
            "pass" => Some(GateVerdict::Pass),
            "fail" => Some(GateVerdict::Fail),
            "inconclusive" => Some(GateVerdict::Inconclusive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub id: String,
    pub service: String,
    pub environment: Option<String>,
    pub version: Option<String>,
    pub deploy_id: Option<String>,
    pub gate: String,
    pub metric: Option<String>,
    pub comparison: Option<String>,
    pub threshold: Option<f64>,
    pub baseline: Option<f64>,
    pub observed: Option<f64>,
    pub window: Option<String>,
    pub step: Option<String>,
    pub verdict: GateVerdict,
    pub evaluated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub id: String,
    pub service: String,
    pub environment: Option<String>,
    pub at: DateTime<Utc>,
    pub level: Option<String>,
    pub message: String,
    /// The stream's labels, shared by every line of the stream rather than
    /// copied into each.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The line's own labels (Loki's structured metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}
