//! The loop's clock: `time.monotonic()`'s clock, read without going through Python.
//!
//! asyncio's `loop.time()` is `time.monotonic()` (CLOCK_MONOTONIC on Linux). Users
//! mix the two, so we read the same clock and convert the same way: integer
//! nanoseconds, then seconds as a double.

/// Nanoseconds on CLOCK_MONOTONIC.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch (CLOCK_REALTIME), for timestamps people read.
#[inline]
pub fn unix_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec.max(0) as u64) * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Seconds as `time.monotonic()` reports them.
#[inline]
pub fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The smallest nanosecond count whose seconds value is `>= secs` (for timer deadlines).
#[inline]
pub fn secs_to_ns_ceil(secs: f64) -> u64 {
    if secs.is_nan() || secs <= 0.0 {
        return 0;
    }
    let ns = (secs * 1e9).ceil();
    if ns >= u64::MAX as f64 {
        u64::MAX
    } else {
        ns as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_in_seconds() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!((ns_to_secs(1_500_000_000) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn deadline_rounding_never_fires_early() {
        for secs in [0.001, 1.0000000001, 12345.678901234, 3e6] {
            let ns = secs_to_ns_ceil(secs);
            assert!(ns as f64 >= secs * 1e9, "{secs} -> {ns}");
        }
        assert_eq!(secs_to_ns_ceil(-1.0), 0);
        assert_eq!(secs_to_ns_ceil(f64::NAN), 0);
        assert_eq!(secs_to_ns_ceil(f64::INFINITY), u64::MAX);
    }
}
