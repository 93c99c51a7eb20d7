//! A loop's tables: tasks (and a task's stack), transports, servers, callback
//! sites, slow callbacks.
//!
//! Served from the newest tables the loop published; when it has published none,
//! or the client asks `?fresh=true`, the hub asks the loop (a deep query, 503 "loop
//! busy" past the deadline).

use std::cmp::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ask, parse_id, with_loop, ApiError, AppState, Params};
use crate::handle::{QueryKind, QueryReply};
use crate::model::{Tables, TaskRecord, TaskState, TransportKind};

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Most rows one page returns.
const MAX_PAGE: usize = 1_000;
/// Rows per page by default.
const DEFAULT_PAGE: usize = 100;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/loops/{id}/tasks", get(tasks))
        .route("/loops/{id}/tasks/{task_id}/stack", get(task_stack))
        .route("/loops/{id}/transports", get(transports))
        .route("/loops/{id}/servers", get(servers))
        .route("/loops/{id}/callback-sites", get(callback_sites))
        .route("/loops/{id}/slow-callbacks", get(slow_callbacks))
}

/// The tables to serve for loop `id`.
async fn tables(state: &AppState, id: u64, p: &Params) -> Result<Arc<Tables>, ApiError> {
    let fresh = p.bool("fresh")?;
    if !fresh {
        if let Some(t) = with_loop(state, id, |_, e| e.tables.clone())? {
            return Ok(t);
        }
    }
    match ask(state, id, QueryKind::Tables).await? {
        QueryReply::Tables(mut t) => {
            t.enforce_bounds();
            let t = Arc::new(t);
            state.hub().store_tables(id, Arc::clone(&t));
            Ok(t)
        }
        QueryReply::TaskStack(_) => {
            Err(ApiError::LoopBusy { loop_id: id, waited_ms: 0, detail: "the loop answered another question" })
        }
    }
}

fn page<T: serde::Serialize>(
    id: u64,
    t: &Tables,
    total: usize,
    offset: usize,
    limit: usize,
    items: &[T],
) -> Json<Value> {
    Json(json!({
        "loop_id": id,
        "tables_unix_ms": t.unix_ms,
        "truncated": t.truncated,
        "total": total,
        "offset": offset,
        "limit": limit,
        "items": items,
    }))
}

async fn tasks(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let wanted_state = match p.str("state")? {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("state: expected one of pending|done|cancelled|failed, got {s:?}"))
        })?),
    };
    let name = p.str("name")?.map(str::to_owned);
    let sort =
        p.one_of("sort", &["id", "name", "created", "busy", "steps", "longest_step", "scheduled_delay"], "id")?;
    let desc = p.descending(false)?;
    let offset = p.offset()?;
    let limit = p.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let t = tables(&state, id, &p).await?;

    let mut rows: Vec<&TaskRecord> = t
        .tasks
        .iter()
        .filter(|r| wanted_state.is_none_or(|s| r.state == s))
        .filter(|r| name.as_deref().is_none_or(|n| r.name.contains(n) || r.coro.contains(n)))
        .collect();
    let key = |a: &&TaskRecord, b: &&TaskRecord| -> Ordering {
        match sort {
            "name" => a.name.cmp(&b.name),
            "created" => a.created_unix_ms.cmp(&b.created_unix_ms),
            "busy" => a.busy_ns.cmp(&b.busy_ns),
            "steps" => a.steps.cmp(&b.steps),
            "longest_step" => a.longest_step_ns.cmp(&b.longest_step_ns),
            "scheduled_delay" => a.last_scheduled_delay_ns.cmp(&b.last_scheduled_delay_ns),
            _ => Ordering::Equal,
        }
        .then(a.id.cmp(&b.id))
    };
    rows.sort_by(|a, b| if desc { key(b, a) } else { key(a, b) });
    let total = rows.len();
    let items: Vec<&TaskRecord> = rows.into_iter().skip(offset).take(limit).collect();
    Ok(page(id, &t, total, offset, limit, &items))
}

async fn task_stack(
    State(state): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let task_id = parse_id("task id", &task_id)?;
    match ask(&state, id, QueryKind::TaskStack { task_id }).await? {
        QueryReply::TaskStack(Some(stack)) => Ok(Json(json!({ "loop_id": id, "task_id": task_id, "stack": stack }))),
        QueryReply::TaskStack(None) => Err(ApiError::NotFound(format!("loop {id} has no task {task_id}"))),
        QueryReply::Tables(_) => {
            Err(ApiError::LoopBusy { loop_id: id, waited_ms: 0, detail: "the loop answered another question" })
        }
    }
}

async fn transports(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let kinds: Vec<&'static str> = TransportKind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = match p.str("kind")? {
        None => None,
        Some(_) => Some(p.one_of("kind", &kinds, "tcp")?),
    };
    let offset = p.offset()?;
    let limit = p.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let t = tables(&state, id, &p).await?;
    let rows: Vec<_> = t.transports.iter().filter(|r| kind.is_none_or(|k| r.kind.as_str() == k)).collect();
    let items: Vec<_> = rows.iter().skip(offset).take(limit).collect();
    Ok(page(id, &t, rows.len(), offset, limit, &items))
}

async fn servers(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let offset = p.offset()?;
    let limit = p.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let t = tables(&state, id, &p).await?;
    let items: Vec<_> = t.servers.iter().skip(offset).take(limit).collect();
    Ok(page(id, &t, t.servers.len(), offset, limit, &items))
}

async fn callback_sites(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let sort = p.one_of("sort", &["total", "count", "max"], "total")?;
    let limit = p.limit(50, MAX_PAGE)?;
    let t = tables(&state, id, &p).await?;
    let mut rows: Vec<_> = t.callback_sites.iter().collect();
    rows.sort_by(|a, b| {
        let k = |s: &crate::model::CallbackSite| match sort {
            "count" => s.count,
            "max" => s.max_ns,
            _ => s.total_ns,
        };
        k(b).cmp(&k(a)).then(a.id.cmp(&b.id))
    });
    let items: Vec<_> = rows.iter().take(limit).collect();
    Ok(page(id, &t, rows.len(), 0, limit, &items))
}

async fn slow_callbacks(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let limit = p.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let t = tables(&state, id, &p).await?;
    let mut rows: Vec<_> = t.slow_callbacks.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.unix_ms)); // newest first
    let items: Vec<_> = rows.iter().take(limit).collect();
    Ok(page(id, &t, rows.len(), 0, limit, &items))
}
