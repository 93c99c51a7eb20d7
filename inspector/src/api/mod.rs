//! The JSON API, `/api/v1`: one file per resource, each a `Router`.
//!
//! Shapes are documented in `inspector/API.md`. Everything is read-only. Query
//! parameters are parsed by hand (not by a typed `Query<T>`) so that every bad value
//! gets a JSON 400 naming the parameter, and so that huge values are clamped
//! rather than trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::handle::{Query as LoopQuery, QueryKind, QueryReply};
use crate::hub::{Hub, HubState, LoopEntry};
use crate::listener::ConnStats;

mod live;
mod loops;
mod stalls;
mod tables;

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: Config,
    pub(crate) started: Instant,
    pub(crate) connections: Arc<ConnStats>,
    /// Connection permits; `max_connections` minus those available are open.
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub(crate) fn hub(&self) -> &Hub {
        &self.0.hub
    }

    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }
}

/// The `/api/v1` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().merge(loops::routes()).merge(tables::routes()).merge(stalls::routes()).merge(live::routes())
}

/// Every way a request can fail, rendered as `{"error": ..., "detail": ...}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    NotFound(String),
    /// The loop did not answer a deep query in time: itself a finding.
    LoopBusy {
        loop_id: u64,
        waited_ms: u64,
        detail: &'static str,
    },
    LoopClosed(u64),
    TooManyClients,
    Unauthorized,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    Timeout,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, json!({"error": "bad request", "detail": d})),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, json!({"error": "not found", "detail": d})),
            ApiError::LoopBusy { loop_id, waited_ms, detail } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "loop busy", "detail": detail, "loop_id": loop_id, "waited_ms": waited_ms}),
            ),
            ApiError::LoopClosed(id) => {
                (StatusCode::GONE, json!({"error": "loop closed", "detail": format!("loop {id} has closed")}))
            }
            ApiError::TooManyClients => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "too many stream clients", "detail": "try again later"}),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "detail": "send Authorization: Bearer <GLASSLOOP_TOKEN> or ?token="}),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed", "detail": "the inspector is read-only: GET and HEAD only"}),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload too large", "detail": "requests carry no body"}),
            ),
            ApiError::UriTooLong => {
                (StatusCode::URI_TOO_LONG, json!({"error": "uri too long", "detail": "at most 4096 bytes"}))
            }
            ApiError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "timeout", "detail": "the request took longer than the request timeout"}),
            ),
        };
        let mut res = (status, Json(body)).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        res
    }
}

/// Longest string parameter accepted (a name filter, say).
const MAX_PARAM_LEN: usize = 256;

/// A request's query parameters, checked one by one.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn from(q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Params, ApiError> {
        q.map(|Query(v)| Params(v)).map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
    }

    /// The first value of `key`, if present and non-empty.
    pub(crate) fn str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()) {
            Some(v) if v.len() > MAX_PARAM_LEN => {
                Err(ApiError::BadRequest(format!("{key}: longer than {MAX_PARAM_LEN} bytes")))
            }
            Some("") | None => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }

    /// A non-negative integer; absurdly large values saturate (callers clamp).
    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.str(key)? else { return Ok(None) };
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!("{key}: expected a non-negative integer, got {v:?}")));
        }
        Ok(Some(v.parse().unwrap_or(u64::MAX)))
    }

    /// `limit`: `default` when absent, clamped to `max`; 0 returns counts only.
    pub(crate) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        Ok(self.u64("limit")?.map_or(default, |v| v.min(max as u64) as usize))
    }

    pub(crate) fn offset(&self) -> Result<usize, ApiError> {
        Ok(self.u64("offset")?.map_or(0, |v| v.min(usize::MAX as u64) as usize))
    }

    /// One of `allowed`, or `default` when absent.
    pub(crate) fn one_of(
        &self,
        key: &str,
        allowed: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, ApiError> {
        match self.str(key)? {
            None => Ok(default),
            Some(v) => allowed.iter().find(|a| **a == v).copied().ok_or_else(|| {
                ApiError::BadRequest(format!("{key}: expected one of {}, got {v:?}", allowed.join("|")))
            }),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.str(key)? {
            None => Ok(false),
            Some("1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(v) => Err(ApiError::BadRequest(format!("{key}: expected true or false, got {v:?}"))),
        }
    }

    /// `order=asc|desc`.
    pub(crate) fn descending(&self, default_desc: bool) -> Result<bool, ApiError> {
        let d = if default_desc { "desc" } else { "asc" };
        Ok(self.one_of("order", &["asc", "desc"], d)? == "desc")
    }
}

/// Parses a path segment that must be an id.
pub(crate) fn parse_id(what: &str, s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError::BadRequest(format!("{what}: expected a non-negative integer, got {s:?}")))
}

/// Runs `f` over loop `id`'s entry (404 when unknown).
pub(crate) fn with_loop<R>(
    state: &AppState,
    id: u64,
    f: impl FnOnce(&HubState, &LoopEntry) -> R,
) -> Result<R, ApiError> {
    state.hub().read(|st| st.loops.get(&id).map(|e| f(st, e))).ok_or_else(|| no_such_loop(id))
}

pub(crate) fn no_such_loop(id: u64) -> ApiError {
    ApiError::NotFound(format!("no loop {id}"))
}

/// Asks loop `loop_id` something only its thread can answer, waiting at most the
/// configured deadline.
///
/// # Errors
/// 404 for an unknown loop, 410 for a closed one, 503 "loop busy" when the loop does
/// not answer in time (or its query queue is full).
pub(crate) async fn ask(state: &AppState, loop_id: u64, kind: QueryKind) -> Result<QueryReply, ApiError> {
    state.hub().pump();
    let shared = state.hub().loop_shared(loop_id).ok_or_else(|| no_such_loop(loop_id))?;
    if shared.is_closed() {
        return Err(ApiError::LoopClosed(loop_id));
    }
    let deadline = state.config().query_deadline;
    let (query, reply) = LoopQuery::new(kind);
    if shared.enqueue(query).is_err() {
        if shared.is_closed() {
            return Err(ApiError::LoopClosed(loop_id));
        }
        return Err(ApiError::LoopBusy { loop_id, waited_ms: 0, detail: "the loop has not taken its earlier queries" });
    }
    let started = Instant::now();
    let waited = || started.elapsed().as_millis() as u64;
    match tokio::time::timeout(deadline, reply).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) if shared.is_closed() => Err(ApiError::LoopClosed(loop_id)),
        Ok(Err(_)) => Err(ApiError::LoopBusy { loop_id, waited_ms: waited(), detail: "the loop dropped the query" }),
        Err(_) => Err(ApiError::LoopBusy {
            loop_id,
            waited_ms: waited(),
            detail: "the loop did not answer within the query deadline (a callback may be blocking it)",
        }),
    }
}

/// Seconds as a JSON-friendly float.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
