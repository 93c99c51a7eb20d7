//! What happens while it happens: the SSE stream and the stall watchdog.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use inspector::clock::monotonic_ns;
use inspector::{CallbackSite, Config, HubConfig, Tables};
use serde_json::Value;

#[test]
fn the_stream_pushes_samples_and_honours_the_loop_filter() {
    let (hub, addr) = default_server();
    let a = hub.register_loop(info("a"));
    let b = hub.register_loop(info("b"));
    hub.pump();
    let mut all = Sse::open(addr, "/api/v1/stream");
    let mut only_b = Sse::open(addr, &format!("/api/v1/stream?loop={}", b.id()));
    let (name, hello) = all.next_event();
    assert_eq!(name, "hello");
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello["loops"].as_array().unwrap().len(), 2);
    assert_eq!(only_b.next_event().0, "hello");

    // Published by the loops; pushed by the server on its own (no pump here).
    let mut s = sample(&[1_000, 2_000]);
    s.seq = 1;
    assert!(a.publish_sample(s));
    let mut s = sample(&[3_000]);
    s.seq = 1;
    assert!(b.publish_sample(s));

    let mut got = Vec::new();
    while got.len() < 2 {
        let (name, data) = all.next_event();
        if name == "sample" {
            got.push(serde_json::from_str::<Value>(&data).unwrap());
        }
    }
    let ids: Vec<u64> = got.iter().map(|s| s["loop_id"].as_u64().unwrap()).collect();
    assert!(ids.contains(&a.id()) && ids.contains(&b.id()));
    let from_a = got.iter().find(|s| s["loop_id"] == a.id()).unwrap();
    assert_eq!(from_a["histograms"]["callback_duration"]["count"], 2);

    let (name, data) = only_b.next_event();
    assert_eq!(name, "sample");
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["loop_id"], b.id());

    assert_eq!(get(addr, "/api/v1/stream?loop=999").status, 404);
    assert_eq!(get(addr, "/api/v1/stream?loop=x").status, 400);
    assert_eq!(get_json(addr, "/api/v1")["stream"]["clients"], 2);
}

#[test]
fn stream_clients_are_limited() {
    let (_hub, addr) = server(HubConfig::default(), Config { max_stream_clients: 2, ..Config::default() });
    let _one = Sse::open(addr, "/api/v1/stream");
    let _two = Sse::open(addr, "/api/v1/stream");
    let third = get(addr, "/api/v1/stream");
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["error"], "too many stream clients");
    drop(_one);
    eventually(Duration::from_secs(5), "a slot frees when a client leaves", || {
        (get_json(addr, "/api/v1")["stream"]["clients"] == 1).then_some(())
    });
    let _again = Sse::open(addr, "/api/v1/stream");
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let config = Config { stream_buffer: 256, write_stall_timeout: Duration::from_secs(1), ..Config::default() };
    let (hub, addr) = server(HubConfig { sample_queue: 64, ..Default::default() }, config);
    let h = hub.register_loop(info("firehose"));
    hub.pump();
    // Opens the stream, reads the head, then never reads again.
    let mut slow = Sse::open(addr, "/api/v1/stream");
    assert_eq!(slow.next_event().0, "hello");
    // Reads everything, as a dashboard would.
    let mut fast = Sse::open(addr, "/api/v1/stream");
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&read);
    // Detached: it reads until the test process ends.
    thread::spawn(move || loop {
        let mut line = String::new();
        match std::io::BufRead::read_line(&mut fast.reader, &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.starts_with("event: sample") => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
    });

    // ~2.5 KB samples, two per millisecond (far faster than loops publish): the
    // reading client keeps up (256 events of slack for scheduling hiccups); the other fills its socket buffers,
    // then its queue, and is cut.
    let mut seq = 0u64;
    let mut max_queued = 0;
    let cut_at = eventually(Duration::from_secs(30), "the slow client is dropped", || {
        for _ in 0..50 {
            seq += 1;
            let mut s = sample(&[1_000, 20_000, 300_000, 4_000_000, 50_000_000]);
            s.seq = seq;
            h.publish_sample(s);
            hub.pump();
            if seq.is_multiple_of(2) {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let index = get_json(addr, "/api/v1");
        let stats = &index["stream"];
        max_queued = max_queued.max(stats["queued"].as_u64().unwrap());
        let cut = stats["clients_cut"].as_u64().unwrap();
        let stalled = index["connections"]["write_stalls"].as_u64().unwrap();
        (cut + stalled >= 1).then_some(seq)
    });
    assert!(cut_at > 512, "dropped for not reading, not for a burst ({cut_at} events)");
    assert!(max_queued <= 512, "queues never exceed clients × buffer ({max_queued})");
    eprintln!("dropped after {cut_at} events");

    // A cut client's connection is then closed too (it cannot take the stream's
    // end either); the reader stays.
    eventually(Duration::from_secs(5), "the slow connection is closed", || {
        (get_json(addr, "/api/v1")["stream"]["clients"] == 1).then_some(())
    });
    let mut sink = Vec::new();
    let mut stream = slow.reader.into_inner();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let _ = stream.read_to_end(&mut sink);
    assert!(started.elapsed() < Duration::from_secs(4), "EOF or reset, not a hang");

    let more = seq + 20;
    while seq < more {
        seq += 1;
        let mut s = sample(&[1_000]);
        s.seq = seq;
        h.publish_sample(s);
        hub.pump();
        thread::sleep(Duration::from_millis(1));
    }
    let index = get_json(addr, "/api/v1");
    assert_eq!(index["stream"]["clients"], 1, "the reading client is still there: {index}");
    assert!(index["stream"]["clients_cut"].as_u64().unwrap() <= 1, "{index}");
    eventually(Duration::from_secs(5), "the reader gets every sample", || {
        (read.load(Ordering::Relaxed) == seq).then_some(())
    });
}

fn stall_test_loop(
    hub: &inspector::Hub,
    capture: impl Fn() -> Option<String> + Send + Sync + 'static,
) -> inspector::LoopHandle {
    let h = hub.register_loop(info("staller"));
    h.publish_tables(Tables {
        callback_sites: vec![CallbackSite {
            id: 77,
            qualname: "handler".into(),
            file: "app.py".into(),
            line: 12,
            ..Default::default()
        }],
        ..Default::default()
    });
    h.set_stack_capture(Box::new(capture));
    hub.pump();
    h
}

#[test]
fn a_stall_is_reported_while_it_lasts_with_the_loop_stack() {
    let (hub, addr) = default_server();
    let captures = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&captures);
    let h = stall_test_loop(&hub, move || {
        c.fetch_add(1, Ordering::Relaxed);
        Some("  File \"app.py\", line 14, in handler\n    time.sleep(0.3)".into())
    });
    let id = h.id();
    let mut events = Sse::open(addr, &format!("/api/v1/stream?loop={id}"));
    assert_eq!(events.next_event().0, "hello");

    let hb = h.heartbeat();
    hb.iteration(1);
    let began = Instant::now();
    hb.begin(monotonic_ns(), 77);

    let stall = eventually(Duration::from_secs(2), "an ongoing stall with its stack", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls"));
        let s = v["stalls"].get(0)?.clone();
        (s["ongoing"] == true && s["stack_status"] == "captured").then_some(s)
    });
    // Seen while the callback still runs: the heartbeat has not moved yet.
    assert_eq!(stall["loop_id"], id);
    assert_eq!(stall["site_id"], 77);
    assert_eq!(stall["site"], "handler (app.py:12)");
    assert!(stall["stack"].as_str().unwrap().contains("time.sleep(0.3)"));
    assert!(stall["duration_ns"].as_u64().unwrap() >= 100_000_000);

    // The stall stays open, its duration growing, until the heartbeat moves.
    thread::sleep(Duration::from_millis(300).saturating_sub(began.elapsed()));
    hb.idle();
    let closed = eventually(Duration::from_secs(2), "the stall closes", || {
        let v = get_json(addr, "/api/v1/stalls");
        let s = v["stalls"].as_array()?.iter().find(|s| s["loop_id"] == id)?.clone();
        (s["ongoing"] == false).then_some(s)
    });
    let ns = closed["duration_ns"].as_u64().unwrap();
    // At least the time it ran; at most one watchdog tick more (generous under load).
    assert!((300_000_000..1_000_000_000).contains(&ns), "{ns}");
    assert_eq!(captures.load(Ordering::Relaxed), 1, "one capture per stall");

    // The stream told the story: opened, stack captured, closed.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|s: &Value| s["ongoing"] == true) {
        let (name, data) = events.next_event();
        if name == "stall" {
            seen.push(serde_json::from_str(&data).unwrap());
        }
    }
    assert_eq!(seen[0]["ongoing"], true);
    assert!(seen.iter().any(|s| s["stack_status"] == "captured"));

    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains(&format!("asyncio_eventloop_stalls_total{{loop=\"{id}\",thread=\"staller-thread\"}} 1\n")),
        "{metrics}"
    );
    // The next sample carries the stall count.
    let mut s = sample(&[]);
    s.seq = 1;
    h.publish_sample(s);
    let d = get_json(addr, &format!("/api/v1/loops/{id}"));
    assert_eq!(d["loop"]["latest"]["stalls"], 1);
    assert_eq!(d["loop"]["stalls_total"], 1);
}

#[test]
fn a_capture_that_hangs_times_out_without_hanging_the_server() {
    let (hub, addr) =
        server(HubConfig { capture_timeout: Duration::from_millis(200), ..Default::default() }, Config::default());
    let h = stall_test_loop(&hub, || {
        thread::sleep(Duration::from_secs(2)); // e.g. waiting for a GIL the stalled callback holds
        Some("late".into())
    });
    let id = h.id();
    let hb = h.heartbeat();
    hb.begin(monotonic_ns(), 77);
    let stall = eventually(Duration::from_secs(2), "the capture times out", || {
        let t = Instant::now();
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls?ongoing=true"));
        assert!(t.elapsed() < Duration::from_millis(500), "the server answers while the capture hangs");
        let s = v["stalls"].get(0)?.clone();
        (s["stack_status"] == "timeout").then_some(s)
    });
    assert_eq!(stall["ongoing"], true);
    assert!(stall["stack"].is_null());
    hb.idle();
    // The late answer belongs to a callback that has returned: discarded, not shown.
    let late = eventually(Duration::from_secs(4), "the late capture is judged", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls"));
        let s = v["stalls"].get(0)?.clone();
        (s["stack_status"] == "stale").then_some(s)
    });
    assert!(late["stack"].is_null());
}

#[test]
fn a_loop_without_a_capture_function_reports_unavailable() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("plain"));
    let hb = h.heartbeat();
    hb.begin(monotonic_ns(), 0);
    let s = eventually(Duration::from_secs(2), "a stall", || {
        get_json(addr, "/api/v1/stalls?ongoing=1")["stalls"].get(0).cloned()
    });
    assert_eq!(s["stack_status"], "unavailable");
    assert!(s["site"].is_null());
    hb.idle();
}

#[test]
fn a_stall_on_a_site_the_loop_just_named_carries_the_name() {
    // The loop names a site as it first meets it, before the site's first callback
    // runs; no tables with it were ever published.
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("fresh"));
    h.set_stack_capture(Box::new(|| Some("stack".into())));
    hub.pump();
    let id = h.id();
    h.name_site(501, "first_time (app.py:3)".into()).unwrap();
    let hb = h.heartbeat();
    hb.iteration(1);
    hb.begin(monotonic_ns(), 501);
    let stall = eventually(Duration::from_secs(2), "an ongoing stall", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls"));
        let s = v["stalls"].get(0)?.clone();
        (s["ongoing"] == true).then_some(s)
    });
    assert_eq!(stall["site_id"], 501);
    assert_eq!(stall["site"], "first_time (app.py:3)");
    hb.idle();

    // A site named only after its stall opened: the watchdog asks again while the
    // stall lasts, and the closed stall carries the name.
    hb.iteration(2);
    hb.begin(monotonic_ns(), 502);
    eventually(Duration::from_secs(2), "a second, unnamed stall", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls?ongoing=true"));
        let s = v["stalls"].get(0)?.clone();
        (s["site_id"] == 502 && s["site"].is_null()).then_some(())
    });
    h.name_site(502, "late (app.py:9)".into()).unwrap();
    let named = eventually(Duration::from_secs(2), "the ongoing stall named", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls?ongoing=true"));
        let s = v["stalls"].get(0)?.clone();
        (s["site"] == "late (app.py:9)").then_some(s)
    });
    assert_eq!(named["site_id"], 502);
    hb.idle();
    let closed = eventually(Duration::from_secs(2), "the second stall closes", || {
        let v = get_json(addr, &format!("/api/v1/loops/{id}/stalls"));
        let s = v["stalls"].as_array()?.iter().find(|s| s["site_id"] == 502)?.clone();
        (s["ongoing"] == false).then_some(s)
    });
    assert_eq!(closed["site"], "late (app.py:9)");
    drop(h);
}
