//! The timer heap: `call_later`/`call_at` handles ordered by `when`, ties by
//! scheduling order.
//!
//! Cancelling is O(1) (the handle is only marked); cancelled entries are dropped
//! when they reach the top, or all at once when they outnumber the live ones, so
//! millions of `call_later` + `cancel` keep memory flat.

use crate::handles::{Ready, TimerHandle};
use pyo3::prelude::*;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Compaction starts once at least this many entries are cancelled...
const MIN_CANCELLED_FOR_COMPACTION: usize = 100;
/// ...and they are more than this fraction of the heap.
const CANCELLED_FRACTION_FOR_COMPACTION: f64 = 0.5;

struct Entry {
    /// `when`, as an integer in `f64::total_cmp` order ([`order_key`]): the heap
    /// compares these at every level of every push and pop.
    key: u64,
    seq: u64,
    handle: Py<TimerHandle>,
}

/// Maps a float to an integer with the same total order (negative floats below
/// positive ones, each ordered by magnitude the right way).
#[inline]
fn order_key(when: f64) -> u64 {
    let bits = when.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The inverse of [`order_key`].
#[inline]
fn key_when(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

impl Entry {
    #[inline]
    fn when(&self) -> f64 {
        key_when(self.key)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest timer first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

pub struct Timers {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
    /// Shared with every `TimerHandle` so `cancel()` can count without reaching the loop.
    cancelled: Arc<AtomicUsize>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), next_seq: 0, cancelled: Arc::new(AtomicUsize::new(0)) }
    }
}

impl Timers {
    pub fn cancel_counter(&self) -> Arc<AtomicUsize> {
        self.cancelled.clone()
    }

    pub fn push(&mut self, when: f64, handle: Py<TimerHandle>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { key: order_key(when), seq, handle });
    }

    /// Live plus not-yet-dropped cancelled timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn cancelled_len(&self) -> usize {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The earliest live deadline. Cancelled timers at the top are moved to `garbage`
    /// (the caller drops them outside the loop's state borrow).
    pub fn next_when(&mut self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) -> Option<f64> {
        self.maybe_compact(py, garbage);
        while let Some(top) = self.heap.peek() {
            let handle = top.handle.bind(py);
            if !handle.as_super().get().is_cancelled() {
                return Some(top.when());
            }
            let entry = self.heap.pop().expect("peeked");
            self.forget_cancelled(py, entry, garbage);
        }
        None
    }

    /// Moves every timer due at `now` (seconds) to `ready`, in `when` order.
    /// Returns how many were moved, and reports each one's lateness to `on_fire`.
    #[inline]
    pub fn pop_due(
        &mut self,
        py: Python<'_>,
        now: f64,
        ready: &mut std::collections::VecDeque<Ready>,
        garbage: &mut Vec<Py<TimerHandle>>,
        on_fire: impl FnMut(f64),
    ) {
        if !self.heap.is_empty() {
            self.pop_due_from_heap(py, now, ready, garbage, on_fire);
        }
    }

    fn pop_due_from_heap(
        &mut self,
        py: Python<'_>,
        now: f64,
        ready: &mut std::collections::VecDeque<Ready>,
        garbage: &mut Vec<Py<TimerHandle>>,
        mut on_fire: impl FnMut(f64),
    ) {
        while let Some(top) = self.heap.peek() {
            if top.when() > now {
                break;
            }
            let entry = self.heap.pop().expect("peeked");
            let handle = entry.handle.bind(py);
            if handle.as_super().get().is_cancelled() {
                self.forget_cancelled(py, entry, garbage);
                continue;
            }
            handle.get().unschedule();
            let when = entry.when();
            on_fire(now - when);
            let queued_ns = crate::clock::secs_to_ns_ceil(when);
            ready.push_back(Ready::Call { handle: entry.handle.into_bound(py).into_super().unbind(), queued_ns });
        }
    }

    fn forget_cancelled(&mut self, py: Python<'_>, entry: Entry, garbage: &mut Vec<Py<TimerHandle>>) {
        entry.handle.bind(py).get().unschedule();
        let _ = self.cancelled.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        garbage.push(entry.handle);
    }

    /// Drops cancelled timers in bulk once they are the majority.
    #[inline]
    pub fn maybe_compact(&mut self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) {
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        if cancelled < MIN_CANCELLED_FOR_COMPACTION
            || (cancelled as f64) <= self.heap.len() as f64 * CANCELLED_FRACTION_FOR_COMPACTION
        {
            return;
        }
        self.compact(py, garbage);
    }

    fn compact(&mut self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) {
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut live = Vec::with_capacity(entries.len() - cancelled.min(entries.len()));
        for entry in entries {
            if entry.handle.bind(py).as_super().get().is_cancelled() {
                entry.handle.bind(py).get().unschedule();
                garbage.push(entry.handle);
            } else {
                live.push(entry);
            }
        }
        self.heap = BinaryHeap::from(live);
        self.cancelled.store(0, Ordering::Relaxed);
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.heap.iter().try_for_each(|e| visit.call(&e.handle))
    }

    /// Empties the heap (loop close); the handles go to `garbage`.
    pub fn clear(&mut self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) {
        for entry in std::mem::take(&mut self.heap).into_vec() {
            entry.handle.bind(py).get().unschedule();
            garbage.push(entry.handle);
        }
        self.cancelled.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_orders_as_total_cmp_and_round_trips() {
        let values = [f64::NEG_INFINITY, -1e300, -2.5, -1e-300, -0.0, 0.0, 1e-300, 1.0, 1.0000000000000002, 12345.678, 1e300, f64::INFINITY];
        for a in values {
            assert_eq!(key_when(order_key(a)).to_bits(), a.to_bits());
            for b in values {
                assert_eq!(order_key(a).cmp(&order_key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }
}
