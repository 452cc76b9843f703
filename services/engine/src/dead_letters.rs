//! Dead letters, in both bus backends, for the API and the command line
//! alike: grouped by content ([`summary`]) and put back on their lane once
//! the cause is fixed ([`replay`], audited).

use std::collections::BTreeMap;

use chrono::DateTime;
use firebreak_bus::{Bus, BusError, DeadLetter};
use firebreak_store::{NewAudit, Store, StoreError};
use serde_json::{json, Value};

/// How much of a body the list shows (the rest is counted in `bytes`).
const PREVIEW: usize = 512;

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Ids that name no dead letter: nothing was replayed.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn when(secs: Option<i64>) -> Value {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
        .map_or(Value::Null, |t| json!(t.to_rfc3339()))
}

/// The dead letters grouped by id: one entry per distinct message with how
/// many copies wait, when the first and last died, and why (the latest
/// reason). Oldest first.
pub fn summary(letters: &[DeadLetter]) -> Vec<Value> {
    struct Group<'a> {
        first: &'a DeadLetter,
        last: &'a DeadLetter,
        count: u64,
    }
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    let mut order = Vec::new();
    for letter in letters {
        groups
            .entry(letter.id.as_str())
            .and_modify(|g| {
                g.count += 1;
                g.last = letter;
            })
            .or_insert_with(|| {
                order.push(letter.id.as_str());
                Group {
                    first: letter,
                    last: letter,
                    count: 1,
                }
            });
    }
    order
        .into_iter()
        .filter_map(|id| groups.get(id))
        .map(|g| {
            let body = &g.first.body;
            let cut = body.len().min(PREVIEW);
            json!({
                "id": g.first.id,
                "routing_key": g.first.routing_key,
                "lane": g.first.lane.as_str(),
                "reason": g.last.reason,
                "count": g.count,
                "first_seen": when(g.first.dead_at),
                "last_seen": when(g.last.dead_at),
                "bytes": body.len(),
                "preview": String::from_utf8_lossy(&body[..cut]),
                "preview_truncated": cut < body.len(),
            })
        })
        .collect()
}

/// Replays the dead letters with these ids (every one with `None`) and
/// audits it. Ids that name no dead letter are refused and nothing is
/// replayed.
pub async fn replay(
    bus: &dyn Bus,
    store: &dyn Store,
    actor: &str,
    ids: Option<Vec<String>>,
) -> Result<u64, ReplayError> {
    if let Some(ids) = &ids {
        let (letters, more) = bus.dead_letters().await?;
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !letters.iter().any(|l| &&l.id == id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() && !more {
            return Err(ReplayError::NotFound(format!(
                "no dead letter with id {}: GET /api/v1/dead-letters lists them",
                missing.join(", ")
            )));
        }
    }
    let replayed = bus.replay_dead_letters(ids.as_deref()).await?;
    let audit = NewAudit::by(
        actor,
        "dead_letters_replayed",
        json!({"ids": ids, "all": ids.is_none(), "replayed": replayed, "bus": bus.backend()}),
    );
    store.record(&[audit], &[]).await?;
    tracing::info!(actor, replayed, "dead letters replayed");
    Ok(replayed)
}
