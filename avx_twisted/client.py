"""Upstream connections: the gateway's own keep-alive pool (``h1.UpstreamPool``) for proxied
requests, one ``Connector`` per target, and a twisted.web Agent per TLS trust root for the
background fetches (health checks, JWKS), which are not on the request path."""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from zope.interface import implementer

from .h1 import ClientLimits, ResponseHead, UpstreamPool, UpstreamResponse


@implementer(IPolicyForHTTPS)
class _CustomCAPolicy:
    """Verify https upstreams against one CA file (hostname checked by service-identity)."""

    def __init__(self, ca_file: str) -> None:
        with open(ca_file, "rb") as f:
            self._trust = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


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
        #: Health checks and JWKS fetches: twisted.web's client, with its own small pool.
        self.background_pool = HTTPConnectionPool(reactor, persistent=True)
        self.background_pool.maxPersistentPerHost = 2
        self.background_pool.retryAutomatically = False
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

    def http_client(self) -> Any:
        """A ``treq.HTTPClient`` on the background pool (plugins' side calls), made once."""
        client = getattr(self, "_http_client", None)
        if client is None:
            from treq.client import HTTPClient

            client = self._http_client = HTTPClient(self.agent())
        return client

    def agent(self, ca_file: str | None = None) -> IAgent:
        """The Agent for upstreams verified against ``ca_file`` (None: the system trust store)."""
        agent = self._agents.get(ca_file)
        if agent is None:
            policy = self.policy(ca_file)
            agent = Agent(
                self.reactor,
                contextFactory=policy,
                connectTimeout=self.connect_timeout_s,
                pool=self.background_pool,
            )
            self._agents[ca_file] = agent
        return agent

    def connector(self, target: Any, ca_file: str | None = None) -> Connector:
        """The pooled connection source of one target, built once (see :class:`Connector`)."""
        return Connector(self, target, ca_file)

    def close(self) -> Any:
        """Close every pooled connection (a Deferred that fires when they are closed)."""
        from twisted.internet.defer import DeferredList

        return DeferredList(
            [self.pool.close(), self.background_pool.closeCachedConnections()],
            consumeErrors=True,
        )


class Connector:
    """Sends requests to one upstream target over the shared keep-alive pool.

    The endpoint (with its TLS connection creator, verified by service-identity) is built once
    per target; per request only a pooled connection is taken and the pre-built head written.
    Cancelling the returned Deferred cancels the connect or aborts the connection.
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
        self,
        head: bytes,
        method: bytes,
        stream: Any = None,
        chunked: bool = False,
        resend: bool = False,
        on_interim: Optional[Callable[[ResponseHead], None]] = None,
    ) -> Deferred[UpstreamResponse]:
        """Send a request head (and ``stream``, a request body) to this target."""
        return self.pool.request(
            self.key, self.endpoint, head, method, stream, chunked, resend, on_interim
        )


def _is_ip(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True
