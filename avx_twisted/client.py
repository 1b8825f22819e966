"""The upstream HTTP client: one persistent connection pool and an Agent per TLS trust root."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer


class _ClientProtocol(HTTP11ClientProtocol):
    """Twisted's HTTP/1.1 client, also handing the response's connection headers to the caller.

    Twisted's parser files ``Connection`` (and ``Content-Length``) under connection headers it
    keeps to itself; the forwarder needs the ``Connection`` tokens to drop the headers they name.
    """

    def request(self, request: Any) -> Deferred[Any]:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None:

            def attach(response: Any) -> Any:
                response.connection_headers = parser.connHeaders
                return response

            d.addCallback(attach)
        return d


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's per-connection factory: our protocol, no log line for every connection."""

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


@implementer(IPolicyForHTTPS)
class _CustomCAPolicy:
    """Verify https upstreams against one CA file (hostname checked by service-identity)."""

    def __init__(self, ca_file: str) -> None:
        with open(ca_file, "rb") as f:
            self._trust = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


class UpstreamClients:
    """Agents sharing one keep-alive pool; built once at start-up, one per distinct ``ca_file``."""

    def __init__(
        self,
        reactor: IReactorTCP | IReactorTime,
        connect_timeout_s: float,
        max_persistent_per_host: int = 64,
    ) -> None:
        self.reactor = reactor
        self.connect_timeout_s = connect_timeout_s
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_persistent_per_host
        self.pool.cachedConnectionTimeout = 60
        self.pool._factory = _QuietClientFactory
        # Retries are the forwarder's decision (idempotent methods only), never Twisted's.
        self.pool.retryAutomatically = False
        self._agents: dict[str | None, IAgent] = {}
        self._policies: dict[str | None, IPolicyForHTTPS] = {}

    def policy(self, ca_file: str | None = None) -> IPolicyForHTTPS:
        """How https upstreams are verified: against ``ca_file``, or the system trust store."""
        policy = self._policies.get(ca_file)
        if policy is None:
            policy = (
                _CustomCAPolicy(ca_file)
                if ca_file
                else BrowserLikePolicyForHTTPS(trustRoot=platformTrust())
            )
            self._policies[ca_file] = policy
        return policy

    def agent(self, ca_file: str | None = None) -> IAgent:
        """The Agent for upstreams verified against ``ca_file`` (None: the system trust store)."""
        agent = self._agents.get(ca_file)
        if agent is None:
            policy = self.policy(ca_file)
            agent = Agent(
                self.reactor,
                contextFactory=policy,
                connectTimeout=self.connect_timeout_s,
                pool=self.pool,
            )
            self._agents[ca_file] = agent
        return agent

    def connector(self, target: Any, ca_file: str | None = None) -> Connector:
        """The pooled connection source of one target, built once (see :class:`Connector`)."""
        return Connector(self, target, ca_file)

    def close(self) -> Any:
        """Close every pooled connection (a Deferred that fires when they are closed)."""
        return self.pool.closeCachedConnections()


class Connector:
    """Sends requests to one upstream target over the shared keep-alive pool.

    What ``Agent.request`` works out on every call (parsing the URI, IDNA-encoding the host,
    building an endpoint, a TLS connection creator) is done here once per target; per request
    only the pooled connection is fetched and the request written. Cancelling the returned
    Deferred cancels the connect or aborts the connection, exactly as with an Agent.
    """

    def __init__(self, clients: UpstreamClients, target: Any, ca_file: str | None) -> None:
        self.pool = clients.pool
        host = target.host
        scheme = target.scheme
        self.key = (scheme, host.encode("idna"), target.port, ca_file)
        timeout = clients.connect_timeout_s
        reactor = clients.reactor
        endpoint: Any
        if _is_ip(host, socket.AF_INET):
            endpoint = TCP4ClientEndpoint(reactor, host, target.port, timeout=timeout)
        elif _is_ip(host, socket.AF_INET6):
            endpoint = TCP6ClientEndpoint(reactor, host, target.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, host, target.port, timeout=timeout)
        if scheme == b"https":
            policy = clients.policy(ca_file)
            creator = policy.creatorForNetloc(host.encode("idna"), target.port)
            endpoint = wrapClientTLS(creator, endpoint)
        self.endpoint = endpoint

    def request(
        self, method: bytes, path: bytes, headers: Headers, body: IBodyProducer | None
    ) -> Deferred[IResponse]:
        """Send ``method path`` (the request-target) with ``headers`` (Host included)."""
        d = self.pool.getConnection(self.key, self.endpoint)

        def connected(proto: HTTP11ClientProtocol) -> Deferred[IResponse]:
            return proto.request(Request(method, path, headers, body, persistent=True))

        return d.addCallback(connected)


def _is_ip(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True
