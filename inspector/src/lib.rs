//! glassloop's inspector: the Python-free half of the project.
//!
//! Three parts (DESIGN.md, "Getting data out without blocking the loop"):
//! - **Recording** ([`Recorder`]): what the loop thread writes into on its hot
//!   path: plain fields and HDR histograms, no locks, no atomics.
//! - **The hub** ([`Hub`], [`LoopHandle`], [`Heartbeat`]): where each loop publishes
//!   samples and tables, answers deep queries and shows it is alive; nothing the loop
//!   calls per iteration can block it.
//! - **The sidecar** ([`serve`]): one thread running axum on a current-thread tokio
//!   runtime: JSON API (`API.md`), live stream, `/metrics`, dashboard; and the stall
//!   watchdog. It never needs the GIL.
//!
//! # Example (what a loop thread does)
//! ```
//! use inspector::{Hub, LoopInfo, QueryKind, QueryReply, Recorder, Tables};
//!
//! let hub = Hub::new(Default::default()); // a process uses Hub::global()
//! let handle = hub.register_loop(LoopInfo { name: "main".into(), ..Default::default() });
//! let heartbeat = handle.heartbeat();
//! let mut recorder = Recorder::new(true);
//!
//! // Each callback:
//! heartbeat.begin(inspector::clock::monotonic_ns(), /* site id */ 42);
//! recorder.callback(1_500);
//! heartbeat.idle();
//!
//! // Top of each iteration:
//! for q in handle.take_queries() {
//!     match q.kind() {
//!         QueryKind::Tables => q.answer(QueryReply::Tables(Tables::default())),
//!         QueryKind::TaskStack { .. } => q.answer(QueryReply::TaskStack(None)),
//!     }
//! }
//!
//! // Every 250 ms:
//! let mut sample = recorder.take_sample(inspector::clock::unix_ms());
//! sample.timers_pending = 3;
//! handle.publish_sample(sample);
//! ```

#![warn(missing_docs, missing_debug_implementations)]

mod api;
pub mod cells;
pub mod clock;
mod config;
mod dashboard;
mod handle;
mod history;
mod hub;
mod listener;
pub mod model;
// OTLP export (issue 6): `otlp::start(OtlpConfig::from_env()?)`; see otlp/mod.rs.
pub mod otlp;
mod prometheus;
pub mod recorder;
mod server;
mod stream;
pub mod summary;
mod watchdog;

pub use config::{parse_address, token_matches, Config, Error, ServerInfo, DEFAULT_ADDRESS};
pub use handle::{Beat, Heartbeat, LoopHandle, Query, QueryKind, QueryReply, MAX_PENDING_QUERIES, MAX_SITE_NAMES};
pub use history::{Totals, DEFAULT_HISTORY};
pub use hub::{Hub, HubConfig};
pub use model::{
    CallbackSite, DurationHistogram, Histograms, LoopInfo, Sample, SampleSummary, ServerRecord, SlowCallbackEvent,
    StackStatus, StallEvent, Tables, TaskRecord, TaskState, TransportKind, TransportRecord,
};
pub use recorder::{Recorder, RecorderSnapshot};
pub use server::{serve, start};
pub use stream::StreamStats;
pub use summary::HistogramSummary;
pub use watchdog::MAX_STACK_BYTES;
