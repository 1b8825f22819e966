"""The forwarder's decisions driven by a fake connector and task.Clock: timeouts, retries,
breakers; requests are real ServerRequests of the HTTP core over a StringTransport."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.breaker import CircuitBreaker
from avx_twisted.config import CircuitBreakerConfig
from avx_twisted.h1 import Fields, ResponseHead, ServerFactory
from avx_twisted.proxy import Forwarder
from avx_twisted.proxy_headers import upstream_request_fields
from avx_twisted.upstream import Upstream


class FakeAgent:
    """Records requests (method, full URI, head, body stream); each answer is a Deferred the
    test fires, or a ready result."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, bytes, Any]] = []
        self.answers: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled: list[bytes] = []

    def request(self, method: bytes, uri: bytes, head: bytes, stream: Any) -> Deferred[Any]:
        self.calls.append((method, uri, head, stream))
        if self.answers:
            answer = self.answers.pop(0)
            return fail(answer) if isinstance(answer, Exception) else succeed(answer)
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(uri))
        self.pending.append(d)
        return d


class FakeConnector:
    """A target's connector handing requests to the FakeAgent with the full URI."""

    h2 = False

    def __init__(self, agent: FakeAgent, target: Any) -> None:
        self.agent = agent
        self.origin = target.scheme + b"://" + target.netloc

    def request(self, head, method, stream=None, chunked=False, resend=False, on_interim=None):
        target = head.split(b" ", 2)[1]
        return self.agent.request(method, self.origin + target, head, stream)


class FakeProducer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class FakeResponse:
    """An upstream response as the pool hands it over (see h1.UpstreamResponse)."""

    def __init__(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.status = code
        self.fields = Fields([(k, v) for k, v in (headers or {}).items()])
        self.head = ResponseHead(code, b"Phrase", b"1.1", self.fields)
        self.head.content_length = len(body)
        self.length = len(body)
        self.body = body
        self.producer = FakeProducer()
        self.aborted = False

    def deliver(self, sink: Any) -> None:
        if self.body:
            sink.body_data(self.body)
        sink.body_done()

    def abort(self) -> None:
        self.aborted = True


class Route:
    def __init__(self, urls, agent, retries=0, timeout_s=5.0, clock=None, threshold=None):
        self.name = "r"
        self.upstream = Upstream.from_urls(urls)
        self.agent = agent
        for target in self.upstream.targets:
            target.connector = FakeConnector(agent, target)
        self.retries = retries
        self.timeout_s = timeout_s
        self.strip_headers = frozenset()
        self.owned_response_headers = frozenset()
        self.metrics = None
        self.websocket = True
        self.compression = None
        self.response_rules = None
        self.response_json = None
        self.validate = None
        self.websocket_idle_timeout_s = 300.0
        if threshold is not None:
            for target in self.upstream.targets:
                target.breaker = CircuitBreaker(
                    CircuitBreakerConfig(failure_threshold=threshold, recovery_timeout_ms=1000),
                    clock,
                )

    def extra_headers(self, ctx):
        return []


class Captured:
    """A request handler that keeps the requests it is handed."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def handle(self, request: Any) -> None:
        self.requests.append(request)

    def refused(self, request: Any, status: int, message: str) -> None:
        request.respond(status)


def make_request(method: bytes = b"GET", host: bytes | None = b"gw.example") -> Any:
    """A ServerRequest of the HTTP core, on a connection over a StringTransport."""
    handler = Captured()
    factory = ServerFactory(handler, Clock())
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    host_line = b"Host: " + host + b"\r\n" if host is not None else b""
    protocol.dataReceived(method + b" /x HTTP/1.1\r\n" + host_line + b"\r\n")
    request = handler.requests[0]
    request.test_transport = transport
    return request


def written(request: Any) -> bytes:
    return request.test_transport.value()


class TimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.forwarder = Forwarder(self.clock)

    def test_whole_exchange_timeout_cancels_upstream_and_answers_504(self):
        route = Route(["http://a"], self.agent, timeout_s=2.0)
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        pending = self.agent.pending[0]
        self.clock.advance(1.999)
        self.assertFalse(pending.called)
        self.clock.advance(0.001)
        self.assertEqual(self.agent.cancelled, [b"http://a/x"])
        self.assertIn(b"504 Gateway Timeout", written(request))
        self.assertIn(b'"upstream timed out"', written(request))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(route.upstream.targets[0].in_flight, 0)

    def test_answer_in_time_cancels_the_timer(self):
        route = Route(["http://a"], self.agent, timeout_s=2.0)
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        self.agent.pending[0].callback(FakeResponse(200, b"ok"))
        self.assertTrue(request.finished)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connect_timeout_is_504_and_retried_elsewhere(self):
        route = Route(["http://a", "http://b"], self.agent, retries=1)
        self.agent.answers = [error.TimeoutError(), FakeResponse(200, b"from b")]
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        self.assertEqual([c[1] for c in self.agent.calls], [b"http://a/x", b"http://b/x"])
        self.assertTrue(written(request).endswith(b"from b"))

    def test_connect_timeout_without_retries_is_504(self):
        route = Route(["http://a"], self.agent)
        self.agent.answers = [error.TimeoutError()]
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        self.assertIn(b"504", written(request).split(b"\r\n")[0])
        self.assertIn(b"upstream connect timed out", written(request))


class RetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.forwarder = Forwarder(self.clock)

    def test_retry_count_is_respected(self):
        route = Route(["http://a", "http://b", "http://c"], self.agent, retries=1)
        self.agent.answers = [error.ConnectionRefusedError(), error.ConnectionRefusedError()]
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        self.assertEqual(len(self.agent.calls), 2)
        self.assertIn(b"502", written(request).split(b"\r\n")[0])

    def test_non_idempotent_methods_are_sent_once(self):
        for method in (b"POST", b"PATCH"):
            agent = FakeAgent()
            agent.answers = [error.ConnectionRefusedError()]
            route = Route(["http://a", "http://b"], agent, retries=3)
            request = make_request(method)
            self.forwarder.forward(request, route, b"/x")
            self.assertEqual(len(agent.calls), 1, method)

    def test_4xx_and_500_are_not_retried(self):
        for code in (404, 500):
            agent = FakeAgent()
            agent.answers = [FakeResponse(code, b"no")]
            route = Route(["http://a", "http://b"], agent, retries=2)
            request = make_request()
            self.forwarder.forward(request, route, b"/x")
            self.assertEqual(len(agent.calls), 1, code)

    def test_each_retry_goes_to_a_target_not_tried_yet(self):
        route = Route(["http://a", "http://b", "http://c"], self.agent, retries=2)
        self.agent.answers = [FakeResponse(503), FakeResponse(502), FakeResponse(200, b"c")]
        request = make_request()
        self.forwarder.forward(request, route, b"/x")
        self.assertEqual(
            sorted(c[1] for c in self.agent.calls), [b"http://a/x", b"http://b/x", b"http://c/x"]
        )


class BreakerTests(SynchronousTestCase):
    def test_failures_open_the_circuit_and_503_carries_retry_after(self):
        clock = Clock()
        agent = FakeAgent()
        route = Route(["http://a"], agent, clock=clock, threshold=2)
        forwarder = Forwarder(clock)
        agent.answers = [FakeResponse(500), error.ConnectionRefusedError()]
        for _ in range(2):
            forwarder.forward(make_request(), route, b"/x")
        request = make_request()
        forwarder.forward(request, route, b"/x")
        self.assertEqual(len(agent.calls), 2)
        self.assertIn(b"503", written(request).split(b"\r\n")[0])
        self.assertIn(b"Retry-After: 1", written(request))

    def test_client_disconnect_frees_a_half_open_trial(self):
        clock = Clock()
        agent = FakeAgent()
        route = Route(["http://a"], agent, clock=clock, threshold=1)
        breaker = route.upstream.targets[0].breaker
        breaker.record_failure()
        clock.advance(1.0)
        forwarder = Forwarder(clock)
        request = make_request()
        forwarder.forward(request, route, b"/x")  # the one trial
        self.assertFalse(breaker.available())
        request.channel.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(breaker.available())


class HeaderTests(SynchronousTestCase):
    def test_forwarded_headers_without_client_host(self):
        # HTTP/1.0 allows a request without Host: the target's own host is sent upstream.
        handler = Captured()
        protocol = ServerFactory(handler, Clock()).buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"GET /x HTTP/1.0\r\n\r\n")
        request = handler.requests[0]
        target = Upstream.from_urls(["http://svc:8001"]).targets[0]
        fields = Fields(upstream_request_fields(request, target.netloc, preserve_host=True))
        self.assertEqual(fields.get_all(b"host"), [b"svc:8001"])
        self.assertFalse(fields.has(b"x-forwarded-host"))


class LocalFaultTests(SynchronousTestCase):
    """What the gateway itself ran out of, or what the client did, never counts against a
    target: its breaker stays closed."""

    def route_and_breaker(self, clock: Clock, agent: FakeAgent) -> tuple[Route, Any]:
        route = Route(["http://a"], agent, clock=clock, threshold=1)
        return route, route.upstream.targets[0].breaker

    def test_out_of_file_descriptors_is_503_and_leaves_the_breaker_closed(self):
        import errno

        clock, agent = Clock(), FakeAgent()
        route, breaker = self.route_and_breaker(clock, agent)
        agent.answers = [error.ConnectError(errno.EMFILE, "Too many open files")]
        request = make_request()
        Forwarder(clock).forward(request, route, b"/x")
        self.assertIn(b"503 Service Unavailable", written(request))
        self.assertIn(b"Retry-After: 1", written(request))
        self.assertEqual(breaker.state.value, "closed")
        self.assertTrue(breaker.available())

    def test_a_failed_client_body_is_its_status_and_not_an_upstream_failure(self):
        from avx_twisted.h1 import BodyFailed

        clock, agent = Clock(), FakeAgent()
        route, breaker = self.route_and_breaker(clock, agent)
        agent.answers = [BodyFailed(413, "request body too large")]
        request = make_request(b"POST")
        Forwarder(clock).forward(request, route, b"/x")
        self.assertIn(b"413 Content Too Large", written(request))
        self.assertIn(b'"request body too large"', written(request))
        self.assertEqual(breaker.state.value, "closed")

    def test_upstream_closing_before_answering_is_502_and_retried(self):
        from avx_twisted.h1 import UpstreamClosed

        clock, agent = Clock(), FakeAgent()
        route = Route(["http://a", "http://b"], agent, retries=1)
        agent.answers = [UpstreamClosed(None, False), FakeResponse(200, b"from b")]
        request = make_request()
        Forwarder(clock).forward(request, route, b"/x")
        self.assertTrue(written(request).endswith(b"from b"))

    def test_the_request_head_is_one_block_with_forwarded_fields(self):
        clock, agent = Clock(), FakeAgent()
        route = Route(["http://a:8080/base"], agent)
        request = make_request()
        Forwarder(clock).forward(request, route, b"/x?q=1")
        head = agent.calls[0][2]
        self.assertTrue(head.startswith(b"GET /base/x?q=1 HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: gw.example\r\n", head)
        self.assertIn(b"\r\nX-Forwarded-Proto: http\r\n", head)
        self.assertTrue(head.endswith(b"\r\n\r\n"))
