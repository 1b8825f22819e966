"""Tests for the token buckets, bucket keys and headers in avx_twisted.ratelimit."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from avx_twisted.ratelimit import (
    Decision,
    IRateLimitStore,
    MemoryStore,
    bucket_key,
    rate_limit_headers,
)


def allowed(store: MemoryStore, key: str, rate: float, burst: int, n: int) -> list[bool]:
    """Whether each of `n` immediate takes from `key` was allowed."""
    return [store.take(key, rate, burst).allowed for _ in range(n)]


class MemoryStoreTests(SynchronousTestCase):
    """A token bucket per key: `burst` capacity, refilled at `rate` per second."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)

    def test_provides_irate_limit_store(self) -> None:
        self.assertTrue(verifyObject(IRateLimitStore, self.store))

    def test_new_bucket_allows_exactly_burst_then_refuses(self) -> None:
        self.assertEqual(allowed(self.store, "k", 1.0, 5, 7), [True] * 5 + [False] * 2)

    def test_one_token_comes_back_at_exactly_one_over_rate(self) -> None:
        allowed(self.store, "k", 4.0, 2, 2)
        self.clock.advance(0.2499)
        self.assertFalse(self.store.take("k", 4.0, 2).allowed)
        self.clock.advance(0.0001)  # now exactly 0.25 s after the bucket emptied
        self.assertTrue(self.store.take("k", 4.0, 2).allowed)
        self.assertFalse(self.store.take("k", 4.0, 2).allowed)

    def test_refused_requests_do_not_delay_the_refill(self) -> None:
        allowed(self.store, "k", 2.0, 1, 1)
        for _ in range(3):
            self.clock.advance(0.125)
            self.assertFalse(self.store.take("k", 2.0, 1).allowed)
        self.clock.advance(0.125)  # 0.5 s after emptying, whatever was refused on the way
        self.assertTrue(self.store.take("k", 2.0, 1).allowed)

    def test_fractional_rate_refills_one_token_every_two_seconds(self) -> None:
        allowed(self.store, "k", 0.5, 1, 1)
        self.clock.advance(1.999)
        refused = self.store.take("k", 0.5, 1)
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after_s, 0.001)
        self.clock.advance(0.001)
        self.assertTrue(self.store.take("k", 0.5, 1).allowed)
        self.clock.advance(1.0)
        self.assertFalse(self.store.take("k", 0.5, 1).allowed)
        self.clock.advance(1.0)
        self.assertTrue(self.store.take("k", 0.5, 1).allowed)

    def test_tokens_never_exceed_burst_after_long_idle(self) -> None:
        allowed(self.store, "k", 10.0, 3, 3)
        self.clock.advance(3600.0)
        self.assertEqual(len(self.store), 1)  # not evicted yet: the refill itself is capped
        self.assertEqual(self.store.take("k", 10.0, 3), Decision(True, 3, 2, 0.1, 0.0))
        self.assertEqual(allowed(self.store, "k", 10.0, 3, 3), [True, True, False])

    def test_decision_values_while_allowed(self) -> None:
        self.assertEqual(self.store.take("k", 2.0, 3), Decision(True, 3, 2, 0.5, 0.0))
        self.assertEqual(self.store.take("k", 2.0, 3), Decision(True, 3, 1, 1.0, 0.0))
        self.assertEqual(self.store.take("k", 2.0, 3), Decision(True, 3, 0, 1.5, 0.0))

    def test_decision_values_when_refused(self) -> None:
        allowed(self.store, "k", 2.0, 3, 3)
        self.assertEqual(self.store.take("k", 2.0, 3), Decision(False, 3, 0, 1.5, 0.5))
        self.clock.advance(0.25)
        # half a token back: still refused, a quarter second to go, 1.25 s to full
        self.assertEqual(self.store.take("k", 2.0, 3), Decision(False, 3, 0, 1.25, 0.25))

    def test_remaining_counts_whole_tokens_only(self) -> None:
        allowed(self.store, "k", 1.0, 3, 3)
        self.clock.advance(2.5)  # 2.5 tokens; taking one leaves 1.5
        decision = self.store.take("k", 1.0, 3)
        self.assertEqual((decision.allowed, decision.remaining), (True, 1))
        self.assertEqual(decision.reset_s, 1.5)

    def test_separate_keys_are_independent(self) -> None:
        self.assertEqual(allowed(self.store, "a", 1.0, 2, 3), [True, True, False])
        self.assertEqual(allowed(self.store, "b", 1.0, 2, 3), [True, True, False])
        self.assertEqual(len(self.store), 2)

    def test_idle_bucket_is_evicted_once_full_again(self) -> None:
        allowed(self.store, "a", 2.0, 4, 4)  # empty: full again after 4 / 2 = 2 s
        self.clock.advance(1.999)
        self.store.take("b", 2.0, 4)
        self.assertEqual(len(self.store), 2)  # "a" not yet full: kept
        self.clock.advance(0.001)
        self.store.take("b", 2.0, 4)
        self.assertEqual(len(self.store), 1)  # "a" full again: forgotten
        self.assertEqual(self.store.take("a", 2.0, 4), Decision(True, 4, 3, 0.5, 0.0))

    def test_idle_s_forgets_buckets_before_they_are_full(self) -> None:
        store = MemoryStore(self.clock, idle_s=10.0)
        allowed(store, "a", 0.01, 5, 5)  # 500 s to full
        self.clock.advance(10.0)
        store.take("b", 0.01, 5)
        self.assertEqual(len(store), 1)
        self.assertTrue(store.take("a", 0.01, 5).allowed)

    def test_flood_of_distinct_keys_stays_under_max_buckets(self) -> None:
        store = MemoryStore(self.clock, max_buckets=1000)
        for i in range(100_000):
            store.take(f"ip:r:{i}", 1.0, 10)
            self.assertLessEqual(len(store), 1000)
        self.assertEqual(len(store), 1000)

    def test_flood_drains_once_buckets_are_full_again(self) -> None:
        for i in range(1000):
            self.store.take(f"k{i}", 1.0, 1)
        self.clock.advance(1.0)
        for _ in range(600):
            self.store.take("steady", 1.0, 1)
        self.assertEqual(len(self.store), 1)

    def test_max_buckets_evicts_least_recently_used(self) -> None:
        store = MemoryStore(self.clock, max_buckets=2)
        store.take("a", 1.0, 1)
        store.take("b", 1.0, 1)
        store.take("a", 1.0, 1)  # "a" is now the most recently used
        store.take("c", 1.0, 1)
        self.assertEqual(len(store), 2)
        self.assertFalse(store.take("a", 1.0, 1).allowed)  # kept, still empty
        self.assertTrue(store.take("b", 1.0, 1).allowed)  # evicted early: back full

    def test_clock_stepping_back_neither_refills_nor_drains(self) -> None:
        clock = Clock()
        clock.advance(100.0)
        store = MemoryStore(clock)
        store.take("k", 1.0, 2)
        clock.rightNow = 50.0
        self.assertEqual(store.take("k", 1.0, 2), Decision(True, 2, 0, 2.0, 0.0))
        clock.advance(1.0)
        self.assertTrue(store.take("k", 1.0, 2).allowed)

    def test_invalid_arguments_are_rejected(self) -> None:
        self.assertRaises(ValueError, MemoryStore, self.clock, max_buckets=0)
        self.assertRaises(ValueError, MemoryStore, self.clock, idle_s=0.0)


class BucketKeyTests(SynchronousTestCase):
    """Which bucket a request falls into, for each kind of limit key."""

    def test_global_is_shared_by_every_route(self) -> None:
        self.assertEqual(bucket_key("global", "users", "10.0.0.1", "alice"), "g")
        self.assertEqual(bucket_key("global", "orders", "10.0.0.2", None), "g")

    def test_route(self) -> None:
        self.assertEqual(bucket_key("route", "users", "10.0.0.1", "alice"), "r:users")

    def test_ip_is_per_route_and_client(self) -> None:
        self.assertEqual(bucket_key("ip", "users", "10.0.0.1", None), "ip:users:10.0.0.1")
        self.assertEqual(bucket_key("ip", "users", "::1", "alice"), "ip:users:::1")

    def test_identity_kinds_are_per_route_and_identity(self) -> None:
        self.assertEqual(bucket_key("api_key", "users", "10.0.0.1", "k1"), "api_key:users:k1")
        self.assertEqual(bucket_key("jwt_sub", "users", "10.0.0.1", "alice"), "jwt_sub:users:alice")

    def test_identity_kinds_without_identity_give_none(self) -> None:
        for kind in ("api_key", "jwt_sub"):
            self.assertIsNone(bucket_key(kind, "users", "10.0.0.1", None), kind)
            self.assertIsNone(bucket_key(kind, "users", "10.0.0.1", ""), kind)

    def test_colons_in_route_names_cannot_collide(self) -> None:
        self.assertEqual(bucket_key("ip", "a:b", "c", None), "ip:a%3Ab:c")
        self.assertNotEqual(bucket_key("ip", "a:b", "c", None), bucket_key("ip", "a", "b:c", None))
        self.assertEqual(bucket_key("route", "50%:x", "c", None), "r:50%25%3Ax")

    def test_unknown_kind_is_an_error(self) -> None:
        self.assertRaises(ValueError, bucket_key, "user", "users", "10.0.0.1", None)


class RateLimitHeadersTests(SynchronousTestCase):
    """The RateLimit-* and Retry-After headers rendered from a decision."""

    def test_allowed_has_no_retry_after(self) -> None:
        self.assertEqual(
            rate_limit_headers(Decision(True, 10, 7, 1.5, 0.0)),
            [
                (b"RateLimit-Limit", b"10"),
                (b"RateLimit-Remaining", b"7"),
                (b"RateLimit-Reset", b"2"),
            ],
        )

    def test_refused_rounds_retry_after_up_to_one(self) -> None:
        self.assertEqual(
            rate_limit_headers(Decision(False, 10, 0, 4.2, 0.2)),
            [
                (b"RateLimit-Limit", b"10"),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", b"5"),
                (b"Retry-After", b"1"),
            ],
        )

    def test_whole_seconds_are_not_rounded_up(self) -> None:
        headers = dict(rate_limit_headers(Decision(False, 1, 0, 2.0, 2.0)))
        self.assertEqual((headers[b"RateLimit-Reset"], headers[b"Retry-After"]), (b"2", b"2"))

    def test_float_noise_does_not_add_a_second(self) -> None:
        headers = dict(
            rate_limit_headers(Decision(False, 1, 0, 3.0000000000000004, 2.0000000000000004))
        )
        self.assertEqual((headers[b"RateLimit-Reset"], headers[b"Retry-After"]), (b"3", b"2"))

    def test_full_bucket_resets_in_zero(self) -> None:
        headers = dict(rate_limit_headers(Decision(True, 1, 0, 0.0, 0.0)))
        self.assertEqual(headers[b"RateLimit-Reset"], b"0")

    def test_headers_from_a_refused_take(self) -> None:
        store = MemoryStore(Clock())
        allowed(store, "k", 5.0, 1, 1)
        self.assertEqual(
            rate_limit_headers(store.take("k", 5.0, 1)),
            [
                (b"RateLimit-Limit", b"1"),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", b"1"),
                (b"Retry-After", b"1"),
            ],
        )
