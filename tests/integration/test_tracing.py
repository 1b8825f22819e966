"""Traces through the real OTLP/HTTP exporter to a real receiver on 127.0.0.1, and a collector
that refuses or hangs costing requests nothing."""

from __future__ import annotations

import platform
import time
from typing import Any, Sequence

import pytest
import pytest_twisted
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from twisted.internet import threads

from avx_twisted._configmodel import TracingConfig
from avx_twisted._version import __version__
from avx_twisted.tracing import Tracing
from tests.support.otlp import otlp_receiver, refusing_endpoint, silent_collector
from tests.unit.test_tracing import FakeRequest, context

ensure = pytest_twisted.ensureDeferred
UPSTREAM = "http://10.0.0.5:8001/api/users/42"


def one_request(tracer: Tracing, fields: list[tuple[bytes, bytes]] | None = None) -> Any:
    trace = tracer.start_request(FakeRequest(), context())
    trace.set_route("users")
    sent = [] if fields is None else fields
    attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", sent)
    attempt.end(200)
    trace.end(200)
    return trace


async def stop(tracer: Tracing, timeout: float = 5.0) -> None:
    # Off the reactor thread: the receiver shares this reactor and must answer the last export.
    await threads.deferToThread(tracer.shutdown, timeout)


@ensure
async def test_otlp_exporter_delivers_spans_with_the_service_resource() -> None:
    receiver = otlp_receiver()
    tracer = Tracing(
        TracingConfig(endpoint=receiver.url, service_name="edge-test"), schedule_delay_millis=20
    )
    try:
        fields: list[tuple[bytes, bytes]] = []
        trace = one_request(tracer, fields)
        spans = await receiver.wait_for_spans(2)
    finally:
        await stop(tracer)
        await receiver.stop()
    by_kind = {s.kind: s for s in spans}
    server, client = by_kind["SERVER"], by_kind["CLIENT"]
    assert server.name == "GET users"
    assert server.trace_id == client.trace_id == trace.trace_id
    assert server.span_id == trace.span_id
    assert server.parent_span_id == ""
    assert client.parent_span_id == server.span_id
    [(name, value)] = fields
    assert name == b"traceparent"
    version, trace_id, span_id, flags = value.decode().split("-")
    assert (version, trace_id, span_id) == ("00", trace.trace_id, client.span_id)
    assert int(flags, 16) & 1  # sampled
    assert server.attributes["http.route"] == "users"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == "/api/users/42"
    assert client.attributes["url.full"] == UPSTREAM
    assert server.status == client.status == "UNSET"
    assert server.scope == "avx_twisted"
    for span in spans:
        assert span.resource["service.name"] == "edge-test"
        assert span.resource["service.version"] == __version__
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"


@ensure
async def test_shutdown_exports_what_is_queued() -> None:
    receiver = otlp_receiver()
    dropped: list[int] = []
    tracer = Tracing(
        TracingConfig(endpoint=receiver.url), on_dropped=dropped.append,
        schedule_delay_millis=60_000,
    )
    try:
        traces = [one_request(tracer) for _ in range(10)]
        await stop(tracer)
        assert len(receiver.spans) == 20
        assert {s.trace_id for s in receiver.spans} == {t.trace_id for t in traces}
    finally:
        await receiver.stop()
    assert dropped == []


@ensure
async def test_collector_refusing_a_batch_counts_its_spans_dropped() -> None:
    receiver = otlp_receiver()
    receiver.status = 400  # not retried by the exporter
    dropped: list[int] = []
    tracer = Tracing(
        TracingConfig(endpoint=receiver.url), on_dropped=dropped.append, schedule_delay_millis=20
    )
    try:
        for _ in range(5):
            one_request(tracer)
        await stop(tracer)
    finally:
        await receiver.stop()
    assert receiver.spans == []
    assert sum(dropped) == 10


class _Null(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


_warmed: list[bool] = []


def warm_up() -> None:
    """Run the SDK's code until PyPy's JIT has compiled it (a few thousand requests; before
    that it is interpreted, at ~0.5 ms a request): a gateway's steady state is what is timed."""
    if _warmed:
        return
    _warmed.append(True)
    count = 4000 if platform.python_implementation() == "PyPy" else 100
    tracer = Tracing(TracingConfig(), exporter=_Null(), batch=True, schedule_delay_millis=10)
    for _ in range(count):
        one_request(tracer)
    tracer.shutdown()


async def slowest_request(tracer: Tracing, count: int) -> float:
    """The worst time (seconds) of ``count`` whole request traces."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        one_request(tracer)
        times.append(time.perf_counter() - started)
    return max(times)


@pytest.mark.parametrize("collector", ["refusing", "silent"])
@ensure
async def test_dead_collector_leaves_requests_fast_and_counts_drops(
    collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exporter's own timeout (10 s by default) only bounds the test's length.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    silent = silent_collector() if collector == "silent" else None
    endpoint = silent.url if silent is not None else refusing_endpoint()
    warm_up()
    dropped: list[int] = []
    tracer = Tracing(
        TracingConfig(endpoint=endpoint),
        on_dropped=dropped.append,
        max_queue_size=16,
        schedule_delay_millis=10,
    )
    try:
        one_request(tracer)  # the first export is under way (and stuck)
        worst = await slowest_request(tracer, 200)
        # No request ever waits for an export (1 s here); how fast a request is, is make bench's.
        assert worst < 0.5, worst
        assert sum(dropped) > 0  # the queue filled while the collector did not answer
        started = time.perf_counter()
        await stop(tracer, timeout=5.0)
        assert time.perf_counter() - started < 6.0
    finally:
        if silent is not None:
            await silent.stop()
    assert sum(dropped) == 2 * 201  # every span: queue full, or the collector did not take it
    if silent is not None:
        assert silent.received > 0  # it was sent something, and never answered
