"""TLS listeners and the PROXY protocol on the real ``twistd -n avx-gateway``: certificates
rotated by SIGHUP while a keep-alive connection stays open, a bad file refusing the reload, worker
processes sharing a TLS listener, PROXY v1/v2 headers (also in front of TLS)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import struct
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from tests.integration.test_tls_listeners import _request, _subject_cn, handshake, serial_of
from tests.support.pki import PKI
from tests.support.process import GatewayProcess, free_port, socket_activated
from tests.support.servers import upstream

ensure = pytest_twisted.ensureDeferred


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


def write_config(path: Path, plain: int, listeners: str, up_port: int, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            [server]
            listen = ["tcp:{plain}:interface=127.0.0.1"]
            {extra}
            {listeners}

            [logging]
            access_log = "{path.parent / "access.log"}"

            [[routes]]
            path = "/*"
            [routes.upstream]
            urls = ["http://127.0.0.1:{up_port}"]
            """
        )
    )
    return path


async def until_in_output(gw: GatewayProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in gw.output():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in output: {gw.output()}")
        await sleep(0.05)


@ensure
async def test_sighup_rotates_the_certificate_and_keeps_open_connections(tmp_path, closer):
    pki = PKI(tmp_path / "pki")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki.default.cert, live_cert)
    shutil.copy(pki.default.key, live_key)
    up = closer.add(upstream())
    plain, tls_port = free_port(), free_port()
    listeners = f"""
    [[server.listeners]]
    endpoint = "tcp:{tls_port}:interface=127.0.0.1"
    [server.listeners.tls]
    cert_file = "{live_cert}"
    key_file = "{live_key}"
    """
    config = write_config(tmp_path / "gw.toml", plain, listeners, up.port)
    gw = closer.add(await GatewayProcess(config, plain).start())

    first = await threads.deferToThread(handshake, tls_port, "localhost", pki.ca.path)
    try:
        assert (await threads.deferToThread(_request, first))[:15] == b"HTTP/1.1 200 OK"
        assert serial_of(first) == pki.default.certificate.serial_number
        # A new certificate for the same name, written over the files; SIGHUP.
        fresh = pki.ca.issue("fresh", "localhost", dns=["localhost"], ips=["127.0.0.1"], days=90)
        shutil.copy(fresh.cert, live_cert)
        shutil.copy(fresh.key, live_key)
        gw.proc.send_signal(signal.SIGHUP)
        await until_in_output(gw, "reloaded")
        # The open keep-alive connection goes on, on the certificate it started with...
        assert (await threads.deferToThread(_request, first))[:15] == b"HTTP/1.1 200 OK"
        # ...and new connections get the new certificate.
        second = await threads.deferToThread(handshake, tls_port, "localhost", pki.ca.path)
        assert serial_of(second) == fresh.certificate.serial_number
        second.close()

        # A key that does not match: the reload is refused, the running certificate stays.
        shutil.copy(pki.api.key, live_key)
        gw.proc.send_signal(signal.SIGHUP)
        await until_in_output(gw, "reload refused")
        out = gw.output()
        assert f"{live_key}' is not the private key of the certificate" in out, out
        assert "server.listeners[0].tls.key_file" in out
        third = await threads.deferToThread(handshake, tls_port, "localhost", pki.ca.path)
        assert serial_of(third) == fresh.certificate.serial_number
        third.close()
        assert (await threads.deferToThread(_request, first))[:15] == b"HTTP/1.1 200 OK"
    finally:
        first.close()
    assert await gw.stop() == 0


@ensure
async def test_workers_share_a_tls_listener_with_client_certificates(tmp_path, closer):
    pki = PKI(tmp_path / "pki")
    up = closer.add(upstream())
    plain, tls_port = free_port(), free_port()
    listeners = f"""
    [[server.listeners]]
    endpoint = "tcp:{tls_port}:interface=127.0.0.1"
    [server.listeners.tls]
    cert_file = "{pki.default.cert}"
    key_file = "{pki.default.key}"
    client_auth = "require"
    client_ca_file = "{pki.ca.path}"
    """
    config = write_config(tmp_path / "gw.toml", plain, listeners, up.port, "workers = 2")
    gw = closer.add(await GatewayProcess(config, plain).start())

    def requests() -> list[bytes]:
        answers = []
        for _ in range(6):
            sock = handshake(tls_port, "localhost", pki.ca.path, client=pki.billing)
            try:
                answers.append(_request(sock)[:15])
            finally:
                sock.close()
        return answers

    assert await threads.deferToThread(requests) == [b"HTTP/1.1 200 OK"] * 6

    def without_certificate() -> str:
        try:
            sock = handshake(tls_port, "localhost", pki.ca.path)
            _request(sock)  # TLS 1.3: the refusal arrives after the client's handshake
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return type(e).__name__
        return "served"

    assert await threads.deferToThread(without_certificate) != "served"
    assert await gw.stop() == 0


def _proxy_v2(source: str, source_port: int, dest: str, dest_port: int) -> bytes:
    """A PROXY protocol v2 header for a TCP over IPv4 connection."""
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = socket.inet_aton(source) + socket.inet_aton(dest)
    addresses += struct.pack("!HH", source_port, dest_port)
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def _raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data


_GET = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("workers", [1, 2])
@ensure
async def test_proxy_protocol_gives_the_client_address(tmp_path, closer, workers):
    up = closer.add(upstream())
    plain, proxied = free_port(), free_port()
    listeners = f"""
    [[server.listeners]]
    endpoint = "tcp:{proxied}:interface=127.0.0.1"
    proxy_protocol = true
    """
    config = write_config(tmp_path / "gw.toml", plain, listeners, up.port, f"workers = {workers}")
    gw = closer.add(await GatewayProcess(config, plain).start())

    v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n" + _GET
    answer = await threads.deferToThread(_raw_exchange, proxied, v1)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["headers"]["X-Forwarded-For"] == ["203.0.113.7"]

    v2 = _proxy_v2("192.0.2.44", 50000, "198.51.100.1", 443) + _GET
    answer = await threads.deferToThread(_raw_exchange, proxied, v2)
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["headers"]["X-Forwarded-For"] == ["192.0.2.44"]

    # No PROXY header, or a malformed one: the connection is closed, nothing is answered.
    assert await threads.deferToThread(_raw_exchange, proxied, _GET) == b""
    bad = b"PROXY TCP4 not-an-address 198.51.100.1 1 2\r\n" + _GET
    assert await threads.deferToThread(_raw_exchange, proxied, bad) == b""
    assert await gw.stop() == 0
    clients = [
        json.loads(line)["client_ip"] for line in (tmp_path / "access.log").read_text().splitlines()
    ]
    assert sorted(clients) == ["192.0.2.44", "203.0.113.7"]


@ensure
async def test_proxy_protocol_in_front_of_tls(tmp_path, closer):
    pki = PKI(tmp_path / "pki")
    up = closer.add(upstream())
    plain, port = free_port(), free_port()
    listeners = f"""
    [[server.listeners]]
    endpoint = "tcp:{port}:interface=127.0.0.1"
    proxy_protocol = true
    [server.listeners.tls]
    cert_file = "{pki.default.cert}"
    key_file = "{pki.default.key}"
    """
    config = write_config(tmp_path / "gw.toml", plain, listeners, up.port)
    gw = closer.add(await GatewayProcess(config, plain).start())

    def through_a_balancer() -> tuple[str, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.sendall(b"PROXY TCP4 203.0.113.9 198.51.100.1 40000 443\r\n")
        ctx = ssl.create_default_context(cafile=str(pki.ca.path))
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            return _subject_cn(sock), _request(sock, "/who")

    cn, answer = await threads.deferToThread(through_a_balancer)
    assert cn == "localhost"
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["headers"]["X-Forwarded-For"] == ["203.0.113.9"]
    assert await gw.stop() == 0


@ensure
async def test_tls_on_a_socket_passed_the_way_systemd_does(tmp_path, closer):
    pki = PKI(tmp_path / "pki")
    up = closer.add(upstream())
    path = tmp_path / "gw.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[server.listeners]]
            endpoint = "systemd:domain=INET:index=0"
            [server.listeners.tls]
            cert_file = "{pki.default.cert}"
            key_file = "{pki.default.key}"
            [[routes]]
            path = "/*"
            [routes.upstream]
            urls = ["{up.url}"]
            """
        )
    )
    proc, port = socket_activated(path)

    def fetch() -> bytes:
        deadline = time.monotonic() + 20
        while True:
            try:
                tls = handshake(port, "localhost", pki.ca.path)
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
                continue
            try:
                return _request(tls, "/activated")
            finally:
                tls.close()

    try:
        answer = await threads.deferToThread(fetch)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["uri"] == "/activated"
    finally:
        proc.terminate()
        await threads.deferToThread(proc.wait, 20)
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else b""
