//! One accepted connection, with the two guards hyper does not give us.
//!
//! - A connection permit: the accept loop takes one before accepting, and the
//!   connection holds it until it closes, so at most `max_connections` are served at
//!   once (the rest wait in the kernel's backlog, costing us nothing).
//! - A write-stall timeout: a peer that accepts no bytes for `write_stall` gets its
//!   connection closed. This is what finally frees a live-stream client that stopped
//!   reading (its queue is already bounded; its socket buffers are not ours to bound).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// Connection counters, for the API index.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    /// Connections accepted.
    pub(crate) accepted: AtomicU64,
    /// Connections closed because the peer stopped accepting data.
    pub(crate) write_stalls: AtomicU64,
}

/// A TCP stream that holds a connection permit and fails writes stuck too long.
pub(crate) struct GuardedIo {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
    write_stall: Duration,
    /// Started when a write first returns `Pending`; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl GuardedIo {
    pub(crate) fn new(
        inner: TcpStream,
        permit: OwnedSemaphorePermit,
        stats: Arc<ConnStats>,
        write_stall: Duration,
    ) -> Self {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        GuardedIo { inner, _permit: permit, stats, write_stall, stalled: None }
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let write_stall = self.write_stall;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(write_stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.stats.write_stalls.fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "peer accepted no data within the write-stall timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
