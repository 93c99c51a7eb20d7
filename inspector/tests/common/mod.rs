//! Test helpers: a raw HTTP/1.1 client, a server per test, synthetic loops.
//!
//! The client is a few lines over `TcpStream` rather than a crate: it keeps the
//! dev-dependencies empty (no TLS stack to compile) and lets tests send what real
//! clients would not (bodies on GET, oversized heads, half-sent requests).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use inspector::{Config, Hub, HubConfig, LoopHandle, LoopInfo, Query, Sample};
use serde_json::Value;

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` (a whole request) and reads the response until the server closes.
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf); // a reset after the response is fine
    parse(&buf)
}

/// A request with extra header lines (`Name: value`), `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes())
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[])
}

/// GET that must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{:?}", r.headers);
    r.json()
}

pub fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
    out
}

/// A hub and a server on 127.0.0.1:0, both private to the test.
pub fn server(hub_config: HubConfig, config: Config) -> (Arc<Hub>, SocketAddr) {
    let hub = Hub::new(hub_config);
    let info =
        inspector::start(Arc::clone(&hub), Config { address: "127.0.0.1:0".into(), ..config }).expect("server starts");
    assert!(info.url.starts_with("http://127.0.0.1:"));
    (hub, info.address)
}

pub fn default_server() -> (Arc<Hub>, SocketAddr) {
    server(HubConfig::default(), Config::default())
}

pub fn info(name: &str) -> LoopInfo {
    LoopInfo {
        name: name.into(),
        thread_id: 1234,
        thread_name: format!("{name}-thread"),
        python: "3.13.0".into(),
        glassloop_version: "0.1.0".into(),
        ..Default::default()
    }
}

/// A sample whose callback histogram holds `callbacks_ns` and whose counters say so.
pub fn sample(callbacks_ns: &[u64]) -> Sample {
    let mut s = Sample::new();
    s.callbacks = callbacks_ns.len() as u64;
    s.iterations = 1;
    s.busy_seconds = 0.05;
    s.idle_seconds = 0.2;
    s.utilization = 0.2;
    s.ready_queue_last = 3;
    s.ready_queue_max = 9;
    s.timers_pending = 4;
    s.tasks_live = 2;
    for &ns in callbacks_ns {
        s.histograms.callback_duration.saturating_record(ns);
        s.histograms.eventloop_delay.saturating_record(ns / 2 + 1);
    }
    s
}

/// Publishes `n` samples with increasing `seq`, then waits for the hub to hold them.
pub fn publish(hub: &Hub, h: &LoopHandle, first_seq: u64, n: u64, callbacks_ns: &[u64]) {
    for seq in first_seq..first_seq + n {
        let mut s = sample(callbacks_ns);
        s.seq = seq;
        s.start_unix_ms = 1_000 + seq * 250;
        s.end_unix_ms = 1_000 + (seq + 1) * 250;
        assert!(h.publish_sample(s), "queue has room");
        hub.pump();
    }
}

/// A loop thread that answers deep queries with `answer` every millisecond, like
/// the real loop does at the top of each iteration, until dropped.
pub struct FakeLoop {
    pub id: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoopHandle>>,
}

impl FakeLoop {
    pub fn spawn(hub: &Hub, name: &str, answer: impl Fn(Query) + Send + 'static) -> FakeLoop {
        let handle = hub.register_loop(info(name));
        let id = handle.id();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for q in handle.take_queries() {
                    answer(q);
                }
                thread::sleep(Duration::from_millis(1));
            }
            handle
        });
        hub.pump();
        FakeLoop { id, stop, thread: Some(thread) }
    }
}

impl Drop for FakeLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// An open SSE connection, read line by line.
pub struct Sse {
    pub reader: BufReader<TcpStream>,
}

impl Sse {
    pub fn open(addr: SocketAddr, path: &str) -> Sse {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event as (name, data), skipping chunk-size lines and comments.
    pub fn next_event(&mut self) -> (String, String) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("stream open");
            assert!(n > 0, "stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(v);
            } else if line.is_empty() && !name.is_empty() {
                return (name, data);
            }
        }
    }
}
