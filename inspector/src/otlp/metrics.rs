//! The hub's numbers as one OTLP `ExportMetricsServiceRequest`.
//!
//! The same numbers as `/metrics` (`prometheus.rs`), read from the same hub state at
//! export time: counters and histograms cumulative since the loop registered
//! (cumulative temporality, start time = the loop's creation), gauges the newest
//! sample's. Names are the OpenTelemetry form of the `/metrics` names: the usual
//! OTLP→Prometheus translation (`.`→`_`, unit suffix, `_total` for counters) of every
//! name here gives a `/metrics` family (checked by a test below). Every point has the
//! attributes `loop` (hub id) and `thread` (thread name), as the labels in `/metrics`.
//!
//! Histograms carry the fixed bounds of [`BUCKET_BOUNDS_NS`] in seconds (10 µs … 10 s),
//! the same as the `le` labels of `/metrics`, plus since-start min and max.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;

use crate::hub::{HubState, LoopEntry};
use crate::model::{SampleSummary, TransportKind};
use crate::summary::{HistogramSummary, BUCKET_BOUNDS_NS};

/// The instrumentation scope of every metric and span glassloop exports.
pub(crate) const SCOPE: &str = "glassloop";

/// What kind of OTLP metric a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Monotonic cumulative sum (Prometheus counter, `_total`).
    Counter,
    /// Non-monotonic cumulative sum (Prometheus gauge).
    UpDownCounter,
    /// Gauge.
    Gauge,
    /// Explicit-bucket histogram.
    Histogram,
}

/// Every metric exported: OTel name, kind, unit, description.
///
/// Units: `s` and `By` give `_seconds` / `_bytes` in Prometheus; `{…}` annotations
/// give nothing. `asyncio.eventloop.utilization` has no unit (semconv would say `1`,
/// which Prometheus translators turn into a `_ratio` suffix that `/metrics` does not
/// have).
pub(crate) const METRICS: &[(&str, Kind, &str, &str)] = &[
    ("asyncio.eventloop.delay", Kind::Histogram, "s", "Delay from a handle becoming ready to it starting to run."),
    ("asyncio.callback.duration", Kind::Histogram, "s", "How long each callback ran."),
    ("asyncio.timer.delay", Kind::Histogram, "s", "How late each timer ran after its scheduled time."),
    ("asyncio.task.step.duration", Kind::Histogram, "s", "How long each task step ran."),
    ("asyncio.executor.job.duration", Kind::Histogram, "s", "How long each executor job ran."),
    ("asyncio.eventloop.utilization", Kind::Gauge, "", "Busy share of the newest sample's interval (0..1)."),
    (
        "asyncio.eventloop.time",
        Kind::Counter,
        "s",
        "Time the loop spent running callbacks and I/O (active) or waiting (idle).",
    ),
    ("asyncio.eventloop.iterations", Kind::Counter, "{iteration}", "Loop iterations."),
    ("asyncio.callbacks", Kind::Counter, "{callback}", "Callbacks run."),
    ("asyncio.callback.exceptions", Kind::Counter, "{callback}", "Callbacks that raised."),
    (
        "asyncio.slow_callbacks",
        Kind::Counter,
        "{callback}",
        "Callbacks that ran longer than loop.slow_callback_duration.",
    ),
    (
        "asyncio.eventloop.stalls",
        Kind::Counter,
        "{stall}",
        "Callbacks the watchdog saw running past the stall threshold.",
    ),
    ("asyncio.eventloop.ready_queue", Kind::UpDownCounter, "{handle}", "Ready-queue depth at the newest sample's end."),
    (
        "asyncio.eventloop.ready_queue_max",
        Kind::Gauge,
        "{handle}",
        "Deepest ready queue in the newest sample's interval.",
    ),
    ("asyncio.eventloop.timers", Kind::UpDownCounter, "{timer}", "Timers pending."),
    ("asyncio.eventloop.fds", Kind::UpDownCounter, "{fd}", "File descriptors registered with the poller."),
    ("asyncio.task.active", Kind::UpDownCounter, "{task}", "Tasks not yet done."),
    ("asyncio.task.created", Kind::Counter, "{task}", "Tasks created."),
    ("asyncio.task.finished", Kind::Counter, "{task}", "Tasks finished (done, cancelled or failed)."),
    ("asyncio.task.steps", Kind::Counter, "{step}", "Task steps run."),
    (
        "asyncio.transport.active",
        Kind::UpDownCounter,
        "{transport}",
        "Transports not closed, by type (from the newest tables).",
    ),
    ("asyncio.transport.bytes", Kind::Counter, "By", "Bytes received (in) and sent (out) by the loop's transports."),
    (
        "asyncio.connections",
        Kind::Counter,
        "{connection}",
        "Connections opened: accepted by servers or made by create_connection (plain or TLS).",
    ),
    ("asyncio.executor.jobs", Kind::UpDownCounter, "{job}", "Executor jobs waiting (queued) or running."),
    ("asyncio.executor.jobs_done", Kind::Counter, "{job}", "Executor jobs completed."),
    ("glassloop.samples", Kind::Counter, "{sample}", "Samples the inspector received from the loop."),
    (
        "glassloop.samples.dropped",
        Kind::Counter,
        "{sample}",
        "Samples the loop dropped because the inspector's queue was full.",
    ),
    ("glassloop.loop.info", Kind::Gauge, "", "Always 1; attributes describe the loop."),
    ("glassloop.server.connections.accepted", Kind::Counter, "{connection}", "Connections the server accepted."),
    (
        "glassloop.server.connections.refused",
        Kind::Counter,
        "{connection}",
        "Connections the server could not accept (accept() failed: EMFILE, ENFILE, ECONNABORTED, ...).",
    ),
    ("glassloop.server.connections.open", Kind::UpDownCounter, "{connection}", "Connections of the server open now."),
    ("glassloop.server.serving", Kind::Gauge, "", "1 while the server accepts connections (server.is_serving())."),
];

/// The histogram in the hub's `Histograms` each histogram metric reads.
const HISTOGRAM_SOURCES: &[(&str, &str)] = &[
    ("asyncio.eventloop.delay", "eventloop_delay"),
    ("asyncio.callback.duration", "callback_duration"),
    ("asyncio.timer.delay", "timer_delay"),
    ("asyncio.task.step.duration", "task_step_duration"),
    ("asyncio.executor.job.duration", "executor_job_duration"),
];

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        key_strindex: 0,
    }
}

/// One loop's attributes and times.
struct LoopPoint {
    attrs: Vec<KeyValue>,
    start_ns: u64,
}

/// A metric under construction.
struct Builder {
    now_ns: u64,
    points: usize,
    metrics: Vec<Metric>,
}

enum Num {
    Int(u64),
    Double(f64),
}

impl Builder {
    fn number(&mut self, name: &str, rows: Vec<(Vec<KeyValue>, u64, Num)>) {
        let &(_, kind, unit, description) = METRICS.iter().find(|m| m.0 == name).expect("metric listed in METRICS");
        if rows.is_empty() {
            return;
        }
        self.points += rows.len();
        let data_points: Vec<NumberDataPoint> = rows
            .into_iter()
            .map(|(attributes, start_ns, v)| NumberDataPoint {
                attributes,
                start_time_unix_nano: if kind == Kind::Gauge { 0 } else { start_ns },
                time_unix_nano: self.now_ns,
                exemplars: Vec::new(),
                flags: 0,
                value: Some(match v {
                    Num::Int(i) => number_data_point::Value::AsInt(i64::try_from(i).unwrap_or(i64::MAX)),
                    Num::Double(d) => number_data_point::Value::AsDouble(d),
                }),
            })
            .collect();
        let data = match kind {
            Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
            Kind::Counter | Kind::UpDownCounter => metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: kind == Kind::Counter,
            }),
            Kind::Histogram => unreachable!("histograms go through histogram()"),
        };
        self.metrics.push(Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: unit.to_string(),
            metadata: Vec::new(),
            data: Some(data),
        });
    }

    fn histogram(&mut self, name: &str, rows: Vec<(Vec<KeyValue>, u64, HistogramSummary)>) {
        let &(_, _, unit, description) = METRICS.iter().find(|m| m.0 == name).expect("metric listed in METRICS");
        if rows.is_empty() {
            return;
        }
        self.points += rows.len();
        let bounds: Vec<f64> = BUCKET_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).collect();
        let data_points = rows
            .into_iter()
            .map(|(attributes, start_ns, h)| HistogramDataPoint {
                attributes,
                start_time_unix_nano: start_ns,
                time_unix_nano: self.now_ns,
                count: h.count,
                sum: Some(h.sum_ns as f64 / 1e9),
                bucket_counts: h.buckets.to_vec(),
                explicit_bounds: bounds.clone(),
                exemplars: Vec::new(),
                flags: 0,
                min: (h.count > 0).then(|| h.min_ns as f64 / 1e9),
                max: (h.count > 0).then(|| h.max_ns as f64 / 1e9),
            })
            .collect();
        self.metrics.push(Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: unit.to_string(),
            metadata: Vec::new(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
        });
    }
}

/// Builds the request for every loop in `st`; returns it and its number of data points.
pub(crate) fn build(st: &HubState, resource: &ProtoResource, now_ns: u64) -> (ExportMetricsServiceRequest, usize) {
    let loops: Vec<(LoopPoint, &LoopEntry)> = st
        .loops
        .iter()
        .map(|(id, e)| {
            let attrs = vec![kv("loop", id.to_string()), kv("thread", e.info().thread_name.clone())];
            (LoopPoint { attrs, start_ns: e.info().created_unix_ms.saturating_mul(1_000_000) }, e)
        })
        .collect();
    let mut b = Builder { now_ns, points: 0, metrics: Vec::new() };
    let with = |l: &LoopPoint, extra: &[(&str, &str)]| {
        let mut a = l.attrs.clone();
        a.extend(extra.iter().map(|(k, v)| kv(k, *v)));
        a
    };

    for (name, hist) in HISTOGRAM_SOURCES {
        let rows = loops
            .iter()
            .map(|(l, e)| (l.attrs.clone(), l.start_ns, e.history.since_start_one(hist).unwrap_or_default()))
            .collect();
        b.histogram(name, rows);
    }

    let latest = |f: fn(&SampleSummary) -> u64| -> Vec<(Vec<KeyValue>, u64, Num)> {
        loops
            .iter()
            .filter_map(|(l, e)| e.history.latest().map(|s| (l.attrs.clone(), l.start_ns, Num::Int(f(s)))))
            .collect()
    };
    let total = |f: &dyn Fn(&LoopEntry) -> u64| -> Vec<(Vec<KeyValue>, u64, Num)> {
        loops.iter().map(|(l, e)| (l.attrs.clone(), l.start_ns, Num::Int(f(e)))).collect()
    };

    b.number(
        "asyncio.eventloop.utilization",
        loops
            .iter()
            .filter_map(|(l, e)| e.history.latest().map(|s| (l.attrs.clone(), l.start_ns, Num::Double(s.utilization))))
            .collect(),
    );
    b.number(
        "asyncio.eventloop.time",
        loops
            .iter()
            .flat_map(|(l, e)| {
                let t = e.history.totals();
                [
                    (with(l, &[("state", "active")]), l.start_ns, Num::Double(t.busy_seconds)),
                    (with(l, &[("state", "idle")]), l.start_ns, Num::Double(t.idle_seconds)),
                ]
            })
            .collect(),
    );
    b.number("asyncio.eventloop.iterations", total(&|e| e.history.totals().iterations));
    b.number("asyncio.callbacks", total(&|e| e.history.totals().callbacks));
    b.number("asyncio.callback.exceptions", total(&|e| e.history.totals().exceptions));
    b.number("asyncio.slow_callbacks", total(&|e| e.history.totals().slow_callbacks));
    b.number("asyncio.eventloop.stalls", total(&|e| e.stalls_total()));
    b.number("asyncio.eventloop.ready_queue", latest(|s| s.ready_queue_last));
    b.number("asyncio.eventloop.ready_queue_max", latest(|s| s.ready_queue_max));
    b.number("asyncio.eventloop.timers", latest(|s| s.timers_pending));
    b.number("asyncio.eventloop.fds", latest(|s| s.fds_registered));
    b.number("asyncio.task.active", latest(|s| s.tasks_live));
    b.number("asyncio.task.created", total(&|e| e.history.totals().tasks_created));
    b.number("asyncio.task.finished", total(&|e| e.history.totals().tasks_finished));
    b.number("asyncio.task.steps", total(&|e| e.history.since_start_one("task_step_duration").map_or(0, |h| h.count)));
    b.number(
        "asyncio.transport.active",
        loops
            .iter()
            .filter_map(|(l, e)| e.tables.as_ref().map(|t| (l, t)))
            .flat_map(|(l, tables)| {
                let mut by_kind: BTreeMap<&str, u64> = TransportKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
                for t in tables.transports.iter().filter(|t| t.state != "closed") {
                    *by_kind.entry(t.kind.as_str()).or_default() += 1;
                }
                by_kind.into_iter().map(|(k, n)| (with(l, &[("type", k)]), l.start_ns, Num::Int(n))).collect::<Vec<_>>()
            })
            .collect(),
    );
    b.number(
        "asyncio.transport.bytes",
        loops
            .iter()
            .flat_map(|(l, e)| {
                let t = e.history.totals();
                [
                    (with(l, &[("direction", "in")]), l.start_ns, Num::Int(t.bytes_in)),
                    (with(l, &[("direction", "out")]), l.start_ns, Num::Int(t.bytes_out)),
                ]
            })
            .collect(),
    );
    b.number(
        "asyncio.executor.jobs",
        loops
            .iter()
            .filter_map(|(l, e)| e.history.latest().map(|s| (l, s)))
            .flat_map(|(l, s)| {
                [
                    (with(l, &[("state", "queued")]), l.start_ns, Num::Int(s.executor_queued)),
                    (with(l, &[("state", "running")]), l.start_ns, Num::Int(s.executor_running)),
                ]
            })
            .collect(),
    );
    b.number("asyncio.connections", total(&|e| e.history.totals().connections));
    b.number("asyncio.executor.jobs_done", total(&|e| e.history.totals().executor_done));
    b.number("glassloop.samples", total(&|e| e.history.totals().samples));
    b.number("glassloop.samples.dropped", total(&|e| e.samples_dropped()));
    b.number(
        "glassloop.loop.info",
        loops
            .iter()
            .map(|(l, e)| {
                let i = e.info();
                let closed = if e.closed_unix_ms.is_some() { "true" } else { "false" };
                let pid = i.pid.to_string();
                let a = with(
                    l,
                    &[
                        ("name", &i.name),
                        ("pid", &pid),
                        ("python", &i.python),
                        ("version", &i.glassloop_version),
                        ("closed", closed),
                    ],
                );
                (a, l.start_ns, Num::Int(1))
            })
            .collect(),
    );

    // Servers, from the newest tables: one point per server.
    let servers = |get: fn(&crate::model::ServerRecord) -> u64| -> Vec<(Vec<KeyValue>, u64, Num)> {
        loops
            .iter()
            .filter_map(|(l, e)| e.tables.as_ref().map(|t| (l, t)))
            .flat_map(|(l, tables)| {
                tables.servers.iter().map(move |srv| {
                    let id = srv.id.to_string();
                    let addresses = srv.addresses.join(" ");
                    let a = with(l, &[("server", &id), ("kind", srv.kind.as_str()), ("address", &addresses)]);
                    let start = if srv.created_unix_ms > 0 { srv.created_unix_ms * 1_000_000 } else { l.start_ns };
                    (a, start, Num::Int(get(srv)))
                })
            })
            .collect()
    };
    b.number("glassloop.server.connections.accepted", servers(|s| s.accepted));
    b.number("glassloop.server.connections.refused", servers(|s| s.refused));
    b.number("glassloop.server.connections.open", servers(|s| s.open));
    b.number("glassloop.server.serving", servers(|s| s.serving as u64));

    let points = b.points;
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                metrics: b.metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    (request, points)
}

/// The Prometheus name an OTLP→Prometheus translator (the Collector's `prometheus`
/// exporter, Prometheus's OTLP receiver) gives `name`: dots to underscores, the
/// unit's word appended unless already there, `_total` for monotonic sums.
#[cfg(test)]
pub(crate) fn prometheus_name(name: &str, kind: Kind, unit: &str) -> String {
    let mut tokens: Vec<String> = name.split(['.', '_']).filter(|t| !t.is_empty()).map(str::to_string).collect();
    let unit_word = match unit {
        "s" => Some("seconds"),
        "By" => Some("bytes"),
        "ms" => Some("milliseconds"),
        _ => None, // `{annotation}` and no unit add nothing
    };
    if let Some(w) = unit_word {
        if !tokens.iter().any(|t| t == w) {
            tokens.push(w.to_string());
        }
    }
    if kind == Kind::Counter && tokens.last().map(String::as_str) != Some("total") {
        tokens.push("total".to_string());
    }
    tokens.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};
    use crate::model::{LoopInfo, Sample, Tables, TransportRecord};
    use crate::stream::StreamStats;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;

    fn hub_with_one_loop() -> (std::sync::Arc<Hub>, crate::LoopHandle) {
        let hub = Hub::new(HubConfig::default());
        let h =
            hub.register_loop(LoopInfo { thread_name: "MainThread".into(), name: "main".into(), ..Default::default() });
        for seq in 1..=3 {
            let mut s = Sample::new();
            s.seq = seq;
            s.callbacks = 10;
            s.iterations = 4;
            s.busy_seconds = 0.1;
            s.idle_seconds = 0.15;
            s.utilization = 0.4;
            s.tasks_live = 7;
            s.bytes_in = 100;
            s.connections = 2;
            s.executor_running = 2;
            for v in [20_000u64, 30_000, 2_000_000, 20_000_000_000] {
                s.histograms.callback_duration.saturating_record(v);
            }
            s.histograms.task_step_duration.saturating_record(5_000);
            h.publish_sample(s);
        }
        h.publish_tables(Tables {
            transports: vec![
                TransportRecord { kind: TransportKind::Tcp, state: "open".into(), ..Default::default() },
                TransportRecord { kind: TransportKind::Udp, state: "closed".into(), ..Default::default() },
            ],
            servers: vec![crate::model::ServerRecord {
                id: 4,
                kind: TransportKind::Tcp,
                addresses: vec!["127.0.0.1:80".into()],
                accepted: 9,
                open: 2,
                refused: 1,
                serving: true,
                created_unix_ms: 1_000,
                ..Default::default()
            }],
            ..Default::default()
        });
        hub.pump();
        (hub, h)
    }

    fn find<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attrs.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn histograms_match_the_json_api_and_metrics_bounds() {
        let (hub, h) = hub_with_one_loop();
        let (req, points) = hub.read(|st| build(st, &ProtoResource::default(), 42));
        assert!(points > 20);
        let since = hub.read(|st| st.loops[&h.id()].history.since_start_one("callback_duration").unwrap());
        let Some(Data::Histogram(hist)) = &find(&req, "asyncio.callback.duration").data else { panic!() };
        assert_eq!(hist.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &hist.data_points[0];
        assert_eq!(p.count, 12);
        assert_eq!(p.count, since.count);
        assert_eq!(p.bucket_counts, since.buckets.to_vec());
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
        assert_eq!(p.explicit_bounds[0], 1e-5);
        assert_eq!(*p.explicit_bounds.last().unwrap(), 10.0);
        assert!((p.sum.unwrap() - since.sum_ns as f64 / 1e9).abs() < 1e-9);
        assert_eq!(p.bucket_counts[p.bucket_counts.len() - 1], 3, "20 s overflows 10 s");
        assert_eq!(p.time_unix_nano, 42);
        assert_eq!(attr(&p.attributes, "loop"), Some(h.id().to_string().as_str()));
        assert_eq!(attr(&p.attributes, "thread"), Some("MainThread"));
    }

    #[test]
    fn counters_and_gauges_carry_totals_and_latest() {
        let (hub, _h) = hub_with_one_loop();
        let (req, _) = hub.read(|st| build(st, &ProtoResource::default(), 1));
        let Some(Data::Sum(cb)) = &find(&req, "asyncio.callbacks").data else { panic!() };
        assert!(cb.is_monotonic);
        assert_eq!(cb.data_points[0].value, Some(number_data_point::Value::AsInt(30)));
        let Some(Data::Sum(active)) = &find(&req, "asyncio.task.active").data else { panic!() };
        assert!(!active.is_monotonic);
        assert_eq!(active.data_points[0].value, Some(number_data_point::Value::AsInt(7)));
        let Some(Data::Gauge(u)) = &find(&req, "asyncio.eventloop.utilization").data else { panic!() };
        assert_eq!(u.data_points[0].value, Some(number_data_point::Value::AsDouble(0.4)));
        let Some(Data::Sum(t)) = &find(&req, "asyncio.transport.active").data else { panic!() };
        let tcp = t.data_points.iter().find(|p| attr(&p.attributes, "type") == Some("tcp")).unwrap();
        assert_eq!(tcp.value, Some(number_data_point::Value::AsInt(1)));
        let Some(Data::Sum(conns)) = &find(&req, "asyncio.connections").data else { panic!() };
        assert!(conns.is_monotonic);
        assert_eq!(conns.data_points[0].value, Some(number_data_point::Value::AsInt(6)));
        let Some(Data::Sum(steps)) = &find(&req, "asyncio.task.steps").data else { panic!() };
        assert_eq!(steps.data_points[0].value, Some(number_data_point::Value::AsInt(3)));
        let Some(Data::Sum(accepted)) = &find(&req, "glassloop.server.connections.accepted").data else { panic!() };
        assert!(accepted.is_monotonic);
        let p = &accepted.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(9)));
        assert_eq!((attr(&p.attributes, "server"), attr(&p.attributes, "address")), (Some("4"), Some("127.0.0.1:80")));
        assert_eq!(p.start_time_unix_nano, 1_000_000_000, "counted since the server was made");
        let Some(Data::Sum(open)) = &find(&req, "glassloop.server.connections.open").data else { panic!() };
        assert!(!open.is_monotonic);
        assert_eq!(open.data_points[0].value, Some(number_data_point::Value::AsInt(2)));
    }

    /// One vocabulary: every exported name translates to a `/metrics` family, and
    /// every per-loop `/metrics` family has an OTLP metric.
    #[test]
    fn names_translate_to_the_metrics_endpoint() {
        let (hub, _h) = hub_with_one_loop();
        let text = hub.read(|st| crate::prometheus::render(st, &StreamStats::default()));
        let families: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let (req, _) = hub.read(|st| build(st, &ProtoResource::default(), 1));
        let exported: Vec<&str> =
            req.resource_metrics[0].scope_metrics[0].metrics.iter().map(|m| m.name.as_str()).collect();
        let mut translated = Vec::new();
        for (name, kind, unit, _) in METRICS {
            assert!(exported.contains(name), "{name} not exported");
            let p = prometheus_name(name, *kind, unit);
            assert!(families.contains(&p.as_str()), "{name} -> {p} is not in /metrics");
            translated.push(p);
        }
        for f in families.iter().filter(|f| !f.starts_with("glassloop_stream") && !f.starts_with("glassloop_otlp")) {
            assert!(translated.iter().any(|t| t == f), "/metrics family {f} has no OTLP metric");
        }
        assert_eq!(prometheus_name("asyncio.eventloop.delay", Kind::Histogram, "s"), "asyncio_eventloop_delay_seconds");
        assert_eq!(
            prometheus_name("asyncio.eventloop.time", Kind::Counter, "s"),
            "asyncio_eventloop_time_seconds_total"
        );
        assert_eq!(prometheus_name("asyncio.transport.bytes", Kind::Counter, "By"), "asyncio_transport_bytes_total");
    }
}
