"""Tracing end to end: the real twistd exports OTLP/HTTP to a real receiver in the test; a retried
request is one SERVER span with two sibling CLIENT spans; the upstream sees the CLIENT span as
its parent; the access log and the response header carry the trace id; a client's trace is
followed. And a gateway whose collector is gone answers as fast as one without tracing."""

from __future__ import annotations

import json
import os
import time

import pytest_twisted
from twisted.web.resource import Resource

from tests.integration.test_operations import Twistd, get, sleep
from tests.support.otlp import otlp_receiver, refusing_endpoint
from tests.support.process import free_port
from tests.support.servers import upstream

ensure = pytest_twisted.ensureDeferred
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Seen(Resource):
    """Records each request's traceparent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.traceparents: list[str] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        value = request.getHeader(b"traceparent")
        self.traceparents.append(value.decode() if value else "")
        return b"ok"


def config(port: int, endpoint: str, urls: list[str]) -> str:
    return f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        [tracing]
        endpoint = "{endpoint}"
        service_name = "edge-test"
        response_header = "X-Trace-Id"
        [[routes]]
        name = "api"
        path = "/api/*"
        retries = 1
        [routes.upstream]
        urls = {json.dumps(urls)}
    """


@ensure
async def test_spans_reach_a_real_collector_through_the_real_twistd(tmp_path, closer):
    seen = Seen()
    up = closer.add(upstream(seen))
    dead = f"http://127.0.0.1:{free_port()}"
    receiver = otlp_receiver()
    port = free_port()
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    try:
        gw = Twistd(tmp_path, config(port, receiver.url, [dead, up.url])).start()
    finally:
        os.environ.pop("OTEL_BSP_SCHEDULE_DELAY")
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")
        # Round robin from the dead target: the first request is retried on the live one.
        code, _ = await get(base + "/api/a")
        assert code == 200
        parent = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"
        pool_headers = {"traceparent": [parent]}
        import treq
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        response = await treq.get(base + "/api/b", headers=pool_headers,
                                  pool=HTTPConnectionPool(reactor, persistent=False))
        await response.content()
        assert response.code == 200
        assert response.headers.getRawHeaders("x-trace-id") == [CLIENT_TRACE]
        await receiver.wait_for_spans(5, timeout=15)
    finally:
        assert await gw.stop() == 0
        await receiver.stop()
    servers = [s for s in receiver.spans if s.kind == "SERVER"]
    clients = [s for s in receiver.spans if s.kind == "CLIENT"]
    assert len(servers) == 2 and len(clients) == 3, receiver.spans
    first, second = sorted(servers, key=lambda s: s.trace_id != CLIENT_TRACE)[::-1]
    assert first.attributes["http.route"] == "api"
    assert first.attributes["http.response.status_code"] == 200
    assert first.resource["service.name"] == "edge-test"
    tries = [c for c in clients if c.trace_id == first.trace_id]
    assert len(tries) == 2  # the retry is a sibling
    assert {c.parent_span_id for c in tries} == {first.span_id}
    statuses = sorted(c.status for c in tries)
    assert statuses == ["ERROR", "UNSET"]
    # The client's trace is followed, and the upstream sees the CLIENT span as its parent.
    assert second.trace_id == CLIENT_TRACE and second.parent_span_id == "b7ad6b7169203331"
    client_span = next(c for c in clients if c.trace_id == CLIENT_TRACE)
    assert seen.traceparents[-1] == f"00-{CLIENT_TRACE}-{client_span.span_id}-01"
    # The access log carries the ids.
    records = [json.loads(line) for line in gw.stdout().splitlines()]
    assert {r["trace_id"] for r in records} == {first.trace_id, CLIENT_TRACE}
    assert {r["span_id"] for r in records} == {first.span_id, second.span_id}
    for span in receiver.spans:
        assert "?" not in str(span.attributes.get("url.path", ""))


@ensure
async def test_a_dead_collector_leaves_latency_alone(tmp_path, closer):
    up = closer.add(upstream(Seen()))
    port = free_port()
    gw = Twistd(tmp_path, config(port, refusing_endpoint(), [up.url])).start()
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")
        for _ in range(20):  # warm up
            await get(base + "/api/x")
        started = time.monotonic()
        for _ in range(50):
            assert (await get(base + "/api/x"))[0] == 200
        took = (time.monotonic() - started) / 50
        await sleep(0.1)
        _, metrics = await get(base + "/metrics")
    finally:
        assert await gw.stop() == 0
    # A request (new connection each, in-test client) stays in milliseconds: no export waits.
    assert took < 0.1, took
    assert b"avx_tracing_spans_dropped_total" in metrics
