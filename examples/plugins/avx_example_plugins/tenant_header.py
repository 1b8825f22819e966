"""``tenant-header``: tell the upstream which tenant a request belongs to, from the verified token.

Config::

    plugins = [{ name = "tenant-header", config = { header = "X-Tenant", claim = "org" } }]

``header`` (required)
    The request header to set (a header name). Whatever the client sent under this name is
    replaced or removed: a client never chooses its own tenant.
``claim`` (default ``"tenant"``)
    The JWT claim holding the tenant. It is used when the request was authenticated with a JWT
    (the route has ``auth = ["jwt"]``, or ``"jwt"`` among its methods, and the token passed) and
    the verified token has the claim as a non-empty string or an integer. Any other value (a list,
    an empty string, text with control characters) counts as no claim.
``default`` (optional string)
    The value to set when there is no usable claim (no token, an API key, a token without the
    claim). Without ``default`` the header is removed in that case.
"""

from __future__ import annotations

from typing import Any, Optional

from avx_twisted.plugins import PluginConfig


def _usable(value: str) -> bool:
    """A header value the gateway can send: latin-1, no control characters but tab."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any((c < " " and c != "\t") or c == "\x7f" for c in value)


class TenantHeader:
    """The ``tenant-header`` plugin."""

    api_version = 1

    def __init__(self, config: PluginConfig) -> None:
        self.header = config.header("header")
        self.claim = config.str("claim", "tenant")
        self.default: Optional[str] = config.str("default", None)
        if self.claim == "":
            config.error("claim", "must not be empty")
        if isinstance(self.default, str):
            stripped = self.default.strip(" \t")
            if not stripped:
                config.error("default", "must not be empty (leave it out for no default)")
            elif stripped != self.default or not _usable(self.default):
                config.error(
                    "default",
                    f"{self.default!r} is not a header value (no control characters, no "
                    "leading or trailing spaces, latin-1 only)",
                )

    def tenant(self, identity: Any) -> Optional[str]:
        """The tenant of a verified caller (``ctx.identity``), or None."""
        if identity is None or getattr(identity, "method", None) != "jwt":
            return None
        value = (getattr(identity, "claims", None) or {}).get(self.claim)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            value = value.strip(" \t")
            if value and _usable(value):
                return value
        return None

    def on_request(self, request: Any, ctx: Any) -> None:
        value = self.tenant(ctx.identity)
        if value is None:
            value = self.default
        if value is None:
            request.headers.remove(self.header)
        else:
            request.headers.set(self.header, value)
