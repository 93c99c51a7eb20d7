//! What the loop thread hands the inspector, and what the JSON API returns.
//!
//! One vocabulary (DESIGN.md "Names"): `asyncio.callback.duration` is
//! `callback_duration` here, in JSON, and `asyncio_callback_duration_seconds` in
//! `/metrics`. Durations inside records are integer nanoseconds (`_ns`), wall-clock
//! instants are Unix milliseconds (`_unix_ms`), interval totals of time are seconds.

use std::ops::{Deref, DerefMut};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::summary::{interval_histogram, HistogramSummary};

/// Who a loop is. Sent once, when the loop registers with the hub.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopInfo {
    /// Assigned by the hub at registration (whatever the caller put is replaced);
    /// unique for the life of the process, never reused.
    pub id: u64,
    /// A human label (e.g. the thread's role); may be empty.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// OS thread id of the loop thread.
    pub thread_id: u64,
    /// The loop thread's name (`threading.current_thread().name`).
    pub thread_name: String,
    /// When the loop was created.
    pub created_unix_ms: u64,
    /// Python version string, e.g. `3.13.1`.
    pub python: String,
    /// glassloop's version.
    pub glassloop_version: String,
}

/// An HDR histogram of durations in nanoseconds that serializes as a
/// [`HistogramSummary`] (the raw counts never leave the process).
#[derive(Clone)]
pub struct DurationHistogram(pub Histogram<u64>);

impl std::fmt::Debug for DurationHistogram {
    // A summary: the cells would be thousands of zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurationHistogram")
            .field("count", &self.0.len())
            .field("min", &self.0.min())
            .field("max", &self.0.max())
            .finish()
    }
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram(interval_histogram())
    }
}

impl Deref for DurationHistogram {
    type Target = Histogram<u64>;
    fn deref(&self) -> &Histogram<u64> {
        &self.0
    }
}

impl DerefMut for DurationHistogram {
    fn deref_mut(&mut self) -> &mut Histogram<u64> {
        &mut self.0
    }
}

impl From<Histogram<u64>> for DurationHistogram {
    fn from(h: Histogram<u64>) -> Self {
        DurationHistogram(h)
    }
}

impl Serialize for DurationHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistogramSummary::of(&self.0).serialize(s)
    }
}

/// The names of the per-interval histograms, as used in URLs and JSON.
pub const HISTOGRAM_NAMES: [&str; 5] =
    ["callback_duration", "eventloop_delay", "timer_delay", "task_step_duration", "executor_job_duration"];

/// The five duration distributions a loop records, either as HDR histograms
/// (`H = DurationHistogram`, what the loop sends) or summarized
/// (`H = HistogramSummary`, what the hub keeps and serves).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms<H> {
    /// `asyncio.callback.duration`: how long each callback ran.
    pub callback_duration: H,
    /// `asyncio.eventloop.delay`: from a handle becoming ready to it starting to run.
    pub eventloop_delay: H,
    /// How late each timer ran after its `when` (`loop.stats()`'s `timer_delay`).
    pub timer_delay: H,
    /// How long each task step (one `Task.__step`) ran.
    pub task_step_duration: H,
    /// How long each `run_in_executor` job ran on its worker thread.
    pub executor_job_duration: H,
}

impl<H> Histograms<H> {
    /// The histogram called `name` (one of [`HISTOGRAM_NAMES`]).
    pub fn get(&self, name: &str) -> Option<&H> {
        match name {
            "callback_duration" => Some(&self.callback_duration),
            "eventloop_delay" => Some(&self.eventloop_delay),
            "timer_delay" => Some(&self.timer_delay),
            "task_step_duration" => Some(&self.task_step_duration),
            "executor_job_duration" => Some(&self.executor_job_duration),
            _ => None,
        }
    }

    /// The five histograms with their names, in [`HISTOGRAM_NAMES`] order.
    pub fn named(&self) -> [(&'static str, &H); 5] {
        [
            (HISTOGRAM_NAMES[0], &self.callback_duration),
            (HISTOGRAM_NAMES[1], &self.eventloop_delay),
            (HISTOGRAM_NAMES[2], &self.timer_delay),
            (HISTOGRAM_NAMES[3], &self.task_step_duration),
            (HISTOGRAM_NAMES[4], &self.executor_job_duration),
        ]
    }

    /// Applies `f` to each histogram.
    pub fn map<U>(&self, mut f: impl FnMut(&H) -> U) -> Histograms<U> {
        Histograms {
            callback_duration: f(&self.callback_duration),
            eventloop_delay: f(&self.eventloop_delay),
            timer_delay: f(&self.timer_delay),
            task_step_duration: f(&self.task_step_duration),
            executor_job_duration: f(&self.executor_job_duration),
        }
    }
}

/// One sampling interval of one loop (default 250 ms), produced by the loop thread.
///
/// Counters (`iterations` … `executor_done`, `bytes_*`, `tasks_created`,
/// `tasks_finished`, `connections`) are totals *for the interval*; gauges (`ready_queue_last`,
/// `timers_pending`, `fds_registered`, `tasks_live`, `transports_open`,
/// `executor_queued`, `executor_running`) are the value at the interval's end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample<H = DurationHistogram> {
    /// The loop's id; set by [`LoopHandle::publish_sample`](crate::LoopHandle::publish_sample).
    pub loop_id: u64,
    /// 1, 2, 3, … per loop; a gap means samples were dropped.
    pub seq: u64,
    /// Interval start.
    pub start_unix_ms: u64,
    /// Interval end.
    pub end_unix_ms: u64,
    /// Loop iterations (`_run_once` calls).
    pub iterations: u64,
    /// Callbacks run.
    pub callbacks: u64,
    /// Callbacks that raised.
    pub exceptions: u64,
    /// Callbacks that ran longer than `loop.slow_callback_duration`.
    pub slow_callbacks: u64,
    /// `asyncio.eventloop.time{state=active}`: time running callbacks and I/O.
    pub busy_seconds: f64,
    /// `asyncio.eventloop.time{state=idle}`: time waiting in the poll.
    pub idle_seconds: f64,
    /// `asyncio.eventloop.utilization`: busy / (busy + idle), 0 when both are 0.
    pub utilization: f64,
    /// Deepest the ready queue got during the interval.
    pub ready_queue_max: u64,
    /// Ready-queue depth at the last iteration of the interval.
    pub ready_queue_last: u64,
    /// Timers scheduled and not yet run or cancelled.
    pub timers_pending: u64,
    /// File descriptors registered with the poller.
    pub fds_registered: u64,
    /// `asyncio.task.active`: tasks not yet done.
    pub tasks_live: u64,
    /// Tasks created in the interval.
    pub tasks_created: u64,
    /// Tasks that finished (done, cancelled or failed) in the interval.
    pub tasks_finished: u64,
    /// Transports open.
    pub transports_open: u64,
    /// Bytes received by all transports in the interval.
    pub bytes_in: u64,
    /// Bytes sent by all transports in the interval.
    pub bytes_out: u64,
    /// `asyncio.connections`: connections opened in the interval (stream
    /// transports made for accepted or connected sockets, plain or TLS).
    #[serde(default)]
    pub connections: u64,
    /// Executor jobs waiting for a worker.
    pub executor_queued: u64,
    /// Executor jobs running.
    pub executor_running: u64,
    /// Executor jobs completed in the interval.
    pub executor_done: u64,
    /// Stalls the watchdog opened during the interval. Filled in by the hub; the
    /// loop leaves it 0 (the loop cannot see its own stalls while they happen).
    pub stalls: u64,
    /// Duration distributions for the interval.
    pub histograms: Histograms<H>,
}

/// A sample as kept in history and served: histograms summarized.
pub type SampleSummary = Sample<HistogramSummary>;

impl Sample<DurationHistogram> {
    /// An empty sample whose histograms are ready to record into.
    pub fn new() -> Self {
        Self::default()
    }

    /// Summarizes the histograms (what the hub stores; ~1.5 KiB instead of ~180 KiB).
    pub fn summarize(&self) -> SampleSummary {
        Sample {
            loop_id: self.loop_id,
            seq: self.seq,
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: self.end_unix_ms,
            iterations: self.iterations,
            callbacks: self.callbacks,
            exceptions: self.exceptions,
            slow_callbacks: self.slow_callbacks,
            busy_seconds: self.busy_seconds,
            idle_seconds: self.idle_seconds,
            utilization: self.utilization,
            ready_queue_max: self.ready_queue_max,
            ready_queue_last: self.ready_queue_last,
            timers_pending: self.timers_pending,
            fds_registered: self.fds_registered,
            tasks_live: self.tasks_live,
            tasks_created: self.tasks_created,
            tasks_finished: self.tasks_finished,
            transports_open: self.transports_open,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            connections: self.connections,
            executor_queued: self.executor_queued,
            executor_running: self.executor_running,
            executor_done: self.executor_done,
            stalls: self.stalls,
            histograms: self.histograms.map(|h| HistogramSummary::of(h)),
        }
    }
}

/// A task's life stage, as asyncio would describe it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not done yet (running, scheduled or awaiting).
    #[default]
    Pending,
    /// Returned a result.
    Done,
    /// Cancelled.
    Cancelled,
    /// Raised an exception.
    Failed,
}

impl TaskState {
    /// The JSON word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
            TaskState::Failed => "failed",
        }
    }

    /// Parses the JSON word.
    pub fn parse(s: &str) -> Option<Self> {
        [TaskState::Pending, TaskState::Done, TaskState::Cancelled, TaskState::Failed]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// One task (live, or recently finished and still in the loop's bounded table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The loop's id for the task (stable for the task's life).
    pub id: u64,
    /// `task.get_name()`.
    pub name: String,
    /// The coroutine's `__qualname__`.
    pub coro: String,
    /// Where the coroutine function is defined, `file:line`.
    pub defined_at: String,
    /// The task that created this one, if it was created from a task.
    pub parent_id: Option<u64>,
    /// When the task was created.
    pub created_unix_ms: u64,
    /// When it finished; `None` while pending.
    pub finished_unix_ms: Option<u64>,
    /// Life stage.
    pub state: TaskState,
    /// The exception's type name when `state` is `failed`.
    pub exception_type: Option<String>,
    /// Steps run (`asyncio.task.steps`).
    pub steps: u64,
    /// Total time spent running the task's steps.
    pub busy_ns: u64,
    /// The longest single step.
    pub longest_step_ns: u64,
    /// Delay between the last step becoming ready and starting to run.
    pub last_scheduled_delay_ns: u64,
    /// The application's OpenTelemetry trace the task was created in (32 lowercase
    /// hex digits): the trace of the span current at `create_task`, recorded while
    /// OTLP traces are exported and the application uses `opentelemetry-api`.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// That span's id (16 lowercase hex digits).
    #[serde(default)]
    pub parent_span_id: Option<String>,
    /// That span's W3C trace flags (bit 0: sampled); 0 without a span.
    #[serde(default)]
    pub trace_flags: u8,
}

/// What kind of transport (or server) a record describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// TCP stream.
    #[default]
    Tcp,
    /// Unix-domain stream.
    Unix,
    /// UDP datagram endpoint.
    Udp,
    /// The read end of a pipe (`connect_read_pipe`, a subprocess's stdout/stderr).
    PipeRead,
    /// The write end of a pipe (`connect_write_pipe`, a subprocess's stdin).
    PipeWrite,
    /// Subprocess transport.
    Subprocess,
    /// TLS (`ssl=` or `start_tls`) over a TCP or Unix stream.
    Tls,
}

impl TransportKind {
    /// Every kind, in JSON order.
    pub const ALL: [TransportKind; 7] = [
        TransportKind::Tcp,
        TransportKind::Unix,
        TransportKind::Udp,
        TransportKind::PipeRead,
        TransportKind::PipeWrite,
        TransportKind::Subprocess,
        TransportKind::Tls,
    ];

    /// The JSON word for this kind (also the `type` label in `/metrics`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Unix => "unix",
            TransportKind::Udp => "udp",
            TransportKind::PipeRead => "pipe_read",
            TransportKind::PipeWrite => "pipe_write",
            TransportKind::Subprocess => "subprocess",
            TransportKind::Tls => "tls",
        }
    }

    /// Parses the JSON word.
    pub fn parse(s: &str) -> Option<Self> {
        TransportKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One transport: a Rust stream transport, or one of asyncio's Python transports
/// the loop made (pipes, subprocesses), with the same counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportRecord {
    /// The loop's id for the transport.
    pub id: u64,
    /// Kind.
    pub kind: TransportKind,
    /// Local address (`host:port`, a path, `fd N` for a pipe, or empty).
    pub local: String,
    /// Peer address (`pid N` for a subprocess and its pipes, or empty).
    pub peer: String,
    /// The protocol's class `__qualname__` (for `tls`, the application's protocol).
    pub protocol: String,
    /// When the transport was created.
    pub created_unix_ms: u64,
    /// Bytes received since creation.
    pub bytes_in: u64,
    /// Bytes sent since creation.
    pub bytes_out: u64,
    /// `data_received`/`buffer_updated`/`datagram_received` calls.
    pub calls_in: u64,
    /// `write`/`writelines`/`sendto` calls.
    pub calls_out: u64,
    /// Bytes buffered for writing now.
    pub write_buffer: u64,
    /// The most ever buffered for writing.
    pub write_buffer_high_water: u64,
    /// `pause_reading()` in effect.
    pub reading_paused: bool,
    /// The protocol was told `pause_writing()`.
    pub writing_paused: bool,
    /// Total time reading was paused.
    pub paused_reading_ns: u64,
    /// Total time writing was paused.
    pub paused_writing_ns: u64,
    /// `open`, `closing` or `closed`.
    pub state: String,
}

/// One listening server (`loop.create_server`, `create_unix_server`, and so
/// `asyncio.start_server`, `start_unix_server`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The loop's id for the server.
    pub id: u64,
    /// `tcp` or `unix` (by the listening sockets' family; see `tls`).
    pub kind: TransportKind,
    /// Listening addresses.
    pub addresses: Vec<String>,
    /// Connections accepted since creation (handed to a transport).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections refused: `accept()` failures (EMFILE, ENFILE, ENOBUFS, ENOMEM,
    /// ECONNABORTED, ...) that asyncio reports or drops.
    pub refused: u64,
    /// `server.is_serving()`.
    pub serving: bool,
    /// `serving`, `idle` (made with `start_serving=False`, not started yet) or
    /// `closed` (`server.close()` was called).
    #[serde(default)]
    pub state: String,
    /// The protocol factory's `__qualname__` (a class, a function, a lambda).
    #[serde(default)]
    pub protocol_factory: String,
    /// Made with `ssl=`: connections are TLS.
    #[serde(default)]
    pub tls: bool,
    /// When the server was created.
    #[serde(default)]
    pub created_unix_ms: u64,
}

/// Totals for one callback site (a code object): the always-on callback profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallbackSite {
    /// The loop's opaque id for the site: the same id the loop stores in its
    /// [`Heartbeat`](crate::Heartbeat), so a stall can be named from it.
    pub id: u64,
    /// The code object's `co_qualname`.
    pub qualname: String,
    /// The code object's file.
    pub file: String,
    /// The code object's first line.
    pub line: u32,
    /// Callbacks run from this site.
    pub count: u64,
    /// Their total run time.
    pub total_ns: u64,
    /// The longest one.
    pub max_ns: u64,
}

impl CallbackSite {
    /// `qualname (file:line)`, how stalls and slow callbacks name a site.
    pub fn label(&self) -> String {
        format!("{} ({}:{})", self.qualname, self.file, self.line)
    }
}

/// One callback that ran longer than `loop.slow_callback_duration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlowCallbackEvent {
    /// When it finished.
    pub unix_ms: u64,
    /// How long it ran.
    pub duration_ns: u64,
    /// Where it was defined, `qualname (file:line)`.
    pub site: String,
    /// The task it was a step of, if any.
    pub task_id: Option<u64>,
    /// That task's name.
    pub task_name: Option<String>,
    /// The traceback, when debug mode captured one.
    pub traceback: Option<String>,
}

/// What became of the watchdog's request for the stalled loop's stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackStatus {
    /// Asked for, no answer yet.
    #[default]
    Pending,
    /// `stack` holds the loop thread's stack during the stall.
    Captured,
    /// The loop registered no capture function, or it returned nothing.
    Unavailable,
    /// The capture did not answer within the capture timeout.
    Timeout,
    /// Not attempted: the capture thread was still busy with earlier stalls.
    Skipped,
    /// Captured, but the stalled callback had already returned: discarded,
    /// since it would show whatever ran next.
    Stale,
}

/// A callback that ran past the stall threshold, seen by the watchdog while it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StallEvent {
    /// Process-unique stall id.
    pub id: u64,
    /// The stalled loop.
    pub loop_id: u64,
    /// When the stalled callback started.
    pub started_unix_ms: u64,
    /// How long it has run (ongoing) or ran (closed; exact to one watchdog tick).
    pub duration_ns: u64,
    /// Still running.
    pub ongoing: bool,
    /// The loop's opaque site id from the heartbeat (0 = unknown).
    pub site_id: u64,
    /// The site named from the loop's callback-site table, when known.
    pub site: Option<String>,
    /// The loop thread's stack during the stall (Python's formatting).
    pub stack: Option<String>,
    /// What happened to the stack capture.
    pub stack_status: StackStatus,
}

/// The loop's tables, sent at a low rate or in answer to a query.
///
/// # Notes
/// The loop bounds each table (it owns the records); the hub additionally truncates
/// a table past [`Tables::MAX_ROWS`] rows so one runaway loop cannot exhaust the
/// sidecar's memory, and reports the truncation in `truncated`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    /// When the loop built these tables.
    pub unix_ms: u64,
    /// Tasks (live and recently finished).
    pub tasks: Vec<TaskRecord>,
    /// Transports.
    pub transports: Vec<TransportRecord>,
    /// Servers.
    pub servers: Vec<ServerRecord>,
    /// Callback sites with totals.
    pub callback_sites: Vec<CallbackSite>,
    /// The most recent slow callbacks.
    pub slow_callbacks: Vec<SlowCallbackEvent>,
    /// Set by the hub when it cut a table to [`Tables::MAX_ROWS`].
    #[serde(default)]
    pub truncated: bool,
}

impl Tables {
    /// Most rows the hub keeps per table.
    pub const MAX_ROWS: usize = 100_000;

    /// Cuts every table to [`Tables::MAX_ROWS`] rows.
    pub fn enforce_bounds(&mut self) {
        fn cut<T>(v: &mut Vec<T>) -> bool {
            let over = v.len() > Tables::MAX_ROWS;
            v.truncate(Tables::MAX_ROWS);
            over
        }
        let t = cut(&mut self.tasks)
            | cut(&mut self.transports)
            | cut(&mut self.servers)
            | cut(&mut self.callback_sites)
            | cut(&mut self.slow_callbacks);
        self.truncated |= t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_serializes_histograms_as_summaries() {
        let mut s = Sample::new();
        s.histograms.callback_duration.saturating_record(1_000);
        s.histograms.callback_duration.saturating_record(2_000);
        let v = serde_json::to_value(&s).unwrap();
        let cb = &v["histograms"]["callback_duration"];
        assert_eq!(cb["count"], 2);
        assert!(cb["p99_ns"].as_u64().unwrap() >= 1_990);
        assert_eq!(cb["buckets"].as_array().unwrap().len(), crate::summary::BUCKETS);
        // The summarized form serializes identically.
        assert_eq!(serde_json::to_value(s.summarize()).unwrap(), v);
    }

    #[test]
    fn records_use_the_documented_words() {
        let t = TaskRecord { state: TaskState::Cancelled, ..Default::default() };
        assert_eq!(serde_json::to_value(&t).unwrap()["state"], "cancelled");
        let tr = TransportRecord { kind: TransportKind::Subprocess, ..Default::default() };
        assert_eq!(serde_json::to_value(&tr).unwrap()["kind"], "subprocess");
        for kind in TransportKind::ALL {
            let tr = TransportRecord { kind, ..Default::default() };
            assert_eq!(serde_json::to_value(&tr).unwrap()["kind"], kind.as_str(), "serde and as_str agree");
            assert_eq!(TransportKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(TransportKind::PipeRead.as_str(), "pipe_read");
        assert_eq!(TransportKind::parse("pipe"), None);
        let st = StallEvent { stack_status: StackStatus::Captured, ..Default::default() };
        assert_eq!(serde_json::to_value(&st).unwrap()["stack_status"], "captured");
        assert_eq!(TaskState::parse("failed"), Some(TaskState::Failed));
        assert_eq!(TaskState::parse("nope"), None);
    }

    #[test]
    fn server_records_serialize_every_field() {
        let r = ServerRecord {
            id: 3,
            kind: TransportKind::Unix,
            addresses: vec!["/tmp/s.sock".into()],
            accepted: 5,
            open: 2,
            refused: 1,
            serving: true,
            state: "serving".into(),
            protocol_factory: "Echo".into(),
            tls: false,
            created_unix_ms: 1_700_000_000_000,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "unix");
        assert_eq!(v["addresses"], serde_json::json!(["/tmp/s.sock"]));
        for (k, want) in [("accepted", 5u64), ("open", 2), ("refused", 1), ("created_unix_ms", 1_700_000_000_000)] {
            assert_eq!(v[k], want, "{k}");
        }
        assert_eq!(v["state"], "serving");
        assert_eq!(v["protocol_factory"], "Echo");
        assert_eq!(v["tls"], false);
        // Records from an older sender (without the newer fields) still read.
        let old: ServerRecord = serde_json::from_str(
            r#"{"id":1,"kind":"tcp","addresses":[],"accepted":0,"open":0,"refused":0,"serving":false}"#,
        )
        .unwrap();
        assert_eq!(old.state, "");
    }

    #[test]
    fn oversized_tables_are_cut_and_flagged() {
        let mut t = Tables { tasks: vec![TaskRecord::default(); Tables::MAX_ROWS + 3], ..Default::default() };
        t.enforce_bounds();
        assert_eq!(t.tasks.len(), Tables::MAX_ROWS);
        assert!(t.truncated);
    }
}
