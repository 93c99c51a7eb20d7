//! OTLP settings, read only from the standard OpenTelemetry environment variables.
//!
//! | variable | meaning here |
//! |---|---|
//! | `OTEL_SDK_DISABLED` | `true`: export nothing ([`OtlpConfig::disabled`]) |
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `none` (or any list without `otlp`) turns that signal off |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `…_TRACES_PROTOCOL`, `…_METRICS_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; HTTP appends `/v1/traces`, `/v1/metrics` (default `http://localhost:4318`, gRPC `http://localhost:4317`) |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_METRICS_ENDPOINT` | the signal's full URL, used as is |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TRACES_HEADERS`, `…_METRICS_HEADERS` | `k=v,k2=v2` (values percent-decoded); per-signal keys win |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `…_TRACES_TIMEOUT`, `…_METRICS_TIMEOUT` | ms per export (default 10000) |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_TRACES_CERTIFICATE`, `…_METRICS_CERTIFICATE` | for `https://` endpoints: a PEM file of the certificate authorities to trust instead of the system's |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource (`service.name` default `unknown_service`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the SDK's samplers (default `parentbased_always_on`) |
//! | `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_METRIC_EXPORT_TIMEOUT` | ms (defaults 60000, 30000) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_EXPORT_TIMEOUT` | span batching (defaults 5000 ms, 2048, 512, 30000 ms) |
//!
//! `https://` endpoints use TLS (rustls) for both protocols, verifying the server
//! against the system's trust store (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured)
//! or the `…CERTIFICATE` file.
//!
//! Not supported (start fails with [`OtlpError::Config`] naming the variable):
//! `http/json`, `OTEL_EXPORTER_OTLP_*COMPRESSION` other than `none`, and client
//! certificates (`OTEL_EXPORTER_OTLP_CLIENT_KEY` / `…_CLIENT_CERTIFICATE`).

use std::fmt;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::Resource;

/// How a signal is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: POST of a protobuf body to the signal's URL.
    HttpProtobuf,
    /// `grpc`: the OTLP gRPC services (`opentelemetry.proto.collector.*.v1`).
    Grpc,
}

impl Protocol {
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Where and how one signal (traces or metrics) goes.
#[derive(Clone, PartialEq, Eq)]
pub struct SignalConfig {
    /// Transport.
    pub protocol: Protocol,
    /// Full URL for HTTP (`…/v1/traces`); `scheme://host:port` for gRPC.
    pub endpoint: String,
    /// Extra request headers / gRPC metadata (authentication, tenants).
    pub headers: Vec<(String, String)>,
    /// Longest one export may take, retries included.
    pub timeout: Duration,
    /// For `https://`: the certificate authorities to trust instead of the
    /// system's (`OTEL_EXPORTER_OTLP_CERTIFICATE`). Ignored for `http://`.
    pub certificate: Option<CaCertificate>,
}

/// A PEM file of certificate authorities, read when the configuration is built.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificate {
    /// Where it was read from.
    pub path: String,
    /// Its certificates (DER), at least one.
    pub certs: Vec<Vec<u8>>,
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} certificates)", self.path, self.certs.len())
    }
}

impl SignalConfig {
    /// True for an `https://` endpoint.
    pub fn tls(&self) -> bool {
        self.endpoint.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }
}

impl fmt::Debug for SignalConfig {
    // Header values are often credentials: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &redact_userinfo(&self.endpoint))
            .field("headers", &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("certificate", &self.certificate)
            .finish()
    }
}

/// Span batching (the `OTEL_BSP_*` variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest a span waits before its batch is sent.
    pub schedule_delay: Duration,
    /// Spans queued for export at most; more are dropped (and counted).
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// Longest one span export may take.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule_delay: Duration::from_millis(5_000),
            max_queue: 2_048,
            max_batch: 512,
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

/// Everything the exporter needs. Build it with [`OtlpConfig::from_env`].
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// `OTEL_SDK_DISABLED=true`: [`start`](super::start) starts nothing.
    pub disabled: bool,
    /// `None`: traces are not exported.
    pub traces: Option<SignalConfig>,
    /// `None`: metrics are not exported.
    pub metrics: Option<SignalConfig>,
    /// How often metrics are exported.
    pub metric_interval: Duration,
    /// Longest a metrics export may take.
    pub metric_timeout: Duration,
    /// Span batching and queue bound.
    pub batch: BatchConfig,
    /// Which task traces are kept (the SDK's samplers).
    pub sampler: Sampler,
    /// Describes the process (service name, `OTEL_RESOURCE_ATTRIBUTES`, SDK and process attributes).
    pub resource: Resource,
}

/// Why OTLP export did not start.
#[derive(Debug)]
pub enum OtlpError {
    /// A variable has a value this exporter does not accept.
    Config {
        /// The variable (or `endpoint` for a programmatic endpoint).
        variable: String,
        /// What is wrong.
        detail: String,
    },
    /// The exporter's thread, runtime or clients could not be made.
    Start(String),
}

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtlpError::Config { variable, detail } => write!(f, "{variable}: {detail}"),
            OtlpError::Start(d) => write!(f, "OTLP exporter did not start: {d}"),
        }
    }
}

impl std::error::Error for OtlpError {}

fn config_error(variable: &str, detail: impl Into<String>) -> OtlpError {
    OtlpError::Config { variable: variable.to_string(), detail: detail.into() }
}

const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);

impl OtlpConfig {
    /// Reads the process environment (see the module docs).
    ///
    /// # Errors
    /// [`OtlpError::Config`] for an unsupported or malformed value, naming the variable.
    pub fn from_env() -> Result<OtlpConfig, OtlpError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), but `endpoint` (when given) replaces
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: what `glassloop.run(..., otlp="http://host:4318")` passes.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_env_with_endpoint(endpoint: Option<&str>) -> Result<OtlpConfig, OtlpError> {
        match endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            None => Self::from_env(),
            Some(e) => Self::from_lookup(|k| {
                if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                    Some(e.to_string())
                } else {
                    std::env::var(k).ok()
                }
            }),
        }
    }

    /// Builds the configuration from any variable source (tests pass a map).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<OtlpConfig, OtlpError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let Some(c) = get("OTEL_EXPORTER_OTLP_COMPRESSION") {
            if !c.eq_ignore_ascii_case("none") {
                return Err(config_error(
                    "OTEL_EXPORTER_OTLP_COMPRESSION",
                    format!("{c:?} is not supported (only none)"),
                ));
            }
        }
        let wants = |var: &str| get(var).is_none_or(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case("otlp")));
        let traces = if wants("OTEL_TRACES_EXPORTER") { Some(signal(&get, "TRACES", "/v1/traces")?) } else { None };
        let metrics = if wants("OTEL_METRICS_EXPORTER") { Some(signal(&get, "METRICS", "/v1/metrics")?) } else { None };
        let defaults = BatchConfig::default();
        Ok(OtlpConfig {
            disabled,
            traces,
            metrics,
            metric_interval: millis(&get, "OTEL_METRIC_EXPORT_INTERVAL", Duration::from_millis(60_000))?
                .max(Duration::from_millis(100)),
            metric_timeout: millis(&get, "OTEL_METRIC_EXPORT_TIMEOUT", Duration::from_millis(30_000))?,
            batch: BatchConfig {
                schedule_delay: millis(&get, "OTEL_BSP_SCHEDULE_DELAY", defaults.schedule_delay)?
                    .max(Duration::from_millis(10)),
                max_queue: count(&get, "OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue)?.max(1),
                max_batch: count(&get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_batch)?.max(1),
                export_timeout: millis(&get, "OTEL_BSP_EXPORT_TIMEOUT", defaults.export_timeout)?,
            },
            sampler: sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?,
            resource: resource(get("OTEL_SERVICE_NAME"), get("OTEL_RESOURCE_ATTRIBUTES")),
        })
    }
}

fn signal(get: &impl Fn(&str) -> Option<String>, sig: &str, path: &str) -> Result<SignalConfig, OtlpError> {
    let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{sig}_{suffix}");
    let (protocol_var, protocol) = match get(&var("PROTOCOL")) {
        Some(p) => (var("PROTOCOL"), Some(p)),
        None => ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), get("OTEL_EXPORTER_OTLP_PROTOCOL")),
    };
    let protocol = match protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some("http/json") => {
            return Err(config_error(&protocol_var, "http/json is not supported (use http/protobuf or grpc)"))
        }
        Some(other) => return Err(config_error(&protocol_var, format!("unknown protocol {other:?}"))),
    };
    if let Some(c) = get(&var("COMPRESSION")) {
        if !c.eq_ignore_ascii_case("none") {
            return Err(config_error(&var("COMPRESSION"), format!("{c:?} is not supported (only none)")));
        }
    }
    let (endpoint_var, endpoint) = if let Some(e) = get(&var("ENDPOINT")) {
        (var("ENDPOINT"), e)
    } else if let Some(e) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let e = match protocol {
            Protocol::HttpProtobuf => format!("{}{path}", e.trim_end_matches('/')),
            Protocol::Grpc => e,
        };
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), e)
    } else {
        let e = match protocol {
            Protocol::HttpProtobuf => format!("{DEFAULT_HTTP_ENDPOINT}{path}"),
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_string(),
        };
        ("endpoint".to_string(), e)
    };
    let uri: http::Uri =
        endpoint.parse().map_err(|e| config_error(&endpoint_var, format!("{}: {e}", redact_userinfo(&endpoint))))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(config_error(&endpoint_var, "needs an http:// or https:// URL")),
    };
    if uri.host().is_none() {
        return Err(config_error(&endpoint_var, "needs a host"));
    }
    let mut headers = parse_headers(get("OTEL_EXPORTER_OTLP_HEADERS").as_deref().unwrap_or(""));
    for (k, v) in parse_headers(get(&var("HEADERS")).as_deref().unwrap_or("")) {
        headers.retain(|(x, _)| !x.eq_ignore_ascii_case(&k));
        headers.push((k, v));
    }
    let timeout = match get(&var("TIMEOUT")) {
        Some(_) => millis(get, &var("TIMEOUT"), DEFAULT_TIMEOUT)?,
        None => millis(get, "OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_TIMEOUT)?,
    };
    let certificate = match (tls, get(&var("CERTIFICATE"))) {
        (false, _) => None,
        (true, Some(path)) => Some(ca_certificate(&var("CERTIFICATE"), path)?),
        (true, None) => get("OTEL_EXPORTER_OTLP_CERTIFICATE")
            .map(|path| ca_certificate("OTEL_EXPORTER_OTLP_CERTIFICATE", path))
            .transpose()?,
    };
    Ok(SignalConfig { protocol, endpoint, headers, timeout: timeout.max(Duration::from_millis(1)), certificate })
}

/// Reads the PEM file `path` named by `var`: at least one certificate, all well formed.
fn ca_certificate(var: &str, path: String) -> Result<CaCertificate, OtlpError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(&path).map_err(|e| config_error(var, format!("{path}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(var, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(var, format!("{path}: no PEM certificate in it")));
    }
    Ok(CaCertificate { path, certs })
}

fn millis(get: &impl Fn(&str) -> Option<String>, var: &str, default: Duration) -> Result<Duration, OtlpError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| config_error(var, format!("{v:?} is not a number of milliseconds"))),
    }
}

fn count(get: &impl Fn(&str) -> Option<String>, var: &str, default: usize) -> Result<usize, OtlpError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| config_error(var, format!("{v:?} is not a count"))),
    }
}

/// `OTEL_TRACES_SAMPLER` / `_ARG`, as the OpenTelemetry SDKs read them.
fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, OtlpError> {
    let ratio = || -> Result<f64, OtlpError> {
        match arg.as_deref() {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(config_error("OTEL_TRACES_SAMPLER_ARG", format!("{a:?} is not a ratio in [0, 1]"))),
            },
        }
    };
    Ok(match name.as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
        other => return Err(config_error("OTEL_TRACES_SAMPLER", format!("{other:?} is not supported"))),
    })
}

/// The resource: `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` over its
/// `service.name`, plus the SDK's `telemetry.sdk.*` and `process.pid`.
fn resource(service_name: Option<String>, attributes: Option<String>) -> Resource {
    let mut kvs: Vec<KeyValue> =
        parse_headers(attributes.as_deref().unwrap_or("")).into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let name = service_name
        .or_else(|| kvs.iter().find(|kv| kv.key.as_str() == "service.name").map(|kv| kv.value.to_string()))
        .unwrap_or_else(|| "unknown_service".to_string());
    kvs.retain(|kv| kv.key.as_str() != "service.name");
    kvs.push(KeyValue::new("process.pid", i64::from(std::process::id())));
    Resource::builder_empty()
        .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
        .with_attributes(kvs)
        .with_service_name(name)
        .build()
}

/// `k=v,k2=v2` with percent-encoded values (the W3C Baggage form the OTel spec uses
/// for `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`). Malformed
/// entries are skipped, as the spec asks.
pub(crate) fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), percent_decode(v.trim())?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL without `user:password@`, for showing it.
pub(crate) fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<OtlpConfig, OtlpError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtlpConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_specs() {
        let c = cfg(&[]).unwrap();
        assert!(!c.disabled);
        let t = c.traces.unwrap();
        assert_eq!((t.protocol, t.endpoint.as_str()), (Protocol::HttpProtobuf, "http://localhost:4318/v1/traces"));
        assert_eq!(c.metrics.unwrap().endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(c.metric_interval, Duration::from_secs(60));
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert!(matches!(c.sampler, Sampler::ParentBased(_)));
        let name = c.resource.get(&opentelemetry::Key::new("service.name")).unwrap();
        assert_eq!(name.as_str(), "unknown_service");
    }

    #[test]
    fn endpoints_protocols_and_headers_resolve_per_signal() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,tenant=x, broken"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "tenant=y"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap();
        let t = c.traces.unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.headers, vec![("api-key".into(), "a b".into()), ("tenant".into(), "y".into())]);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        let m = c.metrics.unwrap();
        assert_eq!((m.protocol, m.endpoint.as_str()), (Protocol::Grpc, "http://collector:4317"));
        assert_eq!(m.headers[1], ("tenant".into(), "x".into()));
        // gRPC with the general endpoint: no path appended.
        let g =
            cfg(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
        assert_eq!(g.traces.unwrap().endpoint, "http://c:4317");
    }

    #[test]
    fn signals_and_the_sdk_can_be_turned_off() {
        let c = cfg(&[("OTEL_TRACES_EXPORTER", "none"), ("OTEL_SDK_DISABLED", "TRUE")]).unwrap();
        assert!(c.disabled && c.traces.is_none() && c.metrics.is_some());
        let c = cfg(&[("OTEL_METRICS_EXPORTER", "prometheus,otlp")]).unwrap();
        assert!(c.metrics.is_some());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, var) in [
            (vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")], "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent")],
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://x:4318"),
                    ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/dev/null"),
                ],
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            ),
            (vec![("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "not a url")], "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            (
                vec![("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![("OTEL_TRACES_SAMPLER", "xray")], "OTEL_TRACES_SAMPLER"),
            (vec![("OTEL_METRIC_EXPORT_INTERVAL", "soon")], "OTEL_METRIC_EXPORT_INTERVAL"),
            (vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")], "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ] {
            match cfg(&vars) {
                Err(OtlpError::Config { variable, .. }) => assert_eq!(variable, var),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn resource_and_sampler_follow_the_spec() {
        let c = cfg(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=dev%2C1"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        let get = |k: &'static str| c.resource.get(&opentelemetry::Key::new(k)).map(|v| v.to_string());
        assert_eq!(get("service.name").as_deref(), Some("from-attrs"));
        assert_eq!(get("deployment.environment").as_deref(), Some("dev,1"));
        assert_eq!(get("telemetry.sdk.language").as_deref(), Some("rust"));
        assert!(format!("{:?}", c.sampler).contains("0.25"));
        let c = cfg(&[("OTEL_SERVICE_NAME", "svc"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")]).unwrap();
        assert_eq!(c.resource.get(&opentelemetry::Key::new("service.name")).unwrap().as_str(), "svc");
    }

    #[test]
    fn https_endpoints_read_their_certificate_file() {
        let dir = std::env::temp_dir().join(format!("glassloop-otlp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // Any DER body does for the reader; the TLS client checks it when it connects.
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n").unwrap();
        let ca = ca.to_str().unwrap();
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://collector:4318/v1/metrics"),
        ])
        .unwrap();
        let t = c.traces.unwrap();
        assert!(t.tls());
        assert_eq!(t.certificate.as_ref().map(|c| (c.path.as_str(), c.certs.len())), Some((ca, 1)));
        let m = c.metrics.unwrap();
        assert!(!m.tls() && m.certificate.is_none(), "plain http ignores the certificate");
        // Without a certificate file: the system's trust store.
        let c = cfg(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")]).unwrap();
        let t = c.traces.unwrap();
        assert!(t.tls() && t.certificate.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pw@c:4318"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("pw@"), "{shown}");
    }
}
