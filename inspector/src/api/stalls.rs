//! Stalls: `/api/v1/stalls` (all loops) and `/api/v1/loops/{id}/stalls`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{parse_id, with_loop, ApiError, AppState, Params};

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/stalls", get(all)).route("/loops/{id}/stalls", get(one))
}

fn list(state: &AppState, loop_id: Option<u64>, p: &Params) -> Result<Json<Value>, ApiError> {
    let ongoing_only = p.bool("ongoing")?;
    let limit = p.limit(100, state.hub().config().stall_log)?;
    let mut stalls = state.hub().stalls(loop_id, usize::MAX);
    if ongoing_only {
        stalls.retain(|s| s.ongoing);
    }
    let total = stalls.len();
    stalls.truncate(limit);
    Ok(Json(json!({
        "loop_id": loop_id,
        "threshold_ns": state.hub().stall_threshold_ns(),
        "total": total,
        "stalls": stalls,
    })))
}

async fn all(State(state): State<AppState>, q: Q) -> Result<Json<Value>, ApiError> {
    list(&state, None, &Params::from(q)?)
}

async fn one(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    with_loop(&state, id, |_, _| ())?;
    list(&state, Some(id), &p)
}
