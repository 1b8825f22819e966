"""Resource routes end to end: a real gateway serving ``tests.support.resources:root`` to a real
HTTP client, the route's filters in front of it, and the real twistd process streaming a 200 MB
file in flat memory."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.support.process import GatewayProcess, free_port, rss_bytes
from tests.support.resources import BIG_FILE_ENV
from tests.support.servers import gateway, http

ensure = pytest_twisted.ensureDeferred

KEY = "resource-test-key"
SPEC = "tests.support.resources:root"


def config() -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"api_key": {"header": "X-API-Key", "keys": [
            {"name": "ci", "sha256": hashlib.sha256(KEY.encode()).hexdigest()},
        ]}},
        "routes": [
            {"path": "/site/*", "strip_path": True, "max_body_bytes": 1000, "resource": SPEC},
            {"path": "/private/*", "strip_path": True, "auth": ["api_key"], "resource": SPEC},
        ],
    }


async def call(gw, method, path, **kw):
    response = await http(method, f"http://127.0.0.1:{gw.port}{path}", **kw)
    return response, await response.content()


@ensure
async def test_a_resource_route_serves_the_tree_after_strip_path(closer):
    gw = closer.add(gateway(config()))
    response, body = await call(gw, "GET", "/site/hello?x=1")
    assert response.code == 200
    assert body == b"hello from /hello?x=1"
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert len(response.headers.getRawHeaders(b"x-request-id")[0]) > 0
    assert response.headers.getRawHeaders(b"server") is None


@ensure
async def test_not_done_yet_and_twisted_webs_own_404(closer):
    gw = closer.add(gateway(config()))
    response, body = await call(gw, "GET", "/site/later")
    assert (response.code, body) == (200, b"later")
    response, _ = await call(gw, "GET", "/site/nothing-here")
    assert response.code == 404


@ensure
async def test_a_request_body_is_read_and_bounded_by_max_body_bytes(closer):
    gw = closer.add(gateway(config()))
    response, body = await call(gw, "POST", "/site/echo", data=b"x" * 500)
    assert (response.code, body) == (200, b"got 500 bytes")
    response, body = await call(gw, "POST", "/site/echo", data=b"x" * 5000)
    assert response.code == 413
    assert json.loads(body)["status"] == 413


@ensure
async def test_the_routes_filters_apply_before_the_resource(closer):
    gw = closer.add(gateway(config()))
    response, body = await call(gw, "GET", "/private/hello")
    assert response.code == 401
    assert json.loads(body)["status"] == 401
    response, body = await call(gw, "GET", "/private/hello", headers={"X-API-Key": KEY})
    assert (response.code, body) == (200, b"hello from /hello")


@ensure
async def test_200_mb_file_streams_from_a_resource_route_in_flat_memory(
    tmp_path, closer, monkeypatch
):
    size = 200 * 1024 * 1024
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: no disk blocks, reads as zeros
        f.truncate(size)
    monkeypatch.setenv(BIG_FILE_ENV, str(big))  # the twistd child inherits it
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        [[routes]]
        path = "/files/*"
        strip_path = true
        resource = "{SPEC}"
    """))
    gw = await GatewayProcess(path, port).start()
    try:
        # Warm up (PyPy's JIT and GC threshold grow RSS by a fixed amount early on) with 8 MB
        # ranges: a gateway that buffered the file could not have reserved 200 MB here.
        piece = 8 * 1024 * 1024
        for i in range(32):
            start = i % 24 * piece
            response = await treq.get(
                gw.url("/files/big"),
                headers={"Range": f"bytes={start}-{start + piece - 1}"},
                pool=HTTPConnectionPool(reactor, False),
            )
            assert response.code == 206
            assert len(await response.content()) == piece
        before = rss_bytes(gw.pid)
        peak = before
        received = 0

        def count(data: bytes) -> None:
            nonlocal received, peak
            received += len(data)
            if received % piece < len(data):
                peak = max(peak, rss_bytes(gw.pid))

        response = await treq.get(gw.url("/files/big"), pool=HTTPConnectionPool(reactor, False))
        assert response.code == 200
        assert response.length == size  # Content-Length: the core did not chunk it
        await treq.collect(response, count)
        peak = max(peak, rss_bytes(gw.pid))
        assert received == size
        assert peak - before < 16 * 1024 * 1024, (before, peak)
    finally:
        assert await gw.stop() == 0
