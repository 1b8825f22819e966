"""The root resource: every request enters here, is routed, and is handed to the forwarder."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .errors import write_error
from .routing import BadPath, MethodNotAllowed
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
            allow = ", ".join(match.allowed).encode("ascii")
            return write_error(request, 405, "method not allowed", [(b"Allow", allow)])
        route = match.value
        length = request.requestHeaders.getRawHeaders(b"content-length")
        if length and _too_big(length[-1], route.max_body_bytes):
            return write_error(request, 413, "request body too large")
        self.in_flight.track(request)
        runtime.forwarder.forward(request, route, match.upstream_target)
        return NOT_DONE_YET


def _too_big(value: bytes, limit: int) -> bool:
    try:
        return int(value) > limit
    except ValueError:
        return False
