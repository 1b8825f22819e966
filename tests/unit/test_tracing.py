"""tracing.py: spans, their parents and attributes, W3C propagation both ways, sampling, and
spans that were not exported being counted."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from typing import Any, Sequence

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import tracing
from avx_twisted._configmodel import TracingConfig
from avx_twisted._version import __version__
from avx_twisted.context import RequestContext
from avx_twisted.h1 import Fields
from avx_twisted.tracing import Tracing

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
UNSAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00".encode()
UPSTREAM = "http://10.0.0.5:8001/api/users/42"


class FakeRequest:
    """What ``Tracing`` reads of an ``h1.ServerRequest``."""

    def __init__(
        self,
        fields: list[tuple[bytes, bytes]] | None = None,
        method: bytes = b"GET",
        target: bytes = b"/api/users/42",
        authority: bytes | None = b"api.example.com",
        peer_host: str = "192.0.2.7",
        secure: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.path = target.partition(b"?")[0]
        self.query = target.partition(b"?")[2]
        self.version = b"1.1"
        self.authority = authority
        self.fields = Fields(list(fields or [(b"Host", authority or b"")]))
        self.peer_host = peer_host
        self.secure = secure


class Context(RequestContext):
    """A RequestContext that also takes an ``error_type`` (the proxy's short name of a
    gateway failure), set by hand here."""


def context(
    client_ip: str = "192.0.2.7", request_id: bytes = b"req-1", error_type: str | None = None
) -> RequestContext:
    ctx = Context(client_ip, client_ip, False, request_id)
    if error_type is not None:
        ctx.error_type = error_type  # type: ignore[attr-defined]
    return ctx


class Failing(SpanExporter):
    """A collector that takes nothing (``raises``: the exporter itself breaks)."""

    def __init__(self, raises: bool = False) -> None:
        self.raises = raises

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.raises:
            raise ConnectionError("collector gone")
        return SpanExportResult.FAILURE


class Blocking(SpanExporter):
    """A collector that holds each export until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def header(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name]


class TracingTestCase(SynchronousTestCase):
    def tracer(self, **config: Any) -> tuple[Tracing, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tracer = Tracing(TracingConfig(**config), exporter=exporter)
        self.addCleanup(tracer.shutdown)
        return tracer, exporter

    def spans(self, exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
        return {span.name: span for span in exporter.get_finished_spans()}

    def client(self, exporter: InMemorySpanExporter) -> ReadableSpan:
        [span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        return span


class ServerSpanTests(TracingTestCase):
    def test_server_span_named_after_route_with_http_attributes(self) -> None:
        tracer, exporter = self.tracer()
        request = FakeRequest(
            [(b"Host", b"api.example.com:8443"), (b"User-Agent", b"curl/8.5.0")],
            authority=b"api.example.com:8443",
            secure=True,
        )
        trace = tracer.start_request(request, context(request_id=b"4b2e"))
        trace.set_route("users")
        trace.end(200)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.name, "GET users")
        self.assertEqual(span.kind, SpanKind.SERVER)
        self.assertIsNone(span.parent)
        self.assertEqual(span.status.status_code, StatusCode.UNSET)
        self.assertEqual(
            dict(span.attributes or {}),
            {
                "http.request.method": "GET",
                "http.route": "users",
                "http.response.status_code": 200,
                "url.path": "/api/users/42",
                "url.scheme": "https",
                "server.address": "api.example.com",
                "server.port": 8443,
                "client.address": "192.0.2.7",
                "network.protocol.version": "1.1",
                "user_agent.original": "curl/8.5.0",
                "avx.request_id": "4b2e",
            },
        )
        self.assertEqual(trace.trace_id, format(span.context.trace_id, "032x"))
        self.assertEqual(trace.span_id, format(span.context.span_id, "016x"))
        self.assertTrue(trace.sampled)

    def test_span_without_route_is_named_by_method(self) -> None:
        tracer, exporter = self.tracer()
        tracer.start_request(FakeRequest(method=b"DELETE"), context()).end(404)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.name, "DELETE")
        self.assertNotIn("http.route", span.attributes or {})
        self.assertEqual(span.status.status_code, StatusCode.UNSET)  # 4xx: the client's error

    def test_unknown_method_is_other(self) -> None:
        tracer, exporter = self.tracer()
        tracer.start_request(FakeRequest(method=b"PURGE"), context()).end(200)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.name, "HTTP")
        self.assertEqual(span.attributes["http.request.method"], "_OTHER")
        self.assertEqual(span.attributes["http.request.method_original"], "PURGE")

    def test_server_address_and_port_from_authority(self) -> None:
        cases = [
            (b"example.com", "example.com", None),
            (b"example.com:8080", "example.com", 8080),
            (b"[::1]:8443", "::1", 8443),
            (b"[::1]", "::1", None),
            (b"127.0.0.1:80", "127.0.0.1", 80),
        ]
        tracer, exporter = self.tracer()
        for authority, host, port in cases:
            exporter.clear()
            tracer.start_request(FakeRequest(authority=authority), context()).end(200)
            [span] = exporter.get_finished_spans()
            self.assertEqual(span.attributes["server.address"], host, authority)
            self.assertEqual(span.attributes.get("server.port"), port, authority)

    def test_peer_address_only_when_it_is_not_the_client(self) -> None:
        tracer, exporter = self.tracer()
        tracer.start_request(FakeRequest(peer_host="10.0.0.2"), context("203.0.113.9")).end(200)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.attributes["client.address"], "203.0.113.9")
        self.assertEqual(span.attributes["network.peer.address"], "10.0.0.2")

    def test_no_query_authorization_or_cookie_in_any_span(self) -> None:
        tracer, exporter = self.tracer()
        request = FakeRequest(
            [
                (b"Host", b"api.example.com"),
                (b"Authorization", b"Bearer secret-token"),
                (b"Cookie", b"session=secret-cookie"),
                (b"X-Api-Key", b"secret-key"),
            ],
            target=b"/api/users/42?token=secret-query&x=1",
        )
        trace = tracer.start_request(request, context())
        trace.set_route("users")
        fields = [(b"Authorization", b"Bearer secret-token")]
        attempt = trace.start_attempt(
            "http://user:secret-pass@10.0.0.5:8001/api/users/42?token=secret-query",
            "10.0.0.5",
            8001,
            b"GET",
            fields,
        )
        attempt.end(200)
        trace.end(200)
        for span in exporter.get_finished_spans():
            text = json.dumps(dict(span.attributes or {})) + span.name
            self.assertNotIn("secret", text)
            self.assertNotIn("token", text)
            for key in span.attributes or {}:
                self.assertNotIn("authorization", key)
                self.assertNotIn("cookie", key)
        client = self.client(exporter)
        self.assertEqual(client.attributes["url.full"], "http://10.0.0.5:8001/api/users/42")

    def test_5xx_is_an_error_with_its_status_as_type(self) -> None:
        tracer, exporter = self.tracer()
        tracer.start_request(FakeRequest(), context()).end(503)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        self.assertEqual(span.attributes["error.type"], "503")

    def test_5xx_error_type_is_the_contexts_short_name(self) -> None:
        tracer, exporter = self.tracer()
        # The free-text reason (ctx.error, the access log's) never becomes error.type.
        tracer.start_request(FakeRequest(), context(error_type="timeout")).end(
            504, "upstream timed out"
        )
        tracer.start_request(FakeRequest(), context()).end(502, "upstream unavailable")
        named, unnamed = exporter.get_finished_spans()
        self.assertEqual(named.status.status_code, StatusCode.ERROR)
        self.assertEqual(named.attributes["error.type"], "timeout")
        self.assertEqual(unnamed.status.status_code, StatusCode.ERROR)
        self.assertEqual(unnamed.attributes["error.type"], "502")
        for span in (named, unnamed):
            self.assertNotIn("upstream", span.status.description or "")

    def test_4xx_is_not_a_server_error(self) -> None:
        cases = [
            (404, "no route matches this path", None),
            (429, "rate limit exceeded", None),
            (499, "client closed the connection", None),
            (403, "forbidden header", "circuit_open"),  # error_type does not make it one
        ]
        tracer, exporter = self.tracer()
        for status, reason, error_type in cases:
            tracer.start_request(FakeRequest(), context(error_type=error_type)).end(status, reason)
        spans = exporter.get_finished_spans()
        self.assertEqual(len(spans), len(cases))
        for span, (status, _, _) in zip(spans, cases):
            self.assertEqual(span.status.status_code, StatusCode.UNSET, status)
            self.assertNotIn("error.type", span.attributes)
            self.assertEqual(span.attributes["http.response.status_code"], status)

    def test_end_is_idempotent(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(), context())
        trace.end(200)
        trace.end(502, "timeout")
        trace.set_route("late")
        trace.event("late")
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.name, "GET")
        self.assertEqual(span.attributes["http.response.status_code"], 200)
        self.assertEqual(span.events, ())

    def test_event_with_attributes(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(), context(error_type="circuit_open"))
        trace.event("circuit_open", upstream="http://10.0.0.5:8001")
        trace.end(503, "circuit breaker open")
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.attributes["error.type"], "circuit_open")
        [event] = span.events
        self.assertEqual(event.name, "circuit_open")
        self.assertEqual(dict(event.attributes or {}), {"upstream": "http://10.0.0.5:8001"})

    def test_resource_names_the_service_and_version(self) -> None:
        tracer, exporter = self.tracer(service_name="edge-eu")
        tracer.start_request(FakeRequest(), context()).end(200)
        [span] = exporter.get_finished_spans()
        self.assertEqual(span.resource.attributes["service.name"], "edge-eu")
        self.assertEqual(span.resource.attributes["service.version"], __version__)
        self.assertEqual(span.instrumentation_scope.name, "avx_twisted")

    def test_global_tracer_provider_is_left_alone(self) -> None:
        tracer, _ = self.tracer()
        self.assertIsNot(trace_api.get_tracer_provider(), tracer._provider)

    def test_response_header_name_as_bytes(self) -> None:
        self.assertEqual(
            self.tracer(response_header="X-Trace-Id")[0].response_header, b"X-Trace-Id"
        )
        self.assertEqual(self.tracer()[0].response_header, b"")


class ClientSpanTests(TracingTestCase):
    def test_client_span_is_child_of_server_span(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(), context())
        trace.set_route("users")
        attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", [])
        attempt.end(200)
        trace.end(200)
        spans = self.spans(exporter)
        server, client = spans["GET users"], spans["GET"]
        self.assertEqual(client.kind, SpanKind.CLIENT)
        self.assertEqual(client.parent.span_id, server.context.span_id)
        self.assertEqual(client.context.trace_id, server.context.trace_id)
        self.assertEqual(
            dict(client.attributes or {}),
            {
                "http.request.method": "GET",
                "server.address": "10.0.0.5",
                "server.port": 8001,
                "url.full": UPSTREAM,
                "http.response.status_code": 200,
            },
        )
        self.assertEqual(client.status.status_code, StatusCode.UNSET)

    def test_retry_gives_two_sibling_client_spans(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(method=b"PUT"), context())
        first = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"PUT", [])
        first.end(0, "connection_refused")
        trace.event("retry", attempt=2)
        second = trace.start_attempt("http://10.0.0.6:8001/x", "10.0.0.6", 8001, b"PUT", [])
        second.end(201)
        trace.end(201)
        server, *clients = sorted(exporter.get_finished_spans(), key=lambda s: s.kind.value)
        self.assertEqual(server.kind, SpanKind.SERVER)
        self.assertEqual([c.kind for c in clients], [SpanKind.CLIENT, SpanKind.CLIENT])
        self.assertEqual({c.parent.span_id for c in clients}, {server.context.span_id})
        self.assertNotEqual(clients[0].context.span_id, clients[1].context.span_id)
        failed, ok = sorted(clients, key=lambda c: c.start_time)
        self.assertEqual(failed.status.status_code, StatusCode.ERROR)
        self.assertEqual(failed.attributes["error.type"], "connection_refused")
        self.assertNotIn("http.response.status_code", failed.attributes)
        self.assertNotIn("http.request.resend_count", failed.attributes)
        self.assertEqual(ok.attributes["http.request.resend_count"], 1)
        self.assertEqual(ok.attributes["server.address"], "10.0.0.6")
        self.assertEqual([e.name for e in server.events], ["retry"])

    def test_attempt_statuses(self) -> None:
        cases = [
            (200, None, StatusCode.UNSET, None),
            (404, None, StatusCode.ERROR, "404"),  # a client's 4xx is an error
            (502, None, StatusCode.ERROR, "502"),
            (0, None, StatusCode.ERROR, "_OTHER"),
            (0, "timeout", StatusCode.ERROR, "timeout"),
            (200, "body_too_large", StatusCode.ERROR, "body_too_large"),
        ]
        tracer, exporter = self.tracer()
        for status, error_type, code, expected_type in cases:
            exporter.clear()
            trace = tracer.start_request(FakeRequest(), context())
            attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", [])
            attempt.end(status, error_type)
            attempt.end(299)  # idempotent
            trace.end(200)
            client = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
            self.assertEqual(len(client), 1)
            self.assertEqual(client[0].status.status_code, code, (status, error_type))
            self.assertEqual(client[0].attributes.get("error.type"), expected_type)
            self.assertEqual(client[0].attributes.get("http.response.status_code"), status or None)

    def test_request_end_ends_open_attempts(self) -> None:
        tracer, exporter = self.tracer()
        for error_type, expected in [(None, "cancelled"), ("timeout", "timeout")]:
            exporter.clear()
            trace = tracer.start_request(FakeRequest(), context(error_type=error_type))
            attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", [])
            trace.end(499, "client closed the connection")
            attempt.end(200)  # too late: already ended
            client = self.client(exporter)
            self.assertIsNotNone(client.end_time)
            self.assertEqual(client.status.status_code, StatusCode.ERROR)
            self.assertEqual(client.attributes["error.type"], expected)
            self.assertNotIn("http.response.status_code", client.attributes)
            self.assertEqual(len(exporter.get_finished_spans()), 2)


class PluginPhaseSpanTests(TracingTestCase):
    def test_phase_span_is_an_internal_child_of_the_server_span(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(), context())
        trace.set_route("users")
        trace.start_plugin_phase("tenant-header", "on_request").end()
        trace.end(200)
        spans = self.spans(exporter)
        server, phase = spans["GET users"], spans["plugin tenant-header on_request"]
        self.assertEqual(phase.kind, SpanKind.INTERNAL)
        self.assertEqual(phase.parent.span_id, server.context.span_id)
        self.assertEqual(phase.context.trace_id, server.context.trace_id)
        self.assertEqual(
            dict(phase.attributes or {}),
            {"avx.plugin.name": "tenant-header", "avx.plugin.phase": "on_request"},
        )
        self.assertEqual(phase.status.status_code, StatusCode.UNSET)
        self.assertEqual(phase.events, ())

    def test_a_raising_phase_is_an_error_with_an_exception_event(self) -> None:
        tracer, exporter = self.tracer()
        trace = tracer.start_request(FakeRequest(), context())
        phase = trace.start_plugin_phase("boom", "on_response")
        phase.end(RuntimeError("plugin internals"))
        phase.end()  # idempotent
        trace.end(500)
        span = self.spans(exporter)["plugin boom on_response"]
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        self.assertEqual(span.attributes["error.type"], "RuntimeError")
        [event] = span.events
        self.assertEqual(event.name, "exception")
        self.assertEqual(event.attributes["exception.type"], "RuntimeError")


class PropagationTests(TracingTestCase):
    def extract(self, fields: list[tuple[bytes, bytes]]) -> trace_api.SpanContext:
        carrier = {n.decode(): v.decode() for n, v in fields}
        ctx = TraceContextTextMapPropagator().extract(carrier)
        return trace_api.get_current_span(ctx).get_span_context()

    def test_client_traceparent_is_followed(self) -> None:
        tracer, exporter = self.tracer()
        request = FakeRequest([(b"Host", b"a"), (b"TraceParent", SAMPLED)])
        trace = tracer.start_request(request, context())
        trace.end(200)
        [span] = exporter.get_finished_spans()
        self.assertEqual(trace.trace_id, CLIENT_TRACE)
        self.assertEqual(format(span.parent.span_id, "016x"), CLIENT_SPAN)
        self.assertTrue(span.parent.is_remote)
        self.assertNotEqual(trace.span_id, CLIENT_SPAN)

    def test_upstream_sees_the_client_span_as_parent(self) -> None:
        tracer, exporter = self.tracer()
        request = FakeRequest(
            [(b"Host", b"a"), (b"traceparent", SAMPLED), (b"tracestate", b"vendor=abc")]
        )
        trace = tracer.start_request(request, context())
        fields = [
            (b"host", b"10.0.0.5:8001"),
            (b"TraceParent", SAMPLED),
            (b"TRACESTATE", b"vendor=abc"),
            (b"accept", b"*/*"),
        ]
        attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", fields)
        attempt.end(200)
        trace.end(200)
        client = self.client(exporter)
        self.assertEqual(len(header(fields, b"traceparent")), 1)
        self.assertEqual(header(fields, b"tracestate"), [b"vendor=abc"])
        self.assertEqual(fields[:2], [(b"host", b"10.0.0.5:8001"), (b"accept", b"*/*")])
        sent = self.extract(fields)
        self.assertEqual(sent.trace_id, client.context.trace_id)
        self.assertEqual(sent.span_id, client.context.span_id)
        self.assertTrue(sent.trace_flags.sampled)
        self.assertEqual(sent.trace_state.get("vendor"), "abc")
        self.assertEqual(format(sent.trace_id, "032x"), CLIENT_TRACE)

    def test_each_attempt_sends_its_own_span(self) -> None:
        tracer, _ = self.tracer()
        trace = tracer.start_request(FakeRequest(), context())
        first: list[tuple[bytes, bytes]] = []
        second: list[tuple[bytes, bytes]] = []
        trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", first).end(502)
        trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", second).end(200)
        trace.end(200)
        a, b = self.extract(first), self.extract(second)
        self.assertEqual(a.trace_id, b.trace_id)
        self.assertNotEqual(a.span_id, b.span_id)

    def test_ratio_zero_still_propagates_the_trace_id(self) -> None:
        tracer, exporter = self.tracer(sample_ratio=0.0)
        for incoming in ([], [(b"traceparent", UNSAMPLED)]):
            trace = tracer.start_request(FakeRequest([(b"Host", b"a"), *incoming]), context())
            fields: list[tuple[bytes, bytes]] = []
            attempt = trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", fields)
            attempt.end(200)
            trace.end(200)
            self.assertFalse(trace.sampled)
            self.assertEqual(len(trace.trace_id), 32)
            sent = self.extract(fields)
            self.assertEqual(format(sent.trace_id, "032x"), trace.trace_id)
            self.assertFalse(sent.trace_flags.sampled)
            self.assertNotEqual(format(sent.span_id, "016x"), trace.span_id)
            self.assertNotEqual(format(sent.span_id, "016x"), CLIENT_SPAN)
            if incoming:
                self.assertEqual(trace.trace_id, CLIENT_TRACE)
            flags = int(header(fields, b"traceparent")[0].rpartition(b"-")[2], 16)
            self.assertEqual(flags & 1, 0)  # sampled bit off (0x02: W3C level 2 "random")
        self.assertEqual(exporter.get_finished_spans(), ())

    def test_ratio_zero_follows_a_sampled_client(self) -> None:
        tracer, exporter = self.tracer(sample_ratio=0.0)
        trace = tracer.start_request(FakeRequest([(b"traceparent", SAMPLED)]), context())
        trace.end(200)
        self.assertTrue(trace.sampled)
        self.assertEqual(len(exporter.get_finished_spans()), 1)

    def test_unsampled_client_is_followed_at_ratio_one(self) -> None:
        tracer, exporter = self.tracer(sample_ratio=1.0)
        trace = tracer.start_request(FakeRequest([(b"traceparent", UNSAMPLED)]), context())
        trace.end(200)
        self.assertFalse(trace.sampled)
        self.assertEqual(trace.trace_id, CLIENT_TRACE)
        self.assertEqual(exporter.get_finished_spans(), ())

    def test_malformed_traceparent_starts_a_new_trace(self) -> None:
        cases = [
            [(b"traceparent", b"garbage")],
            [(b"traceparent", b"00-" + b"0" * 32 + b"-" + CLIENT_SPAN.encode() + b"-01")],
            [(b"traceparent", f"00-{CLIENT_TRACE}-{'0' * 16}-01".encode())],
            [(b"traceparent", f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode())],
            [(b"traceparent", SAMPLED + b"-extra")],
            [(b"traceparent", SAMPLED.upper())],
            [(b"traceparent", SAMPLED), (b"traceparent", SAMPLED)],  # two: which one?
            [(b"traceparent", b"garbage"), (b"tracestate", b"vendor=abc")],
        ]
        tracer, exporter = self.tracer()
        for fields in cases:
            exporter.clear()
            trace = tracer.start_request(FakeRequest(fields), context())
            trace.end(200)
            [span] = exporter.get_finished_spans()
            self.assertIsNone(span.parent, fields)
            self.assertNotEqual(trace.trace_id, CLIENT_TRACE, fields)
            self.assertEqual(len(trace.trace_id), 32)
            self.assertTrue(trace.sampled)
            self.assertEqual(len(span.context.trace_state), 0, fields)


class DroppedSpanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dropped: list[int] = []
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "spans dropped" in e.get("log_format", "")]

    def test_failed_exports_are_counted(self) -> None:
        for exporter in (Failing(), Failing(raises=True)):
            del self.dropped[:]
            tracer = Tracing(TracingConfig(), exporter=exporter, on_dropped=self.dropped.append)
            trace = tracer.start_request(FakeRequest(), context())
            trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", []).end(200)
            trace.end(200)
            tracer.shutdown()
            self.assertEqual(sum(self.dropped), 2)

    def test_full_queue_drops_and_counts(self) -> None:
        blocking = Blocking()
        self.addCleanup(blocking.release.set)
        tracer = Tracing(
            TracingConfig(),
            exporter=blocking,
            on_dropped=self.dropped.append,
            batch=True,
            max_queue_size=4,
            schedule_delay_millis=60_000,
        )
        total = 40
        started = time.perf_counter()
        for _ in range(total // 2):
            trace = tracer.start_request(FakeRequest(), context())
            trace.start_attempt(UPSTREAM, "10.0.0.5", 8001, b"GET", []).end(200)
            trace.end(200)
        elapsed = time.perf_counter() - started
        self.assertTrue(blocking.entered.wait(10))  # the first full batch went to the exporter
        self.assertLess(elapsed, 1.0)  # a stuck collector never held a request
        # At most a batch in the exporter and a full queue were kept; the rest was counted.
        self.assertGreaterEqual(sum(self.dropped), total - 2 * 4)
        blocking.release.set()
        tracer.shutdown()
        self.assertEqual(sum(self.dropped) + blocking.exported, total)
        # Told by the next request, then (the rest) at shutdown.
        self.assertEqual(len(self.warnings()), 2)
        self.assertEqual(sum(w["count"] for w in self.warnings()), sum(self.dropped))
        self.assertIn("queue was full", self.warnings()[0]["reasons"])

    def test_drops_reported_in_the_event_log_at_most_once_an_interval(self) -> None:
        tracer = Tracing(TracingConfig(), exporter=Failing(), on_dropped=self.dropped.append)
        self.addCleanup(tracer.shutdown)
        tracer.start_request(FakeRequest(), context()).end(200)
        self.assertEqual(self.warnings(), [])
        tracer.start_request(FakeRequest(), context()).end(200)
        tracer.start_request(FakeRequest(), context()).end(200)
        [warning] = self.warnings()  # the next request says so, once
        self.assertEqual(warning["count"], 1)
        self.assertEqual(warning["endpoint"], "http://127.0.0.1:4318/v1/traces")
        self.patch(tracing, "REPORT_INTERVAL", 0.0)
        tracer._drops._next_report = 0.0
        tracer.start_request(FakeRequest(), context()).end(200)
        self.assertEqual([w["count"] for w in self.warnings()], [1, 2])
        self.assertEqual(sum(self.dropped), 4)

    def test_a_failing_hook_is_logged_not_raised(self) -> None:
        def hook(count: int) -> None:
            raise RuntimeError("metrics broke")

        tracer = Tracing(TracingConfig(), exporter=Failing(), on_dropped=hook)
        self.addCleanup(tracer.shutdown)
        tracer.start_request(FakeRequest(), context()).end(200)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_shutdown_waits_only_so_long_for_a_stuck_collector(self) -> None:
        blocking = Blocking()
        self.addCleanup(blocking.release.set)
        tracer = Tracing(TracingConfig(), exporter=blocking, batch=True, schedule_delay_millis=1)
        tracer.start_request(FakeRequest(), context()).end(200)
        self.assertTrue(blocking.entered.wait(10))
        started = time.perf_counter()
        tracer.shutdown(timeout=0.2)
        self.assertLess(time.perf_counter() - started, 2.0)
        self.assertTrue(any("not exported within" in e.get("log_format", "") for e in self.events))
        tracer.shutdown()  # once is enough


class ExporterChoiceTests(SynchronousTestCase):
    def test_console_writes_one_json_line_per_span_to_stderr(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        tracer = Tracing(TracingConfig(exporter="console", service_name="dev"))
        tracer.start_request(FakeRequest(), context()).end(200)
        tracer.shutdown()
        [line] = err.getvalue().splitlines()
        span = json.loads(line)
        self.assertEqual(span["kind"], "SpanKind.SERVER")
        self.assertEqual(span["resource"]["attributes"]["service.name"], "dev")

    def test_otlp_exporter_posts_to_the_configured_endpoint(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer = Tracing(TracingConfig(endpoint="http://collector.invalid:4318/v1/traces"))
        self.addCleanup(tracer.shutdown, 0.1)
        processor = tracer._provider._active_span_processor._span_processors[0]
        exporter = processor.span_exporter._exporter
        self.assertIsInstance(exporter, OTLPSpanExporter)
        self.assertEqual(exporter._endpoint, "http://collector.invalid:4318/v1/traces")
