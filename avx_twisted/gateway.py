"""The root resource: every request enters here, is routed, and is handed to the forwarder."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from .context import RequestContext
from .errors import write_error
from .filters import body_size, run_filters
from .logs import request_id
from .routing import BadPath, MethodNotAllowed, RouteMatch
from .runtime import Runtime

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

InternalHandler = Callable[[Request], bytes]


class InFlight:
    """Counts proxied requests not yet finished, so a drain can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle: list[Deferred[None]] = []

    def begin(self, request: Request) -> None:
        """One more request in flight (``end`` is called when it finishes, whatever happens)."""
        self.count += 1
        if self.draining:
            # Finish this one, then close the connection: no new requests on it during a drain.
            request.channel.persistent = False
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

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


class GatewayResource(Resource):
    """Answers the gateway's own paths, then routes everything else to an upstream.

    ``isLeaf`` is set so Twisted hands over the whole raw path: routing is ours, compiled once.
    """

    isLeaf = True

    def __init__(
        self,
        runtime: Runtime,
        internal: dict[bytes, InternalHandler] | None = None,
        metrics: GatewayMetrics | None = None,
        access_log: Logger | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.internal = internal or {}
        self.in_flight = InFlight()
        self.metrics = metrics
        self.access_log = access_log

    def render(self, request: Request) -> bytes | int:
        handler = self.internal.get(request.path)
        if handler is not None:
            return handler(request)
        runtime = self.runtime
        ctx = self._context(request)
        self.in_flight.begin(request)
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.inc()
        # The one finish hook of a request: client loss reaches the exchange from here too.
        request.notifyFinish().addBoth(self._finished, request, ctx, runtime)
        try:
            match = runtime.table.match(
                request.requestHeaders.getRawHeaders(b"host", [None])[-1],
                request.uri,
                request.method,
            )
        except BadPath:
            return write_error(request, 400, "bad request path")
        if match is None:
            return write_error(request, 404, "no route matches this path")
        if isinstance(match, MethodNotAllowed):
            preflight = self._preflight(request, ctx)
            if preflight is not None:
                return preflight
            allow = ", ".join(match.allowed).encode("ascii")
            return write_error(request, 405, "method not allowed", [(b"Allow", allow)])
        route = match.value
        ctx.route = route.name
        target = match.upstream_target
        if route.rewrite_target is not None:
            target = route.rewrite_target(target)

        def forward() -> None:
            runtime.forwarder.forward(request, route, target, ctx)

        return run_filters(route.filters, request, ctx, forward)

    def _context(self, request: Request) -> RequestContext:
        """Who asked (behind trusted proxies) and the request's ID, which goes both ways."""
        headers = request.requestHeaders
        rid = request_id(headers.getRawHeaders(b"x-request-id"))
        headers.setRawHeaders(b"X-Request-ID", [rid])
        request.responseHeaders.setRawHeaders(b"X-Request-ID", [rid])
        peer = getattr(request.getClientAddress(), "host", "") or ""
        addresses = self.runtime.addresses
        started = self.runtime.reactor.seconds()
        if not addresses.networks:
            return RequestContext(peer, peer, False, rid, started)
        forwarded = headers.getRawHeaders(b"x-forwarded-for")
        return RequestContext(
            addresses.client_ip(peer, forwarded), peer, addresses.is_trusted(peer), rid, started
        )

    def _finished(
        self, result: object, request: Request, ctx: RequestContext, runtime: Runtime
    ) -> None:
        """Count the request and write its access-log event (once, whatever happened)."""
        if isinstance(result, Failure) and ctx.exchange is not None:
            ctx.exchange.client_lost(result)
        self.in_flight.end()
        duration = runtime.reactor.seconds() - ctx.started
        # 499 (nginx's convention): the client went away before the answer was complete.
        status = request.code if not isinstance(result, Failure) else 499
        sent = request.sentLength
        received = body_size(request)
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.dec()
            route = metrics.route(ctx.route)
            route.request(request.method, status).inc()
            route.duration.observe(duration)
            if received:
                route.request_bytes.inc(received)
            if sent:
                route.response_bytes.inc(sent)
        access_log = self.access_log
        if access_log is not None:
            identity = ctx.identity
            headers = request.requestHeaders
            access_log.info(
                "access",
                time=time.time(),
                request_id=ctx.request_id.decode("latin-1"),
                client_ip=ctx.client_ip,
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                protocol=request.clientproto.decode("latin-1"),
                route=ctx.route,
                upstream=ctx.upstream,
                status=status,
                request_bytes=received,
                response_bytes=sent,
                duration_ms=round(duration * 1000.0, 3),
                upstream_duration_ms=None
                if ctx.upstream_duration is None
                else round(ctx.upstream_duration * 1000.0, 3),
                user=identity.name if identity is not None else None,
                referer=_last(headers.getRawHeaders(b"referer")),
                user_agent=_last(headers.getRawHeaders(b"user-agent")),
            )

    def _preflight(self, request: Request, ctx: RequestContext) -> bytes | None:
        """A CORS preflight for a route whose ``methods`` leave out OPTIONS: the route is the one
        the browser asks about (Access-Control-Request-Method), and its CORS policy answers."""
        if request.method != b"OPTIONS":
            return None
        wanted = request.requestHeaders.getRawHeaders(b"access-control-request-method")
        if not wanted:
            return None
        host = request.requestHeaders.getRawHeaders(b"host", [None])[-1]
        match = self.runtime.table.match(host, request.uri, wanted[-1])
        if not isinstance(match, RouteMatch) or match.value.cors is None:
            return None
        ctx.route = match.value.name
        return match.value.cors(request, ctx)


def _last(values: list[bytes] | None) -> str | None:
    return values[-1].decode("latin-1") if values else None
