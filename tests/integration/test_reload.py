"""Hot reload: a new config replaces routes and upstreams between requests, atomically."""

from __future__ import annotations

import signal
import textwrap
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from avx_twisted.config import GatewayConfig
from avx_twisted.demo import EchoResource
from avx_twisted.service import GatewayService
from tests.support.process import GatewayProcess, free_port
from tests.support.servers import FnResource, echo_json, http, upstream

ensure = pytest_twisted.ensureDeferred


def write(path, port, routes: str, extra: str = "") -> None:
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[middleware]\nenable_logging = false\n'
        + textwrap.dedent(routes) + textwrap.dedent(extra)
    )


def one_route(url: str, name: str = "all", path: str = "/*", extra: str = "") -> str:
    return f"""
        [[routes]]
        name = "{name}"
        path = "{path}"
        [routes.upstream]
        urls = ["{url}"]
    """ + extra


def start(path) -> GatewayService:
    service = GatewayService(GatewayConfig.load(str(path)), reactor)
    service.startService()
    return service


async def service_name(port: int, path: str = "/x") -> str:
    response = await http("GET", f"http://127.0.0.1:{port}{path}")
    return echo_json(await response.content())["service"]


@ensure
async def test_reload_switches_upstreams_between_requests(tmp_path, closer):
    a = closer.add(upstream(EchoResource("a")))
    b = closer.add(upstream(EchoResource("b")))
    path = tmp_path / "gw.toml"
    write(path, 0, one_route(a.url))
    gw = closer.add(start(path))
    assert await service_name(gw.port) == "a"
    write(path, 0, one_route(b.url) + one_route(a.url, name="old", path="/old/*"))
    assert gw.reload() is True
    assert await service_name(gw.port) == "b"
    assert await service_name(gw.port, "/old/1") == "a"


@ensure
async def test_invalid_config_is_refused_and_the_old_one_keeps_serving(tmp_path, closer):
    from twisted.logger import globalLogPublisher

    a = closer.add(upstream(EchoResource("a")))
    path = tmp_path / "gw.toml"
    write(path, 0, one_route(a.url))
    gw = closer.add(start(path))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        path.write_text(path.read_text().replace('"round_robin"', "") + "\n[server2]\n")
        assert gw.reload() is False
    finally:
        globalLogPublisher.removeObserver(events.append)
    refused = [e for e in events if "reload refused" in e.get("log_format", "")]
    assert refused and "server2: unknown key" in refused[0]["errors"]
    assert await service_name(gw.port) == "a"


@ensure
async def test_request_in_flight_finishes_on_the_old_config(tmp_path, closer):
    held = []

    def hold(request):
        held.append(request)
        return NOT_DONE_YET

    slow = closer.add(upstream(FnResource(hold)))
    b = closer.add(upstream(EchoResource("b")))
    path = tmp_path / "gw.toml"
    write(path, 0, one_route(slow.url))
    gw = closer.add(start(path))
    pending = http("GET", f"http://127.0.0.1:{gw.port}/slow")
    while not held:
        await deferLater(reactor, 0.02, lambda: None)
    write(path, 0, one_route(b.url))
    assert gw.reload() is True
    assert await service_name(gw.port) == "b"  # new requests: the new config
    held[0].write(b"old config answer")
    held[0].finish()
    response = await pending
    assert await response.content() == b"old config answer"


@ensure
async def test_unchanged_targets_keep_their_circuit_state(tmp_path, closer):
    dead = f"http://127.0.0.1:{free_port()}"
    a = closer.add(upstream(EchoResource("a")))
    breaker = """
        [routes.upstream.circuit_breaker]
        failure_threshold = 1
        recovery_timeout_ms = 60000
    """
    path = tmp_path / "gw.toml"
    write(path, 0, one_route(dead, name="flaky", path="/flaky/*", extra=breaker))
    gw = closer.add(start(path))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/flaky/x")
    assert response.code == 502
    target = gw.runtime.routes[0].upstream.targets[0]
    assert target.breaker.state.value == "open"
    write(path, 0, one_route(dead, name="flaky", path="/flaky/*", extra=breaker)
          + one_route(a.url, name="new", path="/new/*"))
    assert gw.reload() is True
    assert gw.runtime.routes[0].upstream.targets[0] is target  # same live state
    response = await http("GET", f"http://127.0.0.1:{gw.port}/flaky/x")
    assert response.code == 503  # still open: the upstream is not contacted
    assert await service_name(gw.port, "/new/1") == "a"


@ensure
async def test_sighup_reloads_the_real_twistd_process(tmp_path, closer):
    a = closer.add(upstream(EchoResource("a")))
    b = closer.add(upstream(EchoResource("b")))
    port = free_port()
    path = tmp_path / "gw.toml"
    write(path, port, one_route(a.url))
    gw = await GatewayProcess(path, port).start()
    try:
        assert await service_name(port) == "a"
        held = []

        def hold(request):
            held.append(request)
            return NOT_DONE_YET

        slow = closer.add(upstream(FnResource(hold)))
        write(path, port, one_route(slow.url, name="slow", path="/slow/*") + one_route(a.url))
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.output().count("reloaded") < 1 and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        in_flight = http("GET", f"http://127.0.0.1:{port}/slow/1")
        while not held:
            await deferLater(reactor, 0.02, lambda: None)
        write(path, port, one_route(b.url))
        gw.proc.send_signal(signal.SIGHUP)  # a second reload with that request in flight
        deadline = time.monotonic() + 10
        while gw.output().count("reloaded") < 2 and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        assert await service_name(port) == "b"
        held[0].write(b"finished on the old config")
        held[0].finish()
        assert await (await in_flight).content() == b"finished on the old config"
        assert gw.proc.poll() is None  # still running
    finally:
        assert await gw.stop() == 0
