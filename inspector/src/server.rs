//! The sidecar server: axum on a current-thread tokio runtime in one thread.
//!
//! One thread per process (`glassloop-inspector`), started by [`serve`]; the stall
//! watchdog and its stack-capture helper run in two more threads (`watchdog.rs`).
//! The loops never wait for this thread: they publish into the hub and ring its
//! doorbell; this thread pumps the hub when rung, and on every request.
//!
//! Hardening, outermost first: a connection cap and write-stall timeout
//! (`listener.rs`), hyper's header-read timeout and 16 KiB request-head cap (431
//! beyond), then middleware: GET/HEAD only (405), no request body (413), URI at
//! most 4 KiB (414), the token when configured (401), a per-request timeout (503).
//! No CORS headers: browsers keep other origins' pages out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{self, ApiError, AppState, Shared};
use crate::config::{token_matches, Config, Error, ServerInfo};
use crate::hub::Hub;
use crate::listener::GuardedIo;
use crate::{dashboard, prometheus};

/// Longest request head (request line and headers) hyper buffers; more gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most request headers accepted.
const MAX_HEADERS: usize = 64;
/// Longest request URI; more gets 414.
const MAX_URI_BYTES: usize = 4 * 1024;
/// How often the hub is pumped even without a ring (to retire closed loops).
const IDLE_PUMP: Duration = Duration::from_secs(1);

/// Starts the process's inspector server on the process's [`Hub::global`], once.
///
/// Idempotent: later calls return the running server's [`ServerInfo`] and ignore
/// their `config` (the first caller decides). A failed start (bad address, port in
/// use, missing token) leaves nothing running, so a later call may try again.
///
/// # Errors
/// See [`Error`]: [`Error::TokenRequired`] for a non-loopback address without a
/// token, [`Error::AddressInUse`] for a busy port, and so on. Never panics.
pub fn serve(config: Config) -> Result<ServerInfo, Error> {
    static RUNNING: Mutex<Option<ServerInfo>> = Mutex::new(None);
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(info) = running.as_ref() {
        return Ok(info.clone());
    }
    let info = start(Arc::clone(Hub::global()), config)?;
    *running = Some(info.clone());
    Ok(info)
}

/// Starts a server for `hub` in a new thread (what [`serve`] does for the global
/// hub; tests and embedders use it for hubs of their own). The thread runs until
/// the process exits.
///
/// # Errors
/// As [`serve`].
pub fn start(hub: Arc<Hub>, config: Config) -> Result<ServerInfo, Error> {
    let address = config.validate()?;
    let std_listener = std::net::TcpListener::bind(address).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => Error::AddressInUse { address },
        _ => Error::Bind { address, source },
    })?;
    std_listener.set_nonblocking(true).map_err(Error::Start)?;
    let local = std_listener.local_addr().map_err(Error::Start)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name("glassloop-inspector")
        .build()
        .map_err(Error::Start)?;
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(std_listener).map_err(Error::Start)?
    };

    hub.set_stall_threshold(config.stall_threshold);
    hub.set_history(config.history);
    hub.stream.configure(config.max_stream_clients, config.stream_buffer);
    hub.start_watchdog().map_err(Error::Start)?;

    let info = ServerInfo {
        url: format!("http://{local}/"),
        address: local,
        token_required: config.token.as_deref().is_some_and(|t| !t.is_empty()),
    };
    let doorbell = hub.take_doorbell();
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let state =
        AppState(Arc::new(Shared { hub, config, started: Instant::now(), connections: Arc::default(), permits }));
    std::thread::Builder::new()
        .name("glassloop-inspector".into())
        .spawn(move || runtime.block_on(run(listener, state, doorbell)))
        .map_err(Error::Start)?;
    Ok(info)
}

async fn run(listener: TcpListener, state: AppState, doorbell: Option<tokio::sync::mpsc::Receiver<()>>) {
    tokio::spawn(ingest(Arc::clone(&state.0.hub), doorbell));
    let app = router(state.clone());
    let config = state.config();

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let permits = Arc::clone(&state.0.permits);
    let stats = Arc::clone(&state.0.connections);
    loop {
        // Taking the permit before accepting leaves excess clients in the kernel's
        // backlog instead of holding sockets we would not serve.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            // Out of file descriptors and the like: back off rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true); // Latency of small JSON replies; harmless if it fails.
        let io = TokioIo::new(GuardedIo::new(tcp, permit, Arc::clone(&stats), config.write_stall_timeout));
        let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = conn.await; // Errors are the client's (reset, timeout): nothing to report.
        });
    }
}

/// Moves what loops publish into the hub whenever one rings, so the live stream is
/// pushed without polling.
async fn ingest(hub: Arc<Hub>, doorbell: Option<tokio::sync::mpsc::Receiver<()>>) {
    let Some(mut doorbell) = doorbell else {
        // Another server took this hub's doorbell; fall back to a steady pump.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            hub.pump();
        }
    };
    loop {
        tokio::select! {
            rung = doorbell.recv() => if rung.is_none() { return },
            _ = tokio::time::sleep(IDLE_PUMP) => {}
        }
        hub.pump();
    }
}

/// The whole application: routes, then the guards (axum runs the last layer first).
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api::routes().merge(crate::otlp::routes())) // + GET /api/v1/otlp (otlp/mod.rs)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let stream = state.hub().stream.stats();
    let mut body = state.hub().read(|st| prometheus::render(st, &stream));
    crate::otlp::render_prometheus(state.hub(), &mut body); // glassloop_otlp_* (otlp/mod.rs)
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response()
}

/// `/`, the dashboard's files, or a JSON 404.
async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || path == "/api" {
        return ApiError::NotFound(format!("no endpoint {path}")).into_response();
    }
    match dashboard::asset(path) {
        Some((bytes, content_type)) => {
            let mut res = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                     frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                ),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            res
        }
        None => ApiError::NotFound(format!("no page {path}")).into_response(),
    }
}

/// Read-only and bodiless: refuses anything but small GET/HEAD requests.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::MethodNotAllowed.into_response();
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0));
    if has_body {
        return ApiError::PayloadTooLarge.into_response();
    }
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return ApiError::UriTooLong.into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Requires the token (when one is configured) on everything but `/healthz`.
async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" || presented_token(&req).is_some_and(|t| token_matches(expected, &t)) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// The token from `Authorization: Bearer …`, else from `?token=`.
fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    let query = req.uri().query()?;
    let pairs: Vec<(String, String)> =
        axum::extract::Query::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_else(|_| {
            // Undecodable query: look for the raw value so a valid token still counts.
            query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        });
    pairs.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v)
}

/// Bounds how long producing a response may take (a stream's body is not bounded
/// by this: only its head).
async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config().request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Timeout.into_response(),
    }
}
