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
use crate::handles::{check_callback, Handle, TimerHandle};
use crate::reactor::{Side, Watchers, WAKER_TOKEN};
use crate::stdlib;
use crate::timers::Timers;
use inspector::Recorder;
use mio::{Events, Poll, Registry, Waker};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
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
struct State {
    ready: VecDeque<Py<Handle>>,
    /// When the last poll returned (ns).
    last_poll_ns: u64,
    timers: Timers,
    watchers: Watchers,
    recorder: Recorder,
}

struct Poller {
    poll: Poll,
    events: Events,
}

#[pyclass(frozen, subclass, module = "glassloop._core", name = "LoopCore")]
pub struct LoopCore {
    state: GilCell<State>,
    /// Locked only by the loop thread, around the poll (with the GIL released).
    poller: Mutex<Poller>,
    registry: Registry,
    waker: Waker,
    /// True while the loop thread is (about to be) blocked in the poll without
    /// the GIL: a thread-safe call that sees it wakes the loop, once.
    sleeping: AtomicBool,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the running thread, 0 when not running.
    thread_id: AtomicU64,
    /// Seconds, as f64 bits.
    slow_callback_duration: AtomicU64,
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
    fn check_closed(&self) -> PyResult<()> {
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

    #[inline]
    fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn schedule(&self, py: Python<'_>, handle: Handle) -> PyResult<Py<Handle>> {
        let handle = Py::new(py, handle)?;
        let queued = handle.clone_ref(py);
        self.state.with(py, |s| s.ready.push_back(queued));
        Ok(handle)
    }

    fn new_timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let handle = Handle::new(py, callback.clone(), args.clone(), context, self.is_debug())?;
        let counter = self.state.with(py, |s| s.timers.cancel_counter());
        let timer = Py::new(py, TimerHandle::new_pair(handle, when, counter))?;
        let queued = timer.clone_ref(py);
        self.state.with(py, |s| s.timers.push(when, queued));
        Ok(timer)
    }

    /// One iteration: poll for I/O (sleeping until the next timer when there is
    /// nothing to run), queue what became ready, then run the callbacks that were
    /// ready when the iteration started. Callbacks they schedule run next time.
    fn run_once(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut garbage_timers = Vec::new();

        // 1. How long may we sleep?
        let (has_ready, next_when) = self.state.with(py, |s| {
            s.watchers.rearm(&self.registry);
            (!s.ready.is_empty(), s.timers.next_when(py, &mut garbage_timers))
        });
        drop(garbage_timers);
        let timeout = if has_ready || self.stopping.load(Ordering::Relaxed) {
            Some(Duration::ZERO)
        } else {
            next_when.map(|when| {
                let now = clock::now_ns();
                let deadline = clock::secs_to_ns_ceil(when);
                // Round up to whole milliseconds (epoll's unit) so we never wake early.
                let ms = deadline.saturating_sub(now).div_ceil(1_000_000);
                Duration::from_millis(ms).min(MAX_POLL_TIMEOUT)
            })
        };

        // 2. Poll, without the GIL (unless callbacks are waiting and we polled just now).
        let poll_start = clock::now_ns();
        let last_poll = self.state.with(py, |s| s.last_poll_ns);
        let skip_poll = timeout == Some(Duration::ZERO) && poll_start.saturating_sub(last_poll) < MIN_POLL_INTERVAL_NS;
        let mut poll_end = poll_start;
        if !skip_poll {
            let blocking = timeout != Some(Duration::ZERO);
            if blocking {
                self.sleeping.store(true, Ordering::SeqCst);
            }
            let polled = py.detach(|| {
                let mut p = self.poller.lock().unwrap_or_else(|e| e.into_inner());
                let Poller { poll, events } = &mut *p;
                poll.poll(events, timeout)
            });
            self.sleeping.store(false, Ordering::SeqCst);
            poll_end = clock::now_ns();
            match polled {
                Ok(()) => {}
                // A signal arrived: run Python's handlers now (KeyboardInterrupt ends the run).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => py.check_signals()?,
                Err(e) => return Err(os_error(e)),
            }
        }

        // 3. Queue I/O callbacks and due timers.
        let mut garbage_timers = Vec::new();
        {
            let mut p = self.poller.lock().unwrap_or_else(|e| e.into_inner());
            if skip_poll {
                p.events.clear();
            }
            self.state.with(py, |s| {
                s.recorder.iterations += 1;
                s.recorder.idle_ns += poll_end - poll_start;
                if !skip_poll {
                    s.last_poll_ns = poll_end;
                }
                for event in p.events.iter() {
                    if event.token() == WAKER_TOKEN {
                        continue; // the thread that woke us already queued its handle
                    }
                    let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                    let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                    let State { watchers, ready, .. } = s;
                    watchers.dispatch(py, event.token().0 as RawFd, readable, writable, ready);
                }
                let now = clock::ns_to_secs(clock::now_ns());
                let State { timers, ready, recorder, .. } = s;
                timers.pop_due(py, now, ready, &mut garbage_timers, |late| {
                    recorder.timer_fired((late * 1e9) as u64)
                });
            });
        }
        drop(garbage_timers);

        // 4. Run what is ready now; anything they schedule waits for the next iteration.
        let ntodo = self.state.with(py, |s| s.ready.len());
        let debug = self.is_debug();
        let slow = f64::from_bits(self.slow_callback_duration.load(Ordering::Relaxed));
        let mut t0 = clock::now_ns();
        let busy_start = t0;
        for _ in 0..ntodo {
            let Some(handle) = self.state.with(py, |s| s.ready.pop_front()) else {
                break; // the loop was closed by a callback
            };
            let h = handle.get();
            if h.is_cancelled() {
                continue;
            }
            let result = h.run(py);
            let t1 = clock::now_ns();
            let took = t1 - t0;
            t0 = t1;
            let is_slow = clock::ns_to_secs(took) >= slow;
            self.state.with(py, |s| {
                s.recorder.callback(took);
                if is_slow {
                    s.recorder.slow_callbacks += 1;
                }
                if result.is_err() {
                    s.recorder.exceptions += 1;
                }
            });
            if let Err(err) = result {
                self.report_callback_error(py, loop_obj, &handle, err)?;
            }
            if debug && is_slow {
                let text = stdlib::format_handle(py)?.call1((handle.bind(py),))?;
                stdlib::asyncio_logger(py)?.call_method1(
                    "warning",
                    ("Executing %s took %.3f seconds", text, clock::ns_to_secs(took)),
                )?;
            }
        }
        let busy = clock::now_ns() - busy_start;
        self.state.with(py, |s| s.recorder.busy_ns += busy);
        Ok(())
    }

    /// An exception escaped a callback: SystemExit and KeyboardInterrupt end the
    /// run (as in asyncio); anything else goes to the loop's exception handler.
    fn report_callback_error(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>, handle: &Py<Handle>, err: PyErr) -> PyResult<()> {
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        let h = handle.get();
        let source = h.callback_source(py)?.unwrap_or_else(|| "<cancelled>".into());
        let context = PyDict::new(py);
        context.set_item("message", format!("Exception in callback {source}"))?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("handle", handle.bind(py))?;
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
        let waker = Waker::new(&registry, WAKER_TOKEN).map_err(os_error)?;
        Ok(LoopCore {
            state: GilCell::new(State {
                ready: VecDeque::new(),
                last_poll_ns: 0,
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
            thread_id: AtomicU64::new(0),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
        })
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::ns_to_secs(clock::now_ns())
    }

    /// Schedules `callback(*args)` for the next iteration, in `context` (default: a copy of the current one).
    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        let debug = self.is_debug();
        if debug {
            self.check_thread()?;
        }
        check_callback(py, &callback, "call_soon")?;
        self.schedule(py, Handle::new(py, callback, args, context, debug)?)
    }

    /// Like `call_soon`, from any thread: wakes the loop if it is waiting.
    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        check_callback(py, &callback, "call_soon_threadsafe")?;
        let handle = self.schedule(py, Handle::new(py, callback, args, context, self.is_debug())?)?;
        // The loop sets `sleeping` while holding the GIL, right before it releases it
        // to poll, so under the GIL we either see it set (and wake the poll) or the
        // loop has not computed its timeout yet (and will see our handle).
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake().map_err(os_error)?;
        }
        Ok(handle)
    }

    /// Schedules `callback(*args)` to run `delay` seconds from now.
    #[pyo3(signature = (delay, callback, *args, context = None))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let Some(delay) = delay else {
            return Err(pyo3::exceptions::PyTypeError::new_err("delay must not be None"));
        };
        self.call_at(py, Some(self.time() + delay), callback, args, context)
    }

    /// Schedules `callback(*args)` at `when`, an absolute time on `loop.time()`'s clock.
    #[pyo3(signature = (when, callback, *args, context = None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let Some(when) = when else {
            return Err(pyo3::exceptions::PyTypeError::new_err("when cannot be None"));
        };
        self.check_closed()?;
        if self.is_debug() {
            self.check_thread()?;
        }
        check_callback(py, &callback, "call_at")?;
        self.new_timer(py, when, &callback, &args, context)
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

    /// `(reading, writing)` for a watched fd, or None: backs the selector view.
    fn _fd_sides(&self, py: Python<'_>, fd: RawFd) -> Option<(bool, bool)> {
        self.state.with(py, |s| s.watchers.sides(fd))
    }

    /// Drops everything queued, timed and watched (called by `close()`).
    fn _close_core(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Relaxed);
        let mut timers = Vec::new();
        let mut handles = Vec::new();
        let ready = self.state.with(py, |s| {
            s.timers.clear(py, &mut timers);
            s.watchers.clear(&self.registry, &mut handles);
            std::mem::take(&mut s.ready)
        });
        drop((ready, timers, handles));
    }

    /// Counters and histogram summaries (see `glassloop.Loop.stats`).
    fn _stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (snap, ready, timers, timers_cancelled, fds) = self.state.with(py, |s| {
            (s.recorder.snapshot(), s.ready.len(), s.timers.len(), s.timers.cancelled_len(), s.watchers.len())
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
        d.set_item("fds_registered", fds)?;
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
    fn add_watcher(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, side: Side, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        let fd = fileobj_to_fd(fd)?;
        let method = if side == Side::Read { "add_reader" } else { "add_writer" };
        check_callback(py, &callback, method)?;
        let handle = Py::new(py, Handle::new(py, callback, args, None, self.is_debug())?)?;
        let watched = handle.clone_ref(py);
        let replaced = self.state.with(py, |s| s.watchers.add(&self.registry, fd, side, watched)).map_err(os_error)?;
        if let Some(old) = replaced {
            old.get().cancel_inner(py);
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
            Some(handle) => {
                handle.get().cancel_inner(py);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
