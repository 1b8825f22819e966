# -*- test-case-name: tests.unit.test_proxy -*-
"""The forwarder: sends one client request to an upstream target and streams the answer back.

The request head is built once per attempt (hop-by-hop fields dropped, ``X-Forwarded-*`` set,
see :mod:`avx_twisted.proxy_headers`) and written in one block, with the body when it is
already whole; a longer body streams from the client as it arrives. The response body is
relayed with backpressure both ways; a fixed-length body goes through as it is. A response that
breaks mid-body aborts the client connection, so a truncated answer never looks complete. A
WebSocket handshake answered 101 turns both connections into one tunnel.
"""

from __future__ import annotations

import enum
import errno
from math import ceil
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import grpc
from .compression import Compressor
from .errors import REFUSALS, error_answer
from .filters import send_answer
from .h1 import (
    REASONS,
    BodyFailed,
    Fields,
    ProtocolViolation,
    Tunnel,
    UpstreamClosed,
    head_bytes,
    request_line,
)
from .h2 import UpstreamReset
from .json_transform import plan_response
from .plugin_chain import PluginFailed
from .proxy_headers import client_response_fields, upstream_request_fields
from .validation import ResponseMonitor, is_json_content_type

if TYPE_CHECKING:
    from .context import RequestContext
    from .upstream import Target

log = Logger()

Pair = Tuple[bytes, bytes]

#: Methods that may be sent again (RFC 9110 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
_RETRYABLE_STATUS = frozenset([502, 503, 504])
_CONNECT_ERRORS = (ierror.ConnectError, ierror.DNSLookupError, ierror.TimeoutError, UpstreamClosed)
_RETRYABLE_ERRORS = _CONNECT_ERRORS + (ierror.ConnectingCancelledError,)
#: Local exhaustion (out of file descriptors): never the upstream's fault.
_LOCAL_ERRNOS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
_KEEP_UPGRADE = frozenset([b"upgrade", b"connection"])
_CHUNKED = (b"Transfer-Encoding", b"chunked")


class ExchangeState(enum.Enum):
    """An exchange's state. Legal transitions::

    WAITING  -> WAITING   a retry on another target
    WAITING  -> RELAYING  the response head went to the client
    WAITING  -> TUNNEL    a 101 joined the two connections
    any      -> DONE      answered, failed, timed out or the client went away
    """

    WAITING = "waiting"
    RELAYING = "relaying"
    TUNNEL = "tunnel"
    DONE = "done"


class Exchange:
    """One client request on its way to an upstream target (or several, with retries) and back.

    The route's ``timeout_ms`` bounds the whole exchange, body included: on expiry a pending
    upstream request is cancelled (its connection aborted, never pooled) and the client gets
    504, or, once the response has started, the client connection is aborted. It does not
    apply to a tunnel (its idle timeout does).
    """

    def __init__(
        self,
        forwarder: Forwarder,
        request: Any,
        route: Any,
        path: bytes,
        ctx: Optional[RequestContext] = None,
        cache: Any = None,
    ) -> None:
        self.forwarder = forwarder
        #: The route cache's hooks for this request (response_cache.CacheHooks), or None.
        self.cache = cache
        #: The response body's encoder when the route compresses this answer, and its JSON
        #: transform (``json_transform.ResponseBodyTransform``) when it has one.
        self.compressor: Any = None
        self.json_body: Any = None
        #: ``response_schema`` monitoring of this answer (validation.ResponseMonitor).
        self.monitor: Any = None
        self.request = request
        self.ctx = ctx
        self.route = route
        self.path = path
        self.state = ExchangeState.WAITING
        self.tried: List[Target] = []
        #: A gRPC call on a gRPC route: its deadline, status and errors are gRPC's.
        self.grpc = getattr(route, "grpc", False) and grpc.is_call(request.fields)
        # A gRPC call is a POST, sent again only when it reached no upstream (connect error,
        # refused stream) or one answered UNAVAILABLE before any byte.
        retry = request.method in IDEMPOTENT or self.grpc
        self.retries_left = route.retries if retry else 0
        self.target: Optional[Target] = None
        self.held: Optional[Target] = None
        self.pending: Any = None
        self.response: Any = None
        self.deadline: Any = None
        self.attempt_started = 0.0
        self.expired = False
        self.websocket = request.head.upgrade == b"websocket" and getattr(route, "websocket", False)
        #: The route's plugins (None: none), the response body's transform through them, and
        #: the trace of the current try.
        self.chain = getattr(route, "plugins", None)
        self.transform: Any = None
        self.attempt_trace: Any = None

    @property
    def request_id(self) -> Optional[str]:
        return self.ctx.request_id.decode("latin-1") if self.ctx is not None else None

    @property
    def finished(self) -> bool:
        return self.state is ExchangeState.DONE

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            ctx.exchange = self  # the gateway's finish hook reports client loss
            ctx.grpc = self.grpc
        elif self.request.on_done is None:
            self.request.on_done = self._request_done
        timeout: Optional[float] = self.route.timeout_s
        if self.grpc:
            timeout = grpc.deadline_s(self.request.fields, self.route.grpc_cap_s)
        if timeout is not None:
            self.deadline = self.forwarder.clock.callLater(timeout, self.timed_out)
        self.attempt()

    def attempt(self) -> None:
        upstream = self.route.upstream
        target = upstream.pick(self.tried)
        if target is None:
            retry_after = upstream.retry_after()
            trace = self.ctx.trace if self.ctx is not None else None
            if trace is not None:
                trace.event("circuit_open" if retry_after is not None else "no_target")
            if retry_after is not None:
                self.fail(
                    503,
                    "upstream circuit open",
                    [(b"Retry-After", b"%d" % ceil(retry_after))],
                    error_type="circuit_open",
                )
            else:
                self.fail(503, "no upstream target available", error_type="no_target")
            return
        self.tried.append(target)
        self.target = self.held = target
        target.acquire()
        breaker = target.breaker
        if breaker is not None:
            breaker.on_request()
        request = self.request
        route = self.route
        fields = upstream_request_fields(
            request,
            target.netloc,
            self.forwarder.preserve_host,
            self.ctx,
            route.strip_headers,
            route.extra_headers(self.ctx),
            self.websocket,
        )
        path = self.path
        chain = self.chain
        if chain is not None and chain.upstream:
            try:
                path, fields = chain.upstream_request(
                    request.method, target.url, path, fields, self.ctx
                )
            except PluginFailed:
                self.end_attempt()
                if breaker is not None:
                    breaker.release_trial()
                self.fail(500, "internal error", error_type="plugin")
                return
        if self.cache is not None:
            fields = self.cache.upstream_fields(fields)
        ctx = self.ctx
        if ctx is not None and ctx.trace is not None:
            self.attempt_trace = ctx.trace.start_attempt(
                target.url, target.host, target.port, request.method, fields
            )
        body = request.body
        connector = target.connector
        stream = None
        whole = b""
        if body.present:
            buffered = body.buffered()
            if buffered is not None:
                fields.append((b"Content-Length", b"%d" % len(buffered)))
                whole = buffered
            elif body.chunked:
                if not connector.h2:
                    fields.append(_CHUNKED)
                stream = body
            else:
                fields.append((b"Content-Length", b"%d" % body.declared))
                stream = body
        self.attempt_started = self.forwarder.clock.seconds()
        if self.ctx is not None:
            self.ctx.upstream = target.url
        if connector.h2:
            te = request.fields.get(b"te")
            if te is not None and b"trailers" in te.lower():
                fields.append((b"te", b"trailers"))  # the client reads trailers (gRPC does)
            d = connector.request_h2(
                request.method,
                target.base_path + path,
                fields,
                whole,
                stream,
                request.method in IDEMPOTENT,
                self.interim,
            )
        else:
            head = head_bytes(request_line(request.method, target.base_path + path), fields)
            d = connector.request(
                head + whole if whole else head,
                request.method,
                stream,
                body.chunked,
                request.method in IDEMPOTENT,
                self.interim,
            )
        self.pending = d
        d.addCallbacks(self.got_response, self.no_response)

    def can_retry(self) -> bool:
        """Another try is allowed: retries left, nothing sent, time left, another target up."""
        return (
            self.retries_left > 0
            and not self.expired
            and not self.finished
            and not self.request.started
            and self.request.body.replayable
            and self.route.upstream.any_available(self.tried)
        )

    def retry(self) -> None:
        self.retries_left -= 1
        if self.ctx is not None and self.ctx.trace is not None:
            self.ctx.trace.event("retry", failed=self.target.url if self.target else "")
        log.info(
            "retrying {method} for route {route} on another target after {url} failed",
            request_id=self.request_id,
            method=self.request.method,
            route=self.route.name,
            url=self.target.url if self.target else None,
        )
        self.attempt()

    # -- upstream answers --------------------------------------------------------------------

    def observe(self, target: Target, status: int, error_type: Optional[str] = None) -> None:
        """Upstream metrics, the context's upstream timing and the try's span for one attempt."""
        attempt_trace, self.attempt_trace = self.attempt_trace, None
        if attempt_trace is not None:
            attempt_trace.end(status, error_type)
        took = self.forwarder.clock.seconds() - self.attempt_started
        if self.ctx is not None:
            self.ctx.upstream_duration = took
            self.ctx.upstream_status = status or None
        metrics = self.route.metrics
        if metrics is not None:
            metrics.upstream_request(target.url, status).inc()
            metrics.upstream_duration(target.url, self.request.method, status).observe(took)

    def interim(self, head: Any) -> None:
        """A 1xx before the answer: 103 Early Hints go on to the client; 100 is ours to send."""
        if head.status == 103 and not self.request.started:
            self.request.interim(103, client_response_fields(head.fields, Fields(), _NONE, False))

    def got_response(self, response: Any) -> None:
        self.pending = None
        target = self.target
        assert target is not None
        status = response.status
        self.observe(target, status)
        unavailable = False
        if self.grpc:
            code = grpc.status_of(response.fields)  # a trailers-only answer's
            if code is not None and self.ctx is not None:
                self.ctx.grpc_status = code
            unavailable = code == grpc.UNAVAILABLE and response.length == 0
        if target.breaker is not None:
            if status >= 500 or unavailable:
                target.breaker.record_failure()
            else:
                target.breaker.record_success()
        if self.finished:
            response.abort()
            self.end_attempt()
            return
        if (status in _RETRYABLE_STATUS or unavailable) and self.can_retry():
            response.abort()  # its body is not wanted: the connection is not worth keeping
            self.end_attempt()
            self.retry()
            return
        if status == 101:
            self.switch(response)
            return
        if self.cache is not None and self.cache.response(self, response):
            return  # the cache answered (revalidated, or stale-if-error)
        if self.websocket and self.route.metrics is not None:
            self.route.metrics.websocket_handshake(status).inc()  # refused by the upstream
        request = self.request
        forwarder = self.forwarder
        fields = client_response_fields(
            response.fields,
            request.response_fields,
            self.route.owned_response_headers,
            forwarder.replace_server,
        )
        length = response.length
        if request.method == b"HEAD":
            length = response.head.content_length
        chain = self.chain
        if chain is not None:
            if chain.responses:
                try:
                    status, fields = chain.response(status, fields, self.ctx)
                except PluginFailed:
                    response.abort()
                    self.end_attempt()
                    self.fail(500, "internal error", through_plugins=False, error_type="plugin")
                    return
            if chain.body and length != 0 and request.method != b"HEAD":
                self.transform = chain.body_transform(self.ctx)
                length = None  # the plugins may change its size: chunked (or close-delimited)
        rules = self.route.response_rules
        if rules is not None:
            fields = rules.apply(fields, request, self.ctx, strict=False)
        validate = self.route.validate
        if validate is not None and validate.response_compiled is not None:
            content_type = response.fields.get(b"content-type")
            if is_json_content_type(content_type) and not response.fields.get(b"content-encoding"):
                self.monitor = ResponseMonitor(validate.response_compiled, validate.max_bytes)
        json_rules = self.route.response_json
        if json_rules is not None:
            body_transform, fields = plan_response(json_rules, request.method, status, fields)
            if body_transform is not None:
                self.json_body = body_transform
                length = None
        compression = self.route.compression
        if compression is not None:
            encoding, fields = compression.plan(
                request.method, request.fields, status, fields, length
            )
            if encoding is not None:
                self.compressor = Compressor(encoding)
                length = None  # re-framed: chunked (HTTP/1.1) or DATA frames (HTTP/2)
        if self.cache is not None:
            fields = self.cache.started(status, fields, length)
        self.state = ExchangeState.RELAYING
        self.response = response
        # Registered statuses get our reason phrase; others keep the upstream's.
        reason = None if status in REASONS else response.head.reason or None
        request.start(status, fields, length, reason)
        if length != 0:
            request.register_producer(response.producer)
        response.deliver(self)

    def no_response(self, failure: Failure) -> None:
        self.pending = None
        target = self.target
        breaker = target.breaker if target is not None else None
        if target is not None:
            self.observe(target, 0, _error_type(failure, self.expired))
        self.end_attempt()
        if self.finished:
            if breaker is not None:
                breaker.release_trial()
            return
        if self.expired:
            if breaker is not None:
                breaker.record_failure()
            self.fail(504, "upstream timed out", error_type="timeout")
            return
        if failure.check(BodyFailed):
            # The client's body broke a rule or stopped: its fault, not the upstream's.
            if breaker is not None:
                breaker.release_trial()
            status = failure.value.status
            self.fail(status, REFUSALS.get(status, failure.value.reason))
            return
        if failure.check(ierror.ConnectError) and failure.value.osError in _LOCAL_ERRNOS:
            if breaker is not None:
                breaker.release_trial()
            log.error(
                "cannot connect to {url} for route {route}: {why} (local resources exhausted)",
                request_id=self.request_id,
                url=target.url if target else None,
                route=self.route.name,
                why=failure.getErrorMessage(),
            )
            self.fail(
                503,
                "gateway out of connections",
                [(b"Retry-After", b"1")],
                error_type="local_exhaustion",
            )
            return
        if breaker is not None:
            breaker.record_failure()
        if failure.check(ierror.TimeoutError, ierror.ConnectingCancelledError):
            status, message = 504, "upstream connect timed out"
        elif failure.check(*_CONNECT_ERRORS):
            status, message = 502, "upstream unavailable"
        elif failure.check(ProtocolViolation, UpstreamReset, CancelledError):
            status, message = 502, "bad upstream response"
        else:
            status, message = 502, "bad upstream response"
            log.failure("unexpected upstream failure", failure, request_id=self.request_id)
        log.warn(
            "upstream {url} failed for route {route}: {why}",
            request_id=self.request_id,
            url=target.url if target else None,
            route=self.route.name,
            why=failure.getErrorMessage(),
        )
        if failure.check(*_RETRYABLE_ERRORS) and self.can_retry():
            self.retry()
            return
        self.fail(status, message, error_type=_error_type(failure, False))

    # -- the response body (the IResponseSink of the upstream connection) --------------------

    def body_data(self, data: bytes) -> None:
        if self.monitor is not None:
            self.monitor.data(data)
        transform = self.transform
        if transform is not None:
            try:
                data = transform.data(data)
            except PluginFailed:
                self.transform_failed()
                return
            if not data:
                return
        json_body = self.json_body
        if json_body is not None:
            data = json_body.data(data)
            if not data:
                return
        if self.compressor is not None:
            data = self.compressor.data(data)
        if self.cache is not None:
            self.cache.data(data)
        self.request.write(data)

    def body_trailers(self, trailers: List[Pair]) -> None:
        """The upstream's trailers (HTTP/2): on to the client, unchanged (gRPC's status)."""
        if self.grpc and self.ctx is not None:
            self.ctx.grpc_status = grpc.status_of(trailers)
        if self.transform is None:  # a plugin rewriting the body makes them stale
            self.request.set_trailers(trailers)

    def body_done(self) -> None:
        self.response = None
        self.end_attempt()
        if self.finished:
            return
        request = self.request
        request.unregister_producer()
        if self.expired:
            self.done()
            request.abort()
            return
        transform = self.transform
        if transform is not None:
            try:
                tail = transform.end()
            except PluginFailed:
                self.transform_failed()
                return
            if tail:
                if self.json_body is not None:
                    tail = self.json_body.data(tail)
                if self.compressor is not None and tail:
                    tail = self.compressor.data(tail)
                if self.cache is not None:
                    self.cache.data(tail)
                request.write(tail)
        monitor = self.monitor
        if monitor is not None:
            self.monitor = None
            self.response_checked(monitor.end())
        json_body = self.json_body
        if json_body is not None:
            tail = json_body.end()
            if json_body.skipped and self.route.metrics is not None:
                self.route.metrics.json_skipped("response", json_body.skipped).inc()
            if self.compressor is not None and tail:
                tail = self.compressor.data(tail)
            if self.cache is not None:
                self.cache.data(tail)
            request.write(tail)
        if self.compressor is not None:
            tail = self.compressor.finish()
            if self.cache is not None:
                self.cache.data(tail)
            request.write(tail)
        if self.cache is not None:
            self.cache.done()
        self.done()
        request.finish()

    def response_checked(self, problems: Optional[List[Any]]) -> None:
        """``response_schema`` (monitor only): a mismatch is logged and counted."""
        if not problems:
            return
        if self.route.metrics is not None:
            self.route.metrics.validation_failure("response").inc()
        first = problems[0]
        log.warn(
            "response of {url} for route {route} does not match its schema: {where} {message} "
            "({count} problems)",
            request_id=self.request_id,
            url=self.target.url if self.target else None,
            route=self.route.name,
            where=first.instance_location or "/",
            message=first.message,
            count=len(problems),
        )

    def transform_failed(self) -> None:
        """A plugin failed on the response body: cut the answer (never a truncated body that
        looks complete)."""
        self.transform = None
        if self.cache is not None:
            self.cache.broken()
        response, self.response = self.response, None
        if response is not None:
            response.abort()
        self.end_attempt()
        self.done()
        self.request.abort()

    def body_failed(self, reason: Failure) -> None:
        self.response = None
        if self.cache is not None:
            self.cache.broken()
        self.end_attempt()
        if self.finished:
            return
        why = "timed out" if self.expired else reason.getErrorMessage()
        log.warn(
            "upstream {url} broke off the response body for route {route}: {why}",
            request_id=self.request_id,
            url=self.target.url if self.target else None,
            route=self.route.name,
            why=why,
        )
        if self.ctx is not None:
            self.ctx.error = f"upstream response body broken off: {why}"
            self.ctx.error_type = "timeout" if self.expired else "upstream_body"
        self.done()
        request = self.request
        if self.grpc and request.version == b"2.0":
            # A gRPC client reads the outcome from the trailers: the call ends with a status
            # (never with what looks like success).
            code = grpc.DEADLINE_EXCEEDED if self.expired else grpc.UNAVAILABLE
            message = "deadline exceeded" if self.expired else "upstream broke off the call"
            if self.ctx is not None:
                self.ctx.grpc_status = code
            request.unregister_producer()
            request.set_trailers(grpc.trailers(code, message))
            request.finish()
            return
        request.abort()

    # -- WebSocket ---------------------------------------------------------------------------

    def switch(self, response: Any) -> None:
        """A 101: for a WebSocket handshake, join the connections; anything else is bad."""
        metrics = self.route.metrics
        if not self.websocket:
            response.abort()
            self.end_attempt()
            self.fail(502, "bad upstream response")
            return
        if metrics is not None:
            metrics.websocket_handshake(101).inc()
        self.cancel_deadline()
        self.state = ExchangeState.TUNNEL
        request = self.request
        fields = client_response_fields(
            response.fields, request.response_fields, frozenset(), False, _KEEP_UPGRADE
        )
        rest = request.upgrade_rest
        request.switch_protocols(fields)
        tunnel = Tunnel(self.forwarder.clock, self.route.websocket_idle_timeout_s, self.closed)
        if metrics is not None:
            metrics.websocket()[0].inc()
        tunnel.splice(request.channel, response.protocol, b"".join(rest or ()), response.rest)

    def closed(self, tunnel: Tunnel) -> None:
        """The tunnel ended (either side, idle, or drain)."""
        self.end_attempt()
        metrics = self.route.metrics
        if metrics is not None:
            gauge, up, down = metrics.websocket()
            gauge.dec()
            if tunnel.bytes_up:
                up.inc(tunnel.bytes_up)
            if tunnel.bytes_down:
                down.inc(tunnel.bytes_down)
        self.state = ExchangeState.DONE
        self.request.end_tunnel(tunnel.bytes_up, tunnel.bytes_down)

    # -- endings -----------------------------------------------------------------------------

    def timed_out(self) -> None:
        self.deadline = None
        self.expired = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.response is not None:
            response, self.response = self.response, None
            response.abort()

    def _request_done(self, request: Any, failure: Optional[Failure]) -> None:
        if failure is not None:
            self.client_lost(failure)

    def client_lost(self, failure: Failure) -> None:
        if self.state is ExchangeState.TUNNEL:
            return  # the tunnel sees it too, and ends the exchange
        if self.cache is not None:
            self.cache.broken()
        self.done()
        if self.pending is not None:
            self.pending.cancel()
        if self.response is not None:
            response, self.response = self.response, None
            response.abort()
        self.end_attempt()

    def fail(
        self,
        status: int,
        message: str,
        fields: Optional[List[Pair]] = None,
        through_plugins: bool = True,
        error_type: Optional[str] = None,
    ) -> None:
        if self.cache is not None and self.cache.failed(status):
            self.done()  # a stale entry answered (stale-if-error)
            return
        self.done()
        ctx = self.ctx
        if ctx is not None:
            if ctx.error is None or through_plugins:
                ctx.error = message
            if error_type is not None:
                ctx.error_type = error_type
        request = self.request
        if request.started:
            request.abort()
            return
        if self.websocket and self.route.metrics is not None:
            self.route.metrics.websocket_handshake(status).inc()
        request_id = self.ctx.request_id if self.ctx is not None else b""
        answer = error_answer(status, message, fields or (), request_id)
        if through_plugins:
            send_answer(answer, request, self.ctx)
        else:
            answer.send(request)

    def drop_response(self, response: Any) -> None:
        """The cache answers instead of ``response`` (a 304 to its revalidation, or a 5xx it
        covers with a stale entry): read off an empty body so the connection is kept."""
        self.done()
        if response.length == 0:
            response.deliver(_DISCARD)
        else:
            response.abort()
        self.end_attempt()

    def end_attempt(self) -> None:
        """The current target is done with this request (success or not)."""
        held, self.held = self.held, None
        if held is not None:
            held.release()

    def cancel_deadline(self) -> None:
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def done(self) -> None:
        """The exchange is over: no more timers."""
        if self.state is not ExchangeState.DONE:
            self.state = ExchangeState.DONE
            self.cancel_deadline()


_NONE: frozenset[bytes] = frozenset()


class _Discard:
    """A sink for a body nobody reads."""

    def body_data(self, data: bytes) -> None:
        pass

    def body_done(self) -> None:
        pass

    def body_failed(self, reason: Any) -> None:
        pass


_DISCARD = _Discard()


def _error_type(failure: Failure, expired: bool) -> str:
    """A failed try in a word, for its span's ``error.type``."""
    if expired:
        return "timeout"
    if failure.check(BodyFailed):
        return "client_body"
    if failure.check(ierror.ConnectionRefusedError):
        return "connection_refused"
    if failure.check(ierror.TimeoutError, ierror.ConnectingCancelledError):
        return "connect_timeout"
    if failure.check(ierror.DNSLookupError):
        return "dns"
    if failure.check(UpstreamClosed):
        return "upstream_closed"
    if failure.check(ProtocolViolation):
        return "upstream_protocol"
    if failure.check(UpstreamReset):
        return "upstream_reset"
    if failure.check(CancelledError):
        return "cancelled"
    return failure.type.__name__


class Forwarder:
    """Forwards requests of every route; one per runtime, shared by all routes.

    ``replace_server``: the gateway sends its own ``Server`` field (``server.server_header``),
    so the upstream's is dropped.
    """

    def __init__(
        self, clock: IReactorTime, preserve_host: bool = True, replace_server: bool = False
    ) -> None:
        self.clock = clock
        self.preserve_host = preserve_host
        self.replace_server = replace_server

    def forward(
        self, request: Any, route: Any, path: bytes, ctx: Any = None, cache: Any = None
    ) -> Exchange:
        """Start forwarding ``request`` to ``route`` as ``path`` (raw path and query);
        ``cache``: the route cache's hooks for it."""
        exchange = Exchange(self, request, route, path, ctx, cache)
        exchange.start()
        return exchange
