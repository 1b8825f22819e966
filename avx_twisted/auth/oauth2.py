# -*- test-case-name: tests.unit.test_auth_oauth2 -*-
"""``auth = ["oauth2"]``: opaque bearer tokens checked by RFC 7662 token introspection.

The token is POSTed (form-encoded, with ``token_type_hint=access_token``) to
``introspection_url`` with the gateway's client credentials (``client_secret_basic`` or
``client_secret_post``). An answer with ``active: true`` whose ``exp``, ``nbf``, ``iss``
(``issuer``), ``aud`` (``audience``) and ``token_type`` pass is the caller's identity; its
``scope`` is checked against the route's ``scopes`` (403 ``insufficient_scope``).

- **Cache.** Answers are kept by the SHA-256 of the token (never the token): an active one for
  min(``cache_ttl_s``, ``exp`` - now), a refused one for ``negative_cache_ttl_s``; 0 turns
  either off. A revoked token is therefore refused at the latest ``cache_ttl_s`` after its
  revocation. Each kind holds at most :attr:`OAuth2Authenticator.max_cache_entries`, so a
  flood of made-up tokens evicts only other refusals.
- **One call per token.** Concurrent checks of a token not in the cache share one
  introspection; a request that goes away does not cancel it for the others.
- **Fail closed.** When the provider cannot be asked (timeout after ``timeout_ms``, connection
  failure, a status other than 200, an unusable body) the request is refused with 503 and
  ``Retry-After``, never let through. A circuit breaker on the provider opens after
  consecutive failures, so that an outage is answered at once instead of with a timeout each.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Mapping, Sequence, Union
from urllib.parse import quote, urlencode

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from .._configmodel import CircuitBreakerConfig, ConfigError, OAuth2Config
from ..breaker import BreakerState, CircuitBreaker
from ._bearer import ClaimHeaders, bearer_token, check_scopes, invalid_token, scopes_of
from ._identity import AuthError, Identity
from ._idp import IdPError, failure_reason, fetch_json, timed_out, url_problem

__all__ = ["OAuth2Authenticator", "IDP_BREAKER"]

MAX_ANSWER_BYTES = 256 * 1024
#: The breaker on the introspection endpoint: open after 5 failed calls in a row, one trial
#: call 5 s later.
IDP_BREAKER = CircuitBreakerConfig(
    failure_threshold=5, recovery_timeout_ms=5000, half_open_requests=1
)
_ACCEPTED_TOKEN_TYPES = frozenset(["bearer", "access_token"])
_IDP_REASONS = ("timeout", "connect", "status", "body", "circuit_open")


class _Refusal:
    """A verdict against a token: enough to make a fresh :class:`AuthError` each time."""

    __slots__ = ("status", "reason", "description", "retry_after_s")

    def __init__(
        self, status: int, reason: str, description: str, retry_after_s: int | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.description = description
        self.retry_after_s = retry_after_s

    def error(self) -> AuthError:
        if self.status == 401:
            return invalid_token(self.reason, self.description)
        return AuthError(
            self.status, self.reason, self.description, retry_after_s=self.retry_after_s
        )


#: What an introspection concludes: the caller, or why not.
_Verdict = Union[Identity, _Refusal]


class _Counters:
    """The ``avx_oauth2_*`` and ``avx_idp_errors{kind="introspection"}`` children, bound once."""

    def __init__(self, metrics: Any) -> None:
        self.calls: dict[str, Any] = {}
        self.hits: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        if metrics is None:
            return
        for result in ("active", "inactive", "invalid", "error"):
            self.calls[result] = metrics.oauth2_introspections.labels(result)
        for result in ("active", "inactive"):
            self.hits[result] = metrics.oauth2_cache_hits.labels(result)
        for reason in _IDP_REASONS:
            self.errors[reason] = metrics.idp_errors.labels("introspection", reason)

    @staticmethod
    def _inc(children: dict[str, Any], label: str) -> None:
        child = children.get(label)
        if child is not None:
            child.inc()

    def call(self, result: str) -> None:
        self._inc(self.calls, result)

    def hit(self, result: str) -> None:
        self._inc(self.hits, result)

    def error(self, reason: str) -> None:
        self._inc(self.errors, reason)


class OAuth2Authenticator:
    """Checks opaque bearer tokens by introspection; built once per gateway.

    :meth:`check` is what the auth filter calls per request; :meth:`start` and :meth:`stop`
    run the cache's expiry sweep. Introspections in flight when :meth:`stop` is called finish
    (within ``timeout_ms``), so the requests of a runtime being replaced are still answered.
    """

    log = Logger()

    #: Most cached answers of each kind (active, refused); past it the oldest go first.
    max_cache_entries = 10_000
    #: How often expired cache entries are dropped.
    sweep_interval_s = 30.0

    def __init__(
        self,
        config: OAuth2Config,
        clock: IReactorTime,
        agent: IAgent | None = None,
        *,
        metrics: Any = None,
        breaker: CircuitBreakerConfig = IDP_BREAKER,
    ) -> None:
        problem = url_problem(config.introspection_url)
        if problem is not None:
            raise ConfigError([f"auth.oauth2.introspection_url: {problem}"])
        secret = config.client_secret
        if not secret and config.client_secret_env:
            secret = os.environ.get(config.client_secret_env, "")
        if not secret:
            raise ConfigError(
                ["auth.oauth2.client_secret: introspection needs the client's secret"]
            )
        self.config = config
        self.timeout_s = config.timeout_ms / 1000.0
        self.breaker = CircuitBreaker(breaker, clock, name="oauth2 introspection")
        self._clock = clock
        self._agent = agent
        self._http: HTTPClient | None = None
        self._counters = _Counters(metrics)
        self._positive: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._negative: OrderedDict[bytes, tuple[float, _Refusal]] = OrderedDict()
        self._inflight: dict[bytes, Deferred[_Verdict]] = {}
        self._sweeper: LoopingCall | None = None
        # Everything a call sends but the token, made once.
        self._headers = {
            b"Accept": [b"application/json"],
            b"Content-Type": [b"application/x-www-form-urlencoded"],
        }
        self._form_tail = [("token_type_hint", "access_token")]
        if config.client_auth == "post":
            self._form_tail += [
                ("client_id", config.client_id),
                ("client_secret", secret),
            ]
        else:  # RFC 6749 §2.3.1: both parts form-encoded, then joined and base64-encoded
            pair = quote(config.client_id, safe="") + ":" + quote(secret, safe="")
            self._headers[b"Authorization"] = [b"Basic " + base64.b64encode(pair.encode())]
        self._claim_headers = ClaimHeaders(config.forward_claims)
        #: Lowercased header names the gateway removes from client requests (claim headers).
        self.stripped_headers: frozenset[bytes] = self._claim_headers.stripped

    # -- per request --------------------------------------------------------------------------

    def check(
        self, request: Any, ctx: Any, scopes: Sequence[str] = ()
    ) -> Identity | Deferred[Identity]:
        """The identity of the request's bearer token, now (cached) or once introspected.

        Refusals are :class:`AuthError`: 401 for no, a malformed, an inactive or an
        unacceptable token (``error="invalid_token"``), 403 for missing ``scopes``, 503 (with
        ``retry_after_s``) when the provider could not be asked.
        """
        values = request.fields.get_all(b"authorization")
        token = bearer_token(values[-1] if values else None)
        key = hashlib.sha256(token).digest()
        verdict = self._cached(key)
        if verdict is not None:
            return self._judge(verdict, scopes)
        shared = self._inflight.get(key)
        if shared is None:
            shared = self._introspect(key, token)
            if shared.called:  # answered at once (breaker open, or a synchronous agent)
                return shared.addCallback(self._judge, scopes)
            self._inflight[key] = shared
        return _follow(shared).addCallback(self._judge, scopes)

    def claim_headers(self, identity: Identity) -> list[tuple[bytes, bytes]]:
        """``(header, value)`` for each configured ``forward_claims`` member of the answer."""
        return self._claim_headers(identity.claims)

    def _judge(self, verdict: _Verdict, scopes: Sequence[str]) -> Identity:
        if isinstance(verdict, _Refusal):
            raise verdict.error()
        if scopes:
            check_scopes(verdict.scopes, scopes)
        return verdict

    # -- the cache ----------------------------------------------------------------------------

    def _cached(self, key: bytes) -> _Verdict | None:
        now = self._clock.seconds()
        entry: tuple[float, _Verdict] | None = self._positive.get(key)
        store: OrderedDict[bytes, Any] = self._positive
        if entry is None:
            entry = self._negative.get(key)
            store = self._negative
        if entry is None:
            return None
        if entry[0] <= now:
            del store[key]
            return None
        verdict = entry[1]
        self._counters.hit("active" if isinstance(verdict, Identity) else "inactive")
        return verdict

    def _remember(self, key: bytes, verdict: _Verdict, exp: float | None) -> None:
        config = self.config
        now = self._clock.seconds()
        if isinstance(verdict, Identity):
            ttl = float(config.cache_ttl_s)
            if exp is not None:
                ttl = min(ttl, exp - now)
            store: OrderedDict[bytes, Any] = self._positive
        else:
            ttl = float(config.negative_cache_ttl_s)
            store = self._negative
        if ttl <= 0:
            return
        store[key] = (now + ttl, verdict)
        store.move_to_end(key)
        while len(store) > self.max_cache_entries:
            store.popitem(last=False)

    def sweep(self) -> None:
        """Drop the cache entries that have expired."""
        now = self._clock.seconds()
        for store in (self._positive, self._negative):
            expired = [key for key, (until, _) in store.items() if until <= now]
            for key in expired:
                del store[key]

    def start(self) -> None:
        """Sweep expired cache entries every :attr:`sweep_interval_s` (idempotent)."""
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self._clock
            self._sweeper.start(self.sweep_interval_s, now=False)

    def stop(self) -> None:
        """Stop the sweep; calls in flight finish by themselves (bounded by ``timeout_ms``)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.running:
            sweeper.stop()

    # -- introspection ------------------------------------------------------------------------

    def _introspect(self, key: bytes, token: bytes) -> Deferred[_Verdict]:
        """One call to the provider for ``token``; always fires with a verdict."""
        breaker = self.breaker
        if not breaker.available():
            self._counters.error("circuit_open")
            return _succeed(self._unavailable())
        breaker.on_request()
        d = Deferred.fromCoroutine(self._call(token))
        d.addTimeout(self.timeout_s, self._clock, timed_out)
        d.addCallbacks(self._answered, self._unanswered, (key,))
        d.addBoth(self._settled, key)
        return d

    async def _call(self, token: bytes) -> Any:
        if self._http is None:
            self._http = self._make_client()
        form = urlencode([("token", token.decode("ascii")), *self._form_tail]).encode("ascii")
        answer, _ = await fetch_json(
            self._http,
            "POST",
            self.config.introspection_url,
            headers=self._headers,
            data=form,
            max_bytes=MAX_ANSWER_BYTES,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise IdPError("body", "the answer is not an introspection response")
        return answer

    def _make_client(self) -> HTTPClient:
        agent = self._agent
        if agent is None:
            from twisted.internet import reactor
            from twisted.web.client import Agent

            agent = Agent(reactor)
        return HTTPClient(agent)

    def _answered(self, answer: dict[str, Any], key: bytes) -> _Verdict:
        self.breaker.record_success()
        verdict = self._verdict(answer)
        if isinstance(verdict, Identity):
            result = "active"
        else:
            result = "inactive" if verdict.reason == "inactive" else "invalid"
        self._counters.call(result)
        exp = answer.get("exp")
        self._remember(key, verdict, exp if _is_number(exp) else None)
        return verdict

    def _unanswered(self, failure: Failure) -> _Verdict:
        self.breaker.record_failure()
        reason = failure_reason(failure)
        self._counters.call("error")
        self._counters.error(reason)
        self.log.warn(
            "token introspection at {url} failed ({reason}: {error}); refusing with 503",
            url=self.config.introspection_url,
            reason=reason,
            error=failure.getErrorMessage(),
        )
        return self._unavailable()

    def _settled(self, result: _Verdict | Failure, key: bytes) -> _Verdict:
        self._inflight.pop(key, None)
        if isinstance(result, Failure):  # a bug in judging the answer: still fail closed
            self.log.failure("unexpected error judging an introspection answer", result)
            return self._unavailable()
        return result

    def _unavailable(self) -> _Refusal:
        """503, to be retried when the breaker lets calls through again (at least 1 s)."""
        breaker = self.breaker
        wait = breaker.retry_after() if breaker.state is BreakerState.OPEN else 0.0
        return _Refusal(
            503,
            "idp_unavailable",
            "the token could not be checked; try again later",
            max(1, math.ceil(wait)),
        )

    def _verdict(self, answer: Mapping[str, Any]) -> _Verdict:
        """The identity an active answer grants, or the reason it does not."""
        if answer.get("active") is not True:
            return _Refusal(401, "inactive", "the token is not active")
        now = self._clock.seconds()
        exp, nbf = answer.get("exp"), answer.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf), ("iat", answer.get("iat"))):
            if value is not None and not _is_number(value):
                return _Refusal(401, "malformed", f"the token's {name} is not a number")
        if exp is not None and now >= exp:
            return _Refusal(401, "expired", "the token has expired")
        if nbf is not None and nbf > now:
            return _Refusal(401, "not_yet_valid", "the token is not valid yet")
        token_type = answer.get("token_type")
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _ACCEPTED_TOKEN_TYPES
        ):
            return _Refusal(401, "bad_token_type", "the token is not a bearer access token")
        config = self.config
        if config.issuer is not None and answer.get("iss") != config.issuer:
            return _Refusal(401, "bad_issuer", "the token's issuer is not accepted")
        if config.audience is not None and not _has_audience(answer.get("aud"), config.audience):
            return _Refusal(401, "bad_audience", "the token's audience is not accepted")
        sub, client_id = answer.get("sub"), answer.get("client_id")
        name = sub if isinstance(sub, str) else client_id if isinstance(client_id, str) else ""
        return Identity(
            method="oauth2",
            name=name,
            claims=MappingProxyType(dict(answer)),
            scopes=scopes_of(answer),
        )


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )


def _has_audience(aud: Any, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and audience in aud


def _succeed(verdict: _Verdict) -> Deferred[_Verdict]:
    d: Deferred[_Verdict] = Deferred()
    d.callback(verdict)
    return d


def _follow(shared: Deferred[_Verdict]) -> Deferred[_Verdict]:
    """A Deferred of ``shared``'s verdict, whose cancellation leaves ``shared`` running."""
    follower: Deferred[_Verdict] = Deferred()

    def deliver(verdict: _Verdict) -> _Verdict:
        if not follower.called:  # not cancelled meanwhile
            follower.callback(verdict)
        return verdict

    shared.addCallback(deliver)
    return follower
