//! The live stream: each new sample and stall event, pushed to every SSE client.
//!
//! Bounds: at most `max_clients` clients (the server answers 503 beyond), each with a
//! queue of at most `buffer` events. Events are serialized once and shared (`Arc`)
//! by all queues. A client whose queue fills (it stopped reading, or reads slower
//! than we publish) is cut: its queue is closed and its stream ends, and the
//! connection's write-stall timeout closes the socket if it is not reading at all.
//! Publishing never waits for a client.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

/// One event, serialized once for every client.
#[derive(Debug)]
pub struct StreamEvent {
    /// SSE event name: `sample`, `stall`, `loop`.
    pub name: &'static str,
    /// The loop it concerns.
    pub loop_id: u64,
    /// JSON payload.
    pub data: String,
}

struct Client {
    loop_filter: Option<u64>,
    tx: mpsc::Sender<Arc<StreamEvent>>,
    cut: Arc<AtomicBool>,
}

/// Stream counters, for `/metrics` and the API index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Clients connected now.
    pub clients: usize,
    /// Most clients allowed at once.
    pub max_clients: usize,
    /// Events each client may have queued.
    pub buffer: usize,
    /// Clients cut because their queue filled.
    pub clients_cut: u64,
    /// Connections refused because `max_clients` were connected.
    pub clients_refused: u64,
    /// Events published (before fan-out).
    pub events: u64,
    /// Events waiting in all clients' queues now (at most `clients × buffer`).
    pub queued: usize,
}

/// Fans events out to the SSE clients.
pub(crate) struct Broadcaster {
    clients: Mutex<Vec<Client>>,
    /// Subscriptions alive (a cut client counts until its connection is gone).
    connected: Arc<AtomicUsize>,
    max_clients: AtomicUsize,
    buffer: AtomicUsize,
    clients_cut: AtomicU64,
    clients_refused: AtomicU64,
    events: AtomicU64,
}

/// Default most SSE clients at once.
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// Default events queued per client (a minute of one loop's samples at 250 ms).
pub const DEFAULT_BUFFER: usize = 256;

impl Broadcaster {
    pub(crate) fn new() -> Self {
        Broadcaster {
            clients: Mutex::new(Vec::new()),
            connected: Arc::new(AtomicUsize::new(0)),
            max_clients: AtomicUsize::new(DEFAULT_MAX_CLIENTS),
            buffer: AtomicUsize::new(DEFAULT_BUFFER),
            clients_cut: AtomicU64::new(0),
            clients_refused: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    pub(crate) fn configure(&self, max_clients: usize, buffer: usize) {
        self.max_clients.store(max_clients, Ordering::Relaxed);
        self.buffer.store(buffer.max(1), Ordering::Relaxed);
    }

    /// Whether anyone would receive an event (lets publishers skip serializing).
    pub(crate) fn has_clients(&self) -> bool {
        !self.lock().is_empty()
    }

    /// A new client, or `None` when `max_clients` are connected.
    pub(crate) fn subscribe(&self, loop_filter: Option<u64>) -> Option<Subscription> {
        let max = self.max_clients.load(Ordering::Relaxed);
        // Reserve a slot first so two racing subscribers cannot both take the last one.
        let prev = self.connected.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.connected.fetch_sub(1, Ordering::AcqRel);
            self.clients_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (tx, rx) = mpsc::channel(self.buffer.load(Ordering::Relaxed));
        let cut = Arc::new(AtomicBool::new(false));
        self.lock().push(Client { loop_filter, tx, cut: Arc::clone(&cut) });
        Some(Subscription { rx, cut, connected: Arc::clone(&self.connected) })
    }

    /// Queues `event` for every interested client, cutting those whose queue is full.
    pub(crate) fn publish(&self, event: StreamEvent) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event);
        let mut cut = 0;
        self.lock().retain(|c| {
            if c.loop_filter.is_some_and(|id| id != event.loop_id) {
                return !c.tx.is_closed();
            }
            match c.tx.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Counted, not logged: the inspector must not write to the
                    // application's stderr.
                    c.cut.store(true, Ordering::Release);
                    cut += 1;
                    false // dropping the sender ends the client's stream
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if cut > 0 {
            self.clients_cut.fetch_add(cut, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> StreamStats {
        StreamStats {
            clients: self.connected.load(Ordering::Acquire),
            max_clients: self.max_clients.load(Ordering::Relaxed),
            buffer: self.buffer.load(Ordering::Relaxed),
            clients_cut: self.clients_cut.load(Ordering::Relaxed),
            clients_refused: self.clients_refused.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            queued: self.lock().iter().map(|c| c.tx.max_capacity() - c.tx.capacity()).sum(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One client's end: a stream of events that ends when the client is cut.
pub(crate) struct Subscription {
    rx: mpsc::Receiver<Arc<StreamEvent>>,
    cut: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
}

impl Subscription {
    /// Next event; `None` once the client was cut (without delivering what was still
    /// queued: a lagging client gets nothing older, it reconnects and starts fresh).
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<StreamEvent>>> {
        if self.cut.load(Ordering::Acquire) {
            self.rx.close();
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.connected.fetch_sub(1, Ordering::AcqRel);
    }
}

impl futures_core::Stream for Subscription {
    type Item = Arc<StreamEvent>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(loop_id: u64) -> StreamEvent {
        StreamEvent { name: "sample", loop_id, data: "x".repeat(1000) }
    }

    #[test]
    fn a_client_that_never_reads_is_cut_at_its_buffer() {
        let b = Broadcaster::new();
        b.configure(4, 8);
        let mut slow = b.subscribe(None).unwrap();
        for _ in 0..1_000 {
            b.publish(ev(1));
        }
        let s = b.stats();
        assert_eq!(s.clients_cut, 1);
        assert!(!b.has_clients(), "the cut client no longer receives");
        // Its queue never held more than the buffer.
        assert!(slow.rx.len() <= 8);
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(slow.poll_event(&mut cx), Poll::Ready(None)));
        drop(slow);
        assert_eq!(b.stats().clients, 0);
    }

    #[test]
    fn client_limit_and_loop_filter() {
        let b = Broadcaster::new();
        b.configure(2, 8);
        let mut only2 = b.subscribe(Some(2)).unwrap();
        let _all = b.subscribe(None).unwrap();
        assert!(b.subscribe(None).is_none());
        assert_eq!(b.stats().clients_refused, 1);
        b.publish(ev(1));
        b.publish(ev(2));
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        match only2.poll_event(&mut cx) {
            Poll::Ready(Some(e)) => assert_eq!(e.loop_id, 2),
            other => panic!("{other:?}"),
        }
        assert!(only2.poll_event(&mut cx).is_pending());
    }

    fn futures_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
