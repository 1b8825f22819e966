"""The HTTP/2 server core without sockets: an ``h2`` client connection on one side, the
gateway's protocol on a StringTransport on the other, a handler recording what it is given."""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet.testing import MemoryReactorClock, StringTransport

from avx_twisted.h1 import ServerFactory, ServerLimits
from avx_twisted.h2 import PREFACE, H2Limits, H2ServerProtocol
from avx_twisted.h2._client import _ClientConnection


class Handler:
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.refusals: list[tuple[Any, int]] = []
        self.answer = True

    def handle(self, request: Any) -> None:
        self.requests.append(request)
        if self.answer:
            request.respond(200, [(b"Content-Type", b"text/plain"), (b"Connection", b"x")], b"ok")

    def refused(self, request: Any, status: int, message: str) -> None:
        self.refusals.append((request, status))
        request.respond(status, [], message.encode())


class Producer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


class Pair:
    """A client H2Connection wired to a server protocol through byte buffers."""

    def __init__(
        self,
        limits: ServerLimits | None = None,
        window: int | None = None,
        client: type[H2Connection] = H2Connection,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.handler = Handler()
        factory = ServerFactory(self.handler, self.clock, limits or ServerLimits())
        factory.h2_protocol = H2ServerProtocol
        factory.h2_limits = H2Limits(max_concurrent_streams=5)
        self.factory = factory
        self.server = H2ServerProtocol()
        self.server.factory = factory
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.client = client(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.events: list[Any] = []
        self.pump()

    def pump(self) -> list[Any]:
        """Move bytes both ways until nothing is left; returns the client's new events."""
        new: list[Any] = []
        for _ in range(20):
            moved = False
            out = self.client.data_to_send()
            if out:
                self.server.dataReceived(out)
                moved = True
            back = self.transport.value()
            if back:
                self.transport.clear()
                new += self.client.receive_data(back)
                moved = True
            if not moved:
                break
        self.events += new
        return new

    def get(
        self, path: bytes = b"/", extra: list[tuple[bytes, bytes]] | None = None, end: bool = True
    ) -> int:
        stream = self.client.get_next_available_stream_id()
        headers = [
            (b":method", b"GET" if end else b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            (b":path", path),
        ] + (extra or [])
        self.client.send_headers(stream, headers, end_stream=end)
        self.pump()
        return stream


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def test_a_stream_is_a_request_with_the_http11_interface():
    p = Pair()
    p.get(b"/a/b?x=1", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"user-agent", b"t")])
    request = p.handler.requests[0]
    assert (request.method, request.path, request.query) == (b"GET", b"/a/b", b"x=1")
    assert request.authority == b"example.test"
    assert request.version == b"2.0"
    assert request.fields.get(b"host") == b"example.test"
    assert request.fields.get(b"cookie") == b"a=1; b=2"
    assert request.body.complete
    response = of(p.events, ResponseReceived)[0]
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert b"connection" not in headers  # connection-specific fields never go out
    assert headers[b"content-length"] == b"2"
    assert b"".join(e.data for e in of(p.events, DataReceived)) == b"ok"
    assert of(p.events, StreamEnded)


def test_request_body_flow_control_follows_the_consumer():
    p = Pair(limits=ServerLimits(body_high_water=10))
    p.handler.answer = False
    stream = p.get(b"/up", end=False)
    request = p.handler.requests[0]
    assert not request.body.complete and request.body.chunked
    window = p.client.local_flow_control_window(stream)
    p.client.send_data(stream, b"x" * 1000)
    p.pump()
    # Past the high-water mark with no consumer: the client's window is not reopened.
    assert p.client.local_flow_control_window(stream) == window - 1000
    received: list[bytes] = []

    class Consumer:
        def write(self, data: bytes) -> None:
            received.append(data)

        def finish(self) -> None:
            received.append(b"<end>")

        def fail(self, failure: Any) -> None:
            received.append(b"<fail>")

    request.body.attach(Consumer())
    p.pump()
    p.client.send_data(stream, b"y" * 10, end_stream=True)
    p.pump()
    assert b"".join(received) == b"x" * 1000 + b"y" * 10 + b"<end>"


def test_response_bytes_wait_for_the_window_and_pause_the_producer():
    p = Pair(window=100)
    p.handler.answer = False
    stream = p.get(b"/big")
    request = p.handler.requests[0]
    producer = Producer()
    request.start(200, [], 1000)
    request.register_producer(producer)
    request.write(b"z" * 1000)
    p.pump()
    got = sum(len(e.data) for e in of(p.events, DataReceived))
    assert got == 100
    assert producer.paused == 1
    p.client.increment_flow_control_window(2000, stream_id=stream)
    p.client.increment_flow_control_window(2000)
    p.pump()
    got = sum(len(e.data) for e in of(p.events, DataReceived))
    assert got == 1000
    assert producer.resumed == 1
    request.finish()
    p.pump()
    assert of(p.events, StreamEnded)


def test_a_reset_stream_tells_the_request_and_others_go_on():
    p = Pair()
    p.handler.answer = False
    first = p.get(b"/one")
    p.get(b"/two")
    one, two = p.handler.requests
    lost: list[Any] = []
    one.on_done = lambda request, failure: lost.append(failure)
    p.client.reset_stream(first)
    p.pump()
    assert one.finished and lost and lost[0] is not None
    two.respond(200, [], b"fine")
    p.pump()
    assert b"".join(e.data for e in of(p.events, DataReceived)) == b"fine"


def test_abort_resets_only_its_stream():
    p = Pair()
    p.handler.answer = False
    stream = p.get(b"/x")
    request = p.handler.requests[0]
    request.start(200, [], None)
    request.abort()
    p.pump()
    assert [e.stream_id for e in of(p.events, StreamReset)] == [stream]
    assert not p.transport.disconnecting


def test_a_declared_body_over_the_limit_is_refused_413():
    p = Pair(limits=ServerLimits(max_body_bytes=100))
    p.get(b"/up", [(b"content-length", b"1000")], end=False)
    assert [status for _, status in p.handler.refusals] == [413]
    response = of(p.events, ResponseReceived)[0]
    assert dict(response.headers)[b":status"] == b"413"


def test_drain_sends_goaway_and_closes_when_idle():
    p = Pair()
    p.get(b"/")
    assert p.server.close_idle()
    p.pump()
    assert of(p.events, ConnectionTerminated)
    assert p.transport.disconnecting


def test_goaway_lets_open_streams_finish_and_refuses_later_ones():
    # The client side must read on after a graceful GOAWAY (the gateway's own client does).
    p = Pair(client=_ClientConnection)
    p.handler.answer = False
    first = p.get(b"/slow")
    assert not p.server.close_idle()  # a stream is open: GOAWAY now, close later
    p.pump()
    (goaway,) = of(p.events, ConnectionTerminated)
    assert goaway.last_stream_id == first
    later = p.get(b"/later")  # opened after the GOAWAY: refused, never handled
    assert [e.stream_id for e in of(p.events, StreamReset)] == [later]
    assert len(p.handler.requests) == 1
    assert not p.transport.disconnecting
    p.handler.requests[0].respond(200, [], b"finished")
    p.pump()
    assert b"".join(e.data for e in of(p.events, DataReceived)) == b"finished"
    assert p.transport.disconnecting


def test_a_reload_sends_goaway_to_http2_connections_only():
    p = Pair(client=_ClientConnection)
    p.get(b"/")
    p.factory.connections.add(p.server)
    p.factory.go_away()
    p.pump()
    assert of(p.events, ConnectionTerminated)
    assert p.transport.disconnecting  # nothing was open
    assert p.factory.count("h2") == 1 and p.factory.count("http/1.1") == 0


def test_a_protocol_error_closes_the_connection():
    p = Pair()
    p.server.dataReceived(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # bad frame
    assert p.transport.disconnecting


def test_the_http11_protocol_hands_a_preface_over_in_pieces():
    clock = MemoryReactorClock()
    handler = Handler()
    factory = ServerFactory(handler, clock, ServerLimits())
    factory.h2_protocol = H2ServerProtocol
    factory.h2_limits = H2Limits()
    site = factory.with_h2c()
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/p")],
        end_stream=True,
    )
    data = client.data_to_send()
    assert data.startswith(PREFACE)
    protocol.dataReceived(data[:5])
    protocol.dataReceived(data[5:])
    assert protocol.h2 is not None
    assert [r.path for r in handler.requests] == [b"/p"]
    events = client.receive_data(transport.value())
    assert of(events, ResponseReceived)


def test_without_h2c_the_preface_is_an_http11_error():
    clock = MemoryReactorClock()
    handler = Handler()
    factory = ServerFactory(handler, clock, ServerLimits())
    factory.h2_protocol = H2ServerProtocol
    factory.h2_limits = H2Limits()
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(PREFACE)
    assert protocol.h2 is None
    assert not handler.requests


def test_rapid_reset_gets_goaway():
    p = Pair()
    p.handler.answer = False
    for _ in range(101):
        stream = p.get(b"/r")
        p.client.reset_stream(stream)
        p.pump()
        if p.transport.disconnecting:
            break
    terminated = of(p.events, ConnectionTerminated)
    assert terminated and terminated[0].error_code == 11  # ENHANCE_YOUR_CALM
    assert p.server.client_resets == 101


def test_resets_among_answered_streams_are_fine():
    p = Pair()
    for _ in range(60):
        p.get(b"/ok")  # answered at once
    p.handler.answer = False
    for _ in range(110):
        p.client.reset_stream(p.get(b"/r"))
        p.pump()
    assert not of(p.events, ConnectionTerminated)
    assert not p.transport.disconnecting


def test_ping_flood_gets_goaway_but_pings_spread_out_do_not():
    p = Pair()
    for i in range(150):
        p.client.ping(b"%08d" % i)
        p.pump()
        p.clock.advance(0.05)  # 20 a second
    assert not p.transport.disconnecting
    for i in range(150):
        p.client.ping(b"%08d" % i)
    p.pump()
    terminated = of(p.events, ConnectionTerminated)
    assert terminated and terminated[0].error_code == 11


def test_a_stream_without_frames_for_the_idle_timeout_is_reset():
    p = Pair()
    p.server.h2_limits = H2Limits(stream_idle_timeout_s=5.0)
    p.handler.answer = False
    stream = p.get(b"/slow", end=False)
    request = p.handler.requests[0]
    lost: list[Any] = []
    request.on_done = lambda r, failure: lost.append(failure)
    p.clock.advance(4)
    p.client.send_data(stream, b"x")  # a frame: the clock starts again
    p.pump()
    p.clock.advance(4)
    assert not lost
    p.clock.advance(1.5)
    p.pump()
    assert lost and [e.stream_id for e in of(p.events, StreamReset)] == [stream]
    assert not p.transport.disconnecting


def test_answered_streams_leave_no_timer_behind():
    p = Pair()
    p.get(b"/a")
    p.get(b"/b")
    assert p.server.streams == {}
    assert [c for c in p.clock.getDelayedCalls() if c.active()] == [p.server._idle_timer]


def test_the_limits_are_advertised():
    p = Pair()
    assert p.client.remote_settings.max_concurrent_streams == 5
    assert p.client.remote_settings.max_header_list_size == H2Limits().max_header_list_bytes
    assert p.client.remote_settings.enable_push == 0


def test_streams_over_the_limit_are_refused_one_by_one():
    p = Pair()  # max_concurrent_streams = 5
    p.handler.answer = False
    # A client that ignores the limit we advertised (this one is told it is 1000).
    p.client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
    p.client.remote_settings.acknowledge()
    streams = [p.get(b"/%d" % i) for i in range(7)]
    refused = [e.stream_id for e in of(p.events, StreamReset)]
    assert refused == streams[5:]
    assert all(e.error_code == 7 for e in of(p.events, StreamReset))  # REFUSED_STREAM
    assert len(p.handler.requests) == 5
    assert not p.transport.disconnecting
    # An open stream finishing makes room again.
    p.handler.requests[0].respond(200, [], b"")
    p.pump()
    p.handler.answer = True
    p.get(b"/later", [(b"x-check", b"hpack-in-step")])
    assert p.handler.requests[-1].fields.get(b"x-check") == b"hpack-in-step"


def test_a_continuation_flood_is_cut_off():
    """The 2024 CONTINUATION flood: a header block that never ends is not buffered forever."""
    p = Pair()
    headers = HeadersFrame(1)
    headers.data = p.client.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    )
    p.server.dataReceived(headers.serialize())  # no END_HEADERS
    sent = 0
    while not p.transport.disconnecting and sent < 1000:
        frame = ContinuationFrame(1)
        frame.data = b"\x00" * 16000
        p.server.dataReceived(frame.serialize())
        sent += 1
    assert p.transport.disconnecting
    assert sent <= 100  # at most ~1.6 MB before the connection is closed
    assert not p.handler.requests


def test_a_header_list_over_the_advertised_size_ends_the_connection():
    p = Pair()  # SETTINGS_MAX_HEADER_LIST_SIZE 65536 (H2Limits' default)
    p.handler.answer = False
    p.get(b"/", [(b"x-big-%d" % i, b"v" * 1000) for i in range(80)])  # ~80 KB decoded
    assert not p.handler.requests
    terminated = of(p.events, ConnectionTerminated)
    assert terminated and terminated[0].error_code == 11  # ENHANCE_YOUR_CALM
    small = Pair()
    small.get(b"/", [(b"x-ok-%d" % i, b"v" * 1000) for i in range(40)])
    assert len(small.handler.requests) == 1


def test_connection_specific_and_bad_pseudo_headers_are_refused():
    """RFC 9113 8.2.2 and 8.3: a request carrying HTTP/1.1 connection fields, or a pseudo-header
    it must not have, is malformed: never handled, the connection gets GOAWAY."""
    bad_heads = [
        [(b"connection", b"keep-alive")],
        [(b"transfer-encoding", b"chunked")],
        [(b"te", b"gzip")],
        [(b":status", b"200")],
    ]
    for extra in bad_heads:
        p = Pair()
        p.client.config.validate_outbound_headers = False  # a client that breaks the rules
        p.client.config.normalize_outbound_headers = False
        stream = p.client.get_next_available_stream_id()
        head = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            (b":path", b"/"),
        ]
        p.client.send_headers(stream, head + extra, end_stream=True)
        p.pump()
        assert p.handler.requests == [], extra
        assert of(p.events, ConnectionTerminated) or p.transport.disconnecting, extra
    # ``te: trailers`` is the one TE allowed (gRPC sends it).
    p = Pair()
    p.get(b"/ok", [(b"te", b"trailers")])
    assert [r.path for r in p.handler.requests] == [b"/ok"]


def test_a_full_socket_keeps_response_bytes_on_the_stream_not_in_the_library():
    """A client with a huge window cannot make the gateway buffer more than the stream's
    pending bytes: while the socket is full nothing moves into h2's send buffer and the
    upstream stays paused; resuming sends it all."""
    p = Pair()
    p.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    p.client.increment_flow_control_window(2**30)
    p.handler.answer = False
    p.get(b"/big")
    (request,) = p.handler.requests
    upstream = Producer()
    request.start(200, [], None)
    request.register_producer(upstream)
    p.pump()
    p.server.pauseProducing()
    request.write(b"x" * 300000)
    assert p.transport.value() == b""
    assert p.server.conn.data_to_send() == b""
    assert request._pending_size == 300000 and upstream.paused == 1
    p.server.resumeProducing()
    p.pump()
    assert sum(len(e.data) for e in of(p.events, DataReceived)) == 300000
    assert upstream.resumed == 1
