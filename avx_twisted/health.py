"""Active health checks: probe each upstream target periodically and flip ``Target.healthy``."""

from __future__ import annotations

from typing import Any, Callable, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from avx_twisted import grpc
from avx_twisted.config import HealthCheckConfig
from avx_twisted.upstream import Target

_USER_AGENT = b"avx-gateway-health/1"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"

Listener = Callable[[Target, bool], None]


class HealthChecker:
    """Probes one target every interval; flips ``target.healthy`` after consecutive results.

    Targets start healthy, so traffic flows at start-up before the first probes have answered;
    ``unhealthy_threshold`` consecutive failures take a target out, ``healthy_threshold``
    consecutive successes bring it back. ``check`` never errbacks, so the loop never dies.
    """

    log = Logger()

    def __init__(
        self,
        target: Target,
        config: HealthCheckConfig,
        agent: IAgent,
        clock: IReactorTime,
        route: str = "",
    ) -> None:
        self.target = target
        self.config = config
        self.route = route
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self._agent = agent
        self._clock = clock
        self._uri = target.base_uri + quote(config.path, safe=_PATH_SAFE).encode("ascii")
        self._headers = Headers({b"Host": [target.netloc], b"User-Agent": [_USER_AGENT]})
        self._listeners: list[Listener] = []
        self._probe: Deferred[bool] | None = None
        self._waiters: list[Deferred[bool]] = []
        self._stopping = False  # the probe in flight is being cancelled by stop()
        self._timed_out = False  # ... or by its timeout
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(target, healthy)`` whenever ``target.healthy`` flips."""
        self._listeners.append(fn)

    def start(self) -> None:
        """Probe now and then every ``interval_ms``; does nothing if already started."""
        if not self._loop.running:
            d = self._loop.start(self.config.interval_ms / 1000.0, now=True)
            d.addErrback(lambda f: self.log.failure("health check loop died", f))

    def stop(self) -> None:
        """Stop probing and abort the probe in flight (its result is not counted)."""
        if self._loop.running:
            self._loop.stop()
        if self._probe is not None:
            self._stopping = True
            self._probe.cancel()

    def check(self) -> Deferred[bool]:
        """Probe once; fires True on an expected status, False on anything else.

        While a probe is in flight another call starts nothing and gets that probe's result.
        (The LoopingCall itself never overlaps: it waits for the returned Deferred, and skips
        the intervals missed meanwhile.) Cancelling the returned Deferred doesn't abort the
        probe; ``stop`` does.
        """
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if self._probe is None:
            self._stopping = self._timed_out = False
            self._probe = self._send()
            self._probe.addBoth(self._finished)
        return waiter

    def _send(self) -> Deferred[bool]:
        if self.config.kind == "grpc":
            d = maybeDeferred(self._ask_grpc)
        else:
            d = maybeDeferred(self._agent.request, b"GET", self._uri, self._headers.copy())
            d.addCallback(self._read)
        # A real Agent fails a cancelled request with e.g. ResponseNeverReceived, not
        # CancelledError, so who cancelled is remembered rather than read off the failure.
        d.addTimeout(self.config.timeout_ms / 1000.0, self._clock, self._on_timeout)
        d.addCallbacks(self._got_status, self._failed)
        return d

    def _ask_grpc(self) -> Deferred[int]:
        """``grpc.health.v1.Health/Check`` over the target's HTTP/2 connections: SERVING
        counts as status 200, anything else (another status, a gRPC error) as 503."""
        target = self.target
        fields = [
            (b"host", target.netloc),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", _USER_AGENT),
        ]
        d = target.connector.request_h2(
            b"POST",
            target.base_path + grpc.HEALTH_CHECK_PATH,
            fields,
            grpc.health_request(self.config.service),
        )
        return d.addCallback(_read_grpc_health)

    def _got_status(self, code: int) -> bool:
        if self.config.kind == "grpc":
            if code == _SERVING:
                self._record_success()
                return True
            self._record_failure(_GRPC_WHY.get(code, "not SERVING"))
            return False
        return self._got_http_status(code)

    def _read(self, response: IResponse) -> Deferred[int]:
        # Read the body even when the status is wrong so the pooled connection is reusable.
        return _discard_body(response).addCallback(lambda _: response.code)

    def _on_timeout(self, result: Any, timeout: float) -> Any:
        self._timed_out = True
        return result

    def _got_http_status(self, code: int) -> bool:
        if code in self.config.expected_status:
            self._record_success()
            return True
        self._record_failure("status " + str(code))
        return False

    def _failed(self, failure: Failure) -> bool:
        if self._stopping:
            return False  # stopped: says nothing about the target
        if self._timed_out:
            why = "no answer within " + str(self.config.timeout_ms) + " ms"
        else:
            why = failure.getErrorMessage() or failure.type.__name__
        self._record_failure(why)
        return False

    def _finished(self, ok: bool | Failure) -> None:
        if isinstance(ok, Failure):  # a bug of ours; keep the loop alive anyway
            self.log.failure("health check of {url} failed", ok, url=self.target.url)
            ok = False
        self._probe = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)

    def _record_success(self) -> None:
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        n = self.consecutive_successes
        if not self.target.healthy and n >= self.config.healthy_threshold:
            self.log.info(
                "target {url} of route {route} is healthy again after {n} successful checks",
                url=self.target.url,
                route=self.route,
                n=n,
            )
            self._flip(True)

    def _record_failure(self, why: str) -> None:
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        n = self.consecutive_failures
        if self.target.healthy and n >= self.config.unhealthy_threshold:
            self.log.warn(
                "target {url} of route {route} is unhealthy after {n} failed checks: {why}",
                url=self.target.url,
                route=self.route,
                n=n,
                why=why,
            )
            self._flip(False)

    def _flip(self, healthy: bool) -> None:
        self.target.healthy = healthy
        for fn in self._listeners:
            try:
                fn(self.target, healthy)
            except Exception:
                self.log.failure("health listener {fn!r} failed", fn=fn)


#: What a gRPC check's answer is mapped to: SERVING, another serving status, a gRPC error.
_SERVING, _NOT_SERVING, _GRPC_ERROR = 200, 503, 502
_GRPC_WHY = {_NOT_SERVING: "not SERVING", _GRPC_ERROR: "gRPC error"}


class _Collect:
    """A response body and its trailers, whole (a health answer is a few bytes)."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.data: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.done: Deferred[int] = Deferred(lambda _: response.abort())  # the check's timeout

    def body_data(self, data: bytes) -> None:
        if sum(map(len, self.data)) < 4096:
            self.data.append(data)

    def body_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = trailers

    def body_done(self) -> None:
        response = self.response
        code = grpc.status_of(self.trailers) if self.trailers else None
        if code is None:
            code = grpc.status_of(response.fields)  # a trailers-only answer
        if response.status != 200 or code != 0:
            self.done.callback(_GRPC_ERROR)
            return
        status = grpc.health_status(b"".join(self.data))
        self.done.callback(_SERVING if status == grpc.SERVING else _NOT_SERVING)

    def body_failed(self, reason: Failure) -> None:
        self.done.errback(reason)


def _read_grpc_health(response: Any) -> Deferred[int]:
    sink = _Collect(response)
    response.deliver(sink)
    return sink.done


class HealthCheckers:
    """All checkers of a runtime; start()/stop() them together (the gateway service calls these)."""

    def __init__(self, checkers: Sequence[HealthChecker]) -> None:
        self.checkers: tuple[HealthChecker, ...] = tuple(checkers)

    def start(self) -> None:
        """Start every checker (each probes its target at once)."""
        for checker in self.checkers:
            checker.start()

    def stop(self) -> None:
        """Stop every checker and abort the probes in flight."""
        for checker in self.checkers:
            checker.stop()


class _DiscardBody(Protocol):
    """Reads a probe's response body to its end and drops it."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _discard_body(response: IResponse) -> Deferred[None]:
    """Consume ``response``'s body; cancelling the Deferred cuts the connection.

    (``readBody`` cannot: the Agent's body transport has no ``abortConnection``, only
    ``stopProducing``, which closes the connection just as well.)
    """

    def cancel(_: Deferred[None]) -> None:
        transport = protocol.transport
        stop = getattr(transport, "abortConnection", None) or getattr(
            transport, "stopProducing", None
        )
        if stop is not None:
            stop()

    done: Deferred[None] = Deferred(cancel)
    protocol = _DiscardBody(done)
    response.deliverBody(protocol)
    return done
