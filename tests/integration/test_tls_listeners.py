"""TLS listeners (``[[server.listeners]]`` with ``tls``): SNI, versions, ALPN, client
certificates, ``auth = ["mtls"]``, ``X-Forwarded-Client-Cert``, RFC 8705 bound tokens, the TLS
facts in the access log and the expiry gauge, against real TLS clients (curl, Python ``ssl``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from avx_twisted.config import GatewayConfig
from avx_twisted.service import GatewayService
from tests.support.pki import PKI, Issued
from tests.support.servers import echo_json, upstream

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def _tls(pki: PKI, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.default.cert), "key_file": str(pki.default.key), **extra}


def start(config: dict[str, Any], closer: Any) -> GatewayService:
    cfg = GatewayConfig.from_dict(config)
    service = GatewayService(cfg, reactor)
    service.startService()
    closer.add(service)
    return service


def tls_gateway(
    pki: PKI,
    closer: Any,
    up_port: int,
    tls: dict[str, Any] | None = None,
    http2: bool = True,
    **top: Any,
) -> tuple[GatewayService, int]:
    """A gateway with one TLS listener (and a cleartext one, ports[0]); returns the TLS port."""
    routes = top.pop("routes", None) or [
        {"path": "/*", "upstream": {"urls": [f"http://127.0.0.1:{up_port}"]}}
    ]
    config = {
        "server": {
            "listen": ["tcp:0:interface=127.0.0.1"],
            "listeners": [
                {"endpoint": "tcp:0:interface=127.0.0.1", "tls": tls or _tls(pki), "http2": http2}
            ],
        },
        "routes": routes,
        **top,
    }
    service = start(config, closer)
    return service, service.ports[1].getHost().port


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl (no proxy from the environment); returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    out, err, code = await getProcessOutputAndValue("curl", ["-sS", *args], env=env)
    return code, out.decode(), err.decode()


async def curl_get(
    pki: PKI,
    port: int,
    path: str = "/hi",
    name: str = "localhost",
    client: Issued | None = None,
    *extra: str,
) -> tuple[int, str]:
    """GET over TLS by curl, verifying against the test CA; returns (HTTP status or 0, body)."""
    args = [
        "--cacert",
        str(pki.ca.path),
        "--resolve",
        f"{name}:{port}:127.0.0.1",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        *extra,
    ]
    if client is not None:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    code, out, err = await curl(*args, f"https://{name}:{port}{path}")
    if code != 0:
        return 0, err
    body, _, status = out.rpartition("\n")
    return int(status), body


def handshake(
    port: int,
    server_name: str | None = "localhost",
    cafile: Path | None = None,
    client: Issued | None = None,
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion | None = None,
    minimum: ssl.TLSVersion | None = None,
) -> ssl.SSLSocket:
    """A blocking TLS handshake (run it in a thread); the caller closes the socket."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if server_name is None:
        ctx.check_hostname = False
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum is not None:
        ctx.maximum_version = maximum
    if minimum is not None:
        ctx.minimum_version = minimum
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def _subject_cn(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return value  # type: ignore[no-any-return]
    return ""


def _request(sock: ssl.SSLSocket, path: str = "/hi", host: str = "localhost") -> bytes:
    """One keep-alive GET on an open TLS socket; returns the whole response (Content-Length)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return head + b"\r\n\r\n" + body


# -- the listener --------------------------------------------------------------------------------


@ensure
async def test_tls_listener_serves_routes_next_to_a_cleartext_one(pki, closer):
    up = closer.add(upstream())
    gw, port = tls_gateway(pki, closer, up.port)
    status, body = await curl_get(pki, port)
    assert status == 200
    assert echo_json(body.encode())["uri"] == "/hi"
    plain = gw.ports[0].getHost().port
    code, out, _ = await curl(
        "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plain}/hi"
    )
    assert (code, out) == (0, "200")


@ensure
async def test_sni_picks_the_certificate_exact_and_wildcard(pki, closer):
    up = closer.add(upstream())
    tls = _tls(
        pki,
        certificates=[
            pki.api.sni("api.example.test"),
            pki.wild.sni("*.apps.example.test"),
        ],
    )
    _, port = tls_gateway(pki, closer, up.port, tls)

    def names() -> list[str]:
        found = []
        for name in ("api.example.test", "shop.apps.example.test", "localhost", None):
            sock = handshake(port, name, pki.ca.path)
            found.append(_subject_cn(sock))
            sock.close()
        return found

    assert await threads.deferToThread(names) == [
        "api.example.test",
        "*.apps.example.test",
        "localhost",
        "localhost",  # no SNI: the default certificate
    ]
    status, _ = await curl_get(pki, port, name="api.example.test")
    assert status == 200


@ensure
async def test_min_version_refuses_older_clients_and_alpn_offers_http11(pki, closer):
    up = closer.add(upstream())
    tls = _tls(pki, min_version="TLSv1.3")
    _, port = tls_gateway(pki, closer, up.port, tls, http2=False)
    _, h2_port = tls_gateway(pki, closer, up.port, tls)  # http2 = true, the default

    def offered(port: int) -> str | None:
        sock = handshake(port, cafile=pki.ca.path, alpn=["h2", "http/1.1"])
        try:
            return sock.selected_alpn_protocol()
        finally:
            sock.close()

    def old_client() -> str:
        try:
            handshake(port, cafile=pki.ca.path, maximum=ssl.TLSVersion.TLSv1_2).close()
        except ssl.SSLError as e:
            return e.reason or "refused"
        return "accepted"

    def modern_client() -> tuple[str, str | None, str | None]:
        sock = handshake(port, cafile=pki.ca.path, alpn=["h2", "http/1.1"])
        try:
            return sock.version() or "", sock.selected_alpn_protocol(), _request(sock)[:15].decode()
        finally:
            sock.close()

    assert await threads.deferToThread(old_client) != "accepted"
    assert await threads.deferToThread(modern_client) == ("TLSv1.3", "http/1.1", "HTTP/1.1 200 OK")
    assert await threads.deferToThread(offered, h2_port) == "h2"


@ensure
async def test_tls12_uses_only_forward_secret_aead_ciphers(pki, closer):
    up = closer.add(upstream())
    _, port = tls_gateway(pki, closer, up.port)

    def cipher_with(offer: str) -> str:
        ctx = ssl.create_default_context(cafile=str(pki.ca.path))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(offer)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                return sock.cipher()[0]
        except ssl.SSLError:
            return "refused"

    assert (
        await threads.deferToThread(cipher_with, "ECDHE+AESGCM") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    )
    # CBC (and static RSA / non-forward-secret) suites are not offered by the gateway.
    assert await threads.deferToThread(cipher_with, "ECDHE-ECDSA-AES128-SHA") == "refused"


# -- client certificates ---------------------------------------------------------------------


def _mtls_tls(pki: PKI, mode: str) -> dict[str, Any]:
    return _tls(pki, client_auth=mode, client_ca_file=str(pki.ca.path))


@ensure
async def test_client_auth_require_refuses_handshakes_without_a_valid_certificate(pki, closer):
    up = closer.add(upstream())
    gw, port = tls_gateway(pki, closer, up.port, _mtls_tls(pki, "require"))
    assert (await curl_get(pki, port, client=pki.billing))[0] == 200
    for client in (None, pki.stranger, pki.expired):
        status, err = await curl_get(pki, port, client=client)
        assert status == 0, (client, err)
    errors = gw.metrics.render(None).body.decode()
    line = [x for x in errors.splitlines() if x.startswith("avx_tls_handshake_errors_total")]
    assert line and float(line[0].rsplit(" ", 1)[1]) >= 2, line


@ensure
async def test_client_auth_optional_verifies_a_certificate_when_one_is_sent(pki, closer):
    up = closer.add(upstream())
    routes = [
        {
            "path": "/open/*",
            "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
        },
        {
            "path": "/secure/*",
            "auth": ["mtls"],
            "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
        },
    ]
    _, port = tls_gateway(
        pki, closer, up.port, _mtls_tls(pki, "optional"), routes=routes, auth={"mtls": {}}
    )
    assert (await curl_get(pki, port, "/open/x"))[0] == 200  # no certificate: fine here
    status, body = await curl_get(pki, port, "/secure/x")
    assert status == 401 and json.loads(body)["error"] == "a client certificate is required"
    assert (await curl_get(pki, port, "/secure/x", client=pki.billing))[0] == 200
    # A certificate that is sent must be valid, optional or not.
    assert (await curl_get(pki, port, "/open/x", client=pki.stranger))[0] == 0


def _mtls_routes(port: int, **route: Any) -> list[dict[str, Any]]:
    return [
        {
            "path": "/*",
            "auth": ["mtls"],
            "upstream": {"urls": [f"http://127.0.0.1:{port}"]},
            **route,
        }
    ]


@ensure
async def test_mtls_allowed_subjects_and_sans(pki, closer):
    up = closer.add(upstream())
    auth = {
        "mtls": {
            "allowed_subjects": ["cn = reports, o=Acme"],
            "allowed_sans": ["spiffe://acme/ns/prod/sa/billing"],
        }
    }
    _, port = tls_gateway(
        pki, closer, up.port, _mtls_tls(pki, "require"), routes=_mtls_routes(up.port), auth=auth
    )
    assert (await curl_get(pki, port, client=pki.billing))[0] == 200  # by URI SAN
    assert (await curl_get(pki, port, client=pki.reports))[0] == 200  # by subject
    other = pki.ca.issue("other", "intruder", org="Acme", client=True)
    status, body = await curl_get(pki, port, client=other)
    assert status == 403
    assert json.loads(body)["error"] == "the client certificate is not allowed here"


@ensure
async def test_a_routes_own_mtls_lists_replace_the_global_ones(pki, closer):
    up = closer.add(upstream())
    routes = _mtls_routes(up.port, mtls={"allowed_sans": ["billing.acme.internal"]})
    auth = {"mtls": {"allowed_subjects": ["CN=reports,O=Acme"]}}
    _, port = tls_gateway(pki, closer, up.port, _mtls_tls(pki, "require"), routes=routes, auth=auth)
    assert (await curl_get(pki, port, client=pki.billing))[0] == 200  # DNS SAN, route's list
    assert (await curl_get(pki, port, client=pki.reports))[0] == 403  # global list replaced


@ensure
async def test_mtls_on_a_cleartext_listener_is_401(pki, closer):
    up = closer.add(upstream())
    gw, _ = tls_gateway(
        pki,
        closer,
        up.port,
        _mtls_tls(pki, "optional"),
        routes=_mtls_routes(up.port),
        auth={"mtls": {}},
    )
    plain = gw.ports[0].getHost().port
    code, out, _ = await curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plain}/")
    assert out == "401"


@ensure
async def test_forward_client_cert_sends_xfcc_and_forged_copies_are_always_removed(pki, closer):
    up = closer.add(upstream())
    routes = _mtls_routes(up.port) + [
        {"path": "/public/*", "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]}}
    ]
    routes[0]["path"] = "/private/*"
    _, port = tls_gateway(
        pki,
        closer,
        up.port,
        _mtls_tls(pki, "optional"),
        routes=routes,
        auth={"mtls": {"forward_client_cert": True}},
    )
    forged = ("-H", 'X-Forwarded-Client-Cert: Hash=00;Subject="CN=admin"')
    status, body = await curl_get(pki, port, "/private/x", "localhost", pki.billing, *forged)
    assert status == 200
    xfcc = echo_json(body.encode())["headers"]["X-Forwarded-Client-Cert"]
    assert len(xfcc) == 1
    der = pki.billing.certificate.public_bytes(serialization.Encoding.DER)
    assert xfcc[0].startswith(f'Hash={hashlib.sha256(der).hexdigest()};Cert="-----BEGIN')
    assert ';Subject="CN=billing,O=Acme";URI=spiffe://acme/ns/prod/sa/billing' in xfcc[0]
    assert xfcc[0].endswith(";DNS=billing.acme.internal")
    # No client certificate: the forged header never reaches the upstream, on any route.
    status, body = await curl_get(pki, port, "/public/x", "localhost", None, *forged)
    assert status == 200
    assert "X-Forwarded-Client-Cert" not in echo_json(body.encode())["headers"]


@ensure
async def test_mtls_consumer_keys_the_rate_limit_and_names_the_user_in_the_log(
    pki, closer, tmp_path
):
    up = closer.add(upstream())
    log = tmp_path / "access.log"
    routes = _mtls_routes(
        up.port, rate_limit={"requests_per_second": 0.01, "burst_size": 1, "key": "consumer"}
    )
    gw, port = tls_gateway(
        pki,
        closer,
        up.port,
        _mtls_tls(pki, "require"),
        routes=routes,
        auth={"mtls": {}},
        middleware={"enable_rate_limiting": True},
        logging={"access_log": str(log)},
    )
    assert (await curl_get(pki, port, client=pki.billing))[0] == 200
    assert (await curl_get(pki, port, client=pki.billing))[0] == 429
    assert (await curl_get(pki, port, client=pki.reports))[0] == 200  # another consumer
    gw.access_writer.stop()
    gw.access_writer = None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    first = records[0]
    assert first["user"] == "spiffe://acme/ns/prod/sa/billing"  # the first SAN
    assert first["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert first["client_cert_subject"] == "CN=billing,O=Acme"
    assert len(first["client_cert_sha256"]) == 64
    assert records[2]["user"] == "reports"  # no SAN: the CN


@ensure
async def test_certificate_bound_jwt_needs_its_certificate(pki, closer):
    """RFC 8705: a JWT with cnf.x5t#S256 passes only with the certificate it names."""
    up = closer.add(upstream())
    routes = [
        {"path": "/*", "auth": ["jwt"], "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]}}
    ]
    _, port = tls_gateway(
        pki,
        closer,
        up.port,
        _mtls_tls(pki, "optional"),
        routes=routes,
        auth={"jwt": {"secret": "s3cret-s3cret-s3cret-s3cret-s3cret"}},
    )
    der = pki.billing.certificate.public_bytes(serialization.Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    token = pyjwt.encode(
        {"sub": "svc", "exp": int(time.time()) + 300, "cnf": {"x5t#S256": thumb}},
        "s3cret-s3cret-s3cret-s3cret-s3cret",
        algorithm="HS256",
    )
    bearer = ("-H", f"Authorization: Bearer {token}")
    assert (await curl_get(pki, port, "/x", "localhost", pki.billing, *bearer))[0] == 200
    assert (await curl_get(pki, port, "/x", "localhost", pki.reports, *bearer))[0] == 403
    status, body = await curl_get(pki, port, "/x", "localhost", None, *bearer)
    assert status == 403 and "bound to a client certificate" in json.loads(body)["error"]


@ensure
async def test_certificate_expiry_gauge(pki, closer):
    up = closer.add(upstream())
    tls = _tls(
        pki,
        certificates=[pki.api.sni("api.example.test")],
    )
    gw, _ = tls_gateway(pki, closer, up.port, tls)
    text = gw.metrics.render(None).body.decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("avx_tls_certificate_expiry_seconds{"):
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    assert len(found) == 2, found
    for labels, seconds in found.items():
        assert 29 * 86400 < seconds <= 30 * 86400, (labels, seconds)
    assert any('server_name="api.example.test"' in labels for labels in found)
    assert any('server_name="localhost"' in labels for labels in found)


@ensure
async def test_upstream_client_certificates_are_in_the_expiry_gauge(pki, closer):
    client = pki.ca.issue("gw-client", "gateway", client=True, days=10)
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [
            {
                "name": "billing",
                "path": "/*",
                "upstream": {
                    "urls": ["https://127.0.0.1:1"],
                    "client_cert_file": str(client.cert),
                    "client_key_file": str(client.key),
                },
            }
        ],
    }
    gw = start(config, closer)
    lines = [
        line
        for line in gw.metrics.render(None).body.decode().splitlines()
        if line.startswith("avx_tls_certificate_expiry_seconds{")
    ]
    assert len(lines) == 1, lines
    assert 'listener="upstream:billing"' in lines[0]
    assert 9 * 86400 < float(lines[0].rsplit(" ", 1)[1]) <= 10 * 86400


class _TlsHeaders:
    """A plugin that hands the connection's TLS facts to the upstream as headers."""

    api_version = 1

    def __init__(self, config: Any) -> None:
        pass

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        tls = ctx.tls
        request.headers.set("X-TLS", "none" if tls is None else f"{tls.version} {tls.server_name}")
        cert = tls.client_cert if tls is not None else None
        request.headers.set("X-TLS-Client", cert.common_name if cert is not None else "-")


@ensure
async def test_plugins_see_the_tls_facts(pki, closer):
    from avx_twisted import plugins

    plugins.register("tls-headers", _TlsHeaders)
    try:
        up = closer.add(upstream())
        routes = [
            {
                "path": "/*",
                "plugins": [{"name": "tls-headers"}],
                "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
            }
        ]
        gw, port = tls_gateway(pki, closer, up.port, _mtls_tls(pki, "optional"), routes=routes)
        status, body = await curl_get(pki, port, "/x", "localhost", pki.reports)
        headers = echo_json(body.encode())["headers"]
        assert status == 200
        assert headers["X-Tls"][0].startswith("TLSv1.") and headers["X-Tls"][0].endswith(
            " localhost"
        )
        assert headers["X-Tls-Client"] == ["reports"]
        plain = gw.ports[0].getHost().port
        code, out, _ = await curl(f"http://127.0.0.1:{plain}/x")
        assert echo_json(out.encode())["headers"]["X-Tls"] == ["none"]
    finally:
        plugins.unregister("tls-headers")


def serial_of(sock: ssl.SSLSocket) -> int:
    """The serial number of the certificate the server presented on ``sock``."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(port: int, pki: PKI) -> int:
    sock = handshake(port, "localhost", pki.ca.path)
    try:
        return serial_of(sock)
    finally:
        sock.close()


@ensure
async def test_reload_interval_picks_up_changed_files_by_itself(pki, closer, tmp_path):
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.default.cert, live_cert)
    shutil.copy(pki.default.key, live_key)
    up = closer.add(upstream())
    tls = {"cert_file": str(live_cert), "key_file": str(live_key), "reload_interval_s": 1}
    gw, port = tls_gateway(pki, closer, up.port, tls)
    assert await threads.deferToThread(_serial, port, pki) == pki.default.certificate.serial_number

    async def serial_within(seconds: float, expected: int) -> int:
        seen = 0
        for _ in range(int(seconds * 10)):
            seen = await threads.deferToThread(_serial, port, pki)
            if seen == expected:
                break
            await deferLater(reactor, 0.1, lambda: None)
        return seen

    # A renewal written in place (as kubelet swaps a Secret's files): new connections get it.
    renewed = pki.ca.issue("renewed", "localhost", dns=["localhost"], ips=["127.0.0.1"], days=60)
    shutil.copy(renewed.cert, live_cert)
    shutil.copy(renewed.key, live_key)
    serial = renewed.certificate.serial_number
    assert await serial_within(5, serial) == serial
    text = gw.metrics.render(None).body.decode()
    expiry = [x for x in text.splitlines() if x.startswith("avx_tls_certificate_expiry_seconds{")]
    assert len(expiry) == 1 and float(expiry[0].rsplit(" ", 1)[1]) > 59 * 86400
    # A key that does not match: refused, the running certificate stays.
    shutil.copy(pki.api.key, live_key)
    await deferLater(reactor, 2.5, lambda: None)
    assert await threads.deferToThread(_serial, port, pki) == serial
