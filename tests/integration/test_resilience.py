"""Fault injection with real upstreams: hangs, refusals, 5xx, bodies cut off, recovery."""

from __future__ import annotations

import json
import time
from unittest.mock import ANY

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from avx_twisted.demo import EchoResource
from tests.support.servers import (
    FnResource,
    Hang,
    echo_json,
    gateway,
    http,
    raw_request,
    raw_upstream,
    upstream,
)

ensure = pytest_twisted.ensureDeferred


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


def gw_config(urls, server=None, upstream_extra=None, **route):
    return {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "routes": [{"path": "/*", **route, "upstream": {"urls": list(urls),
                                                        **(upstream_extra or {})}}],
    }


async def get(gw, path="/x", method="GET", **kw):
    response = await http(method, f"http://127.0.0.1:{gw.port}{path}", **kw)
    return response, await response.content()


def dead_url() -> str:
    """A loopback URL nobody listens on (refuses at once)."""
    from tests.support.process import free_port

    return f"http://127.0.0.1:{free_port()}"


# -- timeouts ------------------------------------------------------------------------------------


@ensure
async def test_hanging_upstream_gets_504_and_its_connection_is_aborted(closer):
    lost = []

    def hang(request):
        request.notifyFinish().addErrback(lost.append)
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(hang)))
    gw = closer.add(gateway(gw_config([up.url], timeout_ms=300)))
    started = time.monotonic()
    response, body = await get(gw)
    assert response.code == 504
    assert json.loads(body) == {"error": "upstream timed out", "status": 504, "request_id": ANY}
    assert 0.25 < time.monotonic() - started < 2
    await sleep(0.05)
    assert len(lost) == 1  # the gateway cut the upstream connection (not pooled for reuse)


@ensure
async def test_timeout_after_the_response_started_aborts_the_client(closer):
    class HeadersThenHang(Protocol):
        def dataReceived(self, data):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")

    up = closer.add(raw_upstream(HeadersThenHang))
    gw = closer.add(gateway(gw_config([up.url], timeout_ms=300)))
    data = await raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"start"  # cut off: never the promised 100 bytes


# -- retries -------------------------------------------------------------------------------------


@ensure
async def test_idempotent_request_is_retried_on_another_target_after_refusal(closer):
    live = closer.add(upstream(EchoResource("live")))
    gw = closer.add(gateway(gw_config([dead_url(), live.url], retries=1)))
    for _ in range(4):  # round robin starts at the dead target every other request
        response, body = await get(gw)
        assert response.code == 200
        assert echo_json(body)["service"] == "live"


@ensure
async def test_post_is_never_retried(closer):
    live = closer.add(upstream(EchoResource("live")))
    gw = closer.add(gateway(gw_config([dead_url(), live.url], retries=3)))
    response, _ = await get(gw, method="POST", data=b"x")  # first pick: the dead target
    assert response.code == 502


@ensure
async def test_503_from_upstream_is_retried_for_get_but_passed_through_for_post(closer):
    busy = FnResource(lambda r: (r.setResponseCode(503), b"busy")[1])
    a = closer.add(upstream(busy))
    b = closer.add(upstream(EchoResource("b")))
    gw = closer.add(gateway(gw_config([a.url, b.url], retries=1)))
    response, body = await get(gw)
    assert response.code == 200 and echo_json(body)["service"] == "b"
    fresh = closer.add(gateway(gw_config([a.url, b.url], retries=1)))
    response, body = await get(fresh, method="POST", data=b"x")  # first pick: `a`
    assert response.code == 503 and body == b"busy"


@ensure
async def test_retries_stop_when_no_other_target_is_left(closer):
    gw = closer.add(gateway(gw_config([dead_url(), dead_url()], retries=5)))
    response, body = await get(gw)
    assert response.code == 502
    assert json.loads(body)["error"] == "upstream unavailable"


@ensure
async def test_retries_share_the_route_timeout(closer):
    a = closer.add(upstream(Hang()))
    b = closer.add(upstream(Hang()))
    gw = closer.add(gateway(gw_config([a.url, b.url], retries=1, timeout_ms=500)))
    started = time.monotonic()
    response, _ = await get(gw)
    assert response.code == 504
    assert time.monotonic() - started < 0.95  # one budget for the whole exchange (two: 1 s)


# -- circuit breaker -----------------------------------------------------------------------------


@ensure
async def test_breaker_opens_then_503_with_retry_after_without_touching_upstream(closer):
    state = {"code": 500}
    failing = FnResource(lambda r: (r.setResponseCode(state["code"]), b"x")[1])
    up = closer.add(upstream(failing))
    breaker = {"failure_threshold": 2, "recovery_timeout_ms": 300, "half_open_requests": 1}
    gw = closer.add(gateway(gw_config([up.url], upstream_extra={"circuit_breaker": breaker})))
    for _ in range(2):
        response, _ = await get(gw)
        assert response.code == 500
    response, body = await get(gw)
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert json.loads(body) == {"error": "upstream circuit open", "status": 503, "request_id": ANY}
    assert len(failing.seen) == 2  # the open circuit kept the third request away

    state["code"] = 200
    await sleep(0.35)  # recovery timeout passes: one trial goes through and closes the circuit
    response, _ = await get(gw)
    assert response.code == 200
    assert gw.runtime.routes[0].upstream.targets[0].breaker.state.value == "closed"


@ensure
async def test_failed_trial_reopens_the_breaker(closer):
    failing = FnResource(lambda r: (r.setResponseCode(502), b"x")[1])
    up = closer.add(upstream(failing))
    breaker = {"failure_threshold": 1, "recovery_timeout_ms": 200}
    gw = closer.add(gateway(gw_config([up.url], upstream_extra={"circuit_breaker": breaker})))
    assert (await get(gw))[0].code == 502
    assert (await get(gw))[0].code == 503
    await sleep(0.25)
    assert (await get(gw))[0].code == 502  # the trial
    assert (await get(gw))[0].code == 503  # open again
    assert len(failing.seen) == 2


@ensure
async def test_balancer_skips_a_target_whose_circuit_is_open(closer):
    a = closer.add(upstream(FnResource(lambda r: (r.setResponseCode(500), b"x")[1])))
    b = closer.add(upstream(EchoResource("b")))
    breaker = {"failure_threshold": 1, "recovery_timeout_ms": 60000}
    gw = closer.add(gateway(gw_config([a.url, b.url],
                                      upstream_extra={"circuit_breaker": breaker})))
    assert (await get(gw))[0].code == 500  # a fails once: its circuit opens
    for _ in range(4):
        response, body = await get(gw)
        assert response.code == 200 and echo_json(body)["service"] == "b"


# -- active health checks and probes -------------------------------------------------------------


def _health_flag(state):
    def render(request):
        if request.path == b"/health":
            request.setResponseCode(200 if state["ok"] else 500)
            return b"health"
        return EchoResource(state["name"]).render(request)

    return FnResource(render)


@ensure
async def test_unhealthy_target_leaves_rotation_and_comes_back(closer):
    a_state = {"ok": True, "name": "a"}
    a = closer.add(upstream(_health_flag(a_state)))
    b = closer.add(upstream(_health_flag({"ok": True, "name": "b"})))
    check = {"path": "/health", "interval_ms": 50, "timeout_ms": 500,
             "unhealthy_threshold": 2, "healthy_threshold": 2}
    gw = closer.add(gateway(gw_config([a.url, b.url], upstream_extra={"health_check": check})))
    a_state["ok"] = False
    await sleep(0.3)
    names = [echo_json((await get(gw))[1])["service"] for _ in range(4)]
    assert names == ["b"] * 4
    a_state["ok"] = True
    await sleep(0.3)
    names = {echo_json((await get(gw))[1])["service"] for _ in range(4)}
    assert names == {"a", "b"}


@ensure
async def test_no_healthy_target_is_503_and_health_reports_it(closer):
    state = {"ok": False, "name": "a"}
    a = closer.add(upstream(_health_flag(state)))
    check = {"interval_ms": 50, "timeout_ms": 500, "unhealthy_threshold": 1}
    gw = closer.add(gateway(gw_config([a.url], upstream_extra={"health_check": check})))
    await sleep(0.2)
    response, body = await get(gw)
    assert response.code == 503
    assert json.loads(body) == {
        "error": "no upstream target available",
        "status": 503,
        "request_id": ANY,
    }
    response, body = await get(gw, "/health")
    assert response.code == 503
    report = json.loads(body)
    assert report["status"] == "degraded"
    target = report["routes"][0]["targets"][0]
    assert target["healthy"] is False and target["available"] is False


@ensure
async def test_probe_endpoints(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(gw_config([up.url])))
    response, body = await get(gw, "/healthz")
    assert response.code == 200 and json.loads(body) == {"status": "alive"}
    response, body = await get(gw, "/ready")
    assert response.code == 200 and json.loads(body) == {"status": "ready"}
    response, body = await get(gw, "/health")
    report = json.loads(body)
    assert response.code == 200
    assert report["status"] == "ok"
    assert report["version"]
    assert report["uptime_s"] >= 0
    assert report["routes"][0]["targets"][0] == {
        "url": up.url, "healthy": True, "circuit": "closed", "available": True, "in_flight": 0,
    }


@ensure
async def test_probe_paths_come_from_config_and_route_wildcards_do_not_see_them(closer):
    up = closer.add(upstream())
    config = gw_config([up.url])
    config["health"] = {"liveness_path": "/live", "readiness_path": "/rdy", "health_path": "/h"}
    gw = closer.add(gateway(config))
    assert (await get(gw, "/live"))[0].code == 200
    assert json.loads((await get(gw, "/rdy"))[1]) == {"status": "ready"}
    response, body = await get(gw, "/healthz")  # no longer reserved: proxied
    assert echo_json(body)["uri"] == "/healthz"


@ensure
async def test_stop_drains_in_flight_and_ready_turns_503(closer):
    def slow(request):
        reactor.callLater(0.3, lambda: (request.write(b"done"), request.finish()))
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(slow)))
    gw = gateway(gw_config([up.url], server={"drain_timeout_ms": 5000}))
    port = gw.port
    pending = http("GET", f"http://127.0.0.1:{port}/slow")
    await sleep(0.1)
    stopping = gw.stopService()
    assert gw.probes.ready is False
    response = await pending
    assert response.code == 200
    assert await response.content() == b"done"
    await stopping
    assert not gw.handler.in_flight.count


@ensure
async def test_drain_timeout_cuts_off_stragglers(closer):
    up = closer.add(upstream(Hang()))
    gw = gateway(gw_config([up.url], server={"drain_timeout_ms": 200}))
    pending = http("GET", f"http://127.0.0.1:{gw.port}/hang")
    pending.addErrback(lambda f: None)
    await sleep(0.1)
    started = time.monotonic()
    await gw.stopService()
    assert time.monotonic() - started < 1.5
