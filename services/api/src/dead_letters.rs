//! Dead letters over HTTP, in both bus backends: what the engine refused
//! (a body it cannot decode, a routing key naming no kind) or the bus gave
//! up on (its delivery limit), grouped by content so a storm of one bad
//! message is one row with a count (`GET /api/v1/dead-letters`), and put back
//! on their lane once the cause is fixed (`POST /api/v1/dead-letters/replay`).
//! The command line does the same through `firebreak_engine::dead_letters`,
//! which this adapter calls.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use firebreak_bus::{Bus, BusError};
use firebreak_engine::dead_letters::{replay, summary, ReplayError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::call::Call;
use crate::error::{bad, body};
use crate::{ApiError, AppState};

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

/// `POST /api/v1/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`.
async fn replay_route(
    Call { state, identity }: Call,
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
    let store = state.store.clone();
    let replayed = replay(bus, store.as_ref(), identity.id.as_str(), ids)
        .await
        .map_err(|e| match e {
            ReplayError::NotFound(m) => ApiError::NotFound(m),
            ReplayError::Bus(e) => unavailable(e),
            ReplayError::Store(e) => e.into(),
        })?;
    Ok(Json(json!({"replayed": replayed})))
}
