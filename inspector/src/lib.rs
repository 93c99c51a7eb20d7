//! glassloop's inspector: the Python-free half of the project.
//!
//! The loop thread writes into a [`Recorder`] (plain fields and HDR histograms:
//! no locks, no atomics on the hot path). Everything here is usable without the
//! GIL, so the sidecar can serve it without ever waiting on a loop.

pub mod recorder;

pub use recorder::{Recorder, RecorderSnapshot};
