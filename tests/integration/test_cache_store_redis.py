"""The cache store contract, run against MemoryStore and against RedisStore on a real
redis-server; then what only the Redis store does: its layout, outages, and replicas sharing it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from avx_twisted.cache_store import CHUNK_SIZE, CacheEntry, ICacheStore, MemoryStore, RedisStore
from tests.support.redis import RedisServer

ensure = pytest_twisted.ensureDeferred

BODY_SIZES = [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1 << 20]


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


def body(size: int) -> bytes:
    """Binary bytes (every byte value, not UTF-8) of ``size`` bytes."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def entry(key: bytes = b"http://h/a", variant: bytes = b"", data: bytes = b"x",
          ttl: float = 60.0, t: float | None = None, route: str = "r", path: bytes = b"/a",
          **more: Any) -> CacheEntry:
    now = reactor.seconds() if t is None else t
    values: dict[str, Any] = dict(
        key=key, variant=variant, route=route, path=path, status=200,
        fields=[(b"Content-Type", b"application/octet-stream"), (b"X-Bin", b"\xe9\x00\xff"),
                (b"ETag", b'"42"')],
        body=data, request_time=now - 0.25, response_time=now,
        expires_at=reactor.seconds() + ttl,
    )
    values.update(more)
    return CacheEntry(**values)


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def keys(server: RedisServer, pattern: str = "*") -> list[bytes]:
    """The key names matching ``pattern``, from a raw KEYS reply."""
    reply = server.call("KEYS", pattern).split(b"\r\n")
    return sorted(reply[i] for i in range(2, len(reply), 2))


class StoreContract:
    """What every ICacheStore does; subclasses provide the ``store`` fixture."""

    @ensure
    async def test_provides_icache_store(self, store: Any) -> None:
        assert verifyObject(ICacheStore, store)

    @ensure
    async def test_binary_bodies_round_trip_at_chunk_boundaries(self, store: Any) -> None:
        stored = [entry(key=b"http://h/%d" % n, data=body(n)) for n in BODY_SIZES]
        for e in stored:
            assert await store.put(e, 4) is None
        for e in stored:
            assert await store.get(e.key) == [e]

    @ensure
    async def test_bodies_that_look_like_numbers_or_text_stay_bytes(self, store: Any) -> None:
        for n, data in enumerate([b"42", b"-1.5", b"caf\xc3\xa9", b"\xe9"]):
            e = entry(key=b"k%d" % n, data=data, variant=b"1", route="12", path=b"/7")
            await store.put(e, 4)
            assert await store.get(e.key) == [e]

    @ensure
    async def test_get_of_an_unknown_key_is_empty(self, store: Any) -> None:
        assert await store.get(b"http://h/none") == []

    @ensure
    async def test_put_replaces_the_same_variant(self, store: Any) -> None:
        await store.put(entry(data=body(CHUNK_SIZE * 3)), 4)
        new = entry(data=b"new")
        await store.put(new, 4)
        assert await store.get(new.key) == [new]

    @ensure
    async def test_variants_newest_first_and_max_variants(self, store: Any) -> None:
        now = reactor.seconds()
        for dt, variant in [(2, b"b"), (3, b"c"), (1, b"a")]:
            await store.put(entry(variant=variant, t=now + dt, data=variant * 70_000), 4)
        assert [e.variant for e in await store.get(b"http://h/a")] == [b"c", b"b", b"a"]
        await store.put(entry(variant=b"d", t=now + 4), 2)
        got = await store.get(b"http://h/a")
        assert [e.variant for e in got] == [b"d", b"c"]
        assert got[1].body == b"c" * 70_000
        assert store.stats()["evictions"] == 2

    @ensure
    async def test_expired_entries_are_not_returned(self, store: Any) -> None:
        await store.put(entry(variant=b"short", ttl=0.3, data=body(CHUNK_SIZE + 1)), 4)
        await store.put(entry(variant=b"long", ttl=60), 4)
        assert len(await store.get(b"http://h/a")) == 2
        await sleep(0.4)
        assert [e.variant for e in await store.get(b"http://h/a")] == [b"long"]

    @ensure
    async def test_an_expired_put_removes_the_entry_it_replaces(self, store: Any) -> None:
        await store.put(entry(), 4)
        await store.put(entry(ttl=-1), 4)
        assert await store.get(b"http://h/a") == []

    @ensure
    async def test_delete_removes_every_variant_of_one_key(self, store: Any) -> None:
        for variant in [b"a", b"b", b"c"]:
            await store.put(entry(variant=variant, data=body(CHUNK_SIZE + 5)), 4)
        await store.put(entry(key=b"http://h/other"), 4)
        assert await store.delete(b"http://h/a") == 3
        assert await store.get(b"http://h/a") == []
        assert len(await store.get(b"http://h/other")) == 1
        assert await store.delete(b"http://h/a") == 0

    @ensure
    async def test_purge_prefix_across_hosts(self, store: Any) -> None:
        paths = [(b"a", b"/api/users/1"), (b"b", b"/api/users/2"), (b"b", b"/api/users/2?q"),
                 (b"a", b"/api/usersx"), (b"a", b"/api/user"), (b"c", b"/other")]
        for host, path in paths:
            await store.put(entry(key=b"http://" + host + path, path=path), 4)
        await store.put(entry(key=b"http://b/api/users/2", path=b"/api/users/2",
                              variant=b"gzip"), 4)
        assert await store.purge_prefix(b"/api/users/") == 4
        assert await store.get(b"http://b/api/users/2") == []
        assert await store.get(b"http://a/api/users/1") == []
        assert len(await store.get(b"http://a/api/usersx")) == 1
        assert await store.purge_prefix(b"/api/users/") == 0
        assert await store.purge_prefix(b"/") == 3

    @ensure
    async def test_purge_uri_takes_every_key_of_one_uri(self, store: Any) -> None:
        for key in [b"http://h/a", b"http://h/a\nx-tenant=1", b"http://h/a\nx-tenant=2"]:
            await store.put(entry(key=key, path=b"/a"), 4)
        await store.put(entry(key=b"http://h/a\nx-tenant=1", path=b"/a", variant=b"gzip"), 4)
        await store.put(entry(key=b"http://h/ab\nx-tenant=1", path=b"/ab"), 4)
        await store.put(entry(key=b"http://h/a/b", path=b"/a/b"), 4)
        purged = await store.purge_uri(b"http://h/a", b"/a")
        assert purged == 4
        for key in [b"http://h/a", b"http://h/a\nx-tenant=1", b"http://h/a\nx-tenant=2"]:
            assert await store.get(key) == []
        assert len(await store.get(b"http://h/ab\nx-tenant=1")) == 1  # another path
        assert len(await store.get(b"http://h/a/b")) == 1
        assert await store.purge_uri(b"http://h/a", b"/a") == 0

    @ensure
    async def test_purge_prefix_of_many_entries(self, store: Any) -> None:
        for n in range(600):  # more than one batch of the Redis store
            await store.put(entry(key=b"http://h/p/%d" % n, path=b"/p/%d" % n), 4)
        await store.put(entry(key=b"http://h/q", path=b"/q"), 4)
        assert await store.purge_prefix(b"/p/") == 600
        assert len(await store.get(b"http://h/q")) == 1

    @ensure
    async def test_purge_route(self, store: Any) -> None:
        for n in range(300):
            await store.put(entry(key=b"http://h/u/%d" % n, route="users"), 4)
        await store.put(entry(key=b"http://h/u/0", route="users", variant=b"v"), 4)
        await store.put(entry(key=b"http://h/o", route="orders"), 4)
        assert await store.purge_route("users") == 301
        assert await store.get(b"http://h/u/0") == []
        assert len(await store.get(b"http://h/o")) == 1
        assert await store.purge_route("users") == 0

    @ensure
    async def test_stats_count_entries_and_bytes(self, store: Any) -> None:
        one, two = entry(key=b"k1", data=body(1000)), entry(key=b"k2", data=body(CHUNK_SIZE))
        await store.put(one, 4)
        await store.put(two, 4)
        stats = await fresh_stats(store)
        assert (stats["entries"], stats["bytes"]) == (2, one.size + two.size)
        assert stats["errors"] == 0
        await store.delete(b"k1")
        assert (await fresh_stats(store))["bytes"] == two.size


async def fresh_stats(store: Any) -> dict[str, int]:
    """stats(), after the Redis store has refreshed them."""
    if isinstance(store, RedisStore):
        store._stats_at = -1e9
        store.stats()
        await sleep(0.05)
    return store.stats()  # type: ignore[no-any-return]


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore(reactor, max_bytes=64 << 20)


def redis_store(url: str, **options: Any) -> RedisStore:
    options.setdefault("timeout_s", 2.0)
    return RedisStore(reactor, url, **options)


class TestRedisStore(StoreContract):
    @pytest_twisted.async_yield_fixture
    async def store(self, redis_server: RedisServer) -> AsyncIterator[RedisStore]:
        s = redis_store(redis_server.url)
        yield s
        await s.close()

    @ensure
    async def test_entries_and_chunks_expire_in_redis(self, store, redis_server) -> None:
        e = entry(ttl=0.5, data=body(3 * CHUNK_SIZE), route="users", path=b"/api/x")
        await store.put(e, 4)
        names = keys(redis_server)
        assert len([n for n in names if n.startswith(b"avx:cache:b:")]) == 3
        assert all(n.startswith(b"avx:cache:") for n in names)
        for name in names:
            ttl = int(redis_server.call("TTL", name.decode("latin-1"))[1:].split(b"\r")[0])
            if name.split(b":")[2] in (b"e", b"b", b"v"):
                assert ttl == 1, name  # expires_at - now, rounded up
            else:
                assert ttl == -1, name  # an index, swept
        await sleep(1.1)
        assert await store.get(e.key) == []
        assert (await fresh_stats(store))["entries"] == 0  # swept out of the indexes
        assert keys(redis_server) == [b"avx:cache:bytes"]
        assert redis_server.call("GET", "avx:cache:bytes") == b"$1\r\n0\r\n"

    @ensure
    async def test_a_put_sweeps_expired_entries_out_of_the_indexes(self, store,
                                                                   redis_server) -> None:
        for n in range(5):
            await store.put(entry(key=b"k%d" % n, ttl=0.2, route="r1", path=b"/%d" % n), 4)
        await sleep(1.1)
        await store.put(entry(key=b"other", route="r2"), 4)
        assert sorted(n.split(b":")[2] for n in keys(redis_server)) == [
            b"b", b"bytes", b"e", b"live", b"paths", b"r", b"v"]
        assert redis_server.call("ZCARD", "avx:cache:live") == b":1\r\n"

    @ensure
    async def test_a_missing_chunk_leaves_that_variant_out(self, store, redis_server) -> None:
        await store.put(entry(variant=b"whole", data=body(2 * CHUNK_SIZE)), 4)
        await store.put(entry(variant=b"cut", data=body(2 * CHUNK_SIZE)), 4)
        chunk_id = store_id(redis_server, b"cut")
        redis_server.call("DEL", f"avx:cache:b:{chunk_id}:1")
        assert [e.variant for e in await store.get(b"http://h/a")] == [b"whole"]
        redis_server.call("DEL", f"avx:cache:b:{store_id(redis_server, b'whole')}:0")
        assert await store.get(b"http://h/a") == []

    @ensure
    async def test_the_key_prefix_is_configurable(self, redis_server) -> None:
        s = redis_store(redis_server.url, prefix="gw2:")
        try:
            await s.put(entry(), 4)
            assert len(await s.get(b"http://h/a")) == 1
            assert keys(redis_server, "avx:*") == []
            assert keys(redis_server, "gw2:*") != []
        finally:
            await s.close()

    @ensure
    async def test_two_replicas_share_entries_and_purges(self, store, redis_server) -> None:
        other = redis_store(redis_server.url)
        try:
            e = entry(data=body(CHUNK_SIZE + 1))
            await store.put(e, 4)
            assert await other.get(e.key) == [e]
            f = entry(key=b"http://h2/api/u", path=b"/api/u", variant=b"br")
            await other.put(f, 4)
            assert await store.get(f.key) == [f]
            assert await store.purge_prefix(b"/api/") == 1
            assert await other.get(f.key) == []
            await other.put(entry(variant=b"v2", t=reactor.seconds() + 1), 1)
            assert [x.variant for x in await store.get(e.key)] == [b"v2"]
        finally:
            await other.close()

    @ensure
    async def test_redis_down_answers_empty_counted_and_logged_once(self, tmp_path) -> None:
        server = RedisServer(tmp_path).start()
        s = redis_store(server.url, timeout_s=1.0, retry_s=0.5)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            await s.put(entry(), 4)
            assert len(await s.get(b"http://h/a")) == 1
            server.stop()
            assert await s.get(b"http://h/a") == []
            started = reactor.seconds()
            assert await s.put(entry(), 4) is None  # down: answered at once
            assert await s.delete(b"http://h/a") == 0
            assert await s.purge_prefix(b"/") == 0
            assert await s.purge_route("r") == 0
            assert reactor.seconds() - started < 0.5  # well under one 1 s timeout
            await sleep(0.6)
            assert await s.get(b"http://h/a") == []  # the probe, failing too
            assert s.stats()["errors"] == 6
        finally:
            globalLogPublisher.removeObserver(events.append)
            await s.close()
        logged = [formatEvent(e) for e in events if "cache store" in formatEvent(e)]
        assert len(logged) == 1, logged  # the lost connection, or no answer within 0.3 s
        assert logged[0].startswith(f"cache store Redis redis://127.0.0.1:{server.port}/0 "
                                    "unavailable: ")
        assert logged[0].endswith("; caching is off until it answers again")

    @ensure
    async def test_a_restarted_redis_is_used_again(self, tmp_path) -> None:
        server = RedisServer(tmp_path).start()
        port = server.port
        s = redis_store(server.url, timeout_s=0.3, retry_s=0.2)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            await s.put(entry(), 4)
            server.stop()
            assert await s.get(b"http://h/a") == []
            server = RedisServer(tmp_path, port=port).start()
            for _ in range(100):  # txredisapi reconnects with back-off (1 s first)
                await sleep(0.2)
                await s.put(entry(data=b"again"), 4)
                if not s._down:
                    break
            assert [e.body for e in await s.get(b"http://h/a")] == [b"again"]
            errors = s.stats()["errors"]
            assert errors >= 1
            assert await s.get(b"http://h/a") != []
            assert s.stats()["errors"] == errors
        finally:
            globalLogPublisher.removeObserver(events.append)
            await s.close()
            server.stop()
        logged = [formatEvent(e) for e in events if "cache store" in formatEvent(e)]
        assert len(logged) == 2 and "unavailable" in logged[0], logged
        assert logged[1] == f"cache store Redis redis://127.0.0.1:{port}/0 answers again"

    @ensure
    async def test_a_redis_that_hangs_times_out_and_recovers(self, tmp_path) -> None:
        server = RedisServer(tmp_path).start()
        s = redis_store(server.url, timeout_s=0.3, retry_s=0.2)
        try:
            await s.put(entry(), 4)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            started = reactor.seconds()
            assert await s.get(b"http://h/a") == []
            assert 0.25 < reactor.seconds() - started < 1.0
            assert s.errors == 1
            server.proc.send_signal(signal.SIGCONT)
            for _ in range(100):  # the timed-out connection was dropped: txredisapi reconnects
                await sleep(0.2)
                if await s.get(b"http://h/a"):
                    break
            assert len(await s.get(b"http://h/a")) == 1
        finally:
            if server.proc is not None:
                server.proc.send_signal(signal.SIGCONT)
            await s.close()
            server.stop()

    @ensure
    async def test_unix_socket_url_with_a_db(self, tmp_path) -> None:
        server = RedisServer(tmp_path, unix_socket=True).start()
        s = redis_store(f"unix://{server.socket_path}?db=3")
        try:
            await s.put(entry(data=body(CHUNK_SIZE + 1)), 4)
            assert len(await s.get(b"http://h/a")) == 1
            assert server.call("DBSIZE", db=3) != b":0\r\n"
        finally:
            await s.close()
            server.stop()

    @ensure
    async def test_password_and_db_from_the_url(self, tmp_path) -> None:
        server = RedisServer(tmp_path, password="s3cr:t").start()
        s = redis_store(f"redis://:s3cr%3At@127.0.0.1:{server.port}/2")
        try:
            await s.put(entry(), 4)
            assert len(await s.get(b"http://h/a")) == 1
            assert server.call("DBSIZE", db=2) != b":0\r\n"
            assert server.call("DBSIZE", db=0) == b":0\r\n"
            assert s.errors == 0
        finally:
            await s.close()
            server.stop()


def store_id(server: RedisServer, variant: bytes) -> str:
    """The chunk id of the stored entry of key http://h/a and ``variant``."""
    import hashlib

    kh = hashlib.blake2b(b"http://h/a", digest_size=16).hexdigest()
    vh = hashlib.blake2b(variant, digest_size=16).hexdigest()
    reply = server.call("HGET", f"avx:cache:e:{kh}:{vh}", "id")
    return reply.split(b"\r\n")[1].decode()
