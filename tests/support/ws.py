"""A real WebSocket upstream (the ``websockets`` library, in a thread) and a real client."""

from __future__ import annotations

import threading
from typing import Any, Callable

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as _connect
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["WsUpstream", "connect"]


def connect(uri: str, **kwargs: Any) -> ClientConnection:
    """websockets' sync client without its keepalive thread by default: on PyPy 3.9 that thread
    and the caller join the receiving thread at once, which trips a race in PyPy's
    ``Thread.join`` (``cannot release un-acquired lock``; CPython fixed it in 3.10). The tests
    that are about pings pass ``ping_interval`` themselves."""
    kwargs.setdefault("ping_interval", None)
    return _connect(uri, **kwargs)


def echo(connection: ServerConnection) -> None:
    """Echo every message back, text as text and binary as binary, until the client closes."""
    for message in connection:
        connection.send(message)


class WsUpstream:
    """``handler`` served on an ephemeral loopback port from a thread; ``stop()`` ends it."""

    def __init__(self, handler: Callable[[ServerConnection], None] = echo, **options: Any) -> None:
        options.setdefault("ping_interval", None)  # see connect()
        self.server: Server = serve(
            handler, "127.0.0.1", 0, max_size=None, compression=None, **options
        )
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)
