//! The loop thread's cumulative duration counts: one counter per cell, in the same
//! cells as a 3-significant-digit `hdrhistogram` over 1 ns .. [`MAX_NS`].
//!
//! Why not record into `hdrhistogram` directly: its `record` keeps min, max, total
//! and range checks up to date at every call (~60 instructions), and cutting an
//! interval out of a cumulative histogram had to look every cell up by value. Here
//! a record is an index computation and an increment, and a cut walks the counter
//! array once, up to the highest cell used. `hdrhistogram` still does everything
//! else (quantiles, interval histograms, Prometheus buckets): [`Cells::to_histogram`]
//! and [`Cells::since`] hand it the counts.

use hdrhistogram::Histogram;

use crate::model::DurationHistogram;
use crate::summary::{interval_histogram, MAX_NS};

/// Cells per power of two above the first 2048 values (3 significant digits: 2^10).
const HALF: u32 = 10;
/// Highest shift [`MAX_NS`] needs, so the array is sized for it.
const TOP_SHIFT: u32 = 53 - (MAX_NS | 2047).leading_zeros();
const LEN: usize = ((TOP_SHIFT as usize) << HALF) + (1 << (HALF + 1));

/// Cumulative counts of durations (ns), never reset.
pub struct Cells {
    counts: Box<[u64]>,
    total: u64,
    /// Highest cell index with a count: cuts walk no further.
    top: usize,
}

impl std::fmt::Debug for Cells {
    // The totals; the array is mostly zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells").field("total", &self.total).field("top", &self.top).finish()
    }
}

impl Default for Cells {
    fn default() -> Self {
        Cells::new()
    }
}

impl Cells {
    /// Empty counts (the array is zeroed lazily by the allocator's fresh pages).
    pub fn new() -> Self {
        Cells { counts: vec![0u64; LEN].into_boxed_slice(), total: 0, top: 0 }
    }

    /// The cell of `value`: hdrhistogram's index for sigfig 3 and lowest value 1
    /// (values below 2048 have a cell each; above, 1024 cells per power of two).
    #[inline]
    fn index(value: u64) -> usize {
        let shift = 53 - (value | 2047).leading_zeros();
        ((shift as usize) << HALF) + (value >> shift) as usize
    }

    /// The lowest value of cell `i`, and the cell's width.
    fn bounds(i: usize) -> (u64, u64) {
        if i < 2048 {
            return (i as u64, 1);
        }
        let shift = (i >> HALF) as u32 - 1;
        let sub = (i - ((shift as usize) << HALF)) as u64;
        (sub << shift, 1 << shift)
    }

    /// Counts one duration; values outside 1 ns .. [`MAX_NS`] count at the nearest bound.
    #[inline]
    pub fn record(&mut self, value_ns: u64) {
        let i = Self::index(value_ns.clamp(1, MAX_NS));
        self.counts[i] += 1;
        self.total += 1;
        if i > self.top {
            self.top = i;
        }
    }

    /// Durations counted since creation.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The counts as a 3-digit `hdrhistogram` (the same cells, so the same
    /// quantiles and max as recording into it directly).
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid");
        for (i, &n) in self.counts[..=self.top].iter().enumerate() {
            if n > 0 {
                h.saturating_record_n(Self::bounds(i).0.max(1), n);
            }
        }
        h
    }

    /// What was counted since the cut `prev` (this array's counts then; empty at
    /// the first cut), as an interval histogram of each cell's middle value; then
    /// `prev` takes the current counts.
    pub fn since(&self, prev: &mut Vec<u64>) -> DurationHistogram {
        let mut out = interval_histogram();
        let top = self.top;
        if prev.len() <= top {
            prev.resize(top + 1, 0);
        }
        for (i, (&now, before)) in self.counts[..=top].iter().zip(prev.iter_mut()).enumerate() {
            if now != *before {
                let (low, width) = Self::bounds(i);
                // Saturating: report what is there rather than underflow.
                let n = now.saturating_sub(*before);
                if n > 0 {
                    out.saturating_record_n((low + width / 2).clamp(1, MAX_NS), n);
                }
                *before = now;
            }
        }
        DurationHistogram(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_hdrhistogram_cells() {
        let h = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3).unwrap();
        let mut v = 1u64;
        while v <= MAX_NS {
            for probe in [v, v + 1, v.saturating_mul(3) / 2, v * 2 - 1] {
                let probe = probe.clamp(1, MAX_NS);
                let (low, width) = Cells::bounds(Cells::index(probe));
                assert_eq!(low.max(1), h.lowest_equivalent(probe).max(1), "lowest of {probe}");
                assert_eq!(width, h.equivalent_range(probe), "width at {probe}");
                assert!(low <= probe && probe < low + width, "{probe} in [{low}, +{width})");
            }
            v *= 2;
        }
        assert!(Cells::index(MAX_NS) < LEN);
    }

    #[test]
    fn to_histogram_matches_direct_recording() {
        let mut cells = Cells::new();
        let mut direct = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3).unwrap();
        for (i, v) in [0u64, 1, 999, 2_047, 2_048, 123_456, 5_000_000, 77_777_777, MAX_NS, u64::MAX].iter().enumerate() {
            for _ in 0..=i {
                cells.record(*v);
                direct.saturating_record((*v).clamp(1, MAX_NS));
            }
        }
        let h = cells.to_histogram();
        assert_eq!(h.len(), direct.len());
        assert_eq!(cells.len(), direct.len());
        assert_eq!(h.max(), direct.max());
        assert_eq!(h.min_nz(), direct.min_nz());
        for q in [0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(h.value_at_quantile(q), direct.value_at_quantile(q), "q {q}");
        }
    }

    #[test]
    fn since_reports_each_interval_once() {
        let mut cells = Cells::new();
        let mut prev = Vec::new();
        for _ in 0..10 {
            cells.record(1_000);
        }
        cells.record(40_000_000);
        let first = cells.since(&mut prev).0;
        assert_eq!(first.len(), 11);
        assert_eq!(first.count_between(990, 1_010), 10);
        assert!(first.max() >= 39_000_000 && first.max() <= 41_000_000);
        assert_eq!(cells.since(&mut prev).0.len(), 0, "nothing new");
        cells.record(1_000);
        cells.record(3_000);
        let third = cells.since(&mut prev).0;
        assert_eq!(third.len(), 2);
        assert_eq!(third.count_between(2_950, 3_050), 1);
    }
}
