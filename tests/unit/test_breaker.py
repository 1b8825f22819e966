"""Tests for the per-target circuit breaker in avx_twisted.breaker."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.breaker import BreakerState, CircuitBreaker
from avx_twisted.config import CircuitBreakerConfig

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


def make(
    threshold: int = 3, recovery_ms: int = 30000, trials: int = 1
) -> tuple[CircuitBreaker, Clock]:
    """A breaker named "t1" on a fresh Clock."""
    clock = Clock()
    config = CircuitBreakerConfig(
        failure_threshold=threshold, recovery_timeout_ms=recovery_ms, half_open_requests=trials
    )
    return CircuitBreaker(config, clock, name="t1"), clock


def fail(breaker: CircuitBreaker, times: int) -> None:
    """Send `times` requests that all fail."""
    for _ in range(times):
        breaker.on_request()
        breaker.record_failure()


def opened(threshold: int = 3, trials: int = 1) -> tuple[CircuitBreaker, Clock]:
    """A breaker that has just opened at time 0 with a 30 s recovery timeout."""
    breaker, clock = make(threshold=threshold, trials=trials)
    fail(breaker, threshold)
    return breaker, clock


def half_opened(trials: int = 1) -> tuple[CircuitBreaker, Clock]:
    """A breaker that has just turned half-open at time 30."""
    breaker, clock = opened(trials=trials)
    clock.advance(30)
    assert breaker.state is HALF_OPEN  # the lazy transition happens on this read
    return breaker, clock


class BreakerStateTests(SynchronousTestCase):
    """BreakerState values and their metrics gauge numbers."""

    def test_gauge_numbers(self) -> None:
        self.assertEqual([CLOSED.gauge, HALF_OPEN.gauge, OPEN.gauge], [0, 1, 2])

    def test_values(self) -> None:
        self.assertEqual(
            [s.value for s in (CLOSED, HALF_OPEN, OPEN)], ["closed", "half_open", "open"]
        )


class ClosedTests(SynchronousTestCase):
    """A closed breaker counts consecutive failures and opens at the threshold."""

    def test_starts_closed_and_available(self) -> None:
        breaker, _ = make()
        self.assertIs(breaker.state, CLOSED)
        self.assertTrue(breaker.available())
        self.assertEqual(breaker.retry_after(), 0)

    def test_threshold_minus_one_failures_stay_closed(self) -> None:
        breaker, _ = make(threshold=3)
        fail(breaker, 2)
        self.assertIs(breaker.state, CLOSED)
        self.assertTrue(breaker.available())

    def test_opens_after_exactly_threshold_failures(self) -> None:
        breaker, _ = make(threshold=3)
        fail(breaker, 3)
        self.assertIs(breaker.state, OPEN)

    def test_threshold_of_one_opens_on_first_failure(self) -> None:
        breaker, _ = make(threshold=1)
        fail(breaker, 1)
        self.assertIs(breaker.state, OPEN)

    def test_success_resets_consecutive_failures(self) -> None:
        breaker, _ = make(threshold=3)
        fail(breaker, 2)
        breaker.on_request()
        breaker.record_success()
        fail(breaker, 2)
        self.assertIs(breaker.state, CLOSED)
        fail(breaker, 1)
        self.assertIs(breaker.state, OPEN)

    def test_release_trial_when_closed_is_harmless(self) -> None:
        breaker, _ = make()
        breaker.release_trial()
        self.assertIs(breaker.state, CLOSED)
        self.assertTrue(breaker.available())


class OpenTests(SynchronousTestCase):
    """An open breaker refuses requests until the recovery timeout has passed."""

    def test_open_is_not_available(self) -> None:
        breaker, _ = opened()
        self.assertFalse(breaker.available())

    def test_still_open_one_millisecond_before_recovery(self) -> None:
        breaker, clock = opened()
        clock.advance(29.999)
        self.assertIs(breaker.state, OPEN)
        self.assertFalse(breaker.available())

    def test_half_open_exactly_at_recovery_timeout(self) -> None:
        breaker, clock = opened()
        clock.advance(29.999)
        self.assertIs(breaker.state, OPEN)
        clock.advance(0.001)
        self.assertIs(breaker.state, HALF_OPEN)

    def test_available_turns_half_open_without_reading_state(self) -> None:
        breaker, clock = opened()
        clock.advance(30)
        self.assertTrue(breaker.available())
        self.assertIs(breaker.state, HALF_OPEN)

    def test_retry_after_counts_down(self) -> None:
        breaker, clock = opened()
        self.assertEqual(breaker.retry_after(), 30.0)
        clock.advance(12.5)
        self.assertEqual(breaker.retry_after(), 17.5)
        clock.advance(17.5)
        self.assertEqual(breaker.retry_after(), 0)
        self.assertIs(breaker.state, HALF_OPEN)

    def test_late_failure_while_open_does_not_restart_timer(self) -> None:
        breaker, clock = opened()
        clock.advance(20)
        breaker.record_failure()
        self.assertIs(breaker.state, OPEN)
        self.assertEqual(breaker.retry_after(), 10.0)
        clock.advance(10)
        self.assertIs(breaker.state, HALF_OPEN)

    def test_late_success_while_open_does_not_close(self) -> None:
        breaker, clock = opened()
        clock.advance(5)
        breaker.record_success()
        self.assertIs(breaker.state, OPEN)
        self.assertEqual(breaker.retry_after(), 25.0)

    def test_on_request_while_open_takes_no_trial(self) -> None:
        breaker, clock = opened()
        breaker.on_request()
        clock.advance(30)
        self.assertTrue(breaker.available())


class HalfOpenTests(SynchronousTestCase):
    """A half-open breaker lets a few trials through; their verdict decides."""

    def test_allows_exactly_one_trial(self) -> None:
        breaker, _ = half_opened(trials=1)
        self.assertTrue(breaker.available())
        breaker.on_request()
        self.assertFalse(breaker.available())
        self.assertIs(breaker.state, HALF_OPEN)

    def test_allows_exactly_three_trials(self) -> None:
        breaker, _ = half_opened(trials=3)
        allowed = 0
        for _ in range(5):
            if breaker.available():
                breaker.on_request()
                allowed += 1
        self.assertEqual(allowed, 3)
        self.assertFalse(breaker.available())

    def test_retry_after_is_zero(self) -> None:
        breaker, _ = half_opened()
        self.assertEqual(breaker.retry_after(), 0)

    def test_trial_success_closes(self) -> None:
        breaker, _ = half_opened()
        breaker.on_request()
        breaker.record_success()
        self.assertIs(breaker.state, CLOSED)
        self.assertTrue(breaker.available())

    def test_closing_starts_a_fresh_failure_count(self) -> None:
        breaker, _ = half_opened()
        breaker.on_request()
        breaker.record_success()
        fail(breaker, 2)
        self.assertIs(breaker.state, CLOSED)
        fail(breaker, 1)
        self.assertIs(breaker.state, OPEN)

    def test_trial_failure_reopens_and_restarts_timer(self) -> None:
        breaker, clock = half_opened()
        clock.advance(2)
        breaker.on_request()
        breaker.record_failure()
        self.assertIs(breaker.state, OPEN)
        self.assertFalse(breaker.available())
        self.assertEqual(breaker.retry_after(), 30.0)
        clock.advance(29.5)
        self.assertIs(breaker.state, OPEN)
        clock.advance(0.5)
        self.assertIs(breaker.state, HALF_OPEN)

    def test_one_of_three_trials_failing_reopens(self) -> None:
        breaker, _ = half_opened(trials=3)
        for _ in range(3):
            breaker.on_request()
        breaker.record_success()
        breaker.record_failure()
        self.assertIs(breaker.state, CLOSED)
        breaker, _ = half_opened(trials=3)
        for _ in range(3):
            breaker.on_request()
        breaker.record_failure()
        self.assertIs(breaker.state, OPEN)

    def test_release_trial_frees_a_slot(self) -> None:
        breaker, _ = half_opened(trials=1)
        breaker.on_request()
        self.assertFalse(breaker.available())
        breaker.release_trial()
        self.assertTrue(breaker.available())
        self.assertIs(breaker.state, HALF_OPEN)

    def test_release_trial_without_trial_in_flight_is_harmless(self) -> None:
        breaker, _ = half_opened(trials=1)
        breaker.release_trial()
        breaker.on_request()
        self.assertFalse(breaker.available())

    def test_result_without_trial_in_flight_is_ignored(self) -> None:
        """A request sent before the breaker opened finishes after it turned half-open."""
        breaker, _ = half_opened()
        breaker.record_success()
        self.assertIs(breaker.state, HALF_OPEN)
        breaker.record_failure()
        self.assertIs(breaker.state, HALF_OPEN)
        self.assertTrue(breaker.available())

    def test_released_trial_verdict_no_longer_counts(self) -> None:
        breaker, _ = half_opened()
        breaker.on_request()
        breaker.release_trial()
        breaker.record_success()
        self.assertIs(breaker.state, HALF_OPEN)


class ListenerTests(SynchronousTestCase):
    """Listeners hear about every state change, in order."""

    def test_listener_gets_every_transition_in_order(self) -> None:
        breaker, clock = make(threshold=2)
        seen: list[tuple[CircuitBreaker, BreakerState, BreakerState]] = []
        breaker.add_listener(lambda b, old, new: seen.append((b, old, new)))
        fail(breaker, 2)
        clock.advance(30)
        breaker.available()
        breaker.on_request()
        breaker.record_success()
        self.assertEqual(
            seen,
            [(breaker, CLOSED, OPEN), (breaker, OPEN, HALF_OPEN), (breaker, HALF_OPEN, CLOSED)],
        )

    def test_trial_failure_notifies_half_open_to_open(self) -> None:
        breaker, _ = half_opened()
        seen: list[tuple[BreakerState, BreakerState]] = []
        breaker.add_listener(lambda b, old, new: seen.append((old, new)))
        breaker.on_request()
        breaker.record_failure()
        self.assertEqual(seen, [(HALF_OPEN, OPEN)])

    def test_no_notification_without_a_change(self) -> None:
        breaker, _ = make(threshold=3)
        seen: list[object] = []
        breaker.add_listener(lambda *args: seen.append(args))
        fail(breaker, 2)
        breaker.record_success()
        self.assertEqual(seen, [])

    def test_failing_listener_is_logged_and_others_still_run(self) -> None:
        breaker, _ = make(threshold=1)
        seen: list[BreakerState] = []

        def broken(b: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
            raise ValueError("boom")

        breaker.add_listener(broken)
        breaker.add_listener(lambda b, old, new: seen.append(new))
        fail(breaker, 1)
        self.assertIs(breaker.state, OPEN)
        self.assertEqual(seen, [OPEN])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class LoggingTests(SynchronousTestCase):
    """Every state change is logged as a structured event."""

    def setUp(self) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def transitions(self) -> list[tuple[object, ...]]:
        """(level, name, old, new) of each logged state change."""
        return [
            (e["log_level"], e["name"], e["old"], e["new"])
            for e in self.observer
            if e.get("log_format") == "circuit {name} {old} -> {new}"
        ]

    def test_opening_is_a_warning(self) -> None:
        breaker, _ = make(threshold=1)
        fail(breaker, 1)
        self.assertEqual(self.transitions(), [(LogLevel.warn, "t1", "closed", "open")])
        event = self.observer[0]
        self.assertEqual(event["log_namespace"], "avx_twisted.breaker.CircuitBreaker")

    def test_full_cycle_is_logged_with_info_for_closing(self) -> None:
        breaker, clock = make(threshold=1)
        fail(breaker, 1)
        clock.advance(30)
        breaker.on_request()
        breaker.record_success()
        self.assertEqual(
            self.transitions(),
            [
                (LogLevel.warn, "t1", "closed", "open"),
                (LogLevel.warn, "t1", "open", "half_open"),
                (LogLevel.info, "t1", "half_open", "closed"),
            ],
        )
