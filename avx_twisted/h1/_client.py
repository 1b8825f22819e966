# -*- test-case-name: tests.unit.test_h1_client -*-
"""The upstream side of the HTTP/1.1 core: one ``ClientProtocol`` per pooled connection, one
exchange at a time.

A connection is reusable only when its last response was read completely, with consistent
framing and nothing after it, and the request body went out whole. Responses to HEAD end at
their head (llhttp would wait for the body), and the parser is replaced before the next
exchange. A close-delimited body ends with a clean close only; a reset breaks it off.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ._flow import BodyFailed, ProducerProxy
from ._limits import ClientLimits
from ._message import ResponseHead
from ._parse import ProtocolViolation, ResponseParser
from ._serialize import LAST_CHUNK, chunk

_NO_BODY_STATUS = frozenset([204, 304])


class UpstreamClosed(Exception):
    """The upstream closed the connection before any byte of a response arrived."""

    def __init__(self, reason: Optional[Failure], reused: bool) -> None:
        super().__init__(reason.getErrorMessage() if reason is not None else "connection lost")
        self.reason = reason
        #: The connection had served an earlier exchange (it may have been closed meanwhile).
        self.reused = reused


class ClientState(enum.Enum):
    """A connection's state. Legal transitions::

    IDLE      -> WAITING     a request was written
    WAITING   -> RECEIVING   a final response head arrived (1xx heads stay in WAITING)
    WAITING   -> TUNNEL      a 101 arrived for an upgrade request
    RECEIVING -> IDLE        the body ended and the connection may be reused
    any       -> CLOSED      connectionLost, or abort
    """

    IDLE = "idle"
    WAITING = "waiting"
    RECEIVING = "receiving"
    TUNNEL = "tunnel"
    CLOSED = "closed"


class UpstreamResponse:
    """A response head from an upstream, and the way to its body.

    ``deliver(sink)`` starts the body (see :class:`~._message.IResponseSink`); ``producer`` is
    a stoppable proxy of the upstream transport, to register on the client connection.
    """

    def __init__(self, protocol: ClientProtocol, head: ResponseHead, length: Optional[int]) -> None:
        self.protocol = protocol
        self.head = head
        self.status = head.status
        self.fields = head.fields
        #: The body's size when known (Content-Length, or 0 for no body), else None.
        self.length = length
        self.producer = ProducerProxy(protocol.transport)
        #: For a 101: the bytes after its head (the upgraded protocol's).
        self.rest = b""

    def deliver(self, sink: Any) -> None:
        self.protocol.deliver(sink)

    def abort(self) -> None:
        self.producer.detach()
        self.protocol.abort()


class ClientProtocol(Protocol):
    """One upstream connection. See :class:`ClientState` for the states.

    ``released(protocol)`` is called when the connection becomes IDLE again (to pool it) and
    when it closes (to forget it).
    """

    def __init__(self, limits: ClientLimits, released: Callable[[ClientProtocol], None]) -> None:
        self.limits = limits
        self.state = ClientState.IDLE
        self._released = released
        self._parser = ResponseParser(self, limits)
        self._result: Optional[Deferred[UpstreamResponse]] = None
        self._response: Optional[UpstreamResponse] = None
        self._sink: Any = None
        self._pending: List[bytes] = []
        self._ended: Optional[Failure] = None
        self._method = b""
        self._on_interim: Optional[Callable[[ResponseHead], None]] = None
        self._received = 0
        self._reusable = False
        #: The final response's body ended (its end not yet handed on).
        self._finished = False
        self._close_delimited = False
        self._stray = False
        self._feeding = False
        self._upgrade_head: Optional[ResponseHead] = None
        self._stream: Any = None
        self._chunked_body = False
        self._body_sent = True
        #: Whether this connection served an exchange before the current one.
        self.reused = False
        self.pool_key: Any = None
        self.idle_timer: Any = None
        self.tunnel: Any = None
        self._closed: List[Deferred[None]] = []

    # -- sending ------------------------------------------------------------------------------

    def request(
        self,
        head: bytes,
        method: bytes,
        stream: Any = None,
        chunked: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> Deferred[UpstreamResponse]:
        """Write ``head`` (with a whole body already in it), then stream ``stream`` (a
        :class:`~._flow.RequestBody`) if given. Fires with the final response head; cancelling
        aborts the connection."""
        if self.state is not ClientState.IDLE:
            raise RuntimeError(f"request on a {self.state.value} connection")
        self.state = ClientState.WAITING
        self._method = method
        self._on_interim = on_interim
        self._received = 0
        self._sink = None
        self._pending = []
        self._ended = None
        self._finished = False
        self._close_delimited = False
        self._stray = False
        self._reusable = False
        self._result = d = Deferred(self._cancel)
        self.transport.write(head)
        if stream is not None:
            self._stream = stream
            self._chunked_body = chunked
            self._body_sent = False
            self.transport.registerProducer(stream, True)
            stream.attach(self)
        else:
            self._body_sent = True
        return d

    # The request body's consumer side (RequestBody.attach calls these).

    def write(self, data: bytes) -> None:
        if self.state is not ClientState.CLOSED:
            self.transport.write(chunk(data) if self._chunked_body else data)

    def finish(self) -> None:
        if self._chunked_body and self.state is not ClientState.CLOSED:
            self.transport.write(LAST_CHUNK)
        self._end_stream()
        self._body_sent = True
        if self._finished and self._sink is not None and not self._feeding:
            self._message_complete()

    def fail(self, failure: BodyFailed) -> None:
        """The client's body broke off: the upstream must not see a complete request."""
        self._end_stream()
        result, self._result = self._result, None
        self.abort()
        if result is not None and not result.called:
            result.errback(Failure(failure))

    def _end_stream(self) -> None:
        """The request body is done with this connection (sent, failed, answered early or
        lost): stop feeding it, and let go of the client if this transport had paused it."""
        stream, self._stream = self._stream, None
        if stream is not None:
            if self.transport is not None:
                self.transport.unregisterProducer()
            stream.detach()

    # -- receiving ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is ClientState.TUNNEL:
            self.tunnel.data_from(self, data)
            return
        if state is ClientState.IDLE or state is ClientState.CLOSED:
            self.abort()  # bytes on an idle connection: it cannot be trusted any more
            return
        self._received += len(data)
        self._feeding = True
        try:
            offset = self._parser.feed(data)
        except ProtocolViolation as violation:
            self._feeding = False
            if self._finished and self.state is ClientState.RECEIVING:
                # Garbage after a whole response: the response stands, the connection goes.
                self._stray = True
                if self._sink is not None:
                    self._message_complete()
                else:
                    self.abort()
                return
            self._broken(Failure(violation))
            return
        self._feeding = False
        if offset is not None and self._upgrade_head is not None:
            self._switched(data[offset:])
        elif self._finished and self._sink is not None and self.state is ClientState.RECEIVING:
            self._message_complete()

    def response_begin(self) -> None:
        if self._finished or self.state is not ClientState.WAITING:
            self._stray = True  # bytes after the response: never reuse this connection

    def response_head(self, head: ResponseHead, keep_alive: bool) -> None:
        if self._stray:
            return
        status = head.status
        if status == 101:
            self._upgrade_head = head
            return
        if status < 200:
            if self._on_interim is not None:
                self._on_interim(head)
            return
        self.state = ClientState.RECEIVING
        self._reusable = keep_alive
        length: Optional[int]
        if self._method == b"HEAD" or status in _NO_BODY_STATUS:
            length = 0
        elif head.chunked:
            length = None
        elif head.content_length is not None:
            length = head.content_length
        else:
            length = None
            self._close_delimited = True
            self._reusable = False
        response = self._response = UpstreamResponse(self, head, length)
        if self._method == b"HEAD":
            # llhttp would wait for a body: the message ends at its head, with a new parser.
            self._parser = ResponseParser(self, self.limits)
            self._finished = True
        result, self._result = self._result, None
        if result is not None:
            result.callback(response)

    def response_body(self, data: bytes) -> None:
        if self._stray or self._finished:
            self._stray = True
            return
        sink = self._sink
        if sink is not None:
            sink.body_data(data)
        else:
            self._pending.append(data)

    def response_done(self) -> None:
        if self.state is ClientState.RECEIVING and not self._stray:
            self._finished = True  # (an interim 1xx ends in WAITING: the final one follows)

    def deliver(self, sink: Any) -> None:
        """Send the body to ``sink`` (what arrived already first)."""
        self._sink = sink
        pending, self._pending = self._pending, []
        for data in pending:
            sink.body_data(data)
        if self._ended is not None:
            self._sink = None
            sink.body_failed(self._ended)
        elif self._finished:
            if self.state is ClientState.RECEIVING:
                if not self._feeding:
                    self._message_complete()
            else:  # closed already: a close-delimited body that ended cleanly
                self._sink = None
                sink.body_done()

    def _message_complete(self) -> None:
        """The response ended: tell the sink, then pool or close the connection."""
        if not self._body_sent:
            # The upstream answered before taking the whole body: stop sending, never reuse.
            self._end_stream()
            self._body_sent = True
            self._reusable = False
        sink, self._sink = self._sink, None
        response, self._response = self._response, None
        if response is not None:
            response.producer.detach()
        self._finished = False
        self.state = ClientState.IDLE
        if sink is not None:
            sink.body_done()
        if self.state is not ClientState.IDLE:
            return
        if self._reusable and not self._stray:
            self.reused = True
            self._released(self)
        else:
            self.state = ClientState.CLOSED
            self.transport.loseConnection()

    def _switched(self, rest: bytes) -> None:
        head, self._upgrade_head = self._upgrade_head, None
        assert head is not None
        self.state = ClientState.TUNNEL
        response = UpstreamResponse(self, head, None)
        response.rest = rest
        result, self._result = self._result, None
        if result is not None:
            result.callback(response)

    # -- endings ------------------------------------------------------------------------------

    def _broken(self, failure: Failure) -> None:
        """Bad framing from the upstream: never reused; whoever waits learns why."""
        result, self._result = self._result, None
        sink, self._sink = self._sink, None
        self.abort()
        if result is not None and not result.called:
            result.errback(failure)
        elif sink is not None:
            sink.body_failed(failure)
        else:
            self._ended = failure

    def abort(self) -> None:
        if self.state is not ClientState.CLOSED and self.transport is not None:
            self.state = ClientState.CLOSED
            self.transport.abortConnection()

    def close(self) -> Deferred[None]:
        """Close the connection; fires once it is closed."""
        d: Deferred[None] = Deferred()
        if self.transport is None or not self.connected:
            d.callback(None)
            return d
        self._closed.append(d)
        self.state = ClientState.CLOSED
        self.transport.loseConnection()
        return d

    def _cancel(self, d: Deferred[Any]) -> None:
        self._result = None
        self.abort()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # What was going on is told by what is still held, not by ``state``: an abort has
        # made the state CLOSED already.
        self.state = ClientState.CLOSED
        self.connected = 0
        self._end_stream()
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self.tunnel is not None:
            self.tunnel.lost(self, reason)
        result, self._result = self._result, None
        if result is not None and not result.called:
            if self._received:
                result.errback(Failure(ProtocolViolation(502, "response head cut off")))
            else:
                result.errback(Failure(UpstreamClosed(reason, self.reused)))
        sink, self._sink = self._sink, None
        response, self._response = self._response, None
        if response is not None:
            response.producer.detach()
        if self._finished or (
            self._close_delimited and reason is not None and reason.check(ConnectionDone)
        ):
            self._finished = True  # complete before the close (or ended by a clean close)
            if sink is not None:
                sink.body_done()
        elif response is not None or self._close_delimited:
            # A body was on its way (or already broken off by bad framing: keep that reason).
            if self._ended is None:
                self._ended = reason
            if sink is not None:
                sink.body_failed(reason)
        self._released(self)
        waiting, self._closed = self._closed, []
        for d in waiting:
            d.callback(None)
