"""plugin_chain.py: only implemented phases are bound and called, onion order, what the response
phases may change, isolation of on_log/on_error, metrics per plugin and phase, and plugin phases
as child spans of a sampled request's SERVER span."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import plugins
from avx_twisted._configmodel import TracingConfig
from avx_twisted.context import RequestContext
from avx_twisted.errors import Answer
from avx_twisted.h1 import Fields
from avx_twisted.metrics import GatewayMetrics
from avx_twisted.plugin_chain import PluginChain, PluginFailed
from avx_twisted.tracing import Tracing


class Ref:
    """What PluginChain reads of a ``PluginRef``: the name and the plugin object."""

    def __init__(self, name: str, instance: Any) -> None:
        self.name = name
        self.instance = instance


class FakeRequest:
    """What the chain and the plugin views read of an ``h1.ServerRequest``."""

    def __init__(self) -> None:
        self.method = b"GET"
        self.target = b"/api/1?q=2"
        self.path = b"/api/1"
        self.authority = b"api.example.com"
        self.version = b"1.1"
        self.secure = False
        self.peer_host = "192.0.2.7"
        self.fields = Fields([(b"Host", b"api.example.com")])


def context() -> RequestContext:
    ctx = RequestContext("192.0.2.7", "192.0.2.7", False, b"req-1")
    ctx.upstream_target = b"/api/1?q=2"
    return ctx


class Recording:
    """Implements every phase but the body; records each call in ``seen``."""

    def __init__(self, name: str, seen: list[tuple[str, str]]) -> None:
        self.name = name
        self.seen = seen

    def on_request(self, request: Any, ctx: Any) -> Any:
        self.seen.append(("on_request", self.name))
        request.headers.add("X-Order", self.name)
        return None

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        self.seen.append(("on_upstream_request", self.name))
        request.headers.add("X-Upstream-Order", self.name)

    def on_response(self, response: Any, ctx: Any) -> None:
        self.seen.append(("on_response", self.name))
        response.headers.add("X-Back", self.name)

    def on_log(self, ctx: Any, summary: dict[str, Any]) -> None:
        self.seen.append(("on_log", self.name))

    def on_error(self, ctx: Any, error: str) -> None:
        self.seen.append(("on_error", self.name))


class RequestOnly:
    """A plugin with one phase; ``on_response_body = None`` is not an implementation."""

    on_response_body = None

    def on_request(self, request: Any, ctx: Any) -> None:
        return None


class Raising:
    """Raises in ``phases``; otherwise does nothing."""

    def __init__(self, *phases: str) -> None:
        self.phases = phases

    def _maybe(self, phase: str) -> None:
        if phase in self.phases:
            raise RuntimeError(f"{phase} internals")

    def on_request(self, request: Any, ctx: Any) -> None:
        self._maybe("on_request")

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        self._maybe("on_upstream_request")

    def on_response(self, response: Any, ctx: Any) -> None:
        self._maybe("on_response")

    def on_log(self, ctx: Any, summary: dict[str, Any]) -> None:
        self._maybe("on_log")

    def on_error(self, ctx: Any, error: str) -> None:
        self._maybe("on_error")


def chain(*refs: Ref, metrics: Any = None) -> PluginChain:
    return PluginChain(refs, "api", Clock(), None, metrics)


class BindingTests(SynchronousTestCase):
    def test_only_implemented_phases_are_bound(self) -> None:
        c = chain(Ref("only", RequestOnly()))
        self.assertEqual([p.plugin for p in c.request], ["only"])
        # Nothing else: the proxy adds no upstream hook, response hook or body transform.
        self.assertEqual((c.upstream, c.responses, c.body, c.logs, c.errors), ([],) * 5)

    def test_a_chain_without_log_or_error_phases_never_builds_the_summary(self) -> None:
        def summary() -> dict[str, Any]:
            raise AssertionError("the access record was built for nobody")

        ctx = context()
        ctx.error = "upstream timed out"
        chain(Ref("only", RequestOnly())).finished(ctx, summary)

    def test_on_error_only_for_an_error(self) -> None:
        seen: list[tuple[str, str]] = []
        c = chain(Ref("a", Recording("a", seen)))
        ctx = context()
        c.finished(ctx, lambda: {"status": 200})
        self.assertEqual(seen, [("on_log", "a")])
        seen.clear()
        ctx.error = "upstream timed out"
        c.finished(ctx, lambda: {"status": 504})
        self.assertEqual(seen, [("on_log", "a"), ("on_error", "a")])


class OnionTests(SynchronousTestCase):
    def test_request_phases_in_order_response_phases_in_reverse(self) -> None:
        seen: list[tuple[str, str]] = []
        c = chain(*(Ref(n, Recording(n, seen)) for n in ("global", "first", "second")))
        request, ctx = FakeRequest(), context()
        self.assertIsNone(c(request, ctx))
        self.assertEqual(request.fields.get_all(b"x-order"), [b"global", b"first", b"second"])
        target, fields = c.upstream_request(b"GET", "http://u", b"/api/1", [], ctx)
        self.assertEqual(target, b"/api/1")
        status, fields = c.response(200, [], ctx)
        self.assertEqual(status, 200)
        self.assertEqual([v for n, v in fields], [b"second", b"first", b"global"])
        self.assertEqual(
            [name for phase, name in seen if phase == "on_upstream_request"],
            ["global", "first", "second"],
        )
        self.assertEqual(
            [name for phase, name in seen if phase == "on_response"],
            ["second", "first", "global"],
        )

    def test_a_short_circuit_stops_the_request_phases_and_unwinds(self) -> None:
        seen: list[tuple[str, str]] = []

        class Deny(Recording):
            def on_request(self, request: Any, ctx: Any) -> Any:
                super().on_request(request, ctx)
                return plugins.error(403, "denied", ctx)

        c = chain(
            Ref("outer", Recording("outer", seen)),
            Ref("deny", Deny("deny", seen)),
            Ref("inner", Recording("inner", seen)),
        )
        ctx = context()
        answer = c(FakeRequest(), ctx)
        self.assertIsInstance(answer, Answer)
        self.assertEqual(answer.status, 403)
        answered = c.answer(answer, ctx)
        self.assertEqual(
            [v for n, v in answered.fields if n == b"X-Back"], [b"inner", b"deny", b"outer"]
        )
        self.assertEqual([name for phase, name in seen if phase == "on_request"], ["outer", "deny"])

    def test_on_response_changes_the_status_and_headers(self) -> None:
        class Rewrite:
            def on_response(self, response: Any, ctx: Any) -> None:
                response.status = 203 if response.status == 200 else response.status
                response.headers.remove("Server")
                response.headers.set("X-Seen", str(response.status))

        c = chain(Ref("rewrite", Rewrite()))
        status, fields = c.response(200, [(b"Server", b"up"), (b"Content-Type", b"x")], context())
        self.assertEqual(status, 203)
        self.assertEqual(fields, [(b"Content-Type", b"x"), (b"X-Seen", b"203")])
        # A short-circuit's status changes too.
        answer = c.answer(plugins.reply(200, "hi"), context())
        self.assertEqual(answer.status, 203)

    def test_an_invalid_status_is_a_plugin_failure(self) -> None:
        class Bad:
            def on_response(self, response: Any, ctx: Any) -> None:
                response.status = 101

        with self.assertRaises(PluginFailed):
            chain(Ref("bad", Bad())).response(200, [], context())
        self.assertEqual(chain(Ref("bad", Bad())).answer(plugins.reply(200), context()).status, 500)


class IsolationAndMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics(process=False)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def sample(self, name: str, plugin: str, phase: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"plugin": plugin, "phase": phase})
        return value or 0.0

    def test_calls_errors_and_time_per_plugin_and_phase(self) -> None:
        c = chain(
            Ref("boom", Raising("on_request")), Ref("ok", RequestOnly()), metrics=self.metrics
        )
        ctx = context()
        answer = c(FakeRequest(), ctx)
        self.assertEqual(answer.status, 500)
        self.assertNotIn(b"internals", answer.body)
        self.assertEqual(self.sample("avx_plugin_calls_total", "boom", "request"), 1)
        self.assertEqual(self.sample("avx_plugin_errors_total", "boom", "request"), 1)
        self.assertEqual(self.sample("avx_plugin_duration_seconds_count", "boom", "request"), 1)
        self.assertEqual(self.sample("avx_plugin_calls_total", "ok", "request"), 0)  # not reached
        self.assertEqual(ctx.error, "plugin boom failed in on_request")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_failing_on_log_or_on_error_is_logged_and_counted(self) -> None:
        seen: list[tuple[str, str]] = []
        c = chain(
            Ref("after", Recording("after", seen)),
            Ref("boom", Raising("on_log", "on_error")),
            metrics=self.metrics,
        )
        ctx = context()
        ctx.error = "upstream timed out"
        c.finished(ctx, lambda: {"status": 504})  # raises nothing
        # The other plugin's phases still ran (after the failing one: response order).
        self.assertEqual(seen, [("on_log", "after"), ("on_error", "after")])
        for phase in ("log", "error"):
            self.assertEqual(self.sample("avx_plugin_calls_total", "boom", phase), 1)
            self.assertEqual(self.sample("avx_plugin_errors_total", "boom", phase), 1)
        failures = [e for e in self.events if e.get("log_failure") is not None]
        self.assertEqual(
            [e["log_format"] for e in failures],
            ["plugin {plugin} failed in on_log", "plugin {plugin} failed in on_error"],
        )
        self.assertEqual({e["plugin"] for e in failures}, {"boom"})
        self.assertEqual({e["request_id"] for e in failures}, {b"req-1"})
        self.flushLoggedErrors(RuntimeError)


class PhaseSpanTests(SynchronousTestCase):
    def tracer(self, ratio: float = 1.0) -> tuple[Tracing, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tracer = Tracing(TracingConfig(sample_ratio=ratio), exporter=exporter)
        self.addCleanup(tracer.shutdown)
        return tracer, exporter

    def traced_context(self, tracer: Tracing) -> RequestContext:
        ctx = context()
        ctx.trace = tracer.start_request(FakeRequest(), ctx)
        return ctx

    def test_each_phase_call_is_an_internal_child_of_the_server_span(self) -> None:
        tracer, exporter = self.tracer()
        seen: list[tuple[str, str]] = []
        c = chain(Ref("rec", Recording("rec", seen)), Ref("body", BodyOnly()))
        ctx = self.traced_context(tracer)
        c(FakeRequest(), ctx)
        c.upstream_request(b"GET", "http://u", b"/x", [], ctx)
        c.response(200, [], ctx)
        transform = c.body_transform(ctx)
        transform.data(b"abc")
        transform.end()
        c.finished(ctx, lambda: {})
        ctx.trace.end(200)
        spans = exporter.get_finished_spans()
        [server] = [s for s in spans if s.kind is SpanKind.SERVER]
        phases = [s for s in spans if s.kind is SpanKind.INTERNAL]
        # Not the body (per chunk), nor on_log/on_error (after the response).
        self.assertEqual(
            [s.name for s in phases],
            ["plugin rec on_request", "plugin rec on_upstream_request", "plugin rec on_response"],
        )
        for span in phases:
            self.assertEqual(span.parent.span_id, server.context.span_id)
            self.assertEqual(span.attributes["avx.plugin.name"], "rec")
            self.assertEqual(span.attributes["avx.plugin.phase"], span.name.split()[-1])
            self.assertEqual(span.status.status_code, StatusCode.UNSET)

    def test_a_raising_phase_is_an_error_span_with_an_exception_event(self) -> None:
        tracer, exporter = self.tracer()
        c = chain(Ref("boom", Raising("on_request")))
        ctx = self.traced_context(tracer)
        self.assertEqual(c(FakeRequest(), ctx).status, 500)
        self.flushLoggedErrors(RuntimeError)
        [span] = exporter.get_finished_spans()  # the SERVER span is still open
        self.assertEqual(span.name, "plugin boom on_request")
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        [event] = span.events
        self.assertEqual(event.name, "exception")
        self.assertEqual(event.attributes["exception.message"], "on_request internals")

    def test_a_deferred_phase_span_ends_when_it_fires(self) -> None:
        tracer, exporter = self.tracer()
        waits: list[Deferred[Any]] = []

        class Later:
            def on_request(self, request: Any, ctx: Any) -> Any:
                d: Deferred[Any] = Deferred()
                waits.append(d)
                return d

        c = chain(Ref("later", Later()), Ref("later2", Later()))
        ctx = self.traced_context(tracer)
        result = c(FakeRequest(), ctx)
        self.assertEqual(exporter.get_finished_spans(), ())
        waits[0].callback(None)
        self.assertEqual(
            [s.name for s in exporter.get_finished_spans()], ["plugin later on_request"]
        )
        waits[1].errback(RuntimeError("lookup failed"))
        self.assertEqual(self.successResultOf(result).status, 500)
        self.flushLoggedErrors(RuntimeError)
        first, second = exporter.get_finished_spans()
        self.assertEqual(first.status.status_code, StatusCode.UNSET)
        self.assertEqual(second.status.status_code, StatusCode.ERROR)
        self.assertEqual([e.name for e in second.events], ["exception"])

    def test_no_phase_spans_for_an_unsampled_request_or_without_tracing(self) -> None:
        tracer, exporter = self.tracer(ratio=0.0)
        c = chain(Ref("rec", Recording("rec", [])))
        ctx = self.traced_context(tracer)
        self.assertFalse(ctx.trace.sampled)
        self.assertIsNone(c(FakeRequest(), ctx))
        c.upstream_request(b"GET", "http://u", b"/x", [], ctx)
        c.response(200, [], ctx)
        ctx.trace.end(200)
        self.assertEqual(exporter.get_finished_spans(), ())

        class Unsampled:
            sampled = False

            def start_plugin_phase(self, plugin: str, phase: str) -> Any:
                raise AssertionError("a span was started for an unsampled request")

        ctx = context()
        ctx.trace = Unsampled()
        self.assertIsNone(c(FakeRequest(), ctx))
        c.upstream_request(b"GET", "http://u", b"/x", [], ctx)
        c.response(200, [], ctx)
        untraced = context()  # tracing off: ctx.trace is None
        self.assertIsNone(c(FakeRequest(), untraced))
        c.response(200, [], untraced)


class BodyOnly:
    def on_response_body(self, data: bytes, last: bool, ctx: Any) -> bytes:
        return data
