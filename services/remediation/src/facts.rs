//! What an action needs to know about the world besides its trigger: the
//! suspect deploy (the latest of the service at or before the trigger), the
//! last good deploy before it (what a rollback goes back to), and the
//! placeholder values steps are rendered with. One derivation for playbooks
//! and people alike.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use firebreak_domain::action::ROLLBACK_HISTORY_DAYS;
use firebreak_domain::playbook::last_good;
use firebreak_domain::DeployEvent;
use firebreak_store::{ServiceWindow, StoreError, StoreTx};

/// The suspect and the last good deploy of a service.
#[derive(Debug, Clone, Default)]
pub struct DeployFacts {
    pub suspect: Option<DeployEvent>,
    pub good: Option<DeployEvent>,
}

/// Deploy histories read once per (service, environment) and reused.
#[derive(Default)]
pub struct DeployCache {
    histories: HashMap<(String, Option<String>), Vec<DeployEvent>>,
}

impl DeployCache {
    /// Deploys of `service` (in `environment`, when given) from the rollback
    /// window before `at` to a day after `now`.
    pub async fn history(
        &mut self,
        tx: &mut dyn StoreTx,
        service: &str,
        environment: Option<&str>,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<&[DeployEvent], StoreError> {
        let key = (service.to_string(), environment.map(str::to_string));
        if !self.histories.contains_key(&key) {
            let from = now.min(at) - Duration::days(ROLLBACK_HISTORY_DAYS);
            let found = tx
                .deploys_between(ServiceWindow {
                    service,
                    environment,
                    from,
                    to: now + Duration::days(1),
                })
                .await?;
            self.histories.insert(key.clone(), found);
        }
        Ok(self
            .histories
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default())
    }

    /// The suspect deploy (the given one, or the latest at or before `at`)
    /// and the last good deploy before it.
    pub async fn facts(
        &mut self,
        tx: &mut dyn StoreTx,
        service: &str,
        environment: Option<&str>,
        at: DateTime<Utc>,
        given: Option<&DeployEvent>,
        now: DateTime<Utc>,
    ) -> Result<DeployFacts, StoreError> {
        let history = self.history(tx, service, environment, at, now).await?;
        let suspect = match given {
            Some(d) => Some(d.clone()),
            None => history
                .iter()
                .filter(|d| d.started_at <= at)
                .max_by_key(|d| d.started_at)
                .cloned(),
        };
        let good = suspect
            .as_ref()
            .and_then(|s| last_good(s, history))
            .cloned();
        Ok(DeployFacts { suspect, good })
    }
}

/// Why a rollback cannot run, if it cannot: nothing deployed, or nothing good to go back to.
pub fn rollback_failure(service: &str, facts: &DeployFacts) -> Option<String> {
    match (&facts.suspect, &facts.good) {
        (None, _) => Some(format!(
            "no deploy of {service} is known, so there is nothing to roll back"
        )),
        (Some(s), None) => Some(format!(
            "no successful deploy of {service} before {} in the last {ROLLBACK_HISTORY_DAYS} days to roll back to",
            s.version
        )),
        _ => None,
    }
}

/// One line for people about a rollback.
pub fn describe_rollback(service: &str, provider: &str, facts: &DeployFacts) -> String {
    match (&facts.suspect, &facts.good) {
        (Some(s), Some(g)) => format!(
            "roll back {service} from {} to {} ({provider})",
            s.version, g.version
        ),
        (Some(s), None) => format!("roll back {service} from {} ({provider})", s.version),
        _ => format!("roll back {service} ({provider})"),
    }
}

/// Puts `suspect.*` and `target.*` placeholders for the deploy facts.
pub fn put_deploys(vars: &mut BTreeMap<String, String>, facts: &DeployFacts) {
    if let Some(s) = &facts.suspect {
        put_deploy(vars, "suspect", s);
    }
    if let Some(g) = &facts.good {
        put_deploy(vars, "target", g);
    }
}

fn put_deploy(vars: &mut BTreeMap<String, String>, prefix: &str, d: &DeployEvent) {
    vars.insert(format!("{prefix}.id"), d.id.clone());
    vars.insert(format!("{prefix}.version"), d.version.clone());
    vars.insert(
        format!("{prefix}.commit"),
        d.commit.clone().unwrap_or_default(),
    );
    vars.insert(format!("{prefix}.started_at"), d.started_at.to_rfc3339());
}

/// The placeholders every step can use, from what is known of its origin.
pub fn base_vars(
    service: &str,
    environment: Option<&str>,
    incident: Option<i64>,
    playbook: &str,
) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("service".into(), service.to_string());
    v.insert("environment".into(), environment.unwrap_or("").to_string());
    v.insert(
        "incident.id".into(),
        incident.map(|i| i.to_string()).unwrap_or_default(),
    );
    v.insert("playbook".into(), playbook.to_string());
    v
}
