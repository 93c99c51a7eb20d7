//! Spans from the loops' tables and the stall log.
//!
//! - **Tasks**: one span per finished task, from its creation to its end, exported
//!   once (the loop keeps its last finished tasks in its tables; the exporter
//!   remembers which it sent). Name `asyncio coro-<coroutine>` (the span name
//!   `opentelemetry-instrumentation-asyncio` gives a traced coroutine). The parent is
//!   the span of the task that created it; span ids are a keyed hash of
//!   `(loop id, task id)`, so a child links to its parent even when the two are
//!   exported in different batches, or the parent (a long-lived task) later. A task
//!   without a parent task starts a trace, whose id every descendant shares.
//! - **The application's trace**: when the application uses OpenTelemetry for
//!   Python, a task records the span current at `create_task` ([`app_context`]), and
//!   its span joins that trace. Its parent is the more specific of the two
//!   candidates: the application's span, unless it is the very span the parent task
//!   was itself created under (then the parent task's span, which is that span's
//!   descendant, is more specific and the task tree stays as it is). A task whose
//!   parent is the application's span carries a link to its parent task's span.
//!   A task's context is its creator's copy, so an application span differing from
//!   the one its parent task started under was opened inside the parent task: it
//!   is the narrower scope.
//! - **Slow callbacks**: a span `asyncio slow_callback` each (site, duration, the
//!   debug-mode traceback), child of its task's span when it was a task step.
//! - **Stalls**: a span `asyncio stall` each once it is over, status error, with the
//!   site and the loop thread's stack captured while it was stalled.
//!
//! Sampling is the SDK's sampler (`OTEL_TRACES_SAMPLER`), decided once per task when
//! it is first seen; children of a task follow its decision under the parent-based
//! samplers, and trace-id ratios agree within a trace.
//!
//! Bounds: per loop, a map entry per task in its newest tables (plus those gone for
//! under [`FORGET_AFTER_MS`]), at most [`MAX_REMEMBERED`] entries; the same for slow
//! callbacks; the stall ids in the hub's stall log.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanLinks};

use crate::model::{LoopInfo, SlowCallbackEvent, StackStatus, StallEvent, Tables, TaskRecord, TaskState};

/// A task row absent from the tables this long is forgotten.
pub(crate) const FORGET_AFTER_MS: u64 = 10_000;
/// Most tasks (and, separately, slow callbacks) remembered per loop.
pub(crate) const MAX_REMEMBERED: usize = 200_000;
/// Longest string attribute (stacks, tracebacks); longer ones are cut with a marker.
pub(crate) const MAX_TEXT: usize = 16 * 1024;
/// How long after a stall closes its stack capture may still arrive.
const STALL_STACK_GRACE_MS: u64 = 3_000;

/// The application's OpenTelemetry context at `create_task`, when it had one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppContext {
    /// The application's trace.
    pub trace_id: TraceId,
    /// The application's span that was current at `create_task`.
    pub parent_span_id: SpanId,
    /// That span's sampled flag.
    pub sampled: bool,
}

/// The application trace context a task record carries, if any (`trace_id`,
/// `parent_span_id`, `trace_flags`, filled by the loop at `create_task`).
pub(crate) fn app_context(t: &TaskRecord) -> Option<AppContext> {
    parse_app_context(t.trace_id.as_deref(), t.parent_span_id.as_deref(), t.trace_flags)
}

/// Parses W3C hex ids into an [`AppContext`]; `None` for absent, malformed or all-zero ids.
pub fn parse_app_context(trace_id: Option<&str>, parent_span_id: Option<&str>, flags: u8) -> Option<AppContext> {
    let trace_id = TraceId::from_hex(trace_id?).ok().filter(|t| *t != TraceId::INVALID)?;
    let parent_span_id = SpanId::from_hex(parent_span_id?).ok().filter(|s| *s != SpanId::INVALID)?;
    Some(AppContext { trace_id, parent_span_id, sampled: flags & 1 == 1 })
}

/// What is remembered about one task.
#[derive(Clone, Copy, Debug)]
struct TaskTrace {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    exported: bool,
    last_seen_ms: u64,
    /// The application span the task was created under, if any.
    app_span: Option<SpanId>,
    /// Its span's parent: `Task` (the parent task's span) or `App` (the
    /// application's span, with a link to the parent task's span when known).
    parent: Parent,
}

#[derive(Clone, Copy, Debug)]
enum Parent {
    /// No parent span: a root.
    None,
    /// The span of the task that created it (maybe not seen: ids are deterministic).
    Task(SpanId),
    /// The application's span; the parent task's span context (trace, span, sampled) to link to.
    App(SpanId, Option<(TraceId, SpanId, bool)>),
}

#[derive(Default)]
struct LoopTraces {
    /// The tables last processed (skipped when unchanged).
    last: Option<Arc<Tables>>,
    tasks: HashMap<u64, TaskTrace>,
    /// Slow callbacks seen: key → last seen.
    slow: HashMap<u64, u64>,
    /// Finished tasks seen in the tables, by finish time, not yet compared with the
    /// loop's count (see [`Tracer::unseen`]).
    seen_pending: BTreeMap<u64, u64>,
    /// Finished tasks seen and compared.
    seen_settled: u64,
    /// The loop's finished count, and when it was read, at the previous new tables.
    basis: Option<(u64, u64)>,
    /// What `unseen` last reported for this loop.
    unseen_reported: u64,
}

/// Counters the caller adds to its stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Spans the sampler dropped.
    pub(crate) sampled_out: u64,
}

/// Turns tables and stalls into spans. Owned by the exporter's thread.
pub(crate) struct Tracer {
    keys: RandomState,
    sampler: Sampler,
    scope: InstrumentationScope,
    loops: HashMap<u64, LoopTraces>,
    stalls_done: HashSet<u64>,
    pub(crate) tally: Tally,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("sampler", &self.sampler).field("loops", &self.loops.len()).finish()
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn text(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut cut = MAX_TEXT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n… ({} bytes cut)", &s[..cut], s.len() - cut)
}

/// `qualname (file:line)` → (qualname, file, line), as slow callbacks and stalls name sites.
fn split_site(site: &str) -> Option<(&str, &str, i64)> {
    let (name, rest) = site.rsplit_once(" (")?;
    let (file, line) = rest.strip_suffix(')')?.rsplit_once(':')?;
    Some((name, file, line.parse().ok()?))
}

/// The instrumentation's words for how a task ended (`state` in
/// `opentelemetry-instrumentation-asyncio`): finished, cancelled, exception, timeout.
pub(crate) fn outcome(t: &TaskRecord) -> &'static str {
    match t.state {
        TaskState::Done | TaskState::Pending => "finished",
        TaskState::Cancelled => "cancelled",
        TaskState::Failed if t.exception_type.as_deref() == Some("TimeoutError") => "timeout",
        TaskState::Failed => "exception",
    }
}

impl Tracer {
    pub(crate) fn new(sampler: Sampler) -> Tracer {
        Tracer {
            keys: RandomState::new(),
            sampler,
            scope: InstrumentationScope::builder(super::metrics::SCOPE).with_version(env!("CARGO_PKG_VERSION")).build(),
            loops: HashMap::new(),
            stalls_done: HashSet::new(),
            tally: Tally::default(),
        }
    }

    fn hash(&self, tag: u8, a: u64, b: u64) -> u64 {
        self.keys.hash_one((tag, a, b)).max(1)
    }

    /// Deterministic within the process, different across processes (the keys are random).
    fn trace_id(&self, tag: u8, a: u64, b: u64) -> TraceId {
        let hi = self.hash(tag, a, b) as u128;
        let lo = self.hash(tag.wrapping_add(100), a, b) as u128;
        TraceId::from((hi << 64) | lo)
    }

    /// The span id of task `task` of loop `loop_id`.
    pub(crate) fn task_span_id(&self, loop_id: u64, task: u64) -> SpanId {
        SpanId::from(self.hash(3, loop_id, task))
    }

    fn decide(&self, parent: Option<&SpanContext>, trace_id: TraceId, name: &str, attrs: &[KeyValue]) -> bool {
        let cx = parent.map(|p| Context::new().with_remote_span_context(p.clone()));
        let r =
            ShouldSample::should_sample(&self.sampler, cx.as_ref(), trace_id, name, &SpanKind::Internal, attrs, &[]);
        r.decision == SamplingDecision::RecordAndSample
    }

    fn span_name(t: &TaskRecord) -> String {
        if t.coro.is_empty() {
            "asyncio task".to_string()
        } else {
            format!("asyncio coro-{}", t.coro)
        }
    }

    /// Remembers a task seen for the first time: its trace, parent, span id and
    /// sampling decision (see the module doc for the parent's precedence).
    fn first_sight(&self, loop_id: u64, t: &TaskRecord, known: &HashMap<u64, TaskTrace>, now_ms: u64) -> TaskTrace {
        let span_id = self.task_span_id(loop_id, t.id);
        let name = Self::span_name(t);
        let flags = |sampled: bool| if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let app = app_context(t);
        let parent_task = t.parent_id.and_then(|p| known.get(&p));
        // The application's span is the parent unless the parent task started under
        // that same span (then the parent task is the narrower scope).
        let under_app = app.filter(|a| parent_task.is_none_or(|p| p.app_span != Some(a.parent_span_id)));
        let (trace_id, parent, parent_cx) = if let Some(a) = under_app {
            let cx = SpanContext::new(a.trace_id, a.parent_span_id, flags(a.sampled), true, TraceState::default());
            let link = parent_task.map(|p| (p.trace_id, p.span_id, p.sampled));
            (a.trace_id, Parent::App(a.parent_span_id, link), Some(cx))
        } else if let Some(p) = parent_task {
            let cx = SpanContext::new(p.trace_id, p.span_id, flags(p.sampled), false, TraceState::default());
            (p.trace_id, Parent::Task(p.span_id), Some(cx))
        } else if let Some(p) = t.parent_id {
            // The parent task was gone before it was seen: its id names the trace (so
            // siblings still share one) and its span id is known without it.
            (self.trace_id(1, loop_id, p), Parent::Task(self.task_span_id(loop_id, p)), None)
        } else {
            (self.trace_id(1, loop_id, t.id), Parent::None, None)
        };
        let sampled = self.decide(parent_cx.as_ref(), trace_id, &name, &[]);
        TaskTrace {
            trace_id,
            span_id,
            sampled,
            exported: false,
            last_seen_ms: now_ms,
            app_span: app.map(|a| a.parent_span_id),
            parent,
        }
    }

    /// Processes a loop's tables (no-op if they are the ones processed last); appends
    /// the spans of newly finished tasks and new slow callbacks to `out`.
    /// Returns false (and does nothing) for the tables processed last time.
    pub(crate) fn on_tables(
        &mut self,
        info: &LoopInfo,
        tables: &Arc<Tables>,
        now_ms: u64,
        out: &mut Vec<SpanData>,
    ) -> bool {
        let mut lt = self.loops.remove(&info.id).unwrap_or_default();
        if lt.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, tables)) {
            self.loops.insert(info.id, lt);
            return false;
        }
        // Parents before children: ids grow with creation.
        let mut order: Vec<&TaskRecord> = tables.tasks.iter().collect();
        order.sort_by_key(|t| t.id);
        for t in &order {
            match lt.tasks.get_mut(&t.id) {
                Some(e) => e.last_seen_ms = now_ms,
                None => {
                    let e = self.first_sight(info.id, t, &lt.tasks, now_ms);
                    lt.tasks.insert(t.id, e);
                }
            }
        }
        for t in &order {
            let Some(finished) = t.finished_unix_ms else { continue };
            let Some(e) = lt.tasks.get(&t.id).copied() else { continue };
            if e.exported {
                continue;
            }
            lt.tasks.get_mut(&t.id).expect("present").exported = true;
            *lt.seen_pending.entry(finished).or_default() += 1;
            if !e.sampled {
                self.tally.sampled_out += 1;
                continue;
            }
            out.push(self.task_span(info, t, finished, &e));
        }
        for ev in &tables.slow_callbacks {
            let key = self.keys.hash_one((ev.unix_ms, ev.duration_ns, &ev.site, ev.task_id));
            if lt.slow.insert(key, now_ms).is_some() {
                continue;
            }
            if let Some(span) = self.slow_span(info, ev, key, &lt.tasks) {
                out.push(span);
            }
        }
        forget(&mut lt.tasks, now_ms, |e| e.last_seen_ms);
        forget(&mut lt.slow, now_ms, |t| *t);
        lt.last = Some(Arc::clone(tables));
        self.loops.insert(info.id, lt);
        true
    }

    fn task_span(
        &self,
        info: &LoopInfo,
        t: &TaskRecord,
        finished_ms: u64,
        e: &TaskTrace,
    ) -> SpanData {
        let mut attributes = vec![
            KeyValue::new("asyncio.task.id", t.id as i64),
            KeyValue::new("asyncio.task.name", t.name.clone()),
            KeyValue::new("asyncio.task.coroutine", t.coro.clone()),
            KeyValue::new("asyncio.task.state", outcome(t)),
            KeyValue::new("asyncio.task.steps", t.steps as i64),
            KeyValue::new("asyncio.task.busy_time", t.busy_ns as f64 / 1e9),
            KeyValue::new("asyncio.task.longest_step", t.longest_step_ns as f64 / 1e9),
            KeyValue::new("asyncio.task.scheduled_delay", t.last_scheduled_delay_ns as f64 / 1e9),
            KeyValue::new("asyncio.eventloop.id", info.id as i64),
            KeyValue::new("thread.name", info.thread_name.clone()),
        ];
        if info.thread_id != 0 {
            attributes.push(KeyValue::new("thread.id", info.thread_id as i64));
        }
        if let Some(p) = t.parent_id {
            attributes.push(KeyValue::new("asyncio.task.parent_id", p as i64));
        }
        if let Some((file, line)) = t.defined_at.rsplit_once(':') {
            attributes.push(KeyValue::new("code.function.name", t.coro.clone()));
            attributes.push(KeyValue::new("code.file.path", file.to_string()));
            if let Ok(line) = line.parse::<i64>() {
                attributes.push(KeyValue::new("code.line.number", line));
            }
        }
        let mut events = SpanEvents::default();
        let mut status = Status::Unset;
        if t.state == TaskState::Failed {
            let ty = t.exception_type.clone().unwrap_or_else(|| "Exception".to_string());
            attributes.push(KeyValue::new("exception.type", ty.clone()));
            events.events.push(Event::new(
                "exception",
                time(finished_ms),
                vec![KeyValue::new("exception.type", ty.clone())],
                0,
            ));
            status = Status::error(ty);
        }
        let mut links = SpanLinks::default();
        let (parent_span_id, parent_remote) = match e.parent {
            Parent::None => (SpanId::INVALID, false),
            Parent::Task(p) => (p, false),
            Parent::App(app_span, link) => {
                if let Some((trace_id, span_id, sampled)) = link {
                    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
                    let cx = SpanContext::new(trace_id, span_id, flags, false, TraceState::default());
                    links.links.push(Link::new(cx, vec![KeyValue::new("asyncio.link", "parent_task")], 0));
                }
                (app_span, true)
            }
        };
        SpanData {
            span_context: SpanContext::new(e.trace_id, e.span_id, TraceFlags::SAMPLED, false, TraceState::default()),
            parent_span_id,
            parent_span_is_remote: parent_remote,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(Self::span_name(t)),
            start_time: time(t.created_unix_ms),
            end_time: time(finished_ms.max(t.created_unix_ms)),
            attributes,
            dropped_attributes_count: 0,
            events,
            links,
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    fn site_attributes(site: &str, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new("asyncio.callback.site", site.to_string()));
        if let Some((name, file, line)) = split_site(site) {
            attributes.push(KeyValue::new("code.function.name", name.to_string()));
            attributes.push(KeyValue::new("code.file.path", file.to_string()));
            attributes.push(KeyValue::new("code.line.number", line));
        }
    }

    fn slow_span(
        &mut self,
        info: &LoopInfo,
        ev: &SlowCallbackEvent,
        key: u64,
        known: &HashMap<u64, TaskTrace>,
    ) -> Option<SpanData> {
        let name = "asyncio slow_callback";
        let task = ev.task_id.and_then(|id| known.get(&id).map(|k| (id, *k)));
        let (trace_id, parent_span_id, sampled) = match task {
            Some((_, k)) => (k.trace_id, k.span_id, k.sampled),
            None => {
                let trace_id = self.trace_id(5, info.id, key);
                (trace_id, SpanId::INVALID, self.decide(None, trace_id, name, &[]))
            }
        };
        if !sampled {
            self.tally.sampled_out += 1;
            return None;
        }
        let mut attributes = vec![
            KeyValue::new("asyncio.callback.duration", ev.duration_ns as f64 / 1e9),
            KeyValue::new("asyncio.eventloop.id", info.id as i64),
            KeyValue::new("thread.name", info.thread_name.clone()),
        ];
        Self::site_attributes(&ev.site, &mut attributes);
        if let Some(id) = ev.task_id {
            attributes.push(KeyValue::new("asyncio.task.id", id as i64));
        }
        if let Some(n) = &ev.task_name {
            attributes.push(KeyValue::new("asyncio.task.name", n.clone()));
        }
        if let Some(tb) = &ev.traceback {
            attributes.push(KeyValue::new("code.stacktrace", text(tb)));
        }
        let start_ms = ev.unix_ms.saturating_sub(ev.duration_ns / 1_000_000);
        Some(SpanData {
            span_context: SpanContext::new(
                trace_id,
                SpanId::from(self.hash(4, info.id, key)),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: time(start_ms),
            end_time: time(ev.unix_ms),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        })
    }

    /// Appends a span for every stall in `log` that is over (and whose stack capture
    /// has resolved, or had its grace period) and was not exported yet.
    pub(crate) fn on_stalls(
        &mut self,
        log: &[StallEvent],
        loops: &HashMap<u64, LoopInfo>,
        now_ms: u64,
        out: &mut Vec<SpanData>,
    ) {
        let name = "asyncio stall";
        for s in log {
            if s.ongoing || self.stalls_done.contains(&s.id) {
                continue;
            }
            let end_ms = s.started_unix_ms + s.duration_ns / 1_000_000;
            if s.stack_status == StackStatus::Pending && now_ms < end_ms + STALL_STACK_GRACE_MS {
                continue;
            }
            self.stalls_done.insert(s.id);
            let trace_id = self.trace_id(7, s.loop_id, s.id);
            if !self.decide(None, trace_id, name, &[]) {
                self.tally.sampled_out += 1;
                continue;
            }
            let ms = s.duration_ns as f64 / 1e6;
            let mut attributes = vec![
                KeyValue::new("asyncio.stall.id", s.id as i64),
                KeyValue::new("asyncio.stall.duration", s.duration_ns as f64 / 1e9),
                KeyValue::new("asyncio.stall.stack_status", stack_status(s.stack_status)),
                KeyValue::new("asyncio.eventloop.id", s.loop_id as i64),
            ];
            if let Some(info) = loops.get(&s.loop_id) {
                attributes.push(KeyValue::new("thread.name", info.thread_name.clone()));
            }
            if let Some(site) = &s.site {
                Self::site_attributes(site, &mut attributes);
            }
            if let Some(stack) = &s.stack {
                attributes.push(KeyValue::new("code.stacktrace", text(stack)));
            }
            out.push(SpanData {
                span_context: SpanContext::new(
                    trace_id,
                    SpanId::from(self.hash(6, s.loop_id, s.id)),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Borrowed(name),
                start_time: time(s.started_unix_ms),
                end_time: time(end_ms),
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::error(format!("event loop blocked for {ms:.0} ms")),
                instrumentation_scope: self.scope.clone(),
            });
        }
        let in_log: HashSet<u64> = log.iter().map(|s| s.id).collect();
        self.stalls_done.retain(|id| in_log.contains(id));
    }

    /// Tasks that finished (by the loop's count, `finished_total`, read at `now_ms`)
    /// but were never in the tables the exporter read: they left the loop's bounded
    /// finished ring between two tables. Call it after [`on_tables`](Self::on_tables)
    /// processed new tables; returns how many more than last time, for a counter.
    ///
    /// # Notes
    /// Compares the count read at the *previous* new tables with the tasks seen that
    /// finished before that moment: any of them still in the ring is in the tables
    /// just read, so only evicted ones are missing. A lower bound: tasks finished
    /// before the loop joined the hub are seen but not in its count.
    pub(crate) fn unseen(&mut self, loop_id: u64, finished_total: u64, now_ms: u64) -> u64 {
        let Some(lt) = self.loops.get_mut(&loop_id) else { return 0 };
        let Some((basis_total, basis_ms)) = lt.basis.replace((finished_total, now_ms)) else { return 0 };
        let later = lt.seen_pending.split_off(&(basis_ms + 1));
        lt.seen_settled += lt.seen_pending.values().sum::<u64>();
        lt.seen_pending = later;
        let missing = basis_total.saturating_sub(lt.seen_settled);
        let more = missing.saturating_sub(lt.unseen_reported);
        lt.unseen_reported = lt.unseen_reported.max(missing);
        more
    }

    /// Forgets loops the hub no longer lists.
    pub(crate) fn retain_loops(&mut self, live: &HashSet<u64>) {
        self.loops.retain(|id, _| live.contains(id));
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self, loop_id: u64) -> usize {
        self.loops.get(&loop_id).map_or(0, |l| l.tasks.len())
    }
}

fn stack_status(s: StackStatus) -> &'static str {
    match s {
        StackStatus::Pending => "pending",
        StackStatus::Captured => "captured",
        StackStatus::Unavailable => "unavailable",
        StackStatus::Timeout => "timeout",
        StackStatus::Skipped => "skipped",
        StackStatus::Stale => "stale",
    }
}

/// Drops entries not seen for [`FORGET_AFTER_MS`], then the oldest past [`MAX_REMEMBERED`].
fn forget<V>(map: &mut HashMap<u64, V>, now_ms: u64, seen: impl Fn(&V) -> u64) {
    map.retain(|_, v| now_ms.saturating_sub(seen(v)) < FORGET_AFTER_MS);
    if map.len() > MAX_REMEMBERED {
        let mut ages: Vec<u64> = map.values().map(&seen).collect();
        let cut = ages.len() - MAX_REMEMBERED;
        let (_, nth, _) = ages.select_nth_unstable(cut);
        let threshold = *nth;
        map.retain(|_, v| seen(v) >= threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, parent: Option<u64>, state: TaskState, finished: Option<u64>) -> TaskRecord {
        TaskRecord {
            id,
            name: format!("Task-{id}"),
            coro: if parent.is_none() { "main".into() } else { "worker".into() },
            defined_at: "app.py:10".into(),
            parent_id: parent,
            created_unix_ms: 1_000 + id,
            finished_unix_ms: finished,
            state,
            exception_type: (state == TaskState::Failed).then(|| "ValueError".to_string()),
            steps: 3,
            busy_ns: 1_500_000,
            longest_step_ns: 1_000_000,
            last_scheduled_delay_ns: 10_000,
            ..Default::default()
        }
    }

    /// `t` created while the application's span `span` (of `trace`) was current.
    fn under(mut t: TaskRecord, trace: &str, span: &str, sampled: bool) -> TaskRecord {
        t.trace_id = Some(trace.into());
        t.parent_span_id = Some(span.into());
        t.trace_flags = u8::from(sampled);
        t
    }

    fn info(id: u64) -> LoopInfo {
        LoopInfo { id, thread_name: "MainThread".into(), ..Default::default() }
    }

    fn attr(s: &SpanData, key: &str) -> Option<opentelemetry::Value> {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
    }

    #[test]
    fn finished_tasks_become_spans_once_with_linked_parents_across_batches() {
        let mut tr = Tracer::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let li = info(1);
        let mut out = Vec::new();
        // Batch 1: main pending, child 2 done, child 3 failed.
        let t1 = Arc::new(Tables {
            tasks: vec![
                task(1, None, TaskState::Pending, None),
                task(2, Some(1), TaskState::Done, Some(2_000)),
                task(3, Some(1), TaskState::Failed, Some(2_100)),
            ],
            ..Default::default()
        });
        tr.on_tables(&li, &t1, 10_000, &mut out);
        assert_eq!(out.len(), 2);
        tr.on_tables(&li, &t1, 10_001, &mut out);
        assert_eq!(out.len(), 2, "same tables: nothing new");
        // Batch 2: the same finished rows again (the loop's ring), and main done.
        let t2 = Arc::new(Tables {
            tasks: vec![
                task(1, None, TaskState::Done, Some(3_000)),
                task(2, Some(1), TaskState::Done, Some(2_000)),
                task(3, Some(1), TaskState::Failed, Some(2_100)),
                task(4, Some(2), TaskState::Cancelled, Some(2_050)),
            ],
            ..Default::default()
        });
        tr.on_tables(&li, &t2, 11_000, &mut out);
        assert_eq!(out.len(), 4, "main and task 4, once each");
        let by_id = |id: i64| out.iter().find(|s| attr(s, "asyncio.task.id") == Some(id.into())).unwrap();
        let (main, c2, c3, c4) = (by_id(1), by_id(2), by_id(3), by_id(4));
        assert_eq!(main.parent_span_id, SpanId::INVALID);
        assert_eq!(c2.parent_span_id, main.span_context.span_id(), "linked though exported a batch earlier");
        assert_eq!(c4.parent_span_id, c2.span_context.span_id());
        for s in [c2, c3, c4] {
            assert_eq!(s.span_context.trace_id(), main.span_context.trace_id());
        }
        assert_eq!(main.name, "asyncio coro-main");
        assert_eq!(attr(c3, "asyncio.task.state"), Some("exception".into()));
        assert_eq!(attr(c3, "exception.type"), Some("ValueError".into()));
        assert!(matches!(c3.status, Status::Error { .. }));
        assert_eq!(attr(c4, "asyncio.task.state"), Some("cancelled".into()));
        assert_eq!(attr(c2, "asyncio.task.steps"), Some(3i64.into()));
        assert_eq!(attr(c2, "asyncio.task.busy_time"), Some(0.0015.into()));
        assert_eq!(attr(c2, "code.line.number"), Some(10i64.into()));
        assert_eq!(c2.start_time, time(1_002));
        assert_eq!(c2.end_time, time(2_000));
        // Deterministic ids: a second look gives the same span id.
        assert_eq!(tr.task_span_id(1, 2), c2.span_context.span_id());
    }

    #[test]
    fn samplers_decide_per_trace() {
        let tables = Arc::new(Tables {
            tasks: (1..=50)
                .flat_map(|root| {
                    let r = root * 10;
                    [task(r, None, TaskState::Done, Some(5_000)), task(r + 1, Some(r), TaskState::Done, Some(5_000))]
                })
                .collect(),
            ..Default::default()
        });
        let mut off = Tracer::new(Sampler::AlwaysOff);
        let mut out = Vec::new();
        off.on_tables(&info(1), &tables, 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(off.tally.sampled_out, 100);

        let mut half = Tracer::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5))));
        half.on_tables(&info(1), &tables, 1, &mut out);
        assert!(out.len() > 10 && out.len() < 90, "{}", out.len());
        // Whole traces are kept or dropped: every kept child has its root kept.
        let kept: HashSet<SpanId> = out.iter().map(|s| s.span_context.span_id()).collect();
        for s in out.iter().filter(|s| s.parent_span_id != SpanId::INVALID) {
            assert!(kept.contains(&s.parent_span_id));
        }
        assert_eq!(out.len() % 2, 0);
    }

    #[test]
    fn slow_callbacks_and_stalls_become_spans_with_site_and_stack() {
        let mut tr = Tracer::new(Sampler::AlwaysOn);
        let li = info(1);
        let slow = SlowCallbackEvent {
            unix_ms: 5_000,
            duration_ns: 150_000_000,
            site: "handler (app.py:31)".into(),
            task_id: Some(1),
            task_name: Some("Task-1".into()),
            traceback: Some("Traceback ...".into()),
        };
        let tables = Arc::new(Tables {
            tasks: vec![task(1, None, TaskState::Pending, None)],
            slow_callbacks: vec![slow.clone()],
            ..Default::default()
        });
        let mut out = Vec::new();
        tr.on_tables(&li, &tables, 6_000, &mut out);
        let tables2 = Arc::new(Tables { ..(*tables).clone() });
        tr.on_tables(&li, &tables2, 7_000, &mut out);
        assert_eq!(out.len(), 1, "the same slow callback once");
        let s = &out[0];
        assert_eq!(s.name, "asyncio slow_callback");
        assert_eq!(s.parent_span_id, tr.task_span_id(1, 1));
        assert_eq!(attr(s, "code.function.name"), Some("handler".into()));
        assert_eq!(attr(s, "code.line.number"), Some(31i64.into()));
        assert_eq!(attr(s, "code.stacktrace"), Some("Traceback ...".into()));
        assert_eq!(s.start_time, time(4_850));

        let stall = |id, ongoing, status| StallEvent {
            id,
            loop_id: 1,
            started_unix_ms: 8_000,
            duration_ns: 300_000_000,
            ongoing,
            site_id: 9,
            site: Some("handler (app.py:31)".into()),
            stack: Some("x".repeat(MAX_TEXT + 10)),
            stack_status: status,
        };
        let loops = HashMap::from([(1, li.clone())]);
        out.clear();
        let log = vec![
            stall(1, true, StackStatus::Captured),
            stall(2, false, StackStatus::Pending),
            stall(3, false, StackStatus::Captured),
        ];
        tr.on_stalls(&log, &loops, 8_400, &mut out);
        assert_eq!(out.len(), 1, "ongoing and pending-stack stalls wait");
        tr.on_stalls(&log, &loops, 8_400 + STALL_STACK_GRACE_MS, &mut out);
        assert_eq!(out.len(), 2, "the pending one after its grace period");
        let s = &out[0];
        assert_eq!(s.name, "asyncio stall");
        assert!(matches!(s.status, Status::Error { .. }));
        let stack = attr(s, "code.stacktrace").unwrap().to_string();
        assert!(stack.len() < MAX_TEXT + 100 && stack.contains("bytes cut"));
        tr.on_stalls(&log, &loops, 20_000, &mut out);
        assert_eq!(out.len(), 2, "exported once");
    }

    #[test]
    fn memory_is_bounded_by_what_the_tables_hold() {
        let mut tr = Tracer::new(Sampler::AlwaysOn);
        let li = info(1);
        let mut out = Vec::new();
        for round in 0..100u64 {
            let tasks = (0..100).map(|i| task(round * 100 + i, None, TaskState::Done, Some(1))).collect();
            tr.on_tables(&li, &Arc::new(Tables { tasks, ..Default::default() }), round * 1_000, &mut out);
        }
        assert_eq!(out.len(), 10_000);
        assert!(tr.remembered(1) <= 100 * (FORGET_AFTER_MS / 1_000 + 1) as usize);
    }

    #[test]
    fn tasks_with_an_application_context_join_its_trace() {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const OUTER: &str = "00f067aa0ba902b7";
        const INNER: &str = "1111111111111111";
        const DROPPED: &str = "2222222222222222";
        let app = parse_app_context(Some(TRACE), Some(OUTER), 1).unwrap();
        let inner = SpanId::from_hex(INNER).unwrap();
        let mut tr = Tracer::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let tables = Arc::new(Tables {
            tasks: vec![
                // 1: the main task, made outside any application span: a trace of its own.
                task(1, None, TaskState::Pending, None),
                // 5: made by 1 inside the application's span OUTER.
                under(task(5, Some(1), TaskState::Done, Some(3_000)), TRACE, OUTER, true),
                // 6: made by 5 with OUTER still current (inherited): child of 5.
                under(task(6, Some(5), TaskState::Done, Some(3_100)), TRACE, OUTER, true),
                // 9: made by 5 inside INNER, a span 5 opened: child of INNER.
                under(task(9, Some(5), TaskState::Done, Some(3_150)), TRACE, INNER, true),
                // 7: made by 1 in a span the application did not sample, and 8 by 7.
                under(task(7, Some(1), TaskState::Done, Some(3_200)), TRACE, DROPPED, false),
                under(task(8, Some(7), TaskState::Done, Some(3_300)), TRACE, DROPPED, false),
                // 10: made by 1 outside any span: the task tree, in 1's trace.
                task(10, Some(1), TaskState::Done, Some(3_400)),
            ],
            ..Default::default()
        });
        let mut out = Vec::new();
        tr.on_tables(&info(1), &tables, 10_000, &mut out);
        assert_eq!(tr.tally.sampled_out, 2, "7 (unsampled by the application) and its child 8");
        let by_id = |id: i64| out.iter().find(|s| attr(s, "asyncio.task.id") == Some(id.into()));
        assert!(by_id(7).is_none() && by_id(8).is_none());
        let (s5, s6, s9, s10) = (by_id(5).unwrap(), by_id(6).unwrap(), by_id(9).unwrap(), by_id(10).unwrap());
        assert_eq!(s5.span_context.trace_id(), app.trace_id);
        assert_eq!(s5.parent_span_id, app.parent_span_id);
        assert!(s5.parent_span_is_remote);
        assert_eq!(s5.links.links.len(), 1, "a link to the parent task");
        assert_eq!(s5.links.links[0].span_context.span_id(), tr.task_span_id(1, 1));
        assert_eq!(s6.span_context.trace_id(), app.trace_id, "descendants stay in the application's trace");
        assert_eq!(s6.parent_span_id, s5.span_context.span_id(), "the parent task is narrower than OUTER");
        assert!(!s6.parent_span_is_remote && s6.links.links.is_empty());
        assert_eq!(s9.span_context.trace_id(), app.trace_id);
        assert_eq!(s9.parent_span_id, inner, "INNER, opened inside 5, is narrower than 5");
        assert_eq!(s9.links.links[0].span_context.span_id(), s5.span_context.span_id());
        assert_ne!(s10.span_context.trace_id(), app.trace_id, "no application span: the task's own trace");
        assert_eq!(s10.parent_span_id, tr.task_span_id(1, 1));
        assert!(s10.links.links.is_empty());
    }

    #[test]
    fn explicit_samplers_decide_for_themselves() {
        // Only the parent-based samplers follow the application's flag (as in the SDKs).
        let mut tr = Tracer::new(Sampler::AlwaysOn);
        let t = under(task(3, None, TaskState::Done, Some(2_000)), "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", false);
        let mut out = Vec::new();
        tr.on_tables(&info(1), &Arc::new(Tables { tasks: vec![t], ..Default::default() }), 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
    }

    #[test]
    fn tasks_that_left_the_ring_unseen_are_counted() {
        let mut tr = Tracer::new(Sampler::AlwaysOn);
        let mut out = Vec::new();
        // Task i finishes at i ms.
        let done = |ids: std::ops::Range<u64>| {
            Arc::new(Tables {
                tasks: ids.map(|i| task(i, None, TaskState::Done, Some(i))).collect(),
                ..Default::default()
            })
        };
        let first = done(1..4);
        assert!(tr.on_tables(&info(1), &first, 3, &mut out));
        assert!(!tr.on_tables(&info(1), &first, 3, &mut out), "same tables");
        assert_eq!(tr.unseen(1, 3, 3), 0, "no basis yet");
        tr.on_tables(&info(1), &done(4..6), 6, &mut out);
        assert_eq!(tr.unseen(1, 6, 6), 0, "the 3 counted at 3 ms were all seen");
        // Task 6 (counted at 6 ms) is in no tables: it left the ring unseen.
        tr.on_tables(&info(1), &done(7..8), 7, &mut out);
        assert_eq!(tr.unseen(1, 7, 7), 1);
        tr.on_tables(&info(1), &done(8..9), 8, &mut out);
        assert_eq!(tr.unseen(1, 8, 8), 0, "counted once");
        assert_eq!(tr.unseen(2, 9, 8), 0, "unknown loop");
    }

    #[test]
    fn app_context_parses_w3c_ids() {
        let c = parse_app_context(Some("4bf92f3577b34da6a3ce929d0e0e4736"), Some("00f067aa0ba902b7"), 1).unwrap();
        assert!(c.sampled);
        assert_eq!(c.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(parse_app_context(Some("0".repeat(32).as_str()), Some("00f067aa0ba902b7"), 1).is_none());
        assert!(parse_app_context(Some("xyz"), Some("00f067aa0ba902b7"), 1).is_none());
        assert!(parse_app_context(None, None, 0).is_none());
    }
}
