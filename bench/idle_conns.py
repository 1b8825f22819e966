"""Open many keep-alive client connections to a proxy and hold them idle (bench/run.py).

Each connection sends one ``GET`` with HTTP/1.1 keep-alive, reads the whole response, and then
stays open and silent. Source addresses rotate over 127.0.0.2, 127.0.0.3, ... (all loopback) so
that no single address runs short of ephemeral ports. Once every connection is established and
answered the script prints one JSON line (``{"open": N, "failed": M, ...}``) and holds them until
``--hold`` seconds pass or SIGTERM/SIGINT arrives, then prints how many the server kept open
(``{"still_open": N}``), closes them all and exits.

    python bench/idle_conns.py --port 8080 --count 10000 --path /tiny --hold 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from typing import List, Optional, Tuple

Conn = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else max(soft, min(wanted, hard))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def open_one(
    port: int, source: str, request: bytes, limiter: asyncio.Semaphore
) -> Optional[Conn]:
    async with limiter:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30
            )
            writer.write(request)
            status = await asyncio.wait_for(read_response(reader), 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            return None
        if status != 200:
            writer.close()
            return None
        return reader, writer


async def main_async(args: argparse.Namespace) -> None:
    limit = raise_nofile(args.count + 1024)
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        + "".join(f"{h}\r\n" for h in args.header)
        + "\r\n"
    ).encode("latin-1")
    limiter = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    tasks = []
    for i in range(args.count):
        source = f"127.0.0.{2 + i // args.per_source}"
        tasks.append(asyncio.ensure_future(open_one(args.port, source, request, limiter)))
    results: List[Optional[Conn]] = await asyncio.gather(*tasks)
    conns = [c for c in results if c is not None]
    print(
        json.dumps(
            {
                "open": len(conns),
                "failed": args.count - len(conns),
                "seconds": round(time.monotonic() - started, 2),
                "nofile": limit,
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    still_open = sum(1 for reader, _ in conns if not reader.at_eof())
    print(json.dumps({"still_open": still_open}), flush=True)
    for _, writer in conns:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--path", default="/tiny")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to keep them open")
    parser.add_argument("--concurrency", type=int, default=100, help="connects at once")
    parser.add_argument("--per-source", type=int, default=2000, help="connections per source IP")
    args = parser.parse_args()
    asyncio.run(main_async(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
