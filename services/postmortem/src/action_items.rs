//! Action items: what a team decided to do after an incident, whichever door
//! they use (REST, the editor), each change one audit row and one timeline
//! entry; exported to a tracker through the outbox (`trackers.rs`), and
//! closed or reopened when the tracker's issue is.

use chrono::{NaiveDate, Utc};
use firebreak_domain::response::identity_name;
use firebreak_domain::timeline::{kind, NewEntry};
use firebreak_store::{
    ActionItemChange, ActionItemRow, NewActionItem, NewAudit, Store, StoreError, TrackerStatus,
};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::trackers::{TrackersConfig, TRACKERS};

/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// The most action items one incident holds.
pub const MAX_PER_INCIDENT: usize = 200;
pub const PRIORITIES: [&str; 3] = ["high", "medium", "low"];
pub const STATUSES: [&str; 3] = ["open", "done", "wont_do"];

#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("{field}: {message}")]
    Bad {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ItemError {
    fn from(e: StoreError) -> ItemError {
        match e {
            StoreError::Conflict(m) => ItemError::Conflict(m),
            e => ItemError::Store(e),
        }
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> ItemError {
    ItemError::Bad {
        field,
        message: message.into(),
    }
}

/// What a person asks to create (the API's JSON body).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    #[serde(default)]
    pub title: String,
    pub owner: Option<String>,
    pub due: Option<String>,
    pub priority: Option<String>,
    /// `github`, `jira`, `none` (keep it here), or unset: `trackers.default`.
    pub tracker: Option<String>,
}

/// What a person asks to change (the API's JSON body); `Some(None)`
/// (`"owner": null`) clears an owner or a due date, an absent key keeps it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub due: Option<Option<String>>,
    pub priority: Option<String>,
    pub status: Option<String>,
}

/// A key given, `null` or not: `null` and absent differ.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn title(t: &str) -> Result<String, ItemError> {
    let t = t.trim();
    if t.is_empty() {
        return Err(bad("title", "must not be empty: say what will be done"));
    }
    if t.chars().count() > MAX_TITLE_CHARS {
        return Err(bad(
            "title",
            format!("must be at most {MAX_TITLE_CHARS} characters (details belong in the tracker)"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(bad("title", "must be one line, without control characters"));
    }
    Ok(t.to_string())
}

fn owner(o: &str) -> Result<String, ItemError> {
    identity_name(o).map_err(|m| bad("owner", m))
}

fn due(d: &str) -> Result<String, ItemError> {
    let d = d.trim();
    NaiveDate::parse_from_str(d, "%Y-%m-%d")
        .map(|day| day.format("%Y-%m-%d").to_string())
        .map_err(|_| bad("due", format!("{d:?} is not a date: give YYYY-MM-DD")))
}

/// The one of `words` that `given` is (any case), or an error naming them.
fn one_of(field: &'static str, words: &[&str], given: &str) -> Result<String, ItemError> {
    words
        .iter()
        .find(|w| w.eq_ignore_ascii_case(given.trim()))
        .map(|w| w.to_string())
        .ok_or_else(|| {
            bad(
                field,
                format!("{given:?}: give one of {}", words.join(", ")),
            )
        })
}

/// The tracker an item goes to: the one named, or the default.
fn tracker_for(
    asked: Option<&str>,
    trackers: &TrackersConfig,
) -> Result<Option<String>, ItemError> {
    match asked.map(str::trim) {
        None => Ok(trackers.default.clone()),
        Some("none") | Some("") => Ok(None),
        Some(t) => checked_tracker(t, trackers).map(Some),
    }
}

fn checked_tracker(t: &str, trackers: &TrackersConfig) -> Result<String, ItemError> {
    if !TRACKERS.contains(&t) {
        return Err(bad(
            "tracker",
            format!("{t:?}: give github or jira (or none to keep the item here)"),
        ));
    }
    if !trackers.configured(t) {
        return Err(bad(
            "tracker",
            format!("{t} is not configured: set [trackers.{t}] (docs/postmortems.md)"),
        ));
    }
    Ok(t.to_string())
}

/// A person's name as the timeline shows it (`user:ana` -> `ana`).
fn short(who: &str) -> &str {
    who.split_once(':').map_or(who, |(_, n)| n)
}

fn entry(incident_id: i64, by: &str, summary: String, ref_id: String) -> NewEntry {
    NewEntry {
        incident_id,
        at: Utc::now(),
        kind: kind::ACTION_ITEM,
        source: by.to_string(),
        summary,
        ref_id,
    }
}

/// Adds an action item to an incident.
pub async fn create(
    store: &dyn Store,
    trackers: &TrackersConfig,
    incident_id: i64,
    item: NewItem,
    by: &str,
) -> Result<ActionItemRow, ItemError> {
    let title = title(&item.title)?;
    let owner = item.owner.as_deref().map(owner).transpose()?;
    let due = item.due.as_deref().map(due).transpose()?;
    let priority = item
        .priority
        .as_deref()
        .map(|p| one_of("priority", &PRIORITIES, p))
        .transpose()?
        .unwrap_or_else(|| "medium".into());
    let export_to = tracker_for(item.tracker.as_deref(), trackers)?;
    match store.action_items(incident_id).await {
        Ok(items) if items.len() >= MAX_PER_INCIDENT => {
            return Err(ItemError::Conflict(format!(
                "incident {incident_id} holds {MAX_PER_INCIDENT} action items already, the most one incident may hold: close or merge some"
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    let at = Utc::now();
    let mut audit = NewAudit::by(
        by,
        "action_item_created",
        json!({"title": title, "owner": owner, "due": due, "priority": priority, "tracker": export_to}),
    );
    audit.incident_id = Some(incident_id);
    let mut said = format!("{} added action item \"{title}\"", short(by));
    if let Some(o) = &owner {
        said += &format!(", owner {}", short(o));
    }
    if let Some(d) = &due {
        said += &format!(", due {d}");
    }
    let new = NewActionItem {
        incident_id,
        title,
        owner,
        due,
        priority,
        created_by: by.to_string(),
        at,
        export_to,
    };
    store
        .create_action_item(&new, &audit, &entry(incident_id, by, said, String::new()))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ItemError::NotFound(format!("no incident {incident_id}")),
            e => e.into(),
        })
}

fn not_found(id: i64) -> impl Fn(StoreError) -> ItemError {
    move |e| match e {
        StoreError::NotFound => ItemError::NotFound(format!("no action item {id}")),
        e => e.into(),
    }
}

/// Changes an action item.
pub async fn update(
    store: &dyn Store,
    id: i64,
    patch: ItemPatch,
    by: &str,
) -> Result<ActionItemRow, ItemError> {
    let change = ActionItemChange {
        title: patch.title.as_deref().map(title).transpose()?,
        owner: patch
            .owner
            .map(|o| o.as_deref().map(owner).transpose())
            .transpose()?,
        due: patch
            .due
            .map(|d| d.as_deref().map(due).transpose())
            .transpose()?,
        priority: (patch.priority.as_deref())
            .map(|p| one_of("priority", &PRIORITIES, p))
            .transpose()?,
        status: (patch.status.as_deref())
            .map(|s| one_of("status", &STATUSES, s))
            .transpose()?,
    };
    let before = store.action_item(id).await.map_err(not_found(id))?;
    let mut said = Vec::new();
    if let Some(s) = change.status.as_ref().filter(|s| **s != before.status) {
        said.push(match s.as_str() {
            "done" => "marked it done".to_string(),
            "wont_do" => "marked it won't do".to_string(),
            _ => "reopened it".to_string(),
        });
    }
    if let Some(t) = change.title.as_ref().filter(|t| **t != before.title) {
        said.push(format!("renamed it \"{t}\""));
    }
    if let Some(o) = change.owner.as_ref().filter(|o| **o != before.owner) {
        said.push(match o {
            Some(o) => format!("made {} its owner", short(o)),
            None => "left it without an owner".into(),
        });
    }
    if let Some(d) = change.due.as_ref().filter(|d| **d != before.due) {
        said.push(match d {
            Some(d) => format!("set it due {d}"),
            None => "took its due date away".into(),
        });
    }
    if let Some(p) = change.priority.as_ref().filter(|p| **p != before.priority) {
        said.push(format!("gave it {p} priority"));
    }
    let at = Utc::now();
    let entries: Vec<NewEntry> = if said.is_empty() {
        Vec::new()
    } else {
        vec![entry(
            before.incident_id,
            by,
            format!(
                "{} {} (action item \"{}\")",
                short(by),
                said.join(", "),
                before.title
            ),
            format!("action-item:{id}:{}", at.timestamp_micros()),
        )]
    };
    let mut audit = NewAudit::by(
        by,
        "action_item_changed",
        json!({"title": change.title, "owner": change.owner, "due": change.due,
               "priority": change.priority, "status": change.status}),
    );
    audit.incident_id = Some(before.incident_id);
    audit.at = at;
    store
        .update_action_item(id, &change, &audit, &entries)
        .await
        .map_err(not_found(id))
}

/// Puts an action item in the tracker outbox.
pub async fn export(
    store: &dyn Store,
    trackers: &TrackersConfig,
    id: i64,
    tracker: &str,
    by: &str,
) -> Result<ActionItemRow, ItemError> {
    let tracker = checked_tracker(tracker.trim(), trackers)?;
    let before = store.action_item(id).await.map_err(not_found(id))?;
    let mut audit = NewAudit::by(by, "action_item_export", json!({"tracker": tracker}));
    audit.incident_id = Some(before.incident_id);
    store
        .request_action_item_export(id, &tracker, &audit)
        .await
        .map_err(not_found(id))
}

/// A tracker's issue closed (`done`, `wont_do`) or reopened (`open`): the
/// item with that key follows. `None`: no item has that key.
pub async fn follow_tracker(
    store: &dyn Store,
    tracker: &str,
    key: &str,
    status: &str,
    delivery: Option<&str>,
) -> Result<Option<ActionItemRow>, ItemError> {
    let by = format!("tracker:{tracker}");
    let mut audit = NewAudit::by(
        by.clone(),
        "action_item_tracker_status",
        json!({"tracker": tracker, "key": key, "status": status, "delivery": delivery}),
    );
    audit.at = Utc::now();
    let at = audit.at;
    let said = match status {
        "done" => "closed",
        "wont_do" => "closed as not planned",
        _ => "reopened",
    };
    let entry_for = move |row: &ActionItemRow| {
        entry(
            row.incident_id,
            &by,
            format!(
                "{tracker} {said} {key}: action item \"{}\" is {}",
                row.title,
                row.status.replace('_', " ")
            ),
            format!("action-item:{}:{}", row.id, at.timestamp_micros()),
        )
    };
    let word = TrackerStatus {
        tracker,
        key,
        status,
        at,
    };
    Ok(store
        .set_action_item_status_by_tracker(&word, &audit, &entry_for)
        .await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_naming_the_field() {
        assert!(matches!(
            title("  "),
            Err(ItemError::Bad { field: "title", .. })
        ));
        assert!(title(&"x".repeat(201)).is_err());
        assert!(title("two\nlines").is_err());
        assert_eq!(due("2026-12-20").unwrap(), "2026-12-20");
        assert!(due("20.12.2026").is_err());
        assert!(due("2026-02-30").is_err());
        assert_eq!(one_of("priority", &PRIORITIES, "HIGH").unwrap(), "high");
        assert!(one_of("priority", &PRIORITIES, "urgent").is_err());
        assert_eq!(one_of("status", &STATUSES, "wont_do").unwrap(), "wont_do");
        assert!(one_of("status", &STATUSES, "closed").is_err());
        assert_eq!(owner("ana").unwrap(), "user:ana");
        assert!(owner("a b").is_err());
    }

    #[test]
    fn the_default_tracker_applies_unless_told_otherwise() {
        let none = TrackersConfig::default();
        assert_eq!(tracker_for(None, &none).unwrap(), None);
        assert!(tracker_for(Some("github"), &none)
            .unwrap_err()
            .to_string()
            .contains("not configured"));
        assert!(tracker_for(Some("gitlab"), &none).is_err());
        let with = TrackersConfig {
            default: Some("github".into()),
            ..TrackersConfig::default()
        };
        assert_eq!(tracker_for(None, &with).unwrap().as_deref(), Some("github"));
        assert_eq!(tracker_for(Some("none"), &with).unwrap(), None);
    }
}
