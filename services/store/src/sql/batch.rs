//! `BatchTx` over any dialect: what the engine writes inside a batch.

use super::*;

#[async_trait]
impl<T: DialectTx + 'static> BatchTx for Tx<T> {
    async fn lock_groups(&mut self, keys: &[i64]) -> Result<()> {
        self.tx.lock(keys).await
    }

    async fn existing_alert_ids(&mut self, ids: &[String]) -> Result<HashSet<String>> {
        self.tx.existing_alert_ids(ids).await
    }

    async fn latest_incidents(&mut self, group_keys: &[String]) -> Result<Vec<IncidentHead>> {
        self.tx.latest_incidents(group_keys).await
    }

    async fn open_incidents(&mut self, incidents: &[NewIncident]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(incidents.len());
        for inc in incidents {
            let rows = self
                .tx
                .fetch(
                    q("INSERT INTO incidents (group_key, service, environment, title, severity, status, opened_at)
                       VALUES ($1, $2, $3, $4, $5, 'open', $6) RETURNING id")
                    .bind(&inc.group.key)
                    .bind(&inc.group.service)
                    .bind(&inc.group.environment)
                    .bind(&inc.title)
                    .bind(&inc.severity)
                    .bind(inc.opened_at),
                )
                .await?;
            ids.push(rows.first().ok_or(StoreError::NotFound)?.int("id")?);
        }
        Ok(ids)
    }

    async fn reopen_incidents(&mut self, ids: &[i64]) -> Result<()> {
        self.tx
            .execute(
                q(format!(
                    "UPDATE incidents SET status = 'open', resolved_at = NULL, updated_at = $2
                     WHERE {} AND status = 'resolved'",
                    T::any("id", 1)
                ))
                .bind(ids.to_vec())
                .bind(Utc::now()),
            )
            .await?;
        Ok(())
    }

    async fn insert_alerts(&mut self, alerts: &[(Option<i64>, &AlertEvent)]) -> Result<()> {
        self.tx.insert_alerts(alerts).await
    }

    async fn upsert_incident_alerts(&mut self, alerts: &[(i64, &AlertEvent)]) -> Result<()> {
        self.tx.upsert_incident_alerts(alerts).await
    }

    async fn insert_deploys(&mut self, deploys: &[DeployEvent]) -> Result<HashSet<String>> {
        self.tx.insert_deploys(deploys).await
    }

    async fn insert_gates(&mut self, gates: &[GateResult]) -> Result<HashSet<String>> {
        self.tx.insert_gates(gates).await
    }

    async fn insert_logs(&mut self, lines: &[LogLine]) -> Result<u64> {
        self.tx.insert_logs(lines).await
    }

    async fn deploys_between(&mut self, window: ServiceWindow<'_>) -> Result<Vec<DeployEvent>> {
        let select = format!("SELECT {DEPLOY_COLUMNS} FROM deploys d");
        let query = in_window(&select, "d.started_at", "", window).plan_each();
        decode(&self.tx.fetch(query).await?, deploy_row)
    }

    async fn gates_between(&mut self, window: ServiceWindow<'_>) -> Result<Vec<GateResult>> {
        let select = format!("SELECT {GATE_COLUMNS} FROM gate_results g");
        let query = in_window(&select, "g.evaluated_at", "", window).plan_each();
        decode(&self.tx.fetch(query).await?, gate_row)
    }

    async fn open_incidents_for(&mut self, services: &[String]) -> Result<Vec<OpenIncident>> {
        fetch_all(
            &mut self.tx,
            q(format!(
                "SELECT id, service, environment, opened_at FROM incidents
                     WHERE status = 'open' AND {}",
                T::any("service", 1)
            ))
            .bind(services.to_vec())
            .plan_each(),
            open_incident,
        )
        .await
    }

    async fn open_incidents_with_flag(&mut self, flag: &str) -> Result<Vec<OpenIncident>> {
        fetch_all(
            &mut self.tx,
            q(format!(
                "SELECT DISTINCT i.id, i.service, i.environment, i.opened_at
                     FROM incidents i
                     JOIN incident_changes c ON c.incident_id = i.id
                     JOIN deploys d ON d.id = c.deploy_id
                     WHERE i.status = 'open' AND {}
                     ORDER BY i.id",
                T::json_array_has("d.flags", 1)
            ))
            .bind(flag),
            open_incident,
        )
        .await
    }

    async fn find_deploy(
        &mut self,
        service: &str,
        environment: Option<&str>,
        version: &str,
    ) -> Result<Option<String>> {
        let rows = self
            .tx
            .fetch(
                q("SELECT id FROM deploys WHERE service = $1 AND version = $3
                     AND ($2 IS NULL OR environment IS NULL OR environment = $2)
                   ORDER BY started_at DESC LIMIT 1")
                .bind(service)
                .bind(environment)
                .bind(version)
                .plan_each(),
            )
            .await?;
        rows.first().map(|r| r.text("id")).transpose()
    }

    async fn incidents_of_deploys(&mut self, deploy_ids: &[String]) -> Result<Vec<(i64, String)>> {
        let rows = self
            .tx
            .fetch(
                q(format!(
                    "SELECT incident_id, deploy_id FROM incident_changes WHERE {}",
                    T::any("deploy_id", 1)
                ))
                .bind(deploy_ids.to_vec())
                .plan_each(),
            )
            .await?;
        decode(&rows, |r| pair(r, "incident_id", "deploy_id"))
    }

    async fn attach_changes(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        self.tx.attach(Attach::Changes, pairs).await
    }

    async fn attach_gates(&mut self, pairs: &[(i64, String)]) -> Result<Vec<(i64, String)>> {
        self.tx.attach(Attach::Gates, pairs).await
    }

    async fn insert_timeline(&mut self, entries: &[NewEntry]) -> Result<()> {
        self.tx.insert_timeline(entries).await
    }

    async fn resolvable_incidents(
        &mut self,
        quiet_before: DateTime<Utc>,
    ) -> Result<Vec<(i64, String, DateTime<Utc>)>> {
        let rows = self
            .tx
            .fetch(
                q("SELECT id, group_key, last_end FROM (
                       SELECT i.id, i.group_key,
                              (SELECT max(a.ends_at) FROM incident_alerts a WHERE a.incident_id = i.id) AS last_end
                       FROM incidents i
                       WHERE i.status = 'open'
                         AND NOT EXISTS (SELECT 1 FROM incident_alerts f
                                         WHERE f.incident_id = i.id AND f.status = 'firing')
                   ) c WHERE last_end <= $1")
                .bind(quiet_before)
                .plan_each(),
            )
            .await?;
        decode(&rows, |r| {
            Ok((r.int("id")?, r.text("group_key")?, r.time("last_end")?))
        })
    }

    async fn resolve_incidents(&mut self, incidents: &[(i64, DateTime<Utc>)]) -> Result<Vec<i64>> {
        self.tx.resolve_incidents(incidents).await
    }
}
