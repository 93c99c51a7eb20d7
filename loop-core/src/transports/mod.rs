//! Transports whose data path is in Rust: the socket is read and written here,
//! and the protocol's callbacks are called directly, with no `Handle` per event.

pub mod datagram;
pub mod facade;
pub mod stream;
mod write_buffer;

pub use datagram::DatagramTransport;
pub use stream::StreamTransport;

use mio::Interest;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for the transport table.
#[derive(Default, Clone, Copy)]
pub struct TransportStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub calls_in: u64,
    pub calls_out: u64,
    pub high_water: usize,
}

/// The heartbeat's site for a transport's I/O (see `LoopCore::io_site`), kept by
/// the transport so an inspected loop names each event with one load; 0 until the
/// loop first meets it, and again once the protocol is replaced.
#[derive(Default)]
pub struct IoSite(AtomicU64);

impl IoSite {
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, site: u64) {
        self.0.store(site, Ordering::Relaxed);
    }

    pub fn forget(&self) {
        self.set(0);
    }
}

/// `OSError(errno, strerror)`, as the socket module and asyncio's transports raise
/// it: Python turns it into the errno's subclass (ConnectionResetError, ...).
pub(crate) fn os_error(errno: i32) -> PyErr {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for its length; the XSI strerror_r NUL-terminates on success.
    let message = if unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) } == 0 {
        // SAFETY: NUL-terminated by strerror_r.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        format!("Unknown error {errno}")
    };
    pyo3::exceptions::PyOSError::new_err((errno, message))
}

/// A Rust transport the reactor owns an fd for.
pub enum Transport {
    Stream(Py<StreamTransport>),
    Datagram(Py<DatagramTransport>),
}

impl From<Py<StreamTransport>> for Transport {
    fn from(t: Py<StreamTransport>) -> Self {
        Transport::Stream(t)
    }
}

impl From<Py<DatagramTransport>> for Transport {
    fn from(t: Py<DatagramTransport>) -> Self {
        Transport::Datagram(t)
    }
}

impl Transport {
    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Transport::Stream(t) => Transport::Stream(t.clone_ref(py)),
            Transport::Datagram(t) => Transport::Datagram(t.clone_ref(py)),
        }
    }

    pub fn as_any(&self) -> &Py<PyAny> {
        match self {
            Transport::Stream(t) => t.as_any(),
            Transport::Datagram(t) => t.as_any(),
        }
    }

    /// What the fd is registered for, for the transport's life. A datagram socket
    /// wakes the poll at every send (each sent packet frees socket memory), so it
    /// asks for writability only while datagrams wait in its buffer.
    pub fn interest(&self) -> Interest {
        match self {
            Transport::Stream(_) => Interest::READABLE | Interest::WRITABLE,
            Transport::Datagram(_) => Interest::READABLE,
        }
    }

    /// The fd is ready; errors are only SystemExit/KeyboardInterrupt.
    #[inline]
    pub fn on_events(&self, py: Python<'_>, readable: bool, writable: bool, read_closed: bool) -> PyResult<()> {
        match self {
            Transport::Stream(t) => StreamTransport::on_events(t.bind(py), readable, writable, read_closed),
            Transport::Datagram(t) => DatagramTransport::on_events(t.bind(py), readable, writable),
        }
    }

    /// Marks a read as queued; false if one already is (a datagram transport reads
    /// whenever its socket is readable).
    pub fn claim_read(&self, py: Python<'_>) -> bool {
        match self {
            Transport::Stream(t) => t.get().claim_read(py),
            Transport::Datagram(_) => true,
        }
    }

    #[inline]
    pub fn io_site(&self) -> &IoSite {
        match self {
            Transport::Stream(t) => &t.get().io_site,
            Transport::Datagram(t) => &t.get().io_site,
        }
    }

    /// The protocol's class and the method its data goes to, which the inspector
    /// names this transport's I/O after.
    pub fn protocol_class<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, pyo3::types::PyType>, &'static str)> {
        match self {
            Transport::Stream(t) => t
                .get()
                .protocol_class(py)
                .map(|(class, buffered)| (class, if buffered { "buffer_updated" } else { "data_received" })),
            Transport::Datagram(t) => t.get().protocol_class(py).map(|class| (class, "datagram_received")),
        }
    }

    pub fn record(&self, py: Python<'_>) -> PyResult<inspector::TransportRecord> {
        match self {
            Transport::Stream(t) => t.get().record(py),
            Transport::Datagram(t) => t.get().record(py),
        }
    }

    pub fn stats(&self, py: Python<'_>) -> TransportStats {
        match self {
            Transport::Stream(t) => t.get().stats(py),
            Transport::Datagram(t) => t.get().stats(py),
        }
    }
}
