"""Config in, runtime out: everything a request needs, precomputed once from a GatewayConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.web.iweb import IAgent

from .auth.api_key import ApiKeyAuthenticator
from .auth.filter import AuthFilter
from .auth.jwt import JwtAuthenticator
from .auth.mtls import MtlsAuthenticator
from .breaker import CircuitBreaker
from .client import UpstreamClients, UpstreamTLS
from .config import ConfigError, GatewayConfig, RouteConfig
from .context import ClientAddresses
from .cors import OWNED_RESPONSE_HEADERS, CorsFilter, CorsPolicy
from .filters import BodyLimit
from .health import HealthChecker
from .plugin_chain import PluginChain
from .policies import RequestPolicies
from .proxy import Forwarder
from .ratelimit import IRateLimitStore, MemoryStore, RateLimitFilter
from .routing import RouteRule, RouteTable
from .upstream import Target, Upstream

if TYPE_CHECKING:
    from .auth import Identity
    from .context import RequestContext
    from .filters import Filter
    from .metrics import GatewayMetrics, RouteMetrics


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
        self.websocket = config.websocket
        self.websocket_idle_timeout_s = config.websocket_idle_timeout_ms / 1000.0
        #: gRPC semantics (see :mod:`avx_twisted.grpc`): the deadline is the client's
        #: ``grpc-timeout``, capped by the route's own ``timeout_ms`` (None: no cap).
        self.grpc = config.grpc
        cap = config.grpc_timeout_cap_ms
        self.grpc_cap_s: float | None = cap / 1000.0 if cap is not None else None
        #: The route's filter chain (see filters.py), in order; set by the Runtime.
        self.filters: list[Filter] = []
        #: Request headers never forwarded on this route (credentials, client copies of claims).
        self.strip_headers: frozenset[bytes] = frozenset()
        #: Verified claims sent upstream, by the identity's method (``jwt``, ``oauth2``).
        self.claim_headers: dict[str, Callable[[Identity], list[tuple[bytes, bytes]]]] = {}
        #: Send the verified client certificate upstream (``X-Forwarded-Client-Cert``).
        self.forward_client_cert = False
        #: Upstream response headers the gateway owns on this route (CORS when it answers CORS).
        self.owned_response_headers: frozenset[bytes] = frozenset()
        #: Rewrites the upstream target (drops an API key sent in the query), or None.
        self.rewrite_target: Callable[[bytes], bytes] | None = None
        #: This route's bound metric children, or None when metrics are off.
        self.metrics: RouteMetrics | None = None
        #: The CORS filter when this route answers CORS (preflights for any method reach it).
        self.cors: CorsFilter | None = None
        #: The route's plugins (``[plugins] global`` and its own), or None: no plugin runs.
        self.plugins: PluginChain | None = None
        #: Their ``on_request`` phases as a filter (``(chain,)``; empty: none implements it),
        #: run after the policies and the cache lookup, just before the upstream or resource.
        self.plugin_filters: tuple[Filter, ...] = ()
        #: Serves the route instead of an upstream (``resource = "module:attribute"``), or None.
        self.responder: Any = None
        #: The route's response cache (``response_cache.RouteCache``), None: not cached.
        self.cache: Any = None
        #: Its request policies (``policies.RequestPolicies``), None: it has none.
        self.policies: Any = None
        #: ``[routes.request]`` / ``[routes.response]`` (``transform.RequestRules`` and
        #: ``transform.HeaderRules``), None: none.
        self.request_rules: Any = None
        self.response_rules: Any = None
        #: JSON body rules (``json_transform.JsonRules``) of each direction, None: none.
        self.request_json: Any = None
        self.response_json: Any = None
        if config.request is not None or config.response is not None:
            self._transforms(config)
        #: ``[routes.validate]``: the compiled schemas (``validation.CompiledSchema``), the
        #: methods whose bodies are validated and their cap; None: no validation.
        self.validate = config.validate
        #: ``[routes.graphql]`` (``graphql_policy.GraphQLPolicy``), None: not a GraphQL route.
        self.graphql: Any = None
        if config.graphql is not None:
            from .graphql_policy import GraphQLPolicy

            g = config.graphql
            self.graphql = GraphQLPolicy(
                max_depth=g.max_depth,
                max_aliases=g.max_aliases,
                max_root_fields=g.max_root_fields,
                max_tokens=g.max_tokens,
                max_complexity=g.max_complexity,
                introspection=g.introspection,
                persisted_queries=g.persisted_queries,
                allowlist=g.allowlist,  # type: ignore[arg-type]
                schema=g.schema,  # type: ignore[arg-type]
                max_batch=g.max_batch,
            )
        #: ``[routes.compression]`` (``compression.CompressionPolicy``), None: off.
        self.compression: Any = None
        if config.compression is not None:
            from .compression import CompressionPolicy

            c = config.compression
            self.compression = CompressionPolicy(c.encodings, c.min_bytes, c.content_types)
        #: TLS to the route's https targets, with its files read (None: a resource route).
        self.tls: UpstreamTLS | None = None

    def _transforms(self, config: RouteConfig) -> None:
        from .json_transform import JsonRules
        from .transform import HeaderRules, RequestRules, compile_template, pattern_params

        params = pattern_params(config.path)

        def templates(pairs: Any) -> list[tuple[str, Any]]:
            return [(name, compile_template(value, params)) for name, value in pairs]

        def header_rules(c: Any) -> Any:
            return HeaderRules(
                templates(c.set_headers),
                templates(c.add_headers),
                c.remove_headers,
                c.rename_headers,
            )

        def json_rules(c: Any) -> Any:
            rules = JsonRules(
                c.json_remove, c.json_rename, list(c.json_set.items()), c.max_json_bytes
            )
            return rules if rules else None

        if config.request is not None:
            c = config.request
            rewrite = (
                (c.rewrite_path.pattern, c.rewrite_path.replacement) if c.rewrite_path else None
            )
            self.request_rules = RequestRules(
                header_rules(c), templates(c.set_query), c.remove_query, rewrite
            )
            self.request_json = json_rules(c)
        if config.response is not None:
            rules = header_rules(config.response)
            self.response_rules = rules if rules else None
            self.response_json = json_rules(config.response)

    def extra_headers(self, ctx: RequestContext | None) -> list[tuple[bytes, bytes]]:
        """Headers this route adds upstream for a request: verified token claims, and the
        client certificate (``X-Forwarded-Client-Cert``) with ``forward_client_cert``."""
        if ctx is None:
            return []
        found: list[tuple[bytes, bytes]] = []
        identity = ctx.identity
        if identity is not None and self.claim_headers:
            claims = self.claim_headers.get(identity.method)
            if claims is not None:
                found = claims(identity)
        if self.forward_client_cert and ctx.tls is not None and ctx.tls.client_cert is not None:
            found.append((b"X-Forwarded-Client-Cert", ctx.tls.client_cert.xfcc()))
        return found

    def __repr__(self) -> str:
        return f"<RuntimeRoute {self.name} {self.config.path}>"


class Runtime:
    """The routes, upstreams and forwarder built from one config (reload swaps a whole Runtime)."""

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        clients: UpstreamClients | None = None,
        metrics: GatewayMetrics | None = None,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        # A reload keeps the live state of targets that did not change (same route, URL, weight,
        # TLS, breaker and health-check settings): their breaker, health and health checker.
        self._carried: dict[tuple[Any, ...], tuple[Target, HealthChecker | None]] = (
            previous._live_targets() if previous is not None else {}
        )
        self.reactor = reactor
        self.clients = clients or UpstreamClients(
            reactor, config.server.connect_timeout_ms / 1000.0
        )
        self.addresses = ClientAddresses(config.server.trusted_proxies)
        self.health_checkers: list[HealthChecker] = []
        self.cors = CorsFilter(CorsPolicy(config.cors)) if config.middleware.enable_cors else None
        auth = config.auth
        before = previous.config.auth if previous is not None else None
        self.jwt: JwtAuthenticator | None = None
        if auth.jwt is not None:
            remote = auth.jwt.jwks_url is not None or auth.jwt.oidc_issuer is not None
            if remote and before is not None and before.jwt == auth.jwt:
                # Keys fetched from the provider are kept (and not fetched again) by a reload
                # that leaves [auth.jwt] as it was; files and secrets are always re-read.
                self.jwt = previous.jwt  # type: ignore[union-attr]
            else:
                self.jwt = JwtAuthenticator(
                    auth.jwt, reactor, self.clients.agent(), metrics=metrics
                )
        self.api_key = ApiKeyAuthenticator(auth.api_key) if auth.api_key else None
        self.oauth2: Any = None
        if auth.oauth2 is not None:
            if before is not None and before.oauth2 == auth.oauth2:
                self.oauth2 = previous.oauth2  # type: ignore[union-attr]  # its cache too
            else:
                from .auth.oauth2 import OAuth2Authenticator

                self.oauth2 = OAuth2Authenticator(
                    auth.oauth2,
                    reactor,
                    self.clients.agent(auth.oauth2.ca_file),
                    metrics=metrics,
                )
        # Client copies of forwarded-claim headers and of X-Forwarded-Client-Cert are removed
        # on every route, not only on the routes that set them.
        stripped = {b"x-forwarded-client-cert"}
        for authenticator in (self.jwt, self.oauth2):
            if authenticator is not None:
                stripped |= authenticator.stripped_headers
        self.always_stripped = frozenset(stripped)
        self.rate_store: IRateLimitStore | None = None
        if config.middleware.enable_rate_limiting:
            kept = previous.rate_store if previous is not None else None
            self.rate_store = kept if kept is not None else self._rate_store(config)
        #: The response cache's store (``[cache]``), when a route is cached: a reload with the
        #: same ``[cache]`` keeps it (and what it holds).
        self.cache_store: Any = None
        if any(r.cache is not None for r in config.routes):
            kept = previous.cache_store if previous is not None else None
            if kept is not None and previous.config.cache == config.cache:  # type: ignore[union-attr]
                self.cache_store = kept
            else:
                self.cache_store = self._cache_store(config)
        if self.metrics is not None:
            self.metrics.watch_cache(self.cache_store)
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
        #: The process's tracing (``tracing.Tracing``), set by the service; None: off.
        self.tracing: Any = previous.tracing if previous is not None else None
        #: ``[tracing] response_header`` (the trace id on every answer), or None.
        self.trace_header: bytes | None = None
        if config.tracing is not None and config.tracing.response_header:
            self.trace_header = config.tracing.response_header.encode("ascii")
        self.forwarder = Forwarder(
            reactor,
            preserve_host=config.server.preserve_host,
            replace_server=bool(config.server.server_header),
        )
        for runtime_route in self.routes:
            if runtime_route.cache is not None:
                runtime_route.cache.refresh_forward = self._refresher(runtime_route)

    def _refresher(self, runtime_route: RuntimeRoute) -> Any:
        """Forwards a cache's background refresh (no client, no context) on ``runtime_route``."""

        def refresh(request: Any, target: bytes, hooks: Any) -> None:
            self.forwarder.forward(request, runtime_route, target, None, hooks)

        return refresh

    def _cache_store(self, config: GatewayConfig) -> Any:
        from .cache_store import MemoryStore, RedisStore

        settings = config.cache
        store: Any
        if settings.backend == "redis":
            store = RedisStore(self.reactor, settings.redis_url)
        else:
            store = MemoryStore(self.reactor, settings.max_bytes)
        return store

    def _rate_store(self, config: GatewayConfig) -> IRateLimitStore:
        limits = config.rate_limiting
        if limits.backend != "redis":
            return MemoryStore(self.reactor)
        from .redis_store import RedisStore

        store = RedisStore(limits.redis_url, self.reactor, limits.on_backend_error)
        if self.metrics is not None:
            store.on_error = self.metrics.rate_limit_backend_errors.inc
        return store

    def _live_targets(self) -> dict[tuple[Any, ...], tuple[Target, HealthChecker | None]]:
        checkers = {id(c.target): c for c in self.health_checkers}
        return {t.key: (t, checkers.get(id(t))) for r in self.routes for t in r.upstream.targets}

    def handed_over(self, successor: Runtime) -> None:
        """Stop this runtime's timers, except those of the health checkers and authenticators
        ``successor`` took over."""
        kept = {id(c) for c in successor.health_checkers}
        for checker in self.health_checkers:
            if id(checker) not in kept:
                checker.stop()
        for mine, theirs in ((self.jwt, successor.jwt), (self.oauth2, successor.oauth2)):
            if mine is not None and mine is not theirs:
                mine.stop()
        if self.cache_store is not None and self.cache_store is not successor.cache_store:
            self.cache_store.close()

    def start(self) -> None:
        """Start what runs in the background: health checks, JWKS refresh and OIDC discovery,
        the introspection cache's expiry (idempotent)."""
        for checker in self.health_checkers:
            checker.start()
        for authenticator in (self.jwt, self.oauth2):
            if authenticator is not None:
                authenticator.start()

    def stop(self) -> None:
        """Stop every background timer of this runtime."""
        for checker in self.health_checkers:
            checker.stop()
        self._stop_auth()
        if self.cache_store is not None:
            self.cache_store.close()

    def _stop_auth(self) -> None:
        for authenticator in (self.jwt, self.oauth2):
            if authenticator is not None:
                authenticator.stop()

    def _build_route(self, route: RouteConfig) -> RuntimeRoute:
        up = route.upstream
        if up is None:  # a resource route: the gateway serves it
            runtime_route = RuntimeRoute(route, Upstream.none(), self.clients.agent())
            self._route_filters(runtime_route, route)
            from .resources import ResourceResponder, load_resource

            try:
                resource = load_resource(route.resource or "")
            except ValueError as e:
                problem = f"route {route.name!r}: resource {route.resource!r} {e}"
                raise ConfigError([problem]) from None
            runtime_route.responder = ResourceResponder(resource, self.reactor)
            return runtime_route
        fresh = Upstream.from_urls(up.urls, strategy=up.strategy, weights=up.weights)
        tls = UpstreamTLS.of_upstream(up, route.name)
        agent = self.clients.agent(tls)
        targets = []
        for target in fresh.targets:
            key = _target_key(route, target, tls)
            carried = self._carried.pop(key, None)
            if carried is not None:
                target, checker = carried
                if checker is not None:
                    self.health_checkers.append(checker)
            else:
                target.connector = self.clients.connector(target, tls, up.protocol)
                target.breaker = CircuitBreaker(
                    up.circuit_breaker, self.reactor, name=f"{route.name} {target.url}"
                )
                if up.health_check is not None:
                    self.health_checkers.append(
                        HealthChecker(
                            target, up.health_check, agent, self.reactor, route=route.name
                        )
                    )
            target.key = key
            targets.append(target)
        upstream = Upstream(targets, fresh.balancer)
        runtime_route = RuntimeRoute(route, upstream, agent)
        runtime_route.tls = tls
        self._route_filters(runtime_route, route)
        if route.cache is not None:
            runtime_route.cache = self._route_cache(route, runtime_route.metrics)
        policies = RequestPolicies(runtime_route)
        runtime_route.policies = policies if policies else None
        return runtime_route

    def _route_cache(self, route: RouteConfig, metrics: Any) -> Any:
        from .cache import Policy
        from .response_cache import RouteCache

        settings = route.cache
        assert settings is not None
        policy = Policy(
            default_ttl_s=float(settings.default_ttl_s),
            max_object_bytes=settings.max_object_bytes,
            key_headers=tuple(h.encode("ascii") for h in settings.key_headers),
            stale_while_revalidate_s=float(settings.stale_while_revalidate_s),
            stale_if_error_s=float(settings.stale_if_error_s),
            store_set_cookie=settings.store_set_cookie,
            max_variants=settings.max_variants,
        )
        return RouteCache(
            route.name,
            policy,
            self.cache_store,
            self.reactor,
            lock_timeout_s=settings.lock_timeout_ms / 1000.0,
            status_header=self.config.cache.status_header,
            metrics=metrics,
        )

    def _route_filters(self, runtime_route: RuntimeRoute, route: RouteConfig) -> None:
        """The route's filter chain: CORS, auth, rate limit, body limit; and its plugins (their
        ``on_request`` runs later, after the policies and the cache lookup)."""
        metrics = self.metrics.route(route.name) if self.metrics is not None else None
        runtime_route.metrics = metrics
        filters = runtime_route.filters
        if self.cors is not None and route.cors:
            runtime_route.cors = self.cors
            runtime_route.owned_response_headers = OWNED_RESPONSE_HEADERS
            filters.append(self.cors)
        runtime_route.strip_headers = self.always_stripped
        mtls = self.config.auth.mtls
        runtime_route.forward_client_cert = mtls is not None and mtls.forward_client_cert
        route_uses_query_keys = bool(
            self.config.auth.api_key and self.config.auth.api_key.query_param
        )
        if route.auth:
            authenticators: list[Any] = []
            for method in route.auth:
                if method == "jwt" and self.jwt is not None:
                    authenticators.append(self.jwt)
                    runtime_route.claim_headers["jwt"] = self.jwt.claim_headers
                elif method == "oauth2" and self.oauth2 is not None:
                    authenticators.append(self.oauth2)
                    runtime_route.claim_headers["oauth2"] = self.oauth2.claim_headers
                elif method == "mtls" and mtls is not None:
                    authenticators.append(MtlsAuthenticator(route.mtls or mtls.policy))
                elif method == "api_key" and self.api_key is not None:
                    api_key = self.api_key
                    authenticators.append(api_key)
                    runtime_route.strip_headers |= {api_key.credential_header}
                    if route_uses_query_keys:
                        runtime_route.rewrite_target = _query_stripper(api_key)
            auth_filter = AuthFilter(authenticators, route.scopes, route.name)
            if metrics is not None:
                auth_filter.on_refused = lambda _route, reason, m=metrics: m.auth_failure(reason)
            filters.append(auth_filter)
        if self.rate_store is not None:
            limit = route.rate_limit or self.config.rate_limiting
            name = "global" if route.rate_limit is None and limit.key == "global" else route.name
            rate_filter = RateLimitFilter(self.rate_store, limit, name)
            if metrics is not None:
                rate_filter.refused = metrics.rate_limited
            filters.append(rate_filter)
        filters.append(BodyLimit(route.max_body_bytes))
        refs = self.config.plugins.global_ + route.plugins
        if refs:
            chain = PluginChain(refs, route.name, self.reactor, self.clients, self.metrics)
            runtime_route.plugins = chain
            if chain.request:
                runtime_route.plugin_filters = (chain,)


def _query_stripper(api_key: ApiKeyAuthenticator) -> Callable[[bytes], bytes]:
    """Removes the API key query parameter from an upstream target, keeping the rest as sent."""

    def rewrite(target: bytes) -> bytes:
        path, sep, query = target.partition(b"?")
        if not sep:
            return target
        stripped = api_key.strip_query(query)
        return path + b"?" + stripped if stripped else path

    return rewrite


def _target_key(route: RouteConfig, target: Target, tls: UpstreamTLS) -> tuple[Any, ...]:
    up = route.upstream
    return (
        route.name,
        target.url,
        target.weight,
        tls,
        up.protocol,
        up.circuit_breaker,
        up.health_check,
    )
