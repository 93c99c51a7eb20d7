//! `/api/v1`, `/api/v1/loops`, a loop, its samples and its histograms.

use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use super::{parse_id, secs, with_loop, ApiError, AppState, Params};
use crate::history::Totals;
use crate::hub::LoopEntry;
use crate::model::{Histograms, LoopInfo, SampleSummary, HISTOGRAM_NAMES};
use crate::summary::{HistogramSummary, BUCKET_BOUNDS_NS};

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Most samples one request returns (15 min at 250 ms).
const MAX_SAMPLES: usize = 3_600;
/// Samples returned by default (1 min).
const DEFAULT_SAMPLES: usize = 240;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/loops", get(list))
        .route("/loops/{id}", get(detail))
        .route("/loops/{id}/samples", get(samples))
        .route("/loops/{id}/histograms/{name}", get(histogram))
}

async fn index(State(state): State<AppState>) -> Json<Value> {
    let hub = state.hub();
    Json(json!({
        "api": "v1",
        "glassloop_version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": secs(state.0.started.elapsed()),
        "histograms": HISTOGRAM_NAMES,
        "bucket_bounds_ns": BUCKET_BOUNDS_NS,
        "stall_threshold_ns": hub.stall_threshold_ns(),
        "stalls_ongoing": hub.stalls.ongoing(),
        "stream": hub.stream.stats(),
        "connections": {
            "open": state.config().max_connections.max(1) - state.0.permits.available_permits(),
            "max": state.config().max_connections.max(1),
            "accepted": state.0.connections.accepted.load(Ordering::Relaxed),
            "write_stalls": state.0.connections.write_stalls.load(Ordering::Relaxed),
        },
        "dashboard_embedded": crate::dashboard::embedded(),
        "endpoints": [
            "/healthz", "/metrics", "/api/v1", "/api/v1/loops", "/api/v1/loops/{id}",
            "/api/v1/loops/{id}/samples", "/api/v1/loops/{id}/histograms/{name}",
            "/api/v1/loops/{id}/tasks", "/api/v1/loops/{id}/tasks/{task_id}/stack",
            "/api/v1/loops/{id}/transports", "/api/v1/loops/{id}/servers",
            "/api/v1/loops/{id}/callback-sites", "/api/v1/loops/{id}/slow-callbacks",
            "/api/v1/loops/{id}/stalls", "/api/v1/stalls", "/api/v1/stream",
        ],
    }))
}

/// A loop as listed.
#[derive(Serialize)]
struct LoopRow<'a> {
    info: &'a LoopInfo,
    closed: bool,
    closed_unix_ms: Option<u64>,
    samples_received: u64,
    samples_dropped: u64,
    samples_missing: u64,
    stalls_total: u64,
    queries_pending: usize,
    latest: Option<&'a SampleSummary>,
}

fn row(e: &LoopEntry) -> LoopRow<'_> {
    let t = e.history.totals();
    LoopRow {
        info: e.info(),
        closed: e.closed_unix_ms.is_some(),
        closed_unix_ms: e.closed_unix_ms,
        samples_received: t.samples,
        samples_dropped: e.samples_dropped(),
        samples_missing: t.samples_missing,
        stalls_total: e.stalls_total(),
        queries_pending: e.shared.pending_queries(),
        latest: e.history.latest(),
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let body = state.hub().read(|st| {
        let loops: Vec<_> = st.loops.values().map(row).collect();
        serde_json::to_value(json!({ "loops": loops }))
    });
    Ok(Json(body.unwrap_or_default()))
}

#[derive(Serialize)]
struct SinceStart<'a> {
    #[serde(flatten)]
    totals: &'a Totals,
    utilization: f64,
    histograms: Histograms<HistogramSummary>,
}

async fn detail(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let body = with_loop(&state, id, |_, e| {
        let totals = e.history.totals();
        let tables = e.tables.as_ref().map(|t| {
            json!({
                "unix_ms": t.unix_ms,
                "tasks": t.tasks.len(),
                "transports": t.transports.len(),
                "servers": t.servers.len(),
                "callback_sites": t.callback_sites.len(),
                "slow_callbacks": t.slow_callbacks.len(),
                "truncated": t.truncated,
                "received": e.tables_received,
            })
        });
        json!({
            "loop": row(e),
            "since_start": SinceStart { totals, utilization: totals.utilization(), histograms: e.history.since_start() },
            "history": { "samples": e.history.len(), "capacity": e.history.capacity(), "merge_errors": e.history.merge_errors() },
            "tables": tables,
        })
    })?;
    Ok(Json(body))
}

async fn samples(State(state): State<AppState>, Path(id): Path<String>, q: Q) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let since = p.u64("since")?.unwrap_or(0);
    let limit = p.limit(DEFAULT_SAMPLES, MAX_SAMPLES)?;
    with_loop(&state, id, |_, e| {
        let samples: Vec<&SampleSummary> = e.history.since(since, limit).collect();
        let next_since = samples.last().map_or(since, |s| s.seq);
        Json(json!({
            "loop_id": id,
            "since": since,
            "limit": limit,
            "next_since": next_since,
            "oldest_seq": e.history.since(0, 1).next().map(|s| s.seq),
            "newest_seq": e.history.latest().map(|s| s.seq),
            "samples": samples,
        }))
    })
}

async fn histogram(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    q: Q,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("loop id", &id)?;
    let p = Params::from(q)?;
    let limit = p.limit(DEFAULT_SAMPLES, MAX_SAMPLES)?;
    let Some(name) = HISTOGRAM_NAMES.iter().copied().find(|n| *n == name) else {
        return Err(ApiError::NotFound(format!("no histogram {name:?}; one of {}", HISTOGRAM_NAMES.join(", "))));
    };
    with_loop(&state, id, |_, e| {
        let series: Vec<Value> = e
            .history
            .last(limit)
            .filter_map(|s| {
                let h = s.histograms.get(name)?;
                Some(json!({
                    "seq": s.seq, "end_unix_ms": s.end_unix_ms, "count": h.count,
                    "p50_ns": h.p50_ns, "p99_ns": h.p99_ns, "max_ns": h.max_ns, "buckets": h.buckets,
                }))
            })
            .collect();
        Json(json!({
            "loop_id": id,
            "name": name,
            "unit": "ns",
            "bucket_bounds_ns": BUCKET_BOUNDS_NS,
            "since_start": e.history.since_start_one(name),
            "latest": e.history.latest().and_then(|s| s.histograms.get(name)),
            "series": series,
        }))
    })
}
