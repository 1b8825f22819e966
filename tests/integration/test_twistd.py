"""End to end through the real ``twistd -n avx-gateway`` process."""

from __future__ import annotations

import subprocess
import textwrap

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.support.process import REPO, TWISTD, GatewayProcess, free_port, rss_bytes, twistd
from tests.support.servers import BigBody, echo_json, upstream

ensure = pytest_twisted.ensureDeferred


def write_config(tmp_path, body: str) -> tuple:
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(f"[server]\nhost = \"127.0.0.1\"\nport = {port}\n" + textwrap.dedent(body))
    return path, port


def test_twistd_lists_the_plugin():
    out = subprocess.run([TWISTD, "--help"], cwd=REPO, capture_output=True, timeout=60)
    assert b"avx-gateway" in out.stdout


def test_the_briefs_config_passes_check():
    out = subprocess.run(
        [TWISTD, "avx-gateway", "--config", "config/gateway.toml", "--check"],
        cwd=REPO, capture_output=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert b"OK" in out.stdout


def test_bad_config_exits_non_zero_naming_every_key_before_listening(tmp_path):
    path, port = write_config(tmp_path, """
        workrs = 2
        [[routes]]
        path = "/a/*"
        [routes.upstream]
        urls = ["http://127.0.0.1:1"]
        strategy = "round-robin"
    """)
    proc = twistd("avx-gateway", "--config", str(path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"server.workrs: unknown key; did you mean 'workers'?" in err
    assert (
        b"routes[0].upstream.strategy: 'round-robin' is not one of round_robin, random, "
        b"least_connections, weighted" in err
    )
    assert b"Traceback" not in err + out


@ensure
async def test_twistd_gateway_proxies_and_exits_zero_on_sigterm(tmp_path, closer):
    up = closer.add(upstream())
    path, port = write_config(tmp_path, f"""
        [[routes]]
        path = "/api/*"
        strip_path = true
        [routes.upstream]
        urls = ["{up.url}"]
    """)
    gw = await GatewayProcess(path, port).start()
    try:
        response = await treq.get(gw.url("/api/hello?x=1"),
                                  pool=HTTPConnectionPool(reactor, persistent=False))
        assert response.code == 200
        assert echo_json(await response.content())["uri"] == "/hello?x=1"
    finally:
        assert await gw.stop() == 0


@ensure
async def test_200_mb_response_streams_in_bounded_memory(tmp_path, closer):
    size = 200 * 1024 * 1024
    up = closer.add(upstream(BigBody(size)))
    # Measured from a warmed-up gateway: on PyPy the JIT and the GC's heap threshold grow RSS by
    # a fixed ~35 MB over the first few hundred MB of traffic, whatever the body sizes. Each
    # warm-up body is 8 MB, so a gateway that buffered bodies could not have reserved the 200 MB.
    warm = closer.add(upstream(BigBody(8 * 1024 * 1024)))
    path, port = write_config(tmp_path, f"""
        [[routes]]
        path = "/*"
        [routes.upstream]
        urls = ["{up.url}"]
        [[routes]]
        path = "/warm/*"
        [routes.upstream]
        urls = ["{warm.url}"]
    """)
    gw = await GatewayProcess(path, port).start()
    try:
        for _ in range(32):
            response = await treq.get(gw.url("/warm/"), pool=HTTPConnectionPool(reactor, False))
            assert len(await response.content()) == 8 * 1024 * 1024
        before = rss_bytes(gw.pid)
        peak = before
        received = 0

        def count(data: bytes) -> None:
            nonlocal received, peak
            received += len(data)
            if received % (8 * 1024 * 1024) < len(data):
                peak = max(peak, rss_bytes(gw.pid))

        response = await treq.get(gw.url("/big"), pool=HTTPConnectionPool(reactor, False))
        await treq.collect(response, count)
        peak = max(peak, rss_bytes(gw.pid))
        assert received == size
        assert peak - before < 16 * 1024 * 1024, (before, peak)
    finally:
        assert await gw.stop() == 0


@ensure
async def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(tmp_path, closer):
    from twisted.internet.task import deferLater
    from twisted.web.server import NOT_DONE_YET

    from tests.support.servers import FnResource

    def slow(request):
        def answer():
            request.write(b"x" * 100_000)
            request.finish()

        reactor.callLater(0.8, answer)
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(slow)))
    path, port = write_config(tmp_path, f"""
        drain_timeout_ms = 5000
        [[routes]]
        path = "/*"
        [routes.upstream]
        urls = ["{up.url}"]
    """)
    gw = await GatewayProcess(path, port).start()
    pool = HTTPConnectionPool(reactor, persistent=False)
    in_flight = treq.get(gw.url("/slow"), pool=pool)
    await deferLater(reactor, 0.3, lambda: None)
    gw.proc.send_signal(15)
    await deferLater(reactor, 0.2, lambda: None)
    refused = False
    try:  # draining: the listener is closed, the request in flight goes on
        await treq.get(gw.url("/healthz"), pool=HTTPConnectionPool(reactor, persistent=False))
    except ConnectionRefusedError:
        refused = True
    except Exception as e:
        refused = "refused" in str(e).lower()
    assert refused
    response = await in_flight
    body = await response.content()
    assert response.code == 200
    assert body == b"x" * 100_000
    assert await gw.wait() == 0
