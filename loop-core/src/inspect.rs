//! The loop's link to the inspector: samples, tables, deep queries, heartbeat.
//!
//! A loop joins the inspector's hub once the sidecar runs in the process (loops
//! made before it started join at their next iteration). From then on, at the end
//! of an iteration, the loop cuts a sample every `SAMPLE_INTERVAL` and publishes
//! its tables every `TABLES_INTERVAL` — both bounded and non-blocking — and answers
//! deep queries (a task's await stack, fresh tables) at the top of an iteration.

use crate::event_loop::LoopCore;
use crate::sites::{self, SiteOwner};
use crate::tasks::TaskState;
use inspector::{
    CallbackSite, Heartbeat, Hub, LoopHandle, LoopInfo, QueryKind, QueryReply, ServerRecord, SlowCallbackEvent, Tables,
    TaskRecord, TaskState as RecordState, TransportRecord,
};
use pyo3::prelude::*;
use rustc_hash::FxHashSet as HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const SAMPLE_INTERVAL_NS: u64 = 250_000_000;
pub const TABLES_INTERVAL_NS: u64 = 1_000_000_000;
/// Rows per table the loop builds: the busiest tasks and sites, newest events.
pub const TABLE_ROWS: usize = 2_000;

/// Set once the sidecar runs in this process.
static ACTIVE: AtomicBool = AtomicBool::new(false);

#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Starts the process's sidecar (idempotent). Returns its URL.
pub fn start(config: inspector::Config) -> Result<inspector::ServerInfo, inspector::Error> {
    let info = inspector::serve(config)?;
    ACTIVE.store(true, Ordering::Relaxed);
    Ok(info)
}

/// Starts OTLP export of the process's hub (idempotent); when it runs, loops join
/// the hub as for the inspector, so they publish samples and tables.
pub fn start_otlp(config: inspector::otlp::OtlpConfig) -> Result<inspector::otlp::OtlpInfo, inspector::otlp::OtlpError> {
    let info = inspector::otlp::start(config)?;
    if info.enabled {
        ACTIVE.store(true, Ordering::Relaxed);
        // Task spans join the application's trace: tasks record its current span.
        crate::otel::set_capturing(info.traces.is_some());
    }
    Ok(info)
}

/// In a child made by fork(): the sidecar's threads did not come along, and a lock
/// they held may be held forever, so the child's loops stay out of the hub.
pub fn after_fork_in_child() {
    ACTIVE.store(false, Ordering::Relaxed);
    crate::otel::set_capturing(false);
}

pub struct Link {
    pub handle: LoopHandle,
    pub heartbeat: Arc<Heartbeat>,
    pub next_sample_ns: u64,
    pub next_tables_ns: u64,
    /// Totals at the previous sample, so samples carry per-interval counts.
    pub last_tasks_created: u64,
    pub last_tasks_finished: u64,
    pub last_bytes: (u64, u64),
    pub last_executor_done: u64,
    pub last_connections: u64,
    /// Site names the hub could not take at once (its lock was busy): offered again.
    pending_names: Vec<(u64, String)>,
    /// Protocol classes whose transport I/O was named to the hub (a stall inside
    /// `data_received` is named after it).
    named_io: HashSet<usize>,
}

/// Most protocol classes named per loop.
const MAX_NAMED_IO: usize = 1024;

impl Link {
    /// From when `publish` has something to do (see `State::next_publish_ns`).
    pub(crate) fn due_ns(&self) -> u64 {
        if self.pending_names.is_empty() {
            self.next_sample_ns.min(self.next_tables_ns)
        } else {
            0
        }
    }

    /// Tells the hub a site's label (see `LoopHandle::name_site`).
    pub(crate) fn name_site(&mut self, id: u64, label: String) {
        if let Err(label) = self.handle.name_site(id, label) {
            self.pending_names.push((id, label));
        }
    }

    fn flush_names(&mut self) {
        for (id, label) in std::mem::take(&mut self.pending_names) {
            self.name_site(id, label);
        }
    }
}

fn task_state(s: TaskState) -> RecordState {
    match s {
        TaskState::Pending => RecordState::Pending,
        TaskState::Done => RecordState::Done,
        TaskState::Cancelled => RecordState::Cancelled,
        TaskState::Failed => RecordState::Failed,
    }
}

impl LoopCore {
    /// Joins the hub: registers the loop, its waker and its stack capture.
    pub(crate) fn join_hub(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>) -> PyResult<Link> {
        let threading = py.import("threading")?;
        let thread = threading.call_method0("current_thread")?;
        let info = LoopInfo {
            name: format!("{}@{:#x}", loop_obj.get_type().name()?, loop_obj.as_ptr() as usize),
            thread_id: thread.getattr("ident")?.extract().unwrap_or(0),
            thread_name: thread.getattr("name")?.extract().unwrap_or_default(),
            python: py.version().split_whitespace().next().unwrap_or("").to_string(),
            glassloop_version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        let handle = Hub::global().register_loop(info);
        let waker = self.waker.clone();
        handle.set_waker(Box::new(move || {
            let _ = waker.wake();
        }));
        let thread_id = self.thread_id.clone();
        handle.set_stack_capture(Box::new(move || capture_stack(thread_id.load(Ordering::Relaxed))));
        let heartbeat = handle.heartbeat();
        let now = crate::clock::now_ns();
        // The first sample covers everything since the loop was made (as the
        // recorder's first cut does), so the totals start at zero.
        let mut link = Link {
            handle,
            heartbeat,
            next_sample_ns: now + SAMPLE_INTERVAL_NS,
            next_tables_ns: now,
            last_tasks_created: 0,
            last_tasks_finished: 0,
            last_bytes: (0, 0),
            last_executor_done: 0,
            last_connections: 0,
            pending_names: Vec::new(),
            named_io: HashSet::default(),
        };
        // Sites met before the loop joined: named now, as later ones are when first met.
        for (addr, owner) in self.state.with(py, |s| s.sites.owners(py)) {
            link.name_site(addr as u64, owner.describe(py).label());
        }
        Ok(link)
    }

    /// The heartbeat's site for a Rust transport's I/O: its protocol's class, named
    /// after the method the data goes to the first time the loop meets the class.
    /// The transport keeps it (until its protocol is replaced): an event costs a load.
    #[inline]
    pub(crate) fn io_site(&self, py: Python<'_>, transport: &crate::transports::Transport) -> u64 {
        match transport.io_site().get() {
            0 => self.find_io_site(py, transport),
            site => site,
        }
    }

    #[cold]
    fn find_io_site(&self, py: Python<'_>, transport: &crate::transports::Transport) -> u64 {
        let Some((class, method)) = transport.protocol_class(py) else { return 0 };
        let addr = class.as_ptr() as usize;
        let (linked, known) = self.state.with(py, |s| match s.link.as_ref() {
            Some(l) => (true, l.named_io.contains(&addr) || l.named_io.len() >= MAX_NAMED_IO),
            None => (false, true),
        });
        // Kept only once the hub has the name (or was refused it for good), so that
        // the class is named whichever of its transports the loop meets first.
        if linked {
            transport.io_site().set(addr as u64);
        }
        if !known {
            let label = match class.getattr(method) {
                Ok(f) => match sites::site_of(&f) {
                    (_, Some(code)) => sites::describe(&code).label(),
                    _ => format!("{}.{method}", class.qualname().map(|q| q.to_string()).unwrap_or_default()),
                },
                Err(_) => class.qualname().map(|q| q.to_string()).unwrap_or_default(),
            };
            self.state.with(py, |s| {
                if let Some(link) = s.link.as_mut() {
                    link.named_io.insert(addr);
                    link.name_site(addr as u64, label);
                }
                s.link_changed();
            });
        }
        addr as u64
    }

    /// End of an iteration: sample and publish what is due.
    pub(crate) fn publish(&self, py: Python<'_>, link: &mut Link, now_ns: u64) -> PyResult<()> {
        if !link.pending_names.is_empty() {
            link.flush_names();
        }
        if now_ns >= link.next_sample_ns {
            link.next_sample_ns = now_ns + SAMPLE_INTERVAL_NS;
            let bytes = self.transport_bytes(py);
            let mut sample = self.state.with(py, |s| {
                let mut sample = s.recorder.take_sample(inspector::clock::unix_ms());
                sample.timers_pending = (s.timers.len() - s.timers.cancelled_len().min(s.timers.len())) as u64;
                sample.fds_registered = s.watchers.len() as u64 + s.watchers.transport_count() as u64;
                sample.tasks_live = s.tasks.live_len() as u64;
                sample.tasks_created = s.tasks.created_total - link.last_tasks_created;
                sample.tasks_finished = s.tasks.finished_total - link.last_tasks_finished;
                link.last_tasks_created = s.tasks.created_total;
                link.last_tasks_finished = s.tasks.finished_total;
                sample.transports_open = (s.watchers.transport_count() + self.tracked.bind(py).len()) as u64;
                sample.executor_queued = s.executor.0;
                sample.executor_running = s.executor.1;
                sample.executor_done = s.executor.2 - link.last_executor_done;
                link.last_executor_done = s.executor.2;
                sample.connections = s.connections - link.last_connections;
                link.last_connections = s.connections;
                sample
            });
            sample.bytes_in = bytes.0.saturating_sub(link.last_bytes.0);
            sample.bytes_out = bytes.1.saturating_sub(link.last_bytes.1);
            link.last_bytes = bytes;
            link.handle.publish_sample(sample);
        }
        if now_ns >= link.next_tables_ns {
            link.next_tables_ns = now_ns + TABLES_INTERVAL_NS;
            link.handle.publish_tables(self.build_tables(py)?);
        }
        Ok(())
    }

    /// Top of an iteration: answer what the inspector asked.
    pub(crate) fn answer_queries(&self, py: Python<'_>, link: &Link) -> PyResult<()> {
        if !link.handle.has_queries() {
            return Ok(());
        }
        for query in link.handle.take_queries() {
            match query.kind() {
                QueryKind::Tables => {
                    let tables = self.build_tables(py)?;
                    query.answer(QueryReply::Tables(tables));
                }
                QueryKind::TaskStack { task_id } => {
                    let stack = self.task_stack_text(py, *task_id).ok().flatten();
                    query.answer(QueryReply::TaskStack(stack));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn build_tables(&self, py: Python<'_>) -> PyResult<Tables> {
        let live = self.state.with(py, |s| s.tasks.live_len());
        Ok(Tables {
            unix_ms: inspector::clock::unix_ms(),
            tasks: self.task_records(py, TABLE_ROWS)?.into_iter().map(|(r, _)| r).collect(),
            transports: self.transport_records(py)?,
            servers: self.server_records(py)?,
            callback_sites: self.site_records(py, "total", TABLE_ROWS),
            slow_callbacks: self.slow_records(py),
            // The loop sends its busiest TABLE_ROWS live tasks; say so when there are more.
            truncated: live > TABLE_ROWS,
        })
    }

    /// Live tasks (busiest first, at most `limit`) then recently finished ones,
    /// each with the task object while it is alive.
    pub(crate) fn task_records<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Vec<(TaskRecord, Option<Bound<'py, PyAny>>)>> {
        struct Row {
            hold: Option<crate::tasks::Hold>,
            code: Option<Py<PyAny>>,
            name: Option<String>,
            record: TaskRecord,
        }
        let rows: Vec<Row> = self.state.with(py, |s| {
            let row = |e: &crate::tasks::TaskEntry, hold: Option<&crate::tasks::Hold>, end: Option<&crate::tasks::FinishedTask>| Row {
                hold: hold.map(|h| h.clone_ref(py)),
                code: e.code.as_ref().map(|c| c.clone_ref(py)),
                name: end.and_then(|f| f.name.clone()),
                record: TaskRecord {
                    id: e.id,
                    name: String::new(),
                    coro: String::new(),
                    defined_at: String::new(),
                    parent_id: e.parent,
                    created_unix_ms: e.created_unix_ms,
                    finished_unix_ms: end.map(|f| f.finished_unix_ms),
                    state: task_state(end.map_or(TaskState::Pending, |f| f.state)),
                    exception_type: end.and_then(|f| f.exception_type.clone()),
                    steps: e.steps,
                    busy_ns: e.busy_ns,
                    longest_step_ns: e.longest_step_ns,
                    last_scheduled_delay_ns: e.last_delay_ns,
                    trace_id: e.app_span.as_ref().map(|a| a.trace_id_hex()),
                    parent_span_id: e.app_span.as_ref().map(|a| a.span_id_hex()),
                    trace_flags: e.app_span.as_ref().map_or(0, |a| a.flags),
                },
            };
            let mut live: Vec<&crate::tasks::LiveTask> = s.tasks.live().collect();
            if live.len() > limit {
                live.select_nth_unstable_by(limit, |a, b| b.entry.busy_ns.cmp(&a.entry.busy_ns));
                live.truncate(limit);
            }
            let mut rows: Vec<Row> = live.into_iter().map(|l| row(&l.entry, Some(&l.hold), None)).collect();
            rows.sort_by_key(|r| r.record.id);
            rows.extend(s.tasks.finished().map(|f| row(&f.entry, None, Some(f))));
            rows
        });
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let task = match &row.hold {
                Some(hold) => match hold.task(py) {
                    Some(t) => Some(t),
                    None => continue, // collected while pending; pruned later
                },
                None => None,
            };
            row.record.name = match &task {
                Some(t) => t.call_method0("get_name")?.extract::<String>().unwrap_or_default(),
                None => row.name.unwrap_or_default(),
            };
            if let Some(code) = &row.code {
                let site = sites::describe(code.bind(py));
                row.record.defined_at = format!("{}:{}", site.file, site.line);
                row.record.coro = site.qualname;
            }
            out.push((row.record, task));
        }
        Ok(out)
    }

    pub(crate) fn site_records(&self, py: Python<'_>, order: &str, limit: usize) -> Vec<CallbackSite> {
        let top = self.state.with(py, |s| s.sites.top(py, order, limit));
        top.into_iter()
            .map(|(addr, owner, stats): (usize, SiteOwner, _)| {
                let name = owner.describe(py);
                CallbackSite {
                    id: addr as u64,
                    qualname: name.qualname,
                    file: name.file,
                    line: name.line,
                    count: stats.count,
                    total_ns: stats.total_ns,
                    max_ns: stats.max_ns,
                }
            })
            .collect()
    }

    pub(crate) fn slow_records(&self, py: Python<'_>) -> Vec<SlowCallbackEvent> {
        self.state.with(py, |s| s.slow.events()).into_iter().map(|e| SlowCallbackEvent {
            unix_ms: e.unix_ms,
            duration_ns: e.duration_ns,
            site: format!("{} ({}:{})", e.site.qualname, e.site.file, e.site.line),
            task_id: e.task_id,
            task_name: e.task_name,
            traceback: e.traceback,
        }).collect()
    }

    pub(crate) fn transport_records(&self, py: Python<'_>) -> PyResult<Vec<TransportRecord>> {
        let transports = self.state.with(py, |s| s.watchers.transports(py));
        let mut out = Vec::with_capacity(transports.len());
        for t in transports {
            out.push(t.record(py)?);
        }
        out.extend(self.tracked_records(py)?);
        Ok(out)
    }

    /// asyncio's Python transports (pipes, subprocesses): rows built by
    /// `glassloop._tracked.rows`, which also forgets the closed and collected ones.
    fn tracked_records(&self, py: Python<'_>) -> PyResult<Vec<TransportRecord>> {
        let tracked = self.tracked.bind(py);
        if tracked.is_empty() {
            return Ok(Vec::new());
        }
        let rows = crate::stdlib::tracked_rows(py)?.call1((tracked,))?;
        let mut out = Vec::new();
        for row in rows.try_iter()? {
            let row = row?;
            let at = |i: usize| row.get_item(i);
            let kind: String = at(1)?.extract()?;
            out.push(TransportRecord {
                id: at(0)?.extract()?,
                kind: inspector::TransportKind::parse(&kind).unwrap_or_default(),
                local: at(2)?.extract()?,
                peer: at(3)?.extract()?,
                protocol: at(4)?.extract()?,
                created_unix_ms: at(5)?.extract()?,
                bytes_in: at(6)?.extract()?,
                bytes_out: at(7)?.extract()?,
                calls_in: at(8)?.extract()?,
                calls_out: at(9)?.extract()?,
                write_buffer: at(10)?.extract()?,
                write_buffer_high_water: at(11)?.extract()?,
                reading_paused: at(12)?.extract()?,
                writing_paused: at(13)?.extract()?,
                paused_reading_ns: at(14)?.extract()?,
                paused_writing_ns: at(15)?.extract()?,
                state: at(16)?.extract()?,
            });
        }
        Ok(out)
    }

    /// The server table, oldest first. Counters come from the table; whether the
    /// server listens and its open connections are read from the `Server` itself.
    pub(crate) fn server_records(&self, py: Python<'_>) -> PyResult<Vec<ServerRecord>> {
        let (rows, gone) = self.state.with(py, |s| {
            let gone = s.servers.prune(py);
            let rows: Vec<(Py<PyAny>, ServerRecord)> = s
                .servers
                .entries()
                .map(|e| {
                    let record = ServerRecord {
                        id: e.id,
                        kind: e.kind,
                        addresses: e.addresses.clone(),
                        accepted: e.accepted,
                        refused: e.refused,
                        protocol_factory: e.protocol_factory.clone(),
                        tls: e.tls,
                        created_unix_ms: e.created_unix_ms,
                        ..Default::default()
                    };
                    (e.weak.clone_ref(py), record)
                })
                .collect();
            (rows, gone)
        });
        drop(gone);
        let mut out = Vec::with_capacity(rows.len());
        for (weak, mut record) in rows {
            let server = weak.bind(py).call0()?;
            if server.is_none() {
                continue;
            }
            record.serving = server.call_method0("is_serving").and_then(|v| v.is_truthy()).unwrap_or(false);
            // asyncio's own count of the server's connections: `_clients` (3.13+) or `_active_count`.
            record.open = match server.getattr("_clients") {
                Ok(clients) => clients.len().unwrap_or(0) as u64,
                Err(_) => server.getattr("_active_count").and_then(|n| n.extract()).unwrap_or(0),
            };
            let closed = server.getattr("_sockets").map(|s| s.is_none()).unwrap_or(false);
            record.state = if record.serving { "serving" } else if closed { "closed" } else { "idle" }.to_string();
            out.push(record);
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// A task's await chain as text, one frame per line (None: no such task).
    pub(crate) fn task_stack_text(&self, py: Python<'_>, task_id: u64) -> PyResult<Option<String>> {
        let hold = self.state.with(py, |s| s.tasks.live().find(|l| l.entry.id == task_id).map(|l| l.hold.clone_ref(py)));
        let Some(task) = hold.and_then(|h| h.task(py)) else { return Ok(None) };
        let frames = py.import("glassloop._stacks")?.call_method1("await_stack_text", (task,))?;
        Ok(Some(frames.extract()?))
    }
}

/// Called by the inspector's capture thread (never the loop thread): the loop
/// thread's Python stack. Takes the GIL, which a stalled callback that runs Python
/// code gives up every switch interval; the inspector bounds the wait.
fn capture_stack(thread_id: u64) -> Option<String> {
    if thread_id == 0 {
        return None;
    }
    Python::attach(|py| {
        let text = py.import("glassloop._stacks").ok()?.call_method1("thread_stack_text", (thread_id,)).ok()?;
        text.extract::<Option<String>>().ok().flatten()
    })
}
