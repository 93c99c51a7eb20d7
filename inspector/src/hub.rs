//! The process-wide registry of loops: where loops publish and the sidecar reads.
//!
//! Who locks what: a loop thread takes a lock only in
//! [`Hub::register_loop`] (once, at loop creation, a short `registry` lock); its
//! per-iteration calls go through [`LoopHandle`]'s non-blocking paths. The sidecar
//! (server thread, watchdog thread) owns `state`, which it never holds across I/O or
//! an `.await`.
//!
//! Bounds: per loop, `sample_queue` queued samples (then drops, counted) and the
//! history ring (see `history.rs`); closed loops are kept for `closed_retention`, at
//! most `max_closed_loops` of them; the stall log keeps the last `stall_log` stalls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::clock;
use crate::handle::{LoopHandle, LoopShared};
use crate::history::{History, DEFAULT_HISTORY};
use crate::model::{LoopInfo, Sample, StallEvent, Tables};
use crate::stream::{Broadcaster, StreamEvent};
use crate::watchdog::StallLog;

/// Settings of a [`Hub`]. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Samples kept per loop (default 3600: 15 min of 250 ms samples).
    pub history: usize,
    /// Samples a loop may have queued for the sidecar before new ones are dropped
    /// (default 16: 4 s of backlog at 250 ms).
    pub sample_queue: usize,
    /// How long a closed loop stays listed (default 5 min).
    pub closed_retention: Duration,
    /// Most closed loops listed at once (default 32; the oldest go first).
    pub max_closed_loops: usize,
    /// A callback running longer than this is a stall (default 100 ms).
    pub stall_threshold: Duration,
    /// How often the watchdog reads heartbeats while a stall is open (default 10 ms;
    /// otherwise it sleeps until a running callback could cross the threshold).
    pub watchdog_interval: Duration,
    /// How long a stack capture may take before the stall says `timeout` (default 1 s).
    pub capture_timeout: Duration,
    /// Stalls kept in the log (default 256).
    pub stall_log: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: DEFAULT_HISTORY,
            sample_queue: 16,
            closed_retention: Duration::from_secs(300),
            max_closed_loops: 32,
            stall_threshold: Duration::from_millis(100),
            watchdog_interval: Duration::from_millis(10),
            capture_timeout: Duration::from_secs(1),
            stall_log: 256,
        }
    }
}

/// Loops registered since the sidecar last looked, and the live ones the watchdog
/// reads. Closed loops are pruned at every registration, so this stays bounded even
/// if no sidecar ever runs.
#[derive(Default)]
struct Registry {
    new: Vec<(Arc<LoopShared>, Receiver<Sample>)>,
    live: Vec<Arc<LoopShared>>,
}

/// What the sidecar knows about one loop.
pub(crate) struct LoopEntry {
    pub(crate) shared: Arc<LoopShared>,
    samples: Receiver<Sample>,
    pub(crate) history: History,
    pub(crate) tables: Option<Arc<Tables>>,
    pub(crate) tables_received: u64,
    pub(crate) closed_unix_ms: Option<u64>,
    stalls_counted: u64,
}

impl LoopEntry {
    pub(crate) fn info(&self) -> &LoopInfo {
        &self.shared.info
    }

    pub(crate) fn samples_dropped(&self) -> u64 {
        self.shared.samples_dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn stalls_total(&self) -> u64 {
        self.shared.stalls_opened.load(Ordering::Relaxed)
    }
}

/// The sidecar's view of every loop, keyed by id.
pub(crate) struct HubState {
    pub(crate) loops: BTreeMap<u64, LoopEntry>,
    history: usize,
}

/// The registry every loop in the process publishes to. See the module docs.
pub struct Hub {
    config: HubConfig,
    stall_threshold_ns: AtomicU64,
    next_loop_id: AtomicU64,
    registry: Mutex<Registry>,
    state: Mutex<HubState>,
    doorbell: tokio::sync::mpsc::Sender<()>,
    doorbell_rx: Mutex<Option<tokio::sync::mpsc::Receiver<()>>>,
    pub(crate) stalls: StallLog,
    pub(crate) stream: Broadcaster,
    watchdog_started: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Hub {
    /// The process's hub, created on first use with default settings
    /// ([`serve`](crate::serve) applies its config to it).
    pub fn global() -> &'static Arc<Hub> {
        static GLOBAL: OnceLock<Arc<Hub>> = OnceLock::new();
        GLOBAL.get_or_init(|| Hub::new(HubConfig::default()))
    }

    /// A separate hub (for tests and embedding; a process normally uses
    /// [`Hub::global`]).
    pub fn new(config: HubConfig) -> Arc<Hub> {
        // Capacity 1: the doorbell only says "look"; rings coalesce.
        let (doorbell, doorbell_rx) = tokio::sync::mpsc::channel(1);
        Arc::new(Hub {
            stall_threshold_ns: AtomicU64::new(duration_ns(config.stall_threshold)),
            next_loop_id: AtomicU64::new(1),
            registry: Mutex::new(Registry::default()),
            state: Mutex::new(HubState { loops: BTreeMap::new(), history: config.history }),
            doorbell,
            doorbell_rx: Mutex::new(Some(doorbell_rx)),
            stalls: StallLog::new(config.stall_log),
            stream: Broadcaster::new(),
            watchdog_started: AtomicBool::new(false),
            config,
        })
    }

    /// Registers a loop; the loop thread keeps the returned handle and drops it when
    /// the loop closes. `info.id` is replaced by a fresh id (see
    /// [`LoopHandle::id`]); `created_unix_ms` and `pid` are filled in when 0.
    ///
    /// # Notes
    /// Takes a short lock (never held across anything slow), once per loop; nothing
    /// on the loop's per-iteration path locks.
    pub fn register_loop(&self, mut info: LoopInfo) -> LoopHandle {
        info.id = self.next_loop_id.fetch_add(1, Ordering::Relaxed);
        if info.created_unix_ms == 0 {
            info.created_unix_ms = clock::unix_ms();
        }
        if info.pid == 0 {
            info.pid = std::process::id();
        }
        let shared = Arc::new(LoopShared::new(info));
        let (samples, rx) = sync_channel(self.config.sample_queue.max(1));
        {
            let mut reg = self.registry();
            reg.new.retain(|(l, _)| !l.is_closed());
            reg.live.retain(|l| !l.is_closed());
            reg.new.push((Arc::clone(&shared), rx));
            reg.live.push(Arc::clone(&shared));
        }
        let handle = LoopHandle { shared, samples, doorbell: self.doorbell.clone() };
        let _ = self.doorbell.try_send(()); // Full: a ring is already pending.
        handle
    }

    /// Moves what loops published (new loops, samples, tables, closes) into the
    /// sidecar's state and streams it. The server calls this whenever a loop rings and
    /// before answering; tests call it to make publication deterministic.
    pub fn pump(&self) {
        let fresh = std::mem::take(&mut self.registry().new);
        let streaming = self.stream.has_clients();
        let mut events = Vec::new();
        {
            let mut st = self.state();
            let history = st.history;
            for (shared, samples) in fresh {
                if streaming {
                    events.push(loop_event(&shared.info, None));
                }
                st.loops.insert(
                    shared.info.id,
                    LoopEntry {
                        shared,
                        samples,
                        history: History::new(history),
                        tables: None,
                        tables_received: 0,
                        closed_unix_ms: None,
                        stalls_counted: 0,
                    },
                );
            }
            let now = clock::unix_ms();
            for (id, entry) in st.loops.iter_mut() {
                while let Ok(mut sample) = entry.samples.try_recv() {
                    let opened = entry.shared.stalls_opened.load(Ordering::Relaxed);
                    sample.stalls = opened.saturating_sub(entry.stalls_counted);
                    entry.stalls_counted = opened;
                    let stored = entry.history.push(&sample);
                    if streaming {
                        if let Ok(data) = serde_json::to_string(stored) {
                            events.push(StreamEvent { name: "sample", loop_id: *id, data });
                        }
                    }
                }
                if let Some(mut tables) = entry.shared.take_tables() {
                    tables.enforce_bounds();
                    entry.tables = Some(Arc::from(tables));
                    entry.tables_received += 1;
                }
                if entry.closed_unix_ms.is_none() && entry.shared.is_closed() {
                    entry.closed_unix_ms = Some(now);
                    if streaming {
                        events.push(loop_event(&entry.shared.info, Some(now)));
                    }
                }
            }
            self.prune(&mut st, now);
        }
        self.registry().live.retain(|l| !l.is_closed());
        for e in events {
            self.stream.publish(e);
        }
    }

    /// Forgets closed loops past their retention, and the oldest closed ones past
    /// `max_closed_loops`.
    fn prune(&self, st: &mut HubState, now: u64) {
        let retention = self.config.closed_retention.as_millis() as u64;
        st.loops.retain(|_, e| e.closed_unix_ms.is_none_or(|t| now.saturating_sub(t) < retention));
        let mut closed: Vec<(u64, u64)> =
            st.loops.iter().filter_map(|(id, e)| e.closed_unix_ms.map(|t| (t, *id))).collect();
        if closed.len() > self.config.max_closed_loops {
            closed.sort_unstable();
            let excess = closed.len() - self.config.max_closed_loops;
            for (_, id) in &closed[..excess] {
                st.loops.remove(id);
            }
        }
    }

    /// Changes the stall threshold (takes effect at the watchdog's next tick).
    pub fn set_stall_threshold(&self, threshold: Duration) {
        self.stall_threshold_ns.store(duration_ns(threshold).max(1), Ordering::Relaxed);
    }

    /// Changes how many samples are kept per loop.
    pub fn set_history(&self, samples: usize) {
        let mut st = self.state();
        st.history = samples.max(1);
        for e in st.loops.values_mut() {
            e.history.set_capacity(samples);
        }
    }

    pub(crate) fn stall_threshold_ns(&self) -> u64 {
        self.stall_threshold_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Stalls in the log, newest first (all loops, or one).
    pub fn stalls(&self, loop_id: Option<u64>, limit: usize) -> Vec<StallEvent> {
        self.stalls.list(loop_id, limit)
    }

    /// Live loops, for the watchdog.
    pub(crate) fn live_loops(&self) -> Vec<Arc<LoopShared>> {
        self.registry().live.clone()
    }

    /// The shared half of loop `id`, for deep queries.
    pub(crate) fn loop_shared(&self, id: u64) -> Option<Arc<LoopShared>> {
        self.state().loops.get(&id).map(|e| Arc::clone(&e.shared))
    }

    /// Keeps tables a loop sent in answer to a query as its newest.
    pub(crate) fn store_tables(&self, loop_id: u64, tables: Arc<Tables>) {
        if let Some(e) = self.state().loops.get_mut(&loop_id) {
            if e.tables.as_ref().is_none_or(|t| t.unix_ms <= tables.unix_ms) {
                e.tables = Some(tables);
            }
        }
    }

    /// Names a callback site: from the names the loop gave as it met its sites,
    /// else from its latest callback-site table.
    pub(crate) fn site_label(&self, loop_id: u64, site_id: u64) -> Option<String> {
        if site_id == 0 {
            return None;
        }
        let st = self.state();
        let entry = st.loops.get(&loop_id)?;
        if let Some(name) = entry.shared.site_name(site_id) {
            return Some(name);
        }
        let tables = entry.tables.as_ref()?;
        tables.callback_sites.iter().find(|s| s.id == site_id).map(|s| s.label())
    }

    /// Streams a stall event (opened, stack captured, closed).
    pub(crate) fn publish_stall(&self, ev: &StallEvent) {
        if !self.stream.has_clients() {
            return;
        }
        if let Ok(data) = serde_json::to_string(ev) {
            self.stream.publish(StreamEvent { name: "stall", loop_id: ev.loop_id, data });
        }
    }

    /// Runs `f` over the sidecar's state, after pumping so it is current.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&HubState) -> R) -> R {
        self.pump();
        f(&self.state())
    }

    /// The doorbell's receiving end; the first server to start takes it.
    pub(crate) fn take_doorbell(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        self.doorbell_rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Starts the stall watchdog (once per hub; later calls do nothing).
    ///
    /// # Errors
    /// The OS refused to start its threads.
    pub fn start_watchdog(self: &Arc<Self>) -> std::io::Result<()> {
        if self.watchdog_started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        crate::watchdog::spawn(self).inspect_err(|_| self.watchdog_started.store(false, Ordering::Release))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Serialize)]
struct LoopEventData<'a> {
    info: &'a LoopInfo,
    closed: bool,
    closed_unix_ms: Option<u64>,
}

fn loop_event(info: &LoopInfo, closed_unix_ms: Option<u64>) -> StreamEvent {
    let data = LoopEventData { info, closed: closed_unix_ms.is_some(), closed_unix_ms };
    StreamEvent { name: "loop", loop_id: info.id, data: serde_json::to_string(&data).unwrap_or_default() }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tables;

    #[test]
    fn a_full_sample_queue_drops_and_counts() {
        let hub = Hub::new(HubConfig { sample_queue: 4, ..Default::default() });
        let h = hub.register_loop(LoopInfo::default());
        let sent = (0..10).filter(|_| h.publish_sample(Sample::new())).count();
        assert_eq!(sent, 4);
        assert_eq!(h.samples_dropped(), 6);
        hub.pump();
        assert!(h.publish_sample(Sample::new()), "drained, so there is room again");
        hub.read(|st| {
            let e = &st.loops[&h.id()];
            assert_eq!(e.samples_dropped(), 6);
            assert_eq!(e.history.totals().samples, 5);
        });
    }

    #[test]
    fn closed_loops_are_kept_then_bounded() {
        let hub = Hub::new(HubConfig { max_closed_loops: 2, ..Default::default() });
        let handles: Vec<_> = (0..4).map(|_| hub.register_loop(LoopInfo::default())).collect();
        let ids: Vec<u64> = handles.iter().map(|h| h.id()).collect();
        hub.pump();
        drop(handles);
        hub.pump();
        hub.read(|st| {
            assert_eq!(st.loops.len(), 2, "only the newest closed loops remain");
            assert!(st.loops.values().all(|e| e.closed_unix_ms.is_some()));
        });
        assert!(hub.live_loops().is_empty());
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are fresh and increasing");
    }

    #[test]
    fn loops_closed_before_any_sidecar_look_are_not_kept() {
        let hub = Hub::new(HubConfig::default());
        for _ in 0..100 {
            drop(hub.register_loop(LoopInfo::default()));
        }
        let _live = hub.register_loop(LoopInfo::default());
        assert_eq!(hub.registry().new.len(), 1);
        assert_eq!(hub.live_loops().len(), 1);
    }

    #[test]
    fn tables_replace_the_previous_ones() {
        let hub = Hub::new(HubConfig::default());
        let h = hub.register_loop(LoopInfo::default());
        h.publish_tables(Tables { unix_ms: 1, ..Default::default() });
        h.publish_tables(Tables { unix_ms: 2, ..Default::default() });
        hub.read(|st| {
            let e = &st.loops[&h.id()];
            assert_eq!(e.tables.as_ref().map(|t| t.unix_ms), Some(2));
            assert_eq!(e.tables_received, 1);
        });
    }
}
