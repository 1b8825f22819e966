"""A minimal aiohttp reverse proxy, the comparison point for the gateway in bench/run.py.

One aiohttp server, one ClientSession whose pooled keep-alive connections go to a single origin;
hop-by-hop headers are dropped both ways and the response body is streamed in chunks (never read
whole). Plain asyncio event loop (no uvloop), like the gateway's default epoll reactor.

    python bench/aiohttp_proxy.py LISTEN_PORT ORIGIN_URL
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


def make_app(origin: str) -> web.Application:
    app = web.Application()

    async def start_session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        async with session.request(
            request.method,
            origin + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response

    app.on_startup.append(start_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    port = int(sys.argv[1])
    origin = sys.argv[2].rstrip("/")
    web.run_app(make_app(origin), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
