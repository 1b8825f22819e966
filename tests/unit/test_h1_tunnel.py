"""Tests for avx_twisted.h1._tunnel: two connections spliced into one byte tunnel, over
StringTransports and a MemoryReactorClock."""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.h1 import ClientLimits, ClientProtocol, ClientState, Tunnel

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class Side(Protocol):
    """One end of a tunnel, as the server and client protocols are once spliced: bytes and the
    end go to ``tunnel``."""

    def __init__(self) -> None:
        self.tunnel: Any = None
        self.makeConnection(StringTransport())

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.data_from(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.tunnel.lost(self, reason)


class TunnelTestCase(SynchronousTestCase):
    timeout_s = 30.0

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.closed: List[Tunnel] = []
        self.tunnel = Tunnel(self.clock, self.timeout_s, self.closed.append)
        self.client = Side()
        self.upstream = Side()

    def splice(self, client_rest: bytes = b"", upstream_rest: bytes = b"") -> None:
        self.tunnel.splice(self.client, self.upstream, client_rest, upstream_rest)

    def lose(self, side: Side, reason: Optional[Exception] = None) -> None:
        side.connectionLost(Failure(reason or ConnectionDone()))

    def assert_ended(self) -> None:
        self.assertEqual(self.closed, [self.tunnel])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RelayTests(TunnelTestCase):
    def test_splice_makes_the_tunnel_both_sides(self) -> None:
        self.splice()
        self.assertIs(self.client.tunnel, self.tunnel)
        self.assertIs(self.upstream.tunnel, self.tunnel)
        self.assertEqual(self.tunnel.started, self.clock.seconds())

    def test_bytes_go_both_ways_and_are_counted(self) -> None:
        self.splice()
        self.client.dataReceived(b"ping")
        self.client.dataReceived(b"!")
        self.upstream.dataReceived(b"pong pong")
        self.assertEqual(self.upstream.transport.value(), b"ping!")
        self.assertEqual(self.client.transport.value(), b"pong pong")
        self.assertEqual((self.tunnel.bytes_up, self.tunnel.bytes_down), (5, 9))

    def test_bytes_sent_past_the_handshake_are_forwarded_at_splice(self) -> None:
        self.splice(client_rest=b"early-up", upstream_rest=b"early-down")
        self.assertEqual(self.upstream.transport.value(), b"early-up")
        self.assertEqual(self.client.transport.value(), b"early-down")
        self.assertEqual((self.tunnel.bytes_up, self.tunnel.bytes_down), (8, 10))

    def test_each_transport_is_the_producer_of_the_other(self) -> None:
        self.splice()
        self.assertIs(self.client.transport.producer, self.upstream.transport)
        self.assertIs(self.upstream.transport.producer, self.client.transport)
        self.assertTrue(self.client.transport.streaming)
        self.assertTrue(self.upstream.transport.streaming)

    def test_a_full_side_pauses_the_other(self) -> None:
        self.splice()
        self.client.transport.producer.pauseProducing()  # the client reads slowly
        self.assertEqual(self.upstream.transport.producerState, "paused")
        self.client.transport.producer.resumeProducing()
        self.assertEqual(self.upstream.transport.producerState, "producing")


class EndingTests(TunnelTestCase):
    def test_clean_close_of_one_side_closes_the_other_cleanly(self) -> None:
        for who in ("upstream", "client"):
            with self.subTest(first=who):
                self.setUp()
                first, other = (
                    getattr(self, who),
                    (self.client if who == "upstream" else self.upstream),
                )
                self.splice()
                self.lose(first)
                self.assertTrue(other.transport.disconnecting)
                self.assertFalse(other.transport.disconnected)
                self.assertIsNone(other.transport.producer)
                self.assertEqual(self.tunnel.closed_by, who)
                self.assertEqual(self.closed, [])
                self.lose(other)
                self.assert_ended()

    def test_a_reset_aborts_the_other_side(self) -> None:
        for reason in (ConnectionLost(), ConnectionAborted()):
            with self.subTest(reason=type(reason).__name__):
                self.setUp()
                self.splice()
                self.lose(self.client, reason)
                self.assertTrue(self.upstream.transport.disconnected)
                self.assertEqual(self.tunnel.closed_by, "client")
                self.lose(self.upstream, ConnectionAborted())
                self.assert_ended()

    def test_end_without_a_reason_is_a_clean_close(self) -> None:
        self.splice()
        self.tunnel.lost(self.upstream, None)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertFalse(self.client.transport.disconnected)

    def test_on_close_is_called_once_after_both_sides_are_gone(self) -> None:
        self.splice()
        self.lose(self.upstream)
        self.assertEqual(self.closed, [])
        self.lose(self.client, ConnectionLost())
        self.assert_ended()
        self.assertEqual(self.tunnel.closed_by, "upstream")  # the first to go

    def test_close_aborts_both_sides(self) -> None:
        self.splice()
        self.tunnel.close()
        self.assertTrue(self.client.transport.disconnected)
        self.assertTrue(self.upstream.transport.disconnected)
        self.lose(self.client, ConnectionAborted())
        self.lose(self.upstream, ConnectionAborted())
        self.assert_ended()

    def test_without_on_close_the_end_is_quiet(self) -> None:
        self.tunnel = Tunnel(self.clock, self.timeout_s)
        self.splice()
        self.lose(self.client)
        self.lose(self.upstream)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class IdleTests(TunnelTestCase):
    def test_idle_tunnel_closes_both_sides(self) -> None:
        self.splice()
        self.clock.advance(self.timeout_s - 1)
        self.assertFalse(self.client.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)
        self.assertFalse(self.client.transport.disconnected)
        self.assertEqual(self.tunnel.closed_by, "idle")
        self.lose(self.client)
        self.lose(self.upstream)
        self.assert_ended()
        self.assertEqual(self.tunnel.closed_by, "idle")

    def test_activity_either_way_postpones_the_idle_close(self) -> None:
        self.splice()
        self.clock.advance(20)
        self.client.dataReceived(b"up")
        self.clock.advance(20)
        self.upstream.dataReceived(b"down")
        self.clock.advance(29)
        self.assertFalse(self.client.transport.disconnecting)
        self.assertFalse(self.upstream.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)

    def test_rest_bytes_at_splice_count_as_activity(self) -> None:
        self.clock.advance(100)
        self.splice(client_rest=b"x")
        self.clock.advance(self.timeout_s - 1)
        self.assertFalse(self.client.transport.disconnecting)

    def test_tunnel_ended_by_a_side_leaves_no_timer(self) -> None:
        self.splice()
        self.clock.advance(10)
        self.lose(self.upstream)
        self.lose(self.client)
        self.assert_ended()
        self.clock.advance(self.timeout_s)
        self.assertEqual(self.closed, [self.tunnel])


class UpstreamProtocolTests(TunnelTestCase):
    """The upstream side as the real client protocol after a 101."""

    def setUp(self) -> None:
        super().setUp()
        released: List[ClientState] = []
        self.released = released
        protocol = ClientProtocol(ClientLimits(), lambda p: released.append(p.state))
        protocol.makeConnection(StringTransport())
        d = protocol.request(b"GET /ws HTTP/1.1\r\nHost: up\r\nUpgrade: websocket\r\n\r\n", b"GET")
        protocol.dataReceived(SWITCHING + b"hello")
        self.response = self.successResultOf(d)
        self.upstream = protocol  # type: ignore[assignment]

    def test_bytes_relayed_through_the_client_protocol(self) -> None:
        self.splice(upstream_rest=self.response.rest)
        self.assertEqual(self.client.transport.value(), b"hello")
        self.upstream.transport.clear()
        self.client.dataReceived(b"up")
        self.upstream.dataReceived(b"down")
        self.assertEqual(self.upstream.transport.value(), b"up")
        self.assertEqual(self.client.transport.value(), b"hellodown")
        self.assertIs(self.upstream.state, ClientState.TUNNEL)

    def test_upstream_connection_lost_ends_the_tunnel(self) -> None:
        self.splice()
        self.lose(self.upstream)
        self.assertTrue(self.client.transport.disconnecting)
        self.lose(self.client)
        self.assert_ended()
        self.assertEqual(self.released, [ClientState.CLOSED])  # never pooled

    def test_aborted_upstream_protocol_still_ends_the_tunnel(self) -> None:
        self.splice()
        self.response.abort()
        self.assertFalse(self.client.transport.disconnecting)  # the tunnel waits for the loss
        self.lose(self.upstream, ConnectionAborted())
        self.assertTrue(self.client.transport.disconnected)
        self.lose(self.client, ConnectionAborted())
        self.assert_ended()
