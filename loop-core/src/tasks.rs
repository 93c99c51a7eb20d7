//! The task table: every task made by `loop.create_task` (and so by any task
//! factory, `TaskGroup`, `ensure_future`...), with its timings.
//!
//! Steps are attributed without wrapping user code: a task's step callback is
//! CPython's `TaskStepMethWrapper` (or the `task_wakeup` builtin) whose
//! `__self__` is the task, so the loop knows which task each callback ran for.
//!
//! Bounds: one entry per live task (entries of tasks collected while pending are
//! pruned through their weak reference), and the last `FINISHED_KEPT` finished tasks
//! (which hold no reference to their task).
//!
//! The table never keeps a task alive: it holds a weak reference, except before
//! a task's first step when that step is verified to sit in the loop's ready
//! queue (see `Hold::FirstStep`).

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


/// What the table knows of a task, live or finished.
pub struct TaskEntry {
    pub id: u64,
    /// The coroutine's code object: the task's callback site.
    pub code: Option<Py<PyAny>>,
    pub parent: Option<u64>,
    pub created_unix_ms: u64,
    pub steps: u64,
    pub busy_ns: u64,
    pub longest_step_ns: u64,
    pub last_delay_ns: u64,
    /// The application's OpenTelemetry span current at creation (see otel.rs);
    /// boxed: most tasks have none, and they pay one word for it.
    pub app_span: Option<Box<crate::otel::AppSpan>>,
}

/// A live task's slot: its address (the table's key) and how to reach it.
pub struct LiveTask {
    pub task: usize,
    pub hold: Hold,
    pub entry: TaskEntry,
}

/// How the table reaches a live task without keeping it alive.
pub enum Hold {
    /// The task, while its first step waits in the loop's ready queue: the queue
    /// holds the task until that step runs anyway, so this reference changes no
    /// lifetime, and a task that finishes in its first step (most short ones)
    /// never needs a weak reference. Replaced when the step has run.
    FirstStep(Py<PyAny>),
    /// `weakref.ref(task)`, untracked by the garbage collector (see `untracked_weakref`).
    Weak(Py<PyAny>),
}

impl Hold {
    /// The task, if it is still alive.
    pub fn task<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        match self {
            Hold::FirstStep(task) => Some(task.bind(py).clone()),
            Hold::Weak(weak) => referent(py, weak),
        }
    }

    fn is_gone(&self, py: Python<'_>) -> bool {
        match self {
            Hold::FirstStep(_) => false,
            Hold::Weak(weak) => referent(py, weak).is_none(),
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Hold {
        match self {
            Hold::FirstStep(t) => Hold::FirstStep(t.clone_ref(py)),
            Hold::Weak(w) => Hold::Weak(w.clone_ref(py)),
        }
    }
}

/// A finished task: its entry and how it ended (afterwards the task may be gone).
pub struct FinishedTask {
    pub entry: TaskEntry,
    pub finished_unix_ms: u64,
    pub state: TaskState,
    pub exception_type: Option<String>,
    pub name: Option<String>,
}

/// Where a live task sits in the table, valid until the task finishes or is pruned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Slot(u32);

/// Live tasks sit in a slab of slots, in the order they were made (a freed slot is
/// reused first; an empty table starts over at slot 0), and an index maps a task's
/// address to its slot. Tasks made together are usually stepped in that order, so
/// the slot after (or before) the last one stepped is tried before the index: a
/// burst of tasks walks the slab instead of hopping around a big hash table.
///
/// The index is cleaned lazily: a finished task's entry stays until its address is
/// reused or the next prune, and every lookup checks the slot still holds that
/// address. (Removing it at once would touch a cold part of the index per task.)
#[derive(Default)]
pub struct Tasks {
    slots: Vec<Option<LiveTask>>,
    free: Vec<u32>,
    index: HashMap<usize, u32>,
    /// The slot of the last task stepped.
    last_stepped: u32,
    finished: VecDeque<FinishedTask>,
    next_id: u64,
    pub created_total: u64,
    pub finished_total: u64,
    /// Index size after the last prune; the next prune runs when it doubles.
    prune_at: usize,
}

impl Tasks {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A live task's slot and entry.
    #[inline]
    pub fn get(&self, task: usize) -> Option<(Slot, &TaskEntry)> {
        let slot = *self.index.get(&task)?;
        self.holding(slot, task).map(|l| (Slot(slot), &l.entry))
    }

    /// The live task in `slot` if it is `task`.
    #[inline]
    fn holding(&self, slot: u32, task: usize) -> Option<&LiveTask> {
        self.slots.get(slot as usize)?.as_ref().filter(|l| l.task == task)
    }

    /// `get` for a task about to step: tries the slots next to the last one
    /// stepped before the index.
    #[inline]
    pub fn get_stepping(&mut self, task: usize) -> Option<(Slot, &TaskEntry)> {
        let last = self.last_stepped;
        let near = [last.wrapping_add(1), last.wrapping_sub(1)];
        let slot = match near.into_iter().find(|&s| self.holding(s, task).is_some()) {
            Some(slot) => slot,
            None => self.get(task)?.0 .0,
        };
        self.last_stepped = slot;
        self.slots[slot as usize].as_ref().map(|l| (Slot(slot), &l.entry))
    }

    /// The entry in `slot` if it still holds `task`.
    #[inline]
    fn at_mut(&mut self, slot: Slot, task: usize) -> Option<&mut LiveTask> {
        self.slots.get_mut(slot.0 as usize)?.as_mut().filter(|l| l.task == task)
    }

    pub fn id_of(&self, task: usize) -> Option<u64> {
        self.get(task).map(|(_, e)| e.id)
    }

    pub fn code_of(&self, task: usize) -> Option<&Py<PyAny>> {
        self.get(task).and_then(|(_, e)| e.code.as_ref())
    }

    pub fn live_len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Adds a task; returns entries that had to go (a reused address, the pruned).
    pub fn insert(&mut self, task: usize, hold: Hold, entry: TaskEntry, py: Python<'_>) -> Vec<LiveTask> {
        self.created_total += 1;
        let mut gone = Vec::new();
        // An address already in the table is a task collected while pending whose
        // memory a new task got before the prune noticed.
        if let Some(old) = self.index.get(&task).copied().filter(|&s| self.holding(s, task).is_some()) {
            gone.extend(self.release(old));
        }
        let live = LiveTask { task, hold, entry };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(live);
                slot
            }
            None => {
                self.slots.push(Some(live));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(task, slot);
        if self.index.len() >= self.prune_at.max(1024) {
            gone.extend(self.prune(py));
            self.prune_at = self.index.len() * 2;
        }
        gone
    }

    /// Empties a slot for reuse (its index entry goes lazily, see `Tasks`).
    fn release(&mut self, slot: u32) -> Option<LiveTask> {
        let live = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        if self.free.len() == self.slots.len() {
            // No task is live: start over at slot 0, so the next burst is in order.
            self.slots.clear();
            self.free.clear();
        }
        Some(live)
    }

    /// Drops entries whose task was garbage-collected without finishing, and the
    /// index entries of tasks gone.
    pub fn prune(&mut self, py: Python<'_>) -> Vec<LiveTask> {
        let dead: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| {
                self.slots[i as usize].as_ref().is_some_and(|l| l.hold.is_gone(py))
            })
            .collect();
        let gone: Vec<LiveTask> = dead.into_iter().filter_map(|i| self.release(i)).collect();
        let slots = &self.slots;
        self.index.retain(|&task, &mut slot| slots.get(slot as usize).is_some_and(|l| l.as_ref().is_some_and(|l| l.task == task)));
        gone
    }

    /// Records one step of the task in `slot`.
    #[inline]
    pub fn step(&mut self, slot: Slot, task: usize, ns: u64, delay_ns: u64) {
        if let Some(l) = self.at_mut(slot, task) {
            let e = &mut l.entry;
            e.steps += 1;
            e.busy_ns += ns;
            e.longest_step_ns = e.longest_step_ns.max(ns);
            e.last_delay_ns = delay_ns;
        }
    }

    /// Moves a finished task to the finished ring; returns what left the table
    /// (the task's `Hold`, and an entry that fell off the ring).
    pub fn finish(
        &mut self,
        slot: Slot,
        task: usize,
        state: TaskState,
        exception_type: Option<String>,
        name: Option<String>,
        now_ms: u64,
    ) -> Option<(Hold, Option<FinishedTask>)> {
        self.at_mut(slot, task)?;
        let LiveTask { hold, entry, .. } = self.release(slot.0)?;
        self.finished_total += 1;
        self.finished.push_back(FinishedTask { entry, finished_unix_ms: now_ms, state, exception_type, name });
        let fell = if self.finished.len() > FINISHED_KEPT { self.finished.pop_front() } else { None };
        Some((hold, fell))
    }

    /// Takes a live task out of the table (it is no longer followed).
    pub fn forget(&mut self, slot: Slot, task: usize) -> Option<LiveTask> {
        self.at_mut(slot, task)?;
        self.release(slot.0)
    }

    /// Whether the task in `slot` is still held for its first step.
    pub fn held_for_first_step(&self, slot: Slot, task: usize) -> bool {
        self.holding(slot.0, task).is_some_and(|l| matches!(l.hold, Hold::FirstStep(_)))
    }

    /// Replaces the task's hold (after its first step, by a weak reference);
    /// returns the old one, or `hold` back if the slot no longer holds the task.
    pub fn set_hold(&mut self, slot: Slot, task: usize, hold: Hold) -> Hold {
        match self.at_mut(slot, task) {
            Some(l) => std::mem::replace(&mut l.hold, hold),
            None => hold,
        }
    }

    /// The tasks held for their first step, for the garbage collector.
    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for l in self.live() {
            if let Hold::FirstStep(task) = &l.hold {
                visit.call(task)?;
            }
        }
        Ok(())
    }

    pub fn live(&self) -> impl Iterator<Item = &LiveTask> {
        self.slots.iter().flatten()
    }

    pub fn finished(&self) -> impl Iterator<Item = &FinishedTask> {
        self.finished.iter()
    }

    /// Everything the table holds, for dropping when the loop closes.
    pub fn clear(&mut self) -> (Vec<LiveTask>, Vec<FinishedTask>) {
        self.index.clear();
        self.free.clear();
        self.prune_at = 0;
        let live = self.slots.drain(..).flatten().collect();
        (live, self.finished.drain(..).collect())
    }
}

/// The referent of a weak reference the loop keeps (a task's, a server's), if
/// still alive: a new reference, as `PyWeakref_GetRef` gives (which replaces
/// `PyWeakref_GetObject`, deprecated in 3.13).
pub fn referent<'py>(py: Python<'py>, weak: &Py<PyAny>) -> Option<Bound<'py, PyAny>> {
    use pyo3::types::{PyWeakref, PyWeakrefMethods};
    weak.bind(py).cast::<PyWeakref>().ok()?.upgrade()
}

/// `weakref.ref(task)`, untracked by the garbage collector. A weak reference
/// without a callback holds no strong reference, so it can be part of no cycle;
/// tracked, each would add one object per live task to every collection's walk
/// and to the count that triggers full collections.
pub fn untracked_weakref(task: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = task.py();
    // SAFETY: GIL held; PyWeakref_NewRef returns a new reference or NULL with an
    // error set. Untracking an object that holds no strong references is sound,
    // and PyObject_GC_UnTrack does nothing to one already untracked (a shared ref
    // we made before).
    unsafe {
        let weak = Bound::from_owned_ptr_or_err(py, ffi::PyWeakref_NewRef(task.as_ptr(), std::ptr::null_mut()))?;
        ffi::PyObject_GC_UnTrack(weak.as_ptr().cast());
        Ok(weak.unbind())
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
