"""Tests for the load-balancing strategies in avx_twisted.balancing."""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from avx_twisted.balancing import (
    STRATEGIES,
    IBalancer,
    LeastConnections,
    RandomChoice,
    RoundRobin,
    Weighted,
    balancer_for,
)
from avx_twisted.upstream import Target


def targets(*names: str, weights: tuple[int, ...] = ()) -> list[Target]:
    """Targets named http://<name>, with optional weights."""
    weights = weights or (1,) * len(names)
    return [Target(f"http://{name}", weight) for name, weight in zip(names, weights)]


def hosts(picked: list[Target | None]) -> list[str | None]:
    """The host names of picked targets (None stays None)."""
    return [t.host if t is not None else None for t in picked]


class BalancerInterfaceTests(SynchronousTestCase):
    """Every strategy provides IBalancer and handles an empty candidate list."""

    def test_every_strategy_provides_ibalancer(self) -> None:
        for name in STRATEGIES:
            self.assertTrue(verifyObject(IBalancer, balancer_for(name)), name)

    def test_every_strategy_returns_none_without_candidates(self) -> None:
        for name in STRATEGIES:
            self.assertIsNone(balancer_for(name).pick([]), name)

    def test_balancer_for_builds_the_named_strategy(self) -> None:
        self.assertIsInstance(balancer_for("round_robin"), RoundRobin)
        self.assertIsInstance(balancer_for("random"), RandomChoice)
        self.assertIsInstance(balancer_for("least_connections"), LeastConnections)
        self.assertIsInstance(balancer_for("weighted"), Weighted)

    def test_balancer_for_returns_a_fresh_balancer_each_time(self) -> None:
        self.assertIsNot(balancer_for("round_robin"), balancer_for("round_robin"))

    def test_balancer_for_passes_rng_to_random(self) -> None:
        a, b, c = targets("a", "b", "c")
        first = balancer_for("random", random.Random(7))
        second = balancer_for("random", random.Random(7))
        picks = [first.pick([a, b, c]) for _ in range(20)]
        self.assertEqual(picks, [second.pick([a, b, c]) for _ in range(20)])

    def test_balancer_for_rejects_unknown_strategy_listing_known_ones(self) -> None:
        e = self.assertRaises(ValueError, balancer_for, "fastest")
        self.assertIn("'fastest'", str(e))
        self.assertIn("least_connections", str(e))


class RoundRobinTests(SynchronousTestCase):
    """RoundRobin rotates through the candidates."""

    def test_rotates_in_config_order(self) -> None:
        balancer = RoundRobin()
        candidates = targets("a", "b", "c")
        picks = [balancer.pick(candidates) for _ in range(7)]
        self.assertEqual(hosts(picks), ["a", "b", "c", "a", "b", "c", "a"])

    def test_stays_fair_when_a_candidate_drops_out_and_returns(self) -> None:
        balancer = RoundRobin()
        a, b, c = targets("a", "b", "c")
        self.assertEqual(hosts([balancer.pick([a, b, c]) for _ in range(2)]), ["a", "b"])
        shrunk = Counter(hosts([balancer.pick([a, c]) for _ in range(100)]))
        self.assertEqual(shrunk, {"a": 50, "c": 50})
        grown = Counter(hosts([balancer.pick([a, b, c]) for _ in range(99)]))
        self.assertEqual(grown, {"a": 33, "b": 33, "c": 33})

    def test_spreads_evenly_over_many_picks(self) -> None:
        balancer = RoundRobin()
        candidates = targets("a", "b", "c")
        counts = Counter(hosts([balancer.pick(candidates) for _ in range(300)]))
        self.assertEqual(counts, {"a": 100, "b": 100, "c": 100})


class RandomChoiceTests(SynchronousTestCase):
    """RandomChoice picks uniformly using its injected rng."""

    def test_same_seed_gives_same_sequence(self) -> None:
        candidates = targets("a", "b", "c")
        first, second = RandomChoice(random.Random(42)), RandomChoice(random.Random(42))
        self.assertEqual(
            [first.pick(candidates) for _ in range(50)],
            [second.pick(candidates) for _ in range(50)],
        )

    def test_distribution_is_roughly_uniform(self) -> None:
        balancer = RandomChoice(random.Random(1234))
        candidates = targets("a", "b", "c", "d")
        counts = Counter(hosts([balancer.pick(candidates) for _ in range(4000)]))
        self.assertEqual(set(counts), {"a", "b", "c", "d"})
        for name, count in counts.items():
            self.assertTrue(900 <= count <= 1100, f"{name} picked {count} times")

    def test_only_picks_from_the_candidates(self) -> None:
        balancer = RandomChoice(random.Random(5))
        a, b, c = targets("a", "b", "c")
        picks = {balancer.pick([a, c]) for _ in range(100)}
        self.assertEqual(picks, {a, c})


class LeastConnectionsTests(SynchronousTestCase):
    """LeastConnections prefers the target with the fewest requests in flight."""

    def test_picks_the_target_with_fewest_in_flight(self) -> None:
        a, b, c = targets("a", "b", "c")
        a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
        self.assertIs(LeastConnections().pick([a, b, c]), b)

    def test_follows_in_flight_changes(self) -> None:
        balancer = LeastConnections()
        a, b, c = targets("a", "b", "c")
        picks = []
        for _ in range(6):
            target = balancer.pick([a, b, c])
            target.acquire()
            picks.append(target)
        self.assertEqual(hosts(picks), ["a", "b", "c", "a", "b", "c"])
        self.assertEqual([a.in_flight, b.in_flight, c.in_flight], [2, 2, 2])
        b.release()
        b.release()
        self.assertIs(balancer.pick([a, b, c]), b)

    def test_breaks_ties_round_robin(self) -> None:
        balancer = LeastConnections()
        candidates = targets("a", "b", "c")
        picks = [balancer.pick(candidates) for _ in range(6)]
        self.assertEqual(hosts(picks), ["a", "b", "c", "a", "b", "c"])

    def test_breaks_ties_only_among_the_tied(self) -> None:
        balancer = LeastConnections()
        a, b, c = targets("a", "b", "c")
        b.in_flight = 5
        picks = [balancer.pick([a, b, c]) for _ in range(4)]
        self.assertEqual(hosts(picks), ["a", "c", "a", "c"])


class WeightedTests(SynchronousTestCase):
    """Weighted is nginx's smooth weighted round-robin."""

    def test_five_one_one_is_interleaved(self) -> None:
        balancer = Weighted()
        candidates = targets("a", "b", "c", weights=(5, 1, 1))
        picks = [balancer.pick(candidates) for _ in range(14)]
        self.assertEqual(hosts(picks), list("aabacaa") * 2)

    def test_three_one(self) -> None:
        balancer = Weighted()
        candidates = targets("a", "b", weights=(3, 1))
        picks = [balancer.pick(candidates) for _ in range(8)]
        self.assertEqual(hosts(picks), list("aaba") * 2)

    def test_equal_weights_behave_like_round_robin(self) -> None:
        balancer = Weighted()
        candidates = targets("a", "b", "c")
        picks = [balancer.pick(candidates) for _ in range(6)]
        self.assertEqual(hosts(picks), list("abcabc"))

    def test_distribution_matches_weights(self) -> None:
        balancer = Weighted()
        candidates = targets("a", "b", "c", weights=(5, 3, 2))
        counts = Counter(hosts([balancer.pick(candidates) for _ in range(1000)]))
        self.assertEqual(counts, {"a": 500, "b": 300, "c": 200})

    def test_shares_out_among_remaining_candidates_when_one_drops_out(self) -> None:
        balancer = Weighted()
        a, b, c = targets("a", "b", "c", weights=(2, 1, 1))
        counts = Counter(hosts([balancer.pick([a, c]) for _ in range(300)]))
        self.assertEqual(counts, {"a": 200, "c": 100})
