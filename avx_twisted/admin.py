"""The admin API (``[admin]``): its own listener, a bearer token, JSON in and out.

``GET /healthz`` (no token needed), ``GET /config`` (secrets redacted), ``GET /routes``,
``GET /upstreams``, ``POST /reload``, ``POST /upstreams/{url}/drain`` and
``POST /upstreams/{url}/enable`` (``{url}`` percent-encoded), ``POST /cache/purge``.
The token is configured only as its SHA-256 (``token_sha256``) and compared in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from . import cache
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
            (b"cache", b"purge"): {b"POST": self.post_cache_purge},
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
        if parts == (b"cache", b"purge"):
            args = (request,)
        result = handler(*args)
        if isinstance(result, Deferred):
            result.addCallback(self._answer_later, request)
            result.addErrback(self._failed_later, request)
            return NOT_DONE_YET  # type: ignore[no-any-return]
        return self._answer(request, *result)

    def _answer(self, request: Request, status: int, payload: Any) -> bytes:
        if status >= 400:
            return _error(request, status, payload)
        request.setResponseCode(status)
        request.responseHeaders.setRawHeaders(b"Content-Type", _JSON)
        return json.dumps(payload, indent=2).encode() + b"\n"

    def _answer_later(self, result: tuple[int, Any], request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.write(self._answer(request, *result))
            request.finish()

    def _failed_later(self, failure: Failure, request: Request) -> None:
        self.log.failure("admin request failed", failure)
        self._answer_later((500, "internal error"), request)

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

    def post_cache_purge(self, request: Request) -> Deferred[tuple[int, Any]] | tuple[int, Any]:
        """``{"url": "http://host/path?q"}`` (that URI, every variant), ``{"prefix": "/p/"}``
        (paths under it, any host) or ``{"route": "name"}``: ``{"purged": N}``."""
        store = self.service.runtime.cache_store
        if store is None:
            return 404, "no route is cached"
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            return 400, "the body must be JSON: {url}, {prefix} or {route}"
        if not isinstance(body, dict) or len(body) != 1:
            return 400, 'give one of "url", "prefix" or "route"'
        ((kind, value),) = body.items()
        if not isinstance(value, str) or not value:
            return 400, f"{kind!r} must be a non-empty string"
        if kind == "url":
            parsed = urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                return 400, "url must be an absolute http:// or https:// URL"
            target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
            key = cache.primary_key(
                parsed.scheme.encode(), parsed.netloc.encode("idna"), target.encode(), (), []
            )
            routes = self.service.runtime.routes
            if any(r.cache is not None and r.cache.policy.key_headers for r in routes):
                # A route keys on request headers too: every key of this URI goes.
                d = store.purge_uri(key, (parsed.path or "/").encode())
            else:
                d = store.delete(key)
        elif kind == "prefix":
            if not value.startswith("/"):
                return 400, "prefix must be a path starting with /"
            d = store.purge_prefix(value.encode())
        elif kind == "route":
            names = {r.name for r in self.service.runtime.routes if r.cache is not None}
            if value not in names:
                return 404, f"no cached route named {value!r}"
            d = store.purge_route(value)
        else:
            return 400, f'unknown key {kind!r}: give one of "url", "prefix" or "route"'
        self.log.info("admin: cache purge {kind}={value}", kind=kind, value=value)
        return d.addCallback(lambda n: (200, {"purged": n}))

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
