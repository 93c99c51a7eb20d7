//! Per-loop recording: what the loop thread measures about itself.
//!
//! Bounds: every histogram covers 1 ns .. 1 hour with 3 significant digits
//! (a fixed ~40 KiB each); counters are plain `u64`. Nothing here grows with
//! the number of callbacks run.

use hdrhistogram::Histogram;

/// Highest value the duration histograms track: one hour, in nanoseconds.
/// Longer values are clamped so one pathological callback can't lose the sample.
const MAX_NS: u64 = 3_600 * 1_000_000_000;

fn duration_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// What one loop records. Owned by the loop thread; written without locks.
pub struct Recorder {
    /// Whether per-callback timing is taken at all (`record=False` turns it off
    /// for overhead comparisons; counters still tick).
    pub enabled: bool,
    pub iterations: u64,
    pub callbacks: u64,
    pub exceptions: u64,
    pub slow_callbacks: u64,
    /// Time spent running callbacks and dispatching I/O (ns).
    pub busy_ns: u64,
    /// Time spent waiting in the poll (ns).
    pub idle_ns: u64,
    /// `asyncio.callback.duration`: how long each callback ran (ns).
    pub callback_duration: Histogram<u64>,
    /// `asyncio.eventloop.delay` for timers: how late each timer ran after its `when` (ns).
    pub timer_lateness: Histogram<u64>,
}

/// A copy of a recorder's state, detached from the loop thread.
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
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Recorder {
    pub fn new(enabled: bool) -> Self {
        Recorder {
            enabled,
            iterations: 0,
            callbacks: 0,
            exceptions: 0,
            slow_callbacks: 0,
            busy_ns: 0,
            idle_ns: 0,
            callback_duration: duration_histogram(),
            timer_lateness: duration_histogram(),
        }
    }

    /// Records one callback's run time.
    #[inline]
    pub fn callback(&mut self, duration_ns: u64) {
        self.callbacks += 1;
        if self.enabled {
            self.callback_duration.saturating_record(duration_ns.clamp(1, MAX_NS));
        }
    }

    /// Records how late a timer ran compared to its scheduled time.
    #[inline]
    pub fn timer_fired(&mut self, late_ns: u64) {
        if self.enabled {
            self.timer_lateness.saturating_record(late_ns.clamp(1, MAX_NS));
        }
    }

    pub fn snapshot(&self) -> RecorderSnapshot {
        let cb = &self.callback_duration;
        let tl = &self.timer_lateness;
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
}
