"""The request handler: every request enters here, is routed, filtered and handed to the
forwarder; every answer, refusals of the HTTP core included, is counted and logged from here."""

from __future__ import annotations

import random
import re
import time
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import grpc
from .context import RequestContext
from .errors import REFUSALS, Answer, error_answer
from .filters import body_size, refuse, run_filters
from .h1 import IRequestHandler
from .logs import request_id
from .metrics import GatewayMetrics
from .routing import BadPath, MethodNotAllowed, RouteMatch
from .runtime import Runtime
from .tls import connection_tls

InternalAnswer = Callable[[Any], Answer]

_FORBIDDEN_ORIGIN = "origin not allowed"


class InFlight:
    """Counts requests not yet finished (tunnels included), so a drain can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: list[Deferred[None]] = []

    def begin(self) -> None:
        """One more request in flight (``end`` is called when it finishes, whatever happens).
        During a drain the HTTP core itself answers with ``Connection: close``."""
        self.count += 1

    def end(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def wait_idle(self, timeout_s: float, clock: IReactorTime) -> Deferred[bool]:
        """Fires True once nothing is in flight, or False when ``timeout_s`` passes first."""
        if self.count == 0:
            return succeed(True)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        result: Deferred[bool] = Deferred()
        timer = clock.callLater(timeout_s, lambda: result.called or result.callback(False))

        def idle(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(True)

        d.addCallback(idle)
        return result


@implementer(IRequestHandler)
class InternalHandler:
    """A private listener (``[metrics] listen``, ``[health] listen``): the gateway's own paths
    and nothing else (404), neither counted nor access-logged."""

    def __init__(self, paths: dict[bytes, InternalAnswer]) -> None:
        self.paths = paths

    def handle(self, request: Any) -> None:
        answer = self.paths.get(request.path)
        if answer is None:
            error_answer(404, "not found").send(request)
            return
        answer(request).send(request)

    def refused(self, request: Any, status: int, message: str) -> None:
        error_answer(status, REFUSALS.get(status, message)).send(request)


@implementer(IRequestHandler)
class GatewayHandler:
    """Answers the gateway's own paths, then routes everything else to an upstream."""

    def __init__(
        self,
        runtime: Runtime,
        internal: Optional[dict[bytes, InternalAnswer]] = None,
        metrics: Optional[GatewayMetrics] = None,
        access_log: Optional[Logger] = None,
        sample_ratio: float = 1.0,
        skip_paths: Sequence[str] = (),
    ) -> None:
        self.runtime = runtime
        self.internal = internal or {}
        self.in_flight = InFlight()
        self.metrics = metrics
        self.access_log = access_log
        #: Share of successful requests access-logged (errors always are).
        self.sample_ratio = sample_ratio
        #: Paths never access-logged (probe noise).
        self.skip_paths = frozenset(p.encode() for p in skip_paths)
        #: The in-flight gauge to move per request; None when it reads ``in_flight`` at scrape
        #: time instead (one process: nothing to do per request).
        self.in_flight_gauge: Any = None
        if metrics is not None:
            if metrics.multiprocess_dir is None:
                in_flight = self.in_flight
                metrics.in_flight.set_function(lambda: in_flight.count)
            else:
                self.in_flight_gauge = metrics.in_flight

    def handle(self, request: Any) -> None:
        internal = self.internal.get(request.path)
        if internal is not None:
            internal(request).send(request)
            return
        runtime = self.runtime
        ctx = self._begin(request, runtime)
        try:
            match = runtime.table.match(request.authority, request.target, request.method)
        except BadPath:
            refuse(request, ctx, 400, "bad request path")
            return
        if match is None:
            refuse(request, ctx, 404, "no route matches this path")
            return
        if isinstance(match, MethodNotAllowed):
            preflight = self._preflight(request, ctx)
            if preflight is not None:
                preflight.send(request)
                return
            allow = ", ".join(match.allowed).encode("ascii")
            refuse(request, ctx, 405, "method not allowed", [(b"Allow", allow)])
            return
        route = match.value
        ctx.route = route.name
        if route.grpc:
            ctx.grpc = grpc.is_call(request.fields)
        target = match.upstream_target
        if route.rewrite_target is not None:
            target = route.rewrite_target(target)
        ctx.upstream_target = target
        ctx.params = match.params
        if route.plugins is not None:
            ctx.chain = route.plugins
        if ctx.trace is not None:
            ctx.trace.set_route(route.name)
        if (
            request.head.upgrade == b"websocket"
            and route.websocket
            and route.cors is not None
            and not route.cors.origin_allowed(request)
        ):
            # Cross-site WebSocket hijacking: browsers send Origin and never preflight.
            refuse(request, ctx, 403, _FORBIDDEN_ORIGIN)
            return

        def forward() -> None:
            policies = route.policies
            if policies is None:
                self._send(request, ctx, route)
            else:
                policies.run(request, ctx, lambda: self._send(request, ctx, route))

        run_filters(route.filters, request, ctx, forward)

    def _send(self, request: Any, ctx: RequestContext, route: Any) -> None:
        """After the route's filters and policies: its cache answers, or the request goes on
        through the plugins (:meth:`_onward`)."""
        if route.cache is not None:  # never on a resource route (the config refuses both)
            route.cache.handle(request, ctx, lambda hooks: self._onward(request, ctx, route, hooks))
        else:
            self._onward(request, ctx, route, None)

    def _onward(self, request: Any, ctx: RequestContext, route: Any, hooks: Any) -> None:
        """The route's plugins' ``on_request``, then its resource or the forwarder (with the
        cache's ``hooks`` on a cached route). The plugins sit between the cache and the
        upstream: a cache hit never reaches them, and an answer of theirs is never stored (it
        releases the requests collapsed behind this one at once)."""

        plugin_filters = route.plugin_filters
        if not plugin_filters:
            self._serve(request, ctx, route, hooks)
            return
        if hooks is not None:
            plugin_filters = (_releasing(plugin_filters[0], hooks),)
        run_filters(plugin_filters, request, ctx, lambda: self._serve(request, ctx, route, hooks))

    def _serve(self, request: Any, ctx: RequestContext, route: Any, hooks: Any) -> None:
        """The end of the way in: the route's resource, or the forwarder."""
        if route.responder is not None:
            route.responder.serve(request, ctx, ctx.upstream_target)
        else:
            self.runtime.forwarder.forward(request, route, ctx.upstream_target, ctx, hooks)

    def refused(self, request: Any, status: int, message: str) -> None:
        """The HTTP core refuses a request (framing, limits, timeouts): counted and logged
        like every other answer."""
        ctx = self._begin(request, self.runtime)
        since = getattr(request.refusal, "since", None)
        if since is not None:
            ctx.started = min(ctx.started, since)  # e.g. a 408 took the whole header timeout
        ctx.error = message
        refuse(request, ctx, status, REFUSALS.get(status, message))

    # -- one request's bookkeeping ---------------------------------------------------------------

    def _begin(self, request: Any, runtime: Runtime) -> RequestContext:
        """Who asked (behind trusted proxies), the request's ID (which goes both ways), and the
        one finish hook of the request."""
        fields = request.fields
        incoming = fields.get_all(b"x-request-id")
        rid = request_id(incoming)
        if not incoming or incoming[-1] != rid:
            fields.set(b"X-Request-ID", rid)
        request.response_fields.add(b"X-Request-ID", rid)
        peer = request.peer_host
        addresses = runtime.addresses
        started = runtime.reactor.seconds()
        if not addresses.networks:
            ctx = RequestContext(peer, peer, False, rid, started)
        else:
            forwarded = fields.get_all(b"x-forwarded-for")
            ctx = RequestContext(
                addresses.client_ip(peer, forwarded), peer, addresses.is_trusted(peer), rid, started
            )
        request.context = ctx
        if request.secure:
            channel = request.channel
            info = channel.tls_info
            if info is None:
                info = channel.tls_info = connection_tls(channel.transport)
            ctx.tls = info
        tracing = runtime.tracing
        if tracing is not None:
            trace = ctx.trace = tracing.start_request(request, ctx)
            if runtime.trace_header is not None and trace.trace_id:
                request.response_fields.add(runtime.trace_header, trace.trace_id.encode())
        self.in_flight.begin()
        if self.in_flight_gauge is not None:
            self.in_flight_gauge.inc()
        request.on_done = self._finished
        return ctx

    def _finished(self, request: Any, failure: Optional[Failure]) -> None:
        """Count the request and write its access-log event (once, whatever happened)."""
        ctx: RequestContext = request.context
        if failure is not None and ctx.exchange is not None:
            ctx.exchange.client_lost(failure)
        self.in_flight.end()
        runtime = self.runtime
        duration = runtime.reactor.seconds() - ctx.started
        # 499 (nginx's convention): the client went away before the answer was complete.
        status = request.status if failure is None else 499
        sent = request.sent_bytes
        received = body_size(request)
        metrics = self.metrics
        if self.in_flight_gauge is not None:
            self.in_flight_gauge.dec()
        if metrics is not None:
            route = metrics.route(ctx.route)
            requests, durations = route.request(request.method, status)
            requests.inc()
            durations.observe(duration)
            if received:
                route.request_bytes.inc(received)
            if sent:
                route.response_bytes.inc(sent)
            if ctx.grpc:
                service, method = grpc.service_method(request.path)
                code = grpc.code_name(_grpc_status(ctx, failure))
                calls, call_durations = route.grpc(service or "other", method or "other", code)
                calls.inc()
                call_durations.observe(duration)
        if failure is not None and ctx.error is None:
            ctx.error = "client closed the connection"
        trace = ctx.trace
        if trace is not None:
            trace.end(status)
        record: list[dict[str, Any]] = []  # made once, for on_log and the access log
        chain = ctx.chain
        if chain is not None:

            def summary() -> dict[str, Any]:
                if not record:
                    record.append(self._record(request, ctx, status, duration))
                return record[0]

            chain.finished(ctx, summary)
        access_log = self.access_log
        if access_log is None or request.path in self.skip_paths:
            return
        if status < 400 and self.sample_ratio < 1.0 and random.random() >= self.sample_ratio:
            return
        fields = record[0] if record else self._record(request, ctx, status, duration)
        access_log.info("access", **fields)

    def _record(
        self, request: Any, ctx: RequestContext, status: int, duration: float
    ) -> dict[str, Any]:
        """The fields of a finished request's access record (and of plugins' ``on_log``)."""
        identity = ctx.identity
        fields = request.fields
        exchange = ctx.exchange
        trace = ctx.trace
        tls = ctx.tls
        cert = tls.client_cert if tls is not None else None
        return dict(
            time=time.time(),
            request_id=ctx.request_id.decode("latin-1"),
            client_ip=ctx.client_ip,
            method=request.method.decode("latin-1"),
            host=_text(request.authority),
            path=request.path.decode("latin-1"),
            protocol="HTTP/" + request.version.decode("latin-1"),
            route=ctx.route,
            upstream=ctx.upstream,
            status=status,
            upstream_status=ctx.upstream_status,
            request_bytes=body_size(request),
            response_bytes=request.sent_bytes,
            duration_ms=round(duration * 1000.0, 3),
            upstream_duration_ms=None
            if ctx.upstream_duration is None
            else round(ctx.upstream_duration * 1000.0, 3),
            retries=len(exchange.tried) - 1 if exchange is not None and exchange.tried else 0,
            user=identity.name if identity is not None else None,
            referer=_text(fields.get(b"referer")),
            user_agent=_text(fields.get(b"user-agent")),
            trace_id=trace.trace_id if trace is not None else trace_id(fields.get(b"traceparent")),
            span_id=trace.span_id if trace is not None else None,
            error=ctx.error,
            tls_version=tls.version if tls is not None else None,
            client_cert_subject=cert.subject if cert is not None else None,
            client_cert_sha256=cert.sha256 if cert is not None else None,
            cache=ctx.cache,
            graphql=ctx.graphql,
            **_grpc_fields(request, ctx),
        )

    def _preflight(self, request: Any, ctx: RequestContext) -> Optional[Answer]:
        """A CORS preflight for a route whose ``methods`` leave out OPTIONS: the route is the one
        the browser asks about (Access-Control-Request-Method), and its CORS policy answers."""
        if request.method != b"OPTIONS":
            return None
        wanted = request.fields.get(b"access-control-request-method")
        if not wanted:
            return None
        match = self.runtime.table.match(request.authority, request.target, wanted)
        if not isinstance(match, RouteMatch) or match.value.cors is None:
            return None
        ctx.route = match.value.name
        result = match.value.cors(request, ctx)
        return result


_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(traceparent: Optional[bytes]) -> Optional[str]:
    """The trace id of a W3C ``traceparent`` field (None when absent, malformed or all zero)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None or match.group(1) == b"0" * 32:
        return None
    return match.group(1).decode("ascii")


def _grpc_status(ctx: RequestContext, failure: Optional[Failure]) -> Optional[int]:
    """A call's outcome: its ``grpc-status``; a client that went away cancelled it."""
    if ctx.grpc_status is None and failure is not None:
        return 1  # CANCELLED
    return ctx.grpc_status


_NO_GRPC = {"grpc_service": None, "grpc_method": None, "grpc_status": None}


def _grpc_fields(request: Any, ctx: RequestContext) -> dict[str, Any]:
    if not ctx.grpc and ctx.grpc_status is None:
        return _NO_GRPC
    service, method = grpc.service_method(request.path)
    return {"grpc_service": service, "grpc_method": method, "grpc_status": ctx.grpc_status}


def _text(value: Optional[bytes]) -> Optional[str]:
    return value.decode("latin-1") if value is not None else None


def _releasing(plugins: Any, hooks: Any) -> Any:
    """The plugins' ``on_request`` filter on a cache miss: when it answers instead of going
    on, the cache's ``hooks`` are released (nothing will be stored; waiters look again)."""

    def run(request: Any, ctx: RequestContext) -> Any:
        result = plugins(request, ctx)
        if isinstance(result, Deferred):
            return result.addCallback(_release_if_answered, hooks)
        return _release_if_answered(result, hooks)

    return run


def _release_if_answered(result: Any, hooks: Any) -> Any:
    if result is not None:
        hooks.release()
    return result
