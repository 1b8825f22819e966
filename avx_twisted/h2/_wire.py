"""What both sides of the HTTP/2 core do with a connection's bytes and the transport's producer
slot."""

from __future__ import annotations

from typing import Any


class Wire:
    """Mixed into :class:`~._server.H2ServerProtocol` and :class:`~._client.H2ClientProtocol`
    (each has ``conn``, an ``h2`` connection, and ``transport``)."""

    conn: Any
    transport: Any
    _registered = False

    def _register(self) -> None:
        """This protocol is the transport's streaming producer (its backpressure pauses us)."""
        self.transport.registerProducer(self, True)
        self._registered = True

    def _unregister(self) -> None:
        """Before a close: TLS sends its close_notify only once no producer is registered."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()

    def _write(self) -> None:
        """What the h2 connection has to send, to the transport."""
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
