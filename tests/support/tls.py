"""Throw-away certificates (a CA and a server certificate it signed) and a real TLS upstream in
Python's ``ssl``, for https upstream tests (``tests.support.pki`` mints client certificates)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server(directory: Path, hostname: str = "localhost") -> dict[str, Path]:
    """Write ca.pem, server.pem (cert + key) into ``directory`` and return their paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("avx test CA"))
        .issuer_name(_name("avx test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    server_path = directory / "server.pem"
    server_path.write_bytes(
        cert.public_bytes(pem)
        + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"ca": ca_path, "server": server_path}


class PythonTLSUpstream:
    """A real TLS upstream on 127.0.0.1 (Python's ``ssl``, one thread per connection) that
    answers every request with what it saw of its connection, as JSON: ``sni``,
    ``client_subject`` (the client certificate's CN), ``version`` and ``resumed``.

    ``client_ca``: require a client certificate issued by it. ``close_after_response``: end
    each connection after one response, with a TLS close_notify, as servers do.
    ``handshake_errors`` collects the handshakes that failed.
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        max_version: ssl.TLSVersion | None = None,
        close_after_response: bool = False,
    ) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(client_ca))
        if max_version is not None:
            ctx.maximum_version = max_version
        ctx.sni_callback = self._sni
        self._ctx = ctx
        self._close = close_after_response
        self._sni_seen: dict[int, str | None] = {}
        self.connections: list[dict[str, Any]] = []
        self.handshake_errors: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sock: Any, name: str | None, ctx: Any) -> None:
        self._sni_seen[id(sock)] = name

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            sock = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self.handshake_errors.append(str(e))
            raw.close()
            return
        peer = sock.getpeercert() or {}
        facts = {
            "sni": self._sni_seen.pop(id(sock), None),
            "client_subject": dict(x[0] for x in peer.get("subject", ())).get("commonName"),
            "version": sock.version(),
            "resumed": sock.session_reused,
        }
        self.connections.append(facts)
        body = json.dumps(facts).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n" % len(body)
        if self._close:
            head += b"Connection: close\r\n"
        try:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer.split(b"\r\n\r\n", 1)[1]  # requests without bodies only
                sock.sendall(head + b"\r\n" + body)
                if self._close:
                    sock.unwrap()
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()

    def stop(self) -> None:
        self._listener.close()
