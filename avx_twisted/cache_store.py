# -*- test-case-name: tests.unit.test_cache_store -*-
"""Where cached responses are kept: one worker's memory, or a Redis shared by every replica.

The stores only keep entries; what may be stored, for how long and which variant answers a
request is :mod:`avx_twisted.cache`'s business. Both stores sit behind :class:`ICacheStore` and
answer with Deferreds; neither ever fails one: a store that cannot do something answers as if
the cache were empty (``[]``, ``0``), so a route works uncached.

:class:`MemoryStore` is an LRU per process bounded by ``max_bytes`` (counting
:attr:`CacheEntry.size`).

:class:`RedisStore` keeps entries in Redis (prefix ``P``, default ``avx:cache:``; ``kh`` and
``vh`` are hex digests of the primary key and of the variant, ``id`` is random per stored entry,
``kvi`` is ``kh:vh:id``)::

    P e:<kh>:<vh>     hash: id, n (chunks), r (route), p (path), v (variant), s (size),
                      x (expires_at), m (JSON: status, fields as latin-1, times, body length)
    P b:<id>:<i>      string: body chunk i, 64 KiB each (the last one shorter; none for b"")
    P v:<kh>          sorted set: vh by response_time, the variants of one key
    P r:<route>       sorted set: kvi by expiry, for purge_route
    P paths           sorted set, all scores 0: "path NUL kvi", for purge_prefix (ZRANGEBYLEX)
    P live            sorted set: "kvi NUL size NUL route NUL path" by expiry (Redis' clock)
    P bytes           string: the stored bytes (sizes) of the entries in ``live``

Heads and chunks get a TTL of ``expires_at - now`` (rounded up), ``v:`` as long as its newest
variant. The indexes (``r:``, ``paths``, ``live``, ``bytes``) have none: each put sweeps a few
entries whose expiry passed out of them (stats() sweeps more), and purges skip what is gone.
A put writes its chunks first (plain SETs, pipelined, so a large body never becomes one huge
command), then one Lua script checks they are all there and commits head, indexes, the
replaced entry's removal and the max_variants evictions atomically. Chunks are named by the
entry's id, so a get racing a replacement sees the old body or none, never a mix: a variant
whose head or any chunk is missing is left out. With ``maxmemory`` set, use a ``volatile-*``
policy: it evicts heads and chunks (which have TTLs), never the indexes. The global indexes
make this a single-node (or primary/replica) layout, not one for Redis Cluster.

When Redis does not answer (refused connection, timeout), the store is down: the operation
answers empty, ``errors`` counts it, one warning is logged; for ``retry_s`` every operation
answers empty at once (no waiting on a dead server), then one goes through as a probe, and the
first one that succeeds logs the recovery. txredisapi reconnects by itself. An error reply
(e.g. OOM on a write) is counted and logged at most once a minute, without marking the store
down.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ._configmodel import ConfigError
from .redis_store import redis_connection
from .urls import parse_redis_url

#: Bytes counted per entry on top of its body and header bytes (the objects holding it).
ENTRY_OVERHEAD = 200
#: Body bytes per Redis value.
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class CacheEntry:
    """One stored response variant (a value: build a new one to change it)."""

    #: The primary key (scheme://host/path?query plus the route's key headers), method-free.
    key: bytes
    #: The secondary key from the request headers the response Varies on (b"" without Vary).
    variant: bytes
    #: The route name (purge by route).
    route: str
    #: The request path (purge by prefix matches it, on any host).
    path: bytes
    status: int
    #: The response header fields as stored.
    fields: list[tuple[bytes, bytes]]
    body: bytes
    #: RFC 9111 4.2.3 request_time and response_time (epoch seconds).
    request_time: float
    response_time: float
    #: When the store may forget it (end of freshness and of the stale windows), epoch seconds.
    expires_at: float

    @property
    def size(self) -> int:
        """What keeping this entry costs: body, header fields, keys, plus a fixed overhead."""
        headers = sum(len(n) + len(v) for n, v in self.fields)
        return (
            len(self.body)
            + headers
            + len(self.key)
            + len(self.variant)
            + len(self.path)
            + len(self.route)
            + ENTRY_OVERHEAD
        )


class ICacheStore(Interface):
    """Where cache entries live: in this process, or shared between gateway instances. No
    method's Deferred ever fails: a store that cannot answer answers empty."""

    def get(key: bytes) -> Deferred[list[CacheEntry]]:
        """Every unexpired variant of primary key ``key``, newest response_time first."""

    def put(entry: CacheEntry, max_variants: int) -> Deferred[None]:
        """Store ``entry``, replacing the one of the same key and variant; keep at most
        ``max_variants`` variants of its key (the oldest others go). An entry already expired
        (or too large for the store) is not stored, and the one it would replace is removed."""

    def delete(key: bytes) -> Deferred[int]:
        """Remove every variant of ``key``; how many unexpired ones there were."""

    def purge_prefix(path_prefix: bytes) -> Deferred[int]:
        """Remove every entry whose path starts with ``path_prefix`` (any host); the count."""

    def purge_uri(uri: bytes, path: bytes) -> Deferred[int]:
        """Remove every entry of the URI ``uri`` (a primary key without key headers), whatever
        its key header values, ``path`` being the URI's path; the count. A store that cannot
        tell the URIs of one path apart removes every entry of ``path`` (more, never less)."""

    def purge_route(route: str) -> Deferred[int]:
        """Remove every entry of route ``route``; the count."""

    def stats() -> dict[str, int]:
        """``entries``, ``bytes``, ``evictions`` and ``errors``, for metrics."""

    def close() -> Deferred[None]:
        """Let go of connections; the store is not used afterwards."""


class _Slot:
    """A stored entry with its size, and a serial that tells the expiry heap it is current."""

    __slots__ = ("entry", "size", "serial")

    def __init__(self, entry: CacheEntry, size: int, serial: int) -> None:
        self.entry = entry
        self.size = size
        self.serial = serial


@implementer(ICacheStore)
class MemoryStore:
    """An LRU of keys (a get or put makes a key the most recent) bounded by ``max_bytes`` of
    :attr:`CacheEntry.size`; over budget, expired entries go first, then the least recently used
    keys' variants, oldest first. Per process, answered without a reactor turn."""

    def __init__(self, clock: IReactorTime, max_bytes: int) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self._keys: OrderedDict[bytes, dict[bytes, _Slot]] = OrderedDict()
        self._expiry: list[tuple[float, int, bytes, bytes]] = []  # (expires_at, serial, k, v)
        self._serial = 0
        self._bytes = 0
        self._entries = 0
        self.evictions = 0

    def get(self, key: bytes) -> Deferred[list[CacheEntry]]:
        variants = self._keys.get(key)
        if variants is None:
            return defer.succeed([])
        now = self.clock.seconds()
        for variant in [v for v, s in variants.items() if s.entry.expires_at <= now]:
            self._remove(key, variant)
        if key not in self._keys:
            return defer.succeed([])
        self._keys.move_to_end(key)
        entries = [s.entry for s in variants.values()]
        entries.sort(key=lambda e: e.response_time, reverse=True)
        return defer.succeed(entries)

    def put(self, entry: CacheEntry, max_variants: int) -> Deferred[None]:
        self._remove(entry.key, entry.variant)
        size = entry.size
        if size > self.max_bytes or entry.expires_at <= self.clock.seconds():
            return defer.succeed(None)
        self._serial += 1
        variants = self._keys.setdefault(entry.key, {})
        variants[entry.variant] = _Slot(entry, size, self._serial)
        self._keys.move_to_end(entry.key)
        self._bytes += size
        self._entries += 1
        heapq.heappush(self._expiry, (entry.expires_at, self._serial, entry.key, entry.variant))
        others = sorted(
            (s.entry.response_time, v) for v, s in variants.items() if v != entry.variant
        )
        for _, variant in others[: max(0, len(variants) - max(1, max_variants))]:
            self._remove(entry.key, variant)
            self.evictions += 1
        if self._bytes > self.max_bytes:
            self._drop_expired()
        while self._bytes > self.max_bytes:
            lru_key, lru = next(iter(self._keys.items()))
            candidates = [v for v in lru if lru_key != entry.key or v != entry.variant]
            oldest = min(candidates, key=lambda v: lru[v].entry.response_time)
            self._remove(lru_key, oldest)
            self.evictions += 1
        if len(self._expiry) > 2 * self._entries + 64:
            self._expiry = [
                (s.entry.expires_at, s.serial, k, v)
                for k, vs in self._keys.items()
                for v, s in vs.items()
            ]
            heapq.heapify(self._expiry)
        return defer.succeed(None)

    def delete(self, key: bytes) -> Deferred[int]:
        now = self.clock.seconds()
        variants = self._keys.get(key, {})
        live = sum(1 for s in variants.values() if s.entry.expires_at > now)
        for variant in list(variants):
            self._remove(key, variant)
        return defer.succeed(live)

    def purge_prefix(self, path_prefix: bytes) -> Deferred[int]:
        return defer.succeed(self._purge(lambda e: e.path.startswith(path_prefix)))

    def purge_uri(self, uri: bytes, path: bytes) -> Deferred[int]:
        with_headers = uri + b"\n"
        return defer.succeed(self._purge(lambda e: e.key == uri or e.key.startswith(with_headers)))

    def purge_route(self, route: str) -> Deferred[int]:
        return defer.succeed(self._purge(lambda e: e.route == route))

    def stats(self) -> dict[str, int]:
        self._drop_expired()
        return {
            "entries": self._entries,
            "bytes": self._bytes,
            "evictions": self.evictions,
            "errors": 0,
        }

    def close(self) -> Deferred[None]:
        return defer.succeed(None)

    def _purge(self, matches: Callable[[CacheEntry], bool]) -> int:
        now = self.clock.seconds()
        gone = [
            (k, v, s.entry.expires_at > now)
            for k, vs in self._keys.items()
            for v, s in vs.items()
            if matches(s.entry)
        ]
        for key, variant, _ in gone:
            self._remove(key, variant)
        return sum(1 for _, _, live in gone if live)

    def _drop_expired(self) -> None:
        now = self.clock.seconds()
        while self._expiry and self._expiry[0][0] <= now:
            _, serial, key, variant = heapq.heappop(self._expiry)
            slot = self._keys.get(key, {}).get(variant)
            if slot is not None and slot.serial == serial:
                self._remove(key, variant)

    def _remove(self, key: bytes, variant: bytes) -> None:
        variants = self._keys.get(key)
        if variants is None:
            return
        slot = variants.pop(variant, None)
        if slot is None:
            return
        self._bytes -= slot.size
        self._entries -= 1
        if not variants:
            del self._keys[key]


# The Lua shared by the scripts. P is the key prefix; now the caller's clock (what counts as
# unexpired), rnow Redis' own (index expiry, the same for every replica).
_LUA_COMMON = """
local P = ARGV[1]
local function unindex(kvi, size, route, path)
  redis.call('ZREM', P .. 'r:' .. route, kvi)
  redis.call('ZREM', P .. 'paths', path .. '\\0' .. kvi)
  redis.call('ZREM', P .. 'live', kvi .. '\\0' .. size .. '\\0' .. route .. '\\0' .. path)
  redis.call('DECRBY', P .. 'bytes', size)
end
local function drop(kh, vh, now)
  local e = P .. 'e:' .. kh .. ':' .. vh
  local h = redis.call('HMGET', e, 'id', 'n', 's', 'r', 'p', 'x')
  if not h[1] then
    return 0
  end
  for i = 0, tonumber(h[2]) - 1 do
    redis.call('DEL', P .. 'b:' .. h[1] .. ':' .. i)
  end
  redis.call('DEL', e)
  redis.call('ZREM', P .. 'v:' .. kh, vh)
  unindex(kh .. ':' .. vh .. ':' .. h[1], h[3], h[4], h[5])
  if tonumber(h[6]) > now then
    return 1
  end
  return 0
end
local function current(kvi)
  local kh, vh, id = string.sub(kvi, 1, 32), string.sub(kvi, 34, 65), string.sub(kvi, 67)
  local e = P .. 'e:' .. kh .. ':' .. vh
  return kh, vh, redis.call('HGET', e, 'id') == id
end
local function sweep(limit, rnow)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'live', '-inf', rnow, 'LIMIT', 0, limit)
  for _, m in ipairs(gone) do
    local kvi, size, route, path = string.match(m, '^([^%z]+)%z([^%z]*)%z([^%z]*)%z(.*)$')
    local kh, vh, is_current = current(kvi)
    if is_current then
      drop(kh, vh, 0)
    else
      unindex(kvi, size, route, path)
      if redis.call('EXISTS', P .. 'e:' .. kh .. ':' .. vh) == 0 then
        redis.call('ZREM', P .. 'v:' .. kh, vh)
      end
    end
  end
end
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local rnow = tonumber(t[1])
"""

# ARGV: P, kh, vh, id, n, route, path, variant, meta, size, expires_at, ttl, max_variants,
# response_time, now. Returns the number of variants evicted, or -1 when a chunk is missing.
_PUT_LUA = (
    _LUA_COMMON
    + """
local kh, vh, id, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local route, path, size, ttl = ARGV[6], ARGV[7], ARGV[10], tonumber(ARGV[12])
local now = tonumber(ARGV[15])
for i = 0, n - 1 do
  if redis.call('EXISTS', P .. 'b:' .. id .. ':' .. i) == 0 then
    for j = 0, n - 1 do
      redis.call('DEL', P .. 'b:' .. id .. ':' .. j)
    end
    return -1
  end
end
drop(kh, vh, now)
local e = P .. 'e:' .. kh .. ':' .. vh
redis.call('HSET', e, 'id', id, 'n', n, 'r', route, 'p', path, 'v', ARGV[8], 'm', ARGV[9],
           's', size, 'x', ARGV[11])
redis.call('EXPIRE', e, ttl)
local v = P .. 'v:' .. kh
redis.call('ZADD', v, ARGV[14], vh)
if redis.call('TTL', v) < ttl then
  redis.call('EXPIRE', v, ttl)
end
local kvi = kh .. ':' .. vh .. ':' .. id
local deadline = rnow + ttl
redis.call('ZADD', P .. 'r:' .. route, deadline, kvi)
redis.call('ZADD', P .. 'paths', 0, path .. '\\0' .. kvi)
redis.call('ZADD', P .. 'live', deadline, kvi .. '\\0' .. size .. '\\0' .. route .. '\\0' .. path)
redis.call('INCRBY', P .. 'bytes', size)
for _, other in ipairs(redis.call('ZRANGE', v, 0, -1)) do
  if redis.call('EXISTS', P .. 'e:' .. kh .. ':' .. other) == 0 then
    redis.call('ZREM', v, other)
  end
end
local evicted = 0
local over = redis.call('ZCARD', v) - tonumber(ARGV[13])
if over > 0 then
  for _, old in ipairs(redis.call('ZRANGE', v, 0, over)) do
    if old ~= vh and evicted < over then
      drop(kh, old, now)
      evicted = evicted + 1
    end
  end
end
sweep(16, rnow)
return evicted
"""
)

# ARGV: P, kh, vh, now: removes one variant (a put that is not stored replaces it by nothing).
_DROP_LUA = (
    _LUA_COMMON
    + """
return drop(ARGV[2], ARGV[3], tonumber(ARGV[4]))
"""
)

# ARGV: P, kh. Returns, newest first, 8 values per variant: id, n, route, path, variant, meta,
# expires_at, and the first chunk (nil when the body is empty or the chunk gone).
_GET_LUA = """
local P, kh = ARGV[1], ARGV[2]
local out = {}
for _, vh in ipairs(redis.call('ZREVRANGE', P .. 'v:' .. kh, 0, -1)) do
  local h = redis.call('HMGET', P .. 'e:' .. kh .. ':' .. vh, 'id', 'n', 'r', 'p', 'v', 'm', 'x')
  if h[1] then
    local first = false
    if tonumber(h[2]) > 0 then
      first = redis.call('GET', P .. 'b:' .. h[1] .. ':0')
    end
    for i = 1, 7 do
      out[#out + 1] = h[i]
    end
    out[#out + 1] = first
  end
end
return out
"""

# ARGV: P, kh, now: every variant of one key.
_DELETE_LUA = (
    _LUA_COMMON
    + """
local count = 0
for _, vh in ipairs(redis.call('ZRANGE', P .. 'v:' .. ARGV[2], 0, -1)) do
  count = count + drop(ARGV[2], vh, tonumber(ARGV[3]))
end
redis.call('DEL', P .. 'v:' .. ARGV[2])
return count
"""
)

# ARGV: P, prefix, now, batch. Returns {removed, 1 when there may be more}.
_PURGE_PREFIX_LUA = (
    _LUA_COMMON
    + """
local prefix, now, batch = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local ms = redis.call('ZRANGEBYLEX', P .. 'paths', '[' .. prefix, '+', 'LIMIT', 0, batch)
local count = 0
for _, m in ipairs(ms) do
  if string.sub(m, 1, #prefix) ~= prefix then
    return {count, 0}
  end
  local kh, vh, is_current = current(string.sub(m, -82))
  if is_current then
    count = count + drop(kh, vh, now)
  else
    redis.call('ZREM', P .. 'paths', m)
  end
end
return {count, #ms == batch and 1 or 0}
"""
)

# ARGV: P, route, now, batch. Returns {removed, 1 when there may be more}.
_PURGE_ROUTE_LUA = (
    _LUA_COMMON
    + """
local r, now, batch = P .. 'r:' .. ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local ms = redis.call('ZRANGE', r, 0, batch - 1)
local count = 0
for _, kvi in ipairs(ms) do
  local kh, vh, is_current = current(kvi)
  if is_current then
    count = count + drop(kh, vh, now)
  else
    redis.call('ZREM', r, kvi)
  end
end
return {count, #ms == batch and 1 or 0}
"""
)

# ARGV: P. Sweeps expired entries out of the indexes; returns {entries, bytes}.
_STATS_LUA = (
    _LUA_COMMON
    + """
sweep(1000, rnow)
return {redis.call('ZCARD', P .. 'live'), tonumber(redis.call('GET', P .. 'bytes') or '0')}
"""
)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).hexdigest().encode("ascii")


def _gather(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """The results of ``ds`` in order, or the first failure itself (not a FirstError)."""

    def first(failure: Failure) -> Failure:
        return failure.value.subFailure if failure.check(defer.FirstError) else failure

    return defer.gatherResults(ds, consumeErrors=True).addErrback(first)


@implementer(ICacheStore)
class RedisStore:
    """Entries in Redis, shared by every replica and worker (layout in the module docstring).

    ``timeout_s`` bounds each step (a connection, a script; body transfers get ``timeout_s``
    more per MiB); ``retry_s`` is how long a store found down answers empty before trying again.
    ``connection`` replaces the txredisapi connection (tests); ``key`` names the URL's config
    key in errors.
    """

    log = Logger()
    _batch = 256

    def __init__(
        self,
        clock: IReactorTime,
        url: str,
        *,
        prefix: str = "avx:cache:",
        timeout_s: float = 0.5,
        retry_s: float = 1.0,
        stats_interval_s: float = 5.0,
        connection: Any = None,
        key: str = "cache.redis_url",
    ) -> None:
        self.clock = clock
        self.prefix = prefix.encode()
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.stats_interval_s = stats_interval_s
        self.evictions = 0
        self.errors = 0
        self._down = False
        self._closed = False
        self._retry_at = 0.0
        self._last_reply_error = -1e9
        self._known = {"entries": 0, "bytes": 0}
        self._stats_at = -1e9
        try:
            #: The parsed URL; ``url.redacted()`` is what the logs show.
            self.url = parse_redis_url(url)
            if connection is None:
                connection = redis_connection(self.url, timeout_s, binary=True)
        except ValueError as e:
            raise ConfigError([f"{key}: {e}"]) from None
        self.redis = connection

    def get(self, key: bytes) -> Deferred[list[CacheEntry]]:
        return self._guard(lambda: self._get(key), [])

    def put(self, entry: CacheEntry, max_variants: int) -> Deferred[None]:
        return self._guard(lambda: self._put(entry, max_variants), None)

    def delete(self, key: bytes) -> Deferred[int]:
        return self._guard(lambda: self._script(_DELETE_LUA, _digest(key), self._now()), 0)

    def purge_prefix(self, path_prefix: bytes) -> Deferred[int]:
        return self._guard(lambda: self._purge(_PURGE_PREFIX_LUA, path_prefix), 0)

    def purge_uri(self, uri: bytes, path: bytes) -> Deferred[int]:
        # Keys are digests here, and the paths index knows no host or query: every entry of
        # exactly this path goes (its members are "path NUL kvi").
        return self._guard(lambda: self._purge(_PURGE_PREFIX_LUA, path + b"\0"), 0)

    def purge_route(self, route: str) -> Deferred[int]:
        return self._guard(lambda: self._purge(_PURGE_ROUTE_LUA, route.encode()), 0)

    def stats(self) -> dict[str, int]:
        """The whole shared cache's entries and bytes (refreshed in the background at most
        every ``stats_interval_s``, so a little behind), this instance's evictions and errors."""
        now = self.clock.seconds()
        if not self._down and now - self._stats_at >= self.stats_interval_s:
            self._stats_at = now
            self._guard(self._refresh_stats, None)
        return dict(self._known, evictions=self.evictions, errors=self.errors)

    def close(self) -> Deferred[None]:
        self._closed = True  # what fails from now on is no outage to log
        d: Deferred[Any] = defer.maybeDeferred(self.redis.disconnect)
        return d.addBoth(lambda _: None)

    async def _get(self, key: bytes) -> list[CacheEntry]:
        reply = await self._wait(self.redis.eval(_GET_LUA, [], [self.prefix, _digest(key)]))
        now = self.clock.seconds()
        heads = [reply[i : i + 8] for i in range(0, len(reply), 8)]
        heads = [h for h in heads if float(h[6]) > now]
        reads = [(h, [self._chunk(h[0], i) for i in range(1, int(h[1]))]) for h in heads]
        rest = [self.redis.get(k) for _, keys in reads for k in keys]
        chunks = await self._wait(_gather(rest), len(rest))
        entries = []
        for head, keys in reads:
            entry = self._entry(key, head, [head[7], *chunks[: len(keys)]])
            del chunks[: len(keys)]
            if entry is not None:
                entries.append(entry)
        return entries

    def _entry(self, key: bytes, head: list[Any], chunks: list[bytes | None]) -> CacheEntry | None:
        _, count, route, path, variant, meta, expires_at, _ = head
        m = json.loads(meta)
        if int(count) == 0:
            body = b""
        elif any(c is None for c in chunks):
            return None  # expired or replaced while we read it
        else:
            body = b"".join(chunks)  # type: ignore[arg-type]
        if len(body) != m["b"]:
            return None
        return CacheEntry(
            key=key,
            variant=variant,
            route=route.decode("utf-8"),
            path=path,
            status=m["s"],
            fields=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in m["f"]],
            body=body,
            request_time=m["q"],
            response_time=m["r"],
            expires_at=float(expires_at),
        )

    async def _put(self, entry: CacheEntry, max_variants: int) -> None:
        now = self.clock.seconds()
        kh, vh = _digest(entry.key), _digest(entry.variant)
        if entry.expires_at <= now:
            await self._wait(self.redis.eval(_DROP_LUA, [], [self.prefix, kh, vh, repr(now)]))
            return
        ttl = max(1, math.ceil(entry.expires_at - now))
        chunk_id = os.urandom(8).hex().encode("ascii")
        body = entry.body
        chunks = [body[i : i + CHUNK_SIZE] for i in range(0, len(body), CHUNK_SIZE)]
        writes = [
            self.redis.execute_command("SET", self._chunk(chunk_id, i), c, "EX", ttl)
            for i, c in enumerate(chunks)
        ]
        meta = json.dumps(
            {
                "s": entry.status,
                "q": entry.request_time,
                "r": entry.response_time,
                "b": len(body),
                "f": [(n.decode("latin-1"), v.decode("latin-1")) for n, v in entry.fields],
            },
            separators=(",", ":"),
        )
        args = [
            self.prefix,
            kh,
            vh,
            chunk_id,
            len(chunks),
            entry.route.encode("utf-8"),
            entry.path,
            entry.variant,
            meta.encode("ascii"),
            entry.size,
            repr(entry.expires_at),
            ttl,
            max(1, max_variants),
            repr(entry.response_time),
            repr(now),
        ]
        commit = self.redis.eval(_PUT_LUA, [], args)
        replies = await self._wait(_gather([*writes, commit]), len(chunks))
        evicted = replies[-1]
        if evicted < 0:
            raise _ReplyError("a body chunk was not stored")
        self.evictions += evicted

    async def _script(self, script: str, *args: Any) -> Any:
        return await self._wait(self.redis.eval(script, [], [self.prefix, *args]))

    async def _purge(self, script: str, what: bytes) -> int:
        total, more = 0, 1
        while more:
            count, more = await self._script(script, what, self._now(), self._batch)
            total += count
        return total

    async def _refresh_stats(self) -> None:
        entries, stored = await self._script(_STATS_LUA)
        self._known = {"entries": int(entries), "bytes": max(0, int(stored))}

    def _now(self) -> str:
        return repr(self.clock.seconds())

    def _chunk(self, chunk_id: bytes, i: int) -> bytes:
        return b"%sb:%s:%d" % (self.prefix, chunk_id, i)

    def _wait(self, d: Deferred[Any], chunks: int = 0) -> Deferred[Any]:
        """``d``, failing after ``timeout_s`` (plus as much again per 16 chunks moved)."""
        return d.addTimeout(self.timeout_s * (1 + chunks / 16), self.clock)

    def _guard(self, op: Callable[[], Coroutine[Any, Any, Any]], empty: Any) -> Deferred[Any]:
        """Run ``op`` unless the store is down (then ``empty`` at once); ``empty`` when it
        fails, counted and logged. Never a failed Deferred."""
        now = self.clock.seconds()
        if self._down:
            if now < self._retry_at:
                self.errors += 1
                return defer.succeed(empty)
            self._retry_at = now + self.retry_s  # this one is the probe
        d = Deferred.fromCoroutine(op())
        return d.addCallbacks(self._answered, self._failed, errbackArgs=(empty,))

    def _answered(self, result: Any) -> Any:
        if self._down:
            self._down = False
            self.log.info("cache store Redis {redis} answers again", redis=self.url.redacted())
        return result

    def _failed(self, failure: Failure, empty: Any) -> Any:
        import txredisapi

        self.errors += 1
        now = self.clock.seconds()
        if self._closed:
            return empty
        if not failure.check(
            defer.TimeoutError,
            defer.CancelledError,
            txredisapi.ConnectionError,
            ConnectError,
            ConnectionClosed,
        ):
            # Redis answered, but not as asked (or a bug of ours): not an outage.
            if now - self._last_reply_error >= 60.0:
                self._last_reply_error = now
                self.log.failure(
                    "cache store Redis {redis} operation failed", failure, redis=self.url.redacted()
                )
            return empty
        self._retry_at = now + self.retry_s
        if not self._down:
            self._down = True
            why = (
                f"no answer within {self.timeout_s:g} s"
                if failure.check(defer.TimeoutError)
                else failure.getErrorMessage() or failure.type.__name__
            )
            self.log.warn(
                "cache store Redis {redis} unavailable: {why}; caching is off until it"
                " answers again",
                redis=self.url.redacted(),
                why=why,
            )
        return empty


class _ReplyError(Exception):
    """Redis answered, but not as asked (a write of a put was refused)."""
