//! Guarded rollouts of a built-in flag: a plan of percentage steps with hold
//! times, the flag definition each step serves, and the pure decisions —
//! whether an event kills the rollout, and whether it may take its next step.
//!
//! A step is a flagd `fractional` split of the flag's "on" variant against
//! its off variant, so a user who got the new variant at 5% keeps it at 10%
//! (the on bucket only grows) and Firebreak buckets exactly as flagd does.
//! Killing is the kill switch (the flag's `enabled`), which overrides every
//! rule; the rollout's targeting stays in place for a restart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::duration::Dur;
use crate::flagd::{FlagDefinition, FlagState};
use crate::matcher::Matcher;
use crate::playbook::Trigger;
use crate::{AlertEvent, GateVerdict};

/// At most this many steps in a plan.
pub const MAX_STEPS: usize = 20;
/// The longest hold a step may ask for.
pub const MAX_HOLD_DAYS: i64 = 30;

/// One step: serve the variant to `percent` % of targeting keys, then hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    pub percent: u8,
    /// How long the step runs, with every guard holding, before the next one.
    #[serde(default = "zero")]
    pub hold: Dur,
}

fn zero() -> Dur {
    Dur(chrono::Duration::zero())
}

fn yes() -> bool {
    true
}

/// What stops a rollout. Defaults: a failed gate of the service or a firing
/// alert of the service kills it; an open incident of the service holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// Firing alerts that kill the rollout. Empty: any firing alert whose
    /// `service` label is the rollout's service.
    #[serde(default)]
    pub alerts: Vec<Matcher>,
    /// A failed gate result of the service (and environment) kills it.
    #[serde(default = "yes")]
    pub gates: bool,
    /// A step advances only after a passing gate result of the service
    /// arrived during it (as well as its hold time passing).
    #[serde(default)]
    pub require_gate_pass: bool,
    /// An open incident of the service holds the rollout where it is.
    #[serde(default = "yes")]
    pub incidents: bool,
}

impl Default for Guards {
    fn default() -> Guards {
        Guards {
            alerts: Vec::new(),
            gates: true,
            require_gate_pass: false,
            incidents: true,
        }
    }
}

/// A rollout plan, as the API takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// The service whose gates, alerts and incidents guard the rollout.
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub steps: Vec<RolloutStep>,
    #[serde(default)]
    pub guards: Guards,
    /// The variant rolled out; default `on`, else the variant whose value is `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// A JSON Logic condition on the evaluation context: who gets the variant
    /// whatever the percentage (e.g. enterprise customers in the EU first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    /// Advancing on its own while the guards hold.
    Running,
    /// Held where it is by a person; guards still kill it.
    Paused,
    /// The last step's hold passed with every guard holding.
    Completed,
    /// Stopped by a person; the flag was turned off.
    Aborted,
    /// A guard fired: the flag was turned off for everyone.
    Killed,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 5] = [
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::Completed,
        RolloutStatus::Aborted,
        RolloutStatus::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Completed => "completed",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::Killed => "killed",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Exposes users to the variant and is watched by its guards.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutStatus::Running | RolloutStatus::Paused)
    }
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    pub id: i64,
    pub flag: String,
    pub plan: RolloutPlan,
    pub status: RolloutStatus,
    /// The step the flag serves now (0-based); `None` before the first is applied.
    pub step: Option<usize>,
    /// Bumped by every restart: a step action of an earlier run applies nothing.
    pub generation: i32,
    pub step_started_at: Option<DateTime<Utc>>,
    /// The step action in flight, if any.
    pub action_id: Option<i64>,
    /// Why it is not advancing right now (a hold, a freeze, an incident).
    pub waiting: Option<String>,
    /// Why it stopped (killed, aborted, paused).
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When this run (generation) started: events before it do not kill it.
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RolloutPlan {
    /// Checks the plan on its own: 1–20 steps of strictly rising percentages
    /// in 1–100, holds of at most 30 days, a JSON Logic segment flagd knows.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((f.to_string(), m));
        if self.service.trim().is_empty() || self.service.len() > 200 {
            return bad("service", "name the service whose gates, alerts and incidents guard the rollout (at most 200 characters)".into());
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return bad(
                "steps",
                format!("give 1 to {MAX_STEPS} steps, e.g. [{{\"percent\": 5, \"hold\": \"1h\"}}, {{\"percent\": 100}}]"),
            );
        }
        let mut last = 0u8;
        for (i, s) in self.steps.iter().enumerate() {
            if s.percent == 0 || s.percent > 100 {
                return bad(&format!("steps[{i}].percent"), "must be 1 to 100".into());
            }
            if s.percent <= last {
                return bad(
                    &format!("steps[{i}].percent"),
                    format!("must be above the step before ({last}%): percentages only rise"),
                );
            }
            if s.hold.0 < chrono::Duration::zero()
                || s.hold.0 > chrono::Duration::days(MAX_HOLD_DAYS)
            {
                return bad(
                    &format!("steps[{i}].hold"),
                    format!("must be 0 to {MAX_HOLD_DAYS}d"),
                );
            }
            last = s.percent;
        }
        if let Some(segment) = &self.segment {
            let probe = FlagDefinition {
                state: FlagState::Enabled,
                variants: [("on".to_string(), Value::Bool(true))].into(),
                default_variant: Some("on".into()),
                targeting: Some(json!({"if": [segment, "on", null]})),
                metadata: Default::default(),
            };
            probe.validate().map_err(|m| ("segment".to_string(), m))?;
            // A segment is Firebreak's own input, not a flagd file to be
            // lenient with: an operation it cannot evaluate is refused.
            if let Some(w) = probe.warnings().into_iter().next() {
                return Err(("segment".to_string(), w));
            }
        }
        Ok(())
    }

    /// The variant rolled out and the one everyone else gets, in `flag`.
    pub fn variants<'a>(&'a self, flag: &'a FlagDefinition) -> Result<(&'a str, &'a str), String> {
        let on = match &self.variant {
            Some(v) if flag.variants.contains_key(v) => v.as_str(),
            Some(v) => {
                return Err(format!(
                    "the flag has no variant {v:?} (it has {})",
                    flag.variants.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
            None if flag.variants.contains_key("on") => "on",
            None => flag
                .variants
                .iter()
                .find(|(_, v)| **v == Value::Bool(true))
                .map(|(k, _)| k.as_str())
                .ok_or("name the variant to roll out (\"variant\"): the flag has no `on` or `true` variant")?,
        };
        let off = flag.off_variant().ok_or(
            "the flag has no off variant (`off` or a `false` value) to serve everyone else and to serve when killed",
        )?;
        if on == off {
            return Err(format!(
                "the rolled-out variant {on:?} is the flag's off variant"
            ));
        }
        Ok((on, off))
    }

    /// The definition that serves step `index`: the flag's variants, state
    /// enabled, and targeting giving the variant to the step's share of
    /// targeting keys (plus the segment); the last 100 % step without a
    /// segment is the variant for everyone, no targeting at all.
    pub fn definition(
        &self,
        flag: &FlagDefinition,
        index: usize,
    ) -> Result<FlagDefinition, String> {
        let (on, off) = self.variants(flag)?;
        let percent = self
            .steps
            .get(index)
            .ok_or_else(|| format!("the plan has no step {}", index + 1))?
            .percent;
        let mut d = flag.clone();
        d.state = FlagState::Enabled;
        if percent == 100 && self.segment.is_none() {
            d.default_variant = Some(on.to_string());
            d.targeting = None;
            return Ok(d);
        }
        let split =
            json!({"fractional": [[on, u64::from(percent)], [off, 100 - u64::from(percent)]]});
        d.default_variant = Some(off.to_string());
        d.targeting = Some(match &self.segment {
            Some(segment) => json!({"if": [segment, on, split]}),
            None => split,
        });
        Ok(d)
    }

    fn alert_kills(&self, a: &AlertEvent) -> bool {
        if a.status != crate::alertmanager::AlertStatus::Firing {
            return false;
        }
        if !self.guards.alerts.is_empty() {
            return self.guards.alerts.iter().all(|m| m.matches(&a.labels));
        }
        a.labels.get("service").map(String::as_str) == Some(self.service.as_str())
    }

    fn same_environment(&self, env: Option<&str>) -> bool {
        match (&self.environment, env) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        }
    }
}

impl Rollout {
    /// Whether `trigger`, an event that arrived while this rollout was
    /// active, kills it: a failed gate of its service, or a firing alert its
    /// guards match. Events from before the rollout started do not count.
    pub fn kill_reason(&self, trigger: &Trigger<'_>) -> Option<String> {
        if !self.status.is_active() || trigger.at() < self.started_at {
            return None;
        }
        let plan = &self.plan;
        match trigger {
            Trigger::Gate(g)
                if plan.guards.gates
                    && g.verdict == GateVerdict::Fail
                    && g.service == plan.service
                    && plan.same_environment(g.environment.as_deref()) =>
            {
                Some(format!(
                    "gate {} failed for {}{}",
                    g.gate,
                    g.service,
                    g.version
                        .as_deref()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default()
                ))
            }
            Trigger::Alert(a)
                if plan.alert_kills(a) && plan.same_environment(trigger.environment()) =>
            {
                Some(format!(
                    "alert {} fired",
                    a.labels
                        .get("alertname")
                        .map(String::as_str)
                        .unwrap_or("(unnamed)")
                ))
            }
            _ => None,
        }
    }

    /// The percentage served now (0 before the first step).
    pub fn percent(&self) -> u8 {
        self.step
            .and_then(|s| self.plan.steps.get(s))
            .map_or(0, |s| s.percent)
    }

    /// What the rollout does next, given what holds it back now.
    pub fn next(&self, facts: &GuardFacts, now: DateTime<Utc>) -> Next {
        if self.status != RolloutStatus::Running {
            return Next::Wait(format!("the rollout is {}", self.status.as_str()));
        }
        let (Some(step), Some(since)) = (self.step, self.step_started_at) else {
            return Next::Apply(0);
        };
        let hold = self.plan.steps[step].hold.0;
        if now < since + hold {
            return Next::Wait(format!(
                "holding {}% until {}",
                self.percent(),
                (since + hold).format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        if facts.paused {
            return Next::Wait("automation is paused".into());
        }
        if let Some(freeze) = &facts.freeze {
            return Next::Wait(format!("change freeze {freeze}"));
        }
        if self.plan.guards.incidents && !facts.open_incidents.is_empty() {
            return Next::Wait(format!(
                "open incident {} on {}",
                facts
                    .open_incidents
                    .iter()
                    .map(|i| format!("#{i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.plan.service
            ));
        }
        if self.plan.guards.require_gate_pass && !facts.gate_passed {
            return Next::Wait(format!(
                "waiting for a passing gate result of {} since {}",
                self.plan.service,
                since.format("%H:%M:%S UTC")
            ));
        }
        if step + 1 < self.plan.steps.len() {
            Next::Apply(step + 1)
        } else {
            Next::Complete
        }
    }
}

/// What the advance decision looks at besides the rollout itself.
#[derive(Debug, Clone, Default)]
pub struct GuardFacts {
    pub paused: bool,
    /// The freeze window in force, by name.
    pub freeze: Option<String>,
    pub open_incidents: Vec<i64>,
    /// A passing gate result of the service arrived during the current step.
    pub gate_passed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Not now, and why.
    Wait(String),
    /// Apply this step (0-based).
    Apply(usize),
    /// The last step held: done.
    Complete,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn plan(steps: &[(u8, i64)]) -> RolloutPlan {
        RolloutPlan {
            service: "checkout".into(),
            environment: None,
            steps: steps
                .iter()
                .map(|(p, h)| RolloutStep {
                    percent: *p,
                    hold: Dur(Duration::seconds(*h)),
                })
                .collect(),
            guards: Guards::default(),
            variant: None,
            segment: None,
        }
    }

    fn rollout(p: RolloutPlan, step: Option<usize>, since: DateTime<Utc>) -> Rollout {
        Rollout {
            id: 1,
            flag: "new-checkout".into(),
            plan: p,
            status: RolloutStatus::Running,
            step,
            generation: 0,
            step_started_at: step.map(|_| since),
            action_id: None,
            waiting: None,
            reason: None,
            created_by: "ana".into(),
            created_at: since,
            started_at: since,
            updated_at: since,
        }
    }

    #[test]
    fn plans_rise_and_stay_in_bounds() {
        assert!(plan(&[(5, 3600), (10, 0), (100, 0)]).validate().is_ok());
        assert_eq!(
            plan(&[(10, 0), (10, 0)]).validate().unwrap_err().0,
            "steps[1].percent"
        );
        assert_eq!(
            plan(&[(0, 0)]).validate().unwrap_err().0,
            "steps[0].percent"
        );
        assert_eq!(
            plan(&[(101, 0)]).validate().unwrap_err().0,
            "steps[0].percent"
        );
        assert_eq!(plan(&[]).validate().unwrap_err().0, "steps");
        let mut p = plan(&[(5, 0)]);
        p.segment = Some(json!({"nope": [1]}));
        assert_eq!(p.validate().unwrap_err().0, "segment");
    }

    #[test]
    fn a_step_is_a_fractional_split_and_the_last_is_everyone() {
        let flag = FlagDefinition::boolean(false);
        let p = plan(&[(5, 0), (100, 0)]);
        let d = p.definition(&flag, 0).unwrap();
        assert_eq!(
            d.targeting,
            Some(json!({"fractional": [["on", 5], ["off", 95]]}))
        );
        assert_eq!(d.default_variant.as_deref(), Some("off"));
        let d = p.definition(&flag, 1).unwrap();
        assert_eq!(d.targeting, None);
        assert_eq!(d.default_variant.as_deref(), Some("on"));
    }

    #[test]
    fn a_segment_always_gets_the_variant() {
        let flag = FlagDefinition::boolean(false);
        let mut p = plan(&[(10, 0)]);
        p.segment = Some(json!({"==": [{"var": "plan"}, "enterprise"]}));
        let d = p.definition(&flag, 0).unwrap();
        let now = 0;
        let r = d
            .evaluate(
                "f",
                &json!({"targetingKey": "u1", "plan": "enterprise"}),
                now,
            )
            .unwrap();
        assert_eq!(r.variant, Some("on"));
    }

    #[test]
    fn ten_percent_of_ten_thousand_keys() {
        let flag = FlagDefinition::boolean(false);
        let d = plan(&[(10, 0)]).definition(&flag, 0).unwrap();
        let on = (0..10_000)
            .filter(|i| {
                d.evaluate(
                    "new-checkout",
                    &json!({"targetingKey": format!("user-{i}")}),
                    0,
                )
                .unwrap()
                .variant
                    == Some("on")
            })
            .count();
        assert!((900..=1100).contains(&on), "{on} of 10000 on");
    }

    #[test]
    fn advancing_waits_for_the_hold_and_every_guard() {
        let t0 = Utc::now();
        let r = rollout(plan(&[(5, 60), (50, 0), (100, 0)]), Some(0), t0);
        let ok = GuardFacts::default();
        assert!(matches!(r.next(&ok, t0), Next::Wait(w) if w.starts_with("holding 5%")));
        let later = t0 + Duration::seconds(61);
        assert_eq!(r.next(&ok, later), Next::Apply(1));
        let frozen = GuardFacts {
            freeze: Some("holidays".into()),
            ..GuardFacts::default()
        };
        assert!(matches!(r.next(&frozen, later), Next::Wait(w) if w.contains("holidays")));
        let incident = GuardFacts {
            open_incidents: vec![7],
            ..GuardFacts::default()
        };
        assert!(matches!(r.next(&incident, later), Next::Wait(w) if w.contains("#7")));
        let paused = GuardFacts {
            paused: true,
            ..GuardFacts::default()
        };
        assert!(matches!(r.next(&paused, later), Next::Wait(_)));
        let mut gated = r.clone();
        gated.plan.guards.require_gate_pass = true;
        assert!(matches!(gated.next(&ok, later), Next::Wait(w) if w.contains("passing gate")));
        let passed = GuardFacts {
            gate_passed: true,
            ..GuardFacts::default()
        };
        assert_eq!(gated.next(&passed, later), Next::Apply(1));
        let last = rollout(plan(&[(5, 0), (100, 0)]), Some(1), t0);
        assert_eq!(last.next(&ok, t0), Next::Complete);
        let fresh = rollout(plan(&[(5, 0)]), None, t0);
        assert_eq!(fresh.next(&ok, t0), Next::Apply(0));
    }
}
