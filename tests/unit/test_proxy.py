"""The forwarder's decisions driven by a fake Agent and task.Clock: timeouts, retries, breakers."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from avx_twisted.breaker import CircuitBreaker
from avx_twisted.config import CircuitBreakerConfig
from avx_twisted.proxy import Forwarder, upstream_request_headers
from avx_twisted.upstream import Upstream


class FakeAgent:
    """Records requests; each answer is a Deferred the test fires (or a ready result)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, Headers, Any]] = []
        self.answers: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled: list[bytes] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.calls.append((method, uri, headers, bodyProducer))
        if self.answers:
            answer = self.answers.pop(0)
            return fail(answer) if isinstance(answer, Exception) else succeed(answer)
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(uri))
        self.pending.append(d)
        return d


class FakeConnector:
    """A target's connector that hands requests to the FakeAgent with the full URI."""

    def __init__(self, agent: FakeAgent, target: Any) -> None:
        self.agent = agent
        self.origin = target.scheme + b"://" + target.netloc

    def request(self, method, path, headers, body):
        return self.agent.request(method, self.origin + path, headers, body)


class FakeResponse:
    def __init__(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.code = code
        self.phrase = b"Phrase"
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.length = len(body)
        self.body = body

    def deliverBody(self, protocol):
        from twisted.internet.testing import StringTransport

        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


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
        if threshold is not None:
            for target in self.upstream.targets:
                target.breaker = CircuitBreaker(
                    CircuitBreakerConfig(failure_threshold=threshold, recovery_timeout_ms=1000),
                    clock,
                )


    def extra_headers(self, ctx):
        return []


def make_request(method: bytes = b"GET") -> Request:
    channel = DummyChannel()
    request = Request(channel)
    request.method = method
    request.uri = request.path = b"/x"
    request.clientproto = b"HTTP/1.1"
    request.content = BytesIO()
    request.requestHeaders.setRawHeaders(b"host", [b"gw.example"])
    request.test_channel = channel  # Twisted drops request.channel once the request finishes
    return request


def written(request: Request) -> bytes:
    return request.test_channel.transport.written.getvalue()


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
        self.assertIn(b"504 Gateway Time-out", written(request))
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
        request.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(breaker.available())


class HeaderTests(SynchronousTestCase):
    def test_forwarded_headers_without_client_host(self):
        request = make_request()
        request.requestHeaders.removeHeader(b"host")
        target = Upstream.from_urls(["http://svc:8001"]).targets[0]
        headers = upstream_request_headers(request, target, preserve_host=True)
        self.assertEqual(headers.getRawHeaders(b"host"), [b"svc:8001"])
        self.assertFalse(headers.hasHeader(b"x-forwarded-host"))
