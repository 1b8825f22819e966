# -*- test-case-name: tests.unit.test_h1_pool -*-
"""Keep-alive connections to upstreams: idle connections per key, newest first, capped, expired."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from ._client import ClientProtocol, ClientState, UpstreamClosed, UpstreamResponse
from ._limits import ClientLimits
from ._message import ResponseHead


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: UpstreamPool, key: Any) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        protocol = ClientProtocol(self.pool.limits, self.pool.released)
        protocol.pool_key = self.key
        return protocol


class UpstreamPool:
    """Sends requests over pooled connections, one exchange per connection at a time.

    A connection goes back to the pool only when its exchange ended cleanly (the client
    protocol decides). An idempotent request whose reused connection turns out closed before
    any response byte (the upstream timed it out meanwhile) is sent once more on a fresh
    connection.
    """

    def __init__(self, clock: Any, limits: Optional[ClientLimits] = None) -> None:
        self.clock = clock
        self.limits = limits if limits is not None else ClientLimits()
        self._idle: Dict[Any, List[ClientProtocol]] = {}
        self._factories: Dict[Any, _ConnectionFactory] = {}
        self.closing = False

    def request(
        self,
        key: Any,
        endpoint: Any,
        head: bytes,
        method: bytes,
        stream: Any = None,
        chunked: bool = False,
        resend: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> Deferred[UpstreamResponse]:
        """Send ``head`` (and ``stream``) to ``key``'s endpoint. ``resend``: the request may go
        again on a fresh connection if a reused one was found closed. Cancel aborts."""
        exchange = _Exchange(self, key, endpoint, head, method, stream, chunked, on_interim)
        exchange.resend = resend
        exchange.start(reuse=True)
        return exchange.result

    def idle_count(self, key: Any) -> int:
        return len(self._idle.get(key, ()))

    def _take(self, key: Any) -> Optional[ClientProtocol]:
        idle = self._idle.get(key)
        while idle:
            protocol = idle.pop()
            timer, protocol.idle_timer = protocol.idle_timer, None
            if timer is not None and timer.active():
                timer.cancel()
            if protocol.state is ClientState.IDLE:
                return protocol
        return None

    def _connect(self, key: Any, endpoint: Any) -> Deferred[ClientProtocol]:
        factory = self._factories.get(key)
        if factory is None:
            factory = self._factories[key] = _ConnectionFactory(self, key)
        return endpoint.connect(factory)  # type: ignore[no-any-return]

    def released(self, protocol: ClientProtocol) -> None:
        """A connection's exchange ended (IDLE: keep it) or it closed (forget it)."""
        key = protocol.pool_key
        idle = self._idle.setdefault(key, [])
        if protocol.state is not ClientState.IDLE:
            if protocol in idle:
                idle.remove(protocol)
            return
        if self.closing or len(idle) >= self.limits.max_idle_per_key:
            protocol.close()
            return
        idle.append(protocol)
        protocol.idle_timer = self.clock.callLater(
            self.limits.idle_timeout_s, self._expire, protocol
        )

    def _expire(self, protocol: ClientProtocol) -> None:
        protocol.idle_timer = None
        idle = self._idle.get(protocol.pool_key, [])
        if protocol in idle:
            idle.remove(protocol)
        protocol.close()

    def close(self) -> Deferred[Any]:
        """Close every idle connection; fires when they are closed."""
        self.closing = True
        waits = []
        # Copies: a transport may report the close at once, and the protocol leaves its list.
        for idle in list(self._idle.values()):
            for protocol in list(idle):
                timer, protocol.idle_timer = protocol.idle_timer, None
                if timer is not None and timer.active():
                    timer.cancel()
                waits.append(protocol.close())
        self._idle.clear()
        return DeferredList(waits, consumeErrors=True)


class _Exchange:
    """One request through the pool: the connection it got, and one resend if it was stale."""

    def __init__(
        self,
        pool: UpstreamPool,
        key: Any,
        endpoint: Any,
        head: bytes,
        method: bytes,
        stream: Any,
        chunked: bool,
        on_interim: Optional[Callable[[ResponseHead], None]],
    ) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.head = head
        self.method = method
        self.stream = stream
        self.chunked = chunked
        self.on_interim = on_interim
        self.resend = False
        self.result: Deferred[UpstreamResponse] = Deferred(self._cancel)
        self._connecting: Optional[Deferred[ClientProtocol]] = None
        self._sent: Optional[Deferred[UpstreamResponse]] = None
        self._cancelled = False

    def start(self, reuse: bool) -> None:
        protocol = self.pool._take(self.key) if reuse else None
        if protocol is not None:
            self._send(protocol)
            return
        self._connecting = d = self.pool._connect(self.key, self.endpoint)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: ClientProtocol) -> None:
        self._connecting = None
        if self._cancelled or self.result.called:  # cancelled (the connect may win the race)
            protocol.close()
            return
        self._send(protocol)

    def _send(self, protocol: ClientProtocol) -> None:
        self._sent = d = protocol.request(
            self.head, self.method, self.stream, self.chunked, self.on_interim
        )
        d.addCallbacks(self._answered, self._not_answered)

    def _answered(self, response: UpstreamResponse) -> None:
        self._sent = None
        if not self.result.called:
            self.result.callback(response)

    def _not_answered(self, failure: Failure) -> None:
        self._sent = None
        if self.result.called:
            return
        stale = failure.check(UpstreamClosed) and failure.value.reused
        replayable = self.stream is None or self.stream.replayable
        if stale and self.resend and replayable:
            self.resend = False
            self.start(reuse=False)
            return
        self.result.errback(failure)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self.result.called:
            self.result.errback(failure)

    def _cancel(self, _: Deferred[Any]) -> None:
        self._cancelled = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.cancel()
