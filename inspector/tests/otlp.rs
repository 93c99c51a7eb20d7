//! OTLP export against a minimal in-process OTLP/HTTP receiver (std sockets, bodies
//! decoded with opentelemetry-proto), then against nothing: drops counted.
//! (`tests/test_otlp.py` does the same for both protocols with the real Python
//! receivers and a killed collector.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use inspector::otlp::{self, OtlpConfig};
use inspector::{Hub, HubConfig, LoopInfo, Sample, Tables, TaskRecord, TaskState};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Default)]
struct Got {
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// Serves `POST /v1/traces` and `/v1/metrics` on a free port; returns the base URL.
fn receiver(got: Arc<Mutex<Got>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let got = Arc::clone(&got);
            thread::spawn(move || serve(conn, got));
        }
    });
    url
}

fn serve(conn: TcpStream, got: Arc<Mutex<Got>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        {
            let mut g = got.lock().unwrap();
            match path.as_str() {
                "/v1/traces" => {
                    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            g.spans.extend(ss.spans);
                        }
                    }
                }
                "/v1/metrics" => g.metrics.push(ExportMetricsServiceRequest::decode(body.as_slice()).unwrap()),
                _ => {}
            }
        }
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
    }
}

fn config(endpoint: &str) -> OtlpConfig {
    let endpoint = endpoint.to_string();
    OtlpConfig::from_lookup(move |k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_METRIC_EXPORT_INTERVAL" => Some("200".into()),
        "OTEL_BSP_SCHEDULE_DELAY" => Some("50".into()),
        "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("1000".into()),
        "OTEL_SERVICE_NAME" => Some("otlp-rust-test".into()),
        _ => None,
    })
    .unwrap()
}

/// A loop with a sample and a table of `n` finished children of a pending root.
fn publish(hub: &Arc<Hub>, n: u64) -> inspector::LoopHandle {
    let h = hub.register_loop(LoopInfo { thread_name: "T".into(), ..Default::default() });
    let mut s = Sample::new();
    s.seq = 1;
    s.callbacks = 5;
    s.histograms.callback_duration.saturating_record_n(30_000, 5);
    h.publish_sample(s);
    let mut tasks = vec![TaskRecord {
        id: 1,
        name: "main".into(),
        coro: "main".into(),
        created_unix_ms: 1_000,
        ..Default::default()
    }];
    tasks.extend((2..2 + n).map(|id| TaskRecord {
        id,
        name: format!("t{id}"),
        coro: "child".into(),
        parent_id: Some(1),
        created_unix_ms: 1_000 + id,
        finished_unix_ms: Some(2_000 + id),
        state: TaskState::Done,
        ..Default::default()
    }));
    h.publish_tables(Tables { tasks, ..Default::default() });
    h
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn spans_and_metrics_reach_an_http_receiver() {
    let got = Arc::new(Mutex::new(Got::default()));
    let url = receiver(Arc::clone(&got));
    let hub = Hub::new(HubConfig::default());
    let info = otlp::start_for(Arc::clone(&hub), config(&url)).unwrap();
    assert!(info.enabled);
    assert_eq!(
        otlp::start_for(Arc::clone(&hub), config("http://127.0.0.1:9")).unwrap().traces.unwrap().endpoint,
        format!("{url}/v1/traces"),
        "idempotent"
    );
    let _h = publish(&hub, 10);
    wait("10 spans and a metrics export", || {
        let g = got.lock().unwrap();
        g.spans.len() == 10 && !g.metrics.is_empty()
    });
    let g = got.lock().unwrap();
    let root_span = g.spans[0].parent_span_id.clone();
    assert!(g.spans.iter().all(|s| s.parent_span_id == root_span && s.name == "asyncio coro-child"));
    let status = otlp::status_for(&hub);
    assert_eq!(status.traces.as_ref().unwrap().exported, 10);
    assert_eq!(status.traces.as_ref().unwrap().dropped, 0);
}

#[test]
fn a_dead_collector_costs_drops_not_memory() {
    // Bind and close a port: connections to it are refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hub = Hub::new(HubConfig::default());
    otlp::start_for(Arc::clone(&hub), config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let _h = publish(&hub, 25);
    assert!(otlp::flush_for(&hub, Duration::from_secs(20)));
    let status = otlp::status_for(&hub);
    let (t, m) = (status.traces.unwrap(), status.metrics.unwrap());
    assert_eq!((t.exported, t.dropped, t.queued), (0, 25, 0));
    assert!(t.export_failures >= 1 && t.last_error.is_some());
    assert!(m.dropped > 0 && m.export_failures >= 1);
}
