//! The TLS client side of `loadgen --tls`: rustls over a non-blocking mio TCP stream.
//!
//! The benchmark servers present a self-signed certificate made at startup, so the
//! certificate itself is not checked (any name, any issuer); the handshake signatures
//! still are, with the crypto provider's own algorithms. What is measured is the
//! server's TLS plumbing, not PKI.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// Accepts any server certificate; checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(&self, _end_entity: &CertificateDer<'_>, _intermediates: &[CertificateDer<'_>],
                          _server_name: &ServerName<'_>, _ocsp: &[u8], _now: UnixTime)
                          -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct)
                              -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct)
                              -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The client configuration every connection shares: rustls' safe defaults (TLS 1.3,
/// then 1.2) on the ring provider.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One TLS connection: plaintext in and out, records over the socket.
pub struct TlsStream {
    pub tcp: mio::net::TcpStream,
    tls: ClientConnection,
}

impl TlsStream {
    pub fn new(tcp: mio::net::TcpStream, config: Arc<ClientConfig>, server_name: &str) -> io::Result<TlsStream> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(TlsStream { tcp, tls })
    }

    /// Decrypted bytes of the echo. Reads records from the socket until some
    /// plaintext is available or the socket is empty (`WouldBlock`): under
    /// edge-triggered polling a socket must be drained before waiting again.
    /// `Ok(0)`: the server closed the connection.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            self.tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Handshake messages that reading produced go out now (or when writable).
            self.send_records()?;
        }
    }

    /// Takes plaintext into the TLS session and sends what records it can. Before the
    /// handshake completes the plaintext waits inside rustls (up to its buffer limit);
    /// none taken is `WouldBlock`.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_records()?;
        let n = self.tls.writer().write(buf)?;
        self.send_records()?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes queued records until none is left or the socket is full.
    pub fn send_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records are queued that the socket did not take yet.
    pub fn records_pending(&self) -> bool {
        self.tls.wants_write()
    }
}
