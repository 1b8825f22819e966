"""Token buckets in Redis, shared by every gateway replica (``rate_limiting.backend = "redis"``).

Each check is one Lua script run atomically in Redis (EVALSHA, loaded on first use): refill from
Redis' own clock (so replicas need no synchronised clocks), take a token, store the bucket with an
expiry of the time it takes to fill up (idle buckets vanish by themselves). The client is
txredisapi: Twisted-native, non-blocking, reconnecting on its own with back-off; it is the
maintained Redis client for Twisted (released 2024, Python 3.9 to 3.13, PyPy).

When Redis cannot answer within ``timeout_s``, ``on_backend_error`` decides: ``allow`` takes the
token from a local in-process bucket instead, ``deny`` answers 503. Either way it is logged
(at most once per 10 s) and counted.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .ratelimit import BackendUnavailable, Decision, IRateLimitStore, MemoryStore

TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """``redis://host:port/db`` -> (host, port, db)."""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else 0


@implementer(IRateLimitStore)
class RedisStore:
    """Buckets in Redis; ``take`` returns a Deferred of a Decision (or fails with
    :class:`BackendUnavailable` when Redis is out and errors deny)."""

    log = Logger()
    prefix = "avx:rl:"

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        on_backend_error: str = "allow",
        timeout_s: float = 0.5,
        connection: Any = None,
    ) -> None:
        self.clock = clock
        self.allow_on_error = on_backend_error == "allow"
        self.timeout_s = timeout_s
        self.fallback = MemoryStore(clock)
        self.errors = 0
        #: Called once per backend error (metrics hook), or None.
        self.on_error: Callable[[], None] | None = None
        self._last_logged = -1e9
        if connection is None:
            import txredisapi

            host, port, db = parse_redis_url(url)
            connection = txredisapi.lazyConnection(
                host,
                port,
                dbid=db,
                reconnect=True,
                connectTimeout=timeout_s,
                replyTimeout=timeout_s,
            )
        self.redis = connection

    def take(self, key: str, rate: float, burst: int) -> Deferred[Decision]:
        d: Deferred[Any] = self.redis.eval(
            TOKEN_BUCKET_LUA, [self.prefix + key], [repr(float(rate)), str(int(burst))]
        )
        d.addTimeout(self.timeout_s, self.clock)
        return d.addCallbacks(
            self._decision, self._failed, (rate, burst), None, (key, rate, burst), None
        )

    def _decision(self, reply: Any, rate: float, burst: int) -> Decision:
        allowed, tokens_text = reply
        tokens = float(tokens_text)
        return Decision(
            allowed=bool(int(allowed)),
            limit=burst,
            remaining=int(tokens),
            reset_s=(burst - tokens) / rate,
            retry_after_s=0.0 if int(allowed) else (1.0 - tokens) / rate,
        )

    def _failed(self, failure: Failure, key: str, rate: float, burst: int) -> Decision:
        self.errors += 1
        if self.on_error is not None:
            self.on_error()
        now = self.clock.seconds()
        if now - self._last_logged >= 10.0:
            self._last_logged = now
            self.log.warn(
                "rate-limit backend (Redis) unavailable: {why}; {action}",
                why=failure.getErrorMessage() or failure.type.__name__,
                action="using local buckets" if self.allow_on_error else "denying with 503",
            )
        if self.allow_on_error:
            return self.fallback.take(key, rate, burst)
        raise BackendUnavailable()

    def close(self) -> Any:
        """Disconnect from Redis."""
        return self.redis.disconnect()
