"""The forwarder end to end: a real gateway in front of real upstreams on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import time
from unittest.mock import ANY

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.servers import (
    BigBody,
    CloseMidBody,
    FnResource,
    Hang,
    echo_json,
    gateway_for,
    http,
    raw_request,
    raw_upstream,
    upstream,
)

ensure = pytest_twisted.ensureDeferred


def url(gw, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}{path}"


@ensure
async def test_get_is_proxied_with_path_and_query_byte_for_byte(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url))
    raw = b"GET /a%2Fb/c%20d/%7Euser?q=%20x&y=1&&z HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = await raw_request(gw.port, raw)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert echo_json(body)["uri"] == "/a%2Fb/c%20d/%7Euser?q=%20x&y=1&&z"


@ensure
async def test_strip_path_forwards_the_rest_and_keeps_query(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url, path="/api/users/*", strip_path=True))
    response = await http("GET", url(gw, "/api/users/42?x=1"))
    assert response.code == 200
    assert echo_json(await response.content())["uri"] == "/42?x=1"


@ensure
async def test_upstream_base_path_is_prepended(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url + "/v1", path="/api/*", strip_path=True))
    response = await http("GET", url(gw, "/api/things?a=b"))
    assert echo_json(await response.content())["uri"] == "/v1/things?a=b"


@ensure
async def test_dot_segments_are_resolved_and_never_forwarded(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(
        gw.port, b"GET /a/b/../c/./d/%2e%2E/e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"uri": "/a/c/e"' in data


@ensure
async def test_path_climbing_above_root_is_400_and_not_forwarded(closer):
    seen = FnResource(lambda r: b"never")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(
        gw.port, b"GET /a/../../etc/passwd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 400")
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    assert body == {"error": "bad request path", "status": 400, "request_id": ANY}
    assert seen.seen == []


@ensure
async def test_no_route_is_404_json(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url, path="/api/*"))
    response = await http("GET", url(gw, "/other"))
    assert response.code == 404
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(await response.content()) == {
        "error": "no route matches this path",
        "status": 404,
        "request_id": response.headers.getRawHeaders(b"x-request-id")[0].decode(),
    }


@ensure
async def test_wrong_method_is_405_with_allow(closer):
    up = closer.add(upstream())
    gw = closer.add(gateway_for(up.url, methods=["GET", "POST"]))
    response = await http("DELETE", url(gw, "/x"))
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD, POST"]
    assert json.loads(await response.content())["status"] == 405


@ensure
async def test_declared_body_over_limit_is_413_before_upstream(closer):
    seen = FnResource(lambda r: b"never")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url, max_body_bytes=10))
    response = await http("POST", url(gw, "/x"), data=b"y" * 11)
    assert response.code == 413
    await response.content()
    assert seen.seen == []


@ensure
async def test_hop_by_hop_request_headers_are_dropped_and_forwarded_headers_set(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url))
    started = time.monotonic()
    await raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: api.example.com\r\n"
        b"Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\n"
        b"Trailer: X-T\r\nX-Forwarded-For: 203.0.113.9\r\nX-End-To-End: yes\r\n\r\n",
    )
    # "close, X-Secret-Hop" is a comma-separated list: the gateway closes after answering.
    assert time.monotonic() - started < 2
    headers = seen.seen[0]["headers"]
    for name in (
        b"x-secret-hop", b"keep-alive", b"te", b"upgrade", b"proxy-connection", b"trailer",
        b"transfer-encoding",
    ):
        assert not headers.hasHeader(name), name
    # The gateway's own keep-alive connection to the upstream may say what it likes; the client's
    # "close" must not be what reached the upstream.
    assert headers.getRawHeaders(b"connection", [b""]) != [b"close, X-Secret-Hop"]
    assert headers.getRawHeaders(b"x-end-to-end") == [b"yes"]
    # The peer is not a trusted proxy: what the client wrote in X-Forwarded-For is replaced.
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"127.0.0.1"]
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"http"]
    assert headers.getRawHeaders(b"x-forwarded-host") == [b"api.example.com"]
    assert headers.getRawHeaders(b"host") == [b"api.example.com"]


@ensure
async def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_appended(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url, server={"trusted_proxies": ["127.0.0.0/8"]}))
    await raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: internal:8080\r\nConnection: close\r\n"
        b"X-Forwarded-For: 203.0.113.9, 10.1.1.1\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: api.example.com\r\n\r\n",
    )
    headers = seen.seen[0]["headers"]
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"203.0.113.9, 10.1.1.1, 127.0.0.1"]
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"https"]
    assert headers.getRawHeaders(b"x-forwarded-host") == [b"api.example.com"]


@ensure
async def test_host_is_the_upstreams_when_preserve_host_is_off(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url, server={"preserve_host": False}))
    await (await http("GET", url(gw, "/x"), headers={"Host": "api.example.com"})).content()
    headers = seen.seen[0]["headers"]
    assert headers.getRawHeaders(b"host") == [f"127.0.0.1:{up.port}".encode()]
    assert headers.getRawHeaders(b"x-forwarded-host") == [b"api.example.com"]


def _response_with_hop_headers(request):
    request.setResponseCode(299, b"Custom Reason")
    request.responseHeaders.setRawHeaders(b"Set-Cookie", [b"a=1; Path=/", b"b=2; Path=/"])
    request.responseHeaders.setRawHeaders(b"Connection", [b"X-Hop"])
    request.responseHeaders.setRawHeaders(b"X-Hop", [b"1"])
    request.responseHeaders.setRawHeaders(b"Keep-Alive", [b"timeout=5"])
    request.responseHeaders.setRawHeaders(b"Upgrade", [b"h2c"])
    request.responseHeaders.setRawHeaders(b"X-Kept", [b"yes"])
    return b"body"


@ensure
async def test_response_status_reason_and_repeated_headers_pass_hop_by_hop_dropped(closer):
    up = closer.add(upstream(FnResource(_response_with_hop_headers)))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert data.startswith(b"HTTP/1.1 299 Custom Reason\r\n")
    assert head.count(b"\r\nset-cookie: ") == 2
    assert b"set-cookie: a=1; path=/" in head and b"set-cookie: b=2; path=/" in head
    assert b"x-kept: yes" in head
    assert b"x-hop:" not in head and b"keep-alive:" not in head and b"upgrade:" not in head


@ensure
async def test_redirects_are_passed_through_not_followed(closer):
    def redirect(request):
        request.setResponseCode(302)
        request.setHeader(b"Location", b"http://127.0.0.1:1/elsewhere")
        return b""

    up = closer.add(upstream(FnResource(redirect)))
    gw = closer.add(gateway_for(up.url))
    response = await http("GET", url(gw, "/x"), allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders(b"location") == [b"http://127.0.0.1:1/elsewhere"]


@ensure
async def test_head_204_and_304_carry_no_body(closer):
    def by_path(request):
        if request.path == b"/204":
            request.setResponseCode(204)
            return b""
        if request.path == b"/304":
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Length", b"5")
        return b"hello"

    up = closer.add(upstream(FnResource(by_path)))
    gw = closer.add(gateway_for(up.url))
    for method, path, status in (("HEAD", "/x", b"200"), ("GET", "/204", b"204"),
                                 ("GET", "/304", b"304")):
        data = await raw_request(
            gw.port, f"{method} {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
        )
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status
        assert body == b"", (path, body)
        assert b"transfer-encoding" not in head.lower()
    head = (await raw_request(
        gw.port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )).lower()
    assert b"content-length: 5" in head


def _digest(request):
    body = request.content.read()
    return json.dumps({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()


@ensure
async def test_request_bodies_are_forwarded_intact_small_and_spooled(closer):
    up = closer.add(upstream(FnResource(_digest)))
    gw = closer.add(gateway_for(up.url))
    for size in (0, 10, 70_000, 3 * 1024 * 1024):
        body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        response = await http("POST", url(gw, "/upload"), data=body)
        assert response.code == 200
        got = json.loads(await response.content())
        assert got == {"len": size, "sha256": hashlib.sha256(body).hexdigest()}, size


@ensure
async def test_chunked_request_body_is_forwarded_with_a_length(closer):
    seen = FnResource(_digest)
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(
        gw.port,
        b"POST /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200")
    assert seen.seen[0]["body"] == b"hello world"
    assert seen.seen[0]["headers"].getRawHeaders(b"content-length") == [b"11"]
    assert not seen.seen[0]["headers"].hasHeader(b"transfer-encoding")


@ensure
async def test_refused_upstream_is_502_fast(closer):
    up = upstream()
    dead = up.url
    await up.stop()
    gw = closer.add(gateway_for(dead))
    started = time.monotonic()
    response = await http("GET", url(gw, "/x"))
    assert response.code == 502
    assert json.loads(await response.content()) == {
        "error": "upstream unavailable",
        "status": 502,
        "request_id": response.headers.getRawHeaders(b"x-request-id")[0].decode(),
    }
    assert time.monotonic() - started < 2


@ensure
async def test_unresolvable_upstream_is_502(closer):
    gw = closer.add(gateway_for("http://no-such-host.invalid:8001"))
    response = await http("GET", url(gw, "/x"))
    assert response.code == 502


@ensure
async def test_invalid_upstream_response_is_502(closer):
    from twisted.internet.protocol import Protocol

    class Garbage(Protocol):
        def dataReceived(self, data):
            self.transport.write(b"this is not HTTP\r\n\r\n")
            self.transport.loseConnection()

    up = closer.add(raw_upstream(Garbage))
    gw = closer.add(gateway_for(up.url))
    response = await http("GET", url(gw, "/x"))
    assert response.code == 502
    assert json.loads(await response.content())["error"] == "bad upstream response"


@ensure
async def test_upstream_dying_mid_body_aborts_the_client_connection(closer):
    up = closer.add(raw_upstream(CloseMidBody))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head.lower()
    # The connection was cut: the client holds fewer bytes than promised, never a "complete" reply.
    assert len(body) < 1000


@ensure
async def test_chunked_upstream_dying_mid_body_never_sends_the_last_chunk(closer):
    class ChunkedThenDie(CloseMidBody):
        def dataReceived(self, data):
            if b"\r\n\r\n" in data:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                )
                reactor.callLater(0.05, self.transport.loseConnection)

    up = closer.add(raw_upstream(ChunkedThenDie))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"hello" in data
    assert not data.endswith(b"0\r\n\r\n")


@ensure
async def test_client_going_away_releases_the_upstream_request(closer):
    hang = Hang()
    up = closer.add(upstream(hang))
    gw = closer.add(gateway_for(up.url))
    target = gw.runtime.routes[0].upstream.targets[0]
    d = raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", timeout=0.3)
    await d
    # Give the reactor a moment to process the disconnect.

    await deferLater(reactor, 0.1, lambda: None)
    assert hang.hits == 1
    assert target.in_flight == 0


@ensure
async def test_large_response_streams_with_content_length(closer):
    size = 20 * 1024 * 1024
    up = closer.add(upstream(BigBody(size)))
    gw = closer.add(gateway_for(up.url))
    response = await http("GET", url(gw, "/big"))
    assert response.length == size  # treq, like the gateway, reads Content-Length itself
    received = 0

    def count(data):
        nonlocal received
        received += len(data)

    import treq

    await treq.collect(response, count)
    assert received == size


@ensure
async def test_round_robin_spreads_requests_over_real_upstreams(closer):
    from avx_twisted.demo import EchoResource

    ups = [closer.add(upstream(EchoResource(f"svc{i}"))) for i in range(3)]
    gw = closer.add(gateway_for([u.url for u in ups]))
    names = []
    for _ in range(6):
        response = await http("GET", url(gw, "/"))
        names.append(echo_json(await response.content())["service"])
    assert names == ["svc0", "svc1", "svc2", "svc0", "svc1", "svc2"]


@ensure
async def test_least_connections_avoids_the_busy_upstream(closer):
    from avx_twisted.demo import EchoResource

    hang = Hang()
    busy = closer.add(upstream(hang))
    free = closer.add(upstream(EchoResource("free")))
    gw = closer.add(gateway_for([busy.url, free.url], strategy="least_connections"))
    stuck = http("GET", url(gw, "/first"))  # lands on `busy` (tie -> first) and hangs
    stuck.addErrback(lambda f: None)
    # Only once it is there: a request sent meanwhile could reach the gateway first.
    for _ in range(200):
        if hang.hits:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert hang.hits == 1
    for _ in range(3):
        response = await http("GET", url(gw, "/"))
        assert echo_json(await response.content())["service"] == "free"
    assert hang.hits == 1
    stuck.cancel()


@ensure
async def test_weighted_follows_the_weights(closer):
    from avx_twisted.demo import EchoResource

    a = closer.add(upstream(EchoResource("a")))
    b = closer.add(upstream(EchoResource("b")))
    gw = closer.add(gateway_for([a.url, b.url], strategy="weighted", weights=[3, 1]))
    names = []
    for _ in range(8):
        response = await http("GET", url(gw, "/"))
        names.append(echo_json(await response.content())["service"])
    assert names.count("a") == 6 and names.count("b") == 2
