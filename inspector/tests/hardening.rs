//! The sidecar is safe to leave running: token off loopback, read-only, bounded
//! requests, clear start-up errors, many clients at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use inspector::{Config, Error, Hub, HubConfig};

#[test]
fn a_non_loopback_address_needs_a_token() {
    // Checked before binding: nothing listens on 0.0.0.0 here.
    let err =
        inspector::start(Hub::new(HubConfig::default()), Config { address: "0.0.0.0:0".into(), ..Config::default() })
            .unwrap_err();
    assert!(matches!(err, Error::TokenRequired { .. }), "{err}");
    let with_token = Config { address: "0.0.0.0:0".into(), token: Some("t0k3n".into()), ..Config::default() };
    assert!(with_token.validate().is_ok());
    assert!(Config { address: "[::1]:0".into(), ..Config::default() }.validate().is_ok());
}

#[test]
fn the_token_is_enforced_when_set() {
    let token = "correct-horse-battery-staple";
    let (hub, addr) = server(HubConfig::default(), Config { token: Some(token.into()), ..Config::default() });
    let _l = hub.register_loop(info("secret"));
    for path in ["/api/v1/loops", "/metrics", "/", "/api/v1/stream"] {
        let r = get(addr, path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["error"], "unauthorized");
    }
    let wrong = request(addr, "GET", "/api/v1/loops", &["Authorization: Bearer correct-horse-battery-stapl"]);
    assert_eq!(wrong.status, 401);
    let basic = request(addr, "GET", "/api/v1/loops", &["Authorization: Basic Zm9vOmJhcg=="]);
    assert_eq!(basic.status, 401);
    let ok = request(addr, "GET", "/api/v1/loops", &[&format!("Authorization: Bearer {token}")]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["loops"].as_array().unwrap().len(), 1);
    let lower = request(addr, "GET", "/metrics", &[&format!("authorization: bearer {token}")]);
    assert_eq!(lower.status, 200);
    assert_eq!(get(addr, &format!("/api/v1/loops?token={token}")).status, 200);
    assert_eq!(get(addr, &format!("/?token={token}")).status, 200);
    assert_eq!(get(addr, "/api/v1/loops?token=nope").status, 401);
    assert_eq!(get(addr, "/healthz").status, 200, "health checks need no token");
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = inspector::start(
        Hub::new(HubConfig::default()),
        Config { address: format!("127.0.0.1:{port}"), ..Config::default() },
    )
    .unwrap_err();
    assert!(matches!(err, Error::AddressInUse { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");
    let bad = inspector::start(
        Hub::new(HubConfig::default()),
        Config { address: "nowhere:http:x".into(), ..Config::default() },
    );
    assert!(matches!(bad, Err(Error::InvalidAddress { .. })));
}

#[test]
fn serve_is_idempotent() {
    let first = inspector::serve(Config { address: "127.0.0.1:0".into(), ..Config::default() }).unwrap();
    let second = inspector::serve(Config { address: "127.0.0.1:1".into(), ..Config::default() }).unwrap();
    assert_eq!(first, second, "the running server is returned");
    assert_ne!(first.address.port(), 0, "the real port is reported");
    assert!(first.url.ends_with(&format!(":{}/", first.address.port())));
    let h = Hub::global().register_loop(info("global"));
    let loops = get_json(first.address, "/api/v1/loops");
    assert!(loops["loops"].as_array().unwrap().iter().any(|l| l["info"]["id"] == h.id()));
}

#[test]
fn read_only_and_bounded_requests() {
    let (_hub, addr) = default_server();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = request(addr, method, "/api/v1/loops", &["Content-Length: 0"]);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert_eq!(r.json()["error"], "method not allowed");
    }
    let head = request(addr, "HEAD", "/api/v1/loops", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let with_body =
        raw(addr, b"GET /api/v1/loops HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(with_body.status, 413);
    let chunked = raw(
        addr,
        b"GET /api/v1/loops HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 413);

    let long_uri = format!("/api/v1/loops?x={}", "a".repeat(5_000));
    assert_eq!(get(addr, &long_uri).status, 414);
    let huge_header = format!("X-Junk: {}", "b".repeat(20_000));
    assert_eq!(request(addr, "GET", "/api/v1/loops", &[&huge_header]).status, 431);
    let many: Vec<String> = (0..100).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(request(addr, "GET", "/healthz", &many).status, 431);

    // No CORS: a page from another origin gets nothing it may read.
    let cors = request(addr, "GET", "/api/v1/loops", &["Origin: http://evil.example"]);
    assert_eq!(cors.status, 200);
    assert!(cors.header("access-control-allow-origin").is_none());
    assert_eq!(cors.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(cors.header("cache-control"), Some("no-store"));

    let not_found = get(addr, "/api/v1/nothing-here");
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["error"], "not found");
    for hostile in [
        "/api/v1/loops/-1",
        "/api/v1/loops/18446744073709551616",
        "/api/v1/loops/1%00",
        "/api/v1/loops/1/samples?since=-3",
        "/api/v1/loops/1/samples?limit=1e9",
        "/api/v1/stalls?limit=%ff%fe",
        "/api/v1/stalls?ongoing=maybe",
    ] {
        let r = get(addr, hostile);
        assert_eq!(r.status, 400, "{hostile}: {}", r.text());
        assert_eq!(r.json()["error"], "bad request");
    }
    assert_eq!(get(addr, "/api/v1/stalls?limit=99999999999999999999999999").status, 200);
    // Garbage that is not even HTTP: the connection is closed, the server lives on.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut sink);
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn a_client_that_never_finishes_its_headers_is_dropped() {
    let (_hub, addr) =
        server(HubConfig::default(), Config { header_read_timeout: Duration::from_millis(300), ..Config::default() });
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/v1/loops HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(start.elapsed() < Duration::from_secs(3), "closed by the header timeout");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[test]
fn a_hundred_concurrent_clients_are_served() {
    let (hub, addr) = default_server();
    let h = hub.register_loop(info("busy"));
    publish(&hub, &h, 1, 5, &[1_000, 2_000]);
    let start = Arc::new(std::sync::Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                // All connect first, then all ask at once.
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                start.wait();
                let path = if i % 2 == 0 { "/api/v1/loops" } else { "/metrics" };
                write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                parse(&buf).status
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}

#[test]
fn the_dashboard_is_served_with_a_strict_content_security_policy() {
    let (_hub, addr) = default_server();
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'self'") && !csp.contains("script-src 'unsafe-inline'"), "{csp}");
    // The page's script: the built dashboard (web-ui/dist, when it was built before
    // this crate) or the placeholder, which lists loops through the API.
    let html = page.text();
    let script = html
        .split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|src| src.ends_with(".js"))
        .expect("the page loads a script")
        .trim_start_matches("./")
        .trim_start_matches('/')
        .to_string();
    let js = get(addr, &format!("/{script}"));
    assert_eq!(js.status, 200, "{script}");
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));
    assert!(js.text().contains("api/v1/loops"), "{script} does not use the API");
    assert_eq!(get(addr, "/nope.css").status, 404);
}
