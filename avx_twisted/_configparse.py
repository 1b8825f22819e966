"""Validation of a raw config mapping into :mod:`avx_twisted._configmodel` objects.

One pass over the mapping builds the typed, frozen objects and collects every problem with its
key path, the bad value and what is allowed; :class:`Parser` raises one ConfigError for all.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ._configmodel import (
    AUTH_METHODS,
    CACHE_BACKENDS,
    CLIENT_AUTH_MODES,
    COMPRESSION_ENCODINGS,
    HEALTH_CHECK_KINDS,
    HMAC_ALGORITHMS,
    LOG_LEVELS,
    PERSISTED_QUERY_MODES,
    PUBLIC_KEY_ALGORITHMS,
    RATE_LIMIT_KEYS,
    STRATEGIES,
    TLS_VERSIONS,
    UPSTREAM_PROTOCOLS,
    AdminConfig,
    ApiKey,
    ApiKeyConfig,
    AuthConfig,
    BaseGatewayConfig,
    CacheConfig,
    CircuitBreakerConfig,
    ConfigError,
    CorsConfig,
    GraphQLConfig,
    HealthCheckConfig,
    HealthConfig,
    Http2Config,
    JwtConfig,
    ListenerConfig,
    ListenerTlsConfig,
    LoggingConfig,
    MetricsConfig,
    MiddlewareConfig,
    MtlsConfig,
    MtlsPolicy,
    OAuth2Config,
    PluginRef,
    PluginsConfig,
    RateLimitConfig,
    RequestTransformConfig,
    ResponseTransformConfig,
    RewritePath,
    RouteCacheConfig,
    RouteCompressionConfig,
    RouteConfig,
    ServerConfig,
    TlsCertificate,
    TracingConfig,
    UpstreamConfig,
    ValidateConfig,
)
from .urls import parse_redis_url, parse_url

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

_MISSING = object()

#: The class of the whole config the parser builds (:class:`avx_twisted.config.GatewayConfig`).
_Config = TypeVar("_Config", bound=BaseGatewayConfig)


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


class _Table:
    """Reads the keys of one TOML table, recording errors under its key path."""

    def __init__(self, parser: Parser, path: str, data: Any, known: Sequence[str]) -> None:
        self.parser = parser
        self.path = path
        self.data = data if isinstance(data, Mapping) else {}
        if not isinstance(data, Mapping):
            parser.error(path, f"must be a table, not {_show(data)}")
        for key in self.data:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                allowed = ", ".join(known)
                parser.error(self.key(key), f"unknown key{extra} (known keys: {allowed})")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def get(
        self, name: str, kind: str, default: Any, check: Callable[[Any], str | None] | None = None
    ) -> Any:
        """The value of ``name`` checked against ``kind`` (and ``check``), or ``default``."""
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        problem = _type_problem(value, kind)
        if problem is None and check is not None:
            problem = check(value)
        if problem is not None:
            self.parser.error(self.key(name), f"{_show(value)} {problem}")
            return default
        if kind == "float":
            return float(value)
        if kind.startswith("list"):
            return tuple(value)
        return value

    def table(self, name: str, known: Sequence[str]) -> _Table | None:
        if name not in self.data:
            return None
        return _Table(self.parser, self.key(name), self.data[name], known)


def _type_problem(value: Any, kind: str) -> str | None:
    if kind == "str":
        ok = isinstance(value, str)
        want = "a string"
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif kind == "float":
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        want = "a number"
    elif kind == "bool":
        ok = isinstance(value, bool)
        want = "true or false"
    elif kind == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of strings"
    elif kind == "list[int]":
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        want = "a list of integers"
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    return None if ok else f"is not {want}"


def _one_of(choices: Sequence[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"is not one of {', '.join(choices)}"

    return check


def _at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low:g}"

    return check


def _field_value(value: str) -> str | None:
    """A header field value we can send: visible ASCII and spaces, no control characters."""
    if all(32 <= ord(c) < 127 for c in value) and value == value.strip():
        return None
    return "must be printable ASCII without leading or trailing spaces"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _url_path(value: str) -> str | None:
    if not value.startswith("/") or any(c in value for c in "?# "):
        return "must be a path starting with '/' (no query, fragment or spaces)"
    return None


def _each(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def check_all(values: Sequence[Any]) -> str | None:
        for v in values:
            problem = check(v)
            if problem:
                return f"has an item {_show(v)} that {problem}"
        return None

    return check_all


def _token(value: str) -> str | None:
    return None if _TOKEN.match(value) else "is not a valid HTTP token"


def _hex64(value: str) -> str | None:
    return None if _HEX64.match(value) else "is not a SHA-256 hex digest (64 hex characters)"


_TOP_KEYS = (
    "server",
    "routes",
    "middleware",
    "rate_limiting",
    "cors",
    "auth",
    "metrics",
    "health",
    "logging",
    "admin",
    "tracing",
    "plugins",
    "cache",
)
_SERVER_KEYS = (
    "host",
    "port",
    "workers",
    "timeout_ms",
    "connect_timeout_ms",
    "listen",
    "trusted_proxies",
    "preserve_host",
    "max_body_bytes",
    "drain_timeout_ms",
    "client_header_timeout_ms",
    "client_body_timeout_ms",
    "keepalive_timeout_ms",
    "server_header",
    "shutdown_delay_ms",
    "listeners",
    "http2",
)
_HTTP2_KEYS = (
    "max_concurrent_streams",
    "max_header_list_bytes",
    "stream_idle_timeout_ms",
    "idle_timeout_ms",
)
_LISTENER_KEYS = ("endpoint", "http2", "proxy_protocol", "tls")
_LISTENER_TLS_KEYS = (
    "cert_file",
    "key_file",
    "certificates",
    "min_version",
    "client_auth",
    "client_ca_file",
    "reload_interval_s",
)
_SNI_CERT_KEYS = ("server_name", "cert_file", "key_file")
_ROUTE_KEYS = (
    "name",
    "path",
    "host",
    "strip_path",
    "methods",
    "timeout_ms",
    "max_body_bytes",
    "retries",
    "auth",
    "scopes",
    "mtls",
    "cors",
    "rate_limit",
    "upstream",
    "websocket",
    "websocket_idle_timeout_ms",
    "plugins",
    "resource",
    "grpc",
    "cache",
    "compression",
    "request",
    "response",
    "graphql",
    "validate",
)
_VALIDATE_KEYS = ("request_schema", "methods", "max_bytes", "response_schema")
_GRAPHQL_KEYS = (
    "schema_file",
    "max_depth",
    "max_aliases",
    "max_root_fields",
    "max_tokens",
    "max_complexity",
    "introspection",
    "persisted_queries",
    "allowlist_file",
    "max_batch",
)
_COMPRESSION_KEYS = ("encodings", "min_bytes", "content_types")
_HEADER_RULE_KEYS = ("set_headers", "add_headers", "remove_headers", "rename_headers")
_JSON_RULE_KEYS = ("json_set", "json_remove", "json_rename", "max_json_bytes")
_REQUEST_TRANSFORM_KEYS = (
    _HEADER_RULE_KEYS + ("set_query", "remove_query", "rewrite_path") + _JSON_RULE_KEYS
)
_RESPONSE_TRANSFORM_KEYS = _HEADER_RULE_KEYS + _JSON_RULE_KEYS
_REWRITE_KEYS = ("pattern", "replacement")
_ROUTE_CACHE_KEYS = (
    "default_ttl_s",
    "max_object_bytes",
    "key_headers",
    "stale_while_revalidate_s",
    "stale_if_error_s",
    "lock_timeout_ms",
    "store_set_cookie",
    "max_variants",
)
_CACHE_KEYS = ("backend", "max_bytes", "redis_url", "status_header")
_UPSTREAM_KEYS = (
    "urls",
    "strategy",
    "weights",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "server_name",
    "protocol",
    "health_check",
    "circuit_breaker",
)
_HEALTH_CHECK_KEYS = (
    "path",
    "interval_ms",
    "timeout_ms",
    "healthy_threshold",
    "unhealthy_threshold",
    "expected_status",
    "kind",
    "service",
)
_BREAKER_KEYS = ("failure_threshold", "recovery_timeout_ms", "half_open_requests")
_RATE_KEYS = (
    "requests_per_second",
    "burst_size",
    "key",
    "backend",
    "redis_url",
    "on_backend_error",
)
_ROUTE_RATE_KEYS = ("requests_per_second", "burst_size", "key")
_CORS_KEYS = (
    "allowed_origins",
    "allowed_methods",
    "allowed_headers",
    "expose_headers",
    "allow_credentials",
    "max_age_s",
)
_JWT_KEYS = (
    "algorithms",
    "secret",
    "secret_env",
    "public_key_file",
    "jwks_url",
    "issuer",
    "audience",
    "leeway_s",
    "forward_claims",
    "oidc_issuer",
)
_MTLS_KEYS = ("allowed_subjects", "allowed_sans", "forward_client_cert")
_MTLS_POLICY_KEYS = ("allowed_subjects", "allowed_sans")
_OAUTH2_KEYS = (
    "introspection_url",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_auth",
    "issuer",
    "audience",
    "forward_claims",
    "cache_ttl_s",
    "negative_cache_ttl_s",
    "timeout_ms",
    "ca_file",
)
_API_KEY_KEYS = ("header", "query_param", "keys")
_METRICS_KEYS = ("path", "listen")
_TRACING_KEYS = ("exporter", "endpoint", "service_name", "sample_ratio", "response_header")
_PLUGINS_KEYS = ("global",)
_PLUGIN_REF_KEYS = ("name", "config")
_HEALTH_KEYS = ("health_path", "liveness_path", "readiness_path", "listen")
_LOGGING_KEYS = ("format", "access_log", "level", "event_format", "sample_ratio", "skip_paths")
_ENV_REF = re.compile(r"(?<!\$)\$\{env\.([^}:]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Parser:
    """Walks the raw mapping once, building typed objects and collecting every error."""

    def __init__(self, source: str, base_dir: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[str] = []
        # Index in the file's [[routes]] of each built route (invalid ones are left out).
        self.route_index: list[int] = []
        #: Names of ``[plugins] global``, which a route may not list again.
        self.global_plugins: set[str] = set()
        self.route_globals: set[str] = set()

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def load(self, loader: Callable[[str, str], Any], path: str, key: str) -> Any:
        """``loader(path, key)`` (a file the config names: a schema, an allowlist), or None
        with its problems (already phrased with their key paths) added to the errors."""
        try:
            return loader(path, key)
        except ConfigError as e:
            self.errors.extend(e.errors)
            return None

    def file(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def parse(self, data: Mapping[str, Any], config_class: type[_Config]) -> _Config:
        """Build a ``config_class`` from ``data``; raise one ConfigError for every problem."""
        data = self.substitute_env(data, "")
        top = _Table(self, "", data, _TOP_KEYS)
        server = self.server(top.table("server", _SERVER_KEYS))
        middleware = self.middleware(
            top.table(
                "middleware",
                ("enable_cors", "enable_rate_limiting", "enable_logging", "enable_metrics"),
            )
        )
        rate = self.rate_limit(top.table("rate_limiting", _RATE_KEYS), RateLimitConfig())
        cors = self.cors(top.table("cors", _CORS_KEYS))
        auth = self.auth(top.table("auth", ("jwt", "api_key", "mtls", "oauth2")))
        metrics = self.metrics(top.table("metrics", _METRICS_KEYS))
        health = self.health(top.table("health", _HEALTH_KEYS))
        logging = self.logging(top.table("logging", _LOGGING_KEYS))
        admin = self.admin(top.table("admin", ("listen", "token_sha256")))
        tracing_t = top.table("tracing", _TRACING_KEYS)
        tracing = self.tracing(tracing_t) if tracing_t is not None else None
        cache_t = top.table("cache", _CACHE_KEYS)
        cache = self.cache(cache_t) if cache_t is not None else CacheConfig()
        plugins_t = top.table("plugins", _PLUGINS_KEYS)
        plugins = PluginsConfig(
            global_=self.plugin_refs(plugins_t, "global") if plugins_t is not None else ()
        )
        self.global_plugins = {ref.name for ref in plugins.global_}
        routes = self.routes(top, server, rate, auth)
        config = config_class(
            server=server,
            routes=routes,
            middleware=middleware,
            rate_limiting=rate,
            cors=cors,
            auth=auth,
            metrics=metrics,
            health=health,
            logging=logging,
            admin=admin,
            tracing=tracing,
            plugins=plugins,
            cache=cache,
            source=self.source,
        )
        self.cross_checks(config)
        if self.errors:
            raise ConfigError(self.errors, source=self.source)
        return config

    def substitute_env(self, value: Any, path: str) -> Any:
        """``${env.NAME}`` and ``${env.NAME:-default}`` in every string value, replaced by the
        environment's value; other ``${...}`` (request templates) and ``$${`` stay as written."""
        if isinstance(value, str):
            if "${env." not in value:
                return value

            def replace_one(match: re.Match[str]) -> str:
                name, default = match.group(1), match.group(2)
                if not _ENV_NAME.match(name):
                    self.error(path, f"${{env.{name}}} is not a valid environment variable name")
                    return match.group(0)
                found = os.environ.get(name)
                if found is not None:
                    return found
                if default is not None:
                    return default
                self.error(
                    path,
                    f"environment variable {name!r} is not set (${{env.{name}:-default}} "
                    "gives a default)",
                )
                return ""

            return _ENV_REF.sub(replace_one, value)
        if isinstance(value, Mapping):
            return {
                k: self.substitute_env(v, f"{path}.{k}" if path else str(k))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.substitute_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # -- sections --------------------------------------------------------------------------

    def server(self, t: _Table | None) -> ServerConfig:
        d = ServerConfig()
        if t is None:
            return d
        listen = t.get("listen", "list[str]", (), self.endpoint_list)
        listeners = self.listeners(t)
        http2_t = t.table("http2", _HTTP2_KEYS)
        http2 = self.http2(http2_t) if http2_t is not None else Http2Config()
        proxies = t.get("trusted_proxies", "list[str]", (), _each(_network))
        port_ok = lambda p: None if 0 <= p <= 65535 else "is not a port (0-65535)"  # noqa: E731
        return ServerConfig(
            host=t.get("host", "str", d.host, _listen_host),
            port=t.get("port", "int", d.port, port_ok),
            workers=t.get("workers", "int", d.workers, _at_least(1)),
            timeout_ms=t.get("timeout_ms", "int", d.timeout_ms, _positive),
            connect_timeout_ms=t.get("connect_timeout_ms", "int", d.connect_timeout_ms, _positive),
            listen=listen,
            listeners=listeners,
            http2=http2,
            trusted_proxies=proxies,
            preserve_host=t.get("preserve_host", "bool", d.preserve_host),
            max_body_bytes=t.get("max_body_bytes", "int", d.max_body_bytes, _at_least(0)),
            drain_timeout_ms=t.get("drain_timeout_ms", "int", d.drain_timeout_ms, _at_least(0)),
            client_header_timeout_ms=t.get(
                "client_header_timeout_ms", "int", d.client_header_timeout_ms, _positive
            ),
            client_body_timeout_ms=t.get(
                "client_body_timeout_ms", "int", d.client_body_timeout_ms, _positive
            ),
            keepalive_timeout_ms=t.get(
                "keepalive_timeout_ms", "int", d.keepalive_timeout_ms, _positive
            ),
            server_header=t.get("server_header", "str", d.server_header, _field_value),
            shutdown_delay_ms=t.get("shutdown_delay_ms", "int", d.shutdown_delay_ms, _at_least(0)),
        )

    def listeners(self, t: _Table) -> tuple[ListenerConfig, ...]:
        """``[[server.listeners]]``: each an endpoint string, optionally TLS and PROXY."""
        raw = t.data.get("listeners", [])
        if not isinstance(raw, list):
            self.error(t.key("listeners"), "must be an array of tables ([[server.listeners]])")
            return ()
        found = []
        for i, item in enumerate(raw):
            lt = _Table(self, f"{t.key('listeners')}[{i}]", item, _LISTENER_KEYS)
            if not isinstance(item, Mapping):
                continue
            if not lt.has("endpoint"):
                self.error(lt.key("endpoint"), "is required (a Twisted endpoint string)")
            endpoint = lt.get("endpoint", "str", None, _plain_endpoint)
            http2 = lt.get("http2", "bool", True)
            tls_t = lt.table("tls", _LISTENER_TLS_KEYS)
            tls = self.listener_tls(tls_t) if tls_t is not None else None
            proxy = lt.get("proxy_protocol", "bool", False)
            if endpoint is not None:
                found.append(ListenerConfig(endpoint, tls=tls, proxy_protocol=proxy, http2=http2))
        return tuple(found)

    def http2(self, t: _Table) -> Http2Config:
        d = Http2Config()
        return Http2Config(
            max_concurrent_streams=t.get(
                "max_concurrent_streams", "int", d.max_concurrent_streams, _at_least(1)
            ),
            max_header_list_bytes=t.get(
                "max_header_list_bytes", "int", d.max_header_list_bytes, _at_least(1024)
            ),
            stream_idle_timeout_ms=t.get(
                "stream_idle_timeout_ms", "int", d.stream_idle_timeout_ms, _positive
            ),
            idle_timeout_ms=t.get("idle_timeout_ms", "int", d.idle_timeout_ms, _positive),
        )

    def listener_tls(self, t: _Table) -> ListenerTlsConfig | None:
        """``[server.listeners.tls]``: every file is read and checked now (a key that does not
        match its certificate, an unreadable CA bundle), so ``--check`` sees what start-up
        would."""
        from .tls import TlsFileError, load_ca_file, load_certificate

        def pair(table: _Table, sni: bool) -> TlsCertificate | None:
            for required in ("cert_file", "key_file") + (("server_name",) if sni else ()):
                if not table.has(required):
                    self.error(table.key(required), "is required")
            name = table.get("server_name", "str", "", _sni_name) if sni else ""
            cert = table.get("cert_file", "str", None)
            key = table.get("key_file", "str", None)
            if cert is None or key is None or (sni and not name):
                return None
            found = TlsCertificate(self.file(cert), self.file(key), name.lower().rstrip("."))
            try:
                load_certificate(found)
            except TlsFileError as e:
                self.error(table.key(e.key), str(e))
                return None
            return found

        default = pair(t, sni=False)
        certificates = []
        raw = t.data.get("certificates", [])
        if not isinstance(raw, list):
            self.error(
                t.key("certificates"), "must be a list of { server_name, cert_file, key_file }"
            )
            raw = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            ct = _Table(self, f"{t.key('certificates')}[{i}]", item, _SNI_CERT_KEYS)
            if not isinstance(item, Mapping):
                continue
            cert = pair(ct, sni=True)
            if cert is None:
                continue
            if cert.server_name in names:
                self.error(ct.key("server_name"), f"{cert.server_name!r} has another certificate")
            names.add(cert.server_name)
            certificates.append(cert)
        client_auth = t.get("client_auth", "str", "none", _one_of(CLIENT_AUTH_MODES))
        ca_file = t.get("client_ca_file", "str", None)
        if ca_file is not None:
            ca_file = self.file(ca_file)
            try:
                load_ca_file(ca_file)
            except TlsFileError as e:
                self.error(t.key("client_ca_file"), str(e))
        if client_auth != "none" and ca_file is None:
            self.error(
                t.key("client_ca_file"),
                f"is required with client_auth = {client_auth!r} (the CA bundle client "
                "certificates must chain to)",
            )
        min_version = t.get("min_version", "str", "TLSv1.2", _one_of(TLS_VERSIONS))
        reload_interval_s = t.get("reload_interval_s", "int", 0, _at_least(0))
        if default is None:
            return None
        return ListenerTlsConfig(
            cert_file=default.cert_file,
            key_file=default.key_file,
            certificates=tuple(certificates),
            min_version=min_version,
            client_auth=client_auth,
            client_ca_file=ca_file,
            reload_interval_s=reload_interval_s,
        )

    def endpoint_list(self, values: Sequence[str]) -> str | None:
        if not values:
            return "must list at least one endpoint (or leave listen out to use host/port)"
        for v in values:
            problem = _endpoint(v)
            if problem:
                return problem
        return None

    def middleware(self, t: _Table | None) -> MiddlewareConfig:
        d = MiddlewareConfig()
        if t is None:
            return d
        return MiddlewareConfig(
            enable_cors=t.get("enable_cors", "bool", d.enable_cors),
            enable_rate_limiting=t.get("enable_rate_limiting", "bool", d.enable_rate_limiting),
            enable_logging=t.get("enable_logging", "bool", d.enable_logging),
            enable_metrics=t.get("enable_metrics", "bool", d.enable_metrics),
        )

    def rate_limit(self, t: _Table | None, base: RateLimitConfig) -> RateLimitConfig:
        if t is None:
            return base
        rps = t.get("requests_per_second", "float", base.requests_per_second, _positive)
        default_burst = base.burst_size
        if t.has("requests_per_second") and not t.has("burst_size"):
            default_burst = max(1, math.ceil(rps))
        return RateLimitConfig(
            requests_per_second=rps,
            burst_size=t.get("burst_size", "int", default_burst, _at_least(1)),
            key=t.get("key", "str", base.key, _one_of(RATE_LIMIT_KEYS)),
            backend=t.get("backend", "str", base.backend, _one_of(("memory", "redis"))),
            redis_url=self.redis_url(t, base.redis_url),
            on_backend_error=t.get(
                "on_backend_error", "str", base.on_backend_error, _one_of(("allow", "deny"))
            ),
        )

    def redis_url(self, t: _Table, default: str) -> str:
        """A Redis URL, checked by the one parser every Redis user shares; errors never show
        its password."""
        value = t.get("redis_url", "str", default)
        if value is default:
            return default
        problem = _redis_url(value)
        if problem is not None:
            shown = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", value)
            self.error(t.key("redis_url"), f"{shown!r} {problem}")
            return default
        return value  # type: ignore[no-any-return]

    def cors(self, t: _Table | None) -> CorsConfig:
        d = CorsConfig()
        if t is None:
            return d
        origins = t.get("allowed_origins", "list[str]", d.allowed_origins, _each(_origin))
        creds = t.get("allow_credentials", "bool", d.allow_credentials)
        if creds and "*" in origins:
            self.error(
                t.key("allowed_origins"),
                "'*' is not allowed together with cors.allow_credentials = true "
                "(browsers refuse it); list the origins explicitly",
            )
        return CorsConfig(
            allowed_origins=origins,
            allowed_methods=tuple(
                m.upper()
                for m in t.get("allowed_methods", "list[str]", d.allowed_methods, _each(_token))
            ),
            allowed_headers=t.get("allowed_headers", "list[str]", d.allowed_headers, _each(_token)),
            expose_headers=t.get("expose_headers", "list[str]", d.expose_headers, _each(_token)),
            allow_credentials=creds,
            max_age_s=t.get("max_age_s", "int", d.max_age_s, _at_least(0)),
        )

    def auth(self, t: _Table | None) -> AuthConfig:
        if t is None:
            return AuthConfig()
        jwt_t = t.table("jwt", _JWT_KEYS)
        api_t = t.table("api_key", _API_KEY_KEYS)
        mtls_t = t.table("mtls", _MTLS_KEYS)
        oauth2_t = t.table("oauth2", _OAUTH2_KEYS)
        return AuthConfig(
            jwt=self.jwt(jwt_t) if jwt_t is not None else None,
            api_key=self.api_key(api_t) if api_t is not None else None,
            mtls=self.mtls(mtls_t) if mtls_t is not None else None,
            oauth2=self.oauth2(oauth2_t) if oauth2_t is not None else None,
        )

    def mtls_policy(self, t: _Table) -> MtlsPolicy:
        from .tls import normalise_subject

        def subject_check(value: str) -> str | None:
            try:
                normalise_subject(value)
            except ValueError as e:
                return f"is not an RFC 4514 distinguished name like 'CN=billing,O=Acme': {e}"
            return None

        subjects = t.get("allowed_subjects", "list[str]", (), _each(subject_check))
        sans = t.get("allowed_sans", "list[str]", (), _each(_non_empty))
        return MtlsPolicy(allowed_subjects=subjects, allowed_sans=sans)

    def mtls(self, t: _Table) -> MtlsConfig:
        policy = self.mtls_policy(t)
        return MtlsConfig(
            allowed_subjects=policy.allowed_subjects,
            allowed_sans=policy.allowed_sans,
            forward_client_cert=t.get("forward_client_cert", "bool", False),
        )

    def oauth2(self, t: _Table) -> OAuth2Config | None:
        d = OAuth2Config(introspection_url="", client_id="")
        for required in ("introspection_url", "client_id"):
            if not t.has(required):
                self.error(t.key(required), "is required")
        url = t.get("introspection_url", "str", None, _introspection_url)
        client_id = t.get("client_id", "str", None, _non_empty)
        secret = t.get("client_secret", "str", None, _non_empty)
        secret_env = t.get("client_secret_env", "str", None)
        if secret is not None and secret_env is not None:
            self.error(
                t.key("client_secret_env"), "give client_secret or client_secret_env, not both"
            )
        if secret_env is not None and secret is None:
            secret = os.environ.get(secret_env)
            if not secret:
                self.error(
                    t.key("client_secret_env"), f"environment variable {secret_env!r} is not set"
                )
        if not t.has("client_secret") and not t.has("client_secret_env"):
            self.error(t.key("client_secret"), "is required (or client_secret_env)")
        ca_file = t.get("ca_file", "str", None)
        if ca_file is not None:
            ca_file = self.file(ca_file)
            if not os.path.isfile(ca_file):
                self.error(t.key("ca_file"), f"{ca_file!r} does not exist")
        config = OAuth2Config(
            introspection_url=url or "",
            client_id=client_id or "",
            client_secret=secret or "",
            client_secret_env=secret_env,
            client_auth=t.get("client_auth", "str", d.client_auth, _one_of(("basic", "post"))),
            issuer=t.get("issuer", "str", None),
            audience=t.get("audience", "str", None),
            forward_claims=self.forward_claims(t),
            cache_ttl_s=t.get("cache_ttl_s", "int", d.cache_ttl_s, _at_least(0)),
            negative_cache_ttl_s=t.get(
                "negative_cache_ttl_s", "int", d.negative_cache_ttl_s, _at_least(0)
            ),
            timeout_ms=t.get("timeout_ms", "int", d.timeout_ms, _positive),
            ca_file=ca_file,
        )
        return config if url and client_id else None

    def forward_claims(self, t: _Table) -> tuple[tuple[str, str], ...]:
        claims_raw = t.data.get("forward_claims", {})
        claims: list[tuple[str, str]] = []
        if not isinstance(claims_raw, Mapping):
            self.error(t.key("forward_claims"), 'must be a table of claim = "Header-Name"')
            return ()
        for claim, header in claims_raw.items():
            if not isinstance(header, str) or not _TOKEN.match(header):
                self.error(
                    t.key(f"forward_claims.{claim}"), f"{_show(header)} is not a header name"
                )
            else:
                claims.append((claim, header))
        return tuple(claims)

    def jwt(self, t: _Table) -> JwtConfig:
        d = JwtConfig()
        known = HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS

        def alg_check(values: Sequence[str]) -> str | None:
            if not values:
                return "must list at least one algorithm"
            for v in values:
                if v.lower() == "none":
                    return "must not contain 'none' (unsigned tokens are never accepted)"
                if v not in known:
                    return f"has {v!r}, which is not one of {', '.join(known)}"
            if any(v in HMAC_ALGORITHMS for v in values) and any(
                v in PUBLIC_KEY_ALGORITHMS for v in values
            ):
                return "mixes HMAC (HS*) and public-key algorithms, which allows key confusion"
            return None

        errors_before = len(self.errors)
        algs = t.get("algorithms", "list[str]", d.algorithms, alg_check)
        algs_ok = len(self.errors) == errors_before
        secret = t.get("secret", "str", None)
        secret_env = t.get("secret_env", "str", None)
        key_file = t.get("public_key_file", "str", None)
        jwks_url = t.get("jwks_url", "str", None, _http_url)
        oidc_issuer = t.get("oidc_issuer", "str", None, _discovery_url)
        if oidc_issuer is not None and jwks_url is not None:
            self.error(
                t.key("oidc_issuer"),
                "give oidc_issuer (the JWKS is found by discovery) or jwks_url, not both",
            )
        if secret_env is not None and secret is None and not os.environ.get(secret_env):
            self.error(t.key("secret_env"), f"environment variable {secret_env!r} is not set")
        if key_file is not None:
            key_file = self.file(key_file)
            if not os.path.isfile(key_file):
                self.error(t.key("public_key_file"), f"{key_file!r} does not exist")
        # Key material is checked against the algorithms only once those are valid.
        if algs_ok and any(a in HMAC_ALGORITHMS for a in algs):
            if not t.has("secret") and not t.has("secret_env"):
                self.error(t.key("secret"), "HS* algorithms need 'secret' or 'secret_env'")
        elif algs_ok and not any(t.has(k) for k in ("public_key_file", "jwks_url", "oidc_issuer")):
            self.error(
                t.key("public_key_file"),
                "public-key algorithms need 'public_key_file', 'jwks_url' or 'oidc_issuer'",
            )
        if oidc_issuer is not None and algs_ok and any(a in HMAC_ALGORITHMS for a in algs):
            self.error(t.key("oidc_issuer"), "is for public-key algorithms (RS*, PS*, ES*, EdDSA)")
        claims = self.forward_claims(t)
        return JwtConfig(
            algorithms=algs,
            secret=secret,
            secret_env=secret_env,
            public_key_file=key_file,
            jwks_url=jwks_url,
            issuer=t.get("issuer", "str", None),
            audience=t.get("audience", "str", None),
            leeway_s=t.get("leeway_s", "int", d.leeway_s, _at_least(0)),
            forward_claims=claims,
            oidc_issuer=oidc_issuer,
        )

    def api_key(self, t: _Table) -> ApiKeyConfig:
        d = ApiKeyConfig()
        keys: list[ApiKey] = []
        raw = t.data.get("keys", [])
        if not isinstance(raw, list):
            self.error(t.key("keys"), "must be a list of { name = ..., sha256 = ... } tables")
            raw = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            k = _Table(self, f"{t.key('keys')}[{i}]", item, ("name", "sha256"))
            if not isinstance(item, Mapping):
                continue
            for required in ("name", "sha256"):
                if required not in item:
                    self.error(k.key(required), "is required")
            name = k.get("name", "str", "", lambda n: None if n else "must not be empty")
            digest = k.get("sha256", "str", "", _hex64)
            if name and name in names:
                self.error(k.key("name"), f"{name!r} is used by another key")
            names.add(name)
            if name and digest:
                keys.append(ApiKey(name=name, sha256=digest.lower()))
        return ApiKeyConfig(
            header=t.get("header", "str", d.header, _token),
            query_param=t.get("query_param", "str", d.query_param),
            keys=tuple(keys),
        )

    def metrics(self, t: _Table | None) -> MetricsConfig:
        d = MetricsConfig()
        if t is None:
            return d
        return MetricsConfig(
            path=t.get("path", "str", d.path, _url_path),
            listen=t.get("listen", "str", d.listen, _endpoint),
        )

    def health(self, t: _Table | None) -> HealthConfig:
        d = HealthConfig()
        if t is None:
            return d
        return HealthConfig(
            health_path=t.get("health_path", "str", d.health_path, _url_path),
            liveness_path=t.get("liveness_path", "str", d.liveness_path, _url_path),
            readiness_path=t.get("readiness_path", "str", d.readiness_path, _url_path),
            listen=t.get("listen", "str", d.listen, _endpoint),
        )

    def logging(self, t: _Table | None) -> LoggingConfig:
        d = LoggingConfig()
        if t is None:
            return d

        def log_target(value: str) -> str | None:
            if value == "-":
                return None
            parent = os.path.dirname(self.file(value)) or "."
            return (
                None
                if os.path.isdir(parent)
                else f"is in a directory that does not exist ({parent})"
            )

        access_log = t.get("access_log", "str", d.access_log, log_target)
        if access_log != "-":
            access_log = self.file(access_log)
        ratio_ok = lambda r: None if 0.0 <= r <= 1.0 else "is not between 0 and 1"  # noqa: E731
        return LoggingConfig(
            format=t.get("format", "str", d.format, _one_of(("json", "text"))),
            access_log=access_log,
            level=t.get("level", "str", d.level, _one_of(LOG_LEVELS)),
            event_format=t.get("event_format", "str", d.event_format, _one_of(("text", "json"))),
            sample_ratio=t.get("sample_ratio", "float", d.sample_ratio, ratio_ok),
            skip_paths=t.get("skip_paths", "list[str]", d.skip_paths, _each(_url_path)),
        )

    def tracing(self, t: _Table) -> TracingConfig:
        d = TracingConfig()
        ratio_ok = lambda r: None if 0.0 <= r <= 1.0 else "is not between 0 and 1"  # noqa: E731
        header = t.get("response_header", "str", d.response_header)
        if header and not _TOKEN.match(header):
            self.error(t.key("response_header"), f"{header!r} is not a header name")
        return TracingConfig(
            exporter=t.get("exporter", "str", d.exporter, _one_of(("otlp", "console"))),
            endpoint=t.get("endpoint", "str", d.endpoint, _http_url),
            service_name=t.get(
                "service_name", "str", d.service_name, lambda n: None if n else "must not be empty"
            ),
            sample_ratio=t.get("sample_ratio", "float", d.sample_ratio, ratio_ok),
            response_header=header,
        )

    def plugin_refs(self, t: _Table, name: str) -> tuple[PluginRef, ...]:
        """A list of ``{ name, config }`` tables: each plugin made from its config now, so that
        its own errors are reported with the file's (and ``--check`` and reload see them)."""
        from . import plugins

        raw = t.data.get(name, [])
        if not isinstance(raw, list):
            self.error(t.key(name), "must be a list of { name = ..., config = {...} } tables")
            return ()
        refs: list[PluginRef] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            path = f"{t.key(name)}[{i}]"
            p = _Table(self, path, item, _PLUGIN_REF_KEYS)
            if not isinstance(item, Mapping):
                continue
            if "name" not in item:
                self.error(p.key("name"), "is required")
                continue
            plugin_name = p.get("name", "str", None, lambda n: None if n else "must not be empty")
            config = item.get("config", {})
            if not isinstance(config, Mapping):
                self.error(p.key("config"), f"{_show(config)} is not a table")
                continue
            if plugin_name is None:
                continue
            if plugin_name in seen or plugin_name in getattr(self, "route_globals", ()):
                self.error(
                    p.key("name"),
                    f"plugin {plugin_name!r} is already on this route (a plugin runs once per "
                    "route; [plugins] global ones run on every route)",
                )
                continue
            seen.add(plugin_name)
            instance, problems = plugins.load(plugin_name, config, path)
            self.errors.extend(problems)
            if instance is not None:
                refs.append(PluginRef(plugin_name, dict(config), instance))
        return tuple(refs)

    def admin(self, t: _Table | None) -> AdminConfig | None:
        if t is None:
            return None
        d = AdminConfig()
        if not t.has("token_sha256"):
            self.error(t.key("token_sha256"), "is required (the SHA-256 of the admin bearer token)")
        return AdminConfig(
            listen=t.get("listen", "str", d.listen, _endpoint),
            token_sha256=t.get("token_sha256", "str", d.token_sha256, _hex64).lower(),
        )

    # -- routes ------------------------------------------------------------------------------

    def routes(
        self, top: _Table, server: ServerConfig, rate: RateLimitConfig, auth: AuthConfig
    ) -> tuple[RouteConfig, ...]:
        raw = top.data.get("routes", _MISSING)
        if raw is _MISSING or raw == []:
            self.error("routes", "at least one [[routes]] entry is required")
            return ()
        if not isinstance(raw, list):
            self.error("routes", "must be an array of tables ([[routes]])")
            return ()
        # Names derived from paths are made unique ("root", "root_2"): only names written in the
        # config can be duplicates (reported by cross_checks).
        explicit = {
            item["name"]
            for item in raw
            if isinstance(item, Mapping) and isinstance(item.get("name"), str)
        }
        used: set[str] = set()
        routes = []
        for i, item in enumerate(raw):
            t = _Table(self, f"routes[{i}]", item, _ROUTE_KEYS)
            if not isinstance(item, Mapping):
                continue
            route = self.route(t, server, rate, auth)
            if route is None:
                continue
            if not item.get("name"):
                name, n = route.name, 2
                while name in explicit or name in used:
                    name, n = f"{route.name}_{n}", n + 1
                route = replace(route, name=name)
            used.add(route.name)
            routes.append(route)
            self.route_index.append(i)
        return tuple(routes)

    def route(
        self, t: _Table, server: ServerConfig, rate: RateLimitConfig, auth: AuthConfig
    ) -> RouteConfig | None:
        from .routing import PatternError, parse_pattern

        def pattern_check(value: str) -> str | None:
            try:
                parse_pattern(value)
            except PatternError as e:
                return f"is not a valid route path: {e}"
            return None

        if not t.has("path"):
            self.error(t.key("path"), "is required")
        path = t.get("path", "str", None, pattern_check)
        name = t.get("name", "str", None, lambda n: None if n else "must not be empty")
        methods = t.get("methods", "list[str]", None, _each(_token))
        if methods is not None:
            if not methods:
                self.error(t.key("methods"), "must list at least one method (leave it out for all)")
            methods = tuple(dict.fromkeys(m.upper() for m in methods))
        auth_list = t.get("auth", "list[str]", (), _each(_one_of(AUTH_METHODS)))
        for method in auth_list:
            if getattr(auth, method, None) is None:
                self.error(t.key("auth"), f"uses {method!r} but [auth.{method}] is not configured")
        scopes = t.get("scopes", "list[str]", ())
        if scopes and "jwt" not in auth_list and "oauth2" not in auth_list:
            self.error(
                t.key("scopes"),
                "needs 'jwt' or 'oauth2' in auth (scopes come from the token)",
            )
        mtls_t = t.table("mtls", _MTLS_POLICY_KEYS)
        mtls = self.mtls_policy(mtls_t) if mtls_t is not None else None
        if mtls is not None and "mtls" not in auth_list:
            self.error(t.key("mtls"), "is only used with 'mtls' in auth")
        rate_t = t.table("rate_limit", _ROUTE_RATE_KEYS)
        resource = t.get("resource", "str", None, _resource)
        upstream = None
        if resource is None:
            upstream = self.upstream(t.table("upstream", _UPSTREAM_KEYS), t.key("upstream"))
        elif t.has("upstream"):
            self.error(t.key("resource"), "a route has either resource or [routes.upstream]")
        self.route_globals = self.global_plugins
        plugin_refs = self.plugin_refs(t, "plugins") if t.has("plugins") else ()
        self.route_globals = set()
        grpc = t.get("grpc", "bool", False)
        if grpc and upstream is not None and upstream.protocol == "http/1.1":
            self.error(
                t.key("grpc"),
                "needs an HTTP/2 upstream: set upstream.protocol = 'h2c' (cleartext) or 'h2' "
                "(https); gRPC does not run over HTTP/1.1",
            )
        if grpc and resource is not None:
            self.error(t.key("grpc"), "is only used with [routes.upstream], not with resource")
        own_timeout = t.get("timeout_ms", "int", None, _positive) if grpc else None
        cache_t = t.table("cache", _ROUTE_CACHE_KEYS)
        route_cache = self.route_cache(cache_t) if cache_t is not None else None
        if route_cache is not None and resource is not None:
            self.error(t.key("cache"), "is only used with [routes.upstream], not with resource")
        if route_cache is not None and grpc:
            self.error(t.key("cache"), "gRPC calls (POST) are never cached: leave it out")
        from .transform import pattern_params

        params = pattern_params(path) if path is not None else ()
        request_t = t.table("request", _REQUEST_TRANSFORM_KEYS)
        request_rules = self.request_transform(request_t, params) if request_t is not None else None
        response_t = t.table("response", _RESPONSE_TRANSFORM_KEYS)
        response_rules = (
            self.response_transform(response_t, params) if response_t is not None else None
        )
        if (request_rules or response_rules) and resource is not None:
            self.error(
                t.key("request" if request_rules else "response"),
                "is only used with [routes.upstream]",
            )
        validate_t = t.table("validate", _VALIDATE_KEYS)
        validate = self.validate(validate_t) if validate_t is not None else None
        if validate is not None and (resource is not None or grpc):
            self.error(
                t.key("validate"), "is only used with an HTTP upstream (not resource, not grpc)"
            )
        graphql_t = t.table("graphql", _GRAPHQL_KEYS)
        graphql = self.graphql(graphql_t) if graphql_t is not None else None
        if graphql is not None and (resource is not None or grpc):
            self.error(
                t.key("graphql"), "is only used with an HTTP upstream (not resource, not grpc)"
            )
        compression_t = t.table("compression", _COMPRESSION_KEYS)
        compression = self.compression(compression_t) if compression_t is not None else None
        if compression is not None and resource is not None:
            self.error(t.key("compression"), "is only used with [routes.upstream]")
        if path is None or (upstream is None and (resource is None or t.has("upstream"))):
            return None
        return RouteConfig(
            name=name or _route_name(path),
            path=path,
            upstream=upstream,
            host=t.get("host", "str", None, _host),
            strip_path=t.get("strip_path", "bool", False),
            methods=methods,
            timeout_ms=t.get("timeout_ms", "int", server.timeout_ms, _positive),
            max_body_bytes=t.get("max_body_bytes", "int", server.max_body_bytes, _at_least(0)),
            retries=t.get("retries", "int", 0, _at_least(0)),
            auth=auth_list,
            scopes=scopes,
            mtls=mtls,
            cors=t.get("cors", "bool", True),
            rate_limit=self.rate_limit(rate_t, rate) if rate_t is not None else None,
            websocket=t.get("websocket", "bool", True),
            websocket_idle_timeout_ms=t.get("websocket_idle_timeout_ms", "int", 300000, _positive),
            plugins=plugin_refs,
            resource=resource,
            grpc=grpc,
            grpc_timeout_cap_ms=own_timeout,
            cache=route_cache,
            compression=compression,
            request=request_rules,
            response=response_rules,
            graphql=graphql,
            validate=validate,
        )

    def upstream(self, t: _Table | None, path: str) -> UpstreamConfig | None:
        if t is None:
            self.error(path, "is required: [routes.upstream] with urls = [...]")
            return None
        if not t.has("urls"):
            self.error(t.key("urls"), "is required (a list of http:// or https:// URLs)")

        def urls_check(urls: Sequence[str]) -> str | None:
            if not urls:
                return "must list at least one URL"
            for url in urls:
                try:
                    parse_url(url)
                except ValueError as e:
                    return f"has {url!r}: {e}"
            return None

        urls = t.get("urls", "list[str]", (), urls_check)
        errors_before = len(self.errors)
        strategy = t.get("strategy", "str", "round_robin", _one_of(STRATEGIES))
        strategy_ok = len(self.errors) == errors_before
        weights = t.get("weights", "list[int]", None, _each(_at_least(1)))
        if strategy == "weighted" and not t.has("weights"):
            self.error(t.key("weights"), "is required with strategy = 'weighted'")
        if weights is not None and urls and len(weights) != len(urls):
            self.error(
                t.key("weights"),
                f"has {len(weights)} entries but urls has {len(urls)}; give one weight per URL",
            )
        if weights is not None and strategy != "weighted" and strategy_ok:
            self.error(
                t.key("weights"), f"is only used with strategy = 'weighted', not {strategy!r}"
            )
        ca_file = t.get("ca_file", "str", None)
        if ca_file is not None:
            ca_file = self.file(ca_file)
            if not os.path.isfile(ca_file):
                self.error(t.key("ca_file"), f"{ca_file!r} does not exist")
        client_cert, client_key = self.upstream_client_cert(t)
        server_name = t.get("server_name", "str", "", _upstream_server_name)
        tls_only = client_cert or server_name
        if tls_only and urls and not any(parse_url(u)[0] == "https" for u in urls):
            used = "client_cert_file" if client_cert else "server_name"
            self.error(t.key(used), "is only used with https:// upstream URLs")
        protocol = t.get("protocol", "str", "http/1.1", _one_of(UPSTREAM_PROTOCOLS))
        if protocol != "http/1.1" and urls:
            scheme = "https" if protocol == "h2" else "http"
            wrong = [u for u in urls if parse_url(u)[0] != scheme]
            if wrong:
                how = "TLS with ALPN" if protocol == "h2" else "cleartext, prior knowledge"
                self.error(
                    t.key("protocol"),
                    f"{protocol!r} ({how}) needs {scheme}:// URLs, not {wrong[0]!r}",
                )
        hc_t = t.table("health_check", _HEALTH_CHECK_KEYS)
        cb_t = t.table("circuit_breaker", _BREAKER_KEYS)
        health_check = self.health_check(hc_t, protocol) if hc_t is not None else None
        if not urls:
            return None
        return UpstreamConfig(
            urls=urls,
            strategy=strategy,
            weights=weights,
            ca_file=ca_file,
            client_cert_file=client_cert,
            client_key_file=client_key,
            server_name=server_name.lower().rstrip("."),
            protocol=protocol,
            health_check=health_check,
            circuit_breaker=self.breaker(cb_t) if cb_t is not None else CircuitBreakerConfig(),
        )

    def upstream_client_cert(self, t: _Table) -> tuple[str | None, str | None]:
        """``client_cert_file`` and ``client_key_file`` (both or neither), read and matched."""
        from .tls import TlsFileError, load_certificate

        cert = t.get("client_cert_file", "str", None)
        key = t.get("client_key_file", "str", None)
        if (cert is None) != (key is None):
            missing, given = ("client_key_file", "client_cert_file")
            if cert is None:
                missing, given = given, missing
            self.error(t.key(missing), f"is required with {given}")
            return None, None
        if cert is None or key is None:
            return None, None
        pair = TlsCertificate(self.file(cert), self.file(key))
        try:
            load_certificate(pair, key_prefix="client_")
        except TlsFileError as e:
            self.error(t.key(e.key), str(e))
            return None, None
        return pair.cert_file, pair.key_file

    def route_cache(self, t: _Table) -> RouteCacheConfig:
        d = RouteCacheConfig()
        headers = t.get("key_headers", "list[str]", (), _each(_token))
        return RouteCacheConfig(
            default_ttl_s=t.get("default_ttl_s", "int", d.default_ttl_s, _at_least(0)),
            max_object_bytes=t.get("max_object_bytes", "int", d.max_object_bytes, _positive),
            key_headers=tuple(dict.fromkeys(h.lower() for h in headers)),
            stale_while_revalidate_s=t.get(
                "stale_while_revalidate_s", "int", d.stale_while_revalidate_s, _at_least(0)
            ),
            stale_if_error_s=t.get("stale_if_error_s", "int", d.stale_if_error_s, _at_least(0)),
            lock_timeout_ms=t.get("lock_timeout_ms", "int", d.lock_timeout_ms, _positive),
            store_set_cookie=t.get("store_set_cookie", "bool", d.store_set_cookie),
            max_variants=t.get("max_variants", "int", d.max_variants, _at_least(1)),
        )

    def templates(
        self, t: _Table, name: str, params: Sequence[str], query: bool = False
    ) -> tuple[tuple[str, str], ...]:
        """A table of ``Header-Name = "template"`` (``query``: of parameter names), every
        template compiled now."""
        from .transform import TemplateError, compile_template

        what = "name" if query else '"Header-Name"'
        raw = t.data.get(name, {})
        if not isinstance(raw, Mapping):
            self.error(t.key(name), f'must be a table of {what} = "value", not {_show(raw)}')
            return ()
        out = []
        for key, value in raw.items():
            where = t.key(f"{name}.{key}")
            if query and (not key or "&" in key or "=" in key):
                self.error(where, "is not a query parameter name")
                continue
            if not query and not _TOKEN.match(key):
                self.error(where, "is not a header name")
                continue
            if not isinstance(value, str):
                self.error(where, f"{_show(value)} must be a string (a template)")
                continue
            try:
                compile_template(value, params)
            except TemplateError as e:
                self.error(where, f"{_show(value)}: {e}")
                continue
            out.append((key, value))
        return tuple(out)

    def renames(self, t: _Table, name: str) -> tuple[tuple[str, str], ...]:
        raw = t.data.get(name, {})
        if not isinstance(raw, Mapping):
            self.error(t.key(name), f'must be a table of "Old-Name" = "New-Name", not {_show(raw)}')
            return ()
        out = []
        for old, new in raw.items():
            where = t.key(f"{name}.{old}")
            if not _TOKEN.match(old) or not isinstance(new, str) or not _TOKEN.match(new):
                self.error(where, f"{_show(new)}: both names must be header names")
                continue
            out.append((old, new))
        return tuple(out)

    def request_transform(self, t: _Table, params: Sequence[str]) -> RequestTransformConfig:
        from .transform import check_rewrite

        rewrite = None
        rewrite_t = t.table("rewrite_path", _REWRITE_KEYS)
        if rewrite_t is not None:
            pattern = rewrite_t.get("pattern", "str", None)
            replacement = rewrite_t.get("replacement", "str", None)
            for key, value in (("pattern", pattern), ("replacement", replacement)):
                if value is None and not rewrite_t.has(key):
                    self.error(rewrite_t.key(key), "is required")
            if pattern is not None and replacement is not None:
                problem = check_rewrite(pattern, replacement)
                if problem is not None:
                    self.error(t.key("rewrite_path"), problem)
                else:
                    rewrite = RewritePath(pattern, replacement)
        query_names = _each(
            lambda v: (
                None if v and "&" not in v and "=" not in v else "is not a query parameter name"
            )
        )
        set_query = self.templates(t, "set_query", params, query=True)
        return RequestTransformConfig(
            set_headers=self.templates(t, "set_headers", params),
            add_headers=self.templates(t, "add_headers", params),
            remove_headers=t.get("remove_headers", "list[str]", (), _each(_token)),
            rename_headers=self.renames(t, "rename_headers"),
            set_query=set_query,
            remove_query=t.get("remove_query", "list[str]", (), query_names),
            rewrite_path=rewrite,
            **self.json_rules(t),
        )

    def json_rules(self, t: _Table) -> dict[str, Any]:
        """``json_set``, ``json_remove``, ``json_rename`` (dotted paths) and ``max_json_bytes``."""
        from .json_transform import split_path

        def path_problem(text: str) -> str | None:
            try:
                split_path(text)
            except ValueError as e:
                return str(e)
            return None

        sets = t.data.get("json_set", {})
        if not isinstance(sets, Mapping):
            self.error(
                t.key("json_set"), f'must be a table of "dotted.path" = value, not {_show(sets)}'
            )
            sets = {}
        for path in sets:
            problem = path_problem(path)
            if problem is not None:
                self.error(t.key(f"json_set.{path}"), problem)
        renames = t.data.get("json_rename", {})
        if not isinstance(renames, Mapping):
            self.error(
                t.key("json_rename"),
                f'must be a table of "dotted.path" = "new_name", not {_show(renames)}',
            )
            renames = {}
        renamed = []
        for path, new in renames.items():
            problem = path_problem(path)
            if problem is None and (not isinstance(new, str) or not new or "." in new):
                problem = f"{_show(new)}: the new name must be one key (no dots)"
            if problem is not None:
                self.error(t.key(f"json_rename.{path}"), problem)
                continue
            renamed.append((path, new))
        return {
            "json_set": dict(sets),
            "json_remove": t.get("json_remove", "list[str]", (), _each(lambda p: path_problem(p))),
            "json_rename": tuple(renamed),
            "max_json_bytes": t.get("max_json_bytes", "int", 1048576, _positive),
        }

    def response_transform(self, t: _Table, params: Sequence[str]) -> ResponseTransformConfig:
        return ResponseTransformConfig(
            set_headers=self.templates(t, "set_headers", params),
            add_headers=self.templates(t, "add_headers", params),
            remove_headers=t.get("remove_headers", "list[str]", (), _each(_token)),
            rename_headers=self.renames(t, "rename_headers"),
            **self.json_rules(t),
        )

    def validate(self, t: _Table) -> ValidateConfig:
        from .validation import load_schema

        d = ValidateConfig()
        compiled: dict[str, Any] = {}
        paths: dict[str, Any] = {}
        for key in ("request_schema", "response_schema"):
            value = t.get(key, "str", None)
            if value is None:
                continue
            paths[key] = self.file(value)
            compiled[key] = self.load(load_schema, paths[key], t.key(key))
        if not paths:
            self.error(t.key("request_schema"), "is required (or response_schema): a schema file")
        methods = t.get("methods", "list[str]", d.methods, _each(_token))
        return ValidateConfig(
            request_schema=paths.get("request_schema"),
            methods=tuple(dict.fromkeys(m.upper() for m in methods)),
            max_bytes=t.get("max_bytes", "int", d.max_bytes, _positive),
            response_schema=paths.get("response_schema"),
            request_compiled=compiled.get("request_schema"),
            response_compiled=compiled.get("response_schema"),
        )

    def graphql(self, t: _Table) -> GraphQLConfig:
        from .graphql_policy import load_allowlist, load_schema_sdl

        d = GraphQLConfig()
        schema_file = t.get("schema_file", "str", None)
        schema = None
        if schema_file is not None:
            schema_file = self.file(schema_file)
            schema = self.load(load_schema_sdl, schema_file, t.key("schema_file"))
        mode = t.get(
            "persisted_queries", "str", d.persisted_queries, _one_of(PERSISTED_QUERY_MODES)
        )
        allowlist_file = t.get("allowlist_file", "str", None)
        allowlist = None
        if allowlist_file is not None:
            allowlist_file = self.file(allowlist_file)
            allowlist = self.load(load_allowlist, allowlist_file, t.key("allowlist_file"))
        if mode == "only" and allowlist_file is None:
            self.error(t.key("allowlist_file"), "is required with persisted_queries = 'only'")
        return GraphQLConfig(
            schema_file=schema_file,
            max_depth=t.get("max_depth", "int", d.max_depth, _positive),
            max_aliases=t.get("max_aliases", "int", d.max_aliases, _at_least(0)),
            max_root_fields=t.get("max_root_fields", "int", d.max_root_fields, _positive),
            max_tokens=t.get("max_tokens", "int", d.max_tokens, _positive),
            max_complexity=t.get("max_complexity", "int", d.max_complexity, _positive),
            introspection=t.get("introspection", "bool", d.introspection),
            persisted_queries=mode,
            allowlist_file=allowlist_file,
            max_batch=t.get("max_batch", "int", d.max_batch, _at_least(0)),
            schema=schema,
            allowlist=allowlist,
        )

    def compression(self, t: _Table) -> RouteCompressionConfig:
        d = RouteCompressionConfig()

        def media_ranges(values: Sequence[str]) -> str | None:
            for value in values:
                main, slash, sub = value.partition("/")
                if not slash or not _TOKEN.match(main) or not (sub == "*" or _TOKEN.match(sub)):
                    return f"has {value!r}: not a media type (type/subtype or type/*)"
            return None if values else "must list at least one media type"

        encodings = t.get(
            "encodings", "list[str]", d.encodings, _each(_one_of(COMPRESSION_ENCODINGS))
        )
        if not encodings:
            self.error(
                t.key("encodings"),
                "must list at least one of br, gzip (leave the table out for none)",
            )
        types = t.get("content_types", "list[str]", d.content_types, media_ranges)
        return RouteCompressionConfig(
            encodings=tuple(dict.fromkeys(encodings)),
            min_bytes=t.get("min_bytes", "int", d.min_bytes, _at_least(0)),
            content_types=tuple(v.lower() for v in types),
        )

    def cache(self, t: _Table) -> CacheConfig:
        d = CacheConfig()
        return CacheConfig(
            backend=t.get("backend", "str", d.backend, _one_of(CACHE_BACKENDS)),
            max_bytes=t.get("max_bytes", "int", d.max_bytes, _positive),
            redis_url=self.redis_url(t, d.redis_url),
            status_header=t.get("status_header", "bool", d.status_header),
        )

    def health_check(self, t: _Table, protocol: str = "http/1.1") -> HealthCheckConfig:
        d = HealthCheckConfig()
        status_ok = _each(lambda s: None if 100 <= s <= 599 else "is not an HTTP status")
        kind = t.get("kind", "str", d.kind, _one_of(HEALTH_CHECK_KINDS))
        if kind == "grpc":
            if protocol == "http/1.1":
                self.error(
                    t.key("kind"),
                    "'grpc' needs an HTTP/2 upstream (upstream.protocol = 'h2c' or 'h2')",
                )
            for key in ("path", "expected_status"):
                if t.has(key):
                    self.error(t.key(key), "is only used with kind = 'http'")
        elif t.get("service", "str", ""):
            self.error(t.key("service"), "is only used with kind = 'grpc'")
        return HealthCheckConfig(
            kind=kind,
            service=t.get("service", "str", d.service),
            path=t.get("path", "str", d.path, _url_path),
            interval_ms=t.get("interval_ms", "int", d.interval_ms, _positive),
            timeout_ms=t.get("timeout_ms", "int", d.timeout_ms, _positive),
            healthy_threshold=t.get("healthy_threshold", "int", d.healthy_threshold, _at_least(1)),
            unhealthy_threshold=t.get(
                "unhealthy_threshold", "int", d.unhealthy_threshold, _at_least(1)
            ),
            expected_status=t.get("expected_status", "list[int]", d.expected_status, status_ok),
        )

    def breaker(self, t: _Table) -> CircuitBreakerConfig:
        d = CircuitBreakerConfig()
        return CircuitBreakerConfig(
            failure_threshold=t.get("failure_threshold", "int", d.failure_threshold, _at_least(1)),
            recovery_timeout_ms=t.get(
                "recovery_timeout_ms", "int", d.recovery_timeout_ms, _positive
            ),
            half_open_requests=t.get(
                "half_open_requests", "int", d.half_open_requests, _at_least(1)
            ),
        )

    # -- whole-config checks -------------------------------------------------------------------

    def listener_checks(self, config: BaseGatewayConfig) -> None:
        """Every listener can be opened as configured: shareable by worker processes when
        ``workers > 1``, and no two on the same port."""
        seen: dict[tuple[str, int], str] = {}
        for purpose, description in config.listeners():
            key = config.listener_key(purpose)
            address = tcp_address(description)
            if config.server.workers > 1 and purpose != "admin" and address is None:
                self.error(
                    key,
                    f"{description!r} cannot be shared by {config.server.workers} worker "
                    "processes (server.workers > 1 needs tcp: or tcp6: endpoints, or ssl: "
                    "in server.listen; use workers = 1 with unix:, systemd: or haproxy:)",
                )
            if address is None or address[1] == 0:
                continue
            clash = seen.get(address) or seen.get(("", address[1]))
            if clash is None and address[0] == "":
                clash = next((k for a, k in seen.items() if a[1] == address[1]), None)
            if clash is not None:
                self.error(key, f"{description!r}: port {address[1]} is already used by {clash}")
            seen.setdefault(address, key)

    def cross_checks(self, config: BaseGatewayConfig) -> None:
        from .routing import PatternError, RouteRule, RouteTable

        self.listener_checks(config)
        seen: dict[str, int] = {}
        for i, route in zip(self.route_index, config.routes):
            if route.name in seen:
                self.error(
                    f"routes[{i}].name",
                    f"{route.name!r} is already used by routes[{seen[route.name]}]; "
                    "route names label metrics and must be unique",
                )
            seen.setdefault(route.name, i)
        internal = config.internal_paths()
        by_path: dict[str, str] = {}
        for key, path in internal.items():
            if path in by_path:
                self.error(key, f"{path!r} is already used by {by_path[path]}")
            by_path.setdefault(path, key)
        for i, route in zip(self.route_index, config.routes):
            if route.path.endswith("*"):
                # A wildcard only collides when its own prefix is reserved ("/metrics/*");
                # a broader one ("/*") simply does not see the reserved paths.
                prefix = route.path[:-2] or "/"
                for key, path in internal.items():
                    if path == prefix:
                        self.error(
                            f"routes[{i}].path",
                            f"{route.path!r} collides with {key} = {path!r}, which the gateway "
                            "answers itself; change one of them",
                        )
                continue
            try:
                table = RouteTable([RouteRule(pattern=route.path, value=i)])
            except PatternError:  # pragma: no cover - reported already
                continue
            for key, path in internal.items():
                if table.match(None, path.encode(), b"GET") is not None:
                    self.error(
                        f"routes[{i}].path",
                        f"{route.path!r} collides with {key} = {path!r}, which the gateway "
                        "answers itself; change one of them",
                    )


def _route_name(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", path.replace("*", "")).strip("_")
    return name or "root"


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "is not an IP address or CIDR network"
    return None


def _origin(value: str) -> str | None:
    if value == "*" or re.match(r"^https?://[^/\s]+$", value):
        return None
    return "is not an origin like 'https://app.example.com' (scheme://host[:port], no path) or '*'"


def _host(value: str) -> str | None:
    return None if re.match(r"^(\*\.)?[A-Za-z0-9.-]+$", value) else "is not a host name"


def _http_url(value: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", value) else "is not an http:// or https:// URL"


def _resource(value: str) -> str | None:
    """``"module:attribute"`` naming a twisted.web IResource (imported now, so that ``--check``
    sees a typo)."""
    from .resources import load_resource

    try:
        load_resource(value)
    except ValueError as e:
        return str(e)
    return None


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _sni_name(value: str) -> str | None:
    """A TLS server name: a DNS name, or ``*.`` and a DNS name (one label)."""
    name = value[2:] if value.startswith("*.") else value
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return "is not a DNS name (or *.name)"
    return None


def _upstream_server_name(value: str) -> str | None:
    """The name sent as SNI to an upstream: one DNS name (a wildcard is no name to send)."""
    if value.startswith("*."):
        return "is a wildcard; give the one name to send as SNI and verify"
    return None if _sni_name(value) is None else "is not a DNS name"


def _discovery_url(value: str) -> str | None:
    """An OIDC issuer: https (OpenID Connect Discovery requires it), or plain http only to a
    loopback address (development IdPs)."""
    return _introspection_url(value)


def _introspection_url(value: str) -> str | None:
    """https, or plain http only to a loopback address (development IdPs)."""
    if value.startswith("https://"):
        return _http_url(value)
    if value.startswith("http://"):
        try:
            host = parse_url(value)[1]
        except ValueError as e:
            return str(e)
        if host == "localhost" or _is_loopback(host):
            return None
        return "must be https:// (plain http:// only to a loopback address such as 127.0.0.1)"
    return "is not an https:// URL"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain_endpoint(value: str) -> str | None:
    """A structured listener's endpoint: its TLS comes from ``tls`` and its PROXY protocol
    from ``proxy_protocol``, not from ``ssl:`` or ``haproxy:`` strings."""
    kind = value.split(":", 1)[0].lower()
    if kind in ("ssl", "haproxy"):
        instead = "[server.listeners.tls]" if kind == "ssl" else "proxy_protocol = true"
        return f"is an {kind}: endpoint; use tcp:, unix: or systemd: with {instead}"
    return _endpoint(value)


def _redis_url(value: str) -> str | None:
    try:
        parse_redis_url(value)
    except ValueError as e:
        return str(e)
    return None


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _listen_host(value: str) -> str | None:
    """An address to listen on: an IP address or a host name (resolved when starting)."""
    if not value:
        return "must not be empty"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if re.match(r"^[0-9.]+$", value) or ":" in value:
        return "is not a valid IP address"
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return "is not an IP address or a host name"
    return None


def tcp_address(description: str) -> tuple[str, int] | None:
    """(interface, port) of a tcp:, tcp6: or ssl: endpoint string; None for other kinds
    (unix:, systemd:, haproxy:...), which worker processes cannot share."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if description.startswith("systemd:"):
        return None
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:
        return None
    port = getattr(endpoint, "_port", None)
    if port is None:
        return None
    return getattr(endpoint, "_interface", "") or "", port


_SYSTEMD = re.compile(r"^systemd:domain=(INET|INET6|UNIX):(index=\d+|name=[^:]+)$")


def _endpoint(value: str) -> str | None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if value.startswith("systemd:"):
        # Socket activation: the descriptor exists only once systemd starts the service, so
        # only the form is checked here.
        if _SYSTEMD.match(value):
            return None
        return "is not a systemd endpoint like 'systemd:domain=INET:index=0'"
    try:
        serverFromString(MemoryReactor(), value)
    except Exception as e:  # endpoint parsers raise many kinds of errors
        return f"is not a valid Twisted endpoint string: {e}"
    return None
