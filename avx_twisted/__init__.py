"""avx-gateway: an API gateway and reverse proxy on Twisted."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Gateway, GatewayBuilder  # noqa: E402
from .config import ConfigError, GatewayConfig  # noqa: E402

__all__ = ["ConfigError", "Gateway", "GatewayBuilder", "GatewayConfig", "__version__"]
