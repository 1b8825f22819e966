"""Tests for the in-process cache store, avx_twisted.cache_store.MemoryStore, on a task.Clock
(the contract it shares with the Redis store: tests/integration/test_cache_store_redis.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from avx_twisted.cache_store import ENTRY_OVERHEAD, CacheEntry, ICacheStore, MemoryStore


def entry(key: bytes = b"http://h/a", variant: bytes = b"", body: bytes = b"x",
          t: float = 0.0, ttl: float = 100.0, route: str = "r", path: bytes = b"/a",
          **more: Any) -> CacheEntry:
    """An entry stored at time ``t`` that the store may keep for ``ttl`` seconds."""
    values: dict[str, Any] = dict(
        key=key, variant=variant, route=route, path=path, status=200,
        fields=[(b"Content-Type", b"text/plain")], body=body, request_time=t,
        response_time=t, expires_at=t + ttl,
    )
    values.update(more)
    return CacheEntry(**values)


def sized(total: int, **more: Any) -> CacheEntry:
    """An entry whose size is exactly ``total``."""
    empty = entry(body=b"", **more)
    return entry(body=b"b" * (total - empty.size), **more)


class CacheEntryTests(SynchronousTestCase):
    def test_size_counts_body_fields_keys_and_the_overhead(self) -> None:
        e = entry(key=b"k", variant=b"gzip", body=b"12345", route="r", path=b"/p",
                  fields=[(b"A", b"bc"), (b"Etag", b'"1"')])
        self.assertEqual(e.size, 5 + (1 + 2) + (4 + 3) + 1 + 4 + 2 + 1 + ENTRY_OVERHEAD)

    def test_an_entry_is_a_value(self) -> None:
        with self.assertRaises(AttributeError):
            entry().body = b"other"  # type: ignore[misc]


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock, max_bytes=10_000)

    def get(self, key: bytes = b"http://h/a", store: MemoryStore | None = None) -> list[CacheEntry]:
        return self.successResultOf((store or self.store).get(key))

    def put(self, e: CacheEntry, max_variants: int = 8, store: MemoryStore | None = None) -> None:
        self.assertIsNone(self.successResultOf((store or self.store).put(e, max_variants)))

    def test_provides_icache_store(self) -> None:
        self.assertTrue(verifyObject(ICacheStore, self.store))

    def test_get_of_an_unknown_key_is_empty(self) -> None:
        self.assertEqual(self.get(b"nothing"), [])

    def test_put_then_get_returns_the_entry(self) -> None:
        e = entry(body=b"\x00\xffbody")
        self.put(e)
        self.assertEqual(self.get(), [e])

    def test_put_replaces_the_same_key_and_variant(self) -> None:
        self.put(entry(body=b"old"))
        self.put(entry(body=b"new", t=1))
        self.assertEqual([e.body for e in self.get()], [b"new"])
        self.assertEqual(self.store.stats()["entries"], 1)
        self.assertEqual(self.store.stats()["bytes"], entry(body=b"new").size)

    def test_variants_come_newest_first(self) -> None:
        for t, variant in [(2, b"b"), (5, b"c"), (1, b"a")]:
            self.put(entry(variant=variant, t=t))
        self.assertEqual([e.variant for e in self.get()], [b"c", b"b", b"a"])

    def test_max_variants_evicts_the_oldest_others(self) -> None:
        for t, variant in enumerate([b"a", b"b", b"c"]):
            self.put(entry(variant=variant, t=t), max_variants=3)
        self.put(entry(variant=b"d", t=3), max_variants=2)
        self.assertEqual([e.variant for e in self.get()], [b"d", b"c"])
        self.assertEqual(self.store.stats()["evictions"], 2)

    def test_max_variants_never_evicts_the_entry_just_stored(self) -> None:
        self.put(entry(variant=b"new", t=10))
        self.put(entry(variant=b"late", t=5), max_variants=1)  # an older response, stored last
        self.assertEqual([e.variant for e in self.get()], [b"late"])

    def test_expired_entries_are_not_returned_and_are_dropped(self) -> None:
        self.put(entry(variant=b"short", ttl=10))
        self.put(entry(variant=b"long", ttl=20))
        self.clock.advance(10)  # expires_at == now: gone
        self.assertEqual([e.variant for e in self.get()], [b"long"])
        self.assertEqual(self.store.stats()["entries"], 1)
        self.clock.advance(10)
        self.assertEqual(self.get(), [])
        self.assertEqual(self.store.stats(), {"entries": 0, "bytes": 0, "evictions": 0,
                                              "errors": 0})

    def test_stats_drop_expired_entries_never_read_again(self) -> None:
        self.put(entry(key=b"k1", ttl=5))
        self.put(entry(key=b"k2", ttl=50))
        self.clock.advance(6)
        self.assertEqual(self.store.stats()["entries"], 1)

    def test_an_already_expired_entry_is_not_stored_and_removes_the_old_one(self) -> None:
        self.put(entry(body=b"old"))
        self.clock.advance(200)
        self.put(entry(body=b"new", t=100, ttl=-1))
        self.assertEqual(self.get(), [])
        self.assertEqual(self.store.stats()["entries"], 0)

    def test_lru_evicts_the_least_recently_used_key_to_fit(self) -> None:
        for key in [b"k1", b"k2", b"k3"]:
            self.put(sized(3000, key=key))
        self.get(b"k1")  # k1 is now the most recent; k2 the least
        self.put(sized(3000, key=b"k4"))
        self.assertEqual([bool(self.get(k)) for k in [b"k1", b"k2", b"k3", b"k4"]],
                         [True, False, True, True])
        self.assertEqual(self.store.stats(), {"entries": 3, "bytes": 9000, "evictions": 1,
                                              "errors": 0})

    def test_a_put_makes_its_key_the_most_recent(self) -> None:
        for key in [b"k1", b"k2", b"k3"]:
            self.put(sized(3000, key=key))
        self.put(sized(3000, key=b"k1", t=1))  # replaced: now the most recent
        self.put(sized(3000, key=b"k4"))
        self.assertEqual([bool(self.get(k)) for k in [b"k1", b"k2", b"k3", b"k4"]],
                         [True, False, True, True])

    def test_eviction_takes_as_many_entries_as_needed_variants_oldest_first(self) -> None:
        self.put(sized(2000, key=b"k1", variant=b"new", t=2))
        self.put(sized(2000, key=b"k1", variant=b"old", t=1))
        self.put(sized(2000, key=b"k2"))
        self.put(sized(5000, key=b"k3"))  # 11,000 > 10,000: k1's oldest variant goes
        self.assertEqual([e.variant for e in self.get(b"k1")], [b"new"])
        self.put(sized(2000, key=b"k4"))  # k2 is now the least recently used
        self.assertEqual(self.get(b"k2"), [])
        self.assertEqual(self.store.stats(), {"entries": 3, "bytes": 9000, "evictions": 2,
                                              "errors": 0})

    def test_an_entry_of_exactly_max_bytes_fits_alone(self) -> None:
        self.put(sized(3000, key=b"k1"))
        self.put(sized(10_000, key=b"k2"))
        self.assertEqual(self.get(b"k1"), [])
        self.assertEqual(len(self.get(b"k2")), 1)
        self.assertEqual(self.store.stats()["bytes"], 10_000)

    def test_an_entry_larger_than_max_bytes_is_refused_and_evicts_nothing(self) -> None:
        self.put(sized(3000, key=b"k1"))
        self.put(sized(10_001, key=b"k2"))
        self.assertEqual(self.get(b"k2"), [])
        self.assertEqual(len(self.get(b"k1")), 1)
        self.assertEqual(self.store.stats(), {"entries": 1, "bytes": 3000, "evictions": 0,
                                              "errors": 0})

    def test_a_refused_entry_still_removes_the_one_it_replaces(self) -> None:
        self.put(sized(3000))
        self.put(sized(10_001, t=1))
        self.assertEqual(self.get(), [])

    def test_expired_entries_go_before_live_ones_when_over_budget(self) -> None:
        self.put(sized(4000, key=b"short", ttl=5))
        self.put(sized(4000, key=b"long", ttl=100))
        self.clock.advance(10)
        self.put(sized(4000, key=b"k3", t=10))
        self.assertEqual(len(self.get(b"long")), 1)
        self.assertEqual(self.store.stats()["evictions"], 0)  # an expiry is no eviction

    def test_delete_removes_every_variant_and_counts_the_live_ones(self) -> None:
        self.put(entry(variant=b"a"))
        self.put(entry(variant=b"b"))
        self.put(entry(variant=b"gone", ttl=1))
        self.put(entry(key=b"other"))
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.store.delete(b"http://h/a")), 2)
        self.assertEqual(self.get(), [])
        self.assertEqual(len(self.get(b"other")), 1)
        self.assertEqual(self.successResultOf(self.store.delete(b"http://h/a")), 0)

    def test_purge_prefix_matches_paths_on_any_host(self) -> None:
        self.put(entry(key=b"http://a/api/users/1", path=b"/api/users/1"))
        self.put(entry(key=b"http://b/api/users/2", path=b"/api/users/2", variant=b"v"))
        self.put(entry(key=b"http://b/api/users/2", path=b"/api/users/2", variant=b"w"))
        self.put(entry(key=b"http://a/api/usersx", path=b"/api/usersx"))
        self.put(entry(key=b"http://a/api/user", path=b"/api/user"))
        self.assertEqual(self.successResultOf(self.store.purge_prefix(b"/api/users/")), 3)
        self.assertEqual(self.get(b"http://b/api/users/2"), [])
        self.assertEqual(len(self.get(b"http://a/api/usersx")), 1)
        self.assertEqual(self.successResultOf(self.store.purge_prefix(b"/")), 2)
        self.assertEqual(self.store.stats()["entries"], 0)

    def test_purge_route_removes_only_that_route(self) -> None:
        self.put(entry(key=b"k1", route="users"))
        self.put(entry(key=b"k2", route="users", variant=b"v"))
        self.put(entry(key=b"k3", route="orders"))
        self.assertEqual(self.successResultOf(self.store.purge_route("users")), 2)
        self.assertEqual(self.successResultOf(self.store.purge_route("users")), 0)
        self.assertEqual(len(self.get(b"k3")), 1)

    def test_many_replacements_keep_the_expiry_heap_small(self) -> None:
        for t in range(1000):
            self.put(entry(t=t, ttl=10_000))
        self.assertLess(len(self.store._expiry), 100)
        self.assertEqual(self.store.stats()["entries"], 1)

    def test_close_succeeds(self) -> None:
        self.assertIsNone(self.successResultOf(self.store.close()))
