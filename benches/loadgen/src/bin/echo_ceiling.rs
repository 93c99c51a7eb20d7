//! `echo-ceiling`: the echo server in pure Rust on mio, no Python. The benchmarks'
//! reference ceiling: what one core can echo through the kernel with the least
//! possible work per request, under the same load generator as the Python servers.
//!
//! ```text
//! echo-ceiling [--addr HOST:PORT | --unix PATH | --udp HOST:PORT] [--pin-cpu N]
//! ```
//!
//! Prints the bound address (`HOST:PORT`, or the socket path) on stdout, then serves
//! until killed. One thread, edge-triggered: read up to 256 KiB (asyncio's read size),
//! write it straight back; whatever the kernel does not take waits for the socket to
//! become writable, and the connection is not read again until it is flushed, so memory
//! stays bounded by one read per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use loadgen_common::{pin_cpu, Args};
use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};

const LISTENER: Token = Token(usize::MAX);
const READ_SIZE: usize = 256 * 1024;

enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Udp(SocketAddr),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
}

struct Conn {
    stream: Stream,
    /// Bytes read but not yet written back.
    pending: Vec<u8>,
    /// Registered for writable events too (only while `pending` is not empty).
    write_armed: bool,
}

enum Step {
    Open,
    Closed,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    /// Echo until the socket has nothing to read or cannot take more, then ask for
    /// writable events only if something is left to write.
    fn serve(&mut self, scratch: &mut [u8], registry: &Registry, token: Token) -> io::Result<Step> {
        let step = self.echo(scratch)?;
        let want_write = !self.pending.is_empty();
        if want_write != self.write_armed {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(self.stream.source(), token, interest)?;
            self.write_armed = want_write;
        }
        Ok(step)
    }

    fn echo(&mut self, scratch: &mut [u8]) -> io::Result<Step> {
        loop {
            while !self.pending.is_empty() {
                match self.stream.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if would_block(&e) => return Ok(Step::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let n = match self.stream.read(scratch) {
                Ok(0) => return Ok(Step::Closed),
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(Step::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut written = 0;
            while written < n {
                match self.stream.write(&scratch[written..n]) {
                    Ok(k) => written += k,
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.pending.extend_from_slice(&scratch[written..n]);
            if n < scratch.len() && self.pending.is_empty() {
                // A short read emptied the socket; new data is a new edge-triggered event.
                return Ok(Step::Open);
            }
        }
    }
}

fn parse() -> Result<(Listen, Option<usize>), String> {
    let mut args = Args::from_env();
    let mut listen = None;
    let mut pin = None;
    let resolve = |text: String| -> Result<SocketAddr, String> {
        text.to_socket_addrs()
            .map_err(|e| format!("cannot resolve {text:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{text:?} resolves to nothing"))
    };
    while let Some(flag) = args.next_flag() {
        let (name, inline) = flag?;
        match name.as_str() {
            "addr" => listen = Some(Listen::Tcp(resolve(args.value(&name, inline)?)?)),
            "udp" => listen = Some(Listen::Udp(resolve(args.value(&name, inline)?)?)),
            "unix" => listen = Some(Listen::Unix(PathBuf::from(args.value(&name, inline)?))),
            "pin-cpu" => pin = Some(args.parsed(&name, inline)?),
            other => {
                return Err(format!(
                    "unknown option --{other}\nusage: echo-ceiling [--addr HOST:PORT | --unix PATH | --udp HOST:PORT] [--pin-cpu N]"
                ))
            }
        }
    }
    Ok((listen.unwrap_or_else(|| Listen::Tcp("127.0.0.1:0".parse().unwrap())), pin))
}

fn serve_udp(poll: &mut Poll, mut socket: UdpSocket) -> io::Result<()> {
    poll.registry().register(&mut socket, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        poll.poll(&mut events, None).or_else(|e| if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) })?;
        loop {
            match socket.recv_from(&mut buf) {
                // A full send buffer drops the datagram, as a UDP server may.
                Ok((n, peer)) => {
                    let _ = socket.send_to(&buf[..n], peer);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {} // e.g. ICMP errors queued on the socket
            }
        }
    }
}

fn serve() -> Result<(), String> {
    let (listen, pin) = parse()?;
    if let Some(cpu) = pin {
        pin_cpu(cpu).map_err(|e| format!("--pin-cpu {cpu}: {e}"))?;
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    enum Listener {
        Tcp(TcpListener),
        Unix(UnixListener),
    }
    let mut listener = match listen {
        Listen::Tcp(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            println!("{}", l.local_addr().map_err(|e| e.to_string())?);
            Listener::Tcp(l)
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
            println!("{}", path.display());
            Listener::Unix(l)
        }
        Listen::Udp(addr) => {
            let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            println!("{}", s.local_addr().map_err(|e| e.to_string())?);
            io::stdout().flush().ok();
            return serve_udp(&mut poll, s).map_err(|e| e.to_string());
        }
    };
    io::stdout().flush().ok();
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
    }
    .map_err(|e| e.to_string())?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; READ_SIZE];
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)
            .or_else(|e| if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) })
            .map_err(|e| e.to_string())?;
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let accepted = match &listener {
                        Listener::Tcp(l) => l.accept().map(|(s, _)| {
                            let _ = s.set_nodelay(true);
                            Stream::Tcp(s)
                        }),
                        Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    };
                    let mut stream = match accepted {
                        Ok(s) => s,
                        Err(e) if would_block(&e) => break,
                        Err(e) => {
                            eprintln!("echo-ceiling: accept: {e}");
                            break;
                        }
                    };
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    if poll.registry().register(stream.source(), Token(slot), Interest::READABLE).is_err() {
                        free.push(slot);
                        continue;
                    }
                    let mut conn = Conn { stream, pending: Vec::new(), write_armed: false };
                    // Data may have arrived before registration; edge-triggered means
                    // no event would announce it.
                    match conn.serve(&mut scratch, poll.registry(), Token(slot)) {
                        Ok(Step::Open) => conns[slot] = Some(conn),
                        _ => {
                            let _ = poll.registry().deregister(conn.stream.source());
                            free.push(slot);
                        }
                    }
                }
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = conns.get_mut(slot).and_then(|c| c.as_mut()) else { continue };
            if !matches!(conn.serve(&mut scratch, poll.registry(), Token(slot)), Ok(Step::Open)) {
                let mut conn = conns[slot].take().unwrap();
                let _ = poll.registry().deregister(conn.stream.source());
                free.push(slot);
            }
        }
    }
}

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("echo-ceiling: {message}");
            ExitCode::from(2)
        }
    }
}
