//! What people do to an incident itself, whichever door they come through
//! (REST, the pages, Slack, the CLI): declare one, acknowledge it, set its
//! severity, stage, commander and summary, add a note, resolve it, give their
//! word on a suspect change. Each writes its timeline entry and audit row
//! together, under the person's identity.

use chrono::Utc;
use firebreak_domain::access::{Identity, Via};
use firebreak_domain::response::{identity_name, Stage};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{
    CauseWord, IncidentRow, IncidentUpdate, NewAudit, NewDeclaredIncident, StoreError,
};
use serde_json::json;

use crate::commands::{bad, CommandError};
use crate::Remediation;

/// The longest note, in characters.
pub const MAX_NOTE: usize = 3000;
/// The longest comment on a cause, in bytes.
pub const MAX_CAUSE_COMMENT: usize = 2000;

/// " from Slack" and the like: where a person acted, for a timeline line.
fn door(identity: &Identity) -> &'static str {
    match identity.via {
        Via::Slack => " from Slack",
        Via::Session | Via::Proxy => " from the web",
        _ => "",
    }
}

/// What a person asks to change on an incident (`None`: leave it; an empty
/// string clears the commander or the summary).
#[derive(Debug, Clone, Default)]
pub struct IncidentChange {
    pub severity: Option<String>,
    pub stage: Option<String>,
    pub commander: Option<String>,
    pub summary: Option<String>,
}

/// The longest title and summary, in characters.
pub const MAX_TITLE: usize = 200;
pub const MAX_SUMMARY: usize = 5000;

fn text_field(field: &str, v: &str, max: usize) -> Result<String, CommandError> {
    let v = v.trim();
    if v.chars().count() > max {
        return Err(bad(field, format!("must be at most {max} characters")));
    }
    Ok(v.to_string())
}

impl Remediation {
    fn level(&self, v: &str) -> Result<String, CommandError> {
        let scale = self.severities();
        scale.level(v).map(str::to_string).ok_or_else(|| {
            bad(
                "severity",
                format!(
                    "{v:?} is not a severity: one of {}",
                    scale.levels.join(", ")
                ),
            )
        })
    }

    /// A person declares an incident, no alert needed: open, investigating,
    /// declared by them.
    pub async fn declare_incident(
        &self,
        identity: &Identity,
        title: &str,
        service: &str,
        environment: Option<&str>,
        severity: Option<&str>,
        summary: Option<&str>,
    ) -> Result<IncidentRow, CommandError> {
        let title = text_field("title", title, MAX_TITLE)?;
        if title.is_empty() {
            return Err(bad("title", "missing: say in a few words what is wrong"));
        }
        let service = service.trim();
        if service.is_empty()
            || service.len() > 100
            || !service
                .chars()
                .all(|c| c.is_alphanumeric() || "._-/".contains(c))
        {
            return Err(bad(
                "service",
                "a service name: 1-100 letters, digits, '.', '_', '-', '/'",
            ));
        }
        let environment = environment.map(str::trim).filter(|e| !e.is_empty());
        if environment.is_some_and(|e| e.len() > 100) {
            return Err(bad("environment", "must be at most 100 characters"));
        }
        let severity = severity.map(|s| self.level(s)).transpose()?;
        let summary = summary
            .map(|s| text_field("summary", s, MAX_SUMMARY))
            .transpose()?
            .filter(|s| !s.is_empty());
        let now = Utc::now();
        let entry = entry_by(
            identity,
            0,
            kind::INCIDENT_DECLARED,
            format!(
                "Incident declared by {}{}: {title}{}",
                identity.id,
                door(identity),
                severity
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            format!("declared-by:{}@{}", identity.id, now.timestamp_micros()),
        );
        let audit = NewAudit::by(
            identity.id.clone(),
            "incident_declared",
            json!({"title": title, "service": service, "environment": environment,
                   "severity": severity, "summary": summary}),
        );
        let incident = self
            .store
            .declare_incident(
                &NewDeclaredIncident {
                    title,
                    service: service.to_string(),
                    environment: environment.map(str::to_string),
                    severity,
                    summary,
                    by: identity.id.clone(),
                    at: now,
                },
                &audit,
                &[entry],
            )
            .await?;
        Ok(incident)
    }

    /// A person acknowledges an incident: the first acknowledgement is kept
    /// (`true`); acknowledging again changes nothing (`false`).
    pub async fn acknowledge_incident(
        &self,
        identity: &Identity,
        incident: i64,
    ) -> Result<bool, CommandError> {
        let (entry, audit) = act_on(
            identity,
            incident,
            (kind::INCIDENT_ACKNOWLEDGED, "incident_acknowledged"),
            "Acknowledged",
            format!("ack:{incident}"),
        );
        match self
            .store
            .acknowledge_incident(incident, &audit, &[entry])
            .await?
        {
            Some(first) => Ok(first),
            None => Err(CommandError::NotFound(format!("no incident {incident}"))),
        }
    }

    /// A person changes an incident's severity, stage, commander or summary.
    /// Each change is named on one timeline entry (`incident_updated`) with
    /// what it was; the stage `resolved` resolves the incident as a person
    /// (its alerts may still fire: see the README). Nothing changed: the
    /// incident as it is, and no entry.
    pub async fn update_incident(
        &self,
        identity: &Identity,
        incident: i64,
        change: &IncidentChange,
    ) -> Result<IncidentRow, CommandError> {
        let before = self
            .store
            .incident_overview(incident)
            .await
            .map_err(|e| not_found(e, incident))?
            .incident;
        let mut update = IncidentUpdate::default();
        let mut said: Vec<String> = Vec::new();
        let mut resolve = false;
        if let Some(v) = &change.severity {
            let level = self.level(v)?;
            let was = self
                .severities()
                .of(
                    before.response.declared_severity.as_deref(),
                    before.severity.as_deref(),
                )
                .map(str::to_string);
            if was.as_deref() != Some(level.as_str()) {
                said.push(format!(
                    "severity {} -> {level}",
                    was.as_deref().unwrap_or("none")
                ));
                update.declared_severity = Some(Some(level));
            }
        }
        if let Some(v) = &change.stage {
            let stage = Stage::parse(v).ok_or_else(|| {
                bad(
                    "stage",
                    format!(
                        "{v:?} is not a stage: one of {}",
                        Stage::ALL.map(Stage::as_str).join(", ")
                    ),
                )
            })?;
            let was = Stage::of(&before.status, before.response.stage.as_deref());
            if stage == Stage::Resolved {
                resolve = before.status == "open";
            } else if before.status != "open" {
                return Err(CommandError::Conflict(format!(
                    "incident {incident} is resolved: its stage stays resolved"
                )));
            } else if was != stage {
                said.push(format!("stage {} -> {}", was.as_str(), stage.as_str()));
                update.stage = Some(Some(stage.as_str().to_string()));
            }
        }
        if let Some(v) = &change.commander {
            let new = if v.trim().is_empty() {
                None
            } else {
                Some(identity_name(v).map_err(|m| bad("commander", m))?)
            };
            if new != before.response.commander {
                said.push(format!(
                    "commander {} -> {}",
                    before.response.commander.as_deref().unwrap_or("none"),
                    new.as_deref().unwrap_or("none")
                ));
                update.commander = Some(new);
            }
        }
        if let Some(v) = &change.summary {
            let new = Some(text_field("summary", v, MAX_SUMMARY)?).filter(|s| !s.is_empty());
            if new != before.response.summary {
                said.push("summary updated".into());
                update.summary = Some(new);
            }
        }
        let mut after = before;
        if !said.is_empty() {
            let now = Utc::now();
            let entry = entry_by(
                identity,
                incident,
                kind::INCIDENT_UPDATED,
                format!("{}{}: {}", identity.id, door(identity), said.join("; ")),
                format!("updated-by:{}@{}", identity.id, now.timestamp_micros()),
            );
            let audit = audit_by(
                identity,
                incident,
                "incident_updated",
                json!({"severity": change.severity, "stage": change.stage,
                           "commander": change.commander, "summary": change.summary}),
            );
            after = self
                .store
                .update_incident(incident, &update, &audit, &[entry])
                .await
                .map_err(|e| not_found(e, incident))?;
        }
        if resolve {
            self.resolve_incident(identity, incident).await?;
            after = self.store.incident_overview(incident).await?.incident;
        }
        Ok(after)
    }

    /// A person's note on an incident's timeline (1 to 3,000 characters,
    /// trimmed), attributed to their identity. `NotFound` without such an
    /// incident.
    pub async fn add_note(
        &self,
        identity: &Identity,
        incident: i64,
        text: &str,
    ) -> Result<NewEntry, CommandError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_NOTE {
            return Err(bad("text", format!("must be 1-{MAX_NOTE} characters")));
        }
        self.store
            .incident_overview(incident)
            .await
            .map_err(|e| not_found(e, incident))?;
        let now = Utc::now();
        let entry = entry_by(
            identity,
            incident,
            kind::NOTE,
            text.to_string(),
            format!("note:{}@{}", identity.id, now.timestamp_micros()),
        );
        let audit = audit_by(identity, incident, "note_added", json!({"note": text}));
        self.store
            .record(&[audit], std::slice::from_ref(&entry))
            .await?;
        Ok(entry)
    }

    /// A person resolves an open incident now, whatever its alerts say.
    /// `false` when it was not open (nothing changed).
    pub async fn resolve_incident(
        &self,
        identity: &Identity,
        incident: i64,
    ) -> Result<bool, CommandError> {
        let now = Utc::now();
        let (entry, audit) = act_on(
            identity,
            incident,
            (kind::INCIDENT_RESOLVED, "resolved"),
            "Incident resolved",
            format!("resolved-by:{}@{}", identity.id, now.timestamp_micros()),
        );
        self.store
            .resolve_incident_manually(incident, &audit, &[entry])
            .await
            .map_err(|e| not_found(e, incident))
    }

    /// Records a person's word on whether suspect change `deploy` caused the
    /// incident (`None`: not known), naming the change by service and
    /// version on the timeline. `NotFound` when the change is not linked to
    /// the incident.
    pub async fn mark_cause(
        &self,
        identity: &Identity,
        incident: i64,
        deploy: &str,
        cause: Option<bool>,
        comment: Option<&str>,
    ) -> Result<(), CommandError> {
        if comment.is_some_and(|c| c.len() > MAX_CAUSE_COMMENT) {
            return Err(bad(
                "comment",
                format!("must be at most {MAX_CAUSE_COMMENT} characters"),
            ));
        }
        let overview = self
            .store
            .incident_overview(incident)
            .await
            .map_err(|e| not_found(e, incident))?;
        let Some(change) = overview.changes.iter().find(|d| d.id == deploy) else {
            return Err(CommandError::NotFound(format!(
                "change {deploy:?} is not linked to incident {incident}: GET /api/v1/incidents/{incident} lists its suspect changes"
            )));
        };
        let who = identity.id.as_str();
        let now = Utc::now();
        let said = match cause {
            Some(true) => "the cause",
            Some(false) => "not the cause",
            None => "of unknown part",
        };
        let audit = audit_by(
            identity,
            incident,
            "cause_marked",
            json!({"deploy": deploy, "service": change.service, "version": change.version,
                       "cause": cause, "comment": comment}),
        );
        let entry = entry_by(
            identity,
            incident,
            "cause_marked",
            format!(
                "{who} marked change {} {} ({deploy}) as {said}{}",
                change.service,
                change.version,
                comment.map(|c| format!(": {c}")).unwrap_or_default()
            ),
            format!("cause:{deploy}:{}", now.timestamp_micros()),
        );
        match self
            .store
            .set_cause(
                &CauseWord {
                    incident_id: incident,
                    deploy_id: deploy,
                    cause,
                },
                &audit,
                &[entry],
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(CommandError::NotFound(format!(
                "change {deploy:?} is not linked to incident {incident}: GET /api/v1/incidents/{incident} lists its suspect changes"
            ))),
            Err(e) => Err(not_found(e, incident)),
        }
    }
}

/// A timeline entry a person made, now, under their identity.
/// The timeline entry (`kinds.0`, "`done` by who, from where") and the
/// audit row (`kinds.1`) of a person's act on an incident.
fn act_on(
    identity: &Identity,
    incident: i64,
    kinds: (&'static str, &str),
    done: &str,
    ref_id: String,
) -> (NewEntry, NewAudit) {
    let summary = format!("{done} by {}{}", identity.id, door(identity));
    let entry = entry_by(identity, incident, kinds.0, summary, ref_id);
    (entry, audit_by(identity, incident, kinds.1, json!({})))
}

fn entry_by(
    identity: &Identity,
    incident: i64,
    kind: &'static str,
    summary: String,
    ref_id: String,
) -> NewEntry {
    NewEntry {
        incident_id: incident,
        at: Utc::now(),
        kind,
        source: identity.id.clone(),
        summary,
        ref_id,
    }
}

/// The audit row of a person's change to an incident.
fn audit_by(
    identity: &Identity,
    incident: i64,
    event: &str,
    detail: serde_json::Value,
) -> NewAudit {
    NewAudit {
        incident_id: Some(incident),
        ..NewAudit::by(identity.id.clone(), event, detail)
    }
}

fn not_found(e: StoreError, incident: i64) -> CommandError {
    match e {
        StoreError::NotFound => CommandError::NotFound(format!("no incident {incident}")),
        e => e.into(),
    }
}
