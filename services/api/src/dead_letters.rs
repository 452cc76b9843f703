//! Dead letters over HTTP, in both bus backends: what the engine refused
//! (a body it cannot decode, a routing key naming no kind) or the bus gave
//! up on (its delivery limit), grouped by content so a storm of one bad
//! message is one row with a count (`GET /api/v1/dead-letters`), and put back
//! on their lane once the cause is fixed (`POST /api/v1/dead-letters/replay`).
//! The command line does the same through [`summary`] and [`replay`].

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::DateTime;
use firebreak_bus::{Bus, BusError, DeadLetter};
use firebreak_domain::access::Identity;
use firebreak_store::{NewAudit, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::remediation::{bad, body, store};
use crate::{ApiError, AppState};

/// How much of a body the list shows (the rest is counted in `bytes`).
const PREVIEW: usize = 512;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/dead-letters", get(list))
        .route("/api/v1/dead-letters/replay", post(replay_route))
}

fn bus(state: &AppState) -> Result<&dyn Bus, ApiError> {
    state.bus.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "this process runs no ingest or engine role, so it has no bus: ask one that does, or run `firebreak dead-letters list` where the configuration is".into(),
        )
    })
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

fn unavailable(e: BusError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// `GET /api/v1/dead-letters`: grouped, oldest first.
async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let bus = bus(&state)?;
    let (letters, more) = bus.dead_letters().await.map_err(unavailable)?;
    Ok(Json(json!({
        "backend": bus.backend(),
        "messages": letters.len(),
        "truncated": more,
        "dead_letters": summary(&letters),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// Replays the dead letters with these ids (every one with `None`) and
/// audits it. Ids that name no dead letter are refused and nothing is
/// replayed.
pub async fn replay(
    bus: &dyn Bus,
    store: &dyn Store,
    actor: &str,
    ids: Option<Vec<String>>,
) -> Result<u64, ApiError> {
    if let Some(ids) = &ids {
        let (letters, more) = bus.dead_letters().await.map_err(unavailable)?;
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !letters.iter().any(|l| &&l.id == id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() && !more {
            return Err(ApiError::NotFound(format!(
                "no dead letter with id {}: GET /api/v1/dead-letters lists them",
                missing.join(", ")
            )));
        }
    }
    let replayed = bus
        .replay_dead_letters(ids.as_deref())
        .await
        .map_err(unavailable)?;
    let audit = NewAudit::by(
        actor,
        "dead_letters_replayed",
        json!({"ids": ids, "all": ids.is_none(), "replayed": replayed, "bus": bus.backend()}),
    );
    store.record(&[audit], &[]).await?;
    tracing::info!(actor, replayed, "dead letters replayed");
    Ok(replayed)
}

/// `POST /api/v1/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`.
async fn replay_route(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ReplayBody = body(&bytes)?;
    let ids = match (b.all, b.ids.is_empty()) {
        (true, true) => None,
        (false, false) => Some(b.ids),
        (true, false) => return Err(bad("all", "send either ids or all, not both")),
        (false, true) => {
            return Err(bad(
                "ids",
                "name the dead letters to replay (ids from GET /api/v1/dead-letters) or send {\"all\": true}",
            ))
        }
    };
    let bus = bus(&state)?;
    let store = store(&state)?;
    let replayed = replay(bus, store.as_ref(), identity.id.as_str(), ids).await?;
    Ok(Json(json!({"replayed": replayed})))
}
