"""Upstream targets of a route and the choice of one target per request."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Collection, Sequence
from urllib.parse import quote

from avx_twisted.balancing import IBalancer, balancer_for
from avx_twisted.urls import DEFAULT_PORTS, parse_url

if TYPE_CHECKING:
    from avx_twisted.breaker import CircuitBreaker

# RFC 3986 pchar plus "/" and "%": kept as-is in the base path, anything else is %-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class Target:
    """One upstream server of a route: its parsed URL and per-target live state."""

    def __init__(self, url: str, weight: int = 1) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"weight {weight!r} is not a positive integer")
        scheme, host, port, path = parse_url(url)
        self.url = url
        self.scheme = scheme.encode("ascii")
        self.host = host
        self.port = port
        self.base_path = quote(path.rstrip("/"), safe=_PATH_SAFE).encode("ascii")
        netloc = f"[{host}]" if ":" in host else host
        if port != DEFAULT_PORTS[scheme]:
            netloc = f"{netloc}:{port}"
        self.netloc = netloc.encode("ascii")
        self.base_uri = self.scheme + b"://" + self.netloc + self.base_path
        self.weight = weight
        self.in_flight = 0
        self.healthy = True
        #: False while drained through the admin API (requests in flight still finish).
        self.enabled = True
        self.breaker: CircuitBreaker | None = None
        #: Sends requests to this target over the shared pool (set when the runtime is built).
        self.connector: Any = None
        #: What identifies this target's configuration across reloads (set by the runtime).
        self.key: Any = None

    @property
    def available(self) -> bool:
        """Whether requests may be sent to this target now: healthy and its circuit lets them."""
        breaker = self.breaker
        return self.enabled and self.healthy and (breaker is None or breaker.available())

    def status(self) -> dict[str, Any]:
        """What probes and the admin API report about this target."""
        breaker = self.breaker
        return {
            "url": self.url,
            "healthy": self.healthy,
            "circuit": breaker.state.value if breaker is not None else "closed",
            "available": self.available,
            "in_flight": self.in_flight,
        }

    def acquire(self) -> None:
        """Count one more request in flight to this target."""
        self.in_flight += 1

    def release(self) -> None:
        """Count one request to this target as finished (never below zero)."""
        if self.in_flight > 0:
            self.in_flight -= 1

    def __repr__(self) -> str:
        return f"<Target {self.url} weight={self.weight} in_flight={self.in_flight}>"


class Upstream:
    """The targets of one route and the strategy that picks among them."""

    def __init__(self, targets: Sequence[Target], balancer: IBalancer) -> None:
        if not targets:
            raise ValueError("an upstream needs at least one target")
        self.targets: tuple[Target, ...] = tuple(targets)
        self.balancer = balancer

    @classmethod
    def none(cls) -> Upstream:
        """No targets: a route served by the gateway itself (``resource = ...``)."""
        upstream = cls.__new__(cls)
        upstream.targets = ()
        upstream.balancer = None  # type: ignore[assignment]
        return upstream

    def pick(self, exclude: Collection[Target] = ()) -> Target | None:
        """An available target not in `exclude` (used by retries to try *other* targets),
        or None when none is left."""
        targets = self.targets
        for target in targets:
            if not target.available or target in exclude:
                break
        else:
            # Fast path: every target is usable, so no candidate list is built.
            return self.balancer.pick(targets)
        candidates = [t for t in targets if t.available and t not in exclude]
        return self.balancer.pick(candidates)

    def any_available(self, exclude: Collection[Target] = ()) -> bool:
        """Whether :meth:`pick` would find a target (without moving the balancer)."""
        return any(t.available and t not in exclude for t in self.targets)

    def retry_after(self) -> float | None:
        """Seconds until the first open circuit lets a trial through, when every target is
        unavailable only because its circuit is open; None otherwise."""
        waits = []
        for target in self.targets:
            breaker = target.breaker
            if not target.healthy or breaker is None or breaker.retry_after() <= 0:
                return None
            waits.append(breaker.retry_after())
        return min(waits) if waits else None

    @classmethod
    def from_urls(
        cls,
        urls: Sequence[str],
        strategy: str = "round_robin",
        weights: Sequence[int] | None = None,
        rng: random.Random | None = None,
    ) -> Upstream:
        """Build an upstream from target URLs, optional per-target weights and a strategy."""
        if weights is None:
            weights = [1] * len(urls)
        elif len(weights) != len(urls):
            raise ValueError(f"{len(weights)} weights given for {len(urls)} targets")
        targets = [Target(url, weight) for url, weight in zip(urls, weights)]
        return cls(targets, balancer_for(strategy, rng))
