"""The forwarder: sends one client request to an upstream target and streams the answer back.

Request headers are rebuilt (hop-by-hop headers dropped, ``X-Forwarded-*`` set), the body is
streamed from Twisted's spool, and the response body is relayed with backpressure: the upstream
connection is paused whenever the client cannot keep up. A response that breaks mid-body aborts the
client connection, so a truncated answer never looks complete.
"""

from __future__ import annotations

from io import BytesIO
from math import ceil
from typing import IO, TYPE_CHECKING, Any, Sequence

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
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

from .cors import vary_value
from .errors import send_error

if TYPE_CHECKING:
    from .context import RequestContext
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
_HTTPS = [b"https"]
_HTTP = [b"http"]
_SMALL_BODY = 64 * 1024
#: Methods that may be sent again to another target (RFC 9110 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
_RETRYABLE_STATUS = frozenset([502, 503, 504])
_RETRYABLE_ERRORS = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.TimeoutError,
    ierror.ConnectingCancelledError,
    ResponseNeverReceived,
)
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


def upstream_request_headers(
    request: Request,
    target: Target,
    preserve_host: bool,
    ctx: RequestContext | None = None,
    strip: frozenset[bytes] = frozenset(),
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> Headers:
    """The headers sent upstream for ``request``: end-to-end headers plus ``X-Forwarded-*``.

    ``X-Forwarded-*`` from a trusted proxy are kept (``-For`` is appended to); from anyone else
    they are replaced, so an upstream never believes what a client wrote there. ``strip`` names
    headers the route removes (credentials, client copies of forwarded claims); ``extra`` adds
    the route's own (verified claims).
    """
    incoming = request.requestHeaders
    dropped = _connection_tokens(incoming)
    out = Headers()
    set_raw = out.setRawHeaders
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in _REQUEST_OWN or lower in dropped or lower in strip:
            continue
        set_raw(name, values)
    for name, value in extra:
        set_raw(name, [value])

    trusted = ctx is not None and ctx.peer_trusted
    client_host = incoming.getRawHeaders(b"host")
    host = client_host[0] if client_host else None
    set_raw(b"Host", [host if (preserve_host and host) else target.netloc])
    forwarded_host = incoming.getRawHeaders(b"x-forwarded-host") if trusted else None
    if forwarded_host:
        set_raw(b"X-Forwarded-Host", forwarded_host[-1:])
    elif host is not None:
        set_raw(b"X-Forwarded-Host", [host])
    forwarded_proto = incoming.getRawHeaders(b"x-forwarded-proto") if trusted else None
    if forwarded_proto:
        set_raw(b"X-Forwarded-Proto", forwarded_proto[-1:])
    else:
        set_raw(b"X-Forwarded-Proto", _HTTPS if request.isSecure() else _HTTP)

    peer = ctx.peer if ctx is not None else getattr(request.getClientAddress(), "host", None)
    previous = incoming.getRawHeaders(b"x-forwarded-for") if trusted else None
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


class _Discard(Protocol):
    """Reads and drops a response body we will not relay (a retried 5xx)."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pass


class Exchange:
    """One client request on its way to an upstream target (or several, with retries) and back.

    The route's ``timeout_ms`` bounds the whole exchange, body included: on expiry a pending
    upstream request is cancelled (its connection aborted, never pooled) and the client gets 504,
    or, once the response has started, the client connection is aborted.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        request: Request,
        route: RuntimeRoute,
        path: bytes,
        ctx: RequestContext | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.request = request
        self.ctx = ctx
        self.route = route
        self.path = path
        self.tried: list[Target] = []
        self.retries_left = route.retries if request.method in IDEMPOTENT else 0
        self.target: Target | None = None
        self.held: Target | None = None
        self.pending: Deferred[Any] | None = None
        self.body_transport: Any = None
        self.deadline: Any = None
        self.attempt_started = 0.0
        self.client_gone = False
        self.expired = False
        self.finished = False

    @property
    def request_id(self) -> str | None:
        return self.ctx.request_id.decode("latin-1") if self.ctx is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.ctx is not None:
            self.ctx.exchange = self  # the gateway's finish hook reports client loss
        else:
            self.request.notifyFinish().addErrback(self.client_lost)
        self.deadline = self.forwarder.clock.callLater(self.route.timeout_s, self.timed_out)
        self.attempt()

    def attempt(self) -> None:
        upstream = self.route.upstream
        target = upstream.pick(self.tried)
        if target is None:
            retry_after = upstream.retry_after()
            if retry_after is not None:
                self.fail(
                    503, "upstream circuit open", [(b"Retry-After", b"%d" % ceil(retry_after))]
                )
            else:
                self.fail(503, "no upstream target available")
            return
        self.tried.append(target)
        self.target = self.held = target
        target.acquire()
        breaker = target.breaker
        if breaker is not None:
            breaker.on_request()
        request = self.request
        d = target.connector.request(
            request.method,
            target.base_path + self.path,
            upstream_request_headers(
                request,
                target,
                self.forwarder.preserve_host,
                self.ctx,
                self.route.strip_headers,
                self.route.extra_headers(self.ctx),
            ),
            request_body(request),
        )
        self.attempt_started = self.forwarder.clock.seconds()
        if self.ctx is not None:
            self.ctx.upstream = target.url
        self.pending = d
        d.addCallbacks(self.got_response, self.no_response)

    def can_retry(self) -> bool:
        """Another try is allowed: retries left, nothing sent, time left, another target up."""
        return (
            self.retries_left > 0
            and not self.expired
            and not self.client_gone
            and not self.request.startedWriting
            and self.route.upstream.any_available(self.tried)
        )

    def retry(self) -> None:
        self.retries_left -= 1
        log.info(
            "retrying {method} for route {route} on another target after {url} failed",
            request_id=self.request_id,
            method=self.request.method,
            route=self.route.name,
            url=self.target.url if self.target else None,
        )
        self.attempt()

    # -- upstream answers --------------------------------------------------------------------

    def observe(self, target: Target, status: int) -> None:
        """Upstream metrics and the context's upstream timing for one attempt."""
        took = self.forwarder.clock.seconds() - self.attempt_started
        if self.ctx is not None:
            self.ctx.upstream_duration = took
        metrics = self.route.metrics
        if metrics is not None:
            metrics.upstream_request(target.url, status).inc()
            metrics.upstream_duration(target.url).observe(took)

    def got_response(self, response: IResponse) -> None:
        self.pending = None
        target = self.target
        assert target is not None
        self.observe(target, response.code)
        if target.breaker is not None:
            if response.code >= 500:
                target.breaker.record_failure()
            else:
                target.breaker.record_success()
        if self.client_gone:
            response.deliverBody(_Discard())
            self.end_attempt()
            return
        if response.code in _RETRYABLE_STATUS and self.can_retry():
            response.deliverBody(_Discard())
            self.end_attempt()
            self.retry()
            return
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        connection = getattr(response, "connection_headers", None)
        dropped = _connection_tokens(connection) if connection is not None else frozenset()
        owned = self.route.owned_response_headers
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _RESPONSE_SKIP or lower in dropped or lower in owned:
                continue
            if lower == b"vary":
                ours = out.getRawHeaders(b"vary")
                if ours:
                    values = vary_value(values, b", ".join(ours))
            out.setRawHeaders(name, values)
        # Twisted keeps Content-Length to itself (except for HEAD, where it is in the headers).
        length = response.length
        if length is not UNKNOWN_LENGTH and response.code not in _NO_BODY_CODES:
            if request.method != b"HEAD":
                out.setRawHeaders(b"Content-Length", [b"%d" % length])
        response.deliverBody(_ResponseRelay(self))

    def no_response(self, failure: Failure) -> None:
        self.pending = None
        target = self.target
        if target is not None:
            self.observe(target, 0)
        self.end_attempt()
        if self.client_gone:
            if target is not None and target.breaker is not None:
                target.breaker.release_trial()
            return
        if self.expired:
            if target is not None and target.breaker is not None:
                target.breaker.record_failure()
            self.fail(504, "upstream timed out")
            return
        if target is not None and target.breaker is not None:
            target.breaker.record_failure()
        if failure.check(ierror.TimeoutError, ierror.ConnectingCancelledError):
            status, message = 504, "upstream connect timed out"
        elif failure.check(*_CONNECT_ERRORS):
            status, message = 502, "upstream unavailable"
        else:
            status, message = 502, "bad upstream response"
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
        self.fail(status, message)

    # -- the response body -------------------------------------------------------------------

    def relay_started(self, transport: Any) -> None:
        self.body_transport = transport
        if not self.client_gone:
            self.request.registerProducer(transport, True)

    def relay_done(self, reason: Failure) -> None:
        self.body_transport = None
        self.end_attempt()
        if self.client_gone:
            return
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss) and not self.expired:
            self.finish()
            request.finish()
            return
        log.warn(
            "upstream {url} broke off the response body for route {route}: {why}",
            request_id=self.request_id,
            url=self.target.url if self.target else None,
            route=self.route.name,
            why="timed out" if self.expired else reason.getErrorMessage(),
        )
        self.finish()
        self.abort_client()

    # -- endings -----------------------------------------------------------------------------

    def timed_out(self) -> None:
        self.deadline = None
        self.expired = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.body_transport is not None:
            self.body_transport.stopProducing()

    def client_lost(self, failure: Failure) -> None:
        self.client_gone = True
        self.finish()
        if self.pending is not None:
            self.pending.cancel()
        if self.body_transport is not None:
            self.body_transport.stopProducing()

    def abort_client(self) -> None:
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def fail(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.finish()
        if self.request.startedWriting:
            self.abort_client()
        else:
            send_error(self.request, status, message, headers or ())

    def end_attempt(self) -> None:
        """The current target is done with this request (success or not)."""
        held, self.held = self.held, None
        if held is not None:
            held.release()

    def finish(self) -> None:
        """The exchange is over: no more timers."""
        if not self.finished:
            self.finished = True
            if self.deadline is not None and self.deadline.active():
                self.deadline.cancel()
            self.deadline = None


class Forwarder:
    """Forwards requests of every route; one per runtime, shared by all routes."""

    def __init__(self, clock: IReactorTime, preserve_host: bool = True) -> None:
        self.clock = clock
        self.preserve_host = preserve_host

    def forward(
        self,
        request: Request,
        route: RuntimeRoute,
        path: bytes,
        ctx: RequestContext | None = None,
    ) -> None:
        """Start forwarding ``request`` to ``route`` as ``path`` (raw path and query)."""
        request.defaultContentType = None
        Exchange(self, request, route, path, ctx).start()
