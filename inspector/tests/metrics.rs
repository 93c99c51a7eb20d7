//! `/metrics` is valid Prometheus text format 0.0.4, with DESIGN.md's names, and
//! its histograms count exactly what the loops recorded.
//!
//! The parser below follows the exposition grammar: `# HELP`/`# TYPE` lines, then
//! `name{label="value",...} value [timestamp]`, every family's samples contiguous
//! after its TYPE, label values with `\\`, `\"`, `\n` escapes.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use inspector::{ServerRecord, Tables, TransportKind, TransportRecord};

#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    series: Vec<Series>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or_else(|_| panic!("bad value {s:?}")),
    }
}

/// The family a sample belongs to (`x_bucket` → `x` for histograms).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

fn parse(text: &str) -> Exposition {
    let mut x = Exposition::default();
    let mut current: Option<String> = None;
    let mut closed_families: Vec<String> = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().expect("metric name").to_string();
            assert!(valid_name(&name), "{line}");
            match kind {
                "HELP" => assert!(parts.next().is_some_and(|h| !h.is_empty()), "{line}"),
                "TYPE" => {
                    let t = parts.next().unwrap();
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&t), "{line}");
                    assert!(x.types.insert(name.clone(), t.to_string()).is_none(), "TYPE twice: {line}");
                    if let Some(prev) = current.replace(name) {
                        closed_families.push(prev);
                    }
                }
                _ => {}
            }
            continue;
        }
        assert!(!line.is_empty(), "no blank lines");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => panic!("no value: {line}"),
        };
        assert!(valid_name(name), "{line}");
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars.next().expect("unterminated labels");
                if c == '}' {
                    end = start;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let key_start = start;
                let mut key_end = start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = i;
                        break;
                    }
                }
                let key = &body[key_start..key_end];
                assert!(valid_name(key) && !key.contains(':'), "label name {key:?} in {line}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().expect("unterminated label value");
                    match c {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            other => panic!("bad escape \\{other} in {line}"),
                        },
                        '\n' => panic!("raw newline"),
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key.to_string(), value).is_none(), "duplicate label in {line}");
            }
            &body[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().expect("value"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().expect("timestamp");
        }
        assert!(fields.next().is_none(), "trailing fields: {line}");
        let fam = family(name, &x.types).to_string();
        assert!(x.types.contains_key(&fam), "sample before its TYPE: {line}");
        assert_eq!(current.as_deref(), Some(fam.as_str()), "family not contiguous: {line}");
        assert!(!closed_families.contains(&fam));
        x.series.push(Series { name: name.to_string(), labels, value });
    }
    x
}

fn find<'a>(x: &'a Exposition, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Series> {
    x.series
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

fn one(x: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(x, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

#[test]
fn metrics_parse_and_histograms_count_every_value() {
    let (hub, addr) = default_server();
    let a = hub.register_loop(info("web \"front\"\\door"));
    let b = hub.register_loop(info("worker"));
    // 3 samples × 4 values on loop a: 12 callbacks, of which 3 over 1 s.
    publish(&hub, &a, 1, 3, &[5_000, 30_000, 2_000_000, 1_500_000_000]);
    publish(&hub, &b, 1, 2, &[100]);
    a.publish_tables(Tables {
        transports: vec![
            TransportRecord { kind: TransportKind::Tcp, state: "open".into(), ..Default::default() },
            TransportRecord { kind: TransportKind::Tcp, state: "open".into(), ..Default::default() },
            TransportRecord { kind: TransportKind::Udp, state: "closed".into(), ..Default::default() },
            TransportRecord { kind: TransportKind::PipeRead, state: "open".into(), ..Default::default() },
        ],
        servers: vec![
            ServerRecord {
                id: 7,
                kind: TransportKind::Tcp,
                addresses: vec!["127.0.0.1:8080".into(), "[::1]:8080".into()],
                accepted: 12,
                open: 3,
                refused: 2,
                serving: true,
                state: "serving".into(),
                ..Default::default()
            },
            ServerRecord { id: 8, kind: TransportKind::Unix, addresses: vec!["/run/a.sock".into()], ..Default::default() },
        ],
        ..Default::default()
    });
    hub.pump();

    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let x = parse(&text);

    let la = a.id().to_string();
    let lb = b.id().to_string();
    let thread_a = "web \"front\"\\door-thread";
    for name in [
        "asyncio_eventloop_delay_seconds",
        "asyncio_callback_duration_seconds",
        "asyncio_timer_delay_seconds",
        "asyncio_task_step_duration_seconds",
        "asyncio_executor_job_duration_seconds",
    ] {
        assert_eq!(x.types[name], "histogram", "{name}");
    }
    for (name, kind) in [
        ("asyncio_eventloop_utilization", "gauge"),
        ("asyncio_eventloop_time_seconds_total", "counter"),
        ("asyncio_eventloop_iterations_total", "counter"),
        ("asyncio_callbacks_total", "counter"),
        ("asyncio_task_active", "gauge"),
        ("asyncio_task_steps_total", "counter"),
        ("asyncio_transport_active", "gauge"),
        ("asyncio_eventloop_stalls_total", "counter"),
        ("asyncio_slow_callbacks_total", "counter"),
        ("asyncio_eventloop_ready_queue", "gauge"),
        ("asyncio_eventloop_timers", "gauge"),
        ("glassloop_samples_dropped_total", "counter"),
    ] {
        assert_eq!(x.types.get(name).map(String::as_str), Some(kind), "{name}");
    }

    // Histogram: cumulative buckets, +Inf == _count == values recorded.
    let name = "asyncio_callback_duration_seconds";
    let mut buckets: Vec<(f64, f64)> = find(&x, &format!("{name}_bucket"), &[("loop", &la)])
        .iter()
        .map(|s| (parse_value(&s.labels["le"]), s.value))
        .collect();
    buckets.sort_by(|p, q| p.0.partial_cmp(&q.0).unwrap());
    assert_eq!(buckets.first().unwrap().0, 0.00001, "10 µs is the first bound");
    assert_eq!(buckets[buckets.len() - 2].0, 10.0, "10 s is the last finite bound");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {buckets:?}");
    let count = one(&x, &format!("{name}_count"), &[("loop", &la)]);
    assert_eq!(count, 12.0);
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 12.0));
    let le = |bound: f64| buckets.iter().find(|b| b.0 == bound).unwrap().1;
    assert_eq!(le(0.00001), 3.0, "the 5 µs values");
    assert_eq!(le(0.00005), 6.0, "and the 30 µs ones");
    assert_eq!(le(1.0), 9.0, "all but the 1.5 s ones");
    let sum = one(&x, &format!("{name}_sum"), &[("loop", &la)]);
    let exact = 3.0 * (5e-6 + 30e-6 + 2e-3 + 1.5);
    assert!((sum - exact).abs() / exact < 0.01, "{sum} vs {exact}");
    assert_eq!(one(&x, &format!("{name}_count"), &[("loop", &lb)]), 2.0);
    assert_eq!(one(&x, "asyncio_eventloop_delay_seconds_count", &[("loop", &la)]), 12.0);

    // Labels, escaped and parsed back.
    assert_eq!(one(&x, "asyncio_callbacks_total", &[("loop", &la), ("thread", thread_a)]), 12.0);
    assert_eq!(one(&x, "asyncio_eventloop_iterations_total", &[("loop", &lb)]), 2.0);
    let active = one(&x, "asyncio_eventloop_time_seconds_total", &[("loop", &la), ("state", "active")]);
    assert!((active - 0.15).abs() < 1e-9, "{active}");
    assert_eq!(one(&x, "asyncio_eventloop_utilization", &[("loop", &la)]), 0.2);
    assert_eq!(one(&x, "asyncio_eventloop_ready_queue", &[("loop", &la)]), 3.0);
    assert_eq!(one(&x, "asyncio_eventloop_timers", &[("loop", &la)]), 4.0);
    assert_eq!(one(&x, "asyncio_task_active", &[("loop", &la)]), 2.0);
    assert_eq!(one(&x, "asyncio_transport_active", &[("loop", &la), ("type", "tcp")]), 2.0);
    assert_eq!(one(&x, "asyncio_transport_active", &[("loop", &la), ("type", "udp")]), 0.0);
    assert!(find(&x, "asyncio_transport_active", &[("loop", &lb)]).is_empty(), "no tables, no guess");
    assert_eq!(one(&x, "asyncio_transport_active", &[("loop", &la), ("type", "pipe_read")]), 1.0);
    assert_eq!(one(&x, "asyncio_transport_active", &[("loop", &la), ("type", "pipe_write")]), 0.0);
    // Servers: one series each, counters and gauges from the newest tables.
    for (name, kind) in [
        ("glassloop_server_connections_accepted_total", "counter"),
        ("glassloop_server_connections_refused_total", "counter"),
        ("glassloop_server_connections_open", "gauge"),
        ("glassloop_server_serving", "gauge"),
    ] {
        assert_eq!(x.types.get(name).map(String::as_str), Some(kind), "{name}");
        assert!(find(&x, name, &[("loop", &lb)]).is_empty(), "{name}: loop b sent no servers");
    }
    let srv = [("loop", la.as_str()), ("server", "7"), ("kind", "tcp"), ("address", "127.0.0.1:8080 [::1]:8080")];
    assert_eq!(one(&x, "glassloop_server_connections_accepted_total", &srv), 12.0);
    assert_eq!(one(&x, "glassloop_server_connections_refused_total", &srv), 2.0);
    assert_eq!(one(&x, "glassloop_server_connections_open", &srv), 3.0);
    assert_eq!(one(&x, "glassloop_server_serving", &srv), 1.0);
    let unix = [("loop", la.as_str()), ("server", "8"), ("kind", "unix"), ("address", "/run/a.sock")];
    assert_eq!(one(&x, "glassloop_server_serving", &unix), 0.0);
    assert_eq!(one(&x, "glassloop_server_connections_accepted_total", &unix), 0.0);
    assert_eq!(one(&x, "asyncio_eventloop_stalls_total", &[("loop", &la)]), 0.0);
    assert_eq!(one(&x, "glassloop_samples_dropped_total", &[("loop", &la)]), 0.0);
    assert_eq!(one(&x, "glassloop_loop_info", &[("loop", &lb), ("name", "worker")]), 1.0);

    // Cumulative: more samples only ever add.
    publish(&hub, &a, 4, 1, &[1_000]);
    let x2 = parse(&get(addr, "/metrics").text());
    assert_eq!(one(&x2, &format!("{name}_count"), &[("loop", &la)]), 13.0);
}

#[test]
fn metrics_with_no_loops_is_still_valid() {
    let (_hub, addr) = default_server();
    let x = parse(&get(addr, "/metrics").text());
    assert_eq!(x.types["asyncio_callback_duration_seconds"], "histogram");
    assert_eq!(one(&x, "glassloop_stream_clients", &[]), 0.0);
}
