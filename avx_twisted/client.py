# -*- test-case-name: tests.unit.test_client_tls -*-
"""Upstream connections: the gateway's own keep-alive pool (``h1.UpstreamPool``) for proxied
requests, one ``Connector`` per target, and a twisted.web Agent per TLS setting for the
background fetches (health checks, JWKS), which are not on the request path.

How the gateway speaks TLS to a route's upstreams is one :class:`UpstreamTLS`: the CA that
verifies them, the client certificate they are shown (mTLS to services) and the name sent as
SNI and verified in their certificate. Each https target resumes its last TLS session on new
connections (:class:`ResumingCreator`)."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from weakref import WeakSet, WeakValueDictionary

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from zope.interface import implementer

from ._configmodel import TlsCertificate
from .config import ConfigError, UpstreamConfig
from .h1 import ClientLimits, ResponseHead, UpstreamPool, UpstreamResponse
from .h2 import H2Pool, H2Response
from .tls import TlsFileError, load_ca_file, load_certificate


@dataclass(frozen=True)
class UpstreamTLS:
    """TLS to a route's https upstreams, with its files read (once, by :meth:`load`).

    Equal settings share pooled connections. Other settings are another pool key and, across
    a reload, other targets: another CA, client certificate or server name, and also the same
    paths with new certificates in them (``digest``), so a rotated client certificate is shown
    on new connections after SIGHUP.
    """

    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    #: SNI and the name the upstream's certificate must carry ("" = each URL's host).
    server_name: str = ""
    #: SHA-256 of the certificates read from the files.
    digest: bytes = b""
    #: What the files hold: the CAs (None: the system trust store), the client certificate
    #: chain and its key.
    trust: Any = field(default=None, compare=False, repr=False)
    client_chain: tuple[x509.Certificate, ...] = field(default=(), compare=False, repr=False)
    client_key: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def load(
        cls,
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
        server_name: str = "",
    ) -> UpstreamTLS:
        """Read the files (PEM; a key that matches its certificate). Raises
        :class:`~avx_twisted.tls.TlsFileError` naming the config key and the path."""
        digest = hashlib.sha256()
        trust = None
        if ca_file:
            cas = load_ca_file(ca_file, key="ca_file")
            for ca in cas:
                digest.update(b"ca" + ca.public_bytes(Encoding.DER))
            trust = trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(ca)) for ca in cas]
            )
        chain: tuple[x509.Certificate, ...] = ()
        key = None
        if client_cert_file and client_key_file:
            pair = TlsCertificate(client_cert_file, client_key_file)
            found, key = load_certificate(pair, key_prefix="client_")
            chain = tuple(found)
            for cert in chain:
                digest.update(b"cert" + cert.public_bytes(Encoding.DER))
        return cls(
            ca_file or None,
            client_cert_file or None,
            client_key_file or None,
            server_name,
            digest.digest() if trust is not None or chain else b"",
            trust,
            chain,
            key,
        )

    @classmethod
    def of_upstream(cls, upstream: UpstreamConfig, route: str) -> UpstreamTLS:
        """The TLS settings of a route's ``[routes.upstream]``; a file that cannot be used
        (changed since the config was checked) is a :class:`ConfigError`."""
        try:
            return cls.load(
                upstream.ca_file,
                upstream.client_cert_file,
                upstream.client_key_file,
                upstream.server_name,
            )
        except TlsFileError as e:
            raise ConfigError([f"route {route!r}: upstream.{e.key}: {e}"]) from None

    def creator(self, host: str, alpn: tuple[bytes, ...] = ()) -> IOpenSSLClientConnectionCreator:
        """Twisted's connection creator for ``host``: SNI and the verified name are
        ``server_name`` (else ``host``; a literal IP address is verified, never sent as SNI),
        checked by service-identity against our CAs or the system's, and the client
        certificate shown when the upstream asks for one. ``alpn``: the protocols offered
        (``h2`` for HTTP/2 upstreams)."""
        extra: dict[str, Any] = {"enableSessionTickets": True}
        if self.client_chain:
            # What optionsForClientTLS's clientCertificate does, plus the rest of the chain,
            # and with cryptography's objects (pyOpenSSL deprecates its own X509 and PKey).
            extra["certificate"] = self.client_chain[0]
            extra["privateKey"] = self.client_key
            extra["extraCertChain"] = list(self.client_chain[1:])
        return optionsForClientTLS(
            self.server_name or host,
            trustRoot=self.trust if self.trust is not None else platformTrust(),
            extraCertificateOptions=extra,
            acceptableProtocols=list(alpn) or None,
        )


#: No settings: the system trust store, no client certificate, each URL's host.
DEFAULT_TLS = UpstreamTLS()


@implementer(IOpenSSLClientConnectionCreator)
class ResumingCreator:
    """A client connection creator that offers each new connection the TLS session of the
    last one that carried a response, so that it resumes (an abbreviated handshake: no
    certificates sent or checked again) when the upstream still knows the session.

    OpenSSL keeps no client-side cache by itself and pyOpenSSL has no new-session callback,
    so the session is taken by :meth:`keep` once a connection has carried a response; by then
    the session tickets a TLS 1.3 upstream sends after its handshake have arrived too. Only
    connections that finished a verified handshake get that far, so a resumed connection is
    as verified as the one it resumes. OpenSSL will not resume a session whose connection
    ended with no close_notify either way (an upstream that drops the TCP connection): the
    next connection then makes a full handshake.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator
        self._session: SSL.Session | None = None
        #: Connections made whose session is not taken yet (weak: a failed one just goes).
        self.pending: WeakSet[SSL.Connection] = WeakSet()
        #: Connection attempts in flight through :meth:`endpoint`.
        self.connecting = 0

    @property
    def watching(self) -> bool:
        """Whether a response may come on a connection whose session is not taken yet."""
        return self.connecting > 0 or len(self.pending) > 0

    def endpoint(self, tcp: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """TLS over ``tcp`` with this creator, counting attempts in :attr:`connecting` (the
        count goes up at once, so the request that opens a connection watches its response)."""
        return _CountingEndpoint(wrapClientTLS(self, tcp), self)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        if self._session is not None:
            connection.set_session(self._session)
        self.pending.add(connection)
        return connection

    def keep(self, connection: Any) -> None:
        """Offer ``connection``'s session to the next connections, if this creator made it
        and its handshake is done."""
        if connection in self.pending and connection.get_peer_finished() is not None:
            self.pending.discard(connection)
            self._session = connection.get_session()

    def keep_from(self, response: UpstreamResponse) -> UpstreamResponse:
        """:meth:`keep` the session of the connection ``response`` came on (a callback)."""
        get_handle = getattr(response.protocol.transport, "getHandle", None)
        if get_handle is not None:
            self.keep(get_handle())
        return response


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """An endpoint whose connection attempts in flight a :class:`ResumingCreator` counts."""

    def __init__(self, endpoint: IStreamClientEndpoint, sessions: ResumingCreator) -> None:
        self._endpoint = endpoint
        self._sessions = sessions

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        self._sessions.connecting += 1
        return self._endpoint.connect(protocolFactory).addBoth(self._done)

    def _done(self, result: Any) -> Any:
        self._sessions.connecting -= 1
        return result


@implementer(IPolicyForHTTPS)
class _UpstreamPolicy:
    """The Agents' TLS for one :class:`UpstreamTLS`: a creator per upstream host, reused
    (Twisted's own policy makes a TLS context per request) for a bounded number of hosts."""

    max_hosts = 64

    def __init__(self, tls: UpstreamTLS) -> None:
        self._tls = tls
        self._creators: dict[tuple[bytes, int], IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        creators = self._creators
        creator = creators.get((hostname, port))
        if creator is None:
            if len(creators) >= self.max_hosts:  # a plugin calling many hosts
                creators.clear()
            creator = creators[hostname, port] = self._tls.creator(hostname.decode("ascii"))
        return creator


class UpstreamClients:
    """The proxy's pool and connectors, and the background Agents; built once at start-up."""

    def __init__(
        self,
        reactor: IReactorTCP | IReactorTime,
        connect_timeout_s: float,
        max_persistent_per_host: int = 64,
    ) -> None:
        self.reactor = reactor
        self.connect_timeout_s = connect_timeout_s
        self.pool = UpstreamPool(reactor, ClientLimits(max_idle_per_key=max_persistent_per_host))
        #: HTTP/2 upstreams (``protocol = "h2"`` or ``"h2c"``): streams over few connections.
        self.h2_pool = H2Pool(reactor)
        #: Health checks and JWKS fetches: twisted.web's client, with its own small pool (and
        #: one more per TLS setting: an Agent pools by scheme, host and port only).
        self.background_pool = self._background_pool()
        # Weak: the Agents of settings no route uses any more (after reloads) go.
        self._background_pools: WeakSet[HTTPConnectionPool] = WeakSet([self.background_pool])
        self._agents: WeakValueDictionary[Any, IAgent] = WeakValueDictionary()
        self._policies: WeakValueDictionary[Any, IPolicyForHTTPS] = WeakValueDictionary()
        #: The connection creator (and so the TLS session) of each https pool key, shared by
        #: the connectors of that key while any is alive.
        self._sessions: WeakValueDictionary[Any, ResumingCreator] = WeakValueDictionary()

    def _background_pool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 2
        pool.retryAutomatically = False
        return pool

    def policy(self, tls: UpstreamTLS | str | None = None) -> IPolicyForHTTPS:
        """How https upstreams are reached with ``tls``: an :class:`UpstreamTLS`, a CA file's
        path (verified against it), or None (the system trust store)."""
        policy = self._policies.get(tls)
        if policy is None:
            policy = _UpstreamPolicy(_settings(tls))
            self._policies[tls] = policy
        return policy

    def http_client(self) -> Any:
        """A ``treq.HTTPClient`` on the background pool (plugins' side calls), made once."""
        client = getattr(self, "_http_client", None)
        if client is None:
            from treq.client import HTTPClient

            client = self._http_client = HTTPClient(self.agent())
        return client

    def agent(self, tls: UpstreamTLS | str | None = None) -> IAgent:
        """The Agent for upstreams reached with ``tls`` (see :meth:`policy`)."""
        agent = self._agents.get(tls)
        if agent is None:
            policy = self.policy(tls)
            if tls is None or tls == DEFAULT_TLS:
                pool = self.background_pool
            else:
                pool = self._background_pool()
                self._background_pools.add(pool)
            agent = Agent(
                self.reactor,
                contextFactory=policy,
                connectTimeout=self.connect_timeout_s,
                pool=pool,
            )
            self._agents[tls] = agent
        return agent

    def sessions(
        self, key: Any, host: str, tls: UpstreamTLS, alpn: tuple[bytes, ...] = ()
    ) -> ResumingCreator:
        """The connection creator of the https pool ``key`` (``host`` with ``tls``)."""
        sessions = self._sessions.get(key)
        if sessions is None:
            sessions = ResumingCreator(tls.creator(host, alpn))
            self._sessions[key] = sessions
        return sessions

    def connector(
        self, target: Any, tls: UpstreamTLS | None = None, protocol: str = "http/1.1"
    ) -> Connector | H2Connector:
        """The pooled connection source of one target, built once (see :class:`Connector`;
        ``protocol`` ``"h2"`` or ``"h2c"``: :class:`H2Connector`)."""
        if protocol == "http/1.1":
            return Connector(self, target, tls)
        return H2Connector(self, target, tls)

    def close(self) -> Any:
        """Close every pooled connection (a Deferred that fires when they are closed)."""
        closing = [self.pool.close(), self.h2_pool.close()]
        closing += [pool.closeCachedConnections() for pool in list(self._background_pools)]
        return DeferredList(closing, consumeErrors=True)


def _settings(tls: UpstreamTLS | str | None) -> UpstreamTLS:
    if tls is None:
        return DEFAULT_TLS
    if isinstance(tls, str):
        return UpstreamTLS.load(ca_file=tls)
    return tls


class Connector:
    """Sends requests to one upstream target over the shared keep-alive pool.

    The endpoint (with its TLS connection creator, see :meth:`UpstreamTLS.creator`) is built
    once per target; per request only a pooled connection is taken and the pre-built head
    written. Connections are pooled by scheme, host, port and TLS settings. Cancelling the
    returned Deferred cancels the connect or aborts the connection.
    """

    #: What :meth:`~avx_twisted.proxy.Exchange.attempt` sends: a request head in bytes.
    h2 = False

    def __init__(
        self, clients: UpstreamClients, target: Any, tls: UpstreamTLS | None = None
    ) -> None:
        self.pool = clients.pool
        self.key, self.endpoint, self.sessions = _endpoint(clients, target, tls, "http/1.1")

    def request(
        self,
        head: bytes,
        method: bytes,
        stream: Any = None,
        chunked: bool = False,
        resend: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> Deferred[UpstreamResponse]:
        """Send a request head (and ``stream``, a request body) to this target."""
        d = self.pool.request(
            self.key, self.endpoint, head, method, stream, chunked, resend, on_interim
        )
        sessions = self.sessions
        if sessions is not None and sessions.watching:
            d.addCallback(sessions.keep_from)
        return d


def _endpoint(
    clients: UpstreamClients, target: Any, tls: UpstreamTLS | None, protocol: str
) -> tuple[Any, Any, ResumingCreator | None]:
    """A target's pool key, endpoint (TCP, or TLS with the key's resuming connection
    creator) and that creator (None for cleartext)."""
    host = target.host
    https = target.scheme == b"https"
    tls = tls if tls is not None else DEFAULT_TLS
    key: tuple[Any, ...] = (target.scheme, host.encode("idna"), target.port, tls if https else None)
    if protocol != "http/1.1":
        key += (protocol,)  # another ALPN offer: another connection creator
    timeout = clients.connect_timeout_s
    reactor = clients.reactor
    endpoint: Any
    if _is_ip(host, socket.AF_INET):
        endpoint = TCP4ClientEndpoint(reactor, host, target.port, timeout=timeout)
    elif _is_ip(host, socket.AF_INET6):
        endpoint = TCP6ClientEndpoint(reactor, host, target.port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, target.port, timeout=timeout)
    sessions: ResumingCreator | None = None
    if https:
        alpn = (b"h2",) if protocol == "h2" else ()
        sessions = clients.sessions(key, key[1].decode("ascii"), tls, alpn)
        endpoint = sessions.endpoint(endpoint)
    return key, endpoint, sessions


#: Request fields that HTTP/2 does not carry (RFC 9113 8.2.2); Host becomes ``:authority``.
_NOT_IN_H2 = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"]
)


class H2Connector:
    """Sends requests to one HTTP/2 upstream target as streams over the shared h2 pool
    (``protocol = "h2"``: https with ALPN ``h2``, the same verification as HTTP/1.1;
    ``"h2c"``: cleartext with prior knowledge)."""

    h2 = True

    def __init__(
        self, clients: UpstreamClients, target: Any, tls: UpstreamTLS | None = None
    ) -> None:
        self.pool = clients.h2_pool
        self.https = target.scheme == b"https"
        protocol = "h2" if self.https else "h2c"
        self.key, self.endpoint, self.sessions = _endpoint(clients, target, tls, protocol)
        self.scheme = target.scheme
        self.authority = target.netloc

    def request_h2(
        self,
        method: bytes,
        path: bytes,
        fields: list[tuple[bytes, bytes]],
        data: bytes = b"",
        body: Any = None,
        resend: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> Deferred[H2Response]:
        """Send a request (``fields`` as for HTTP/1.1: Host becomes ``:authority``,
        connection-specific fields are left out, ``TE`` only as ``trailers``)."""
        authority = self.authority
        rest: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            lower = name.lower()
            if lower in _NOT_IN_H2:
                if lower == b"host":
                    authority = value
                continue
            if lower == b"te" and value.strip().lower() != b"trailers":
                continue
            rest.append((lower, value))
        headers = [
            (b":method", method),
            (b":scheme", self.scheme),
            (b":authority", authority),
            (b":path", path),
        ]
        headers += rest
        d = self.pool.request(
            self.key, self.endpoint, headers, data, body, resend, on_interim, self.https
        )
        sessions = self.sessions
        if sessions is not None and sessions.watching:
            d.addCallback(sessions.keep_from)
        return d


def _is_ip(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True
