//! `GilCell`: loop state that Python callers on any thread may touch, made safe by the GIL.
//!
//! The module is declared `gil_used = true`, so at most one thread runs Python (and
//! therefore any of our `#[pymethods]`) at a time. Every access takes a `Python<'_>`
//! token as proof that the caller holds the GIL, and the borrow lasts only for the
//! closure. The closures passed to [`GilCell::with`] must not call into Python — not
//! even by dropping a Python object, whose `__del__` could re-enter the loop — so the
//! GIL cannot be released, and no other thread can observe the value mid-update.
//! The inner `RefCell` turns a violation of that rule into a panic, never into
//! undefined behaviour.

use pyo3::Python;
use std::cell::RefCell;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: see the module comment: all access is serialized by the GIL (proved by
// the `Python` token) and re-entrancy is caught by the `RefCell`.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    /// Read access for the garbage collector's traversal, which runs with the GIL
    /// held but without a `Python` token; `None` if the state is borrowed (the
    /// collector then sees fewer references, which only delays collection).
    pub fn try_peek<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.0.try_borrow().ok().map(|v| f(&v))
    }

    /// The value, when its owner is being dropped.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }

    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}
