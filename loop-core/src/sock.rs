//! The low-level socket methods: `sock_recv`, `sock_recv_into`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendall`, `sock_sendto`, `sock_accept`, `sock_connect`.
//!
//! The coroutines users await are in `_loop.py`; each calls one function here,
//! which makes asyncio's checks, tries the syscall at once and returns its result.
//! Only when the kernel says EAGAIN does it return a future instead: the call then
//! waits as a [`SockWait`] on the fd's reader or writer side in the reactor, and
//! the loop retries the syscall when the fd is ready (`Ready::Sock`, timed as a run
//! like any I/O) and resolves the future. That is asyncio's design (its sock_*
//! methods are `add_reader` callbacks), without a Handle, a done-callback and a
//! `remove_reader` per wait.
//!
//! One exception: a large `sock_recv` (see `reads_direct`) is resolved with None
//! when the fd is ready, and its coroutine calls again to read: the 64 KiB bytes
//! object is then allocated when the task runs, not for every ready socket at once.
//!
//! recv, recv_into and send are plain syscalls on the fd. recvfrom, recvfrom_into,
//! sendto and accept call the socket object's own method, so addresses keep the
//! socket module's formats exactly; connect's result is read with getsockopt.

use crate::event_loop::LoopCore;
use crate::reactor::{Side, Waiter};
use crate::spare_bytes::SpareBytes;
use crate::transports::stream::RawBuffer;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyMemoryView, PyTuple};
use pyo3::{ffi, intern};
use std::os::unix::io::RawFd;

/// What a waiting call does when its fd is ready.
enum SockOp {
    /// `recv(2)` of at most `n` bytes into a new bytes object.
    Recv { n: usize },
    /// `recv(2)` into the caller's buffer, looked up at each try as asyncio does.
    RecvInto { buf: Py<PyAny> },
    /// `send(2)` of the rest of a memoryview of the caller's data (the view keeps
    /// the data from being resized while we wait, as asyncio's does).
    SendAll { view: Py<PyAny>, sent: usize },
    /// A method of the socket object: recvfrom, recvfrom_into, sendto.
    Method { name: &'static str, args: Py<PyTuple> },
    Accept,
    /// The connection attempt ended (writable): its result is SO_ERROR.
    Connect { address: Py<PyAny> },
}

/// A `sock_*` call waiting for its fd: the socket, the future its coroutine awaits, and the syscall to retry.
pub struct SockWait {
    sock: Py<PyAny>,
    future: Py<PyAny>,
    op: SockOp,
}

impl SockWait {
    pub fn future(&self) -> &Py<PyAny> {
        &self.future
    }

    pub fn sock(&self) -> &Py<PyAny> {
        &self.sock
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.sock)?;
        visit.call(&self.future)?;
        match &self.op {
            SockOp::RecvInto { buf } => visit.call(buf),
            SockOp::SendAll { view, .. } => visit.call(view),
            SockOp::Method { args, .. } => visit.call(args),
            SockOp::Connect { address } => visit.call(address),
            SockOp::Recv { .. } | SockOp::Accept => Ok(()),
        }
    }
}

/// The outcome of one try.
enum Attempt {
    /// EAGAIN: wait for the fd.
    Again,
    Done(PyResult<Py<PyAny>>),
}

/// The OSError subclass and message the socket module raises for `errno`.
fn errno_error(py: Python<'_>, errno: i32) -> PyErr {
    // SAFETY: PyErr_SetFromErrno reads errno, which we set just before, with the GIL held.
    unsafe {
        *libc::__errno_location() = errno;
        ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
    }
    PyErr::fetch(py)
}

/// Runs a syscall returning a count or -1, as the socket module does: EINTR runs
/// the signal handlers and retries; EAGAIN is None.
pub(crate) fn syscall(py: Python<'_>, mut call: impl FnMut() -> isize) -> PyResult<Option<usize>> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match crate::sys::errno() {
            libc::EINTR => py.check_signals()?,
            libc::EAGAIN => return Ok(None),
            errno => return Err(errno_error(py, errno)),
        }
    }
}

fn fileno(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    sock.call_method0(intern!(sock.py(), "fileno"))?.extract()
}

/// `ssl.SSLSocket`, or None where the ssl module is missing (as asyncio's check).
fn ssl_socket_type(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
    CELL.get_or_init(py, || py.import("ssl").and_then(|m| m.getattr("SSLSocket")).ok().map(Bound::unbind)).as_ref().map(|t| t.bind(py))
}

/// `socket.socket`: its instances need no SSLSocket check.
fn socket_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || Ok::<_, PyErr>(py.import("socket")?.getattr("socket")?.unbind())).map(|t| t.bind(py))
}

fn future_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || Ok::<_, PyErr>(py.import("asyncio.futures")?.getattr("Future")?.unbind())).map(|t| t.bind(py))
}

fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// Reads of at most this much may go through a per-thread buffer and be copied out.
const SCRATCH_LEN: usize = 64 * 1024;
/// A read returning more than this is "large": copying it would cost more than
/// the allocation it saves.
const SMALL_READ: usize = 8 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SCRATCH_LEN]);
    /// Whether the last read on this thread was large: the next one is likely too.
    static LAST_READ_LARGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The bytes object of a large read that found nothing (EAGAIN), kept for the
    /// next one: an echo's recv right after its send mostly finds nothing, and
    /// freeing its 64 KiB each time makes malloc trim the heap and fault it back in.
    static SPARE: SpareBytes = const { SpareBytes::new() };
}

/// Whether a read of at most `n` bytes goes into a bytes object of size `n`
/// (large reads), rather than through the scratch buffer.
fn reads_direct(n: usize) -> bool {
    n > SMALL_READ && (n > SCRATCH_LEN || LAST_READ_LARGE.get())
}

/// A bytes object holding what one `recv(2)` of at most `n` bytes returned, or None on EAGAIN.
fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
    if !reads_direct(n) {
        // Small reads go into a reused buffer, then an exact-size copy: nothing is
        // allocated for an EAGAIN (the common first try), nor shrunk after a short
        // read. (Busy only if a signal handler run on EINTR reads a socket too.)
        let read = SCRATCH.with(|buf| {
            let mut buf = buf.try_borrow_mut().ok()?;
            // SAFETY: `buf` has SCRATCH_LEN >= n writable bytes.
            let got = syscall(py, || unsafe { crate::sys::recv(fd, buf.as_mut_ptr().cast(), n, 0) });
            if let Ok(Some(got)) = got {
                LAST_READ_LARGE.set(got > SMALL_READ);
            }
            Some(got.map(|got| got.map(|got| pyo3::types::PyBytes::new(py, &buf[..got]).into_any().unbind())))
        });
        if let Some(read) = read {
            return read;
        }
    }
    // As socket.recv: a bytes object of the full size, filled, then shrunk to what came.
    let obj = SPARE.with(|spare| spare.take(py, n))?;
    // SAFETY: `obj` has `n` writable bytes; nothing else sees it yet.
    match syscall(py, || unsafe { crate::sys::recv(fd, crate::spare_bytes::data_ptr(&obj), n, 0) })? {
        Some(got) => {
            LAST_READ_LARGE.set(got > SMALL_READ);
            let obj = if got != n { crate::spare_bytes::resize(obj, got)? } else { obj };
            Ok(Some(obj.into_any().unbind()))
        }
        None => {
            // Unused: it is the spare now.
            SPARE.with(|spare| spare.keep(obj));
            Ok(None)
        }
    }
}

fn recv_into_buffer(py: Python<'_>, fd: RawFd, buf: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let view = RawBuffer::get(buf, true).map_err(|_| {
        let name = buf.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        PyTypeError::new_err(format!("recv_into() argument 1 must be read-write bytes-like object, not {name}"))
    })?;
    // SAFETY: the exported buffer is writable for `len` bytes until `view` drops.
    syscall(py, || unsafe { crate::sys::recv(fd, view.as_mut_ptr(), view.len(), 0) })
}

/// `send(2)` from `data[start..]` until all went or EAGAIN: `(sent so far, total)`.
fn send_from(py: Python<'_>, fd: RawFd, data: &Bound<'_, PyAny>, start: usize) -> PyResult<(usize, usize)> {
    let buf = RawBuffer::get(data, false)?;
    let bytes = buf.as_slice();
    let mut sent = start;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is valid for its length; MSG_NOSIGNAL: a dead peer is EPIPE, not SIGPIPE.
        match syscall(py, || unsafe { crate::sys::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) })? {
            Some(n) => sent += n,
            None => break,
        }
    }
    Ok((sent, bytes.len()))
}

/// A socket method's result; BlockingIOError and InterruptedError mean "try again later", as in asyncio.
fn call_method(sock: &Bound<'_, PyAny>, name: &'static str, args: &Bound<'_, PyTuple>) -> Attempt {
    let py = sock.py();
    match sock.call_method1(name, args.clone()) {
        Ok(v) => Attempt::Done(Ok(v.unbind())),
        Err(e) if e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py) => Attempt::Again,
        Err(e) => Attempt::Done(Err(e)),
    }
}

impl SockOp {
    /// One try of the syscall. The fd is asked of the socket each time: a socket
    /// closed meanwhile says -1, and the syscall fails with EBADF as asyncio's would.
    fn attempt(&mut self, sock: &Bound<'_, PyAny>) -> Attempt {
        let py = sock.py();
        let done = |r: PyResult<Option<Py<PyAny>>>| match r {
            Ok(Some(v)) => Attempt::Done(Ok(v)),
            Ok(None) => Attempt::Again,
            Err(e) => Attempt::Done(Err(e)),
        };
        let fd = match self {
            SockOp::Method { .. } | SockOp::Accept => -1,
            _ => match fileno(sock) {
                Ok(fd) => fd,
                Err(e) => return Attempt::Done(Err(e)),
            },
        };
        match self {
            SockOp::Recv { n } => done(recv_bytes(py, fd, *n)),
            SockOp::RecvInto { buf } => done(recv_into_buffer(py, fd, buf.bind(py)).map(|n| n.map(|n| n.into_pyobject(py).map(|i| i.into_any().unbind()).unwrap_or_else(|e| match e {})))),
            SockOp::SendAll { view, sent } => match send_from(py, fd, view.bind(py), *sent) {
                Ok((n, total)) => {
                    *sent = n;
                    if n >= total {
                        Attempt::Done(Ok(py.None()))
                    } else {
                        Attempt::Again
                    }
                }
                Err(e) => Attempt::Done(Err(e)),
            },
            SockOp::Method { name, args } => call_method(sock, name, args.bind(py)),
            SockOp::Accept => match call_method(sock, "accept", &PyTuple::empty(py)) {
                Attempt::Done(Ok(pair)) => Attempt::Done(accepted(pair.bind(py))),
                other => other,
            },
            SockOp::Connect { address } => {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: `err` and `len` are valid for getsockopt to fill.
                let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len) };
                if rc != 0 {
                    return Attempt::Done(Err(errno_error(py, crate::sys::errno())));
                }
                match err {
                    0 => Attempt::Done(Ok(py.None())),
                    // Still connecting (a spurious wakeup): asyncio waits on.
                    libc::EINPROGRESS | libc::EAGAIN | libc::EINTR => Attempt::Again,
                    _ => {
                        let text = address.bind(py).str().map(|s| s.to_string()).unwrap_or_default();
                        Attempt::Done(Err(PyOSError::new_err((err, format!("Connect call failed {text}")))))
                    }
                }
            }
        }
    }
}

/// asyncio hands out accepted sockets non-blocking.
fn accepted(pair: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    pair.get_item(0)?.call_method1(intern!(pair.py(), "setblocking"), (false,))?;
    Ok(pair.clone().unbind())
}

/// asyncio's checks before a sock_* call: no SSL sockets, and non-blocking ones in debug mode.
fn check_socket(this: &LoopCore, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    let plain = socket_type(py).is_ok_and(|t| sock.get_type().is(t));
    if let (false, Some(ssl_socket)) = (plain, ssl_socket_type(py)) {
        if sock.is_instance(ssl_socket)? {
            return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
        }
    }
    if this.is_debug() && sock.call_method0(intern!(py, "gettimeout"))?.ne(0)? {
        return Err(PyValueError::new_err("the socket must be non-blocking"));
    }
    Ok(())
}

/// asyncio's `_ensure_fd_no_transport`: a transport's socket is not for sock_* calls.
fn ensure_fd_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = lp.py();
    let transports = lp.getattr(intern!(py, "_transports"))?;
    // A WeakValueDictionary: read its dict of weak references, without the
    // KeyError its Python-level lookup raises for every fd that has no transport.
    let data = match transports.getattr(intern!(py, "data")) {
        Ok(d) => d,
        Err(_) => return lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,)).map(drop),
    };
    let Ok(data) = data.cast::<PyDict>() else {
        return lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,)).map(drop);
    };
    let Some(weak) = data.get_item(fd)? else { return Ok(()) };
    let transport = weak.call0()?;
    if transport.is_none() || transport.call_method0(intern!(py, "is_closing"))?.is_truthy()? {
        return Ok(());
    }
    Err(PyRuntimeError::new_err(format!("File descriptor {fd} is used by transport {}", transport.repr()?)))
}

/// Tries `op` now; on EAGAIN, parks it on `side` of the socket's fd and returns the future its coroutine awaits.
fn start(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, side: Side, mut op: SockOp) -> PyResult<Py<PyAny>> {
    match op.attempt(sock) {
        Attempt::Done(result) => result,
        Attempt::Again => wait(lp, sock, fileno(sock)?, side, op),
    }
}

fn wait(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, fd: RawFd, side: Side, op: SockOp) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let this = lp.get();
    ensure_fd_no_transport(lp, fd)?;
    this.check_closed()?;
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "loop"), lp)?;
    let future = future_type(py)?.call((), Some(&kwargs))?.unbind();
    let wait = SockWait { sock: sock.clone().unbind(), future: future.clone_ref(py), op };
    let added = this.state.with(py, |s| s.watchers.add(py, &this.registry, fd, side, Waiter::Sock(wait)));
    match added {
        Ok(Some(replaced)) => replaced.cancel(py),
        Ok(None) => {}
        Err((e, rejected)) => {
            drop(rejected);
            return Err(errno_error(py, e.raw_os_error().unwrap_or(libc::EIO)));
        }
    }
    Ok(future)
}

pub fn recv(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    let n: isize = n.extract()?;
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    let fd = fileno(sock)?;
    match recv_bytes(lp.py(), fd, n as usize)? {
        Some(data) => Ok(data),
        None => wait(lp, sock, fd, Side::Read, SockOp::Recv { n: n as usize }),
    }
}

pub fn recv_into(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    start(lp, sock, Side::Read, SockOp::RecvInto { buf: buf.clone().unbind() })
}

pub fn recvfrom(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, bufsize: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    let args = PyTuple::new(lp.py(), [bufsize])?.unbind();
    start(lp, sock, Side::Read, SockOp::Method { name: "recvfrom", args })
}

pub fn recvfrom_into(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    let nbytes = if nbytes.is_truthy()? { nbytes.clone() } else { buf.len()?.into_pyobject(lp.py())?.into_any() };
    let args = PyTuple::new(lp.py(), [buf, &nbytes])?.unbind();
    start(lp, sock, Side::Read, SockOp::Method { name: "recvfrom_into", args })
}

pub fn sendall(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    let py = lp.py();
    let fd = fileno(sock)?;
    let (sent, total) = {
        let buf = RawBuffer::get(data, false)?;
        let bytes = buf.as_slice();
        // One send, as asyncio's fast path, then wait for room.
        // SAFETY: `bytes` is valid for its length while `buf` lives.
        let sent = syscall(py, || unsafe { crate::sys::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) })?.unwrap_or(0);
        (sent, bytes.len())
    };
    if sent == total {
        return Ok(py.None());
    }
    let view = PyMemoryView::from(data)?.into_any().unbind();
    wait(lp, sock, fd, Side::Write, SockOp::SendAll { view, sent })
}

pub fn sendto(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    let py = lp.py();
    // The first try is sock.sendto(data, address) and the retries sock.sendto(data, 0, address), as in asyncio.
    match call_method(sock, "sendto", &PyTuple::new(py, [data, address])?) {
        Attempt::Done(result) => result,
        Attempt::Again => {
            let args = PyTuple::new(py, [data.clone(), 0i32.into_pyobject(py)?.into_any(), address.clone()])?.unbind();
            wait(lp, sock, fileno(sock)?, Side::Write, SockOp::Method { name: "sendto", args })
        }
    }
}

pub fn accept(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    check_socket(lp.get(), sock)?;
    start(lp, sock, Side::Read, SockOp::Accept)
}

/// The connect itself (the coroutine has made the checks and resolved the address).
pub fn connect(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    match call_method(sock, "connect", &PyTuple::new(py, [address])?) {
        Attempt::Done(result) => result,
        Attempt::Again => wait(lp, sock, fileno(sock)?, Side::Write, SockOp::Connect { address: address.clone().unbind() }),
    }
}

impl LoopCore {
    /// Runs the syscall of the call waiting on `side` of `fd`, now that the fd is
    /// ready: resolves its future, or leaves it waiting for the next edge.
    pub(crate) fn complete_sock(&self, py: Python<'_>, fd: RawFd, side: Side) -> PyResult<()> {
        let Some(mut wait) = self.state.with(py, |s| s.watchers.take_sock(fd, side)) else {
            return Ok(());
        };
        let future = wait.future.bind(py).clone();
        // Cancelled since it was queued: its coroutine unregisters it; leave the data unread.
        let attempt = if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            Attempt::Done(Ok(py.None()))
        } else if matches!(wait.op, SockOp::Recv { n } if reads_direct(n)) {
            // A large read is left to the coroutine (None: "readable, read now"), so
            // its buffer is allocated when the task runs, just before it is used and
            // after the task dropped its last one: a batch of ready sockets then does
            // not hold a batch of large buffers at once, which makes malloc grow the
            // heap, trim it and fault it back in, and leaves the data cold in cache.
            Attempt::Done(Ok(py.None()))
        } else {
            wait.op.attempt(wait.sock.bind(py))
        };
        let result = match attempt {
            Attempt::Again => {
                let displaced = self.state.with(py, |s| s.watchers.restore(&self.registry, fd, side, wait));
                if let Some(d) = displaced {
                    d.cancel(py);
                }
                return Ok(());
            }
            Attempt::Done(result) => result,
        };
        self.state.with(py, |s| s.watchers.settle(&self.registry, fd));
        drop(wait);
        let resolved = match result {
            Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
            Err(err) if is_fatal(py, &err) => return Err(err),
            Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),)),
        };
        match resolved {
            // Cancelled while a socket method of ours ran Python code: as asyncio, drop the result.
            Err(_) if future.call_method0(intern!(py, "done"))?.is_truthy()? => Ok(()),
            other => other.map(drop),
        }
    }

    /// The coroutine of a waiting call ended otherwise (cancelled, closed): stop waiting.
    pub(crate) fn abandon_sock(&self, py: Python<'_>, sock: &Bound<'_, PyAny>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.check_closed().is_err() {
            return Ok(()); // close() dropped every waiter
        }
        // A future we resolved was taken off the reactor before it was resolved.
        if future.call_method0(intern!(py, "done"))?.is_truthy()? && !future.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            return Ok(());
        }
        let fd = fileno(sock).ok().filter(|fd| *fd >= 0);
        let future = future.clone().unbind();
        let gone = self.state.with(py, |s| s.watchers.abandon(&self.registry, fd, &future));
        drop(gone);
        Ok(())
    }
}
