"""``deny-header``: refuse requests that carry a given header.

Config::

    plugins = [{ name = "deny-header", config = { header = "X-Debug-Override" } }]

``header`` (required)
    A header name (any case). A request carrying it, with any value (even empty), is answered
    ``403`` with the gateway's JSON error ``{"error": "forbidden header", "status": 403,
    "request_id": ...}`` and never reaches the upstream.
"""

from __future__ import annotations

from typing import Any, Optional

from avx_twisted.plugins import PluginConfig, error


class DenyHeader:
    """The ``deny-header`` plugin."""

    api_version = 1

    def __init__(self, config: PluginConfig) -> None:
        self.header = config.header("header")

    def on_request(self, request: Any, ctx: Any) -> Optional[Any]:
        if self.header in request.headers:
            return error(403, "forbidden header", ctx)
        return None
