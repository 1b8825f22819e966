"""The ``[cors]`` policy: which browser origins may call the gateway's routes.

:class:`CorsPolicy` answers CORS preflights itself (they never reach an upstream) and computes the
``Access-Control-*`` headers added to actual responses. Everything that depends only on the
configuration (origin sets, joined and encoded header values) is computed once at start-up; per
request there is one set lookup for the origin and, for preflights, one per requested
header. ``proxy_headers.vary_value`` merges our ``Vary`` into an upstream's.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from avx_twisted.config import CorsConfig

from .errors import Answer
from .h1 import Fields, split_list

Header = tuple[bytes, bytes]

PREFLIGHT_STATUS = 204
"""Every preflight is answered ``204 No Content``, allowed or refused (see :meth:`preflight`)."""

_SAFELISTED_NAMES = ("accept", "accept-language", "content-language", "content-type")
SAFELISTED_REQUEST_HEADERS: frozenset[bytes] = frozenset(
    n.encode("ascii") for n in _SAFELISTED_NAMES
)
"""The CORS-safelisted request-header names (Fetch standard), always allowed in preflights."""

_ALLOW_ORIGIN = b"Access-Control-Allow-Origin"
_ALLOW_METHODS = b"Access-Control-Allow-Methods"
_ALLOW_HEADERS = b"Access-Control-Allow-Headers"
_ALLOW_CREDENTIALS = b"Access-Control-Allow-Credentials"
_EXPOSE_HEADERS = b"Access-Control-Expose-Headers"
_MAX_AGE = b"Access-Control-Max-Age"
_VARY = b"Vary"
_VARY_ACTUAL = b"Origin"
_VARY_PREFLIGHT = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _canonical_origin(origin: str) -> bytes:
    """An origin as browsers serialize it: lower-case, IDNA host, no default port.

    Raises ``ValueError`` for something that is not ``scheme://host[:port]``.
    """
    scheme, sep, authority = origin.strip().partition("://")
    if not sep or not scheme or not authority or "/" in authority:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    scheme = scheme.lower()
    host, colon, port = authority.rpartition(":")
    if not (colon and port.isdigit()):
        host, port = authority, ""
    if port == _DEFAULT_PORTS.get(scheme):
        port = ""
    try:
        host_bytes = host.lower().encode("ascii")
    except UnicodeEncodeError:
        host_bytes = host.encode("idna").lower()
    out = scheme.encode("ascii") + b"://" + host_bytes
    return out + b":" + port.encode("ascii") if port else out


def _join(names: Iterable[str]) -> bytes:
    """A header list value, ``b"A, B"``, from configured names."""
    return ", ".join(names).encode("ascii")


class CorsPolicy:
    """The ``[cors]`` policy, precomputed once (header values joined and encoded at start-up).

    Origins compare exactly on ``scheme://host[:port]``; scheme and host are compared
    case-insensitively (browsers send them lower-cased) and a configured default port
    (``https://x:443``) matches the browser's port-less serialization. The allowed origin is
    echoed back in that canonical form, which is byte-for-byte what a browser sends.

    ``"*"`` in ``allowed_origins`` allows every origin and is answered with
    ``Access-Control-Allow-Origin: *``, but only without credentials: browsers reject ``*`` on
    credentialed requests and reflecting any origin with credentials would let every site read
    users' data, so with ``allow_credentials`` the ``"*"`` entry is ignored (config validation
    already refuses that combination) and only the listed origins are allowed.

    The ``null`` origin (sandboxed iframes, ``file:`` pages, some redirects) is never allowed, even
    if listed or when ``"*"`` is configured: any page can make itself ``null``, so allowing it
    would amount to allowing everyone. A request carrying several ``Origin`` headers is refused.

    ``Vary: Origin`` is added to every answer, allowed or not, whenever the policy allows some
    origin: the answer then depends on ``Origin`` (even with ``"*"``, since a missing or ``null``
    origin gets no CORS headers), and a shared cache must not serve one origin's answer to another.

    ``allowed_methods`` and ``allowed_headers`` govern preflights only; as in browsers, they do not
    restrict requests that need no preflight. A ``"*"`` in either allows any method or header and
    is answered by naming the requested ones (a literal ``*`` would mean nothing to a browser on a
    credentialed request, and never covers ``Authorization``).
    """

    def __init__(self, config: CorsConfig) -> None:
        """Precompute the origin set and every header value from *config*."""
        credentials = config.allow_credentials
        self._wildcard = "*" in config.allowed_origins and not credentials
        self._origins: frozenset[bytes] = frozenset(
            _canonical_origin(o)
            for o in config.allowed_origins
            if o.strip().lower() not in ("*", "null")
        )
        self._vary: list[Header] = (
            [(_VARY, _VARY_ACTUAL)] if self._wildcard or self._origins else []
        )
        self._vary_preflight: list[Header] = [(_VARY, _VARY_PREFLIGHT)]

        methods = [m for m in config.allowed_methods if m != "*"]
        self._any_method = len(methods) != len(config.allowed_methods)
        self._methods: frozenset[bytes] = frozenset(m.encode("ascii") for m in methods)
        self._allow_methods = _join(methods)

        headers = [h for h in config.allowed_headers if h != "*"]
        self._any_header = len(headers) != len(config.allowed_headers)
        self._headers: frozenset[bytes] = SAFELISTED_REQUEST_HEADERS | frozenset(
            h.lower().encode("ascii") for h in headers
        )
        # A browser lists a safelisted name in Access-Control-Request-Headers when its value is not
        # safelisted (Content-Type: application/json) and then needs it named in the answer, so
        # the answer names the safelisted headers as well as the configured ones.
        configured = {h.lower() for h in headers}
        safelisted = [name.title() for name in _SAFELISTED_NAMES if name not in configured]
        self._allow_headers = _join(headers + safelisted)

        credentials_header = [(_ALLOW_CREDENTIALS, b"true")] if credentials else []
        expose = [(_EXPOSE_HEADERS, _join(config.expose_headers))] if config.expose_headers else []
        self._preflight_tail: list[Header] = (
            credentials_header
            + [(_MAX_AGE, str(config.max_age_s).encode("ascii"))]
            + self._vary_preflight
        )
        # The complete actual-request answer per allowed origin: the hot path is a lookup.
        actual_tail = credentials_header + expose + self._vary
        self._actual: dict[bytes, list[Header]] = {
            o: [(_ALLOW_ORIGIN, o)] + actual_tail for o in self._origins
        }
        self._actual_wildcard: list[Header] = [(_ALLOW_ORIGIN, b"*")] + actual_tail

    def _allowed_origin(self, headers: Fields) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for this request, or None if refused."""
        values = headers.get_all(b"origin")
        if not values or len(values) != 1:
            return None
        origin = values[0].strip().lower()
        if origin in self._origins:
            return origin
        if self._wildcard and origin and origin != b"null":
            return b"*"
        return None

    def origin_allowed(self, headers: Fields) -> bool:
        """Whether the request's single ``Origin`` is one this policy allows."""
        return self._allowed_origin(headers) is not None

    def is_preflight(self, method: bytes, headers: Fields) -> bool:
        """Whether this is a CORS preflight (``OPTIONS`` with ``Origin`` and a requested method).

        Other ``OPTIONS`` requests are ordinary requests for the upstream.
        """
        return (
            method == b"OPTIONS"
            and headers.has(b"origin")
            and headers.has(b"access-control-request-method")
        )

    def preflight(self, headers: Fields) -> tuple[int, list[Header]]:
        """Answer a preflight: ``(204, headers)``; the upstream never sees it.

        Allowed when the origin is allowed, the requested method is configured (compared exactly,
        as browsers do) and every name in ``Access-Control-Request-Headers`` is configured or
        CORS-safelisted (compared case-insensitively).

        A refused preflight is answered ``204`` too, with no ``Access-Control-*`` headers (only
        ``Vary``). The Fetch standard's CORS check fails a preflight whose response lacks
        ``Access-Control-Allow-Origin``, so the browser never sends the actual request; a 4xx
        would add nothing to that, would count as an error in logs and metrics for what is routine
        negotiation, and the uniform answer does not tell a prober which part was refused.
        """
        origin = self._allowed_origin(headers)
        if origin is not None:
            methods = self._allowed_method(headers)
            if methods is not None:
                allow_headers = self._allowed_headers(headers)
                if allow_headers is not None:
                    answer = [
                        (_ALLOW_ORIGIN, origin),
                        (_ALLOW_METHODS, methods),
                        (_ALLOW_HEADERS, allow_headers),
                    ]
                    return PREFLIGHT_STATUS, answer + self._preflight_tail
        return PREFLIGHT_STATUS, list(self._vary_preflight)

    def _allowed_method(self, headers: Fields) -> bytes | None:
        """The ``Access-Control-Allow-Methods`` value for this preflight, or None if refused."""
        values = headers.get_all(b"access-control-request-method")
        if not values or len(values) != 1:
            return None
        method = values[0].strip()
        if method in self._methods:
            return self._allow_methods
        if self._any_method and _TOKEN.match(method):
            return method
        return None

    def _allowed_headers(self, headers: Fields) -> bytes | None:
        """The ``Access-Control-Allow-Headers`` value for this preflight, or None if refused."""
        raw = headers.get_all(b"access-control-request-headers")
        requested = [name.lower() for name in split_list(raw)]
        if self._any_header:
            if not all(_TOKEN.match(name) for name in requested):
                return None
            return b", ".join(requested) if requested else self._allow_headers
        allowed = self._headers
        if all(name in allowed for name in requested):
            return self._allow_headers
        return None

    def response_headers(self, headers: Fields) -> list[Header]:
        """The CORS headers to add to the response to an actual (non-preflight) request.

        For an allowed origin: ``Access-Control-Allow-Origin``, ``Access-Control-Allow-Credentials``
        and ``Access-Control-Expose-Headers`` when configured, and ``Vary: Origin``. For a
        disallowed, missing or ``null`` origin: only ``Vary: Origin`` (when the policy allows any
        origin). Merge the ``Vary`` with the upstream's using ``proxy_headers.vary_value``.
        """
        origin = self._allowed_origin(headers)
        if origin is None:
            return list(self._vary)
        if origin == b"*":
            return list(self._actual_wildcard)
        return list(self._actual[origin])


class CorsFilter:
    """The route filter: answers preflights itself, marks actual responses for allowed origins.

    Its headers are set on the request before forwarding, so they are on every answer of the
    route, the gateway's own rejections (401, 429, ...) included, and a browser can read them.
    """

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy

    def __call__(self, request: Any, ctx: Any) -> Answer | None:
        headers = request.fields
        if self.policy.is_preflight(request.method, headers):
            status, answer = self.policy.preflight(headers)
            return Answer(status, answer, b"")
        request.response_fields.extend(self.policy.response_headers(headers))
        return None

    def origin_allowed(self, request: Any) -> bool:
        """Whether a request's ``Origin`` is allowed (a request without one is: not a browser's
        cross-site request). Cross-site WebSocket hijacking is refused with this."""
        if not request.fields.has(b"origin"):
            return True
        return self.policy.origin_allowed(request.fields)


#: Response headers the gateway owns on a route it answers CORS for (the upstream's are dropped).
OWNED_RESPONSE_HEADERS = frozenset(
    [
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    ]
)
