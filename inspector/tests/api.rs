//! The JSON API over real HTTP: every endpoint's status and shape, paging, deep
//! queries (answered, busy, closed), drops.

mod common;

use std::time::{Duration, Instant};

use common::*;
use inspector::{
    CallbackSite, HubConfig, QueryKind, QueryReply, ServerRecord, SlowCallbackEvent, Tables, TaskRecord, TaskState,
    TransportKind, TransportRecord,
};

#[test]
fn healthz_and_index() {
    let (_hub, addr) = default_server();
    assert_eq!(get_json(addr, "/healthz")["status"], "ok");
    let index = get_json(addr, "/api/v1");
    assert_eq!(index["api"], "v1");
    assert_eq!(index["histograms"].as_array().unwrap().len(), 5);
    assert_eq!(index["bucket_bounds_ns"][0], 10_000);
    assert_eq!(index["stall_threshold_ns"], 100_000_000);
    assert!(index["endpoints"].as_array().unwrap().iter().any(|e| e == "/api/v1/stream"));
}

#[test]
fn loops_list_and_detail() {
    let (hub, addr) = default_server();
    let a = hub.register_loop(info("alpha"));
    let b = hub.register_loop(info("beta"));
    publish(&hub, &a, 1, 3, &[1_000, 2_000, 3_000_000]);

    let list = get_json(addr, "/api/v1/loops");
    let loops = list["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 2);
    let la = loops.iter().find(|l| l["info"]["id"] == a.id()).unwrap();
    assert_eq!(la["info"]["name"], "alpha");
    assert_eq!(la["info"]["thread_name"], "alpha-thread");
    assert_eq!(la["info"]["pid"], std::process::id());
    assert_eq!(la["closed"], false);
    assert_eq!(la["samples_received"], 3);
    assert_eq!(la["samples_dropped"], 0);
    assert_eq!(la["latest"]["seq"], 3);
    assert_eq!(la["latest"]["histograms"]["callback_duration"]["count"], 3);
    let lb = loops.iter().find(|l| l["info"]["id"] == b.id()).unwrap();
    assert!(lb["latest"].is_null());

    let d = get_json(addr, &format!("/api/v1/loops/{}", a.id()));
    assert_eq!(d["loop"]["info"]["id"], a.id());
    assert_eq!(d["since_start"]["callbacks"], 9);
    assert_eq!(d["since_start"]["samples"], 3);
    assert_eq!(d["since_start"]["histograms"]["callback_duration"]["count"], 9);
    assert!(d["since_start"]["histograms"]["callback_duration"]["max_ns"].as_u64().unwrap() >= 2_970_000);
    let util = d["since_start"]["utilization"].as_f64().unwrap();
    assert!((util - 0.2).abs() < 1e-9, "{util}");
    assert_eq!(d["history"]["samples"], 3);
    assert_eq!(d["history"]["capacity"], 3_600);
    assert!(d["tables"].is_null());
    for key in [
        "iterations",
        "callbacks",
        "exceptions",
        "slow_callbacks",
        "busy_seconds",
        "idle_seconds",
        "utilization",
        "ready_queue_max",
        "ready_queue_last",
        "timers_pending",
        "fds_registered",
        "tasks_live",
        "tasks_created",
        "tasks_finished",
        "transports_open",
        "bytes_in",
        "bytes_out",
        "executor_queued",
        "executor_running",
        "executor_done",
        "stalls",
        "start_unix_ms",
        "end_unix_ms",
        "loop_id",
        "seq",
    ] {
        assert!(!d["loop"]["latest"][key].is_null(), "sample field {key}");
    }
    for key in ["count", "sum_ns", "min_ns", "max_ns", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "buckets"] {
        assert!(!d["loop"]["latest"]["histograms"]["eventloop_delay"][key].is_null(), "summary field {key}");
    }

    assert_eq!(get(addr, "/api/v1/loops/999").status, 404);
    assert_eq!(get(addr, "/api/v1/loops/abc").status, 400);
}

#[test]
fn samples_page_by_seq() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("pager"));
    for chunk in 0..4 {
        publish(&hub, &h, 1 + chunk * 5, 5, &[1_000]);
    }
    let base = format!("/api/v1/loops/{}/samples", h.id());
    let all = get_json(addr, &base);
    assert_eq!(all["samples"].as_array().unwrap().len(), 20);
    assert_eq!(all["oldest_seq"], 1);
    assert_eq!(all["newest_seq"], 20);

    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let page = get_json(addr, &format!("{base}?since={since}&limit=7"));
        let seqs: Vec<u64> = page["samples"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
        if seqs.is_empty() {
            assert_eq!(page["next_since"], since);
            break;
        }
        assert!(seqs.len() <= 7);
        since = page["next_since"].as_u64().unwrap();
        seen.extend(seqs);
    }
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>());

    // A huge limit is clamped, not trusted; negative and garbage are refused.
    let clamped = get_json(addr, &format!("{base}?limit=99999999999999999999999"));
    assert_eq!(clamped["limit"], 3_600);
    assert_eq!(get(addr, &format!("{base}?limit=-1")).status, 400);
    assert_eq!(get(addr, &format!("{base}?since=yesterday")).status, 400);
}

#[test]
fn one_histogram_with_its_series() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("hist"));
    publish(&hub, &h, 1, 4, &[20_000, 20_000, 7_000_000]);
    let v = get_json(addr, &format!("/api/v1/loops/{}/histograms/callback_duration?limit=3", h.id()));
    assert_eq!(v["name"], "callback_duration");
    assert_eq!(v["unit"], "ns");
    assert_eq!(v["since_start"]["count"], 12);
    assert_eq!(v["latest"]["count"], 3);
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    assert_eq!(series[2]["seq"], 4);
    let buckets = series[0]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), v["bucket_bounds_ns"].as_array().unwrap().len() + 1);
    assert_eq!(buckets[1], 2, "two values in (10 µs, 25 µs]");
    let nope = get(addr, &format!("/api/v1/loops/{}/histograms/nope", h.id()));
    assert_eq!(nope.status, 404);
    assert!(nope.json()["detail"].as_str().unwrap().contains("eventloop_delay"));
}

fn task(id: u64) -> TaskRecord {
    let state = [TaskState::Pending, TaskState::Done, TaskState::Cancelled, TaskState::Failed][(id % 4) as usize];
    TaskRecord {
        id,
        name: format!("Task-{id}"),
        coro: if id.is_multiple_of(2) { "handler".into() } else { "worker".into() },
        defined_at: "app.py:10".into(),
        parent_id: id.checked_sub(1),
        created_unix_ms: 1_000 + id,
        finished_unix_ms: (state != TaskState::Pending).then_some(2_000),
        state,
        exception_type: (state == TaskState::Failed).then(|| "ValueError".into()),
        steps: id * 2,
        busy_ns: (id * 7_919) % 1_000,
        longest_step_ns: id,
        last_scheduled_delay_ns: 5,
        ..Default::default()
    }
}

fn tables() -> Tables {
    Tables {
        unix_ms: 5_000,
        tasks: (1..=250).map(task).collect(),
        transports: vec![
            TransportRecord {
                id: 1,
                kind: TransportKind::Tcp,
                local: "127.0.0.1:80".into(),
                peer: "127.0.0.1:5000".into(),
                state: "open".into(),
                bytes_in: 10,
                ..Default::default()
            },
            TransportRecord { id: 2, kind: TransportKind::Unix, state: "open".into(), ..Default::default() },
            TransportRecord { id: 3, kind: TransportKind::Tcp, state: "closed".into(), ..Default::default() },
            TransportRecord {
                id: 1 << 32,
                kind: TransportKind::PipeRead,
                local: "fd 7".into(),
                peer: "pid 42".into(),
                state: "open".into(),
                bytes_in: 5,
                calls_in: 1,
                ..Default::default()
            },
        ],
        servers: vec![
            ServerRecord {
                id: 1,
                kind: TransportKind::Tcp,
                addresses: vec!["0.0.0.0:80".into()],
                accepted: 9,
                open: 1,
                refused: 0,
                serving: true,
                state: "serving".into(),
                protocol_factory: "HttpProtocol".into(),
                tls: false,
                created_unix_ms: 4_000,
            },
            ServerRecord {
                id: 2,
                kind: TransportKind::Unix,
                addresses: vec!["/run/app.sock".into()],
                accepted: 3,
                open: 0,
                refused: 2,
                serving: false,
                state: "closed".into(),
                protocol_factory: "start_server.<locals>.factory".into(),
                tls: true,
                created_unix_ms: 4_500,
            },
        ],
        callback_sites: vec![
            CallbackSite {
                id: 1,
                qualname: "a".into(),
                file: "a.py".into(),
                line: 1,
                count: 10,
                total_ns: 100,
                max_ns: 50,
            },
            CallbackSite {
                id: 2,
                qualname: "b".into(),
                file: "b.py".into(),
                line: 2,
                count: 1,
                total_ns: 900,
                max_ns: 900,
            },
            CallbackSite {
                id: 3,
                qualname: "c".into(),
                file: "c.py".into(),
                line: 3,
                count: 5,
                total_ns: 500,
                max_ns: 100,
            },
        ],
        slow_callbacks: vec![
            SlowCallbackEvent {
                unix_ms: 1,
                duration_ns: 200_000_000,
                site: "a (a.py:1)".into(),
                task_id: Some(4),
                task_name: Some("Task-4".into()),
                traceback: None,
            },
            SlowCallbackEvent {
                unix_ms: 2,
                duration_ns: 300_000_000,
                site: "b (b.py:2)".into(),
                task_id: None,
                task_name: None,
                traceback: Some("tb".into()),
            },
        ],
        truncated: false,
    }
}

#[test]
fn tasks_are_filtered_sorted_and_paged() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("tasks"));
    h.publish_tables(tables());
    hub.pump();
    let base = format!("/api/v1/loops/{}/tasks", h.id());

    let first = get_json(addr, &base);
    assert_eq!(first["total"], 250);
    assert_eq!(first["limit"], 100);
    assert_eq!(first["tables_unix_ms"], 5_000);
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 100);
    assert_eq!(items[0]["id"], 1);
    for key in [
        "id",
        "name",
        "coro",
        "defined_at",
        "parent_id",
        "created_unix_ms",
        "finished_unix_ms",
        "state",
        "exception_type",
        "steps",
        "busy_ns",
        "longest_step_ns",
        "last_scheduled_delay_ns",
    ] {
        assert!(items[0].get(key).is_some(), "task field {key}");
    }

    let last = get_json(addr, &format!("{base}?offset=200&limit=100"));
    assert_eq!(last["items"].as_array().unwrap().len(), 50);
    let past = get_json(addr, &format!("{base}?offset=99999999999"));
    assert!(past["items"].as_array().unwrap().is_empty());

    let failed = get_json(addr, &format!("{base}?state=failed&limit=1000"));
    assert_eq!(failed["total"], 62);
    assert!(failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "failed" && t["exception_type"] == "ValueError"));

    let named = get_json(addr, &format!("{base}?name=Task-12"));
    let ids: Vec<u64> = named["items"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [12, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129]);
    let by_coro = get_json(addr, &format!("{base}?name=worker&limit=0"));
    assert_eq!(by_coro["total"], 125);

    let busy = get_json(addr, &format!("{base}?sort=busy&order=desc&limit=250"));
    let values: Vec<u64> = busy["items"].as_array().unwrap().iter().map(|t| t["busy_ns"].as_u64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "descending");

    let capped = get_json(addr, &format!("{base}?limit=5000"));
    assert_eq!(capped["limit"], 1_000);
    for bad in ["state=zombie", "sort=price", "order=up", "limit=-5", "offset=x", "name="] {
        let r = get(addr, &format!("{base}?{bad}"));
        let expect = if bad == "name=" { 200 } else { 400 };
        assert_eq!(r.status, expect, "{bad}: {}", r.text());
        if expect == 400 {
            assert_eq!(r.json()["error"], "bad request");
        }
    }
    let long_name = "x".repeat(300);
    assert_eq!(get(addr, &format!("{base}?name={long_name}")).status, 400);
}

#[test]
fn transports_servers_sites_and_slow_callbacks() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("tables"));
    h.publish_tables(tables());
    let id = h.id();

    let t = get_json(addr, &format!("/api/v1/loops/{id}/transports"));
    assert_eq!(t["total"], 4);
    assert_eq!(t["items"][0]["kind"], "tcp");
    assert_eq!(t["items"][0]["peer"], "127.0.0.1:5000");
    for key in [
        "local",
        "protocol",
        "created_unix_ms",
        "bytes_in",
        "bytes_out",
        "calls_in",
        "calls_out",
        "write_buffer",
        "write_buffer_high_water",
        "reading_paused",
        "writing_paused",
        "paused_reading_ns",
        "paused_writing_ns",
        "state",
    ] {
        assert!(t["items"][0].get(key).is_some(), "transport field {key}");
    }
    assert_eq!(get_json(addr, &format!("/api/v1/loops/{id}/transports?kind=unix"))["total"], 1);
    assert_eq!(get(addr, &format!("/api/v1/loops/{id}/transports?kind=carrier-pigeon")).status, 400);

    let pipes = get_json(addr, &format!("/api/v1/loops/{id}/transports?kind=pipe_read"));
    assert_eq!(pipes["total"], 1);
    assert_eq!(pipes["items"][0]["local"], "fd 7");
    assert_eq!(pipes["items"][0]["peer"], "pid 42");
    assert_eq!(get_json(addr, &format!("/api/v1/loops/{id}/transports?kind=pipe_write"))["total"], 0);
    assert_eq!(get(addr, &format!("/api/v1/loops/{id}/transports?kind=pipe")).status, 400);

    let s = get_json(addr, &format!("/api/v1/loops/{id}/servers"));
    assert_eq!(s["total"], 2);
    assert_eq!(s["items"][0]["addresses"][0], "0.0.0.0:80");
    assert_eq!(s["items"][0]["serving"], true);
    assert_eq!(s["items"][0]["state"], "serving");
    assert_eq!(s["items"][0]["protocol_factory"], "HttpProtocol");
    assert_eq!(s["items"][0]["accepted"], 9);
    assert_eq!(s["items"][0]["created_unix_ms"], 4_000);
    assert_eq!(s["items"][1]["kind"], "unix");
    assert_eq!(s["items"][1]["refused"], 2);
    assert_eq!(s["items"][1]["tls"], true);
    assert_eq!(s["items"][1]["state"], "closed");
    let paged = get_json(addr, &format!("/api/v1/loops/{id}/servers?offset=1&limit=1"));
    assert_eq!((paged["total"].as_u64(), paged["items"].as_array().map(Vec::len)), (Some(2), Some(1)));
    assert_eq!(paged["items"][0]["id"], 2);

    let by_total = get_json(addr, &format!("/api/v1/loops/{id}/callback-sites"));
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|s| s["qualname"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&by_total), ["b", "c", "a"]);
    assert_eq!(names(&get_json(addr, &format!("/api/v1/loops/{id}/callback-sites?sort=count"))), ["a", "c", "b"]);
    assert_eq!(names(&get_json(addr, &format!("/api/v1/loops/{id}/callback-sites?sort=max&limit=1"))), ["b"]);
    assert_eq!(get(addr, &format!("/api/v1/loops/{id}/callback-sites?sort=fastest")).status, 400);

    let slow = get_json(addr, &format!("/api/v1/loops/{id}/slow-callbacks"));
    assert_eq!(slow["total"], 2);
    assert_eq!(slow["items"][0]["unix_ms"], 2, "newest first");
    assert_eq!(slow["items"][0]["traceback"], "tb");
    assert_eq!(slow["items"][1]["task_name"], "Task-4");

    let stalls = get_json(addr, &format!("/api/v1/loops/{id}/stalls"));
    assert_eq!(stalls["total"], 0);
    assert_eq!(get(addr, "/api/v1/loops/77/stalls").status, 404);

    // The detail view counts the tables.
    let d = get_json(addr, &format!("/api/v1/loops/{id}"));
    assert_eq!(d["tables"]["tasks"], 250);
    assert_eq!(d["tables"]["received"], 1);
}

#[test]
fn deep_queries_are_answered_by_the_loop_thread() {
    let (hub, addr) = default_server();
    let fake = FakeLoop::spawn(&hub, "answers", |q| match q.kind().clone() {
        QueryKind::TaskStack { task_id: 7 } => {
            q.answer(QueryReply::TaskStack(Some("Task-7\n  File \"app.py\", line 3, in main".into())))
        }
        QueryKind::TaskStack { .. } => q.answer(QueryReply::TaskStack(None)),
        QueryKind::Tables => {
            q.answer(QueryReply::Tables(Tables { unix_ms: 9, tasks: vec![task(1)], ..Default::default() }))
        }
    });
    let id = fake.id;
    let stack = get_json(addr, &format!("/api/v1/loops/{id}/tasks/7/stack"));
    assert_eq!(stack["task_id"], 7);
    assert!(stack["stack"].as_str().unwrap().contains("app.py"));
    let missing = get(addr, &format!("/api/v1/loops/{id}/tasks/8/stack"));
    assert_eq!(missing.status, 404);
    assert_eq!(get(addr, &format!("/api/v1/loops/{id}/tasks/x/stack")).status, 400);

    // No tables published yet: the hub asks the loop, then keeps the answer.
    let tasks = get_json(addr, &format!("/api/v1/loops/{id}/tasks"));
    assert_eq!(tasks["total"], 1);
    assert_eq!(tasks["tables_unix_ms"], 9);
    let d = get_json(addr, &format!("/api/v1/loops/{id}"));
    assert_eq!(d["tables"]["unix_ms"], 9);
    assert_eq!(get_json(addr, &format!("/api/v1/loops/{id}/tasks?fresh=true"))["total"], 1);
}

#[test]
fn a_loop_that_never_drains_gets_loop_busy_within_the_deadline() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("stuck"));
    let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = std::sync::Arc::clone(&woken);
    h.set_waker(Box::new(move || {
        w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    let start = Instant::now();
    let r = get(addr, &format!("/api/v1/loops/{}/tasks/1/stack", h.id()));
    let took = start.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "loop busy");
    assert_eq!(body["loop_id"], h.id());
    assert!(body["waited_ms"].as_u64().unwrap() >= 240, "{body}");
    assert!(took >= Duration::from_millis(240) && took < Duration::from_secs(2), "{took:?}");
    assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1, "the loop was woken");
    // The query is still queued for the loop (it may answer late; nobody waits).
    assert!(h.has_queries());
    assert_eq!(h.take_queries().len(), 1);
    assert!(!h.has_queries());
}

#[test]
fn a_closed_loop_stays_listed_and_refuses_queries() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("closing"));
    publish(&hub, &h, 1, 1, &[1_000]);
    let id = h.id();
    drop(h);
    let d = eventually(Duration::from_secs(2), "loop marked closed", || {
        let d = get_json(addr, &format!("/api/v1/loops/{id}"));
        (d["loop"]["closed"] == true).then_some(d)
    });
    assert!(d["loop"]["closed_unix_ms"].as_u64().is_some());
    assert_eq!(d["since_start"]["callbacks"], 1, "its numbers are kept");
    let r = get(addr, &format!("/api/v1/loops/{id}/tasks/1/stack"));
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["error"], "loop closed");
}

#[test]
fn dropped_samples_are_counted_and_shown() {
    let (hub, addr) = server(HubConfig { sample_queue: 1, ..Default::default() }, Default::default());
    let h = hub.register_loop(info("dropper"));
    let sent = (1..=300u64)
        .filter(|&seq| {
            let mut s = sample(&[]);
            s.seq = seq;
            h.publish_sample(s)
        })
        .count() as u64;
    hub.pump();
    let dropped = h.samples_dropped();
    assert_eq!(sent + dropped, 300);
    assert!(dropped > 0, "a one-slot queue cannot keep up with a tight loop");
    let list = get_json(addr, "/api/v1/loops");
    let l = &list["loops"][0];
    assert_eq!(l["samples_dropped"], dropped);
    assert_eq!(l["samples_received"], sent);
    // Every drop shows up as a gap in seq, unless it was the newest sample.
    assert!(l["samples_missing"].as_u64().unwrap() <= dropped);
}
