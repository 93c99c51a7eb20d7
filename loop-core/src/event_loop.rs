//! `LoopCore`: the Rust half of glassloop's event loop.
//!
//! The Python class `glassloop.Loop` subclasses it (together with asyncio's
//! selector loop, whose Python-level networking runs on top of our reactor until
//! the Rust transports replace it). Everything on the per-callback path lives
//! here: the ready queue, timers, the poll, running handles, and recording.
//!
//! One loop iteration is [`LoopCore::run_once`]; read it top to bottom.

use crate::clock;
use crate::gil_cell::GilCell;
use crate::fastcall;
use crate::handles::{self, check_callback, Args, Handle, Ready, TimerHandle};
use crate::servers::{ServerEntry, Servers};
use crate::sites::{self, SiteOwner, Sites};
use crate::slow::{SlowCallback, SlowLog};
use crate::tasks::{self, TaskEntry, TaskState, Tasks};
use crate::reactor::{Side, Waiter, Watchers, WAKER_TOKEN};
use crate::stdlib;
use crate::timers::Timers;
use crate::transports::{StreamTransport, Transport};
use inspector::Recorder;
use mio::{Events, Poll, Registry, Waker};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::Borrowed;
use std::collections::VecDeque;
use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// asyncio never sleeps longer than a day in one poll; neither do we.
const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const EVENTS_CAPACITY: usize = 1024;
/// When callbacks are already waiting, a non-blocking poll finds I/O that can wait
/// a little: we skip it if the last poll was less than this long ago (ns). This
/// bounds the extra I/O latency while a callback chain runs, and saves a syscall
/// per iteration on callback-heavy work.
const MIN_POLL_INTERVAL_NS: u64 = 50_000;

/// Everything the loop thread mutates, behind one GIL-protected cell.
pub(crate) struct State {
    pub(crate) ready: VecDeque<Ready>,
    /// When the last poll returned (ns).
    pub(crate) last_poll_ns: u64,
    /// The loop's idea of "now" (ns): refreshed after the poll and after each
    /// callback, so scheduling doesn't read the clock.
    pub(crate) now_ns: u64,
    /// The task whose step is running, for the parent of tasks it creates.
    pub(crate) current_task: Option<u64>,
    pub(crate) tasks: Tasks,
    pub(crate) servers: Servers,
    pub(crate) sites: Sites,
    pub(crate) slow: SlowLog,
    /// Present once the inspector runs in this process (see inspect.rs).
    pub(crate) link: Option<Box<crate::inspect::Link>>,
    /// When the link has something to publish (`Link::due_ns`; never without a
    /// link): the end of an iteration compares one number. Kept by `link_changed`.
    pub(crate) next_publish_ns: u64,
    pub(crate) closed_bytes_in: u64,
    /// Executor jobs: (queued, running, done in total).
    pub(crate) executor: (u64, u64, u64),
    /// Connections opened (stream transports made: accepted or connected), in total.
    pub(crate) connections: u64,
    /// Every executor job's run time (ns) since the loop was made, for `loop.stats()`
    /// (the recorder's own histogram is cut into samples).
    pub(crate) executor_jobs: hdrhistogram::Histogram<u64>,
    pub(crate) closed_bytes_out: u64,
    pub(crate) timers: Timers,
    pub(crate) watchers: Watchers,
    pub(crate) recorder: Recorder,
}

struct Poller {
    poll: Poll,
    events: Events,
}

impl Drop for State {
    // A loop freed without close() (nor the collector's __clear__) still hands its
    // queued handles back through `Taken`, so one held elsewhere is tracked again.
    fn drop(&mut self) {
        if !self.ready.is_empty() {
            let ready = std::mem::take(&mut self.ready);
            Python::attach(|py| release_ready(py, ready));
        }
    }
}

/// Drops a ready queue the loop let go of; its handles go through `Taken`.
fn release_ready(py: Python<'_>, ready: VecDeque<Ready>) {
    for entry in ready {
        if let Ready::Call { handle, .. } = entry {
            drop(handles::Taken(handle.into_bound(py)));
        }
    }
}

impl State {
    /// The link came, went, or changed its deadlines or pending names.
    pub(crate) fn link_changed(&mut self) {
        self.next_publish_ns = self.link.as_ref().map_or(u64::MAX, |l| l.due_ns());
    }

    /// Queues a `call_soon`/`call_soon_threadsafe` handle, out of the collector's
    /// lists (with its context too once the queue holds a backlog: see handles.rs).
    fn push_call(&mut self, handle: &Bound<'_, Handle>, queued_ns: u64) {
        handles::untrack_pending(handle, self.ready.len() >= handles::CONTEXT_BACKLOG);
        self.ready.push_back(Ready::Call { handle: handle.clone().unbind(), queued_ns });
    }

    /// One callback (or transport event) ran: `took` ns, `lag` ns after it became
    /// ready, ending at `end_ns`. Shared by handles and Rust transport I/O.
    #[inline]
    fn record_run(&mut self, end_ns: u64, took: u64, lag: u64) {
        self.now_ns = end_ns;
        self.recorder.ran(took, lag);
    }
}

#[pyclass(frozen, subclass, module = "glassloop._core", name = "LoopCore")]
pub struct LoopCore {
    pub(crate) state: GilCell<State>,
    /// Locked only by the loop thread, around the poll (with the GIL released).
    poller: Mutex<Poller>,
    pub(crate) registry: Registry,
    pub(crate) waker: std::sync::Arc<Waker>,
    /// True while the loop thread is (about to be) blocked in the poll without
    /// the GIL: a thread-safe call that sees it wakes the loop, once.
    sleeping: AtomicBool,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the running thread, 0 when not running (shared
    /// with the inspector's stack capture, which runs on another thread).
    pub(crate) thread_id: std::sync::Arc<AtomicU64>,
    /// Seconds, as f64 bits.
    slow_callback_duration: AtomicU64,
    /// asyncio's Python transports the loop made (pipes, subprocesses):
    /// `{id: (weakref, kind, created_unix_ms)}`, filled by `glassloop._tracked`,
    /// pruned when the transport table is built.
    pub(crate) tracked: Py<PyDict>,
    /// The heartbeat the stall watchdog reads, once the loop joined the inspector.
    heartbeat: std::sync::OnceLock<std::sync::Arc<inspector::Heartbeat>>,
}

fn unix_ms() -> u64 {
    clock::unix_ms()
}

/// A finished task's outcome, read without side effects (`exception()` would
/// mark the exception retrieved and silence asyncio's "never retrieved" warning).
fn task_outcome(task: &Bound<'_, PyAny>) -> (TaskState, Option<String>) {
    let py = task.py();
    if tasks::is_cancelled(task) {
        return (TaskState::Cancelled, None);
    }
    match task.getattr(pyo3::intern!(py, "_exception")) {
        Ok(exc) if !exc.is_none() => (TaskState::Failed, exc.get_type().name().ok().map(|n| n.to_string())),
        _ => (TaskState::Done, None),
    }
}

/// Drops references collected under the state borrow, now that it is released.
/// Most iterations collect none: an unallocated vector needs no drop call.
#[inline]
fn drop_garbage<T>(garbage: Vec<T>) {
    if garbage.capacity() == 0 {
        std::mem::forget(garbage); // owns no allocation and no element
    } else {
        drop(garbage);
    }
}

fn os_error(e: io::Error) -> PyErr {
    match e.raw_os_error() {
        // OSError(errno, strerror) picks the right subclass (PermissionError, ...).
        Some(code) => pyo3::exceptions::PyOSError::new_err((code, std::io::Error::from_raw_os_error(code).to_string())),
        None => e.into(),
    }
}

/// `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if let Ok(fd) = obj.extract::<i64>() {
        fd
    } else {
        obj.call_method0("fileno")
            .and_then(|f| f.extract::<i64>())
            .map_err(|_| PyValueError::new_err(format!("Invalid file object: {}", obj.repr().map(|r| r.to_string()).unwrap_or_default())))?
    };
    if fd < 0 || fd > i32::MAX as i64 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    Ok(fd as RawFd)
}

impl LoopCore {
    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// asyncio's debug-mode guard against calls from the wrong thread.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        // SAFETY: pthread_self has no preconditions; CPython's get_ident() is this value.
        let me = unsafe { libc::pthread_self() } as u64;
        if owner != 0 && owner != me {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Whether `run_forever` is on some thread's stack (asyncio's `_thread_id` is set).
    fn running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    #[inline]
    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn schedule<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, Handle>> {
        let handle = Bound::new(py, handle)?;
        self.state.with(py, |s| s.push_call(&handle, s.now_ns));
        Ok(handle)
    }

    fn new_timer<'py>(
        &self,
        py: Python<'py>,
        when: f64,
        callback: Borrowed<'_, 'py, PyAny>,
        args: Args,
        context: Option<Borrowed<'_, 'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let handle = Handle::with_args(py, callback.to_owned(), args, context.map(|c| c.to_owned()), self.is_debug())?;
        let counter = self.state.with(py, |s| s.timers.cancel_counter());
        let timer = Bound::new(py, TimerHandle::new_pair(handle, when, counter))?;
        let queued = timer.clone().unbind();
        self.state.with(py, |s| {
            if s.timers.len() >= handles::CONTEXT_BACKLOG {
                handles::untrack_context(timer.as_super().get());
            }
            s.timers.push(when, queued)
        });
        Ok(timer)
    }

    /// `call_soon(callback, *args, context=None)`: schedules `callback(*args)` for
    /// the next iteration, in `context` (default: a copy of the current one).
    fn call_soon<'py>(
        &self,
        py: Python<'py>,
        callback: Borrowed<'_, 'py, PyAny>,
        args: &[*mut pyo3::ffi::PyObject],
        context: Option<Borrowed<'_, 'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        self.check_closed()?;
        let debug = self.is_debug();
        if debug {
            // asyncio checks the thread and the callback only in debug mode.
            self.check_thread()?;
            check_callback(py, &callback, "call_soon")?;
        }
        let args = Args::from_slice(py, args)?;
        self.schedule(py, Handle::with_args(py, callback.to_owned(), args, context.map(|c| c.to_owned()), debug)?)
    }

    /// Like `call_soon`, from any thread: wakes the loop if it is waiting.
    fn call_soon_threadsafe<'py>(
        &self,
        py: Python<'py>,
        callback: Borrowed<'_, 'py, PyAny>,
        args: &[*mut pyo3::ffi::PyObject],
        context: Option<Borrowed<'_, 'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        self.check_closed()?;
        if self.is_debug() {
            check_callback(py, &callback, "call_soon_threadsafe")?;
        }
        let args = Args::from_slice(py, args)?;
        let handle = Bound::new(py, Handle::with_args(py, callback.to_owned(), args, context.map(|c| c.to_owned()), self.is_debug())?)?;
        // Another thread: the loop's cached "now" may be a whole poll old.
        let queued_ns = clock::now_ns();
        self.state.with(py, |s| s.push_call(&handle, queued_ns));
        // The loop sets `sleeping` while holding the GIL, right before it releases it
        // to poll, so under the GIL we either see it set (and wake the poll) or the
        // loop has not computed its timeout yet (and will see our handle). The flag
        // is only touched under the GIL, whose hand-over orders it: a plain load
        // leaves its cache line shared while the loop is busy.
        if self.sleeping.load(Ordering::Relaxed) {
            self.sleeping.store(false, Ordering::Relaxed);
            self.waker.wake().map_err(os_error)?;
        }
        Ok(handle)
    }

    /// `call_at(when, callback, *args, context=None)`: schedules `callback(*args)`
    /// at `when`, an absolute time on `loop.time()`'s clock.
    fn call_at<'py>(
        &self,
        py: Python<'py>,
        when: f64,
        callback: Borrowed<'_, 'py, PyAny>,
        args: &[*mut pyo3::ffi::PyObject],
        context: Option<Borrowed<'_, 'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        self.check_closed()?;
        if self.is_debug() {
            self.check_thread()?;
            check_callback(py, &callback, "call_at")?;
        }
        self.new_timer(py, when, callback, Args::from_slice(py, args)?, context)
    }

    /// One iteration: poll for I/O (sleeping until the next timer when there is
    /// nothing to run), queue what became ready, then run the callbacks that were
    /// ready when the iteration started. Callbacks they schedule run next time.
    fn run_once(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>) -> PyResult<()> {
        // 0. The inspector: join it once it runs; answer its questions.
        let heartbeat = if crate::inspect::active() {
            let hb = match self.heartbeat.get() {
                Some(hb) => hb,
                None => {
                    let link = self.join_hub(py, loop_obj)?;
                    let hb = self.heartbeat.get_or_init(|| link.heartbeat.clone());
                    self.state.with(py, |s| {
                        s.link = Some(Box::new(link));
                        s.link_changed();
                    });
                    hb
                }
            };
            if hb.has_queries() {
                let link = self.state.with(py, |s| s.link.take());
                let answered = match &link {
                    Some(l) => self.answer_queries(py, l),
                    None => Ok(()),
                };
                self.state.with(py, |s| {
                    s.link = link;
                    s.link_changed();
                });
                answered?;
            }
            Some(&**hb)
        } else {
            None
        };
        let mut garbage_timers = Vec::new();
        let mut garbage_waiters = Vec::new();

        // 1. How long may we sleep? `now_ns` is when the last callback (or poll)
        // ended, a moment ago: deciding costs no clock read.
        let (has_ready, next_when, next_sample, cached_now, last_poll) = self.state.with(py, |s| {
            s.watchers.before_poll(&self.registry, &mut garbage_waiters);
            let has_ready = !s.ready.is_empty() || s.watchers.has_rereads();
            let next_when = if has_ready {
                // The poll won't wait for a timer; only keep the heap compact.
                s.timers.maybe_compact(py, &mut garbage_timers);
                None
            } else {
                s.timers.next_when(py, &mut garbage_timers)
            };
            // The poll waits for the next sample only if it may wait at all.
            let next_sample = if has_ready { None } else { s.link.as_ref().map(|l| l.next_sample_ns) };
            (has_ready, next_when, next_sample, s.now_ns, s.last_poll_ns)
        });
        drop_garbage(garbage_timers);
        drop_garbage(garbage_waiters);
        let (timeout, poll_start) = if has_ready {
            (Some(Duration::ZERO), cached_now)
        } else if self.stopping.load(Ordering::Relaxed) {
            (Some(Duration::ZERO), clock::now_ns())
        } else {
            // Timers are due by the clock, not by the cached "now": read it.
            let now = clock::now_ns();
            // An inspected loop also wakes for its next sample, so an idle loop keeps reporting.
            let deadline = match (next_when.map(clock::secs_to_ns_ceil), next_sample) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = deadline.map(|deadline| {
                // Round up to whole milliseconds (epoll's unit) so we never wake early.
                let ms = deadline.saturating_sub(now).div_ceil(1_000_000);
                Duration::from_millis(ms).min(MAX_POLL_TIMEOUT)
            });
            (timeout, now)
        };

        // 2. Poll (unless callbacks are waiting and we polled just now). Only a poll
        // that may block releases the GIL: a zero-timeout one returns at once.
        let skip_poll = has_ready && poll_start.saturating_sub(last_poll) < MIN_POLL_INTERVAL_NS;
        let mut poll_end = poll_start;
        let mut poller = None;
        if !skip_poll {
            let polled = if timeout == Some(Duration::ZERO) {
                let mut p = self.poller.lock().unwrap_or_else(|e| e.into_inner());
                let Poller { poll, events } = &mut *p;
                let polled = poll.poll(events, timeout);
                poller = Some(p);
                polled
            } else {
                // A signal that came while no Python code ran (during a builtin
                // callback, or our own work since) has its Python handler pending,
                // and brings no EINTR to a poll that starts after it: run the handler
                // now, and sleep only if it neither scheduled anything nor stopped the loop.
                py.check_signals()?;
                let idle = self.state.with(py, |s| s.ready.is_empty()) && !self.stopping.load(Ordering::Relaxed);
                let timeout = if idle { timeout } else { Some(Duration::ZERO) };
                self.sleeping.store(true, Ordering::Relaxed);
                let polled = py.detach(|| {
                    let mut p = self.poller.lock().unwrap_or_else(|e| e.into_inner());
                    let Poller { poll, events } = &mut *p;
                    poll.poll(events, timeout)
                });
                self.sleeping.store(false, Ordering::Relaxed);
                poller = Some(self.poller.lock().unwrap_or_else(|e| e.into_inner()));
                polled
            };
            poll_end = clock::now_ns();
            match polled {
                Ok(()) => {}
                // A signal arrived: run Python's handlers now (KeyboardInterrupt ends the run).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => py.check_signals()?,
                Err(e) => return Err(os_error(e)),
            }
        }

        // 3. Queue I/O callbacks and due timers (due by the clock read after the poll, as asyncio).
        let mut garbage_timers = Vec::new();
        let mut garbage_rereads = Vec::new();
        let (ntodo, queued_any) = self.state.with(py, |s| {
            s.recorder.iterations += 1;
            s.recorder.idle_ns += poll_end - poll_start;
            s.now_ns = poll_end;
            if !skip_poll {
                s.last_poll_ns = poll_end;
            }
            let before = s.ready.len();
            if s.watchers.has_rereads() {
                let State { watchers, ready, .. } = s;
                watchers.dispatch_rereads(py, poll_end, ready, &mut garbage_rereads);
            }
            for event in poller.iter().flat_map(|p| p.events.iter()) {
                if event.token() == WAKER_TOKEN {
                    continue; // the thread that woke us already queued its handle
                }
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                let State { watchers, ready, .. } = s;
                watchers.dispatch(py, event.token().0 as RawFd, readable, writable, event.is_read_closed(), poll_end, ready);
            }
            let State { timers, ready, recorder, .. } = s;
            timers.pop_due(py, clock::ns_to_secs(poll_end), ready, &mut garbage_timers, |late| {
                recorder.timer_fired((late * 1e9) as u64)
            });
            s.recorder.ready_queue(s.ready.len());
            (s.ready.len(), s.ready.len() != before)
        });
        drop(poller);
        drop_garbage(garbage_timers);
        drop_garbage(garbage_rereads);

        // 4. Run what is ready now; anything they schedule waits for the next iteration.
        let inspected = heartbeat.is_some();
        let debug = self.is_debug();
        let slow_ns = (f64::from_bits(self.slow_callback_duration.load(Ordering::Relaxed)) * 1e9) as u64;
        // One clock read ends a callback and starts the next; the poll's serves the
        // first, unless queueing the iteration's work took time of its own.
        let mut t0 = if queued_any { clock::now_ns() } else { poll_end };
        let busy_start = t0;
        for _ in 0..ntodo {
            let Some(entry) = self.state.with(py, |s| s.ready.pop_front()) else {
                break; // the loop was closed by a callback
            };
            let (handle, queued_ns) = match entry {
                Ready::Call { handle, queued_ns } => (handle, queued_ns),
                Ready::Io { transport, readable, writable, read_closed, queued_ns } => {
                    // Socket I/O straight into the protocol: no Handle, no profile site (an
                    // inspected loop's heartbeat names the protocol, for stalls).
                    if let Some(hb) = &heartbeat {
                        hb.begin(t0, self.io_site(py, &transport));
                    }
                    let result = transport.on_events(py, readable, writable, read_closed);
                    let t1 = clock::now_ns();
                    let took = t1 - t0;
                    let lag = t0.saturating_sub(queued_ns);
                    t0 = t1;
                    self.state.with(py, |s| s.record_run(t1, took, lag));
                    result?;
                    continue;
                }
                Ready::Sock { fd, side, queued_ns } => {
                    // A sock_* call's syscall, retried now that its fd is ready (sock.rs).
                    if let Some(hb) = &heartbeat {
                        hb.begin(t0, 0);
                    }
                    let result = self.complete_sock(py, fd, side);
                    let t1 = clock::now_ns();
                    let (took, lag) = (t1 - t0, t0.saturating_sub(queued_ns));
                    t0 = t1;
                    self.state.with(py, |s| s.record_run(t1, took, lag));
                    result?;
                    continue;
                }
            };
            // Bound: dropped with a plain decref (a Py checks the thread's attach count first).
            let handle = handles::Taken(handle.into_bound(py));
            let h = handle.0.get();
            if h.is_cancelled() {
                continue;
            }
            let Some((func, args)) = h.callback_parts(py) else { continue };
            // Most callbacks are no task step: no state borrow for them here.
            let (task, task_site, task_slot) = match tasks::step_owner(&func) {
                Some(candidate) => self.state.with(py, |s| match s.tasks.get_stepping(candidate) {
                    Some((slot, entry)) => {
                        s.current_task = Some(entry.id);
                        let code = entry.code.as_ref().map(|c| c.as_ptr() as usize);
                        (Some((candidate, slot)), code, code.and_then(|c| s.sites.slot(c)))
                    }
                    None => (None, None, None),
                }),
                None => (None, None, None),
            };
            // The site (a task's coroutine code, or the callback's own) and its slot in
            // the profile, found before the callback runs: a site seen for the first
            // time is added (and named to the inspector) now, so a stall in this very
            // callback is named too.
            let (site_addr, slot) = match (task, task_site) {
                (Some(_), Some(addr)) => match task_slot {
                    Some(slot) => (Some(addr), slot),
                    None => {
                        let code = self.state.with(py, |s| task.and_then(|(t, _)| s.tasks.code_of(t)).map(|c| c.clone_ref(py)));
                        (Some(addr), self.new_site(py, addr, code.map(SiteOwner::Code), &func))
                    }
                },
                (Some(_), None) => (None, sites::OTHER),
                (None, _) => {
                    let (addr, code) = sites::site_of(&func);
                    match self.state.with(py, |s| s.sites.slot(addr)) {
                        Some(slot) => (Some(addr), slot),
                        None => (Some(addr), self.new_site(py, addr, code.map(|c| SiteOwner::Code(c.unbind())), &func)),
                    }
                }
            };
            if let Some(hb) = &heartbeat {
                hb.begin(t0, site_addr.unwrap_or(0) as u64);
            }

            let result = h.call_in_context(py, &func, &args);
            args.release(py);

            let t1 = clock::now_ns();
            let took = t1 - t0;
            let lag = t0.saturating_sub(queued_ns);
            t0 = t1;
            self.state.with(py, |s| {
                s.record_run(t1, took, lag);
                s.current_task = None;
                if inspected && task.is_some() {
                    s.recorder.task_step(took);
                }
                if result.is_err() {
                    s.recorder.exceptions += 1;
                }
                if let Some((t, slot)) = task {
                    s.tasks.step(slot, t, took, lag);
                }
                if site_addr.is_some() {
                    s.sites.add(slot, took);
                }
            });
            let is_slow = took >= slow_ns;
            // Recorded before the task may leave the live table, but its error waits:
            // the table must learn of the step whatever happens.
            let slow = if is_slow { self.record_slow(py, h, &func, task.map(|(t, _)| t), took, debug) } else { Ok(()) };
            if let Some((t, slot)) = task {
                self.after_task_step(py, t, slot, &func);
            }
            slow?;
            if let Err(err) = result {
                self.report_callback_error(py, loop_obj, &handle.0, err)?;
            }
            if debug && is_slow {
                let text = stdlib::format_handle(py)?.call1((&handle.0,))?;
                stdlib::asyncio_logger(py)?.call_method1(
                    "warning",
                    ("Executing %s took %.3f seconds", text, clock::ns_to_secs(took)),
                )?;
            }
        }
        let end = t0;
        let busy = end - busy_start;
        // The link leaves the state only when something is due (it is boxed: a move is a pointer).
        let (iterations, mut link) = self.state.with(py, |s| {
            s.recorder.busy_ns += busy;
            (s.recorder.iterations, if end >= s.next_publish_ns { s.link.take() } else { None })
        });
        if let Some(hb) = heartbeat {
            hb.idle();
            hb.iteration(iterations);
        }
        // 5. Samples and tables for the inspector, when due.
        if let Some(l) = &mut link {
            let published = self.publish(py, l, end);
            self.state.with(py, |s| {
                s.link = link;
                s.link_changed();
            });
            published?;
        }
        Ok(())
    }

    /// Adds a task to the task table; `coro` is its coroutine when the caller has
    /// it, `context` the one `create_task` was given (the task runs in it), if any.
    /// `first_step_queued`: the ready queue's last entry is the task's first step
    /// (see `first_step_queued`).
    fn task_created(
        &self,
        py: Python<'_>,
        task: &Bound<'_, PyAny>,
        coro: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
        first_step_queued: bool,
    ) -> PyResult<()> {
        let hold = if first_step_queued {
            tasks::Hold::FirstStep(task.clone().unbind())
        } else {
            tasks::Hold::Weak(tasks::untracked_weakref(task)?)
        };
        let coro = match coro {
            Some(c) => Some(c.clone()),
            None => task.call_method0(pyo3::intern!(py, "get_coro")).ok(),
        };
        let code = coro
            .and_then(|c| c.getattr(pyo3::intern!(py, "cr_code")).or_else(|_| c.getattr(pyo3::intern!(py, "gi_code"))).ok())
            .map(Bound::unbind);
        let created_unix_ms = unix_ms();
        let app_span = if crate::otel::capturing() {
            crate::otel::current_span(py, context.filter(|c| !c.is_none())).map(Box::new)
        } else {
            None
        };
        let gone = self.state.with(py, |s| {
            let entry = TaskEntry {
                id: s.tasks.next_id(),
                code,
                parent: s.current_task,
                created_unix_ms,
                steps: 0,
                busy_ns: 0,
                longest_step_ns: 0,
                last_delay_ns: 0,
                app_span,
            };
            s.tasks.insert(task.as_ptr() as usize, hold, entry, py)
        });
        drop(gone);
        Ok(())
    }

    /// Whether the ready queue's last entry is `task`'s step, just queued by the
    /// task's constructor: the queue then holds the task until that step runs
    /// (closing the loop empties queue and table together). The constructor drops
    /// the handle, so nothing cancels it; only a loop subclass whose `call_soon`
    /// kept and cancelled it would leave the table holding the task until close.
    fn first_step_queued(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> bool {
        let handle = self.state.with(py, |s| match s.ready.back() {
            Some(Ready::Call { handle, .. }) => Some(handle.clone_ref(py)),
            _ => None,
        });
        let Some((func, args)) = handle.and_then(|h| h.get().callback_parts(py)) else {
            return false;
        };
        args.release(py);
        tasks::step_owner(&func) == Some(task.as_ptr() as usize)
    }

    /// A task step just ran: if the task finished, move it to the finished list.
    fn after_task_step(&self, py: Python<'_>, task_ptr: usize, slot: tasks::Slot, func: &Bound<'_, PyAny>) {
        // SAFETY: `func` (the step callback) holds a reference to the task, so the
        // address is a live object for as long as `func` is.
        let task = unsafe { Bound::from_borrowed_ptr(py, task_ptr as *mut pyo3::ffi::PyObject) };
        let _keep = func;
        if !tasks::is_done(&task) {
            // Past its first step the ready queue no longer holds the task: from now
            // on the table follows it by a weak reference.
            if self.state.with(py, |s| s.tasks.held_for_first_step(slot, task_ptr)) {
                // Whatever the table lets go of is dropped outside the state cell.
                match tasks::untracked_weakref(&task) {
                    Ok(weak) => drop(self.state.with(py, |s| s.tasks.set_hold(slot, task_ptr, tasks::Hold::Weak(weak)))),
                    // Out of memory: stop following the task rather than keep it alive.
                    Err(_) => drop(self.state.with(py, |s| s.tasks.forget(slot, task_ptr))),
                }
            }
            return;
        }
        let (state, exc) = task_outcome(&task);
        let name = tasks::name_of(&task);
        let now_ms = unix_ms();
        let dropped = self.state.with(py, |s| s.tasks.finish(slot, task_ptr, state, exc, name, now_ms));
        drop(dropped);
    }

    /// Adds a site seen for the first time to the profile (returns its slot) and,
    /// when the loop is inspected, tells the inspector its name.
    fn new_site(&self, py: Python<'_>, addr: usize, owner: Option<SiteOwner>, func: &Bound<'_, PyAny>) -> u32 {
        if self.state.with(py, |s| s.sites.is_full()) {
            return sites::OTHER;
        }
        let owner = owner.unwrap_or_else(|| SiteOwner::Named(sites::builtin_name(func)));
        let label = crate::inspect::active().then(|| owner.describe(py).label());
        let (slot, rejected) = self.state.with(py, |s| {
            let inserted = s.sites.insert(addr, owner);
            if let (Some(link), Some(label)) = (s.link.as_mut(), label) {
                link.name_site(addr as u64, label);
                s.link_changed();
            }
            inserted
        });
        drop(rejected);
        slot
    }

    fn record_slow(&self, py: Python<'_>, h: &Handle, func: &Bound<'_, PyAny>, task: Option<usize>, took: u64, debug: bool) -> PyResult<()> {
        let (task_id, site) = self.state.with(py, |s| {
            let id = task.and_then(|t| s.tasks.id_of(t));
            let code = task.and_then(|t| s.tasks.code_of(t).map(|c| c.clone_ref(py)));
            (id, code)
        });
        let site = match site {
            Some(code) => SiteOwner::Code(code).describe(py),
            None => match sites::site_of(func) {
                (_, Some(code)) => sites::describe(&code),
                _ => SiteOwner::Named(sites::builtin_name(func)).describe(py),
            },
        };
        let task_name = task.and_then(|t| {
            // SAFETY: as in after_task_step: `func` keeps the task alive.
            let task = unsafe { Bound::from_borrowed_ptr(py, t as *mut pyo3::ffi::PyObject) };
            task.call_method0("get_name").and_then(|n| n.extract::<String>()).ok()
        });
        let traceback = if debug {
            match h.source_traceback(py) {
                Some(tb) => Some(py.import("traceback")?.call_method1("format_list", (tb,))?.str()?.to_string()),
                None => None,
            }
        } else {
            None
        };
        let event = SlowCallback { unix_ms: unix_ms(), duration_ns: took, site, task_id, task_name, traceback };
        self.state.with(py, |s| {
            s.recorder.slow_callbacks += 1;
            s.slow.push(event)
        });
        Ok(())
    }

    /// An exception escaped a callback: SystemExit and KeyboardInterrupt end the
    /// run (as in asyncio); anything else goes to the loop's exception handler.
    fn report_callback_error(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>, handle: &Bound<'_, Handle>, err: PyErr) -> PyResult<()> {
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        let h = handle.get();
        let source = h.callback_source(py)?.unwrap_or_else(|| "<cancelled>".into());
        let context = PyDict::new(py);
        context.set_item("message", format!("Exception in callback {source}"))?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("handle", handle)?;
        if let Some(tb) = h.source_traceback(py) {
            context.set_item("source_traceback", tb)?;
        }
        loop_obj.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, record = true, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, record: bool, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let poll = Poll::new().map_err(os_error)?;
        let registry = poll.registry().try_clone().map_err(os_error)?;
        let waker = std::sync::Arc::new(Waker::new(&registry, WAKER_TOKEN).map_err(os_error)?);
        Ok(LoopCore {
            state: GilCell::new(State {
                ready: VecDeque::new(),
                last_poll_ns: 0,
                now_ns: clock::now_ns(),
                current_task: None,
                tasks: Tasks::default(),
                servers: Servers::default(),
                sites: Sites::default(),
                slow: SlowLog::default(),
                link: None,
                next_publish_ns: u64::MAX,
                closed_bytes_in: 0,
                executor: (0, 0, 0),
                connections: 0,
                executor_jobs: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("static bounds"),
                closed_bytes_out: 0,
                timers: Timers::default(),
                watchers: Watchers::default(),
                recorder: Recorder::new(record),
            }),
            poller: Mutex::new(Poller { poll, events: Events::with_capacity(EVENTS_CAPACITY) }),
            registry,
            waker,
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: std::sync::Arc::new(AtomicU64::new(0)),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
            tracked: Python::attach(|py| PyDict::new(py).unbind()),
            heartbeat: std::sync::OnceLock::new(),
        })
    }

    // The loop holds handles whose callbacks are often bound methods of the loop
    // itself (the self-pipe reader, transports): without this, every loop that is
    // dropped without close() would leak, and never warn "unclosed event loop".
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // A running loop is held by the frame of its `run_forever`, so all it holds
        // is reachable whatever this reports, and no cycle through it can be freed
        // yet. Visiting would only touch every queued handle (untracked, so a cache
        // miss each) and task entry in every full collection: with 100k tasks
        // gathered, that walk was most of the collector's time the loop added.
        if self.running() {
            return Ok(());
        }
        self.state
            .try_peek(|s| {
                for r in &s.ready {
                    match r {
                        Ready::Call { handle, .. } => handles::visit_pending(handle, &visit)?,
                        Ready::Io { transport, .. } => visit.call(transport.as_any())?,
                        Ready::Sock { .. } => {}
                    }
                }
                s.timers.traverse(&visit)?;
                s.watchers.traverse(&visit)?;
                s.servers.traverse(&visit)?;
                visit.call(&self.tracked)?;
                s.tasks.traverse(&visit)
            })
            .unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        Python::attach(|py| self.drop_scheduled(py));
    }

    /// Tracks again every queued handle that is also held elsewhere; the module's
    /// hook calls it as a full collection starts. The loop's own visit of its
    /// queue (`__traverse__`) can see through a queued handle only while the queue
    /// is its sole owner: a handle someone else holds would otherwise hide what it
    /// references, and a dropped, unclosed loop in a cycle with it would never be
    /// freed. The loop is old, so only a full collection could free it.
    fn _track_shared_handles(&self, py: Python<'_>) {
        if self.running() {
            return; // a running loop is not visited at all (`__traverse__`)
        }
        self.state.with(py, |s| {
            for entry in &s.ready {
                if let Ready::Call { handle, .. } = entry {
                    handles::track_if_shared(handle.bind(py));
                    handles::track_context_if_shared(handle.bind(py));
                }
            }
        });
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::ns_to_secs(clock::now_ns())
    }

    /// Asks the loop to stop after the current iteration.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Runs iterations until `stop()`. The Python side sets up the running state around it.
    fn _run_forever_inner(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        let loop_obj = slf.as_any();
        // Iterations take "now" from the end of the previous one: start from a fresh reading.
        this.state.with(py, |s| s.now_ns = clock::now_ns());
        loop {
            this.run_once(py, loop_obj)?;
            if this.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// Watches `fd` for reading; `callback(*args)` runs while it is readable.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        self.add_watcher(py, fd, Side::Read, callback, args)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        self.add_watcher(py, fd, Side::Write, callback, args)
    }

    fn _remove_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(py, fd, Side::Read)
    }

    fn _remove_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(py, fd, Side::Write)
    }

    // The syscalls and waits of the sock_* methods (sock.rs); the coroutines are in _loop.py.
    fn _sock_recv(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::recv(slf, sock, n)
    }
    fn _sock_recv_into(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::recv_into(slf, sock, buf)
    }
    fn _sock_recvfrom(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, bufsize: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::recvfrom(slf, sock, bufsize)
    }
    fn _sock_recvfrom_into(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::recvfrom_into(slf, sock, buf, nbytes)
    }
    fn _sock_sendall(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::sendall(slf, sock, data)
    }
    fn _sock_sendto(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::sendto(slf, sock, data, address)
    }
    fn _sock_accept(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::accept(slf, sock)
    }
    fn _sock_connect(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::sock::connect(slf, sock, address)
    }
    fn _sock_abandon(&self, py: Python<'_>, sock: &Bound<'_, PyAny>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        self.abandon_sock(py, sock, future)
    }

    /// `(reading, writing)` for a watched fd, or None: backs the selector view.
    fn _fd_sides(&self, py: Python<'_>, fd: RawFd) -> Option<(bool, bool)> {
        self.state.with(py, |s| s.watchers.sides(fd))
    }

    /// Drops everything queued, timed and watched (called by `close()`).
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::Relaxed);
        // Tell the inspector everything up to now, then leave its hub (it shows the loop closed).
        let link = self.state.with(py, |s| {
            let link = s.link.take();
            s.link_changed();
            link
        });
        let published = match link {
            Some(mut l) => {
                l.next_sample_ns = 0;
                l.next_tables_ns = 0;
                self.publish(py, &mut l, clock::now_ns())
            }
            None => Ok(()),
        };
        self.drop_scheduled(py);
        published
    }

    /// Schedules a coroutine as a task, as asyncio's `create_task`, and adds it to
    /// the task table. The common case (no task factory, no debug mode, only
    /// `name`/`context`) builds the C `Task` directly; everything else goes through
    /// asyncio's own `create_task` (`_create_task_slow` on the Python side).
    #[pyo3(signature = (coro, *, name = None, context = None, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let extra_kwargs = kwargs.is_some_and(|k| !k.is_empty());
        let factory = slf.getattr(pyo3::intern!(py, "_task_factory"))?;
        if this.is_debug() || extra_kwargs || !factory.is_none() {
            let all = kwargs.map(|k| k.copy()).transpose()?.unwrap_or_else(|| PyDict::new(py));
            if let Some(n) = name {
                all.set_item("name", n)?;
            }
            if let Some(c) = context {
                all.set_item("context", c)?;
            }
            return slf.call_method(pyo3::intern!(py, "_create_task_slow"), (coro,), Some(&all));
        }
        // Task(coro, loop=self[, name=...][, context=...]) by vectorcall: no keyword dict.
        let mut values = vec![coro.as_ptr(), slf.as_ptr()];
        let mut names = vec![pyo3::intern!(py, "loop")];
        if let Some(n) = name {
            values.push(n.as_ptr());
            names.push(pyo3::intern!(py, "name"));
        }
        if let Some(c) = context {
            values.push(c.as_ptr());
            names.push(pyo3::intern!(py, "context"));
        }
        static LOOP_ONLY: pyo3::sync::PyOnceLock<Py<PyTuple>> = pyo3::sync::PyOnceLock::new();
        let kwnames = match names.len() {
            1 => LOOP_ONLY.get_or_try_init(py, || PyTuple::new(py, &names).map(Bound::unbind))?.bind(py).clone(),
            _ => PyTuple::new(py, names)?,
        };
        let task_type = stdlib::task_type(py)?;
        // SAFETY: GIL held; `values` are live borrowed references (one positional,
        // then one per name in `kwnames`) for the duration of the call.
        let task = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyObject_Vectorcall(task_type.as_ptr(), values.as_ptr(), 1, kwnames.as_ptr()),
            )?
        };
        let queued = this.first_step_queued(py, &task);
        this.task_created(py, &task, Some(coro), context, queued)?;
        Ok(task)
    }

    /// Executor bookkeeping, called (with the GIL) by the job wrapper of
    /// `run_in_executor`: 0 = queued, 1 = started, 2 = finished after `duration_ns`,
    /// 3 = left the queue without running (cancelled, or the submit failed).
    #[pyo3(signature = (event, duration_ns = 0))]
    fn _executor_event(&self, py: Python<'_>, event: u8, duration_ns: u64) {
        self.state.with(py, |s| match event {
            0 => s.executor.0 += 1,
            3 => s.executor.0 = s.executor.0.saturating_sub(1),
            1 => {
                s.executor.0 = s.executor.0.saturating_sub(1);
                s.executor.1 += 1;
            }
            _ => {
                s.executor.1 = s.executor.1.saturating_sub(1);
                s.executor.2 += 1;
                s.recorder.executor_job(duration_ns);
                if s.recorder.enabled {
                    s.executor_jobs.saturating_record(duration_ns.max(1));
                }
            }
        });
    }

    /// Counts a connection (a stream transport made for an accepted or connected
    /// socket, plain or TLS): `asyncio.connections`.
    fn _connection_opened(&self, py: Python<'_>) {
        self.state.with(py, |s| s.connections += 1);
    }

    /// Adds a task made by `create_task` to the task table; `context` is the one
    /// `create_task` was given (the task runs in it), if any.
    #[pyo3(signature = (task, context = None))]
    fn _task_created(&self, py: Python<'_>, task: &Bound<'_, PyAny>, context: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.task_created(py, task, None, context, false)
    }

    /// Adds a server made by `create_server`/`create_unix_server` to the server table.
    /// `kind` is "tcp" or "unix"; `addresses` are the listening sockets' names.
    fn _server_created(
        &self,
        py: Python<'_>,
        server: &Bound<'_, PyAny>,
        kind: &str,
        tls: bool,
        addresses: Vec<String>,
        protocol_factory: String,
    ) -> PyResult<()> {
        let weak = pyo3::types::PyWeakrefReference::new(server)?.into_any().unbind();
        let kind = match kind {
            "unix" => inspector::TransportKind::Unix,
            _ => inspector::TransportKind::Tcp,
        };
        let created_unix_ms = unix_ms();
        let gone = self.state.with(py, |s| {
            let entry = ServerEntry {
                id: s.servers.next_id(),
                weak,
                kind,
                tls,
                addresses,
                protocol_factory,
                created_unix_ms,
                accepted: 0,
                refused: 0,
            };
            s.servers.insert(py, server.as_ptr() as usize, entry)
        });
        drop(gone);
        Ok(())
    }

    /// A server accepted a connection (asyncio handed the socket to a transport).
    fn _server_accepted(&self, py: Python<'_>, server: &Bound<'_, PyAny>) {
        self.state.with(py, |s| {
            if let Some(e) = s.servers.get_mut(py, server.as_ptr() as usize) {
                e.accepted += 1;
            }
        });
    }

    /// A server's `accept()` failed.
    fn _server_refused(&self, py: Python<'_>, server: &Bound<'_, PyAny>) {
        self.state.with(py, |s| {
            if let Some(e) = s.servers.get_mut(py, server.as_ptr() as usize) {
                e.refused += 1;
            }
        });
    }

    /// The server table as plain dicts, oldest server first.
    fn _servers<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::new();
        for r in self.server_records(py)? {
            let d = PyDict::new(py);
            d.set_item("id", r.id)?;
            d.set_item("kind", r.kind.as_str())?;
            d.set_item("addresses", r.addresses)?;
            d.set_item("protocol_factory", r.protocol_factory)?;
            d.set_item("tls", r.tls)?;
            d.set_item("created_unix_ms", r.created_unix_ms)?;
            d.set_item("state", r.state)?;
            d.set_item("serving", r.serving)?;
            d.set_item("accepted", r.accepted)?;
            d.set_item("open", r.open)?;
            d.set_item("refused", r.refused)?;
            out.push(d);
        }
        Ok(out)
    }

    /// The task table as plain dicts: live tasks first, then recently finished ones.
    #[pyo3(signature = (include_finished = true, limit = 100_000))]
    fn _tasks<'py>(&self, py: Python<'py>, include_finished: bool, limit: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::new();
        for (r, task) in self.task_records(py, limit)? {
            if !include_finished && r.finished_unix_ms.is_some() {
                continue;
            }
            let d = PyDict::new(py);
            d.set_item("id", r.id)?;
            d.set_item("name", r.name)?;
            d.set_item("coro", r.coro)?;
            d.set_item("defined_at", r.defined_at)?;
            d.set_item("parent_id", r.parent_id)?;
            d.set_item("created_unix_ms", r.created_unix_ms)?;
            d.set_item("finished_unix_ms", r.finished_unix_ms)?;
            d.set_item("state", r.state.as_str())?;
            d.set_item("exception_type", r.exception_type)?;
            d.set_item("steps", r.steps)?;
            d.set_item("busy_seconds", r.busy_ns as f64 / 1e9)?;
            d.set_item("longest_step_seconds", r.longest_step_ns as f64 / 1e9)?;
            d.set_item("last_scheduled_delay_seconds", r.last_scheduled_delay_ns as f64 / 1e9)?;
            d.set_item("trace_id", r.trace_id)?;
            d.set_item("parent_span_id", r.parent_span_id)?;
            d.set_item("trace_flags", r.trace_flags)?;
            if let Some(t) = task {
                d.set_item("task", t)?;
            }
            out.push(d);
        }
        Ok(out)
    }

    /// The callback-site profile: the heaviest `limit` sites by `order` ("total", "count", "max").
    #[pyo3(signature = (order = "total", limit = 50))]
    fn _callback_sites<'py>(&self, py: Python<'py>, order: &str, limit: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::new();
        for site in self.site_records(py, order, limit) {
            let d = PyDict::new(py);
            d.set_item("id", site.id)?;
            d.set_item("qualname", site.qualname)?;
            d.set_item("file", site.file)?;
            d.set_item("line", site.line)?;
            d.set_item("count", site.count)?;
            d.set_item("total_seconds", site.total_ns as f64 / 1e9)?;
            d.set_item("max_seconds", site.max_ns as f64 / 1e9)?;
            out.push(d);
        }
        Ok(out)
    }

    /// The slow-callback log, oldest first.
    fn _slow_callbacks<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let events = self.state.with(py, |s| s.slow.events());
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let d = PyDict::new(py);
            d.set_item("unix_ms", e.unix_ms)?;
            d.set_item("duration_seconds", e.duration_ns as f64 / 1e9)?;
            d.set_item("qualname", e.site.qualname)?;
            d.set_item("file", e.site.file)?;
            d.set_item("line", e.site.line)?;
            d.set_item("task_id", e.task_id)?;
            d.set_item("task_name", e.task_name)?;
            d.set_item("traceback", e.traceback)?;
            out.push(d);
        }
        Ok(out)
    }

    /// The registry of asyncio's Python transports (see `glassloop._tracked`).
    #[getter]
    fn _tracked_transports(&self, py: Python<'_>) -> Py<PyDict> {
        self.tracked.clone_ref(py)
    }

    /// The transport table (Rust transports, then asyncio's Python ones), as plain dicts.
    fn _transports_table<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::new();
        for t in self.transport_records(py)? {
            let d = PyDict::new(py);
            d.set_item("id", t.id)?;
            d.set_item("kind", t.kind.as_str())?;
            d.set_item("local", t.local)?;
            d.set_item("peer", t.peer)?;
            d.set_item("protocol", t.protocol)?;
            d.set_item("created_unix_ms", t.created_unix_ms)?;
            d.set_item("bytes_in", t.bytes_in)?;
            d.set_item("bytes_out", t.bytes_out)?;
            d.set_item("calls_in", t.calls_in)?;
            d.set_item("calls_out", t.calls_out)?;
            d.set_item("write_buffer", t.write_buffer)?;
            d.set_item("write_buffer_high_water", t.write_buffer_high_water)?;
            d.set_item("reading_paused", t.reading_paused)?;
            d.set_item("writing_paused", t.writing_paused)?;
            d.set_item("paused_reading_seconds", t.paused_reading_ns as f64 / 1e9)?;
            d.set_item("paused_writing_seconds", t.paused_writing_ns as f64 / 1e9)?;
            d.set_item("state", t.state)?;
            out.push(d);
        }
        Ok(out)
    }

    /// A live task's await chain as text (None if the loop has no such task).
    fn _task_stack(&self, py: Python<'_>, task_id: u64) -> PyResult<Option<String>> {
        self.task_stack_text(py, task_id)
    }

    /// Counters and histogram summaries (see `glassloop.Loop.stats`).
    fn _stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (snap, ready, timers, timers_cancelled, fds) = self.state.with(py, |s| {
            (s.recorder.snapshot(), s.ready.len(), s.timers.len(), s.timers.cancelled_len(), s.watchers.len())
        });
        let lag = (snap.delay_count, snap.delay_p50_ns, snap.delay_p99_ns, snap.delay_max_ns);
        let (tasks_live, tasks_created, tasks_finished, sites) = self.state.with(py, |s| {
            (
                s.tasks.live_len(),
                s.tasks.created_total,
                s.tasks.finished_total,
                s.sites.len(),
            )
        });
        let d = PyDict::new(py);
        d.set_item("iterations", snap.iterations)?;
        d.set_item("callbacks", snap.callbacks)?;
        d.set_item("exceptions", snap.exceptions)?;
        d.set_item("slow_callbacks", snap.slow_callbacks)?;
        d.set_item("busy_seconds", snap.busy_ns as f64 / 1e9)?;
        d.set_item("idle_seconds", snap.idle_ns as f64 / 1e9)?;
        d.set_item("ready_queue", ready)?;
        d.set_item("timers_pending", timers - timers_cancelled.min(timers))?;
        d.set_item("timers_in_heap", timers)?;
        d.set_item("fds_registered", fds + self.state.with(py, |s| s.watchers.transport_count()))?;
        d.set_item("transports_open", self.state.with(py, |s| s.watchers.transport_count()) + self.tracked.bind(py).len())?;
        d.set_item("connections", self.state.with(py, |s| s.connections))?;
        let cb = PyDict::new(py);
        cb.set_item("count", snap.callback_count)?;
        cb.set_item("p50", snap.callback_p50_ns as f64 / 1e9)?;
        cb.set_item("p99", snap.callback_p99_ns as f64 / 1e9)?;
        cb.set_item("max", snap.callback_max_ns as f64 / 1e9)?;
        d.set_item("callback_duration", cb)?;
        let tl = PyDict::new(py);
        tl.set_item("count", snap.timer_count)?;
        tl.set_item("p50", snap.timer_lateness_p50_ns as f64 / 1e9)?;
        tl.set_item("p99", snap.timer_lateness_p99_ns as f64 / 1e9)?;
        tl.set_item("max", snap.timer_lateness_max_ns as f64 / 1e9)?;
        d.set_item("timer_delay", tl)?;
        let lg = PyDict::new(py);
        lg.set_item("count", lag.0)?;
        lg.set_item("p50", lag.1 as f64 / 1e9)?;
        lg.set_item("p99", lag.2 as f64 / 1e9)?;
        lg.set_item("max", lag.3 as f64 / 1e9)?;
        d.set_item("loop_lag", lg)?;
        d.set_item("tasks_live", tasks_live)?;
        d.set_item("tasks_created", tasks_created)?;
        d.set_item("tasks_finished", tasks_finished)?;
        d.set_item("callback_sites", sites)?;
        let ((queued, running, done), jobs) = self.state.with(py, |s| {
            let h = &s.executor_jobs;
            (s.executor, (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
        });
        let ex = PyDict::new(py);
        ex.set_item("queued", queued)?;
        ex.set_item("running", running)?;
        ex.set_item("done", done)?;
        let jd = PyDict::new(py);
        jd.set_item("count", jobs.0)?;
        jd.set_item("p50", jobs.1 as f64 / 1e9)?;
        jd.set_item("p99", jobs.2 as f64 / 1e9)?;
        jd.set_item("max", jobs.3 as f64 / 1e9)?;
        ex.set_item("job_duration", jd)?;
        d.set_item("executor", ex)?;
        Ok(d)
    }

    #[getter(_closed)]
    fn closed_flag(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
    #[setter(_closed)]
    fn set_closed_flag(&self, value: bool) {
        self.closed.store(value, Ordering::Relaxed);
    }

    #[getter(_stopping)]
    fn stopping_flag(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
    #[setter(_stopping)]
    fn set_stopping_flag(&self, value: bool) {
        self.stopping.store(value, Ordering::Relaxed);
    }

    /// Whether the loop is in debug mode. In Rust because every Future and Task
    /// asks at creation: asyncio's Python version costs each of them a frame.
    fn get_debug(&self) -> bool {
        self.is_debug()
    }

    #[getter(_debug)]
    fn debug_flag(&self) -> bool {
        self.is_debug()
    }
    #[setter(_debug)]
    fn set_debug_flag(&self, value: bool) {
        self.debug.store(value, Ordering::Relaxed);
    }

    #[getter(_thread_id)]
    fn thread_id_flag(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }
    #[setter(_thread_id)]
    fn set_thread_id_flag(&self, value: Option<u64>) {
        self.thread_id.store(value.unwrap_or(0), Ordering::Relaxed);
    }

    /// Callbacks running at least this long (seconds) are slow: counted always, logged in debug mode.
    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        f64::from_bits(self.slow_callback_duration.load(Ordering::Relaxed))
    }
    #[setter]
    fn set_slow_callback_duration(&self, value: f64) {
        self.slow_callback_duration.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl LoopCore {
    /// Drops everything queued, timed, watched and tracked, outside the state borrow.
    fn drop_scheduled(&self, py: Python<'_>) {
        let mut timers = Vec::new();
        let mut handles = Vec::new();
        let mut transports = Vec::new();
        let (ready, task_entries) = self.state.with(py, |s| {
            s.timers.clear(py, &mut timers);
            s.watchers.clear(&self.registry, &mut handles, &mut transports);
            (std::mem::take(&mut s.ready), s.tasks.clear())
        });
        release_ready(py, ready);
        drop((timers, handles, transports, task_entries));
    }

    /// Registers a Rust transport's fd for the transport's life.
    pub(crate) fn register_transport(&self, py: Python<'_>, fd: RawFd, transport: impl Into<Transport>) -> PyResult<()> {
        self.check_closed()?;
        let old = self.state.with(py, |s| s.watchers.add_transport(&self.registry, fd, transport.into())).map_err(os_error)?;
        drop(old);
        Ok(())
    }

    /// Watches a registered transport's fd for writability too (`true`) or reading only.
    pub(crate) fn set_transport_writable(&self, py: Python<'_>, fd: RawFd, writable: bool) -> PyResult<()> {
        let interest = if writable { mio::Interest::READABLE | mio::Interest::WRITABLE } else { mio::Interest::READABLE };
        self.state.with(py, |s| s.watchers.set_transport_interest(&self.registry, fd, interest)).map_err(os_error)
    }

    pub(crate) fn deregister_transport(&self, py: Python<'_>, fd: RawFd) {
        let old = self.state.with(py, |s| s.watchers.remove_transport(&self.registry, fd));
        if let Some(t) = &old {
            // Keep the bytes of closed transports in the loop's totals.
            let stats = t.stats(py);
            self.state.with(py, |s| {
                s.closed_bytes_in += stats.bytes_in;
                s.closed_bytes_out += stats.bytes_out;
            });
        }
        drop(old);
    }

    /// Bytes moved by all Rust transports since the loop began: `(in, out)`.
    pub(crate) fn transport_bytes(&self, py: Python<'_>) -> (u64, u64) {
        let (live, mut total) = self.state.with(py, |s| (s.watchers.transports(py), (s.closed_bytes_in, s.closed_bytes_out)));
        for t in live {
            let st = t.stats(py);
            total.0 += st.bytes_in;
            total.1 += st.bytes_out;
        }
        total
    }

    /// Queues I/O work for a transport in the next iteration (reads that may have
    /// more waiting, and reads after resume_reading, which raise no new event).
    pub(crate) fn queue_io(&self, py: Python<'_>, transport: impl Into<Transport>, readable: bool, writable: bool) {
        self.state.with(py, |s| {
            let queued_ns = s.now_ns;
            // No event tells us whether a FIN is waiting: read until EAGAIN or EOF.
            s.ready.push_back(Ready::Io { transport: transport.into(), readable, writable, read_closed: true, queued_ns })
        });
    }

    /// Reads a transport with the next poll's events, as if the poll reported it
    /// (reads that may have more waiting, and reads after resume_reading, which
    /// raise no new event).
    pub(crate) fn queue_read(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        self.state.with(py, |s| s.watchers.reread(transport));
    }

    fn add_watcher(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, side: Side, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        let fd = fileobj_to_fd(fd)?;
        let handle = Py::new(py, Handle::new(py, callback, args, None, self.is_debug())?)?;
        let watched = Waiter::Handle(handle.clone_ref(py));
        let replaced = self.state.with(py, |s| s.watchers.add(py, &self.registry, fd, side, watched));
        match replaced {
            Ok(Some(old)) => old.cancel(py),
            Ok(None) => {}
            Err((e, rejected)) => {
                drop(rejected);
                return Err(os_error(e));
            }
        }
        Ok(handle)
    }

    fn remove_watcher(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, side: Side) -> PyResult<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fd = fileobj_to_fd(fd)?;
        let removed = self.state.with(py, |s| s.watchers.remove(&self.registry, fd, side));
        match removed {
            Some(waiter) => {
                waiter.cancel(py);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

// The scheduling methods, as vectorcall methods (see fastcall.rs): they run once
// per callback. Each sorts its arguments and calls the `LoopCore` method above.

static SCHEDULING_METHODS: [fastcall::MethodDef; 4] = [
    fastcall::MethodDef::new(
        c"call_soon",
        call_soon_vectorcall,
        c"call_soon($self, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` for the next iteration, in `context` (default: a copy of the current one).",
    ),
    fastcall::MethodDef::new(
        c"call_soon_threadsafe",
        call_soon_threadsafe_vectorcall,
        c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike `call_soon`, from any thread: wakes the loop if it is waiting.",
    ),
    fastcall::MethodDef::new(
        c"call_later",
        call_later_vectorcall,
        c"call_later($self, delay, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` to run `delay` seconds from now.",
    ),
    fastcall::MethodDef::new(
        c"call_at",
        call_at_vectorcall,
        c"call_at($self, when, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` at `when`, an absolute time on `loop.time()`'s clock.",
    ),
];

/// Puts the scheduling methods on `LoopCore` (at module import).
pub(crate) fn install_scheduling_methods(py: Python<'_>) -> PyResult<()> {
    fastcall::install(&py.get_type::<LoopCore>(), &SCHEDULING_METHODS)
}

/// The `LoopCore` a method was called on.
///
/// # Safety
/// `slf` must be the self of a method descriptor of `LoopCore`, which CPython has
/// checked is an instance of it.
unsafe fn loop_core<'a, 'py>(py: Python<'py>, slf: *mut pyo3::ffi::PyObject) -> Borrowed<'a, 'py, LoopCore> {
    unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>() }
}

/// One vectorcall entry point per scheduling method: CPython passes the
/// arguments as a C array, `fastcall::parse` names them, `$body` runs with
/// `$py`, `$this` (the loop) and `$call` (the parsed arguments) bound.
macro_rules! scheduling_method {
    ($name:ident, $qualname:literal, [$($param:literal),*], |$py:ident, $this:ident, $call:ident| $body:block) => {
        unsafe extern "C" fn $name(
            slf: *mut pyo3::ffi::PyObject,
            args: *const *mut pyo3::ffi::PyObject,
            nargs: pyo3::ffi::Py_ssize_t,
            kwnames: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: CPython calls this as the LoopCore method it was installed as
            // (see install_scheduling_methods): `slf` is a LoopCore and the argument
            // array holds `nargs` positional values then one per name in `kwnames`.
            unsafe {
                fastcall::entry(|$py| {
                    let $call = fastcall::parse($py, $qualname, &[$($param),*], args, nargs, kwnames)?;
                    let $this = loop_core($py, slf);
                    $body
                })
            }
        }
    };
}

scheduling_method!(call_soon_vectorcall, "LoopCore.call_soon", ["callback"], |py, this, call| {
    Ok(this.get().call_soon(py, call.named[0], call.rest, call.context)?.into_ptr())
});

scheduling_method!(call_soon_threadsafe_vectorcall, "LoopCore.call_soon_threadsafe", ["callback"], |py, this, call| {
    Ok(this.get().call_soon_threadsafe(py, call.named[0], call.rest, call.context)?.into_ptr())
});

scheduling_method!(call_later_vectorcall, "LoopCore.call_later", ["delay", "callback"], |py, this, call| {
    if call.named[0].is_none() {
        return Err(pyo3::exceptions::PyTypeError::new_err("delay must not be None"));
    }
    let delay = fastcall::float_arg(call.named[0], "delay")?;
    let when = this.get().time() + delay;
    Ok(this.get().call_at(py, when, call.named[1], call.rest, call.context)?.into_ptr())
});

scheduling_method!(call_at_vectorcall, "LoopCore.call_at", ["when", "callback"], |py, this, call| {
    if call.named[0].is_none() {
        return Err(pyo3::exceptions::PyTypeError::new_err("when cannot be None"));
    }
    let when = fastcall::float_arg(call.named[0], "when")?;
    Ok(this.get().call_at(py, when, call.named[1], call.rest, call.context)?.into_ptr())
});
