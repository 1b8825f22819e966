"""A circuit breaker per upstream target, so a failing target is left alone while it recovers.

Transitions are computed when the breaker is asked (no timers): an open breaker turns half-open
the first time someone looks at it after the recovery timeout, using the injected clock.
"""

from __future__ import annotations

import enum
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from avx_twisted.config import CircuitBreakerConfig


class BreakerState(enum.Enum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The state as a number for a metrics gauge: closed 0, half_open 1, open 2."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
_CLOSED = BreakerState.CLOSED
_HALF_OPEN = BreakerState.HALF_OPEN
_OPEN = BreakerState.OPEN

Listener = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures; open -> half-open once
    `recovery_timeout_ms` has passed; half-open lets `half_open_requests` trial requests through;
    a trial success closes it, a trial failure re-opens it (and restarts the recovery timer).

    Results that arrive while open (requests sent before it opened) are ignored, and in
    half-open only results of trials count: a result with no trial in flight is ignored too.
    """

    log = Logger()

    def __init__(self, config: CircuitBreakerConfig, clock: IReactorTime, name: str = "") -> None:
        self.name = name
        self._clock = clock
        self._threshold = config.failure_threshold
        self._recovery = config.recovery_timeout_ms / 1000.0
        self._max_trials = config.half_open_requests
        self._state = _CLOSED
        self._failures = 0
        self._trials = 0
        self._opened_at = 0.0
        self._listeners: list[Listener] = []

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose recovery timeout has passed is half-open."""
        if self._state is _OPEN and self._clock.seconds() >= self._opened_at + self._recovery:
            self._move(_HALF_OPEN)
        return self._state

    def available(self) -> bool:
        """May a request be sent to this target now?"""
        if self._state is _CLOSED:
            return True
        return self.state is _HALF_OPEN and self._trials < self._max_trials

    def on_request(self) -> None:
        """A request is being sent; in half-open it takes a trial slot."""
        if self._state is not _CLOSED and self.state is _HALF_OPEN:
            self._trials += 1

    def record_success(self) -> None:
        """A request succeeded: resets the failure count, or closes the breaker after a trial."""
        state = self.state
        if state is _CLOSED:
            self._failures = 0
        elif state is _HALF_OPEN and self._trials > 0:
            self._move(_CLOSED)

    def record_failure(self) -> None:
        """A request failed: opens the breaker at the threshold, or re-opens it after a trial."""
        state = self.state
        if state is _CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._move(_OPEN)
        elif state is _HALF_OPEN and self._trials > 0:
            self._move(_OPEN)

    def release_trial(self) -> None:
        """A half-open trial ended with no verdict (e.g. the client went away): free its slot."""
        if self._state is _HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def retry_after(self) -> float:
        """Seconds until an open breaker turns half-open (0 if not open)."""
        if self.state is not _OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._recovery - self._clock.seconds())

    def add_listener(self, fn: Listener) -> None:
        """Call `fn(breaker, old, new)` on every state change (e.g. to update a metrics gauge)."""
        self._listeners.append(fn)

    def _move(self, new: BreakerState) -> None:
        """Enter `new`: reset the counters, start the recovery timer if opening, tell everyone."""
        old = self._state
        self._state = new
        self._failures = 0
        self._trials = 0
        if new is _OPEN:
            self._opened_at = self._clock.seconds()
        level = self.log.info if new is _CLOSED else self.log.warn
        level("circuit {name} {old} -> {new}", name=self.name, old=old.value, new=new.value)
        for fn in list(self._listeners):
            try:
                fn(self, old, new)
            except Exception:
                self.log.failure(
                    "circuit {name} listener {listener} failed", name=self.name, listener=fn
                )
