"""The admin API (``[admin]``): its own listener, a bearer token, JSON in and out.

``GET /healthz`` (no token needed), ``GET /config`` (secrets redacted), ``GET /routes``,
``GET /upstreams``, ``POST /reload``, ``POST /upstreams/{url}/drain`` and
``POST /upstreams/{url}/enable`` (``{url}`` percent-encoded).
The token is configured only as its SHA-256 (``token_sha256``) and compared in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .errors import error_answer

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .runtime import Runtime


class AdminService(Protocol):
    """What the admin API needs of the gateway it manages (the
    :class:`~avx_twisted.service.GatewayService` is one)."""

    @property
    def config(self) -> GatewayConfig:
        """The configuration in use."""

    @property
    def runtime(self) -> Runtime:
        """The runtime in use: its routes and their upstream targets."""

    def reload(self) -> bool:
        """Re-read the configuration file and swap the runtime; False if it was refused."""


_REDACTED = "<redacted>"
_SECRET_KEYS = frozenset(["secret", "sha256", "token_sha256"])
_JSON = [b"application/json"]


def _error(request: Request, status: int, message: str, fields: Any = ()) -> bytes:
    """The gateway's JSON error on a twisted.web request: status and fields set, body back."""
    answer = error_answer(status, message, fields)
    request.setResponseCode(status)
    for name, value in answer.fields:
        request.responseHeaders.setRawHeaders(name, [value])
    return answer.body


def redact(value: Any) -> Any:
    """The config as plain JSON data, with every secret replaced by ``<redacted>``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: (
                _REDACTED
                if f.name in _SECRET_KEYS and getattr(value, f.name)
                else redact(getattr(value, f.name))
            )
            for f in dataclasses.fields(value)
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


class AdminResource(Resource):
    """Routes admin requests after checking the bearer token."""

    isLeaf = True
    log = Logger()

    def __init__(self, service: AdminService, token_sha256: str) -> None:
        super().__init__()
        self.service = service
        self.token = bytes.fromhex(token_sha256)
        self.routes: dict[tuple[bytes, ...], dict[bytes, Callable[..., Any]]] = {
            (b"config",): {b"GET": self.get_config},
            (b"routes",): {b"GET": self.get_routes},
            (b"upstreams",): {b"GET": self.get_upstreams},
            (b"reload",): {b"POST": self.post_reload},
        }

    def render(self, request: Request) -> bytes:
        if request.path == b"/healthz" and request.method in (b"GET", b"HEAD"):
            # Liveness without a token: what a supervisor or a load balancer can probe.
            request.responseHeaders.setRawHeaders(b"Content-Type", _JSON)
            request.responseHeaders.setRawHeaders(b"Cache-Control", [b"no-store"])
            return b'{"status":"alive"}\n'
        if not self._authorized(request):
            self.log.warn(
                "admin: refused request without a valid token from {client}",
                client=getattr(request.getClientAddress(), "host", None),
            )
            return _error(
                request,
                401,
                "admin token required",
                [(b"WWW-Authenticate", b'Bearer realm="avx-gateway-admin"')],
            )
        parts = tuple(p for p in request.path.split(b"/") if p)
        handlers = self.routes.get(parts)
        args: tuple[Any, ...] = ()
        if handlers is None and len(parts) == 3 and parts[0] == b"upstreams":
            if parts[2] in (b"drain", b"enable"):
                handlers = {b"POST": self.post_target_state}
                args = (unquote(parts[1].decode("latin-1")), parts[2] == b"enable")
        if handlers is None:
            return _error(request, 404, "no such admin endpoint")
        handler = handlers.get(request.method)
        if handler is None:
            allow = b", ".join(sorted(handlers))
            return _error(request, 405, "method not allowed", [(b"Allow", allow)])
        status, payload = handler(*args)
        if status >= 400:
            return _error(request, status, payload)
        request.setResponseCode(status)
        request.responseHeaders.setRawHeaders(b"Content-Type", _JSON)
        return json.dumps(payload, indent=2).encode() + b"\n"

    def _authorized(self, request: Request) -> bool:
        values = request.requestHeaders.getRawHeaders(b"authorization")
        if not values:
            return False
        scheme, _, token = values[-1].partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip()).digest()
        return hmac.compare_digest(digest, self.token)

    # -- endpoints ---------------------------------------------------------------------------

    def get_config(self) -> tuple[int, Any]:
        return 200, redact(self.service.config)

    def get_routes(self) -> tuple[int, Any]:
        return 200, [
            {
                "name": r.name,
                "path": r.config.path,
                "host": r.config.host,
                "methods": list(r.config.methods) if r.config.methods else None,
                "strip_path": r.config.strip_path,
                "upstreams": [t.url for t in r.upstream.targets],
                "strategy": r.config.upstream.strategy if r.config.upstream else None,
                "resource": r.config.resource,
                "auth": list(r.config.auth),
            }
            for r in self.service.runtime.routes
        ]

    def get_upstreams(self) -> tuple[int, Any]:
        return 200, [
            {"route": r.name, "enabled": t.enabled, **t.status()}
            for r in self.service.runtime.routes
            for t in r.upstream.targets
        ]

    def post_reload(self) -> tuple[int, Any]:
        if self.service.reload():
            return 200, {"reloaded": True, "routes": len(self.service.runtime.routes)}
        return 400, "reload refused: the configuration file is invalid (see the gateway log)"

    def post_target_state(self, url: str, enabled: bool) -> tuple[int, Any]:
        changed = []
        for route in self.service.runtime.routes:
            for target in route.upstream.targets:
                if target.url == url:
                    target.enabled = enabled
                    changed.append(route.name)
        if not changed:
            return 404, "no upstream target with that URL"
        self.log.info(
            "admin: target {url} {state} on routes {routes}",
            url=url,
            state="enabled" if enabled else "drained",
            routes=", ".join(changed),
        )
        return 200, {"url": url, "enabled": enabled, "routes": changed}


def admin_site(service: AdminService, token_sha256: str) -> Site:
    """The admin listener's factory (no per-request access log line)."""
    site = Site(AdminResource(service, token_sha256))
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    return site
