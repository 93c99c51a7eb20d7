//! The two senders: spans through `opentelemetry-otlp`'s `SpanExporter`, metrics as
//! an `ExportMetricsServiceRequest` over the same kind of client (HTTP POST of the
//! protobuf body, or the gRPC `MetricsService/Export` call).
//!
//! Everything here runs on the exporter's own thread and current-thread runtime.
//! Each export is bounded by its signal's timeout (retries included).
//!
//! `https://` endpoints: rustls (ring provider) under both clients, trusting the
//! signal's `…CERTIFICATE` file or else the system's trust store, loaded once when
//! the client is made.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prost::Message;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::config::{OtlpError, Protocol, SignalConfig};

/// A user-agent like the SDKs send, so a collector's logs name us.
fn user_agent() -> String {
    format!("glassloop/{} (OTLP exporter; opentelemetry-rust 0.33)", env!("CARGO_PKG_VERSION"))
}

fn start_error(what: &str, e: impl std::fmt::Display) -> OtlpError {
    OtlpError::Start(format!("{what}: {e}"))
}

/// The certificate authorities an `https://` signal trusts.
fn roots(sig: &SignalConfig) -> Result<rustls::RootCertStore, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    match &sig.certificate {
        Some(ca) => {
            for der in &ca.certs {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der.clone()))
                    .map_err(|e| start_error(&format!("certificate {}", ca.path), e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(start_error(
                    "TLS",
                    format!("no system CA certificates found{why}; set OTEL_EXPORTER_OTLP_CERTIFICATE"),
                ));
            }
        }
    }
    Ok(roots)
}

fn channel(sig: &SignalConfig) -> Result<Channel, OtlpError> {
    let mut endpoint = Endpoint::from_shared(sig.endpoint.clone())
        .map_err(|e| start_error("gRPC endpoint", e))?
        .timeout(sig.timeout)
        .connect_timeout(sig.timeout.min(Duration::from_secs(5)))
        .user_agent(user_agent())
        .map_err(|e| start_error("gRPC user agent", e))?;
    if sig.tls() {
        let tls = ClientTlsConfig::new().trust_anchors(roots(sig)?.roots);
        endpoint = endpoint.tls_config(tls).map_err(|e| start_error("gRPC TLS", e))?;
    }
    // Lazy: a collector that is not up yet (or ever) costs nothing until an export.
    Ok(endpoint.connect_lazy())
}

fn metadata(sig: &SignalConfig) -> Result<MetadataMap, OtlpError> {
    let mut md = MetadataMap::new();
    for (k, v) in &sig.headers {
        let key =
            MetadataKey::from_str(&k.to_ascii_lowercase()).map_err(|e| start_error(&format!("header {k:?}"), e))?;
        let value = MetadataValue::try_from(v.as_str()).map_err(|e| start_error(&format!("header {k:?} value"), e))?;
        md.insert(key, value);
    }
    Ok(md)
}

/// An error and its sources, `a: b: c`, each message once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let m = e.to_string();
        if !out.iter().any(|o| o.contains(&m)) {
            out.push(m);
        }
        next = e.source();
    }
    out.join(": ")
}

/// Why the last request of a [`Remembering`] client failed.
type LastFailure = Arc<Mutex<Option<String>>>;

/// An HTTP client that remembers why its last request failed: the span exporter
/// reports every connection failure as "network error", which would hide, say, a
/// server certificate that the trusted CAs do not lead to.
#[derive(Debug)]
struct Remembering {
    inner: Arc<dyn HttpClient>,
    last_failure: LastFailure,
}

#[async_trait::async_trait]
impl HttpClient for Remembering {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self.inner.send_bytes(request).await;
        if let Err(e) = &result {
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(causes(e.as_ref()));
        }
        result
    }
}

fn http_client(sig: &SignalConfig) -> Result<Arc<dyn HttpClient>, OtlpError> {
    use opentelemetry_http::hyper::HyperClient;
    if !sig.tls() {
        return Ok(Arc::new(HyperClient::with_default_connector(sig.timeout, None)));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| start_error("TLS", e))?
        .with_root_certificates(roots(sig)?)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    Ok(Arc::new(HyperClient::new(connector, sig.timeout, None)))
}

/// The span exporter, and for HTTP why its client last failed.
pub(crate) struct SpanSender {
    exporter: SpanExporter,
    last_failure: Option<LastFailure>,
}

/// Builds the span exporter for `sig` (call inside the exporter's runtime).
pub(crate) fn span_exporter(sig: &SignalConfig, resource: &Resource) -> Result<SpanSender, OtlpError> {
    let last_failure = (sig.protocol == Protocol::HttpProtobuf).then(LastFailure::default);
    let mut exporter = match sig.protocol {
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(sig.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(sig.timeout)
            .with_headers(
                // This builder percent-decodes values again: keep a literal `%` literal.
                sig.headers.iter().map(|(k, v)| (k.clone(), v.replace('%', "%25"))).collect::<HashMap<_, _>>(),
            )
            .with_shared_http_client(Arc::new(Remembering {
                inner: http_client(sig)?,
                last_failure: Arc::clone(last_failure.as_ref().expect("made for HTTP")),
            }))
            .build(),
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_channel(channel(sig)?)
            .with_metadata(metadata(sig)?)
            .with_timeout(sig.timeout)
            .build(),
    }
    .map_err(|e| start_error("span exporter", e))?;
    exporter.set_resource(resource);
    Ok(SpanSender { exporter, last_failure })
}

/// Exports one batch of spans within `timeout` (one at a time: see `last_failure`).
pub(crate) async fn export_spans(sender: &SpanSender, batch: Vec<SpanData>, timeout: Duration) -> Result<(), String> {
    let take_failure = || sender.last_failure.as_ref().and_then(|f| f.lock().unwrap_or_else(|e| e.into_inner()).take());
    take_failure();
    match tokio::time::timeout(timeout, sender.exporter.export(batch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(match take_failure() {
            Some(cause) => format!("{e} ({cause})"),
            None => e.to_string(),
        }),
        Err(_) => Err(format!("span export timed out after {} ms", timeout.as_millis())),
    }
}

/// Sends metrics requests to one endpoint.
pub(crate) enum MetricsSender {
    Http { client: Arc<dyn HttpClient>, uri: http::Uri, headers: Vec<(HeaderName, HeaderValue)>, timeout: Duration },
    Grpc { client: MetricsServiceClient<Channel>, metadata: MetadataMap, timeout: Duration },
}

impl MetricsSender {
    /// Builds the sender for `sig` (call inside the exporter's runtime).
    pub(crate) fn new(sig: &SignalConfig) -> Result<MetricsSender, OtlpError> {
        Ok(match sig.protocol {
            Protocol::HttpProtobuf => {
                let mut headers = Vec::new();
                for (k, v) in sig.headers.iter().cloned().chain([("user-agent".to_string(), user_agent())]) {
                    let name = HeaderName::from_str(&k).map_err(|e| start_error(&format!("header {k:?}"), e))?;
                    let value =
                        HeaderValue::from_str(&v).map_err(|e| start_error(&format!("header {k:?} value"), e))?;
                    headers.push((name, value));
                }
                MetricsSender::Http {
                    client: http_client(sig)?,
                    uri: sig.endpoint.parse().map_err(|e| start_error("metrics endpoint", e))?,
                    headers,
                    timeout: sig.timeout,
                }
            }
            Protocol::Grpc => MetricsSender::Grpc {
                client: MetricsServiceClient::new(channel(sig)?),
                metadata: metadata(sig)?,
                timeout: sig.timeout,
            },
        })
    }

    /// Sends one request; `Err` describes the failure (never a header value).
    pub(crate) async fn send(&mut self, request: ExportMetricsServiceRequest, limit: Duration) -> Result<(), String> {
        match self {
            MetricsSender::Http { client, uri, headers, timeout } => {
                let mut req = http::Request::builder()
                    .method(http::Method::POST)
                    .uri(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                for (k, v) in headers.iter() {
                    req = req.header(k, v);
                }
                let req = req.body(Bytes::from(request.encode_to_vec())).map_err(|e| e.to_string())?;
                let limit = limit.min(*timeout);
                match tokio::time::timeout(limit, client.send_bytes(req)).await {
                    Err(_) => Err(format!("metrics export timed out after {} ms", limit.as_millis())),
                    Ok(Err(e)) => Err(format!("metrics export failed: {}", causes(e.as_ref()))),
                    Ok(Ok(res)) if res.status().is_success() => Ok(()),
                    Ok(Ok(res)) => Err(format!("metrics export got HTTP {}", res.status())),
                }
            }
            MetricsSender::Grpc { client, metadata, timeout } => {
                let limit = limit.min(*timeout);
                let mut req = tonic::Request::new(request);
                *req.metadata_mut() = metadata.clone();
                req.set_timeout(limit);
                match tokio::time::timeout(limit, client.export(req)).await {
                    Err(_) => Err(format!("metrics export timed out after {} ms", limit.as_millis())),
                    Ok(Err(status)) => {
                        let mut e = format!("metrics export failed with gRPC code {:?}", status.code());
                        let cause = std::error::Error::source(&status).map(causes).unwrap_or_default();
                        if !status.message().is_empty() && !cause.contains(status.message()) {
                            e = format!("{e}: {}", status.message());
                        }
                        if !cause.is_empty() {
                            e = format!("{e}: {cause}");
                        }
                        Err(e)
                    }
                    Ok(Ok(_)) => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<dyn std::error::Error + Send + Sync>>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_name_the_root_once() {
        let root = Wrapped("invalid peer certificate: UnknownIssuer", None);
        let mid = Wrapped("transport error: invalid peer certificate: UnknownIssuer", Some(Box::new(root)));
        let top = Wrapped("client error (Connect)", Some(Box::new(mid)));
        assert_eq!(causes(&top), "client error (Connect): transport error: invalid peer certificate: UnknownIssuer");
    }
}
