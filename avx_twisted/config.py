"""Typed, validated gateway configuration read from TOML.

This module only parses and validates: every default lives in :mod:`avx_twisted._configmodel`
(re-exported here), every error names the key path, the bad value and what is allowed, and all
errors of a file are reported together. The runtime (routes, upstreams, filters) is built from a
:class:`GatewayConfig` elsewhere.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from ._configmodel import (
    AUTH_METHODS,
    HMAC_ALGORITHMS,
    LOG_LEVELS,
    PUBLIC_KEY_ALGORITHMS,
    RATE_LIMIT_KEYS,
    STRATEGIES,
    AdminConfig,
    ApiKey,
    ApiKeyConfig,
    AuthConfig,
    BaseGatewayConfig,
    CacheConfig,
    CircuitBreakerConfig,
    ConfigError,
    CorsConfig,
    HealthCheckConfig,
    HealthConfig,
    JwtConfig,
    LoggingConfig,
    MetricsConfig,
    MiddlewareConfig,
    PluginRef,
    PluginsConfig,
    RateLimitConfig,
    RouteCacheConfig,
    RouteConfig,
    ServerConfig,
    TracingConfig,
    UpstreamConfig,
)
from ._configparse import Parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

__all__ = [
    "AUTH_METHODS",
    "HMAC_ALGORITHMS",
    "LOG_LEVELS",
    "PUBLIC_KEY_ALGORITHMS",
    "RATE_LIMIT_KEYS",
    "STRATEGIES",
    "AdminConfig",
    "ApiKey",
    "ApiKeyConfig",
    "AuthConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "CorsConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "HealthConfig",
    "JwtConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MiddlewareConfig",
    "PluginRef",
    "PluginsConfig",
    "RouteCacheConfig",
    "CacheConfig",
    "RateLimitConfig",
    "RouteConfig",
    "ServerConfig",
    "TracingConfig",
    "UpstreamConfig",
]


class GatewayConfig(BaseGatewayConfig):
    """The whole, validated gateway configuration (the fields are :class:`BaseGatewayConfig`'s;
    this class adds the ways to read one)."""

    @classmethod
    def load(cls, path: str) -> GatewayConfig:
        """Read and validate a TOML file; raise :class:`ConfigError` listing every problem."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError([f"cannot read file: {e.strerror or e}"], source=path)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([f"not valid TOML: {e}"], source=path)
        return cls.from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> GatewayConfig:
        """Validate TOML text (handy for tests and the Python API)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"not valid TOML: {e}"], source=source)
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<config>", base_dir: str | None = None
    ) -> GatewayConfig:
        """Validate an already-parsed mapping (the shape of the TOML file)."""
        return Parser(source, base_dir or os.getcwd()).parse(data, cls)
