"""The HTTP/2 server side: one :class:`H2ServerProtocol` per connection (the ``h2`` library does
the framing, HPACK and the state machines), one :class:`H2Request` per stream.

An :class:`H2Request` is what the request handler already knows from HTTP/1.1
(:class:`avx_twisted.h1.ServerRequest`): the same head attributes, the same
:class:`~avx_twisted.h1.RequestBody`, the same ``respond/start/write/finish/abort`` answer side,
so routing, filters, the forwarder, metrics and logs serve both protocols unchanged.

Flow control follows the other side: request DATA is acknowledged (the client's window
reopened) only while the body's consumer takes it; response bytes wait for the client's window
and pause the upstream that produces them until WINDOW_UPDATE frames make room.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError, TooManyStreamsError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame, RstStreamFrame
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..h1 import BodyFailed, Fields, RequestBody, RequestHead, RequestSide, ResponseState
from ._wire import Wire

Pair = Tuple[bytes, bytes]
log = Logger()

#: The client connection preface (RFC 9113 3.4): how h2c with prior knowledge starts.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Fields that are about one HTTP/1.1 connection and never appear in HTTP/2 (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
_NO_BODY_STATUS = frozenset([204, 304])
_VERSION = b"2.0"


class _ServerConnection(H2Connection):
    """The h2 library's connection, refusing a stream over SETTINGS_MAX_CONCURRENT_STREAMS
    with RST_STREAM REFUSED_STREAM (a stream error, RFC 9113 5.1.2) where the library would
    end the whole connection: the client retries that one stream, the others go on."""

    def _receive_headers_frame(self, frame: Any) -> Any:
        try:
            return super()._receive_headers_frame(frame)
        except TooManyStreamsError:
            try:
                self.decoder.decode(frame.data, raw=True)  # the HPACK state stays in step
            except Exception as e:
                raise ProtocolError("undecodable header block") from e
            if frame.stream_id > self.highest_inbound_stream_id:
                self.highest_inbound_stream_id = frame.stream_id
            refusal = RstStreamFrame(frame.stream_id)
            refusal.error_code = ErrorCodes.REFUSED_STREAM
            return [refusal], []

    #: The last stream id of the graceful GOAWAY sent (None: not sent).
    goaway_last: Optional[int] = None

    def graceful_goaway(self) -> None:
        """GOAWAY NO_ERROR with the last stream id taken (RFC 9113 6.8), leaving the open
        streams to finish: the library's ``close_connection`` would let nothing more be
        sent on them."""
        if self.goaway_last is not None:
            return
        self.goaway_last = self.highest_inbound_stream_id
        self._prepare_for_sending([GoAwayFrame(0, last_stream_id=self.goaway_last)])


class H2Request(RequestSide):
    """One stream: the request as the handler sees it, and its answer."""

    def __init__(
        self, channel: H2ServerProtocol, stream_id: int, head: RequestHead, body: RequestBody
    ) -> None:
        # HTTP/2 heads are keep-alive (close_after stays False) and have no upgrade.
        super().__init__(channel, head, body)
        self.stream_id = stream_id
        self._pending: List[bytes] = []
        self._pending_size = 0
        self._end_pending = False
        #: A head with no body waits for the end, to go in one frame with END_STREAM (a
        #: gRPC trailers-only answer stays one); the trailers go last.
        self._head: Optional[List[Pair]] = None
        self._trailers: Optional[List[Pair]] = None
        self._producer: Any = None
        self._producer_paused = False
        #: Request DATA bytes received and not yet acknowledged (while the body is paused).
        self._unacked = 0
        self._reading_paused = False
        #: Resets the stream after ``stream_idle_timeout_s`` without frames either way.
        self._idle: Any = None

    # -- what the request is ------------------------------------------------------------------

    @property
    def version(self) -> bytes:
        return _VERSION

    # -- answering ----------------------------------------------------------------------------

    def start(
        self,
        status: int,
        fields: Iterable[Pair],
        length: Optional[int],
        reason: Optional[bytes] = None,
        add_date: bool = False,
    ) -> None:
        """Send the response HEADERS (``reason`` does not exist in HTTP/2)."""
        if self.state is not ResponseState.PENDING:
            raise RuntimeError("response already started")
        self.state = ResponseState.STREAMING
        self.status = status
        channel = self.channel
        out: List[Pair] = [(b":status", b"%d" % status)]
        for name, value in list(fields) + self.response_fields.pairs:
            lower = name.lower()
            if lower in _CONNECTION_SPECIFIC:
                continue
            out.append((lower, value))
        if add_date:
            out.append((b"date", channel.factory.date.value()))
        server = channel.factory.server_header
        if server is not None:
            out.append((b"server", server))
        no_body = status in _NO_BODY_STATUS or self.method == b"HEAD"
        if length and status not in _NO_BODY_STATUS:
            out.append((b"content-length", b"%d" % length))
        self._no_body = no_body
        if no_body or length == 0:
            self._head = out
            return
        channel.send_headers(self, out, end_stream=False)

    def write(self, data: bytes) -> None:
        if self.state is not ResponseState.STREAMING or self._no_body or not data:
            return
        head, self._head = self._head, None
        if head is not None:  # said to have no body, yet it has one: the head goes first
            self.channel.send_headers(self, head, end_stream=False)
        self.sent_bytes += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        self.channel.flush(self)

    def set_trailers(self, trailers: List[Pair]) -> None:
        """Send ``trailers`` after the body (HEADERS with END_STREAM, RFC 9113 8.1)."""
        self._trailers = [
            (n.lower(), v)
            for n, v in trailers
            if n[:1] != b":" and n.lower() not in _CONNECTION_SPECIFIC
        ]

    def finish(self) -> None:
        if self.state is not ResponseState.STREAMING:
            return
        self.state = ResponseState.DONE
        head, self._head = self._head, None
        if head is not None:
            trailers = self._trailers
            self.channel.send_headers(self, head, end_stream=not trailers)
            if trailers:
                self._trailers = None
                self.channel.send_headers(self, trailers, end_stream=True)
            self.channel.request_done(self, None)
            return
        self._end_pending = True
        self.channel.flush(self)
        self.channel.request_done(self, None)

    def abort(self) -> None:
        """Reset this stream (the connection and its other streams go on)."""
        if self.finished:
            return
        self.state = ResponseState.ABORTED
        self.channel.reset(self, ErrorCodes.INTERNAL_ERROR)
        self.channel.request_done(self, Failure(ConnectionAbortedError("response aborted")))

    def interim(self, status: int, fields: Iterable[Pair]) -> None:
        """An informational answer (103 Early Hints) before the final one."""
        if self.state is ResponseState.PENDING:
            out = [(b":status", b"%d" % status)]
            out += [(n.lower(), v) for n, v in fields if n.lower() not in _CONNECTION_SPECIFIC]
            self.channel.send_headers(self, out, end_stream=False)

    def register_producer(self, producer: Any) -> None:
        """``producer`` (an upstream) is paused while this stream's bytes wait for window."""
        self._producer = producer
        self._producer_paused = False
        if self._pending_size or self.channel.transport_paused:
            self._pause_producer()

    def unregister_producer(self) -> None:
        self._producer = None
        self._producer_paused = False

    def _pause_producer(self) -> None:
        producer = self._producer
        if producer is not None and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()

    def _resume_producer(self) -> None:
        producer = self._producer
        if producer is not None and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def __repr__(self) -> str:
        return f"<H2Request {self.stream_id} {self.method!r} {self.target!r} {self.state.value}>"


@implementer(IPushProducer)
class H2ServerProtocol(Wire, Protocol):
    """One HTTP/2 client connection (after ALPN ``h2``, or the h2c preface)."""

    factory: Any
    protocol_name = "h2"

    def __init__(self) -> None:
        self.streams: Dict[int, H2Request] = {}
        self.secure = False
        self.transport_paused = False
        self.tls_info: Any = None
        self._peer_host: Optional[str] = None
        self._blocked: Dict[int, H2Request] = {}
        self._idle_timer: Any = None
        self._closed = False
        #: Streams the client reset, and streams answered (Rapid Reset, CVE-2023-44487).
        self.client_resets = 0
        self.answered = 0
        #: Control frames (PING, SETTINGS) in the current window, and when it began.
        self._control = 0
        self._control_since = 0.0

    # -- connection events ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.limits = factory.limits
        self.h2_limits = factory.h2_limits
        self.clock = factory.clock
        self.secure = ISSLTransport.providedBy(self.transport)
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=True,
            normalize_outbound_headers=True,
        )
        conn = self.conn = _ServerConnection(config=config)
        conn.initiate_connection()
        # After the preface: values given before initiate_connection would take effect
        # here when acknowledged, without ever having been sent.
        conn.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: self.h2_limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.h2_limits.max_header_list_bytes,
                SettingCodes.ENABLE_PUSH: 0,
            }
        )
        self._register()
        factory.connection_made(self)
        self._write()
        self._arm_idle()

    @property
    def peer_host(self) -> str:
        host = self._peer_host
        if host is None:
            peer = self.transport.getPeer() if self.transport is not None else None
            host = self._peer_host = getattr(peer, "host", "") or ""
        return host

    @property
    def draining(self) -> bool:
        return bool(self.factory.draining)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            log.info("HTTP/2 protocol error from {client}: {error}", client=self.peer_host, error=e)
            self._write()
            self._close()
            return
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                self._request(event)
            elif kind is DataReceived:
                self._data(event)
            elif kind is StreamEnded:
                request = self.streams.get(event.stream_id)
                if request is not None:
                    request.body.data_done()
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
            elif kind is StreamReset:
                self._stream_reset(event.stream_id)
                if self._rapid_reset():
                    return
            elif kind is PingReceived or kind is RemoteSettingsChanged:
                if self._control_flood():
                    return
            elif kind is TrailersReceived:
                request = self.streams.get(event.stream_id)
                if request is not None:  # request trailers are not forwarded (HTTP/1.1 upstreams)
                    request.body.data_done()
            elif kind is ConnectionTerminated:
                self._write()
                self._close()
                return
        self._write()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self.factory.connection_lost(self)
        streams, self.streams = self.streams, {}
        for request in streams.values():
            self._forget(request)
            request.client_lost(reason)

    # -- streams --------------------------------------------------------------------------------

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        last = self.conn.goaway_last
        if last is not None and stream_id > last:
            # Opened after our GOAWAY: not processed, the client may send it elsewhere.
            self._ack_reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        method = target = authority = b""
        fields: List[Pair] = []
        cookies: List[bytes] = []
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    target = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)  # RFC 9113 8.2.3: one field again for HTTP/1.1
                continue
            fields.append((name, value))
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        head_fields = Fields(fields)
        if authority and not head_fields.has(b"host"):
            head_fields.add(b"host", authority)
        head = RequestHead(method, target, _VERSION, head_fields)
        head.authority = authority or head_fields.get(b"host")
        head.path, _, head.query = target.partition(b"?")
        ended = event.stream_ended is not None
        declared: Optional[int] = None
        length = head_fields.get(b"content-length")
        if length is not None and length.isdigit():
            declared = int(length)
        head.content_length = declared
        chunked = not ended and declared is None
        head.chunked = chunked
        request: H2Request

        def pause() -> None:
            request._reading_paused = True

        def resume() -> None:
            request._reading_paused = False
            unacked, request._unacked = request._unacked, 0
            if unacked and stream_id in self.streams:
                self._ack(stream_id, unacked)
                self._write()

        body = RequestBody(
            0 if ended and declared is None else declared,
            chunked,
            self.limits.body_high_water,
            pause,
            resume,
            _nothing,
        )
        request = H2Request(self, stream_id, head, body)
        self.streams[stream_id] = request
        request._idle = self.clock.callLater(
            self.h2_limits.stream_idle_timeout_s, self._stream_idle, stream_id
        )
        self._disarm_idle()
        handler = self.factory.handler
        if declared is not None and declared > self.limits.max_body_bytes:
            handler.refused(request, 413, "request body too large")
            return
        request.handled = True
        handler.handle(request)

    def _data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        request = self.streams.get(stream_id)
        size = event.flow_controlled_length
        if request is None:
            self._ack(stream_id, size)
            return
        self._touch(request)
        body = request.body
        if body.received + len(event.data) > self.limits.max_body_bytes:
            body.fail(BodyFailed(413, "request body too large"))
            self.reset(request, ErrorCodes.CANCEL)
            return
        body.data_received(event.data)
        if request._reading_paused:
            request._unacked += size
        else:
            self._ack(stream_id, size)

    def _touch(self, request: H2Request) -> None:
        timer = request._idle
        if timer is not None and timer.active():
            timer.reset(self.h2_limits.stream_idle_timeout_s)

    def _stream_idle(self, stream_id: int) -> None:
        """No frame either way for ``stream_idle_timeout_s``: reset the stream."""
        request = self.streams.pop(stream_id, None)
        if request is None:
            return
        request._idle = None
        self._blocked.pop(stream_id, None)
        try:
            self.conn.reset_stream(stream_id, error_code=ErrorCodes.CANCEL)
        except (StreamClosedError, ProtocolError):
            pass
        self._write()
        request.client_lost(Failure(TimeoutError("HTTP/2 stream idle timeout")))
        self._maybe_idle()

    @staticmethod
    def _forget(request: H2Request) -> None:
        timer, request._idle = request._idle, None
        if timer is not None and timer.active():
            timer.cancel()

    def _ack(self, stream_id: int, size: int) -> None:
        try:
            self.conn.acknowledge_received_data(size, stream_id)
        except (StreamClosedError, ProtocolError):
            pass

    def _rapid_reset(self) -> bool:
        """A client that resets far more streams than it lets finish is opening and resetting
        streams to make the gateway work for nothing (Rapid Reset): GOAWAY and close."""
        self.client_resets += 1
        limits = self.h2_limits
        if self.client_resets <= limits.max_resets or self.client_resets <= 2 * self.answered:
            return False
        log.warn(
            "HTTP/2 client {client} reset {resets} streams ({answered} answered): closing "
            "(rapid reset)",
            client=self.peer_host,
            resets=self.client_resets,
            answered=self.answered,
        )
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        return True

    def _control_flood(self) -> bool:
        """More than ``max_control_frames_per_s`` PING/SETTINGS frames in a second: each one
        makes the gateway write an ACK, so a client that sends them without reading fills our
        buffers (the 2019 ping and settings floods)."""
        now = self.clock.seconds()
        if now - self._control_since >= 1.0:
            self._control_since, self._control = now, 0
        self._control += 1
        if self._control <= self.h2_limits.max_control_frames_per_s:
            return False
        log.warn("HTTP/2 client {client}: PING/SETTINGS flood, closing", client=self.peer_host)
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        return True

    def _goaway(self, code: int) -> None:
        try:
            self.conn.close_connection(error_code=code)
        except ProtocolError:
            pass
        self._write()
        self._close()

    def _ack_reset(self, stream_id: int, code: int) -> None:
        try:
            self.conn.reset_stream(stream_id, error_code=code)
        except (StreamClosedError, ProtocolError):
            pass

    def _stream_reset(self, stream_id: int) -> None:
        request = self.streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        if request is not None:
            self._forget(request)
            request.client_lost(Failure(ConnectionAbortedError("stream reset by the client")))
        self._maybe_idle()

    # -- answers --------------------------------------------------------------------------------

    def send_headers(self, request: H2Request, fields: List[Pair], end_stream: bool) -> None:
        self._touch(request)
        try:
            self.conn.send_headers(request.stream_id, fields, end_stream=end_stream)
        except (StreamClosedError, ProtocolError) as e:
            log.info("HTTP/2 headers not sent on stream {id}: {e}", id=request.stream_id, e=e)
            return
        if not self.transport_paused:
            self._write()

    def flush(self, request: H2Request) -> None:
        """Send what the stream has pending, as far as the flow-control windows allow."""
        stream_id = request.stream_id
        conn = self.conn
        try:
            # While the socket is full, bytes wait here (the upstream paused), not in the
            # library's send buffer: a client with a huge window cannot make us hold more.
            while request._pending and not self.transport_paused:
                window = conn.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                chunk = request._pending[0]
                size = min(window, conn.max_outbound_frame_size, len(chunk))
                if size < len(chunk):
                    request._pending[0] = chunk[size:]
                    chunk = chunk[:size]
                else:
                    request._pending.pop(0)
                request._pending_size -= size
                conn.send_data(stream_id, chunk)
                self._touch(request)
            if not request._pending and request._end_pending:
                request._end_pending = False
                trailers, request._trailers = request._trailers, None
                if trailers:
                    conn.send_headers(stream_id, trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
                if request.on_done is None:  # answered: the stream is over once sent
                    self.stream_answered(request)
        except (StreamClosedError, ProtocolError):
            request._pending = []
            request._pending_size = 0
            self._blocked.pop(stream_id, None)
            return
        if request._pending:
            self._blocked[stream_id] = request
            request._pause_producer()
        else:
            self._blocked.pop(stream_id, None)
            if not self.transport_paused:
                request._resume_producer()
        if not self.transport_paused:
            self._write()

    def stream_answered(self, request: H2Request) -> None:
        """The answer is all sent: the stream is over."""
        self.streams.pop(request.stream_id, None)
        self._forget(request)
        self._maybe_idle()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            waiting = list(self._blocked.values())
        else:
            found = self._blocked.get(stream_id)
            waiting = [found] if found is not None else []
        for request in waiting:
            self.flush(request)

    def reset(self, request: H2Request, code: int) -> None:
        self._blocked.pop(request.stream_id, None)
        try:
            self.conn.reset_stream(request.stream_id, error_code=code)
        except (StreamClosedError, ProtocolError):
            pass
        self._write()

    def request_done(self, request: H2Request, reason: Optional[Failure]) -> None:
        self.answered += 1
        done, request.on_done = request.on_done, None
        if done is not None:
            done(request, reason)
        if not request._pending:
            self.streams.pop(request.stream_id, None)
            self._forget(request)
        self._maybe_idle()

    # -- the connection ---------------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The client's socket is full: every stream's upstream waits."""
        self.transport_paused = True
        for request in list(self.streams.values()):
            request._pause_producer()

    def resumeProducing(self) -> None:
        self.transport_paused = False
        self._write()
        for request in list(self.streams.values()):
            if request._pending or request._end_pending:
                self.flush(request)
                if self.transport_paused:
                    return
            else:
                request._resume_producer()

    def stopProducing(self) -> None:
        self._close()

    def close_idle(self) -> bool:
        """A drain (or a reload): GOAWAY with the last stream id taken; the open streams
        finish, then the connection closes."""
        if self._closed:
            return True
        self.conn.graceful_goaway()
        self._write()
        if not self.streams:
            self._unregister()
            self.transport.loseConnection()
            return True
        return False

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self._unregister()
            self.transport.loseConnection()

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle_timer = self.clock.callLater(self.h2_limits.idle_timeout_s, self._idle_timeout)

    def _disarm_idle(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _maybe_idle(self) -> None:
        if self._closed or self.streams:
            return
        if self.draining or self.conn.goaway_last is not None:
            self.close_idle()
            return
        self._arm_idle()

    def _idle_timeout(self) -> None:
        self._idle_timer = None
        if not self.streams:
            self.close_idle()


def _nothing() -> None:
    pass
