"""Send one large request body to a proxy and report what came back (bench/run.py's upload check).

The body is ``--size`` bytes, the same random 1 MiB block over and over, sent with
``Content-Length`` (``--mode length``) or ``Transfer-Encoding: chunked`` in 1 MiB chunks
(``--mode chunked``), as fast as the proxy takes it. Prints one JSON line: the status, bytes
sent, seconds, when sending started and ended (``started_at``, ``sent_at``: ``time.monotonic()``),
and the response body parsed as JSON when it is (bench/sink_origin.py answers
``{"received": N, ...}``).

    python bench/upload_client.py --port 8080 --path /sink --size 1000000000 --mode length
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List


def body(size: int, block: bytes, sent: List[int]) -> Iterator[bytes]:
    view = memoryview(block)
    left = size
    while left > 0:
        n = min(left, len(block))
        sent[0] += n
        left -= n
        yield view[:n] if n < len(block) else block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/sink")
    parser.add_argument("--size", type=int, default=1000 * 1000 * 1000)
    parser.add_argument("--mode", choices=("length", "chunked"), default="length")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    headers: Dict[str, str] = {}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    if args.mode == "length":
        headers["Content-Length"] = str(args.size)
    else:
        headers["Transfer-Encoding"] = "chunked"
    block = os.urandom(1 << 20)
    sent = [0]
    out: Dict[str, Any] = {"mode": args.mode, "size": args.size}
    conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
    started = out["started_at"] = time.monotonic()
    try:
        conn.request(
            "POST",
            args.path,
            body=body(args.size, block, sent),
            headers=headers,
            encode_chunked=args.mode == "chunked",
        )
    except OSError as e:  # the proxy gave up on the body: maybe it answered first
        out["send_error"] = str(e)
    out["sent_at"] = time.monotonic()
    out["sent"] = sent[0]
    try:
        resp = conn.getresponse()
        data = resp.read()
        out["status"] = resp.status
        out["seconds"] = round(time.monotonic() - started, 3)
        try:
            out["response"] = json.loads(data)
        except ValueError:
            out["response"] = data[:200].decode("latin-1")
    except (OSError, http.client.HTTPException) as e:
        out["status"] = None
        out["seconds"] = round(time.monotonic() - started, 3)
        out["error"] = str(e) or type(e).__name__
    finally:
        conn.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
