"""Tests for avx_twisted.health: active checks flip Target.healthy at the thresholds."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from avx_twisted.config import HealthCheckConfig
from avx_twisted.health import HealthChecker, HealthCheckers
from avx_twisted.upstream import Target


class FakeResponse:
    """Just enough of IResponse for readBody: a status and a body delivered at once (or never)."""

    def __init__(self, code: int, body: bytes = b"ok", stall: bool = False) -> None:
        self.code = code
        self.phrase = b"Whatever"
        self.headers = Headers()
        self.length = len(body)
        self.body = body
        self.stall = stall
        self.transport = StringTransport()
        self.delivered = False

    def deliverBody(self, protocol: Any) -> None:
        self.delivered = True
        protocol.makeConnection(self.transport)
        if not self.stall:
            protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))


class Call:
    """One request made to the FakeAgent; the test answers it through ``d``."""

    def __init__(self, method: bytes, uri: bytes, headers: Headers | None, agent: FakeAgent):
        self.method, self.uri, self.headers = method, uri, headers
        self.cancelled = False
        self._agent = agent
        self.d: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancelled = True
        if self._agent.cancel_like_agent:
            # What twisted.web.client.Agent does: not a CancelledError.
            d.errback(ResponseNeverReceived([Failure(Exception("cancelled"))]))

    def respond(self, code: int, **kw: Any) -> FakeResponse:
        response = FakeResponse(code, **kw)
        self.d.callback(response)
        return response

    def fail(self, exc: Exception) -> None:
        self.d.errback(exc)


@implementer(IAgent)
class FakeAgent:
    """An IAgent whose requests are recorded and answered by the test."""

    def __init__(self, raises: Exception | None = None, cancel_like_agent: bool = False) -> None:
        self.calls: list[Call] = []
        self.raises = raises
        self.cancel_like_agent = cancel_like_agent

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        if self.raises is not None:
            raise self.raises
        call = Call(method, uri, headers, self)
        self.calls.append(call)
        return call.d

    @property
    def last(self) -> Call:
        return self.calls[-1]


class HealthCheckerTestMixin:
    """Builds a checker over a fake agent and a Clock."""

    def make(self, url: str = "http://svc:8001", **config: Any) -> HealthChecker:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.target = Target(url)
        self.checker = HealthChecker(
            self.target, HealthCheckConfig(**config), self.agent, self.clock, route="api"
        )
        return self.checker

    def probe(self, code: int) -> Any:
        """Run one direct check answered with ``code``; return its result."""
        d = self.checker.check()
        self.agent.last.respond(code)
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def fail_probe(self) -> Any:
        d = self.checker.check()
        self.agent.last.fail(ConnectionRefusedError("connection refused"))
        return self.successResultOf(d)  # type: ignore[attr-defined]


class ProbeTests(HealthCheckerTestMixin, SynchronousTestCase):
    """One probe: what is sent and what counts as success."""

    def test_probes_base_uri_plus_path_with_host_and_user_agent(self) -> None:
        self.make("http://svc:8001/base/", path="/healthz")
        self.checker.check()
        call = self.agent.last
        self.assertEqual(call.method, b"GET")
        self.assertEqual(call.uri, b"http://svc:8001/base/healthz")
        assert call.headers is not None
        self.assertEqual(call.headers.getRawHeaders(b"host"), [b"svc:8001"])
        self.assertEqual(call.headers.getRawHeaders(b"user-agent"), [b"avx-gateway-health/1"])

    def test_expected_status_is_success_and_body_is_read(self) -> None:
        self.make()
        d = self.checker.check()
        response = self.agent.last.respond(200)
        self.assertIs(self.successResultOf(d), True)
        self.assertTrue(response.delivered)
        self.assertEqual(self.checker.consecutive_successes, 1)

    def test_unexpected_status_is_failure_and_body_is_still_read(self) -> None:
        self.make()
        d = self.checker.check()
        response = self.agent.last.respond(503)
        self.assertIs(self.successResultOf(d), False)
        self.assertTrue(response.delivered)
        self.assertEqual(self.checker.consecutive_failures, 1)

    def test_any_of_several_expected_statuses_is_success(self) -> None:
        self.make(expected_status=(200, 204))
        self.assertIs(self.probe(204), True)
        self.assertIs(self.probe(200), True)
        self.assertIs(self.probe(500), False)
        self.assertIs(self.probe(301), False)

    def test_connection_error_is_failure(self) -> None:
        self.make()
        self.assertIs(self.fail_probe(), False)
        self.assertEqual(self.checker.consecutive_failures, 1)

    def test_agent_raising_synchronously_is_failure(self) -> None:
        self.make()
        self.agent.raises = ValueError("boom")
        self.assertIs(self.successResultOf(self.checker.check()), False)
        self.assertEqual(self.checker.consecutive_failures, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_answer_fails_after_timeout_and_cancels_the_request(self) -> None:
        self.make(timeout_ms=1000)
        d = self.checker.check()
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.assertFalse(self.agent.last.cancelled)
        self.clock.advance(0.001)
        self.assertIs(self.successResultOf(d), False)
        self.assertTrue(self.agent.last.cancelled)
        self.assertEqual(self.checker.consecutive_failures, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_counts_even_when_the_agent_fails_cancel_with_its_own_error(self) -> None:
        self.make(timeout_ms=1000, unhealthy_threshold=1)
        self.agent.cancel_like_agent = True
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        d = self.checker.check()
        self.clock.advance(1)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(logged[0]["why"], "no answer within 1000 ms")

    def test_stalled_body_times_out_and_aborts_the_connection(self) -> None:
        self.make(timeout_ms=500)
        d = self.checker.check()
        response = self.agent.last.respond(200, stall=True)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertIs(self.successResultOf(d), False)
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(self.checker.consecutive_failures, 1)

    def test_check_during_a_probe_in_flight_starts_no_second_probe(self) -> None:
        self.make()
        first, second = self.checker.check(), self.checker.check()
        self.assertEqual(len(self.agent.calls), 1)
        self.agent.last.respond(200)
        self.assertIs(self.successResultOf(first), True)
        self.assertIs(self.successResultOf(second), True)
        self.assertEqual(self.checker.consecutive_successes, 1)


class ThresholdTests(HealthCheckerTestMixin, SynchronousTestCase):
    """Consecutive results flip the target, exactly at the thresholds."""

    def test_target_starts_healthy(self) -> None:
        self.make()
        self.assertTrue(self.target.healthy)

    def test_unhealthy_exactly_at_unhealthy_threshold(self) -> None:
        self.make(unhealthy_threshold=3)
        self.probe(500)
        self.fail_probe()
        self.assertTrue(self.target.healthy)
        self.probe(500)
        self.assertFalse(self.target.healthy)
        self.assertEqual(self.checker.consecutive_failures, 3)

    def test_healthy_again_exactly_at_healthy_threshold(self) -> None:
        self.make(unhealthy_threshold=1, healthy_threshold=2)
        self.probe(500)
        self.assertFalse(self.target.healthy)
        self.probe(200)
        self.assertFalse(self.target.healthy)
        self.probe(200)
        self.assertTrue(self.target.healthy)
        self.assertEqual(self.checker.consecutive_successes, 2)

    def test_a_success_resets_the_failure_streak(self) -> None:
        self.make(unhealthy_threshold=3)
        self.probe(500)
        self.probe(500)
        self.probe(200)
        self.assertEqual(self.checker.consecutive_failures, 0)
        self.probe(500)
        self.probe(500)
        self.assertTrue(self.target.healthy)
        self.probe(500)
        self.assertFalse(self.target.healthy)

    def test_a_failure_resets_the_success_streak(self) -> None:
        self.make(unhealthy_threshold=1, healthy_threshold=2)
        self.probe(500)
        self.probe(200)
        self.probe(500)
        self.assertEqual(self.checker.consecutive_successes, 0)
        self.probe(200)
        self.assertFalse(self.target.healthy)
        self.probe(200)
        self.assertTrue(self.target.healthy)

    def test_listener_is_called_on_flips_only(self) -> None:
        self.make(unhealthy_threshold=2, healthy_threshold=2)
        seen: list[tuple[Target, bool]] = []
        self.checker.add_listener(lambda t, healthy: seen.append((t, healthy)))
        for code in (200, 500, 500, 500, 500, 200, 200, 200):
            self.probe(code)
        self.assertEqual(seen, [(self.target, False), (self.target, True)])

    def test_a_failing_listener_is_logged_and_does_not_stop_the_others(self) -> None:
        self.make(unhealthy_threshold=1)
        seen: list[bool] = []
        self.checker.add_listener(lambda t, healthy: 1 // 0)
        self.checker.add_listener(lambda t, healthy: seen.append(healthy))
        self.assertIs(self.probe(500), False)
        self.assertEqual(seen, [False])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_flips_are_logged(self) -> None:
        self.make("http://svc:8001", unhealthy_threshold=2, healthy_threshold=1)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.probe(500)
        self.assertEqual(len(logged), 0)
        self.probe(503)
        self.probe(200)
        self.assertEqual(len(logged), 2)
        down, up = logged[0], logged[1]
        self.assertEqual(down["log_level"], LogLevel.warn)
        self.assertEqual(
            down["log_format"],
            "target {url} of route {route} is unhealthy after {n} failed checks: {why}",
        )
        self.assertEqual(
            (down["url"], down["route"], down["n"], down["why"]),
            ("http://svc:8001", "api", 2, "status 503"),
        )
        self.assertEqual(up["log_level"], LogLevel.info)
        self.assertIn("healthy again", up["log_format"])
        self.assertEqual((up["url"], up["route"], up["n"]), ("http://svc:8001", "api", 1))


class LoopTests(HealthCheckerTestMixin, SynchronousTestCase):
    """start()/stop(): the probing schedule and clean shutdown."""

    def test_start_probes_now_then_every_interval(self) -> None:
        self.make(interval_ms=5000)
        self.checker.start()
        self.assertEqual(len(self.agent.calls), 1)
        self.agent.last.respond(200)
        self.clock.advance(4.999)
        self.assertEqual(len(self.agent.calls), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.agent.calls), 2)
        self.agent.last.respond(200)
        self.clock.advance(5)
        self.assertEqual(len(self.agent.calls), 3)

    def test_start_is_idempotent(self) -> None:
        self.make()
        self.checker.start()
        self.checker.start()
        self.assertEqual(len(self.agent.calls), 1)

    def test_a_slow_probe_is_not_overlapped(self) -> None:
        self.make(interval_ms=1000, timeout_ms=5000)
        self.checker.start()
        self.clock.advance(3.5)
        self.assertEqual(len(self.agent.calls), 1)
        self.agent.last.respond(200)
        self.clock.advance(0.5)  # next interval boundary
        self.assertEqual(len(self.agent.calls), 2)

    def test_failures_and_exceptions_do_not_stop_the_loop(self) -> None:
        self.make(interval_ms=1000, unhealthy_threshold=2)
        self.checker.start()
        self.agent.last.fail(ConnectionRefusedError())
        self.agent.raises = RuntimeError("agent bug")
        self.clock.advance(1)
        self.assertFalse(self.target.healthy)
        self.agent.raises = None
        self.clock.advance(1)
        self.assertEqual(len(self.agent.calls), 2)
        self.agent.last.respond(200)
        self.assertEqual(self.checker.consecutive_successes, 1)

    def test_stop_cancels_the_probe_in_flight_and_leaves_no_delayed_calls(self) -> None:
        self.make()
        self.checker.start()
        call = self.agent.last
        self.checker.stop()
        self.assertTrue(call.cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # An aborted probe says nothing about the target.
        self.assertEqual(self.checker.consecutive_failures, 0)
        self.clock.advance(60)
        self.assertEqual(len(self.agent.calls), 1)

    def test_stop_does_not_count_an_agent_style_cancellation_error(self) -> None:
        self.make(unhealthy_threshold=1)
        self.agent.cancel_like_agent = True
        self.checker.start()
        self.checker.stop()
        self.assertTrue(self.agent.last.cancelled)
        self.assertTrue(self.target.healthy)
        self.assertEqual(self.checker.consecutive_failures, 0)

    def test_stop_between_probes_leaves_no_delayed_calls(self) -> None:
        self.make()
        self.checker.start()
        self.agent.last.respond(200)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.checker.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.checker.stop()  # idempotent

    def test_restart_after_stop(self) -> None:
        self.make()
        self.checker.start()
        self.checker.stop()
        self.checker.start()
        self.assertEqual(len(self.agent.calls), 2)
        self.agent.last.respond(200)
        self.assertEqual(self.checker.consecutive_successes, 1)


class HealthCheckersTests(SynchronousTestCase):
    """HealthCheckers starts and stops all its checkers together."""

    def test_start_and_stop_all(self) -> None:
        clock, agent = Clock(), FakeAgent()
        config = HealthCheckConfig()
        targets = [Target("http://a:1"), Target("http://b:2")]
        checkers = HealthCheckers([HealthChecker(t, config, agent, clock) for t in targets])
        checkers.start()
        self.assertEqual([c.uri for c in agent.calls], [b"http://a:1/health", b"http://b:2/health"])
        checkers.stop()
        self.assertTrue(all(c.cancelled for c in agent.calls))
        self.assertEqual(clock.getDelayedCalls(), [])
