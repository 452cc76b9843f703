//! `IncidentStore` over any dialect: incident lists and pages, timelines,
//! logs, a person's resolution and word on a cause.

use super::*;

#[async_trait]
impl<D: Dialect> IncidentStore for Db<D> {
    async fn list_incidents(&self, f: &IncidentFilter) -> Result<Vec<IncidentRow>> {
        // Each filter is written into the statement only when given.
        let mut query = q(format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE TRUE"
        ))
        .and_if("status = {}", f.status.as_deref())
        .and_if("service = {}", f.service.as_deref())
        .and_if("id < {}", f.before_id);
        if let Some(sev) = &f.severities {
            let cond = <D::Tx as DialectTx>::any(
                "COALESCE(declared_severity, severity)",
                query.next_param(),
            );
            query = query.and(&cond, sev.clone());
        }
        query = match f.stage.as_deref() {
            Some("investigating") => query.and(
                "status = 'open' AND (stage IS NULL OR stage = {})",
                "investigating",
            ),
            stage => query.and_if("stage = {}", stage),
        };
        query = match f.acknowledged {
            Some(true) => query.and_where("acknowledged_at IS NOT NULL"),
            Some(false) => query.and_where("acknowledged_at IS NULL"),
            None => query,
        };
        let query = query
            .and_if("commander = {}", f.commander.as_deref())
            .newest_first(f.limit);
        self.read_all(query, incident_row).await
    }

    async fn alert_groups(&self, id: i64) -> Result<Vec<crate::AlertGroup>> {
        let groups = self
            .d
            .read(
                q("SELECT alertname, count(*) AS n,
                          COALESCE(SUM(CASE WHEN status = 'firing' THEN 1 ELSE 0 END), 0) AS firing,
                          MIN(starts_at) AS first, MAX(COALESCE(ends_at, starts_at)) AS last
                   FROM incident_alerts WHERE incident_id = $1
                   GROUP BY alertname ORDER BY MIN(starts_at), alertname LIMIT 200")
                .bind(id),
            )
            .await?;
        // The latest notification of each name gives its labels and links
        // (the newest 2,000 notifications are read, whatever the storm).
        let latest = self
            .d
            .read(
                q(
                    "SELECT alertname, labels, annotations, generator_url FROM alert_events
                   WHERE incident_id = $1 ORDER BY occurred_at DESC LIMIT 2000",
                )
                .bind(id),
            )
            .await?;
        let mut links: HashMap<String, (Value, Option<String>, Option<String>)> = HashMap::new();
        for r in &latest {
            let name = r.text("alertname")?;
            if links.contains_key(&name) {
                continue;
            }
            let annotations = r.json("annotations")?;
            let runbook = annotations
                .get("runbook_url")
                .and_then(Value::as_str)
                .map(str::to_string);
            let generator = Some(r.text("generator_url")?).filter(|u| !u.is_empty());
            links.insert(name, (r.json("labels")?, runbook, generator));
        }
        decode(&groups, |r| {
            let alertname = r.text("alertname")?;
            let (labels, runbook_url, generator_url) = links.get(&alertname).cloned().unwrap_or((
                Value::Object(Default::default()),
                None,
                None,
            ));
            Ok(from_row!(r => crate::AlertGroup {
                firing: int;
                count = r.int("n")?, first_seen = r.time("first")?, last_seen = r.time("last")?,
                labels, runbook_url, generator_url, alertname
            }))
        })
        .map_err(in_row("incident_alerts", format!("of incident {id}")))
    }

    async fn declare_incident(
        &self,
        i: &crate::NewDeclaredIncident,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<IncidentRow> {
        let mut tx = self.d.begin().await?;
        // Its own group: alerts never join a declared incident by accident.
        let group = format!("declared:{}@{}", i.by, i.at.timestamp_micros());
        let rows = tx
            .fetch(
                q(format!(
                    "INSERT INTO incidents (group_key, service, environment, title, status,
                         opened_at, declared_severity, summary, declared_by, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $5, $5)
                     RETURNING {INCIDENT_COLUMNS}"
                ))
                .bind(group)
                .bind(i.service.as_str())
                .bind(i.environment.as_deref())
                .bind(i.title.as_str())
                .bind(i.at)
                .bind(i.severity.as_deref())
                .bind(i.summary.as_deref())
                .bind(i.by.as_str()),
            )
            .await?;
        let incident = incident_row(rows.first().ok_or_else(|| {
            StoreError::Internal("declaring an incident returned no row".into())
        })?)?;
        let entries: Vec<NewEntry> = timeline
            .iter()
            .map(|e| NewEntry {
                incident_id: incident.id,
                ..e.clone()
            })
            .collect();
        let audit = NewAudit {
            incident_id: Some(incident.id),
            ..audit.clone()
        };
        commit_with(tx, &audit, &entries).await?;
        Ok(incident)
    }

    async fn acknowledge_incident(
        &self,
        id: i64,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<Option<bool>> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q("UPDATE incidents SET acknowledged_at = $2, acknowledged_by = $3, updated_at = $2
                   WHERE id = $1 AND acknowledged_at IS NULL")
                .bind(id)
                .bind(audit.at)
                .bind(&audit.actor),
            )
            .await?;
        if n == 0 {
            let exists = !tx
                .fetch(q("SELECT id FROM incidents WHERE id = $1").bind(id))
                .await?
                .is_empty();
            return Ok(exists.then_some(false));
        }
        commit_with(tx, audit, timeline).await?;
        Ok(Some(true))
    }

    async fn update_incident(
        &self,
        id: i64,
        u: &crate::IncidentUpdate,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<IncidentRow> {
        let mut tx = self.d.begin().await?;
        // One statement: each column keeps its value unless the update names it.
        let query = q(format!(
            "UPDATE incidents SET
                         declared_severity = CASE WHEN $2 THEN $3 ELSE declared_severity END,
                         stage = CASE WHEN $4 THEN $5 ELSE stage END,
                         commander = CASE WHEN $6 THEN $7 ELSE commander END,
                         summary = CASE WHEN $8 THEN $9 ELSE summary END,
                         updated_at = $10
                     WHERE id = $1 RETURNING {INCIDENT_COLUMNS}"
        ))
        .bind(id)
        .bind(u.declared_severity.is_some())
        .bind(u.declared_severity.clone().flatten())
        .bind(u.stage.is_some())
        .bind(u.stage.clone().flatten())
        .bind(u.commander.is_some())
        .bind(u.commander.clone().flatten())
        .bind(u.summary.is_some())
        .bind(u.summary.clone().flatten())
        .bind(audit.at);
        let incident = fetch_one(&mut tx, query, incident_row).await?;
        commit_with(tx, audit, timeline).await?;
        Ok(incident)
    }

    async fn incident(&self, id: i64) -> Result<IncidentDetail> {
        let o = self.incident_overview(id).await?;
        let alerts = self
            .d
            .read(
                q("SELECT fingerprint, alertname, status, labels, starts_at, ends_at FROM incident_alerts
                   WHERE incident_id = $1 ORDER BY starts_at, fingerprint")
                .bind(id),
            )
            .await?;
        let alerts = decode(&alerts, |r| {
            Ok(from_row!(r => IncidentAlertRow {
                fingerprint: text, alertname: text, status: text, labels: json, starts_at: time,
                ends_at: opt_time,
            }))
        })
        .map_err(in_row("incident_alerts", format!("of incident {id}")))?;
        Ok(IncidentDetail {
            incident: o.incident,
            alerts,
            changes: o.changes,
            causes: o.causes,
            gates: o.gates,
            timeline_entries: o.timeline_entries,
        })
    }

    async fn incident_overview(&self, id: i64) -> Result<IncidentOverview> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        let incident = incident_row(rows.first().ok_or(StoreError::NotFound)?)?;
        let alerts = self
            .d
            .read(
                q("SELECT count(*) AS n,
                          COALESCE(SUM(CASE WHEN status = 'firing' THEN 1 ELSE 0 END), 0) AS firing,
                          MIN(starts_at) AS first
                   FROM incident_alerts WHERE incident_id = $1")
                .bind(id),
            )
            .await?;
        let (alert_count, alerts_firing, first_alert) = match alerts.first() {
            Some(r) => (r.int("n")?, r.int("firing")?, r.opt_time("first")?),
            None => (0, 0, None),
        };
        let changes = self
            .d
            .read(
                q(format!(
                    "SELECT {DEPLOY_COLUMNS} FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
                     WHERE c.incident_id = $1 ORDER BY d.started_at DESC"
                ))
                .bind(id),
            )
            .await?;
        let marked = self
            .d
            .read(
                q(
                    "SELECT deploy_id, CASE WHEN cause THEN 1 ELSE 0 END AS cause_n, cause_by,
                          cause_at AS cause_at
                   FROM incident_changes WHERE incident_id = $1 AND cause IS NOT NULL",
                )
                .bind(id),
            )
            .await?;
        let mut causes = BTreeMap::new();
        for r in &marked {
            let read = || -> Result<(String, ChangeCause)> {
                Ok((
                    r.text("deploy_id")?,
                    ChangeCause {
                        cause: r.int("cause_n")? == 1,
                        by: r.opt_text("cause_by")?,
                        at: r.opt_time("cause_at")?,
                    },
                ))
            };
            let (deploy, cause) =
                read().map_err(in_row("incident_changes", format!("of incident {id}")))?;
            causes.insert(deploy, cause);
        }
        let gates = self
            .d
            .read(
                q(format!(
                    "SELECT {GATE_COLUMNS} FROM incident_gates ig JOIN gate_results g ON g.id = ig.gate_id
                     WHERE ig.incident_id = $1 ORDER BY g.evaluated_at"
                ))
                .bind(id),
            )
            .await?;
        let count = self
            .d
            .read(
                q(
                    "SELECT (SELECT count(*) FROM timeline WHERE incident_id = $1)
                        + (SELECT count(*) FROM alert_events WHERE incident_id = $1) AS n",
                )
                .bind(id),
            )
            .await?;
        Ok(IncidentOverview {
            incident,
            alert_count,
            alerts_firing,
            first_alert,
            changes: decode(&changes, deploy_row)?,
            causes,
            gates: decode(&gates, gate_row)?,
            timeline_entries: count.first().map(|r| r.int("n")).transpose()?.unwrap_or(0),
        })
    }

    async fn timeline(
        &self,
        incident_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TimelineRow>> {
        // Alert entries come from the alert events themselves; at equal times an
        // alert sorts before what it caused (seq 0 before any stored entry).
        let rows = self
            .d
            .read(
                q("SELECT at, seq, kind, source, summary, ref_id, alertname, note FROM (
                      SELECT occurred_at AS at, 0 AS seq, status AS kind, 'alertmanager' AS source,
                             NULL AS summary, id AS ref_id, alertname, annotations ->> 'summary' AS note
                      FROM alert_events WHERE incident_id = $1
                      UNION ALL
                      SELECT at, id, kind, source, summary, ref_id, NULL, NULL FROM timeline WHERE incident_id = $1
                   ) t ORDER BY at, seq, ref_id LIMIT $2 OFFSET $3")
                .bind(incident_id)
                .bind(limit)
                .bind(offset),
            )
            .await?;
        decode(&rows, |r| {
            Ok(crate::timeline_row(
                r.time("at")?,
                r.int("seq")?,
                r.text("kind")?,
                r.text("source")?,
                r.opt_text("summary")?,
                r.text("ref_id")?,
                r.opt_text("alertname")?,
                r.opt_text("note")?,
            ))
        })
    }

    async fn timeline_since(
        &self,
        after_seq: i64,
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<TimelineEvent>> {
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT id, incident_id, at, kind, source, summary, ref_id FROM timeline
                     WHERE id > $1 AND {} ORDER BY id LIMIT $3",
                    <D::Tx as DialectTx>::any("kind", 2)
                ))
                .bind(after_seq)
                .bind(kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                .bind(limit),
            )
            .await?;
        decode(&rows, |r| {
            Ok(from_row!(r => TimelineEvent {
                incident_id: int, at: time, kind: text, source: text, summary: text,
                ref_id: text; seq = r.int("id")?
            }))
        })
    }

    async fn incident_times(&self, ids: &[i64]) -> Result<Vec<crate::IncidentTimes>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .d
            .read(
                q(format!(
                    "SELECT i.id,
                       (SELECT min(al.starts_at) FROM incident_alerts al WHERE al.incident_id = i.id) AS first_alert,
                       (SELECT max(d.started_at) FROM incident_changes c JOIN deploys d ON d.id = c.deploy_id
                         WHERE c.incident_id = i.id AND d.started_at <= i.opened_at) AS suspect_at,
                       (SELECT min(au.at) FROM audit au JOIN actions a ON a.id = au.action_id
                         WHERE a.incident_id = i.id AND au.event = 'executed'
                           AND a.kind IN ('kill_switch', 'rollback')) AS mitigated_at,
                       (SELECT max(al.ends_at) FROM incident_alerts al WHERE al.incident_id = i.id) AS last_end
                     FROM incidents i WHERE {}",
                    <D::Tx as DialectTx>::any("i.id", 1)
                ))
                .bind(ids.to_vec()),
            )
            .await?;
        decode(&rows, |r| {
            Ok(from_row!(r => crate::IncidentTimes {
                first_alert: opt_time, suspect_at: opt_time, mitigated_at: opt_time;
                incident_id = r.int("id")?, last_alert_end = r.opt_time("last_end")?
            }))
        })
    }

    async fn resolve_incident_manually(
        &self,
        id: i64,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q(
                    "UPDATE incidents SET status = 'resolved', resolved_at = $2, updated_at = $3
                   WHERE id = $1 AND status = 'open'",
                )
                .bind(id)
                .bind(audit.at)
                .bind(Utc::now()),
            )
            .await?;
        commit_if_changed(tx, n, audit, timeline).await
    }

    async fn set_cause(
        &self,
        word: &CauseWord<'_>,
        audit: &NewAudit,
        timeline: &[NewEntry],
    ) -> Result<bool> {
        let cause = word.cause;
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q(
                    "UPDATE incident_changes SET cause = $3, cause_by = $4, cause_at = $5
                   WHERE incident_id = $1 AND deploy_id = $2",
                )
                .bind(word.incident_id)
                .bind(word.deploy_id)
                .bind(Arg::Bool(cause))
                .bind(cause.map(|_| audit.actor.clone()))
                .bind(cause.map(|_| audit.at)),
            )
            .await?;
        commit_if_changed(tx, n, audit, timeline).await
    }

    async fn scan_logs(
        &self,
        window: ServiceWindow<'_>,
        limit: Option<i64>,
        each: &mut (dyn FnMut(LogRow) + Send),
    ) -> Result<u64> {
        let query = in_window(
            "SELECT at, level, message FROM log_lines",
            "at",
            " LIMIT $5",
            window,
        )
        .bind(limit.unwrap_or(i64::MAX));
        self.d
            .stream(query, &mut |r| {
                each(from_row!(r => LogRow { at: time, level: opt_text, message: text }));
                Ok(())
            })
            .await
    }
}
