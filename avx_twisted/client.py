"""The upstream HTTP client: one persistent connection pool and an Agent per TLS trust root."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgent, IPolicyForHTTPS
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

    def agent(self, ca_file: str | None = None) -> IAgent:
        """The Agent for upstreams verified against ``ca_file`` (None: the system trust store)."""
        agent = self._agents.get(ca_file)
        if agent is None:
            policy = (
                _CustomCAPolicy(ca_file)
                if ca_file
                else BrowserLikePolicyForHTTPS(trustRoot=platformTrust())
            )
            agent = Agent(
                self.reactor,
                contextFactory=policy,
                connectTimeout=self.connect_timeout_s,
                pool=self.pool,
            )
            self._agents[ca_file] = agent
        return agent

    def close(self) -> Any:
        """Close every pooled connection (a Deferred that fires when they are closed)."""
        return self.pool.closeCachedConnections()
