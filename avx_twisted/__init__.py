"""avx-gateway: an API gateway and reverse proxy on Twisted."""

from __future__ import annotations

from ._version import __version__
from .api import Gateway, GatewayBuilder
from .config import ConfigError, GatewayConfig

__all__ = ["ConfigError", "Gateway", "GatewayBuilder", "GatewayConfig", "__version__"]
