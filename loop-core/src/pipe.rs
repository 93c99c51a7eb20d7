//! The read of asyncio's pipe transports (`glassloop._tracked.ReadPipeTransport`).
//!
//! asyncio reads a pipe with `os.read(fd, 256 KiB)`: a 256 KiB bytes object is
//! allocated for each read and shrunk to what came (64 KiB at most from a default
//! pipe). An allocation that size is above glibc malloc's mmap threshold, so every
//! read costs an mmap, page faults on the pages the read fills, an mremap and, when
//! the data is consumed, an munmap: more kernel time than the read itself when a
//! child streams output. Reading into a reused buffer and copying out what came
//! allocates only that (from the heap), for the cost of one memcpy.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::os::unix::io::RawFd;

/// The largest read: asyncio's `max_size` for pipes.
const SCRATCH_LEN: usize = 256 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One `read(2)` of at most `max_size` bytes from the non-blocking `fd`, as
/// `os.read` (EINTR runs the signal handlers and retries; an error raises its
/// OSError subclass), except that EAGAIN returns None. At most 256 KiB per call:
/// a pipe transport's reader is called again while data remains.
#[pyfunction]
pub fn _read_pipe(py: Python<'_>, fd: RawFd, max_size: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let n = max_size.min(SCRATCH_LEN);
    SCRATCH.with(|scratch| {
        // Busy only if a signal handler run on EINTR reads a pipe this way too.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            let mut own = vec![0u8; n];
            return read_into(py, fd, &mut own);
        };
        if buf.len() < n {
            buf.resize(n, 0);
        }
        read_into(py, fd, &mut buf[..n])
    })
}

fn read_into<'py>(py: Python<'py>, fd: RawFd, buf: &mut [u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
    // SAFETY: `buf` is writable for `buf.len()` bytes for the call's duration.
    let got = crate::sock::syscall(py, || unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(got.map(|got| PyBytes::new(py, &buf[..got])))
}
