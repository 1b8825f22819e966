"""Tests for avx_twisted.h1._client: one upstream connection, one exchange at a time, over a
StringTransport (and one pair joined in memory with iosim)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avx_twisted.h1 import (
    BodyFailed,
    ClientLimits,
    ClientProtocol,
    ClientState,
    IResponseSink,
    ProtocolViolation,
    RequestBody,
    ResponseHead,
    UpstreamClosed,
    UpstreamResponse,
)

GET = b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: up\r\n\r\n"
POST_CHUNKED = b"POST /x HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
POST_LENGTH = b"POST /x HTTP/1.1\r\nHost: up\r\nContent-Length: 6\r\n\r\n"
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n3\r\nyou\r\n0\r\n\r\n"
)
OK_UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\n\r\nhello"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@implementer(IResponseSink)
class Sink:
    """Records what a response body did."""

    def __init__(self) -> None:
        self.pieces: List[bytes] = []
        self.done = 0
        self.failures: List[Any] = []

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def body_data(self, data: bytes) -> None:
        self.pieces.append(data)

    def body_done(self) -> None:
        self.done += 1

    def body_failed(self, reason: Any) -> None:
        self.failures.append(reason)


class WriteCountingTransport(StringTransport):
    """A StringTransport that also keeps each write apart."""

    def __init__(self) -> None:
        super().__init__(lenient=True)
        self.writes: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class ClientTestCase(SynchronousTestCase):
    """A connected ClientProtocol whose ``released`` calls are recorded with the state then."""

    limits = ClientLimits()

    def setUp(self) -> None:
        self.released: List[ClientState] = []
        self.protocol = ClientProtocol(self.limits, self.record_release)
        self.transport = WriteCountingTransport()
        self.protocol.makeConnection(self.transport)

    def record_release(self, protocol: ClientProtocol) -> None:
        self.assertIs(protocol, self.protocol)
        self.released.append(protocol.state)

    def send(self, head: bytes = GET, method: bytes = b"GET", **kw: Any) -> Deferred[Any]:
        self.transport.clear()
        del self.transport.writes[:]
        return self.protocol.request(head, method, **kw)

    def respond(
        self, raw: bytes, head: bytes = GET, method: bytes = b"GET", **kw: Any
    ) -> Tuple[UpstreamResponse, Sink]:
        """One exchange: the request, ``raw`` back, the body delivered to a new sink."""
        d = self.send(head, method, **kw)
        self.protocol.dataReceived(raw)
        response = self.successResultOf(d)
        sink = Sink()
        response.deliver(sink)
        return response, sink

    def lose(self, reason: Exception) -> None:
        self.protocol.connectionLost(Failure(reason))

    def assert_pooled(self) -> None:
        """Released as IDLE and left open."""
        self.assertEqual(self.released, [ClientState.IDLE])
        self.assertIs(self.protocol.state, ClientState.IDLE)
        self.assertFalse(self.transport.disconnecting)

    def assert_closed_not_pooled(self, aborted: bool) -> None:
        self.assertNotIn(ClientState.IDLE, self.released)
        self.assertIs(self.protocol.state, ClientState.CLOSED)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.disconnected, aborted)


class SinkTests(SynchronousTestCase):
    def test_the_test_sink_provides_the_sink_interface(self) -> None:
        verifyObject(IResponseSink, Sink())


class RequestTests(ClientTestCase):
    """The request goes out as given."""

    def test_request_head_is_written_in_one_write(self) -> None:
        self.send(GET)
        self.assertEqual(self.transport.writes, [GET])
        self.assertIs(self.protocol.state, ClientState.WAITING)

    def test_a_second_request_while_one_is_pending_is_refused(self) -> None:
        self.send()
        self.assertRaises(RuntimeError, self.protocol.request, GET, b"GET")


class FramingTests(ClientTestCase):
    """Each framing of a response body ends where it should, and only there."""

    def test_content_length_body_is_delivered_then_done(self) -> None:
        response, sink = self.respond(OK_HI + b"")
        self.assertEqual((response.status, response.length), (200, 2))
        self.assertEqual(response.fields.get(b"content-length"), b"2")
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hi", 1, []))
        self.assert_pooled()

    def test_chunked_body_is_decoded_then_done(self) -> None:
        response, sink = self.respond(OK_CHUNKED)
        self.assertIsNone(response.length)
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hiyou", 1, []))
        self.assert_pooled()

    def test_body_split_over_reads_is_delivered_as_it_comes(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        self.assertNoResult(d)
        self.protocol.dataReceived(b"Length: 5\r\n\r\nab")
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual((sink.body, sink.done), (b"ab", 0))
        self.assertEqual(self.released, [])
        self.protocol.dataReceived(b"cde")
        self.assertEqual((sink.body, sink.done), (b"abcde", 1))
        self.assert_pooled()

    def test_body_that_arrived_before_deliver_is_handed_over_at_deliver(self) -> None:
        d = self.send()
        self.protocol.dataReceived(OK_HI)
        self.assertEqual(self.released, [])  # nobody took the body yet
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual((sink.body, sink.done), (b"hi", 1))
        self.assert_pooled()

    def test_close_delimited_body_ends_with_a_clean_close(self) -> None:
        response, sink = self.respond(OK_UNTIL_CLOSE)
        self.assertIsNone(response.length)
        self.protocol.dataReceived(b" world")
        self.assertEqual((sink.body, sink.done), (b"hello world", 0))
        self.lose(ConnectionDone())
        self.assertEqual((sink.done, sink.failures), (1, []))
        self.assertEqual(self.released, [ClientState.CLOSED])

    def test_close_delimited_body_ended_before_deliver_is_done_at_deliver(self) -> None:
        d = self.send()
        self.protocol.dataReceived(OK_UNTIL_CLOSE)
        self.lose(ConnectionDone())
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hello", 1, []))

    def test_close_delimited_body_broken_off_by_a_reset_fails(self) -> None:
        for reason in (ConnectionLost(), ConnectionAborted()):
            with self.subTest(reason=type(reason).__name__):
                self.setUp()
                _, sink = self.respond(OK_UNTIL_CLOSE)
                self.lose(reason)
                self.assertEqual(sink.done, 0)
                self.assertEqual(len(sink.failures), 1)
                self.assertIs(sink.failures[0].value, reason)
                self.assertEqual(self.released, [ClientState.CLOSED])

    def test_close_delimited_body_reset_before_deliver_fails_at_deliver(self) -> None:
        d = self.send()
        self.protocol.dataReceived(OK_UNTIL_CLOSE)
        self.lose(ConnectionLost())
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual((sink.body, sink.done), (b"hello", 0))
        self.assertTrue(sink.failures[0].check(ConnectionLost))

    def test_framed_body_cut_off_by_any_close_fails(self) -> None:
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", ConnectionDone()),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", ConnectionLost()),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n", ConnectionDone()),
        ]
        for raw, reason in cases:
            with self.subTest(raw=raw, reason=type(reason).__name__):
                self.setUp()
                _, sink = self.respond(raw)
                self.lose(reason)
                self.assertEqual(sink.done, 0)
                self.assertEqual(len(sink.failures), 1)
                self.assertEqual(self.released, [ClientState.CLOSED])

    def test_head_response_ends_at_its_head_despite_content_length(self) -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        response, sink = self.respond(raw, HEAD, b"HEAD")
        self.assertEqual(response.length, 0)
        self.assertEqual(response.head.content_length, 1234)
        self.assertEqual((sink.body, sink.done), (b"", 1))
        self.assert_pooled()

    def test_a_second_exchange_after_a_head_response_parses_afresh(self) -> None:
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", HEAD, b"HEAD")
        response, sink = self.respond(OK_HI)
        self.assertEqual((response.status, sink.body, sink.done), (200, b"hi", 1))
        self.assertEqual(self.released, [ClientState.IDLE, ClientState.IDLE])

    def test_chunked_head_response_ends_at_its_head(self) -> None:
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        _, sink = self.respond(raw, HEAD, b"HEAD")
        self.assertEqual(sink.done, 1)
        self.assert_pooled()

    def test_204_and_304_have_no_body_whatever_they_declare(self) -> None:
        for status in (b"204 No Content", b"304 Not Modified"):
            with self.subTest(status=status):
                self.setUp()
                raw = b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n"
                response, sink = self.respond(raw)
                self.assertEqual(response.length, 0)
                self.assertEqual((sink.body, sink.done), (b"", 1))
                self.assert_pooled()
                response, sink = self.respond(OK_HI)  # nothing was taken for a body
                self.assertEqual(sink.body, b"hi")


class InterimTests(ClientTestCase):
    """1xx heads before the final one: 100 is skipped, others handed to ``on_interim``."""

    def test_100_is_skipped_and_the_final_response_follows(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertNoResult(d)
        self.assertIs(self.protocol.state, ClientState.WAITING)
        self.protocol.dataReceived(OK_HI)
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual((sink.body, sink.done), (b"hi", 1))
        self.assert_pooled()

    def test_every_interim_head_goes_to_on_interim_which_picks(self) -> None:
        # The client hands on every 1xx; dropping 100 is the caller's choice (the forwarder
        # passes only 103 on to its client).
        seen: List[ResponseHead] = []
        d = self.send(on_interim=seen.append)
        self.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HI)
        self.assertEqual([h.status for h in seen], [100])
        self.assertEqual(self.successResultOf(d).status, 200)

    def test_103_goes_to_on_interim_then_the_final_response(self) -> None:
        seen: List[ResponseHead] = []
        d = self.send(on_interim=seen.append)
        self.protocol.dataReceived(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK_HI
        )
        self.assertEqual([h.status for h in seen], [103])
        self.assertEqual(seen[0].fields.get(b"link"), b"</a.css>; rel=preload")
        response = self.successResultOf(d)
        self.assertEqual(response.status, 200)
        sink = Sink()
        response.deliver(sink)
        self.assertEqual(sink.body, b"hi")
        self.assert_pooled()

    def test_interim_heads_without_a_listener_are_skipped(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n")
        self.assertNoResult(d)
        self.protocol.dataReceived(OK_HI)
        self.assertEqual(self.successResultOf(d).status, 200)

    def test_connection_lost_after_an_interim_head_is_a_cut_off_response(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.lose(ConnectionDone())
        failure = self.failureResultOf(d, ProtocolViolation)
        self.assertEqual(failure.value.status, 502)


class UpgradeTests(ClientTestCase):
    """A 101 hands the connection over; the bytes after its head belong to the new protocol."""

    def test_101_switches_to_tunnel_with_the_rest_of_the_read(self) -> None:
        d = self.send()
        self.protocol.dataReceived(SWITCHING + b"\x81\x02hi")
        response = self.successResultOf(d)
        self.assertEqual(response.status, 101)
        self.assertEqual(response.fields.get(b"upgrade"), b"websocket")
        self.assertEqual(response.rest, b"\x81\x02hi")
        self.assertIs(self.protocol.state, ClientState.TUNNEL)
        self.assertEqual(self.released, [])

    def test_101_alone_in_a_read_has_no_rest_and_later_bytes_go_to_the_tunnel(self) -> None:
        received: List[Tuple[Any, bytes]] = []

        class FakeTunnel:
            def data_from(self, side: Any, data: bytes) -> None:
                received.append((side, data))

        d = self.send()
        self.protocol.dataReceived(SWITCHING)
        self.assertEqual(self.successResultOf(d).rest, b"")
        self.protocol.tunnel = FakeTunnel()
        self.protocol.dataReceived(b"frame")
        self.assertEqual(received, [(self.protocol, b"frame")])

    def test_101_without_upgrade_field_is_a_violation(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertEqual(self.failureResultOf(d, ProtocolViolation).value.status, 502)
        self.assertTrue(self.transport.disconnected)


class ReuseTests(ClientTestCase):
    """Pooled only after a whole, consistently framed response with nothing after it."""

    def test_not_released_before_the_body_ended(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        self.successResultOf(d).deliver(Sink())
        self.assertEqual(self.released, [])
        self.assertIs(self.protocol.state, ClientState.RECEIVING)

    def test_reused_connection_says_so(self) -> None:
        self.assertFalse(self.protocol.reused)
        self.respond(OK_HI)
        self.assertTrue(self.protocol.reused)

    def test_another_response_in_the_same_read_closes_the_connection(self) -> None:
        _, sink = self.respond(OK_HI + OK_HI)
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hi", 1, []))
        self.assert_closed_not_pooled(aborted=False)

    def test_garbage_after_a_whole_response_closes_the_connection(self) -> None:
        _, sink = self.respond(OK_HI + b"XYZ")
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hi", 1, []))
        self.assertNotIn(ClientState.IDLE, self.released)
        self.assertIs(self.protocol.state, ClientState.CLOSED)
        self.assertTrue(self.transport.disconnecting)

    def test_garbage_after_a_whole_undelivered_response_closes_the_connection(self) -> None:
        d = self.send()
        self.protocol.dataReceived(OK_HI)
        self.protocol.dataReceived(b"XYZ")  # the body was not taken yet
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.lose(ConnectionAborted())
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hi", 1, []))
        self.assertNotIn(ClientState.IDLE, self.released)

    def test_bytes_on_the_idle_connection_abort_it(self) -> None:
        self.respond(OK_HI)
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertIs(self.protocol.state, ClientState.CLOSED)
        self.assertTrue(self.transport.disconnected)
        self.lose(ConnectionAborted())
        self.assertEqual(self.released, [ClientState.IDLE, ClientState.CLOSED])

    def test_connection_close_from_the_upstream_is_not_reused(self) -> None:
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        _, sink = self.respond(raw)
        self.assertEqual((sink.body, sink.done), (b"hi", 1))
        self.assert_closed_not_pooled(aborted=False)

    def test_http_10_response_without_keep_alive_is_not_reused(self) -> None:
        _, sink = self.respond(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(sink.done, 1)
        self.assert_closed_not_pooled(aborted=False)

    def test_released_again_as_closed_when_the_connection_goes(self) -> None:
        self.respond(OK_HI)
        self.lose(ConnectionDone())
        self.assertEqual(self.released, [ClientState.IDLE, ClientState.CLOSED])

    def test_losing_an_idle_connection_cancels_its_idle_timer(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        self.respond(OK_HI)
        self.protocol.idle_timer = clock.callLater(60, lambda: None)
        self.lose(ConnectionDone())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(self.protocol.idle_timer)


class ViolationTests(ClientTestCase):
    """Bad framing from the upstream: 502, and the connection is aborted."""

    def test_bad_heads_errback_with_502_and_abort(self) -> None:
        cases = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ]
        for raw in cases:
            with self.subTest(raw=raw):
                self.setUp()
                d = self.send()
                self.protocol.dataReceived(raw)
                failure = self.failureResultOf(d, ProtocolViolation)
                self.assertEqual(failure.value.status, 502)
                self.assert_closed_not_pooled(aborted=True)
                self.lose(ConnectionAborted())
                self.assertEqual(self.released, [ClientState.CLOSED])

    def test_bad_chunk_framing_fails_the_body_and_aborts(self) -> None:
        _, sink = self.respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n"
        )
        self.assertEqual((sink.body, sink.done), (b"hi", 0))
        self.assertEqual(sink.failures[0].value.status, 502)
        self.assert_closed_not_pooled(aborted=True)

    def test_bad_chunk_framing_before_deliver_fails_the_body_at_deliver(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.lose(ConnectionAborted())
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual(sink.done, 0)
        self.assertTrue(sink.failures[0].check(ProtocolViolation))

    def test_oversized_response_head_is_a_violation(self) -> None:
        self.limits = ClientLimits(max_header_bytes=64, max_status_line_bytes=32)
        self.setUp()
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200 + b"\r\n\r\n")
        self.assertEqual(self.failureResultOf(d, ProtocolViolation).value.status, 502)
        self.assertTrue(self.transport.disconnected)


class ConnectionLostTests(ClientTestCase):
    """The connection going before a response: whoever waits learns how."""

    def test_lost_before_any_byte_of_a_fresh_connection(self) -> None:
        d = self.send()
        self.lose(ConnectionDone())
        failure = self.failureResultOf(d, UpstreamClosed)
        self.assertFalse(failure.value.reused)
        self.assertTrue(failure.value.reason.check(ConnectionDone))
        self.assertEqual(self.released, [ClientState.CLOSED])

    def test_lost_before_any_byte_of_a_reused_connection(self) -> None:
        self.respond(OK_HI)
        d = self.send()
        self.lose(ConnectionLost())
        self.assertTrue(self.failureResultOf(d, UpstreamClosed).value.reused)

    def test_lost_in_the_middle_of_the_head(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        self.lose(ConnectionDone())
        failure = self.failureResultOf(d, ProtocolViolation)
        self.assertEqual(failure.value.status, 502)

    def test_cancel_aborts_the_connection(self) -> None:
        d = self.send()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.transport.disconnected)
        self.assertIs(self.protocol.state, ClientState.CLOSED)
        self.lose(ConnectionAborted())
        self.assertEqual(self.released, [ClientState.CLOSED])

    def test_close_fires_once_the_connection_is_lost(self) -> None:
        self.respond(OK_HI)
        d = self.protocol.close()
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.assertNoResult(d)
        self.lose(ConnectionDone())
        self.assertIsNone(self.successResultOf(d))

    def test_close_of_a_never_connected_protocol_fires_at_once(self) -> None:
        protocol = ClientProtocol(ClientLimits(), lambda p: None)
        self.assertIsNone(self.successResultOf(protocol.close()))


class BodyControl:
    """The client-side callbacks of a RequestBody, recorded."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def make(self, declared: Optional[int] = None, chunked: bool = True) -> RequestBody:
        return RequestBody(
            declared,
            chunked,
            16,
            lambda: self.calls.append("pause"),
            lambda: self.calls.append("resume"),
            lambda: self.calls.append("wanted"),
        )


class RequestBodyTests(ClientTestCase):
    """A streamed request body: framed as asked, flow-controlled, and stopped when it must."""

    def setUp(self) -> None:
        super().setUp()
        self.control = BodyControl()

    def test_chunked_body_is_streamed_in_chunks_then_the_last_chunk(self) -> None:
        body = self.control.make()
        body.data_received(b"early")
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.assertEqual(self.control.calls, ["wanted"])
        self.assertIs(self.transport.producer, body)
        self.assertTrue(self.transport.streaming)
        body.data_received(b"more")
        body.data_done()
        self.assertEqual(
            self.transport.value(), POST_CHUNKED + b"5\r\nearly\r\n4\r\nmore\r\n0\r\n\r\n"
        )
        self.assertIsNone(self.transport.producer)
        self.protocol.dataReceived(OK_HI)
        self.successResultOf(d).deliver(Sink())
        self.assert_pooled()

    def test_content_length_body_is_streamed_as_is(self) -> None:
        body = self.control.make(declared=6, chunked=False)
        d = self.send(POST_LENGTH, b"POST", stream=body)
        body.data_received(b"abc")
        body.data_received(b"def")
        body.data_done()
        self.assertEqual(self.transport.value(), POST_LENGTH + b"abcdef")
        self.assertFalse(body.replayable)
        self.protocol.dataReceived(OK_HI)
        self.successResultOf(d).deliver(Sink())
        self.assert_pooled()

    def test_body_complete_before_the_request_is_written_whole(self) -> None:
        body = self.control.make(declared=6, chunked=False)
        body.data_received(b"abcdef")
        body.data_done()
        self.send(POST_LENGTH, b"POST", stream=body)
        self.assertEqual(self.transport.writes, [POST_LENGTH, b"abcdef"])
        self.assertIsNone(self.transport.producer)
        self.assertTrue(body.replayable)

    def test_body_ending_while_paused_lets_go_of_the_client(self) -> None:
        # The last bytes can come in the read whose write filled the upstream's buffer: once
        # the body is sent, the upstream can no longer resume it, so it is resumed now.
        body = self.control.make()
        self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.transport.producer.pauseProducing()
        body.data_received(b"tail")
        body.data_done()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.control.calls, ["wanted", "pause", "resume"])
        self.assertTrue(self.transport.value().endswith(b"4\r\ntail\r\n0\r\n\r\n"))

    def test_upstream_backpressure_pauses_the_body_source(self) -> None:
        body = self.control.make()
        self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.transport.producer.pauseProducing()
        self.assertEqual(self.control.calls, ["wanted", "pause"])
        self.transport.producer.resumeProducing()
        self.assertEqual(self.control.calls, ["wanted", "pause", "resume"])

    def test_body_failing_aborts_and_errbacks_the_pending_request(self) -> None:
        body = self.control.make()
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        body.data_received(b"part")
        body.fail(BodyFailed(413, "request body too large"))
        failure = self.failureResultOf(d, BodyFailed)
        self.assertEqual(failure.value.status, 413)
        self.assertNotIn(b"0\r\n\r\n", self.transport.value())  # never looks complete
        self.assertIsNone(self.transport.producer)
        self.assert_closed_not_pooled(aborted=True)
        self.lose(ConnectionAborted())
        self.assertEqual(self.released, [ClientState.CLOSED])

    def test_body_failing_after_the_response_head_fails_the_response_body(self) -> None:
        body = self.control.make()
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        body.fail(BodyFailed(408, "request body timed out"))
        self.assertTrue(self.transport.disconnected)
        self.lose(ConnectionAborted())
        self.assertEqual(sink.done, 0)
        self.assertEqual(len(sink.failures), 1)
        self.assertNotIn(ClientState.IDLE, self.released)

    def test_early_complete_response_stops_the_body_and_is_not_reused(self) -> None:
        body = self.control.make()
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        body.data_received(b"part")
        self.protocol.dataReceived(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 2\r\n\r\nno")
        sink = Sink()
        response = self.successResultOf(d)
        response.deliver(sink)
        self.assertEqual((response.status, sink.body, sink.done), (413, b"no", 1))
        self.assertIsNone(self.transport.producer)
        sent = self.transport.value()
        body.data_received(b"late")
        body.data_done()
        self.assertEqual(self.transport.value(), sent)  # nothing more went up
        self.assertNotIn(b"0\r\n\r\n", sent)
        self.assert_closed_not_pooled(aborted=False)

    def test_early_response_delivered_after_the_body_ended_is_reused(self) -> None:
        body = self.control.make()
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.protocol.dataReceived(OK_HI)
        body.data_done()  # the whole request went out after all
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        self.assertEqual(sink.done, 1)
        self.assert_pooled()

    def test_connection_lost_while_streaming_stops_the_body(self) -> None:
        body = self.control.make()
        d = self.send(POST_CHUNKED, b"POST", stream=body, chunked=True)
        self.transport.producer.pauseProducing()
        self.lose(ConnectionLost())
        self.assertTrue(self.failureResultOf(d, UpstreamClosed))
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.control.calls, ["wanted", "pause", "resume"])
        sent = self.transport.value()
        body.data_received(b"late")
        body.data_done()
        self.assertEqual(self.transport.value(), sent)


class ResponseProducerTests(ClientTestCase):
    """``response.producer`` pauses the upstream only while its exchange lasts."""

    def test_producer_pauses_the_transport_until_the_exchange_ends(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        response = self.successResultOf(d)
        response.deliver(Sink())
        response.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        response.producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        response.producer.pauseProducing()
        self.protocol.dataReceived(b"cd")
        self.assert_pooled()
        self.assertEqual(self.transport.producerState, "producing")  # resumed at the end
        response.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "producing")  # and detached

    def test_producer_is_detached_when_the_connection_is_lost(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        response = self.successResultOf(d)
        response.deliver(Sink())
        self.lose(ConnectionLost())
        response.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_abort_of_the_response_fails_its_body(self) -> None:
        d = self.send()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        response = self.successResultOf(d)
        sink = Sink()
        response.deliver(sink)
        response.producer.pauseProducing()
        response.abort()
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.transport.producerState, "producing")
        self.lose(ConnectionAborted())
        self.assertEqual(sink.done, 0)
        self.assertEqual(len(sink.failures), 1)
        self.assertEqual(self.released, [ClientState.CLOSED])


class Upstream(Protocol):
    """An in-memory upstream answering each request head with ``answer``."""

    answer = OK_HI

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        while b"\r\n\r\n" in self.received:
            _, self.received = self.received.split(b"\r\n\r\n", 1)
            self.transport.write(self.answer)


class InMemoryPairTests(SynchronousTestCase):
    """The client joined to an upstream protocol with iosim (real disconnect reasons)."""

    def setUp(self) -> None:
        self.released: List[ClientState] = []
        self.client = ClientProtocol(ClientLimits(), lambda p: self.released.append(p.state))
        self.server = Upstream()
        self.pump = iosim.connect(
            self.server,
            iosim.makeFakeServer(self.server),
            self.client,
            iosim.makeFakeClient(self.client),
        )

    def exchange(self) -> Sink:
        d = self.client.request(GET, b"GET")
        self.pump.flush()
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        return sink

    def test_two_exchanges_over_one_connection(self) -> None:
        for _ in range(2):
            sink = self.exchange()
            self.assertEqual((sink.body, sink.done), (b"hi", 1))
        self.assertEqual(self.released, [ClientState.IDLE, ClientState.IDLE])

    def test_upstream_closing_ends_a_close_delimited_body(self) -> None:
        self.server.answer = OK_UNTIL_CLOSE
        sink = self.exchange()
        self.server.transport.loseConnection()
        self.pump.flush()
        self.assertEqual((sink.body, sink.done, sink.failures), (b"hello", 1, []))
        self.assertEqual(self.released, [ClientState.CLOSED])

    def test_upstream_closing_an_idle_connection_is_reported(self) -> None:
        self.exchange()
        self.server.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.released, [ClientState.IDLE, ClientState.CLOSED])
        d = self.client.close()
        self.assertIsNone(self.successResultOf(d))
