//! The sidecar's settings, their checks, and its errors.
//!
//! One vocabulary with the Python side: `inspect="127.0.0.1:7070"`,
//! `GLASSLOOP_INSPECT`, `GLASSLOOP_TOKEN` mean the same everywhere (DESIGN.md).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::history::DEFAULT_HISTORY;
use crate::stream::{DEFAULT_BUFFER, DEFAULT_MAX_CLIENTS};

/// Where the sidecar listens when no address is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:7070";

/// How the sidecar server runs. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct Config {
    /// `host:port`, `:port`, a bare port, or empty for [`DEFAULT_ADDRESS`]; port 0
    /// picks a free port (see [`ServerInfo::url`]).
    pub address: String,
    /// Bearer token (`GLASSLOOP_TOKEN`). Required when `address` is not loopback;
    /// when set, every endpoint but `/healthz` requires it.
    pub token: Option<String>,
    /// A callback running longer than this is reported as a stall (default 100 ms).
    pub stall_threshold: Duration,
    /// Samples kept per loop (default 3600 = 15 min at 250 ms).
    pub history: usize,
    /// Connections served at once; more wait in the listen backlog (default 256).
    pub max_connections: usize,
    /// Live-stream clients at once; more get 503 (default 64).
    pub max_stream_clients: usize,
    /// Events queued per stream client before it is cut (default 256).
    pub stream_buffer: usize,
    /// Longest a request may take to produce its response head (default 10 s).
    pub request_timeout: Duration,
    /// How long a deep query waits for the loop before answering 503 "loop busy"
    /// (default 250 ms).
    pub query_deadline: Duration,
    /// A connection whose peer accepts no bytes for this long is closed (default 10 s).
    pub write_stall_timeout: Duration,
    /// Longest a client may take to send a request's headers (default 10 s).
    pub header_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: DEFAULT_ADDRESS.to_string(),
            token: None,
            stall_threshold: Duration::from_millis(100),
            history: DEFAULT_HISTORY,
            max_connections: 256,
            max_stream_clients: DEFAULT_MAX_CLIENTS,
            stream_buffer: DEFAULT_BUFFER,
            request_timeout: Duration::from_secs(10),
            query_deadline: Duration::from_millis(250),
            write_stall_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("Config")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("stall_threshold", &self.stall_threshold)
            .field("history", &self.history)
            .field("max_connections", &self.max_connections)
            .field("max_stream_clients", &self.max_stream_clients)
            .field("stream_buffer", &self.stream_buffer)
            .field("request_timeout", &self.request_timeout)
            .field("query_deadline", &self.query_deadline)
            .field("write_stall_timeout", &self.write_stall_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

impl Config {
    /// Defaults, with `address` from `GLASSLOOP_INSPECT` (when it is an address, not a
    /// plain "1"/"true") and `token` from `GLASSLOOP_TOKEN` (when non-empty).
    pub fn from_env() -> Config {
        let mut c = Config::default();
        if let Ok(a) = std::env::var("GLASSLOOP_INSPECT") {
            let a = a.trim();
            if !matches!(a.to_ascii_lowercase().as_str(), "" | "1" | "true" | "yes" | "on") {
                c.address = a.to_string();
            }
        }
        c.token = std::env::var("GLASSLOOP_TOKEN").ok().filter(|t| !t.is_empty());
        c
    }

    /// Checks the settings and resolves the address.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for an address that does not parse or resolve;
    /// [`Error::TokenRequired`] for a non-loopback address without a token (the
    /// sidecar shows code paths, stacks and traffic: it is never open to a network
    /// without a credential).
    pub fn validate(&self) -> Result<SocketAddr, Error> {
        let addr = parse_address(&self.address)?;
        let has_token = self.token.as_deref().is_some_and(|t| !t.is_empty());
        if !addr.ip().is_loopback() && !has_token {
            return Err(Error::TokenRequired { address: addr });
        }
        Ok(addr)
    }
}

/// Parses `host:port`, `[v6]:port`, `:port`, a bare port, or empty (the default).
///
/// # Errors
/// [`Error::InvalidAddress`] when it is none of those or the host does not resolve.
pub fn parse_address(s: &str) -> Result<SocketAddr, Error> {
    let s = s.trim();
    let invalid = |reason: &str| Error::InvalidAddress { address: s.to_string(), reason: reason.to_string() };
    if s.is_empty() {
        return parse_address(DEFAULT_ADDRESS);
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only.parse().map_err(|_| invalid("port must be 0..65535"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = s.to_socket_addrs().map_err(|e| invalid(&e.to_string()))?.collect::<Vec<_>>();
    // Prefer IPv4 for names like `localhost`, which browsers and curl try first.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next().ok_or_else(|| invalid("host did not resolve"))
}

/// Compares a presented token with the expected one in time independent of where
/// they differ (no early exit), so response timing does not reveal a prefix.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    let (e, p) = (expected.as_bytes(), presented.as_bytes());
    let mut diff = u8::from(e.len() != p.len());
    for (i, &b) in e.iter().enumerate() {
        diff |= b ^ p.get(i).copied().unwrap_or(0);
    }
    // Keeps the optimizer from turning the loop back into a short-circuit compare.
    std::hint::black_box(diff) == 0
}

/// Where the sidecar is listening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// `http://host:port/`, with the real port when 0 was asked for.
    pub url: String,
    /// The bound address.
    pub address: SocketAddr,
    /// Whether requests need the token.
    pub token_required: bool,
}

/// Why the sidecar did not start.
#[derive(Debug)]
pub enum Error {
    /// The address does not parse or resolve.
    InvalidAddress {
        /// As given.
        address: String,
        /// Why.
        reason: String,
    },
    /// A non-loopback address was asked for without a token.
    TokenRequired {
        /// The address.
        address: SocketAddr,
    },
    /// Another process (or another inspector) holds the port.
    AddressInUse {
        /// The address.
        address: SocketAddr,
    },
    /// Binding failed for another reason (permissions, no such interface, …).
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The OS refused a thread or the runtime's resources.
    Start(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidAddress { address, reason } => {
                write!(f, "glassloop inspector: invalid address {address:?}: {reason}")
            }
            Error::TokenRequired { address } => write!(
                f,
                "glassloop inspector: refusing to listen on {address} without a token; \
                 set GLASSLOOP_TOKEN (or listen on 127.0.0.1)"
            ),
            Error::AddressInUse { address } => write!(
                f,
                "glassloop inspector: {address} is already in use (another process or \
                 inspector?); choose another port, or port 0 for any free one"
            ),
            Error::Bind { address, source } => {
                write!(f, "glassloop inspector: cannot listen on {address}: {source}")
            }
            Error::Start(e) => write!(f, "glassloop inspector: cannot start: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Start(source) => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_every_documented_form() {
        assert_eq!(parse_address("").unwrap(), "127.0.0.1:7070".parse().unwrap());
        assert_eq!(parse_address("8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_address(":0").unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(parse_address("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_address("localhost:7070").unwrap().ip().is_loopback());
        assert!(matches!(parse_address("99999"), Err(Error::InvalidAddress { .. })));
        assert!(matches!(parse_address("no such host!:1"), Err(Error::InvalidAddress { .. })));
    }

    #[test]
    fn a_token_is_required_off_loopback() {
        let mut c = Config { address: "0.0.0.0:0".into(), ..Config::default() };
        let err = c.validate().unwrap_err();
        assert!(matches!(err, Error::TokenRequired { .. }));
        assert!(err.to_string().contains("GLASSLOOP_TOKEN"), "{err}");
        c.token = Some(String::new());
        assert!(c.validate().is_err(), "an empty token is no token");
        c.token = Some("s3cret".into());
        assert!(c.validate().is_ok());
        let local = Config { address: "127.0.0.1:0".into(), ..Config::default() };
        assert!(local.validate().is_ok());
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides the token");
    }

    #[test]
    fn environment_names_the_address_and_token() {
        // Only this test touches these variables.
        std::env::set_var("GLASSLOOP_INSPECT", "1");
        std::env::set_var("GLASSLOOP_TOKEN", "");
        let c = Config::from_env();
        assert_eq!(c.address, DEFAULT_ADDRESS, "\"1\" means on, at the default address");
        assert!(c.token.is_none());
        std::env::set_var("GLASSLOOP_INSPECT", "0.0.0.0:9000");
        std::env::set_var("GLASSLOOP_TOKEN", "t");
        let c = Config::from_env();
        assert_eq!(c.address, "0.0.0.0:9000");
        assert_eq!(c.token.as_deref(), Some("t"));
        assert!(c.validate().is_ok());
        std::env::remove_var("GLASSLOOP_INSPECT");
        std::env::remove_var("GLASSLOOP_TOKEN");
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "ab"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }
}
