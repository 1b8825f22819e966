"""Tests for avx_twisted.h1._pool: idle connections per key, newest first, capped and expired,
one resend of an idempotent request found stale; a fake endpoint, no sockets."""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.h1 import (
    ClientLimits,
    ClientProtocol,
    ClientState,
    ProtocolViolation,
    RequestBody,
    UpstreamClosed,
    UpstreamPool,
)

GET = b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 3\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Sink:
    def __init__(self) -> None:
        self.body = b""
        self.done = 0
        self.failures: List[Any] = []

    def body_data(self, data: bytes) -> None:
        self.body += data

    def body_done(self) -> None:
        self.done += 1

    def body_failed(self, reason: Any) -> None:
        self.failures.append(reason)


class Attempt:
    """One connection attempt of the fake endpoint; ``succeed`` connects it."""

    def __init__(self, protocol: ClientProtocol, connect_on_cancel: bool = False) -> None:
        self.protocol = protocol
        self.transport = StringTransport(lenient=True)
        self.cancelled = False
        self.connect_on_cancel = connect_on_cancel
        self.deferred: Deferred[ClientProtocol] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancelled = True
        if self.connect_on_cancel:
            self.succeed()

    def succeed(self) -> ClientProtocol:
        self.protocol.makeConnection(self.transport)
        self.deferred.callback(self.protocol)
        return self.protocol

    def lose(self, reason: Optional[Exception] = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class FakeEndpoint:
    """Builds the protocol with the factory, as endpoints do, and waits to be told to connect."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.connect_on_cancel = False
        self.attempts: List[Attempt] = []

    def connect(self, factory: Any) -> Deferred[ClientProtocol]:
        attempt = Attempt(factory.buildProtocol(None), self.connect_on_cancel)
        self.attempts.append(attempt)
        if self.auto:
            attempt.succeed()
        return attempt.deferred


class PoolTestCase(SynchronousTestCase):
    limits = ClientLimits(max_idle_per_key=4, idle_timeout_s=30.0)

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.pool = UpstreamPool(self.clock, self.limits)
        self.endpoint = FakeEndpoint()

    def send(self, key: Any = "a", head: bytes = GET, **kw: Any) -> Deferred[Any]:
        return self.pool.request(key, self.endpoint, head, kw.pop("method", b"GET"), **kw)

    def answer(self, attempt: Attempt, d: Deferred[Any], raw: bytes = OK) -> Sink:
        attempt.protocol.dataReceived(raw)
        sink = Sink()
        self.successResultOf(d).deliver(sink)
        return sink

    def exchange(self, key: Any = "a") -> Attempt:
        """One whole request through the pool; returns the attempt whose connection served it."""
        d = self.send(key)
        attempt = self.serving()
        sink = self.answer(attempt, d)
        self.assertEqual(sink.done, 1)
        return attempt

    def serving(self) -> Attempt:
        """The attempt whose transport got the newest request head."""
        for attempt in self.endpoint.attempts:
            if attempt.protocol.state is ClientState.WAITING:
                return attempt
        raise AssertionError("no connection is waiting for a response")


class ReuseTests(PoolTestCase):
    def test_built_protocols_carry_the_pool_key_and_limits(self) -> None:
        self.send("k")
        protocol = self.endpoint.attempts[0].protocol
        self.assertEqual(protocol.pool_key, "k")
        self.assertIs(protocol.limits, self.limits)

    def test_an_idle_connection_is_reused(self) -> None:
        first = self.exchange()
        self.assertEqual(self.pool.idle_count("a"), 1)
        first.transport.clear()
        second = self.exchange()
        self.assertIs(second, first)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(first.transport.value(), GET)
        self.assertEqual(self.pool.idle_count("a"), 1)

    def test_keys_do_not_share_connections(self) -> None:
        self.exchange("a")
        self.exchange("b")
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertEqual((self.pool.idle_count("a"), self.pool.idle_count("b")), (1, 1))

    def test_the_newest_idle_connection_is_taken_first(self) -> None:
        d1, d2 = self.send(), self.send()
        older, newer = self.endpoint.attempts
        self.answer(older, d1)
        self.answer(newer, d2)
        self.assertEqual(self.pool.idle_count("a"), 2)
        self.send()
        self.assertIs(newer.protocol.state, ClientState.WAITING)
        self.assertIs(older.protocol.state, ClientState.IDLE)

    def test_idle_connections_beyond_the_cap_are_closed(self) -> None:
        self.pool = UpstreamPool(self.clock, ClientLimits(max_idle_per_key=1))
        d1, d2 = self.send(), self.send()
        first, second = self.endpoint.attempts
        self.answer(first, d1)
        self.answer(second, d2)
        self.assertEqual(self.pool.idle_count("a"), 1)
        self.assertFalse(first.transport.disconnecting)
        self.assertTrue(second.transport.disconnecting)
        second.lose()
        self.assertEqual(self.pool.idle_count("a"), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the kept one's idle timer

    def test_a_connection_not_reusable_is_not_pooled(self) -> None:
        d = self.send()
        attempt = self.endpoint.attempts[0]
        self.answer(
            attempt, d, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.pool.idle_count("a"), 0)
        self.assertTrue(attempt.transport.disconnecting)
        attempt.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.exchange()
        self.assertEqual(len(self.endpoint.attempts), 2)


class IdleTests(PoolTestCase):
    def test_idle_connection_is_closed_after_the_idle_timeout(self) -> None:
        attempt = self.exchange()
        self.clock.advance(29)
        self.assertFalse(attempt.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(attempt.transport.disconnecting)
        self.assertEqual(self.pool.idle_count("a"), 0)
        attempt.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_taking_a_connection_stops_its_idle_timer(self) -> None:
        attempt = self.exchange()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.send()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(attempt.transport.disconnecting)

    def test_idle_timer_restarts_with_each_release(self) -> None:
        attempt = self.exchange()
        self.clock.advance(20)
        self.exchange()
        self.clock.advance(20)
        self.assertFalse(attempt.transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(attempt.transport.disconnecting)

    def test_connection_closing_while_idle_is_forgotten(self) -> None:
        attempt = self.exchange()
        attempt.lose(ConnectionLost())
        self.assertEqual(self.pool.idle_count("a"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.exchange()
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_connection_aborted_for_stray_bytes_is_never_taken(self) -> None:
        attempt = self.exchange()
        attempt.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")  # unasked: aborted at once
        self.assertTrue(attempt.transport.disconnected)
        self.exchange()  # its connectionLost has not come yet: still not taken
        self.assertEqual(len(self.endpoint.attempts), 2)
        attempt.lose(ConnectionAborted())
        self.assertEqual(self.pool.idle_count("a"), 1)


class StaleRetryTests(PoolTestCase):
    """A reused connection closed before any response byte: the upstream timed it out."""

    def stale(self, **kw: Any) -> Deferred[Any]:
        """A request on a reused connection, which then closes before answering."""
        self.exchange()
        d = self.send(**kw)
        self.endpoint.attempts[0].lose()
        return d

    def test_idempotent_request_is_sent_again_on_a_fresh_connection(self) -> None:
        d = self.stale(resend=True)
        self.assertEqual(len(self.endpoint.attempts), 2)
        fresh = self.endpoint.attempts[1]
        self.assertEqual(fresh.transport.value(), GET)
        sink = self.answer(fresh, d)
        self.assertEqual((sink.body, sink.done), (b"ok", 1))
        self.assertEqual(self.pool.idle_count("a"), 1)

    def test_resent_only_once(self) -> None:
        d = self.stale(resend=True)
        self.endpoint.attempts[1].lose()
        failure = self.failureResultOf(d, UpstreamClosed)
        self.assertFalse(failure.value.reused)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_not_resent_unless_asked(self) -> None:
        d = self.stale(resend=False)
        self.assertTrue(self.failureResultOf(d, UpstreamClosed).value.reused)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_fresh_connection_closed_before_answering_is_not_resent(self) -> None:
        d = self.send(resend=True)
        self.endpoint.attempts[0].lose()
        self.assertFalse(self.failureResultOf(d, UpstreamClosed).value.reused)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_not_resent_after_part_of_a_response(self) -> None:
        self.exchange()
        d = self.send(resend=True)
        self.endpoint.attempts[0].protocol.dataReceived(b"HTTP/1.1 200")
        self.endpoint.attempts[0].lose()
        self.failureResultOf(d, ProtocolViolation)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_streamed_body_is_not_resent(self) -> None:
        body = RequestBody(3, False, 16, lambda: None, lambda: None, lambda: None)
        d = self.stale(head=POST, method=b"POST", stream=body, resend=True)
        self.assertFalse(body.replayable)
        self.failureResultOf(d, UpstreamClosed)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_body_buffered_whole_is_resent_with_it(self) -> None:
        body = RequestBody(3, False, 16, lambda: None, lambda: None, lambda: None)
        body.data_received(b"abc")
        body.data_done()
        d = self.stale(head=POST, method=b"POST", stream=body, resend=True)
        fresh = self.endpoint.attempts[1]
        self.assertEqual(fresh.transport.value(), POST + b"abc")
        self.assertEqual(self.answer(fresh, d).done, 1)


class CancelTests(PoolTestCase):
    def test_cancel_while_connecting_cancels_the_connect(self) -> None:
        self.endpoint.auto = False
        d = self.send()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.endpoint.attempts[0].cancelled)

    def test_a_connection_made_as_the_connect_is_cancelled_is_closed_unused(self) -> None:
        self.endpoint.auto = False
        self.endpoint.connect_on_cancel = True  # the connection won the race
        d = self.send()
        attempt = self.endpoint.attempts[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(attempt.transport.value(), b"")
        self.assertTrue(attempt.transport.disconnecting)
        attempt.lose()
        self.assertEqual(self.pool.idle_count("a"), 0)

    def test_cancel_after_sending_aborts_the_connection(self) -> None:
        d = self.send(resend=True)
        attempt = self.endpoint.attempts[0]
        self.assertEqual(attempt.transport.value(), GET)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(attempt.transport.disconnected)
        attempt.lose(ConnectionAborted())
        self.assertEqual(self.pool.idle_count("a"), 0)
        self.assertEqual(len(self.endpoint.attempts), 1)  # not resent either

    def test_connect_failure_is_passed_on(self) -> None:
        self.endpoint.auto = False
        d = self.send(resend=True)
        self.endpoint.attempts[0].deferred.errback(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)


class CloseTests(PoolTestCase):
    def test_close_closes_idle_connections_and_fires_once_they_are_gone(self) -> None:
        d1, d2 = self.send(), self.send("b")
        first, second = self.endpoint.attempts
        self.answer(first, d1)
        self.answer(second, d2)
        closed = self.pool.close()
        self.assertTrue(first.transport.disconnecting)
        self.assertTrue(second.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(closed)
        first.lose()
        self.assertNoResult(closed)
        second.lose()
        self.successResultOf(closed)
        self.assertEqual((self.pool.idle_count("a"), self.pool.idle_count("b")), (0, 0))

    def test_close_with_nothing_idle_fires_at_once(self) -> None:
        self.successResultOf(self.pool.close())

    def test_busy_connection_released_after_close_is_closed(self) -> None:
        d = self.send()
        attempt = self.endpoint.attempts[0]
        self.successResultOf(self.pool.close())
        self.answer(attempt, d)
        self.assertTrue(attempt.transport.disconnecting)
        self.assertEqual(self.pool.idle_count("a"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_closes_every_one_when_transports_close_at_once(self) -> None:
        # Some transports report connectionLost inside loseConnection.
        class ClosingAtOnce(StringTransport):
            def loseConnection(self) -> None:
                if not self.disconnecting:
                    super().loseConnection()
                    self.protocol.connectionLost(Failure(ConnectionDone()))

        ds = [self.send() for _ in range(3)]
        for attempt, d in zip(self.endpoint.attempts, ds):
            transport = ClosingAtOnce()
            transport.protocol = attempt.protocol
            attempt.protocol.transport = transport
            attempt.transport = transport
            self.answer(attempt, d)
        self.assertEqual(self.pool.idle_count("a"), 3)
        self.successResultOf(self.pool.close())
        self.assertTrue(all(a.transport.disconnecting for a in self.endpoint.attempts))
        self.assertEqual(self.pool.idle_count("a"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
