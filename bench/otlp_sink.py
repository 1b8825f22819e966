"""A fast OTLP/HTTP trace sink for the tracing row of bench/run.py: what a collector's
``otlphttp`` receiver looks like from the gateway (``POST /v1/traces``, protobuf
``ExportTraceServiceRequest``), minus everything a collector does with the spans.

    .venv/bin/python bench/otlp_sink.py PORT

A raw asyncio HTTP/1.1 server on 127.0.0.1:PORT, keep-alive, answering every POST ``200`` with an
empty protobuf body (``b""``, a valid empty ``ExportTraceServiceResponse``) and
``Content-Type: application/x-protobuf``. It decodes each export only to count its spans (with
``opentelemetry-proto`` from the gateway's venv; without it, requests and bytes only), so the
bench can tell that spans really left the gateway. ``GET /stats`` answers the counts as JSON;
any other GET answers 200 (readiness).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import zlib
from typing import Any, Dict, Optional

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
except ImportError:  # pragma: no cover - counted as requests and bytes only
    ExportTraceServiceRequest = None

STATS: Dict[str, Any] = {
    "requests": 0,
    "bytes": 0,
    "spans": 0 if ExportTraceServiceRequest is not None else None,
    "undecodable": 0,
}
MAX_HEAD = 64 * 1024


def count_spans(body: bytes, encoding: Optional[str]) -> None:
    STATS["requests"] += 1
    STATS["bytes"] += len(body)
    if ExportTraceServiceRequest is None:
        return
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
    except Exception:
        STATS["undecodable"] += 1
        return
    STATS["spans"] += sum(
        len(scope.spans) for res in message.resource_spans for scope in res.scope_spans
    )


def answer(status: int, body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, b"OK" if status == 200 else b"Error", content_type, len(body))
    ) + body


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                break
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            fields = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if "chunked" in fields.get("transfer-encoding", "").lower():
                body = await read_chunked(reader)
            else:
                body = await reader.readexactly(int(fields.get("content-length", "0")))
            if method == "POST":
                count_spans(body, fields.get("content-encoding"))
                writer.write(answer(200, b"", b"application/x-protobuf"))
            elif target == "/stats":
                writer.write(answer(200, json.dumps(STATS).encode(), b"application/json"))
            else:
                writer.write(answer(200, b"ok\n", b"text/plain"))
            if fields.get("connection", "").lower() == "close":
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, limit=MAX_HEAD, backlog=128)
    print(f"otlp sink on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
