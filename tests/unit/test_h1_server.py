"""The server side of the HTTP/1.1 core (avx_twisted.h1._server) over StringTransport.

No sockets: ``factory.buildProtocol``, ``makeConnection(StringTransport())``, ``dataReceived``,
asserts on ``transport.value()``; timers on a ``MemoryReactorClock``. The handler is a fake that
answers through ``request.respond`` (at once, or when the test says).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, List, Optional, Tuple

import httptools
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avx_twisted.h1 import (
    BodyFailed,
    ConnectionState,
    Fields,
    IRequestHandler,
    ResponseState,
    ServerFactory,
    ServerLimits,
    ServerRequest,
)

LIMITS = ServerLimits(
    max_body_bytes=1000,
    header_timeout_s=10.0,
    body_timeout_s=20.0,
    idle_timeout_s=30.0,
    linger_s=2.0,
    body_high_water=16,
)
#: The Date of every answer: the MemoryReactorClock starts at 0.
DATE = b"Thu, 01 Jan 1970 00:00:00 GMT"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def request(
    *fields: bytes, start: bytes = b"GET / HTTP/1.1", body: bytes = b"", host: bool = True
) -> bytes:
    lines = ((b"Host: example.com",) if host else ()) + fields
    return start + b"\r\n" + b"".join(f + b"\r\n" for f in lines) + b"\r\n" + body


def get(path: bytes = b"/", *fields: bytes) -> bytes:
    return request(*fields, start=b"GET " + path + b" HTTP/1.1")


def post(body: bytes, *fields: bytes, path: bytes = b"/") -> bytes:
    return request(
        b"Content-Length: %d" % len(body), *fields, start=b"POST " + path + b" HTTP/1.1", body=body
    )


def chunked_post(*fields: bytes, path: bytes = b"/") -> bytes:
    return request(b"Transfer-Encoding: chunked", *fields, start=b"POST " + path + b" HTTP/1.1")


UPGRADE = (b"Connection: Upgrade", b"Upgrade: websocket")


def ok(request: ServerRequest) -> None:
    request.respond(200, [(b"Content-Type", b"text/plain")], b"hello")


def echo_target(request: ServerRequest) -> None:
    request.respond(200, [], request.target)


@implementer(IRequestHandler)
class FakeHandler:
    """Answers each request with ``answer(request)`` at once, or keeps it (``answer=None``).
    Refusals are answered in a shape of its own: ``text/plain`` and the message."""

    def __init__(self, answer: Optional[Callable[[ServerRequest], None]] = ok) -> None:
        self.answer = answer
        self.requests: List[ServerRequest] = []
        self.refusals: List[Tuple[int, str]] = []
        self.refused_requests: List[ServerRequest] = []

    def handle(self, request: ServerRequest) -> None:
        self.requests.append(request)
        if self.answer is not None:
            self.answer(request)

    def refused(self, request: ServerRequest, status: int, message: str) -> None:
        self.refusals.append((status, message))
        self.refused_requests.append(request)
        request.respond(status, [(b"Content-Type", b"text/plain")], message.encode("ascii"))


class FakeConsumer:
    """Where a request body goes (an upstream connection): records what it is given."""

    def __init__(self) -> None:
        self.data: List[bytes] = []
        self.finished = False
        self.failure: Optional[BodyFailed] = None
        self.on_finish: Optional[Callable[[], None]] = None
        self.on_fail: Optional[Callable[[BodyFailed], None]] = None

    @property
    def body(self) -> bytes:
        return b"".join(self.data)

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def finish(self) -> None:
        self.finished = True
        if self.on_finish is not None:
            self.on_finish()

    def fail(self, failure: BodyFailed) -> None:
        self.failure = failure
        if self.on_fail is not None:
            self.on_fail(failure)


def read_body(request: ServerRequest) -> FakeConsumer:
    """Attach a consumer that answers ``200 <the body>`` when the body is complete, or the
    body's failure status when it breaks off."""
    consumer = FakeConsumer()

    def done() -> None:
        request.respond(200, [], b"got " + consumer.body)

    def failed(failure: BodyFailed) -> None:
        request.respond(failure.status, [], failure.reason.encode("ascii"))

    consumer.on_finish, consumer.on_fail = done, failed
    request.body.attach(consumer)
    return consumer


def read_bodies(request: ServerRequest) -> None:
    """The forwarder's way: stream every body on, answer when it is complete."""
    if request.body.present:
        read_body(request)
    else:
        echo_target(request)


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    """A StringTransport that half-closes as TCP does (the linger after a refusal)."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class FakeTunnel:
    def __init__(self) -> None:
        self.data: List[bytes] = []
        self.lost_reason: Any = None

    def data_from(self, side: Any, data: bytes) -> None:
        self.data.append(data)

    def lost(self, side: Any, reason: Any) -> None:
        self.lost_reason = reason


class Connection:
    """One ServerProtocol on a StringTransport, its factory and its clock."""

    def __init__(
        self,
        handler: Optional[FakeHandler] = None,
        limits: ServerLimits = LIMITS,
        transport: Optional[StringTransport] = None,
        factory: Optional[ServerFactory] = None,
        server_header: Optional[bytes] = None,
    ) -> None:
        if factory is None:
            factory = ServerFactory(
                handler or FakeHandler(), MemoryReactorClock(), limits, server_header
            )
        self.factory = factory
        self.handler: FakeHandler = factory.handler
        self.clock: MemoryReactorClock = factory.clock
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 5000))
        self.transport = transport if transport is not None else StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, *reads: bytes) -> None:
        for data in reads:
            self.protocol.dataReceived(data)

    def lose(self, reason: Optional[Exception] = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    def value(self) -> bytes:
        return self.transport.value()

    def responses(self) -> List[Response]:
        return read_responses(self.transport.value())

    def statuses(self) -> List[int]:
        return [response.status for response in self.responses()]


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.fields = Fields()
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> Optional[bytes]:
        return self.fields.get(name)


def read_responses(data: bytes) -> List[Response]:
    """The responses in ``data``, as llhttp reads them; malformed output raises. The last one
    may be incomplete (``complete`` is False): a close-delimited body, or a cut."""
    responses: List[Response] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            responses.append(Response())

        def on_header(self, name: bytes, value: bytes) -> None:
            responses[-1].fields.add(name, value)

        def on_headers_complete(self) -> None:
            responses[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            responses[-1].body += body

        def on_message_complete(self) -> None:
            responses[-1].complete = True

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return responses


class AnswerTests(SynchronousTestCase):
    def test_handler_provides_the_interface(self) -> None:
        verifyObject(IRequestHandler, FakeHandler())

    def test_one_answer(self) -> None:
        conn = Connection()
        conn.send(get(b"/a?b=c"))
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: " + DATE + b"\r\n"
            b"Content-Length: 5\r\n\r\nhello",
        )
        [req] = conn.handler.requests
        self.assertEqual(
            (req.method, req.target, req.path, req.query, req.version, req.authority),
            (b"GET", b"/a?b=c", b"/a", b"b=c", b"1.1", b"example.com"),
        )
        self.assertEqual((req.state, req.status, req.sent_bytes), (ResponseState.DONE, 200, 5))
        self.assertTrue(req.started and req.finished)

    def test_server_header_and_response_fields(self) -> None:
        """Fields the gateway adds to whatever the answer is go out with it."""

        def answer(request: ServerRequest) -> None:
            request.response_fields.add(b"X-Request-ID", b"r1")
            request.respond(404, [(b"X-A", b"1")], b"")

        conn = Connection(FakeHandler(answer), server_header=b"avx")
        conn.send(get())
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-Request-ID: r1\r\nDate: " + DATE + b"\r\n"
            b"Server: avx\r\nContent-Length: 0\r\n\r\n",
        )

    def test_own_reason_phrase(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.start(299, [], 0, reason=b"Fine")
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertTrue(conn.value().startswith(b"HTTP/1.1 299 Fine\r\n"))

    def test_on_done_called_once(self) -> None:
        done: List[Any] = []
        conn = Connection(FakeHandler(None))
        conn.send(get())
        [req] = conn.handler.requests
        req.on_done = lambda request, reason: done.append((request, reason))
        ok(req)
        req.finish()
        ok(req)
        self.assertEqual(done, [(req, None)])

    def test_peer_and_transport(self) -> None:
        conn = Connection(transport=StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1)))
        conn.send(get())
        [req] = conn.handler.requests
        self.assertEqual((req.peer_host, req.secure), ("192.0.2.7", False))
        self.assertIs(req.channel, conn.protocol)

    def test_absolute_form_target(self) -> None:
        conn = Connection()
        conn.send(request(start=b"GET http://api.example:81/p?q HTTP/1.1"))
        [req] = conn.handler.requests
        self.assertEqual((req.authority, req.target, req.path), (b"api.example:81", b"/p?q", b"/p"))

    def test_connection_gauge(self) -> None:
        counts: List[int] = []
        factory = ServerFactory(FakeHandler(), MemoryReactorClock(), LIMITS)
        factory.on_connection = lambda name, delta: counts.append(delta)
        conn = Connection(factory=factory)
        self.assertEqual(factory.connections, {conn.protocol})
        conn.lose()
        self.assertEqual((counts, factory.connections), ([1, -1], set()))

    def test_interim_answer(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.interim(103, [(b"Link", b"</s.css>; rel=preload")])
            request.respond(200, [], b"")

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertEqual(conn.statuses(), [103, 200])
        self.assertTrue(conn.value().startswith(b"HTTP/1.1 103 Early Hints\r\nLink: "))

    def test_no_interim_answer_to_http10(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.interim(103, [])
            request.respond(200, [], b"")

        conn = Connection(FakeHandler(answer))
        conn.send(request(start=b"GET / HTTP/1.0", host=False))
        self.assertEqual(conn.statuses(), [200])

    def test_start_twice(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get())
        [req] = conn.handler.requests
        req.start(200, [], None)
        self.assertRaises(RuntimeError, req.start, 200, [], None)

    def test_field_splitting_the_head_refused(self) -> None:
        """No CR or LF from a field's name or value reaches the head (response splitting):
        nothing is written and the connection is dropped."""
        for field in [(b"X-A", b"a\r\nSet-Cookie: x=1"), (b"X-A\r\nSet-Cookie", b"x=1")]:
            conn = Connection(FakeHandler(None))
            conn.send(get())
            [req] = conn.handler.requests
            req.start(200, [field], 0)
            self.assertEqual(conn.value(), b"")
            self.assertIs(req.state, ResponseState.ABORTED)

    def test_register_producer(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get())
        [req] = conn.handler.requests
        producer = object()
        req.register_producer(producer)
        self.assertEqual((conn.transport.producer, conn.transport.streaming), (producer, True))
        req.unregister_producer()
        req.unregister_producer()
        self.assertIsNone(conn.transport.producer)


class KeepAliveTests(SynchronousTestCase):
    def test_http11_stays_open(self) -> None:
        conn = Connection(FakeHandler(echo_target))
        conn.send(get(b"/1"))
        conn.send(get(b"/2"))
        responses = conn.responses()
        self.assertEqual([r.body for r in responses], [b"/1", b"/2"])
        self.assertEqual([r.header(b"connection") for r in responses], [None, None])
        self.assertFalse(conn.transport.disconnecting)
        self.assertIs(conn.protocol.state, ConnectionState.WAITING)

    def test_connection_close(self) -> None:
        conn = Connection()
        conn.send(get(b"/", b"Connection: close, X-Foo"))
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertTrue(conn.transport.disconnecting)
        conn.transport.clear()
        conn.send(get())
        self.assertEqual((conn.value(), len(conn.handler.requests)), (b"", 1))

    def test_http10_closes(self) -> None:
        conn = Connection()
        conn.send(request(start=b"GET / HTTP/1.0", host=False))
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertTrue(conn.transport.disconnecting)

    def test_http10_keep_alive(self) -> None:
        conn = Connection()
        raw = request(b"Connection: keep-alive", start=b"GET / HTTP/1.0", host=False)
        conn.send(raw, raw)
        responses = conn.responses()
        self.assertEqual([r.header(b"connection") for r in responses], [b"keep-alive"] * 2)
        self.assertFalse(conn.transport.disconnecting)

    def test_handler_closes(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.close_after = True
            ok(request)

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertTrue(conn.transport.disconnecting)

    def test_bytes_after_a_closing_request_dropped(self) -> None:
        """What follows a request that closes the connection is no request of it (RFC 9112
        9.6): neither handled nor refused, and nothing is written after the close."""
        closings = [get(b"/", b"Connection: close"), request(start=b"GET / HTTP/1.0")]
        for closing, answer in itertools.product(closings, [ok, None]):
            conn = Connection(FakeHandler(answer))
            conn.send(closing + get(b"/after"))
            conn.send(get(b"/later"))
            if answer is None:
                ok(conn.handler.requests[0])
            self.assertEqual(conn.handler.refusals, [])
            self.assertEqual(conn.statuses(), [200])
            self.assertEqual(len(conn.handler.requests), 1)
            self.assertTrue(conn.transport.disconnecting)
            conn.lose()
            self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_nothing_handed_over_after_a_close_inside_a_read(self) -> None:
        """During a drain, an answer completed inside a read (by the body's consumer) closes
        the connection: the request pipelined behind it is not handled."""
        factory = ServerFactory(FakeHandler(None), MemoryReactorClock(), LIMITS)
        conn = Connection(factory=factory)
        conn.send(post(b"abcd")[:-2])
        read_body(conn.handler.requests[0])
        factory.drain()
        conn.send(b"cd" + post(b"xy", path=b"/next"))
        self.assertEqual(len(conn.handler.requests), 1)
        self.assertEqual(conn.statuses(), [200])
        self.assertTrue(conn.transport.disconnecting)
        self.assertIs(conn.protocol.state, ConnectionState.CLOSING)
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_http10_request_after_http11_request(self) -> None:
        conn = Connection()
        conn.send(get(), request(start=b"GET / HTTP/1.0", host=False))
        self.assertEqual([r.header(b"connection") for r in conn.responses()], [None, b"close"])


class PipeliningTests(SynchronousTestCase):
    def test_answered_in_order(self) -> None:
        """The second request goes to the handler only once the first is answered."""
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1") + get(b"/2"))
        self.assertEqual([r.target for r in conn.handler.requests], [b"/1"])
        echo_target(conn.handler.requests[0])
        self.assertEqual([r.target for r in conn.handler.requests], [b"/1", b"/2"])
        echo_target(conn.handler.requests[1])
        self.assertEqual([r.body for r in conn.responses()], [b"/1", b"/2"])

    def test_three_in_one_read(self) -> None:
        conn = Connection(FakeHandler(echo_target))
        conn.send(get(b"/1") + post(b"xy", path=b"/2") + get(b"/3"))
        self.assertEqual([r.body for r in conn.responses()], [b"/1", b"/2", b"/3"])
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertIs(conn.protocol.state, ConnectionState.WAITING)

    def test_reading_paused_while_queued(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1") + get(b"/2") + get(b"/3"))
        self.assertEqual(conn.transport.producerState, "paused")
        echo_target(conn.handler.requests[0])
        self.assertEqual(conn.transport.producerState, "paused")
        echo_target(conn.handler.requests[1])
        # The last one is the only one left: the next request may be read meanwhile.
        self.assertEqual(conn.transport.producerState, "producing")
        echo_target(conn.handler.requests[2])
        self.assertEqual([r.body for r in conn.responses()], [b"/1", b"/2", b"/3"])
        self.assertEqual(conn.transport.producerState, "producing")

    def test_reading_goes_on_while_one_is_answered(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1"))
        self.assertEqual(conn.transport.producerState, "producing")
        conn.send(get(b"/2"))
        self.assertEqual(conn.transport.producerState, "paused")
        echo_target(conn.handler.requests[0])
        self.assertEqual(conn.transport.producerState, "producing")

    def test_streamed_answers_in_order(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.start(200, [], None)
            request.write(request.target)
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(get(b"/1") + get(b"/2"))
        self.assertEqual([r.body for r in conn.responses()], [b"/1", b"/2"])
        self.assertEqual(
            [r.header(b"transfer-encoding") for r in conn.responses()], [b"chunked"] * 2
        )

    def test_answer_inside_a_read_keeps_the_next_request_busy(self) -> None:
        """The body's consumer answers while the parser still reads the next request: the
        connection is not idle (no idle close under a pending request)."""
        conn = Connection(FakeHandler(None))
        conn.send(post(b"abcd")[:-2])
        read_body(conn.handler.requests[0])
        conn.send(b"cd" + get(b"/2"))
        self.assertEqual(len(conn.handler.requests), 2)
        self.assertIs(conn.protocol.state, ConnectionState.ACTIVE)
        conn.clock.advance(LIMITS.idle_timeout_s * 2)
        self.assertFalse(conn.transport.disconnecting)
        echo_target(conn.handler.requests[1])
        self.assertEqual([r.body for r in conn.responses()], [b"got abcd", b"/2"])
        self.assertIs(conn.protocol.state, ConnectionState.WAITING)


class NoBodyTests(SynchronousTestCase):
    def test_head_keeps_content_length(self) -> None:
        conn = Connection()
        conn.send(request(start=b"HEAD / HTTP/1.1"))
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: " + DATE + b"\r\n"
            b"Content-Length: 5\r\n\r\n",
        )
        self.assertEqual(conn.handler.requests[0].sent_bytes, 0)

    def test_head_streamed_answer(self) -> None:
        """Unknown length for HEAD: neither chunked nor a close; the next request follows."""

        def answer(request: ServerRequest) -> None:
            request.start(200, [], None)
            request.write(b"dropped")
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(request(start=b"HEAD / HTTP/1.1"), request(start=b"HEAD / HTTP/1.1"))
        self.assertEqual(conn.value(), b"HTTP/1.1 200 OK\r\n\r\n" * 2)
        self.assertFalse(conn.transport.disconnecting)

    def test_head_with_declared_length_not_written(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.start(200, [], 10)
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(request(start=b"HEAD / HTTP/1.1"))
        self.assertEqual(conn.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        self.assertFalse(conn.transport.disconnected)

    def test_no_content_and_not_modified(self) -> None:
        for status in (204, 304):

            def answer(request: ServerRequest, status: int = status) -> None:
                request.start(status, [], 5)
                request.write(b"hello")
                request.finish()

            conn = Connection(FakeHandler(answer))
            conn.send(get(), get())
            reason = b"No Content" if status == 204 else b"Not Modified"
            self.assertEqual(conn.value(), b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason) * 2)
            self.assertFalse(conn.transport.disconnecting)


class StreamedAnswerTests(SynchronousTestCase):
    def test_chunked_when_length_unknown(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.start(200, [], None)
            request.write(b"hello")
            request.write(b"")
            request.write(b" world")
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        self.assertEqual(conn.handler.requests[0].sent_bytes, 11)
        self.assertFalse(conn.transport.disconnecting)

    def test_close_delimited_for_http10(self) -> None:
        def answer(request: ServerRequest) -> None:
            request.start(200, [], None)
            request.write(b"hello")
            self.assertFalse(conn.transport.disconnecting)
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(request(b"Connection: keep-alive", start=b"GET / HTTP/1.0", host=False))
        self.assertEqual(conn.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello")
        self.assertTrue(conn.transport.disconnecting)

    def test_short_body_aborts(self) -> None:
        """A fixed-length answer that falls short must not look complete: the connection is
        reset, and the request's end says so."""
        done: List[Any] = []

        def answer(request: ServerRequest) -> None:
            request.on_done = lambda req, reason: done.append(reason)
            request.start(200, [], 10)
            request.write(b"hel")
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertTrue(conn.transport.disconnected)
        self.assertIs(conn.handler.requests[0].state, ResponseState.ABORTED)
        [reason] = done
        self.assertIsInstance(reason, Failure)
        self.assertTrue(conn.value().endswith(b"\r\n\r\nhel"))

    def test_long_body_aborts(self) -> None:
        """More bytes than declared would be read as the start of the next answer."""

        def answer(request: ServerRequest) -> None:
            request.start(200, [], 5)
            request.write(b"hel")
            request.write(b"lo, and more")
            request.finish()

        conn = Connection(FakeHandler(answer))
        conn.send(get())
        self.assertTrue(conn.transport.disconnected)
        self.assertTrue(conn.value().endswith(b"\r\n\r\nhel"))
        self.assertIs(conn.handler.requests[0].state, ResponseState.ABORTED)

    def test_writes_after_the_end_dropped(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get())
        [req] = conn.handler.requests
        ok(req)
        before = conn.value()
        req.write(b"late")
        req.finish()
        req.abort()
        self.assertEqual(conn.value(), before)
        self.assertFalse(conn.transport.disconnected)


class RefusalTests(SynchronousTestCase):
    def test_refused_with_the_handler_shape(self) -> None:
        conn = Connection()
        conn.send(request(b"Host: a b", host=False))
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nDate: " + DATE + b"\r\n"
            b"Content-Length: 12\r\nConnection: close\r\n\r\ninvalid Host",
        )
        self.assertEqual(conn.handler.refusals, [(400, "invalid Host")])
        self.assertEqual(conn.handler.requests, [])
        self.assertTrue(conn.transport.disconnecting)

    def test_refused_request_carries_its_head(self) -> None:
        conn = Connection()
        conn.send(request(b"Host: a", start=b"DELETE /x HTTP/1.1"))
        [refused] = conn.handler.refused_requests
        self.assertEqual((refused.method, refused.target), (b"DELETE", b"/x"))
        self.assertIsNotNone(refused.refusal)

    def test_statuses(self) -> None:
        rows = [
            (request(b"Content-Length: 1001", start=b"POST / HTTP/1.1"), 413),
            (get(b"/" + b"a" * 9000), 414),
            (request(*(b"X-%d: v" % i for i in range(100))), 431),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00", 400),
            (request(start=b"GET / HTTP/2.0"), 505),
        ]
        for raw, status in rows:
            conn = Connection()
            conn.send(raw)
            self.assertEqual(conn.statuses()[-1], status, raw[:40])
            self.assertEqual(conn.responses()[-1].header(b"connection"), b"close")

    def test_refusal_after_earlier_answers(self) -> None:
        """Answers stay in order: a refusal waits for the answers before it."""
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1") + get(b"/2") + b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        self.assertEqual(conn.value(), b"")
        self.assertEqual(conn.handler.refusals, [])
        echo_target(conn.handler.requests[0])
        self.assertEqual(conn.handler.refusals, [])
        echo_target(conn.handler.requests[1])
        responses = conn.responses()
        self.assertEqual([r.status for r in responses], [200, 200, 400])
        self.assertEqual([r.header(b"connection") for r in responses], [None, None, b"close"])
        self.assertTrue(conn.transport.disconnecting)

    def test_nothing_parsed_after_a_refusal(self) -> None:
        conn = Connection()
        conn.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" + get(b"/after"))
        conn.send(get(b"/later"))
        self.assertEqual(conn.statuses(), [400])
        self.assertEqual(conn.handler.requests, [])

    def test_half_close_and_linger(self) -> None:
        """On TCP the refusal half-closes: the client reads the answer, not a reset caused by
        the bytes it still sends. Those are dropped for ``linger_s``, then the connection
        goes."""
        transport = TCPTransport()
        conn = Connection(transport=transport)
        conn.send(request(b"Host: a b"))
        self.assertEqual(conn.statuses(), [400])
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        self.assertEqual([c.getTime() for c in conn.clock.getDelayedCalls()], [2.0])
        conn.send(get(), b"x" * 10000)
        self.assertEqual(conn.statuses(), [400])
        conn.clock.advance(LIMITS.linger_s)
        self.assertTrue(transport.disconnected)
        conn.lose(ConnectionLost())
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_connection_lost_while_lingering(self) -> None:
        conn = Connection(transport=TCPTransport())
        conn.send(request(b"Host: a b"))
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.assertIs(conn.protocol.state, ConnectionState.CLOSED)

    def test_reading_resumed_to_drop_input(self) -> None:
        """A refusal queued behind paused pipelined requests resumes reading once answered."""
        conn = Connection(FakeHandler(None), transport=TCPTransport())
        conn.send(get(b"/1") + get(b"/2"))
        self.assertEqual(conn.transport.producerState, "paused")
        conn.send(b"BAD\r\n")
        echo_target(conn.handler.requests[0])
        echo_target(conn.handler.requests[1])
        self.assertEqual(conn.statuses(), [200, 200, 400])
        self.assertEqual(conn.transport.producerState, "producing")


class TimeoutTests(SynchronousTestCase):
    def test_nothing_sent(self) -> None:
        conn = Connection()
        conn.clock.advance(LIMITS.header_timeout_s - 0.1)
        self.assertEqual(conn.value(), b"")
        conn.clock.advance(0.1)
        self.assertEqual(conn.statuses(), [408])
        self.assertEqual(conn.handler.refusals, [(408, "request head not received in time")])
        # It waited from the connection's start: the answer's duration counts from there.
        self.assertEqual(conn.handler.refused_requests[0].refusal.since, 0.0)
        self.assertTrue(conn.transport.disconnecting)
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_partial_head(self) -> None:
        conn = Connection()
        conn.clock.advance(5)
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        conn.clock.advance(5)
        self.assertEqual(conn.statuses(), [408])

    def test_head_of_the_next_request(self) -> None:
        """After an answer, the first byte of the next request starts its header clock."""
        conn = Connection()
        conn.send(get())
        conn.clock.advance(25)
        conn.send(b"GET / HT")
        conn.clock.advance(9)
        self.assertEqual(conn.statuses(), [200])
        conn.clock.advance(1)
        self.assertEqual(conn.statuses(), [200, 408])
        self.assertEqual(conn.handler.refused_requests[0].refusal.since, 25.0)  # its first byte

    def test_head_clock_waits_for_earlier_answers(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1"), b"GET /2 HTTP/1.1\r\n")
        conn.clock.advance(LIMITS.header_timeout_s * 3)
        self.assertEqual(conn.value(), b"")
        echo_target(conn.handler.requests[0])
        conn.clock.advance(LIMITS.header_timeout_s)
        self.assertEqual(conn.statuses(), [200, 408])

    def test_body(self) -> None:
        conn = Connection(FakeHandler(read_bodies))
        conn.send(post(b"0123456789")[:-7])
        conn.clock.advance(LIMITS.body_timeout_s)
        self.assertEqual(conn.statuses(), [408])
        self.assertEqual(conn.responses()[0].body, b"request body not received in time")
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertTrue(conn.transport.disconnecting)
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_body_of_a_queued_request(self) -> None:
        """The handler does not have it yet: it is refused when its turn comes."""
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/1") + post(b"0123456789")[:-7])
        conn.clock.advance(LIMITS.body_timeout_s)
        self.assertEqual(conn.value(), b"")
        echo_target(conn.handler.requests[0])
        self.assertEqual(conn.statuses(), [200, 408])
        self.assertEqual(len(conn.handler.requests), 1)

    def test_body_arriving_in_time(self) -> None:
        conn = Connection(FakeHandler(read_bodies))
        conn.send(post(b"0123456789")[:-7])
        conn.clock.advance(LIMITS.body_timeout_s - 1)
        conn.send(b"3456789")
        conn.clock.advance(1)
        self.assertEqual([r.body for r in conn.responses()], [b"got 0123456789"])

    def test_idle_closes_quietly(self) -> None:
        conn = Connection()
        conn.send(get())
        conn.transport.clear()
        conn.clock.advance(LIMITS.idle_timeout_s - 0.1)
        self.assertFalse(conn.transport.disconnecting)
        conn.clock.advance(0.1)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(conn.value(), b"")
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_no_idle_close_while_answering(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get())
        conn.clock.advance(LIMITS.idle_timeout_s * 10)
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        ok(conn.handler.requests[0])
        self.assertEqual(len(conn.clock.getDelayedCalls()), 1)

    def test_idle_clock_restarts_per_request(self) -> None:
        conn = Connection()
        conn.send(get())
        conn.clock.advance(20)
        conn.send(get())
        conn.clock.advance(20)
        self.assertFalse(conn.transport.disconnecting)

    def test_no_timers_after_connection_lost(self) -> None:
        """Whatever the state, a lost connection leaves no timer behind."""
        states = [
            lambda conn: None,
            lambda conn: conn.send(b"GET / HT"),
            lambda conn: conn.send(get()),
            lambda conn: conn.send(post(b"abc")[:-1]),
            lambda conn: conn.send(get(b"/", *UPGRADE) + get(b"/next")),
        ]
        for handler in (FakeHandler(), FakeHandler(None)):
            for setup in states:
                conn = Connection(handler)
                setup(conn)
                conn.lose(ConnectionLost())
                self.assertEqual(conn.clock.getDelayedCalls(), [])


class ContinueTests(SynchronousTestCase):
    EXPECT = b"Expect: 100-continue"

    def test_written_when_the_body_is_wanted(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello", self.EXPECT)[:-5])
        self.assertEqual(conn.value(), b"")
        consumer = read_body(conn.handler.requests[0])
        self.assertEqual(conn.value(), CONTINUE)
        conn.send(b"hello")
        self.assertEqual(consumer.body, b"hello")
        self.assertEqual(conn.statuses(), [100, 200])
        self.assertFalse(conn.transport.disconnecting)

    def test_the_body_clock_starts_with_the_100(self) -> None:
        """A client that expects 100 Continue waits for it: the handler taking longer than the
        body timeout to want the body is no 408; the body then has its whole timeout."""
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello", self.EXPECT)[:-5])
        conn.clock.advance(LIMITS.body_timeout_s + 5)
        self.assertEqual(conn.value(), b"")
        read_body(conn.handler.requests[0])
        self.assertEqual(conn.value(), CONTINUE)
        conn.clock.advance(LIMITS.body_timeout_s - 1)
        self.assertEqual(conn.statuses(), [100])
        conn.clock.advance(1)
        self.assertEqual(conn.statuses(), [100, 408])

    def test_not_when_the_handler_answers_first(self) -> None:
        """An answer before the body is read makes the client skip sending it: no 100, and
        the connection closes after (the body's bytes may be on their way)."""
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello", self.EXPECT)[:-5])
        req = conn.handler.requests[0]
        req.respond(417, [], b"")
        consumer = FakeConsumer()
        req.body.attach(consumer)
        self.assertEqual(conn.statuses(), [417])
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertNotIn(CONTINUE, conn.value())

    def test_not_when_the_body_is_on_its_way(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello", self.EXPECT)[:-2])
        read_body(conn.handler.requests[0])
        conn.send(b"lo")
        self.assertEqual(conn.statuses(), [200])

    def test_not_to_http10(self) -> None:
        conn = Connection(FakeHandler(None))
        raw = request(self.EXPECT, b"Content-Length: 5", start=b"POST / HTTP/1.0", host=False)
        conn.send(raw)
        read_body(conn.handler.requests[0])
        self.assertEqual(conn.value(), b"")

    def test_not_without_expect(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello")[:-5])
        read_body(conn.handler.requests[0])
        self.assertEqual(conn.value(), b"")


class RequestBodyTests(SynchronousTestCase):
    def test_buffered_to_high_water_then_paused(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"x" * 100)[:-100], b"a" * 10)
        body = conn.handler.requests[0].body
        self.assertEqual((body.declared, body.received), (100, 10))
        self.assertEqual(conn.transport.producerState, "producing")
        conn.send(b"b" * 10)
        self.assertEqual(conn.transport.producerState, "paused")
        consumer = FakeConsumer()
        body.attach(consumer)
        self.assertEqual(consumer.body, b"a" * 10 + b"b" * 10)
        self.assertEqual(conn.transport.producerState, "producing")
        conn.send(b"c" * 80)
        self.assertEqual(consumer.data[-1], b"c" * 80)
        self.assertTrue(consumer.finished)
        self.assertFalse(body.replayable)
        self.assertIsNone(body.buffered())

    def test_consumer_pauses_the_client(self) -> None:
        """The consumer's transport pauses the client through the body (a push producer)."""
        conn = Connection(FakeHandler(None))
        conn.send(post(b"x" * 100)[:-100], b"a" * 10)
        body = conn.handler.requests[0].body
        body.attach(FakeConsumer())
        body.pauseProducing()
        self.assertEqual(conn.transport.producerState, "paused")
        body.pauseProducing()
        body.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")

    def test_consumer_pause_outlasts_the_buffer(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"x" * 100)[:-100], b"a" * 20)
        body = conn.handler.requests[0].body
        self.assertEqual(conn.transport.producerState, "paused")
        consumer = FakeConsumer()
        consumer.write = lambda data: body.pauseProducing()  # type: ignore[method-assign]
        body.attach(consumer)
        self.assertEqual(conn.transport.producerState, "paused")
        body.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")

    def test_detach_resumes(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"x" * 100)[:-100])
        body = conn.handler.requests[0].body
        body.attach(FakeConsumer())
        body.pauseProducing()
        body.detach()
        self.assertEqual(conn.transport.producerState, "producing")

    def test_whole_body_with_the_head(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello"))
        body = conn.handler.requests[0].body
        self.assertTrue(body.present and body.complete and body.replayable)
        self.assertEqual(body.buffered(), b"hello")
        for _ in range(2):  # a retry attaches again
            consumer = FakeConsumer()
            body.attach(consumer)
            self.assertEqual((consumer.body, consumer.finished), (b"hello", True))

    def test_no_body(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get())
        body = conn.handler.requests[0].body
        self.assertFalse(body.present)
        self.assertTrue(body.complete)
        consumer = FakeConsumer()
        body.attach(consumer)
        self.assertEqual((consumer.data, consumer.finished), ([], True))

    def test_route_limit_on_a_chunked_body(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(chunked_post() + b"3\r\nabc\r\n")
        req = conn.handler.requests[0]
        req.body.limit = 5
        consumer = read_body(req)
        conn.send(b"3\r\ndef\r\n3\r\nghi\r\n")
        self.assertEqual(consumer.failure.status, 413)
        self.assertEqual(consumer.body, b"abc")
        self.assertEqual(conn.statuses(), [413])
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")

    def test_route_limit_crossed_before_the_consumer(self) -> None:
        """A body cut at the limit while buffered is not a whole body (a retry must not send
        it as one)."""
        conn = Connection(FakeHandler(None))
        conn.send(chunked_post())
        body = conn.handler.requests[0].body
        body.limit = 5
        conn.send(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
        self.assertIsNone(body.buffered())
        consumer = FakeConsumer()
        body.attach(consumer)
        self.assertEqual((consumer.failure.status, consumer.finished), (413, False))

    def test_body_over_the_core_cap(self) -> None:
        conn = Connection(FakeHandler(None), transport=TCPTransport())
        conn.send(chunked_post())
        consumer = read_body(conn.handler.requests[0])
        conn.send(b"3e8\r\n" + b"x" * 1000 + b"\r\n", b"1\r\nx\r\n0\r\n\r\n" + get(b"/after"))
        self.assertEqual(consumer.failure.status, 413)
        self.assertEqual(len(consumer.body), 1000)
        self.assertEqual(conn.statuses(), [413])
        self.assertEqual(len(conn.handler.requests), 1)
        self.assertTrue(conn.transport.write_closed)

    def test_bad_chunk(self) -> None:
        conn = Connection(FakeHandler(read_bodies))
        conn.send(chunked_post(), b"3\r\nabc\r\nzz\r\n")
        self.assertEqual(conn.statuses(), [400])

    def test_client_gone_mid_body(self) -> None:
        done: List[Any] = []
        conn = Connection(FakeHandler(None))
        conn.send(post(b"hello")[:-2])
        req = conn.handler.requests[0]
        req.on_done = lambda request, reason: done.append(reason)
        consumer = FakeConsumer()
        req.body.attach(consumer)
        conn.lose(ConnectionLost())
        self.assertEqual(consumer.failure.status, 499)
        self.assertIs(req.state, ResponseState.ABORTED)
        [reason] = done
        self.assertTrue(reason.check(ConnectionLost))
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_answer_before_the_body_closes(self) -> None:
        """An answer while the body still arrives: nothing more can be read on this
        connection, so it closes after."""
        conn = Connection(FakeHandler(ok), transport=TCPTransport())
        conn.send(post(b"x" * 100)[:-50])
        self.assertEqual(conn.statuses(), [200])
        self.assertEqual(conn.responses()[0].header(b"connection"), b"close")
        self.assertTrue(conn.transport.write_closed)
        conn.send(b"x" * 50 + get())
        self.assertEqual(len(conn.handler.requests), 1)


class SplitReadTests(SynchronousTestCase):
    RAW = (
        chunked_post(b"X-A: 1", path=b"/p?q")
        + b"3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"
        + post(b"fghij", path=b"/f")
        + request(start=b"OPTIONS * HTTP/1.1")
        + get(b"/g", b"Connection: close")
    )

    def run_reads(self, *reads: bytes) -> Tuple[Any, bytes]:
        conn = Connection(FakeHandler(read_bodies))
        conn.send(*reads)
        seen = [
            (r.method, r.target, r.fields.pairs, r.body.received) for r in conn.handler.requests
        ]
        return seen, conn.value()

    def test_split_at_every_offset(self) -> None:
        """Wherever the reads split the requests, the same heads, bodies and answers."""
        raw = self.RAW
        expected = self.run_reads(raw)
        self.assertEqual(len(expected[0]), 4)
        self.assertEqual(
            [r.body for r in read_responses(expected[1])], [b"got abcde", b"got fghij", b"*", b"/g"]
        )
        for cut in range(1, len(raw)):
            self.assertEqual(self.run_reads(raw[:cut], raw[cut:]), expected, cut)

    def test_one_byte_at_a_time(self) -> None:
        raw = self.RAW
        self.assertEqual(
            self.run_reads(*(raw[i : i + 1] for i in range(len(raw)))), self.run_reads(raw)
        )


class DrainTests(SynchronousTestCase):
    def test_idle_connections_close_busy_ones_after_their_answer(self) -> None:
        factory = ServerFactory(FakeHandler(None), MemoryReactorClock(), LIMITS)
        idle, busy, fresh = Connection(factory=factory), Connection(factory=factory), None
        idle.send(get())
        ok(factory.handler.requests[0])
        busy.send(get())
        fresh = Connection(factory=factory)
        factory.drain()
        self.assertTrue(factory.draining)
        self.assertTrue(idle.transport.disconnecting)
        self.assertTrue(fresh.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        ok(factory.handler.requests[1])
        self.assertEqual(busy.responses()[0].header(b"connection"), b"close")
        self.assertTrue(busy.transport.disconnecting)

    def test_partial_head_not_idle(self) -> None:
        factory = ServerFactory(FakeHandler(), MemoryReactorClock(), LIMITS)
        conn = Connection(factory=factory)
        conn.send(get(), b"GET / HTTP/1.1\r\n")
        factory.drain()
        self.assertFalse(conn.transport.disconnecting)
        conn.send(b"Host: a\r\n\r\n")
        self.assertEqual([r.header(b"connection") for r in conn.responses()], [None, b"close"])
        self.assertTrue(conn.transport.disconnecting)

    def test_close_all(self) -> None:
        factory = ServerFactory(FakeHandler(), MemoryReactorClock(), LIMITS)
        one, two = Connection(factory=factory), Connection(factory=factory)
        d = factory.close_all(5.0)
        self.assertTrue(one.transport.disconnecting and two.transport.disconnecting)
        self.assertNoResult(d)
        one.lose()
        factory.clock.advance(5.0)
        self.assertTrue(two.transport.disconnected)
        self.assertFalse(one.transport.disconnected)
        two.lose(ConnectionLost())
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(factory.clock.getDelayedCalls(), [])

    def test_close_all_without_connections(self) -> None:
        factory = ServerFactory(FakeHandler(), MemoryReactorClock(), LIMITS)
        self.assertIsNone(self.successResultOf(factory.close_all(5.0)))


class UpgradeTests(SynchronousTestCase):
    def test_declined_upgrade_then_the_next_request(self) -> None:
        """Not a 101: what followed the upgrade request's head is the next request, parsed by
        a fresh parser."""
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/ws", *UPGRADE) + get(b"/next"))
        [req] = conn.handler.requests
        self.assertEqual(req.head.upgrade, b"websocket")
        self.assertEqual(conn.transport.producerState, "paused")
        req.respond(404, [], b"")
        self.assertEqual(conn.transport.producerState, "producing")
        conn.clock.advance(0)
        self.assertEqual([r.target for r in conn.handler.requests], [b"/ws", b"/next"])
        echo_target(conn.handler.requests[1])
        self.assertEqual(conn.statuses(), [404, 200])

    def test_bytes_held_until_the_answer(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/ws", *UPGRADE))
        conn.send(get(b"/next")[:10], get(b"/next")[10:])
        self.assertEqual(len(conn.handler.requests), 1)
        conn.handler.requests[0].respond(426, [], b"")
        conn.clock.advance(0)
        self.assertEqual([r.target for r in conn.handler.requests], [b"/ws", b"/next"])

    def test_upgrade_behind_pipelined_requests(self) -> None:
        conn = Connection(FakeHandler(echo_target))
        conn.send(get(b"/1") + get(b"/ws", *UPGRADE) + get(b"/next"))
        conn.clock.advance(0)
        self.assertEqual([r.body for r in conn.responses()], [b"/1", b"/ws", b"/next"])

    def test_switch_protocols(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/ws", *UPGRADE) + b"\x81\x05hello")
        conn.send(b"\x81\x03bye")
        [req] = conn.handler.requests
        transport = req.switch_protocols([(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
        self.assertIs(transport, conn.transport)
        self.assertEqual(req.upgrade_rest, [b"\x81\x05hello", b"\x81\x03bye"])
        self.assertEqual(
            conn.value(),
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        self.assertIs(conn.protocol.state, ConnectionState.TUNNEL)
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        tunnel = conn.protocol.tunnel = FakeTunnel()
        conn.send(b"\x81\x02hi")
        self.assertEqual(tunnel.data, [b"\x81\x02hi"])
        req.end_tunnel(7, 9)
        self.assertEqual((req.state, req.body.received, req.sent_bytes), (ResponseState.DONE, 7, 9))
        conn.lose()
        self.assertTrue(tunnel.lost_reason.check(ConnectionDone))

    def test_upgrade_with_a_body_refused(self) -> None:
        """httptools does not read an upgrade request's body: it would become the next
        request (smuggled past whatever sits in front of the gateway)."""
        conn = Connection(FakeHandler(None))
        smuggled = get(b"/smuggled")
        conn.send(post(smuggled, *UPGRADE))
        conn.clock.advance(0)
        self.assertEqual(conn.statuses(), [400])
        self.assertEqual(conn.handler.requests, [])

    def test_connection_lost_before_held_bytes_are_parsed(self) -> None:
        conn = Connection(FakeHandler(None))
        conn.send(get(b"/ws", *UPGRADE) + get(b"/next"))
        conn.handler.requests[0].respond(404, [], b"")
        conn.lose()
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        conn.clock.advance(0)
        self.assertEqual(len(conn.handler.requests), 1)
