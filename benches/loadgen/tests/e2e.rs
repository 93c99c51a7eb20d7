//! The load generator against the ceiling server (no errors, sane numbers) and
//! against deliberately broken servers (each fault reported under its own kind).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const CEILING: &str = env!("CARGO_BIN_EXE_echo-ceiling");

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ceiling(args: &[&str]) -> Server {
    let mut child = Command::new(CEILING).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    Server(child, line.trim().to_string())
}

/// Run loadgen; return (exit code, its JSON line).
fn loadgen(args: &[&str]) -> (i32, String) {
    let out = Command::new(LOADGEN)
        .args(args)
        .args(["--duration", "0.4", "--warmup", "0.1", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout.trim().to_string())
}

/// The number after `"key":` in a flat JSON text (enough for these checks).
fn number(json: &str, key: &str) -> f64 {
    let at = json.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn tcp_against_ceiling() {
    let server = ceiling(&["--addr", "127.0.0.1:0"]);
    let pid = server.0.id().to_string();
    for size in ["1", "100", "65536", "300000"] {
        let (code, json) = loadgen(&["--addr", &server.1, "--conns", "4", "--size", size,
                                     "--server-pid", &pid]);
        assert_eq!(code, 0, "{json}");
        assert!(number(&json, "requests") > 10.0, "{json}");
        assert_eq!(number(&json, "errors"), 0.0);
        assert!(json.contains("\"server\":{\"pid\""), "{json}");
        assert!(json.contains("\"p99\":"), "{json}");
    }
}

#[test]
fn unix_and_udp_against_ceiling() {
    let path = std::env::temp_dir().join(format!("loadgen-e2e-{}.sock", std::process::id()));
    let path = path.to_str().unwrap();
    let server = ceiling(&["--unix", path]);
    let (code, json) = loadgen(&["--unix", &server.1, "--conns", "3", "--size", "70000"]);
    assert_eq!(code, 0, "{json}");
    drop(server);
    let _ = std::fs::remove_file(path);

    let server = ceiling(&["--udp", "127.0.0.1:0"]);
    let (code, json) = loadgen(&["--udp", &server.1, "--conns", "3", "--size", "65507"]);
    assert_eq!(code, 0, "{json}");
    assert!(number(&json, "requests") > 10.0, "{json}");
}

/// A TCP server that applies `fault` to each chunk it echoes (None: close).
fn faulty_tcp(fault: fn(&mut Vec<u8>, u64) -> Option<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let mut count = 0u64;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    count += 1;
                    let mut chunk = buf[..n].to_vec();
                    if fault(&mut chunk, count).is_none() {
                        return;
                    }
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn reports_corrupted_bytes() {
    let addr = faulty_tcp(|chunk, count| {
        if count % 50 == 0 {
            let last = chunk.len() - 1;
            chunk[last] ^= 0xff;
        }
        Some(())
    });
    let (code, json) = loadgen(&["--addr", &addr, "--conns", "2", "--size", "100"]);
    assert_eq!(code, 3, "{json}");
    assert!(json.contains("\"mismatch\":"), "{json}");
    assert!(json.contains("byte 99 of request"), "{json}");
}

#[test]
fn reports_duplicated_echo() {
    // Echoing the first chunk twice shifts the stream: the next request sees old bytes.
    let addr = faulty_tcp(|chunk, count| {
        if count == 3 {
            let copy = chunk.clone();
            chunk.extend_from_slice(&copy);
        }
        Some(())
    });
    let (code, json) = loadgen(&["--addr", &addr, "--conns", "1", "--size", "64"]);
    assert_eq!(code, 3, "{json}");
    assert!(json.contains("\"mismatch\":"), "{json}");
}

#[test]
fn reports_closed_connections() {
    let addr = faulty_tcp(|_, count| if count == 20 { None } else { Some(()) });
    let (code, json) = loadgen(&["--addr", &addr, "--conns", "2", "--size", "10"]);
    assert_eq!(code, 3, "{json}");
    assert!(json.contains("\"eof\":"), "{json}");
    // Connections were reopened and kept going.
    assert!(number(&json, "requests") > 20.0, "{json}");
}

#[test]
fn reports_a_stall() {
    let addr = faulty_tcp(|_, count| {
        if count == 5 {
            thread::sleep(Duration::from_secs(30));
        }
        Some(())
    });
    let out = Command::new(LOADGEN)
        .args(["--addr", &addr, "--conns", "1", "--size", "10", "--duration", "1.5",
               "--warmup", "0", "--timeout", "0.5", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{json}");
    assert!(json.contains("\"timeout\":"), "{json}");
}

#[test]
fn counts_lost_datagrams() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut count = 0u64;
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            count += 1;
            if count % 10 != 0 {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    });
    let (code, json) = loadgen(&["--udp", &addr, "--conns", "2", "--size", "100", "--udp-timeout", "20"]);
    assert_eq!(code, 0, "{json}");
    assert!(number(&json, "udp_lost") > 0.0, "{json}");
}

#[test]
fn refuses_bad_arguments() {
    let out = Command::new(LOADGEN).args(["--conns", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(LOADGEN).args(["--udp", "127.0.0.1:9", "--size", "70000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(LOADGEN).args(["--unix", "/tmp/x.sock", "--tls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--tls` against the Python TLS echo server (benches/servers/tls_echo.py) on
/// asyncio's loop; `$PYTHON` (default `python3`) runs it.
#[test]
fn tls_against_python_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../servers/tls_echo.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut child = Command::new(&python)
        .args([script, "--loop", "asyncio:new_event_loop"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child, line.trim().to_string());
    assert!(!server.1.is_empty(), "tls_echo.py printed no address");
    for size in ["100", "65536", "300000"] {
        let (code, json) = loadgen(&["--addr", &server.1, "--tls", "--conns", "3", "--size", size]);
        assert_eq!(code, 0, "{json}");
        assert!(json.contains("\"mode\":\"tls\""), "{json}");
        assert!(number(&json, "requests") > 3.0, "{json}");
        assert_eq!(number(&json, "errors"), 0.0);
    }
}

/// A server that does not speak TLS (the plain echo sends the ClientHello back) is
/// reported as TLS errors.
#[test]
fn tls_reports_a_server_without_tls() {
    let server = ceiling(&["--addr", "127.0.0.1:0"]);
    let (code, json) = loadgen(&["--addr", &server.1, "--tls", "--conns", "2", "--size", "100"]);
    assert_eq!(code, 3, "{json}");
    assert!(json.contains("\"tls\":"), "{json}");
}
