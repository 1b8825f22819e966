"""Where a JWT verifier's public keys come from: a JWKS URL, or one found by OIDC discovery.

A :class:`JwksSource` keeps one :class:`KeySet` current:

- with ``oidc_issuer``, the JWKS URL is the ``jwks_uri`` of
  ``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must be the configured one;
  the document is fetched again when its own cache lifetime has passed or the last JWKS fetch
  failed (a moved ``jwks_uri``), and a failed rediscovery keeps the URL already known;
- the JWKS is fetched at start and again when its answer's cache lifetime (``Cache-Control:
  max-age``, ``Expires``) ends, within [``min_refresh_s``, ``max_refresh_s``], or after
  ``refresh_s`` when the answer says nothing; a failed fetch is retried sooner;
- a token naming an unknown ``kid`` refetches it at most once per ``unknown_kid_cooldown_s``,
  and never while a fetch is in flight: a flood of bad ``kid`` values makes one fetch;
- a new set replaces the old one whole, and only once it has arrived and parsed: on any
  failure the keys already known stay in use.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from ._idp import IdPError, failure_reason, fetch_json, freshness_s, timed_out, url_problem

__all__ = ["KeySet", "EMPTY_KEYSET", "JwksSource", "MAX_JWKS_BYTES"]

MAX_JWKS_BYTES = 1024 * 1024
MAX_DISCOVERY_BYTES = 256 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
_ACCEPT_JSON = {b"Accept": [b"application/json"]}
_TRIGGERS = ("schedule", "unknown_kid", "discovery")
_REASONS = ("timeout", "connect", "status", "body")

#: alg -> prepared key object usable with that algorithm.
KeysByAlg = Mapping[str, Any]


class KeySet:
    """One JWKS snapshot, replaced as a whole on refresh: ``kid`` -> keys by algorithm."""

    __slots__ = ("by_kid", "only", "count")

    def __init__(self, by_kid: Mapping[str, KeysByAlg], only: KeysByAlg | None, count: int) -> None:
        self.by_kid = by_kid
        #: The keys of the one and only JWK, for tokens without ``kid``; None if there are several.
        self.only = only
        self.count = count


EMPTY_KEYSET = KeySet({}, None, 0)


class _Counters:
    """The ``avx_jwks_refreshes`` and ``avx_idp_errors`` children, bound once (or none)."""

    def __init__(self, metrics: Any) -> None:
        self.refreshes: dict[tuple[str, str], Any] = {}
        self.errors: dict[tuple[str, str], Any] = {}
        if metrics is None:
            return
        for trigger in _TRIGGERS:
            for result in ("ok", "error"):
                self.refreshes[trigger, result] = metrics.jwks_refreshes.labels(trigger, result)
        for kind in ("discovery", "jwks"):
            for reason in _REASONS:
                self.errors[kind, reason] = metrics.idp_errors.labels(kind, reason)

    def refreshed(self, trigger: str, result: str) -> None:
        child = self.refreshes.get((trigger, result))
        if child is not None:
            child.inc()

    def failed(self, kind: str, reason: str) -> None:
        child = self.errors.get((kind, reason))
        if child is not None:
            child.inc()


class _Attempt:
    """One refresh: its ``trigger`` label, and the ``phase`` (``discovery``/``jwks``) it is in."""

    __slots__ = ("trigger", "phase")

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        self.phase = "jwks"


class JwksSource:
    """Keeps :attr:`keys` fresh from ``jwks_url`` or by discovery from ``oidc_issuer``.

    ``parse`` turns a JWKS document into a :class:`KeySet` (raising :class:`IdPError` when it
    holds no usable key). Call :meth:`start` when serving begins and :meth:`stop` when it ends.
    """

    log = Logger()

    #: Least time between two refreshes triggered by tokens with an unknown ``kid``.
    unknown_kid_cooldown_s = 30.0
    #: Bounds of the refresh interval taken from the JWKS answer's cache headers.
    min_refresh_s = 60.0
    max_refresh_s = 86400.0
    #: How soon a failed refresh is retried (at most ``refresh_s``).
    retry_s = 30.0
    #: How long a discovery document is used when its answer has no cache headers.
    discovery_default_s = 3600.0

    def __init__(
        self,
        clock: IReactorTime,
        agent: IAgent | None,
        parse: Callable[[Any], KeySet],
        *,
        jwks_url: str | None = None,
        oidc_issuer: str | None = None,
        refresh_s: float = 300.0,
        timeout_s: float = 10.0,
        metrics: Any = None,
    ) -> None:
        if (jwks_url is None) == (oidc_issuer is None):
            raise ValueError("give jwks_url or oidc_issuer")
        self.keys: KeySet = EMPTY_KEYSET
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.oidc_issuer = oidc_issuer
        #: The JWKS URL: configured, or found by discovery (None until then).
        self.jwks_url = jwks_url
        self._clock = clock
        self._agent = agent
        self._parse = parse
        self._counters = _Counters(metrics)
        self._http: HTTPClient | None = None
        self._inflight: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._running = False
        self._stopped = False
        self._last_unknown_kid: float | None = None
        self._discovered_until = float("-inf")
        self._last_failed = False

    @property
    def where(self) -> str:
        """The issuer or URL the keys come from, for log messages."""
        return self.oidc_issuer or self.jwks_url or ""

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Fetch now and keep the keys fresh until :meth:`stop` (idempotent)."""
        self._stopped = False
        if self._running:
            return
        self._running = True
        self.refresh()

    def stop(self) -> None:
        """Stop refreshing and abandon a fetch in progress; leaves no timers behind."""
        self._stopped = True
        self._running = False
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._inflight is not None:
            self._inflight.cancel()

    # -- refreshing -------------------------------------------------------------------------

    def refresh(self, trigger: str = "schedule") -> Deferred[None]:
        """Fetch the keys (discovering first when needed); fires None either way.

        Failures are logged and counted, and the known keys stay. While a fetch is in flight,
        another call waits for it instead of starting a second.
        """
        if self._inflight is None:
            attempt = _Attempt(trigger)
            d = Deferred.fromCoroutine(self._fetch(attempt))
            d.addTimeout(self.timeout_s, self._clock, timed_out)
            d.addCallbacks(self._install, self._fetch_failed, (attempt,), None, (attempt,))
            d.addBoth(self._fetch_done)
            if d.called:
                return d
            self._inflight = d
        follower: Deferred[None] = Deferred()

        def release(result: Any) -> Any:
            follower.callback(None)
            return result

        self._inflight.addBoth(release)
        return follower

    def refresh_for_unknown_kid(self) -> None:
        """A token named a ``kid`` the keys lack: refetch, unless one did so recently."""
        if self._stopped or self._inflight is not None:
            return
        now = self._clock.seconds()
        last = self._last_unknown_kid
        if last is not None and now - last < self.unknown_kid_cooldown_s:
            return
        self._last_unknown_kid = now
        self.log.info("token with an unknown kid: refreshing the JWKS of {where}", where=self.where)
        self.refresh("unknown_kid")

    def _needs_discovery(self) -> bool:
        if self.oidc_issuer is None:
            return False
        return (
            self.jwks_url is None
            or self._last_failed
            or self._clock.seconds() >= self._discovered_until
        )

    async def _fetch(self, attempt: _Attempt) -> tuple[KeySet, float]:
        """The new key set and how long it stays fresh."""
        if self._http is None:
            self._http = self._make_client()
        if self._needs_discovery():
            attempt.trigger = attempt.phase = "discovery"
            await self._discover()
            attempt.phase = "jwks"
        assert self.jwks_url is not None
        data, headers = await fetch_json(
            self._http, "GET", self.jwks_url, headers=_ACCEPT_JSON, max_bytes=MAX_JWKS_BYTES
        )
        keyset = self._parse(data)
        return keyset, freshness_s(headers, self.refresh_s, self.min_refresh_s, self.max_refresh_s)

    async def _discover(self) -> None:
        """Take ``jwks_uri`` from the discovery document; a failure raises only when no URL is
        known yet (else it is counted and logged, and the known URL is used)."""
        assert self._http is not None and self.oidc_issuer is not None
        url = self.oidc_issuer.rstrip("/") + DISCOVERY_PATH
        try:
            data, headers = await fetch_json(
                self._http, "GET", url, headers=_ACCEPT_JSON, max_bytes=MAX_DISCOVERY_BYTES
            )
            jwks_url = self._jwks_uri(data)
        except CancelledError:
            raise
        except Exception:
            if self.jwks_url is None:
                raise
            failure = Failure()
            self._counters.failed("discovery", failure_reason(failure))
            self.log.warn(
                "OIDC discovery from {url} failed ({error}); keeping jwks_uri {jwks_url}",
                url=url,
                error=failure.getErrorMessage(),
                jwks_url=self.jwks_url,
            )
            return
        if jwks_url != self.jwks_url:
            self.log.info(
                "OIDC discovery: issuer {issuer} publishes its keys at {jwks_url}",
                issuer=self.oidc_issuer,
                jwks_url=jwks_url,
            )
        self.jwks_url = jwks_url
        self._discovered_until = self._clock.seconds() + freshness_s(
            headers, self.discovery_default_s, self.min_refresh_s, self.max_refresh_s
        )

    def _jwks_uri(self, data: Any) -> str:
        """The usable ``jwks_uri`` of a discovery document for the configured issuer."""
        if not isinstance(data, dict):
            raise IdPError("body", "the discovery document is not a JSON object")
        if data.get("issuer") != self.oidc_issuer:
            raise IdPError("body", "the discovery document names another issuer")
        jwks_uri = data.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IdPError("body", "the discovery document has no jwks_uri")
        problem = url_problem(jwks_uri)
        if problem is not None:
            raise IdPError("body", f"the discovery document's jwks_uri {problem}")
        return jwks_uri

    def _make_client(self) -> HTTPClient:
        agent = self._agent
        if agent is None:
            from twisted.internet import reactor
            from twisted.web.client import Agent

            agent = Agent(reactor)
        return HTTPClient(agent)

    def _install(self, fetched: tuple[KeySet, float], attempt: _Attempt) -> None:
        keyset, lifetime = fetched
        old, self.keys = self.keys, keyset
        self._last_failed = False
        self._counters.refreshed(attempt.trigger, "ok")
        if set(old.by_kid) != set(keyset.by_kid) or old.count != keyset.count:
            self.log.info(
                "loaded {count} JWKS keys from {url}: key ids {kids}",
                count=keyset.count,
                url=self.jwks_url,
                kids=sorted(keyset.by_kid),
            )
        self._schedule(lifetime)

    def _fetch_failed(self, failure: Failure, attempt: _Attempt) -> None:
        if self._stopped:  # abandoned by stop(): however the cancelled call ended, say nothing
            return
        self._last_failed = True
        self._counters.failed(attempt.phase, failure_reason(failure))
        self._counters.refreshed(attempt.trigger, "error")
        self.log.warn(
            "{phase} from {url} failed ({error_type}: {error}); keeping {count} known keys",
            phase="OIDC discovery" if attempt.phase == "discovery" else "JWKS refresh",
            url=self.jwks_url if attempt.phase == "jwks" else self.oidc_issuer,
            error_type=failure.type.__name__,
            error=failure.getErrorMessage(),
            count=self.keys.count,
        )
        self._schedule(min(self.refresh_s, self.retry_s))

    def _fetch_done(self, result: Any) -> Any:
        self._inflight = None
        return result

    def _schedule(self, delay: float) -> None:
        """The next scheduled refresh in ``delay`` seconds (replacing any already planned)."""
        if not self._running:
            return
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = self._clock.callLater(delay, self.refresh)
