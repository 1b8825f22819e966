# -*- test-case-name: tests.unit.test_h1_tunnel -*-
"""Two connections spliced into one byte tunnel after a 101 (WebSocket), flow-controlled both
ways, closed after an idle timeout."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure


class Tunnel:
    """Relays bytes between the ``client`` and ``upstream`` protocols (each delivers its data
    with ``data_from`` and its end with ``lost``). Each transport pauses the other when its
    write buffer is full. ``on_close(tunnel)`` is called once, when both sides are gone.
    """

    def __init__(
        self,
        clock: Any,
        idle_timeout_s: float,
        on_close: Optional[Callable[[Tunnel], None]] = None,
    ) -> None:
        self.clock = clock
        self.idle_timeout_s = idle_timeout_s
        self.on_close = on_close
        self.client: Any = None
        self.upstream: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = 0.0
        self.closed_by: Optional[str] = None
        self._last = 0.0
        self._timer: Any = None
        self._open = 0

    def splice(self, client: Any, upstream: Any, client_rest: bytes, upstream_rest: bytes) -> None:
        """Join the two protocols (their transports are now ours); forward what each had sent
        past the handshake."""
        self.client, self.upstream = client, upstream
        client.tunnel = upstream.tunnel = self
        self._open = 2
        self.started = self._last = self.clock.seconds()
        client.transport.registerProducer(upstream.transport, True)
        upstream.transport.registerProducer(client.transport, True)
        self._timer = self.clock.callLater(self.idle_timeout_s, self._check_idle)
        if upstream_rest:
            self.data_from(upstream, upstream_rest)
        if client_rest:
            self.data_from(client, client_rest)

    def data_from(self, side: Any, data: bytes) -> None:
        self._last = self.clock.seconds()
        if side is self.client:
            self.bytes_up += len(data)
            self.upstream.transport.write(data)
        else:
            self.bytes_down += len(data)
            self.client.transport.write(data)

    def lost(self, side: Any, reason: Optional[Failure]) -> None:
        """One side closed: close the other the same way (clean close or reset)."""
        self._open -= 1
        if self.closed_by is None:
            self.closed_by = "client" if side is self.client else "upstream"
        other = self.upstream if side is self.client else self.client
        transport = other.transport if other is not None else None
        if self._open > 0 and transport is not None:
            try:
                transport.unregisterProducer()
            except RuntimeError:
                pass
            if reason is None or reason.check(ConnectionDone):
                transport.loseConnection()
            else:
                transport.abortConnection()
        if self._open <= 0:
            self._finish()

    #: After an idle close, how long the two sides get to flush before they are aborted.
    close_grace_s = 2.0

    def close(self) -> None:
        """End the tunnel now (drain timeout): both connections go."""
        if self.closed_by is None:
            self.closed_by = "drain"
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()

    def _check_idle(self) -> None:
        self._timer = None
        idle = self.clock.seconds() - self._last
        if idle >= self.idle_timeout_s:
            if self.closed_by is None:
                self.closed_by = "idle"
            for side in (self.client, self.upstream):
                if side is not None and side.transport is not None:
                    side.transport.loseConnection()
            # A peer that stopped reading never lets a close flush: abort what is left.
            self._timer = self.clock.callLater(self.close_grace_s, self._abort_rest)
            return
        self._timer = self.clock.callLater(self.idle_timeout_s - idle, self._check_idle)

    def _abort_rest(self) -> None:
        self._timer = None
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()

    def _finish(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self)
