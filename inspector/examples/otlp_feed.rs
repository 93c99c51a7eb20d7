//! Drives OTLP export without Python: one fake loop publishes known samples and
//! tables into the process's hub, the inspector serves them, and
//! `inspector::otlp::start` exports them to whatever the `OTEL_*` variables name.
//! `tests/test_otlp.py` runs it against test receivers.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_METRIC_EXPORT_INTERVAL=500 \
//!   cargo run -p glassloop-inspector --example otlp_feed -- --seconds 5
//! ```
//!
//! What the loop does (deterministic but for timing):
//! - a sample every 250 ms: per sample 10 callbacks of 20 µs and 2 of 2 ms, 5 loop
//!   delays of 50 µs, 3 task steps of 30 µs, 1 timer 200 µs late, 1 executor job of
//!   15 ms; 4 iterations, 1000 bytes in, 500 out, 3 connections;
//! - a task tree: `main` (task 1, pending until the end); every round (`--round-ms`,
//!   default 200) `--fanout` (default 3) `worker` children of `main`, each with one
//!   `leaf` child; the previous round's workers and leaves finish, cycling through
//!   done, failed (`ValueError`) and cancelled; the last `--keep` (default 1024)
//!   finished tasks stay in the table, as a loop's ring does;
//! - one slow callback (a step of task `main`) after 1 s, and, with `--stall-ms N`
//!   (default 300; 0 = none), one stall of N ms at 1.5 s (stack from the capture
//!   function, site `blocker (feed.py:7)`);
//! - a busy "work" counter on the loop thread, reported every second, to show the
//!   loop's pace does not depend on the collector; with `--control 1`, a second
//!   thread does the same work without touching the hub, so the loop's pace can be
//!   compared with it second by second (which cancels out the machine's load).
//!
//! Output lines (stdout): `otlp_feed: inspector on URL`, `otlp_feed: loop ID`,
//! `otlp_feed: otlp {json OtlpInfo}`, `otlp_feed: tick {"t": s, "work": n, "control": m}`
//! each second (`control` 0 without `--control 1`), and at the end (after a final
//! table and `otlp::flush`) `otlp_feed: done {"finished": n, "roots": n, "flushed":
//! bool}`. Then it lingers `--linger` seconds (default 30) so its API can be read,
//! or until stdin closes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use inspector::clock::{monotonic_ns, unix_ms};
use inspector::otlp::{self, OtlpConfig};
use inspector::{CallbackSite, Config, Hub, LoopInfo, Sample, SlowCallbackEvent, Tables, TaskRecord, TaskState};

struct Args {
    seconds: f64,
    round_ms: u64,
    fanout: u64,
    keep: usize,
    stall_ms: u64,
    linger: f64,
    port: u16,
    control: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { seconds: 5.0, round_ms: 200, fanout: 3, keep: 1024, stall_ms: 300, linger: 30.0, port: 0, control: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--seconds" => a.seconds = v.parse().map_err(|e| bad(&e))?,
            "--round-ms" => a.round_ms = v.parse::<u64>().map_err(|e| bad(&e))?.max(1),
            "--fanout" => a.fanout = v.parse().map_err(|e| bad(&e))?,
            "--keep" => a.keep = v.parse().map_err(|e| bad(&e))?,
            "--stall-ms" => a.stall_ms = v.parse().map_err(|e| bad(&e))?,
            "--linger" => a.linger = v.parse().map_err(|e| bad(&e))?,
            "--port" => a.port = v.parse().map_err(|e| bad(&e))?,
            "--control" => a.control = v.parse::<u8>().map_err(|e| bad(&e))? != 0,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn say(line: String) {
    println!("otlp_feed: {line}");
    let _ = std::io::stdout().flush();
}

struct Tasks {
    next_id: u64,
    live: Vec<TaskRecord>,
    finished: VecDeque<TaskRecord>,
    keep: usize,
    finished_total: u64,
    created_total: u64,
}

impl Tasks {
    fn spawn(&mut self, name: &str, coro: &str, parent: Option<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.created_total += 1;
        self.live.push(TaskRecord {
            id,
            name: format!("{name}-{id}"),
            coro: coro.to_string(),
            defined_at: format!("feed.py:{}", 10 + id % 3),
            parent_id: parent,
            created_unix_ms: unix_ms(),
            steps: 2,
            busy_ns: 60_000,
            longest_step_ns: 30_000,
            last_scheduled_delay_ns: 50_000,
            ..Default::default()
        });
        id
    }

    fn finish(&mut self, id: u64, state: TaskState) {
        let Some(i) = self.live.iter().position(|t| t.id == id) else { return };
        let mut t = self.live.swap_remove(i);
        t.finished_unix_ms = Some(unix_ms().max(t.created_unix_ms + 1));
        t.state = state;
        t.exception_type = (state == TaskState::Failed).then(|| "ValueError".to_string());
        t.steps += 1;
        self.finished_total += 1;
        self.finished.push_back(t);
        while self.finished.len() > self.keep {
            self.finished.pop_front();
        }
    }

    fn tables(&self, slow: &[SlowCallbackEvent], sites: &[CallbackSite]) -> Tables {
        let mut tasks = self.live.clone();
        tasks.sort_by_key(|t| t.id);
        tasks.extend(self.finished.iter().cloned());
        Tables {
            unix_ms: unix_ms(),
            tasks,
            callback_sites: sites.to_vec(),
            slow_callbacks: slow.to_vec(),
            ..Default::default()
        }
    }
}

/// A fixed unit of busy work: the loop's (and the control thread's) "throughput".
fn work_unit(x: &mut u64) {
    for _ in 0..10_000 {
        *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
    std::hint::black_box(*x);
}

/// The control thread: the loop's iteration without the hub, counting units in `done`.
fn control(done: std::sync::Arc<std::sync::atomic::AtomicU64>, end: Duration) {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < end {
        work_unit(&mut x);
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        thread::sleep(Duration::from_micros(200));
    }
}

fn sample(seq: u64) -> Sample {
    let mut s = Sample::new();
    s.seq = seq;
    s.callbacks = 12;
    s.iterations = 4;
    s.busy_seconds = 0.05;
    s.idle_seconds = 0.2;
    s.utilization = 0.2;
    s.ready_queue_last = 2;
    s.ready_queue_max = 5;
    s.timers_pending = 3;
    s.fds_registered = 4;
    s.bytes_in = 1000;
    s.bytes_out = 500;
    s.connections = 3;
    s.executor_done = 1;
    s.executor_running = 1;
    let h = &mut s.histograms;
    h.callback_duration.saturating_record_n(20_000, 10);
    h.callback_duration.saturating_record_n(2_000_000, 2);
    h.eventloop_delay.saturating_record_n(50_000, 5);
    h.task_step_duration.saturating_record_n(30_000, 3);
    h.timer_delay.saturating_record(200_000);
    h.executor_job_duration.saturating_record(15_000_000);
    s
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("otlp_feed: {e}");
            std::process::exit(2);
        }
    };
    let server = inspector::serve(Config { address: format!("127.0.0.1:{}", args.port), ..Config::default() })
        .unwrap_or_else(|e| {
            eprintln!("otlp_feed: inspector: {e}");
            std::process::exit(1);
        });
    say(format!("inspector on {}", server.url));
    let otlp_info = OtlpConfig::from_env().and_then(otlp::start).unwrap_or_else(|e| {
        eprintln!("otlp_feed: otlp: {e}");
        std::process::exit(1);
    });

    let handle = Hub::global().register_loop(LoopInfo {
        name: "feed".into(),
        thread_name: "FeedThread".into(),
        thread_id: 4242,
        python: "3.x".into(),
        glassloop_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    });
    handle.set_stack_capture(Box::new(|| {
        Some("Traceback (most recent call last):\n  File \"feed.py\", line 7, in blocker\n    time.sleep(0.3)\n".into())
    }));
    let heartbeat = handle.heartbeat();
    say(format!("loop {}", handle.id()));
    say(format!("otlp {}", serde_json::to_string(&otlp_info).unwrap_or_default()));

    let sites = vec![CallbackSite {
        id: 77,
        qualname: "blocker".into(),
        file: "feed.py".into(),
        line: 7,
        count: 1,
        total_ns: 1,
        max_ns: 1,
    }];
    let mut tasks = Tasks {
        next_id: 1,
        live: Vec::new(),
        finished: VecDeque::new(),
        keep: args.keep,
        finished_total: 0,
        created_total: 0,
    };
    let main_id = tasks.spawn("Task", "main", None);
    let mut slow: Vec<SlowCallbackEvent> = Vec::new();

    let start = Instant::now();
    let end = Duration::from_secs_f64(args.seconds.max(0.5));
    let control_done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if args.control {
        let done = std::sync::Arc::clone(&control_done);
        thread::spawn(move || control(done, end));
    }
    let mut control_at_tick: u64 = 0;
    let (mut next_sample, mut next_tables, mut next_round, mut next_tick) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
    let mut seq = 0;
    let mut previous_round: Vec<u64> = Vec::new();
    let mut round = 0u64;
    let (mut slow_done, mut stall_done) = (false, args.stall_ms == 0);
    let mut work: u64 = 0;
    let mut work_at_tick: u64 = 0;
    let mut x: u64 = 1;
    while start.elapsed() < end {
        let now = start.elapsed();
        work_unit(&mut x);
        work += 1;
        heartbeat.iteration(work);
        if now >= next_round {
            next_round += Duration::from_millis(args.round_ms);
            for (i, id) in previous_round.drain(..).enumerate() {
                let state = [TaskState::Done, TaskState::Failed, TaskState::Cancelled][i / 2 % 3];
                tasks.finish(id, state);
            }
            for _ in 0..args.fanout {
                let w = tasks.spawn("worker", "worker", Some(main_id));
                let l = tasks.spawn("leaf", "leaf", Some(w));
                previous_round.push(l);
                previous_round.push(w);
            }
            round += 1;
        }
        if !slow_done && now >= Duration::from_secs(1) {
            slow_done = true;
            slow.push(SlowCallbackEvent {
                unix_ms: unix_ms(),
                duration_ns: 120_000_000,
                site: "handler (feed.py:21)".into(),
                task_id: Some(main_id),
                task_name: Some(format!("Task-{main_id}")),
                traceback: None,
            });
        }
        if !stall_done && now >= Duration::from_millis(1_500) {
            stall_done = true;
            heartbeat.begin(monotonic_ns(), 77);
            thread::sleep(Duration::from_millis(args.stall_ms));
            heartbeat.idle();
        }
        if now >= next_sample {
            next_sample += Duration::from_millis(250);
            seq += 1;
            let mut s = sample(seq);
            s.tasks_live = tasks.live.len() as u64;
            s.tasks_created = std::mem::take(&mut tasks.created_total);
            s.tasks_finished = std::mem::take(&mut tasks.finished_total);
            handle.publish_sample(s);
        }
        if now >= next_tables {
            next_tables += Duration::from_secs(1);
            handle.publish_tables(tasks.tables(&slow, &sites));
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let control = control_done.load(std::sync::atomic::Ordering::Relaxed);
            say(format!(
                "tick {{\"t\": {:.1}, \"work\": {}, \"control\": {}}}",
                now.as_secs_f64(),
                work - work_at_tick,
                control - control_at_tick
            ));
            work_at_tick = work;
            control_at_tick = control;
        }
        thread::sleep(Duration::from_micros(200));
    }
    let _ = round;
    // The end: every task finishes, a last sample and tables, then a flush.
    for (i, id) in std::mem::take(&mut previous_round).into_iter().enumerate() {
        tasks.finish(id, [TaskState::Done, TaskState::Failed, TaskState::Cancelled][i / 2 % 3]);
    }
    tasks.finish(main_id, TaskState::Done);
    let mut s = sample(seq + 1);
    s.tasks_live = 0;
    s.tasks_created = std::mem::take(&mut tasks.created_total);
    s.tasks_finished = std::mem::take(&mut tasks.finished_total);
    handle.publish_sample(s);
    handle.publish_tables(tasks.tables(&slow, &sites));
    let finished = tasks.next_id - 1;
    let flushed = otlp::flush(Duration::from_secs(15));
    say(format!("done {{\"finished\": {finished}, \"roots\": 1, \"flushed\": {flushed}}}"));

    // Linger so the API can be read; stop early when stdin closes.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs_f64(args.linger.max(0.0)));
    drop(handle);
}
