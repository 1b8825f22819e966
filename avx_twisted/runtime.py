"""Config in, runtime out: everything a request needs, precomputed once from a GatewayConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.web.iweb import IAgent

from .breaker import CircuitBreaker
from .client import UpstreamClients
from .config import GatewayConfig, RouteConfig
from .context import ClientAddresses
from .cors import OWNED_RESPONSE_HEADERS, CorsFilter, CorsPolicy
from .filters import BodyLimit
from .health import HealthChecker
from .proxy import Forwarder
from .ratelimit import IRateLimitStore, MemoryStore, RateLimitFilter
from .routing import RouteRule, RouteTable
from .upstream import Upstream

if TYPE_CHECKING:
    from .auth import Identity
    from .context import RequestContext
    from .filters import Filter


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
        #: The route's filter chain (see filters.py), in order; set by the Runtime.
        self.filters: list[Filter] = []
        #: Request headers never forwarded on this route (credentials, client copies of claims).
        self.strip_headers: frozenset[bytes] = frozenset()
        self.claim_headers: Callable[[Identity], list[tuple[bytes, bytes]]] | None = None
        #: Upstream response headers the gateway owns on this route (CORS when it answers CORS).
        self.owned_response_headers: frozenset[bytes] = frozenset()
        #: The CORS filter when this route answers CORS (preflights for any method reach it).
        self.cors: CorsFilter | None = None

    def extra_headers(self, ctx: RequestContext | None) -> list[tuple[bytes, bytes]]:
        """Headers this route adds upstream for a request (verified JWT claims)."""
        if self.claim_headers is None or ctx is None or ctx.identity is None:
            return []
        return self.claim_headers(ctx.identity)

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
        self.addresses = ClientAddresses(config.server.trusted_proxies)
        self.health_checkers: list[HealthChecker] = []
        self.cors = CorsFilter(CorsPolicy(config.cors)) if config.middleware.enable_cors else None
        self.rate_store: IRateLimitStore | None = None
        if config.middleware.enable_rate_limiting:
            self.rate_store = MemoryStore(reactor)
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
        runtime_route = RuntimeRoute(route, upstream, agent)
        filters = runtime_route.filters
        if self.cors is not None and route.cors:
            runtime_route.cors = self.cors
            runtime_route.owned_response_headers = OWNED_RESPONSE_HEADERS
            filters.append(self.cors)
        if self.rate_store is not None:
            limit = route.rate_limit or self.config.rate_limiting
            name = "global" if route.rate_limit is None and limit.key == "global" else route.name
            filters.append(RateLimitFilter(self.rate_store, limit, name))
        filters.append(BodyLimit(route.max_body_bytes))
        return runtime_route
