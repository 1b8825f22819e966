"""A property of the server side of the HTTP/1.1 core: whatever bytes a client sends, in
whatever reads, the ServerProtocol never raises, and what it writes is a sequence of well-framed
HTTP/1.1 responses, in the order of the requests, each refusal the last one with
``Connection: close``. Inputs are valid requests mutated (bytes inserted, deleted, replaced),
and raw bytes, split into random reads with the clock moved in between.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from avx_twisted.h1 import (
    BodyFailed,
    Fields,
    IRequestHandler,
    ServerFactory,
    ServerLimits,
    ServerRequest,
)

from .test_h1_server import TCPTransport

LIMITS = ServerLimits(
    max_body_bytes=64,
    max_request_line_bytes=64,
    max_header_bytes=256,
    max_header_fields=8,
    header_timeout_s=10.0,
    body_timeout_s=10.0,
    idle_timeout_s=30.0,
    linger_s=2.0,
    max_pipelined=2,
    body_high_water=8,
)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

H = b"Host: example.com\r\n"
VALID = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a/b?c=d HTTP/1.1\r\n" + H + b"Accept: */*\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\n" + H + b"\r\n",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"GET http://api.example:81/p HTTP/1.1\r\nHost: other\r\n\r\n",
    b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    b"PUT /p HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n",
    b"GET /close HTTP/1.1\r\n" + H + b"Connection: close, X-Foo\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
#: Bytes that matter to HTTP/1.1 framing, favoured by the mutations.
SPECIAL = [
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b":",
    b"\t",
    b",",
    b"0",
    b"9",
    b"\x00",
    b"\x80",
    b"\r\n\r\n",
]


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        elif at < len(data):
            data[at] = draw(st.sampled_from(SPECIAL).map(lambda b: b[0]) | st.integers(0, 255))
    return bytes(data)


@st.composite
def reads(draw: Any, stream: Any) -> List[Tuple[bytes, float]]:
    """``stream`` split into reads, each with how far the clock moves after it."""
    data = draw(stream)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)]) if data[a:b]]
    delays = st.sampled_from([0.0, 0.0, 0.0, 0.0, 5.0, 11.0])
    return [(piece, draw(delays)) for piece in pieces]


@implementer(IRequestHandler)
class AnsweringHandler:
    """Answers 200 to every request, the ways the gateway does: whole, chunked (or
    close-delimited), after reading the body. Refusals and broken bodies are marked with
    ``X-Refusal`` so the checks can find them."""

    def __init__(self) -> None:
        self.finals = 0

    def _respond(self, request: ServerRequest, status: int, fields: Any, body: bytes) -> None:
        if not request.started:
            self.finals += 1
            request.respond(status, fields, b"" if request.method == b"HEAD" else body)

    def handle(self, request: ServerRequest) -> None:
        if request.body.present:
            request.body.attach(BodyReader(self, request))
        elif request.method == b"HEAD" or request.target.endswith(b"a"):
            self._respond(request, 200, [(b"Content-Type", b"text/plain")], b"hello")
        else:
            self.finals += 1
            request.start(200, [], None)
            request.write(b"hel")
            request.write(b"lo")
            request.finish()

    def refused(self, request: ServerRequest, status: int, message: str) -> None:
        self._respond(request, status, [(b"X-Refusal", b"1")], message.encode("ascii"))


class BodyReader:
    def __init__(self, handler: AnsweringHandler, request: ServerRequest) -> None:
        self.handler = handler
        self.request = request
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)

    def finish(self) -> None:
        self.handler._respond(self.request, 200, [], b"got %d" % self.received)

    def fail(self, failure: BodyFailed) -> None:
        self.handler._respond(self.request, failure.status, [(b"X-Refusal", b"1")], b"")


class Parsed:
    """One response as llhttp read it back."""

    def __init__(self) -> None:
        self.status = 0
        self.version = ""
        self.fields = Fields()
        self.complete = False


def parse_output(data: bytes) -> List[Parsed]:
    responses: List[Parsed] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            responses.append(Parsed())

        def on_header(self, name: bytes, value: bytes) -> None:
            responses[-1].fields.add(name, value)

        def on_headers_complete(self) -> None:
            responses[-1].status = parser.get_status_code()
            responses[-1].version = parser.get_http_version()

        def on_message_complete(self) -> None:
            responses[-1].complete = True

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return responses


def serve(pieces: List[Tuple[bytes, float]]) -> Tuple[Any, TCPTransport, AnsweringHandler]:
    """Feed ``pieces`` to a ServerProtocol the way a reactor would (no reads once it closed),
    checking after each that it is not left paused; then lose the connection."""
    handler = AnsweringHandler()
    clock = MemoryReactorClock()
    factory = ServerFactory(handler, clock, LIMITS)
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 5000))
    transport = TCPTransport()
    protocol.makeConnection(transport)
    for data, delay in pieces:
        if transport.disconnecting:
            break
        protocol.dataReceived(data)
        clock.advance(0)
        if delay:
            clock.advance(delay)
        if not transport.disconnecting and not transport.write_closed:
            assert transport.producerState == "producing", "left paused"
    protocol.connectionLost(Failure(ConnectionLost()))
    assert clock.getDelayedCalls() == [], clock.getDelayedCalls()
    return protocol, transport, handler


def check_output(output: bytes, transport: TCPTransport, handler: AnsweringHandler) -> None:
    """Every response has a status line and parses whole; each refusal (and every answer with
    ``Connection: close``) is the last one; a cut-short last one is close-delimited."""
    try:
        responses = parse_output(output)
    except httptools.HttpParserError as e:
        raise AssertionError(f"malformed output {output!r}: {e}") from None
    finals = [r for r in responses if r.status >= 200]
    assert len(finals) == handler.finals, (handler.finals, output)
    for i, response in enumerate(responses):
        assert 100 <= response.status <= 599 and response.version == "1.1", output
        last = i == len(responses) - 1
        closes = response.fields.get(b"connection") == b"close"
        if response.fields.has(b"x-refusal"):
            assert closes, output
        if closes:
            assert last, output
        if not response.complete:
            assert last, output
            assert not response.fields.has(b"content-length"), output
            assert not response.fields.has(b"transfer-encoding"), output
            assert closes and (transport.disconnecting or transport.write_closed), output


class ServerFuzzTests(SynchronousTestCase):
    @SETTINGS
    @given(reads(mutated()))
    def test_mutated_requests(self, pieces: List[Tuple[bytes, float]]) -> None:
        _, transport, handler = serve(pieces)
        check_output(transport.value(), transport, handler)

    @settings(SETTINGS, max_examples=100)
    @given(reads(st.binary(min_size=1, max_size=200)))
    def test_random_bytes(self, pieces: List[Tuple[bytes, float]]) -> None:
        _, transport, handler = serve(pieces)
        check_output(transport.value(), transport, handler)

    def test_valid_requests_all_answered(self) -> None:
        """The unmutated requests, pipelined in one read: one answer each, in order."""
        stream = b"".join(r for r in VALID if b"close" not in r and b"HTTP/1.0" not in r)
        _, transport, handler = serve([(stream, 0.0)])
        check_output(transport.value(), transport, handler)
        self.assertEqual(handler.finals, len(VALID) - 3)
        self.assertFalse(transport.disconnecting)

    def test_check_output_catches_bad_framing(self) -> None:
        """The checks themselves: output with a short body, or after a close, fails them."""
        handler = AnsweringHandler()
        handler.finals = 1
        transport = TCPTransport()
        bad = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            b"HTTP/1.1 400 Bad\r\nX-Refusal: 1\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
        ]
        for output in bad:
            self.assertRaises(AssertionError, check_output, output, transport, handler)
