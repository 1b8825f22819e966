# -*- test-case-name: tests.unit.test_h2_client -*-
"""Upstream HTTP/2 connections per key (target and TLS settings), each carrying many streams.

A request goes on the connection with the most room (the peer's SETTINGS_MAX_CONCURRENT_STREAMS
and ours); when every connection is full, another is opened, up to
``max_connections_per_key``, and beyond that requests wait for a stream to free. A stream the
upstream did not process (refused, or above a GOAWAY's last stream id) is sent again on another
connection; a request whose reused connection died before any answer is sent again once if it
is idempotent, as on HTTP/1.1.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from ..h1 import ResponseHead, UpstreamClosed
from ._client import H2ClientProtocol, H2Response, H2Stream, StreamRefused
from ._limits import H2ClientLimits

Pair = Tuple[bytes, bytes]

#: How often one request may go again because the upstream did not process it.
_MAX_REFUSALS = 3


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: H2Pool, key: Any, tls: bool) -> None:
        self.pool = pool
        self.key = key
        self.tls = tls

    def buildProtocol(self, addr: Any) -> H2ClientProtocol:
        protocol = H2ClientProtocol(self.pool.clock, self.pool.limits, self.pool.released, self.tls)
        protocol.pool_key = self.key
        return protocol


class H2Pool:
    """Sends requests as streams over few connections per key."""

    def __init__(self, clock: Any, limits: Optional[H2ClientLimits] = None) -> None:
        self.clock = clock
        self.limits = limits if limits is not None else H2ClientLimits()
        self._connections: Dict[Any, List[H2ClientProtocol]] = {}
        #: Connections being made per key, and the requests waiting for room.
        self._connecting: Dict[Any, int] = {}
        self._waiting: Dict[Any, Deque[_Exchange]] = {}
        self._factories: Dict[Tuple[Any, bool], _ConnectionFactory] = {}
        self.closing = False

    def request(
        self,
        key: Any,
        endpoint: Any,
        headers: List[Pair],
        data: bytes = b"",
        body: Any = None,
        resend: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
        tls: bool = False,
    ) -> Deferred[H2Response]:
        """Send a request (``headers`` with the pseudo-headers first) to ``key``'s endpoint.
        Fires with the response head; cancelling resets the stream."""
        exchange = _Exchange(self, key, endpoint, headers, data, body, on_interim, tls)
        exchange.resend = resend
        exchange.start()
        return exchange.result

    def connections(self, key: Any) -> List[H2ClientProtocol]:
        return list(self._connections.get(key, ()))

    def _room(self, key: Any) -> Optional[H2ClientProtocol]:
        best: Optional[H2ClientProtocol] = None
        room = 0
        for protocol in self._connections.get(key, ()):
            capacity = protocol.capacity
            if capacity > room:
                best, room = protocol, capacity
        return best

    def _wait(self, exchange: _Exchange) -> None:
        """No room: queue ``exchange``, opening a connection if another may be opened."""
        key = exchange.key
        self._waiting.setdefault(key, deque()).append(exchange)
        open_now = len(self._connections.get(key, ())) + self._connecting.get(key, 0)
        if open_now < self.limits.max_connections_per_key and not self._connecting.get(key):
            self._connect(key, exchange.endpoint, exchange.tls)

    def _connect(self, key: Any, endpoint: Any, tls: bool) -> None:
        factory = self._factories.get((key, tls))
        if factory is None:
            factory = self._factories[key, tls] = _ConnectionFactory(self, key, tls)
        self._connecting[key] = self._connecting.get(key, 0) + 1
        d = endpoint.connect(factory)
        d.addCallbacks(self._connected, self._failed, errbackArgs=(key,), callbackArgs=(key,))

    def _connected(self, protocol: H2ClientProtocol, key: Any) -> None:
        self._connecting[key] -= 1
        if self.closing:
            protocol.close()
            return
        self._connections.setdefault(key, []).append(protocol)
        self._serve(key)

    def _failed(self, failure: Failure, key: Any) -> None:
        self._connecting[key] -= 1
        waiting = self._waiting.pop(key, deque())
        for exchange in waiting:
            exchange.connect_failed(failure)

    def _serve(self, key: Any) -> None:
        """Give waiting requests the room there is; open another connection if still full."""
        waiting = self._waiting.get(key)
        while waiting:
            protocol = self._room(key)
            if protocol is None:
                exchange = waiting[0]
                open_now = len(self._connections.get(key, ())) + self._connecting.get(key, 0)
                if open_now < self.limits.max_connections_per_key and not self._connecting.get(key):
                    self._connect(key, exchange.endpoint, exchange.tls)
                return
            waiting.popleft().send(protocol)
        self._waiting.pop(key, None)

    def released(self, protocol: H2ClientProtocol) -> None:
        """A stream freed on ``protocol``, or it takes no more (GOAWAY, closed)."""
        key = protocol.pool_key
        if protocol.goaway:
            connections = self._connections.get(key)
            if connections is not None and protocol in connections:
                connections.remove(protocol)
                if not connections:
                    del self._connections[key]
        if self._waiting.get(key):
            self._serve(key)

    def close(self) -> Deferred[Any]:
        """Close every connection (GOAWAY); fires when they are closed."""
        self.closing = True
        waits = []
        for connections in list(self._connections.values()):
            for protocol in list(connections):
                waits.append(protocol.close())
        self._connections.clear()
        return DeferredList(waits, consumeErrors=True)


class _Exchange:
    """One request through the pool: the stream it got, and its resends."""

    def __init__(
        self,
        pool: H2Pool,
        key: Any,
        endpoint: Any,
        headers: List[Pair],
        data: bytes,
        body: Any,
        on_interim: Optional[Callable[[ResponseHead], None]],
        tls: bool,
    ) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.headers = headers
        self.data = data
        self.body = body
        self.on_interim = on_interim
        self.tls = tls
        self.resend = False
        self.refusals = 0
        self.result: Deferred[H2Response] = Deferred(self._cancel)
        self._stream: Optional[H2Stream] = None
        self._cancelled = False

    def start(self) -> None:
        protocol = self.pool._room(self.key)
        if protocol is None:
            self.pool._wait(self)
        else:
            self.send(protocol)

    def send(self, protocol: H2ClientProtocol) -> None:
        if self._cancelled:
            return
        try:
            stream = protocol.request(self.headers, self.data, self.body, self.on_interim)
        except StreamRefused:
            self.refusals += 1
            if self.refusals > _MAX_REFUSALS:
                self.result.errback(Failure(UpstreamClosed(None, reused=False)))
                return
            self.start()
            return
        self._stream = stream
        stream.result.addCallbacks(self._answered, self._not_answered)

    def connect_failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _answered(self, response: H2Response) -> None:
        self._stream = None
        if not self.result.called:
            self.result.callback(response)
        else:
            response.abort()

    def _not_answered(self, failure: Failure) -> None:
        self._stream = None
        if self.result.called:
            return
        replayable = self.body is None or self.body.replayable
        if failure.check(StreamRefused) and replayable and self.refusals < _MAX_REFUSALS:
            self.refusals += 1
            self.start()
            return
        stale = failure.check(UpstreamClosed) and failure.value.reused
        if stale and self.resend and replayable:
            self.resend = False
            self.start()
            return
        if failure.check(StreamRefused):
            failure = Failure(UpstreamClosed(None, reused=False))
        self.result.errback(failure)

    def _cancel(self, _: Deferred[Any]) -> None:
        self._cancelled = True
        waiting = self.pool._waiting.get(self.key)
        if waiting is not None and self in waiting:
            waiting.remove(self)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort()
