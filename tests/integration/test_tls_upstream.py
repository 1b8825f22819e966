"""https upstreams: verified against ``ca_file`` when given, else the system trust store; the
gateway's client certificate, SNI and the verified name from ``server_name``, TLS sessions
resumed across pooled connections (the real twistd against Python ``ssl`` upstreams)."""

from __future__ import annotations

import json
import signal
import ssl as stdlib_ssl
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import deferLater

from avx_twisted.demo import EchoResource
from tests.support.pki import Authority
from tests.support.process import GatewayProcess, free_port
from tests.support.servers import echo_json, gateway, http
from tests.support.tls import PythonTLSUpstream, make_ca_and_server

ensure = pytest_twisted.ensureDeferred


class _TLSUpstream:
    def __init__(self, server_pem) -> None:
        from twisted.web.server import Site

        cert = ssl.PrivateCertificate.loadPEM(server_pem.read_bytes())
        self.port_obj = reactor.listenSSL(
            0, Site(EchoResource("tls")), cert.options(), interface="127.0.0.1"
        )
        self.port = self.port_obj.getHost().port

    def stop(self):
        return self.port_obj.stopListening()


def _gateway(url: str, ca_file=None):
    upstream = {"urls": [url]}
    if ca_file:
        upstream["ca_file"] = str(ca_file)
    return gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [{"path": "/*", "upstream": upstream}],
        }
    )


@ensure
async def test_https_upstream_verified_against_ca_file(tmp_path, closer):
    files = make_ca_and_server(tmp_path)
    up = closer.add(_TLSUpstream(files["server"]))
    gw = closer.add(_gateway(f"https://localhost:{up.port}", files["ca"]))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/hi")
    assert response.code == 200
    assert echo_json(await response.content())["service"] == "tls"


@ensure
async def test_https_upstream_with_untrusted_certificate_is_502(tmp_path, closer):
    files = make_ca_and_server(tmp_path)
    up = closer.add(_TLSUpstream(files["server"]))
    gw = closer.add(_gateway(f"https://localhost:{up.port}"))  # system trust: our CA is unknown
    response = await http("GET", f"http://127.0.0.1:{gw.port}/hi")
    assert response.code == 502


@ensure
async def test_https_upstream_with_wrong_hostname_is_502(tmp_path, closer):
    files = make_ca_and_server(tmp_path, hostname="other.example")
    up = closer.add(_TLSUpstream(files["server"]))
    gw = closer.add(_gateway(f"https://localhost:{up.port}", files["ca"]))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/hi")
    assert response.code == 502


# -- the real twistd against Python ssl upstreams: client certificates, server_name, sessions --


class _Twistd:
    """``twistd -n avx-gateway`` with one route to ``upstream`` (a ``[routes.upstream]`` table)."""

    def __init__(self, tmp_path, upstream: dict) -> None:
        self.config = tmp_path / "gateway.toml"
        self.port = free_port()
        self.write(upstream)
        self.process = GatewayProcess(self.config, self.port)

    def write(self, upstream: dict) -> None:
        lines = [f"{k} = {json.dumps(v)}" for k, v in upstream.items()]
        self.config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            "[middleware]\nenable_logging = false\n"
            '[[routes]]\nname = "users"\npath = "/*"\n[routes.upstream]\n' + "\n".join(lines) + "\n"
        )

    async def start(self) -> _Twistd:
        await self.process.start()
        return self

    async def get(self) -> tuple[int, dict]:
        response = await http("GET", self.process.url("/users/1"))
        body = await response.content()
        return response.code, json.loads(body) if response.code == 200 else {}

    def stop(self):
        return defer.Deferred.fromCoroutine(self.process.stop())


def _pki(tmp_path):
    """The upstreams' CA and a certificate for users.internal only (no IP address in it);
    another CA and the gateway's client certificate from it."""
    upstream_ca = Authority(tmp_path, "upstream CA")
    server = upstream_ca.issue("users", "users.internal", dns=["users.internal"])
    client_ca = Authority(tmp_path, "client CA")
    client = client_ca.issue("gateway", "gateway.internal", client=True)
    return upstream_ca, server, client_ca, client


def _route(up, ca, client=None, server_name="users.internal") -> dict:
    table = {"urls": [f"https://127.0.0.1:{up.port}"], "ca_file": str(ca.path)}
    if client is not None:
        table["client_cert_file"], table["client_key_file"] = client.pair
    if server_name:
        table["server_name"] = server_name
    return table


async def _eventually(check, timeout: float = 5.0):
    """Wait until ``check()`` is true (a fact another thread records)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    return check()


@ensure
async def test_upstream_requiring_a_client_certificate_sees_the_gateways(tmp_path, closer):
    ca, server, client_ca, client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key, client_ca=client_ca.path))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca, client)).start())
    code, seen = await gw.get()
    assert code == 200
    assert seen["client_subject"] == "gateway.internal"
    assert up.handshake_errors == []


@ensure
async def test_without_client_cert_file_the_upstream_refuses_and_the_client_gets_502(
    tmp_path, closer
):
    ca, server, client_ca, _client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key, client_ca=client_ca.path))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca)).start())
    code, _ = await gw.get()
    assert code == 502
    assert await _eventually(lambda: up.handshake_errors)  # the upstream refused the handshake
    assert up.connections == []


@ensure
async def test_server_name_is_the_sni_and_the_verified_name_for_an_ip_url(tmp_path, closer):
    ca, server, _client_ca, _client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca)).start())
    code, seen = await gw.get()
    assert code == 200
    assert seen["sni"] == "users.internal"


@ensure
async def test_a_server_name_the_certificate_lacks_is_502(tmp_path, closer):
    ca, server, _client_ca, _client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca, server_name="billing.internal")).start())
    code, _ = await gw.get()
    assert code == 502
    assert up.connections == []


@ensure
async def test_without_server_name_the_ip_is_verified_and_this_certificate_fails(tmp_path, closer):
    ca, server, _client_ca, _client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca, server_name="")).start())
    code, _ = await gw.get()
    assert code == 502


@pytest.mark.parametrize("version", [stdlib_ssl.TLSVersion.TLSv1_2, stdlib_ssl.TLSVersion.TLSv1_3])
@ensure
async def test_tls_sessions_are_resumed_across_pooled_connections(tmp_path, closer, version):
    ca, server, client_ca, client = _pki(tmp_path)
    up = closer.add(
        PythonTLSUpstream(
            server.cert,
            server.key,
            client_ca=client_ca.path,
            max_version=version,
            close_after_response=True,
        )
    )
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca, client)).start())
    for _ in range(3):
        code, _seen = await gw.get()
        assert code == 200
    # Three connections (the upstream closed each after its response), the later two resumed.
    assert [c["resumed"] for c in up.connections] == [False, True, True]
    assert {c["version"] for c in up.connections} == {version.name.replace("_", ".")}
    assert up.connections[0]["client_subject"] == "gateway.internal"


@ensure
async def test_sighup_shows_a_client_certificate_rotated_at_the_same_path(tmp_path, closer):
    ca, server, client_ca, client = _pki(tmp_path)
    up = closer.add(PythonTLSUpstream(server.cert, server.key, client_ca=client_ca.path))
    gw = closer.add(await _Twistd(tmp_path, _route(up, ca, client)).start())
    code, seen = await gw.get()
    assert (code, seen["client_subject"]) == (200, "gateway.internal")
    client_ca.issue("gateway", "gateway-2.internal", client=True)  # the same two files
    gw.process.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
        code, seen = await gw.get()
        if seen.get("client_subject") != "gateway.internal":
            break
    assert (code, seen["client_subject"]) == (200, "gateway-2.internal")
