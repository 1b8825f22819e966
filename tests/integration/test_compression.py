"""Response compression through the real gateway: curl asking for gzip/brotli, answers decoded
byte for byte, streaming bodies, what is left alone, HTTP/2, and the cache keeping one variant
per encoding."""

from __future__ import annotations

import gzip
import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.server import NOT_DONE_YET

from avx_twisted.compression import _brotli
from tests.support.servers import FnResource, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred
BODY = b"".join(
    b'{"id": %d, "name": "item %d", "tags": ["a", "b"]}\n' % (i, i) for i in range(3000)
)


def origin(closer: Any, content_type: bytes = b"application/json", extra: Any = ()) -> Any:
    seen: list[Any] = []

    def render(request: Any) -> Any:
        seen.append(request.getHeader(b"accept-encoding"))
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"ETag", b'"v1"')
        for name, value in extra:
            request.setHeader(name, value)
        if request.path == b"/stream":
            # Chunked, in pieces over time: compression must not wait for the end.
            def piece(i: int) -> None:
                request.write(BODY[i * 10000 : (i + 1) * 10000])
                if (i + 1) * 10000 < len(BODY):
                    reactor.callLater(0.01, piece, i + 1)
                else:
                    request.finish()

            piece(0)
            return NOT_DONE_YET
        return BODY

    up = closer.add(upstream(FnResource(render)))
    up.seen = seen
    return up


def gw_for(closer: Any, up: Any, **route: Any) -> tuple[Any, int]:
    service = gateway(
        {
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "listeners": [{"endpoint": "tcp:0:interface=127.0.0.1"}],
            },
            "routes": [
                {
                    "path": "/*",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "compression": {},
                    **route,
                }
            ],
        }
    )
    closer.add(service)
    return service, service.ports[0].getHost().port


async def fetch(
    port: int, path: str, *headers: str, http2: bool = False
) -> tuple[dict[str, str], bytes]:
    args = ["-s", "-D", "-", "-o", "-"]
    for header in headers:
        args += ["-H", header]
    if http2:
        args.append("--http2-prior-knowledge")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    raw, err, code = await getProcessOutputAndValue(
        "curl", [*args, f"http://127.0.0.1:{port}{path}"], env=env
    )
    assert code == 0, err
    head, _, body = raw.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.decode().lower()] = value.strip().decode()
    return fields, body


@ensure
async def test_gzip_and_brotli_by_accept_encoding(closer):
    up = origin(closer)
    gw, port = gw_for(closer, up)
    fields, body = await fetch(port, "/a", "Accept-Encoding: gzip;q=1, br;q=0.5")
    assert fields["content-encoding"] == "gzip"
    assert fields["vary"] == "Accept-Encoding"
    assert fields["etag"] == 'W/"v1"'
    assert "content-length" not in fields
    assert gzip.decompress(body) == BODY
    fields, body = await fetch(port, "/a", "Accept-Encoding: br, gzip")
    assert fields["content-encoding"] == "br"
    assert _brotli.decompress(body) == BODY
    fields, body = await fetch(port, "/a")
    assert "content-encoding" not in fields and body == BODY
    assert fields["vary"] == "Accept-Encoding"
    # The upstream is asked as the client asked (the gateway does not strip Accept-Encoding).
    assert up.seen[0] == b"gzip;q=1, br;q=0.5"


@ensure
async def test_a_streamed_body_is_compressed_as_it_comes(closer):
    up = origin(closer)
    gw, port = gw_for(closer, up)
    fields, body = await fetch(port, "/stream", "Accept-Encoding: gzip")
    assert fields["content-encoding"] == "gzip"
    assert gzip.decompress(body) == BODY


@ensure
async def test_what_is_left_alone(closer):
    png = origin(closer, content_type=b"image/png")
    gw, port = gw_for(closer, png)
    fields, body = await fetch(port, "/p", "Accept-Encoding: gzip")
    assert "content-encoding" not in fields and body == BODY
    encoded = origin(closer, extra=[(b"Content-Encoding", b"gzip")])
    gw, port = gw_for(closer, encoded)
    fields, body = await fetch(port, "/e", "Accept-Encoding: br")
    assert fields["content-encoding"] == "gzip" and body == BODY  # passed as it came
    frozen = origin(closer, extra=[(b"Cache-Control", b"no-transform")])
    gw, port = gw_for(closer, frozen)
    fields, body = await fetch(port, "/f", "Accept-Encoding: gzip")
    assert "content-encoding" not in fields and body == BODY


@ensure
async def test_http2_clients_get_it_too(closer):
    up = origin(closer)
    gw, port = gw_for(closer, up)
    fields, body = await fetch(port, "/h", "Accept-Encoding: gzip", http2=True)
    assert fields["content-encoding"] == "gzip"
    assert gzip.decompress(body) == BODY


@ensure
async def test_the_cache_keeps_one_variant_per_encoding(closer):
    up = origin(closer, extra=[(b"Cache-Control", b"max-age=60")])
    gw, port = gw_for(closer, up, cache={})
    for accept in ("gzip", "br", "gzip", "br", "identity", "identity"):
        fields, body = await fetch(port, "/c", f"Accept-Encoding: {accept}")
        if accept == "gzip":
            assert gzip.decompress(body) == BODY
        elif accept == "br":
            assert _brotli.decompress(body) == BODY
        else:
            assert body == BODY
    assert len(up.seen) == 3  # one fetch per encoding, then hits
    response = await http(
        "GET", f"http://127.0.0.1:{port}/c", headers={"Accept-Encoding": ["gzip"]}
    )
    assert response.headers.getRawHeaders(b"cache-status")[0].startswith(b"avx; hit")
    await response.content()
