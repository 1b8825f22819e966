"""``server.workers = N`` through the real twistd: one bound socket, N worker processes."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET

from tests.support.process import GatewayProcess, children, free_port, twistd
from tests.support.redis import RedisServer
from tests.support.servers import FnResource, upstream

ensure = pytest_twisted.ensureDeferred


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


def write_config(tmp_path, up_url, workers=2, extra=""):
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        workers = {workers}
        drain_timeout_ms = 5000
        [[routes]]
        name = "all"
        path = "/*"
        [routes.upstream]
        urls = ["{up_url}"]
        [logging]
        access_log = "{tmp_path / 'access.log'}"
    """) + textwrap.dedent(extra))
    return path, port


async def get(gw, path):
    response = await treq.get(gw.url(path), pool=HTTPConnectionPool(reactor, persistent=False))
    return response, await response.content()


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await sleep(0.1)
    return False


def requests_total(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "avx_requests_total":
                total += sample.value
    return total


@ensure
async def test_workers_share_the_port_and_metrics_sum_over_all(tmp_path, closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    path, port = write_config(tmp_path, up.url)
    gw = await GatewayProcess(path, port).start()
    try:
        assert await wait_for(lambda: len(children(gw.pid)) == 2)
        workers = children(gw.pid)
        for _ in range(10):
            response, body = await get(gw, "/x")
            assert response.code == 200 and body == b"ok"
        # Whichever worker answers /metrics, it reports the sum over both.
        for _ in range(4):
            _, metrics = await get(gw, "/metrics")
            assert requests_total(metrics.decode()) == 10
        # Kill one worker: the other keeps serving the same socket, and the dead one is replaced.
        killed = workers[0]
        import os

        os.kill(killed, signal.SIGKILL)
        for _ in range(5):
            response, _ = await get(gw, "/x")
            assert response.code == 200
        assert await wait_for(
            lambda: len(children(gw.pid)) == 2 and killed not in children(gw.pid)
        )
        _, metrics = await get(gw, "/metrics")
        assert requests_total(metrics.decode()) == 15  # the dead worker's counts are kept
    finally:
        assert await gw.stop() == 0
    assert children(gw.pid) == []


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return -1.0


@pytest.mark.parametrize("backend", ["memory", "redis"])
@ensure
async def test_cache_size_metrics_count_every_worker_once(tmp_path, closer, backend):
    """20 URLs stored through two workers: ``avx_cache_entries`` says 20 whichever worker
    answers the scrape, summing the workers' memory stores, or reading the shared Redis store
    once (not once per worker)."""
    up = closer.add(upstream(FnResource(lambda r: _cacheable(r))))
    extra = "[routes.cache]\n"
    server = None
    if backend == "redis":
        server = RedisServer(tmp_path).start()
        extra += f'[cache]\nbackend = "redis"\nredis_url = "{server.url}"\n'
    try:
        path, port = write_config(tmp_path, up.url, extra=extra)
        gw = await GatewayProcess(path, port).start()
        try:
            assert await wait_for(lambda: len(children(gw.pid)) == 2)
            for n in range(20):
                response, _ = await get(gw, f"/c/{n}")
                assert response.code == 200
            texts: list[str] = []

            async def scraped() -> bool:
                _, metrics = await get(gw, "/metrics")
                texts.append(metrics.decode())
                return gauge(texts[-1], "avx_cache_entries") == 20

            deadline = time.monotonic() + 15
            while not await scraped() and time.monotonic() < deadline:
                await sleep(0.5)
            assert gauge(texts[-1], "avx_cache_entries") == 20, texts[-1]
            assert gauge(texts[-1], "avx_cache_stored_bytes") > 0
            for _ in range(3):  # the same from either worker
                _, metrics = await get(gw, "/metrics")
                assert gauge(metrics.decode(), "avx_cache_entries") == 20
        finally:
            assert await gw.stop() == 0
    finally:
        if server is not None:
            server.stop()


def _cacheable(request) -> bytes:
    request.setHeader(b"Cache-Control", b"max-age=600")
    return b"cached " + request.path


@ensure
async def test_sigterm_drains_in_flight_requests_in_workers_and_exits_zero(tmp_path, closer):
    def slow(request):
        def answer():
            request.write(b"y" * 50_000)
            request.finish()

        reactor.callLater(0.8, answer)
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(slow)))
    path, port = write_config(tmp_path, up.url)
    gw = await GatewayProcess(path, port).start()
    assert await wait_for(lambda: len(children(gw.pid)) == 2)
    in_flight = treq.get(gw.url("/slow"), pool=HTTPConnectionPool(reactor, persistent=False))
    await sleep(0.3)
    gw.proc.send_signal(signal.SIGTERM)
    response = await in_flight
    assert response.code == 200
    assert await response.content() == b"y" * 50_000
    assert await gw.wait() == 0


@ensure
async def test_sighup_reaches_the_workers_and_nobody_dies(tmp_path, closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    path, port = write_config(tmp_path, up.url)
    gw = await GatewayProcess(path, port).start()
    try:
        assert await wait_for(lambda: "ready (2 of 2)" in gw.output(), timeout=30)
        before = children(gw.pid)
        gw.proc.send_signal(signal.SIGHUP)
        await sleep(0.5)
        assert children(gw.pid) == before
        assert (await get(gw, "/x"))[0].code == 200
    finally:
        assert await gw.stop() == 0
    assert gw.output().count("reloaded ") == 2  # each worker re-read the config


def test_port_in_use_stops_the_supervisor_with_non_zero_exit(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        path = tmp_path / "gateway.toml"
        path.write_text(textwrap.dedent(f"""
            [server]
            host = "127.0.0.1"
            port = {taken.getsockname()[1]}
            workers = 2
            [[routes]]
            path = "/*"
            [routes.upstream]
            urls = ["http://127.0.0.1:1"]
        """))
        proc = twistd("avx-gateway", "--config", str(path))
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode != 0
    assert b"Address already in use" in out + err
