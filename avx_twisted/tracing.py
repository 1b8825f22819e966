# -*- test-case-name: tests.unit.test_tracing -*-
"""OpenTelemetry traces of requests: one SERVER span per request, one CLIENT span per upstream try.

Finished spans go to a ``BatchSpanProcessor``: a bounded queue emptied by its own thread, so a
slow or dead collector costs requests nothing. A span that finds the queue full is dropped and
counted, like a batch the collector did not take (``on_dropped``, and a warning in the event
log at most once a minute). The W3C ``traceparent``/``tracestate`` of the client is followed,
and each upstream try carries its CLIENT span's own.

The trace of a request is carried explicitly on its ``RequestTrace``, never in contextvars or
the SDK's global provider: Deferred callbacks do not carry contextvars, and a reload may build a
second ``Tracing`` beside the first.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from functools import lru_cache
from typing import Any, Callable, List, Optional, Sequence, Tuple

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.logger import Logger

from avx_twisted._configmodel import TracingConfig
from avx_twisted._version import __version__

__all__ = ["AttemptTrace", "PhaseTrace", "RequestTrace", "Tracing"]

log = Logger()

Pair = Tuple[bytes, bytes]

#: The empty context every extraction and root span starts from: passing None instead would
#: make the SDK read the current context from a contextvar.
_ROOT = Context()
_TRACE_FIELDS = frozenset((b"traceparent", b"tracestate"))
#: Methods named as they are; any other is "_OTHER" (OpenTelemetry's HTTP conventions).
_METHODS = {
    m.encode("ascii"): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
}
_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
_ERROR = Status(StatusCode.ERROR)
#: How often the event log says that spans were dropped (seconds).
REPORT_INTERVAL = 60.0


class _FieldsGetter(Getter):
    """Reads propagation fields from an ``h1.Fields`` (names looked up in lower case)."""

    _names = {"traceparent": b"traceparent", "tracestate": b"tracestate"}

    def get(self, carrier: Any, key: str) -> Optional[List[str]]:
        name = self._names.get(key) or key.lower().encode("latin-1")
        values = carrier.get_all(name)
        return [v.decode("latin-1") for v in values] if values else None

    def keys(self, carrier: Any) -> List[str]:
        return [name.decode("latin-1").lower() for name, _ in carrier]


_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = _FieldsGetter()


@lru_cache(maxsize=512)
def _authority(authority: bytes) -> Tuple[str, Optional[int]]:
    """``server.address`` and ``server.port`` of a Host value (``host``, ``host:port``,
    ``[v6]:port``); cached, since a gateway sees few distinct ones."""
    text = authority.decode("latin-1")
    host, colon, port = text.rpartition(":")
    if not colon or "]" in port or not port.isdigit():
        host, port = text, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, (int(port) if port else None)


def _url_without_query(url: str) -> str:
    """An upstream URL fit for a span: no query, no fragment, no user information."""
    url = url.partition("?")[0].partition("#")[0]
    if "@" in url:
        scheme, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        url = scheme + sep + authority.rpartition("@")[2] + slash + path
    return url


def _request_attributes(request: Any, ctx: Any) -> dict[str, Any]:
    """The SERVER span's attributes (OpenTelemetry's HTTP conventions): never the query, and no
    field but User-Agent."""
    method = _METHODS.get(request.method)
    attributes: dict[str, Any] = {
        "http.request.method": method or "_OTHER",
        "url.path": request.path.partition(b"?")[0].decode("latin-1"),
        "url.scheme": "https" if request.secure else "http",
        "network.protocol.version": _VERSIONS.get(request.version)
        or request.version.decode("latin-1"),
        "client.address": ctx.client_ip,
    }
    if request.peer_host != ctx.client_ip:  # behind a trusted proxy
        attributes["network.peer.address"] = request.peer_host
    if method is None:
        attributes["http.request.method_original"] = request.method.decode("latin-1")
    if request.authority:
        host, port = _authority(request.authority)
        attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
    agent = request.fields.get(b"user-agent")
    if agent is not None:
        attributes["user_agent.original"] = agent.decode("latin-1")
    if ctx.request_id:
        attributes["avx.request_id"] = ctx.request_id.decode("latin-1")
    return attributes


class _Drops:
    """Counts spans that were not exported, from any thread: the metrics hook at once, and the
    event log at most once every ``REPORT_INTERVAL`` (told from the reactor thread)."""

    def __init__(self, on_dropped: Optional[Callable[[int], None]], endpoint: str) -> None:
        self._on_dropped = on_dropped
        self._endpoint = endpoint
        self._lock = threading.Lock()
        #: Dropped since the last report (read without the lock on the request path).
        self.pending = 0
        self._reasons: set[str] = set()
        self._next_report = 0.0

    def add(self, count: int, reason: str) -> None:
        with self._lock:
            self.pending += count
            self._reasons.add(reason)
        hook = self._on_dropped
        if hook is not None:
            try:
                hook(count)
            except Exception:
                log.failure("tracing: the dropped-spans hook failed")

    def report(self, now: float, force: bool = False) -> None:
        """Say in the event log how many spans were dropped, if it is time to (or ``force``)."""
        if now < self._next_report and not force:
            return
        with self._lock:
            count, reasons = self.pending, sorted(self._reasons)
            self.pending = 0
            self._reasons = set()
        self._next_report = now + REPORT_INTERVAL
        log.warn(
            "tracing: {count} spans dropped ({reasons}); collector {endpoint}",
            count=count,
            reasons=", ".join(reasons),
            endpoint=self._endpoint,
        )


class _CountingExporter(SpanExporter):
    """An exporter that counts the spans of every batch its collector did not take."""

    def __init__(self, exporter: SpanExporter, drops: _Drops) -> None:
        self._exporter = exporter
        self._drops = drops

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._drops.add(len(spans), "the collector did not take them")
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _BoundedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, except that a span finding the queue full is counted (and
    dropped: the newest one, where the SDK would silently drop the oldest and log each)."""

    def __init__(
        self,
        exporter: SpanExporter,
        drops: _Drops,
        max_queue_size: Optional[int],
        schedule_delay_millis: Optional[float],
    ) -> None:
        batch_size = None
        if max_queue_size is not None and max_queue_size < 512:
            batch_size = max_queue_size
        super().__init__(
            exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=batch_size,
        )
        self._drops = drops
        # The SDK's bounded deque (opentelemetry-sdk 1.27 to 1.45 at least): only its length is
        # read. tests/unit/test_tracing.py fails if a release moves it.
        self._queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        self._capacity = getattr(self._queue, "maxlen", None)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if queue is not None and len(queue) >= self._capacity:  # type: ignore[operator]
            self._drops.add(1, "the export queue was full")
            return
        super().on_end(span)


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (twistd replaces it after start-up)."""

    def write(self, text: str) -> Any:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _console_exporter() -> SpanExporter:
    # stdout is the access log's; one JSON line per span on stderr.
    return ConsoleSpanExporter(out=_Stderr(), formatter=_one_line)


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def _otlp_exporter(endpoint: str) -> SpanExporter:
    # Imported here: requests and protobuf are only loaded when traces go to a collector.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def _quiet_sdk_logging() -> None:
    """The SDK logs through the standard library, which nothing routes into the gateway's event
    log (its lines would land raw on stderr, once per failed batch); drops are reported by
    ``_Drops`` instead. Left alone if someone configured that logger."""
    sdk = logging.getLogger("opentelemetry")
    if not sdk.handlers:
        sdk.addHandler(logging.NullHandler())
        sdk.propagate = False


class Tracing:
    """The gateway's tracer: built once from ``[tracing]``, then one ``RequestTrace`` per request.

    ``exporter`` replaces the configured one (tests pass an ``InMemorySpanExporter``); it is then
    called synchronously at each span's end unless ``batch=True``. ``max_queue_size`` and
    ``schedule_delay_millis`` tune the batch processor (None: the SDK's defaults, 2048 spans and
    5 s, which ``OTEL_BSP_*`` environment variables change). ``on_dropped(n)`` is told of spans
    that were not exported; it may be called from the export thread, so it must be thread-safe
    (a ``prometheus_client`` counter's ``inc`` is).
    """

    def __init__(
        self,
        config: TracingConfig,
        exporter: Optional[SpanExporter] = None,
        on_dropped: Optional[Callable[[int], None]] = None,
        *,
        batch: Optional[bool] = None,
        max_queue_size: Optional[int] = None,
        schedule_delay_millis: Optional[float] = None,
    ) -> None:
        self.config = config
        #: The response field to carry the trace id (b"": none), for the gateway.
        self.response_header = config.response_header.encode("latin-1")
        endpoint = config.endpoint if config.exporter == "otlp" else config.exporter
        self._drops = _Drops(on_dropped, endpoint)
        if exporter is None:
            if config.exporter == "otlp":
                exporter = _otlp_exporter(config.endpoint)
            else:
                exporter = _console_exporter()
            if batch is None:
                batch = True
        _quiet_sdk_logging()
        counting = _CountingExporter(exporter, self._drops)
        if batch:
            processor: Any = _BoundedBatchSpanProcessor(
                counting, self._drops, max_queue_size, schedule_delay_millis
            )
        else:
            processor = SimpleSpanProcessor(counting)
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("avx_twisted", __version__)
        self._stopped = False

    def start_request(self, request: Any, ctx: Any) -> RequestTrace:
        """Start the SERVER span of ``request`` (an ``h1.ServerRequest``), as a child of the
        client's ``traceparent`` when it sent exactly one valid one."""
        if self._drops.pending:
            self._drops.report(time.monotonic())
        fields = request.fields
        parent = _ROOT
        if len(fields.get_all(b"traceparent")) == 1:
            parent = _PROPAGATOR.extract(fields, _ROOT, _GETTER)
        method = _METHODS.get(request.method) or "HTTP"
        span = self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            # Set after the start, not passed to it: the sampler needs none of them, the SDK
            # would check each twice, and an unsampled span needs none.
            span.set_attributes(_request_attributes(request, ctx))
        return RequestTrace(self._tracer, span, method, ctx)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued and stop the export thread; waits ``timeout`` seconds at most
        (a collector that never answers would otherwise hold the stop for the SDK's 30 s)."""
        if self._stopped:
            return
        self._stopped = True
        stopping = threading.Thread(
            target=self._provider.shutdown, name="avx-tracing-shutdown", daemon=True
        )
        stopping.start()
        stopping.join(timeout)
        if stopping.is_alive():
            log.warn(
                "tracing: the last spans were not exported within {timeout} s",
                timeout=timeout,
            )
        if self._drops.pending:
            self._drops.report(time.monotonic(), force=True)


class RequestTrace:
    """The trace of one request: its SERVER span, and the context its upstream tries start from.

    ``trace_id`` (32 hex digits, "" if invalid) and ``span_id`` (16) are for the access log and
    the response header; ``sampled`` says whether the spans are recorded and exported.
    ``ctx`` is the request's ``RequestContext``: its ``error_type`` (a short name such as
    ``timeout``, set by the proxy) becomes the span's ``error.type`` on a 5xx.
    """

    __slots__ = (
        "_tracer",
        "_server",
        "_span",
        "_method",
        "_parent",
        "_open",
        "_tries",
        "_ctx",
        "trace_id",
        "span_id",
        "sampled",
    )

    def __init__(self, tracer: Any, span: Span, method: str, ctx: Any = None) -> None:
        self._tracer = tracer
        self._ctx = ctx
        self._server = span
        #: The SERVER span until it ends.
        self._span: Optional[Span] = span
        self._method = method
        self._parent: Optional[Context] = None
        self._open: List[AttemptTrace] = []
        self._tries = 0
        context = span.get_span_context()
        self.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        self.span_id = format(context.span_id, "016x") if context.is_valid else ""
        self.sampled = context.trace_flags.sampled

    def set_route(self, name: str) -> None:
        """The request matched route ``name``: the span is named after it (``GET users``)."""
        span = self._span
        if span is not None:
            span.update_name(self._method + " " + name)
            span.set_attribute("http.route", name)

    def annotate(self, **attributes: Any) -> None:
        """Attributes of the SERVER span (``graphql.operation.type`` ...: dots as ``__``)."""
        span = self._span
        if span is not None and span.is_recording():
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key.replace("__", "."), value)

    def start_attempt(
        self, url: str, host: str, port: int, method: bytes, fields: List[Pair]
    ) -> AttemptTrace:
        """Start the CLIENT span of one try to ``url``, and put its ``traceparent`` (and the
        trace's ``tracestate``) in ``fields``, in place of any the client sent.

        Unsampled, the span is not recorded but still has its own id, under the same trace id,
        so the upstream continues the trace with the sampled flag off.
        """
        parent = self._parent
        if parent is None:
            parent = self._parent = set_span_in_context(self._server, _ROOT)
        span = self._tracer.start_span(
            _METHODS.get(method) or "HTTP", context=parent, kind=SpanKind.CLIENT
        )
        if span.is_recording():
            attributes: dict[str, Any] = {
                "http.request.method": _METHODS.get(method) or "_OTHER",
                "server.address": host,
                "server.port": port,
                "url.full": _url_without_query(url),
            }
            if method not in _METHODS:
                attributes["http.request.method_original"] = method.decode("latin-1")
            if self._tries:
                attributes["http.request.resend_count"] = self._tries
            span.set_attributes(attributes)
        self._tries += 1
        context = span.get_span_context()
        fields[:] = [pair for pair in fields if pair[0].lower() not in _TRACE_FIELDS]
        fields.append(
            (
                b"traceparent",
                b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags),
            )
        )
        state = context.trace_state
        if state:
            fields.append((b"tracestate", state.to_header().encode("latin-1")))
        attempt = AttemptTrace(span, self._open)
        self._open.append(attempt)
        return attempt

    def start_plugin_phase(self, plugin: str, phase: str) -> PhaseTrace:
        """Start the INTERNAL span of one plugin phase call (``plugin tenant-header
        on_request``), a child of the SERVER span. Only called for a sampled request."""
        parent = self._parent
        if parent is None:
            parent = self._parent = set_span_in_context(self._server, _ROOT)
        span = self._tracer.start_span(
            "plugin " + plugin + " " + phase,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"avx.plugin.name": plugin, "avx.plugin.phase": phase},
        )
        return PhaseTrace(span)

    def event(self, name: str, **attributes: Any) -> None:
        """Something happened to the request (``retry``, ``circuit_open``...): a span event."""
        span = self._span
        if span is not None:
            span.add_event(name, attributes or None)

    def end(self, status: int, reason: Optional[str] = None) -> None:
        """The request ended with ``status``. Only the first call counts.

        As OpenTelemetry's conventions say of a server, only a 5xx (or no answer at all,
        ``status`` 0) is an error: ``error.type`` is then the context's ``error_type``
        (``timeout``, ``connection_refused``, ``circuit_open``...) when the gateway named one,
        else the status code. A 4xx is the client's error, not the server's: no status, no
        ``error.type``. ``reason`` (the gateway's free-text ``ctx.error``) is not put in the
        span: it is the access log's, and error.type must stay a short, low-cardinality name.
        Tries still open end first, with no response (``error.type`` the context's, else
        ``cancelled``).
        """
        span = self._span
        if span is None:
            return
        self._span = None
        error_type = getattr(self._ctx, "error_type", None)
        for attempt in list(self._open):
            attempt.end(0, error_type or "cancelled")
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500 or not status:
            span.set_attribute("error.type", error_type or str(status or "_OTHER"))
            span.set_status(_ERROR)
        span.end()


class PhaseTrace:
    """The INTERNAL span of one plugin phase call: ``end()`` when it returned (or its Deferred
    fired), ``end(exception)`` when it raised or failed (status ERROR, an exception event)."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span: Optional[Span] = span

    def end(self, exception: Optional[BaseException] = None) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        if exception is not None:
            span.record_exception(exception)
            span.set_attribute("error.type", type(exception).__qualname__)
            span.set_status(_ERROR)
        span.end()


class AttemptTrace:
    """The CLIENT span of one try to an upstream."""

    __slots__ = ("_span", "_open")

    def __init__(self, span: Span, open_attempts: List[AttemptTrace]) -> None:
        self._span: Optional[Span] = span
        self._open = open_attempts

    def end(self, status: int, error_type: Optional[str] = None) -> None:
        """The try ended with the upstream's ``status`` (0: no response). An error, as
        OpenTelemetry's conventions say of a client, on no response, 4xx, 5xx, or with
        ``error_type``. Only the first call counts."""
        span = self._span
        if span is None:
            return
        self._span = None
        self._open.remove(self)
        if status:
            span.set_attribute("http.response.status_code", status)
            if error_type is None and status >= 400:
                error_type = str(status)
        elif error_type is None:
            error_type = "_OTHER"
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(_ERROR)
        span.end()
