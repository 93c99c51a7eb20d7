//! A synthetic process for developing and testing the dashboard without Python.
//!
//! Registers a few fake loops in the process's [`Hub`], publishes realistic samples
//! (4 a second), tables (once a second, and on request), answers deep queries (tables,
//! a task's await stack), blocks its main loop now and then (slow callbacks and
//! stalls, with a stack), and serves the inspector.
//!
//! Like `examples/demo.py` it runs a real TCP echo server: a connection to it shows up
//! in the main loop's transports table with its real address and byte counts, and a
//! line `block <ms>` sent on it blocks the main loop for that long in the echo
//! handler's site `echo (synthetic/app.py:14)` (a slow callback; a stall past 100 ms),
//! then echoes the line back, as `tests/browser/demo_app.py` does on the real loop.
//!
//! ```sh
//! cargo run --release -p glassloop-inspector --example synthetic -- --port 0
//! ```
//!
//! Options: `--port N` (inspector port, default 7070, 0 = any), `--echo-port N`
//! (default 0), `--loops N` (default 2), `--seconds S` (exit after S seconds; default
//! never), `--block-every S` (the main loop blocks ~150 ms every S seconds, default
//! 4; 0 = never), `--token T` (require a token), `--max-stream-clients N` (to see
//! the dashboard fall back to polling). Prints one `synthetic: inspector on URL` and one
//! `synthetic: echo server on HOST:PORT` line on stdout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use inspector::clock::{monotonic_ns, unix_ms};
use inspector::{
    CallbackSite, Config, Heartbeat, Hub, LoopHandle, LoopInfo, QueryKind, QueryReply, Sample, ServerRecord,
    SlowCallbackEvent, Tables, TaskRecord, TaskState, TransportKind, TransportRecord,
};

/// How often a sample is cut, as the real loop does by default.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// How often the tables are published unasked.
const TABLES_INTERVAL: Duration = Duration::from_secs(1);
/// One fake loop iteration: how often queries are answered.
const TICK: Duration = Duration::from_millis(5);
/// Finished tasks kept in the table (the loop bounds its tables).
const FINISHED_KEPT: usize = 200;
/// Slow callbacks kept (the loop's ring).
const SLOW_KEPT: usize = 100;

struct Args {
    port: u16,
    token: Option<String>,
    max_stream_clients: Option<usize>,
    echo_port: u16,
    loops: usize,
    seconds: Option<f64>,
    block_every: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 7070,
        token: None,
        max_stream_clients: None,
        echo_port: 0,
        loops: 2,
        seconds: None,
        block_every: 4.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--port" => a.port = value()?.parse().map_err(|e| bad(&e))?,
            "--echo-port" => a.echo_port = value()?.parse().map_err(|e| bad(&e))?,
            "--loops" => a.loops = value()?.parse::<usize>().map_err(|e| bad(&e))?.clamp(1, 16),
            "--seconds" => a.seconds = Some(value()?.parse().map_err(|e| bad(&e))?),
            "--block-every" => a.block_every = value()?.parse().map_err(|e| bad(&e))?,
            "--token" => a.token = Some(value()?),
            "--max-stream-clients" => a.max_stream_clients = Some(value()?.parse().map_err(|e| bad(&e))?),
            "-h" | "--help" => {
                return Err("usage: synthetic [--port N] [--echo-port N] [--loops N] [--seconds S] [--block-every S] \
                            [--token T] [--max-stream-clients N]"
                    .into())
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("synthetic: {e}");
            std::process::exit(2);
        }
    };
    let mut config =
        Config { address: format!("127.0.0.1:{}", args.port), token: args.token.clone(), ..Config::default() };
    if let Some(n) = args.max_stream_clients {
        config.max_stream_clients = n;
    }
    let info = match inspector::serve(config) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("synthetic: {e}");
            std::process::exit(1);
        }
    };
    let echo = TcpListener::bind(("127.0.0.1", args.echo_port)).unwrap_or_else(|e| {
        eprintln!("synthetic: echo server: {e}");
        std::process::exit(1);
    });
    let echo_addr = echo.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("synthetic: inspector on {}", info.url);
    println!("synthetic: echo server on {echo_addr} (send \"block <ms>\\n\" for a slow callback)");
    let _ = std::io::stdout().flush();

    let (conn_tx, conn_rx) = channel::<ConnEvent>();
    thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || echo_server(echo, conn_tx))
        .expect("spawn echo server");

    let mut threads = Vec::new();
    let mut conn_rx = Some(conn_rx);
    for i in 0..args.loops {
        let profile = if i == 0 {
            Profile::main(echo_addr.clone(), args.block_every)
        } else {
            Profile::worker(i, echo_addr.clone())
        };
        let rx = if i == 0 { conn_rx.take() } else { None };
        let thread_name = profile.thread_name.clone();
        // Registered here, in order, so the main loop is always #1.
        let fake = FakeLoop::new(profile, rx, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        threads.push(thread::Builder::new().name(thread_name).spawn(move || fake.run()).expect("spawn loop thread"));
    }
    match args.seconds {
        Some(s) => {
            thread::sleep(Duration::from_secs_f64(s.max(0.0)));
            println!("synthetic: done after {s} s");
        }
        None => {
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The echo server: real sockets, reported to the main loop as transports.

/// What the echo server tells the main loop.
enum ConnEvent {
    Opened {
        id: u64,
        local: String,
        peer: String,
        counters: Arc<ConnCounters>,
    },
    /// Block the loop for this long, then send `reply` back on the connection.
    Block {
        ms: u64,
        task_conn: u64,
        done: Sender<()>,
    },
}

#[derive(Default)]
struct ConnCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    calls_in: AtomicU64,
    calls_out: AtomicU64,
    closed: AtomicBool,
}

fn echo_server(listener: TcpListener, events: Sender<ConnEvent>) {
    let mut next_id = 1_000;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        next_id += 1;
        let id = next_id;
        let counters = Arc::new(ConnCounters::default());
        let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        if events.send(ConnEvent::Opened { id, local, peer, counters: Arc::clone(&counters) }).is_err() {
            return;
        }
        let events = events.clone();
        let _ =
            thread::Builder::new().name(format!("echo-{id}")).spawn(move || echo_conn(id, stream, counters, events));
    }
}

fn echo_conn(id: u64, stream: TcpStream, counters: Arc<ConnCounters>, events: Sender<ConnEvent>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                counters.calls_in.fetch_add(1, Ordering::Relaxed);
            }
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(ms) = text.trim().strip_prefix("block ").and_then(|v| v.trim().parse::<u64>().ok()) {
            let (done, wait) = channel();
            if events.send(ConnEvent::Block { ms: ms.min(10_000), task_conn: id, done }).is_err() {
                break;
            }
            let _ = wait.recv_timeout(Duration::from_secs(15));
        }
        if writer.write_all(&line).is_err() {
            break;
        }
        counters.bytes_out.fetch_add(line.len() as u64, Ordering::Relaxed);
        counters.calls_out.fetch_add(1, Ordering::Relaxed);
    }
    counters.closed.store(true, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------
// Randomness without a dependency.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn normal(&mut self) -> f64 {
        let u = self.f().max(1e-12);
        let v = self.f();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Log-normal with the given median and shape.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }
}

// ---------------------------------------------------------------------------------
// A fake loop.

/// What kind of work a fake loop pretends to do.
struct Profile {
    name: String,
    thread_name: String,
    /// Callbacks per second at the mean load.
    rate: f64,
    /// Median callback duration (ns).
    median_ns: f64,
    /// Period of the load's slow wave (s).
    wave_s: f64,
    echo_addr: String,
    /// The loop blocks ~150 ms this often (s), like demo.py's `sometimes_blocks`.
    block_every: f64,
    sites: Vec<(&'static str, &'static str, u32, f64)>,
    main: bool,
}

impl Profile {
    fn main(echo_addr: String, block_every: f64) -> Profile {
        Profile {
            name: "main".into(),
            thread_name: "MainThread".into(),
            rate: 6_000.0,
            median_ns: 20_000.0,
            wave_s: 90.0,
            echo_addr,
            block_every,
            sites: vec![
                ("client", "synthetic/app.py", 24, 0.30),
                ("echo", "synthetic/app.py", 14, 0.28),
                ("StreamReaderProtocol.data_received", "asyncio/streams.py", 268, 0.14),
                ("_SelectorSocketTransport._read_ready__data_received", "asyncio/selector_events.py", 1002, 0.08),
                ("handle_request", "synthetic/app.py", 52, 0.08),
                ("Future.set_result", "asyncio/futures.py", 384, 0.04),
                ("report", "synthetic/app.py", 60, 0.02),
                ("_SelectorSocketTransport._write_ready", "asyncio/selector_events.py", 1120, 0.03),
                ("sometimes_blocks", "synthetic/app.py", 40, 0.01),
                ("Event.wait", "asyncio/locks.py", 201, 0.02),
            ],
            main: true,
        }
    }

    fn worker(i: usize, echo_addr: String) -> Profile {
        Profile {
            name: format!("worker-{i}"),
            thread_name: format!("worker-{i}"),
            rate: 1_500.0 / i as f64,
            median_ns: 60_000.0,
            wave_s: 45.0 + 20.0 * i as f64,
            echo_addr,
            block_every: 0.0,
            sites: vec![
                ("poll_queue", "synthetic/worker.py", 18, 0.40),
                ("fetch_upstream", "synthetic/worker.py", 33, 0.30),
                ("parse_response", "synthetic/worker.py", 57, 0.20),
                ("SubprocessStreamProtocol.pipe_data_received", "asyncio/subprocess.py", 72, 0.05),
                ("DatagramHandler.datagram_received", "synthetic/worker.py", 80, 0.05),
            ],
            main: false,
        }
    }
}

struct Conn {
    record: TransportRecord,
    counters: Option<Arc<ConnCounters>>,
    /// Fake traffic per second (bytes) for a connection without counters.
    rate: f64,
}

struct FakeLoop {
    p: Profile,
    rng: Rng,
    handle: LoopHandle,
    heartbeat: Arc<Heartbeat>,
    /// What the loop thread is "running", for the stall stack capture.
    running: Arc<Mutex<String>>,
    conns: Option<Receiver<ConnEvent>>,
    started: Instant,
    seq: u64,
    iterations: u64,
    next_task: u64,
    tasks: Vec<TaskRecord>,
    finished: VecDeque<TaskRecord>,
    transports: Vec<Conn>,
    servers: Vec<ServerRecord>,
    sites: Vec<CallbackSite>,
    slow: VecDeque<SlowCallbackEvent>,
    slow_in_interval: u64,
    /// Ns the loop spent blocked during the interval (goes into busy time).
    blocked_in_interval: u64,
    tasks_created: u64,
    tasks_finished: u64,
    next_block: f64,
    bytes_seen: (u64, u64),
}

impl FakeLoop {
    fn new(p: Profile, conns: Option<Receiver<ConnEvent>>, seed: u64) -> FakeLoop {
        let handle = Hub::global().register_loop(LoopInfo {
            name: p.name.clone(),
            thread_id: 10_000 + seed % 1_000,
            thread_name: p.thread_name.clone(),
            python: "3.13.1 (synthetic)".into(),
            glassloop_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        });
        let running = Arc::new(Mutex::new(String::new()));
        let capture = Arc::clone(&running);
        handle.set_stack_capture(Box::new(move || {
            let now = capture.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (!now.is_empty()).then_some(now)
        }));
        let heartbeat = handle.heartbeat();
        let sites = p
            .sites
            .iter()
            .enumerate()
            .map(|(i, (q, f, l, _))| CallbackSite {
                id: i as u64 + 1,
                qualname: (*q).into(),
                file: (*f).into(),
                line: *l,
                ..Default::default()
            })
            .collect();
        let mut fl = FakeLoop {
            next_block: p.block_every,
            p,
            rng: Rng(seed),
            handle,
            heartbeat,
            running,
            conns,
            started: Instant::now(),
            seq: 0,
            iterations: 0,
            next_task: 1,
            tasks: Vec::new(),
            finished: VecDeque::new(),
            transports: Vec::new(),
            servers: Vec::new(),
            sites,
            slow: VecDeque::new(),
            slow_in_interval: 0,
            blocked_in_interval: 0,
            tasks_created: 0,
            tasks_finished: 0,
            bytes_seen: (0, 0),
        };
        fl.populate();
        fl
    }

    fn task(&mut self, name: &str, coro: &str, defined_at: &str, parent: Option<u64>) -> u64 {
        let id = self.next_task;
        self.next_task += 1;
        self.tasks_created += 1;
        self.tasks.push(TaskRecord {
            id,
            name: name.into(),
            coro: coro.into(),
            defined_at: defined_at.into(),
            parent_id: parent,
            created_unix_ms: unix_ms(),
            ..Default::default()
        });
        id
    }

    fn populate(&mut self) {
        let now = unix_ms();
        if self.p.main {
            let main = self.task("Task-1", "main", "synthetic/app.py:66", None);
            for i in 0..8 {
                self.task(&format!("client-{i}"), "client", "synthetic/app.py:24", Some(main));
                let cport = 40_000 + self.rng.range(0, 20_000) as u16;
                let rate = 20_000.0 + self.rng.f() * 200_000.0;
                self.transports.push(Conn {
                    record: transport(
                        TransportKind::Tcp,
                        &format!("127.0.0.1:{cport}"),
                        &self.p.echo_addr,
                        "StreamReaderProtocol",
                        now,
                    ),
                    counters: None,
                    rate,
                });
            }
            self.task("sometimes-blocks", "sometimes_blocks", "synthetic/app.py:40", Some(main));
            self.task("report", "report", "synthetic/app.py:60", Some(main));
            self.servers.push(ServerRecord {
                id: 1,
                kind: TransportKind::Tcp,
                addresses: vec![self.p.echo_addr.clone()],
                serving: true,
                ..Default::default()
            });
            self.transports.push(Conn {
                record: transport(TransportKind::Unix, "/run/synthetic.sock", "", "ControlProtocol", now),
                counters: None,
                rate: 300.0,
            });
        } else {
            let main = self.task("Task-1", "worker_main", "synthetic/worker.py:90", None);
            for i in 0..4 {
                self.task(&format!("poller-{i}"), "poll_queue", "synthetic/worker.py:18", Some(main));
            }
            for i in 0..3 {
                self.transports.push(Conn {
                    record: transport(
                        TransportKind::Tcp,
                        &format!("127.0.0.1:{}", 50_000 + i),
                        &format!("127.0.0.1:{}", 5432 + i),
                        "asyncpg.protocol.Protocol",
                        now,
                    ),
                    counters: None,
                    rate: 5_000.0 + self.rng.f() * 50_000.0,
                });
            }
            self.transports.push(Conn {
                record: transport(TransportKind::Udp, "127.0.0.1:8125", "", "DatagramHandler", now),
                counters: None,
                rate: 2_000.0,
            });
            self.transports.push(Conn {
                record: transport(TransportKind::Subprocess, "", "pid 4242", "SubprocessStreamProtocol", now),
                counters: None,
                rate: 800.0,
            });
        }
    }

    fn run(mut self) {
        let mut next_sample = Instant::now() + SAMPLE_INTERVAL;
        let mut next_tables = Instant::now();
        let mut interval_start = unix_ms();
        loop {
            self.iterations += 1;
            self.heartbeat.iteration(self.iterations);
            for q in self.handle.take_queries() {
                let reply = match q.kind() {
                    QueryKind::Tables => QueryReply::Tables(self.tables()),
                    QueryKind::TaskStack { task_id } => QueryReply::TaskStack(self.stack(*task_id)),
                };
                q.answer(reply);
            }
            self.take_conn_events();
            let t = self.started.elapsed().as_secs_f64();
            if self.p.block_every > 0.0 && t >= self.next_block {
                self.next_block = t + self.p.block_every * (0.7 + 0.6 * self.rng.f());
                let ms = 120 + self.rng.range(0, 60);
                self.block(ms, "sometimes_blocks", None);
            }
            let now = Instant::now();
            if now >= next_sample {
                let end = unix_ms();
                self.publish_sample(interval_start, end);
                interval_start = end;
                next_sample += SAMPLE_INTERVAL;
                if next_sample < now {
                    next_sample = now + SAMPLE_INTERVAL;
                }
            }
            if now >= next_tables {
                let tables = self.tables();
                self.handle.publish_tables(tables);
                next_tables = now + TABLES_INTERVAL;
            }
            thread::sleep(TICK);
        }
    }

    fn take_conn_events(&mut self) {
        let Some(rx) = self.conns.as_ref() else { return };
        let events: Vec<ConnEvent> = rx.try_iter().collect();
        for ev in events {
            match ev {
                ConnEvent::Opened { id, local, peer, counters } => {
                    let mut record = transport(TransportKind::Tcp, &local, &peer, "StreamReaderProtocol", unix_ms());
                    record.id = id;
                    self.transports.push(Conn { record, counters: Some(counters), rate: 0.0 });
                    if let Some(s) = self.servers.first_mut() {
                        s.accepted += 1;
                    }
                    self.task(&format!("Task-{id}"), "echo", "synthetic/app.py:14", None);
                }
                ConnEvent::Block { ms, task_conn, done } => {
                    let task = self.tasks.iter().find(|t| t.name == format!("Task-{task_conn}")).map(|t| t.id);
                    self.block(ms, "echo", task);
                    let _ = done.send(());
                }
            }
        }
    }

    /// Blocks the loop thread for `ms` in `site`, as a callback calling
    /// `time.sleep` would: a slow callback, and a stall past the threshold.
    fn block(&mut self, ms: u64, site: &str, task: Option<u64>) {
        let Some(s) = self.sites.iter().position(|x| x.qualname == site) else { return };
        let label = self.sites[s].label();
        let (file, line) = (self.sites[s].file.clone(), self.sites[s].line + 3);
        let task =
            task.or_else(|| self.tasks.iter().find(|t| t.coro == site && t.state == TaskState::Pending).map(|t| t.id));
        // The loop thread's stack as the real capture formats it, outermost first.
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = [
            "frame _run_module_as_main (<frozen runpy>:198)".to_string(),
            "frame _run_code (<frozen runpy>:88)".into(),
            "frame <module> (synthetic/app.py:79)".into(),
            "frame run (/usr/lib/python3.13/asyncio/runners.py:194)".into(),
            "frame Runner.run (/usr/lib/python3.13/asyncio/runners.py:118)".into(),
            "frame BaseEventLoop.run_until_complete (/usr/lib/python3.13/asyncio/base_events.py:712)".into(),
            "frame Loop.run_forever (glassloop/_loop.py:163)".into(),
            format!("frame {site} ({file}:{line})"),
        ]
        .join("\n");
        let start = monotonic_ns();
        self.heartbeat.begin(start, self.sites[s].id);
        thread::sleep(Duration::from_millis(ms));
        let took = monotonic_ns() - start;
        self.heartbeat.idle();
        self.running.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.blocked_in_interval += took;
        self.slow_in_interval += 1;
        let site = &mut self.sites[s];
        site.count += 1;
        site.total_ns += took;
        site.max_ns = site.max_ns.max(took);
        let task_name = task.and_then(|id| self.tasks.iter().find(|t| t.id == id)).map(|t| t.name.clone());
        if let Some(t) = task.and_then(|id| self.tasks.iter_mut().find(|t| t.id == id)) {
            t.steps += 1;
            t.busy_ns += took;
            t.longest_step_ns = t.longest_step_ns.max(took);
        }
        self.slow.push_front(SlowCallbackEvent {
            unix_ms: unix_ms(),
            duration_ns: took,
            site: label,
            task_id: task,
            task_name,
            traceback: None,
        });
        self.slow.truncate(SLOW_KEPT);
    }

    fn publish_sample(&mut self, start_ms: u64, end_ms: u64) {
        self.seq += 1;
        let secs = (end_ms.saturating_sub(start_ms)).max(1) as f64 / 1e3;
        let t = self.started.elapsed().as_secs_f64();
        let wave = 1.0 + 0.6 * (t * std::f64::consts::TAU / self.p.wave_s).sin();
        let load = (wave * (1.0 + 0.15 * self.rng.normal())).max(0.05);
        let callbacks = (self.p.rate * secs * load) as u64;

        let mut s = Sample::new();
        s.seq = self.seq;
        s.start_unix_ms = start_ms;
        s.end_unix_ms = end_ms;
        s.callbacks = callbacks + self.slow_in_interval;
        s.iterations = (callbacks / 3).max(1);
        s.exceptions = u64::from(self.rng.chance(0.03));
        s.slow_callbacks = self.slow_in_interval;

        // Durations: a log-normal body and a small tail, recorded as ~300 draws each
        // standing for its share of the interval's callbacks.
        let draws = 300u64.min(callbacks.max(1));
        let per = (callbacks / draws).max(1);
        let weights: Vec<f64> = self.p.sites.iter().map(|x| x.3).collect();
        let wsum: f64 = weights.iter().sum();
        let mut busy_ns = self.blocked_in_interval as f64;
        for _ in 0..draws {
            let mut d = self.rng.lognormal(self.p.median_ns * (0.8 + 0.4 * load), 0.8);
            if self.rng.chance(0.01) {
                d *= 5.0 + 60.0 * self.rng.f();
            }
            let d = (d as u64).max(500);
            s.histograms.callback_duration.saturating_record_n(d, per);
            s.histograms.task_step_duration.saturating_record_n((d as f64 * 1.1) as u64, per / 2 + 1);
            busy_ns += d as f64 * per as f64;
            // Attribute to a site by weight.
            let mut pick = self.rng.f() * wsum;
            let mut idx = 0;
            for (i, w) in weights.iter().enumerate() {
                if pick < *w {
                    idx = i;
                    break;
                }
                pick -= w;
            }
            let site = &mut self.sites[idx];
            site.count += per;
            site.total_ns += d * per;
            site.max_ns = site.max_ns.max(d);
        }
        if let Some(each) = self.blocked_in_interval.checked_div(self.slow_in_interval) {
            s.histograms.callback_duration.saturating_record(each);
        }
        let interval_ns = secs * 1e9;
        let busy_ns = busy_ns.min(interval_ns * 0.98);
        s.busy_seconds = busy_ns / 1e9;
        s.idle_seconds = (interval_ns - busy_ns).max(0.0) / 1e9;
        s.utilization = s.busy_seconds / (s.busy_seconds + s.idle_seconds).max(1e-9);

        let lag_median = 15_000.0 * (1.0 + 6.0 * s.utilization * s.utilization);
        for _ in 0..draws {
            let d = self.rng.lognormal(lag_median, 0.8) as u64;
            s.histograms.eventloop_delay.saturating_record_n(d.max(200), per);
        }
        if self.blocked_in_interval > 0 {
            s.histograms.eventloop_delay.saturating_record_n(self.blocked_in_interval, 5);
        }
        for _ in 0..40 {
            let d = self.rng.lognormal(120_000.0 * (1.0 + s.utilization), 0.7) as u64;
            s.histograms.timer_delay.saturating_record(d.max(1_000));
        }

        // Executor: a few jobs of tens of milliseconds.
        s.executor_running = self.rng.range(0, if self.p.main { 3 } else { 5 });
        s.executor_queued = if self.rng.chance(0.2 * load) { self.rng.range(1, 8) } else { 0 };
        s.executor_done = self.rng.range(0, 6);
        for _ in 0..s.executor_done {
            let d = self.rng.lognormal(18e6 * load, 0.6) as u64;
            s.histograms.executor_job_duration.saturating_record(d);
        }

        // Tasks: short requests come and go.
        self.churn_tasks(load);
        s.tasks_created = std::mem::take(&mut self.tasks_created);
        s.tasks_finished = std::mem::take(&mut self.tasks_finished);
        s.tasks_live = self.tasks.len() as u64;
        s.ready_queue_last = (self.rng.lognormal(3.0 * load, 0.8)) as u64;
        s.ready_queue_max = s.ready_queue_last + (self.rng.lognormal(8.0 * load, 0.7)) as u64;
        s.timers_pending = self.tasks.len() as u64 / 2 + self.rng.range(2, 6);

        // Transports: advance the fake ones; read the real ones. A real connection that
        // closed was shown closed for one sample; now it goes, and its handler task ends.
        let gone: Vec<u64> = self
            .transports
            .iter()
            .filter(|c| c.record.state == "closed" && c.counters.is_some())
            .map(|c| c.record.id)
            .collect();
        self.transports.retain(|c| !gone.contains(&c.record.id));
        for id in gone {
            if let Some(i) = self.tasks.iter().position(|t| t.name == format!("Task-{id}")) {
                let mut t = self.tasks.swap_remove(i);
                t.state = TaskState::Done;
                t.finished_unix_ms = Some(end_ms);
                self.tasks_finished += 1;
                self.finished.push_front(t);
                self.finished.truncate(FINISHED_KEPT);
            }
        }
        for c in &mut self.transports {
            if let Some(k) = &c.counters {
                c.record.bytes_in = k.bytes_in.load(Ordering::Relaxed);
                c.record.bytes_out = k.bytes_out.load(Ordering::Relaxed);
                c.record.calls_in = k.calls_in.load(Ordering::Relaxed);
                c.record.calls_out = k.calls_out.load(Ordering::Relaxed);
                if k.closed.load(Ordering::Relaxed) {
                    c.record.state = "closed".into();
                }
            } else {
                let bytes = (c.rate * secs * load * (0.5 + self.rng.f())) as u64;
                c.record.bytes_in += bytes;
                c.record.bytes_out += bytes;
                c.record.calls_in += bytes / 1_500 + 1;
                c.record.calls_out += bytes / 1_500 + 1;
                c.record.write_buffer = if self.rng.chance(0.1) { self.rng.range(0, 64 * 1024) } else { 0 };
                c.record.write_buffer_high_water = c.record.write_buffer_high_water.max(c.record.write_buffer);
                let paused = c.record.write_buffer > 48 * 1024;
                if paused {
                    c.record.paused_writing_ns += (secs * 1e9) as u64;
                }
                c.record.writing_paused = paused;
            }
        }
        if let Some(srv) = self.servers.first_mut() {
            srv.open =
                self.transports.iter().filter(|c| c.counters.is_some() && c.record.state == "open").count() as u64;
        }
        let (bin, bout) =
            self.transports.iter().fold((0u64, 0u64), |(a, b), c| (a + c.record.bytes_in, b + c.record.bytes_out));
        s.bytes_in = bin.saturating_sub(self.bytes_seen.0);
        s.bytes_out = bout.saturating_sub(self.bytes_seen.1);
        self.bytes_seen = (bin, bout);
        s.transports_open = self.transports.iter().filter(|c| c.record.state == "open").count() as u64;
        s.fds_registered = s.transports_open + self.servers.len() as u64 + 2;

        // Long-lived tasks keep stepping.
        for task in &mut self.tasks {
            let steps = self.rng.range(0, 40);
            let busy = (steps as f64 * self.rng.lognormal(self.p.median_ns, 0.6)) as u64;
            task.steps += steps;
            task.busy_ns += busy;
            task.longest_step_ns = task.longest_step_ns.max(busy.checked_div(steps).unwrap_or(0) * 3);
            task.last_scheduled_delay_ns = self.rng.lognormal(lag_median, 0.8) as u64;
        }

        self.slow_in_interval = 0;
        self.blocked_in_interval = 0;
        self.handle.publish_sample(s);
    }

    fn churn_tasks(&mut self, load: f64) {
        // Finish some request tasks.
        let now = unix_ms();
        let mut i = 0;
        while i < self.tasks.len() {
            let t = &self.tasks[i];
            let short = t.coro == "handle_request" || t.coro == "fetch_upstream";
            if short && self.rng.chance(0.25) {
                let mut t = self.tasks.swap_remove(i);
                t.finished_unix_ms = Some(now);
                let r = self.rng.f();
                if r < 0.06 {
                    t.state = TaskState::Failed;
                    t.exception_type = Some(
                        ["ConnectionResetError", "TimeoutError", "ValueError"][self.rng.range(0, 3) as usize].into(),
                    );
                } else if r < 0.10 {
                    t.state = TaskState::Cancelled;
                } else {
                    t.state = TaskState::Done;
                }
                self.tasks_finished += 1;
                self.finished.push_front(t);
                self.finished.truncate(FINISHED_KEPT);
            } else {
                i += 1;
            }
        }
        // Start new ones, children of the long-lived tasks.
        let n = (self.rng.f() * 6.0 * load) as u64;
        for _ in 0..n {
            let parents: Vec<u64> =
                self.tasks.iter().filter(|t| t.coro == "client" || t.coro == "poll_queue").map(|t| t.id).collect();
            let parent = parents.get(self.rng.range(0, parents.len().max(1) as u64) as usize).copied();
            let (name, coro, at) = if self.p.main {
                (format!("request-{}", self.next_task), "handle_request", "synthetic/app.py:52")
            } else {
                (format!("fetch-{}", self.next_task), "fetch_upstream", "synthetic/worker.py:33")
            };
            self.task(&name, coro, at, parent);
        }
    }

    fn tables(&self) -> Tables {
        let mut tasks = self.tasks.clone();
        tasks.extend(self.finished.iter().cloned());
        Tables {
            unix_ms: unix_ms(),
            tasks,
            transports: self.transports.iter().map(|c| c.record.clone()).collect(),
            servers: self.servers.clone(),
            callback_sites: {
                let mut s = self.sites.clone();
                s.sort_by_key(|x| std::cmp::Reverse(x.total_ns));
                s
            },
            slow_callbacks: self.slow.iter().cloned().collect(),
            truncated: false,
        }
    }

    /// An await stack as the real loop formats it (`glassloop/_stacks.py`): one step per
    /// line, outermost first, down to what the innermost coroutine waits on.
    fn stack(&self, task_id: u64) -> Option<String> {
        let t = self.tasks.iter().chain(self.finished.iter()).find(|t| t.id == task_id)?;
        if t.state != TaskState::Pending {
            // A finished coroutine has no frame: its definition line, and nothing awaited.
            return Some(format!("coroutine {} ({})", t.coro, t.defined_at));
        }
        let (file, line) = t.defined_at.rsplit_once(':').unwrap_or((&t.defined_at, "0"));
        let line: u32 = line.parse().unwrap_or(0);
        const STREAMS: &str = "/usr/lib/python3.13/asyncio/streams.py";
        let mut steps = vec![format!("coroutine {} ({file}:{})", t.coro, line + 7)];
        match t.coro.as_str() {
            "client" => {
                steps.push(format!("coroutine StreamReader.readexactly ({STREAMS}:750)"));
                steps.push(format!("coroutine StreamReader._wait_for_data ({STREAMS}:539)"));
                steps.push("future <Future pending cb=[Task.task_wakeup()]>".into());
            }
            "echo" => {
                steps.push(format!("coroutine StreamReader.read ({STREAMS}:723)"));
                steps.push(format!("coroutine StreamReader._wait_for_data ({STREAMS}:539)"));
                steps.push("future <Future pending cb=[Task.task_wakeup()]>".into());
            }
            "main" | "worker_main" => {
                steps.push("coroutine TaskGroup.__aexit__ (/usr/lib/python3.13/asyncio/taskgroups.py:71)".into());
                steps.push("future <Future pending cb=[Task.task_wakeup()]>".into());
            }
            _ => {
                steps.push("coroutine sleep (/usr/lib/python3.13/asyncio/tasks.py:718)".into());
                steps.push("future <Future pending cb=[Task.task_wakeup()]>".into());
            }
        }
        Some(steps.join("\n"))
    }
}

fn transport(kind: TransportKind, local: &str, peer: &str, protocol: &str, now: u64) -> TransportRecord {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    TransportRecord {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        kind,
        local: local.into(),
        peer: peer.into(),
        protocol: protocol.into(),
        created_unix_ms: now,
        state: "open".into(),
        ..Default::default()
    }
}
