//! `StreamTransport`: TCP and Unix stream sockets, with the data path in Rust.
//!
//! The fd is registered edge-triggered for reading and writing once, for the
//! transport's life, so pausing, resuming and buffering never cost a syscall
//! beyond the reads and writes themselves. Reads go straight to the protocol
//! (`data_received(bytes)`, or `get_buffer()` + `recv_into` + `buffer_updated(n)`
//! for a `BufferedProtocol`); writes go straight to the socket and only what the
//! kernel did not take is buffered. Protocol callbacks run in the context that
//! was current when the transport was made, as asyncio's selector loop does.
//!
//! Because readiness is edge-triggered, a read that fills the whole buffer (so
//! more may be waiting) and `resume_reading()` ask the reactor to report the
//! transport readable again with the next poll's events: no data is left behind
//! without an event. A transport is read at most once per iteration, at the
//! point where asyncio's level-triggered selector loop would read it.
//!
//! TLS (`ssl=` or `start_tls`) is asyncio's `SSLProtocol`, a BufferedProtocol,
//! over this transport: ciphertext is received straight into its buffer.

use super::write_buffer::WriteBuffer;
use super::{os_error, IoSite, TransportStats};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::with_context;
use crate::spare_bytes::SpareBytes;
use crate::stdlib;
use pyo3::ffi;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError};

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use std::cell::RefCell;
use std::os::unix::io::RawFd;

/// asyncio's default write-buffer high-water mark.
pub(super) const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// One read takes at most this much (asyncio's selector transports read 256 KiB).
pub(super) const MAX_READ: usize = 256 * 1024;
/// From this size on, a read goes straight into its bytes object rather than
/// through the thread's read buffer and a copy (see `read_to_bytes`).
const LARGE_READ: usize = 16 * 1024;
/// asyncio warns once a closed transport has been written to this many times.
pub(super) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A contiguous view of any buffer-protocol object, of any item format (as
/// `socket.send` accepts), released on drop.
pub(crate) struct RawBuffer {
    view: Box<ffi::Py_buffer>,
}

impl RawBuffer {
    pub(crate) fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<RawBuffer> {
        // SAFETY: a zeroed Py_buffer is what PyObject_GetBuffer expects to fill;
        // the Box keeps its address stable until PyBuffer_Release in Drop.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let flags = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(RawBuffer { view })
    }

    pub(crate) fn len(&self) -> usize {
        self.view.len as usize
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: PyBUF_SIMPLE/WRITABLE views are contiguous bytes of `len`.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut libc::c_void {
        self.view.buf
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        // SAFETY: obtained by PyObject_GetBuffer; our callers hold the GIL.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

thread_local! {
    // Each loop thread reads into one buffer; data_received gets a bytes copy of
    // what was read, as with any socket.recv().
    pub(super) static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0u8; MAX_READ]);
    /// The bytes object data_received last had, if the protocol did not keep it
    /// (an echo's write() that sent everything keeps none): the next read of its
    /// size is copied into it rather than into a new one.
    static DATA_SPARE: SpareBytes = const { SpareBytes::new() };
}

/// The protocol, and whether it is a BufferedProtocol (decided at set_protocol,
/// as asyncio does; its methods are looked up at each call, as asyncio does).
struct Protocol {
    obj: Py<PyAny>,
    buffered: bool,
    /// asyncio's `SSLProtocol` (`ssl=` or `start_tls`): the transport carries TLS.
    tls: bool,
}

struct Inner {
    loop_obj: Option<Py<PyAny>>,
    /// The `asyncio.Transport` object users and protocols see (glassloop._loop.StreamTransport).
    facade: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    protocol: Option<Protocol>,
    server: Option<Py<PyAny>>,
    buffer: WriteBuffer,
    closing: bool,
    /// write_eof() was called.
    eof: bool,
    paused: bool,
    /// Reading has begun (after connection_made, as asyncio does).
    started: bool,
    /// eof_received() asked to keep the transport open: no more reads.
    read_done: bool,
    /// A read of this transport is in the ready queue (see `claim_read`).
    read_queued: bool,
    /// The size of the last read if it was at least LARGE_READ bytes, else 0
    /// (see `read_large_to_bytes`).
    large_read: usize,
    conn_lost: u32,
    protocol_paused: bool,
    /// `loop.sendfile()`: resolved once the write buffer is empty; writes are refused meanwhile.
    empty_waiter: Option<Py<PyAny>>,
    /// Resolved at the next writable event (native sendfile waits on it after EAGAIN).
    writable_waiter: Option<Py<PyAny>>,
    created_unix_ms: u64,
    /// When reading / the protocol's writing was paused (monotonic ns), and the totals.
    paused_reading_since: u64,
    paused_writing_since: u64,
    paused_reading_ns: u64,
    paused_writing_ns: u64,
    high: usize,
    low: usize,
    stats: TransportStats,
}

#[pyclass(frozen, weakref, module = "glassloop._core", name = "StreamTransportCore")]
pub struct StreamTransport {
    fd: RawFd,
    pub(super) io_site: IoSite,
    context: Py<PyAny>,
    extra: Py<PyDict>,
    inner: GilCell<Inner>,
}

pub(super) fn is_fatal_signal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// `protocol.data_received(data)`; then `data` becomes the next read's spare if
/// the protocol kept no reference to it.
fn deliver_bytes(protocol: &Bound<'_, PyAny>, data: Bound<'_, PyBytes>) -> PyResult<()> {
    let called = protocol.call_method1(pyo3::intern!(protocol.py(), "data_received"), (&data,)).map(drop);
    DATA_SPARE.with(|spare| spare.keep(data));
    called
}

/// `recv(2)` into `len` bytes at `buf`, retried on EINTR; Err(errno) otherwise.
fn recv_retrying(fd: RawFd, buf: *mut libc::c_void, len: usize) -> Result<usize, i32> {
    // SAFETY: callers pass a buffer valid for `len` writable bytes.
    crate::sys::retrying(|| unsafe { crate::sys::recv(fd, buf, len, 0) })
}

/// `readv(2)` into `iov`, retried on EINTR; Err(errno) otherwise.
fn readv_retrying(fd: RawFd, iov: &[libc::iovec]) -> Result<usize, i32> {
    // SAFETY: callers pass iovecs valid for their lengths (the kernel skips empty ones).
    crate::sys::retrying(|| unsafe { crate::sys::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) })
}

/// `send(2)` until everything went or the kernel is full. Returns bytes sent.
fn send_all(fd: RawFd, mut data: &[u8]) -> Result<usize, i32> {
    let mut sent = 0;
    while !data.is_empty() {
        // SAFETY: `data` is a valid slice; MSG_NOSIGNAL so a dead peer is an error, not SIGPIPE.
        let n = match crate::sys::retrying(|| unsafe { crate::sys::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) }) {
            Ok(n) => n,
            Err(libc::EAGAIN) => break,
            Err(errno) => return Err(errno),
        };
        sent += n;
        data = &data[n..];
    }
    Ok(sent)
}

/// `sendmsg(2)` of several buffers at once (for writelines), until all went or EAGAIN.
fn send_vectored(fd: RawFd, parts: &[&[u8]]) -> Result<usize, i32> {
    const MAX_IOV: usize = 512;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0;
    while sent < total {
        let mut skip = sent;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(parts.len().min(MAX_IOV));
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            let rest = &p[skip..];
            skip = 0;
            iov.push(libc::iovec { iov_base: rest.as_ptr() as *mut _, iov_len: rest.len() });
            if iov.len() == MAX_IOV {
                break;
            }
        }
        // SAFETY: a zeroed msghdr is valid; iov points into live slices for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: `msg` and the buffers it points to live across the call.
        match crate::sys::retrying(|| unsafe { crate::sys::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) }) {
            Ok(n) => sent += n,
            Err(libc::EAGAIN) => break,
            Err(errno) => return Err(errno),
        }
    }
    Ok(sent)
}

enum ReadOutcome {
    /// Nothing to read (EAGAIN).
    Drained,
    /// Read less than asked: drained, unless the peer's FIN is also waiting.
    Short,
    /// The read filled the buffer: more may be waiting.
    More,
    Eof,
    Closed,
}

impl StreamTransport {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// This transport's row in the inspector's transport table.
    pub fn record(&self, py: Python<'_>) -> PyResult<inspector::TransportRecord> {
        let extra = self.extra.bind(py);
        let addr = |key: &str| -> PyResult<String> {
            Ok(match extra.get_item(key)? {
                Some(v) if !v.is_none() => match v.extract::<(String, u16)>() {
                    Ok((host, port)) => format!("{host}:{port}"),
                    Err(_) => v.str()?.to_string(),
                },
                _ => String::new(),
            })
        };
        let (local, peer) = (addr("sockname")?, addr("peername")?);
        let (protocol, tls, kind) = self.inner.with(py, |i| {
            let tls = i.protocol.as_ref().is_some_and(|p| p.tls);
            (i.protocol.as_ref().map(|p| p.obj.clone_ref(py)), tls, i.sock.as_ref().map(|s| s.clone_ref(py)))
        });
        // A TLS transport is shown with the application's protocol, not asyncio's SSLProtocol.
        let protocol = match protocol {
            Some(p) if tls => p.bind(py).getattr(pyo3::intern!(py, "_app_protocol")).ok().filter(|a| !a.is_none()),
            Some(p) => Some(p.into_bound(py)),
            None => None,
        };
        let protocol_name = match protocol {
            Some(p) => p.get_type().name()?.to_string(),
            None => String::new(),
        };
        let is_unix = match kind {
            Some(sock) => sock.bind(py).getattr("family")?.extract::<i32>()? == libc::AF_UNIX,
            None => false,
        };
        let now = crate::clock::now_ns();
        Ok(self.inner.with(py, |i| inspector::TransportRecord {
            id: self.fd as u64,
            kind: if tls {
                inspector::TransportKind::Tls
            } else if is_unix {
                inspector::TransportKind::Unix
            } else {
                inspector::TransportKind::Tcp
            },
            local,
            peer,
            protocol: protocol_name,
            created_unix_ms: i.created_unix_ms,
            bytes_in: i.stats.bytes_in,
            bytes_out: i.stats.bytes_out,
            calls_in: i.stats.calls_in,
            calls_out: i.stats.calls_out,
            write_buffer: i.buffer.len() as u64,
            write_buffer_high_water: i.buffer.high_water as u64,
            reading_paused: i.paused,
            writing_paused: i.protocol_paused,
            paused_reading_ns: i.paused_reading_ns + if i.paused { now.saturating_sub(i.paused_reading_since) } else { 0 },
            paused_writing_ns: i.paused_writing_ns + if i.protocol_paused { now.saturating_sub(i.paused_writing_since) } else { 0 },
            state: if i.sock.is_none() { "closed" } else if i.closing { "closing" } else { "open" }.to_string(),
        }))
    }

    /// Marks a read as queued; false if one already is (the caller then queues none).
    pub fn claim_read(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| !std::mem::replace(&mut i.read_queued, true))
    }

    /// The protocol's class and whether it is buffered: what the inspector names
    /// this transport's I/O after (its `data_received`/`buffer_updated`).
    pub fn protocol_class<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, pyo3::types::PyType>, bool)> {
        self.inner.with(py, |i| i.protocol.as_ref().map(|p| (p.obj.bind(py).get_type(), p.buffered)))
    }

    pub fn stats(&self, py: Python<'_>) -> TransportStats {
        self.inner.with(py, |i| {
            let mut s = i.stats;
            s.high_water = i.buffer.high_water;
            s
        })
    }

    /// The object to show to Python (exception handler contexts, logs, the server).
    fn public<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        let py = slf.py();
        match slf.get().inner.with(py, |i| i.facade.as_ref().map(|f| f.clone_ref(py))) {
            Some(f) => f.into_bound(py),
            None => slf.clone().into_any(),
        }
    }

    fn loop_obj<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.inner.with(py, |i| i.loop_obj.as_ref().map(|l| l.clone_ref(py))).map(|l| l.into_bound(py))
    }

    fn core<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.loop_obj(py).and_then(|l| l.cast_into::<LoopCore>().ok())
    }

    fn protocol_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.protocol.as_ref().map(|p| p.obj.clone_ref(py)))
    }

    /// The loop calls this when the fd is ready; errors are only SystemExit/KeyboardInterrupt.
    /// `read_closed`: the event said the peer shut down its side (or the read was
    /// asked for by us, with no event to tell): a short read then does not mean
    /// drained, because the FIN raised no edge of its own.
    pub fn on_events(slf: &Bound<'_, Self>, readable: bool, writable: bool, read_closed: bool) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        with_context(py, &this.context, || {
            if readable {
                this.inner.with(py, |i| i.read_queued = false);
                match Self::read_ready(slf)? {
                    ReadOutcome::Short if read_closed => Self::read_again(slf),
                    ReadOutcome::More => Self::read_again(slf),
                    ReadOutcome::Eof => Self::on_eof(slf)?,
                    ReadOutcome::Short | ReadOutcome::Drained | ReadOutcome::Closed => {}
                }
            }
            if writable {
                Self::write_ready(slf)?;
                if let Some(w) = this.inner.with(py, |i| i.writable_waiter.take()) {
                    resolve(w.bind(py), None)?;
                }
            }
            Ok(())
        })
    }

    /// Reads again with the next poll's events: edge-triggered readiness raises
    /// no new event for data (or a FIN) already waiting.
    fn read_again(slf: &Bound<'_, Self>) {
        if let Some(core) = slf.get().core(slf.py()) {
            core.get().queue_read(slf.py(), slf.clone().unbind());
        }
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<ReadOutcome> {
        let this = slf.get();
        let py = slf.py();
        let proto = this.inner.with(py, |i| {
            if i.conn_lost > 0 || i.closing || i.paused || !i.started || i.read_done {
                return None;
            }
            i.protocol.as_ref().map(|p| (p.buffered, p.obj.clone_ref(py), i.large_read))
        });
        let Some((buffered, protocol, large)) = proto else {
            return Ok(ReadOutcome::Closed);
        };
        if buffered {
            Self::read_into_protocol_buffer(slf, protocol.bind(py))
        } else if large > 0 {
            Self::read_large_to_bytes(slf, protocol.bind(py), large)
        } else {
            Self::read_to_bytes(slf, protocol.bind(py))
        }
    }

    /// After a large read, data likely comes in large reads: one `readv(2)` reads
    /// into a large bytes object (the thread's spare, or a new one the size of this
    /// transport's last read) and on into the thread's read buffer behind it. A
    /// stream of equal messages fills the bytes object exactly, so each byte is
    /// copied once, by the kernel, and no `FIONREAD` sizes the read first.
    fn read_large_to_bytes(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>, last: usize) -> PyResult<ReadOutcome> {
        let py = slf.py();
        let data = match DATA_SPARE.with(|spare| spare.take_within(py, LARGE_READ..=MAX_READ, last.min(MAX_READ))) {
            Ok(data) => data,
            Err(err) => return Self::read_failed(slf, err),
        };
        let head = data.as_bytes().len();
        let (read, data) = READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let iov = [
                libc::iovec { iov_base: crate::spare_bytes::data_ptr(&data), iov_len: head },
                libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: MAX_READ - head },
            ];
            // SAFETY: `data` has `head` writable bytes that only we reference
            // (take_within), and the read buffer MAX_READ, borrowed until the end.
            let read = readv_retrying(slf.get().fd, &iov);
            let data = match read {
                Ok(n) if n == head => Ok(Some(data)),
                // More than the last time: the rest is copied in from the read buffer.
                Ok(n) if n > head => crate::spare_bytes::resize(data, n).map(|data| {
                    // SAFETY: `data` now has `n` bytes, only ours; the buffer holds `n - head` read bytes.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), crate::spare_bytes::data_ptr(&data).cast::<u8>().add(head), n - head) };
                    Some(data)
                }),
                // Less, but still large: cut in place (no copy), and the next read
                // expects this size.
                Ok(n) if n >= LARGE_READ => crate::spare_bytes::resize(data, n).map(Some),
                // Small: a small copy, and the large object stays for the next large read.
                Ok(n) if n > 0 => DATA_SPARE.with(|spare| {
                    // SAFETY: readv wrote the first `n` bytes of `data` (n < head).
                    let read = unsafe { std::slice::from_raw_parts(crate::spare_bytes::data_ptr(&data).cast::<u8>(), n) };
                    let small = spare.copy_of(py, read).map(Some);
                    spare.keep(data);
                    small
                }),
                _ => {
                    DATA_SPARE.with(|spare| spare.keep(data));
                    Ok(None)
                }
            };
            (read, data)
        });
        let data = match data {
            Ok(data) => data,
            Err(err) => return Self::read_failed(slf, err),
        };
        Self::finish_read(slf, read, MAX_READ, "data_received", || {
            deliver_bytes(protocol, data.expect("delivered only after a successful read"))
        })
    }

    fn read_to_bytes(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<ReadOutcome> {
        let py = slf.py();
        let (read, data) = READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let read = recv_retrying(slf.get().fd, buf.as_mut_ptr().cast(), buf.len());
            let data = match read {
                Ok(n) if n > 0 => Some(DATA_SPARE.with(|spare| spare.copy_of(py, &buf[..n]))),
                _ => None,
            };
            (read, data)
        });
        let data = match data {
            Some(Err(err)) => return Self::read_failed(slf, err),
            other => other.and_then(Result::ok),
        };
        Self::finish_read(slf, read, MAX_READ, "data_received", || {
            deliver_bytes(protocol, data.expect("delivered only after a successful read"))
        })
    }

    fn read_into_protocol_buffer(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<ReadOutcome> {
        let py = slf.py();
        let buffer = protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)).and_then(|obj| {
            let buf = RawBuffer::get(&obj, true)?;
            if buf.len() == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(buf)
        });
        let buffer = match buffer {
            Ok(b) => b,
            Err(err) => return Self::callback_failed(slf, err, "get_buffer"),
        };
        let len = buffer.len();
        // The buffer stays exported (so it cannot move) until it is dropped after the read.
        let read = recv_retrying(slf.get().fd, buffer.as_mut_ptr(), len);
        drop(buffer);
        Self::finish_read(slf, read, len, "buffer_updated", || {
            let n = *read.as_ref().expect("delivered only after a successful read");
            protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,)).map(drop)
        })
    }

    /// The common end of both reads: EAGAIN, errors and EOF, counters, delivery to
    /// the protocol, and whether the read filled the space it had.
    fn finish_read(
        slf: &Bound<'_, Self>,
        read: Result<usize, i32>,
        capacity: usize,
        callback: &str,
        deliver: impl FnOnce() -> PyResult<()>,
    ) -> PyResult<ReadOutcome> {
        let n = match read {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => n,
            Err(libc::EAGAIN) => return Ok(ReadOutcome::Drained),
            Err(errno) => {
                Self::fatal_error(slf, os_error(errno), "Fatal read error on socket transport")?;
                return Ok(ReadOutcome::Closed);
            }
        };
        slf.get().inner.with(slf.py(), |i| {
            i.stats.bytes_in += n as u64;
            i.stats.calls_in += 1;
            i.large_read = if n >= LARGE_READ { n } else { 0 };
        });
        if let Err(err) = deliver() {
            return Self::callback_failed(slf, err, callback);
        }
        Ok(if n == capacity { ReadOutcome::More } else { ReadOutcome::Short })
    }

    /// The data read could not be handed over (no memory for its bytes object):
    /// as asyncio when `recv` itself fails, a fatal read error.
    fn read_failed(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<ReadOutcome> {
        Self::fatal_error(slf, err, "Fatal read error on socket transport")?;
        Ok(ReadOutcome::Closed)
    }

    /// A protocol callback raised: SystemExit/KeyboardInterrupt go up, anything else
    /// is asyncio's "Fatal error: protocol.X() call failed." and closes the transport.
    fn callback_failed(slf: &Bound<'_, Self>, err: PyErr, callback: &str) -> PyResult<ReadOutcome> {
        if is_fatal_signal(slf.py(), &err) {
            return Err(err);
        }
        Self::fatal_error(slf, err, &format!("Fatal error: protocol.{callback}() call failed."))?;
        Ok(ReadOutcome::Closed)
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if let Some(lp) = this.loop_obj(py) {
            if lp.call_method0("get_debug")?.is_truthy()? {
                stdlib::asyncio_logger(py)?.call_method1("debug", ("%r received EOF", Self::public(slf)))?;
            }
        }
        let Some(protocol) = this.protocol_obj(py) else { return Ok(()) };
        match protocol.bind(py).call_method0("eof_received") {
            Err(err) => Self::callback_failed(slf, err, "eof_received").map(drop),
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    this.inner.with(py, |i| i.read_done = true);
                    Ok(())
                } else {
                    Self::close(slf)
                }
            }
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        let sent = this.inner.with(py, |i| {
            if i.conn_lost > 0 || i.buffer.is_empty() {
                return None;
            }
            let r = send_all(this.fd, i.buffer.as_slice());
            match r {
                Ok(n) => {
                    i.buffer.consume(n);
                    if n > 0 {
                        i.stats.bytes_out += n as u64;
                        i.stats.calls_out += 1;
                    }
                    Some(Ok(i.buffer.is_empty()))
                }
                Err(errno) => {
                    i.buffer.clear();
                    Some(Err(errno))
                }
            }
        });
        match sent {
            None => Ok(()),
            Some(Err(errno)) => {
                let err = os_error(errno);
                if let Some(w) = this.inner.with(py, |i| i.empty_waiter.as_ref().map(|w| w.clone_ref(py))) {
                    resolve(w.bind(py), Some(err.value(py).clone().into_any()))?;
                }
                Self::fatal_error(slf, err, "Fatal write error on socket transport")
            }
            Some(Ok(_)) => {
                Self::maybe_resume_protocol(slf)?; // may write more
                let empty = this.inner.with(py, |i| i.buffer.is_empty());
                if empty {
                    if let Some(w) = this.inner.with(py, |i| i.empty_waiter.as_ref().map(|w| w.clone_ref(py))) {
                        resolve(w.bind(py), None)?;
                    }
                    let (closing, eof) = this.inner.with(py, |i| (i.closing, i.eof));
                    if closing {
                        Self::call_connection_lost(slf, None)?;
                    } else if eof {
                        // SAFETY: plain syscall on our fd.
                        unsafe { libc::shutdown(this.fd, libc::SHUT_WR) };
                    }
                }
                Ok(())
            }
        }
    }

    /// asyncio's `_fatal_error`: report (quietly for OSError), then force-close.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if let Some(lp) = this.loop_obj(py) {
            if err.is_instance_of::<PyOSError>(py) {
                if lp.call_method0("get_debug")?.is_truthy()? {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("exc_info", err.value(py))?;
                    stdlib::asyncio_logger(py)?.call_method("debug", ("%r: %s", Self::public(slf), message), Some(&kwargs))?;
                }
            } else {
                let ctx = PyDict::new(py);
                ctx.set_item("message", message)?;
                ctx.set_item("exception", err.value(py))?;
                ctx.set_item("transport", Self::public(slf))?;
                ctx.set_item("protocol", this.protocol_obj(py))?;
                lp.call_method1("call_exception_handler", (ctx,))?;
            }
        }
        Self::force_close(slf, Some(err.into_value(py).into_any()))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let proceed = slf.get().inner.with(py, |i| {
            if i.conn_lost > 0 {
                return false;
            }
            i.buffer.clear();
            i.closing = true;
            i.conn_lost += 1;
            true
        });
        if proceed {
            Self::schedule_connection_lost(slf, exc)?;
        }
        Ok(())
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        if let Some(lp) = slf.get().loop_obj(py) {
            lp.call_method1("call_soon", (slf.getattr("_call_connection_lost")?, exc))?;
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pause = this.inner.with(py, |i| {
            if i.buffer.len() > i.high && !i.protocol_paused {
                i.protocol_paused = true;
                i.paused_writing_since = crate::clock::now_ns();
                i.protocol.as_ref().map(|p| p.obj.clone_ref(py))
            } else {
                None
            }
        });
        if let Some(protocol) = pause {
            Self::flow_control_call(slf, protocol.bind(py), "pause_writing", "protocol.pause_writing() failed")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let resume = this.inner.with(py, |i| {
            if i.protocol_paused && i.buffer.len() <= i.low {
                i.protocol_paused = false;
                i.paused_writing_ns += crate::clock::now_ns().saturating_sub(i.paused_writing_since);
                i.protocol.as_ref().map(|p| p.obj.clone_ref(py))
            } else {
                None
            }
        });
        if let Some(protocol) = resume {
            Self::flow_control_call(slf, protocol.bind(py), "resume_writing", "protocol.resume_writing() failed")?;
        }
        Ok(())
    }

    fn flow_control_call(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>, method: &str, message: &str) -> PyResult<()> {
        let py = slf.py();
        if let Err(err) = protocol.call_method0(method) {
            if is_fatal_signal(py, &err) {
                return Err(err);
            }
            if let Some(lp) = slf.get().loop_obj(py) {
                let ctx = PyDict::new(py);
                ctx.set_item("message", message)?;
                ctx.set_item("exception", err.value(py))?;
                ctx.set_item("transport", Self::public(slf))?;
                ctx.set_item("protocol", protocol)?;
                lp.call_method1("call_exception_handler", (ctx,))?;
            }
        }
        Ok(())
    }

    /// The bytes of a write() argument, with asyncio's type check.
    pub(super) fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<RawBuffer> {
        if !(data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        RawBuffer::get(data, false)
    }

    /// The errors asyncio raises for a write at the wrong time.
    fn check_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (eof, sendfile) = slf.get().inner.with(slf.py(), |i| (i.eof, i.empty_waiter.is_some()));
        if eof {
            return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
        }
        Ok(())
    }

    /// Ok(false) means "drop silently": the connection is lost (asyncio counts those writes).
    fn write_allowed(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let conn_lost = slf.get().inner.with(py, |i| i.conn_lost);
        if conn_lost > 0 {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                stdlib::asyncio_logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            slf.get().inner.with(py, |i| i.conn_lost += 1);
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends `parts` now if nothing is queued, buffers the rest; then flow control.
    fn send_or_buffer(slf: &Bound<'_, Self>, parts: &[&[u8]]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = this.inner.with(py, |i| {
            let mut skip = 0;
            if i.buffer.is_empty() {
                let r = if parts.len() == 1 { send_all(this.fd, parts[0]) } else { send_vectored(this.fd, parts) };
                match r {
                    Ok(n) => {
                        skip = n;
                        if n > 0 {
                            i.stats.bytes_out += n as u64;
                            i.stats.calls_out += 1;
                        }
                    }
                    Err(errno) => return Err(errno),
                }
            }
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                i.buffer.extend(&p[skip..]);
                skip = 0;
            }
            Ok(())
        });
        match result {
            Err(errno) => Self::fatal_error(slf, os_error(errno), "Fatal write error on socket transport"),
            Ok(()) => Self::maybe_pause_protocol(slf),
        }
    }

    fn set_protocol_inner(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = protocol.is_instance(stdlib::buffered_protocol(py)?)?;
        let tls = buffered && protocol.is_instance(stdlib::ssl_protocol(py)?)?;
        let old = self.inner.with(py, |i| i.protocol.replace(Protocol { obj: protocol.clone().unbind(), buffered, tls }));
        self.io_site.forget();
        drop(old);
        Ok(())
    }
}

#[pymethods]
impl StreamTransport {
    /// Made by the loop (`_make_socket_transport`), not by users.
    #[new]
    #[pyo3(signature = (loop_obj, sock, protocol, extra = None, server = None))]
    fn new(
        py: Python<'_>,
        loop_obj: Bound<'_, PyAny>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Option<Bound<'_, PyDict>>,
        server: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let extra = match extra {
            Some(e) => e.copy()?,
            None => PyDict::new(py),
        };
        extra.set_item("socket", py.import("asyncio.trsock")?.getattr("TransportSocket")?.call1((&sock,))?)?;
        if !extra.contains("sockname")? {
            extra.set_item("sockname", sock.call_method0("getsockname").ok())?;
        }
        if !extra.contains("peername")? {
            extra.set_item("peername", sock.call_method0("getpeername").ok())?;
        }
        let family: i32 = sock.getattr("family")?.extract()?;
        if family == libc::AF_INET || family == libc::AF_INET6 {
            // asyncio turns Nagle off for TCP; so do we.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a valid int option on our fd.
            unsafe {
                libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as _)
            };
        }
        let transport = StreamTransport {
            fd,
            io_site: IoSite::default(),
            context: crate::handles::copy_current_context(py)?,
            extra: extra.unbind(),
            inner: GilCell::new(Inner {
                loop_obj: Some(loop_obj.unbind()),
                facade: None,
                sock: Some(sock.unbind()),
                protocol: None,
                server: server.map(Bound::unbind),
                buffer: WriteBuffer::default(),
                closing: false,
                eof: false,
                paused: false,
                started: false,
                read_done: false,
                read_queued: false,
                large_read: 0,
                conn_lost: 0,
                protocol_paused: false,
                empty_waiter: None,
                writable_waiter: None,
                created_unix_ms: inspector::clock::unix_ms(),
                paused_reading_since: 0,
                paused_writing_since: 0,
                paused_reading_ns: 0,
                paused_writing_ns: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                stats: TransportStats::default(),
            }),
        };
        transport.set_protocol_inner(py, &protocol)?;
        Ok(transport)
    }

    /// Links the Python-visible transport object (an `asyncio.Transport` subclass).
    fn _set_facade(&self, py: Python<'_>, facade: Py<PyAny>) {
        let old = self.inner.with(py, |i| i.facade.replace(facade));
        drop(old);
    }

    /// Registers the fd with the loop and reads what already arrived (called soon after connection_made).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = this.inner.with(py, |i| {
            let start = !i.started && !i.closing;
            i.started = true;
            start
        });
        if !start {
            return Ok(());
        }
        // Registering reports what already arrived (epoll checks readiness on
        // EPOLL_CTL_ADD) with the next poll, when asyncio's loop would see it too.
        if let Some(core) = this.core(py) {
            core.get().register_transport(py, this.fd, slf.clone().unbind())?;
        }
        Ok(())
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc.map(Bound::unbind))
    }

    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        // Exactly bytes (what data_received hands out, so every echo): immutable
        // storage that lives as long as `data`, so no buffer export (and no
        // allocation for its view) is needed.
        let export;
        let bytes = match data.cast_exact::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                export = Self::check_bytes_like(data)?;
                export.as_slice()
            }
        };
        Self::check_writable(slf)?;
        // As in asyncio: empty writes return before the connection-lost accounting.
        if bytes.is_empty() || !Self::write_allowed(slf)? {
            return Ok(());
        }
        Self::send_or_buffer(slf, &[bytes])
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {

        let mut bufs = Vec::new();
        for item in list_of_data.try_iter()? {
            bufs.push(Self::check_bytes_like(&item?)?);
        }
        Self::check_writable(slf)?;
        let parts: Vec<&[u8]> = bufs.iter().filter(|b| b.len() > 0).map(RawBuffer::as_slice).collect();
        if parts.is_empty() || !Self::write_allowed(slf)? {
            return Ok(());
        }
        Self::send_or_buffer(slf, &parts)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let shutdown_now = this.inner.with(py, |i| {
            if i.closing || i.eof {
                return false;
            }
            i.eof = true;
            i.buffer.is_empty()
        });
        // SAFETY: plain syscall on our fd.
        if shutdown_now && unsafe { libc::shutdown(this.fd, libc::SHUT_WR) } != 0 {
            return Err(os_error(crate::sys::errno()));
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// Closes after the buffered data is sent; then `connection_lost(None)`.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let lose_now = slf.get().inner.with(py, |i| {
            if i.closing {
                return false;
            }
            i.closing = true;
            if i.buffer.is_empty() {
                i.conn_lost += 1;
                true
            } else {
                false
            }
        });
        if lose_now {
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// Closes now, dropping buffered data.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    /// asyncio's private `_force_close(exc)` (used by its SSLProtocol): abort, and
    /// give `exc` to `connection_lost`.
    #[pyo3(signature = (exc = None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::force_close(slf, exc.map(Bound::unbind))
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| i.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| !i.paused && !i.closing)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let paused = slf.get().inner.with(py, |i| {
            if i.closing || i.paused {
                return false;
            }
            i.paused = true;
            i.paused_reading_since = crate::clock::now_ns();
            true
        });
        if paused {
            if let Some(lp) = slf.get().loop_obj(py) {
                if lp.call_method0("get_debug")?.is_truthy()? {
                    stdlib::asyncio_logger(py)?.call_method1("debug", ("%r pauses reading", Self::public(slf)))?;
                }
            }
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (resumed, started) = this.inner.with(py, |i| {
            if i.closing || !i.paused {
                return (false, i.started);
            }
            i.paused = false;
            i.paused_reading_ns += crate::clock::now_ns().saturating_sub(i.paused_reading_since);
            (true, i.started)
        });
        if resumed {
            // Edge-triggered: data that arrived while paused raised no new event.
            if started {
                Self::read_again(slf);
            }
            if let Some(lp) = this.loop_obj(py) {
                if lp.call_method0("get_debug")?.is_truthy()? {
                    stdlib::asyncio_logger(py)?.call_method1("debug", ("%r resumes reading", Self::public(slf)))?;
                }
            }
        }
        Ok(())
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.inner.with(py, |i| i.buffer.len())
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.inner.with(py, |i| (i.low, i.high))
    }

    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, Some(l)) => 4 * l,
            (None, None) => DEFAULT_HIGH_WATER as i64,
        };
        let low = low.unwrap_or(high.div_euclid(4)); // Python's floor division
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!("high ({high}) must be >= low ({low}) must be >= 0")));
        }
        slf.get().inner.with(slf.py(), |i| {
            i.high = high as usize;
            i.low = low as usize;
        });
        Self::maybe_pause_protocol(slf)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_protocol_inner(py, protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol_obj(py)
    }

    #[pyo3(signature = (name, default = None))]
    fn get_extra_info(&self, py: Python<'_>, name: &Bound<'_, PyAny>, default: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        match self.extra.bind(py).get_item(name)? {
            Some(v) => Ok(v.unbind()),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// The socket, for code that reaches for it as it does on asyncio's transports.
    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.sock.as_ref().map(|s| s.clone_ref(py)))
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    /// A future resolved when everything written so far has gone to the kernel.
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.inner.with(py, |i| i.empty_waiter.is_some()) {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let lp = this.loop_obj(py).ok_or_else(|| PyRuntimeError::new_err("transport is closed"))?;
        let fut = lp.call_method0("create_future")?;
        let empty = this.inner.with(py, |i| {
            i.empty_waiter = Some(fut.clone().unbind());
            i.buffer.is_empty()
        });
        if empty {
            resolve(&fut, None)?;
        }
        Ok(fut.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.inner.with(py, |i| i.empty_waiter.take());
        drop(old);
    }

    /// A future resolved at the socket's next writable event (after an EAGAIN).
    fn _wait_writable(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let lp = this.loop_obj(py).ok_or_else(|| PyRuntimeError::new_err("transport is closed"))?;
        let fut = lp.call_method0("create_future")?;
        let old = this.inner.with(py, |i| i.writable_waiter.replace(fut.clone().unbind()));
        drop(old);
        Ok(fut.unbind())
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| i.protocol_paused)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.inner.with(py, |i| {
            let mut info = vec!["StreamTransport".to_string()];
            if i.sock.is_none() {
                info.push("closed".into());
            } else if i.closing {
                info.push("closing".into());
            }
            info.push(format!("fd={}", self.fd));
            if i.sock.is_some() {
                info.push(if !i.paused && !i.closing && i.started { "read=polling".into() } else { "read=idle".into() });
                let state = if i.buffer.is_empty() { "idle" } else { "polling" };
                info.push(format!("write=<{state}, bufsize={}>", i.buffer.len()));
            }
            format!("<{}>", info.join(" "))
        })
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.context)?;
        visit.call(&self.extra)?;
        self.inner
            .try_peek(|i| {
                visit.call(&i.loop_obj)?;
                visit.call(&i.facade)?;
                visit.call(&i.sock)?;
                visit.call(&i.server)?;
                visit.call(&i.empty_waiter)?;
                visit.call(&i.writable_waiter)?;
                if let Some(p) = &i.protocol {
                    visit.call(&p.obj)?;
                }
                Ok(())
            })
            .unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = self.inner.with(py, |i| (i.loop_obj.take(), i.protocol.take(), i.server.take(), i.facade.take()));
            drop(dropped);
        });
    }
}

impl StreamTransport {
    /// asyncio's `_call_connection_lost`: tell the protocol, then release the socket.
    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.protocol_obj(py);
        let result = match &protocol {
            Some(p) => p.bind(py).call_method1("connection_lost", (exc,)).map(drop),
            None => Ok(()),
        };
        // Whatever connection_lost did, the socket goes.
        let core = this.core(py);
        if let Some(core) = &core {
            core.get().deregister_transport(py, this.fd);
        }
        let public = Self::public(slf);
        let (sock, lp, server, proto, facade) =
            this.inner.with(py, |i| (i.sock.take(), i.loop_obj.take(), i.server.take(), i.protocol.take(), i.facade.take()));
        if let Some(sock) = &sock {
            sock.bind(py).call_method0("close")?;
        }
        if let Some(server) = &server {
            crate::stdlib::server_detach(py)?.call1((server.bind(py), public))?;
        }
        drop((sock, lp, server, proto, facade));
        result
    }
}

/// Completes a future unless it is already done (cancelled by its awaiter, say).
fn resolve(fut: &Bound<'_, PyAny>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    match exc {
        None => fut.call_method1("set_result", (fut.py().None(),))?,
        Some(e) => fut.call_method1("set_exception", (e,))?,
    };
    Ok(())
}
