//! `loadgen`: a closed-loop echo load generator.
//!
//! ```text
//! loadgen (--addr HOST:PORT | --unix PATH | --udp HOST:PORT) --conns C --size BYTES
//!         --duration S --warmup S [--pin-cpu N] [--server-pid PID] [--timeout S]
//!         [--udp-timeout MS] [--tls [--tls-name NAME]] [--json]
//! ```
//!
//! C connections (UDP: C connected sockets), each sends one message of BYTES, waits
//! for the whole echo, checks every byte, and sends the next. Requests completed
//! during the measured interval (after the warm-up) give requests/s; their round-trip
//! times go into an HDR histogram (p50/p99/p99.9). Reports its own CPU time
//! (getrusage) and, with `--server-pid`, the server's (from /proc/PID/stat) over the
//! same interval, so CPU per request can be computed. One JSON line with `--json`.
//! With `--tls` each TCP connection speaks TLS (rustls, see `tls.rs`); the handshake
//! happens during the warm-up, and every message and echo is encrypted.
//!
//! Why one thread on mio rather than a thread per connection: on the 2-core machines
//! this runs on, the server gets one core and the load generator the other. A thread
//! per connection would, at 100 connections, spend that core on context switches and
//! wake-ups (each request is a block/wake pair per thread), and the generator would
//! become the bottleneck long before the server. One edge-triggered epoll loop costs
//! one `epoll_wait` per batch of ready connections plus the unavoidable read and write
//! per request, the least CPU per request we can get, and it is the same shape as the
//! servers under test, so a comparison against the pure-Rust ceiling server shows
//! where the generator itself saturates (its `util` field near 1.0).
//!
//! Exit status: 0 measured with no errors, 3 measured but some requests failed (the
//! JSON says which), 2 bad arguments or no connection could be made.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use loadgen_common::{json_f64, json_str, machine_cpu, pin_cpu, proc_cpu, proc_runq_wait, self_cpu, Args};
use mio::{Events, Interest, Poll, Registry, Token};

mod tls;

const USAGE: &str = "usage: loadgen (--addr HOST:PORT | --unix PATH | --udp HOST:PORT) \
--conns C --size BYTES --duration S --warmup S [--pin-cpu N] [--server-pid PID] \
[--timeout S] [--udp-timeout MS] [--tls [--tls-name NAME]] [--json]";

/// The largest UDP payload over IPv4.
const MAX_UDP: usize = 65_507;
/// Extra random bytes past the message size, so that consecutive messages differ.
const WINDOW: usize = 251;

#[derive(Clone, Debug)]
enum Target {
    Tcp(SocketAddr),
    /// TCP with TLS on top (`--addr` with `--tls`).
    Tls(SocketAddr),
    Unix(PathBuf),
    Udp(SocketAddr),
}

impl Target {
    fn mode(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Tls(_) => "tls",
            Target::Unix(_) => "unix",
            Target::Udp(_) => "udp",
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Tcp(a) | Target::Tls(a) | Target::Udp(a) => a.to_string(),
            Target::Unix(p) => p.display().to_string(),
        }
    }

    fn is_udp(&self) -> bool {
        matches!(self, Target::Udp(_))
    }
}

struct Config {
    target: Target,
    conns: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    pin: Option<usize>,
    server_pid: Option<u32>,
    /// A stream request older than this is an error and its connection is replaced.
    timeout: Duration,
    /// A UDP request older than this is counted lost and the socket sends the next one.
    udp_timeout: Duration,
    /// The TLS client configuration and the server name it sends (SNI), with `--tls`.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    json: bool,
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to nothing"))
}

fn parse_config() -> Result<Config, String> {
    let mut args = Args::from_env();
    let mut target = None;
    let (mut conns, mut size) = (10usize, 1024usize);
    let (mut duration, mut warmup) = (5.0f64, 1.0f64);
    let (mut pin, mut server_pid) = (None, None);
    let (mut timeout, mut udp_timeout_ms) = (2.0f64, 200.0f64);
    let mut json = false;
    let (mut use_tls, mut tls_name) = (false, "localhost".to_string());
    while let Some(flag) = args.next_flag() {
        let (name, inline) = flag?;
        match name.as_str() {
            "addr" => target = Some(Target::Tcp(resolve(&args.value(&name, inline)?)?)),
            "udp" => target = Some(Target::Udp(resolve(&args.value(&name, inline)?)?)),
            "unix" => target = Some(Target::Unix(PathBuf::from(args.value(&name, inline)?))),
            "conns" => conns = args.parsed(&name, inline)?,
            "size" => size = args.parsed(&name, inline)?,
            "duration" => duration = args.parsed(&name, inline)?,
            "warmup" => warmup = args.parsed(&name, inline)?,
            "pin-cpu" => pin = Some(args.parsed(&name, inline)?),
            "server-pid" => server_pid = Some(args.parsed(&name, inline)?),
            "timeout" => timeout = args.parsed(&name, inline)?,
            "udp-timeout" => udp_timeout_ms = args.parsed(&name, inline)?,
            "json" => json = true,
            "tls" => use_tls = true,
            "tls-name" => tls_name = args.value(&name, inline)?,
            "help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option --{other}\n{USAGE}")),
        }
    }
    let mut target = target.ok_or_else(|| format!("one of --addr, --unix, --udp is required\n{USAGE}"))?;
    let tls = if use_tls {
        let Target::Tcp(addr) = target else { return Err("--tls goes with --addr".into()) };
        target = Target::Tls(addr);
        Some((tls::client_config()?, tls_name))
    } else {
        None
    };
    if conns == 0 || size == 0 {
        return Err("--conns and --size must be at least 1".into());
    }
    if target.is_udp() && size > MAX_UDP {
        return Err(format!("--size {size} is larger than the largest UDP datagram ({MAX_UDP})"));
    }
    if !(duration > 0.0) || !(warmup >= 0.0) || !(timeout > 0.0) || !(udp_timeout_ms > 0.0) {
        return Err("--duration and --timeout must be positive, --warmup not negative".into());
    }
    Ok(Config {
        target,
        conns,
        size,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        pin,
        server_pid,
        timeout: Duration::from_secs_f64(timeout),
        udp_timeout: Duration::from_secs_f64(udp_timeout_ms / 1000.0),
        tls,
        json,
    })
}

enum Sock {
    Tcp(mio::net::TcpStream),
    Tls(Box<tls::TlsStream>),
    Unix(mio::net::UnixStream),
    Udp(mio::net::UdpSocket),
}

fn connect_tcp(addr: &SocketAddr) -> io::Result<mio::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(s))
}

impl Sock {
    fn connect(cfg: &Config) -> io::Result<Sock> {
        Ok(match &cfg.target {
            Target::Tcp(addr) => Sock::Tcp(connect_tcp(addr)?),
            Target::Tls(addr) => {
                let (config, name) = cfg.tls.as_ref().expect("a TLS target has a TLS configuration");
                Sock::Tls(Box::new(tls::TlsStream::new(connect_tcp(addr)?, config.clone(), name)?))
            }
            Target::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)?;
                s.set_nonblocking(true)?;
                Sock::Unix(mio::net::UnixStream::from_std(s))
            }
            Target::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().unwrap();
                let s = std::net::UdpSocket::bind(local)?;
                s.connect(addr)?;
                s.set_nonblocking(true)?;
                Sock::Udp(mio::net::UdpSocket::from_std(s))
            }
        })
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Tls(s) => &mut s.tcp,
            Sock::Unix(s) => s,
            Sock::Udp(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Tls(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
            Sock::Udp(s) => s.recv(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Tls(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
            Sock::Udp(s) => s.send(buf),
        }
    }

    /// TLS: encrypted bytes wait for the socket (the plaintext itself was taken).
    fn records_pending(&mut self) -> io::Result<bool> {
        match self {
            Sock::Tls(s) => {
                s.send_records()?;
                Ok(s.records_pending())
            }
            _ => Ok(false),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Sock::Tls(_))
    }
}

/// One connection and its request in flight.
struct Conn {
    sock: Option<Sock>,
    /// Random bytes; request `seq` is `pattern[off..off + size]` with `seq` in its
    /// first 8 bytes, so a stale, duplicated or shifted echo does not match.
    pattern: Vec<u8>,
    off: usize,
    seq: u64,
    sent: usize,
    recvd: usize,
    started: Instant,
    /// Registered for writable events too (a write is pending).
    write_armed: bool,
}

/// A failure on one connection: its kind (a key of `error_kinds`) and a description.
struct Failure(&'static str, String);

impl Failure {
    fn io(kind: &'static str, err: io::Error) -> Failure {
        Failure(kind, err.to_string())
    }
}

struct Stats {
    measuring: bool,
    requests: u64,
    hist: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
    udp_lost: u64,
    udp_late: u64,
}

impl Stats {
    fn error(&mut self, conn: usize, failure: Failure) {
        *self.errors.entry(failure.0).or_insert(0) += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("connection {conn}: {}: {}", failure.0, failure.1));
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

impl Conn {
    fn new(index: usize, size: usize) -> Conn {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let pattern = (0..size + WINDOW).map(|_| xorshift(&mut state) as u8).collect();
        Conn { sock: None, pattern, off: 0, seq: 0, sent: 0, recvd: 0, started: Instant::now(), write_armed: false }
    }

    /// Make the next request: pick its window, stamp its sequence number.
    fn next_request(&mut self, size: usize, now: Instant) {
        self.seq += 1;
        self.off = (self.seq as usize).wrapping_mul(7) % WINDOW;
        let stamp = self.seq.to_le_bytes();
        let n = size.min(8);
        self.pattern[self.off..self.off + n].copy_from_slice(&stamp[..n]);
        self.sent = 0;
        self.recvd = 0;
        self.started = now;
    }

    /// Write what is left of the request until done or the socket is full. Writable
    /// events are asked for only while a write is pending: Unix sockets announce
    /// write space every time the peer reads, and each such event would cost a wake-up.
    fn flush(&mut self, size: usize, registry: &Registry, token: Token) -> Result<(), Failure> {
        let Some(sock) = self.sock.as_mut() else { return Ok(()) };
        while self.sent < size {
            match sock.write(&self.pattern[self.off + self.sent..self.off + size]) {
                Ok(0) => return Err(Failure("write", "write returned 0".into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A connected UDP socket reports an earlier ICMP error here.
                Err(e) => return Err(Failure::io("write", e)),
            }
        }
        let want_write = self.sent < size || sock.records_pending().map_err(|e| Failure::io("write", e))?;
        if want_write != self.write_armed {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(sock.source(), token, interest).map_err(|e| Failure::io("write", e))?;
            self.write_armed = want_write;
        }
        Ok(())
    }

    /// Read what is available, checking each byte; a completed echo is recorded and
    /// the next request is sent at once.
    ///
    /// Edge-triggered, yet without the usual read-until-EAGAIN: that last read fails
    /// on nearly every request and would be a third of the generator's syscalls. A
    /// stream read shorter than asked for has emptied the socket, and once the echo is
    /// complete nothing more is due until the next request's echo, whose arrival is a
    /// new edge (epoll reports each arrival of data, not only empty -> non-empty).
    fn drive(&mut self, cfg: &Config, scratch: &mut [u8], stats: &mut Stats, registry: &Registry,
             token: Token) -> Result<(), Failure> {
        let size = cfg.size;
        let udp = cfg.target.is_udp();
        self.flush(size, registry, token)?;
        loop {
            let Some(sock) = self.sock.as_mut() else { return Ok(()) };
            let want = if udp { scratch.len() } else { (size - self.recvd).min(scratch.len()) };
            let n = match sock.read(&mut scratch[..want]) {
                Ok(0) if !udp => return Err(Failure("eof", format!(
                    "server closed the connection after {} of {} bytes of request {}",
                    self.recvd, size, self.seq))),
                Ok(n) => n,
                // TLS: reading may have queued handshake records; they need sending.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && sock.is_tls() => {
                    return self.flush(size, registry, token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::io(if sock.is_tls() { "tls" } else { "read" }, e)),
            };
            let expected = &self.pattern[self.off + self.recvd..self.off + size];
            if udp {
                let stamp = self.seq.to_le_bytes();
                let head = size.min(8);
                if n >= head && scratch[..head] != stamp[..head] && n == size {
                    // An echo of a request already counted lost; the current one may follow.
                    stats.udp_late += 1;
                    continue;
                }
                if n != size || scratch[..n] != *expected {
                    return Err(Failure("mismatch", format!(
                        "datagram of {n} bytes does not match request {} ({size} bytes)", self.seq)));
                }
            } else if scratch[..n] != expected[..n] {
                let at = scratch[..n].iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
                return Err(Failure("mismatch", format!(
                    "byte {} of request {} ({size} bytes) differs: got {:#04x}, expected {:#04x}",
                    self.recvd + at, self.seq, scratch[at], expected[at])));
            }
            self.recvd += n;
            if self.recvd == size {
                let now = Instant::now();
                if stats.measuring {
                    stats.requests += 1;
                    stats.hist.saturating_record((now - self.started).as_nanos() as u64);
                }
                self.next_request(size, now);
                return self.flush(size, registry, token);
            }
            if n < want && !self.sock.as_ref().is_some_and(Sock::is_tls) {
                return Ok(()); // drained; more data comes with a new event
            }
        }
    }
}

struct Generator {
    cfg: Config,
    poll: Poll,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    stats: Stats,
}

impl Generator {
    /// (Re)connect connection `i` and send its first request.
    fn open(&mut self, i: usize) -> Result<(), Failure> {
        let mut sock = Sock::connect(&self.cfg).map_err(|e| Failure::io("connect", e))?;
        self.poll
            .registry()
            .register(sock.source(), Token(i), Interest::READABLE)
            .map_err(|e| Failure::io("connect", e))?;
        let conn = &mut self.conns[i];
        conn.sock = Some(sock);
        conn.write_armed = false;
        conn.next_request(self.cfg.size, Instant::now());
        conn.flush(self.cfg.size, self.poll.registry(), Token(i))
    }

    fn close(&mut self, i: usize) {
        if let Some(mut sock) = self.conns[i].sock.take() {
            let _ = self.poll.registry().deregister(sock.source());
        }
    }

    fn fail(&mut self, i: usize, failure: Failure) {
        self.stats.error(i, failure);
        if self.cfg.target.is_udp() {
            // The socket is still usable (e.g. an ICMP error from a restarting server).
            // If this send fails too, housekeeping tries again after --udp-timeout.
            self.conns[i].next_request(self.cfg.size, Instant::now());
            let _ = self.conns[i].flush(self.cfg.size, self.poll.registry(), Token(i));
        } else {
            // A stream whose bytes went wrong cannot be resynchronized: replace it.
            self.close(i);
        }
    }

    fn drive(&mut self, i: usize) {
        let result = self.conns[i].drive(&self.cfg, &mut self.scratch, &mut self.stats,
                                         self.poll.registry(), Token(i));
        if let Err(failure) = result {
            self.fail(i, failure);
        }
    }

    /// Lost datagrams, stuck stream requests, and connections to reopen.
    fn housekeeping(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            if self.conns[i].sock.is_none() {
                if let Err(failure) = self.open(i) {
                    self.stats.error(i, failure);
                    self.close(i);
                }
                continue;
            }
            let age = now.saturating_duration_since(self.conns[i].started);
            if self.cfg.target.is_udp() {
                if age > self.cfg.udp_timeout {
                    self.stats.udp_lost += 1;
                    self.conns[i].next_request(self.cfg.size, now);
                    self.drive(i);
                }
            } else if age > self.cfg.timeout {
                let c = &self.conns[i];
                let msg = format!("request {} got {} of {} echoed bytes ({} sent) in {:.1} s",
                                  c.seq, c.recvd, self.cfg.size, c.sent, age.as_secs_f64());
                self.fail(i, Failure("timeout", msg));
            }
        }
    }
}

fn percentiles(hist: &Histogram<u64>) -> String {
    let us = |ns: u64| json_f64(ns as f64 / 1000.0);
    if hist.len() == 0 {
        return "null".to_string();
    }
    format!(
        "{{\"mean\":{},\"min\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        json_f64(hist.mean() / 1000.0),
        us(hist.min()),
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.9)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max()),
    )
}

fn run(cfg: Config) -> Result<ExitCode, String> {
    if let Some(cpu) = cfg.pin {
        pin_cpu(cpu).map_err(|e| format!("--pin-cpu {cpu}: {e}"))?;
    }
    let n = cfg.conns;
    let mut gen = Generator {
        poll: Poll::new().map_err(|e| e.to_string())?,
        conns: (0..n).map(|i| Conn::new(i, cfg.size)).collect(),
        scratch: vec![0u8; if cfg.target.is_udp() { 1 << 16 } else { cfg.size.min(1 << 18) }],
        stats: Stats {
            measuring: false,
            requests: 0,
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).unwrap(),
            errors: BTreeMap::new(),
            first_error: None,
            udp_lost: 0,
            udp_late: 0,
        },
        cfg,
    };
    for i in 0..n {
        if let Err(failure) = gen.open(i) {
            return Err(format!("connection {i} of {n} to {}: {}: {}",
                               gen.cfg.target.describe(), failure.0, failure.1));
        }
    }

    let mut events = Events::with_capacity(1024);
    let begin = Instant::now();
    let measure_from = begin + gen.cfg.warmup;
    let mut measure_until = measure_from + gen.cfg.duration;
    let mut started = None; // (instant, own cpu, server cpu, machine cpu, run-queue waits)
    let mut warmup_requests = 0u64;
    let runq = |pid: Option<u32>| -> (Option<f64>, Option<f64>) {
        (proc_runq_wait(std::process::id()).ok(), pid.and_then(|p| proc_runq_wait(p).ok()))
    };
    let tick = Duration::from_millis(20);
    let mut next_tick = begin + tick;
    let server_cpu = |pid: Option<u32>| pid.and_then(|p| proc_cpu(p).ok());
    loop {
        let now = Instant::now();
        if started.is_none() && now >= measure_from {
            gen.stats.measuring = true;
            gen.stats.hist.reset();
            measure_until = now + gen.cfg.duration;
            warmup_requests = gen.conns.iter().map(|c| c.seq.saturating_sub(1)).sum();
            started = Some((now, self_cpu(), server_cpu(gen.cfg.server_pid), machine_cpu().ok(),
                            runq(gen.cfg.server_pid)));
        }
        if now >= measure_until && started.is_some() {
            break;
        }
        if now >= next_tick {
            gen.housekeeping(now);
            next_tick = now + tick;
        }
        let deadline = if started.is_none() { measure_from } else { measure_until }.min(next_tick);
        gen.poll
            .poll(&mut events, Some(deadline.saturating_duration_since(now)))
            .or_else(|e| if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e.to_string()) })?;
        for event in events.iter() {
            gen.drive(event.token().0);
        }
    }
    let end = Instant::now();
    let own_end = self_cpu();
    let server_end = server_cpu(gen.cfg.server_pid);
    let machine_end = machine_cpu().ok();
    let runq_end = runq(gen.cfg.server_pid);
    let (t0, own0, server0, machine0, runq0) = started.unwrap();
    let waited = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json_f64(b - a),
        _ => "null".to_string(),
    };
    let own_wait = waited(runq0.0, runq_end.0);
    let server_wait = waited(runq0.1, runq_end.1);
    let elapsed = (end - t0).as_secs_f64();
    // A request still waiting at the end for longer than 1 s and than twice the slowest
    // completed one: the server stopped serving that connection (the --timeout check
    // catches this during long runs; this catches it in short ones).
    let stall_after = Duration::from_secs(1).max(Duration::from_nanos(2 * gen.stats.hist.max()));
    let stalled = gen
        .conns
        .iter()
        .filter(|c| c.sock.is_some() && end.saturating_duration_since(c.started) > stall_after)
        .count();

    let cfg = &gen.cfg;
    let stats = &gen.stats;
    let rps = stats.requests as f64 / elapsed;
    let errors: u64 = stats.errors.values().sum();
    let (own_user, own_sys) = (own_end.0 - own0.0, own_end.1 - own0.1);
    let server = match (cfg.server_pid, server0, server_end) {
        (Some(pid), Some(a), Some(b)) => {
            let (user, sys) = (b.0 - a.0, b.1 - a.1);
            let per_req = if stats.requests > 0 { (user + sys) / stats.requests as f64 * 1e6 } else { f64::NAN };
            format!(
                "{{\"pid\":{pid},\"user_s\":{},\"sys_s\":{},\"cpu_s\":{},\"util\":{},\"cpu_us_per_req\":{},\
                 \"runq_wait_s\":{server_wait}}}",
                json_f64(user), json_f64(sys), json_f64(user + sys),
                json_f64((user + sys) / elapsed), json_f64(per_req)
            )
        }
        (Some(pid), _, _) => format!("{{\"pid\":{pid},\"error\":\"cannot read /proc/{pid}/stat\"}}"),
        _ => "null".to_string(),
    };
    // How busy the rest of the machine was: CPUs used by everything but the load
    // generator and the server (neighbours, the kernel's own threads), and stolen.
    let machine = match (machine0, machine_end) {
        (Some(a), Some(b)) => {
            let busy = b.0 - a.0;
            let server_used = match (server0, server_end) {
                (Some(x), Some(y)) => (y.0 + y.1) - (x.0 + x.1),
                _ => 0.0,
            };
            let others = (busy - own_user - own_sys - server_used).max(0.0);
            format!("{{\"busy_cpus\":{},\"other_cpus\":{},\"steal_cpus\":{}}}",
                    json_f64(busy / elapsed), json_f64(others / elapsed), json_f64((b.1 - a.1) / elapsed))
        }
        _ => "null".to_string(),
    };
    let kinds = stats
        .errors
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect::<Vec<_>>()
        .join(",");
    let hist = &stats.hist;
    if cfg.json {
        println!(
            "{{\"tool\":\"loadgen\",\"mode\":\"{}\",\"target\":{},\"conns\":{},\"size\":{},\
             \"warmup_s\":{},\"warmup_requests\":{warmup_requests},\"duration_s\":{},\"requests\":{},\"rps\":{},\"throughput_mib_s\":{},\
             \"latency_us\":{},\"errors\":{errors},\"error_kinds\":{{{kinds}}},\"first_error\":{},\
             \"stalled\":{stalled},\"udp_lost\":{},\"udp_late\":{},\
             \"loadgen_cpu\":{{\"user_s\":{},\"sys_s\":{},\"util\":{},\"runq_wait_s\":{own_wait}}},\"pinned_cpu\":{},\"server\":{server},\"machine\":{machine}}}",
            cfg.target.mode(),
            json_str(&cfg.target.describe()),
            cfg.conns,
            cfg.size,
            json_f64(cfg.warmup.as_secs_f64()),
            json_f64(elapsed),
            stats.requests,
            json_f64(rps),
            json_f64(rps * cfg.size as f64 / (1024.0 * 1024.0)),
            percentiles(hist),
            stats.first_error.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
            stats.udp_lost,
            stats.udp_late,
            json_f64(own_user),
            json_f64(own_sys),
            json_f64((own_user + own_sys) / elapsed),
            cfg.pin.map(|c| c.to_string()).unwrap_or_else(|| "null".into()),
        );
    } else {
        let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
        println!("{} {} conns={} size={} B: {:.0} req/s over {:.2} s ({} requests)",
                 cfg.target.mode(), cfg.target.describe(), cfg.conns, cfg.size, rps, elapsed, stats.requests);
        if hist.len() > 0 {
            println!("latency µs: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                     q(0.5), q(0.99), q(0.999), hist.max() as f64 / 1000.0);
        }
        println!("loadgen CPU: {:.0}% ({:.2} s user, {:.2} s sys)",
                 100.0 * (own_user + own_sys) / elapsed, own_user, own_sys);
        if server != "null" {
            println!("server: {server}");
        }
        println!("machine: {machine}");
        println!("errors: {errors} {{{kinds}}}{}", stats.first_error.as_deref()
            .map(|e| format!(", first: {e}")).unwrap_or_default());
        if cfg.target.is_udp() {
            println!("udp lost: {}, late echoes: {}", stats.udp_lost, stats.udp_late);
        }
        if stalled > 0 {
            println!("stalled: {stalled} connection(s) waited more than {:.1} s at the end",
                     stall_after.as_secs_f64());
        }
    }
    Ok(ExitCode::from(if errors > 0 || stats.requests == 0 { 3 } else { 0 }))
}

fn main() -> ExitCode {
    let result = parse_config().and_then(run);
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}
