# -*- test-case-name: tests.unit.test_config_schema -*-
"""A JSON Schema (draft 2020-12) of the gateway's TOML config, for editors and CI.

``python -m avx_twisted.config_schema > docs/gateway.schema.json`` regenerates the committed copy;
``tests/unit/test_config_schema.py`` fails when it is stale or disagrees with the parser.

The schema is built from the definitions the parser itself uses, never from a second list:

- the keys of each table are the parser's key tuples (``_configparse._SERVER_KEYS``...), or the
  model's fields for the few tables whose keys the parser lists inline;
- each key's type and default come from the field of the same name on the frozen dataclass the
  parser builds (:mod:`avx_twisted._configmodel`), its enum from that module's constants;
- what the parser checks in code (bounds, required keys, patterns, rules across keys) and the
  descriptions are the tables below; the tests probe the parser to keep them true.

The schema uses only keywords that draft-07 validators also understand (Taplo's older releases
validate as draft-07): no ``$defs``/``$ref``, ``dependentSchemas`` or ``prefixItems``. A string the
schema constrains may also be a ``${env.NAME}`` reference, which the parser substitutes first.

Left to the parser, which the schema cannot see or say: files that must exist (and what is in
them: PEM certificates, unencrypted private keys matching their certificates, CA bundles),
Twisted endpoint strings, the details of route patterns, IP networks, unique route names, one
weight per URL, one certificate per SNI name, reserved paths, environment variables that must be
set, and a float such as ``8080.0`` written for an integer (JSON Schema counts it as one). Also
that a plugin is installed and accepts its ``config`` table (which the plugin itself checks: the
schema allows any keys there), that a plugin is listed once per route, counting ``[plugins]
global``, and that a route's ``resource`` imports and is a twisted.web IResource (the schema
checks its ``"module:attribute"`` form).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import keyword
import re
import sys
from typing import Any, Callable, Sequence

from . import _configmodel, _configparse
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

__all__ = ["build_schema", "dumps", "main", "write"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# ---------------------------------------------------------------------------------------------
# The shape of the document
# ---------------------------------------------------------------------------------------------

#: The two lists of ``{ name, config }`` tables: the same PluginRef, the same rules.
_PLUGIN_LISTS = ("routes[].plugins", "plugins.global")

#: Every table of the TOML document: its key path ("[]" marks an array of tables), the name of
#: the parser's tuple of its keys (None: the parser lists them inline, and they are exactly the
#: model's fields but those marked ``metadata={"internal": True}``) and the dataclass its values
#: land on. A key that is a Python keyword is the field of that name with a trailing underscore
#: (``[plugins] global``: ``PluginsConfig.global_``).
#:
#: Where the TOML shape differs from the dataclass, the field's annotation says how:
#: ``tuple[Model, ...]`` is an array of tables (``[[routes]]``, ``auth.api_key.keys``), a
#: ``Model`` field a table (``[routes.upstream]``), ``tuple[tuple[str, str], ...]`` a table of
#: string values (``auth.jwt.forward_claims``: claim = "Header-Name") and ``dict`` a table of any
#: keys and values (a plugin's ``config``, which the plugin checks). A route's ``rate_limit`` is a
#: RateLimitConfig of which TOML gives only ``_ROUTE_RATE_KEYS``; the rest, and every key left
#: out, comes from ``[rate_limiting]``.
_TABLES: dict[str, tuple[str | None, type]] = {
    "": ("_TOP_KEYS", BaseGatewayConfig),
    "server": ("_SERVER_KEYS", ServerConfig),
    "server.listeners[]": ("_LISTENER_KEYS", ListenerConfig),
    "server.http2": ("_HTTP2_KEYS", Http2Config),
    "server.listeners[].tls": ("_LISTENER_TLS_KEYS", ListenerTlsConfig),
    "server.listeners[].tls.certificates[]": ("_SNI_CERT_KEYS", TlsCertificate),
    "routes[].mtls": ("_MTLS_POLICY_KEYS", MtlsPolicy),
    "auth.mtls": ("_MTLS_KEYS", MtlsConfig),
    "auth.oauth2": ("_OAUTH2_KEYS", OAuth2Config),
    "routes[]": ("_ROUTE_KEYS", RouteConfig),
    "routes[].upstream": ("_UPSTREAM_KEYS", UpstreamConfig),
    "routes[].upstream.health_check": ("_HEALTH_CHECK_KEYS", HealthCheckConfig),
    "routes[].upstream.circuit_breaker": ("_BREAKER_KEYS", CircuitBreakerConfig),
    "routes[].rate_limit": ("_ROUTE_RATE_KEYS", RateLimitConfig),
    "routes[].cache": ("_ROUTE_CACHE_KEYS", RouteCacheConfig),
    "routes[].compression": ("_COMPRESSION_KEYS", RouteCompressionConfig),
    "routes[].request": ("_REQUEST_TRANSFORM_KEYS", RequestTransformConfig),
    "routes[].request.rewrite_path": ("_REWRITE_KEYS", RewritePath),
    "routes[].response": ("_RESPONSE_TRANSFORM_KEYS", ResponseTransformConfig),
    "routes[].graphql": ("_GRAPHQL_KEYS", GraphQLConfig),
    "routes[].validate": ("_VALIDATE_KEYS", ValidateConfig),
    "cache": ("_CACHE_KEYS", CacheConfig),
    "middleware": (None, MiddlewareConfig),
    "rate_limiting": ("_RATE_KEYS", RateLimitConfig),
    "cors": ("_CORS_KEYS", CorsConfig),
    "auth": (None, AuthConfig),
    "auth.jwt": ("_JWT_KEYS", JwtConfig),
    "auth.api_key": ("_API_KEY_KEYS", ApiKeyConfig),
    "auth.api_key.keys[]": (None, ApiKey),
    "metrics": ("_METRICS_KEYS", MetricsConfig),
    "health": ("_HEALTH_KEYS", HealthConfig),
    "logging": ("_LOGGING_KEYS", LoggingConfig),
    "admin": (None, AdminConfig),
    "tracing": ("_TRACING_KEYS", TracingConfig),
    "plugins": ("_PLUGINS_KEYS", PluginsConfig),
    **{f"{path}[]": ("_PLUGIN_REF_KEYS", PluginRef) for path in _PLUGIN_LISTS},
}

#: Keys the parser requires, by table.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "": ("routes",),
    "server.listeners[]": ("endpoint",),
    "server.listeners[].tls": ("cert_file", "key_file"),
    "server.listeners[].tls.certificates[]": ("server_name", "cert_file", "key_file"),
    "routes[]": ("path",),
    "routes[].upstream": ("urls",),
    "routes[].request.rewrite_path": ("pattern", "replacement"),
    "auth.api_key.keys[]": ("name", "sha256"),
    "auth.oauth2": ("introspection_url", "client_id"),
    "admin": ("token_sha256",),
    **{f"{path}[]": ("name",) for path in _PLUGIN_LISTS},
}

#: Keys of which a table has exactly one, by table (``oneOf`` there): a route is answered by its
#: upstream or by a twisted.web resource; the introspection client's secret is given or read
#: from the environment. None of them has a default.
_ONE_OF: dict[str, tuple[str, ...]] = {
    "routes[]": ("upstream", "resource"),
    "auth.oauth2": ("client_secret", "client_secret_env"),
}

#: Keys whose default is another key's value (a whole table: each of its keys), so the schema
#: names that key instead of giving a value.
_INHERITED: dict[str, str] = {
    "routes[].timeout_ms": "server.timeout_ms",
    "routes[].max_body_bytes": "server.max_body_bytes",
    "routes[].rate_limit": "rate_limiting",
}

#: Keys whose model default only means "not given" and cannot be written (no ``default``).
_UNWRITTEN_DEFAULTS = frozenset(
    {"server.listen", "metrics.listen", "health.listen", "routes[].upstream.server_name"}
)

_URL_PATH = r"^/[^?# ]*$"  # _configparse._url_path
_HTTP_URL = r"^https?://[^/\s]+"  # _configparse._http_url
_IDENTIFIERS = r"[^\W\d]\w*(\.[^\W\d]\w*)*"  # dotted Python names
_RESOURCE = rf"^{_IDENTIFIERS}:{_IDENTIFIERS}$"  # resources.load_resource
# _configparse._sni_name: DNS labels (1-63 characters, no "-" at either end), optionally "*."
# first; trailing dots are ignored. Its 253 characters leave out the "*.". An upstream's
# server_name (_configparse._upstream_server_name) is never a wildcard.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SNI_NAME = {
    "pattern": rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.*$",
    "if": {"pattern": r"^\*\."},
    "then": {"maxLength": 255},
    "else": {"maxLength": 253},
}
_DNS_NAME = {"pattern": rf"^{_LABEL}(\.{_LABEL})*\.*$", "maxLength": 253}


def _any_case(word: str) -> str:
    """A pattern matching ``word`` in any case (ECMA-262 regexes, JSON Schema's, have no
    ``(?i)``)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# _configparse._introspection_url: https, or plain http to localhost or a loopback address.
_LOOPBACK = rf"({_any_case('localhost')}|127(\.[0-9]{{1,3}}){{3}}|\[[0:]*:0*1\])"
_INTROSPECTION_URL = rf"^(https://[^/\s]+|http://{_LOOPBACK}([:/]|$))"
# _configparse._plain_endpoint: TLS and the PROXY protocol come from their own keys.
_WRAPPED_ENDPOINT = rf"^({_any_case('ssl')}|{_any_case('haproxy')}):"


def _subject_pattern() -> str:
    """tls.normalise_subject: attribute=value pairs (RFC 4514) separated by unescaped "," or
    "+", blank ones ignored, at least one; a backslash escapes the character after it (a last,
    lone one is dropped). The attribute is what comes before the first "=", escaped or not, and
    may not be blank."""
    name_char = r"([^\\=,+]|\\[^=])"
    first = r"([^\s\\=,+]|\\[^=])"
    name = rf"\s*({first}{name_char}*\\?|\\)"
    ava = rf"{name}=([^\\,+]|\\[\s\S])*"
    piece = rf"({ava}|\s*)"
    return rf"^({piece}[,+])*{ava}([,+]{piece})*\\?$"


def _no_mixed_algorithms() -> dict[str, Any]:
    hmac, public = list(HMAC_ALGORITHMS), list(PUBLIC_KEY_ALGORITHMS)
    return {"not": {"allOf": [{"contains": {"enum": hmac}}, {"contains": {"enum": public}}]}}


#: What the parser checks beyond the type, by key path, as schema keywords (merged into the
#: generated ones; ``items`` into the items' schema).
#: The token rule without its anchors, to build patterns of tokens.
_TOKEN_BODY = _configparse._TOKEN.pattern[1:-1]

_RULES: dict[str, dict[str, Any]] = {
    "routes": {"minItems": 1},
    "server.host": {"minLength": 1},
    "server.port": {"minimum": 0, "maximum": 65535},
    "server.workers": {"minimum": 1},
    "server.timeout_ms": {"minimum": 1},
    "server.connect_timeout_ms": {"minimum": 1},
    "server.listen": {"minItems": 1, "items": {"minLength": 1}},
    "server.max_body_bytes": {"minimum": 0},
    "server.drain_timeout_ms": {"minimum": 0},
    "server.client_header_timeout_ms": {"minimum": 1},
    "server.client_body_timeout_ms": {"minimum": 1},
    "server.keepalive_timeout_ms": {"minimum": 1},
    "server.server_header": {"pattern": r"^([!-~]([ -~]*[!-~])?)?$"},
    "server.shutdown_delay_ms": {"minimum": 0},
    "server.listeners[].endpoint": {"minLength": 1, "not": {"pattern": _WRAPPED_ENDPOINT}},
    "server.http2.max_concurrent_streams": {"minimum": 1},
    "server.http2.max_header_list_bytes": {"minimum": 1024},
    "server.http2.stream_idle_timeout_ms": {"minimum": 1},
    "server.http2.idle_timeout_ms": {"minimum": 1},
    "server.listeners[].tls.min_version": {"enum": list(TLS_VERSIONS)},
    "server.listeners[].tls.reload_interval_s": {"minimum": 0},
    "server.listeners[].tls.client_auth": {"enum": list(CLIENT_AUTH_MODES)},
    "server.listeners[].tls.certificates[].server_name": _SNI_NAME,
    "routes[].name": {"minLength": 1},
    "routes[].path": {"pattern": "^/"},
    "routes[].host": {"pattern": r"^(\*\.)?[A-Za-z0-9.-]+$"},
    "routes[].methods": {"minItems": 1, "items": {"pattern": _configparse._TOKEN.pattern}},
    "routes[].timeout_ms": {"minimum": 1},
    "routes[].max_body_bytes": {"minimum": 0},
    "routes[].retries": {"minimum": 0},
    "routes[].auth": {"items": {"enum": list(AUTH_METHODS)}},
    "routes[].websocket_idle_timeout_ms": {"minimum": 1},
    "routes[].cache.default_ttl_s": {"minimum": 0},
    "routes[].cache.max_object_bytes": {"minimum": 1},
    "routes[].cache.stale_while_revalidate_s": {"minimum": 0},
    "routes[].cache.stale_if_error_s": {"minimum": 0},
    "routes[].cache.lock_timeout_ms": {"minimum": 1},
    "routes[].cache.max_variants": {"minimum": 1},
    "routes[].cache.key_headers": {"items": {"pattern": _configparse._TOKEN.pattern}},
    "cache.max_bytes": {"minimum": 1},
    "routes[].compression.encodings": {
        "items": {"enum": list(COMPRESSION_ENCODINGS)},
        "minItems": 1,
    },
    "routes[].compression.min_bytes": {"minimum": 0},
    "routes[].request.max_json_bytes": {"minimum": 1},
    "routes[].graphql.persisted_queries": {"enum": list(PERSISTED_QUERY_MODES)},
    "routes[].graphql.max_depth": {"minimum": 1},
    "routes[].graphql.max_aliases": {"minimum": 0},
    "routes[].graphql.max_root_fields": {"minimum": 1},
    "routes[].graphql.max_tokens": {"minimum": 1},
    "routes[].graphql.max_complexity": {"minimum": 1},
    "routes[].graphql.max_batch": {"minimum": 0},
    "routes[].validate.max_bytes": {"minimum": 1},
    "routes[].validate.methods": {"items": {"pattern": _configparse._TOKEN.pattern}},
    "routes[].response.max_json_bytes": {"minimum": 1},
    "routes[].compression.content_types": {
        "items": {"pattern": f"^{_TOKEN_BODY}/({_TOKEN_BODY}|\\*)$"},
        "minItems": 1,
    },
    "routes[].resource": {"pattern": _RESOURCE},
    "routes[].mtls.allowed_subjects": {"items": {"pattern": _subject_pattern()}},
    "routes[].mtls.allowed_sans": {"items": {"minLength": 1}},
    **{f"{path}[].name": {"minLength": 1} for path in _PLUGIN_LISTS},
    "routes[].upstream.urls": {"minItems": 1, "items": {"pattern": "^https?://"}},
    "routes[].upstream.strategy": {"enum": list(STRATEGIES)},
    "routes[].upstream.protocol": {"enum": list(UPSTREAM_PROTOCOLS)},
    "routes[].upstream.health_check.kind": {"enum": list(HEALTH_CHECK_KINDS)},
    "routes[].upstream.weights": {"items": {"minimum": 1}},
    "routes[].upstream.server_name": _DNS_NAME,
    "routes[].upstream.health_check.path": {"pattern": _URL_PATH},
    "routes[].upstream.health_check.interval_ms": {"minimum": 1},
    "routes[].upstream.health_check.timeout_ms": {"minimum": 1},
    "routes[].upstream.health_check.healthy_threshold": {"minimum": 1},
    "routes[].upstream.health_check.unhealthy_threshold": {"minimum": 1},
    "routes[].upstream.health_check.expected_status": {"items": {"minimum": 100, "maximum": 599}},
    "routes[].upstream.circuit_breaker.failure_threshold": {"minimum": 1},
    "routes[].upstream.circuit_breaker.recovery_timeout_ms": {"minimum": 1},
    "routes[].upstream.circuit_breaker.half_open_requests": {"minimum": 1},
    "rate_limiting.requests_per_second": {"exclusiveMinimum": 0},
    "rate_limiting.burst_size": {"minimum": 1},
    "rate_limiting.key": {"enum": list(RATE_LIMIT_KEYS)},
    "rate_limiting.backend": {"enum": ["memory", "redis"]},
    "rate_limiting.redis_url": {"pattern": "^(redis|rediss|unix)://"},
    "cache.redis_url": {"pattern": "^(redis|rediss|unix)://"},
    "cache.backend": {"enum": list(CACHE_BACKENDS)},
    "rate_limiting.on_backend_error": {"enum": ["allow", "deny"]},
    "cors.allowed_origins": {"items": {"pattern": r"^(\*|https?://[^/\s]+)$"}},
    "cors.allowed_methods": {"items": {"pattern": _configparse._TOKEN.pattern}},
    "cors.allowed_headers": {"items": {"pattern": _configparse._TOKEN.pattern}},
    "cors.expose_headers": {"items": {"pattern": _configparse._TOKEN.pattern}},
    "cors.max_age_s": {"minimum": 0},
    "auth.jwt.algorithms": {
        "minItems": 1,
        "items": {"enum": list(HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS)},
        **_no_mixed_algorithms(),
    },
    "auth.jwt.jwks_url": {"pattern": _HTTP_URL},
    "auth.jwt.leeway_s": {"minimum": 0},
    "auth.jwt.forward_claims": {"additionalProperties": {"pattern": _configparse._TOKEN.pattern}},
    "auth.jwt.oidc_issuer": {"pattern": _INTROSPECTION_URL},  # _configparse._discovery_url
    "auth.mtls.allowed_subjects": {"items": {"pattern": _subject_pattern()}},
    "auth.mtls.allowed_sans": {"items": {"minLength": 1}},
    "auth.oauth2.introspection_url": {"pattern": _INTROSPECTION_URL},
    "auth.oauth2.client_id": {"minLength": 1},
    "auth.oauth2.client_secret": {"minLength": 1},
    "auth.oauth2.client_auth": {"enum": ["basic", "post"]},
    "auth.oauth2.forward_claims": {
        "additionalProperties": {"pattern": _configparse._TOKEN.pattern}
    },
    "auth.oauth2.cache_ttl_s": {"minimum": 0},
    "auth.oauth2.negative_cache_ttl_s": {"minimum": 0},
    "auth.oauth2.timeout_ms": {"minimum": 1},
    "auth.api_key.header": {"pattern": _configparse._TOKEN.pattern},
    "auth.api_key.keys[].name": {"minLength": 1},
    "auth.api_key.keys[].sha256": {"pattern": _configparse._HEX64.pattern},
    "metrics.path": {"pattern": _URL_PATH},
    "metrics.listen": {"minLength": 1},
    "health.health_path": {"pattern": _URL_PATH},
    "health.liveness_path": {"pattern": _URL_PATH},
    "health.readiness_path": {"pattern": _URL_PATH},
    "health.listen": {"minLength": 1},
    "logging.format": {"enum": ["json", "text"]},
    "logging.level": {"enum": list(LOG_LEVELS)},
    "logging.event_format": {"enum": ["text", "json"]},
    "logging.sample_ratio": {"minimum": 0, "maximum": 1},
    "logging.skip_paths": {"items": {"pattern": _URL_PATH}},
    "admin.listen": {"minLength": 1},
    "admin.token_sha256": {"pattern": _configparse._HEX64.pattern},
    "tracing.exporter": {"enum": ["otlp", "console"]},
    "tracing.endpoint": {"pattern": _HTTP_URL},
    "tracing.service_name": {"minLength": 1},
    "tracing.sample_ratio": {"minimum": 0, "maximum": 1},
    # "" (no header) or a header name.
    "tracing.response_header": {"pattern": f"^({_TOKEN_BODY})?$"},
}


def _when(key: str, value: Any) -> dict[str, Any]:
    return {"required": [key], "properties": {key: {"const": value}}}


def _auth_sections() -> list[dict[str, Any]]:
    """A route's auth method needs its [auth.<method>] table."""
    rules = []
    for method in AUTH_METHODS:
        uses = {"required": ["auth"], "properties": {"auth": {"contains": {"const": method}}}}
        rules.append(
            {
                "if": {"required": ["routes"], "properties": {"routes": {"contains": uses}}},
                "then": {"required": ["auth"], "properties": {"auth": {"required": [method]}}},
            }
        )
    return rules


def _jwt_key_material() -> list[dict[str, Any]]:
    """HMAC algorithms need a secret (and no OIDC issuer), public-key ones a key file, a JWKS
    URL or an OIDC issuer whose discovery document names the JWKS; never both of the last two."""
    hmac = {"properties": {"algorithms": {"contains": {"enum": list(HMAC_ALGORITHMS)}}}}
    if any(a in HMAC_ALGORITHMS for a in JwtConfig().algorithms):
        hmac = {"anyOf": [{"not": {"required": ["algorithms"]}}, hmac]}
    public = ("public_key_file", "jwks_url", "oidc_issuer")
    return [
        {
            "if": hmac,
            "then": {
                "anyOf": [{"required": ["secret"]}, {"required": ["secret_env"]}],
                "not": {"required": ["oidc_issuer"]},
            },
            "else": {"anyOf": [{"required": [key]} for key in public]},
        },
        {"not": {"required": ["oidc_issuer", "jwks_url"]}},
    ]


def _env_or(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` for a string, or a ``${env.NAME}`` reference when the parser substitutes them
    (the rules across keys see the value before substitution)."""
    return {"anyOf": [schema, {"pattern": _ENV_REFERENCE}]}


def _route_rules() -> list[dict[str, Any]]:
    """Scopes come from a token (jwt or oauth2); a route's mtls lists need mtls in its auth."""
    tokens = {"contains": {"enum": ["jwt", "oauth2"]}}
    http2 = {"required": ["protocol"], "properties": {"protocol": {"enum": ["h2", "h2c"]}}}
    return [
        {
            "if": {"required": ["scopes"], "properties": {"scopes": {"minItems": 1}}},
            "then": {"required": ["auth"], "properties": {"auth": tokens}},
        },
        {
            "if": {"required": ["mtls"]},
            "then": {"required": ["auth"], "properties": {"auth": {"contains": {"const": "mtls"}}}},
        },
        {
            "if": _when("grpc", True),
            "then": {"required": ["upstream"], "properties": {"upstream": http2}},
        },
    ]


def _upstream_rules() -> list[dict[str, Any]]:
    """weighted with weights; a client certificate with its key; TLS settings with an https
    URL."""
    https = {"properties": {"urls": {"contains": _env_or({"pattern": "^https://"})}}}
    only_https = {"properties": {"urls": {"items": _env_or({"pattern": "^https://"})}}}
    only_http = {"properties": {"urls": {"items": _env_or({"pattern": "^http://"})}}}
    http2 = {"required": ["protocol"], "properties": {"protocol": {"enum": ["h2", "h2c"]}}}
    grpc_check = {
        "required": ["health_check"],
        "properties": {"health_check": _when("kind", "grpc")},
    }
    return [
        {"if": _when("protocol", "h2"), "then": only_https},
        {"if": _when("protocol", "h2c"), "then": only_http},
        {"if": grpc_check, "then": http2},
        {"if": _when("strategy", "weighted"), "then": {"required": ["weights"]}},
        {"if": {"required": ["weights"]}, "then": _when("strategy", "weighted")},
        {"if": {"required": ["client_cert_file"]}, "then": {"required": ["client_key_file"]}},
        {"if": {"required": ["client_key_file"]}, "then": {"required": ["client_cert_file"]}},
        {
            "if": {"anyOf": [{"required": ["client_cert_file"]}, {"required": ["server_name"]}]},
            "then": https,
        },
    ]


def _health_check_rules() -> list[dict[str, Any]]:
    """A gRPC check asks a service, an HTTP one a path for statuses."""
    return [
        {
            "if": _when("kind", "grpc"),
            "then": {"not": {"anyOf": [{"required": ["path"]}, {"required": ["expected_status"]}]}},
            "else": {"not": {"required": ["service"], "properties": {"service": {"minLength": 1}}}},
        }
    ]


def _listener_tls_rules() -> list[dict[str, Any]]:
    """Asking for client certificates needs the CA bundle they must chain to."""
    asking = [mode for mode in CLIENT_AUTH_MODES if mode != "none"]
    return [
        {
            "if": {"required": ["client_auth"], "properties": {"client_auth": {"enum": asking}}},
            "then": {"required": ["client_ca_file"]},
        }
    ]


#: Rules across the keys of one table (``allOf`` there).
_CONDITIONS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "": _auth_sections,
    "server.listeners[].tls": _listener_tls_rules,
    "routes[]": _route_rules,
    "routes[].upstream": _upstream_rules,
    "routes[].validate": lambda: [
        {"anyOf": [{"required": ["request_schema"]}, {"required": ["response_schema"]}]}
    ],
    "routes[].graphql": lambda: [
        {"if": _when("persisted_queries", "only"), "then": {"required": ["allowlist_file"]}}
    ],
    "routes[].upstream.health_check": _health_check_rules,
    "cors": lambda: [
        {
            "if": _when("allow_credentials", True),
            "then": {"properties": {"allowed_origins": {"not": {"contains": {"const": "*"}}}}},
        }
    ],
    "auth.jwt": _jwt_key_material,
}

#: One line per key for readers of the TOML file (a ``#:`` comment on the model field is used
#: for keys not listed here; a table's falls back to its model's docstring).
_DESCRIPTIONS: dict[str, str] = {
    "": "avx-gateway configuration (docs/configuration.md).",
    "auth": "[auth]: the authenticators routes may use; each is off while absent.",
    "server.host": "Interface to listen on (with port) when listen is not given.",
    "server.port": "TCP port to listen on when listen is not given (0: any free port).",
    "server.workers": "Processes sharing the listening port.",
    "server.timeout_ms": "Deadline of a whole upstream exchange, for routes without their own.",
    "server.connect_timeout_ms": "Time allowed to open a connection to an upstream target.",
    "server.listen": "Twisted server endpoint strings to listen on, replacing host and port.",
    "server.trusted_proxies": "IP addresses or CIDR networks whose X-Forwarded-For is believed.",
    "server.preserve_host": "Send the client's Host upstream (false: the target's own host).",
    "server.max_body_bytes": "Largest request body (413 above it), for routes without their own.",
    "server.drain_timeout_ms": "On SIGTERM, how long requests in flight get to finish.",
    "server.client_header_timeout_ms": "Time a client has to send a request head (then 408).",
    "server.client_body_timeout_ms": "Time a client has to send a request body (then 408).",
    "server.keepalive_timeout_ms": "An idle kept-alive client connection is closed after this.",
    "server.server_header": 'Server field on every answer; "" passes the upstream\'s, adds none.',
    "server.listeners": "Structured listeners, opened beside listen; with any, host/port is not.",
    "server.listeners[]": "One listener: an endpoint string, optionally TLS and PROXY protocol.",
    "server.listeners[].endpoint": "Endpoint string: tcp:, tcp6:, unix:, systemd: (no ssl:).",
    "server.listeners[].http2": "HTTP/2 too: h2 by ALPN on TLS, h2c with prior knowledge.",
    "server.http2": "[server.http2]: limits of HTTP/2 connections.",
    "server.listeners[].proxy_protocol": "Require a PROXY protocol v1/v2 header (not haproxy:).",
    "server.listeners[].tls": "TLS termination on this listener; absent: cleartext.",
    "server.listeners[].tls.cert_file": "PEM certificate chain for clients matching no SNI name.",
    "server.listeners[].tls.key_file": "Its unencrypted PEM private key (may be cert_file).",
    "server.listeners[].tls.certificates": "More certificates, by SNI name, as tables.",
    "server.listeners[].tls.certificates[]": "A certificate for one SNI name: server_name, files.",
    "server.listeners[].tls.certificates[].server_name": "SNI name it serves (*.name: one label).",
    "server.listeners[].tls.certificates[].cert_file": "PEM certificate chain for server_name.",
    "server.listeners[].tls.certificates[].key_file": "Its unencrypted PEM private key.",
    "server.listeners[].tls.min_version": "Oldest TLS version accepted.",
    "server.listeners[].tls.client_auth": "Client certificates: not asked, optional or required.",
    "server.listeners[].tls.client_ca_file": "PEM CA bundle client certificates must chain to.",
    "server.listeners[].tls.reload_interval_s": "Seconds between checks of the files (0: never).",
    "routes": "The routes, one [[routes]] table each; at least one.",
    "routes[]": "One route: the requests it serves, and its upstream or resource answering them.",
    "routes[].name": "Label in metrics and logs, unique; default derived from path (api_users).",
    "routes[].path": "Paths served: exact /a/b, prefix wildcard /a/*, parameters /a/{id}/b.",
    "routes[].host": "Serve only this Host (or *.domain: its subdomains); default any host.",
    "routes[].strip_path": "Drop the pattern's fixed segments from the path before forwarding.",
    "routes[].methods": "HTTP methods served (GET also allows HEAD); default all.",
    "routes[].timeout_ms": "This route's deadline for the whole upstream exchange.",
    "routes[].max_body_bytes": "This route's largest request body (413 above it).",
    "routes[].retries": "Extra tries on targets not tried yet, for idempotent methods only.",
    "routes[].auth": "Authenticators of which any one must pass, each with its [auth.*] table.",
    "routes[].scopes": "Scopes the token must all hold (needs jwt or oauth2 in auth).",
    "routes[].mtls": "This route's [auth.mtls] lists, replacing both (needs mtls in auth).",
    "routes[].mtls.allowed_subjects": "Accepted subjects (RFC 4514: CN=billing,O=Acme).",
    "routes[].mtls.allowed_sans": "Accepted subject alternative names (URI, DNS, email).",
    "routes[].cors": "Apply [cors] to this route when middleware.enable_cors is on.",
    "routes[].rate_limit": "This route's own token bucket, instead of [rate_limiting]'s.",
    "routes[].upstream": "The route's targets and how one is picked; not with resource.",
    "routes[].cache": "RFC 9111 shared cache on this route (docs/caching.md); absent: none.",
    "routes[].compression": "gzip/brotli of responses by Accept-Encoding; absent: off.",
    "routes[].request": "Changes to the request before it is forwarded (docs/policies.md).",
    "routes[].graphql": "GraphQL over HTTP checked at the edge (docs/policies.md).",
    "routes[].validate": "JSON Schema validation of request bodies (docs/policies.md).",
    "routes[].validate.request_schema": "Schema file (relative to the config); 400 when not met.",
    "routes[].validate.methods": "Methods whose bodies are validated.",
    "routes[].validate.response_schema": "Schema file: responses checked, logged and counted.",
    "routes[].graphql.max_depth": "Deepest selection (fragments expanded).",
    "routes[].graphql.max_aliases": "Aliased fields in one operation.",
    "routes[].graphql.max_root_fields": "Fields at the operation's root.",
    "routes[].graphql.max_tokens": "Tokens in the query text.",
    "routes[].graphql.allowlist_file": "A JSON allowlist of sha256 hex to query (for only).",
    "routes[].response": "Changes to the upstream response's header fields.",
    "routes[].request.rewrite_path": "A regex on the forwarded path: pattern, replacement.",
    "routes[].request.rewrite_path.pattern": "Regex on the forwarded path (after strip_path).",
    "routes[].request.rewrite_path.replacement": "Its replacement: \\1 or \\g<name> groups.",
    "routes[].request.set_headers": "Header = template: replace (templates: docs/policies.md).",
    "routes[].request.add_headers": "Header = template: append.",
    "routes[].request.remove_headers": "Headers removed before forwarding.",
    "routes[].request.rename_headers": "Old-Name = New-Name.",
    "routes[].request.set_query": "Query parameter = template: replaced or appended.",
    "routes[].request.remove_query": "Query parameters removed (the rest as sent).",
    "routes[].response.set_headers": "Header = template: replace on the upstream's response.",
    "routes[].response.add_headers": "Header = template: append.",
    "routes[].response.remove_headers": "Headers removed from the upstream's response.",
    "routes[].response.rename_headers": "Old-Name = New-Name.",
    **{
        f"routes[].{side}.{key}": text
        for side in ("request", "response")
        for key, text in (
            ("json_set", '"dotted.path" = value, set in JSON bodies (after remove, rename).'),
            ("json_remove", "Dotted paths removed from JSON bodies (first)."),
            ("json_rename", '"dotted.path" = "new_key", renamed in JSON bodies.'),
        )
    },
    "routes[].request.max_json_bytes": "A JSON request body transform buffers this; 413 above.",
    "routes[].response.max_json_bytes": "Larger JSON responses pass unchanged (counted).",
    "routes[].compression.content_types": "Media types compressed (type/subtype or type/*).",
    "routes[].cache.max_object_bytes": "Larger responses pass through uncached.",
    "routes[].cache.stale_while_revalidate_s": "Serve stale this long while one refresh runs.",
    "routes[].cache.stale_if_error_s": "Serve stale this long when the upstream fails.",
    "routes[].cache.store_set_cookie": "Store responses carrying Set-Cookie (default: never).",
    "cache.redis_url": 'The Redis server, with backend = "redis".',
    "cache": "[cache]: the store behind every [routes.cache].",
    "routes[].resource": 'twisted.web IResource answering instead of an upstream: "module:attr".',
    "routes[].plugins": "This route's plugins, in order, after [plugins] global (none again).",
    "routes[].websocket_idle_timeout_ms": "A WebSocket tunnel idle this long is closed.",
    "routes[].upstream.urls": "Targets: http:// or https:// URLs (https verified), with base path.",
    "routes[].upstream.strategy": "How a target is picked for each request.",
    "routes[].upstream.weights": 'Share of each target, one per URL; with strategy = "weighted".',
    "routes[].upstream.ca_file": "PEM CA file trusted for https targets; default system store.",
    "routes[].upstream.client_cert_file": "PEM client certificate for https targets (mTLS).",
    "routes[].upstream.client_key_file": "Its unencrypted PEM private key, with client_cert_file.",
    "routes[].upstream.server_name": "SNI and name the targets' certificates carry; default host.",
    "routes[].upstream.health_check": "Active health checks of each target; absent: none.",
    "routes[].upstream.circuit_breaker": "One breaker per target; absent: these defaults.",
    "routes[].upstream.health_check.path": "Path requested on each target.",
    "routes[].upstream.health_check.interval_ms": "Time between checks.",
    "routes[].upstream.health_check.timeout_ms": "A check taking longer fails.",
    "routes[].upstream.health_check.healthy_threshold": "Successes in a row to bring it back.",
    "routes[].upstream.health_check.unhealthy_threshold": "Failures in a row to take it out.",
    "routes[].upstream.health_check.expected_status": "Statuses that count as success.",
    "routes[].upstream.circuit_breaker.failure_threshold": "Failures in a row that open it.",
    "routes[].upstream.circuit_breaker.recovery_timeout_ms": "Open to half-open after this long.",
    "routes[].upstream.circuit_breaker.half_open_requests": "Trial requests while half-open.",
    "middleware.enable_cors": "Apply [cors] to routes with cors = true.",
    "middleware.enable_rate_limiting": "Rate limiting on ([rate_limiting], routes' rate_limit).",
    "middleware.enable_logging": "Write the access log ([logging]).",
    "middleware.enable_metrics": "Serve Prometheus metrics at metrics.path.",
    "rate_limiting": "[rate_limiting]: the token bucket (with middleware.enable_rate_limiting).",
    "rate_limiting.requests_per_second": "Refill rate; fractions allowed (0.5: one every 2 s).",
    "rate_limiting.burst_size": "Requests allowed at once (requests_per_second alone: its ceil).",
    "rate_limiting.key": "What gets a bucket: client IP, all, route, API key, JWT sub, consumer.",
    "rate_limiting.backend": "Where buckets live: this process, or Redis (shared by replicas).",
    "rate_limiting.redis_url": 'The Redis server, with backend = "redis".',
    "rate_limiting.on_backend_error": "What to do with a request while Redis is unreachable.",
    "cors.allowed_origins": 'Origins allowed to call (scheme://host[:port]) or "*".',
    "cors.allowed_methods": "Methods answered in preflights.",
    "cors.allowed_headers": "Request headers allowed in preflights.",
    "cors.expose_headers": "Response headers scripts may read.",
    "cors.allow_credentials": 'Allow cookies and credentials (not with "*" origins).',
    "cors.max_age_s": "How long browsers may cache a preflight, in seconds.",
    "auth.jwt": 'Bearer JWT verification, for routes with auth = ["jwt"].',
    "auth.api_key": 'API keys, for routes with auth = ["api_key"].',
    "auth.mtls": 'Verified client certificates, for routes with auth = ["mtls"].',
    "auth.oauth2": 'Token introspection (RFC 7662), for routes with auth = ["oauth2"].',
    "auth.jwt.algorithms": "Accepted signature algorithms: all HS*, or all public-key ones.",
    "auth.jwt.secret": "HMAC secret (HS* algorithms need secret or secret_env).",
    "auth.jwt.secret_env": "Environment variable holding the HMAC secret; set when loading.",
    "auth.jwt.public_key_file": "PEM public key for RS*, PS*, ES* and EdDSA.",
    "auth.jwt.jwks_url": "JWKS document of the public keys, fetched and refreshed.",
    "auth.jwt.oidc_issuer": "OIDC issuer (https; http only to loopback) naming the JWKS.",
    "auth.jwt.issuer": "Required iss claim; default not checked.",
    "auth.jwt.audience": "Required aud claim; default not checked.",
    "auth.jwt.leeway_s": "Clock skew allowed on exp, nbf and iat, in seconds.",
    "auth.jwt.forward_claims": 'Claims sent upstream as headers: claim = "Header-Name".',
    "auth.api_key.header": "Request header carrying the key.",
    "auth.api_key.query_param": 'Query parameter also carrying the key ("": none).',
    "auth.api_key.keys": "Accepted keys, as { name, sha256 } tables.",
    "auth.api_key.keys[].name": "Who the key belongs to (logs, rate limiting by api_key).",
    "auth.api_key.keys[].sha256": 'SHA-256 hex digest of the key: printf %s "$KEY" | sha256sum.',
    "auth.mtls.allowed_subjects": "Accepted subjects (RFC 4514: CN=billing,O=Acme).",
    "auth.mtls.allowed_sans": "Accepted SANs (URI, DNS, email); both lists empty: any verified.",
    "auth.mtls.forward_client_cert": "Send X-Forwarded-Client-Cert upstream (clients' dropped).",
    "auth.oauth2.introspection_url": "The endpoint: https (verified); http only to loopback.",
    "auth.oauth2.client_id": "The gateway's client id at the authorization server.",
    "auth.oauth2.client_secret": "Its client secret (or client_secret_env, not both).",
    "auth.oauth2.client_secret_env": "Environment variable holding the secret; set when loading.",
    "auth.oauth2.client_auth": "How the secret is sent: HTTP Basic, or in the POST body.",
    "auth.oauth2.issuer": "Required introspected iss; default not checked.",
    "auth.oauth2.audience": "Required in the introspected aud; default not checked.",
    "auth.oauth2.forward_claims": 'Claims sent upstream as headers: claim = "Header-Name".',
    "auth.oauth2.cache_ttl_s": "An active answer is reused this long, never past exp; 0: never.",
    "auth.oauth2.negative_cache_ttl_s": "An inactive answer is reused this long; 0: never.",
    "auth.oauth2.timeout_ms": "Deadline of one introspection request.",
    "auth.oauth2.ca_file": "PEM CA file trusted for the endpoint; default system store.",
    "metrics": "[metrics]: the Prometheus endpoint.",
    "metrics.path": "Where metrics are served (while middleware.enable_metrics).",
    "health.health_path": "JSON health report: status, version, each route's targets.",
    "health.liveness_path": "200 while the process serves requests.",
    "health.readiness_path": "200 once listening with a loaded config, 503 while stopping.",
    "logging": "[logging]: the access log and the gateway's own events.",
    "logging.format": "Access log line format.",
    "logging.access_log": 'Where access log lines go: "-" (stdout) or a file.',
    "logging.level": "Lowest level of the gateway's own log events.",
    "admin.listen": "Twisted endpoint string of the admin API (keep it private).",
    "admin.token_sha256": "SHA-256 hex digest of the admin bearer token.",
    "tracing": "[tracing]: OpenTelemetry traces of requests; off while absent.",
    "tracing.exporter": "Where spans go: OTLP/HTTP to endpoint, or stderr (a JSON line each).",
    "tracing.endpoint": 'The collector\'s OTLP/HTTP traces URL, with exporter = "otlp".',
    "tracing.service_name": "service.name of the spans.",
    "tracing.sample_ratio": "Share of new traces kept; a sampled incoming traceparent is followed.",
    "tracing.response_header": 'Response header carrying the trace id ("": none).',
    "plugins": "[plugins]: plugins run on every route, before the route's own.",
    "plugins.global": "Plugins of every route, in order; a route may not list one of them again.",
    **{
        key: text
        for path in _PLUGIN_LISTS
        for key, text in {
            f"{path}[]": "One plugin, as a { name, config } table.",
            f"{path}[].name": "The installed plugin's name (its avx_gateway.plugins entry point).",
            f"{path}[].config": "The plugin's settings: any keys, checked by the plugin on load.",
        }.items()
    },
}

#: A string holding an environment reference, which the parser substitutes before checking.
_ENV_REFERENCE = r"\$\{env\.[^}]*\}"

# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

_SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_NO_DEFAULT = object()


def _table_keys(path: str) -> tuple[tuple[str, ...], type]:
    name, model = _TABLES[path]
    if name is None:
        fields = dataclasses.fields(model)
        return tuple(f.name for f in fields if not f.metadata.get("internal")), model
    return tuple(getattr(_configparse, name)), model


def _field_of(key: str, fields: dict[str, dataclasses.Field[Any]]) -> dataclasses.Field[Any] | None:
    """The field a TOML key lands on: its namesake, or ``key_`` for a Python keyword."""
    if key in fields:
        return fields[key]
    return fields.get(f"{key}_") if keyword.iskeyword(key) else None


def _kind(annotation: Any) -> tuple[str, Any]:
    """How a field annotation is written in TOML: ("scalar", json type), ("list", json type),
    ("table", model), ("tables", model), ("map", json type) or ("any", None): a table of any
    keys and values."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = re.sub(r"\s*\|\s*None$", "", str(text).strip())
    if text in _SCALARS:
        return "scalar", _SCALARS[text]
    if re.match(r"^dict(\[.*\])?$", text):
        return "any", None
    inner = re.match(r"^tuple\[(.+), \.\.\.\]$", text)
    if inner:
        item = inner.group(1)
        if item in _SCALARS:
            return "list", _SCALARS[item]
        if item == "tuple[str, str]":
            return "map", "string"
        model = getattr(_configmodel, item, None)
        if dataclasses.is_dataclass(model):
            return "tables", model
    model = getattr(_configmodel, text, None)
    if dataclasses.is_dataclass(model):
        return "table", model
    raise TypeError(f"config_schema: no TOML shape for the annotation {annotation!r}")


def _field_comments(model: type) -> dict[str, str]:
    """The ``#:`` comments above the fields of ``model``, one line each."""
    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):  # pragma: no cover - sources not shipped
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"^([A-Za-z_]\w*)\s*:", text)
        if field and pending:
            found[field.group(1)] = " ".join(pending)
        pending = []
    return found


def _rst(text: str) -> str:
    return text.replace("``", "`")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _inherited_from(path: str) -> str | None:
    """The key whose value ``path`` defaults to, if any."""
    if path in _INHERITED:
        return _INHERITED[path]
    table, _, key = path.rpartition(".")
    if table in _INHERITED:
        return f"{_INHERITED[table]}.{key}"
    return None


class _Builder:
    def __init__(self) -> None:
        self.env = hasattr(_configparse.Parser, "substitute_env")
        self.comments: dict[type, dict[str, str]] = {}

    def table(self, path: str) -> dict[str, Any]:
        keys, model = _table_keys(path)
        fields = {f.name: f for f in dataclasses.fields(model)}
        properties = {}
        for key in keys:
            field = _field_of(key, fields)
            if field is None:
                raise LookupError(
                    f"config_schema: the parser accepts {_join(path, key)} but "
                    f"{model.__name__} has no field {key!r}"
                )
            properties[key] = self.key(_join(path, key), field, model)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if path in _REQUIRED:
            schema["required"] = list(_REQUIRED[path])
        if path in _ONE_OF:
            schema["oneOf"] = [{"required": [key]} for key in _ONE_OF[path]]
        if path in _CONDITIONS:
            schema["allOf"] = _CONDITIONS[path]()
        return schema

    def description(self, path: str, comment: str | None, nested: type | None) -> str:
        """The key's line from the table, else its ``#:`` comment, else its model's docstring;
        with the key it defaults to, if any."""
        source = _inherited_from(path)
        text = _DESCRIPTIONS.get(path, comment)
        if text is None and source is not None and path not in _INHERITED:
            text = _DESCRIPTIONS.get(source)
        if text is None and nested is not None:
            text = (nested.__doc__ or "").strip().splitlines()[0]
        text = _rst(text or "")
        if source is not None and nested is None:
            text = f"{text} Default: {source}.".strip()
        return text

    def key(self, path: str, field: dataclasses.Field[Any], model: type) -> dict[str, Any]:
        kind, arg = _kind(field.type)
        if model not in self.comments:
            self.comments[model] = _field_comments(model)
        comment = self.comments[model].get(field.name)
        nested = arg if kind in ("table", "tables") else None
        schema: dict[str, Any] = {"description": self.description(path, comment, nested)}
        if kind == "table":
            schema.update(self.table(path))
        elif kind == "tables":
            item = {"description": self.description(f"{path}[]", None, arg)}
            item.update(self.table(f"{path}[]"))
            schema.update({"type": "array", "items": item})
        elif kind == "map":
            schema.update({"type": "object", "additionalProperties": {"type": arg}})
        elif kind == "any":
            schema["type"] = "object"
        elif kind == "list":
            schema.update({"type": "array", "items": {"type": arg}})
        else:
            schema["type"] = arg
        default = self.default(path, field, kind)
        if default is not _NO_DEFAULT:
            schema["default"] = default
        for word, value in self.rules(path).items():
            if isinstance(value, dict) and isinstance(schema.get(word), dict):
                schema[word] = {**schema[word], **value}
            else:
                schema[word] = value
        if self.env:
            for part in (schema, schema.get("items"), schema.get("additionalProperties")):
                if isinstance(part, dict) and part.get("type") == "string":
                    _allow_env_reference(part)
        return schema

    def rules(self, path: str) -> dict[str, Any]:
        """The key's rules; a key of an inherited table has those of the key it defaults to."""
        source = _inherited_from(path)
        if path not in _RULES and source is not None and path not in _INHERITED:
            return _RULES.get(source, {})
        return _RULES.get(path, {})

    def default(self, path: str, field: dataclasses.Field[Any], kind: str) -> Any:
        table, _, key = path.rpartition(".")
        if (
            kind in ("table", "tables")
            or key in _REQUIRED.get(table, ())
            or key in _ONE_OF.get(table, ())
            or path in _UNWRITTEN_DEFAULTS
            or _inherited_from(path) is not None
        ):
            return _NO_DEFAULT
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            return _NO_DEFAULT
        if value is None:
            return _NO_DEFAULT
        if kind == "map":
            return dict(value)
        return list(value) if isinstance(value, tuple) else value


def _allow_env_reference(schema: dict[str, Any]) -> None:
    """A constrained string may instead be written as a ``${env.NAME}`` reference."""
    words = [w for w in ("enum", "const", "pattern") if w in schema]
    if not words:
        return
    constraint = {w: schema.pop(w) for w in words}
    schema["anyOf"] = [constraint, {"pattern": _ENV_REFERENCE}]


def build_schema() -> dict[str, Any]:
    """The JSON Schema of the gateway's TOML config, from the parser's own definitions."""
    schema: dict[str, Any] = {"$schema": DRAFT, "title": "avx-gateway configuration"}
    builder = _Builder()
    schema["description"] = _DESCRIPTIONS[""]
    schema.update(builder.table(""))
    return schema


def dumps(schema: dict[str, Any] | None = None) -> str:
    """The schema as the committed file holds it: indent 2, a trailing newline."""
    return json.dumps(build_schema() if schema is None else schema, indent=2) + "\n"


def write(path: str) -> None:
    """Write the schema to ``path``."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m avx_twisted.config_schema [PATH]``: the schema to PATH, or to stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.stderr.write("usage: python -m avx_twisted.config_schema [PATH]\n")
        return 2
    if args:
        write(args[0])
    else:
        sys.stdout.write(dumps())
    return 0


if __name__ == "__main__":
    sys.exit(main())
