"""The upstream HTTP/2 side without sockets: the gateway's client protocols on StringTransports,
each facing an ``h2`` server connection that plays the upstream, through the pool."""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.h1 import RequestBody, UpstreamClosed
from avx_twisted.h2 import H2ClientLimits, H2Pool, UpstreamReset

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"up"), (b":path", b"/a")]
POST = [(b":method", b"POST")] + GET[1:]


class Upstream:
    """One upstream connection: an h2 server on the far side of a StringTransport."""

    def __init__(self, protocol: Any, max_streams: int | None = None, pump: bool = True) -> None:
        self.protocol = protocol
        self.transport = StringTransport()
        config = H2Configuration(client_side=False, header_encoding=None)
        self.conn = H2Connection(config=config)
        self.conn.initiate_connection()
        if max_streams is not None:
            self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.events: list[Any] = []
        protocol.makeConnection(self.transport)
        if pump:
            self.pump()

    def pump(self) -> list[Any]:
        """Move bytes both ways until quiet; returns the upstream's new events."""
        new: list[Any] = []
        for _ in range(50):
            moved = False
            sent = self.transport.value()
            if sent:
                self.transport.clear()
                new += self.conn.receive_data(sent)
                moved = True
            back = self.conn.data_to_send()
            if back and not self.protocol.closed:
                self.protocol.dataReceived(back)
                moved = True
            if not moved:
                break
        self.events += new
        return new

    def requests(self) -> list[RequestReceived]:
        return [e for e in self.events if isinstance(e, RequestReceived)]

    def answer(
        self,
        stream_id: int,
        body: bytes = b"",
        trailers: list[tuple[bytes, bytes]] | None = None,
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        head = [(b":status", b"200")] + (fields or [])
        only_head = not body and trailers is None
        self.conn.send_headers(stream_id, head, end_stream=only_head)
        if body:
            self.conn.send_data(stream_id, body, end_stream=trailers is None)
        if trailers is not None:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.pump()


class Endpoint:
    """Connects at once, building an :class:`Upstream` per connection."""

    def __init__(self, max_streams: int | None = None) -> None:
        self.upstreams: list[Upstream] = []
        self.max_streams = max_streams
        #: Whether the upstream's SETTINGS arrive before the first request goes (TLS: not).
        self.pump = True

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        self.upstreams.append(Upstream(protocol, self.max_streams, pump=self.pump))
        return succeed(protocol)


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.done = False
        self.failed: Failure | None = None

    def body_data(self, data: bytes) -> None:
        self.data.append(data)

    def body_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = trailers

    def body_done(self) -> None:
        self.done = True

    def body_failed(self, reason: Failure) -> None:
        self.failed = reason


def body(declared: int | None = None) -> tuple[RequestBody, list[str]]:
    calls: list[str] = []
    made = RequestBody(
        declared,
        declared is None,
        64 * 1024,
        lambda: calls.append("pause"),
        lambda: calls.append("resume"),
        lambda: None,
    )
    return made, calls


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.limits = H2ClientLimits(ping_interval_s=10.0, ping_timeout_s=5.0, idle_timeout_s=60.0)
        self.pool = H2Pool(self.clock, self.limits)
        self.endpoint = Endpoint()

    def send(self, headers: list[tuple[bytes, bytes]] = GET, **kw: Any) -> Any:
        d = self.pool.request("k", self.endpoint, headers, **kw)
        for upstream in self.endpoint.upstreams:
            upstream.pump()
        return d


class ExchangeTests(Case):
    def test_response_body_and_trailers_reach_the_sink(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        (request,) = up.requests()
        self.assertEqual(dict(request.headers)[b":path"], b"/a")
        up.conn.send_headers(request.stream_id, [(b":status", b"200"), (b"content-length", b"5")])
        up.pump()
        response = self.successResultOf(d)
        self.assertEqual((response.status, response.length), (200, 5))
        self.assertEqual(response.head.version, b"2.0")
        sink = Sink()
        response.deliver(sink)
        up.conn.send_data(request.stream_id, b"hello")
        up.conn.send_headers(request.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        up.pump()
        self.assertEqual(b"".join(sink.data), b"hello")
        self.assertEqual(sink.trailers, [(b"grpc-status", b"0")])
        self.assertTrue(sink.done)
        self.assertEqual(up.protocol.streams, {})

    def test_bytes_before_deliver_are_kept(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, b"early", trailers=[(b"x", b"y")])
        response = self.successResultOf(d)
        sink = Sink()
        response.deliver(sink)
        self.assertEqual((sink.data, sink.trailers, sink.done), ([b"early"], [(b"x", b"y")], True))

    def test_trailers_only_answer_has_no_body(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, fields=[(b"grpc-status", b"14"), (b"grpc-message", b"down")])
        response = self.successResultOf(d)
        self.assertEqual(response.length, 0)
        self.assertEqual(response.fields.get(b"grpc-status"), b"14")
        sink = Sink()
        response.deliver(sink)
        self.assertTrue(sink.done)

    def test_whole_body_goes_with_end_stream(self) -> None:
        self.send(POST, data=b"x" * 1000)
        up = self.endpoint.upstreams[0]
        data = b"".join(e.data for e in up.events if isinstance(e, DataReceived))
        self.assertEqual(data, b"x" * 1000)
        self.assertTrue(any(isinstance(e, StreamEnded) for e in up.events))

    def test_streamed_body_pauses_the_client_while_the_window_is_shut(self) -> None:
        streamed, calls = body()
        self.send(POST, body=streamed)
        up = self.endpoint.upstreams[0]
        for _ in range(10):  # 160 KiB: more than the 64 KiB window the upstream opened
            streamed.data_received(b"y" * 16384)
        up.pump()
        self.assertIn("pause", calls)
        got = sum(len(e.data) for e in up.events if isinstance(e, DataReceived))
        self.assertEqual(got, 65535)
        # The upstream reads: its WINDOW_UPDATEs let the rest go, and the client resumes.
        for e in list(up.events):
            if isinstance(e, DataReceived):
                up.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        up.pump()
        for e in list(up.events[-20:]):
            if isinstance(e, DataReceived):
                up.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        up.pump()
        streamed.data_done()
        up.pump()
        got = sum(len(e.data) for e in up.events if isinstance(e, DataReceived))
        self.assertEqual(got, 10 * 16384)
        self.assertEqual(calls[-1], "resume")
        self.assertTrue(any(isinstance(e, StreamEnded) for e in up.events))

    def test_paused_response_is_not_acknowledged(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.conn.send_headers(1, [(b":status", b"200")])
        up.pump()
        response = self.successResultOf(d)
        sink = Sink()
        response.deliver(sink)
        response.producer.pauseProducing()
        window = up.conn.local_flow_control_window(1)
        sent = 40 * 16000  # past half the 1 MiB stream window: worth a WINDOW_UPDATE
        for _ in range(40):
            up.conn.send_data(1, b"z" * 16000)
        up.pump()
        self.assertEqual(up.conn.local_flow_control_window(1), window - sent)
        self.assertEqual(len(b"".join(sink.data)), sent)  # delivered, just not acknowledged
        response.producer.resumeProducing()
        up.pump()
        self.assertTrue(any(isinstance(e, WindowUpdated) for e in up.events))
        self.assertGreater(up.conn.local_flow_control_window(1), window - sent)

    def test_cancel_resets_the_stream_and_keeps_the_connection(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        d.cancel()
        self.failureResultOf(d)
        up.pump()
        (reset,) = [e for e in up.events if isinstance(e, StreamReset)]
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)
        self.assertFalse(up.protocol.closed)
        self.send()
        self.assertEqual(len(self.endpoint.upstreams), 1)  # the same connection again

    def test_reset_before_the_head_is_an_upstream_reset(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.conn.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        up.pump()
        self.failureResultOf(d, UpstreamReset)

    def test_reset_mid_body_fails_the_sink(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.conn.send_headers(1, [(b":status", b"200")])
        up.pump()
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        up.conn.send_data(1, b"part")
        up.conn.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        up.pump()
        self.assertIsNotNone(sink.failed)
        self.assertFalse(sink.done)

    def test_connection_lost_mid_body_fails_the_sink(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.conn.send_headers(1, [(b":status", b"200")])
        up.pump()
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        up.protocol.connectionLost(Failure(ConnectionResetError("gone")))
        self.assertIsNotNone(sink.failed)

    def test_connection_lost_before_any_answer(self) -> None:
        d = self.send()
        self.endpoint.upstreams[0].protocol.connectionLost(Failure(ConnectionResetError("x")))
        self.failureResultOf(d, UpstreamClosed)

    def test_no_alpn_h2_is_refused(self) -> None:
        protocol_factory = self.pool._factories
        self.assertEqual(protocol_factory, {})
        self.endpoint.pump = False  # the handshake is not done when the request is written
        d = self.pool.request("t", self.endpoint, GET, tls=True)
        up = self.endpoint.upstreams[0]
        up.transport.negotiatedProtocol = b"http/1.1"
        up.pump()
        failure = self.failureResultOf(d)
        self.assertIn("did not negotiate h2", failure.getErrorMessage())


class PoolTests(Case):
    def test_streams_share_one_connection(self) -> None:
        for _ in range(10):
            self.send()
        self.assertEqual(len(self.endpoint.upstreams), 1)
        self.assertEqual(len(self.endpoint.upstreams[0].requests()), 10)

    def test_a_full_connection_makes_another(self) -> None:
        self.endpoint.max_streams = 2
        for _ in range(3):  # the first connection's SETTINGS say 2
            self.send()
        up = self.endpoint.upstreams
        self.assertEqual(len(up), 2)
        self.assertEqual([len(u.requests()) for u in up], [2, 1])

    def test_at_the_connection_cap_requests_wait_for_a_stream(self) -> None:
        self.pool = H2Pool(self.clock, H2ClientLimits(max_connections_per_key=1))
        self.endpoint.max_streams = 1
        first = self.send()
        second = self.send()
        up = self.endpoint.upstreams
        self.assertEqual((len(up), len(up[0].requests())), (1, 1))
        self.assertNoResult(second)
        up[0].answer(1, b"done")
        self.successResultOf(first).deliver(Sink())
        up[0].pump()
        self.assertEqual(len(up[0].requests()), 2)
        up[0].answer(3, b"second")
        self.assertEqual(self.successResultOf(second).status, 200)

    def test_refused_stream_goes_again(self) -> None:
        d = self.send()
        up = self.endpoint.upstreams[0]
        up.conn.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        up.pump()
        self.assertNoResult(d)
        self.assertEqual(len(up.requests()), 2)
        up.answer(3, b"ok")
        self.assertEqual(self.successResultOf(d).status, 200)

    def test_goaway_sends_unprocessed_streams_on_a_new_connection(self) -> None:
        first = self.send()
        second = self.send()
        up = self.endpoint.upstreams[0]
        goaway = GoAwayFrame(0, last_stream_id=1)  # by hand: h2 sends nothing after its own
        up.protocol.dataReceived(goaway.serialize())
        up.pump()
        self.assertEqual(len(self.endpoint.upstreams), 2)
        fresh = self.endpoint.upstreams[1]
        fresh.pump()
        self.assertEqual(len(fresh.requests()), 1)
        fresh.answer(1, b"again")
        self.assertEqual(self.successResultOf(second).status, 200)
        up.answer(1, b"first")  # stream 1 was processed: it ends on the old connection
        sink = Sink()
        self.successResultOf(first).deliver(sink)
        self.assertTrue(sink.done)
        self.assertTrue(up.transport.disconnecting)  # nothing left on it: closed
        self.send()
        self.assertEqual(len(fresh.requests()), 2)  # new requests never go to the old one

    def test_stale_idempotent_request_goes_again_once(self) -> None:
        self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, b"a")
        d = self.send(resend=True)
        up.protocol.connectionLost(Failure(ConnectionResetError("idle close")))
        self.assertNoResult(d)
        self.assertEqual(len(self.endpoint.upstreams), 2)

    def test_close_says_goaway(self) -> None:
        self.send()
        up = self.endpoint.upstreams[0]
        self.pool.close()
        up.pump()
        self.assertTrue(any(isinstance(e, ConnectionTerminated) for e in up.events))
        self.assertTrue(up.transport.disconnecting)


class LivenessTests(Case):
    def test_idle_connection_is_pinged_and_kept_when_it_answers(self) -> None:
        self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, b"a")
        self.clock.advance(10)
        up.pump()  # the PING, and its ACK back
        self.assertTrue(any(isinstance(e, PingReceived) for e in up.events))
        self.clock.advance(5)
        self.assertFalse(up.transport.disconnecting)

    def test_idle_connection_that_does_not_answer_a_ping_is_dropped(self) -> None:
        self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, b"a")
        self.clock.advance(10)
        self.assertIn(b"avx-ping", up.transport.value())  # sent, never answered
        self.clock.advance(5)
        self.assertTrue(up.protocol.transport.disconnected or up.transport.disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.upstreams), 2)

    def test_idle_connection_is_closed_after_the_idle_timeout(self) -> None:
        self.send()
        up = self.endpoint.upstreams[0]
        up.answer(1, b"a")
        for _ in range(6):
            self.clock.advance(10)
            up.pump()
        self.assertTrue(up.transport.disconnecting)


class CloseTests(Case):
    def test_a_peer_that_never_finishes_closing_is_aborted(self) -> None:
        pending = self.send()
        up = self.endpoint.upstreams[0]
        closing = self.pool.close()
        self.assertTrue(up.transport.disconnecting)
        self.assertNoResult(closing)
        self.clock.advance(self.limits.close_timeout_s)
        self.assertTrue(up.transport.disconnected)  # abortConnection
        up.protocol.connectionLost(Failure(ConnectionResetError("aborted")))
        self.successResultOf(closing)
        self.failureResultOf(pending, UpstreamClosed)  # cut by the close
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
