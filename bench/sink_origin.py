"""An origin that reads request bodies and throws them away, for the upload check of bench/run.py.

Every request, whatever its method and path, is answered ``200`` with a JSON body saying how many
body bytes arrived and when the first and the last of them did (``{"received": N, "chunked": ...,
"first_byte_at": T, "last_byte_at": T}``, ``time.monotonic()``, which is one clock for all
processes on Linux), once the whole body is in: so the check can tell that the origin really read
all of it, and whether the proxy streamed it or stored it first. Keep-alive; asyncio + httptools
(the request parser), nothing kept but a byte count and two times.

    python bench/sink_origin.py LISTEN_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Optional

import httptools


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.received = 0
        self.chunked = False
        self.first: Optional[float] = None
        self.last: Optional[float] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.received = 0
        self.chunked = False
        self.first = self.last = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_body(self, body: bytes) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = self.last
        self.received += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        answer = {
            "received": self.received,
            "chunked": self.chunked,
            "first_byte_at": self.first,
            "last_byte_at": self.last,
        }
        body = json.dumps(answer).encode() + b"\n"
        keep = self.parser.should_keep_alive()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(body), b"" if keep else b"Connection: close\r\n")
        )
        self.transport.write(head + body)
        if not keep:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=128)
    async with server:
        await server.serve_forever()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
