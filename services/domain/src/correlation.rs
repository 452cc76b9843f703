//! Which incident an alert belongs to. Pure decisions over the current state the
//! store hands in; the engine applies them inside one transaction.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};

use crate::alertmanager::AlertStatus;
use crate::events::AlertEvent;

/// How alerts are grouped and how incidents live and die.
#[derive(Debug, Clone)]
pub struct CorrelationPolicy {
    /// Labels that make up an incident's identity. Each entry may list
    /// alternatives separated by `|` (first one present wins): `env|environment`.
    pub group_by: Vec<String>,
    /// A resolved incident whose group fires again within this window reopens.
    pub reopen_window: Duration,
    /// All alerts resolved for this long before an incident counts as resolved.
    pub quiet_period: Duration,
    /// How far before an incident a deploy of the same service is a suspect.
    pub deploy_lookback: Duration,
}

impl Default for CorrelationPolicy {
    fn default() -> Self {
        CorrelationPolicy {
            group_by: vec!["service".into(), "env|environment".into()],
            reopen_window: Duration::minutes(30),
            quiet_period: Duration::minutes(5),
            deploy_lookback: Duration::hours(2),
        }
    }
}

/// An incident's identity, derived from an alert's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub key: String,
    pub service: Option<String>,
    pub environment: Option<String>,
}

impl CorrelationPolicy {
    pub fn group_key(&self, labels: &BTreeMap<String, String>) -> GroupKey {
        let mut key = String::new();
        for choice in &self.group_by {
            let value = choice
                .split('|')
                .find_map(|name| labels.get(name.trim()))
                .map(String::as_str)
                .unwrap_or("");
            if !key.is_empty() {
                key.push(',');
            }
            key.push_str(choice.split('|').next().unwrap_or(choice).trim());
            key.push('=');
            key.push_str(value);
        }
        // Alerts carrying none of the grouping labels still must not all collapse
        // into one incident: fall back to their alert name.
        if self
            .group_by
            .iter()
            .all(|c| c.split('|').all(|n| !labels.contains_key(n.trim())))
        {
            key = format!(
                "alertname={}",
                labels.get("alertname").map(String::as_str).unwrap_or("")
            );
        }
        GroupKey {
            key,
            service: labels.get("service").cloned(),
            environment: labels
                .get("env")
                .or_else(|| labels.get("environment"))
                .cloned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentStatus {
    Open,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentStatus> {
        match s {
            "open" => Some(IncidentStatus::Open),
            "resolved" => Some(IncidentStatus::Resolved),
            _ => None,
        }
    }
}

/// The latest incident of a group, as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentHead {
    pub id: i64,
    pub group_key: String,
    pub status: IncidentStatus,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Where one alert goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An incident that exists (open, or resolved recently enough to keep its alerts).
    Existing(i64),
    /// The n-th incident of `Plan::opened`.
    Opened(usize),
    /// A resolved notification for an alert no incident knows: kept as an event only.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewIncident {
    pub group: GroupKey,
    pub title: String,
    pub severity: Option<String>,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub opened: Vec<NewIncident>,
    /// Resolved incidents that fire again, with the time of the alert that reopens them.
    pub reopened: Vec<(i64, DateTime<Utc>)>,
    /// One target per input alert, in input order.
    pub targets: Vec<Target>,
}

/// Places new alerts (already de-duplicated) into incidents. `heads` holds the
/// latest incident of each group key the alerts belong to.
pub fn plan(
    alerts: &[(GroupKey, &AlertEvent)],
    heads: &HashMap<String, IncidentHead>,
    policy: &CorrelationPolicy,
) -> Plan {
    let mut plan = Plan::default();
    // Decisions made earlier in this batch win over the stored heads.
    let mut decided: HashMap<&str, Target> = HashMap::new();
    for (group, alert) in alerts {
        let target = match decided.get(group.key.as_str()) {
            Some(Target::Opened(i)) => {
                if alert.status == AlertStatus::Firing
                    && alert.starts_at < plan.opened[*i].opened_at
                {
                    plan.opened[*i].opened_at = alert.starts_at;
                }
                Target::Opened(*i)
            }
            Some(t) => *t,
            None => {
                let t = place(group, alert, heads.get(&group.key), policy, &mut plan);
                if t != Target::None {
                    decided.insert(group.key.as_str(), t);
                }
                t
            }
        };
        plan.targets.push(target);
    }
    plan
}

fn place(
    group: &GroupKey,
    alert: &AlertEvent,
    head: Option<&IncidentHead>,
    policy: &CorrelationPolicy,
    plan: &mut Plan,
) -> Target {
    let at = alert.occurred_at();
    if let Some(head) = head {
        match head.status {
            IncidentStatus::Open => return Target::Existing(head.id),
            IncidentStatus::Resolved => {
                let recent = head
                    .resolved_at
                    .is_none_or(|r| at <= r + policy.reopen_window);
                if recent {
                    if alert.status == AlertStatus::Firing {
                        plan.reopened.push((head.id, at));
                    }
                    return Target::Existing(head.id);
                }
            }
        }
    }
    if alert.status == AlertStatus::Resolved {
        return Target::None;
    }
    plan.opened.push(NewIncident {
        group: group.clone(),
        title: incident_title(alert, group),
        severity: alert.labels.get("severity").cloned(),
        opened_at: alert.starts_at,
    });
    Target::Opened(plan.opened.len() - 1)
}

fn incident_title(alert: &AlertEvent, group: &GroupKey) -> String {
    let mut title = alert.alertname().to_string();
    match (&group.service, &group.environment) {
        (Some(s), Some(e)) => title.push_str(&format!(" on {s} ({e})")),
        (Some(s), None) => title.push_str(&format!(" on {s}")),
        _ => {}
    }
    if let Some(summary) = alert.annotations.get("summary") {
        title.push_str(": ");
        title.push_str(summary);
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert(status: AlertStatus, fp: &str, minute: u32, service: &str) -> AlertEvent {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 23, 14, minute, 0)
            .single()
            .expect("time");
        AlertEvent {
            id: format!("{fp}-{minute}-{}", status.as_str()),
            fingerprint: fp.into(),
            status,
            labels: [
                ("alertname", "HighErrorRate"),
                ("service", service),
                ("env", "prod"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: BTreeMap::new(),
            starts_at: t,
            ends_at: (status == AlertStatus::Resolved).then_some(t),
            generator_url: String::new(),
            truncated_alerts: 0,
        }
    }

    fn keyed<'a>(
        p: &CorrelationPolicy,
        alerts: &'a [AlertEvent],
    ) -> Vec<(GroupKey, &'a AlertEvent)> {
        alerts.iter().map(|a| (p.group_key(&a.labels), a)).collect()
    }

    #[test]
    fn group_key_uses_first_present_alternative() {
        let p = CorrelationPolicy::default();
        let mut labels = BTreeMap::new();
        labels.insert("service".to_string(), "checkout".to_string());
        labels.insert("environment".to_string(), "prod".to_string());
        let g = p.group_key(&labels);
        assert_eq!(g.key, "service=checkout,env=prod");
        assert_eq!(g.environment.as_deref(), Some("prod"));
    }

    #[test]
    fn alerts_without_group_labels_group_by_alertname() {
        let p = CorrelationPolicy::default();
        let labels: BTreeMap<String, String> =
            [("alertname".to_string(), "DiskFull".to_string())].into();
        assert_eq!(p.group_key(&labels).key, "alertname=DiskFull");
    }

    #[test]
    fn first_firing_alerts_open_one_incident_per_group() {
        let p = CorrelationPolicy::default();
        let alerts = vec![
            alert(AlertStatus::Firing, "a", 5, "checkout"),
            alert(AlertStatus::Firing, "b", 2, "checkout"),
            alert(AlertStatus::Firing, "c", 3, "payments"),
        ];
        let plan = plan(&keyed(&p, &alerts), &HashMap::new(), &p);
        assert_eq!(plan.opened.len(), 2);
        assert_eq!(
            plan.targets,
            vec![Target::Opened(0), Target::Opened(0), Target::Opened(1)]
        );
        assert_eq!(
            plan.opened[0].opened_at, alerts[1].starts_at,
            "opened at the earliest start"
        );
        assert!(plan.opened[0]
            .title
            .starts_with("HighErrorRate on checkout (prod)"));
    }

    #[test]
    fn open_incident_absorbs_alerts_and_resolved_orphans_are_kept_unplaced() {
        let p = CorrelationPolicy::default();
        let alerts = vec![
            alert(AlertStatus::Firing, "a", 5, "checkout"),
            alert(AlertStatus::Resolved, "z", 5, "other"),
        ];
        let key = p.group_key(&alerts[0].labels).key;
        let heads = HashMap::from([(
            key.clone(),
            IncidentHead {
                id: 7,
                group_key: key,
                status: IncidentStatus::Open,
                resolved_at: None,
            },
        )]);
        let plan = plan(&keyed(&p, &alerts), &heads, &p);
        assert_eq!(plan.targets, vec![Target::Existing(7), Target::None]);
        assert!(plan.opened.is_empty());
    }

    #[test]
    fn flapping_reopens_within_window_and_opens_new_after_it() {
        let p = CorrelationPolicy::default();
        let refire = vec![alert(AlertStatus::Firing, "a", 40, "checkout")];
        let key = p.group_key(&refire[0].labels).key;
        let resolved_at = Utc.with_ymd_and_hms(2026, 11, 23, 14, 20, 0).single();
        let heads = HashMap::from([(
            key.clone(),
            IncidentHead {
                id: 3,
                group_key: key.clone(),
                status: IncidentStatus::Resolved,
                resolved_at,
            },
        )]);
        let within = plan(&keyed(&p, &refire), &heads, &p);
        assert_eq!(within.targets, vec![Target::Existing(3)]);
        assert_eq!(within.reopened.len(), 1);

        let short = CorrelationPolicy {
            reopen_window: Duration::minutes(10),
            ..CorrelationPolicy::default()
        };
        let after = plan(&keyed(&short, &refire), &heads, &short);
        assert_eq!(after.targets, vec![Target::Opened(0)]);
        assert!(after.reopened.is_empty());
    }
}
