//! The task table: every task made by `loop.create_task` (and so by any task
//! factory, `TaskGroup`, `ensure_future`...), with its timings.
//!
//! Steps are attributed without wrapping user code: a task's step callback is
//! CPython's `TaskStepMethWrapper` (or the `task_wakeup` builtin) whose
//! `__self__` is the task, so the loop knows which task each callback ran for.
//!
//! Bounds: one entry per live task (entries of tasks collected while pending are
//! pruned through their weak reference), and the last `FINISHED_KEPT` finished tasks.

use crate::handles::is_task_step_wrapper;
use pyo3::ffi;
use pyo3::prelude::*;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

pub const FINISHED_KEPT: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskState {
    Pending,
    Done,
    Cancelled,
    Failed,
}


pub struct TaskEntry {
    pub id: u64,
    /// `weakref.ref(task)`: the table must not keep tasks alive.
    pub weak: Py<PyAny>,
    /// The coroutine's code object: the task's callback site.
    pub code: Option<Py<PyAny>>,
    pub parent: Option<u64>,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub state: TaskState,
    pub exception_type: Option<String>,
    /// Filled when the task finishes (afterwards the task may be gone).
    pub name: Option<String>,
    pub steps: u64,
    pub busy_ns: u64,
    pub longest_step_ns: u64,
    pub last_delay_ns: u64,
    /// The application's OpenTelemetry span current at creation (see otel.rs);
    /// boxed: most tasks have none, and they pay one word for it.
    pub app_span: Option<Box<crate::otel::AppSpan>>,
}

#[derive(Default)]
pub struct Tasks {
    live: HashMap<usize, TaskEntry>,
    finished: VecDeque<TaskEntry>,
    next_id: u64,
    pub created_total: u64,
    pub finished_total: u64,
    /// Live-table size after the last prune; the next prune runs when it doubles.
    prune_at: usize,
}

impl Tasks {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    #[inline]
    pub fn get(&self, task: usize) -> Option<&TaskEntry> {
        self.live.get(&task)
    }

    pub fn id_of(&self, task: usize) -> Option<u64> {
        self.live.get(&task).map(|e| e.id)
    }

    pub fn code_of(&self, task: usize) -> Option<&Py<PyAny>> {
        self.live.get(&task).and_then(|e| e.code.as_ref())
    }

    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Adds a task; returns entries that had to go (a reused address, the pruned).
    pub fn insert(&mut self, task: usize, entry: TaskEntry, py: Python<'_>) -> Vec<TaskEntry> {
        self.created_total += 1;
        let mut gone: Vec<TaskEntry> = self.live.insert(task, entry).into_iter().collect();
        if self.live.len() >= self.prune_at.max(1024) {
            gone.extend(self.prune(py));
            self.prune_at = self.live.len() * 2;
        }
        gone
    }

    /// Drops entries whose task was garbage-collected without finishing.
    pub fn prune(&mut self, py: Python<'_>) -> Vec<TaskEntry> {
        let dead: Vec<usize> = self
            .live
            .iter()
            // SAFETY: reading a weakref's referent (borrowed) with the GIL held.
            .filter(|(_, e)| unsafe { ffi::PyWeakref_GetObject(e.weak.as_ptr()) } == unsafe { ffi::Py_None() })
            .map(|(k, _)| *k)
            .collect();
        let _ = py;
        dead.into_iter().filter_map(|k| self.live.remove(&k)).collect()
    }

    /// Records one step of a task; returns the task's id and site (its code's address).
    #[inline]
    pub fn step(&mut self, task: usize, ns: u64, delay_ns: u64) -> Option<(u64, Option<usize>)> {
        let e = self.live.get_mut(&task)?;
        e.steps += 1;
        e.busy_ns += ns;
        e.longest_step_ns = e.longest_step_ns.max(ns);
        e.last_delay_ns = delay_ns;
        Some((e.id, e.code.as_ref().map(|c| c.as_ptr() as usize)))
    }

    /// Moves a finished task to the finished ring; returns what fell off the ring.
    pub fn finish(&mut self, task: usize, state: TaskState, exception_type: Option<String>, name: Option<String>, now_ms: u64) -> Option<TaskEntry> {
        let mut e = self.live.remove(&task)?;
        self.finished_total += 1;
        e.state = state;
        e.exception_type = exception_type;
        e.name = name;
        e.finished_unix_ms = Some(now_ms);
        self.finished.push_back(e);
        if self.finished.len() > FINISHED_KEPT {
            self.finished.pop_front()
        } else {
            None
        }
    }

    pub fn live(&self) -> impl Iterator<Item = (&usize, &TaskEntry)> {
        self.live.iter()
    }

    pub fn finished(&self) -> impl Iterator<Item = &TaskEntry> {
        self.finished.iter()
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for e in self.live.values().chain(self.finished.iter()) {
            visit.call(&e.weak)?;
        }
        Ok(())
    }

    pub fn clear(&mut self) -> Vec<TaskEntry> {
        let mut all: Vec<TaskEntry> = self.live.drain().map(|(_, e)| e).collect();
        all.extend(self.finished.drain(..));
        all
    }
}

/// The object a callback may be a task step of: the `__self__` of a step wrapper
/// or of a builtin method (`task_wakeup`). The caller checks it against the table
/// (a builtin bound to a plain Future is no step).
#[inline]
pub fn step_owner(func: &Bound<'_, PyAny>) -> Option<usize> {
    let ptr = func.as_ptr();
    // SAFETY: type checks and a borrowed field read on a live object, GIL held.
    unsafe {
        if ffi::PyFunction_Check(ptr) != 0 {
            None // the commonest callback, and never a step
        } else if is_task_step_wrapper(ptr) {
            step_wrapper_task(func)
        } else if ffi::PyCFunction_Check(ptr) != 0 {
            Some(ffi::PyCFunction_GetSelf(ptr) as usize)
        } else {
            None
        }
    }
}

/// CPython's `TaskStepMethWrapper` (3.11 to 3.13): the object header, then the task.
#[repr(C)]
struct StepWrapper {
    ob_base: ffi::PyObject,
    task: *mut ffi::PyObject,
}

/// The task of a step wrapper. The struct is private to CPython, so its layout is
/// trusted only after the first wrapper's field matched its `__self__`; until
/// then, and if it ever differs, `__self__` (a C getter) is read.
fn step_wrapper_task(func: &Bound<'_, PyAny>) -> Option<usize> {
    use std::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const MATCHES: u8 = 1;
    const DIFFERS: u8 = 2;
    static LAYOUT: AtomicU8 = AtomicU8::new(UNKNOWN);
    // SAFETY: the caller checked `func` is a TaskStepMethWrapper, whose struct starts
    // with this layout (trusted only once verified below); reading a pointer field is harmless.
    let field = unsafe { (*(func.as_ptr() as *const StepWrapper)).task } as usize;
    let layout = LAYOUT.load(Ordering::Relaxed);
    if layout == MATCHES {
        return Some(field);
    }
    let attr = func.getattr(pyo3::intern!(func.py(), "__self__")).ok().map(|t| t.as_ptr() as usize);
    if layout == UNKNOWN {
        LAYOUT.store(if attr == Some(field) { MATCHES } else { DIFFERS }, Ordering::Relaxed);
    }
    attr
}

type CachedMethod = pyo3::sync::PyOnceLock<Option<(usize, Py<PyAny>)>>;

/// `task.<name>()`. For asyncio's own (C) Task, by the type's method descriptor,
/// found once: no attribute lookup on the instance per call.
fn task_method0<'py>(task: &Bound<'py, PyAny>, cell: &'static CachedMethod, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    let py = task.py();
    let method = cell.get_or_init(py, || {
        let ty = crate::stdlib::task_type(py).ok()?;
        Some((ty.as_ptr() as usize, ty.getattr(name).ok()?.unbind()))
    });
    match method {
        // SAFETY: GIL held; `task` is an instance of exactly the type the descriptor belongs to.
        Some((ty, method)) if task.get_type().as_ptr() as usize == *ty => unsafe {
            let args = [task.as_ptr()];
            Bound::from_owned_ptr_or_err(py, ffi::PyObject_Vectorcall(method.as_ptr(), args.as_ptr(), 1, std::ptr::null_mut()))
        },
        _ => task.call_method0(pyo3::types::PyString::intern(py, name)),
    }
}

fn is_true(result: PyResult<Bound<'_, PyAny>>) -> bool {
    match result {
        // SAFETY: comparing with the True singleton's address, GIL held.
        Ok(value) if value.as_ptr() == unsafe { ffi::Py_True() } => true,
        Ok(value) => value.is_truthy().unwrap_or(false),
        Err(_) => false,
    }
}

/// `task.done()` (false if it raises).
pub fn is_done(task: &Bound<'_, PyAny>) -> bool {
    static DONE: CachedMethod = CachedMethod::new();
    is_true(task_method0(task, &DONE, "done"))
}

/// `task.cancelled()` (false if it raises).
pub fn is_cancelled(task: &Bound<'_, PyAny>) -> bool {
    static CANCELLED: CachedMethod = CachedMethod::new();
    is_true(task_method0(task, &CANCELLED, "cancelled"))
}

/// `task.get_name()` as a string.
pub fn name_of(task: &Bound<'_, PyAny>) -> Option<String> {
    static GET_NAME: CachedMethod = CachedMethod::new();
    task_method0(task, &GET_NAME, "get_name").and_then(|n| n.extract::<String>()).ok()
}
