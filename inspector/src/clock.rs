//! The two clocks the inspector reads.
//!
//! Heartbeats carry CLOCK_MONOTONIC nanoseconds because that is what loop-core's
//! `clock::now_ns()` reads (asyncio's `loop.time()` clock): the watchdog must compare
//! the loop's timestamps against the same clock, and `std::time::Instant` does not
//! expose its raw value. Wall-clock milliseconds label samples and events for people.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds on CLOCK_MONOTONIC: the clock a [`Heartbeat`](crate::Heartbeat)'s
/// callback start time must be read from.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on
    // the platforms we build for, so the call cannot fail or write out of bounds.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch (0 if the system clock is before 1970).
#[inline]
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        // Any date after 2020 proves the unit is milliseconds, not seconds.
        assert!(unix_ms() > 1_577_836_800_000);
    }
}
