"""The httptools (llhttp) adapter: callbacks in, heads, body pieces and ends out.

llhttp runs strict (no lenient flags). What it does not do is added here: size limits on the
request line, the header section and the body (it enforces none), and the framing policy RFC
9112 asks of a server that llhttp lets through (exactly one ``Host`` in HTTP/1.1, a valid
``Host``, ``Transfer-Encoding`` exactly ``chunked`` and none at all in HTTP/1.0). A refusal is a
:class:`ProtocolViolation` carrying the status to answer.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional

import httptools

from ._limits import ClientLimits, ServerLimits
from ._message import Fields, Pair, RequestHead, ResponseHead, connection_tokens


class ProtocolViolation(Exception):
    """The peer broke HTTP/1.1 (or a limit): ``status`` is what a server answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        #: The request head it concerns, when it got that far.
        self.head: Optional[RequestHead] = None
        #: When the connection began waiting for that head (the clock's seconds), if known:
        #: where the answer's duration starts (a 408 lasted the whole header timeout).
        self.since: Optional[float] = None


#: RFC 9112 3.2 / RFC 3986 3.2.2: reg-name, IPv4 or a bracketed IPv6 literal, optional port.
_HOST = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
    rb"|\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~]+)?\]"
)
_PORT = re.compile(rb"[0-9]{0,5}")
_TOKEN_WS = b" \t"


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a syntactically valid ``Host`` (uri-host [":" port])."""
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return False
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, _, port = value.partition(b":")
        rest = b":" + port if _ else b""
    if _HOST.fullmatch(host) is None:
        return False
    if rest:
        if rest[:1] != b":":
            return False
        port = rest[1:]
        if _PORT.fullmatch(port) is None or (port and int(port) > 65535):
            return False
    return True


def _violation_of(error: Exception) -> Optional[ProtocolViolation]:
    """A ProtocolViolation raised inside a callback comes back as httptools' callback error."""
    context = error.__context__
    return context if isinstance(context, ProtocolViolation) else None


class _FieldCollector:
    """Header fields as httptools reports them: the head's kept (values without OWS) and
    counted once the head is complete; trailer fields counted and dropped. ``_status`` is what
    a refusal answers (431 for a request, 502 for a response)."""

    _status = 431
    _what = "header"
    _in_head = False
    _pairs: List[Pair]
    _trailer_size = 0
    _max_fields = 0
    _max_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            # Counted once the head is complete (feed bounds what a head may hold meanwhile).
            self._pairs.append((name, value.strip(_TOKEN_WS)))
            return
        self._trailer_size += len(name) + len(value) + 2
        if self._trailer_size > self._max_bytes:
            raise ProtocolViolation(self._status, "trailer section too large")

    _parser: Any

    def _feed_llhttp(self, data: bytes) -> Optional[int]:
        """Feed httptools: the offset where an upgraded protocol's bytes start, or None. A
        violation raised inside a callback comes out as itself; httptools' own errors (and any
        other error of a callback) as httptools.HttpParserError, for the caller to map."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            return int(e.args[0])
        except httptools.HttpParserCallbackError as e:
            violation = _violation_of(e)
            if violation is not None:
                raise violation from None
            raise
        return None

    def _check_head_fields(self) -> List[Pair]:
        """The head's fields, once they are all in: refused past the field or size limit."""
        pairs = self._pairs
        if len(pairs) > self._max_fields:
            raise ProtocolViolation(self._status, f"too many {self._what} fields")
        # Each field line without its CRLF, as the limit is stated.
        if sum([len(n) + len(v) for n, v in pairs]) + 2 * len(pairs) > self._max_bytes:
            raise ProtocolViolation(self._status, f"{self._what} section too large")
        self._trailer_size = 0
        return pairs


class RequestParser(_FieldCollector):
    """Parses requests of one connection; tells ``listener`` (the server protocol):

    ``head_received(head)``, ``body_received(data)``, ``message_done()``. ``feed`` returns the
    offset where an upgraded protocol's bytes start (after an upgrade request), else None.
    httptools cannot pause: one ``feed`` with two pipelined requests reports both.
    """

    def __init__(self, listener: Any, limits: ServerLimits) -> None:
        self._listener = listener
        self._limits = limits
        self._max_fields = limits.max_header_fields
        self._max_bytes = limits.max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._target: List[bytes] = []
        self._target_size = 0
        self._pairs: List[Pair] = []
        self._in_head = False
        self._head_raw = 0
        self._began = False
        self._body = 0
        self._body_limit = limits.max_body_bytes

    def feed(self, data: bytes) -> Optional[int]:
        self._began = False
        try:
            upgraded = self._feed_llhttp(data)
        except httptools.HttpParserInvalidURLError as e:
            raise ProtocolViolation(400, "malformed request-target") from e
        except httptools.HttpParserInvalidMethodError as e:
            raise ProtocolViolation(400, "malformed request line") from e
        except httptools.HttpParserError as e:
            if "Content-Length overflow" in str(e):
                raise ProtocolViolation(413, "declared body too large") from e
            raise ProtocolViolation(400, "malformed request: " + str(e)) from e
        if upgraded is not None:
            return upgraded
        if self._in_head:
            # httptools buffers a field until its end: bound what it may hold. Where in this
            # read a head began is unknown (pipelined requests may come before it): a head that
            # began in it counts from the read's last line break, the line still arriving.
            if self._began:
                self._head_raw = len(data) - data.rfind(b"\n") - 1
            else:
                self._head_raw += len(data)
            pending = self._head_raw - self._target_size - 16
            if pending > self._limits.max_header_bytes:
                raise ProtocolViolation(431, "header section too large")
        return None

    @property
    def in_head(self) -> bool:
        """Between the first byte of a request and the end of its head."""
        return self._in_head

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._began = True
        self._head_raw = 0
        self._target = []
        self._target_size = 0
        self._pairs = []
        self._body = 0

    def on_url(self, piece: bytes) -> None:
        self._target.append(piece)
        self._target_size += len(piece)
        line = self._target_size + len(self._parser.get_method()) + 10  # "M T HTTP/1.1"
        if line > self._limits.max_request_line_bytes:
            raise ProtocolViolation(414, "request line too long")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._check_head_fields()
        parser = self._parser
        target = b"".join(self._target)
        version = parser.get_http_version().encode("ascii")
        fields = Fields(self._pairs)
        head = RequestHead(parser.get_method(), target, version, fields, parser.should_keep_alive())
        try:
            _request_framing(head, self._limits)
        except ProtocolViolation as violation:
            violation.head = head
            raise
        if parser.should_upgrade():
            if head.has_body:
                # httptools skips the body of an upgrade request: it would be parsed as the
                # next request if the upgrade is declined (request smuggling).
                violation = ProtocolViolation(400, "upgrade request with a body")
                violation.head = head
                raise violation
            upgrade = fields.get(b"upgrade")
            if upgrade is not None:
                head.upgrade = upgrade.split(b",")[0].strip().lower()
        self._body_limit = self._limits.max_body_bytes
        self._listener.head_received(head)

    def on_body(self, data: bytes) -> None:
        self._body += len(data)
        if self._body > self._body_limit:
            raise ProtocolViolation(413, "request body too large")
        self._listener.body_received(data)

    def on_message_complete(self) -> None:
        self._listener.message_done()


def _request_framing(head: RequestHead, limits: ServerLimits) -> None:
    """RFC 9112's rules for a server that llhttp leaves to us; sets the head's derived parts."""
    fields = head.fields
    if head.version != b"1.1" and head.version != b"1.0":
        raise ProtocolViolation(505, "unsupported HTTP version")
    if head.method == b"CONNECT":
        # llhttp hands over what follows a CONNECT head as another protocol's bytes.
        raise ProtocolViolation(400, "CONNECT is not supported")
    hosts = fields.get_all(b"host")
    if len(hosts) > 1:
        raise ProtocolViolation(400, "more than one Host header")
    if not hosts and head.version == b"1.1":
        raise ProtocolViolation(400, "no Host header")
    encodings = fields.get_all(b"transfer-encoding")
    if encodings:
        if head.version != b"1.1":
            raise ProtocolViolation(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(encodings) > 1 or encodings[0].lower() != b"chunked":
            raise ProtocolViolation(400, "unsupported Transfer-Encoding")
        head.chunked = True
    lengths = fields.get_all(b"content-length")
    if lengths:
        if len(lengths) > 1 or not lengths[0].isdigit():
            raise ProtocolViolation(400, "invalid Content-Length")
        # Leading zeros stripped first: int() refuses over 4300 digits (CPython 3.11+).
        digits = lengths[0].lstrip(b"0") or b"0"
        if len(digits) > 18 or int(digits) > limits.max_body_bytes:
            raise ProtocolViolation(413, "declared body too large")
        head.content_length = int(digits)
    expect = fields.get(b"expect")
    if expect is not None and expect.lower() == b"100-continue" and head.version == b"1.1":
        head.expect_continue = True
    if head.keep_alive and b"close" in connection_tokens(fields):
        head.keep_alive = False
    target = head.target
    if target[:1] == b"/":
        authority = hosts[0] if hosts else None
        path = target
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        question = rest.find(b"?")
        cut = min(i for i in (slash, question, len(rest)) if i >= 0)
        authority, path = rest[:cut], rest[cut:]
        if b"@" in authority or not authority:
            raise ProtocolViolation(400, "invalid authority in the request-target")
        if not path.startswith(b"/"):
            path = b"/" + path
    elif target == b"*" and head.method == b"OPTIONS":
        authority = hosts[0] if hosts else None
        path = target
    else:
        raise ProtocolViolation(400, "unsupported request-target form")
    if authority is not None and not valid_host(authority):
        raise ProtocolViolation(400, "invalid Host")
    if hosts and hosts[0] is not authority and not valid_host(hosts[0]):
        raise ProtocolViolation(400, "invalid Host")
    head.authority = authority
    head.path, _, head.query = path.partition(b"?")
    head.target = path


class ResponseParser(_FieldCollector):
    """Parses the responses of one upstream connection; tells ``listener`` (the client protocol):

    ``response_begin()``, ``response_head(head, keep_alive)`` (1xx included),
    ``response_body(data)``, ``response_done()``. For a
    response to HEAD the caller ends the message at its head itself (llhttp never would) and must
    not feed this parser again. ``feed`` returns the offset after a 101's head, else None.
    """

    _status = 502
    _what = "response header"

    def __init__(self, listener: Any, limits: ClientLimits) -> None:
        self._listener = listener
        self._limits = limits
        self._max_fields = limits.max_header_fields
        self._max_bytes = limits.max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._pairs: List[Pair] = []
        self._reason: List[bytes] = []
        self._in_head = False
        self._head_raw = 0

    def feed(self, data: bytes) -> Optional[int]:
        try:
            upgraded = self._feed_llhttp(data)
        except httptools.HttpParserError as e:
            raise ProtocolViolation(502, "malformed response: " + str(e)) from e
        if upgraded is not None:
            return upgraded
        if self._in_head:
            self._head_raw += len(data)
            if self._head_raw > self._limits.max_header_bytes + self._limits.max_status_line_bytes:
                raise ProtocolViolation(502, "response head too large")
        return None

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_raw = 0
        self._pairs = []
        self._reason = []
        self._listener.response_begin()

    def on_status(self, piece: bytes) -> None:
        self._reason.append(piece)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._check_head_fields()
        parser = self._parser
        fields = Fields(self._pairs)
        head = ResponseHead(
            parser.get_status_code(),
            b"".join(self._reason),
            parser.get_http_version().encode("ascii"),
            fields,
        )
        encodings = fields.get_all(b"transfer-encoding")
        if encodings:
            last = encodings[-1].rsplit(b",", 1)[-1].strip().lower()
            head.chunked = last == b"chunked"
        lengths = fields.get_all(b"content-length")
        if lengths and not head.chunked:
            if len(set(lengths)) > 1 or not lengths[0].isdigit():
                raise ProtocolViolation(502, "invalid Content-Length in the response")
            head.content_length = int(lengths[0].lstrip(b"0") or b"0")
        self._listener.response_head(head, parser.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        self._listener.response_body(data)

    def on_message_complete(self) -> None:
        self._listener.response_done()
