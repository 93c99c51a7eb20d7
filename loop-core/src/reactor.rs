//! The reactor: file descriptors watched with mio for `add_reader`/`add_writer`.
//!
//! mio is edge-triggered; asyncio's readers and writers are level-triggered (a
//! reader that leaves data unread is called again). We get level semantics back
//! by re-arming (`EPOLL_CTL_MOD`) each fd whose callback ran, before the next
//! poll: the kernel then re-queues the fd if it is still ready.

use crate::handles::{Handle, Ready};
use crate::transports::StreamTransport;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::io;
use std::os::unix::io::RawFd;

/// The token of the loop's mio `Waker`; fds use their own number as token.
pub const WAKER_TOKEN: Token = Token(usize::MAX);

#[derive(Default)]
struct Watcher {
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    /// The interest currently registered with the kernel (None: not registered).
    registered: Option<Interest>,
}

impl Watcher {
    fn wanted(&self) -> Option<Interest> {
        match (self.reader.is_some(), self.writer.is_some()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

#[derive(Default)]
pub struct Watchers {
    fds: HashMap<RawFd, Watcher>,
    /// fds owned by Rust transports (registered edge-triggered, read and write, for life).
    transports: HashMap<RawFd, Py<StreamTransport>>,
    /// fds whose callbacks ran since the last poll: re-armed before the next one.
    fired: Vec<RawFd>,
}

/// Which side of an fd a watcher is on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

impl Watchers {
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Installs `handle` as the fd's reader or writer; returns the one it replaces.
    pub fn add(&mut self, registry: &Registry, fd: RawFd, side: Side, handle: Py<Handle>) -> io::Result<Option<Py<Handle>>> {
        let w = self.fds.entry(fd).or_default();
        let old = match side {
            Side::Read => w.reader.replace(handle),
            Side::Write => w.writer.replace(handle),
        };
        if let Err(e) = sync_registration(registry, fd, w) {
            // Undo, as a selector does when the kernel refuses the fd.
            let rejected = match side {
                Side::Read => std::mem::replace(&mut w.reader, old),
                Side::Write => std::mem::replace(&mut w.writer, old),
            };
            drop(rejected); // a Py drop without running Python: we hold the only new ref
            if w.reader.is_none() && w.writer.is_none() {
                self.fds.remove(&fd);
            }
            return Err(e);
        }
        Ok(old)
    }

    /// Removes the fd's reader or writer; returns it (None if there was none).
    pub fn remove(&mut self, registry: &Registry, fd: RawFd, side: Side) -> Option<Py<Handle>> {
        let w = self.fds.get_mut(&fd)?;
        let old = match side {
            Side::Read => w.reader.take(),
            Side::Write => w.writer.take(),
        };
        // A closed fd has already left the epoll set; nothing to undo then.
        let _ = sync_registration(registry, fd, w);
        if w.reader.is_none() && w.writer.is_none() {
            self.fds.remove(&fd);
        }
        old
    }

    /// The registered sides of `fd`, for the selector view (`(readable, writable)`).
    pub fn sides(&self, fd: RawFd) -> Option<(bool, bool)> {
        self.fds.get(&fd).map(|w| (w.reader.is_some(), w.writer.is_some()))
    }

    pub fn add_transport(&mut self, registry: &Registry, fd: RawFd, transport: Py<StreamTransport>) -> io::Result<Option<Py<StreamTransport>>> {
        registry.register(&mut SourceFd(&fd), Token(fd as usize), Interest::READABLE | Interest::WRITABLE)?;
        Ok(self.transports.insert(fd, transport))
    }

    pub fn remove_transport(&mut self, registry: &Registry, fd: RawFd) -> Option<Py<StreamTransport>> {
        let t = self.transports.remove(&fd)?;
        let _ = registry.deregister(&mut SourceFd(&fd));
        Some(t)
    }

    pub fn transports(&self, py: Python<'_>) -> Vec<Py<StreamTransport>> {
        self.transports.values().map(|t| t.clone_ref(py)).collect()
    }

    pub fn transport_count(&self) -> usize {
        self.transports.len()
    }

    /// Queues the callbacks for one poll event.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(&mut self, py: Python<'_>, fd: RawFd, readable: bool, writable: bool, read_closed: bool, now_ns: u64, ready: &mut std::collections::VecDeque<Ready>) {
        if let Some(t) = self.transports.get(&fd) {
            ready.push_back(Ready::Io { transport: t.clone_ref(py), readable, writable, read_closed, queued_ns: now_ns });
            return;
        }
        let Some(w) = self.fds.get(&fd) else { return };
        let mut fired = false;
        if readable {
            if let Some(h) = &w.reader {
                if !h.get().is_cancelled() {
                    ready.push_back(Ready::Call { handle: h.clone_ref(py), queued_ns: now_ns });
                    fired = true;
                }
            }
        }
        if writable {
            if let Some(h) = &w.writer {
                if !h.get().is_cancelled() {
                    ready.push_back(Ready::Call { handle: h.clone_ref(py), queued_ns: now_ns });
                    fired = true;
                }
            }
        }
        if fired {
            self.fired.push(fd);
        }
    }

    /// Re-arms the fds that fired, so a still-ready fd is reported again (level-triggered).
    /// Every iteration asks; most have nothing to rearm.
    #[inline]
    pub fn rearm(&mut self, registry: &Registry) {
        if !self.fired.is_empty() {
            self.rearm_fired(registry);
        }
    }

    fn rearm_fired(&mut self, registry: &Registry) {
        for fd in self.fired.drain(..) {
            if let Some(w) = self.fds.get_mut(&fd) {
                if let Some(interest) = w.registered {
                    if registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest).is_err() {
                        // The fd was closed under us; forget the registration so a
                        // later add_reader on a reused fd registers afresh.
                        w.registered = None;
                    }
                }
            }
        }
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for w in self.fds.values() {
            visit.call(&w.reader)?;
            visit.call(&w.writer)?;
        }
        for t in self.transports.values() {
            visit.call(t)?;
        }
        Ok(())
    }

    /// Drops every watcher (loop close); handles go to `garbage`.
    pub fn clear(&mut self, registry: &Registry, garbage: &mut Vec<Py<Handle>>, transports: &mut Vec<Py<StreamTransport>>) {
        for (fd, t) in self.transports.drain() {
            let _ = registry.deregister(&mut SourceFd(&fd));
            transports.push(t);
        }
        for (fd, mut w) in self.fds.drain() {
            if w.registered.is_some() {
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            garbage.extend(w.reader.take());
            garbage.extend(w.writer.take());
        }
        self.fired.clear();
    }
}

/// Makes the kernel's registration match what the watcher wants.
fn sync_registration(registry: &Registry, fd: RawFd, w: &mut Watcher) -> io::Result<()> {
    let token = Token(fd as usize);
    match (w.registered, w.wanted()) {
        (None, None) => Ok(()),
        (Some(_), None) => {
            w.registered = None;
            registry.deregister(&mut SourceFd(&fd))
        }
        (None, Some(want)) => {
            registry.register(&mut SourceFd(&fd), token, want)?;
            w.registered = Some(want);
            Ok(())
        }
        (Some(_), Some(want)) => {
            match registry.reregister(&mut SourceFd(&fd), token, want) {
                // The fd number was closed and reused since we registered it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => registry.register(&mut SourceFd(&fd), token, want)?,
                other => other?,
            }
            w.registered = Some(want);
            Ok(())
        }
    }
}
