//! Per-loop recording: what the loop thread measures about itself.
//!
//! Bounds: `callback_duration`, `timer_lateness` and `eventloop_delay` cover 1 ns .. 1 hour with 3
//! significant digits (~440 KiB of address space each, of which only the pages values
//! fall in are touched, see [`Cells`]); the per-interval
//! histograms use 2 digits (~36 KiB each, see [`interval_histogram`]); counters are
//! plain `u64`. Taking samples keeps a copy of each cumulative array's counts up to
//! its highest used cell. Nothing here grows with the number of callbacks run.
//!
//! Sampling: [`Recorder::take_sample`] cuts an interval out of the recorder for the
//! hub. `callback_duration`, `timer_lateness` and `eventloop_delay` stay cumulative
//! (`loop.stats()` reports them since the loop was created); the interval's part is
//! their difference from the previous cut, computed only at the cut (4 times a
//! second), so the hot path records each value once, inspected or not.

use hdrhistogram::Histogram;

use crate::cells::Cells;
use crate::clock;
use crate::model::{Histograms, Sample};
use crate::summary::{interval_histogram, MAX_NS};

/// What one loop records. Owned by the loop thread; written without locks.
pub struct Recorder {
    /// Whether per-callback timing is taken at all (`record=False` turns it off
    /// for overhead comparisons; counters still tick).
    pub enabled: bool,
    /// Loop iterations since creation.
    pub iterations: u64,
    /// Callbacks run since creation.
    pub callbacks: u64,
    /// Callbacks that raised, since creation.
    pub exceptions: u64,
    /// Callbacks over `slow_callback_duration`, since creation.
    pub slow_callbacks: u64,
    /// Time spent running callbacks and dispatching I/O (ns).
    pub busy_ns: u64,
    /// Time spent waiting in the poll (ns).
    pub idle_ns: u64,
    /// `asyncio.callback.duration`: how long each callback ran (ns), since creation.
    pub callback_duration: Cells,
    /// How late each timer ran after its `when` (ns), since creation
    /// (`timer_delay` in samples and `loop.stats()`).
    pub timer_lateness: Cells,
    /// `asyncio.eventloop.delay`: ready → run delay of each handle (ns), since
    /// creation (`loop_lag` in `loop.stats()`; samples carry the interval's part).
    pub eventloop_delay: Cells,
    /// Run time of each task step (ns), since the last sample.
    pub task_step_duration: Histogram<u64>,
    /// Run time of each executor job (ns), since the last sample.
    pub executor_job_duration: Histogram<u64>,
    ready_queue_max: u64,
    ready_queue_last: u64,
    created_unix_ms: u64,
    /// Created at the first cut, so a loop that is never inspected pays nothing.
    cut: Option<Box<LastCut>>,
}

/// The recorder's state at the previous [`Recorder::take_sample`].
struct LastCut {
    seq: u64,
    unix_ms: u64,
    iterations: u64,
    callbacks: u64,
    exceptions: u64,
    slow_callbacks: u64,
    busy_ns: u64,
    idle_ns: u64,
    /// The cumulative counts at the cut, up to the highest cell used then.
    callback_duration: Vec<u64>,
    timer_lateness: Vec<u64>,
    eventloop_delay: Vec<u64>,
}

/// A copy of a recorder's state since creation, detached from the loop thread.
#[allow(missing_docs)] // each field mirrors the `Recorder` field or histogram statistic it names
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecorderSnapshot {
    pub iterations: u64,
    pub callbacks: u64,
    pub exceptions: u64,
    pub slow_callbacks: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub callback_count: u64,
    pub callback_p50_ns: u64,
    pub callback_p99_ns: u64,
    pub callback_max_ns: u64,
    pub timer_count: u64,
    pub timer_lateness_p50_ns: u64,
    pub timer_lateness_p99_ns: u64,
    pub timer_lateness_max_ns: u64,
    pub delay_count: u64,
    pub delay_p50_ns: u64,
    pub delay_p99_ns: u64,
    pub delay_max_ns: u64,
}

impl std::fmt::Debug for Recorder {
    // Counters and histogram sizes; the histograms' cells would be pages of zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("enabled", &self.enabled)
            .field("iterations", &self.iterations)
            .field("callbacks", &self.callbacks)
            .field("exceptions", &self.exceptions)
            .field("slow_callbacks", &self.slow_callbacks)
            .field("busy_ns", &self.busy_ns)
            .field("idle_ns", &self.idle_ns)
            .field("callback_duration.len", &self.callback_duration.len())
            .field("timer_lateness.len", &self.timer_lateness.len())
            .field("eventloop_delay.len", &self.eventloop_delay.len())
            .field("task_step_duration.len", &self.task_step_duration.len())
            .field("executor_job_duration.len", &self.executor_job_duration.len())
            .field("samples_taken", &self.cut.as_ref().map_or(0, |c| c.seq))
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Recorder {
    /// A recorder with every counter at zero; `enabled = false` keeps counters but
    /// skips the histograms.
    pub fn new(enabled: bool) -> Self {
        Recorder {
            enabled,
            iterations: 0,
            callbacks: 0,
            exceptions: 0,
            slow_callbacks: 0,
            busy_ns: 0,
            idle_ns: 0,
            callback_duration: Cells::new(),
            timer_lateness: Cells::new(),
            eventloop_delay: Cells::new(),
            task_step_duration: interval_histogram(),
            executor_job_duration: interval_histogram(),
            ready_queue_max: 0,
            ready_queue_last: 0,
            created_unix_ms: clock::unix_ms(),
            cut: None,
        }
    }

    /// Records one callback's run time.
    #[inline]
    pub fn callback(&mut self, duration_ns: u64) {
        self.callbacks += 1;
        if self.enabled {
            self.callback_duration.record(duration_ns);
        }
    }

    /// Records one callback (or transport event) that ran `duration_ns` after waiting
    /// `delay_ns` in the ready queue: [`callback`](Recorder::callback) and
    /// [`delay`](Recorder::delay) in one, for the loop's hot path.
    #[inline]
    pub fn ran(&mut self, duration_ns: u64, delay_ns: u64) {
        self.callback(duration_ns);
        self.delay(delay_ns);
    }

    /// Records how late a timer ran compared to its scheduled time.
    #[inline]
    pub fn timer_fired(&mut self, late_ns: u64) {
        if self.enabled {
            self.timer_lateness.record(late_ns);
        }
    }

    /// Records how long a handle waited between becoming ready and starting to run.
    #[inline]
    pub fn delay(&mut self, delay_ns: u64) {
        if self.enabled {
            self.eventloop_delay.record(delay_ns);
        }
    }

    /// Records one task step's run time (in addition to [`callback`](Recorder::callback)).
    #[inline]
    pub fn task_step(&mut self, duration_ns: u64) {
        if self.enabled {
            self.task_step_duration.saturating_record(duration_ns.clamp(1, MAX_NS));
        }
    }

    /// Records one executor job's run time (reported by the loop when the job's
    /// future completes; the worker thread never touches the recorder).
    #[inline]
    pub fn executor_job(&mut self, duration_ns: u64) {
        if self.enabled {
            self.executor_job_duration.saturating_record(duration_ns.clamp(1, MAX_NS));
        }
    }

    /// Notes the ready queue's depth (once per iteration): samples report the
    /// interval's maximum and last value.
    #[inline]
    pub fn ready_queue(&mut self, len: usize) {
        let len = len as u64;
        self.ready_queue_last = len;
        if len > self.ready_queue_max {
            self.ready_queue_max = len;
        }
    }

    /// Cuts the interval since the previous call (or since creation) into a
    /// [`Sample`] for [`LoopHandle::publish_sample`](crate::LoopHandle::publish_sample).
    ///
    /// Fills the counters, busy/idle time, ready-queue depth, the interval's
    /// histograms, `seq` and the interval's bounds; the loop sets the gauges only it
    /// knows (`timers_pending`, `fds_registered`, `tasks_*`, `transports_open`,
    /// `bytes_*`, `executor_*`) on the result.
    ///
    /// # Notes
    /// Walks the cumulative counters up to their highest used cell and allocates
    /// five 36 KiB interval histograms. Call it on the sampling deadline (default
    /// every 250 ms), not per iteration.
    pub fn take_sample(&mut self, now_unix_ms: u64) -> Sample {
        let created = self.created_unix_ms;
        let cut = self.cut.get_or_insert_with(|| {
            Box::new(LastCut {
                seq: 0,
                unix_ms: created,
                iterations: 0,
                callbacks: 0,
                exceptions: 0,
                slow_callbacks: 0,
                busy_ns: 0,
                idle_ns: 0,
                callback_duration: Vec::new(),
                timer_lateness: Vec::new(),
                eventloop_delay: Vec::new(),
            })
        });
        let busy = self.busy_ns.saturating_sub(cut.busy_ns);
        let idle = self.idle_ns.saturating_sub(cut.idle_ns);
        let sample = Sample {
            loop_id: 0,
            seq: cut.seq + 1,
            start_unix_ms: cut.unix_ms,
            end_unix_ms: now_unix_ms.max(cut.unix_ms),
            iterations: self.iterations.saturating_sub(cut.iterations),
            callbacks: self.callbacks.saturating_sub(cut.callbacks),
            exceptions: self.exceptions.saturating_sub(cut.exceptions),
            slow_callbacks: self.slow_callbacks.saturating_sub(cut.slow_callbacks),
            busy_seconds: busy as f64 / 1e9,
            idle_seconds: idle as f64 / 1e9,
            utilization: if busy + idle == 0 { 0.0 } else { busy as f64 / (busy + idle) as f64 },
            ready_queue_max: self.ready_queue_max,
            ready_queue_last: self.ready_queue_last,
            histograms: Histograms {
                callback_duration: self.callback_duration.since(&mut cut.callback_duration),
                timer_delay: self.timer_lateness.since(&mut cut.timer_lateness),
                eventloop_delay: self.eventloop_delay.since(&mut cut.eventloop_delay),
                task_step_duration: std::mem::replace(&mut self.task_step_duration, interval_histogram()).into(),
                executor_job_duration: std::mem::replace(&mut self.executor_job_duration, interval_histogram()).into(),
            },
            timers_pending: 0,
            fds_registered: 0,
            tasks_live: 0,
            tasks_created: 0,
            tasks_finished: 0,
            transports_open: 0,
            bytes_in: 0,
            bytes_out: 0,
            connections: 0,
            executor_queued: 0,
            executor_running: 0,
            executor_done: 0,
            stalls: 0,
        };
        cut.seq = sample.seq;
        cut.unix_ms = sample.end_unix_ms;
        cut.iterations = self.iterations;
        cut.callbacks = self.callbacks;
        cut.exceptions = self.exceptions;
        cut.slow_callbacks = self.slow_callbacks;
        cut.busy_ns = self.busy_ns;
        cut.idle_ns = self.idle_ns;
        self.ready_queue_max = self.ready_queue_last;
        sample
    }

    /// What [`Recorder`] has counted since creation.
    pub fn snapshot(&self) -> RecorderSnapshot {
        let cb = &self.callback_duration.to_histogram();
        let tl = &self.timer_lateness.to_histogram();
        let dl = &self.eventloop_delay.to_histogram();
        RecorderSnapshot {
            iterations: self.iterations,
            callbacks: self.callbacks,
            exceptions: self.exceptions,
            slow_callbacks: self.slow_callbacks,
            busy_ns: self.busy_ns,
            idle_ns: self.idle_ns,
            callback_count: cb.len(),
            callback_p50_ns: cb.value_at_quantile(0.5),
            callback_p99_ns: cb.value_at_quantile(0.99),
            callback_max_ns: cb.max(),
            timer_count: tl.len(),
            timer_lateness_p50_ns: tl.value_at_quantile(0.5),
            timer_lateness_p99_ns: tl.value_at_quantile(0.99),
            timer_lateness_max_ns: tl.max(),
            delay_count: dl.len(),
            delay_p50_ns: dl.value_at_quantile(0.5),
            delay_p99_ns: dl.value_at_quantile(0.99),
            delay_max_ns: dl.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_durations_land_in_the_histogram() {
        let mut r = Recorder::new(true);
        for _ in 0..99 {
            r.callback(1_000);
        }
        r.callback(50_000_000);
        let s = r.snapshot();
        assert_eq!(s.callbacks, 100);
        assert_eq!(s.callback_count, 100);
        // 3 significant digits: values are exact to within 0.1%.
        assert!((999..=1_001).contains(&s.callback_p50_ns), "{s:?}");
        assert!((49_950_000..=50_050_000).contains(&s.callback_max_ns), "{s:?}");
    }

    #[test]
    fn disabled_recorder_counts_but_keeps_no_histogram() {
        let mut r = Recorder::new(false);
        r.callback(5);
        r.timer_fired(5);
        let s = r.snapshot();
        assert_eq!(s.callbacks, 1);
        assert_eq!(s.callback_count, 0);
        assert_eq!(s.timer_count, 0);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut r = Recorder::new(true);
        r.callback(0);
        r.callback(u64::MAX);
        assert_eq!(r.snapshot().callback_count, 2);
    }

    #[test]
    fn samples_cut_intervals_and_snapshot_stays_cumulative() {
        let mut r = Recorder::new(true);
        for _ in 0..10 {
            r.callback(1_000);
        }
        r.iterations += 3;
        r.busy_ns += 300;
        r.idle_ns += 700;
        r.delay(5_000);
        r.ready_queue(7);
        r.ready_queue(2);
        let s1 = r.take_sample(r.created_unix_ms + 250);
        assert_eq!((s1.seq, s1.callbacks, s1.iterations), (1, 10, 3));
        assert_eq!(s1.histograms.callback_duration.len(), 10);
        assert_eq!(s1.histograms.eventloop_delay.len(), 1);
        assert_eq!((s1.ready_queue_max, s1.ready_queue_last), (7, 2));
        assert!((s1.utilization - 0.3).abs() < 1e-9);
        assert_eq!(s1.start_unix_ms + 250, s1.end_unix_ms);

        for _ in 0..4 {
            r.callback(2_000_000);
        }
        r.timer_fired(3_000);
        let s2 = r.take_sample(s1.end_unix_ms + 250);
        assert_eq!((s2.seq, s2.callbacks, s2.iterations), (2, 4, 0));
        assert_eq!(s2.start_unix_ms, s1.end_unix_ms);
        assert_eq!(s2.histograms.callback_duration.len(), 4, "only the new interval");
        assert!(s2.histograms.callback_duration.min() >= 1_980_000);
        assert_eq!(s2.histograms.timer_delay.len(), 1);
        assert_eq!(s2.histograms.eventloop_delay.len(), 0, "only the new interval");
        assert_eq!(s2.ready_queue_max, 2, "the max restarts from the last depth");
        assert_eq!(s2.utilization, 0.0);

        r.delay(7_000_000);
        let s3 = r.take_sample(s2.end_unix_ms + 250);
        assert_eq!(s3.histograms.eventloop_delay.len(), 1);
        assert!(s3.histograms.eventloop_delay.min() >= 6_930_000, "the new value only");

        // `loop.stats()` still reports since creation.
        let snap = r.snapshot();
        assert_eq!((snap.callbacks, snap.callback_count), (14, 14));
        assert_eq!(snap.delay_count, 2);
        assert!((6_993_000..=7_007_000).contains(&snap.delay_max_ns), "{snap:?}");
    }
}
