//! The loop's side of the hub: what a loop thread holds and calls.
//!
//! Every call here is non-blocking for the loop thread: a bounded `try_send` for
//! samples, one atomic swap for tables, relaxed/release stores for the heartbeat, one
//! atomic load (then a `try_lock`) for queries. The sidecar's side of each of these
//! lives in `hub.rs`, `watchdog.rs` and `server.rs`.

use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::model::{LoopInfo, Sample, Tables};

/// The loop's liveness signal, read by the stall watchdog from another thread.
///
/// The loop thread is the only writer. It calls [`Heartbeat::begin`] before each
/// callback (and before dispatching I/O, if that can run long) and
/// [`Heartbeat::idle`] when it goes back to the poll; [`Heartbeat::iteration`] once
/// per loop iteration. Stores are plain `mov`s on x86 (no locked instructions).
#[derive(Debug, Default)]
pub struct Heartbeat {
    iterations: AtomicU64,
    /// CLOCK_MONOTONIC ns when the running callback started; 0 = not in a callback.
    running_since_ns: AtomicU64,
    /// The loop's opaque id for the running callback's site.
    site: AtomicU64,
    /// Queries the sidecar queued for the loop and the loop has not taken yet: here,
    /// next to what the loop writes every iteration, so its check costs one load.
    queries: AtomicUsize,
}

/// One read of a [`Heartbeat`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Beat {
    /// Iterations the loop has counted.
    pub iterations: u64,
    /// CLOCK_MONOTONIC ns when the running callback started; 0 = idle.
    pub running_since_ns: u64,
    /// The running callback's site id.
    pub site: u64,
}

impl Heartbeat {
    /// Notes that the loop finished an iteration (`n` = its iteration count).
    #[inline]
    pub fn iteration(&self, n: u64) {
        self.iterations.store(n, Ordering::Relaxed);
    }

    /// Notes that a callback from `site` started at `start_ns`
    /// ([`clock::monotonic_ns`](crate::clock::monotonic_ns), i.e. loop-core's
    /// `clock::now_ns()`; 0 is bumped to 1 since 0 means idle).
    #[inline]
    pub fn begin(&self, start_ns: u64, site: u64) {
        self.site.store(site, Ordering::Relaxed);
        // Release: a watchdog that sees this start also sees the site stored above.
        self.running_since_ns.store(start_ns.max(1), Ordering::Release);
    }

    /// Whether the sidecar queued queries for the loop (see
    /// [`LoopHandle::take_queries`]): one atomic load, for the top of each iteration.
    #[inline]
    pub fn has_queries(&self) -> bool {
        self.queries.load(Ordering::Acquire) != 0
    }

    /// Notes that the loop is not running a callback (about to poll).
    #[inline]
    pub fn idle(&self) {
        self.running_since_ns.store(0, Ordering::Release);
    }

    /// Reads the heartbeat consistently (the site belongs to the start time read).
    pub fn read(&self) -> Beat {
        loop {
            let start = self.running_since_ns.load(Ordering::Acquire);
            let site = self.site.load(Ordering::Relaxed);
            let iterations = self.iterations.load(Ordering::Relaxed);
            // A callback that began between the two loads may have replaced the site;
            // read again rather than pair one callback's start with another's site.
            if self.running_since_ns.load(Ordering::Acquire) == start {
                return Beat { iterations, running_since_ns: start, site };
            }
        }
    }
}

/// What a deep query asks the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryKind {
    /// The await stack of one task (formatted like `asyncio.print_call_graph`).
    TaskStack {
        /// The task's id, as in [`TaskRecord::id`](crate::TaskRecord::id).
        task_id: u64,
    },
    /// Fresh tables, now.
    Tables,
}

/// The loop's answer to a [`Query`].
#[derive(Clone, Debug, PartialEq)]
pub enum QueryReply {
    /// The task's stack; `None` if the loop has no such task.
    TaskStack(Option<String>),
    /// Fresh tables.
    Tables(Tables),
}

/// A request from the sidecar that only the loop thread can answer.
pub struct Query {
    kind: QueryKind,
    reply: oneshot::Sender<QueryReply>,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Query {
    pub(crate) fn new(kind: QueryKind) -> (Query, oneshot::Receiver<QueryReply>) {
        let (reply, rx) = oneshot::channel();
        (Query { kind, reply }, rx)
    }

    /// What is asked.
    pub fn kind(&self) -> &QueryKind {
        &self.kind
    }

    /// Answers the query. Never blocks; if the asker has given up (deadline
    /// passed), the answer is dropped.
    pub fn answer(self, reply: QueryReply) {
        let _ = self.reply.send(reply); // Err only means the asker timed out: nothing to do.
    }
}

/// Most site names kept per loop (the loop's own site table is smaller).
pub const MAX_SITE_NAMES: usize = 16_384;

/// Most queries waiting for one loop; the server answers 503 beyond it, so a loop
/// that never drains holds a bounded queue.
pub const MAX_PENDING_QUERIES: usize = 64;

type Waker = Arc<dyn Fn() + Send + Sync>;
type StackCapture = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// State shared between a loop thread (through its [`LoopHandle`]) and the sidecar.
pub(crate) struct LoopShared {
    pub(crate) info: LoopInfo,
    pub(crate) heartbeat: Arc<Heartbeat>,
    pub(crate) samples_published: AtomicU64,
    pub(crate) samples_dropped: AtomicU64,
    /// Stalls the watchdog opened for this loop (read by the hub at each sample).
    pub(crate) stalls_opened: AtomicU64,
    pub(crate) closed: AtomicBool,
    tables: TablesMailbox,
    /// The queue's length is mirrored in `heartbeat.queries`.
    queries: Mutex<Vec<Query>>,
    waker: Mutex<Option<Waker>>,
    capture: Mutex<Option<StackCapture>>,
    /// Callback sites' labels by site id, told by the loop as it first meets each
    /// site (before its first callback runs), so a stall names its site even when
    /// the loop has not yet published tables that contain it.
    site_names: Mutex<HashMap<u64, String>>,
}

impl LoopShared {
    pub(crate) fn new(info: LoopInfo) -> Self {
        LoopShared {
            info,
            heartbeat: Arc::default(),
            samples_published: AtomicU64::new(0),
            samples_dropped: AtomicU64::new(0),
            stalls_opened: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            tables: TablesMailbox::default(),
            queries: Mutex::new(Vec::new()),
            waker: Mutex::new(None),
            capture: Mutex::new(None),
            site_names: Mutex::new(HashMap::new()),
        }
    }

    /// The label the loop gave site `id`, if it named it.
    pub(crate) fn site_name(&self, id: u64) -> Option<String> {
        self.site_names.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The newest tables the loop published since the last call, if any.
    pub(crate) fn take_tables(&self) -> Option<Box<Tables>> {
        self.tables.take()
    }

    /// Queues a query and wakes the loop. `Err` gives the query back when the queue is
    /// full or the loop is closed.
    pub(crate) fn enqueue(&self, q: Query) -> Result<(), Query> {
        if self.is_closed() {
            return Err(q);
        }
        {
            let mut queue = self.queries.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= MAX_PENDING_QUERIES {
                return Err(q);
            }
            queue.push(q);
            // Release: the loop's Acquire load that sees the count also sees the push.
            self.heartbeat.queries.store(queue.len(), Ordering::Release);
        }
        self.wake();
        Ok(())
    }

    /// Queries queued and not yet taken by the loop.
    pub(crate) fn pending_queries(&self) -> usize {
        self.heartbeat.queries.load(Ordering::Acquire)
    }

    fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            w();
        }
    }

    pub(crate) fn stack_capture(&self) -> Option<StackCapture> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A one-slot, replace-latest mailbox for the loop's tables.
///
/// # Notes
/// Why not a `Mutex` the loop only `try_lock`s: when the lock is busy the loop would
/// have to drop its newest tables (and show stale ones until the next publish, which
/// is rare by design) or keep them and retry. Here ownership of a whole `Box` moves
/// through one atomic `swap` on each side: the loop swaps the new tables in (freeing
/// an unread older set itself), the sidecar swaps null in to take them. No pointer is
/// ever read without being owned, so no reclamation scheme (what `arc-swap` adds) is
/// needed, and neither side ever waits.
#[derive(Default)]
struct TablesMailbox {
    slot: AtomicPtr<Tables>,
}

impl TablesMailbox {
    fn put(&self, tables: Box<Tables>) {
        let old = self.slot.swap(Box::into_raw(tables), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: every non-null pointer in the slot came from `Box::into_raw` above
            // and the swap took it out, so we own it exclusively; dropping it is the
            // only use.
            drop(unsafe { Box::from_raw(old) });
        }
    }

    fn take(&self) -> Option<Box<Tables>> {
        let p = self.slot.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: as in `put`, a non-null pointer swapped out is exclusively ours.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

impl Drop for TablesMailbox {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// What a loop thread keeps after registering with the hub
/// ([`Hub::register_loop`](crate::Hub::register_loop)). Dropping it (the loop closed)
/// marks the loop closed; the sidecar keeps showing it, marked closed, for a while.
pub struct LoopHandle {
    pub(crate) shared: Arc<LoopShared>,
    pub(crate) samples: SyncSender<Sample>,
    pub(crate) doorbell: tokio::sync::mpsc::Sender<()>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl LoopHandle {
    /// The id the hub assigned to this loop.
    pub fn id(&self) -> u64 {
        self.shared.info.id
    }

    /// Hands a finished interval to the sidecar. Never blocks: if the sidecar is
    /// behind (its bounded queue is full) or not running, the sample is dropped and
    /// counted (`samples_dropped`, shown in the API and `/metrics`). Returns whether
    /// the sample was queued.
    pub fn publish_sample(&self, mut sample: Sample) -> bool {
        sample.loop_id = self.id();
        match self.samples.try_send(sample) {
            Ok(()) => {
                self.shared.samples_published.fetch_add(1, Ordering::Relaxed);
                self.ring();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.samples_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Samples dropped so far because the sidecar's queue was full.
    pub fn samples_dropped(&self) -> u64 {
        self.shared.samples_dropped.load(Ordering::Relaxed)
    }

    /// Replaces the tables the sidecar serves. Never blocks; an older set the sidecar
    /// has not picked up yet is freed here.
    pub fn publish_tables(&self, tables: Tables) {
        self.shared.tables.put(Box::new(tables));
    }

    /// The heartbeat to update from the hot path (keep the `Arc`, don't call this per
    /// callback).
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.shared.heartbeat)
    }

    /// Registers how the sidecar wakes the loop when it queues a query (e.g. a mio
    /// `Waker::wake`). Called from the sidecar's thread; must not block.
    pub fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        *self.shared.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(waker));
    }

    /// Registers how the watchdog captures the loop thread's stack during a stall
    /// (e.g. `sys._current_frames()[thread_id]` formatted). It runs on the watchdog's
    /// capture thread, never on the server's, and may block (waiting for the GIL):
    /// a capture that takes too long is reported as `timeout`, and later stalls are
    /// `skipped` while it still runs.
    pub fn set_stack_capture(&self, capture: Box<dyn Fn() -> Option<String> + Send + Sync>) {
        *self.shared.capture.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(capture));
    }

    /// Names callback site `id` (`qualname (file:line)`) for stall reports. Call it
    /// when the loop first meets a site, before the site's first callback runs.
    /// Never blocks: if the watchdog holds the names at this instant, the label is
    /// handed back (`Err`) for the caller to offer again later. At most
    /// [`MAX_SITE_NAMES`] names are kept; later ones are ignored.
    pub fn name_site(&self, id: u64, label: String) -> Result<(), String> {
        let mut names = match self.shared.site_names.try_lock() {
            Ok(names) => names,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(label),
        };
        if names.len() < MAX_SITE_NAMES || names.contains_key(&id) {
            names.insert(id, label);
        }
        Ok(())
    }

    /// Whether queries are waiting: one atomic load, for the top of each iteration.
    #[inline]
    pub fn has_queries(&self) -> bool {
        self.shared.heartbeat.has_queries()
    }

    /// Takes the waiting queries (empty, without allocating, when there are none).
    /// Answer each with [`Query::answer`]; a dropped query counts as "loop busy".
    ///
    /// # Notes
    /// Never blocks: the queue's lock is only `try_lock`ed here; if the sidecar holds
    /// it at that instant (for the few ns a push takes), the queries are taken at the
    /// next iteration (the sidecar wakes the loop after every push).
    pub fn take_queries(&self) -> Vec<Query> {
        if !self.has_queries() {
            return Vec::new();
        }
        match self.shared.queries.try_lock() {
            Ok(mut queue) => {
                self.shared.heartbeat.queries.store(0, Ordering::Release);
                std::mem::take(&mut *queue)
            }
            Err(std::sync::TryLockError::Poisoned(e)) => {
                let mut queue = e.into_inner();
                self.shared.heartbeat.queries.store(0, Ordering::Release);
                std::mem::take(&mut *queue)
            }
            Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
        }
    }

    /// Tells the sidecar something arrived (it coalesces: one pending ring is enough).
    fn ring(&self) {
        let _ = self.doorbell.try_send(()); // Full means a ring is already pending.
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.heartbeat.idle();
        // Queries still queued will never be answered: fail them now, not at their
        // deadline. The sidecar may be pushing concurrently; a blocking lock is fine
        // here because the loop is gone from its hot path.
        let stranded = std::mem::take(&mut *self.shared.queries.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.heartbeat.queries.store(0, Ordering::Release);
        drop(stranded);
        self.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_keeps_only_the_latest_tables() {
        let m = TablesMailbox::default();
        assert!(m.take().is_none());
        m.put(Box::new(Tables { unix_ms: 1, ..Default::default() }));
        m.put(Box::new(Tables { unix_ms: 2, ..Default::default() }));
        assert_eq!(m.take().map(|t| t.unix_ms), Some(2));
        assert!(m.take().is_none());
        m.put(Box::new(Tables { unix_ms: 3, ..Default::default() })); // freed by Drop
    }

    #[test]
    fn site_names_are_kept_bounded_and_renamable() {
        let (samples, _rx) = std::sync::mpsc::sync_channel(1);
        let (doorbell, _bell) = tokio::sync::mpsc::channel(1);
        let h = LoopHandle { shared: Arc::new(LoopShared::new(LoopInfo::default())), samples, doorbell };
        for id in 1..=(MAX_SITE_NAMES as u64 + 10) {
            h.name_site(id, format!("s{id}")).unwrap();
        }
        assert_eq!(h.shared.site_name(1).as_deref(), Some("s1"));
        assert_eq!(h.shared.site_name(MAX_SITE_NAMES as u64).as_deref(), Some(&*format!("s{MAX_SITE_NAMES}")));
        assert_eq!(h.shared.site_name(MAX_SITE_NAMES as u64 + 1), None, "past the bound: ignored");
        h.name_site(1, "renamed".into()).unwrap();
        assert_eq!(h.shared.site_name(1).as_deref(), Some("renamed"));
        // While the watchdog holds the names, the label is handed back, not waited for.
        let held = h.shared.site_names.lock().unwrap();
        assert_eq!(h.name_site(2, "later".into()), Err("later".to_string()));
        drop(held);
    }

    #[test]
    fn heartbeat_reads_what_was_stored() {
        let hb = Heartbeat::default();
        hb.iteration(5);
        hb.begin(0, 9);
        assert_eq!(hb.read(), Beat { iterations: 5, running_since_ns: 1, site: 9 });
        hb.idle();
        assert_eq!(hb.read().running_since_ns, 0);
    }
}
