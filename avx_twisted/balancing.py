"""Load-balancing strategies that pick one upstream target per request."""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence, TypeVar

from zope.interface import Interface, implementer


class BalancedTarget(Protocol):
    """What a balancer needs of a target (:class:`avx_twisted.upstream.Target` is one): its
    configured weight and the requests in flight to it. Targets are also used as dict keys."""

    @property
    def weight(self) -> int:
        """The target's share under the "weighted" strategy (>= 1)."""

    @property
    def in_flight(self) -> int:
        """Requests sent to the target and not finished yet."""


#: A balancer hands back one of the candidates it was given, of whatever target class they are.
_T = TypeVar("_T", bound=BalancedTarget)


class IBalancer(Interface):
    """A strategy choosing one target out of the currently usable ones."""

    def pick(candidates: Sequence[_T]) -> _T | None:
        """Choose one of `candidates` (already filtered to available ones, in config order);
        None if empty."""


@implementer(IBalancer)
class RoundRobin:
    """Rotate through the candidates in order.

    The position is an index into whatever candidate list is passed, so when targets drop
    out (or come back) the rotation simply continues over the current set.
    """

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[_T]) -> _T | None:
        """Return the next candidate in rotation, or None if there are none."""
        if not candidates:
            return None
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


@implementer(IBalancer)
class RandomChoice:
    """Pick a uniformly random candidate."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(self, candidates: Sequence[_T]) -> _T | None:
        """Return a random candidate, or None if there are none."""
        if not candidates:
            return None
        return self._rng.choice(candidates)


@implementer(IBalancer)
class LeastConnections:
    """Pick the candidate with the fewest requests in flight.

    Ties are broken round-robin: the search for the least-loaded candidate starts just after
    the previous pick, so idle targets share the load instead of the first one in config
    order getting every request.
    """

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[_T]) -> _T | None:
        """Return a least-loaded candidate, or None if there are none."""
        count = len(candidates)
        if not count:
            return None
        start = best = self._next % count
        for offset in range(1, count):
            index = (start + offset) % count
            if candidates[index].in_flight < candidates[best].in_flight:
                best = index
        self._next = best + 1
        return candidates[best]


@implementer(IBalancer)
class Weighted:
    """Smooth weighted round-robin (the nginx algorithm) using `Target.weight`.

    Each pick adds every candidate's weight to its current weight, chooses the highest
    current weight (first in config order on ties) and subtracts the candidates' total
    weight from the chosen one. Picks are interleaved: weights 5:1:1 give a,a,b,a,c,a,a.
    """

    def __init__(self) -> None:
        self._current: dict[BalancedTarget, int] = {}

    def pick(self, candidates: Sequence[_T]) -> _T | None:
        """Return the next candidate in the smooth weighted sequence, or None if none."""
        current = self._current
        total = 0
        best: _T | None = None
        best_weight = 0
        for target in candidates:
            weight = current.get(target, 0) + target.weight
            current[target] = weight
            total += target.weight
            if best is None or weight > best_weight:
                best, best_weight = target, weight
        if best is not None:
            current[best] = best_weight - total
        return best


STRATEGIES: dict[str, Callable[..., IBalancer]] = {
    "round_robin": RoundRobin,
    "random": RandomChoice,
    "least_connections": LeastConnections,
    "weighted": Weighted,
}


def balancer_for(strategy: str, rng: random.Random | None = None) -> IBalancer:
    """Build a fresh balancer for the strategy name (`rng` is used by "random" only)."""
    try:
        factory = STRATEGIES[strategy]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown balancing strategy {strategy!r} (expected one of: {known})")
    if factory is RandomChoice:
        return RandomChoice(rng)
    return factory()
