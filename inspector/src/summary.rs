//! Turning an HDR histogram into what the API, the dashboard and `/metrics` show.
//!
//! An HDR histogram is precise but large (tens of KiB); what leaves the hub is a
//! fixed-size [`HistogramSummary`]: a few statistics and counts in fixed buckets.
//! The buckets are the same everywhere (JSON, heatmap, Prometheus `le` bounds), so
//! summaries of different loops and intervals can be added bucket by bucket.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Upper bounds of the fixed buckets, in nanoseconds: 10 µs … 10 s in 1-2.5-5 steps.
///
/// Why these: below 10 µs is "fast enough" for any Python callback (a bare
/// `call_soon` round trip costs a few µs), and above 10 s a loop is simply stuck;
/// 1-2.5-5 steps match the usual Prometheus latency buckets, so dashboards that
/// already chart `http_request_duration_seconds` read ours the same way.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Number of buckets in a summary: one per bound plus the overflow (`+Inf`) bucket.
pub const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// Highest value the interval histograms track: one hour, in nanoseconds. Longer
/// values are clamped (and still counted) rather than lost.
pub const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// The histogram every interval (and every merged since-start view) uses:
/// 1 ns … 1 h with 2 significant digits.
///
/// # Notes
/// Two digits (resolution under 1 %) keep one histogram at ~36 KiB: a sample carries
/// five, and a loop may have a few queued, so three digits (~270 KiB each) would cost
/// megabytes per loop for precision nobody reads off a latency chart.
pub fn interval_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 2).expect("static histogram bounds are valid")
}

/// One histogram, summarized. All durations are nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// Number of recorded values.
    pub count: u64,
    /// Sum of recorded values, estimated from the histogram (within its resolution).
    pub sum_ns: u64,
    /// Smallest recorded value (0 when empty).
    pub min_ns: u64,
    /// Largest recorded value (0 when empty).
    pub max_ns: u64,
    /// Mean of recorded values (0 when empty).
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Counts per fixed bucket (not cumulative): `buckets[i]` counts values in
    /// `(BUCKET_BOUNDS_NS[i-1], BUCKET_BOUNDS_NS[i]]`; the last entry is the overflow.
    pub buckets: [u64; BUCKETS],
}

impl HistogramSummary {
    /// Summarizes `h`.
    ///
    /// # Notes
    /// A value is assigned to a bucket by the lowest value its HDR cell stands for, so
    /// a value within the histogram's resolution (< 1 %) above a bound may be counted
    /// at or below it. Counts are exact; only the boundary placement is approximate.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let count = h.len();
        let mean = h.mean();
        let mut buckets = [0u64; BUCKETS];
        for v in h.iter_recorded() {
            let value = h.lowest_equivalent(v.value_iterated_to());
            buckets[bucket_index(value)] += v.count_since_last_iteration();
        }
        HistogramSummary {
            count,
            sum_ns: (mean * count as f64).round() as u64,
            min_ns: h.min(),
            max_ns: h.max(),
            mean_ns: mean,
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            buckets,
        }
    }

    /// Cumulative bucket counts, as Prometheus `_bucket{le=...}` wants them; the last
    /// entry (`le="+Inf"`) equals `count`.
    pub fn cumulative_buckets(&self) -> [u64; BUCKETS] {
        let mut out = self.buckets;
        for i in 1..BUCKETS {
            out[i] += out[i - 1];
        }
        out
    }
}

/// Index of the bucket holding `value_ns`.
pub fn bucket_index(value_ns: u64) -> usize {
    BUCKET_BOUNDS_NS.partition_point(|&bound| bound < value_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_summarizes_to_zeros() {
        assert_eq!(HistogramSummary::of(&interval_histogram()), HistogramSummary::default());
    }

    #[test]
    fn bucket_bounds_are_inclusive_upper_bounds() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(10_000), 0);
        assert_eq!(bucket_index(10_001), 1);
        assert_eq!(bucket_index(10_000_000_000), BUCKETS - 2);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn summary_counts_every_value_once() {
        let mut h = interval_histogram();
        for v in [1_000u64, 20_000, 20_000, 3_000_000, 7_000_000_000, MAX_NS] {
            h.saturating_record(v);
        }
        let s = HistogramSummary::of(&h);
        assert_eq!(s.count, 6);
        assert_eq!(s.buckets.iter().sum::<u64>(), 6);
        assert_eq!(s.buckets[0], 1); // 1 µs
        assert_eq!(s.buckets[1], 2); // 20 µs
        assert_eq!(s.buckets[bucket_index(3_000_000)], 1);
        assert_eq!(s.buckets[BUCKETS - 1], 1); // one hour overflows 10 s
        assert_eq!(*s.cumulative_buckets().last().unwrap(), 6);
        assert!(s.min_ns <= 1_000 && s.max_ns >= MAX_NS / 100 * 99);
        // Two significant digits: the sum is right within 1 %.
        let exact: u64 = 1_000 + 40_000 + 3_000_000 + 7_000_000_000 + MAX_NS;
        assert!((s.sum_ns as f64 - exact as f64).abs() / (exact as f64) < 0.01, "{s:?}");
    }
}
