//! The stall watchdog: names a blocking callback while it still blocks.
//!
//! A thread (not a task in the server's runtime, so a busy server cannot delay it)
//! reads every live loop's [`Heartbeat`](crate::Heartbeat). A callback running past
//! the threshold opens an ongoing [`StallEvent`]; its duration is updated every
//! `watchdog_interval`; it closes when the heartbeat moves on.
//!
//! With no stall open, the thread sleeps until the earliest moment a callback seen
//! running could cross the threshold (a callback that starts later crosses later
//! still), at most `MAX_QUIET_SLEEP_NS`: about ten wake-ups a second at the default
//! threshold instead of a hundred, each of which takes a core from a busy loop on a
//! small machine. A stall is still seen within `MIN_SLEEP_NS` of crossing.
//!
//! The stack is asked of a second thread, because the loop's capture function may
//! block (it needs the GIL the stalled callback may hold): the watchdog only
//! `try_send`s a job and keeps ticking. A capture slower than `capture_timeout` is
//! marked `timeout`; while one capture is stuck, later ones queue (2) or are
//! `skipped`. Bounds: the last `stall_log` stalls; stacks cut to 64 KiB.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::thread;

use crate::clock;
use crate::handle::LoopShared;
use crate::hub::Hub;
use crate::model::{StackStatus, StallEvent};

/// Longest sleep with no stall open (bounds how late a threshold lowered meanwhile
/// takes effect).
const MAX_QUIET_SLEEP_NS: u64 = 250_000_000;

/// Shortest sleep, should a heartbeat's start time be odd.
const MIN_SLEEP_NS: u64 = 1_000_000;

/// Longest stack kept per stall.
pub const MAX_STACK_BYTES: usize = 64 * 1024;

/// Capture jobs that may wait while one runs.
const CAPTURE_QUEUE: usize = 2;

/// The last stalls, newest at the back.
pub(crate) struct StallLog {
    inner: Mutex<LogInner>,
}

struct LogInner {
    events: VecDeque<StallEvent>,
    capacity: usize,
    next_id: u64,
}

impl StallLog {
    pub(crate) fn new(capacity: usize) -> Self {
        StallLog { inner: Mutex::new(LogInner { events: VecDeque::new(), capacity: capacity.max(1), next_id: 1 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a stall, giving it an id; returns the stored event.
    fn open(&self, mut ev: StallEvent) -> StallEvent {
        let mut log = self.lock();
        ev.id = log.next_id;
        log.next_id += 1;
        if log.events.len() == log.capacity {
            log.events.pop_front();
        }
        log.events.push_back(ev.clone());
        ev
    }

    /// Changes stall `id` (if still in the log); returns it as changed.
    fn update(&self, id: u64, f: impl FnOnce(&mut StallEvent)) -> Option<StallEvent> {
        let mut log = self.lock();
        // Ids increase along the deque, so the one we want is found by bisection.
        let i = log.events.partition_point(|e| e.id < id);
        let ev = log.events.get_mut(i).filter(|e| e.id == id)?;
        f(ev);
        Some(ev.clone())
    }

    /// Newest first, of one loop or all.
    pub(crate) fn list(&self, loop_id: Option<u64>, limit: usize) -> Vec<StallEvent> {
        let log = self.lock();
        log.events.iter().rev().filter(|e| loop_id.is_none_or(|id| e.loop_id == id)).take(limit).cloned().collect()
    }

    /// Stalls ongoing now.
    pub(crate) fn ongoing(&self) -> usize {
        self.lock().events.iter().filter(|e| e.ongoing).count()
    }
}

struct CaptureJob {
    shared: Arc<LoopShared>,
    stall_id: u64,
    start_ns: u64,
}

/// What the watchdog remembers between ticks.
#[derive(Default)]
struct Watchdog {
    /// Per loop: the open stall, and the callback start and iteration it belongs to.
    open: HashMap<u64, (u64, u64, u64)>,
    /// Open stalls whose site had no name yet, with the site id: asked again each tick.
    unnamed: HashMap<u64, u64>,
    /// Stalls whose capture was asked for, with the deadline (monotonic ns).
    captures: Vec<(u64, u64)>,
}

/// Starts the watchdog and capture threads. They hold only a `Weak` to the hub and
/// exit when it is dropped.
pub(crate) fn spawn(hub: &Arc<Hub>) -> std::io::Result<()> {
    let (tx, rx) = sync_channel::<CaptureJob>(CAPTURE_QUEUE);
    let weak = Arc::downgrade(hub);
    thread::Builder::new().name("glassloop-stack".into()).spawn({
        let weak = weak.clone();
        move || capture_worker(weak, rx)
    })?;
    thread::Builder::new().name("glassloop-watchdog".into()).spawn(move || {
        let mut dog = Watchdog::default();
        loop {
            let Some(hub) = weak.upgrade() else { return };
            let next = dog.tick(&hub, &tx);
            drop(hub);
            let sleep_ns = next.saturating_sub(clock::monotonic_ns()).max(MIN_SLEEP_NS);
            thread::sleep(std::time::Duration::from_nanos(sleep_ns));
        }
    })?;
    Ok(())
}

impl Watchdog {
    /// One look at every loop; returns when to look next (monotonic ns).
    fn tick(&mut self, hub: &Hub, captures: &SyncSender<CaptureJob>) -> u64 {
        let threshold = hub.stall_threshold_ns();
        let loops = hub.live_loops();
        let now = clock::monotonic_ns();
        let interval = hub.config().watchdog_interval.as_nanos() as u64;
        // Any callback starting from now on crosses the threshold no earlier than this.
        let mut next = now.saturating_add(threshold.min(MAX_QUIET_SLEEP_NS));
        for l in &loops {
            let id = l.info.id;
            let beat = l.heartbeat.read();
            if let Some(&(stall_id, start, iteration)) = self.open.get(&id) {
                // A new iteration also means the callback returned (should a loop
                // ever skip `idle()` before polling).
                if beat.running_since_ns == start && beat.iterations == iteration && !l.is_closed() {
                    let named = self.unnamed.get(&stall_id).and_then(|&site| site_label(hub, l, site));
                    let updated = hub.stalls.update(stall_id, |e| {
                        e.duration_ns = now.saturating_sub(start);
                        if named.is_some() {
                            e.site = named.clone();
                        }
                    });
                    if named.is_some() {
                        self.unnamed.remove(&stall_id);
                        if let Some(ev) = updated {
                            hub.publish_stall(&ev);
                        }
                    }
                    continue;
                }
                // The heartbeat moved: the stalled callback returned within the last
                // tick; its duration is an upper bound, off by at most one tick.
                self.close(hub, id, now);
            }
            let start = beat.running_since_ns;
            if start == 0 {
                continue;
            }
            if now.saturating_sub(start) < threshold {
                next = next.min(start.saturating_add(threshold));
                continue;
            }
            let running = now.saturating_sub(start);
            let mut ev = hub.stalls.open(StallEvent {
                id: 0,
                loop_id: id,
                started_unix_ms: clock::unix_ms().saturating_sub(running / 1_000_000),
                duration_ns: running,
                ongoing: true,
                site_id: beat.site,
                site: site_label(hub, l, beat.site),
                stack: None,
                stack_status: StackStatus::Pending,
            });
            if ev.site.is_none() && beat.site != 0 {
                self.unnamed.insert(ev.id, beat.site);
            }
            l.stalls_opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.open.insert(id, (ev.id, start, beat.iterations));
            let status = if l.stack_capture().is_none() {
                Some(StackStatus::Unavailable)
            } else {
                let job = CaptureJob { shared: Arc::clone(l), stall_id: ev.id, start_ns: start };
                match captures.try_send(job) {
                    Ok(()) => {
                        let timeout = hub.config().capture_timeout.as_nanos() as u64;
                        self.captures.push((ev.id, now.saturating_add(timeout)));
                        None
                    }
                    Err(_) => Some(StackStatus::Skipped),
                }
            };
            if let Some(status) = status {
                ev = hub.stalls.update(ev.id, |e| e.stack_status = status).unwrap_or(ev);
            }
            hub.publish_stall(&ev);
        }
        // Loops that closed (or vanished) while stalled: their stall is over.
        let gone: Vec<u64> = self.open.keys().copied().filter(|id| !loops.iter().any(|l| l.info.id == *id)).collect();
        for id in gone {
            self.close(hub, id, now);
        }
        self.captures.retain(|&(stall_id, deadline)| {
            if now < deadline {
                return true;
            }
            let timed_out = hub.stalls.update(stall_id, |e| {
                if e.stack_status == StackStatus::Pending {
                    e.stack_status = StackStatus::Timeout;
                }
            });
            if let Some(ev) = timed_out.filter(|e| e.stack_status == StackStatus::Timeout) {
                hub.publish_stall(&ev);
            }
            false
        });
        // An open stall's duration and end are followed every interval.
        if !self.open.is_empty() {
            next = next.min(now.saturating_add(interval));
        }
        if let Some(deadline) = self.captures.iter().map(|&(_, deadline)| deadline).min() {
            next = next.min(deadline);
        }
        next
    }

    fn close(&mut self, hub: &Hub, loop_id: u64, now: u64) {
        if let Some((stall_id, start, _)) = self.open.remove(&loop_id) {
            // Named by now if the loop published tables meanwhile.
            let named = self.unnamed.remove(&stall_id).and_then(|site| hub.site_label(loop_id, site));
            let closed = hub.stalls.update(stall_id, |e| {
                e.ongoing = false;
                e.duration_ns = now.saturating_sub(start);
                if e.site.is_none() {
                    e.site = named;
                }
            });
            if let Some(ev) = closed {
                hub.publish_stall(&ev);
            }
        }
    }
}

/// The label of a loop's callback site: as the loop named it, else from its tables.
fn site_label(hub: &Hub, l: &LoopShared, site: u64) -> Option<String> {
    if site == 0 {
        return None;
    }
    l.site_name(site).or_else(|| hub.site_label(l.info.id, site))
}

fn capture_worker(hub: Weak<Hub>, jobs: Receiver<CaptureJob>) {
    // Ends when the watchdog thread (the only sender) exits.
    for job in jobs {
        let outcome = job.shared.stack_capture().map(|f| catch_unwind(AssertUnwindSafe(|| f())));
        let same_callback = job.shared.heartbeat.read().running_since_ns == job.start_ns;
        let (status, stack) = match outcome {
            Some(Ok(Some(stack))) if same_callback => (StackStatus::Captured, Some(cut(stack))),
            Some(Ok(Some(_))) => (StackStatus::Stale, None),
            // No function, nothing returned, or it panicked: a panic must not end
            // this thread, and there is no stack to show either way.
            None | Some(Ok(None)) | Some(Err(_)) => (StackStatus::Unavailable, None),
        };
        let Some(hub) = hub.upgrade() else { return };
        let updated = hub.stalls.update(job.stall_id, |e| {
            e.stack_status = status;
            e.stack = stack;
        });
        if let Some(ev) = updated {
            hub.publish_stall(&ev);
        }
    }
}

/// Cuts `s` to [`MAX_STACK_BYTES`] on a character boundary, keeping the innermost
/// frames (Python prints them last).
fn cut(s: String) -> String {
    if s.len() <= MAX_STACK_BYTES {
        return s;
    }
    let mut start = s.len() - MAX_STACK_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_updates_by_id() {
        let log = StallLog::new(3);
        let ids: Vec<u64> = (0..5).map(|i| log.open(StallEvent { loop_id: i % 2, ..Default::default() }).id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert_eq!(log.list(None, 10).iter().map(|e| e.id).collect::<Vec<_>>(), [5, 4, 3]);
        assert!(log.update(1, |_| {}).is_none(), "evicted");
        assert_eq!(log.update(4, |e| e.duration_ns = 7).map(|e| e.duration_ns), Some(7));
        assert_eq!(log.list(Some(1), 10).iter().map(|e| e.id).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn long_stacks_keep_their_innermost_frames() {
        let s = format!("{}é{}", "a".repeat(MAX_STACK_BYTES), "inner");
        let c = cut(s);
        assert!(c.ends_with("éinner") || c.ends_with("inner"));
        assert!(c.len() <= MAX_STACK_BYTES + "…".len());
    }
}
