//! What people do to an incident itself, whichever door they come through
//! (REST, the pages, Slack, the CLI): a note, a resolution, their word on a
//! suspect change. Each writes its timeline entry and audit row together,
//! under the person's identity.

use chrono::Utc;
use firebreak_domain::access::{Identity, Via};
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{NewAudit, StoreError};
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

impl Remediation {
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
        let entry = NewEntry {
            incident_id: incident,
            at: now,
            kind: kind::NOTE,
            source: identity.id.clone(),
            summary: text.to_string(),
            ref_id: format!("note:{}@{}", identity.id, now.timestamp_micros()),
        };
        let audit = NewAudit {
            incident_id: Some(incident),
            ..NewAudit::by(identity.id.clone(), "note_added", json!({"note": text}))
        };
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
        let entry = NewEntry {
            incident_id: incident,
            at: now,
            kind: kind::INCIDENT_RESOLVED,
            source: identity.id.clone(),
            summary: format!("Incident resolved by {}{}", identity.id, door(identity)),
            ref_id: format!("resolved-by:{}@{}", identity.id, now.timestamp_micros()),
        };
        let audit = NewAudit {
            incident_id: Some(incident),
            ..NewAudit::by(identity.id.clone(), "resolved", json!({}))
        };
        self.store
            .resolve_incident_manually(incident, now, &audit, &[entry])
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
        let audit = NewAudit {
            incident_id: Some(incident),
            ..NewAudit::by(
                who,
                "cause_marked",
                json!({"deploy": deploy, "service": change.service, "version": change.version,
                       "cause": cause, "comment": comment}),
            )
        };
        let entry = NewEntry {
            incident_id: incident,
            at: now,
            kind: "cause_marked",
            source: who.to_string(),
            summary: format!(
                "{who} marked change {} {} ({deploy}) as {said}{}",
                change.service,
                change.version,
                comment.map(|c| format!(": {c}")).unwrap_or_default()
            ),
            ref_id: format!("cause:{deploy}:{}", now.timestamp_micros()),
        };
        match self
            .store
            .set_cause(incident, deploy, cause, &audit, &[entry])
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

fn not_found(e: StoreError, incident: i64) -> CommandError {
    match e {
        StoreError::NotFound => CommandError::NotFound(format!("no incident {incident}")),
        e => e.into(),
    }
}
