"""Token-bucket rate limiting: the decision for one request, where buckets live, and headers.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; each request takes
one token or is refused. Buckets are kept behind `IRateLimitStore` so the in-process
`MemoryStore` can be swapped for a shared (Redis) store without touching the gateway.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .config import RateLimitConfig
from .errors import Answer, error_answer


@dataclass(frozen=True)
class Decision:
    """The outcome of taking one token, with what the response headers need to say."""

    allowed: bool
    #: The bucket's capacity, `burst` (RateLimit-Limit).
    limit: int
    #: Whole tokens left after this request, >= 0 (RateLimit-Remaining).
    remaining: int
    #: Seconds until the bucket is full again (RateLimit-Reset; callers round up).
    reset_s: float
    #: When refused, seconds until one token is available (Retry-After; callers round up);
    #: 0 when allowed.
    retry_after_s: float


class BackendUnavailable(Exception):
    """A shared store (Redis) did not answer and ``on_backend_error = "deny"``: the request
    gets 503. A networked :class:`IRateLimitStore` fails its Deferred with this."""


class IRateLimitStore(Interface):
    """Where token buckets live: in this process, or shared between gateway instances."""

    def take(key: str, rate: float, burst: int) -> Decision | Deferred[Decision]:
        """Take one token from bucket `key`, refilling at `rate` tokens per second (> 0) up to
        `burst` (>= 1); a bucket is created full on first use. May return a Deferred (a
        networked store does), so callers should accept both."""


class _Bucket:
    """One bucket's state, updated in place by each take (no new tuple per request)."""

    __slots__ = ("tokens", "last", "expires")

    def __init__(self) -> None:
        self.tokens = 0.0
        #: `clock.seconds()` when `tokens` was last computed.
        self.last = 0.0
        #: When this bucket may be forgotten: full again (or idle for `idle_s`).
        self.expires = 0.0


#: How many of the least recently used buckets each take() looks at for eviction. Above one,
#: so that eviction outpaces creation and a backlog of expired buckets drains.
_EVICT_PER_TAKE = 2


@implementer(IRateLimitStore)
class MemoryStore:
    """In-process buckets; refill is computed lazily from the clock (no timer per bucket).

    Memory stays bounded under a flood of distinct keys (say one per spoofed client) because a
    bucket that would be full again behaves exactly like no bucket at all, so it can be
    forgotten. Buckets are kept in an `OrderedDict` in least-recently-used order (each take
    moves its bucket to the end) and each bucket records when it will be full again. Every
    take() then looks at no more than `_EVICT_PER_TAKE` of the oldest buckets and drops those
    already full: amortised O(1), no timers, no sweeps. (`OrderedDict` rather than a `dict`
    re-inserted at the end: popping from the front of a plain dict leaves holes that make finding
    the oldest entry O(n) until the next resize; `OrderedDict` is a linked list for that.) The
    oldest bucket may not be full yet while newer ones are (it had fewer tokens left, or a
    slower limit); eviction then waits for it, which holds it back by at most that bucket's
    time to full.

    `max_buckets` is a hard cap on top: inserting a new bucket beyond it evicts the least
    recently used one even if it is not full. That errs on the side of allowing: a client whose
    bucket was evicted early starts again with a full bucket. `idle_s`, when set, likewise
    forgets buckets untouched for that long even before they are full (useful for limits whose
    time to full, burst/rate, is very long).
    """

    def __init__(
        self, clock: IReactorTime, max_buckets: int = 100_000, idle_s: float | None = None
    ) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, not {max_buckets!r}")
        if idle_s is not None and not idle_s > 0:
            raise ValueError(f"idle_s must be positive or None, not {idle_s!r}")
        self._clock = clock
        self._max_buckets = max_buckets
        self._idle_s = idle_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """The number of buckets held (expired ones are dropped lazily, by take())."""
        return len(self._buckets)

    def take(self, key: str, rate: float, burst: int) -> Decision:
        """Take one token from bucket `key`, synchronously (see `IRateLimitStore.take`)."""
        now = self._clock.seconds()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = float(burst)
            bucket = buckets[key] = _Bucket()
            if len(buckets) > self._max_buckets:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            tokens = bucket.tokens
            elapsed = now - bucket.last
            if elapsed > 0.0:  # a clock stepped backwards neither refills nor drains
                tokens += elapsed * rate
                if tokens > burst:
                    tokens = float(burst)
        if tokens >= 1.0:
            tokens -= 1.0
            allowed = True
            retry_after = 0.0
        else:
            allowed = False
            retry_after = (1.0 - tokens) / rate
        reset = (burst - tokens) / rate
        bucket.tokens = tokens
        bucket.last = now
        if self._idle_s is not None and self._idle_s < reset:
            bucket.expires = now + self._idle_s
        else:
            bucket.expires = now + reset
        self._evict(now)
        return Decision(allowed, burst, int(tokens), reset, retry_after)

    def _evict(self, now: float) -> None:
        """Drop up to `_EVICT_PER_TAKE` of the oldest buckets, stopping at one still needed."""
        buckets = self._buckets
        for _ in range(_EVICT_PER_TAKE):
            if not buckets:
                return
            oldest = next(iter(buckets))
            if buckets[oldest].expires > now:
                return
            del buckets[oldest]


def _route_part(route: str) -> str:
    """`route` with "%" and ":" percent-encoded, so the key's fields cannot run together."""
    if ":" in route or "%" in route:
        return route.replace("%", "%25").replace(":", "%3A")
    return route


def bucket_key(kind: str, route: str, client_ip: str, identity: str | None) -> str | None:
    """The bucket for one request under a limit keyed by `kind` (`RateLimitConfig.key`).

    - "global": "g", one bucket shared by every route whose limit is global;
    - "route": "r:<route>", one bucket for all clients of the route;
    - "ip": "ip:<route>:<client_ip>";
    - "api_key" / "jwt_sub" / "consumer": "<kind>:<route>:<identity>", or None when the
      request has no
      identity (None or ""), in which case the caller falls back to the "ip" key.

    `route` is the route's name; in the unusual case that it contains ":" or "%", those are
    percent-encoded so that (route, client) pairs map to distinct keys. Other kinds raise
    ValueError.
    """
    if kind == "ip":
        return f"ip:{_route_part(route)}:{client_ip}"
    if kind == "global":
        return "g"
    if kind == "route":
        return f"r:{_route_part(route)}"
    if kind == "api_key" or kind == "jwt_sub" or kind == "consumer":
        if not identity:
            return None
        return f"{kind}:{_route_part(route)}:{identity}"
    raise ValueError(f"unknown rate limit key {kind!r}")


#: Slack when rounding seconds up, so float noise (2.0000000000000004) does not add a second.
_ROUNDING_SLACK = 1e-9


def _ceil_seconds(seconds: float) -> int:
    """`seconds` rounded up to whole seconds, ignoring float noise; 0 for 0 or less."""
    if seconds <= 0.0:
        return 0
    return math.ceil(seconds - _ROUNDING_SLACK)


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (integer seconds, rounded up), plus
    Retry-After (rounded up, at least 1) when the request was refused."""
    headers = [
        (b"RateLimit-Limit", b"%d" % decision.limit),
        (b"RateLimit-Remaining", b"%d" % decision.remaining),
        (b"RateLimit-Reset", b"%d" % _ceil_seconds(decision.reset_s)),
    ]
    if not decision.allowed:
        retry_after = max(1, _ceil_seconds(decision.retry_after_s))
        headers.append((b"Retry-After", b"%d" % retry_after))
    return headers


class RateLimitFilter:
    """The route filter: one token per request from the bucket its key names; 429 when empty.

    ``RateLimit-*`` headers go on every answer of the route (allowed ones too), ``Retry-After``
    on refusals. Keys ``api_key``/``jwt_sub`` use the identity that authentication found,
    ``consumer`` the name of whichever identity it found (API key name, mTLS consumer, token
    subject); all fall back to the client address for requests without one.
    """

    log = Logger()

    def __init__(self, store: IRateLimitStore, config: RateLimitConfig, route: str) -> None:
        self.store = store
        self.route = route
        self.kind = config.key
        self.rate = config.requests_per_second
        self.burst = config.burst_size
        self.identity_method = {"api_key": "api_key", "jwt_sub": "jwt", "consumer": "*"}.get(
            config.key
        )
        #: A counter incremented for every refusal (metrics), or None.
        self.refused: Any = None

    def __call__(self, request: Any, ctx: Any) -> Answer | None | Deferred[Answer | None]:
        identity = None
        if self.identity_method is not None and ctx.identity is not None:
            if self.identity_method in (ctx.identity.method, "*"):
                identity = ctx.identity.name
        key = bucket_key(self.kind, self.route, ctx.client_ip, identity)
        if key is None:
            key = bucket_key("ip", self.route, ctx.client_ip, None)
        decision = self.store.take(key, self.rate, self.burst)  # type: ignore[arg-type]
        if isinstance(decision, Deferred):
            return decision.addCallbacks(
                self.apply, self.unavailable, (request, ctx), None, (request, ctx), None
            )
        return self.apply(decision, request, ctx)

    def unavailable(self, failure: Any, request: Any, ctx: Any) -> Answer:
        """The shared store could not answer and its errors deny: 503 (never the upstream)."""
        failure.trap(BackendUnavailable)
        return error_answer(
            503, "rate limit backend unavailable", [(b"Retry-After", b"1")], ctx.request_id
        )

    def apply(self, decision: Decision, request: Any, ctx: Any) -> Answer | None:
        """Put the decision's headers on the answer; the 429 when refused."""
        request.response_fields.extend(rate_limit_headers(decision))
        if decision.allowed:
            return None
        if self.refused is not None:
            self.refused.inc()
        self.log.info(
            "rate limited {client} on route {route}",
            client=ctx.client_ip,
            route=self.route,
            request_id=getattr(ctx, "request_id", b"").decode("latin-1"),
        )
        return error_answer(429, "rate limit exceeded", request_id=ctx.request_id)
