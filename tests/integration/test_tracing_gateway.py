"""Tracing end to end: the real twistd exports OTLP/HTTP to a real receiver in the test; a retried
request is one SERVER span with two sibling CLIENT spans; the upstream sees the CLIENT span as
its parent; the access log and the response header carry the trace id; a client's trace is
followed; retries and an open breaker are span events, plugin phases child spans, a 4xx no error.
And a gateway whose collector hangs answers every request all the same, counting the spans it
drops."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.resource import Resource

from tests.integration.test_operations import Twistd, get, sleep
from tests.support.otlp import otlp_receiver, refusing_endpoint, silent_collector
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

        response = await treq.get(
            base + "/api/b",
            headers=pool_headers,
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
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
    # The retry decision is an event of the SERVER span, naming the target that failed.
    assert first.events == [("retry", {"failed": dead})]
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


def plugin_distribution(root: Path) -> str:
    """A plugin distribution the twistd child finds through PYTHONPATH: a module and the
    ``.dist-info`` naming its entry point (what pip would install). Plugin ``tag`` sets a
    request header and a response header."""
    (root / "avx_e2e_tag.py").write_text(
        textwrap.dedent("""
        class Tag:
            api_version = 1

            def __init__(self, config):
                pass

            def on_request(self, request, ctx):
                request.headers.set("X-Tag", "on")

            def on_response(self, response, ctx):
                response.headers.set("X-Tagged", "yes")
    """)
    )
    info = root / "avx_e2e_tag-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avx-e2e-tag\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[avx_gateway.plugins]\ntag = avx_e2e_tag:Tag\n")
    return str(root)


@ensure
async def test_breaker_events_plugin_spans_and_4xx_through_the_real_twistd(tmp_path, closer):
    seen = Seen()
    up = closer.add(upstream(seen))
    dead = refusing_endpoint("")
    receiver = otlp_receiver()
    port = free_port()
    packages = tmp_path / "site"
    packages.mkdir()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        [tracing]
        endpoint = "{receiver.url}"
        [[routes]]
        name = "tagged"
        path = "/tagged/*"
        plugins = [{{ name = "tag" }}]
        [routes.upstream]
        urls = ["{up.url}"]
        [[routes]]
        name = "fragile"
        path = "/fragile/*"
        [routes.upstream]
        urls = ["{dead}"]
        [routes.upstream.circuit_breaker]
        failure_threshold = 1
        recovery_timeout_ms = 600000
    """,
        env={"OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONPATH": plugin_distribution(packages)},
    )
    gw.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")
        assert (await get(base + "/tagged/a"))[0] == 200
        assert (await get(base + "/fragile/1"))[0] == 502  # refused: the breaker opens
        assert (await get(base + "/fragile/2"))[0] == 503  # the circuit is open
        assert (await get(base + "/nowhere"))[0] == 404
        # tagged: SERVER, CLIENT, two plugin phases; fragile: SERVER+CLIENT, SERVER; 404: SERVER.
        await receiver.wait_for_spans(8, timeout=15)
    finally:
        assert await gw.stop() == 0
        await receiver.stop()
    assert len(seen.traceparents) == 1  # the tagged request went upstream
    servers = {s.attributes.get("url.path"): s for s in receiver.spans if s.kind == "SERVER"}
    # Plugin phases: INTERNAL children of the SERVER span, named by plugin and phase.
    tagged = servers["/tagged/a"]
    phases = sorted((s for s in receiver.spans if s.kind == "INTERNAL"), key=lambda s: s.start_ns)
    assert [s.name for s in phases] == ["plugin tag on_request", "plugin tag on_response"]
    for span in phases:
        assert span.trace_id == tagged.trace_id and span.parent_span_id == tagged.span_id
        assert span.attributes == {
            "avx.plugin.name": "tag",
            "avx.plugin.phase": span.name.split()[-1],
        }
        assert span.status == "UNSET"
    # The open breaker is an event of the request it refused; the 5xx is an error.
    refused, opened = servers["/fragile/1"], servers["/fragile/2"]
    assert [name for name, _ in refused.events] == []
    assert opened.events == [("circuit_open", {})]
    assert opened.status == "ERROR" and opened.attributes["http.response.status_code"] == 503
    # error.type is a short name, never the free-text reason of the access log.
    assert opened.attributes["error.type"] == "circuit_open"
    assert refused.status == "ERROR"
    assert refused.attributes["error.type"] == "connection_refused"
    # A 4xx is the client's error, not the server's.
    missing = servers["/nowhere"]
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status == "UNSET" and "error.type" not in missing.attributes


@ensure
async def test_a_hung_collector_leaves_requests_alone_and_counts_drops(tmp_path, closer):
    up = closer.add(upstream(Seen()))
    collector = silent_collector()
    port = free_port()
    # A small queue, and an exporter that waits 5 s for the collector: once the first batch is
    # stuck, the queue fills within a few requests and new spans are dropped.
    env = {
        "OTEL_BSP_MAX_QUEUE_SIZE": "8",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "5",
    }
    gw = Twistd(tmp_path, config(port, collector.url, [up.url]), env=env).start()
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")
        slowest = 0.0
        for _ in range(40):
            started = time.monotonic()
            assert (await get(base + "/api/x"))[0] == 200
            slowest = max(slowest, time.monotonic() - started)
        dropped = 0.0
        deadline = time.monotonic() + 10
        while dropped == 0 and time.monotonic() < deadline:
            _, text = await get(base + "/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text.decode())}
            dropped = sum(
                s.value
                for s in families["avx_tracing_spans_dropped"].samples
                if s.name.endswith("_total")
            )
            if dropped == 0:
                await sleep(0.1)
        received = collector.received
    finally:
        assert await gw.stop() == 0
        await collector.stop()
    # Every request was answered well within the exporter's 5 s: none waited for an export.
    assert slowest < 1.0, slowest
    assert dropped > 0
    assert received > 0  # the collector was sent a batch, and never answered it
