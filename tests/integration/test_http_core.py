"""What the gateway's own HTTP/1.1 core does end to end, beyond the hardening table: the
response writer (reason phrases, ``Server``), connection-level refusals in metrics and logs,
``Host`` validation and absolute-form targets, upstream framing faults, drains, 1xx."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from tests.support.servers import (
    FnResource,
    gateway,
    gateway_for,
    http,
    raw_request,
    raw_upstream,
    upstream,
)

ensure = pytest_twisted.ensureDeferred


def head_of(data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    head = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    fields = (line.split(b":", 1) for line in head[1:])
    return head[0], {name.strip().lower(): value.strip() for name, value in fields}


def get(path: bytes = b"/x", host: bytes = b"h", extra: bytes = b"") -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
    )


async def metrics(gw: Any) -> str:
    response = await http("GET", f"http://127.0.0.1:{gw.port}/metrics")
    return (await response.content()).decode()


# -- the response writer -------------------------------------------------------------------------


@ensure
async def test_every_status_has_its_reason_phrase(closer):
    up = closer.add(upstream(FnResource(lambda r: r.setResponseCode(429) or b"slow down")))
    gw = closer.add(gateway_for(up.url))
    line, _ = head_of(await raw_request(gw.port, get()))
    # The upstream (twisted.web) says "429 Unknown Status": registered codes get ours.
    assert line == b"HTTP/1.1 429 Too Many Requests"
    gw2 = closer.add(gateway_for(up.url, path="/only"))
    line, _ = head_of(await raw_request(gw2.port, get(b"/nowhere")))
    assert line == b"HTTP/1.1 404 Not Found"


@ensure
async def test_server_header_is_the_upstreams_and_none_on_our_own_answers(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway_for(up.url, path="/ok"))
    _, proxied = head_of(await raw_request(gw.port, get(b"/ok")))
    assert proxied[b"server"].startswith(b"TwistedWeb/")  # the upstream's, passed on
    _, own = head_of(await raw_request(gw.port, get(b"/nowhere")))
    assert b"server" not in own


@ensure
async def test_configured_server_header_replaces_the_upstreams(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway_for(up.url, path="/ok", server={"server_header": "edge"}))
    _, proxied = head_of(await raw_request(gw.port, get(b"/ok")))
    assert proxied[b"server"] == b"edge"
    _, own = head_of(await raw_request(gw.port, get(b"/nowhere")))
    assert own[b"server"] == b"edge"


# -- refusals of the core are answers like any other ---------------------------------------------


@ensure
async def test_connection_level_refusals_are_counted_and_logged(closer, tmp_path):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    log_path = tmp_path / "access.log"
    gw = closer.add(
        gateway(
            {
                "server": {
                    "host": "127.0.0.1",
                    "port": 0,
                    "max_body_bytes": 10,
                    "client_header_timeout_ms": 300,
                },
                "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
                "logging": {"access_log": str(log_path)},
            }
        )
    )
    refused = await raw_request(
        gw.port, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99\r\n\r\n"
    )
    assert refused.startswith(b"HTTP/1.1 413 Content Too Large")
    bad = await raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 Bad Request")
    body = json.loads(bad.partition(b"\r\n\r\n")[2])
    assert body["request_id"] == head_of(bad)[1][b"x-request-id"].decode()
    # A head that never ends (slowloris): 408 once client_header_timeout_ms is over.
    slow = await raw_request(gw.port, b"GET /slow HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n")
    assert slow.startswith(b"HTTP/1.1 408 "), slow[:100]
    # A request line over 8 KiB: 414; over 100 header fields: 431.
    long_line = await raw_request(gw.port, get(b"/" + b"a" * 9000))
    assert long_line.startswith(b"HTTP/1.1 414 "), long_line[:100]
    many = b"".join(b"X-F%d: v\r\n" % n for n in range(120))
    fields = await raw_request(gw.port, get(b"/fields", extra=many))
    assert fields.startswith(b"HTTP/1.1 431 "), fields[:100]
    text = await metrics(gw)
    assert 'avx_requests_total{method="POST",route="unmatched",status="413"} 1.0' in text
    assert 'avx_requests_total{method="GET",route="unmatched",status="400"} 1.0' in text
    for status in (408, 414, 431):  # no method was parsed: "OTHER"
        series = f'avx_requests_total{{method="OTHER",route="unmatched",status="{status}"}}'
        assert series + " 1.0" in text, status
    await gw.stopService()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"]) for r in lines] == [
        ("POST", "/x", 413),
        ("GET", "/x", 400),
        # Refused before the head was parsed: nothing of it is trusted, not even the method.
        ("-", "-", 408),
        ("-", "-", 414),
        ("-", "-", 431),
    ]
    # The 408 lasted the header timeout (300 ms), counted from the connection's start.
    assert lines[2]["duration_ms"] >= 290, lines[2]
    assert [r["error"] for r in lines[2:]] == [
        "request head not received in time",
        "request line too long",
        "too many header fields",
    ]
    # The record says why (the core's own reason, more precise than the client's message).
    assert all(r["error"] and r["upstream"] is None for r in lines), lines


@ensure
async def test_invalid_host_values_are_400_and_never_forwarded(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway_for(up.url))
    for host in (b"a b", b"h\x01", b"[::1", b"h:99999", b"evil@host", b"h:8o"):
        data = await raw_request(gw.port, get(host=host))
        assert data.startswith(b"HTTP/1.1 400 "), (host, data[:80])
    assert seen.seen == []
    for host in (b"h", b"h:8080", b"[::1]:80", b"10.0.0.1", b"xn--bcher-kva.example"):
        data = await raw_request(gw.port, get(host=host))
        assert data.startswith(b"HTTP/1.1 200 "), (host, data[:80])


@ensure
async def test_a_raw_high_byte_in_the_target_is_400_and_never_opens_the_breaker(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {
                        "path": "/*",
                        "upstream": {
                            "urls": [up.url],
                            "circuit_breaker": {"failure_threshold": 2},
                        },
                    }
                ],
            }
        )
    )
    for _ in range(5):
        data = await raw_request(gw.port, get(path=b"/caf\xe9"))
        assert data.startswith(b"HTTP/1.1 400 ")
    assert (await raw_request(gw.port, get())).startswith(b"HTTP/1.1 200 ")


@ensure
async def test_absolute_form_target_routes_and_forwards_by_its_authority(closer):
    seen_a = FnResource(lambda r: b"a")
    seen_b = FnResource(lambda r: b"b")
    up_a = closer.add(upstream(seen_a))
    up_b = closer.add(upstream(seen_b))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {"path": "/*", "host": "a.example", "upstream": {"urls": [up_a.url]}},
                    {"path": "/*", "host": "b.example", "upstream": {"urls": [up_b.url]}},
                ],
            }
        )
    )
    data = await raw_request(
        gw.port,
        b"GET http://b.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    assert data.endswith(b"b")
    assert seen_b.seen[0]["uri"] == b"/p?q=1"
    assert seen_b.seen[0]["headers"].getRawHeaders(b"host") == [b"b.example"]
    assert seen_a.seen == []


# -- upstream framing faults ---------------------------------------------------------------------


class CloseDelimitedThenReset(protocol.Protocol):
    """No length, not chunked: the body ends with the connection, which is reset."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart")
            reactor.callLater(0.05, self.transport.abortConnection)


class CloseDelimitedThenClose(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\n\r\nwhole body")
            reactor.callLater(0.05, self.transport.loseConnection)


class BothLengthAndChunked(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )


@ensure
async def test_close_delimited_body_cut_by_a_reset_is_not_made_to_look_complete(closer):
    up = closer.add(raw_upstream(CloseDelimitedThenReset))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, get())
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding: chunked" in data
    assert not data.endswith(b"0\r\n\r\n")  # aborted: no last chunk


@ensure
async def test_close_delimited_body_ended_by_a_clean_close_is_complete(closer):
    up = closer.add(raw_upstream(CloseDelimitedThenClose))
    gw = closer.add(gateway_for(up.url))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    assert await response.content() == b"whole body"


@ensure
async def test_response_with_length_and_chunked_is_502(closer):
    up = closer.add(raw_upstream(BothLengthAndChunked))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, get())
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway")


@ensure
async def test_early_hints_are_relayed_before_the_answer(closer):
    class EarlyHints(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                )

    up = closer.add(raw_upstream(EarlyHints))
    gw = closer.add(gateway_for(up.url))
    data = await raw_request(gw.port, get())
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
    assert b"HTTP/1.1 200 OK\r\n" in data and data.endswith(b"ok")


# -- 100-continue --------------------------------------------------------------------------------


@ensure
async def test_100_continue_only_once_the_filters_accepted(closer):
    import hashlib

    up = closer.add(upstream(FnResource(lambda r: r.content.read())))
    digest = hashlib.sha256(b"k").hexdigest()
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "auth": {"api_key": {"keys": [{"name": "ops", "sha256": digest}]}},
                "routes": [{"path": "/*", "auth": ["api_key"], "upstream": {"urls": [up.url]}}],
            }
        )
    )
    head = b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
    refused = await raw_request(gw.port, head + b"\r\n", timeout=2)
    assert refused.startswith(b"HTTP/1.1 401 ")
    assert b"100 Continue" not in refused

    class Waiter(protocol.Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done: defer.Deferred[bytes] = defer.Deferred()

        def connectionMade(self) -> None:
            self.transport.write(head + b"X-API-Key: k\r\nConnection: close\r\n\r\n")

        def dataReceived(self, data: bytes) -> None:
            if not self.data and data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                self.transport.write(b"hello")
            self.data += data

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(self.data)

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    waiter = Waiter()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port), waiter)
    data = await waiter.done
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert data.endswith(b"hello")


# -- drains --------------------------------------------------------------------------------------


@ensure
async def test_answers_during_a_drain_say_connection_close(closer):
    def slow(request: Any) -> Any:
        reactor.callLater(0.3, lambda: (request.write(b"late"), request.finish()))
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(slow)))
    gw = gateway_for(up.url)
    pending = defer.ensureDeferred(
        raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", timeout=3)
    )
    await deferLater(reactor, 0.1, lambda: None)
    stopping = gw.stopService()
    data = await pending
    await stopping
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert head_of(data)[1][b"connection"] == b"close"
    assert data.endswith(b"4\r\nlate\r\n0\r\n\r\n")
