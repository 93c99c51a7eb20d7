//! `Handle` and `TimerHandle`: a scheduled callback, as asyncio's `call_soon` and
//! `call_later` return it.
//!
//! A handle owns its callback, arguments and `contextvars.Context`; running it
//! enters the context through the C API (no `Context.run` method call) and calls
//! the callback with the arguments tuple.

use crate::gil_cell::GilCell;
use crate::stdlib;
use pyo3::basic::CompareOp;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

extern "C" {
    // Part of CPython's C API since 3.7 (Include/cpython/context.h); not bound by pyo3-ffi.
    fn PyContext_Enter(ctx: *mut ffi::PyObject) -> c_int;
    fn PyContext_Exit(ctx: *mut ffi::PyObject) -> c_int;
    // Bound methods (Include/cpython/classobject.h), likewise not bound by pyo3-ffi.
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// `contextvars.copy_context()`, without the Python call.
pub fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: we hold the GIL; PyContext_CopyCurrent returns a new reference or NULL with an error set.
    unsafe {
        let ctx = ffi::PyContext_CopyCurrent();
        Bound::from_owned_ptr_or_err(py, ctx).map(Bound::unbind)
    }
}

/// An entry of the ready queue, with when it became ready (for loop lag).
pub enum Ready {
    /// A scheduled callback.
    Call { handle: Py<Handle>, queued_ns: u64 },
    /// A Rust transport whose socket is ready: no Python handle involved.
    /// `read_closed`: the peer's FIN may be waiting behind the data (see stream.rs).
    Io { transport: crate::transports::Transport, readable: bool, writable: bool, read_closed: bool, queued_ns: u64 },
    /// A `sock_*` call waiting on this side of the fd may go on (see sock.rs).
    Sock { fd: std::os::unix::io::RawFd, side: crate::reactor::Side, queued_ns: u64 },
}

/// Runs `f` with `ctx` (a `contextvars.Context`) entered, as `Context.run` would.
pub fn with_context<R>(py: Python<'_>, ctx: &Py<PyAny>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let ptr = ctx.as_ptr();
    // SAFETY: GIL held; `ctx` outlives the call. Enter fails without side effects.
    if unsafe { PyContext_Enter(ptr) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: entered just above, on this thread.
    if unsafe { PyContext_Exit(ptr) } != 0 {
        return Err(PyErr::fetch(py));
    }
    result
}

/// A callback's arguments. Most callbacks take none or one (a future's done
/// callback, a task's wakeup, `call_soon(step, i)`): those are kept inline, so
/// scheduling them allocates no tuple (one object less to create, free and scan
/// in every garbage collection while the handle waits).
pub enum Args {
    Zero,
    One(Py<PyAny>),
    Many(Py<PyTuple>),
}

impl Args {
    pub fn from_tuple(args: Bound<'_, PyTuple>) -> Args {
        match args.len() {
            0 => Args::Zero,
            // SAFETY: index 0 exists; get_borrowed_item_unchecked does no bounds check.
            1 => Args::One(unsafe { args.get_borrowed_item_unchecked(0) }.to_owned().unbind()),
            _ => Args::Many(args.unbind()),
        }
    }

    /// From the arguments of a vectorcall (borrowed references).
    pub fn from_slice(py: Python<'_>, args: &[*mut ffi::PyObject]) -> PyResult<Args> {
        // SAFETY: the caller passes live objects (a vectorcall's arguments), GIL held.
        unsafe {
            match args {
                [] => Ok(Args::Zero),
                [one] => Ok(Args::One(Bound::from_borrowed_ptr(py, *one).unbind())),
                many => {
                    let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(many.len() as ffi::Py_ssize_t))?;
                    for (i, item) in many.iter().enumerate() {
                        ffi::Py_INCREF(*item);
                        // PyTuple_SET_ITEM steals the reference just taken.
                        ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, *item);
                    }
                    Ok(Args::Many(tuple.cast_into_unchecked::<PyTuple>().unbind()))
                }
            }
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Args {
        match self {
            Args::Zero => Args::Zero,
            Args::One(a) => Args::One(a.clone_ref(py)),
            Args::Many(t) => Args::Many(t.clone_ref(py)),
        }
    }

    /// As the tuple asyncio's `Handle._args` holds.
    pub fn to_tuple<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        match self {
            Args::Zero => PyTuple::empty(py),
            Args::One(a) => PyTuple::new(py, [a.bind(py)]).expect("a one-item tuple"),
            Args::Many(t) => t.bind(py).clone(),
        }
    }

    /// `func(*args)`, by vectorcall.
    #[inline]
    pub fn call_with<'py>(&self, func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = func.py();
        let f = func.as_ptr();
        // SAFETY: GIL held; `func` and the arguments are live for the call. The
        // one-argument buffer reserves slot 0 so the callee may use it
        // (PY_VECTORCALL_ARGUMENTS_OFFSET), as CPython's own calls do.
        unsafe {
            let result = match self {
                Args::Zero => ffi::PyObject_Vectorcall(f, std::ptr::null(), 0, std::ptr::null_mut()),
                Args::One(a) => {
                    let mut buf = [std::ptr::null_mut(), a.as_ptr()];
                    ffi::PyObject_Vectorcall(f, buf.as_mut_ptr().add(1), 1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET, std::ptr::null_mut())
                }
                Args::Many(t) => ffi::PyObject_Call(f, t.as_ptr(), std::ptr::null_mut()),
            };
            Bound::from_owned_ptr_or_err(py, result)
        }
    }

    /// Drops the arguments by plain decref (dropping a `Py` first asks PyO3
    /// whether the thread is attached, a thread-local read).
    #[inline]
    pub fn release(self, py: Python<'_>) {
        match self {
            Args::Zero => {}
            Args::One(a) => drop(a.into_bound(py)),
            Args::Many(t) => drop(t.into_bound(py)),
        }
    }
}

struct Callback {
    func: Py<PyAny>,
    args: Args,
}

/// A handle's context, and whether the loop took it out of the collector's lists
/// (see "Contexts" below).
struct HandleContext {
    object: std::mem::ManuallyDrop<Py<PyAny>>,
    untracked: AtomicBool,
}

impl HandleContext {
    fn new(object: Py<PyAny>) -> Self {
        HandleContext { object: std::mem::ManuallyDrop::new(object), untracked: AtomicBool::new(false) }
    }

    #[inline]
    fn as_ptr(&self) -> *mut ffi::PyObject {
        self.object.as_ptr()
    }

    /// Puts the context back in the collector's lists if the loop took it out.
    #[inline]
    fn track(&self) {
        if self.untracked.swap(false, Ordering::Relaxed) {
            // SAFETY: GIL held by every caller; a live Context, untracked by
            // `untrack_context` and by nothing else since.
            unsafe { ffi::PyObject_GC_Track(self.as_ptr().cast()) }
        }
    }
}

impl Drop for HandleContext {
    fn drop(&mut self) {
        // Tracked again before the reference goes: a context outliving its handle is
        // held by someone else, and CPython frees a context assuming it is tracked.
        self.track();
        // SAFETY: handles are freed with the GIL held; a plain decref (dropping a
        // `Py` first asks PyO3 whether the thread is attached, a thread-local read).
        unsafe { ffi::Py_DECREF(self.as_ptr()) }
    }
}

/// A callback scheduled with `call_soon` (and the base of `TimerHandle`).
#[pyclass(frozen, subclass, module = "glassloop._core", name = "Handle")]
pub struct Handle {
    /// `None` once cancelled: asyncio drops the callback then, to break reference cycles.
    callback: GilCell<Option<Callback>>,
    context: HandleContext,
    cancelled: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
}

impl Handle {
    /// `context=None` means a copy of the current context, as in asyncio.
    pub fn new(
        py: Python<'_>,
        func: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        debug: bool,
    ) -> PyResult<Self> {
        Self::with_args(py, func, Args::from_tuple(args), context, debug)
    }

    pub fn with_args(
        py: Python<'_>,
        func: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        debug: bool,
    ) -> PyResult<Self> {
        let context = match context {
            Some(ctx) if !ctx.is_none() => ctx.unbind(),
            _ => copy_current_context(py)?,
        };
        let source_traceback = if debug {
            Some(stdlib::extract_stack(py)?.call0()?.unbind())
        } else {
            None
        };
        Ok(Handle {
            callback: GilCell::new(Some(Callback { func: func.unbind(), args })),
            context: HandleContext::new(context),
            cancelled: AtomicBool::new(false),
            source_traceback,
        })
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Marks the handle cancelled and drops its callback. Returns whether this call did it.
    pub fn cancel_inner(&self, py: Python<'_>) -> bool {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return false;
        }
        let dropped = self.callback.with(py, Option::take);
        drop(dropped); // outside the cell: the callback's __del__ may re-enter the loop
        true
    }

    /// The collector's visit of what the handle references, through PyO3's
    /// visitor: the same walk as the installed `tp_traverse` ([`traverse`]).
    fn visit_contents(handle: &Py<Handle>, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let mut through = ThroughPyVisit { visit, stopped: None };
        // SAFETY: GIL held (a collector visit); `handle` is live and `through`
        // outlives the call, which is the only user of the pointer.
        match unsafe { traverse(handle.as_ptr(), through_pyvisit, (&raw mut through).cast()) } {
            0 => Ok(()),
            _ => through.stopped.map_or(Ok(()), Err),
        }
    }

    /// The context, handed out: from now on someone else holds it too, so the
    /// collector must watch it (see "Contexts" below).
    fn shared_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.track();
        self.context.object.clone_ref(py)
    }

    pub fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    /// The callback and its arguments (None once cancelled).
    #[inline]
    pub fn callback_parts<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyAny>, Args)> {
        self.callback.with(py, |cb| cb.as_ref().map(|cb| (cb.func.bind(py).clone(), cb.args.clone_ref(py))))
    }

    /// Calls `func(*args)` (this handle's callback) in the handle's context.
    /// The error, if any, is the callback's.
    #[inline]
    pub fn call_in_context(&self, py: Python<'_>, func: &Bound<'_, PyAny>, args: &Args) -> PyResult<()> {
        let ctx = self.context.as_ptr();
        // SAFETY: GIL held; `ctx` is kept alive by `self`. Enter fails (TypeError or
        // RuntimeError "already entered") without side effects, and is then reported
        // like any callback error, as asyncio's `Context.run` would.
        if unsafe { PyContext_Enter(ctx) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let result = args.call_with(func).map(drop);
        // SAFETY: we entered `ctx` on this thread just above.
        if unsafe { PyContext_Exit(ctx) } != 0 {
            return Err(PyErr::fetch(py));
        }
        result
    }

    /// The callback as a string, as asyncio formats it in reprs and error messages.
    pub fn callback_source(&self, py: Python<'_>) -> PyResult<Option<String>> {
        match self.callback_parts(py) {
            None => Ok(None),
            Some((func, args)) => {
                let s = stdlib::format_callback_source(py)?.call1((func, args.to_tuple(py)))?;
                Ok(Some(s.extract()?))
            }
        }
    }

    fn repr_parts(&self, py: Python<'_>, class_name: &str) -> PyResult<Vec<String>> {
        let mut info = vec![class_name.to_owned()];
        if self.is_cancelled() {
            info.push("cancelled".into());
        }
        if let Some(src) = self.callback_source(py)? {
            info.push(src);
        }
        if let Some(tb) = &self.source_traceback {
            let tb = tb.bind(py);
            if let Ok(n) = tb.len() {
                if n > 0 {
                    let frame = tb.get_item(n - 1)?;
                    let file: String = frame.get_item(0)?.str()?.extract()?;
                    let line: String = frame.get_item(1)?.str()?.extract()?;
                    info.push(format!("created at {file}:{line}"));
                }
            }
        }
        Ok(info)
    }
}

#[pymethods]
impl Handle {
    // A handle's callback is often a bound method of an object that references the
    // handle back (a transport, the loop): the collector must see through it.
    // Declared so PyO3 makes Handle a GC type; `install_slots` replaces the slot
    // with `traverse` at import, so this body never runs.
    fn __traverse__(&self, _visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        Ok(())
    }

    fn __clear__(&self) {
        // Called by the collector with the GIL held.
        let dropped = Python::attach(|py| self.callback.with(py, Option::take));
        drop(dropped);
    }

    /// Cancels the callback. Does nothing if it already ran or was cancelled.
    fn cancel(&self, py: Python<'_>) {
        self.cancel_inner(py);
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.with(py, |cb| cb.as_ref().map(|cb| cb.func.clone_ref(py)))
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        let args = self.callback.with(py, |cb| cb.as_ref().map(|cb| cb.args.clone_ref(py)))?;
        Some(args.to_tuple(py))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().name()?.to_string();
        Ok(format!("<{}>", slf.get().repr_parts(slf.py(), &name)?.join(" ")))
    }
}

/// A callback scheduled for a time (`call_later`, `call_at`).
#[pyclass(frozen, extends = Handle, module = "glassloop._core", name = "TimerHandle")]
pub struct TimerHandle {
    when: f64,
    /// True while the handle sits in the loop's timer heap.
    scheduled: AtomicBool,
    /// The heap's count of cancelled entries, so it can compact itself.
    heap_cancelled: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new_pair(handle: Handle, when: f64, heap_cancelled: Arc<AtomicUsize>) -> PyClassInitializer<Self> {
        PyClassInitializer::from(handle).add_subclass(TimerHandle {
            when,
            scheduled: AtomicBool::new(true),
            heap_cancelled,
        })
    }

    #[inline]
    pub fn when_secs(&self) -> f64 {
        self.when
    }

    /// Called by the heap when it lets go of the handle.
    #[inline]
    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    /// Cancels the timer; the loop's heap drops cancelled timers lazily (and in
    /// bulk once they are the majority), so cancelling is O(1).
    fn cancel(slf: &Bound<'_, Self>) {
        let this = slf.get();
        if slf.as_super().get().cancel_inner(slf.py()) && this.scheduled.load(Ordering::Relaxed) {
            this.heap_cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The absolute time (`loop.time()` clock) the callback is scheduled for.
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn __hash__(&self) -> u64 {
        // asyncio hashes timer handles by `when`: equal handles must hash equally.
        self.when.to_bits()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || same_timer(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || same_timer(slf, other)?,
            CompareOp::Eq => same_timer(slf, other)?,
            CompareOp::Ne => !same_timer(slf, other)?,
        };
        Ok(pyo3::types::PyBool::new(py, result).to_owned().into_any().unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let name = slf.get_type().name()?.to_string();
        let mut parts = slf.as_super().get().repr_parts(py, &name)?;
        parts.insert(1, format!("when={}", pyo3::types::PyFloat::new(py, slf.get().when).repr()?));
        Ok(format!("<{}>", parts.join(" ")))
    }
}

/// asyncio's TimerHandle equality: same time, callback, arguments and state.
fn same_timer(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    if a.get().when != b.get().when {
        return Ok(false);
    }
    let (ha, hb) = (a.as_super(), b.as_super());
    if ha.get().is_cancelled() != hb.get().is_cancelled() {
        return Ok(false);
    }
    let cb_a = Handle::_callback(ha.get(), a.py());
    let cb_b = Handle::_callback(hb.get(), a.py());
    let args_a = Handle::_args(ha.get(), a.py()).map(Bound::unbind);
    let args_b = Handle::_args(hb.get(), a.py()).map(Bound::unbind);
    let eq = |x: Option<Bound<'_, PyAny>>, y: Option<Bound<'_, PyAny>>| -> PyResult<bool> {
        match (x, y) {
            (None, None) => Ok(true),
            (Some(x), Some(y)) => x.eq(y),
            _ => Ok(false),
        }
    };
    let py = a.py();
    Ok(eq(cb_a.map(|c| c.into_bound(py)), cb_b.map(|c| c.into_bound(py)))?
        && eq(args_a.map(|c| c.into_bound(py).into_any()), args_b.map(|c| c.into_bound(py).into_any()))?)
}

// A `call_soon` handle is kept out of the collector's lists while it waits in the
// ready queue. A burst of a million callbacks would otherwise put a million
// objects in every collection's walk for nothing: while the loop holds a handle it
// is reachable, so a collection can never free it. The loop visits what such a
// handle references as its own when it is the handle's only owner (refcount 1;
// see `visit_pending`), so an unclosed loop dropped in a cycle with its pending
// callbacks is still collected; a queued handle someone else holds too is tracked
// again when a full collection starts (`LoopCore::_track_shared_handles`). When
// the loop lets go of a handle someone else still holds, the handle is tracked
// again (`Taken`), as asyncio's always is.

//
// Contexts. `call_soon` without `context=` copies the current context for each
// handle (as asyncio does), and a copy is itself a tracked object: a burst of a
// million callbacks is a million contexts for every full collection to walk. When
// the ready queue holds a backlog, a copy only the queued handle references goes
// out of the collector's lists with its handle, and the handle's visit walks what
// the context references in its place (`visit_context`). (Without a backlog the
// few queued contexts cost the collector little, and untracking them would cost
// each callback of a chain.) The context is tracked again whenever someone else
// may reference it: when its handle is tracked again, when it is handed out
// (`get_context()`, `_context`), before a full collection if someone else got
// hold of it (`gc.get_referents`), and when its handle is freed (CPython frees a
// context assuming it is tracked: `context_tp_dealloc` unlinks it unchecked).

/// Ready-queue (or timer-heap) length from which a queued handle's context is
/// untracked too.
pub const CONTEXT_BACKLOG: usize = 64;

/// Takes a handle the loop is queueing out of the collector's lists, and with a
/// `backlog`, its context too (see [`untrack_context`]).
#[inline]
pub fn untrack_pending(handle: &Bound<'_, Handle>, backlog: bool) {
    // SAFETY: GIL held; a live instance of a GC type, tracked since its allocation.
    unsafe { ffi::PyObject_GC_UnTrack(handle.as_ptr().cast()) }
    if backlog {
        untrack_context(handle.get());
    }
}

/// Takes the context of a handle the loop is queueing (or putting in its timer
/// heap) out of the collector's lists, if the handle is its only owner.
#[inline]
pub fn untrack_context(handle: &Handle) {
    let ctx = handle.context.as_ptr();
    // SAFETY: GIL held by every caller; the handle keeps `ctx` alive. A Context is
    // a GC type; only a tracked one is untracked.
    unsafe {
        if ffi::PyContext_CheckExact(ctx) != 0 && ffi::Py_REFCNT(ctx) == 1 && ffi::PyObject_GC_IsTracked(ctx) != 0 {
            ffi::PyObject_GC_UnTrack(ctx.cast());
            handle.context.untracked.store(true, Ordering::Relaxed);
        }
    }
}

/// Before a full collection: a queued handle's context that someone else got
/// hold of goes back under the collector's watch.
pub fn track_context_if_shared(handle: &Bound<'_, Handle>) {
    let this = handle.get();
    // SAFETY: GIL held (a Bound); the handle keeps the context alive.
    if unsafe { ffi::Py_REFCNT(this.context.as_ptr()) } > 1 {
        this.context.track();
    }
}

/// The visit of a handle's context: the context itself if tracked; else, when the
/// handle is its only owner, what it references (as if the handle held those
/// directly); else nothing, which keeps what it references alive until a full
/// collection (`LoopCore::_track_shared_handles` tracks it first).
///
/// # Safety
/// GIL held, during a collector's traverse.
unsafe fn visit_context(handle: &Handle, visit: ffi::visitproc, arg: *mut std::os::raw::c_void) -> c_int {
    let ctx = handle.context.as_ptr();
    unsafe {
        if !handle.context.untracked.load(Ordering::Relaxed) {
            visit(ctx, arg)
        } else if ffi::Py_REFCNT(ctx) == 1 {
            match (*ffi::Py_TYPE(ctx)).tp_traverse {
                Some(traverse_context) => traverse_context(ctx, visit, arg),
                None => 0,
            }
        } else {
            0
        }
    }
}

/// PyO3's visitor behind a raw `visitproc`, and the error that stopped it.
struct ThroughPyVisit<'a, 'v> {
    visit: &'a pyo3::PyVisit<'v>,
    stopped: Option<pyo3::PyTraverseError>,
}

unsafe extern "C" fn through_pyvisit(obj: *mut ffi::PyObject, arg: *mut std::os::raw::c_void) -> c_int {
    // SAFETY: `arg` is the `ThroughPyVisit` of `Handle::visit_contents`, alive for
    // the traverse; `obj` is a live object the traverse visits, borrowed (the
    // ManuallyDrop leaves its reference count alone).
    unsafe {
        let through = &mut *arg.cast::<ThroughPyVisit<'_, '_>>();
        let obj = std::mem::ManuallyDrop::new(Bound::from_owned_ptr(Python::assume_attached(), obj).unbind());
        match through.visit.call(&*obj) {
            Ok(()) => 0,
            Err(e) => {
                through.stopped = Some(e);
                1
            }
        }
    }
}

/// A handle the loop took off its ready queue. Dropping it drops the loop's
/// reference, and a handle still held elsewhere goes back under the collector's
/// watch.
pub struct Taken<'py>(pub Bound<'py, Handle>);

impl Drop for Taken<'_> {
    #[inline]
    fn drop(&mut self) {
        track_if_shared(&self.0);
    }
}

/// Puts `handle` back under the collector's watch if anyone but the loop holds it.
#[inline]
pub fn track_if_shared(handle: &Bound<'_, Handle>) {
    let ptr = handle.as_ptr();
    // SAFETY: GIL held (a Bound), live object. Tracking an object twice is a
    // fatal error, hence the check: timers were never untracked.
    unsafe {
        if ffi::Py_REFCNT(ptr) > 1 && ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
            handle.get().context.track();
        }
    }
}

/// The loop's visit of a handle in its ready queue: the handle itself if the
/// collector tracks it, else its contents when the loop is its only owner.
pub fn visit_pending(handle: &Py<Handle>, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
    let ptr = handle.as_ptr();
    // SAFETY: the collector runs with the GIL held and no Python code runs while
    // it traverses, so the reference count is stable.
    let (tracked, refcnt) = unsafe { (ffi::PyObject_GC_IsTracked(ptr) != 0, ffi::Py_REFCNT(ptr)) };
    if tracked {
        visit.call(handle)
    } else if refcnt == 1 {
        Handle::visit_contents(handle, visit)
    } else {
        // Held elsewhere too: a full collection tracks it first
        // (`LoopCore::_track_shared_handles`); a younger one leaves it be.
        Ok(())
    }
}

/// The garbage collector's visit of a `Handle` or `TimerHandle` (installed by
/// [`install_slots`]). Every collection of a handle's generation visits it,
/// and PyO3's generic wrapper (a panic trap, thread-local guards, a walk up the
/// type chain for a base traverse) costs several times the four visits; this
/// does only the visits. `TimerHandle` adds no Python references.
unsafe extern "C" fn traverse(obj: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut std::os::raw::c_void) -> c_int {
    // SAFETY: the collector runs with the GIL held and passes a live instance of
    // one of the two types (or a Python subclass, laid out as its base). Nothing
    // here calls into Python; the token only locates the Rust struct.
    let bound = unsafe { pyo3::Borrowed::from_ptr(Python::assume_attached(), obj).cast_unchecked::<Handle>() };
    let handle: &Handle = bound.get();
    let visit_one = |object: *mut ffi::PyObject| -> c_int {
        // SAFETY: `object` is a live reference held by the handle.
        if object.is_null() { 0 } else { unsafe { visit(object, arg) } }
    };
    let callback = handle.callback.try_peek(|cb| match cb {
        Some(cb) => {
            let args = match &cb.args {
                Args::Zero => std::ptr::null_mut(),
                Args::One(a) => a.as_ptr(),
                Args::Many(t) => t.as_ptr(),
            };
            match visit_one(cb.func.as_ptr()) {
                0 => visit_one(args),
                stop => stop,
            }
        }
        None => 0,
    });
    match callback.unwrap_or(0) {
        0 => {}
        stop => return stop,
    }
    // SAFETY: as above; the context is a live reference held by the handle.
    match unsafe { visit_context(handle, visit, arg) } {
        0 => visit_one(handle.source_traceback.as_ref().map_or(std::ptr::null_mut(), |tb| tb.as_ptr())),
        stop => stop,
    }
}

/// Freed `Handle` objects kept for reuse: `call_soon` makes one per callback and
/// the loop frees it right after running it, so the same few blocks of memory
/// serve a whole callback chain without malloc, free and zeroing.
struct FreeList {
    objects: std::cell::UnsafeCell<Vec<*mut ffi::PyObject>>,
}

/// Up to this many freed handles are kept (a few tens of KiB).
const FREE_LIST_LEN: usize = 256;

// SAFETY: only `alloc` and `dealloc` touch it, which CPython calls with the GIL
// held (the module is GIL-bound), and neither calls into Python while using it.
unsafe impl Sync for FreeList {}

static FREE_HANDLES: FreeList = FreeList { objects: std::cell::UnsafeCell::new(Vec::new()) };
static HANDLE_TYPE: std::sync::atomic::AtomicPtr<ffi::PyTypeObject> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// `tp_alloc` of `Handle`: a freed handle's memory when there is one, as
/// `PyType_GenericAlloc` would hand it out (zeroed, typed, referenced once,
/// tracked by the collector).
unsafe extern "C" fn alloc(ty: *mut ffi::PyTypeObject, nitems: ffi::Py_ssize_t) -> *mut ffi::PyObject {
    // SAFETY: GIL held (CPython calls tp_alloc with it); see FreeList.
    unsafe {
        if nitems == 0 && ty == HANDLE_TYPE.load(Ordering::Relaxed) {
            if let Some(obj) = (*FREE_HANDLES.objects.get()).pop() {
                let header = std::mem::size_of::<ffi::PyObject>();
                std::ptr::write_bytes(obj.cast::<u8>().add(header), 0, (*ty).tp_basicsize as usize - header);
                ffi::PyObject_Init(obj, ty);
                ffi::PyObject_GC_Track(obj.cast());
                return obj;
            }
            return alloc_uncounted(ty);
        }
        ffi::PyType_GenericAlloc(ty, nitems)
    }
}

/// Size of the collector's header (CPython's `PyGC_Head`, two words since 3.8)
/// in front of a GC object with neither managed dict nor managed weakrefs, such as
/// an exact `Handle`.
const GC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// A fresh exact `Handle`, laid out as `PyType_GenericAlloc` lays it out, but not
/// counted toward the collector's next young collection. CPython counts each GC
/// allocation as possible new garbage, and a backlog of handles (100,000 tasks
/// created at once, a burst of `call_soon`) would set off collection after
/// collection, and earlier full ones, that cannot free a queued handle: the loop
/// holds it, untracked (`untrack_pending`). Freed by [`free_uncounted`].
///
/// # Safety
/// GIL held; `ty` is the exact `Handle` type.
unsafe fn alloc_uncounted(ty: *mut ffi::PyTypeObject) -> *mut ffi::PyObject {
    unsafe {
        let size = GC_HEADER + (*ty).tp_basicsize as usize;
        let mem = ffi::PyObject_Malloc(size).cast::<u8>();
        if mem.is_null() {
            return ffi::PyErr_NoMemory();
        }
        std::ptr::write_bytes(mem, 0, size);
        let obj = mem.add(GC_HEADER).cast::<ffi::PyObject>();
        ffi::PyObject_Init(obj, ty);
        ffi::PyObject_GC_Track(obj.cast());
        obj
    }
}

/// Frees an exact `Handle`'s memory, untracked, without the collector's count
/// (which `alloc_uncounted` never raised).
///
/// # Safety
/// GIL held; `obj` came from `alloc_uncounted` or `PyType_GenericAlloc` for the
/// exact `Handle` type (the same layout) and is untracked.
unsafe fn free_uncounted(obj: *mut ffi::PyObject) {
    unsafe { ffi::PyObject_Free(obj.cast::<u8>().sub(GC_HEADER).cast()) }
}

/// `tp_dealloc` of `Handle` (and of Python subclasses, through their
/// `subtype_dealloc`): drops the Rust value, then keeps the memory of an exact
/// `Handle` for [`alloc`] or frees it.
unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, once, when no reference
    // remains. The value's address is found through PyO3 (`get`), then dropped
    // through a pointer derived from `obj` itself. Dropping it decrefs Python
    // objects, whose finalizers may run Python: the free list is not in use then.
    unsafe {
        ffi::PyObject_GC_UnTrack(obj.cast());
        let ty = ffi::Py_TYPE(obj);
        let offset = {
            let bound = pyo3::Borrowed::from_ptr(Python::assume_attached(), obj).cast_unchecked::<Handle>();
            let handle: &Handle = bound.get();
            (handle as *const Handle).cast::<u8>().offset_from(obj.cast::<u8>())
        };
        // Moved out, then dropped by plain decrefs (see Args::release).
        let py = Python::assume_attached();
        let Handle { callback, context, cancelled: _, source_traceback } =
            std::ptr::read(obj.cast::<u8>().offset(offset).cast::<Handle>());
        if let Some(Callback { func, args }) = callback.into_inner() {
            drop(func.into_bound(py));
            args.release(py);
        }
        drop(context);
        drop(source_traceback.map(|tb| tb.into_bound(py)));
        let free_list = &mut *FREE_HANDLES.objects.get();
        if ty != HANDLE_TYPE.load(Ordering::Relaxed) {
            if let Some(free) = (*ty).tp_free {
                free(obj.cast());
            }
        } else if free_list.len() < FREE_LIST_LEN {
            free_list.push(obj);
        } else {
            free_uncounted(obj);
        }
        // Instances of heap types hold a reference to their type (PyObject_Init took it).
        ffi::Py_DECREF(ty.cast());
    }
}

/// Replaces PyO3's slots where handles are made, freed and collected once per
/// callback: `tp_traverse` of both types ([`traverse`]), `tp_alloc` and
/// `tp_dealloc` of `Handle` ([`alloc`], [`dealloc`]). `TimerHandle` keeps PyO3's
/// allocation (timers live long; few would be reused).
pub fn install_slots(py: Python<'_>) {
    use pyo3::PyTypeInfo;
    let handle = Handle::type_object_raw(py);
    HANDLE_TYPE.store(handle, Ordering::Relaxed);
    // SAFETY: our own heap types, created just before at module import with no
    // instance yet; CPython reads these slots on every use.
    unsafe {
        (*handle).tp_traverse = Some(traverse);
        (*handle).tp_alloc = Some(alloc);
        (*handle).tp_dealloc = Some(dealloc);
        (*TimerHandle::type_object_raw(py)).tp_traverse = Some(traverse);
    }
}

/// Rejects what asyncio rejects before scheduling a callback: coroutines and
/// non-callables, with asyncio's messages.
pub fn check_callback(py: Python<'_>, cb: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    let ptr = cb.as_ptr();
    // SAFETY: type checks on a live object with the GIL held.
    unsafe {
        // Builtins (a Task's step and wakeup, a Future's methods) are never coroutine
        // functions: skip the Python-level checks for the commonest callbacks.
        if ffi::PyCFunction_Check(ptr) != 0 || is_task_step_wrapper(ptr) {
            return Ok(());
        }
        if ffi::PyFunction_Check(ptr) != 0 {
            return check_function_flags(py, cb, method);
        }
        if ffi::Py_TYPE(ptr) == std::ptr::addr_of_mut!(PyMethod_Type) {
            let func = PyMethod_Function(ptr);
            if ffi::PyFunction_Check(func) != 0 {
                return check_function_flags(py, &Bound::from_borrowed_ptr(py, func), method);
            }
        }
    }
    if stdlib::iscoroutine(py)?.call1((cb,))?.is_truthy()?
        || stdlib::iscoroutinefunction(py)?.call1((cb,))?.is_truthy()?
    {
        return Err(PyTypeError::new_err(format!("coroutines cannot be used with {method}()")));
    }
    if !cb.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {method}(), got {}",
            cb.repr()?
        )));
    }
    Ok(())
}

const CO_COROUTINE: i64 = 0x0080;

fn check_function_flags(py: Python<'_>, func: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    let flags: i64 = func.getattr(pyo3::intern!(py, "__code__"))?.getattr(pyo3::intern!(py, "co_flags"))?.extract()?;
    if flags & CO_COROUTINE != 0 {
        return Err(PyTypeError::new_err(format!("coroutines cannot be used with {method}()")));
    }
    Ok(())
}

/// CPython's C `Task` schedules its steps through a private `TaskStepMethWrapper`
/// type; we recognise it by name once and then by pointer.
pub(crate) unsafe fn is_task_step_wrapper(obj: *mut ffi::PyObject) -> bool {
    use std::sync::atomic::AtomicPtr;
    static STEP_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
    let tp = ffi::Py_TYPE(obj);
    let known = STEP_TYPE.load(Ordering::Relaxed);
    if !known.is_null() {
        return tp == known;
    }
    // "TaskStepMethWrapper" on 3.11, "_asyncio.TaskStepMethWrapper" from 3.12.
    let name = std::ffi::CStr::from_ptr((*tp).tp_name).to_bytes();
    if name == b"TaskStepMethWrapper" || name == b"_asyncio.TaskStepMethWrapper" {
        STEP_TYPE.store(tp, Ordering::Relaxed);
        return true;
    }
    false
}

/// One level of unwrapping towards the function a callable really calls: a bound
/// method's function, a `functools.partial`'s `func`.
pub fn unwrap_callable<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let ptr = obj.as_ptr();
    // SAFETY: type check and borrowed read on a live object, GIL held.
    unsafe {
        if ffi::Py_TYPE(ptr) == std::ptr::addr_of_mut!(PyMethod_Type) {
            return Some(Bound::from_borrowed_ptr(obj.py(), PyMethod_Function(ptr)));
        }
    }
    let ty = obj.get_type();
    if ty.qualname().ok()?.to_string() == "partial" {
        return obj.getattr(pyo3::intern!(obj.py(), "func")).ok();
    }
    None
}
