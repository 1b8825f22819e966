"""A real OTLP/HTTP trace receiver on 127.0.0.1 (what a collector's ``otlphttp`` receiver
does: POST ``/v1/traces``, protobuf ``ExportTraceServiceRequest``), and collectors that fail.

    receiver = otlp_receiver()                  # listening now; receiver.url for [tracing] endpoint
    spans = await receiver.wait_for_spans(2)    # a Deferred: fires once 2 spans arrived
    spans[0].name, .kind, .trace_id, .parent_span_id, .attributes, .status, .resource
    await receiver.stop()

A test that shares the reactor with the receiver must not block it while spans are exported
(``Tracing.shutdown`` from the reactor thread would wait for a receiver that cannot answer):
``await threads.deferToThread(tracing.shutdown)``. A gateway run as its own process has no
such problem.
"""

from __future__ import annotations

import gzip
import socket
import zlib
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from twisted.internet import defer, protocol, reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = [
    "OTLPReceiver",
    "ReceivedSpan",
    "SilentCollector",
    "otlp_receiver",
    "refusing_endpoint",
    "silent_collector",
]

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as the Python value it holds."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, which)


def key_values(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


@dataclass
class ReceivedSpan:
    """One span as the collector received it, decoded into plain values."""

    name: str
    kind: str  # "SERVER", "CLIENT", ...
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: str  # "UNSET", "OK" or "ERROR"
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str
    start_ns: int = 0
    end_ns: int = 0
    trace_state: str = ""

    @classmethod
    def decode(cls, span: Any, resource: dict[str, Any], scope: str) -> ReceivedSpan:
        return cls(
            name=span.name,
            kind=_KINDS.get(span.kind, str(span.kind)),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            attributes=key_values(span.attributes),
            status=_STATUSES.get(span.status.code, str(span.status.code)),
            events=[(e.name, key_values(e.attributes)) for e in span.events],
            resource=resource,
            scope=scope,
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            trace_state=span.trace_state,
        )


@dataclass
class _Waiter:
    count: int
    deferred: defer.Deferred[list[ReceivedSpan]] = field(default_factory=defer.Deferred)


class _TracesResource(Resource):
    isLeaf = True

    def __init__(self, receiver: OTLPReceiver) -> None:
        super().__init__()
        self.receiver = receiver

    def render_POST(self, request: Request) -> bytes:
        if request.path != self.receiver.path:
            request.setResponseCode(404)
            return b""
        return self.receiver._received(request)


class OTLPReceiver:
    """Collects every export request sent to ``url``; answers ``status`` (200: accepted).

    ``requests`` are the decoded ``ExportTraceServiceRequest`` messages, ``headers`` the
    request headers of each (lower-case names), ``spans`` every span in arrival order.
    """

    def __init__(self, path: str = "/v1/traces") -> None:
        self.path = path.encode("ascii")
        self.status = 200
        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.spans: list[ReceivedSpan] = []
        self._waiters: list[_Waiter] = []
        self._site = Site(_TracesResource(self))
        self._site.noisy = False
        self._site.log = lambda request: None  # type: ignore[method-assign]
        self._port = reactor.listenTCP(0, self._site, interface="127.0.0.1")
        self.port = self._port.getHost().port
        self.url = f"http://127.0.0.1:{self.port}{path}"

    def _received(self, request: Request) -> bytes:
        body = request.content.read()
        encoding = (request.getHeader("content-encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        raw = request.requestHeaders.getAllRawHeaders()
        self.headers.append({k.decode().lower(): v[-1].decode() for k, v in raw})
        if (request.getHeader("content-type") or "") != "application/x-protobuf":
            request.setResponseCode(415)
            return b""
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        if self.status != 200:
            request.setResponseCode(self.status)
            return b""
        self.requests.append(message)
        for resource_spans in message.resource_spans:
            resource = key_values(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope.name
                self.spans.extend(
                    ReceivedSpan.decode(span, resource, scope) for span in scope_spans.spans
                )
        for waiter in list(self._waiters):
            if len(self.spans) >= waiter.count:
                self._waiters.remove(waiter)
                waiter.deferred.callback(list(self.spans))
        request.setHeader("content-type", "application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()

    def wait_for_spans(
        self, count: int, timeout: float = 10.0
    ) -> defer.Deferred[list[ReceivedSpan]]:
        """Fires with every span received once there are at least ``count`` (fails with
        ``defer.TimeoutError`` after ``timeout`` seconds)."""
        if len(self.spans) >= count:
            return defer.succeed(list(self.spans))
        waiter = _Waiter(count)
        self._waiters.append(waiter)

        def forget(result: Any) -> Any:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return result

        waiter.deferred.addTimeout(timeout, reactor)
        waiter.deferred.addBoth(forget)
        return waiter.deferred

    def by_name(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in arrival order."""
        return [s for s in self.spans if s.trace_id == trace_id]

    def clear(self) -> None:
        del self.requests[:], self.headers[:], self.spans[:]

    def stop(self) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self._port.stopListening)


def otlp_receiver(path: str = "/v1/traces") -> OTLPReceiver:
    """A receiver listening on 127.0.0.1, an ephemeral port."""
    return OTLPReceiver(path)


def refusing_endpoint(path: str = "/v1/traces") -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class _Silent(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        if self in self.factory.connections:  # type: ignore[attr-defined]
            self.factory.connections.remove(self)  # type: ignore[attr-defined]


class SilentCollector:
    """Accepts connections and reads what is sent, never answers (a hung collector)."""

    def __init__(self, path: str = "/v1/traces") -> None:
        factory = protocol.ServerFactory.forProtocol(_Silent)
        factory.noisy = False
        factory.connections = []  # type: ignore[attr-defined]
        factory.received = 0  # type: ignore[attr-defined]
        self._factory = factory
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._port.getHost().port
        self.url = f"http://127.0.0.1:{self.port}{path}"

    @property
    def received(self) -> int:
        """Bytes received so far, over all connections."""
        return self._factory.received  # type: ignore[attr-defined,no-any-return]

    def stop(self) -> defer.Deferred[Any]:
        for connection in list(self._factory.connections):  # type: ignore[attr-defined]
            connection.transport.abortConnection()
        return defer.maybeDeferred(self._port.stopListening)


def silent_collector(path: str = "/v1/traces") -> SilentCollector:
    return SilentCollector(path)
