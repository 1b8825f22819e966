"""Config in, runtime out: everything a request needs, precomputed once from a GatewayConfig."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent

from .breaker import CircuitBreaker
from .client import UpstreamClients
from .config import GatewayConfig, RouteConfig
from .health import HealthChecker
from .proxy import Forwarder
from .routing import RouteRule, RouteTable
from .upstream import Upstream


class RuntimeRoute:
    """A route ready to serve: its upstream targets, agent and limits, resolved at start-up."""

    def __init__(self, config: RouteConfig, upstream: Upstream, agent: IAgent) -> None:
        self.config = config
        self.name = config.name
        self.upstream = upstream
        self.agent = agent
        self.timeout_s = config.timeout_ms / 1000.0
        self.max_body_bytes = config.max_body_bytes
        self.retries = config.retries

    def __repr__(self) -> str:
        return f"<RuntimeRoute {self.name} {self.config.path}>"


class Runtime:
    """The routes, upstreams and forwarder built from one config (reload swaps a whole Runtime)."""

    def __init__(
        self, config: GatewayConfig, reactor: Any, clients: UpstreamClients | None = None
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.clients = clients or UpstreamClients(
            reactor, config.server.connect_timeout_ms / 1000.0
        )
        self.health_checkers: list[HealthChecker] = []
        self.routes = tuple(self._build_route(r) for r in config.routes)
        self.table = RouteTable(
            [
                RouteRule(
                    pattern=r.config.path,
                    value=r,
                    host=r.config.host,
                    methods=frozenset(r.config.methods) if r.config.methods else None,
                    strip_path=r.config.strip_path,
                )
                for r in self.routes
            ]
        )
        self.forwarder = Forwarder(reactor, preserve_host=config.server.preserve_host)

    def _build_route(self, route: RouteConfig) -> RuntimeRoute:
        up = route.upstream
        upstream = Upstream.from_urls(up.urls, strategy=up.strategy, weights=up.weights)
        agent = self.clients.agent(up.ca_file)
        for target in upstream.targets:
            target.breaker = CircuitBreaker(
                up.circuit_breaker, self.reactor, name=f"{route.name} {target.url}"
            )
            if up.health_check is not None:
                self.health_checkers.append(
                    HealthChecker(target, up.health_check, agent, self.reactor, route=route.name)
                )
        return RuntimeRoute(route, upstream, agent)
