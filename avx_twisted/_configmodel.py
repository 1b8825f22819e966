"""The typed, frozen configuration objects and :class:`ConfigError`.

Every default lives here. These classes know nothing of TOML or of validation: the parser
(:mod:`avx_twisted._configparse`) builds them, and :mod:`avx_twisted.config` is the public face
that re-exports them with :class:`~avx_twisted.config.GatewayConfig`'s readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

STRATEGIES = ("round_robin", "random", "least_connections", "weighted")
RATE_LIMIT_KEYS = ("ip", "global", "route", "api_key", "jwt_sub", "consumer")
AUTH_METHODS = ("jwt", "api_key", "mtls", "oauth2")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
CLIENT_AUTH_MODES = ("none", "optional", "require")
UPSTREAM_PROTOCOLS = ("http/1.1", "h2", "h2c")
CACHE_BACKENDS = ("memory", "redis")
COMPRESSION_ENCODINGS = ("br", "gzip")
PERSISTED_QUERY_MODES = ("off", "allow", "only")
HEALTH_CHECK_KINDS = ("http", "grpc")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem, one line each."""

    def __init__(self, errors: Sequence[str], source: str = "config") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.__str__())

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{self.source}: {n} error{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  {e}" for e in self.errors])


# ---------------------------------------------------------------------------------------------
# Typed configuration objects (frozen: built once, shared by everything that serves requests)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCertificate:
    """One certificate (chain) and its private key, chosen by SNI when ``server_name`` is set."""

    cert_file: str
    key_file: str
    server_name: str = ""


@dataclass(frozen=True)
class ListenerTlsConfig:
    """``[server.listeners.tls]``: TLS termination on a structured listener."""

    #: The default certificate (chain) in PEM: for clients without SNI, or an SNI name no
    #: other certificate carries.
    cert_file: str
    #: Its private key (PEM, unencrypted).
    key_file: str
    #: More certificates, by SNI name (``*.example.com`` matches one label).
    certificates: tuple[TlsCertificate, ...] = ()
    #: The oldest TLS version accepted.
    min_version: str = "TLSv1.2"
    #: Client certificates: none (not asked), optional (verified if sent), require.
    client_auth: str = "none"
    #: The CA bundle client certificates must chain to.
    client_ca_file: str | None = None
    #: Look at the files this often and load them when they changed (0: only on a reload).
    reload_interval_s: int = 0

    @property
    def default(self) -> TlsCertificate:
        return TlsCertificate(self.cert_file, self.key_file)


@dataclass(frozen=True)
class ListenerConfig:
    """One ``[[server.listeners]]`` entry: an endpoint string, TLS, the PROXY protocol."""

    endpoint: str
    tls: ListenerTlsConfig | None = None
    proxy_protocol: bool = False
    #: h2 by ALPN on TLS, h2c with prior knowledge on cleartext.
    http2: bool = True


@dataclass(frozen=True)
class Http2Config:
    """``[server.http2]``: limits of HTTP/2 connections."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS advertised and enforced per connection.
    max_concurrent_streams: int = 100
    #: The HPACK-decoded header list of a request, CONTINUATION frames included.
    max_header_list_bytes: int = 65536
    #: A stream with no frames either way this long is reset.
    stream_idle_timeout_ms: int = 300000
    #: A connection with no open stream this long gets GOAWAY.
    idle_timeout_ms: int = 600000


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where the gateway listens and its global limits."""

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    timeout_ms: int = 30000
    connect_timeout_ms: int = 5000
    listen: tuple[str, ...] = ()
    #: Structured listeners (``[[server.listeners]]``), opened beside ``listen``.
    listeners: tuple[ListenerConfig, ...] = ()
    http2: Http2Config = field(default_factory=Http2Config)
    trusted_proxies: tuple[str, ...] = ()
    preserve_host: bool = True
    max_body_bytes: int = 10 * 1024 * 1024
    drain_timeout_ms: int = 10000
    client_header_timeout_ms: int = 10000
    client_body_timeout_ms: int = 60000
    keepalive_timeout_ms: int = 60000
    #: "" passes the upstream's ``Server`` and sends none on the gateway's own answers.
    server_header: str = ""
    #: On SIGTERM, keep accepting and answering this long (readiness says 503) before draining.
    shutdown_delay_ms: int = 0

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Twisted server endpoint strings of ``listen``, or host/port when neither ``listen``
        nor ``listeners`` is given."""
        if self.listen or self.listeners:
            return self.listen
        host = self.host.replace(":", "\\:")
        return (f"tcp:{self.port}:interface={host}",)


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket: ``[rate_limiting]`` or a route's ``rate_limit``."""

    requests_per_second: float = 100.0
    burst_size: int = 200
    key: str = "ip"
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_backend_error: str = "allow"


@dataclass(frozen=True)
class HealthCheckConfig:
    """``[routes.upstream.health_check]``: active checks of each target."""

    path: str = "/health"
    interval_ms: int = 5000
    timeout_ms: int = 1000
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_status: tuple[int, ...] = (200,)
    #: ``http`` (GET ``path``) or ``grpc`` (``grpc.health.v1.Health/Check`` over HTTP/2).
    kind: str = "http"
    #: With ``grpc``: the service asked about ("" = the server as a whole).
    service: str = ""


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """``[routes.upstream.circuit_breaker]``: one breaker per upstream target."""

    failure_threshold: int = 5
    recovery_timeout_ms: int = 30000
    half_open_requests: int = 1


@dataclass(frozen=True)
class UpstreamConfig:
    """``[routes.upstream]``: the targets of a route and how one is picked."""

    urls: tuple[str, ...]
    strategy: str = "round_robin"
    weights: tuple[int, ...] | None = None
    ca_file: str | None = None
    #: mTLS to the upstream: a client certificate (chain) and its key.
    client_cert_file: str | None = None
    client_key_file: str | None = None
    #: SNI and the name the upstream's certificate must carry ("" = each URL's host).
    server_name: str = ""
    #: ``http/1.1``, ``h2`` (https, ALPN) or ``h2c`` (cleartext, prior knowledge).
    protocol: str = "http/1.1"
    health_check: HealthCheckConfig | None = None
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)


@dataclass(frozen=True)
class RouteCacheConfig:
    """``[routes.cache]``: the route's RFC 9111 shared cache (absent = not cached)."""

    #: Freshness when the response states none (0: such responses are not stored).
    default_ttl_s: int = 0
    max_object_bytes: int = 1048576
    #: Request headers added to the key (Vary is honoured anyway).
    key_headers: tuple[str, ...] = ()
    stale_while_revalidate_s: int = 0
    stale_if_error_s: int = 0
    #: Concurrent misses of one key wait this long for the first fetch.
    lock_timeout_ms: int = 5000
    store_set_cookie: bool = False
    #: Vary variants kept per key (oldest evicted).
    max_variants: int = 16


@dataclass(frozen=True)
class RouteCompressionConfig:
    """``[routes.compression]``: gzip/brotli of responses by Accept-Encoding (absent = off)."""

    #: In order of preference.
    encodings: tuple[str, ...] = ("br", "gzip")
    #: Smaller bodies (of known length) are sent as they are.
    min_bytes: int = 1024
    content_types: tuple[str, ...] = (
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    )


@dataclass(frozen=True)
class RewritePath:
    """``rewrite_path = { pattern, replacement }``: a regex on the forwarded path."""

    pattern: str
    replacement: str


@dataclass(frozen=True)
class RequestTransformConfig:
    """``[routes.request]``: changes to the request before it is forwarded (values are
    templates, see docs/policies.md)."""

    set_headers: tuple[tuple[str, str], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    rename_headers: tuple[tuple[str, str], ...] = ()
    set_query: tuple[tuple[str, str], ...] = ()
    remove_query: tuple[str, ...] = ()
    rewrite_path: RewritePath | None = None
    #: JSON bodies: dotted path = value (any JSON value); removed paths; renamed keys.
    json_set: dict = field(default_factory=dict, hash=False)  # type: ignore[type-arg]
    json_remove: tuple[str, ...] = ()
    json_rename: tuple[tuple[str, str], ...] = ()
    #: A JSON body transform buffers at most this (requests: 413 above).
    max_json_bytes: int = 1048576


@dataclass(frozen=True)
class ResponseTransformConfig:
    """``[routes.response]``: changes to the upstream's response header fields."""

    set_headers: tuple[tuple[str, str], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    rename_headers: tuple[tuple[str, str], ...] = ()
    json_set: dict = field(default_factory=dict, hash=False)  # type: ignore[type-arg]
    json_remove: tuple[str, ...] = ()
    json_rename: tuple[tuple[str, str], ...] = ()
    #: Larger JSON responses pass unchanged (counted).
    max_json_bytes: int = 1048576


@dataclass(frozen=True)
class ValidateConfig:
    """``[routes.validate]``: JSON Schema validation of request bodies (and monitoring of
    responses)."""

    #: A schema file, relative to the config file (draft 7, 2019-09 or 2020-12 by $schema).
    request_schema: str | None = None
    methods: tuple[str, ...] = ("POST", "PUT", "PATCH")
    #: Validated bodies are buffered up to this; 413 above.
    max_bytes: int = 1048576
    #: Monitor only: violations logged and counted, never blocking.
    response_schema: str | None = None
    #: The compiled schemas (not part of the config's data).
    request_compiled: object = field(
        default=None, compare=False, repr=False, metadata={"internal": True}
    )
    response_compiled: object = field(
        default=None, compare=False, repr=False, metadata={"internal": True}
    )


@dataclass(frozen=True)
class GraphQLConfig:
    """``[routes.graphql]``: GraphQL over HTTP understood and limited at the edge."""

    #: SDL; with it operations are validated against the schema.
    schema_file: str | None = None
    max_depth: int = 12
    max_aliases: int = 30
    max_root_fields: int = 20
    max_tokens: int = 10000
    #: Fields counted; list fields multiplied by first/last/limit.
    max_complexity: int = 5000
    #: __schema / __type allowed.
    introspection: bool = True
    #: off | allow (APQ sha256Hash) | only (allowlist_file).
    persisted_queries: str = "off"
    allowlist_file: str | None = None
    #: Operations in one batched POST.
    max_batch: int = 10
    #: What was read from the files (not part of the config's data).
    schema: object = field(default=None, compare=False, repr=False, metadata={"internal": True})
    allowlist: object = field(default=None, compare=False, repr=False, metadata={"internal": True})


@dataclass(frozen=True)
class PluginRef:
    """One ``{ name, config }`` of ``routes[].plugins`` or ``[plugins] global``: the plugin, made
    (and its config validated) when the file is loaded."""

    name: str
    config: dict = field(default_factory=dict, compare=False)  # type: ignore[type-arg]
    #: The plugin object its distribution's factory made from ``config`` (not part of the
    #: config's data: the admin API and comparisons leave it out).
    instance: object = field(default=None, compare=False, repr=False, metadata={"internal": True})


@dataclass(frozen=True)
class MtlsPolicy:
    """Which verified client certificates ``auth = ["mtls"]`` accepts (both empty: any)."""

    allowed_subjects: tuple[str, ...] = ()
    allowed_sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` entry; per-route overrides are already resolved against the globals."""

    name: str
    path: str
    upstream: UpstreamConfig
    host: str | None = None
    strip_path: bool = False
    methods: tuple[str, ...] | None = None
    timeout_ms: int = 30000
    max_body_bytes: int = 10 * 1024 * 1024
    retries: int = 0
    auth: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    #: Replaces ``[auth.mtls]``'s lists on this route (None: the global ones).
    mtls: MtlsPolicy | None = None
    cors: bool = True
    rate_limit: RateLimitConfig | None = None
    #: Tunnel ``Upgrade: websocket`` requests on this route.
    websocket: bool = True
    websocket_idle_timeout_ms: int = 300000
    #: Plugins of this route, in order (after ``[plugins] global``).
    plugins: tuple[PluginRef, ...] = ()
    #: ``"module:attribute"``: serve the route with this twisted.web IResource instead of an
    #: upstream (``upstream`` is then absent).
    resource: str | None = None
    #: gRPC semantics: gateway errors as ``grpc-status``, the client's ``grpc-timeout`` as
    #: the deadline (``server.timeout_ms`` does not apply).
    grpc: bool = False
    #: On a gRPC route: the route's own ``timeout_ms`` (caps the client's deadline), if set.
    grpc_timeout_cap_ms: int | None = None
    cache: RouteCacheConfig | None = None
    compression: RouteCompressionConfig | None = None
    request: RequestTransformConfig | None = None
    response: ResponseTransformConfig | None = None
    graphql: GraphQLConfig | None = None
    validate: ValidateConfig | None = None


@dataclass(frozen=True)
class MiddlewareConfig:
    """``[middleware]``: which cross-cutting features are on."""

    enable_cors: bool = False
    enable_rate_limiting: bool = False
    enable_logging: bool = True
    enable_metrics: bool = True


@dataclass(frozen=True)
class CorsConfig:
    """``[cors]``: the CORS policy applied to routes with ``cors = true``."""

    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
    allowed_headers: tuple[str, ...] = ("Authorization", "Content-Type")
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: int = 600


@dataclass(frozen=True)
class JwtConfig:
    """``[auth.jwt]``: how bearer tokens are verified."""

    algorithms: tuple[str, ...] = ("HS256",)
    secret: str | None = None
    secret_env: str | None = None
    public_key_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 0
    forward_claims: tuple[tuple[str, str], ...] = ()
    #: OIDC discovery: the issuer whose ``/.well-known/openid-configuration`` names the JWKS.
    oidc_issuer: str | None = None


@dataclass(frozen=True)
class MtlsConfig:
    """``[auth.mtls]``: the verified client certificate as the credential."""

    #: Accepted subjects (RFC 4514 strings); with ``allowed_sans`` empty too: any verified one.
    allowed_subjects: tuple[str, ...] = ()
    #: Accepted subject alternative names (URI, DNS or email).
    allowed_sans: tuple[str, ...] = ()
    #: Send ``X-Forwarded-Client-Cert`` (Envoy's format) upstream.
    forward_client_cert: bool = False

    @property
    def policy(self) -> MtlsPolicy:
        return MtlsPolicy(self.allowed_subjects, self.allowed_sans)


@dataclass(frozen=True)
class OAuth2Config:
    """``[auth.oauth2]``: opaque bearer tokens checked by RFC 7662 introspection."""

    introspection_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    #: The environment variable the secret was read from (instead of ``client_secret``).
    client_secret_env: str | None = None
    #: ``basic`` (client_secret_basic) or ``post`` (client_secret_post).
    client_auth: str = "basic"
    issuer: str | None = None
    audience: str | None = None
    forward_claims: tuple[tuple[str, str], ...] = ()
    #: An active answer is reused at most this long (never past the token's ``exp``); 0: never.
    cache_ttl_s: int = 60
    #: An inactive answer (or an unknown token) is reused this long.
    negative_cache_ttl_s: int = 5
    timeout_ms: int = 2000
    #: A CA bundle for an https introspection endpoint (default: the system trust store).
    ca_file: str | None = None


@dataclass(frozen=True)
class ApiKey:
    """One accepted API key, stored only as its SHA-256 hex digest."""

    name: str
    sha256: str


@dataclass(frozen=True)
class ApiKeyConfig:
    """``[auth.api_key]``: where keys are read and which are accepted."""

    header: str = "X-API-Key"
    query_param: str = ""
    keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: the configured authenticators (absent ones are None)."""

    jwt: JwtConfig | None = None
    api_key: ApiKeyConfig | None = None
    mtls: MtlsConfig | None = None
    oauth2: OAuth2Config | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``."""

    path: str = "/metrics"
    #: An endpoint string: serve ``path`` there only, not on the data-plane listeners.
    listen: str = ""


@dataclass(frozen=True)
class HealthConfig:
    """``[health]``: paths of the probe endpoints."""

    health_path: str = "/health"
    liveness_path: str = "/healthz"
    readiness_path: str = "/ready"
    #: An endpoint string: serve the probes there only, not on the data-plane listeners.
    listen: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``."""

    format: str = "json"
    access_log: str = "-"
    level: str = "info"
    #: The event (error) log: "text" or "json" lines, on stderr unless twistd's ``--logfile``.
    event_format: str = "text"
    #: Share of successful (< 400) requests written to the access log; errors always are.
    sample_ratio: float = 1.0
    #: Requests to these exact paths are not access-logged (probe noise).
    skip_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry traces (absent = off)."""

    exporter: str = "otlp"
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "avx-gateway"
    #: Parent-based: a sampled incoming ``traceparent`` is always followed.
    sample_ratio: float = 1.0
    #: A response header carrying the trace id ("" = none).
    response_header: str = ""


@dataclass(frozen=True)
class PluginsConfig:
    """``[plugins]``: plugins run on every route, before the route's own."""

    global_: tuple[PluginRef, ...] = ()


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: the store behind every ``[routes.cache]``."""

    #: ``memory`` (per process, LRU) or ``redis`` (shared by replicas and workers).
    backend: str = "memory"
    #: memory: LRU bound on stored bytes (bodies and headers).
    max_bytes: int = 268435456
    redis_url: str = "redis://127.0.0.1:6379/1"
    #: Cache-Status (RFC 9211) on responses of cached routes.
    status_header: bool = True


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the runtime admin API (absent = off)."""

    listen: str = "tcp:9901:interface=127.0.0.1"
    token_sha256: str = ""


@dataclass(frozen=True)
class BaseGatewayConfig:
    """The whole, validated gateway configuration: its fields and what is computed from them.

    :class:`avx_twisted.config.GatewayConfig` is this class with the ways to read a config
    (``load``, ``from_toml``, ``from_dict``); the parser builds that subclass.
    """

    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    middleware: MiddlewareConfig = field(default_factory=MiddlewareConfig)
    rate_limiting: RateLimitConfig = field(default_factory=RateLimitConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    admin: AdminConfig | None = None
    tracing: TracingConfig | None = None
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = "<config>"

    def listeners(self) -> list[tuple[str, str]]:
        """Every listener as (purpose, endpoint string), in a fixed order that worker processes
        and their supervisor agree on: the data plane's (``data`` for ``listen`` or host/port,
        ``listeners[i]`` for each structured listener), then ``metrics`` and ``health`` when
        they have their own listener, then ``admin``."""
        found = [("data", e) for e in self.server.endpoints]
        found += [(f"listeners[{i}]", x.endpoint) for i, x in enumerate(self.server.listeners)]
        if self.metrics.listen and self.middleware.enable_metrics:
            found.append(("metrics", self.metrics.listen))
        if self.health.listen:
            found.append(("health", self.health.listen))
        if self.admin is not None:
            found.append(("admin", self.admin.listen))
        return found

    def listener_key(self, purpose: str) -> str:
        """The config key of a listener purpose, for messages (``metrics.listen``...)."""
        if purpose == "data":
            return "server.listen" if self.server.listen else "server.host/port"
        if purpose.startswith("listeners["):
            return f"server.{purpose}.endpoint"
        return f"{purpose}.listen"

    def listener_config(self, purpose: str) -> ListenerConfig | None:
        """The structured listener of a ``listeners[i]`` purpose (None for the others)."""
        if not purpose.startswith("listeners["):
            return None
        return self.server.listeners[int(purpose[len("listeners[") : -1])]

    def internal_paths(self) -> dict[str, str]:
        """Paths the gateway answers itself on the data-plane listeners, by purpose; routes may
        not claim them. Probes and metrics on their own listener (``listen``) free their paths."""
        paths = {}
        if not self.health.listen:
            paths["health.health_path"] = self.health.health_path
            paths["health.liveness_path"] = self.health.liveness_path
            paths["health.readiness_path"] = self.health.readiness_path
        if self.middleware.enable_metrics and not self.metrics.listen:
            paths["metrics.path"] = self.metrics.path
        return paths
