"""WebSocket tunnelling end to end: a real ``websockets`` server behind the gateway and a real
``websockets`` client in front of it (both in threads; the gateway on the test's reactor)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.servers import gateway, http, raw_request
from tests.support.ws import WsUpstream, connect

ensure = pytest_twisted.ensureDeferred


def in_thread(fn: Any, *args: Any) -> Any:
    return threads.deferToThread(fn, *args)


def ws_gateway(closer: Any, up: WsUpstream, route: dict[str, Any] | None = None, **top: Any):
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/*", **(route or {}), "upstream": {"urls": [up.url]}}],
        **top,
    }
    return closer.add(gateway(config))


@pytest.fixture
def echo_upstream():
    up = WsUpstream()
    yield up
    up.stop()


def ws_url(gw: Any, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


async def metrics_text(gw: Any) -> str:
    response = await http("GET", f"http://127.0.0.1:{gw.port}/metrics")
    return (await response.content()).decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@ensure
async def test_text_and_binary_echo_and_many_messages(closer, echo_upstream):
    gw = ws_gateway(closer, echo_upstream)

    def client() -> list[Any]:
        got = []
        with connect(ws_url(gw), max_size=None, compression=None) as ws:
            ws.send("hello")
            got.append(ws.recv())
            ws.send(b"\x00\x01binary")
            got.append(ws.recv())
            for i in range(1000):
                ws.send(f"m{i}")
            got.append([ws.recv() for _ in range(1000)] == [f"m{i}" for i in range(1000)])
            pong = ws.ping(b"p")
            got.append(pong.wait(5))
        return got

    assert await in_thread(client) == ["hello", b"\x00\x01binary", True, True]


@ensure
async def test_a_16_mib_message_passes_whole(closer, echo_upstream):
    gw = ws_gateway(closer, echo_upstream)
    payload = bytes(range(256)) * (16 * 4096)

    def client() -> bool:
        with connect(ws_url(gw), max_size=None, compression=None) as ws:
            ws.send(payload)
            return ws.recv() == payload

    assert await in_thread(client)


@ensure
async def test_close_codes_pass_both_ways(closer):
    def closes_with_4001(connection: Any) -> None:
        connection.recv()
        connection.close(4001, "server says bye")

    up = WsUpstream(closes_with_4001)
    try:
        gw = ws_gateway(closer, up)

        def client_closes() -> tuple[int, str]:
            with connect(ws_url(gw)) as ws:
                ws.send("x")
                try:
                    ws.recv()
                except ConnectionClosed as e:
                    return e.rcvd.code, e.rcvd.reason
            return 0, ""

        assert await in_thread(client_closes) == (4001, "server says bye")
    finally:
        up.stop()

    seen: list[Any] = []

    def records_close(connection: Any) -> None:
        try:
            connection.recv()
        except ConnectionClosed as e:
            seen.append((e.rcvd.code, e.rcvd.reason))

    up2 = WsUpstream(records_close)
    try:
        gw2 = ws_gateway(closer, up2)

        def client() -> None:
            ws = connect(ws_url(gw2))
            ws.close(4002, "client says bye")

        await in_thread(client)
        for _ in range(50):
            if seen:
                break
            await threads.deferToThread(time.sleep, 0.02)
        assert seen == [(4002, "client says bye")]
    finally:
        up2.stop()


def handshake_status(url: str) -> int:
    """The status a handshake gets: 101, or the refusal's."""
    try:
        with connect(url):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


@ensure
async def test_upstream_refusing_the_upgrade_is_relayed_as_a_normal_response(closer):
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    refusal = Response(403, "Forbidden", Headers({"Content-Length": "4"}), b"nope")
    up = WsUpstream(lambda c: None, process_request=lambda connection, request: refusal)
    try:
        gw = ws_gateway(closer, up)
        assert await in_thread(handshake_status, ws_url(gw)) == 403
        text = await metrics_text(gw)
        assert metric(text, "avx_websocket_tunnels_total", route="root", status="403") == 1
        assert metric(text, "avx_websocket_tunnels_total", route="root", status="101") == 0
    finally:
        up.stop()


@ensure
async def test_websocket_false_drops_the_upgrade(closer, echo_upstream):
    gw = ws_gateway(closer, echo_upstream, {"websocket": False})
    # The upstream sees a plain GET without Upgrade and says so (websockets answers 426).
    assert await in_thread(handshake_status, ws_url(gw)) == 426


@ensure
async def test_auth_refuses_before_any_101(closer, echo_upstream):
    import hashlib

    digest = hashlib.sha256(b"k1").hexdigest()
    gw = ws_gateway(
        closer,
        echo_upstream,
        {"auth": ["api_key"]},
        auth={"api_key": {"keys": [{"name": "ops", "sha256": digest}]}},
    )

    def client(headers: dict[str, str]) -> Any:
        try:
            with connect(ws_url(gw), additional_headers=headers) as ws:
                ws.send("ok?")
                return ws.recv()
        except InvalidStatus as e:
            return e.response.status_code

    assert await in_thread(client, {}) == 401
    assert await in_thread(client, {"X-API-Key": "k1"}) == "ok?"


@ensure
async def test_cross_site_origin_is_refused_when_the_route_does_cors(closer, echo_upstream):
    gw = ws_gateway(
        closer,
        echo_upstream,
        middleware={"enable_cors": True},
        cors={"allowed_origins": ["https://app.example"]},
    )

    def client(origin: str | None) -> Any:
        try:
            with connect(ws_url(gw), origin=origin) as ws:
                ws.send("hi")
                return ws.recv()
        except InvalidStatus as e:
            return e.response.status_code

    assert await in_thread(client, "https://evil.example") == 403
    assert await in_thread(client, "https://app.example") == "hi"
    assert await in_thread(client, None) == "hi"


@ensure
async def test_idle_tunnel_is_closed_and_counted_and_logged(closer, echo_upstream, tmp_path):
    log_path = tmp_path / "access.log"
    gw = ws_gateway(
        closer,
        echo_upstream,
        {"websocket_idle_timeout_ms": 300},
        logging={"access_log": str(log_path)},
    )

    def client() -> str:
        with connect(ws_url(gw), ping_interval=None) as ws:
            ws.send("abc")
            ws.recv()
            started = time.monotonic()
            try:
                ws.recv(timeout=5)
            except ConnectionClosed:
                return "closed after %.1f" % (time.monotonic() - started)
        return "open"

    result = await in_thread(client)
    assert result.startswith("closed after 0.")
    for _ in range(50):
        text = await metrics_text(gw)
        if metric(text, "avx_websocket_tunnels_open", route="root") == 0:
            break
    assert metric(text, "avx_websocket_tunnels_total", route="root", status="101") == 1
    assert metric(text, "avx_websocket_tunnels_open", route="root") == 0
    assert metric(text, "avx_websocket_bytes_total", route="root", direction="up") > 0
    assert metric(text, "avx_websocket_bytes_total", route="root", direction="down") > 0
    assert metric(text, "avx_requests_total", route="root", method="GET", status="101") == 1
    await gw.stopService()  # flushes the access log
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    tunnel = [r for r in records if r["status"] == 101]
    assert len(tunnel) == 1
    assert tunnel[0]["request_bytes"] > 0 and tunnel[0]["response_bytes"] > 0
    assert tunnel[0]["duration_ms"] >= 300


@ensure
async def test_a_slow_reader_pauses_the_writer(closer):
    """The upstream sends 64 MiB as fast as it can; the client reads nothing for a while: the
    gateway must pause the upstream instead of buffering it all, and every byte arrives in the
    end. What the upstream got to send while the client slept is what the socket buffers and the
    gateway hold; without backpressure it would be everything (loopback moves 64 MiB in well
    under the second the client sleeps). The gateway's RSS is not the measure: the upstream, the
    client and the gateway share this process, and PyPy's collector lets garbage peak high."""
    total = 64 * 1024 * 1024
    chunk = b"z" * (1024 * 1024)
    sent: list[int] = []

    def flood(connection: Any) -> None:
        connection.recv()
        for _ in range(total // len(chunk)):
            connection.send(chunk)  # blocks while the socket is full
            sent.append(len(chunk))
        connection.recv()

    up = WsUpstream(flood)
    try:
        gw = ws_gateway(closer, up)

        def client() -> tuple[int, int]:
            with connect(ws_url(gw), max_size=None, max_queue=1) as ws:
                ws.send("go")
                time.sleep(1.5)  # not reading: TCP windows fill, the gateway pauses the upstream
                in_flight = sum(sent)
                got = 0
                while got < total:
                    got += len(ws.recv())
                ws.send("done")
                return got, in_flight

        got, in_flight = await in_thread(client)
        assert got == total
        assert 0 < in_flight <= total // 2, in_flight
    finally:
        up.stop()


@ensure
async def test_h2c_upgrade_is_not_tunnelled(closer, echo_upstream):
    gw = ws_gateway(closer, echo_upstream)
    data = await raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        timeout=3,
    )
    assert not data.startswith(b"HTTP/1.1 101")


@ensure
async def test_a_drain_lets_requests_finish_and_closes_tunnels_at_its_end(closer, echo_upstream):
    gw = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_ms": 500},
            "routes": [{"path": "/*", "upstream": {"urls": [echo_upstream.url]}}],
        }
    )
    opened = threading.Event()

    def client() -> tuple[str, float]:
        with connect(ws_url(gw), ping_interval=None) as ws:
            ws.send("before")
            ws.recv()
            opened.set()
            started = time.monotonic()
            try:
                while True:
                    ws.recv(timeout=5)
            except ConnectionClosed:
                return "closed", time.monotonic() - started
            except TimeoutError:
                return "still open", time.monotonic() - started

    done = in_thread(client)
    await in_thread(opened.wait, 5)
    started = time.monotonic()
    await gw.stopService()
    result, after = await done
    assert result == "closed"
    assert 0.4 <= time.monotonic() - started < 3
    assert after >= 0.4


@ensure
async def test_a_reload_leaves_open_tunnels_alone(closer, echo_upstream, tmp_path):
    path = tmp_path / "gw.toml"
    config = (
        '[server]\nhost = "127.0.0.1"\nport = 0\n[[routes]]\npath = "/*"\n'
        f'[routes.upstream]\nurls = ["{echo_upstream.url}"]\n'
    )
    path.write_text(config)
    from twisted.internet import reactor

    from avx_twisted.config import GatewayConfig
    from avx_twisted.service import GatewayService

    gw = closer.add(GatewayService(GatewayConfig.load(str(path)), reactor))
    gw.startService()
    opened = threading.Event()
    go_on = threading.Event()

    def client() -> list[str]:
        with connect(ws_url(gw)) as ws:
            ws.send("one")
            got = [ws.recv()]
            opened.set()
            go_on.wait(5)
            ws.send("two")
            got.append(ws.recv())
            return got

    done = in_thread(client)
    await in_thread(opened.wait, 5)
    path.write_text(config.replace('path = "/*"', 'path = "/*"\ntimeout_ms = 1000'))
    assert gw.reload()
    go_on.set()
    assert await done == ["one", "two"]
