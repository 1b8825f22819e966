"""https upstreams are verified: against ``ca_file`` when given, else the system trust store."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, ssl

from avx_twisted.demo import EchoResource
from tests.support.servers import echo_json, gateway, http
from tests.support.tls import make_ca_and_server

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
    return gateway({
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/*", "upstream": upstream}],
    })


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
