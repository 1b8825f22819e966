"""The forwarder: sends one client request to an upstream target and streams the answer back.

Request headers are rebuilt (hop-by-hop headers dropped, ``X-Forwarded-*`` set), the body is
streamed from Twisted's spool, and the response body is relayed with backpressure: the upstream
connection is paused whenever the client cannot keep up. A response that breaks mid-body aborts the
client connection, so a truncated answer never looks complete.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from .errors import send_error

if TYPE_CHECKING:
    from .runtime import RuntimeRoute
    from .upstream import Target

log = Logger()

#: Headers that describe one connection, never forwarded in either direction (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)
#: Request headers the forwarder sets itself.
_REQUEST_OWN = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
#: Response headers Twisted frames itself (length and chunking are re-derived per hop).
_RESPONSE_SKIP = HOP_BY_HOP
_NO_BODY_CODES = frozenset([204, 304])
_SMALL_BODY = 64 * 1024
_CONNECT_ERRORS = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.TimeoutError,
    ResponseNeverReceived,
)


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (they are hop-by-hop too)."""
    values = headers.getRawHeaders(b"connection")
    if not values:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def upstream_request_headers(request: Request, target: Target, preserve_host: bool) -> Headers:
    """The headers sent upstream for ``request``: end-to-end headers plus ``X-Forwarded-*``."""
    incoming = request.requestHeaders
    dropped = _connection_tokens(incoming)
    out = Headers()
    set_raw = out.setRawHeaders
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in _REQUEST_OWN or lower in dropped:
            continue
        set_raw(name, values)

    client_host = incoming.getRawHeaders(b"host")
    host = client_host[0] if client_host else None
    set_raw(b"Host", [host if (preserve_host and host) else target.netloc])
    if host is not None:
        set_raw(b"X-Forwarded-Host", [host])
    set_raw(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])

    peer = getattr(request.getClientAddress(), "host", None)
    previous = incoming.getRawHeaders(b"x-forwarded-for")
    chain = [b", ".join(previous)] if previous else []
    if peer:
        chain.append(peer.encode("ascii"))
    if chain:
        set_raw(b"X-Forwarded-For", [b", ".join(chain)])
    return out


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written in one go (no cooperator round trip)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def request_body(request: Request) -> IBodyProducer | None:
    """A producer for the client's body, or None when the client sent no body at all."""
    headers = request.requestHeaders
    if not (headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")):
        return None
    content: IO[bytes] | None = request.content
    if content is None:
        return _BytesProducer(b"")
    if isinstance(content, BytesIO):
        return _BytesProducer(content.getvalue())
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    if size <= _SMALL_BODY:
        return _BytesProducer(content.read())
    return FileBodyProducer(content)


class _ResponseRelay(Protocol):
    """Writes upstream body bytes to the client; the client's flow control pauses the upstream."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        self.exchange.relay_started(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.exchange.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.exchange.relay_done(reason)


class Exchange:
    """One client request on its way through one upstream target and back."""

    def __init__(self, forwarder: Forwarder, request: Request, route: RuntimeRoute, path: bytes):
        self.forwarder = forwarder
        self.request = request
        self.route = route
        self.path = path
        self.target: Target | None = None
        self.pending: Deferred[Any] | None = None
        self.body_transport: Any = None
        self.client_gone = False
        self.done = False

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self.client_lost)
        target = self.route.upstream.pick()
        if target is None:
            self.fail(503, "no upstream target available")
            return
        self.target = target
        target.acquire()
        request = self.request
        d = self.route.agent.request(
            request.method,
            target.base_uri + self.path,
            upstream_request_headers(request, target, self.forwarder.preserve_host),
            request_body(request),
        )
        d.addTimeout(self.route.timeout_s, self.forwarder.clock)
        self.pending = d
        d.addCallbacks(self.got_response, self.no_response)

    def got_response(self, response: IResponse) -> None:
        self.pending = None
        if self.client_gone:
            response.deliverBody(Protocol())  # drain and drop; the pool decides on reuse
            self.release()
            return
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        connection = getattr(response, "connection_headers", None)
        dropped = _connection_tokens(connection) if connection is not None else frozenset()
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _RESPONSE_SKIP or lower in dropped:
                continue
            out.setRawHeaders(name, values)
        # Twisted keeps Content-Length to itself (except for HEAD, where it is in the headers).
        length = response.length
        if length is not UNKNOWN_LENGTH and response.code not in _NO_BODY_CODES:
            if request.method != b"HEAD":
                out.setRawHeaders(b"Content-Length", [b"%d" % length])
        response.deliverBody(_ResponseRelay(self))

    def no_response(self, failure: Failure) -> None:
        self.pending = None
        if self.client_gone:
            self.release()
            return
        if failure.check(CancelledError, ierror.TimeoutError) and not failure.check(
            ierror.ConnectingCancelledError
        ):
            status, message = 504, "upstream timed out"
        elif failure.check(ierror.ConnectingCancelledError):
            status, message = 504, "upstream connect timed out"
        elif failure.check(*_CONNECT_ERRORS):
            status, message = 502, "upstream unavailable"
        else:
            status, message = 502, "bad upstream response"
        log.warn(
            "upstream {url} failed for route {route}: {why}",
            url=self.target.url if self.target else None,
            route=self.route.name,
            why=failure.getErrorMessage(),
        )
        self.release()
        self.fail(status, message)

    def relay_started(self, transport: Any) -> None:
        self.body_transport = transport
        if not self.client_gone:
            self.request.registerProducer(transport, True)

    def relay_done(self, reason: Failure) -> None:
        self.body_transport = None
        self.release()
        if self.client_gone:
            return
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        log.warn(
            "upstream {url} broke off the response body for route {route}: {why}",
            url=self.target.url if self.target else None,
            route=self.route.name,
            why=reason.getErrorMessage(),
        )
        self.abort_client()

    def client_lost(self, failure: Failure) -> None:
        self.client_gone = True
        if self.pending is not None:
            self.pending.cancel()
        if self.body_transport is not None:
            self.body_transport.stopProducing()

    def abort_client(self) -> None:
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def fail(self, status: int, message: str) -> None:
        if self.request.startedWriting:
            self.abort_client()
        else:
            send_error(self.request, status, message)

    def release(self) -> None:
        if not self.done:
            self.done = True
            if self.target is not None:
                self.target.release()


class Forwarder:
    """Forwards requests of every route; one per runtime, shared by all routes."""

    def __init__(self, clock: IReactorTime, preserve_host: bool = True) -> None:
        self.clock = clock
        self.preserve_host = preserve_host

    def forward(self, request: Request, route: RuntimeRoute, path: bytes) -> None:
        """Start forwarding ``request`` to ``route`` as ``path`` (raw path and query)."""
        request.defaultContentType = None
        Exchange(self, request, route, path).start()
