//! The read of asyncio's pipe transports (`glassloop._tracked.ReadPipeTransport`).
//!
//! asyncio reads a pipe with `os.read(fd, 256 KiB)`: a 256 KiB bytes object is
//! allocated for each read and shrunk to what came (64 KiB at most from a default
//! pipe). An allocation that size is above glibc malloc's mmap threshold (128 KiB),
//! so every read costs an mmap, page faults on the pages the read fills, an mremap
//! and, when the data is consumed, an munmap: more kernel time than the read itself
//! when a child streams output. We read at most `READ_LEN` per call instead, into a
//! bytes object small enough to come from the heap, shrunk in place after a short
//! read: no syscall but the read, no copy. (A fuller pipe is read again at the next
//! iteration: the fd is level-triggered.)

use crate::spare_bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::os::unix::io::RawFd;

/// The largest read: under the mmap threshold with the bytes header to spare,
/// and more than a default pipe's 64 KiB buffer holds.
const READ_LEN: usize = 120 * 1024;

/// One `read(2)` of at most `max_size` bytes from the non-blocking `fd`, as
/// `os.read` (EINTR runs the signal handlers and retries; an error raises its
/// OSError subclass), except that EAGAIN returns None. At most 120 KiB per call:
/// a pipe transport's reader is called again while data remains.
#[pyfunction]
pub fn _read_pipe(py: Python<'_>, fd: RawFd, max_size: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let n = max_size.min(READ_LEN);
    let obj = spare_bytes::uninit(py, n)?;
    // SAFETY: `obj` has `n` writable bytes; nothing else sees it yet.
    match crate::sock::syscall(py, || unsafe { crate::sys::read(fd, spare_bytes::data_ptr(&obj), n) })? {
        Some(got) if got != n => spare_bytes::resize(obj, got).map(Some),
        Some(_) => Ok(Some(obj)),
        None => Ok(None),
    }
}
