//! OTLP export: what the hub holds, sent to an OpenTelemetry collector.
//!
//! [`start`] runs one more sidecar thread, `glassloop-otlp`, with its own
//! current-thread tokio runtime (so a slow collector cannot delay the dashboard, and
//! export works without the HTTP server). It never touches a loop thread: loops
//! publish into the hub as always, and this thread reads the hub.
//!
//! - **Metrics** (`metrics.rs`): every `OTEL_METRIC_EXPORT_INTERVAL`, the hub's state
//!   as one cumulative `ExportMetricsServiceRequest` — the numbers of `/metrics`,
//!   under their OpenTelemetry names. One request in flight at a time; a failed one
//!   is dropped (counted), the next carries the cumulative totals anyway.
//! - **Traces** (`traces.rs`): every 250 ms, new finished tasks, slow callbacks and
//!   closed stalls become spans in a queue of at most `OTEL_BSP_MAX_QUEUE_SIZE`; a
//!   batch goes every `OTEL_BSP_SCHEDULE_DELAY` or when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
//!   are waiting. A full queue drops new spans; a failed export drops its batch. Both
//!   are counted.
//!
//! The counts are in `/metrics` (`glassloop_otlp_*`) and `GET /api/v1/otlp`.
//! Memory: the span queue bound × a span (≤ 2 × 16 KiB of text for a stall), one
//! metrics request, and the tracer's per-task map (see `traces.rs`).

mod config;
mod metrics;
mod traces;
mod transport;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::trace::SpanData;
use serde::Serialize;
use tokio::sync::Notify;

pub use config::{BatchConfig, OtlpConfig, OtlpError, Protocol, SignalConfig};
pub use traces::{parse_app_context, AppContext};

use crate::api::AppState;
use crate::clock;
use crate::hub::Hub;
use crate::model::{LoopInfo, Tables};

/// How often the tables and the stall log are looked at for new spans.
const COLLECT_INTERVAL: Duration = Duration::from_millis(250);

/// What [`start`] started.
#[derive(Clone, Debug, Serialize)]
pub struct OtlpInfo {
    /// False when `OTEL_SDK_DISABLED=true` (or both signals are off): nothing runs.
    pub enabled: bool,
    /// Where traces go (`None`: not exported).
    pub traces: Option<SignalInfo>,
    /// Where metrics go (`None`: not exported).
    pub metrics: Option<SignalInfo>,
}

/// One signal's destination, for display (no headers).
#[derive(Clone, Debug, Serialize)]
pub struct SignalInfo {
    /// `http/protobuf` or `grpc`.
    pub protocol: &'static str,
    /// The URL, without credentials.
    pub endpoint: String,
}

impl SignalInfo {
    fn of(s: &SignalConfig) -> SignalInfo {
        SignalInfo { protocol: s.protocol.as_str(), endpoint: config::redact_userinfo(&s.endpoint) }
    }
}

/// Counters of one signal. Traces count spans; metrics count data points.
#[derive(Debug, Default)]
struct SignalStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    export_failures: AtomicU64,
    queued: AtomicU64,
    last_success_unix_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SignalStats {
    fn failed(&self, items: u64, error: String) {
        self.dropped.fetch_add(items, Ordering::Relaxed);
        self.export_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn succeeded(&self, items: u64) {
        self.exported.fetch_add(items, Ordering::Relaxed);
        self.last_success_unix_ms.store(clock::unix_ms(), Ordering::Relaxed);
    }

    fn view(&self, info: &SignalInfo, capacity: Option<usize>) -> SignalView {
        SignalView {
            protocol: info.protocol,
            endpoint: info.endpoint.clone(),
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            export_failures: self.export_failures.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            queue_capacity: capacity,
            last_success_unix_ms: Some(self.last_success_unix_ms.load(Ordering::Relaxed)).filter(|&t| t > 0),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// One signal in [`OtlpStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct SignalView {
    /// `http/protobuf` or `grpc`.
    pub protocol: &'static str,
    /// Destination URL (no credentials).
    pub endpoint: String,
    /// Spans / data points the collector accepted.
    pub exported: u64,
    /// Spans / data points never delivered: queue full, or their export failed.
    pub dropped: u64,
    /// Export requests that failed (refused, timed out, error status).
    pub export_failures: u64,
    /// Spans waiting in the queue (traces only).
    pub queued: u64,
    /// The queue's bound (traces only).
    pub queue_capacity: Option<usize>,
    /// Last accepted export.
    pub last_success_unix_ms: Option<u64>,
    /// The last failure, without header values.
    pub last_error: Option<String>,
}

/// What `GET /api/v1/otlp` returns.
#[derive(Clone, Debug, Serialize)]
pub struct OtlpStatus {
    /// Whether an exporter runs for this hub.
    pub enabled: bool,
    /// When it started.
    pub started_unix_ms: Option<u64>,
    /// The resource's attributes.
    pub resource: Option<HashMap<String, String>>,
    /// The sampler (`Debug` form).
    pub sampler: Option<String>,
    /// Metrics export interval.
    pub metric_interval_ms: Option<u64>,
    /// Span batching.
    pub schedule_delay_ms: Option<u64>,
    /// Spans the sampler left out.
    pub spans_sampled_out: u64,
    /// Finished tasks that never appeared in the tables the exporter read (they left
    /// the loop's bounded finished ring between two tables): no span was possible.
    pub tasks_unseen: u64,
    /// Traces.
    pub traces: Option<SignalView>,
    /// Metrics.
    pub metrics: Option<SignalView>,
}

impl OtlpStatus {
    fn off() -> OtlpStatus {
        OtlpStatus {
            enabled: false,
            started_unix_ms: None,
            resource: None,
            sampler: None,
            metric_interval_ms: None,
            schedule_delay_ms: None,
            spans_sampled_out: 0,
            tasks_unseen: 0,
            traces: None,
            metrics: None,
        }
    }
}

enum Command {
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// State shared between the exporter thread and the server's handlers.
struct Shared {
    info: OtlpInfo,
    config: OtlpConfig,
    started_unix_ms: u64,
    traces: SignalStats,
    metrics: SignalStats,
    sampled_out: AtomicU64,
    tasks_unseen: AtomicU64,
    commands: tokio::sync::mpsc::Sender<Command>,
}

impl Shared {
    fn status(&self) -> OtlpStatus {
        OtlpStatus {
            enabled: true,
            started_unix_ms: Some(self.started_unix_ms),
            resource: Some(self.config.resource.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            sampler: Some(format!("{:?}", self.config.sampler)),
            metric_interval_ms: Some(self.config.metric_interval.as_millis() as u64),
            schedule_delay_ms: Some(self.config.batch.schedule_delay.as_millis() as u64),
            spans_sampled_out: self.sampled_out.load(Ordering::Relaxed),
            tasks_unseen: self.tasks_unseen.load(Ordering::Relaxed),
            traces: self.info.traces.as_ref().map(|i| self.traces.view(i, Some(self.config.batch.max_queue))),
            metrics: self.info.metrics.as_ref().map(|i| self.metrics.view(i, None)),
        }
    }
}

/// Exporters by hub (the hub's address): one per hub, for the process's life.
static EXPORTERS: Mutex<Vec<(usize, Weak<Shared>)>> = Mutex::new(Vec::new());

fn hub_key(hub: &Hub) -> usize {
    hub as *const Hub as usize
}

fn exporter_for(hub: &Hub) -> Option<Arc<Shared>> {
    let key = hub_key(hub);
    EXPORTERS.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade())
}

/// Starts OTLP export of the process's [`Hub::global`], once.
///
/// Idempotent: later calls return the running exporter's [`OtlpInfo`] and ignore
/// their `config`. With `OTEL_SDK_DISABLED=true` (or both signals off) nothing
/// starts and `enabled` is false. The exporter also pumps the hub and runs the stall
/// watchdog, so it works without [`serve`](crate::serve). (A Python loop joins the
/// hub only once loop-core is told the sidecar is active.)
///
/// # Errors
/// [`OtlpError::Start`] if the thread, runtime or clients cannot be made. Never panics.
pub fn start(config: OtlpConfig) -> Result<OtlpInfo, OtlpError> {
    start_for(Arc::clone(Hub::global()), config)
}

/// As [`start`], for any hub (tests and embedders).
///
/// # Errors
/// As [`start`].
pub fn start_for(hub: Arc<Hub>, config: OtlpConfig) -> Result<OtlpInfo, OtlpError> {
    let mut registry = EXPORTERS.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(_, w)| w.strong_count() > 0);
    let key = hub_key(&hub);
    if let Some(s) = registry.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        return Ok(s.info.clone());
    }
    let info = OtlpInfo {
        enabled: !config.disabled && (config.traces.is_some() || config.metrics.is_some()),
        traces: config.traces.as_ref().map(SignalInfo::of),
        metrics: config.metrics.as_ref().map(SignalInfo::of),
    };
    if !info.enabled {
        return Ok(info);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name("glassloop-otlp")
        .build()
        .map_err(|e| OtlpError::Start(format!("runtime: {e}")))?;
    let (span_exporter, metrics_sender) = {
        let _in_runtime = runtime.enter();
        let spans = config.traces.as_ref().map(|s| transport::span_exporter(s, &config.resource)).transpose()?;
        let metrics = config.metrics.as_ref().map(transport::MetricsSender::new).transpose()?;
        (spans, metrics)
    };
    hub.start_watchdog().map_err(|e| OtlpError::Start(format!("stall watchdog: {e}")))?;
    let (commands, command_rx) = tokio::sync::mpsc::channel(8);
    let shared = Arc::new(Shared {
        info: info.clone(),
        config,
        started_unix_ms: clock::unix_ms(),
        traces: SignalStats::default(),
        metrics: SignalStats::default(),
        sampled_out: AtomicU64::new(0),
        tasks_unseen: AtomicU64::new(0),
        commands,
    });
    let worker = Worker {
        hub: Arc::clone(&hub),
        shared: Arc::clone(&shared),
        tracer: RefCell::new(traces::Tracer::new(shared.config.sampler.clone())),
        queue: RefCell::new(VecDeque::new()),
        batch_ready: Notify::new(),
        span_exporter,
        metrics_sender: tokio::sync::Mutex::new(metrics_sender),
        export_lock: tokio::sync::Mutex::new(()),
        resource: proto_resource(&shared.config.resource),
    };
    std::thread::Builder::new()
        .name("glassloop-otlp".into())
        .spawn(move || runtime.block_on(worker.run(command_rx)))
        .map_err(|e| OtlpError::Start(format!("thread: {e}")))?;
    // The worker holds `shared` for the thread's life (the process's).
    registry.push((key, Arc::downgrade(&shared)));
    Ok(info)
}

/// Collects and exports everything pending now (spans and one metrics export), for
/// the global hub; waits at most `timeout`. True if it finished in time, false if it
/// did not (or no exporter runs). For a clean end: call it after the last loop closed.
pub fn flush(timeout: Duration) -> bool {
    flush_for(Hub::global(), timeout)
}

/// As [`flush`], for any hub.
pub fn flush_for(hub: &Hub, timeout: Duration) -> bool {
    let Some(shared) = exporter_for(hub) else { return false };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if shared.commands.try_send(Command::Flush(tx)).is_err() {
        return false;
    }
    rx.recv_timeout(timeout).is_ok()
}

/// The exporter's state for the global hub (what `GET /api/v1/otlp` shows).
pub fn status() -> OtlpStatus {
    status_for(Hub::global())
}

/// As [`status`], for any hub.
pub fn status_for(hub: &Hub) -> OtlpStatus {
    exporter_for(hub).map_or_else(OtlpStatus::off, |s| s.status())
}

fn proto_resource(r: &opentelemetry_sdk::Resource) -> ProtoResource {
    let attrs = ResourceAttributesWithSchema::from(r);
    ProtoResource { attributes: attrs.attributes.0, dropped_attributes_count: 0, entity_refs: Vec::new() }
}

/// The exporter thread's state. Single-threaded: `RefCell`s, never borrowed across an `.await`.
struct Worker {
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    tracer: RefCell<traces::Tracer>,
    queue: RefCell<VecDeque<SpanData>>,
    batch_ready: Notify,
    span_exporter: Option<transport::SpanSender>,
    metrics_sender: tokio::sync::Mutex<Option<transport::MetricsSender>>,
    /// Span exports one at a time (the exporter's contract).
    export_lock: tokio::sync::Mutex<()>,
    resource: ProtoResource,
}

impl Worker {
    async fn run(self, mut commands: tokio::sync::mpsc::Receiver<Command>) {
        let me = Rc::new(self);
        let collect = {
            let me = Rc::clone(&me);
            async move {
                let mut tick = tokio::time::interval(COLLECT_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    me.collect();
                }
            }
        };
        let traces = {
            let me = Rc::clone(&me);
            async move {
                if me.span_exporter.is_none() {
                    return;
                }
                let delay = me.shared.config.batch.schedule_delay;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = me.batch_ready.notified() => {}
                    }
                    me.export_spans(false).await;
                }
            }
        };
        let metrics = {
            let me = Rc::clone(&me);
            async move {
                if me.shared.info.metrics.is_none() {
                    return;
                }
                let interval = me.shared.config.metric_interval;
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    me.export_metrics().await;
                }
            }
        };
        let commands = {
            let me = Rc::clone(&me);
            async move {
                while let Some(Command::Flush(done)) = commands.recv().await {
                    me.collect();
                    me.export_spans(true).await;
                    if me.shared.info.metrics.is_some() {
                        me.export_metrics().await;
                    }
                    let _ = done.try_send(());
                }
            }
        };
        tokio::join!(collect, traces, metrics, commands);
    }

    /// Pumps the hub, then turns new finished tasks, slow callbacks and stalls into
    /// queued spans (dropping, counted, what does not fit).
    fn collect(&self) {
        self.hub.pump();
        if self.span_exporter.is_none() {
            return;
        }
        // Under the hub's lock only long enough to clone Arcs.
        let loops: Vec<(LoopInfo, Option<Arc<Tables>>, u64)> = self.hub.read(|st| {
            st.loops.values().map(|e| (e.info().clone(), e.tables.clone(), e.history.totals().tasks_finished)).collect()
        });
        let stalls = self.hub.stalls(None, usize::MAX);
        let now = clock::unix_ms();
        let mut spans = Vec::new();
        {
            let mut tracer = self.tracer.borrow_mut();
            let before = tracer.tally.sampled_out;
            let mut unseen = 0;
            for (info, tables, finished_total) in &loops {
                if let Some(t) = tables {
                    if tracer.on_tables(info, t, now, &mut spans) {
                        unseen += tracer.unseen(info.id, *finished_total, now);
                    }
                }
            }
            self.shared.tasks_unseen.fetch_add(unseen, Ordering::Relaxed);
            let infos: HashMap<u64, LoopInfo> = loops.iter().map(|(i, _, _)| (i.id, i.clone())).collect();
            tracer.on_stalls(&stalls, &infos, now, &mut spans);
            tracer.retain_loops(&loops.iter().map(|(i, _, _)| i.id).collect::<HashSet<u64>>());
            self.shared.sampled_out.fetch_add(tracer.tally.sampled_out - before, Ordering::Relaxed);
        }
        if spans.is_empty() {
            return;
        }
        let cap = self.shared.config.batch.max_queue;
        let len = {
            let mut q = self.queue.borrow_mut();
            let room = cap.saturating_sub(q.len());
            let dropped = spans.len().saturating_sub(room);
            spans.truncate(room);
            q.extend(spans);
            if dropped > 0 {
                self.shared.traces.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            }
            q.len()
        };
        self.shared.traces.queued.store(len as u64, Ordering::Relaxed);
        if len >= self.shared.config.batch.max_batch {
            self.batch_ready.notify_one();
        }
    }

    /// Exports queued spans: one batch, or (`all`) until the queue is empty.
    async fn export_spans(&self, all: bool) {
        let Some(exporter) = &self.span_exporter else { return };
        let _one_at_a_time = self.export_lock.lock().await;
        loop {
            let batch: Vec<SpanData> = {
                let mut q = self.queue.borrow_mut();
                let n = q.len().min(self.shared.config.batch.max_batch);
                q.drain(..n).collect()
            };
            self.shared.traces.queued.store(self.queue.borrow().len() as u64, Ordering::Relaxed);
            if batch.is_empty() {
                return;
            }
            let n = batch.len() as u64;
            let timeout = self.shared.config.batch.export_timeout;
            match transport::export_spans(exporter, batch, timeout).await {
                Ok(()) => self.shared.traces.succeeded(n),
                Err(e) => self.shared.traces.failed(n, e),
            }
            let more = self.queue.borrow().len();
            if !(all || more >= self.shared.config.batch.max_batch) {
                return;
            }
        }
    }

    /// One metrics export of the hub's current state.
    async fn export_metrics(&self) {
        let mut sender = self.metrics_sender.lock().await;
        let Some(sender) = sender.as_mut() else { return };
        let now_ns = clock::unix_ms().saturating_mul(1_000_000);
        let (request, points) = self.hub.read(|st| metrics::build(st, &self.resource, now_ns));
        if points == 0 {
            return;
        }
        match sender.send(request, self.shared.config.metric_timeout).await {
            Ok(()) => self.shared.metrics.succeeded(points as u64),
            Err(e) => self.shared.metrics.failed(points as u64, e),
        }
    }
}

// --- Hooks into the sidecar server (server.rs calls these) --------------------------

/// Appends the `glassloop_otlp_*` families to a `/metrics` body (zeros, with
/// `glassloop_otlp_enabled 0`, when no exporter runs for `hub`).
pub(crate) fn render_prometheus(hub: &Hub, out: &mut String) {
    let shared = exporter_for(hub);
    let _ = writeln!(out, "# HELP glassloop_otlp_enabled 1 when OTLP export runs.");
    let _ = writeln!(out, "# TYPE glassloop_otlp_enabled gauge");
    let _ = writeln!(out, "glassloop_otlp_enabled {}", u8::from(shared.is_some()));
    type Family = (&'static str, &'static str, &'static str, fn(&SignalStats) -> u64);
    let families: [Family; 4] = [
        (
            "glassloop_otlp_exported_total",
            "counter",
            "Spans (traces) or data points (metrics) the collector accepted.",
            |s| s.exported.load(Ordering::Relaxed),
        ),
        (
            "glassloop_otlp_dropped_total",
            "counter",
            "Spans (traces) or data points (metrics) never delivered: queue full or export failed.",
            |s| s.dropped.load(Ordering::Relaxed),
        ),
        ("glassloop_otlp_export_failures_total", "counter", "OTLP export requests that failed.", |s| {
            s.export_failures.load(Ordering::Relaxed)
        }),
        ("glassloop_otlp_queue", "gauge", "Spans waiting for export.", |s| s.queued.load(Ordering::Relaxed)),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for signal in ["traces", "metrics"] {
            let v = shared.as_ref().map_or(0, |s| get(if signal == "traces" { &s.traces } else { &s.metrics }));
            let _ = writeln!(out, "{name}{{signal=\"{signal}\"}} {v}");
        }
    }
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    };
    counter(
        out,
        "glassloop_otlp_spans_sampled_out_total",
        "Spans the trace sampler left out.",
        shared.as_ref().map_or(0, |s| s.sampled_out.load(Ordering::Relaxed)),
    );
    counter(
        out,
        "glassloop_otlp_tasks_unseen_total",
        "Finished tasks that left the loop's finished-task table before the exporter read it (no span).",
        shared.as_ref().map_or(0, |s| s.tasks_unseen.load(Ordering::Relaxed)),
    );
}

/// `GET /api/v1/otlp`, merged into the `/api/v1` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/otlp", get(|State(state): State<AppState>| async move { Json(status_for(state.hub())) }))
}
