//! `DatagramTransport`: UDP and Unix datagram sockets, with the data path in Rust.
//!
//! Reads are edge-triggered: one readiness event drains the socket with
//! `recvfrom` until EAGAIN, at most `MAX_DATAGRAMS_PER_EVENT` datagrams, then
//! queues itself for the next iteration so one flooded socket cannot starve the
//! loop. Each datagram goes straight to `protocol.datagram_received(data, addr)`.
//!
//! `sendto` tries the syscall first and buffers only what the kernel refused
//! (EAGAIN). The fd is watched for writability only while datagrams wait: a UDP
//! socket signals "writable" each time the kernel frees a sent packet, which
//! would otherwise wake the loop once per datagram sent.
//!
//! The behaviour follows asyncio's `_SelectorDatagramTransport`: OSErrors from
//! the socket (ICMP errors on a connected socket, EMSGSIZE, ...) go to
//! `protocol.error_received(exc)` and leave the endpoint open; anything raised
//! by the protocol during an I/O event goes to the loop's exception handler, as
//! it does when asyncio runs the transport's reader from a loop handle.

use super::stream::{is_fatal_signal, RawBuffer, StreamTransport, DEFAULT_HIGH_WATER, LOG_THRESHOLD_FOR_CONNLOST_WRITES, READ_BUFFER};
use super::{os_error, IoSite, TransportStats};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::with_context;
use crate::stdlib;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple};
use std::collections::VecDeque;
use std::ffi::CStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::io::RawFd;

/// Datagrams read per readiness event before the transport yields to the loop.
const MAX_DATAGRAMS_PER_EVENT: usize = 32;
/// Peer addresses remembered (see `PeerCache`).
const PEER_SLOTS: usize = 16;
/// asyncio 3.13 counts 8 bytes of header per buffered datagram in the write buffer size.
const HEADER_SIZE_313: usize = 8;

/// A socket address in the kernel's form.
#[derive(Clone, Copy)]
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn new() -> SockAddr {
        // SAFETY: all-zero bytes are a valid (empty, AF_UNSPEC) sockaddr_storage.
        SockAddr { storage: unsafe { std::mem::zeroed() }, len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: storage is plain bytes of size_of::<sockaddr_storage>() >= len.
        unsafe { std::slice::from_raw_parts((&self.storage as *const libc::sockaddr_storage).cast::<u8>(), self.len as usize) }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    fn v4(ip: Ipv4Addr, port: u16) -> SockAddr {
        let mut a = SockAddr::new();
        // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
        let sin = unsafe { &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        a.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        a
    }

    fn v6(ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> SockAddr {
        let mut a = SockAddr::new();
        // SAFETY: as in v4.
        let sin6 = unsafe { &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        sin6.sin6_flowinfo = flowinfo.to_be();
        sin6.sin6_addr.s6_addr = ip.octets();
        sin6.sin6_scope_id = scope_id;
        a.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        a
    }

    /// A Unix address from the bytes of a path, with Python's length rules
    /// (None where Python would raise: the caller lets Python say how).
    fn unix(path: &[u8]) -> Option<SockAddr> {
        let mut a = SockAddr::new();
        // SAFETY: as in v4.
        let sun = unsafe { &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
        let abstract_name = path.first().is_none_or(|b| *b == 0);
        // A filesystem path needs room for its NUL; an abstract name does not.
        if path.len() > sun.sun_path.len() || (!abstract_name && path.len() == sun.sun_path.len()) {
            return None;
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sun.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        a.len = (offset + path.len() + usize::from(!abstract_name)) as libc::socklen_t;
        Some(a)
    }

    /// The address as Python's socket module gives it: `(host, port)` for IPv4,
    /// `(host, port, flowinfo, scope_id)` for IPv6, a str path (bytes for an
    /// abstract name) for Unix, None for an unnamed Unix peer.
    fn python_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
                let sin = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Ok((ip.to_string(), u16::from_be(sin.sin_port)).into_pyobject(py)?.into_any())
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
                let sin6 = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in6>() };
                let host = inet6_text(&sin6.sin6_addr);
                Ok((host, u16::from_be(sin6.sin6_port), u32::from_be(sin6.sin6_flowinfo), sin6.sin6_scope_id).into_pyobject(py)?.into_any())
            }
            libc::AF_UNIX => {
                let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                let path = &self.bytes()[offset.min(self.len as usize)..];
                if path.first() == Some(&0) {
                    return Ok(PyBytes::new(py, path).into_any()); // Linux abstract namespace
                }
                let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
                // SAFETY: a valid pointer and length; returns a new reference or NULL with an error set.
                unsafe {
                    Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t))
                }
            }
            family => Ok((family, PyBytes::new(py, self.bytes())).into_pyobject(py)?.into_any()),
        }
    }
}

extern "C" {
    // POSIX, in every libc; not bound by the libc crate.
    fn inet_ntop(af: libc::c_int, src: *const libc::c_void, dst: *mut libc::c_char, size: libc::socklen_t) -> *const libc::c_char;
}

/// IPv6 text as Python's socket module writes it (inet_ntop, so `::ffff:1.2.3.4` too).
fn inet6_text(addr: &libc::in6_addr) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `buf` has room for INET6_ADDRSTRLEN (46) bytes; inet_ntop NUL-terminates on success.
    let ok = unsafe { !inet_ntop(libc::AF_INET6, (addr as *const libc::in6_addr).cast(), buf.as_mut_ptr(), buf.len() as _).is_null() };
    if ok {
        // SAFETY: NUL-terminated by inet_ntop.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        Ipv6Addr::from(addr.s6_addr).to_string()
    }
}

/// One datagram from `fd` into `buf`, its sender into `from`; retried on EINTR.
fn recv_datagram(fd: RawFd, buf: &mut [u8], from: &mut SockAddr) -> Result<usize, i32> {
    crate::sys::retrying(|| {
        from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` and `from.storage` are valid for the lengths passed.
        unsafe { crate::sys::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), 0, (&mut from.storage as *mut libc::sockaddr_storage).cast(), &mut from.len) }
    })
}

/// Sends one datagram (to the connected peer when `to` is None); retried on EINTR.
/// A datagram goes whole or not at all.
fn send_datagram(fd: RawFd, data: &[u8], to: Option<&SockAddr>) -> Result<(), i32> {
    crate::sys::retrying(|| {
        // SAFETY: `data` and the address are valid for the lengths passed.
        unsafe {
            match to {
                Some(a) => crate::sys::sendto(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL, a.as_ptr(), a.len),
                None => crate::sys::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL),
            }
        }
    })
    .map(drop)
}

/// Where a datagram goes.
enum Dest {
    /// The connected peer: `send()`.
    Peer,
    Addr(SockAddr),
    /// An address only Python's socket module understands (a host name, say) or
    /// rejects: sent with `sock.sendto`, which raises what asyncio's transport meets.
    Python(Py<PyAny>),
}

/// A datagram the kernel refused (EAGAIN), waiting for the socket to drain.
struct Pending {
    data: Box<[u8]>,
    dest: Dest,
}

/// Recently seen peers and the Python address object made for each: a peer that
/// sends again gets the same (immutable) object, and `sendto(data, addr)` with
/// the object `datagram_received` was given finds the kernel address by identity.
struct PeerCache {
    slots: [Option<(SockAddr, Py<PyAny>)>; PEER_SLOTS],
}

impl PeerCache {
    fn new() -> PeerCache {
        PeerCache { slots: std::array::from_fn(|_| None) }
    }

    fn slot_of(addr: &SockAddr) -> usize {
        let h = addr.bytes().iter().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
        (h as usize) % PEER_SLOTS
    }

    fn object_for(&self, py: Python<'_>, addr: &SockAddr) -> Option<Py<PyAny>> {
        match &self.slots[Self::slot_of(addr)] {
            Some((a, obj)) if a.bytes() == addr.bytes() => Some(obj.clone_ref(py)),
            _ => None,
        }
    }

    /// Remembers `obj` for `addr`; returns the entry it replaces (to drop outside any borrow).
    fn insert(&mut self, addr: SockAddr, obj: Py<PyAny>) -> Option<(SockAddr, Py<PyAny>)> {
        self.slots[Self::slot_of(&addr)].replace((addr, obj))
    }

    fn addr_of(&self, obj: &Bound<'_, PyAny>) -> Option<SockAddr> {
        self.slots.iter().flatten().find(|(_, o)| o.as_ptr() == obj.as_ptr()).map(|(a, _)| *a)
    }
}

struct Inner {
    loop_obj: Option<Py<PyAny>>,
    /// The `asyncio.DatagramTransport` object users and protocols see (glassloop._loop.DatagramTransport).
    facade: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffer: VecDeque<Pending>,
    /// `get_write_buffer_size()`: bytes buffered (plus a header per datagram on 3.13+).
    buffer_size: usize,
    closing: bool,
    paused: bool,
    /// Reading has begun (after connection_made, as asyncio does).
    started: bool,
    /// The fd is registered with the loop's poller.
    registered: bool,
    /// ... and watched for writability (only while datagrams are buffered).
    watching_writes: bool,
    conn_lost: u32,
    protocol_paused: bool,
    created_unix_ms: u64,
    paused_reading_since: u64,
    paused_writing_since: u64,
    paused_reading_ns: u64,
    paused_writing_ns: u64,
    high: usize,
    low: usize,
    stats: TransportStats,
    peers: PeerCache,
}

impl Inner {
    fn reading(&self) -> bool {
        self.conn_lost == 0 && !self.closing && !self.paused && self.started
    }
}

#[pyclass(frozen, weakref, module = "glassloop._core", name = "DatagramTransportCore")]
pub struct DatagramTransport {
    fd: RawFd,
    pub(super) io_site: IoSite,
    family: i32,
    context: Py<PyAny>,
    extra: Py<PyDict>,
    /// create_datagram_endpoint's `remote_addr`: the only address sendto() accepts.
    address: Option<Py<PyAny>>,
    /// The socket has a peer (asyncio looks at `extra['peername']`): datagrams go out with send().
    connected: bool,
    /// asyncio 3.13 sends empty datagrams; earlier versions drop them in sendto().
    send_empty: bool,
    header_size: usize,
    inner: GilCell<Inner>,
}

/// What one step of flushing the buffer found.
enum Flush {
    Done,
    Sent,
    Blocked,
    Failed(i32),
    Python(Pending),
}

impl DatagramTransport {
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
        let protocol = self.protocol_obj(py);
        let protocol_name = match protocol {
            Some(p) => p.bind(py).get_type().name()?.to_string(),
            None => String::new(),
        };
        let now = crate::clock::now_ns();
        Ok(self.inner.with(py, |i| inspector::TransportRecord {
            id: self.fd as u64,
            kind: inspector::TransportKind::Udp,
            local,
            peer,
            protocol: protocol_name,
            created_unix_ms: i.created_unix_ms,
            bytes_in: i.stats.bytes_in,
            bytes_out: i.stats.bytes_out,
            calls_in: i.stats.calls_in,
            calls_out: i.stats.calls_out,
            write_buffer: i.buffer_size as u64,
            write_buffer_high_water: i.stats.high_water as u64,
            reading_paused: i.paused,
            writing_paused: i.protocol_paused,
            paused_reading_ns: i.paused_reading_ns + if i.paused { now.saturating_sub(i.paused_reading_since) } else { 0 },
            paused_writing_ns: i.paused_writing_ns + if i.protocol_paused { now.saturating_sub(i.paused_writing_since) } else { 0 },
            state: if i.sock.is_none() { "closed" } else if i.closing { "closing" } else { "open" }.to_string(),
        }))
    }

    pub fn stats(&self, py: Python<'_>) -> TransportStats {
        self.inner.with(py, |i| i.stats)
    }

    /// The object to show to Python (exception handler contexts, logs).
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

    /// The protocol's class (see `Transport::protocol_class`).
    pub fn protocol_class<'py>(&self, py: Python<'py>) -> Option<Bound<'py, pyo3::types::PyType>> {
        self.inner.with(py, |i| i.protocol.as_ref().map(|p| p.bind(py).get_type()))
    }

    fn protocol_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    /// The loop calls this when the fd is ready; errors are only SystemExit/KeyboardInterrupt.
    pub fn on_events(slf: &Bound<'_, Self>, readable: bool, writable: bool) -> PyResult<()> {
        with_context(slf.py(), &slf.get().context, || {
            if readable {
                Self::read_ready(slf)?;
            }
            if writable {
                Self::write_ready(slf)?;
            }
            Ok(())
        })
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut last_was_datagram = false;
        for _ in 0..MAX_DATAGRAMS_PER_EVENT {
            let Some(protocol) = this.inner.with(py, |i| if i.reading() { i.protocol.as_ref().map(|p| p.clone_ref(py)) } else { None }) else {
                return Ok(());
            };
            let mut from = SockAddr::new();
            let read = READ_BUFFER.with(|buf| {
                let mut buf = buf.borrow_mut();
                recv_datagram(this.fd, &mut buf, &mut from).map(|n| PyBytes::new(py, &buf[..n]))
            });
            let result = match read {
                Ok(data) => {
                    last_was_datagram = true;
                    let addr = this.peer_object(py, &from)?;
                    this.inner.with(py, |i| {
                        i.stats.bytes_in += data.as_bytes().len() as u64;
                        i.stats.calls_in += 1;
                    });
                    protocol.bind(py).call_method1(pyo3::intern!(py, "datagram_received"), (data, addr))
                }
                Err(libc::EAGAIN) => return Ok(()),
                Err(errno) => {
                    // An ICMP error for an earlier datagram (or another socket error): the
                    // protocol hears of it and the endpoint stays open, as in asyncio.
                    last_was_datagram = false;
                    protocol.bind(py).call_method1(pyo3::intern!(py, "error_received"), (os_error(errno).into_value(py),))
                }
            };
            if let Err(err) = result {
                Self::report_callback_error(slf, err, "_read_ready")?;
            }
        }
        // Edge-triggered: datagrams left unread raise no new event, so come back next iteration.
        if last_was_datagram {
            if let Some(core) = this.core(py) {
                core.get().queue_io(py, slf.clone().unbind(), true, false);
            }
        }
        Ok(())
    }

    /// The Python address for a sender, made once per recently seen peer.
    fn peer_object(&self, py: Python<'_>, from: &SockAddr) -> PyResult<Py<PyAny>> {
        if let Some(obj) = self.inner.with(py, |i| i.peers.object_for(py, from)) {
            return Ok(obj);
        }
        let obj = from.python_object(py)?.unbind();
        let replaced = self.inner.with(py, |i| i.peers.insert(*from, obj.clone_ref(py)));
        drop(replaced);
        Ok(obj)
    }

    /// The kernel address for a Python address, when it is one we can read
    /// without Python's help: a numeric IP host (not a name) or a Unix path.
    fn parse_addr(&self, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
        match self.family {
            libc::AF_INET | libc::AF_INET6 => {
                let t = addr.cast::<PyTuple>().ok()?;
                let host = t.get_item(0).ok()?;
                let host = host.cast::<PyString>().ok()?.to_str().ok()?;
                let port: u16 = t.get_item(1).ok()?.cast::<PyInt>().ok()?.extract().ok()?;
                if self.family == libc::AF_INET {
                    if t.len() != 2 {
                        return None;
                    }
                    Some(SockAddr::v4(host.parse().ok()?, port))
                } else {
                    if !(2..=4).contains(&t.len()) {
                        return None;
                    }
                    let field = |n: usize| -> Option<u32> {
                        if n >= t.len() {
                            return Some(0);
                        }
                        t.get_item(n).ok()?.cast::<PyInt>().ok()?.extract().ok()
                    };
                    let (flowinfo, scope_id) = (field(2)?, field(3)?);
                    if flowinfo > 0xfffff {
                        return None; // Python raises OverflowError
                    }
                    Some(SockAddr::v6(host.parse().ok()?, port, flowinfo, scope_id))
                }
            }
            libc::AF_UNIX => {
                if let Ok(s) = addr.cast::<PyString>() {
                    // SAFETY: a str; returns a new bytes reference or NULL with an error set.
                    let encoded = unsafe { Bound::from_owned_ptr_or_err(addr.py(), ffi::PyUnicode_EncodeFSDefault(s.as_ptr())) };
                    match encoded {
                        Ok(b) => SockAddr::unix(b.cast::<PyBytes>().ok()?.as_bytes()),
                        Err(_) => None, // let Python raise it
                    }
                } else {
                    SockAddr::unix(addr.cast_exact::<PyBytes>().ok()?.as_bytes())
                }
            }
            _ => None,
        }
    }

    fn dest_for(&self, py: Python<'_>, addr: Option<&Bound<'_, PyAny>>) -> Dest {
        if self.connected {
            return Dest::Peer;
        }
        let Some(addr) = addr else {
            // Unconnected with no address: Python's sendto raises asyncio's TypeError.
            return Dest::Python(py.None());
        };
        if let Some(a) = self.inner.with(py, |i| i.peers.addr_of(addr)) {
            return Dest::Addr(a);
        }
        match self.parse_addr(addr) {
            Some(a) => Dest::Addr(a),
            None => Dest::Python(addr.clone().unbind()),
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut blocked = false;
        while !blocked {
            let step = this.inner.with(py, |i| {
                if i.conn_lost > 0 {
                    return Flush::Done;
                }
                let Some(front) = i.buffer.front() else { return Flush::Done };
                let to = match &front.dest {
                    Dest::Peer => None,
                    Dest::Addr(a) => Some(a),
                    Dest::Python(_) => {
                        let p = i.buffer.pop_front().expect("front exists");
                        i.buffer_size -= p.data.len() + this.header_size;
                        return Flush::Python(p);
                    }
                };
                let sent = send_datagram(this.fd, &front.data, to);
                if sent == Err(libc::EAGAIN) {
                    return Flush::Blocked;
                }
                let n = i.buffer.pop_front().expect("front exists").data.len();
                i.buffer_size -= n + this.header_size;
                match sent {
                    Ok(()) => {
                        i.stats.bytes_out += n as u64;
                        i.stats.calls_out += 1;
                        Flush::Sent
                    }
                    Err(errno) => Flush::Failed(errno),
                }
            });
            match step {
                Flush::Done => break,
                Flush::Sent => {}
                Flush::Blocked => blocked = true,
                Flush::Failed(errno) => {
                    // Unlike asyncio we go on with the rest: edge-triggered, the socket
                    // may not say "writable" again.
                    if let Some(protocol) = this.protocol_obj(py) {
                        if let Err(err) = protocol.bind(py).call_method1(pyo3::intern!(py, "error_received"), (os_error(errno).into_value(py),)) {
                            Self::report_callback_error(slf, err, "_sendto_ready")?;
                        }
                    }
                }
                Flush::Python(p) => {
                    let Dest::Python(addr) = &p.dest else { unreachable!("only Python destinations are handed out") };
                    let data = PyBytes::new(py, &p.data);
                    match Self::python_sendto(slf, data.as_any(), p.data.len(), addr.bind(py), false)? {
                        PySend::Sent => {}
                        PySend::Blocked => {
                            this.inner.with(py, |i| {
                                i.buffer_size += p.data.len() + this.header_size;
                                i.buffer.push_front(p);
                            });
                            blocked = true;
                        }
                        PySend::Closed => return Ok(()),
                    }
                }
            }
        }
        Self::maybe_resume_protocol(slf)?; // may buffer more
        let (empty, closing, lost) = this.inner.with(py, |i| (i.buffer.is_empty(), i.closing, i.conn_lost > 0));
        if empty && !lost {
            Self::watch_writes(slf, false)?;
            if closing {
                Self::call_connection_lost(slf, None)?;
            }
        }
        Ok(())
    }

    /// `sock.sendto(data, addr)` through Python, for addresses only Python reads:
    /// what it raises is sorted as asyncio's transport sorts it. `in_sendto`: called
    /// from `sendto()`, whose caller gets what `error_received` raises.
    fn python_sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, len: usize, addr: &Bound<'_, PyAny>, in_sendto: bool) -> PyResult<PySend> {
        let py = slf.py();
        let this = slf.get();
        let Some(sock) = this.inner.with(py, |i| i.sock.as_ref().map(|s| s.clone_ref(py))) else {
            return Ok(PySend::Closed);
        };
        match sock.bind(py).call_method1(pyo3::intern!(py, "sendto"), (data, addr)) {
            Ok(_) => {
                this.inner.with(py, |i| {
                    i.stats.bytes_out += len as u64;
                    i.stats.calls_out += 1;
                });
                Ok(PySend::Sent)
            }
            Err(err) if err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py) => Ok(PySend::Blocked),
            Err(err) if err.is_instance_of::<PyOSError>(py) => {
                let Some(protocol) = this.protocol_obj(py) else { return Ok(PySend::Sent) };
                match protocol.bind(py).call_method1(pyo3::intern!(py, "error_received"), (err.into_value(py),)) {
                    Err(e) if !in_sendto => Self::report_callback_error(slf, e, "_sendto_ready")?,
                    other => drop(other?),
                }
                Ok(PySend::Sent)
            }
            Err(err) if is_fatal_signal(py, &err) => Err(err),
            Err(err) => {
                Self::fatal_error(slf, err, "Fatal write error on datagram transport")?;
                Ok(PySend::Closed)
            }
        }
    }

    /// A protocol callback raised during an I/O event. asyncio runs the transport's
    /// reader and writer from loop handles, so the error goes to the exception
    /// handler and the endpoint stays open; SystemExit/KeyboardInterrupt go up.
    fn report_callback_error(slf: &Bound<'_, Self>, err: PyErr, site: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal_signal(py, &err) {
            return Err(err);
        }
        let Some(lp) = slf.get().loop_obj(py) else { return Ok(()) };
        let public = Self::public(slf);
        let ctx = PyDict::new(py);
        ctx.set_item("message", format!("Exception in callback {}.{site}()", public.get_type().name()?))?;
        ctx.set_item("exception", err.value(py))?;
        ctx.set_item("transport", &public)?;
        ctx.set_item("protocol", slf.get().protocol_obj(py))?;
        lp.call_method1(pyo3::intern!(py, "call_exception_handler"), (ctx,))?;
        Ok(())
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
        let dropped = slf.get().inner.with(py, |i| {
            if i.conn_lost > 0 {
                return None;
            }
            i.closing = true;
            i.conn_lost += 1;
            i.buffer_size = 0;
            Some(std::mem::take(&mut i.buffer))
        });
        let Some(dropped) = dropped else { return Ok(()) };
        drop(dropped); // may hold Python addresses: outside the borrow
        Self::watch_writes(slf, false)?;
        Self::schedule_connection_lost(slf, exc)
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        if let Some(lp) = slf.get().loop_obj(py) {
            lp.call_method1("call_soon", (slf.getattr("_call_connection_lost")?, exc))?;
        }
        Ok(())
    }

    /// asyncio's `_call_connection_lost`: tell the protocol, then release the socket.
    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // From here on sendto() counts and drops, as after close() with nothing buffered.
        this.inner.with(py, |i| i.conn_lost = i.conn_lost.max(1));
        let result = match this.protocol_obj(py) {
            Some(p) => p.bind(py).call_method1("connection_lost", (exc,)).map(drop),
            None => Ok(()),
        };
        if let Some(core) = this.core(py) {
            core.get().deregister_transport(py, this.fd);
        }
        let (sock, lp, proto, facade, buffer, peers) = this.inner.with(py, |i| {
            i.registered = false;
            i.watching_writes = false;
            i.buffer_size = 0;
            (i.sock.take(), i.loop_obj.take(), i.protocol.take(), i.facade.take(), std::mem::take(&mut i.buffer), std::mem::replace(&mut i.peers, PeerCache::new()))
        });
        if let Some(sock) = &sock {
            sock.bind(py).call_method0("close")?;
        }
        drop((sock, lp, proto, facade, buffer, peers));
        result
    }

    /// Registers the fd with the loop's poller, once, while the socket is open.
    fn ensure_registered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.inner.with(py, |i| i.registered || i.sock.is_none()) {
            return Ok(());
        }
        if let Some(core) = this.core(py) {
            core.get().register_transport(py, this.fd, slf.clone().unbind())?;
            this.inner.with(py, |i| i.registered = true);
        }
        Ok(())
    }

    /// Watches the fd for writability (only while datagrams are buffered).
    fn watch_writes(slf: &Bound<'_, Self>, on: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if on {
            Self::ensure_registered(slf)?;
        }
        if !this.inner.with(py, |i| i.registered && i.watching_writes != on) {
            return Ok(());
        }
        if let Some(core) = this.core(py) {
            core.get().set_transport_writable(py, this.fd, on)?;
            this.inner.with(py, |i| i.watching_writes = on);
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = slf.get().inner.with(py, |i| {
            if i.buffer_size > i.high && !i.protocol_paused {
                i.protocol_paused = true;
                i.paused_writing_since = crate::clock::now_ns();
                i.protocol.as_ref().map(|p| p.clone_ref(py))
            } else {
                None
            }
        });
        match pause {
            Some(protocol) => Self::flow_control_call(slf, protocol.bind(py), "pause_writing", "protocol.pause_writing() failed"),
            None => Ok(()),
        }
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = slf.get().inner.with(py, |i| {
            if i.protocol_paused && i.buffer_size <= i.low {
                i.protocol_paused = false;
                i.paused_writing_ns += crate::clock::now_ns().saturating_sub(i.paused_writing_since);
                i.protocol.as_ref().map(|p| p.clone_ref(py))
            } else {
                None
            }
        });
        match resume {
            Some(protocol) => Self::flow_control_call(slf, protocol.bind(py), "resume_writing", "protocol.resume_writing() failed"),
            None => Ok(()),
        }
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

    /// Buffers a datagram the kernel refused; then flow control.
    fn buffer_datagram(slf: &Bound<'_, Self>, data: &[u8], dest: Dest) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.inner.with(py, |i| {
            i.buffer.push_back(Pending { data: data.into(), dest });
            i.buffer_size += data.len() + this.header_size;
            i.stats.high_water = i.stats.high_water.max(i.buffer_size);
        });
        Self::watch_writes(slf, true)?;
        Self::maybe_pause_protocol(slf)
    }
}

/// How a send through Python's socket went.
enum PySend {
    Sent,
    Blocked,
    /// The transport was closed (by a fatal error, or before the send).
    Closed,
}

#[pymethods]
impl DatagramTransport {
    /// Made by the loop (`_make_datagram_transport`), not by users.
    #[new]
    #[pyo3(signature = (loop_obj, sock, protocol, address = None, extra = None))]
    fn new(
        py: Python<'_>,
        loop_obj: Bound<'_, PyAny>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        address: Option<Bound<'_, PyAny>>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let family: i32 = sock.getattr("family")?.extract()?;
        let extra = match extra {
            Some(e) => e.copy()?,
            None => PyDict::new(py),
        };
        // As asyncio's _SelectorTransport sets them up.
        extra.set_item("socket", py.import("asyncio.trsock")?.getattr("TransportSocket")?.call1((&sock,))?)?;
        extra.set_item("sockname", sock.call_method0("getsockname").ok())?;
        if !extra.contains("peername")? {
            extra.set_item("peername", sock.call_method0("getpeername").ok())?;
        }
        let connected = match extra.get_item("peername")? {
            Some(p) => p.is_truthy()?,
            None => false,
        };
        let address = match address {
            Some(a) if a.is_truthy()? => Some(a.unbind()),
            _ => None,
        };
        let v313 = py.version_info() >= (3, 13);
        let transport = DatagramTransport {
            fd,
            io_site: IoSite::default(),
            family,
            context: crate::handles::copy_current_context(py)?,
            extra: extra.unbind(),
            address,
            connected,
            send_empty: v313,
            header_size: if v313 { HEADER_SIZE_313 } else { 0 },
            inner: GilCell::new(Inner {
                loop_obj: Some(loop_obj.unbind()),
                facade: None,
                sock: Some(sock.unbind()),
                protocol: Some(protocol.unbind()),
                buffer: VecDeque::new(),
                buffer_size: 0,
                closing: false,
                paused: false,
                started: false,
                registered: false,
                watching_writes: false,
                conn_lost: 0,
                protocol_paused: false,
                created_unix_ms: inspector::clock::unix_ms(),
                paused_reading_since: 0,
                paused_writing_since: 0,
                paused_reading_ns: 0,
                paused_writing_ns: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                stats: TransportStats::default(),
                peers: PeerCache::new(),
            }),
        };
        Ok(transport)
    }

    /// Links the Python-visible transport object (an `asyncio.DatagramTransport` subclass).
    fn _set_facade(&self, py: Python<'_>, facade: Py<PyAny>) {
        let old = self.inner.with(py, |i| i.facade.replace(facade));
        drop(old);
    }

    /// Registers the fd and reads what already arrived (called soon after connection_made).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = this.inner.with(py, |i| {
            let start = !i.started && i.conn_lost == 0;
            i.started = true;
            start
        });
        if !start {
            return Ok(());
        }
        Self::ensure_registered(slf)?;
        if let Some(core) = this.core(py) {
            core.get().queue_io(py, slf.clone().unbind(), true, false);
        }
        Ok(())
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc.map(Bound::unbind))
    }

    /// Sends `data` to `addr` (or the connected peer); buffers it if the socket is full.
    #[pyo3(signature = (data, addr = None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // bytes, the common case, without a buffer export; anything else as asyncio checks it.
        let exported: RawBuffer;
        let payload: &[u8] = match data.cast_exact::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                exported = StreamTransport::check_bytes_like(data)?;
                exported.as_slice()
            }
        };
        if payload.is_empty() && !this.send_empty {
            return Ok(());
        }
        if let Some(address) = &this.address {
            if let Some(a) = &addr {
                // asyncio: `addr not in (None, self._address)`.
                if !a.is_none() && !a.is(address) && !address.bind(py).eq(a)? {
                    return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.bind(py).str()?)));
                }
            }
        }
        let (conn_lost, queued) = this.inner.with(py, |i| (i.conn_lost, !i.buffer.is_empty()));
        if conn_lost > 0 {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                stdlib::asyncio_logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            this.inner.with(py, |i| i.conn_lost += 1);
            return Ok(());
        }
        let dest = this.dest_for(py, addr.as_ref());
        if queued {
            // Keep the order: behind what is already waiting.
            return Self::buffer_datagram(slf, payload, dest);
        }
        let to = match &dest {
            Dest::Peer => None,
            Dest::Addr(a) => Some(a),
            Dest::Python(a) => {
                return match Self::python_sendto(slf, data, payload.len(), a.bind(py), true)? {
                    PySend::Blocked => Self::buffer_datagram(slf, payload, dest),
                    PySend::Sent | PySend::Closed => Ok(()),
                };
            }
        };
        match send_datagram(this.fd, payload, to) {
            Ok(()) => {
                this.inner.with(py, |i| {
                    i.stats.bytes_out += payload.len() as u64;
                    i.stats.calls_out += 1;
                });
                Ok(())
            }
            Err(libc::EAGAIN) => Self::buffer_datagram(slf, payload, dest),
            Err(errno) => {
                // As asyncio: the protocol hears of it, and what it raises goes to our caller.
                match this.protocol_obj(py) {
                    Some(p) => p.bind(py).call_method1(pyo3::intern!(py, "error_received"), (os_error(errno).into_value(py),)).map(drop),
                    None => Ok(()),
                }
            }
        }
    }

    /// Closes after the buffered datagrams are sent; then `connection_lost(None)`.
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
            Self::watch_writes(slf, false)?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// Closes now, dropping buffered datagrams.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    /// asyncio's private `_force_close(exc)`: abort, and give `exc` to `connection_lost`.
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
            // Edge-triggered: datagrams that arrived while paused raised no new event.
            if let (true, Some(core)) = (started, this.core(py)) {
                core.get().queue_io(py, slf.clone().unbind(), true, false);
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
        self.inner.with(py, |i| i.buffer_size)
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

    fn set_protocol(&self, py: Python<'_>, protocol: Py<PyAny>) {
        let old = self.inner.with(py, |i| i.protocol.replace(protocol));
        self.io_site.forget();
        drop(old);
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

    #[getter]
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.address.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| i.protocol_paused)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.inner.with(py, |i| {
            let mut info = vec!["DatagramTransport".to_string()];
            if i.sock.is_none() {
                info.push("closed".into());
            } else if i.closing {
                info.push("closing".into());
            }
            info.push(format!("fd={}", self.fd));
            if i.sock.is_some() {
                info.push(if i.reading() { "read=polling".into() } else { "read=idle".into() });
                let state = if i.watching_writes { "polling" } else { "idle" };
                info.push(format!("write=<{state}, bufsize={}>", i.buffer_size));
            }
            format!("<{}>", info.join(" "))
        })
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.context)?;
        visit.call(&self.extra)?;
        visit.call(&self.address)?;
        self.inner
            .try_peek(|i| {
                visit.call(&i.loop_obj)?;
                visit.call(&i.facade)?;
                visit.call(&i.sock)?;
                visit.call(&i.protocol)?;
                for p in &i.buffer {
                    if let Dest::Python(a) = &p.dest {
                        visit.call(a)?;
                    }
                }
                Ok(())
            })
            .unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = self.inner.with(py, |i| (i.loop_obj.take(), i.protocol.take(), i.facade.take(), std::mem::take(&mut i.buffer)));
            drop(dropped);
        });
    }
}
