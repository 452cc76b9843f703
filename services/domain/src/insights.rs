//! Insights across deploys and incidents: DORA's five metrics as DORA
//! defines them, computed the way Google's Four Keys does where a choice is
//! needed (medians, a deploy linked to the incident it caused), plus the
//! progressive-delivery figures: time to disable a feature, the share of
//! deploys by strategy, and time to detect, mitigate and resolve.
//!
//! Pure: the store gathers [`Deployment`]s and [`IncidentRecord`]s, this
//! computes. Every formula is in the README; the definitions that need a
//! choice are on the functions here.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration, Utc};
use serde_json::{json, Value};

use crate::{DeployStatus, DeployStrategy};

/// Whose bands the tiers use.
pub const TIER_BANDS: &str =
    "DORA 2024 (Accelerate State of DevOps Report 2024 performance clusters)";

/// One deployment: a deploy event with a final status (`succeeded`,
/// `failed`, `rolled_back`); `started` events are deploys in progress.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub service: String,
    pub environment: Option<String>,
    pub version: String,
    pub status: DeployStatus,
    pub strategy: Option<DeployStrategy>,
    /// When it was deployed: `finished_at`, else `started_at`.
    pub at: DateTime<Utc>,
    /// When its commits were made (`committed_at`, `commits[].at`).
    pub commit_times: Vec<DateTime<Utc>>,
    /// A gate result of the same service and version (or naming this deploy) failed.
    pub gate_failed: bool,
}

/// A change linked to an incident as a suspect.
#[derive(Debug, Clone)]
pub struct LinkedChange {
    pub deploy_id: String,
    pub started_at: DateTime<Utc>,
    /// A person said it was (true) or was not (false) the cause.
    pub cause: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct IncidentRecord {
    pub id: i64,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub severity: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub first_alert: Option<DateTime<Utc>>,
    /// The first kill switch or rollback executed for it.
    pub mitigated_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The first kill switch executed and verified off for it.
    pub feature_disabled_at: Option<DateTime<Utc>>,
    pub changes: Vec<LinkedChange>,
}

impl IncidentRecord {
    /// When the trouble started for the durations: the first alert, else the opening.
    fn began(&self) -> DateTime<Utc> {
        self.first_alert.unwrap_or(self.opened_at)
    }

    /// The deploys this incident holds against: the confirmed causes if a
    /// person confirmed any; otherwise its top suspect (the latest linked
    /// change that started before it opened) unless a person said it was not.
    fn blamed(&self) -> Vec<(&str, &'static str)> {
        let confirmed: Vec<(&str, &'static str)> = self
            .changes
            .iter()
            .filter(|c| c.cause == Some(true))
            .map(|c| (c.deploy_id.as_str(), "confirmed_cause"))
            .collect();
        if !confirmed.is_empty() {
            return confirmed;
        }
        self.changes
            .iter()
            .filter(|c| c.started_at <= self.opened_at)
            .max_by_key(|c| (c.started_at, c.deploy_id.as_str()))
            .filter(|c| c.cause != Some(false))
            .map(|c| vec![(c.deploy_id.as_str(), "top_suspect")])
            .unwrap_or_default()
    }
}

/// The range and filters asked for, echoed in the answer.
#[derive(Debug, Clone)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Range {
    fn days(&self) -> f64 {
        ((self.to - self.from).num_seconds() as f64 / 86_400.0).max(1.0 / 86_400.0)
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// Linear-interpolated quantile (PostgreSQL's `percentile_cont`, as Four
/// Keys uses) of sorted values; `None` for none.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    match sorted.len() {
        0 => None,
        1 => Some(sorted[0]),
        n => {
            let pos = q * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Median and p90 in seconds, with the sample size.
fn durations(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "value": quantile(&v, 0.5),
        "p90": quantile(&v, 0.9),
        "unit": "seconds",
        "samples": v.len(),
    })
}

fn tier(name: &'static str) -> Value {
    json!({"tier": name, "bands": TIER_BANDS})
}

const HOUR: f64 = 3_600.0;
const DAY: f64 = 24.0 * HOUR;

/// The first tier whose bound the value is `within`, else `low`.
fn band(tiers: &[(&'static str, f64)], within: impl Fn(f64) -> bool) -> &'static str {
    tiers
        .iter()
        .find(|(_, bound)| within(*bound))
        .map_or("low", |(tier, _)| tier)
}

/// Deploys per day: elite at least daily, high at least weekly, medium at least monthly.
fn frequency_tier(per_day: f64) -> &'static str {
    let tiers = [("elite", 1.0), ("high", 1.0 / 7.0), ("medium", 1.0 / 30.0)];
    band(&tiers, |at_least| per_day >= at_least)
}

/// Median lead time: elite under a day, high under a week, medium under a month.
fn lead_time_tier(s: f64) -> &'static str {
    let tiers = [("elite", DAY), ("high", 7.0 * DAY), ("medium", 30.0 * DAY)];
    band(&tiers, |under| s < under)
}

/// Change fail rate: elite at most 5 %, high at most 20 %, low above (the
/// 2024 medium cluster, 10 %, lies inside high's band: see the README).
fn fail_rate_tier(r: f64) -> &'static str {
    band(&[("elite", 0.05), ("high", 0.20)], |at_most| r <= at_most)
}

/// Median recovery: elite under an hour, high under a day, medium under a week.
fn recovery_tier(s: f64) -> &'static str {
    let tiers = [("elite", HOUR), ("high", DAY), ("medium", 7.0 * DAY)];
    band(&tiers, |under| s < under)
}

/// Monday 00:00 UTC of the week `t` is in.
fn week_of(t: DateTime<Utc>) -> DateTime<Utc> {
    let day = t.date_naive() - Duration::days(i64::from(t.weekday().num_days_from_monday()));
    day.and_hms_opt(0, 0, 0).map_or(t, |d| d.and_utc())
}

/// Why a deployment counts as failed, if it does (first reason wins):
/// a person confirmed it caused an incident; it was rolled back; it failed;
/// one of its gates failed; it is the top suspect of an incident (see
/// [`IncidentRecord::blamed`]).
fn failure_reasons<'a>(
    deployments: &[&'a Deployment],
    incidents: &'a [IncidentRecord],
) -> HashMap<&'a str, (&'static str, Vec<&'a IncidentRecord>)> {
    let mut blamed: HashMap<&str, (&'static str, Vec<&IncidentRecord>)> = HashMap::new();
    for i in incidents {
        for (deploy, why) in i.blamed() {
            let e = blamed.entry(deploy).or_insert((why, Vec::new()));
            if why == "confirmed_cause" {
                e.0 = why;
            }
            e.1.push(i);
        }
    }
    let mut out = HashMap::new();
    for d in deployments {
        let from_incident = blamed.get(d.id.as_str());
        let reason = match (from_incident, d.status, d.gate_failed) {
            (Some(("confirmed_cause", _)), _, _) => Some("confirmed_cause"),
            (_, DeployStatus::RolledBack, _) => Some("rolled_back"),
            (_, DeployStatus::Failed, _) => Some("failed"),
            (_, _, true) => Some("failed_gate"),
            (Some((why, _)), _, _) => Some(*why),
            _ => None,
        };
        if let Some(r) = reason {
            let linked = from_incident.map(|(_, l)| l.clone()).unwrap_or_default();
            out.insert(d.id.as_str(), (r, linked));
        }
    }
    out
}

/// Everything the insights API answers for these deployments and incidents
/// (already narrowed to the service and environment asked for). Deployments
/// and incidents outside `range` may be given (later deploys restore earlier
/// failures); only those inside are counted.
pub fn compute(
    range: &Range,
    all_deployments: &[Deployment],
    all_incidents: &[IncidentRecord],
) -> Value {
    let mut sorted: Vec<&Deployment> = all_deployments.iter().collect();
    sorted.sort_by_key(|d| (d.at, d.id.as_str()));
    let deployments: Vec<&Deployment> = sorted
        .iter()
        .copied()
        .filter(|d| range.contains(d.at))
        .collect();
    let incidents: Vec<&IncidentRecord> = all_incidents
        .iter()
        .filter(|i| range.contains(i.opened_at))
        .collect();
    let succeeded: Vec<&Deployment> = deployments
        .iter()
        .copied()
        .filter(|d| d.status == DeployStatus::Succeeded)
        .collect();
    let n = deployments.len();
    let days = range.days();

    // Deployment frequency.
    let per_day = succeeded.len() as f64 / days;
    let frequency = json!({
        "value": per_day, "per_week": per_day * 7.0, "unit": "deploys per day",
        "samples": succeeded.len(),
        "tier": if succeeded.is_empty() { Value::Null } else { tier(frequency_tier(per_day)) },
    });

    // Change lead time, over every commit of every successful deployment.
    let lead = |ds: &[&Deployment]| -> Vec<f64> {
        ds.iter()
            .flat_map(|d| d.commit_times.iter().map(move |c| secs(d.at - *c)))
            .filter(|s| *s > 0.0)
            .collect()
    };
    let mut lead_time = durations(lead(&succeeded));
    lead_time["tier"] = lead_time["value"]
        .as_f64()
        .map(|m| tier(lead_time_tier(m)))
        .unwrap_or(Value::Null);

    // Change fail rate.
    let failures = failure_reasons(&deployments, all_incidents);
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (reason, _) in failures.values() {
        *by_reason.entry(reason).or_default() += 1;
    }
    let rate = (n > 0).then(|| failures.len() as f64 / n as f64);
    let fail_rate = json!({
        "value": rate, "unit": "ratio", "samples": n, "failed": failures.len(), "by_reason": by_reason,
        "tier": rate.map(|r| tier(fail_rate_tier(r))).unwrap_or(Value::Null),
    });

    // Failed deployment recovery time, and the hotfixes that restored.
    // Each service and environment's deployments in time order, to find the
    // next good one by binary search.
    let mut lanes: HashMap<(&str, Option<&str>), Vec<&Deployment>> = HashMap::new();
    for d in &sorted {
        lanes
            .entry((d.service.as_str(), d.environment.as_deref()))
            .or_default()
            .push(d);
    }
    // For each position of a lane, the first good deployment at or after it
    // (one backward pass per lane, so a run of failures is not scanned again
    // for each failure in it).
    let is_good = |n: &Deployment| {
        n.status == DeployStatus::Succeeded
            && !n.gate_failed
            && !failures.contains_key(n.id.as_str())
    };
    let next_good: HashMap<(&str, Option<&str>), Vec<Option<usize>>> = lanes
        .iter()
        .map(|(key, lane)| {
            let mut next = vec![None; lane.len() + 1];
            for i in (0..lane.len()).rev() {
                next[i] = if is_good(lane[i]) {
                    Some(i)
                } else {
                    next[i + 1]
                };
            }
            (*key, next)
        })
        .collect();
    let mut recoveries = Vec::new();
    let mut unrecovered = 0;
    let mut hotfixes: HashSet<&str> = HashSet::new();
    for d in &deployments {
        let Some((_, linked)) = failures.get(d.id.as_str()) else {
            continue;
        };
        let by_incident = linked
            .iter()
            .filter_map(|i| match (i.mitigated_at, i.resolved_at) {
                (Some(m), Some(r)) => Some(m.min(r)),
                (m, r) => m.or(r),
            })
            .min();
        let key = (d.service.as_str(), d.environment.as_deref());
        let good = lanes
            .get(&key)
            .zip(next_good.get(&key))
            .and_then(|(lane, next)| {
                let after = lane.partition_point(|n| n.at <= d.at);
                next[after].map(|j| lane[j])
            });
        let restored = match (by_incident, good.map(|g| g.at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let (Some(g), Some(at)) = (good, restored) {
            if g.at == at {
                hotfixes.insert(g.id.as_str());
            }
        }
        match restored {
            Some(t) => recoveries.push(secs(t - d.at).max(0.0)),
            None => unrecovered += 1,
        }
    }
    let mut recovery = durations(recoveries);
    recovery["unrecovered"] = json!(unrecovered);
    recovery["tier"] = recovery["value"]
        .as_f64()
        .map(|m| tier(recovery_tier(m)))
        .unwrap_or(Value::Null);

    // Rework: rollbacks plus the deployments that restored a failed one.
    let rollbacks = deployments
        .iter()
        .filter(|d| d.status == DeployStatus::RolledBack)
        .count();
    let hotfixes_in_range = deployments
        .iter()
        .filter(|d| hotfixes.contains(d.id.as_str()))
        .count();
    let rework = json!({
        "value": (n > 0).then(|| (rollbacks + hotfixes_in_range) as f64 / n as f64),
        "unit": "ratio", "samples": n, "rollbacks": rollbacks, "hotfixes": hotfixes_in_range,
        "tier": Value::Null,
    });

    // Time to disable a feature.
    let disable = durations(
        incidents
            .iter()
            .filter_map(|i| {
                i.feature_disabled_at
                    .map(|t| secs(t - i.opened_at).max(0.0))
            })
            .collect(),
    );

    // Deploy strategies.
    let mut strategies: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &deployments {
        *strategies
            .entry(d.strategy.map_or("unknown", DeployStrategy::as_str))
            .or_default() += 1;
    }
    let shares: BTreeMap<&str, Value> = strategies
        .iter()
        .map(|(k, c)| {
            (
                *k,
                json!({"count": c, "share": *c as f64 / n.max(1) as f64}),
            )
        })
        .collect();
    let strategies = json!({"value": shares, "unit": "share of deployments", "samples": n});

    // Time to detect, mitigate, resolve — overall and by service, environment, severity.
    let phase = |f: &dyn Fn(&IncidentRecord) -> Option<f64>| -> Value {
        let mut groups: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
        let mut all = Vec::new();
        for i in &incidents {
            if let Some(v) = f(i) {
                all.push(v);
                groups
                    .entry((
                        i.service.clone().unwrap_or_default(),
                        i.environment.clone().unwrap_or_default(),
                        i.severity.clone().unwrap_or_default(),
                    ))
                    .or_default()
                    .push(v);
            }
        }
        let mut out = durations(all);
        out["by"] = Value::Array(
            groups
                .into_iter()
                .map(|((s, e, sev), v)| {
                    let mut g = durations(v);
                    g["service"] = json!(s);
                    g["environment"] = json!(e);
                    g["severity"] = json!(sev);
                    g
                })
                .collect(),
        );
        out
    };
    let detect = phase(&|i: &IncidentRecord| {
        // From the start of the change it is held against (its confirmed
        // cause, else its top suspect) to its first alert.
        let (blamed, _) = *i.blamed().first()?;
        let change = i.changes.iter().find(|c| c.deploy_id == blamed)?;
        Some(secs(i.began() - change.started_at).max(0.0))
    });
    let mitigate =
        phase(&|i: &IncidentRecord| i.mitigated_at.map(|t| secs(t - i.began()).max(0.0)));
    let resolve = phase(&|i: &IncidentRecord| i.resolved_at.map(|t| secs(t - i.began()).max(0.0)));

    // Weekly series.
    let mut weeks: BTreeMap<DateTime<Utc>, Vec<&Deployment>> = BTreeMap::new();
    let mut w = week_of(range.from);
    while w < range.to {
        weeks.insert(w, Vec::new());
        w += Duration::days(7);
    }
    for d in &deployments {
        weeks.entry(week_of(d.at)).or_default().push(d);
    }
    let weekly: Vec<Value> = weeks
        .iter()
        .map(|(start, ds)| {
            let ok: Vec<&Deployment> = ds
                .iter()
                .copied()
                .filter(|d| d.status == DeployStatus::Succeeded)
                .collect();
            let failed = ds
                .iter()
                .filter(|d| failures.contains_key(d.id.as_str()))
                .count();
            let mut lt = lead(&ok);
            lt.sort_by(f64::total_cmp);
            json!({
                "week": start.date_naive().to_string(),
                "deployments": ds.len(),
                "successful_deployments": ok.len(),
                "failed_deployments": failed,
                "change_fail_rate": (!ds.is_empty()).then(|| failed as f64 / ds.len() as f64),
                "change_lead_time_median": quantile(&lt, 0.5),
            })
        })
        .collect();

    json!({
        "from": range.from, "to": range.to,
        "deployment_frequency": frequency,
        "change_lead_time": lead_time,
        "change_fail_rate": fail_rate,
        "failed_deployment_recovery_time": recovery,
        "deployment_rework_rate": rework,
        "time_to_disable_feature": disable,
        "deploy_strategies": strategies,
        "time_to_detect": detect,
        "time_to_mitigate": mitigate,
        "time_to_resolve": resolve,
        "weekly": weekly,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_as_percentile_cont() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[4.0], 0.9), Some(4.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(
            quantile(
                &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                0.9
            ),
            Some(91.0)
        );
    }

    #[test]
    fn an_empty_range_has_zero_samples_and_no_nan() {
        let range = Range {
            from: Utc::now() - Duration::days(7),
            to: Utc::now(),
        };
        let v = compute(&range, &[], &[]);
        assert_eq!(v["deployment_frequency"]["value"], 0.0);
        assert_eq!(v["change_fail_rate"]["samples"], 0);
        assert!(v["change_fail_rate"]["value"].is_null());
        assert!(v["change_lead_time"]["value"].is_null());
        assert!(!v.to_string().contains("NaN"));
        assert!(!v["weekly"].as_array().unwrap().is_empty());
    }

    #[test]
    fn tiers_follow_the_2024_bands() {
        assert_eq!(frequency_tier(3.0), "elite");
        assert_eq!(frequency_tier(0.5), "high");
        assert_eq!(frequency_tier(0.05), "medium");
        assert_eq!(frequency_tier(0.01), "low");
        assert_eq!(lead_time_tier(3_600.0), "elite");
        assert_eq!(fail_rate_tier(0.05), "elite");
        assert_eq!(fail_rate_tier(0.15), "high");
        assert_eq!(recovery_tier(1_800.0), "elite");
        assert_eq!(recovery_tier(30.0 * 86_400.0), "low");
        // The bounds: "at least" and "at most" take them in, "under" does not.
        assert_eq!(frequency_tier(1.0), "elite");
        assert_eq!(frequency_tier(1.0 / 7.0), "high");
        assert_eq!(lead_time_tier(86_400.0), "high");
        assert_eq!(lead_time_tier(30.0 * 86_400.0), "low");
        assert_eq!(fail_rate_tier(0.20), "high");
        assert_eq!(fail_rate_tier(0.21), "low");
        assert_eq!(recovery_tier(3_600.0), "high");
        assert_eq!(recovery_tier(7.0 * 86_400.0 - 1.0), "medium");
    }
}
