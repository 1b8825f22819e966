# -*- test-case-name: tests.unit.test_h1_server -*-
"""The server side of the HTTP/1.1 core: one ``ServerProtocol`` per client connection.

Requests are answered strictly in order. A request head is handed to the handler as soon as it
has arrived and its request is the oldest unanswered one; its body streams on (see
:class:`~._flow.RequestBody`). Pipelined requests parsed meanwhile wait in a queue and reading
pauses at the end of each of them until the queue drains. Refusals (400, 408, 413, 414, 431)
are answered in the handler's error shape, after the answers before them, then the connection
is half-closed and further input dropped for ``linger_s``.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Callable, Deque, Iterable, List, Optional, Set

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._flow import BodyFailed, RequestBody
from ._limits import ServerLimits
from ._message import Fields, Pair, RequestHead
from ._parse import ProtocolViolation, RequestParser
from ._serialize import LAST_CHUNK, BadField, DateCache, chunk, head_bytes, status_line

log = Logger()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The HTTP/2 client preface (RFC 9113 3.4): a cleartext connection that starts with it speaks
#: h2c with prior knowledge, where the factory has an HTTP/2 protocol and the listener allows it.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NO_BODY_STATUS = frozenset([204, 304])
_CLOSE = (b"Connection", b"close")
_KEEP_ALIVE = (b"Connection", b"keep-alive")
_CHUNKED = (b"Transfer-Encoding", b"chunked")


class ConnectionState(enum.Enum):
    """A connection's state. Legal transitions::

    WAITING -> ACTIVE      a request head arrived (or its first byte, for the header timer)
    ACTIVE  -> WAITING     the last queued request was answered; the connection stays open
    WAITING/ACTIVE -> REFUSING   a refusal was queued, or bytes came after a request that
                           closes the connection; nothing more is parsed
    ACTIVE/REFUSING -> CLOSING   the last answer went out (``Connection: close``, a refusal):
                           the connection is closing; nothing more is parsed or handed over
    ACTIVE  -> TUNNEL      the current request switched protocols (101)
    any     -> CLOSED      connectionLost
    """

    WAITING = "waiting"
    ACTIVE = "active"
    REFUSING = "refusing"
    CLOSING = "closing"
    TUNNEL = "tunnel"
    CLOSED = "closed"


class ResponseState(enum.Enum):
    """One request's answer: PENDING -> STREAMING (head written) -> DONE, or -> ABORTED."""

    PENDING = "pending"
    STREAMING = "streaming"
    DONE = "done"
    ABORTED = "aborted"


class RequestSide:
    """What every protocol's request object shares (HTTP/1.1 here, HTTP/2 streams in h2/):
    its answer's state, and the connection it came on (``channel``)."""

    def __init__(self, channel: Any, head: RequestHead, body: RequestBody) -> None:
        self.channel = channel
        self.head = head
        self.method = head.method
        self.target = head.target
        self.path = head.path
        self.query = head.query
        self.fields = head.fields
        self.authority = head.authority
        self.body = body
        self.response_fields = Fields()
        self.state = ResponseState.PENDING
        self.status = 0
        self.sent_bytes = 0
        #: Whether the connection closes after this answer (set by the handler during a drain).
        self.close_after = not head.keep_alive
        self.refusal: Optional[ProtocolViolation] = None
        #: What the handler keeps about this request (the gateway's RequestContext).
        self.context: Any = None
        #: Called once when the answer is complete (None) or can never be (a Failure).
        self.on_done: Optional[Callable[[Any, Optional[Failure]], None]] = None
        #: Bytes after an upgrade request's head (the upgraded protocol's), while undecided.
        self.upgrade_rest: Optional[List[bytes]] = None
        #: Whether the handler has it (it waits in the queue while earlier ones are answered).
        self.handled = False
        self._no_body = False

    @property
    def secure(self) -> bool:
        return self.channel.secure  # type: ignore[no-any-return]

    @property
    def peer_host(self) -> str:
        return self.channel.peer_host  # type: ignore[no-any-return]

    @property
    def started(self) -> bool:
        """Whether the response head went out (a retry or an error answer is too late)."""
        return self.state is not ResponseState.PENDING

    @property
    def finished(self) -> bool:
        return self.state is ResponseState.DONE or self.state is ResponseState.ABORTED

    def respond(self, status: int, fields: Iterable[Pair] = (), body: bytes = b"") -> None:
        """A whole answer in one go (the gateway's own answers)."""
        if self.state is not ResponseState.PENDING:
            return
        self.start(status, fields, len(body), add_date=True)  # type: ignore[attr-defined]
        if body:
            self.write(body)  # type: ignore[attr-defined]
        self.finish()  # type: ignore[attr-defined]

    def set_trailers(self, trailers: List[Pair]) -> None:
        """Fields to send after the body (an upstream's trailers). An HTTP/1.1 answer of the
        gateway carries none: they are dropped (HTTP/2 streams send them)."""

    def client_lost(self, reason: Failure) -> None:
        """The connection (or the stream) went before the answer was complete."""
        if self.finished:
            return
        self.state = ResponseState.ABORTED
        self.body.fail(BodyFailed(499, "client closed the connection"))
        done, self.on_done = self.on_done, None
        if done is not None:
            done(self, reason)


class ServerRequest(RequestSide):
    """One request as filters, the router and the forwarder see it, and its response side.

    The head is ours (raw byte pairs); nothing here builds twisted.web objects. Headers the
    gateway adds to whatever the answer is (request ID, CORS, rate-limit fields) go into
    ``response_fields`` and are written with every answer of this request.
    """

    def __init__(self, channel: ServerProtocol, head: RequestHead, body: RequestBody) -> None:
        super().__init__(channel, head, body)
        self._chunked = False
        self._remaining: Optional[int] = None

    # -- what the request is ------------------------------------------------------------------

    @property
    def version(self) -> bytes:
        return self.head.version

    # -- answering ----------------------------------------------------------------------------

    def start(
        self,
        status: int,
        fields: Iterable[Pair],
        length: Optional[int],
        reason: Optional[bytes] = None,
        add_date: bool = False,
    ) -> None:
        """Write the response head. ``length``: the body's size, or None (chunked, or close-
        delimited for HTTP/1.0 clients). ``fields`` must hold no framing fields."""
        if self.state is not ResponseState.PENDING:
            raise RuntimeError("response already started")
        self.state = ResponseState.STREAMING
        self.status = status
        channel = self.channel
        out: List[Pair] = list(fields)
        out.extend(self.response_fields.pairs)
        if add_date:
            out.append((b"Date", channel.date.value()))
        server = channel.factory.server_header
        if server is not None:
            out.append((b"Server", server))
        no_body = status in _NO_BODY_STATUS or status < 200
        if self.method == b"HEAD":
            if length is not None and not no_body:
                out.append((b"Content-Length", b"%d" % length))
            no_body = True
        elif not no_body:
            if length is not None:
                out.append((b"Content-Length", b"%d" % length))
                self._remaining = length
            elif self.head.version == b"1.1":
                out.append(_CHUNKED)
                self._chunked = True
            else:
                self.close_after = True  # HTTP/1.0: the close ends the body
        self._no_body = no_body
        if not self.body.complete or channel.draining:
            self.close_after = True  # an unread body, or a drain: no next request here
        if self.close_after:
            out.append(_CLOSE)
        elif self.head.version == b"1.0":
            out.append(_KEEP_ALIVE)
        try:
            channel.write_head(status_line(status, reason), out)
        except BadField as e:
            # A field that would split the head (response splitting): nothing is written.
            log.error("refusing to send a response field with CR, LF or NUL: {name!r}", name=e)
            self.abort()

    def write(self, data: bytes) -> None:
        """Body bytes (dropped for HEAD, 204 and 304)."""
        if self.state is not ResponseState.STREAMING or self._no_body or not data:
            return
        size = len(data)
        if self._chunked:
            data = chunk(data)
        elif self._remaining is not None:
            if size > self._remaining:
                self.abort()  # more than declared would be read as the next response
                return
            self._remaining -= size
        self.sent_bytes += size
        self.channel.transport.write(data)

    def finish(self) -> None:
        """The answer is complete. A fixed-length body that fell short aborts instead."""
        if self.state is not ResponseState.STREAMING:
            return
        if self._chunked:
            self.channel.transport.write(LAST_CHUNK)
        elif self._remaining and not self._no_body:
            self.abort()
            return
        self.state = ResponseState.DONE
        self.channel.request_done(self, None)

    def abort(self) -> None:
        """Drop the connection (a response that cannot be completed must not look complete)."""
        if self.finished:
            return
        self.state = ResponseState.ABORTED
        self.channel.abort(self)

    def interim(self, status: int, fields: Iterable[Pair]) -> None:
        """An informational answer before the final one (103 Early Hints; HTTP/1.1 only)."""
        if self.state is ResponseState.PENDING and self.head.version == b"1.1":
            self.channel.write_head(status_line(status), list(fields))

    def register_producer(self, producer: Any) -> None:
        """Let the client connection's write buffer pause ``producer`` (an upstream)."""
        self.channel.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        transport = self.channel.transport
        if transport is not None and getattr(transport, "producer", True) is not None:
            transport.unregisterProducer()

    def switch_protocols(self, fields: Iterable[Pair]) -> Any:
        """Answer 101 with ``fields`` and hand over the connection: returns the transport, and
        the bytes the client sent after its head are in ``upgrade_rest``."""
        self.state = ResponseState.STREAMING
        self.status = 101
        out = list(fields)
        out.extend(self.response_fields.pairs)
        channel = self.channel
        channel.write_head(status_line(101), out)
        return channel.become_tunnel(self)

    def end_tunnel(self, bytes_up: int, bytes_down: int) -> None:
        """The tunnel this request opened has closed: the request is over."""
        if self.finished:
            return
        self.state = ResponseState.DONE
        self.body.received += bytes_up
        self.sent_bytes += bytes_down
        done, self.on_done = self.on_done, None
        if done is not None:
            done(self, None)

    def __repr__(self) -> str:
        return f"<ServerRequest {self.method!r} {self.target!r} {self.state.value}>"


class ServerProtocol(Protocol):
    """One client connection. See :class:`ConnectionState` for the states.

    Timers: header (from the connection's start, or the first byte of a later request, to the
    end of the head: 408), body (end of head to end of body: 408), idle (a kept-alive connection
    with nothing in progress: closed quietly), linger (after a refusal).
    """

    factory: ServerFactory
    protocol_name = "http/1.1"

    def __init__(self) -> None:
        self.state = ConnectionState.WAITING
        self._queue: Deque[ServerRequest] = deque()
        self._reading: Optional[ServerRequest] = None
        self._paused: Set[str] = set()
        self._head_timer: Optional[IDelayedCall] = None
        #: When the connection began waiting for the current head (see ProtocolViolation.since).
        self._head_since = 0.0
        self._body_timer: Optional[IDelayedCall] = None
        self._idle_timer: Optional[IDelayedCall] = None
        self._linger_timer: Optional[IDelayedCall] = None
        self._held: Optional[List[bytes]] = None
        self._held_call: Optional[IDelayedCall] = None
        self._feeding = False
        self.tunnel: Any = None
        self.secure = False
        self._peer_host: Optional[str] = None
        #: Whether this connection may turn out to be HTTP/2 (set by the listener's factory):
        #: ALPN "h2" on TLS, the preface on cleartext (``h2c``); None once decided.
        self.h2c_allowed = False
        self._undecided: Optional[bytes] = None
        #: The HTTP/2 protocol this connection was handed to, or None.
        self.h2: Any = None
        #: The TLS facts of this connection, once the handler layer read them (per connection,
        #: shared by its requests); the core itself never looks at them.
        self.tls_info: Any = None

    # -- connection events --------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.limits = factory.limits
        self.clock = factory.clock
        self.date = factory.date
        self._parser = RequestParser(self, self.limits)
        self._pause_body = lambda: self._pause("body")
        self._resume_body = lambda: self._resume("body")
        transport = self.transport
        self.secure = ISSLTransport.providedBy(transport)
        factory.connection_made(self)
        self._head_since = self.clock.seconds()
        self._head_timer = self.clock.callLater(self.limits.header_timeout_s, self._head_timeout)
        if factory.h2_protocol is not None and (self.secure or self.h2c_allowed):
            self._undecided = b""

    @property
    def peer_host(self) -> str:
        """The client's address, read when first needed: behind a PROXY protocol wrapper the
        transport knows it only once the PROXY header (which precedes any request) is read."""
        host = self._peer_host
        if host is None:
            transport = self.transport
            peer = transport.getPeer() if transport is not None else None
            host = self._peer_host = getattr(peer, "host", "") or ""
        return host

    @property
    def draining(self) -> bool:
        return self.factory.draining

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.dataReceived(data)
            return
        if self._undecided is not None:
            data = self._choose_protocol(data)
            if not data:
                return
        state = self.state
        if state is ConnectionState.TUNNEL:
            self.tunnel.data_from(self, data)
            return
        if state is ConnectionState.REFUSING or state is ConnectionState.CLOSING:
            return  # lingering after a refusal: read and drop
        if state is ConnectionState.CLOSED:
            return
        if self._held is not None:
            self._held.append(data)  # undecided upgrade: hold until the answer says what's next
            return
        if state is ConnectionState.WAITING:
            self.state = ConnectionState.ACTIVE
            self._cancel(self._idle_timer)
            self._idle_timer = None
        self._feeding = True
        try:
            offset = self._parser.feed(data)
        except ProtocolViolation as violation:
            self._feeding = False
            self._violation(violation)
            self._dispatch()
            return
        self._feeding = False
        if offset is not None:
            self._upgrade_requested(data[offset:])
        self._dispatch()
        if offset is not None:
            return
        if (
            self._parser.in_head
            and self._head_timer is None
            and self.state is ConnectionState.ACTIVE
        ):
            self._head_since = self.clock.seconds()
            self._head_timer = self.clock.callLater(
                self.limits.header_timeout_s, self._head_timeout
            )

    def _choose_protocol(self, data: bytes) -> bytes:
        """The first bytes decide: ALPN ``h2`` (TLS) or the preface (cleartext) hand the
        connection to the HTTP/2 protocol; anything else is HTTP/1.1 (returned to parse)."""
        seen = self._undecided + data  # type: ignore[operator]
        negotiated = getattr(self.transport, "negotiatedProtocol", None) if self.secure else None
        if negotiated == b"h2" or (not self.secure and seen.startswith(H2_PREFACE)):
            self._undecided = None
            self._become_h2(seen)
            return b""
        if not self.secure and len(seen) < len(H2_PREFACE) and H2_PREFACE.startswith(seen):
            self._undecided = seen  # maybe the preface, in pieces
            return b""
        self._undecided = None
        return seen

    def _become_h2(self, data: bytes) -> None:
        """Hand the connection to the factory's HTTP/2 protocol (this one only relays to it)."""
        for timer in (self._head_timer, self._idle_timer):
            self._cancel(timer)
        self._head_timer = self._idle_timer = None
        factory = self.factory
        factory.connection_lost(self)  # the HTTP/2 protocol counts itself
        h2 = self.h2 = factory.h2_protocol()
        h2.factory = factory
        h2.tls_info = self.tls_info
        h2.makeConnection(self.transport)
        h2.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.h2 is not None:
            self.state = ConnectionState.CLOSED
            self.h2.connectionLost(reason)
            return
        previous, self.state = self.state, ConnectionState.CLOSED
        timers = (self._head_timer, self._body_timer, self._idle_timer, self._linger_timer)
        for timer in timers + (self._held_call,):
            self._cancel(timer)
        self._head_timer = self._body_timer = self._idle_timer = self._linger_timer = None
        self._held_call = None
        self.factory.connection_lost(self)
        if previous is ConnectionState.TUNNEL and self.tunnel is not None:
            self.tunnel.lost(self, reason)
        queue, self._queue = self._queue, deque()
        for request in queue:
            request.client_lost(reason)
        reading, self._reading = self._reading, None
        if reading is not None and reading not in queue:
            reading.client_lost(reason)

    # -- from the parser ----------------------------------------------------------------------

    def head_received(self, head: RequestHead) -> None:
        self._cancel(self._head_timer)
        self._head_timer = None
        if self.state is ConnectionState.CLOSING:
            return  # an answer inside this read closed the connection: not a request of it
        if self.state is ConnectionState.WAITING:
            # An answer completed inside this read (from the body's consumer) went back to
            # WAITING and started the idle timer: this request makes the connection busy again.
            self.state = ConnectionState.ACTIVE
            self._cancel(self._idle_timer)
            self._idle_timer = None
        body = RequestBody(
            head.content_length,
            head.chunked,
            self.limits.body_high_water,
            self._pause_body,
            self._resume_body,
            (lambda: self._continue(request)) if head.expect_continue else _nothing,
        )
        request = ServerRequest(self, head, body)
        self._reading = request
        if body.present and not body.complete and not head.expect_continue:
            # (A client that expects 100 Continue sends its body once it has it: the body's
            # clock starts then, in _continue.)
            self._body_timer = self.clock.callLater(self.limits.body_timeout_s, self._body_timeout)
        self._queue.append(request)
        if len(self._queue) > self.limits.max_pipelined:
            self._pause("pipelining")

    def body_received(self, data: bytes) -> None:
        request = self._reading
        if request is not None:
            request.body.data_received(data)

    def message_done(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        request, self._reading = self._reading, None
        if request is None:
            return
        request.body.data_done()
        if self._queue and self._queue[0] is not request:
            self._pause("pipelining")  # answer what came before first

    # -- answers ------------------------------------------------------------------------------

    def write_head(self, first_line: bytes, fields: List[Pair]) -> None:
        self.transport.write(head_bytes(first_line, fields))

    def _continue(self, request: ServerRequest) -> None:
        """The handler is reading the body: ``100 Continue`` if the client waits for it."""
        if request.head.expect_continue and not request.started and request.body.received == 0:
            self.transport.write(_CONTINUE)
            if self._body_timer is None and request is self._reading:
                self._body_timer = self.clock.callLater(
                    self.limits.body_timeout_s, self._body_timeout
                )

    def request_done(self, request: ServerRequest, reason: Optional[Failure]) -> None:
        """``request`` was answered completely: the next one, or close, or wait."""
        if self._queue and self._queue[0] is request:
            self._queue.popleft()
        done, request.on_done = request.on_done, None
        if done is not None:
            done(request, reason)
        if self.state is ConnectionState.CLOSED:
            return
        if request.refusal is not None:
            self._linger()
            return
        if request.close_after:
            if request.body.complete:
                self.state = ConnectionState.CLOSING
                self.transport.loseConnection()
            else:
                self._linger()  # the client may still be sending the body we did not read
            return
        if request.upgrade_rest is not None:
            self._resume_after_upgrade(request)
        if self._queue:
            self._dispatch()
            return
        if self.state is ConnectionState.ACTIVE and self._reading is None:
            self.state = ConnectionState.WAITING
            if self._paused:
                self._resume("pipelining")
            if not self._parser.in_head:
                self._idle_timer = self.clock.callLater(
                    self.limits.idle_timeout_s, self._idle_timeout
                )

    def _dispatch(self) -> None:
        """Hand the oldest request to the handler, if it does not have it yet. Never from
        inside the parser's callbacks: a handler may answer at once, and that may start the
        next request."""
        state = self.state
        if (
            self._feeding
            or not self._queue
            or state is ConnectionState.CLOSING
            or state is ConnectionState.CLOSED
        ):
            return
        request = self._queue[0]
        if request.handled:
            return
        request.handled = True
        if len(self._queue) <= 1:
            self._resume("pipelining")
        if request.refusal is not None and request.state is ResponseState.PENDING:
            self.factory.handler.refused(request, request.refusal.status, request.refusal.reason)
        else:
            self.factory.handler.handle(request)

    def abort(self, request: ServerRequest) -> None:
        """The answer of ``request`` broke off: reset the connection."""
        if self.state is not ConnectionState.TUNNEL and self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSING
        done, request.on_done = request.on_done, None
        if done is not None:
            done(request, Failure(ConnectionAbortedError("response aborted")))
        transport = self.transport
        if transport is not None:
            transport.abortConnection()

    # -- refusals -----------------------------------------------------------------------------

    def _violation(self, violation: ProtocolViolation) -> None:
        """The parser refused: fail the body being read, or queue a refusal for the head."""
        request = self._reading
        if request is not None and request.body.present and not request.body.complete:
            self._refuse_body(request, violation)
            return
        last = self._queue[-1] if self._queue else None
        if last is not None and not last.head.keep_alive and last.refusal is None:
            # llhttp refuses what follows a request that closes the connection: no request
            # of this connection, never answered (RFC 9112 9.6).
            self.state = ConnectionState.REFUSING
            return
        self._refuse(violation, violation.head)

    def _refuse_body(self, request: ServerRequest, violation: ProtocolViolation) -> None:
        """The body of a request being handled broke a rule: the handler learns it from the
        body (413, 408, 400); nothing more is parsed and the connection closes after."""
        self.state = ConnectionState.REFUSING
        self._cancel(self._body_timer)
        self._body_timer = None
        self._reading = None
        request.close_after = True
        request.refusal = violation
        self._log_refusal(violation)
        request.body.fail(BodyFailed(violation.status, violation.reason))
        if request.finished:
            self._linger()

    def _refuse(self, violation: ProtocolViolation, head: Optional[RequestHead] = None) -> None:
        if self.state is not ConnectionState.WAITING and self.state is not ConnectionState.ACTIVE:
            return
        self.state = ConnectionState.REFUSING
        for timer in (self._head_timer, self._body_timer, self._idle_timer):
            self._cancel(timer)
        self._head_timer = self._body_timer = self._idle_timer = None
        self._log_refusal(violation)
        if violation.since is None:
            violation.since = self._head_since
        if head is None:
            head = RequestHead(b"-", b"-", b"1.1", Fields(), keep_alive=False)
        head.keep_alive = False
        body = RequestBody(None, False, 0, _nothing, _nothing, _nothing)
        request = ServerRequest(self, head, body)
        request.refusal = violation
        request.close_after = True
        self._reading = None
        self._queue.append(request)
        self._dispatch()

    def _log_refusal(self, violation: ProtocolViolation) -> None:
        log.info(
            "refused request from {client}: {status} {reason}",
            client=self.peer_host,
            status=violation.status,
            reason=violation.reason,
        )

    def _linger(self) -> None:
        """Half-close and drop input for a while, so the client reads the answer, not a reset."""
        if self.state is ConnectionState.CLOSING or self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSING
        for timer in (self._head_timer, self._body_timer, self._idle_timer):
            self._cancel(timer)
        self._head_timer = self._body_timer = self._idle_timer = None
        transport = self.transport
        self._resume_all()
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            transport.loseWriteConnection()
            self._linger_timer = self.clock.callLater(
                self.limits.linger_s, transport.abortConnection
            )
        else:
            transport.loseConnection()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._queue:  # earlier requests are being answered: the next head's clock waits
            self._head_timer = self.clock.callLater(
                self.limits.header_timeout_s, self._head_timeout
            )
            return
        self._refuse(ProtocolViolation(408, "request head not received in time"))

    def _body_timeout(self) -> None:
        self._body_timer = None
        request = self._reading
        if request is not None:
            self._refuse_body(request, ProtocolViolation(408, "request body not received in time"))

    def _idle_timeout(self) -> None:
        self._idle_timer = None
        if self.state is ConnectionState.WAITING:
            self.transport.loseConnection()

    def close_idle(self) -> bool:
        """Close the connection if nothing is in progress on it (a drain); whether it was."""
        if self.state is ConnectionState.WAITING and not self._parser.in_head:
            self.transport.loseConnection()
            return True
        return False

    # -- upgrades -----------------------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        """An upgrade request's head ended: what follows is another protocol's, or (if the
        answer is not 101) the next request. Hold it until the answer decides."""
        request = self._queue[-1] if self._queue else None
        if request is None:
            return
        self._held = [rest] if rest else []
        request.upgrade_rest = self._held
        self._pause("upgrade")

    def _resume_after_upgrade(self, request: ServerRequest) -> None:
        """The upgrade was declined: parse what the client sent next with a fresh parser."""
        held, self._held = self._held or [], None
        request.upgrade_rest = None
        self._parser = RequestParser(self, self.limits)
        self._resume("upgrade")
        data = b"".join(held)
        if data:
            # Not from inside the answer's finish(): the next request starts on its own turn.
            self._held_call = self.clock.callLater(0, self._feed_held, data)

    def _feed_held(self, data: bytes) -> None:
        self._held_call = None
        if self.state is ConnectionState.WAITING or self.state is ConnectionState.ACTIVE:
            self.dataReceived(data)

    def become_tunnel(self, request: ServerRequest) -> Any:
        """Hand the connection to a tunnel (after a 101 went out)."""
        self.state = ConnectionState.TUNNEL
        if self._queue and self._queue[0] is request:
            self._queue.popleft()
        for timer in (self._head_timer, self._body_timer, self._idle_timer):
            self._cancel(timer)
        self._head_timer = self._body_timer = self._idle_timer = None
        self._held = None
        self._resume_all()
        return self.transport

    # -- flow control -------------------------------------------------------------------------

    def _pause(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pauseProducing()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused and self.transport is not None:
                self.transport.resumeProducing()

    def _resume_all(self) -> None:
        if self._paused:
            self._paused.clear()
            self.transport.resumeProducing()

    @staticmethod
    def _cancel(timer: Optional[IDelayedCall]) -> None:
        if timer is not None and timer.active():
            timer.cancel()


def _nothing() -> None:
    pass


class _H2cFactory(Factory):
    """A listener's view of a :class:`ServerFactory`: its connections may speak h2c."""

    noisy = False

    def __init__(self, site: ServerFactory) -> None:
        self.site = site

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        protocol = self.site.buildProtocol(addr)
        if protocol is not None:
            protocol.h2c_allowed = True  # type: ignore[attr-defined]
        return protocol

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()


class ServerFactory(Factory):
    """Builds a :class:`ServerProtocol` per connection, all handing requests to ``handler``."""

    protocol = ServerProtocol
    noisy = False

    def __init__(
        self,
        handler: Any,
        clock: Any,
        limits: Optional[ServerLimits] = None,
        server_header: Optional[bytes] = None,
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.limits = limits if limits is not None else ServerLimits()
        self.server_header = server_header
        self.date = DateCache(clock.seconds)
        self.draining = False
        self.connections: Set[ServerProtocol] = set()
        self._all_closed: List[Deferred[None]] = []
        #: Called with the protocol's name and +1/-1 as connections open and close (a gauge),
        #: or None.
        self.on_connection: Optional[Callable[[str, int], None]] = None
        #: Builds the HTTP/2 protocol a connection is handed to (ALPN h2, the h2c preface),
        #: with ``h2_limits``; None: HTTP/1.1 only.
        self.h2_protocol: Optional[Callable[[], Protocol]] = None
        self.h2_limits: Any = None

    def with_h2c(self) -> Factory:
        """This factory for a cleartext listener that also accepts h2c with prior knowledge."""
        return _H2cFactory(self)

    def connection_made(self, protocol: ServerProtocol) -> None:
        self.connections.add(protocol)
        if self.on_connection is not None:
            self.on_connection(protocol.protocol_name, 1)

    def connection_lost(self, protocol: ServerProtocol) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            if self.on_connection is not None:
                self.on_connection(protocol.protocol_name, -1)
        if not self.connections and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def count(self, protocol_name: str) -> int:
        """Connections open now speaking ``protocol_name`` (``http/1.1``, ``h2``)."""
        return sum(1 for c in self.connections if c.protocol_name == protocol_name)

    def go_away(self) -> None:
        """After a reload: HTTP/2 connections get GOAWAY (their open streams finish), so
        clients come back on new connections; HTTP/1.1 ones go on."""
        for protocol in list(self.connections):
            if protocol.protocol_name == "h2":
                protocol.close_idle()

    def close_all(self, timeout_s: float) -> Deferred[None]:
        """Close every connection once what was written to it went out (the end of a drain);
        those still open after ``timeout_s`` are aborted. Fires when all are gone."""
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._all_closed.append(d)
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        timer = self.clock.callLater(timeout_s, self.abort_all)
        d.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return d

    def drain(self) -> None:
        """No new requests: idle connections close now, busy ones after their answer."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.close_idle()

    def abort_all(self) -> None:
        """The drain time is over: drop every connection still open (tunnels included)."""
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
