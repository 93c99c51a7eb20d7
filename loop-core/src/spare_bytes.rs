//! `SpareBytes`: a bytes object kept for the next read of the same size, instead
//! of being freed and allocated again.
//!
//! A read handed to Python is a new bytes object. Above glibc's tcache limit
//! (1,032 bytes: a 1 KiB read is 1,057 with the bytes header) malloc and free take
//! their slow path every time, and a 64 KiB one makes malloc trim the heap and
//! fault it back in. So a reader keeps the object it got back: one nothing else
//! references (the protocol did not keep its data, or it was never handed out)
//! is written again by the next read of that size. Each user has its own spare
//! per thread (a `thread_local!` of this type), so one kind of read does not
//! evict another's.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::cell::Cell;
use std::ops::RangeInclusive;

pub(crate) struct SpareBytes(Cell<Option<Py<PyBytes>>>);

impl SpareBytes {
    pub(crate) const fn new() -> Self {
        SpareBytes(Cell::new(None))
    }

    /// A bytes object of `n` bytes, of unspecified content, that only the caller
    /// references: the spare if it has that size, else a new one.
    pub(crate) fn take<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        self.take_within(py, n..=n, n)
    }

    /// The spare if its size is within `sizes`, else a new bytes object of `n`
    /// bytes; either way of unspecified content and referenced only by the caller.
    /// A spare of another size stays for a read of its own size.
    pub(crate) fn take_within<'py>(&self, py: Python<'py>, sizes: RangeInclusive<usize>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        // Taken out of the cell while in use: a read nested in this one (a signal
        // handler, say) finds no spare rather than this one.
        if let Some(spare) = self.0.take() {
            let spare = spare.into_bound(py);
            if sizes.contains(&spare.as_bytes().len()) {
                // SAFETY: `keep` made sure nothing else references the object, so we
                // may write it. Python may have hashed it while it had it, and the
                // hash is cached in the object; _PyBytes_Resize resets that cache only
                // when the size changes, so we reset it here.
                #[allow(deprecated)] // ob_shash: deprecated for C code since 3.11, still the cache
                unsafe {
                    (*spare.as_ptr().cast::<ffi::PyBytesObject>()).ob_shash = -1
                };
                return Ok(spare);
            }
            self.0.set(Some(spare.unbind()));
        }
        uninit(py, n)
    }

    /// A bytes object holding a copy of `data` (as `PyBytes::new`), in the spare if it fits.
    pub(crate) fn copy_of<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let obj = self.take(py, data.len())?;
        // SAFETY: `obj` has `data.len()` writable bytes and only we reference it (see `take`).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), data_ptr(&obj).cast::<u8>(), data.len()) };
        Ok(obj)
    }

    /// Keeps `obj` as the spare if the caller's reference is its only one, so no
    /// one can see the next read overwrite it; otherwise just drops the reference.
    pub(crate) fn keep(&self, obj: Bound<'_, PyBytes>) {
        // SAFETY: reading the reference count of a live object, with the GIL held.
        if unsafe { ffi::Py_REFCNT(obj.as_ptr()) } == 1 {
            // The old spare, if any, is freed (a bytes object runs no Python code).
            self.0.set(Some(obj.unbind()));
        }
    }
}

/// A new bytes object of `n` bytes of unspecified content, to be written before
/// anyone else sees it.
pub(crate) fn uninit(py: Python<'_>, n: usize) -> PyResult<Bound<'_, PyBytes>> {
    // SAFETY: a NULL source makes an uninitialized bytes object of `n` bytes that we own.
    let obj = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t)) }?;
    // SAFETY: PyBytes_FromStringAndSize returns a bytes object.
    Ok(unsafe { obj.cast_into_unchecked() })
}

/// The writable bytes of `obj`, a bytes object only the caller references.
#[inline]
pub(crate) fn data_ptr(obj: &Bound<'_, PyBytes>) -> *mut libc::c_void {
    // SAFETY: a live bytes object; its storage is writable by its only owner.
    unsafe { ffi::PyBytes_AsString(obj.as_ptr()) }.cast()
}

/// `obj`, which only the caller references, resized to `n` bytes: cut to its
/// first `n`, or grown with `n - len` bytes of unspecified content after its own.
pub(crate) fn resize(obj: Bound<'_, PyBytes>, n: usize) -> PyResult<Bound<'_, PyBytes>> {
    let py = obj.py();
    let mut ptr = obj.into_ptr();
    // SAFETY: our reference is the only one, as _PyBytes_Resize requires; on
    // failure CPython has freed the object and set the error.
    unsafe {
        if ffi::_PyBytes_Resize(&mut ptr, n as ffi::Py_ssize_t) != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, ptr).cast_into_unchecked())
    }
}
