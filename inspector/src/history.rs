//! One loop's past: a ring of recent samples and totals since the loop started.
//!
//! Bound: `capacity` summarized samples (~1.4 KiB each: 3600 samples, 15 minutes at
//! 250 ms, is ~5 MiB per loop) plus five merged 2-digit histograms (~36 KiB each).
//! The oldest sample is dropped when the ring is full; totals keep counting.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::model::{Histograms, Sample, SampleSummary};
use crate::summary::{interval_histogram, HistogramSummary};

/// Default ring length: 15 minutes of 250 ms samples.
pub const DEFAULT_HISTORY: usize = 3_600;

/// Counters summed over every sample the hub received from one loop.
///
/// # Notes
/// These are sums of intervals, so a sample the loop had to drop (full queue) is
/// missing from them; `samples_missing` counts the gaps in `seq`, so the shortfall is
/// visible rather than silent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Samples received.
    pub samples: u64,
    /// Samples the loop numbered but the hub never received.
    pub samples_missing: u64,
    /// `seq` of the newest sample received (0 = none yet).
    pub last_seq: u64,
    /// Loop iterations.
    pub iterations: u64,
    /// Callbacks run.
    pub callbacks: u64,
    /// Callbacks that raised.
    pub exceptions: u64,
    /// Slow callbacks.
    pub slow_callbacks: u64,
    /// Seconds running callbacks and I/O.
    pub busy_seconds: f64,
    /// Seconds waiting in the poll.
    pub idle_seconds: f64,
    /// Tasks created.
    pub tasks_created: u64,
    /// Tasks finished.
    pub tasks_finished: u64,
    /// Bytes received by transports.
    pub bytes_in: u64,
    /// Bytes sent by transports.
    pub bytes_out: u64,
    /// Connections opened.
    pub connections: u64,
    /// Executor jobs completed.
    pub executor_done: u64,
    /// Stalls opened.
    pub stalls: u64,
}

impl Totals {
    /// Busy share of all time seen since start (0 when none).
    pub fn utilization(&self) -> f64 {
        let all = self.busy_seconds + self.idle_seconds;
        if all > 0.0 {
            self.busy_seconds / all
        } else {
            0.0
        }
    }

    fn add(&mut self, s: &Sample) {
        if self.last_seq != 0 && s.seq > self.last_seq + 1 {
            self.samples_missing += s.seq - self.last_seq - 1;
        }
        self.last_seq = self.last_seq.max(s.seq);
        self.samples += 1;
        self.iterations += s.iterations;
        self.callbacks += s.callbacks;
        self.exceptions += s.exceptions;
        self.slow_callbacks += s.slow_callbacks;
        self.busy_seconds += s.busy_seconds;
        self.idle_seconds += s.idle_seconds;
        self.tasks_created += s.tasks_created;
        self.tasks_finished += s.tasks_finished;
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
        self.connections += s.connections;
        self.executor_done += s.executor_done;
        self.stalls += s.stalls;
    }
}

/// A loop's recent samples and since-start totals.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    samples: VecDeque<SampleSummary>,
    totals: Totals,
    since_start: Histograms<Histogram<u64>>,
    merge_errors: u64,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        History {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
            totals: Totals::default(),
            since_start: Histograms {
                callback_duration: interval_histogram(),
                eventloop_delay: interval_histogram(),
                timer_delay: interval_histogram(),
                task_step_duration: interval_histogram(),
                executor_job_duration: interval_histogram(),
            },
            merge_errors: 0,
        }
    }

    /// Changes the ring's length, dropping the oldest samples if it shrinks.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
        self.samples.shrink_to(self.capacity);
    }

    /// Takes in one sample; returns its summarized form as stored.
    pub(crate) fn push(&mut self, sample: &Sample) -> &SampleSummary {
        self.totals.add(sample);
        let merges = [
            (&mut self.since_start.callback_duration, &sample.histograms.callback_duration),
            (&mut self.since_start.eventloop_delay, &sample.histograms.eventloop_delay),
            (&mut self.since_start.timer_delay, &sample.histograms.timer_delay),
            (&mut self.since_start.task_step_duration, &sample.histograms.task_step_duration),
            (&mut self.since_start.executor_job_duration, &sample.histograms.executor_job_duration),
        ];
        for (total, part) in merges {
            // Only fails for a histogram wider than 1 h (not built by `interval_histogram`).
            if total.add(&part.0).is_err() {
                self.merge_errors += 1;
            }
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample.summarize());
        self.samples.back().expect("just pushed")
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    pub(crate) fn latest(&self) -> Option<&SampleSummary> {
        self.samples.back()
    }

    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Histograms that could not be merged (wrong range), for the API's diagnostics.
    pub(crate) fn merge_errors(&self) -> u64 {
        self.merge_errors
    }

    /// The since-start histograms, summarized.
    pub(crate) fn since_start(&self) -> Histograms<HistogramSummary> {
        self.since_start.map(HistogramSummary::of)
    }

    /// The since-start summary of one histogram.
    pub(crate) fn since_start_one(&self, name: &str) -> Option<HistogramSummary> {
        self.since_start.get(name).map(HistogramSummary::of)
    }

    /// Up to `limit` samples with `seq > since`, oldest first.
    pub(crate) fn since(&self, since: u64, limit: usize) -> impl Iterator<Item = &SampleSummary> {
        let start = self.samples.partition_point(|s| s.seq <= since);
        self.samples.range(start..).take(limit)
    }

    /// The newest `limit` samples, oldest first.
    pub(crate) fn last(&self, limit: usize) -> impl Iterator<Item = &SampleSummary> {
        let start = self.samples.len().saturating_sub(limit);
        self.samples.range(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, callbacks: u64) -> Sample {
        let mut s = Sample::new();
        s.seq = seq;
        s.callbacks = callbacks;
        for _ in 0..callbacks {
            s.histograms.callback_duration.saturating_record(1_000);
        }
        s
    }

    #[test]
    fn ring_is_bounded_and_totals_keep_counting() {
        let mut h = History::new(3);
        for seq in 1..=5 {
            h.push(&sample(seq, 2));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.totals().callbacks, 10);
        assert_eq!(h.since_start_one("callback_duration").unwrap().count, 10);
        let seqs: Vec<u64> = h.since(0, 100).map(|s| s.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        let seqs: Vec<u64> = h.since(3, 1).map(|s| s.seq).collect();
        assert_eq!(seqs, [4]);
        assert_eq!(h.last(2).map(|s| s.seq).collect::<Vec<_>>(), [4, 5]);
        h.set_capacity(1);
        assert_eq!(h.latest().map(|s| s.seq), Some(5));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn gaps_in_seq_are_counted_as_missing() {
        let mut h = History::new(10);
        h.push(&sample(1, 0));
        h.push(&sample(4, 0));
        assert_eq!(h.totals().samples_missing, 2);
        assert_eq!(h.totals().samples, 2);
    }
}
