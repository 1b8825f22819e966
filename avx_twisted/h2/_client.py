# -*- test-case-name: tests.unit.test_h2_client -*-
"""The upstream HTTP/2 side: one :class:`H2ClientProtocol` per upstream connection, carrying
many requests at once, one :class:`H2Stream` each.

What the forwarder gets back is an :class:`H2Response`, with the interface of the HTTP/1.1
core's :class:`~avx_twisted.h1.UpstreamResponse` (``status``, ``head``, ``fields``,
``length``, ``producer``, ``deliver(sink)``, ``abort()``), and the trailers, which a sink that
wants them gets through ``body_trailers(pairs)`` before ``body_done()``.

Flow control follows the other side, as on the server side: response DATA is acknowledged
(the upstream's window reopened) only while the client takes it (``producer`` pauses the
stream); request bytes wait for the upstream's window, and the client's body is paused while
they queue.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError, TooManyStreamsError
from h2.settings import SettingCodes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..h1 import BodyFailed, Fields, ProtocolViolation, ResponseHead, UpstreamClosed
from ._limits import H2ClientLimits
from ._wire import Wire

Pair = Tuple[bytes, bytes]

_VERSION = b"2.0"
_PING = b"avx-ping"


class _ClientConnection(H2Connection):
    """The h2 library's connection, taking a graceful GOAWAY (NO_ERROR) as RFC 9113 6.8 says:
    the streams up to its last stream id still run to their end (the library would refuse
    every frame after it)."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class StreamRefused(Exception):
    """The upstream did not process the request (RST_STREAM REFUSED_STREAM, or a stream above
    a GOAWAY's last stream id, RFC 9113 8.7): it may be sent again, whatever its method."""


class H2ProtocolError(ProtocolViolation):
    """The upstream broke HTTP/2 (or did not offer it): a bad upstream response (502)."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)

    def __str__(self) -> str:
        return self.reason


class UpstreamReset(Exception):
    """The upstream reset the stream before its response head."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset by the upstream ({_code_name(code)})")
        self.code = code


class H2Response:
    """A response head from an upstream stream, and the way to its body and trailers."""

    def __init__(self, stream: H2Stream, head: ResponseHead, length: Optional[int]) -> None:
        self.stream = stream
        self.protocol = stream.protocol
        self.head = head
        self.status = head.status
        self.fields = head.fields
        self.length = length
        self.producer = stream
        self.rest = b""

    @property
    def trailers(self) -> Optional[List[Pair]]:
        return self.stream.trailers

    def deliver(self, sink: Any) -> None:
        self.stream.deliver(sink)

    def abort(self) -> None:
        self.stream.abort()


@implementer(IPushProducer)
class H2Stream:
    """One request on an upstream connection: the request body going out and the response
    coming back. It is the response body's producer (pausing it stops acknowledging DATA)
    and the request body's consumer (``write``/``finish``/``fail`` from ``RequestBody``)."""

    def __init__(
        self,
        protocol: H2ClientProtocol,
        stream_id: int,
        on_interim: Optional[Callable[[ResponseHead], None]],
    ) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.on_interim = on_interim
        self.result: Deferred[H2Response] = Deferred(self._cancel)
        self.response: Optional[H2Response] = None
        self.trailers: Optional[List[Pair]] = None
        #: The request body (a RequestBody) while it is being sent.
        self.body: Any = None
        self._body_paused = False
        self._out: List[bytes] = []
        self._out_size = 0
        self._end_out = False
        self._sink: Any = None
        #: Events for the sink that came before it was attached.
        self._early: List[Tuple[str, Any]] = []
        self._paused = False
        self._unacked = 0
        self.ended = False

    # -- the request body (RequestBody's consumer) --------------------------------------------

    def write(self, data: bytes) -> None:
        if self.ended or not data:
            return
        self._out.append(data)
        self._out_size += len(data)
        self.protocol.flush(self)

    def finish(self) -> None:
        self.body = None
        if not self.ended:
            self._end_out = True
            self.protocol.flush(self)

    def fail(self, failure: BodyFailed) -> None:
        """The client's body broke off: the upstream must not see a complete request."""
        self.body = None
        self._fail(Failure(failure), ErrorCodes.CANCEL)

    def _pause_body(self) -> None:
        body = self.body
        if body is not None and not self._body_paused:
            self._body_paused = True
            body.pauseProducing()

    def _resume_body(self) -> None:
        body = self.body
        if body is not None and self._body_paused:
            self._body_paused = False
            body.resumeProducing()

    # -- the response body (IPushProducer for the client side) --------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        unacked, self._unacked = self._unacked, 0
        if unacked and not self.ended:
            self.protocol.ack(self.stream_id, unacked)

    def stopProducing(self) -> None:
        self.abort()

    def deliver(self, sink: Any) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for kind, value in early:
            self._to_sink(kind, value)

    def _to_sink(self, kind: str, value: Any) -> None:
        sink = self._sink
        if sink is None:
            self._early.append((kind, value))
        elif kind == "data":
            sink.body_data(value)
        elif kind == "trailers":
            take = getattr(sink, "body_trailers", None)
            if take is not None:
                take(value)
        elif kind == "done":
            sink.body_done()
        else:
            sink.body_failed(value)

    def abort(self) -> None:
        """Reset the stream (the connection and its other streams go on)."""
        self._fail(Failure(ConnectionAbortedError("stream aborted")), ErrorCodes.CANCEL)

    def _cancel(self, _: Deferred[Any]) -> None:
        self.abort()

    # -- endings ------------------------------------------------------------------------------

    def _fail(self, failure: Failure, code: Optional[int]) -> None:
        """End the stream with ``failure`` (resetting it with ``code`` unless None)."""
        if self.ended:
            return
        self.ended = True
        self._detach_body()
        self.protocol.forget(self, code)
        if not self.result.called:
            self.result.errback(failure)
        elif self.response is not None:
            self._to_sink("failed", failure)

    def _detach_body(self) -> None:
        body, self.body = self.body, None
        if body is not None:
            if self._body_paused:
                self._body_paused = False
                body.resumeProducing()
            body.detach()


@implementer(IPushProducer)
class H2ClientProtocol(Wire, Protocol):
    """One upstream HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN ``h2``).

    ``released(protocol)`` is called when streams free up (the pool may send more) and when
    the connection can take no new stream (GOAWAY received, closed).
    """

    def __init__(
        self,
        clock: Any,
        limits: H2ClientLimits,
        released: Callable[[H2ClientProtocol], None],
        tls: bool = False,
    ) -> None:
        self.clock = clock
        self.limits = limits
        self._released = released
        self.tls = tls
        self.streams: Dict[int, H2Stream] = {}
        self._blocked: Dict[int, H2Stream] = {}
        #: No new stream may be opened (GOAWAY either way, or closed).
        self.goaway = False
        self.closed = False
        self.transport_paused = False
        #: Streams this connection carried (whether a failure may be a stale connection's).
        self.served = 0
        self.pool_key: Any = None
        self._alpn_checked = not tls
        self._idle_timer: Any = None
        self._ping_timer: Any = None
        self._idle_since = 0.0
        self._close_timer: Any = None
        self._lost: List[Deferred[None]] = []

    def connectionMade(self) -> None:
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=True,
            normalize_outbound_headers=True,
        )
        conn = self.conn = _ClientConnection(config=config)
        limits = self.limits
        conn.initiate_connection()
        # After the preface: values given before initiate_connection would take effect
        # here when acknowledged, without ever having been sent.
        conn.update_settings(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            }
        )
        extra = limits.connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self._register()
        self._write()
        self._became_idle()

    # -- capacity -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Streams that may be opened now."""
        if self.goaway or self.closed:
            return 0
        allowed = min(
            self.conn.remote_settings.max_concurrent_streams, self.limits.max_concurrent_streams
        )
        return allowed - len(self.streams)

    # -- sending ------------------------------------------------------------------------------

    def request(
        self,
        headers: List[Pair],
        data: bytes,
        body: Any = None,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> H2Stream:
        """Open a stream: ``headers`` (pseudo-headers first, lower-case names), then ``data``
        (a whole body) or ``body`` (a ``RequestBody`` to stream). Raises
        :class:`StreamRefused` when no stream can be opened on this connection."""
        if self.capacity <= 0:
            raise StreamRefused("no stream available on this connection")
        conn = self.conn
        stream_id = conn.get_next_available_stream_id()
        end = body is None and not data
        try:
            conn.send_headers(stream_id, headers, end_stream=end)
        except TooManyStreamsError as e:
            raise StreamRefused(str(e)) from None
        self._disarm_idle()
        stream = H2Stream(self, stream_id, on_interim)
        self.streams[stream_id] = stream
        self.served += 1
        if data:
            stream.write(data)
            if body is None:
                stream.finish()
        if body is not None:
            stream.body = body
            body.attach(stream)  # may write, finish or fail at once
        self._write()
        return stream

    def flush(self, stream: H2Stream) -> None:
        """Send what the stream has queued, as far as the flow-control windows allow."""
        conn = self.conn
        stream_id = stream.stream_id
        if stream.ended or self.closed:
            return
        try:
            while stream._out and not self.transport_paused:
                window = conn.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                chunk = stream._out[0]
                size = min(window, conn.max_outbound_frame_size, len(chunk))
                if size < len(chunk):
                    stream._out[0] = chunk[size:]
                    chunk = chunk[:size]
                else:
                    stream._out.pop(0)
                stream._out_size -= size
                conn.send_data(stream_id, chunk)
            if not stream._out and stream._end_out:
                stream._end_out = False
                conn.end_stream(stream_id)
        except (StreamClosedError, ProtocolError):
            stream._out = []
            stream._out_size = 0
        if stream._out:
            self._blocked[stream_id] = stream
        else:
            self._blocked.pop(stream_id, None)
        if stream._out_size > self.limits.body_high_water or self.transport_paused:
            stream._pause_body()
        else:
            stream._resume_body()
        self._write()

    def ack(self, stream_id: int, size: int) -> None:
        try:
            self.conn.acknowledge_received_data(size, stream_id)
        except (StreamClosedError, ProtocolError):
            pass
        self._write()

    def forget(self, stream: H2Stream, code: Optional[int]) -> None:
        """``stream`` is over (reset it with ``code`` unless None)."""
        stream_id = stream.stream_id
        self._blocked.pop(stream_id, None)
        if self.streams.pop(stream_id, None) is None:
            return
        unacked, stream._unacked = stream._unacked, 0
        if unacked and not self.closed:
            self.ack(stream_id, unacked)  # the connection's window still counts those bytes
        if code is not None and not self.closed:
            try:
                self.conn.reset_stream(stream_id, error_code=code)
            except (StreamClosedError, ProtocolError):
                pass
            self._write()
        self._stream_freed()

    # -- receiving ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._alpn_checked:
            self._alpn_checked = True
            chosen = getattr(self.transport, "negotiatedProtocol", None)
            if chosen != b"h2":
                self._break(H2ProtocolError(f"the upstream did not negotiate h2 (ALPN {chosen!r})"))
                return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            self._break(H2ProtocolError(f"HTTP/2 protocol error from the upstream: {e}"))
            return
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                self._data(event)
            elif kind is ResponseReceived:
                self._response(event)
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.trailers = list(event.headers)
                    stream._to_sink("trailers", stream.trailers)
            elif kind is StreamEnded:
                self._ended(event.stream_id)
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
            elif kind is StreamReset:
                self._reset(event.stream_id, event.error_code)
            elif kind is InformationalResponseReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.on_interim is not None:
                    stream.on_interim(_head(event.headers)[0])
            elif kind is PingAckReceived:
                self._pong()
            elif kind is ConnectionTerminated:
                self._goaway(event.last_stream_id, event.error_code)
            if self.closed:
                return
        self._write()

    def _response(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        head, length = _head(event.headers)
        if event.stream_ended is not None:
            length = 0
        response = stream.response = H2Response(stream, head, length)
        stream.result.callback(response)

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length
        if stream is None:
            self.ack(event.stream_id, size)
            return
        if stream._paused:
            stream._unacked += size
        else:
            self.ack(event.stream_id, size)
        if event.data:
            stream._to_sink("data", event.data)

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.response is None:  # END_STREAM on a trailers-only answer comes with its head
            return
        stream.ended = True
        stream._detach_body()
        if stream._out or stream._end_out:
            # The upstream answered before the request body was all sent: stop sending.
            self.forget(stream, ErrorCodes.NO_ERROR)
        else:
            self.forget(stream, None)
        stream._to_sink("done", None)

    def _reset(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if code == ErrorCodes.REFUSED_STREAM and stream.response is None:
            failure = Failure(StreamRefused("stream refused by the upstream"))
        elif stream.response is None:
            failure = Failure(UpstreamReset(code))
        else:
            failure = Failure(
                ConnectionAbortedError(f"stream reset by the upstream ({_code_name(code)})")
            )
        stream._fail(failure, None)

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            waiting = list(self._blocked.values())
        else:
            found = self._blocked.get(stream_id)
            waiting = [found] if found is not None else []
        for stream in waiting:
            self.flush(stream)

    def _goaway(self, last_stream_id: Optional[int], code: int) -> None:
        """The upstream goes away: streams above ``last_stream_id`` were not processed (they
        may go again on another connection); the others run to their end."""
        self.goaway = True
        last = last_stream_id if last_stream_id is not None else 0
        for stream_id, stream in sorted(self.streams.items()):
            if stream_id > last:
                stream._fail(Failure(StreamRefused("upstream sent GOAWAY")), None)
        self._released(self)
        if code != ErrorCodes.NO_ERROR and self.streams:
            why = H2ProtocolError(f"upstream GOAWAY ({_code_name(code)})")
            for stream in list(self.streams.values()):
                stream._fail(Failure(why), None)
        if not self.streams:
            self.close()

    # -- liveness -----------------------------------------------------------------------------

    def _stream_freed(self) -> None:
        if self.closed:
            return
        if self.goaway and not self.streams:
            self.close()
            return
        self._released(self)
        if not self.streams:
            self._became_idle()

    def _became_idle(self) -> None:
        self._idle_since = self.clock.seconds()
        self._disarm_idle()
        interval = min(self.limits.ping_interval_s, self.limits.idle_timeout_s)
        self._idle_timer = self.clock.callLater(interval, self._idle_check)

    def _disarm_idle(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle_check(self) -> None:
        """No stream for a while: close when idle too long, else PING (a dead upstream is
        found now, not by the next request)."""
        self._idle_timer = None
        if self.streams or self.closed:
            return
        if self.clock.seconds() - self._idle_since >= self.limits.idle_timeout_s:
            self.goaway = True
            self._released(self)
            self.close()
            return
        try:
            self.conn.ping(_PING)
        except ProtocolError:
            return
        self._write()
        if self._ping_timer is None:
            self._ping_timer = self.clock.callLater(self.limits.ping_timeout_s, self._no_pong)
        self._idle_timer = self.clock.callLater(self.limits.ping_interval_s, self._idle_check)

    def _pong(self) -> None:
        timer, self._ping_timer = self._ping_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _no_pong(self) -> None:
        self._ping_timer = None
        self._break(UpstreamClosed(None, reused=True), abort=True)

    # -- the connection -----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The upstream's socket is full: every stream's request body waits."""
        self.transport_paused = True
        for stream in list(self.streams.values()):
            stream._pause_body()

    def resumeProducing(self) -> None:
        self.transport_paused = False
        for stream in list(self.streams.values()):
            if stream._out or stream._end_out:
                self.flush(stream)  # resumes its body when little is left queued
                if self.transport_paused:
                    return
            elif stream._out_size <= self.limits.body_high_water:
                stream._resume_body()

    def stopProducing(self) -> None:
        self.abort()

    def _break(self, why: Exception, abort: bool = False) -> None:
        """A connection error: fail every stream with ``why`` and close."""
        self.goaway = True
        for stream in list(self.streams.values()):
            stream._fail(Failure(why), None)
        if abort:
            self.abort()
        else:
            self.close()

    def close(self) -> Deferred[None]:
        """GOAWAY and close (open streams are cut); fires once closed."""
        d: Deferred[None] = Deferred()
        if self.closed or self.transport is None:
            d.callback(None)
            return d
        self._lost.append(d)
        self.goaway = True
        try:
            self.conn.close_connection(error_code=ErrorCodes.NO_ERROR)
            self._write()
        except ProtocolError:
            pass
        self._unregister()
        self.transport.loseConnection()
        if self._close_timer is None:
            # TLS waits for the peer's close_notify, which some never send: not for ever.
            self._close_timer = self.clock.callLater(self.limits.close_timeout_s, self.abort)
        return d

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.goaway = True
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.goaway = True
        self._disarm_idle()
        self._pong()
        timer, self._close_timer = self._close_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        for stream in list(self.streams.values()):
            if stream.result.called:
                stream._fail(reason or Failure(ConnectionAbortedError("connection lost")), None)
            else:
                stream._fail(Failure(UpstreamClosed(reason, self.served > 1)), None)
        self.streams.clear()
        self._blocked.clear()
        self._released(self)
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(None)


def _head(headers: List[Pair]) -> Tuple[ResponseHead, Optional[int]]:
    """The response head of a HEADERS block (``:status`` taken out), and its Content-Length."""
    status = 0
    pairs: List[Pair] = []
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            pairs.append((name, value))
    fields = Fields(pairs)
    head = ResponseHead(status, b"", _VERSION, fields)
    length: Optional[int] = None
    declared = fields.get(b"content-length")
    if declared is not None and declared.isdigit():
        length = head.content_length = int(declared)
    return head, length


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code}"
