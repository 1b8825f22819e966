"""The root resource: every request enters here, is routed, and is handed to the forwarder."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from .context import RequestContext
from .errors import write_error
from .filters import run_filters
from .routing import BadPath, MethodNotAllowed, RouteMatch
from .runtime import Runtime

InternalHandler = Callable[[Request], bytes]


class InFlight:
    """Counts proxied requests not yet finished, so a drain can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle: list[Deferred[None]] = []

    def track(self, request: Request) -> None:
        self.count += 1
        if self.draining:
            # Finish this one, then close the connection: no new requests on it during a drain.
            request.channel.persistent = False
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        request.notifyFinish().addBoth(self._done)

    def _done(self, _: object) -> None:
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

    def __init__(self, runtime: Runtime, internal: dict[bytes, InternalHandler] | None = None):
        super().__init__()
        self.runtime = runtime
        self.internal = internal or {}
        self.in_flight = InFlight()

    def render(self, request: Request) -> bytes | int:
        handler = self.internal.get(request.path)
        if handler is not None:
            return handler(request)
        runtime = self.runtime
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
            preflight = self._preflight(request)
            if preflight is not None:
                return preflight
            allow = ", ".join(match.allowed).encode("ascii")
            return write_error(request, 405, "method not allowed", [(b"Allow", allow)])
        route = match.value
        ctx = self._context(request)
        self.in_flight.track(request)
        target = match.upstream_target
        if route.rewrite_target is not None:
            target = route.rewrite_target(target)

        def forward() -> None:
            runtime.forwarder.forward(request, route, target, ctx)

        return run_filters(route.filters, request, ctx, forward)

    def _context(self, request: Request) -> RequestContext:
        peer = getattr(request.getClientAddress(), "host", "") or ""
        addresses = self.runtime.addresses
        if not addresses.networks:
            return RequestContext(peer, peer, False)
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        return RequestContext(
            addresses.client_ip(peer, forwarded), peer, addresses.is_trusted(peer)
        )

    def _preflight(self, request: Request) -> bytes | None:
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
        return match.value.cors(request, self._context(request))
