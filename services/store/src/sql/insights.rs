//! `InsightStore` over any dialect: what the insights are computed from.

use super::*;

#[async_trait]
impl<D: Dialect> InsightStore for Db<D> {
    async fn insights_data(
        &self,
        range: &firebreak_domain::insights::Range,
        service: Option<&str>,
        environment: Option<&str>,
    ) -> Result<InsightsData> {
        let (from, to) = (range.from, range.to);
        use firebreak_domain::playbook::{FlagState, StepAction};
        // Independent reads, run at once (each on its own connection).
        let (mut d, mut g, mut inc, mut first, mut changes, mut acted) = tokio::try_join!(
            self.d.read_columns(
                &[
                    ("id", Col::Text),
                    ("service", Col::Text),
                    ("environment", Col::Text),
                    ("version", Col::Text),
                    ("status", Col::Text),
                    ("strategy", Col::Text),
                    ("started_at", Col::Time),
                    ("finished_at", Col::Time),
                    ("commit_times", Col::Text),
                ],
                q("SELECT id, service, environment, version, status, strategy,
                          started_at AS started_at, finished_at AS finished_at,
                          CAST(commit_times AS TEXT) AS commit_times
                   FROM deploys
                   WHERE status IN ('succeeded', 'failed', 'rolled_back')
                     AND COALESCE(finished_at, started_at) >= $1
                     AND ($2 IS NULL OR service = $2) AND ($3 IS NULL OR environment = $3)")
                .bind(from)
                .bind(service)
                .bind(environment),
            ),
            self.d.read_columns(
                &[
                    ("service", Col::Text),
                    ("environment", Col::Text),
                    ("version", Col::Text),
                    ("deploy_id", Col::Text),
                ],
                q(
                    "SELECT service, environment, version, deploy_id FROM gate_results
                   WHERE verdict = 'fail' AND evaluated_at >= $1 AND ($2 IS NULL OR service = $2)",
                )
                .bind(from - chrono::Duration::days(1))
                .bind(service),
            ),
            self.d.read_columns(
                &[("id", Col::Int), ("service", Col::Text), ("environment", Col::Text), ("severity", Col::Text),
                  ("opened_at", Col::Time), ("resolved_at", Col::Time)],
                q("SELECT id, service, environment, severity, opened_at AS opened_at, resolved_at AS resolved_at
                   FROM incidents WHERE opened_at >= $1 AND opened_at < $2
                     AND ($3 IS NULL OR service = $3) AND ($4 IS NULL OR environment = $4)")
                .bind(from)
                .bind(to)
                .bind(service)
                .bind(environment),
            ),
            self.d.read_columns(
                &[("incident_id", Col::Int), ("first_alert", Col::Time)],
                q("SELECT a.incident_id, min(a.starts_at) AS first_alert
                   FROM incident_alerts a JOIN incidents i ON i.id = a.incident_id
                   WHERE i.opened_at >= $1 AND i.opened_at < $2
                   GROUP BY a.incident_id")
                .bind(from)
                .bind(to),
            ),
            self.d.read_columns(
                &[("incident_id", Col::Int), ("deploy_id", Col::Text), ("started_at", Col::Time), ("cause_n", Col::Int)],
                q("SELECT c.incident_id, c.deploy_id, d.started_at AS started_at,
                          CASE WHEN c.cause IS NULL THEN -1 WHEN c.cause THEN 1 ELSE 0 END AS cause_n
                   FROM incident_changes c
                   JOIN incidents i ON i.id = c.incident_id
                   JOIN deploys d ON d.id = c.deploy_id
                   WHERE i.opened_at >= $1 AND i.opened_at < $2")
                .bind(from)
                .bind(to),
            ),
            self.d.read_columns(
                &[
                    ("incident_id", Col::Int),
                    ("id", Col::Int),
                    ("spec", Col::Text),
                    ("event", Col::Text),
                    ("at", Col::Time),
                ],
                // The spec as its text, parsed straight into an action spec.
                q("SELECT a.incident_id, a.id, CAST(a.spec AS TEXT) AS spec, au.event, au.at AS at
                   FROM actions a JOIN audit au ON au.action_id = a.id
                   WHERE a.incident_id IS NOT NULL AND a.kind IN ('kill_switch', 'rollback')
                     AND au.event IN ('executed', 'verified') AND a.created_at >= $1")
                .bind(from),
            ),
        )?;
        let any_failed_gate = g.rows() > 0;
        let mut by_deploy: HashSet<String> = HashSet::new();
        let mut by_version: HashSet<(String, String)> = HashSet::new();
        let mut by_version_env: HashSet<(String, String, String)> = HashSet::new();
        for (((service, env), version), deploy) in g
            .texts(0)?
            .zip(g.texts(1)?)
            .zip(g.texts(2)?)
            .zip(g.texts(3)?)
        {
            let service = service.unwrap_or_default();
            if let Some(d) = deploy {
                by_deploy.insert(d);
            }
            if let Some(v) = version {
                match env {
                    None => {
                        by_version.insert((service, v));
                    }
                    Some(e) => {
                        by_version_env.insert((service, v, e));
                    }
                }
            }
        }
        let mut deployments = Vec::with_capacity(d.rows());
        let (mut services, mut environments, mut versions) =
            (d.texts(1)?, d.texts(2)?, d.texts(3)?);
        let (mut statuses, mut strategies) = (d.texts(4)?, d.texts(5)?);
        let (mut started, mut finished, mut commits) = (d.times(6)?, d.times(7)?, d.texts(8)?);
        for id in d.texts(0)? {
            // The columns are of equal length (`Columns::new`).
            let id = id.unwrap_or_default();
            let bad = |col: &str, what: String| corrupt("deploys", &id, col, what);
            let status = statuses.next().flatten().unwrap_or_default();
            let status = DeployStatus::parse(&status)
                .ok_or_else(|| bad("status", format!("unknown status {status:?}")))?;
            let strategy = match strategies.next().flatten() {
                None => None,
                Some(s) => Some(
                    DeployStrategy::parse(&s)
                        .ok_or_else(|| bad("strategy", format!("unknown strategy {s:?}")))?,
                ),
            };
            let service = services.next().flatten().unwrap_or_default();
            let environment = environments.next().flatten();
            let version = versions.next().flatten().unwrap_or_default();
            // Failed gates are few: look them up only when there are any.
            let gate_failed = any_failed_gate
                && (by_deploy.contains(&id)
                    || by_version.contains(&(service.clone(), version.clone()))
                    || environment.as_ref().is_some_and(|e| {
                        by_version_env.contains(&(service.clone(), version.clone(), e.clone()))
                    })
                    || (environment.is_none()
                        && by_version_env
                            .iter()
                            .any(|(s, v, _)| *s == service && *v == version)));
            let started = started
                .next()
                .flatten()
                .ok_or_else(|| bad("started_at", "NULL".into()))?;
            let commit_times = match commits.next().flatten() {
                None => Vec::new(),
                Some(t) => parse_commit_times(&t).map_err(|e| bad("commit_times", e))?,
            };
            deployments.push(Deployment {
                at: finished.next().flatten().unwrap_or(started),
                commit_times,
                id,
                service,
                environment,
                version,
                status,
                strategy,
                gate_failed,
            });
        }
        let mut records: HashMap<i64, IncidentRecord> = HashMap::with_capacity(inc.rows());
        let (mut services, mut environments, mut severities) =
            (inc.texts(1)?, inc.texts(2)?, inc.texts(3)?);
        let (mut opened, mut resolved) = (inc.times(4)?, inc.times(5)?);
        for id in inc.ints(0)? {
            let id = id.unwrap_or_default();
            records.insert(
                id,
                IncidentRecord {
                    id,
                    service: services.next().flatten(),
                    environment: environments.next().flatten(),
                    severity: severities.next().flatten(),
                    opened_at: opened
                        .next()
                        .flatten()
                        .ok_or_else(|| corrupt("incidents", id, "opened_at", "NULL".into()))?,
                    first_alert: None,
                    mitigated_at: None,
                    resolved_at: resolved.next().flatten(),
                    feature_disabled_at: None,
                    changes: Vec::new(),
                },
            );
        }
        for (id, at) in first.ints(0)?.zip(first.times(1)?) {
            if let Some(i) = records.get_mut(&id.unwrap_or_default()) {
                i.first_alert = at;
            }
        }
        let (mut deploys, mut started, mut causes) =
            (changes.texts(1)?, changes.times(2)?, changes.ints(3)?);
        for id in changes.ints(0)? {
            let (deploy_id, started_at, cause) = (
                deploys.next().flatten(),
                started.next().flatten(),
                causes.next().flatten(),
            );
            if let (Some(i), Some(started_at)) =
                (records.get_mut(&id.unwrap_or_default()), started_at)
            {
                i.changes.push(LinkedChange {
                    deploy_id: deploy_id.unwrap_or_default(),
                    started_at,
                    cause: match cause {
                        Some(1) => Some(true),
                        Some(0) => Some(false),
                        _ => None,
                    },
                });
            }
        }
        let (mut actions, mut specs) = (acted.ints(1)?, acted.texts(2)?);
        let (mut events, mut ats) = (acted.texts(3)?, acted.times(4)?);
        for id in acted.ints(0)? {
            let (action, spec, event, at) = (
                actions.next().flatten().unwrap_or_default(),
                specs.next().flatten().unwrap_or_default(),
                events.next().flatten(),
                ats.next().flatten(),
            );
            let (Some(i), Some(at)) = (records.get_mut(&id.unwrap_or_default()), at) else {
                continue;
            };
            let spec = serde_json::from_str::<ActionSpec>(&spec)
                .map_err(|e| corrupt("actions", action, "spec", e.to_string()))?;
            let turns_off =
                matches!(&spec.step, StepAction::KillSwitch(k) if k.state == FlagState::Off);
            let mitigates = turns_off || matches!(spec.step, StepAction::Rollback(_));
            let event = event.unwrap_or_default();
            if event == "executed" && mitigates {
                i.mitigated_at = Some(i.mitigated_at.map_or(at, |m| m.min(at)));
            }
            if event == "verified" && turns_off {
                i.feature_disabled_at = Some(i.feature_disabled_at.map_or(at, |m| m.min(at)));
            }
        }
        let mut records: Vec<IncidentRecord> = records.into_values().collect();
        records.sort_by_key(|i| i.id);
        Ok((deployments, records))
    }
}
