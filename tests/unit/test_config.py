"""Tests for avx_twisted.config: the typed configuration, its defaults and its error reports."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import is_dataclass
from typing import Any

import twisted.test
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.config import (
    AdminConfig,
    ApiKey,
    ApiKeyConfig,
    AuthConfig,
    CircuitBreakerConfig,
    ConfigError,
    CorsConfig,
    GatewayConfig,
    HealthCheckConfig,
    HealthConfig,
    JwtConfig,
    LoggingConfig,
    MetricsConfig,
    MiddlewareConfig,
    RateLimitConfig,
    ServerConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

REPO = FilePath(__file__).parent().parent().parent()
BRIEF_EXAMPLE = REPO.child("config").child("gateway.toml").path
#: A certificate and its key in one PEM file, shipped with Twisted's own tests.
SERVER_PEM = FilePath(twisted.test.__file__).sibling("server.pem").path
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
UPSTREAM_URL = "http://127.0.0.1:9001"

# The public config contract (shared/config-contract.toml), kept here so the test is
# self-contained. It names files that only exist on a real host, so {DIR} is replaced with a temp
# directory holding those files, admin.token_sha256 gets a real digest and the route uses the
# "weighted" strategy its weights are meant for. Everything else is verbatim.
CONTRACT = """
[server]
host = "0.0.0.0"
port = 8080
workers = 4
timeout_ms = 30000
connect_timeout_ms = 5000
listen = ["tcp:8080:interface=0.0.0.0", "ssl:8443:privateKey={DIR}/key.pem:certKey={DIR}/cert.pem"]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1/32"]
preserve_host = true
max_body_bytes = 10485760
drain_timeout_ms = 10000

[[routes]]
name = "users"
path = "/api/users/*"
host = "api.example.com"
strip_path = true
methods = ["GET", "POST", "PUT", "DELETE"]
timeout_ms = 5000
max_body_bytes = 1048576
retries = 2
auth = ["jwt", "api_key"]
scopes = ["users:read"]
cors = true
rate_limit = { requests_per_second = 10, burst_size = 20, key = "ip" }

[routes.upstream]
urls = ["http://service1:8001", "http://service2:8002"]
strategy = "weighted"
weights = [3, 1]
ca_file = "{DIR}/internal-ca.pem"

[routes.upstream.health_check]
path = "/health"
interval_ms = 5000
timeout_ms = 1000
healthy_threshold = 2
unhealthy_threshold = 3
expected_status = [200]

[routes.upstream.circuit_breaker]
failure_threshold = 5
recovery_timeout_ms = 30000
half_open_requests = 1

[middleware]
enable_cors = true
enable_rate_limiting = true
enable_logging = true
enable_metrics = true

[rate_limiting]
requests_per_second = 100
burst_size = 200
key = "ip"
backend = "memory"
redis_url = "redis://127.0.0.1:6379/0"
on_backend_error = "allow"

[cors]
allowed_origins = ["https://app.example.com"]
allowed_methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
allowed_headers = ["Authorization", "Content-Type", "X-API-Key"]
expose_headers = ["X-Request-ID"]
allow_credentials = false
max_age_s = 600

[auth.jwt]
algorithms = ["HS256"]
secret = "change-me"
public_key_file = "{DIR}/jwt.pem"
jwks_url = "https://idp.example.com/.well-known/jwks.json"
issuer = "https://idp.example.com/"
audience = "avx"
leeway_s = 30
forward_claims = { sub = "X-User-Id" }

[auth.api_key]
header = "X-API-Key"
query_param = ""
keys = [{ name = "ci", sha256 = "{DIGEST}" }]

[metrics]
path = "/metrics"

[health]
health_path = "/health"
liveness_path = "/healthz"
readiness_path = "/ready"

[logging]
format = "json"
access_log = "-"
level = "info"

[admin]
listen = "tcp:9901:interface=127.0.0.1"
token_sha256 = "{DIGEST}"
"""


# --- helpers ----------------------------------------------------------------------------------


def route(path: str = "/api/*", **keys: Any) -> dict[str, Any]:
    """One ``[[routes]]`` table: ``path`` to a single upstream, plus ``keys``."""
    entry: dict[str, Any] = {"path": path, "upstream": {"urls": [UPSTREAM_URL]}}
    entry.update(keys)
    return entry


def upstream_route(**upstream: Any) -> dict[str, Any]:
    """A route whose ``[routes.upstream]`` has ``upstream`` on top of a single URL."""
    return route(upstream={"urls": [UPSTREAM_URL], **upstream})


def config(*routes: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A config mapping: the given routes (one default route if none) and top-level sections."""
    data: dict[str, Any] = {"routes": list(routes) or [route()]}
    data.update(sections)
    return data


def temp_dir(case: SynchronousTestCase) -> str:
    """A fresh directory removed after the test (outside the repo, whatever the runner)."""
    path = tempfile.mkdtemp(prefix="avx-config-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def set_env(case: SynchronousTestCase, name: str, value: str | None) -> None:
    """Set (or with None, unset) an environment variable for the duration of one test."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

    def restore() -> None:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

    case.addCleanup(restore)


class ConfigTestCase(SynchronousTestCase):
    """Base with helpers to load a config mapping and to assert on its errors."""

    def load(self, data: dict[str, Any]) -> GatewayConfig:
        return GatewayConfig.from_dict(data)

    def errors(self, data: dict[str, Any]) -> list[str]:
        """The error lines of an invalid config."""
        return self.assertRaises(ConfigError, GatewayConfig.from_dict, data).errors

    def assertError(self, data: dict[str, Any], expected: str) -> None:
        """``data`` is invalid with exactly one error, the line ``expected``."""
        self.assertEqual(self.errors(data), [expected])

    def assertErrorStartsWith(self, data: dict[str, Any], prefix: str) -> None:
        """``data`` is invalid with exactly one error, which starts with ``prefix``."""
        errors = self.errors(data)
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith(prefix), errors[0])


# --- the brief's example ----------------------------------------------------------------------


class BriefExampleTests(SynchronousTestCase):
    """config/gateway.toml, the brief's "Configuration Format" example, loads unchanged."""

    def setUp(self) -> None:
        self.config = GatewayConfig.load(BRIEF_EXAMPLE)

    def test_server_values(self) -> None:
        server = self.config.server
        self.assertEqual(
            (server.host, server.port, server.workers, server.timeout_ms),
            ("0.0.0.0", 8080, 4, 30000),
        )

    def test_server_listens_on_host_and_port(self) -> None:
        self.assertEqual(self.config.server.endpoints, ("tcp:8080:interface=0.0.0.0",))

    def test_one_route_with_its_values(self) -> None:
        (r,) = self.config.routes
        self.assertEqual(r.path, "/api/users/*")
        self.assertTrue(r.strip_path)
        self.assertEqual(r.methods, ("GET", "POST", "PUT", "DELETE"))

    def test_route_name_is_derived_from_its_path(self) -> None:
        self.assertEqual(self.config.routes[0].name, "api_users")

    def test_route_timeout_comes_from_server(self) -> None:
        self.assertEqual(self.config.routes[0].timeout_ms, 30000)

    def test_upstream_values(self) -> None:
        upstream = self.config.routes[0].upstream
        self.assertEqual(upstream.urls, ("http://service1:8001", "http://service2:8002"))
        self.assertEqual(upstream.strategy, "round_robin")
        self.assertIsNone(upstream.weights)

    def test_middleware_values(self) -> None:
        self.assertEqual(
            self.config.middleware,
            MiddlewareConfig(
                enable_cors=True,
                enable_rate_limiting=True,
                enable_logging=True,
                enable_metrics=True,
            ),
        )

    def test_rate_limiting_values_and_defaults(self) -> None:
        rate = self.config.rate_limiting
        self.assertEqual((rate.requests_per_second, rate.burst_size), (100.0, 200))
        self.assertIsInstance(rate.requests_per_second, float)
        self.assertEqual((rate.key, rate.backend), ("ip", "memory"))

    def test_unset_sections_get_defaults(self) -> None:
        c = self.config
        self.assertEqual(c.server.connect_timeout_ms, 5000)
        self.assertEqual(c.auth, AuthConfig())
        self.assertEqual(c.cors, CorsConfig())
        self.assertIsNone(c.admin)

    def test_source_is_the_file(self) -> None:
        self.assertEqual(self.config.source, BRIEF_EXAMPLE)


# --- the full contract ------------------------------------------------------------------------


class ContractTests(SynchronousTestCase):
    """Every key of the public config contract is accepted and lands on the typed object."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        for name in ("key.pem", "cert.pem", "internal-ca.pem", "jwt.pem"):
            shutil.copyfile(SERVER_PEM, os.path.join(self.dir, name))
        text = CONTRACT.replace("{DIR}", self.dir).replace("{DIGEST}", DIGEST)
        self.path = write(self.dir, "gateway.toml", text)
        self.config = GatewayConfig.load(self.path)

        with open(self.path, "rb") as f:
            self.raw = tomllib.load(f)

    def assertLands(self, raw: dict[str, Any], obj: Any, where: str) -> None:
        """Each key of ``raw`` is a field of ``obj`` holding the same value (lists as tuples)."""
        for key, value in raw.items():
            here = f"{where}.{key}" if where else key
            self.assertTrue(hasattr(obj, key), f"{here}: no field on {type(obj).__name__}")
            attr = getattr(obj, key)
            if isinstance(value, dict) and is_dataclass(attr):
                self.assertLands(value, attr, here)
            elif isinstance(value, dict):
                self.assertEqual(attr, tuple(value.items()), here)
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                self.assertEqual(len(attr), len(value), here)
                for i, (item, typed) in enumerate(zip(value, attr)):
                    self.assertLands(item, typed, f"{here}[{i}]")
            elif isinstance(value, list):
                self.assertEqual(attr, tuple(value), here)
            else:
                self.assertEqual(attr, value, here)

    def test_every_key_lands_on_the_typed_object_with_its_value(self) -> None:
        self.assertLands(self.raw, self.config, "")

    def test_contract_covers_every_top_level_section(self) -> None:
        self.assertEqual(
            set(self.raw),
            {
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
            },
        )

    def test_listen_replaces_host_and_port(self) -> None:
        self.assertEqual(
            self.config.server.endpoints,
            (
                "tcp:8080:interface=0.0.0.0",
                f"ssl:8443:privateKey={self.dir}/key.pem:certKey={self.dir}/cert.pem",
            ),
        )

    def test_route_rate_limit_takes_unset_fields_from_rate_limiting(self) -> None:
        self.assertEqual(
            self.config.routes[0].rate_limit,
            RateLimitConfig(
                requests_per_second=10.0,
                burst_size=20,
                key="ip",
                backend="memory",
                redis_url="redis://127.0.0.1:6379/0",
                on_backend_error="allow",
            ),
        )

    def test_requests_per_second_is_a_float(self) -> None:
        self.assertIsInstance(self.config.rate_limiting.requests_per_second, float)
        self.assertIsInstance(self.config.routes[0].rate_limit.requests_per_second, float)

    def test_api_keys_are_typed(self) -> None:
        self.assertEqual(self.config.auth.api_key.keys, (ApiKey(name="ci", sha256=DIGEST),))

    def test_forward_claims_are_claim_header_pairs(self) -> None:
        self.assertEqual(self.config.auth.jwt.forward_claims, (("sub", "X-User-Id"),))

    def test_health_check_and_breaker_are_typed(self) -> None:
        upstream = self.config.routes[0].upstream
        self.assertEqual(upstream.health_check, HealthCheckConfig())
        self.assertEqual(upstream.circuit_breaker, CircuitBreakerConfig())

    def test_admin_is_on(self) -> None:
        self.assertEqual(
            self.config.admin,
            AdminConfig(listen="tcp:9901:interface=127.0.0.1", token_sha256=DIGEST),
        )


# --- defaults ---------------------------------------------------------------------------------


class DefaultsTests(ConfigTestCase):
    """A minimal config (one route: path and upstream urls) gets the documented defaults.

    The expected values are spelled out rather than taken from the dataclasses, so that a changed
    default fails here and is noticed (and docs/configuration.md updated).
    """

    def setUp(self) -> None:
        self.config = self.load(config(route("/api/*")))

    def test_server(self) -> None:
        self.assertEqual(
            self.config.server,
            ServerConfig(
                host="0.0.0.0",
                port=8080,
                workers=1,
                timeout_ms=30000,
                connect_timeout_ms=5000,
                listen=(),
                trusted_proxies=(),
                preserve_host=True,
                max_body_bytes=10485760,
                drain_timeout_ms=10000,
            ),
        )

    def test_route(self) -> None:
        r = self.config.routes[0]
        self.assertEqual(r.name, "api")
        self.assertIsNone(r.host)
        self.assertFalse(r.strip_path)
        self.assertIsNone(r.methods)
        self.assertEqual((r.timeout_ms, r.max_body_bytes, r.retries), (30000, 10485760, 0))
        self.assertEqual((r.auth, r.scopes), ((), ()))
        self.assertTrue(r.cors)
        self.assertIsNone(r.rate_limit)

    def test_upstream(self) -> None:
        upstream = self.config.routes[0].upstream
        self.assertEqual(upstream.strategy, "round_robin")
        self.assertIsNone(upstream.weights)
        self.assertIsNone(upstream.ca_file)
        self.assertIsNone(upstream.health_check)

    def test_circuit_breaker(self) -> None:
        self.assertEqual(
            self.config.routes[0].upstream.circuit_breaker,
            CircuitBreakerConfig(
                failure_threshold=5, recovery_timeout_ms=30000, half_open_requests=1
            ),
        )

    def test_health_check_table_without_keys(self) -> None:
        c = self.load(config(upstream_route(health_check={})))
        self.assertEqual(
            c.routes[0].upstream.health_check,
            HealthCheckConfig(
                path="/health",
                interval_ms=5000,
                timeout_ms=1000,
                healthy_threshold=2,
                unhealthy_threshold=3,
                expected_status=(200,),
            ),
        )

    def test_middleware(self) -> None:
        self.assertEqual(
            self.config.middleware,
            MiddlewareConfig(
                enable_cors=False,
                enable_rate_limiting=False,
                enable_logging=True,
                enable_metrics=True,
            ),
        )

    def test_rate_limiting(self) -> None:
        self.assertEqual(
            self.config.rate_limiting,
            RateLimitConfig(
                requests_per_second=100.0,
                burst_size=200,
                key="ip",
                backend="memory",
                redis_url="redis://127.0.0.1:6379/0",
                on_backend_error="allow",
            ),
        )

    def test_cors(self) -> None:
        self.assertEqual(
            self.config.cors,
            CorsConfig(
                allowed_origins=(),
                allowed_methods=("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"),
                allowed_headers=("Authorization", "Content-Type"),
                expose_headers=(),
                allow_credentials=False,
                max_age_s=600,
            ),
        )

    def test_no_authenticators(self) -> None:
        self.assertEqual(self.config.auth, AuthConfig(jwt=None, api_key=None))

    def test_jwt_with_only_a_secret(self) -> None:
        c = self.load(config(auth={"jwt": {"secret": "s"}}))
        self.assertEqual(
            c.auth.jwt,
            JwtConfig(
                algorithms=("HS256",),
                secret="s",
                secret_env=None,
                public_key_file=None,
                jwks_url=None,
                issuer=None,
                audience=None,
                leeway_s=0,
                forward_claims=(),
            ),
        )

    def test_api_key_table_without_keys(self) -> None:
        c = self.load(config(auth={"api_key": {}}))
        self.assertEqual(c.auth.api_key, ApiKeyConfig(header="X-API-Key", query_param="", keys=()))

    def test_metrics_health_and_logging(self) -> None:
        c = self.config
        self.assertEqual(c.metrics, MetricsConfig(path="/metrics"))
        self.assertEqual(
            c.health,
            HealthConfig(health_path="/health", liveness_path="/healthz", readiness_path="/ready"),
        )
        self.assertEqual(c.logging, LoggingConfig(format="json", access_log="-", level="info"))

    def test_admin_is_off(self) -> None:
        self.assertIsNone(self.config.admin)

    def test_admin_listens_on_localhost_by_default(self) -> None:
        c = self.load(config(admin={"token_sha256": DIGEST}))
        self.assertEqual(c.admin.listen, "tcp:9901:interface=127.0.0.1")

    def test_empty_sections_are_the_defaults(self) -> None:
        sections = {"server": {}, "middleware": {}, "rate_limiting": {}, "cors": {}, "auth": {}}
        sections.update(metrics={}, health={}, logging={})
        c = self.load(config(**sections))
        for name in sections:
            self.assertEqual(getattr(c, name), getattr(self.config, name), name)


# --- error kinds ------------------------------------------------------------------------------


class TypeErrorTests(ConfigTestCase):
    """A value of the wrong type names the key, shows the value and says what is expected."""

    def test_string_for_integer(self) -> None:
        self.assertError(config(server={"port": "8080"}), "server.port: '8080' is not an integer")

    def test_boolean_is_not_an_integer(self) -> None:
        self.assertError(
            config(rate_limiting={"burst_size": True}),
            "rate_limiting.burst_size: true is not an integer",
        )

    def test_string_for_number(self) -> None:
        self.assertError(
            config(rate_limiting={"requests_per_second": "10"}),
            "rate_limiting.requests_per_second: '10' is not a number",
        )

    def test_infinity_is_not_a_number(self) -> None:
        self.assertError(
            config(rate_limiting={"requests_per_second": float("inf")}),
            "rate_limiting.requests_per_second: inf is not a number",
        )

    def test_string_for_boolean(self) -> None:
        self.assertError(
            config(server={"preserve_host": "yes"}),
            "server.preserve_host: 'yes' is not true or false",
        )

    def test_integer_for_string(self) -> None:
        self.assertError(config(logging={"format": 1}), "logging.format: 1 is not a string")

    def test_string_for_list_of_strings(self) -> None:
        self.assertError(
            config(route(methods="GET")), "routes[0].methods: 'GET' is not a list of strings"
        )

    def test_list_with_a_non_string(self) -> None:
        self.assertError(
            config(route(auth=["jwt", 1])), "routes[0].auth: ['jwt', 1] is not a list of strings"
        )

    def test_list_with_a_non_integer(self) -> None:
        r = upstream_route(strategy="weighted", weights=[1, "2"])
        self.assertError(
            config(r), "routes[0].upstream.weights: [1, '2'] is not a list of integers"
        )

    def test_value_for_table(self) -> None:
        self.assertError(config(server=5), "server: must be a table, not 5")

    def test_table_for_routes(self) -> None:
        self.assertError(
            {"routes": {"path": "/x"}}, "routes: must be an array of tables ([[routes]])"
        )

    def test_value_in_routes_array_is_reported_once(self) -> None:
        self.assertError({"routes": [route(), 5]}, "routes[1]: must be a table, not 5")


class RangeErrorTests(ConfigTestCase):
    """A value of the right type outside its range says the bound."""

    def test_port_above_65535(self) -> None:
        self.assertError(
            config(server={"port": 70000}), "server.port: 70000 is not a port (0-65535)"
        )

    def test_port_zero_is_allowed(self) -> None:
        self.assertEqual(self.load(config(server={"port": 0})).server.port, 0)

    def test_workers_below_one(self) -> None:
        self.assertError(config(server={"workers": 0}), "server.workers: 0 must be at least 1")

    def test_timeout_not_positive(self) -> None:
        self.assertError(
            config(server={"timeout_ms": 0}), "server.timeout_ms: 0 must be greater than 0"
        )

    def test_negative_max_body_bytes(self) -> None:
        self.assertError(
            config(route(max_body_bytes=-1)), "routes[0].max_body_bytes: -1 must be at least 0"
        )

    def test_negative_retries(self) -> None:
        self.assertError(config(route(retries=-1)), "routes[0].retries: -1 must be at least 0")

    def test_requests_per_second_not_positive(self) -> None:
        self.assertError(
            config(rate_limiting={"requests_per_second": 0}),
            "rate_limiting.requests_per_second: 0 must be greater than 0",
        )

    def test_fractional_requests_per_second_is_allowed(self) -> None:
        rate = self.load(config(rate_limiting={"requests_per_second": 0.5})).rate_limiting
        self.assertEqual(rate.requests_per_second, 0.5)

    def test_burst_below_one(self) -> None:
        self.assertError(
            config(rate_limiting={"burst_size": 0}),
            "rate_limiting.burst_size: 0 must be at least 1",
        )

    def test_weight_below_one(self) -> None:
        r = upstream_route(strategy="weighted", weights=[0])
        self.assertError(
            config(r), "routes[0].upstream.weights: [0] has an item 0 that must be at least 1"
        )

    def test_expected_status_not_an_http_status(self) -> None:
        r = upstream_route(health_check={"expected_status": [200, 99]})
        self.assertError(
            config(r),
            "routes[0].upstream.health_check.expected_status: [200, 99] has an item 99 that "
            "is not an HTTP status",
        )

    def test_breaker_failure_threshold_below_one(self) -> None:
        r = upstream_route(circuit_breaker={"failure_threshold": 0})
        self.assertError(
            config(r), "routes[0].upstream.circuit_breaker.failure_threshold: 0 must be at least 1"
        )

    def test_negative_cors_max_age(self) -> None:
        self.assertError(config(cors={"max_age_s": -5}), "cors.max_age_s: -5 must be at least 0")


class ChoiceErrorTests(ConfigTestCase):
    """A value not among the choices lists the choices."""

    def test_strategy(self) -> None:
        self.assertError(
            config(upstream_route(strategy="round-robin")),
            "routes[0].upstream.strategy: 'round-robin' is not one of round_robin, random, "
            "least_connections, weighted",
        )

    def test_every_strategy_is_accepted(self) -> None:
        for strategy in ("round_robin", "random", "least_connections"):
            c = self.load(config(upstream_route(strategy=strategy)))
            self.assertEqual(c.routes[0].upstream.strategy, strategy)

    def test_rate_limit_key(self) -> None:
        self.assertError(
            config(rate_limiting={"key": "user"}),
            "rate_limiting.key: 'user' is not one of ip, global, route, api_key, jwt_sub, consumer",
        )

    def test_rate_limit_backend(self) -> None:
        self.assertError(
            config(rate_limiting={"backend": "memcached"}),
            "rate_limiting.backend: 'memcached' is not one of memory, redis",
        )

    def test_on_backend_error(self) -> None:
        self.assertError(
            config(rate_limiting={"on_backend_error": "retry"}),
            "rate_limiting.on_backend_error: 'retry' is not one of allow, deny",
        )

    def test_redis_url_scheme(self) -> None:
        self.assertErrorStartsWith(
            config(rate_limiting={"redis_url": "http://r:6379"}),
            "rate_limiting.redis_url: 'http://r:6379' is not a redis://",
        )

    def test_logging_format(self) -> None:
        self.assertError(
            config(logging={"format": "xml"}), "logging.format: 'xml' is not one of json, text"
        )

    def test_logging_level(self) -> None:
        self.assertError(
            config(logging={"level": "verbose"}),
            "logging.level: 'verbose' is not one of debug, info, warn, error, critical",
        )

    def test_auth_method(self) -> None:
        self.assertError(
            config(route(auth=["basic"])),
            "routes[0].auth: ['basic'] has an item 'basic' that is not one of jwt, api_key, "
            "mtls, oauth2",
        )


class UnknownKeyTests(ConfigTestCase):
    """An unknown key is an error naming it, suggesting the closest known key."""

    ROUTE_KEYS = (
        "name, path, host, strip_path, methods, timeout_ms, max_body_bytes, retries, auth, "
        "scopes, mtls, cors, rate_limit, upstream, websocket, websocket_idle_timeout_ms, plugins, "
        "resource, grpc, cache, compression, request, response, graphql, validate"
    )

    def test_misspelt_route_key_gets_a_suggestion(self) -> None:
        self.assertError(
            config(route(stirp_path=True)),
            "routes[0].stirp_path: unknown key; did you mean 'strip_path'? "
            f"(known keys: {self.ROUTE_KEYS})",
        )

    def test_unrelated_key_gets_no_suggestion(self) -> None:
        self.assertError(
            config(route(zzzzz=1)), f"routes[0].zzzzz: unknown key (known keys: {self.ROUTE_KEYS})"
        )

    def test_misspelt_top_level_section(self) -> None:
        errors = self.errors(config(midleware={}))
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith("midleware: unknown key; did you mean 'middleware'?"), errors[0]
        )

    def test_nested_table_key(self) -> None:
        r = upstream_route(health_check={"intervall_ms": 5})
        errors = self.errors(config(r))
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith(
                "routes[0].upstream.health_check.intervall_ms: unknown key; "
                "did you mean 'interval_ms'?"
            ),
            errors[0],
        )

    def test_route_rate_limit_only_takes_bucket_keys(self) -> None:
        errors = self.errors(config(route(rate_limit={"backend": "redis"})))
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith(
                "routes[0].rate_limit.backend: unknown key (known keys: requests_per_second, "
                "burst_size, key)"
            ),
            errors[0],
        )


class RequiredKeyTests(ConfigTestCase):
    """Keys without a sensible default must be given."""

    def test_routes(self) -> None:
        self.assertError({}, "routes: at least one [[routes]] entry is required")

    def test_routes_not_empty(self) -> None:
        self.assertError({"routes": []}, "routes: at least one [[routes]] entry is required")

    def test_route_path(self) -> None:
        r = route()
        del r["path"]
        self.assertError(config(r), "routes[0].path: is required")

    def test_route_upstream(self) -> None:
        r = route()
        del r["upstream"]
        self.assertError(
            config(r), "routes[0].upstream: is required: [routes.upstream] with urls = [...]"
        )

    def test_upstream_urls(self) -> None:
        self.assertError(
            config(route(upstream={"strategy": "random"})),
            "routes[0].upstream.urls: is required (a list of http:// or https:// URLs)",
        )

    def test_upstream_urls_not_empty(self) -> None:
        self.assertError(
            config(route(upstream={"urls": []})),
            "routes[0].upstream.urls: [] must list at least one URL",
        )

    def test_admin_token(self) -> None:
        self.assertError(
            config(admin={"listen": "tcp:9901"}),
            "admin.token_sha256: is required (the SHA-256 of the admin bearer token)",
        )

    def test_api_key_name_and_digest(self) -> None:
        self.assertEqual(
            self.errors(config(auth={"api_key": {"keys": [{}]}})),
            ["auth.api_key.keys[0].name: is required", "auth.api_key.keys[0].sha256: is required"],
        )


class MultipleErrorsTests(ConfigTestCase):
    """Every problem of a config is reported at once, in one ConfigError."""

    def bad(self) -> dict[str, Any]:
        return config(
            route(stirp_path=True, upstream={"urls": [UPSTREAM_URL], "strategy": "rr"}),
            server={"port": "80"},
            logging={"level": "loud"},
        )

    def test_all_errors_in_one_exception(self) -> None:
        self.assertEqual(
            self.errors(self.bad()),
            [
                "server.port: '80' is not an integer",
                "logging.level: 'loud' is not one of debug, info, warn, error, critical",
                "routes[0].stirp_path: unknown key; did you mean 'strip_path'? "
                f"(known keys: {UnknownKeyTests.ROUTE_KEYS})",
                "routes[0].upstream.strategy: 'rr' is not one of round_robin, random, "
                "least_connections, weighted",
            ],
        )

    def test_str_lists_every_error_line_under_a_count(self) -> None:
        e = self.assertRaises(ConfigError, GatewayConfig.from_dict, self.bad(), "bad.toml")
        lines = str(e).splitlines()
        self.assertEqual(lines[0], "bad.toml: 4 errors")
        self.assertEqual(lines[1:], [f"  {error}" for error in e.errors])

    def test_bad_strategy_does_not_add_a_weights_error(self) -> None:
        self.assertError(
            config(upstream_route(strategy="weigthed", weights=[1])),
            "routes[0].upstream.strategy: 'weigthed' is not one of round_robin, random, "
            "least_connections, weighted",
        )

    def test_collision_names_the_route_after_an_invalid_route(self) -> None:
        errors = self.errors(config(route(upstream={"urls": []}), route("/ready")))
        self.assertEqual(len(errors), 2, errors)
        self.assertTrue(errors[1].startswith("routes[1].path: '/ready' collides with"), errors)

    def test_duplicate_name_names_the_routes_after_an_invalid_route(self) -> None:
        invalid = route("/a", name="x", upstream={"urls": []})
        errors = self.errors(config(invalid, route("/b", name="y"), route("/c", name="y")))
        self.assertEqual(
            errors[1:],
            [
                "routes[2].name: 'y' is already used by routes[1]; route names label metrics "
                "and must be unique"
            ],
        )

    def test_bad_weights_are_not_also_reported_missing(self) -> None:
        self.assertError(
            config(upstream_route(strategy="weighted", weights="3,1")),
            "routes[0].upstream.weights: '3,1' is not a list of integers",
        )

    def test_bad_jwks_url_is_not_also_reported_missing(self) -> None:
        self.assertError(
            config(auth={"jwt": {"algorithms": ["RS256"], "jwks_url": "jwks.json"}}),
            "auth.jwt.jwks_url: 'jwks.json' is not an http:// or https:// URL",
        )

    def test_bad_secret_is_not_also_reported_missing(self) -> None:
        self.assertError(
            config(auth={"jwt": {"secret": 42}}), "auth.jwt.secret: 42 is not a string"
        )

    def test_bad_algorithms_do_not_add_a_key_material_error(self) -> None:
        self.assertError(
            config(auth={"jwt": {"algorithms": ["RS256", "none"], "jwks_url": "https://idp/k"}}),
            "auth.jwt.algorithms: ['RS256', 'none'] must not contain 'none' "
            "(unsigned tokens are never accepted)",
        )


class ConfigErrorTests(SynchronousTestCase):
    """ConfigError keeps the error lines and prints them all."""

    def test_str_has_a_header_and_one_indented_line_per_error(self) -> None:
        e = ConfigError(["a: bad", "b: worse"], source="gw.toml")
        self.assertEqual(str(e), "gw.toml: 2 errors\n  a: bad\n  b: worse")

    def test_one_error_is_singular(self) -> None:
        self.assertEqual(
            str(ConfigError(["a: bad"], source="gw.toml")), "gw.toml: 1 error\n  a: bad"
        )

    def test_errors_and_source_are_kept(self) -> None:
        e = ConfigError(["a: bad"], source="gw.toml")
        self.assertEqual((e.errors, e.source), (["a: bad"], "gw.toml"))


# --- upstreams --------------------------------------------------------------------------------


class UpstreamTests(ConfigTestCase):
    """[routes.upstream]: URLs, strategy, weights and the CA file."""

    TWO = ["http://a:1", "http://b:2"]

    def test_weighted_with_one_weight_per_url(self) -> None:
        c = self.load(
            config(route(upstream={"urls": self.TWO, "strategy": "weighted", "weights": [3, 1]}))
        )
        self.assertEqual(c.routes[0].upstream.weights, (3, 1))

    def test_weights_length_must_match_urls(self) -> None:
        r = route(upstream={"urls": self.TWO, "strategy": "weighted", "weights": [1]})
        self.assertError(
            config(r),
            "routes[0].upstream.weights: has 1 entries but urls has 2; give one weight per URL",
        )

    def test_weights_without_weighted_strategy(self) -> None:
        self.assertError(
            config(route(upstream={"urls": self.TWO, "weights": [1, 1]})),
            "routes[0].upstream.weights: is only used with strategy = 'weighted', "
            "not 'round_robin'",
        )

    def test_weighted_strategy_without_weights(self) -> None:
        self.assertError(
            config(upstream_route(strategy="weighted")),
            "routes[0].upstream.weights: is required with strategy = 'weighted'",
        )

    def test_url_scheme_must_be_http_or_https(self) -> None:
        self.assertError(
            config(route(upstream={"urls": ["ftp://x"]})),
            "routes[0].upstream.urls: ['ftp://x'] has 'ftp://x': scheme 'ftp' is not http or https",
        )

    def test_https_url_is_accepted(self) -> None:
        c = self.load(config(route(upstream={"urls": ["https://svc.internal/base"]})))
        self.assertEqual(c.routes[0].upstream.urls, ("https://svc.internal/base",))

    def test_missing_ca_file(self) -> None:
        self.assertError(
            config(upstream_route(ca_file="/nonexistent/ca.pem")),
            "routes[0].upstream.ca_file: '/nonexistent/ca.pem' does not exist",
        )

    def test_health_check_path_must_be_a_path(self) -> None:
        self.assertError(
            config(upstream_route(health_check={"path": "health"})),
            "routes[0].upstream.health_check.path: 'health' must be a path starting with '/' "
            "(no query, fragment or spaces)",
        )


# --- cors and auth ----------------------------------------------------------------------------


class CorsTests(ConfigTestCase):
    """[cors]: origins, credentials and header lists."""

    def test_wildcard_origin_with_credentials_is_refused(self) -> None:
        self.assertError(
            config(cors={"allowed_origins": ["*"], "allow_credentials": True}),
            "cors.allowed_origins: '*' is not allowed together with cors.allow_credentials = "
            "true (browsers refuse it); list the origins explicitly",
        )

    def test_wildcard_origin_without_credentials_is_allowed(self) -> None:
        c = self.load(config(cors={"allowed_origins": ["*"]}))
        self.assertEqual(c.cors.allowed_origins, ("*",))

    def test_explicit_origins_with_credentials_are_allowed(self) -> None:
        c = self.load(
            config(cors={"allowed_origins": ["https://a.example:8443"], "allow_credentials": True})
        )
        self.assertTrue(c.cors.allow_credentials)

    def test_origin_with_a_path_is_refused(self) -> None:
        self.assertErrorStartsWith(
            config(cors={"allowed_origins": ["https://a.example/app"]}),
            "cors.allowed_origins: ['https://a.example/app'] has an item 'https://a.example/app' "
            "that is not an origin",
        )

    def test_allowed_methods_are_upper_cased(self) -> None:
        c = self.load(config(cors={"allowed_methods": ["get", "Post"]}))
        self.assertEqual(c.cors.allowed_methods, ("GET", "POST"))

    def test_header_names_must_be_tokens(self) -> None:
        self.assertError(
            config(cors={"allowed_headers": ["X Bad"]}),
            "cors.allowed_headers: ['X Bad'] has an item 'X Bad' that is not a valid HTTP token",
        )


class JwtTests(ConfigTestCase):
    """[auth.jwt]: algorithms and the key material they need."""

    def jwt(self, **keys: Any) -> dict[str, Any]:
        return config(auth={"jwt": keys})

    def test_none_algorithm_is_refused(self) -> None:
        self.assertError(
            self.jwt(algorithms=["none"], secret="s"),
            "auth.jwt.algorithms: ['none'] must not contain 'none' "
            "(unsigned tokens are never accepted)",
        )

    def test_none_algorithm_is_refused_in_any_case(self) -> None:
        errors = self.errors(self.jwt(algorithms=["HS256", "None"], secret="s"))
        self.assertEqual(len(errors), 1)
        self.assertIn("must not contain 'none'", errors[0])

    def test_hmac_and_public_key_algorithms_do_not_mix(self) -> None:
        self.assertError(
            self.jwt(algorithms=["HS256", "RS256"], secret="s", jwks_url="https://idp/k"),
            "auth.jwt.algorithms: ['HS256', 'RS256'] mixes HMAC (HS*) and public-key algorithms, "
            "which allows key confusion",
        )

    def test_unknown_algorithm(self) -> None:
        self.assertErrorStartsWith(
            self.jwt(algorithms=["XS1"], secret="s"),
            "auth.jwt.algorithms: ['XS1'] has 'XS1', which is not one of HS256, HS384, HS512, ",
        )

    def test_hmac_needs_a_secret(self) -> None:
        self.assertError(
            self.jwt(algorithms=["HS512"]),
            "auth.jwt.secret: HS* algorithms need 'secret' or 'secret_env'",
        )

    def test_public_key_algorithm_needs_a_key(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"]),
            "auth.jwt.public_key_file: public-key algorithms need 'public_key_file', "
            "'jwks_url' or 'oidc_issuer'",
        )

    def test_public_key_algorithm_with_jwks_url(self) -> None:
        c = self.load(self.jwt(algorithms=["ES256"], jwks_url="https://idp/jwks.json"))
        self.assertEqual(c.auth.jwt.jwks_url, "https://idp/jwks.json")

    def test_missing_public_key_file(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"], public_key_file="/nonexistent/jwt.pem"),
            "auth.jwt.public_key_file: '/nonexistent/jwt.pem' does not exist",
        )

    def test_jwks_url_must_be_http(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"], jwks_url="idp/jwks"),
            "auth.jwt.jwks_url: 'idp/jwks' is not an http:// or https:// URL",
        )

    def test_secret_env_not_set(self) -> None:
        set_env(self, "AVX_TEST_JWT_SECRET", None)
        self.assertError(
            self.jwt(secret_env="AVX_TEST_JWT_SECRET"),
            "auth.jwt.secret_env: environment variable 'AVX_TEST_JWT_SECRET' is not set",
        )

    def test_secret_env_set(self) -> None:
        set_env(self, "AVX_TEST_JWT_SECRET", "s3cret")
        c = self.load(self.jwt(secret_env="AVX_TEST_JWT_SECRET"))
        self.assertEqual((c.auth.jwt.secret_env, c.auth.jwt.secret), ("AVX_TEST_JWT_SECRET", None))

    def test_forward_claim_header_must_be_a_header_name(self) -> None:
        self.assertError(
            self.jwt(secret="s", forward_claims={"sub": "X User"}),
            "auth.jwt.forward_claims.sub: 'X User' is not a header name",
        )

    def test_forward_claims_must_be_a_table(self) -> None:
        self.assertError(
            self.jwt(secret="s", forward_claims=["sub"]),
            'auth.jwt.forward_claims: must be a table of claim = "Header-Name"',
        )

    def test_negative_leeway(self) -> None:
        self.assertError(
            self.jwt(secret="s", leeway_s=-1), "auth.jwt.leeway_s: -1 must be at least 0"
        )


class ApiKeyTests(ConfigTestCase):
    """[auth.api_key]: keys are named SHA-256 digests."""

    def keys(self, *keys: dict[str, Any], **table: Any) -> dict[str, Any]:
        return config(auth={"api_key": {"keys": list(keys), **table}})

    def test_digest_must_be_64_hex_characters(self) -> None:
        self.assertError(
            self.keys({"name": "ci", "sha256": DIGEST[:-1]}),
            f"auth.api_key.keys[0].sha256: '{DIGEST[:-1]}' is not a SHA-256 hex digest "
            "(64 hex characters)",
        )

    def test_digest_is_lower_cased(self) -> None:
        c = self.load(self.keys({"name": "ci", "sha256": DIGEST.upper()}))
        self.assertEqual(c.auth.api_key.keys, (ApiKey(name="ci", sha256=DIGEST),))

    def test_duplicate_names(self) -> None:
        self.assertError(
            self.keys({"name": "ci", "sha256": DIGEST}, {"name": "ci", "sha256": "0" * 64}),
            "auth.api_key.keys[1].name: 'ci' is used by another key",
        )

    def test_missing_names_are_not_also_duplicates(self) -> None:
        self.assertEqual(
            self.errors(self.keys({"sha256": DIGEST}, {"sha256": "0" * 64})),
            ["auth.api_key.keys[0].name: is required", "auth.api_key.keys[1].name: is required"],
        )

    def test_keys_must_be_a_list(self) -> None:
        self.assertError(
            config(auth={"api_key": {"keys": "ci"}}),
            "auth.api_key.keys: must be a list of { name = ..., sha256 = ... } tables",
        )

    def test_header_must_be_a_token(self) -> None:
        self.assertError(
            self.keys(header="X Key"), "auth.api_key.header: 'X Key' is not a valid HTTP token"
        )


class RouteAuthTests(ConfigTestCase):
    """A route's auth methods and scopes must be backed by configured authenticators."""

    def test_method_without_its_section(self) -> None:
        self.assertError(
            config(route(auth=["jwt"])),
            "routes[0].auth: uses 'jwt' but [auth.jwt] is not configured",
        )

    def test_method_with_its_section(self) -> None:
        c = self.load(config(route(auth=["api_key"]), auth={"api_key": {}}))
        self.assertEqual(c.routes[0].auth, ("api_key",))

    def test_scopes_without_jwt(self) -> None:
        self.assertError(
            config(route(auth=["api_key"], scopes=["users:read"]), auth={"api_key": {}}),
            "routes[0].scopes: needs 'jwt' or 'oauth2' in auth (scopes come from the token)",
        )

    def test_scopes_with_jwt(self) -> None:
        c = self.load(
            config(route(auth=["jwt"], scopes=["users:read"]), auth={"jwt": {"secret": "s"}})
        )
        self.assertEqual(c.routes[0].scopes, ("users:read",))


# --- routes -----------------------------------------------------------------------------------


class RoutePathTests(ConfigTestCase):
    """Route paths are validated patterns: exact, trailing wildcard, {params}."""

    def assertBadPath(self, path: str, reason: str) -> None:
        self.assertError(
            config(route(path)), f"routes[0].path: {path!r} is not a valid route path: {reason}"
        )

    def test_valid_patterns(self) -> None:
        for path in ("/", "/*", "/a/b", "/a/*", "/a/{id}/b", "/a/{id}/*", "/v1.0/x-y~z"):
            self.assertEqual(self.load(config(route(path))).routes[0].path, path)

    def test_must_start_with_slash(self) -> None:
        self.assertBadPath("api/*", "pattern must start with '/'")

    def test_wildcard_only_as_last_segment(self) -> None:
        self.assertBadPath("/a/*/b", "'*' is only allowed as the last segment")

    def test_wildcard_must_be_a_whole_segment(self) -> None:
        self.assertBadPath("/a*", "'*' must be a whole segment")

    def test_param_must_be_a_whole_segment(self) -> None:
        self.assertBadPath("/a/x{id}", "'{name}' must be a whole segment")

    def test_param_name_must_be_an_identifier(self) -> None:
        self.assertBadPath("/a/{1x}", "parameter name '1x' is not a valid identifier")

    def test_duplicate_param_names(self) -> None:
        self.assertBadPath("/a/{id}/{id}", "duplicate parameter name 'id'")

    def test_empty_segment(self) -> None:
        self.assertBadPath("/a//b", "empty segment ('//' or trailing '/') in pattern")

    def test_dot_segments(self) -> None:
        self.assertBadPath("/a/../b", "'.' and '..' segments are not allowed")

    def test_query(self) -> None:
        self.assertBadPath("/a?x=1", "'?' and '#' are not allowed in a pattern")

    def test_methods_are_upper_cased_and_deduplicated(self) -> None:
        c = self.load(config(route(methods=["get", "GET", "post"])))
        self.assertEqual(c.routes[0].methods, ("GET", "POST"))

    def test_empty_methods(self) -> None:
        self.assertError(
            config(route(methods=[])),
            "routes[0].methods: must list at least one method (leave it out for all)",
        )

    def test_host_must_be_a_host_name(self) -> None:
        self.assertError(config(route(host="a b")), "routes[0].host: 'a b' is not a host name")

    def test_wildcard_host(self) -> None:
        c = self.load(config(route(host="*.example.com")))
        self.assertEqual(c.routes[0].host, "*.example.com")


class RouteNameTests(ConfigTestCase):
    """Route names label metrics: derived from the path unless given, and unique."""

    def name_of(self, path: str) -> str:
        return self.load(config(route(path))).routes[0].name

    def test_derived_from_path(self) -> None:
        self.assertEqual(self.name_of("/api/users/*"), "api_users")

    def test_derived_from_params(self) -> None:
        self.assertEqual(self.name_of("/a/{id}/b"), "a_id_b")

    def test_derived_from_punctuation(self) -> None:
        self.assertEqual(self.name_of("/v1.0/x-y"), "v1_0_x_y")

    def test_root_is_named_root(self) -> None:
        self.assertEqual((self.name_of("/"), self.name_of("/*")), ("root", "root"))

    def test_explicit_name_is_kept(self) -> None:
        c = self.load(config(route(name="users")))
        self.assertEqual(c.routes[0].name, "users")

    def test_empty_name(self) -> None:
        self.assertError(config(route(name="")), "routes[0].name: '' must not be empty")

    def test_duplicate_explicit_names(self) -> None:
        self.assertError(
            config(route("/a", name="x"), route("/b", name="x")),
            "routes[1].name: 'x' is already used by routes[0]; route names label metrics and "
            "must be unique",
        )

    def test_same_derived_names_are_numbered(self) -> None:
        c = self.load(
            config(route("/*", host="a.example"), route("/*", host="b.example"), route("/*"))
        )
        self.assertEqual([r.name for r in c.routes], ["root", "root_2", "root_3"])

    def test_derived_name_avoids_explicit_names(self) -> None:
        c = self.load(config(route("/api"), route("/other", name="api")))
        self.assertEqual([r.name for r in c.routes], ["api_2", "api"])


class ReservedPathTests(ConfigTestCase):
    """Routes may not claim the paths the gateway answers itself."""

    def collision(self, path: str, key: str, reserved: str) -> str:
        return (
            f"routes[0].path: {path!r} collides with {key} = {reserved!r}, which the gateway "
            "answers itself; change one of them"
        )

    def test_health(self) -> None:
        self.assertError(
            config(route("/health")), self.collision("/health", "health.health_path", "/health")
        )

    def test_healthz(self) -> None:
        self.assertError(
            config(route("/healthz")),
            self.collision("/healthz", "health.liveness_path", "/healthz"),
        )

    def test_ready(self) -> None:
        self.assertError(
            config(route("/ready")), self.collision("/ready", "health.readiness_path", "/ready")
        )

    def test_metrics(self) -> None:
        self.assertError(
            config(route("/metrics")), self.collision("/metrics", "metrics.path", "/metrics")
        )

    def test_wildcard_on_a_reserved_prefix(self) -> None:
        self.assertError(
            config(route("/metrics/*")), self.collision("/metrics/*", "metrics.path", "/metrics")
        )

    def test_param_route_matching_reserved_paths(self) -> None:
        self.assertEqual(len(self.errors(config(route("/{page}")))), 4)

    def test_route_with_other_methods_still_collides(self) -> None:
        self.assertError(
            config(route("/ready", methods=["POST"])),
            self.collision("/ready", "health.readiness_path", "/ready"),
        )

    def test_host_specific_route_still_collides(self) -> None:
        self.assertError(
            config(route("/ready", host="api.example")),
            self.collision("/ready", "health.readiness_path", "/ready"),
        )

    def test_catch_all_does_not_collide(self) -> None:
        self.assertEqual(self.load(config(route("/*"))).routes[0].path, "/*")

    def test_path_below_a_reserved_path_does_not_collide(self) -> None:
        c = self.load(config(route("/health/extra"), route("/ready/{id}")))
        self.assertEqual([r.path for r in c.routes], ["/health/extra", "/ready/{id}"])

    def test_metrics_path_is_free_when_metrics_are_off(self) -> None:
        c = self.load(config(route("/metrics"), middleware={"enable_metrics": False}))
        self.assertNotIn("metrics.path", c.internal_paths())

    def test_moved_health_path_frees_the_old_one(self) -> None:
        c = self.load(config(route("/health"), health={"health_path": "/_gw/health"}))
        self.assertEqual(c.internal_paths()["health.health_path"], "/_gw/health")

    def test_moved_metrics_path_is_reserved(self) -> None:
        self.assertError(
            config(route("/_gw/metrics"), metrics={"path": "/_gw/metrics"}),
            self.collision("/_gw/metrics", "metrics.path", "/_gw/metrics"),
        )

    def test_internal_paths_must_differ(self) -> None:
        self.assertError(
            config(metrics={"path": "/health"}),
            "metrics.path: '/health' is already used by health.health_path",
        )


# --- server -----------------------------------------------------------------------------------


class ServerTests(ConfigTestCase):
    """[server]: listeners, endpoints and trusted proxies."""

    def endpoints(self, **server: Any) -> tuple[str, ...]:
        return self.load(config(server=server)).server.endpoints

    def test_endpoint_from_host_and_port(self) -> None:
        self.assertEqual(
            self.endpoints(host="127.0.0.1", port=9000), ("tcp:9000:interface=127.0.0.1",)
        )

    def test_ipv6_host_is_escaped_in_the_endpoint(self) -> None:
        (endpoint,) = self.endpoints(host="::1", port=9000)
        self.assertEqual(endpoint, "tcp:9000:interface=\\:\\:1")
        self.assertEqual(serverFromString(MemoryReactor(), endpoint)._interface, "::1")

    def test_listen_replaces_host_and_port(self) -> None:
        listen = ["tcp:9000", "unix:/tmp/avx.sock"]
        self.assertEqual(self.endpoints(host="10.0.0.1", port=1, listen=listen), tuple(listen))

    def test_ssl_listener_with_existing_files(self) -> None:
        listen = [f"ssl:8443:privateKey={SERVER_PEM}:certKey={SERVER_PEM}"]
        self.assertEqual(self.endpoints(listen=listen), tuple(listen))

    def test_invalid_listen_endpoint(self) -> None:
        self.assertError(
            config(server={"listen": ["tcp:notaport"]}),
            "server.listen: ['tcp:notaport'] is not a valid Twisted endpoint string: "
            "invalid literal for int() with base 10: 'notaport'",
        )

    def test_ssl_listener_with_missing_files(self) -> None:
        self.assertErrorStartsWith(
            config(server={"listen": ["ssl:8443:privateKey=/nonexistent/k.pem"]}),
            "server.listen: ['ssl:8443:privateKey=/nonexistent/k.pem'] is not a valid Twisted "
            "endpoint string:",
        )

    def test_empty_listen(self) -> None:
        self.assertError(
            config(server={"listen": []}),
            "server.listen: [] must list at least one endpoint (or leave listen out to use "
            "host/port)",
        )

    def test_invalid_admin_listen_endpoint(self) -> None:
        self.assertError(
            config(admin={"listen": "bogus:1", "token_sha256": DIGEST}),
            "admin.listen: 'bogus:1' is not a valid Twisted endpoint string: "
            "Unknown endpoint type: 'bogus'",
        )

    def test_trusted_proxies_accept_addresses_and_networks(self) -> None:
        proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.1.2.3/8"]
        c = self.load(config(server={"trusted_proxies": proxies}))
        self.assertEqual(c.server.trusted_proxies, tuple(proxies))

    def test_trusted_proxy_prefix_out_of_range(self) -> None:
        self.assertError(
            config(server={"trusted_proxies": ["10.0.0.0/33"]}),
            "server.trusted_proxies: ['10.0.0.0/33'] has an item '10.0.0.0/33' that is not an IP "
            "address or CIDR network",
        )

    def test_trusted_proxy_not_an_address(self) -> None:
        self.assertError(
            config(server={"trusted_proxies": ["gateway.local"]}),
            "server.trusted_proxies: ['gateway.local'] has an item 'gateway.local' that is not "
            "an IP address or CIDR network",
        )


# --- per-route overrides ----------------------------------------------------------------------


class RouteOverrideTests(ConfigTestCase):
    """Per-route values fall back to the global ones they override."""

    def test_timeout_falls_back_to_server(self) -> None:
        c = self.load(config(route(), server={"timeout_ms": 1234}))
        self.assertEqual(c.routes[0].timeout_ms, 1234)

    def test_own_timeout_wins(self) -> None:
        c = self.load(config(route(timeout_ms=50), server={"timeout_ms": 1234}))
        self.assertEqual(c.routes[0].timeout_ms, 50)

    def test_max_body_bytes_falls_back_to_server(self) -> None:
        c = self.load(config(route(), server={"max_body_bytes": 99}))
        self.assertEqual(c.routes[0].max_body_bytes, 99)

    def test_own_max_body_bytes_wins(self) -> None:
        c = self.load(config(route(max_body_bytes=0), server={"max_body_bytes": 99}))
        self.assertEqual(c.routes[0].max_body_bytes, 0)

    def test_route_without_rate_limit_uses_the_global_one(self) -> None:
        self.assertIsNone(self.load(config(route())).routes[0].rate_limit)

    def test_route_rate_limit_inherits_unset_fields(self) -> None:
        rate = {"requests_per_second": 5, "burst_size": 7, "key": "api_key"}
        rate.update(backend="redis", redis_url="redis://r:1/2", on_backend_error="deny")
        c = self.load(config(route(rate_limit={"key": "route"}), rate_limiting=rate))
        self.assertEqual(
            c.routes[0].rate_limit,
            RateLimitConfig(
                requests_per_second=5.0,
                burst_size=7,
                key="route",
                backend="redis",
                redis_url="redis://r:1/2",
                on_backend_error="deny",
            ),
        )

    def test_route_rate_without_burst_gets_a_burst_of_one_second(self) -> None:
        c = self.load(config(route(rate_limit={"requests_per_second": 2.5})))
        self.assertEqual(c.routes[0].rate_limit.burst_size, 3)

    def test_global_rate_without_burst_gets_a_burst_of_one_second(self) -> None:
        c = self.load(config(rate_limiting={"requests_per_second": 0.5}))
        self.assertEqual(c.rate_limiting.burst_size, 1)

    def test_route_rate_limit_errors_name_the_route(self) -> None:
        self.assertError(
            config(route(rate_limit={"key": "user"})),
            "routes[0].rate_limit.key: 'user' is not one of ip, global, route, api_key, jwt_sub, "
            "consumer",
        )


# --- loading files ----------------------------------------------------------------------------


class LoadTests(SynchronousTestCase):
    """GatewayConfig.load turns every file problem into a ConfigError, never a traceback."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def load_error(self, path: str) -> ConfigError:
        return self.assertRaises(ConfigError, GatewayConfig.load, path)

    def test_missing_file(self) -> None:
        path = os.path.join(self.dir, "missing.toml")
        e = self.load_error(path)
        self.assertEqual(e.source, path)
        self.assertEqual(e.errors, ["cannot read file: No such file or directory"])

    def test_directory(self) -> None:
        self.assertEqual(len(self.load_error(self.dir).errors), 1)

    def test_invalid_toml(self) -> None:
        e = self.load_error(write(self.dir, "bad.toml", "[server\nport = 1\n"))
        self.assertEqual(len(e.errors), 1)
        self.assertTrue(e.errors[0].startswith("not valid TOML: "), e.errors[0])

    def test_invalid_utf8(self) -> None:
        path = os.path.join(self.dir, "latin1.toml")
        with open(path, "wb") as f:
            f.write(b'[server]\nhost = "\xff"\n')
        e = self.load_error(path)
        self.assertTrue(e.errors[0].startswith("not valid TOML: "), e.errors[0])

    def test_invalid_toml_text(self) -> None:
        e = self.assertRaises(ConfigError, GatewayConfig.from_toml, "x = ", "inline")
        self.assertEqual(e.source, "inline")
        self.assertTrue(e.errors[0].startswith("not valid TOML: "), e.errors[0])

    def test_validation_errors_name_the_file(self) -> None:
        path = write(self.dir, "gw.toml", "[server]\nport = 1\n")
        self.assertTrue(str(self.load_error(path)).startswith(f"{path}: 1 error\n"))

    def test_toml_text(self) -> None:
        text = '[[routes]]\npath = "/x"\nupstream = { urls = ["http://a:1"] }\n'
        self.assertEqual(GatewayConfig.from_toml(text).routes[0].path, "/x")


class RelativePathTests(SynchronousTestCase):
    """Relative file paths in a config file are resolved against the file's directory."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        os.mkdir(os.path.join(self.dir, "certs"))
        os.mkdir(os.path.join(self.dir, "logs"))
        shutil.copyfile(SERVER_PEM, os.path.join(self.dir, "certs", "ca.pem"))
        shutil.copyfile(SERVER_PEM, os.path.join(self.dir, "certs", "jwt.pem"))
        self.path = write(
            self.dir,
            "gateway.toml",
            """
[[routes]]
path = "/api/*"
auth = ["jwt"]
upstream = { urls = ["https://svc:8443"], ca_file = "certs/ca.pem" }

[auth.jwt]
algorithms = ["RS256"]
public_key_file = "certs/jwt.pem"

[logging]
access_log = "logs/access.log"
""",
        )

    def in_dir(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def test_ca_file(self) -> None:
        c = GatewayConfig.load(self.path)
        self.assertEqual(c.routes[0].upstream.ca_file, self.in_dir("certs", "ca.pem"))

    def test_public_key_file(self) -> None:
        c = GatewayConfig.load(self.path)
        self.assertEqual(c.auth.jwt.public_key_file, self.in_dir("certs", "jwt.pem"))

    def test_access_log(self) -> None:
        c = GatewayConfig.load(self.path)
        self.assertEqual(c.logging.access_log, self.in_dir("logs", "access.log"))

    def test_not_against_the_working_directory(self) -> None:
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(tempfile.gettempdir())
        c = GatewayConfig.load(os.path.relpath(self.path))
        self.assertEqual(c.routes[0].upstream.ca_file, self.in_dir("certs", "ca.pem"))

    def test_from_dict_uses_base_dir(self) -> None:
        data = config(upstream_route(ca_file="certs/ca.pem"))
        c = GatewayConfig.from_dict(data, base_dir=self.dir)
        self.assertEqual(c.routes[0].upstream.ca_file, self.in_dir("certs", "ca.pem"))

    def test_access_log_directory_must_exist(self) -> None:
        e = self.assertRaises(
            ConfigError,
            GatewayConfig.from_dict,
            config(logging={"access_log": "nowhere/access.log"}),
            base_dir=self.dir,
        )
        missing = self.in_dir("nowhere")
        self.assertEqual(
            e.errors,
            [
                "logging.access_log: 'nowhere/access.log' is in a directory that does not exist "
                f"({missing})"
            ],
        )

    def test_stdout_access_log_is_kept(self) -> None:
        c = GatewayConfig.from_dict(config(logging={"access_log": "-"}), base_dir=self.dir)
        self.assertEqual(c.logging.access_log, "-")


class ClientTimeoutKeyTests(SynchronousTestCase):
    def test_client_timeouts_have_defaults_and_can_be_set(self) -> None:
        base = {"routes": [{"path": "/*", "upstream": {"urls": ["http://a"]}}]}
        default = GatewayConfig.from_dict(base).server
        self.assertEqual(
            (
                default.client_header_timeout_ms,
                default.client_body_timeout_ms,
                default.keepalive_timeout_ms,
            ),
            (10000, 60000, 60000),
        )
        custom = GatewayConfig.from_dict(
            {
                **base,
                "server": {
                    "client_header_timeout_ms": 1,
                    "client_body_timeout_ms": 2,
                    "keepalive_timeout_ms": 3,
                },
            }
        ).server
        self.assertEqual(
            (
                custom.client_header_timeout_ms,
                custom.client_body_timeout_ms,
                custom.keepalive_timeout_ms,
            ),
            (1, 2, 3),
        )

    def test_client_timeouts_must_be_positive(self) -> None:
        with self.assertRaises(ConfigError) as e:
            GatewayConfig.from_dict(
                {
                    "server": {"client_header_timeout_ms": 0},
                    "routes": [{"path": "/*", "upstream": {"urls": ["http://a"]}}],
                }
            )
        self.assertIn("server.client_header_timeout_ms: 0 must be greater than 0", str(e.exception))


class Http2UpstreamAndGrpcTests(ConfigTestCase):
    """``routes.upstream.protocol``, ``routes.grpc`` and gRPC health checks."""

    H2C = {"urls": [UPSTREAM_URL], "protocol": "h2c"}

    def test_defaults(self) -> None:
        c = self.load(config())
        self.assertEqual(c.routes[0].upstream.protocol, "http/1.1")
        self.assertFalse(c.routes[0].grpc)
        self.assertIsNone(c.routes[0].grpc_timeout_cap_ms)

    def test_protocols_and_their_schemes(self) -> None:
        c = self.load(config(route(upstream={"urls": ["https://a:1"], "protocol": "h2"})))
        self.assertEqual(c.routes[0].upstream.protocol, "h2")
        self.assertError(
            config(upstream_route(protocol="h2")),
            "routes[0].upstream.protocol: 'h2' (TLS with ALPN) needs https:// URLs, "
            f"not {UPSTREAM_URL!r}",
        )
        self.assertError(
            config(route(upstream={"urls": ["https://a:1"], "protocol": "h2c"})),
            "routes[0].upstream.protocol: 'h2c' (cleartext, prior knowledge) needs http:// URLs, "
            "not 'https://a:1'",
        )
        self.assertError(
            config(upstream_route(protocol="http2")),
            "routes[0].upstream.protocol: 'http2' is not one of http/1.1, h2, h2c",
        )

    def test_grpc_needs_an_http2_upstream(self) -> None:
        c = self.load(config(route(grpc=True, upstream=self.H2C)))
        self.assertTrue(c.routes[0].grpc)
        self.assertError(
            config(route(grpc=True)),
            "routes[0].grpc: needs an HTTP/2 upstream: set upstream.protocol = 'h2c' (cleartext) "
            "or 'h2' (https); gRPC does not run over HTTP/1.1",
        )

    def test_only_a_grpc_routes_own_timeout_caps_deadlines(self) -> None:
        c = self.load(config(route(grpc=True, upstream=self.H2C), server={"timeout_ms": 1000}))
        self.assertIsNone(c.routes[0].grpc_timeout_cap_ms)  # server.timeout_ms does not apply
        c = self.load(config(route(grpc=True, timeout_ms=250, upstream=self.H2C)))
        self.assertEqual(c.routes[0].grpc_timeout_cap_ms, 250)

    def test_grpc_health_checks(self) -> None:
        check = {"kind": "grpc", "service": "test.Echo"}
        c = self.load(config(route(upstream={**self.H2C, "health_check": check})))
        self.assertEqual(c.routes[0].upstream.health_check.kind, "grpc")
        self.assertEqual(c.routes[0].upstream.health_check.service, "test.Echo")
        self.assertError(
            config(upstream_route(health_check={"kind": "grpc"})),
            "routes[0].upstream.health_check.kind: 'grpc' needs an HTTP/2 upstream "
            "(upstream.protocol = 'h2c' or 'h2')",
        )
        self.assertError(
            config(route(upstream={**self.H2C, "health_check": {"kind": "grpc", "path": "/h"}})),
            "routes[0].upstream.health_check.path: is only used with kind = 'http'",
        )
        self.assertError(
            config(upstream_route(health_check={"service": "x"})),
            "routes[0].upstream.health_check.service: is only used with kind = 'grpc'",
        )
