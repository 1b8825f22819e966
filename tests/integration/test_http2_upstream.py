"""HTTP/2 upstreams (``routes.upstream.protocol = "h2c" | "h2"``): curl speaks HTTP/1.1 or h2
to one gateway, which speaks h2 to a second gateway's http2 listener (h2c with prior knowledge,
or TLS with ALPN h2), which forwards to a plain HTTP/1.1 upstream. Runs on both interpreters;
the gRPC tests (test_grpc.py) face grpcio's own HTTP/2 server on CPython."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from avx_twisted.demo import EchoResource
from tests.integration.test_http2 import curl_status
from tests.integration.test_tls_listeners import PKI, _tls, curl, start
from tests.support.servers import BigBody, echo_json, upstream

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def h2_server(closer: Any, up_port: int, tls: dict[str, Any] | None = None) -> tuple[Any, int]:
    """The upstream gateway: an http2 listener in front of ``up_port`` (HTTP/1.1)."""
    listener: dict[str, Any] = {"endpoint": "tcp:0:interface=127.0.0.1", "http2": True}
    if tls is not None:
        listener["tls"] = tls
    config = {
        "server": {"listeners": [listener]},
        "routes": [{"path": "/*", "upstream": {"urls": [f"http://127.0.0.1:{up_port}"]}}],
    }
    gw = start(config, closer)
    return gw, gw.ports[0].getHost().port


def front(closer: Any, upstream: dict[str, Any], **route: Any) -> tuple[Any, int]:
    """The gateway under test: a cleartext listener (HTTP/1.1 and h2c) with one route."""
    config = {
        "server": {"listeners": [{"endpoint": "tcp:0:interface=127.0.0.1"}]},
        "routes": [{"path": "/*", "upstream": upstream, **route}],
    }
    gw = start(config, closer)
    return gw, gw.ports[0].getHost().port


@ensure
async def test_http11_client_to_an_h2c_upstream(closer):
    up = closer.add(upstream())
    back, back_port = h2_server(closer, up.port)
    gw, port = front(closer, {"urls": [f"http://127.0.0.1:{back_port}"], "protocol": "h2c"})
    version, status, body = await curl_status("--http1.1", f"http://127.0.0.1:{port}/a?b=1")
    assert (version, status) == ("1.1", "200")
    echoed = echo_json(body.encode())
    assert echoed["uri"] == "/a?b=1"
    # The back gateway was reached over HTTP/2 (its own client side saw HTTP/2.0).
    assert back.site.count("h2") == 1
    # HTTP/2 on both sides too.
    version, status, _ = await curl_status("--http2-prior-knowledge", f"http://127.0.0.1:{port}/b")
    assert (version, status) == ("2", "200")


@ensure
async def test_bodies_stream_both_ways_through_an_h2c_upstream(closer, tmp_path):
    echo = closer.add(upstream(EchoResource("echo")))
    back, back_port = h2_server(closer, echo.port)
    gw, port = front(closer, {"urls": [f"http://127.0.0.1:{back_port}"], "protocol": "h2c"})
    payload = tmp_path / "body.bin"
    payload.write_bytes(b"u" * (3 * 1024 * 1024 + 1))
    version, status, body = await curl_status(
        "--http1.1", "--data-binary", f"@{payload}", f"http://127.0.0.1:{port}/up"
    )
    assert (version, status) == ("1.1", "200")
    assert echo_json(body.encode())["body_bytes"] == 3 * 1024 * 1024 + 1
    # A chunked upload (no Content-Length) becomes plain DATA frames.
    code, out, err = await curl(
        "--http1.1",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{payload}",
        f"http://127.0.0.1:{port}/chunked",
    )
    assert code == 0, err
    assert echo_json(out.encode())["body_bytes"] == 3 * 1024 * 1024 + 1


@ensure
async def test_large_download_through_an_h2c_upstream(closer, tmp_path):
    big = closer.add(upstream(BigBody(8 * 1024 * 1024)))
    back, back_port = h2_server(closer, big.port)
    gw, port = front(closer, {"urls": [f"http://127.0.0.1:{back_port}"], "protocol": "h2c"})
    out = tmp_path / "out.bin"
    code, written, err = await curl(
        "--http1.1", "-o", str(out), "-w", "%{http_code}", f"http://127.0.0.1:{port}/big"
    )
    assert code == 0, err
    assert written == "200"
    assert out.stat().st_size == 8 * 1024 * 1024


@ensure
async def test_concurrent_requests_share_one_upstream_connection(closer):
    up = closer.add(upstream())
    back, back_port = h2_server(closer, up.port)
    gw, port = front(closer, {"urls": [f"http://127.0.0.1:{back_port}"], "protocol": "h2c"})
    answers = await gatherResults(
        [
            Deferred.fromCoroutine(curl_status("--http1.1", f"http://127.0.0.1:{port}/c/{i}"))
            for i in range(20)
        ]
    )
    assert [status for _, status, _ in answers] == ["200"] * 20
    # Twenty HTTP/1.1 client connections, multiplexed as streams over few upstream ones.
    assert 1 <= len(gw.runtime.clients.h2_pool.connections(_key(gw))) <= 2


def _key(gw: Any) -> Any:
    (route,) = gw.runtime.routes
    (target,) = route.upstream.targets
    return target.connector.key


@ensure
async def test_h2_upstream_over_tls_with_alpn(pki, closer):
    up = closer.add(upstream())
    back, back_port = h2_server(closer, up.port, _tls(pki))
    gw, port = front(
        closer,
        {"urls": [f"https://localhost:{back_port}"], "protocol": "h2", "ca_file": str(pki.ca.path)},
    )
    version, status, body = await curl_status("--http1.1", f"http://127.0.0.1:{port}/secure")
    assert (version, status) == ("1.1", "200")
    assert echo_json(body.encode())["uri"] == "/secure"
    assert back.site.count("h2") == 1


@ensure
async def test_an_upstream_that_does_not_speak_h2_is_a_502(closer):
    up = closer.add(upstream())  # HTTP/1.1 only
    gw, port = front(closer, {"urls": [f"http://127.0.0.1:{up.port}"], "protocol": "h2c"})
    version, status, body = await curl_status("--http1.1", f"http://127.0.0.1:{port}/x")
    assert status == "502"


@ensure
async def test_a_refusing_h2_upstream_is_a_502(closer):
    gw, port = front(closer, {"urls": ["http://127.0.0.1:1"], "protocol": "h2c"})
    version, status, body = await curl_status("--http1.1", f"http://127.0.0.1:{port}/x")
    assert status == "502"
