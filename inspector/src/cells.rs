//! The loop thread's cumulative duration counts: one counter per cell, in the same
//! cells as a 3-significant-digit `hdrhistogram` over 1 ns .. [`MAX_NS`].
//!
//! Why not record into `hdrhistogram` directly: its `record` keeps min, max, total
//! and range checks up to date at every call (~60 instructions), and cutting an
//! interval out of a cumulative histogram had to look every cell up by value. Here
//! a record is a store into a small buffer, counted 64 values at a time (an index
//! computation and an increment each), and a cut walks the counter array once, up
//! to the highest cell used. `hdrhistogram` still does everything
//! else (quantiles, interval histograms, Prometheus buckets): [`Cells::to_histogram`]
//! and [`Cells::since`] hand it the counts.

use hdrhistogram::Histogram;

use crate::model::DurationHistogram;
use crate::summary::{interval_histogram, MAX_NS};

/// Cells per power of two above the first 2048 values (3 significant digits: 2^10).
const HALF: u32 = 10;
/// The highest shift [`Cells::index`] computes, for `u64::MAX`: the array has a cell
/// for every `u64`, so a record needs neither a clamp nor a bounds check. Cells past
/// [`MAX_NS`] are never touched (their pages are never faulted in) unless a value
/// past it is recorded; it is counted at `MAX_NS` when the counts are read.
const TOP_SHIFT: u32 = 53;
const LEN: usize = ((TOP_SHIFT as usize) << HALF) + (1 << (HALF + 1));
/// Cells compared at once when cutting an interval. From cell [`COARSE_FROM`] on,
/// 8 aligned cells make exactly one cell of the 2-digit interval histograms (1024
/// cells per power of two here, 128 there, all of power-of-two widths).
const CHUNK: usize = 8;
const COARSE_FROM: usize = 1024;
/// Cells skipped at once when unchanged.
const BLOCK: usize = 64;

/// Values a record keeps before counting them (see [`Cells::record`]).
const PENDING: usize = 64;

/// Cumulative counts of durations (ns), never reset.
pub struct Cells {
    counts: Box<[u64]>,
    /// Highest cell index with a count: cuts walk no further.
    top: usize,
    /// Values recorded but not yet counted, in `pending[..pending_len]`.
    pending: [u64; PENDING],
    pending_len: usize,
}

impl std::fmt::Debug for Cells {
    // The totals; the array is mostly zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells").field("len", &self.len()).field("top", &self.top).field("pending", &self.pending_len).finish()
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
        Cells { counts: vec![0u64; LEN].into_boxed_slice(), top: 0, pending: [0; PENDING], pending_len: 0 }
    }

    /// The cell of `value`: hdrhistogram's index for sigfig 3 and lowest value 1
    /// (values below 2048 have a cell each; above, 1024 cells per power of two).
    /// Below [`LEN`] for every `u64`: the shift is at most 53 and `value >> shift`
    /// below 2048.
    #[inline]
    const fn index(value: u64) -> usize {
        let shift = 53 - (value | 2047).leading_zeros();
        ((shift as usize) << HALF) + (value >> shift) as usize
    }

    /// The value cell `i` is counted at when read: its lowest, within 1 ns ..
    /// [`MAX_NS`] (the cells from [`MAX_NS`]'s on count at `MAX_NS`).
    fn value_of(i: usize) -> u64 {
        if i >= Self::index(MAX_NS) {
            MAX_NS
        } else {
            Self::bounds(i).0.max(1)
        }
    }

    /// The lowest value of cell `i`, and the cell's width (below [`MAX_NS`]'s cell).
    fn bounds(i: usize) -> (u64, u64) {
        if i < 2048 {
            return (i as u64, 1);
        }
        let shift = (i >> HALF) as u32 - 1;
        let sub = (i - ((shift as usize) << HALF)) as u64;
        (sub << shift, 1 << shift)
    }

    /// Records one duration; values outside 1 ns .. [`MAX_NS`] count at the nearest
    /// bound (when the counts are read).
    ///
    /// The value is kept, and counted with the next [`PENDING`] - 1 in one pass
    /// ([`Cells::count_pending`]). Counting it at once cost a cache miss per value
    /// where the loop's other memory traffic (a 64 KiB echo copies 128 KiB per
    /// request) evicts the counter array between two records: one increment in a
    /// kilobytes-wide array, that the next instructions waited on. Counted in a
    /// batch, the increments are independent, and the CPU has many misses in
    /// flight at once.
    #[inline]
    pub fn record(&mut self, value_ns: u64) {
        // SAFETY: `pending_len` < PENDING between calls (counted when it gets there).
        unsafe { *self.pending.get_unchecked_mut(self.pending_len) = value_ns };
        self.pending_len += 1;
        if self.pending_len == PENDING {
            self.count_pending();
        }
    }

    /// Counts the values [`Cells::record`] kept.
    #[inline(never)]
    fn count_pending(&mut self) {
        let mut top = self.top;
        for &value in &self.pending[..self.pending_len] {
            let i = Self::index(value);
            debug_assert!(i < LEN);
            // SAFETY: `index` is below LEN for every u64 (see there), and `counts` has LEN cells.
            unsafe { *self.counts.get_unchecked_mut(i) += 1 };
            top = top.max(i);
        }
        self.top = top;
        self.pending_len = 0;
    }

    /// Durations recorded since creation (a walk of the cells: not for the hot path).
    pub fn len(&self) -> u64 {
        self.counts[..=self.top].iter().sum::<u64>() + self.pending_len as u64
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts as a 3-digit `hdrhistogram` (the same cells, so the same
    /// quantiles and max as recording into it directly).
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid");
        for (i, &n) in self.counts[..=self.top].iter().enumerate() {
            if n > 0 {
                h.saturating_record_n(Self::value_of(i), n);
            }
        }
        for &value in &self.pending[..self.pending_len] {
            h.saturating_record(Self::value_of(Self::index(value)));
        }
        h
    }

    /// What was counted since the cut `prev` (this array's counts then; empty at
    /// the first cut), as an interval histogram; then `prev` takes the current counts.
    ///
    /// Each 3-digit cell lies inside one cell of the 2-digit interval histogram, so
    /// any value of it lands in the same place: the cell's lowest value is recorded.
    /// The walk skips unchanged blocks of [`BLOCK`] cells, compares [`CHUNK`] cells
    /// at a time inside the others, and from [`COARSE_FROM`] on records a changed
    /// chunk once, as the one 2-digit cell it is.
    pub fn since(&mut self, prev: &mut Vec<u64>) -> DurationHistogram {
        self.count_pending();
        let mut out = interval_histogram();
        // Whole blocks, up to the one holding `top` (LEN is a multiple of BLOCK).
        let end = (self.top / BLOCK + 1) * BLOCK;
        if prev.len() < end {
            prev.resize(end, 0);
        }
        let blocks = self.counts[..end].chunks_exact(BLOCK).zip(prev[..end].chunks_exact_mut(BLOCK));
        for (b, (now, before)) in blocks.enumerate() {
            // Most of the range is unchanged: skipped a block (one memcmp) at a time.
            if now == &*before {
                continue;
            }
            for (c, (now, before)) in now.chunks_exact(CHUNK).zip(before.chunks_exact_mut(CHUNK)).enumerate() {
                if now == &*before {
                    continue;
                }
                let base = b * BLOCK + c * CHUNK;
                // Saturating: report what is there rather than underflow.
                if base >= COARSE_FROM {
                    let n: u64 = now.iter().zip(before.iter()).map(|(&a, &b)| a.saturating_sub(b)).sum();
                    if n > 0 {
                        out.saturating_record_n(Self::value_of(base), n);
                    }
                } else {
                    for (j, (&a, &b)) in now.iter().zip(before.iter()).enumerate() {
                        let n = a.saturating_sub(b);
                        if n > 0 {
                            out.saturating_record_n(Self::value_of(base + j), n);
                        }
                    }
                }
                before.copy_from_slice(now);
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
    fn values_not_yet_counted_are_read_with_the_rest() {
        let mut cells = Cells::new();
        let mut prev = Vec::new();
        cells.record(7_000);
        assert_eq!(cells.len(), 1);
        let mut direct = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3).unwrap();
        direct.record(7_000).unwrap();
        assert_eq!(cells.to_histogram().max(), direct.max());
        // One slow callback shows in the next interval, however few follow it.
        cells.record(2_000_000_000);
        let cut = cells.since(&mut prev).0;
        assert_eq!(cut.len(), 2);
        assert!(cut.max() >= 1_980_000_000, "{}", cut.max());
        // Across a full buffer, nothing is lost or counted twice.
        for v in 0..(3 * PENDING as u64 + 5) {
            cells.record(1_000 + v);
        }
        assert_eq!(cells.len(), 2 + 3 * PENDING as u64 + 5);
        assert_eq!(cells.to_histogram().len(), cells.len());
        assert_eq!(cells.since(&mut prev).0.len(), 3 * PENDING as u64 + 5);
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

    #[test]
    fn since_matches_recording_the_interval_directly() {
        let values = [0u64, 1, 2, 255, 256, 257, 511, 1_000, 1_023, 1_024, 1_031, 1_032, 2_047, 2_048, 2_063, 2_064,
            9_999, 123_456, 5_000_000, 77_777_777, MAX_NS - 1, MAX_NS, MAX_NS + 1, u64::MAX / 3, u64::MAX];
        let mut cells = Cells::new();
        let mut prev = Vec::new();
        cells.record(3_000); // before the cut: not in the interval
        let _ = cells.since(&mut prev);
        let mut direct = interval_histogram();
        for (i, v) in values.iter().enumerate() {
            for _ in 0..=i {
                cells.record(*v);
                direct.saturating_record((*v).clamp(1, MAX_NS));
            }
        }
        let got = cells.since(&mut prev).0;
        assert_eq!(got.len(), direct.len());
        assert_eq!((got.min_nz(), got.max()), (direct.min_nz(), direct.max()));
        for v in values {
            let v = v.clamp(1, MAX_NS);
            assert_eq!(got.count_at(v), direct.count_at(v), "cell of {v}");
        }
        for q in [0.01, 0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(got.value_at_quantile(q), direct.value_at_quantile(q), "q {q}");
        }
        assert_eq!(cells.len(), 1 + (1..=values.len() as u64).sum::<u64>());
    }
}
