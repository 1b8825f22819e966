"""The gateway's HTTP/1.1 server side: Twisted's own parser with limits, timeouts and stricter
framing, so that an oversized, slow or ambiguous request is refused before any resource sees it.

Everything here runs once per line, per header or per chunk-size line, never per byte: the
normal request path is Twisted's parser plus a few integer comparisons. What Twisted already
refuses on its own, and what this module adds, is tabled in ``tests/integration/test_hardening.py``.

Refusals answer in the gateway's JSON error shape with ``Connection: close``; the connection is
then half-closed and whatever the client still sends is read and dropped for a short while, so
that the client sees the answer instead of a reset.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _GenericHTTPChannelProtocol,
    _IdentityTransferDecoder,
    _MalformedChunkedDataError,
)
from twisted.web.server import Request, Site

from .errors import error_body

log = Logger()

#: Twisted 25.5+ can skip parsing form bodies into ``request.args`` (costly, and unused here).
_HAS_FORM_OPTION = "parsePOSTFormSubmission" in inspect.signature(Site.__init__).parameters

#: Phases of one request on a channel.
_REQUEST_LINE, _HEADERS, _BODY, _HANDLING = range(4)

#: RFC 9110 reason phrases for the statuses this module answers itself.
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}
_MESSAGES = {
    400: "bad request",
    408: "request timeout",
    413: "request body too large",
    414: "request-target too long",
    431: "request header fields too large",
}

#: The framing fields, as Twisted hands them over: canonical since 24.10, lower case before.
_CONTENT_LENGTH, _TRANSFER_ENCODING = 1, 2
_FRAMING_FIELDS = {
    b"Content-Length": _CONTENT_LENGTH,
    b"content-length": _CONTENT_LENGTH,
    b"Transfer-Encoding": _TRANSFER_ENCODING,
    b"transfer-encoding": _TRANSFER_ENCODING,
}

#: A chunk size must fit in 64 bits, as it does for every other parser a request may meet.
_MAX_CHUNK_SIZE = (1 << 64) - 1
#: Content-Length values with more significant digits than this are over any sane limit.
_MAX_LENGTH_DIGITS = 18


def _refusal(status: int, with_body: bool) -> bytes:
    """The raw response for a refusal: JSON error body, ``Connection: close``."""
    body = error_body(status, _MESSAGES[status])
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % (status, _REASONS[status], len(body))
    )
    return head + body if with_body else head


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits of the HTTP/1.1 server side (sizes in bytes, times in seconds)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_header_fields: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0


class _BodyTooLarge(Exception):
    """A chunked body declared more bytes than the limit."""


class _LimitedChunkedDecoder(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, plus: chunk sizes count against the body limit as soon as they
    are declared, a size must fit in 64 bits, and a trailer field may not hold CR, LF or NUL."""

    def __init__(
        self,
        data_callback: Callable[[bytes], None],
        finish_callback: Callable[[bytes], None],
        max_bytes: int,
    ) -> None:
        super().__init__(data_callback, finish_callback)
        self.max_bytes = max_bytes
        self.declared = 0

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        if self.length > _MAX_CHUNK_SIZE:
            raise _MalformedChunkedDataError("chunk size does not fit in 64 bits")
        self.declared += self.length
        if self.declared > self.max_bytes:
            raise _BodyTooLarge(self.declared)
        return True

    def _dataReceived_TRAILER(self) -> bool:
        fields = len(self._trailerHeaders)
        more = super()._dataReceived_TRAILER()
        if len(self._trailerHeaders) > fields:
            field = self._trailerHeaders[-1]
            if b"\n" in field or b"\r" in field or b"\x00" in field:
                raise _MalformedChunkedDataError("bare CR, LF or NUL in a trailer field")
        return more


class GatewayChannel(HTTPChannel):
    """One client connection: Twisted's ``HTTPChannel`` with the gateway's limits and timers.

    Timers (all through the reactor, cancelled when their phase ends or the connection goes):

    * header: from the connection's start, or from the first byte of a later request on a
      kept-alive connection, until the end of the head (408 when it fires);
    * body: from the end of the head until the end of the body (408);
    * idle: Twisted's own ``timeOut`` (``HTTPChannel``/``TimeoutMixin``), which closes a
      connection that has sent nothing for ``idle_timeout_s`` while no request is in progress;
    * linger: after a refusal, how long further input is read and dropped before aborting.
    """

    linger_s = 2.0

    def __init__(self, limits: HttpLimits) -> None:
        super().__init__()
        self.limits = limits
        # Twisted's own limits answer a bare 400; set them so that ours always trip first.
        self.MAX_LENGTH = max(limits.max_request_line_bytes, limits.max_header_bytes)
        self.totalHeadersSize = limits.max_request_line_bytes + limits.max_header_bytes
        self.maxHeaders = limits.max_header_fields + 1
        self._phase = _REQUEST_LINE
        self._refused = False
        self._head_fields = 0
        self._head_bytes = 0
        self._head_timer: IDelayedCall | None = None
        self._body_timer: IDelayedCall | None = None
        self._linger_timer: IDelayedCall | None = None

    # -- connection events ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        gauge = getattr(self.site, "open_connections", None)
        if gauge is not None:
            gauge.inc()
        self._head_timer = self.callLater(self.limits.header_timeout_s, self._head_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop
        if self._head_timer is None and self._phase <= _HEADERS:
            self._head_timer = self.callLater(self.limits.header_timeout_s, self._head_timed_out)
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        gauge = getattr(self.site, "open_connections", None)
        if gauge is not None:
            gauge.dec()
        self._cancel_timers()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        super().connectionLost(reason)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Twisted splits ``Connection`` on spaces only, so ``close, X-Foo`` would keep the
        connection open; the tokens are comma-separated (RFC 9110 7.6.1)."""
        persistent: bool = super().checkPersistence(request, version)
        if persistent:
            for value in request.requestHeaders.getRawHeaders(b"connection", ()):
                if b"close" in (token.strip().lower() for token in value.split(b",")):
                    request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                    return False
        return persistent

    # -- the head ------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        limits = self.limits
        if self._phase == _REQUEST_LINE:
            if len(line) > limits.max_request_line_bytes:
                self._refuse(414, "request line too long", size=len(line))
                return
            if line:  # Twisted skips one empty line before a request
                self._phase = _HEADERS
                self._head_fields = 0
                self._head_bytes = 0
        elif line:
            if line[0] in b" \t":
                # RFC 9112 5.2 obs-fold (or whitespace before the first field): reject.
                self._refuse(400, "obsolete line folding")
                return
            if b"\n" in line or b"\r" in line or b"\x00" in line:
                # RFC 9110 5.5; Twisted itself only refuses all three since 26.x.
                self._refuse(400, "bare CR, LF or NUL in a header field")
                return
            self._head_fields += 1
            self._head_bytes += len(line)
            if self._head_fields > limits.max_header_fields:
                self._refuse(431, "too many header fields", fields=self._head_fields)
                return
            if self._head_bytes > limits.max_header_bytes:
                self._refuse(431, "header section too large", size=self._head_bytes)
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than any limit without an end in sight (the bytes are dropped)."""
        if self._phase == _REQUEST_LINE:
            self._refuse(414, "request line too long", size=len(line))
        else:
            self._refuse(431, "header field too large", size=len(line))

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """Pick the body decoder from ``Content-Length``/``Transfer-Encoding``, refusing every
        ambiguous combination (replaces Twisted's, which accepts ``identity``)."""
        kind = _FRAMING_FIELDS.get(header)
        if kind is None:
            return True
        if kind == _CONTENT_LENGTH:
            return self._choose_length(data)
        return self._choose_chunked(data)

    def _choose_length(self, data: bytes) -> bool:
        if not data.isdigit():  # "+5", "-5", "5, 6", "0x5", ""
            return self._refuse(400, "invalid Content-Length", value=data[:64])
        if self._transferDecoder is not None:
            return self._refuse(400, "Content-Length after Content-Length or Transfer-Encoding")
        digits = data.lstrip(b"0")
        limit = self.limits.max_body_bytes
        if len(digits) > _MAX_LENGTH_DIGITS or int(data) > limit:
            return self._refuse(413, "declared body too large", size=data[:64], limit=limit)
        self.length = length = int(data)
        self._transferDecoder = _IdentityTransferDecoder(
            length, self.requests[-1].handleContentChunk, self._finishRequestBody
        )
        return True

    def _choose_chunked(self, data: bytes) -> bool:
        if data.lower() != b"chunked":  # RFC 9112 6.1; Twisted alone lets "identity" through
            return self._refuse(400, "unsupported Transfer-Encoding", value=data[:64])
        if self._version != b"HTTP/1.1":  # RFC 9112 6.1: faulty framing in HTTP/1.0
            return self._refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
        if self._transferDecoder is not None:
            return self._refuse(400, "Transfer-Encoding after Content-Length or Transfer-Encoding")
        self.length = None
        self._transferDecoder = _LimitedChunkedDecoder(
            self.requests[-1].handleContentChunk,
            self._finishRequestBody,
            self.limits.max_body_bytes,
        )
        return True

    def allHeadersReceived(self) -> None:
        self._phase = _BODY
        self._cancel_timers()
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host")
        if hosts is None:
            if self._version == b"HTTP/1.1":  # RFC 9112 3.2: MUST answer 400
                self._refuse(400, "no Host header")
                return
        elif len(hosts) > 1:
            self._refuse(400, "more than one Host header")
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._body_timer = self.callLater(self.limits.body_timeout_s, self._body_timed_out)

    # -- the body ------------------------------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        if self._handlingRequest:
            super().rawDataReceived(data)  # pipelined bytes, buffered by Twisted
            return
        if self._refused:
            return
        try:
            self._transferDecoder.dataReceived(data)
        except _MalformedChunkedDataError as e:
            self._refuse(400, "malformed chunked body", detail=str(e))
        except _BodyTooLarge as e:
            self._refuse(
                413, "chunked body too large", size=e.args[0], limit=self.limits.max_body_bytes
            )

    def allContentReceived(self) -> None:
        if self._refused:
            return  # never render a refused request
        self._phase = _HANDLING
        self._cancel_timers()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        if self.persistent:
            self._phase = _REQUEST_LINE  # the header timer starts with the next request's byte
        super().requestDone(request)

    # -- refusals ------------------------------------------------------------------------------

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's parser found the request malformed."""
        where = {_REQUEST_LINE: "request line", _HEADERS: "header field"}
        reason = "malformed " + where.get(self._phase, "request")
        self._refuse(400, reason)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(408, "request head not received in time", timeout=self.limits.header_timeout_s)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        self._refuse(408, "request body not received in time", timeout=self.limits.body_timeout_s)

    def _refuse(self, status: int, reason: str, **fields: Any) -> bool:
        """Answer ``status`` in the JSON error shape, stop parsing, and close.

        Returns False so that Twisted's header processing stops where it is.
        """
        if self._refused:
            return False
        self._refused = True
        self._cancel_timers()
        self.setTimeout(None)
        self.clearLineBuffer()
        transport = self.transport
        peer = transport.getPeer()
        log.info(
            "refused request from {client}: {status} {reason}",
            client=getattr(peer, "host", None) or str(peer),
            status=status,
            reason=reason,
            **fields,
        )
        with_body = getattr(self, "_command", None) != b"HEAD"
        transport.write(_refusal(status, with_body))
        self._networkProducer.unregisterProducer()
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            # Half-close and drain: closing with unread input would reset the connection and
            # could destroy the answer before the client reads it.
            transport.loseWriteConnection()
            self._linger_timer = self.callLater(self.linger_s, transport.abortConnection)
        else:
            transport.loseConnection()
        return False

    def _cancel_timers(self) -> None:
        """Stop the header and body timers (not the linger timer)."""
        head, body = self._head_timer, self._body_timer
        if head is not None:
            self._head_timer = None
            if head.active():
                head.cancel()
        if body is not None:
            self._body_timer = None
            if body.active():
                body.cancel()


class GatewaySite(Site):
    """The HTTP factory of the gateway: ``GatewayChannel`` connections with these limits.

    ``max_body_bytes`` is the largest body any route takes (routes check their own, smaller
    limits again before forwarding). ``idle_timeout_s`` is Twisted's ``timeout``.

    Form bodies are not parsed into ``request.args`` (the gateway forwards bodies untouched;
    Twisted 25.5 and later), and Twisted's per-request access log line is off (the gateway logs
    requests itself).
    """

    #: A gauge of open client connections (set by the service when metrics are on), or None.
    open_connections: Any = None

    def __init__(
        self,
        resource: Any,
        *,
        reactor: Any = None,
        max_body_bytes: int = HttpLimits.max_body_bytes,
        max_request_line_bytes: int = HttpLimits.max_request_line_bytes,
        max_header_bytes: int = HttpLimits.max_header_bytes,
        max_header_fields: int = HttpLimits.max_header_fields,
        header_timeout_s: float = HttpLimits.header_timeout_s,
        body_timeout_s: float = HttpLimits.body_timeout_s,
        idle_timeout_s: float = HttpLimits.idle_timeout_s,
    ) -> None:
        options: dict[str, Any] = {"reactor": reactor, "timeout": idle_timeout_s}
        if _HAS_FORM_OPTION:
            options["parsePOSTFormSubmission"] = False
        super().__init__(resource, **options)
        self.limits = HttpLimits(
            max_body_bytes=max_body_bytes,
            max_request_line_bytes=max_request_line_bytes,
            max_header_bytes=max_header_bytes,
            max_header_fields=max_header_fields,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            idle_timeout_s=idle_timeout_s,
        )

    def protocol(self) -> _GenericHTTPChannelProtocol:  # type: ignore[override]
        """A new connection (Twisted's wrapper, which could switch it to HTTP/2 after ALPN)."""
        return _GenericHTTPChannelProtocol(GatewayChannel(self.limits))

    def log(self, request: Any) -> None:
        """Access logging is done by the gateway's own logger, not Twisted's common log."""
