//! `/metrics`: every loop in Prometheus text exposition format 0.0.4.
//!
//! Names follow DESIGN.md's vocabulary through the usual OTel→Prometheus mapping
//! (`asyncio.eventloop.delay` → `asyncio_eventloop_delay_seconds`). Every series has
//! the labels `loop` (the hub's id) and `thread` (the loop thread's name). Counters
//! and histograms are cumulative since the loop registered (sums of the samples the
//! hub received; see `glassloop_samples_dropped_total` for what it did not); gauges
//! are the newest sample's value. Histograms use the fixed bounds of
//! [`BUCKET_BOUNDS_NS`](crate::summary::BUCKET_BOUNDS_NS), 10 µs … 10 s, in seconds.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::hub::{HubState, LoopEntry};
use crate::model::{SampleSummary, ServerRecord, TransportKind};
use crate::stream::StreamStats;
use crate::summary::{HistogramSummary, BUCKET_BOUNDS_NS};

/// The content type Prometheus expects for text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes families one at a time: HELP and TYPE, then every loop's series.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = match value {
            Value::Int(v) => writeln!(self.out, " {v}"),
            Value::Float(v) => writeln!(self.out, " {}", float(v)),
        };
    }
}

#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// A float as Prometheus parses it (Rust's `Display` never uses exponents and
/// round-trips; only the non-finite values need Go's spelling).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

/// One loop's series labels.
struct LoopLabels {
    id: String,
    thread: String,
}

type Counter = fn(&LoopEntry) -> Value;
type Gauge = fn(&SampleSummary) -> u64;

const COUNTERS: &[(&str, &str, Counter)] = &[
    ("asyncio_eventloop_iterations_total", "Loop iterations.", |e| Value::Int(e.history.totals().iterations)),
    ("asyncio_callbacks_total", "Callbacks run.", |e| Value::Int(e.history.totals().callbacks)),
    ("asyncio_callback_exceptions_total", "Callbacks that raised.", |e| Value::Int(e.history.totals().exceptions)),
    ("asyncio_slow_callbacks_total", "Callbacks that ran longer than loop.slow_callback_duration.", |e| {
        Value::Int(e.history.totals().slow_callbacks)
    }),
    ("asyncio_task_created_total", "Tasks created.", |e| Value::Int(e.history.totals().tasks_created)),
    ("asyncio_task_finished_total", "Tasks finished (done, cancelled or failed).", |e| {
        Value::Int(e.history.totals().tasks_finished)
    }),
    ("asyncio_task_steps_total", "Task steps run.", |e| {
        Value::Int(e.history.since_start_one("task_step_duration").map_or(0, |h| h.count))
    }),
    ("asyncio_connections_total", "Connections opened: accepted by servers or made by create_connection (plain or TLS).", |e| {
        Value::Int(e.history.totals().connections)
    }),
    ("asyncio_executor_jobs_done_total", "Executor jobs completed.", |e| Value::Int(e.history.totals().executor_done)),
    ("asyncio_eventloop_stalls_total", "Callbacks the watchdog saw running past the stall threshold.", |e| {
        Value::Int(e.stalls_total())
    }),
    ("glassloop_samples_total", "Samples the inspector received from the loop.", |e| {
        Value::Int(e.history.totals().samples)
    }),
    ("glassloop_samples_dropped_total", "Samples the loop dropped because the inspector's queue was full.", |e| {
        Value::Int(e.samples_dropped())
    }),
];

const GAUGES: &[(&str, &str, Gauge)] = &[
    ("asyncio_eventloop_ready_queue", "Ready-queue depth at the newest sample's end.", |s| s.ready_queue_last),
    ("asyncio_eventloop_ready_queue_max", "Deepest ready queue in the newest sample's interval.", |s| {
        s.ready_queue_max
    }),
    ("asyncio_eventloop_timers", "Timers pending.", |s| s.timers_pending),
    ("asyncio_eventloop_fds", "File descriptors registered with the poller.", |s| s.fds_registered),
    ("asyncio_task_active", "Tasks not yet done.", |s| s.tasks_live),
];

const HISTOGRAMS: &[(&str, &str, &str)] = &[
    ("asyncio_eventloop_delay_seconds", "eventloop_delay", "Delay from a handle becoming ready to it starting to run."),
    ("asyncio_callback_duration_seconds", "callback_duration", "How long each callback ran."),
    ("asyncio_timer_delay_seconds", "timer_delay", "How late each timer ran after its scheduled time."),
    ("asyncio_task_step_duration_seconds", "task_step_duration", "How long each task step ran."),
    ("asyncio_executor_job_duration_seconds", "executor_job_duration", "How long each executor job ran."),
];

/// Renders every loop in `st`, then the inspector's own series.
pub(crate) fn render(st: &HubState, stream: &StreamStats) -> String {
    let mut x = Exposition { out: String::with_capacity(8 * 1024) };
    let loops: Vec<(LoopLabels, &LoopEntry)> = st
        .loops
        .iter()
        .map(|(id, e)| (LoopLabels { id: id.to_string(), thread: e.info().thread_name.clone() }, e))
        .collect();
    let base = |l: &LoopLabels| [("loop", l.id.clone()), ("thread", l.thread.clone())];

    x.family("glassloop_loop_info", Kind::Gauge, "Always 1; labels describe the loop.");
    for (l, e) in &loops {
        let i = e.info();
        let closed = if e.closed_unix_ms.is_some() { "true" } else { "false" };
        let pid = i.pid.to_string();
        x.series(
            "glassloop_loop_info",
            &[
                ("loop", &l.id),
                ("thread", &l.thread),
                ("name", &i.name),
                ("pid", &pid),
                ("python", &i.python),
                ("version", &i.glassloop_version),
                ("closed", closed),
            ],
            Value::Int(1),
        );
    }

    for (name, help, get) in COUNTERS {
        x.family(name, Kind::Counter, help);
        for (l, e) in &loops {
            let [a, b] = base(l);
            x.series(name, &[(a.0, &a.1), (b.0, &b.1)], get(e));
        }
    }

    let time = "asyncio_eventloop_time_seconds_total";
    x.family(time, Kind::Counter, "Time the loop spent running callbacks and I/O (active) or waiting (idle).");
    for (l, e) in &loops {
        let t = e.history.totals();
        for (state, v) in [("active", t.busy_seconds), ("idle", t.idle_seconds)] {
            x.series(time, &[("loop", &l.id), ("thread", &l.thread), ("state", state)], Value::Float(v));
        }
    }

    let bytes = "asyncio_transport_bytes_total";
    x.family(bytes, Kind::Counter, "Bytes received (in) and sent (out) by the loop's transports.");
    for (l, e) in &loops {
        let t = e.history.totals();
        for (dir, v) in [("in", t.bytes_in), ("out", t.bytes_out)] {
            x.series(bytes, &[("loop", &l.id), ("thread", &l.thread), ("direction", dir)], Value::Int(v));
        }
    }

    let util = "asyncio_eventloop_utilization";
    x.family(util, Kind::Gauge, "Busy share of the newest sample's interval (0..1).");
    for (l, e) in &loops {
        if let Some(s) = e.history.latest() {
            x.series(util, &[("loop", &l.id), ("thread", &l.thread)], Value::Float(s.utilization));
        }
    }

    for (name, help, get) in GAUGES {
        x.family(name, Kind::Gauge, help);
        for (l, e) in &loops {
            if let Some(s) = e.history.latest() {
                x.series(name, &[("loop", &l.id), ("thread", &l.thread)], Value::Int(get(s)));
            }
        }
    }

    let jobs = "asyncio_executor_jobs";
    x.family(jobs, Kind::Gauge, "Executor jobs waiting (queued) or running.");
    for (l, e) in &loops {
        if let Some(s) = e.history.latest() {
            for (state, v) in [("queued", s.executor_queued), ("running", s.executor_running)] {
                x.series(jobs, &[("loop", &l.id), ("thread", &l.thread), ("state", state)], Value::Int(v));
            }
        }
    }

    let active = "asyncio_transport_active";
    x.family(active, Kind::Gauge, "Transports not closed, by type (from the newest tables).");
    for (l, e) in &loops {
        let Some(tables) = &e.tables else { continue };
        let mut by_kind: BTreeMap<&str, u64> = TransportKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        for t in tables.transports.iter().filter(|t| t.state != "closed") {
            *by_kind.entry(t.kind.as_str()).or_default() += 1;
        }
        for (kind, n) in by_kind {
            x.series(active, &[("loop", &l.id), ("thread", &l.thread), ("type", kind)], Value::Int(n));
        }
    }

    // Servers (from the newest tables): one series per server, labelled with its
    // id, kind and listening addresses.
    type ServerValue = fn(&ServerRecord) -> u64;
    const SERVERS: &[(&str, Kind, &str, ServerValue)] = &[
        ("glassloop_server_connections_accepted_total", Kind::Counter, "Connections the server accepted.", |s| s.accepted),
        (
            "glassloop_server_connections_refused_total",
            Kind::Counter,
            "Connections the server could not accept (accept() failed: EMFILE, ENFILE, ECONNABORTED, ...).",
            |s| s.refused,
        ),
        ("glassloop_server_connections_open", Kind::Gauge, "Connections of the server open now.", |s| s.open),
        ("glassloop_server_serving", Kind::Gauge, "1 while the server accepts connections (server.is_serving()).", |s| {
            s.serving as u64
        }),
    ];
    for (name, kind, help, get) in SERVERS {
        x.family(name, *kind, help);
        for (l, e) in &loops {
            let Some(tables) = &e.tables else { continue };
            for srv in &tables.servers {
                let id = srv.id.to_string();
                let addresses = srv.addresses.join(" ");
                let labels = [
                    ("loop", l.id.as_str()),
                    ("thread", l.thread.as_str()),
                    ("server", id.as_str()),
                    ("kind", srv.kind.as_str()),
                    ("address", addresses.as_str()),
                ];
                x.series(name, &labels, Value::Int(get(srv)));
            }
        }
    }

    for (name, hist, help) in HISTOGRAMS {
        x.family(name, Kind::Histogram, help);
        for (l, e) in &loops {
            let summary = e.history.since_start_one(hist).unwrap_or_default();
            histogram(&mut x, name, l, &summary);
        }
    }

    x.family("glassloop_stream_clients", Kind::Gauge, "Live-stream (SSE) clients connected.");
    x.series("glassloop_stream_clients", &[], Value::Int(stream.clients as u64));
    x.family("glassloop_stream_clients_cut_total", Kind::Counter, "Live-stream clients cut for not keeping up.");
    x.series("glassloop_stream_clients_cut_total", &[], Value::Int(stream.clients_cut));
    x.out
}

fn histogram(x: &mut Exposition, name: &str, l: &LoopLabels, h: &HistogramSummary) {
    let bucket = format!("{name}_bucket");
    let cumulative = h.cumulative_buckets();
    for (i, n) in cumulative.iter().enumerate() {
        let le = BUCKET_BOUNDS_NS.get(i).map_or_else(|| "+Inf".to_string(), |&ns| float(ns as f64 / 1e9));
        x.series(&bucket, &[("loop", &l.id), ("thread", &l.thread), ("le", &le)], Value::Int(*n));
    }
    let labels = [("loop", l.id.as_str()), ("thread", l.thread.as_str())];
    x.series(&format!("{name}_sum"), &labels, Value::Float(h.sum_ns as f64 / 1e9));
    x.series(&format!("{name}_count"), &labels, Value::Int(h.count));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_labels_are_spelled_for_prometheus() {
        assert_eq!(float(0.00001), "0.00001");
        assert_eq!(float(10.0), "10");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
