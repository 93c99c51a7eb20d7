"""TLS echo server on asyncio.Protocol: ``create_server(..., ssl=context)``,
data_received -> transport.write.

The certificate is self-signed, made at startup for ``localhost`` (an EC P-256
key: cheap handshakes) with the ``cryptography`` package when it is installed,
else with the ``openssl`` command. The load generator does not check it
(``loadgen --tls``): this measures the loop's TLS plumbing, not PKI.
"""

import asyncio
import datetime
import os
import shutil
import ssl
import subprocess
import tempfile

import _common


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def write_self_signed(certfile, keyfile):
    """A self-signed certificate and its key, as PEM files."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            raise SystemExit("tls_echo.py needs the cryptography package or the openssl command")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", keyfile, "-out", certfile],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def server_context():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="tls_echo.") as tmp:
        certfile, keyfile = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        write_self_signed(certfile, keyfile)
        context.load_cert_chain(certfile, keyfile)
    return context


async def start(loop, args, context):
    server = await loop.create_server(Echo, args.host, args.port, ssl=context, backlog=_common.BACKLOG)
    return server.sockets[0].getsockname()


if __name__ == "__main__":
    args = _common.parse_args(__doc__, unix=False)
    context = server_context()
    _common.serve(args, lambda loop: start(loop, args, context))
