//! The reactor: file descriptors watched with mio for `add_reader`/`add_writer`.
//!
//! mio is edge-triggered; asyncio's readers and writers are level-triggered (a
//! reader that leaves data unread is called again, at the next iteration). An fd
//! with an `add_reader`/`add_writer` callback is therefore registered
//! level-triggered, with `epoll_ctl` on mio's epoll instance directly (mio has no
//! level-triggered mode; its poll reports these events like its own). The
//! kernel then reports the fd at every poll while it is ready, and at no other
//! time, which is exactly the selector loop's behaviour: no wakeup is lost, an
//! idle fd costs nothing, and a long-lived reader (a pipe transport) costs
//! `epoll_ctl` only when it is added, removed or changes sides, never per event.
//! The alternatives cost more: re-arming each fired fd (`EPOLL_CTL_MOD`) is one
//! syscall per callback; keeping a "still ready" list until a read returns EAGAIN
//! is impossible, since the callback's reads are not ours to see.
//!
//! A socket used only by `sock_*` calls stays registered between calls (see
//! [`Watcher::idle_owner`]): an echo loop on sock_recv/sock_sendall then makes no
//! epoll_ctl at all, where registering for each wait would cost two.

use crate::handles::{Handle, Ready};
use crate::sock::SockWait;
use crate::transports::{StreamTransport, Transport};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
// fds are small integers the kernel picks: SipHash's flooding defence buys
// nothing here, and the lookup runs once per event.
use rustc_hash::FxHashMap as HashMap;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

/// The token of the loop's mio `Waker`; fds use their own number as token.
pub const WAKER_TOKEN: Token = Token(usize::MAX);

/// What waits on one side of an fd: an `add_reader`/`add_writer` callback or a
/// waiting `sock_*` call (sock.rs). One per side: a new one replaces the old, as
/// in asyncio, where `sock_recv` is an `add_reader` too.
pub enum Waiter {
    Handle(Py<Handle>),
    Sock(SockWait),
}

impl Waiter {
    /// A replaced or removed waiter: a handle is cancelled, as asyncio does; a
    /// `sock_*` call's future stays pending, as asyncio's does (its reader is gone).
    /// Call without the state borrowed: dropping it may run Python code.
    pub fn cancel(self, py: Python<'_>) {
        if let Waiter::Handle(h) = &self {
            h.get().cancel_inner(py);
        }
    }
}

/// How the kernel watches an fd.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Registration {
    interest: Interest,
    /// Level-triggered (reported at every poll while ready): while a callback
    /// (`Waiter::Handle`) is on either side, whose reads we cannot see. `sock_*`
    /// calls alone use mio's edge-triggered mode: they retry their syscall until
    /// EAGAIN, so the next edge is all they need, and an fd kept registered while
    /// idle (see [`Watcher::idle_owner`]) then stays quiet however ready it is.
    level: bool,
}

#[derive(Default)]
struct Watcher {
    reader: Option<Waiter>,
    writer: Option<Waiter>,
    /// How the fd is registered with the kernel now (None: not registered).
    registered: Option<Registration>,
    /// A weak reference to the socket whose `sock_*` calls registered this fd, set
    /// while only such calls have waited on it: the registration is then kept when
    /// no call waits (edge-triggered, so an idle fd costs one ignored event per
    /// edge at most). A later call on the same live socket object finds it still
    /// valid; a call on another socket (the fd was closed and reused, or the object
    /// died) registers afresh. A handle on the fd ends the arrangement. (A weak
    /// reference without a callback: dropping it, even under the state borrow,
    /// runs no Python code.)
    idle_owner: Option<Py<PyWeakrefReference>>,
}

impl Watcher {
    fn is_idle(&self) -> bool {
        self.reader.is_none() && self.writer.is_none()
    }

    /// Whether `sock` is the live socket whose registration this fd kept.
    fn owned_by(&self, py: Python<'_>, sock: &Py<PyAny>) -> bool {
        self.idle_owner.as_ref().is_some_and(|weak| weak.bind(py).upgrade().is_some_and(|s| s.is(sock)))
    }

    fn wanted(&self) -> Option<Registration> {
        let interest = match (self.reader.is_some(), self.writer.is_some()) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (true, false) => Interest::READABLE,
            (false, true) => Interest::WRITABLE,
            (false, false) => return None,
        };
        let level = matches!(self.reader, Some(Waiter::Handle(_))) || matches!(self.writer, Some(Waiter::Handle(_)));
        Some(Registration { interest, level })
    }
}

#[derive(Default)]
pub struct Watchers {
    fds: HashMap<RawFd, Watcher>,
    /// fds owned by Rust transports (registered edge-triggered for life; see `Transport::interest`).
    transports: HashMap<RawFd, Transport>,
    /// Sides reported ready whose callback handle had been cancelled: removed
    /// before the next poll, as asyncio's selector loop removes them (a
    /// level-triggered fd that nobody reads would otherwise wake every poll).
    cancelled: Vec<(RawFd, Side)>,
    /// Idle fds (kept registered for sock_* calls) that had an event nobody waited
    /// for: unregistered before the next poll unless a call waits on them again.
    idle_fired: Vec<RawFd>,
    /// Transports to report readable with the next poll's events although the
    /// kernel raises no new edge (a read that may have left data or a FIN behind,
    /// `resume_reading`): what a level-triggered selector would report again.
    rereads: Vec<Py<StreamTransport>>,
}

/// Which side of an fd a watcher is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Read,
    Write,
}

impl Watchers {
    /// fds with something waiting on them (not those only kept registered while idle).
    pub fn len(&self) -> usize {
        self.fds.values().filter(|w| !w.is_idle()).count()
    }

    /// Installs `waiter` as the fd's reader or writer; returns the one it replaces,
    /// or, when the kernel refuses the fd, the error and `waiter` itself.
    pub fn add(&mut self, py: Python<'_>, registry: &Registry, fd: RawFd, side: Side, waiter: Waiter) -> Result<Option<Waiter>, (io::Error, Waiter)> {
        let w = self.fds.entry(fd).or_default();
        match &waiter {
            Waiter::Handle(_) => w.idle_owner = None,
            Waiter::Sock(wait) if !w.owned_by(py, wait.sock()) => {
                if w.idle_owner.is_some() && w.is_idle() {
                    // Kept for another socket: the fd was closed (and the kernel
                    // dropped it) or is shared; sync_registration finds out which.
                    w.registered = None;
                }
                let fresh = w.is_idle() && w.registered.is_none();
                w.idle_owner = if fresh { PyWeakrefReference::new(wait.sock().bind(py)).ok().map(Bound::unbind) } else { None };
            }
            Waiter::Sock(_) => {}
        }
        let old = w.side(side).replace(waiter);
        if let Err(e) = sync_registration(registry, fd, w) {
            // Undo, as a selector does when the kernel refuses the fd.
            let rejected = std::mem::replace(w.side(side), old).expect("installed just above");
            if w.is_idle() && w.registered.is_none() {
                self.fds.remove(&fd);
            }
            return Err((e, rejected));
        }
        Ok(old)
    }

    /// Removes the fd's reader or writer; returns it (None if there was none).
    pub fn remove(&mut self, registry: &Registry, fd: RawFd, side: Side) -> Option<Waiter> {
        let w = self.fds.get_mut(&fd)?;
        let old = w.side(side).take();
        if old.is_some() {
            // remove_reader/remove_writer: the fd is the caller's again, unregistered.
            w.idle_owner = None;
        }
        // A closed fd has already left the epoll set; nothing to undo then.
        let _ = sync_registration(registry, fd, w);
        if w.is_idle() && w.registered.is_none() {
            self.fds.remove(&fd);
        }
        old
    }

    /// Takes the waiting `sock_*` call off one side of `fd` to try its syscall; the
    /// kernel registration stays until [`Watchers::settle`] or [`Watchers::restore`].
    pub fn take_sock(&mut self, fd: RawFd, side: Side) -> Option<SockWait> {
        let slot = self.fds.get_mut(&fd)?.side(side);
        match slot.take() {
            Some(Waiter::Sock(wait)) => Some(wait),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Puts a `sock_*` call that must wait longer back, unless something took its
    /// side meanwhile (then it is returned, replaced, as asyncio's would be).
    pub fn restore(&mut self, registry: &Registry, fd: RawFd, side: Side, wait: SockWait) -> Option<Waiter> {
        let w = self.fds.entry(fd).or_default();
        let slot = w.side(side);
        if slot.is_some() {
            return Some(Waiter::Sock(wait));
        }
        *slot = Some(Waiter::Sock(wait));
        match sync_registration(registry, fd, w) {
            Ok(()) => None,
            // The fd is gone (closed): nothing can wake the call, as under asyncio.
            Err(_) => w.side(side).take(),
        }
    }

    /// Removes the `sock_*` call waiting on `future`, looked for at `fd`, or at
    /// every fd when `fd` is None (its socket was closed since).
    pub fn abandon(&mut self, registry: &Registry, fd: Option<RawFd>, future: &Py<PyAny>) -> Option<SockWait> {
        let is_it = |w: &Option<Waiter>| matches!(w, Some(Waiter::Sock(s)) if s.future().is(future));
        let (fd, side) = match fd {
            Some(fd) => {
                let w = self.fds.get(&fd)?;
                (fd, if is_it(&w.reader) { Side::Read } else if is_it(&w.writer) { Side::Write } else { return None })
            }
            None => self.fds.iter().find_map(|(fd, w)| {
                if is_it(&w.reader) {
                    Some((*fd, Side::Read))
                } else if is_it(&w.writer) {
                    Some((*fd, Side::Write))
                } else {
                    None
                }
            })?,
        };
        let wait = self.take_sock(fd, side);
        self.settle(registry, fd);
        wait
    }

    /// Makes the kernel registration of `fd` match its waiters again (after a
    /// `sock_*` call finished), forgetting the fd when none is left.
    pub fn settle(&mut self, registry: &Registry, fd: RawFd) {
        let Some(w) = self.fds.get_mut(&fd) else { return };
        // A closed fd has already left the epoll set; nothing to undo then.
        if sync_registration(registry, fd, w).is_err() {
            w.registered = None;
        }
        if w.is_idle() && w.registered.is_none() {
            self.fds.remove(&fd);
        }
    }

    /// The registered sides of `fd`, for the selector view (`(readable, writable)`).
    pub fn sides(&self, fd: RawFd) -> Option<(bool, bool)> {
        self.fds.get(&fd).filter(|w| !w.is_idle()).map(|w| (w.reader.is_some(), w.writer.is_some()))
    }

    pub fn add_transport(&mut self, registry: &Registry, fd: RawFd, transport: Transport) -> io::Result<Option<Transport>> {
        // A socket that sock_* calls left registered becomes the transport's.
        if self.fds.get(&fd).is_some_and(|w| w.is_idle()) {
            self.fds.remove(&fd);
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
        registry.register(&mut SourceFd(&fd), Token(fd as usize), transport.interest())?;
        Ok(self.transports.insert(fd, transport))
    }

    /// Changes what a transport's fd is registered for (a datagram transport
    /// watches writability only while it has datagrams buffered).
    pub fn set_transport_interest(&mut self, registry: &Registry, fd: RawFd, interest: Interest) -> io::Result<()> {
        if !self.transports.contains_key(&fd) {
            return Ok(());
        }
        registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest)
    }

    pub fn remove_transport(&mut self, registry: &Registry, fd: RawFd) -> Option<Transport> {
        let t = self.transports.remove(&fd)?;
        let _ = registry.deregister(&mut SourceFd(&fd));
        Some(t)
    }

    pub fn transports(&self, py: Python<'_>) -> Vec<Transport> {
        self.transports.values().map(|t| t.clone_ref(py)).collect()
    }

    pub fn transport_count(&self) -> usize {
        self.transports.len()
    }

    /// Reports `transport` readable with the next poll's events.
    pub fn reread(&mut self, transport: Py<StreamTransport>) {
        self.rereads.push(transport);
    }

    /// Whether the next iteration has rereads to run (so its poll must not block).
    pub fn has_rereads(&self) -> bool {
        !self.rereads.is_empty()
    }

    /// Queues the rereads asked for since the last poll, ahead of the poll's own
    /// events. A transport already queued to read is not queued twice; those
    /// references go to `garbage`, to be dropped outside the loop's state.
    pub fn dispatch_rereads(&mut self, py: Python<'_>, now_ns: u64, ready: &mut std::collections::VecDeque<Ready>, garbage: &mut Vec<Py<StreamTransport>>) {
        for t in self.rereads.drain(..) {
            if t.get().claim_read(py) {
                // No event says whether a FIN waits behind the data: read until EAGAIN or EOF.
                ready.push_back(Ready::Io { transport: t.into(), readable: true, writable: false, read_closed: true, queued_ns: now_ns });
            } else {
                garbage.push(t);
            }
        }
    }

    /// Queues the callbacks for one poll event.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(&mut self, py: Python<'_>, fd: RawFd, readable: bool, writable: bool, read_closed: bool, now_ns: u64, ready: &mut std::collections::VecDeque<Ready>) {
        if let Some(t) = self.transports.get(&fd) {
            // One read per transport per iteration, as a selector reports an fd once:
            // a second read here would take data that arrived during this iteration's
            // callbacks, which asyncio's loop only sees at the next poll.
            let readable = readable && t.claim_read(py);
            if readable || writable {
                ready.push_back(Ready::Io { transport: t.clone_ref(py), readable, writable, read_closed, queued_ns: now_ns });
            }
            return;
        }
        let Some(w) = self.fds.get(&fd) else { return };
        if w.is_idle() {
            self.idle_fired.push(fd);
            return;
        }
        if readable && queue(py, fd, Side::Read, &w.reader, now_ns, ready) == Queued::Cancelled {
            self.cancelled.push((fd, Side::Read));
        }
        if writable && queue(py, fd, Side::Write, &w.writer, now_ns, ready) == Queued::Cancelled {
            self.cancelled.push((fd, Side::Write));
        }
    }

    /// Finishes what the last poll's events left to do, before the next poll.
    /// Every iteration asks; most have nothing to do (a callback that stays
    /// registered needs nothing: its fd is level-triggered).
    #[inline]
    pub fn before_poll(&mut self, registry: &Registry, garbage: &mut Vec<Waiter>) {
        if !self.cancelled.is_empty() || !self.idle_fired.is_empty() {
            self.tidy_fired(registry, garbage);
        }
    }

    /// Unregisters idle fds that fired, and removes cancelled callbacks that were
    /// reported ready (into `garbage`: dropping a handle may run Python code).
    fn tidy_fired(&mut self, registry: &Registry, garbage: &mut Vec<Waiter>) {
        for fd in self.idle_fired.drain(..) {
            if self.fds.get(&fd).is_some_and(|w| w.is_idle()) {
                // A socket kept registered that nobody awaits now: let it go, so it
                // wakes the loop at most once after its last sock_* call.
                self.fds.remove(&fd);
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
        }
        let mut cancelled = std::mem::take(&mut self.cancelled);
        for (fd, side) in cancelled.drain(..) {
            // Unless a callback added since replaced it.
            let still = self.fds.get_mut(&fd).is_some_and(|w| matches!(w.side(side), Some(Waiter::Handle(h)) if h.get().is_cancelled()));
            if still {
                garbage.extend(self.remove(registry, fd, side));
            }
        }
        self.cancelled = cancelled; // keeps its allocation
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for w in self.fds.values() {
            for waiter in [&w.reader, &w.writer].into_iter().flatten() {
                match waiter {
                    Waiter::Handle(h) => visit.call(h)?,
                    Waiter::Sock(s) => s.traverse(visit)?,
                }
            }
        }
        for t in self.transports.values() {
            visit.call(t.as_any())?;
        }
        for t in &self.rereads {
            visit.call(t)?;
        }
        Ok(())
    }

    /// Drops every watcher (loop close); handles go to `garbage`.
    pub fn clear(&mut self, registry: &Registry, garbage: &mut Vec<Waiter>, transports: &mut Vec<Transport>) {
        for (fd, t) in self.transports.drain() {
            let _ = registry.deregister(&mut SourceFd(&fd));
            transports.push(t);
        }
        transports.extend(self.rereads.drain(..).map(Transport::from));
        for (fd, mut w) in self.fds.drain() {
            if w.registered.is_some() {
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            garbage.extend(w.reader.take());
            garbage.extend(w.writer.take());
        }
        self.cancelled.clear();
        self.idle_fired.clear();
    }
}

impl Watcher {
    fn side(&mut self, side: Side) -> &mut Option<Waiter> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }
}

fn covers(has: Interest, want: Interest) -> bool {
    (has.is_readable() || !want.is_readable()) && (has.is_writable() || !want.is_writable())
}

#[derive(PartialEq, Eq)]
enum Queued {
    Yes,
    /// A cancelled callback handle: nothing queued, and the side is to be removed.
    Cancelled,
    Nothing,
}

/// Queues what waits on one side of a ready fd.
fn queue(py: Python<'_>, fd: RawFd, side: Side, waiter: &Option<Waiter>, now_ns: u64, ready: &mut std::collections::VecDeque<Ready>) -> Queued {
    match waiter {
        Some(Waiter::Handle(h)) if h.get().is_cancelled() => Queued::Cancelled,
        Some(Waiter::Handle(h)) => {
            ready.push_back(Ready::Call { handle: h.clone_ref(py), queued_ns: now_ns });
            Queued::Yes
        }
        Some(Waiter::Sock(_)) => {
            ready.push_back(Ready::Sock { fd, side, queued_ns: now_ns });
            Queued::Yes
        }
        None => Queued::Nothing,
    }
}

/// Makes the kernel's registration match what the watcher wants (or, for an fd
/// kept registered for sock_* calls, cover it).
fn sync_registration(registry: &Registry, fd: RawFd, w: &mut Watcher) -> io::Result<()> {
    let keep = w.idle_owner.is_some();
    match (w.registered, w.wanted()) {
        (None, None) => Ok(()),
        (Some(_), None) if keep => Ok(()),
        (Some(_), None) => {
            w.registered = None;
            registry.deregister(&mut SourceFd(&fd))
        }
        (None, Some(want)) => {
            match epoll_ctl(registry, libc::EPOLL_CTL_ADD, fd, want) {
                // Registered by a socket object we did not see (another object on the same fd).
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => epoll_ctl(registry, libc::EPOLL_CTL_MOD, fd, want)?,
                other => other?,
            }
            w.registered = Some(want);
            Ok(())
        }
        // Kept for sock_* calls: edge-triggered, as when it was registered (a
        // handle on the fd would have ended the arrangement).
        (Some(has), Some(want)) if keep && covers(has.interest, want.interest) => Ok(()),
        (Some(has), Some(want)) => {
            let want = if keep { Registration { interest: has.interest | want.interest, level: false } } else { want };
            // Also when nothing changed (a callback replaced by another on the same
            // sides): the fd number may have been closed and reused since we
            // registered it, which only the kernel's answer tells.
            match epoll_ctl(registry, libc::EPOLL_CTL_MOD, fd, want) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => epoll_ctl(registry, libc::EPOLL_CTL_ADD, fd, want)?,
                other => other?,
            }
            w.registered = Some(want);
            Ok(())
        }
    }
}

/// Adds (`EPOLL_CTL_ADD`) or changes (`EPOLL_CTL_MOD`) the registration of `fd`
/// on the loop's epoll instance, under the fd's own number as token. Edge-triggered
/// registrations go through mio; level-triggered ones, which mio cannot make,
/// are made here with the flags mio would use, minus `EPOLLET`, so mio's poll
/// reports their events the same way.
fn epoll_ctl(registry: &Registry, op: libc::c_int, fd: RawFd, reg: Registration) -> io::Result<()> {
    let token = Token(fd as usize);
    if !reg.level {
        return match op {
            libc::EPOLL_CTL_ADD => registry.register(&mut SourceFd(&fd), token, reg.interest),
            _ => registry.reregister(&mut SourceFd(&fd), token, reg.interest),
        };
    }
    let mut events = 0;
    if reg.interest.is_readable() {
        events |= libc::EPOLLIN | libc::EPOLLRDHUP;
    }
    if reg.interest.is_writable() {
        events |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event { events: events as u32, u64: token.0 as u64 };
    // SAFETY: `event` is a valid epoll_event that outlives the call, and the epoll
    // fd is mio's, open for as long as `registry` is.
    let rc = unsafe { libc::epoll_ctl(registry.as_raw_fd(), op, fd, &mut event) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
