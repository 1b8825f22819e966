"""Token buckets in Redis, shared by every gateway replica (``rate_limiting.backend = "redis"``).

Each check is one Lua script run atomically in Redis (EVALSHA, loaded on first use): refill from
Redis' own clock (so replicas need no synchronised clocks), take a token, store the bucket with an
expiry of the time it takes to fill up (idle buckets vanish by themselves). The client is
txredisapi: Twisted-native, non-blocking, reconnecting on its own with back-off; it is the
maintained Redis client for Twisted (released 2024, Python 3.9 to 3.13, PyPy).

The URL is parsed by :func:`avx_twisted.urls.parse_redis_url`; :func:`redis_connection` turns it
into a connection (TCP, TLS with the server's certificate and host name verified, or a unix
socket; AUTH with the password or ACL user, SELECT of the db, on every reconnection) and is meant
for any other Redis user of the gateway as well.

When Redis cannot answer within ``timeout_s``, ``on_backend_error`` decides: ``allow`` takes the
token from a local in-process bucket instead, ``deny`` answers 503. Either way it is logged
(at most once per 10 s) and counted. A Redis that refuses the password, or a TLS server whose
certificate does not verify, is such an error too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as NoAnswer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._configmodel import ConfigError
from .ratelimit import BackendUnavailable, Decision, IRateLimitStore, MemoryStore
from .urls import RedisURL, parse_redis_url

if TYPE_CHECKING:
    from OpenSSL.SSL import Connection
    from twisted.internet.ssl import IOpenSSLTrustRoot
    from twisted.protocols.tls import TLSMemoryBIOProtocol

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


def redis_connection(url: RedisURL, timeout_s: float, binary: bool = False) -> Any:
    """A lazy txredisapi connection to ``url`` that reconnects by itself with back-off, logging in
    and selecting the db on each new connection; connecting and each reply time out after
    ``timeout_s``. ``binary``: replies stay bytes (no decoding, no numbers made of bodies: the
    response cache's). txredisapi runs on the global reactor (it takes none)."""
    import txredisapi

    options: dict[str, Any] = dict(
        dbid=url.db or None,  # no SELECT for db 0, which proxies that lack SELECT accept
        password=url.password,
        username=url.username,
        reconnect=True,
        connectTimeout=timeout_s,
        replyTimeout=timeout_s,
    )
    if binary:
        options.update(charset=None, convertNumbers=False)
    if url.path is not None:
        return txredisapi.lazyUnixConnection(url.path, **options)
    assert url.host is not None
    # Never True: txredisapi would make that a ClientContextFactory, which checks nothing.
    tls = tls_client_creator(url) if url.tls else False
    return txredisapi.lazyConnection(url.host, url.port, ssl_context_factory=tls, **options)


def tls_client_creator(url: RedisURL) -> IOpenSSLClientConnectionCreator:
    """The TLS client side for a ``rediss://`` URL: the server's certificate must chain to
    ``url.ca_file`` (or the system trust store) and name ``url.host``, unless ``url.verify`` is
    off. Raises ValueError when the CA file cannot be read or holds no certificate."""
    from twisted.internet import ssl

    assert url.host is not None
    if not url.verify:
        return _UnverifiedTLS(url.host)
    trust = ssl.platformTrust() if url.ca_file is None else _trust_root(url.ca_file)
    return ssl.optionsForClientTLS(url.host, trustRoot=trust)


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _trust_root(path: str) -> IOpenSSLTrustRoot:
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"ssl_ca_certs {path!r} cannot be read: {e.strerror}")
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise ValueError(f"ssl_ca_certs {path!r} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(b) for b in blocks]
    except Exception:  # OpenSSL.crypto.Error, without a useful message
        raise ValueError(f"ssl_ca_certs {path!r} holds a certificate that does not load")
    return ssl.trustRootFromCertificates(certificates)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """``ssl_cert_reqs=none``: encrypted, but any certificate is accepted, so anyone in the
    middle can read the password and the traffic. Sends the host name (SNI) all the same."""

    def __init__(self, host: str) -> None:
        from twisted.internet.ssl import CertificateOptions

        self._context = CertificateOptions(verify=False).getContext()
        ip = isIPAddress(host) or isIPv6Address(host)
        self._server_name = None if ip else host.encode("ascii")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> Connection:
        from OpenSSL.SSL import Connection

        connection = Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


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
        key: str = "rate_limiting.redis_url",
    ) -> None:
        self.clock = clock
        self.allow_on_error = on_backend_error == "allow"
        self.timeout_s = timeout_s
        self.fallback = MemoryStore(clock)
        self.errors = 0
        #: Called once per backend error (metrics hook), or None.
        self.on_error: Callable[[], None] | None = None
        self._last_logged = -1e9
        try:
            #: The parsed URL; ``url.redacted()`` is what the logs show.
            self.url = parse_redis_url(url)
            if connection is None:
                connection = redis_connection(self.url, timeout_s)
        except ValueError as e:
            # A CA file gone or not PEM is found only here (the parser sees the URL's form):
            # a config error under the key, as ``--check`` and start-up report them.
            raise ConfigError([f"{key}: {e}"]) from None
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
                "rate-limit backend (Redis {redis}) unavailable: {why}; {action}",
                redis=self.url.redacted(),
                why=(
                    f"no answer within {self.timeout_s:g} s"
                    if failure.check(NoAnswer)
                    else failure.getErrorMessage() or failure.type.__name__
                ),
                action="using local buckets" if self.allow_on_error else "denying with 503",
            )
        if self.allow_on_error:
            return self.fallback.take(key, rate, burst)
        raise BackendUnavailable()

    def close(self) -> Any:
        """Disconnect from Redis."""
        return self.redis.disconnect()
