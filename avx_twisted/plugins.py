"""Plugins: what a third party writes to act on requests and responses on their way through.

A plugin is an ordinary distribution exposing a factory (usually a class) in the
``avx_gateway.plugins`` entry-point group; the entry point's name is the plugin's name in the
config (``routes[].plugins = [{ name = "tenant-header", config = {...} }]``, ``[plugins] global``).
The factory declares ``api_version = 1`` and is called with a :class:`PluginConfig` when the config
file is loaded (start-up, ``--check``, every reload), so it validates its own config with the
gateway's error quality. The object it returns implements only the phases it needs:

``on_request(request, ctx)``
    After routing and the built-in filters (CORS, auth, rate limit, body limit). Return ``None``
    to go on, an answer (:func:`reply`, :func:`error`) to short-circuit, or a Deferred of either.
``on_upstream_request(request, ctx)``
    Just before each try is sent upstream: ``request.headers`` and ``request.target`` may change.
``on_response(response, ctx)``
    Status and headers of the answer (the upstream's, or a short-circuit's): may change them.
``on_response_body(data, last, ctx) -> bytes``
    The response body chunk by chunk (``last`` on the final call, maybe with ``b""``); with
    ``response_body_buffer = N`` on the plugin, once, with the whole body when it is at most N
    bytes (bigger bodies pass unchanged and are counted).
``on_log(ctx, summary)``
    After the response is done (``summary``: the access record's fields); never affects it.
``on_error(ctx, error)``
    After a response the gateway answered with an error or cut short (``error``: the reason).

Request phases run in list order (``[plugins] global`` first), response phases in reverse. An
exception in a plugin answers that request 500 (before the response started) or aborts it (after),
or is logged and counted (``on_log``, ``on_error``); it never reaches the client or other requests.

This module is the API (and the loader); :mod:`avx_twisted.plugin_chain` runs the phases.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from .errors import Answer, error_answer
from .h1 import Fields

#: The plugin API this gateway implements; a plugin declaring another is refused at load.
API_VERSION = 1
#: The entry-point group plugins are found in.
ENTRY_POINT_GROUP = "avx_gateway.plugins"
#: Every phase a plugin may implement, in the order of a request's life.
PHASES = (
    "on_request",
    "on_upstream_request",
    "on_response",
    "on_response_body",
    "on_log",
    "on_error",
)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MISSING: Any = object()

#: Plugins registered in-process (tests, the Python API), by name; they win over entry points.
_registered: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any]) -> None:
    """Make ``factory`` available as plugin ``name`` without packaging it (tests, embedding)."""
    _registered[name] = factory


def unregister(name: str) -> None:
    _registered.pop(name, None)


def installed() -> dict[str, Any]:
    """Every plugin this process can load, by name: the ``avx_gateway.plugins`` entry points of
    the installed distributions, and those :func:`register` added (a factory, or an entry point
    loaded on first use)."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    if sys.version_info >= (3, 10):
        points = entry_points(group=ENTRY_POINT_GROUP)
    else:  # pragma: no cover - PyPy 3.9
        points = entry_points().get(ENTRY_POINT_GROUP, ())
    for point in points:
        found.setdefault(point.name, point)
    found.update(_registered)
    return found


# -- config --------------------------------------------------------------------------------------


class PluginConfig:
    """A plugin's ``config`` table, read with the gateway's error quality: every problem is
    recorded under its key path (``routes[2].plugins[0].config.header: 42 is not a string``) and
    reported with the rest of the file's; keys the plugin never read are reported as unknown."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self.raw = dict(raw)
        self.path = path
        self.errors: list[str] = []
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def error(self, name: str, message: str) -> None:
        """Record a problem with key ``name`` (the plugin's own checks)."""
        self.errors.append(f"{self.key(name)}: {message}")

    def _value(self, name: str, default: Any, kind: str, ok: Callable[[Any], bool]) -> Any:
        self._read.add(name)
        if name not in self.raw:
            if default is _MISSING:
                self.error(name, "is required")
                return None
            return default
        value = self.raw[name]
        if not ok(value):
            self.error(name, f"{_show(value)} is not {kind}")
            return default if default is not _MISSING else None
        return value

    def str(self, name: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> Any:
        """A string (one of ``choices`` when given)."""
        value = self._value(name, default, "a string", lambda v: isinstance(v, str))
        if choices and isinstance(value, str) and value not in choices:
            self.error(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def header(self, name: str, default: Any = _MISSING) -> Any:
        """A header field name."""
        value = self.str(name, default)
        if isinstance(value, str) and not _TOKEN.match(value):
            self.error(name, f"{value!r} is not a header name")
        return value

    def int(self, name: str, default: Any = _MISSING, minimum: Optional[int] = None) -> Any:
        value = self._value(
            name,
            default,
            "an integer",
            lambda v: isinstance(v, int) and not isinstance(v, bool),
        )
        if minimum is not None and isinstance(value, int) and value < minimum:
            self.error(name, f"{value} must be at least {minimum}")
        return value

    def float(self, name: str, default: Any = _MISSING) -> Any:
        value = self._value(
            name,
            default,
            "a number",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        )
        return float(value) if isinstance(value, (int, float)) else value

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        return self._value(name, default, "true or false", lambda v: isinstance(v, bool))

    def list(self, name: str, default: Any = _MISSING) -> Any:
        """A list of strings."""
        return self._value(
            name,
            default,
            "a list of strings",
            lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        )

    def table(self, name: str, default: Any = _MISSING) -> Any:
        return self._value(name, default, "a table", lambda v: isinstance(v, Mapping))

    def unread(self) -> list[str]:
        """Errors for keys the plugin did not read."""
        known = sorted(self._read)
        return [
            f"{self.key(k)}: unknown key (known keys: {', '.join(known) or 'none'})"
            for k in self.raw
            if k not in self._read
        ]


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def load(name: str, config: Mapping[str, Any], path: str) -> tuple[Any, list[str]]:
    """Make plugin ``name`` from its ``config`` table: (the plugin, []) or (None, errors).
    ``path`` is the key path of its ``{ name, config }`` table, for error messages."""
    available = installed()
    factory = available.get(name)
    if factory is None:
        names = ", ".join(sorted(available)) or "none"
        return None, [f"{path}.name: {name!r} is not an installed plugin (installed: {names})"]
    if hasattr(factory, "load") and hasattr(factory, "group"):  # an entry point
        try:
            factory = factory.load()
        except Exception as e:
            return None, [f"{path}.name: plugin {name!r} cannot be loaded: {_reason(e)}"]
    version = getattr(factory, "api_version", None)
    if version != API_VERSION:
        return None, [
            f"{path}.name: plugin {name!r} declares plugin API version {version!r}; this "
            f"gateway implements version {API_VERSION}"
        ]
    settings = PluginConfig(config, f"{path}.config")
    try:
        plugin = factory(settings)
    except Exception as e:
        return None, settings.errors or [f"{path}.config: plugin {name!r} refused it: {_reason(e)}"]
    problems = settings.errors + settings.unread()
    if problems:
        return None, problems
    if not any(callable(getattr(plugin, phase, None)) for phase in PHASES):
        return None, [f"{path}.name: plugin {name!r} implements none of {', '.join(PHASES)}"]
    return plugin, []


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- what a plugin sees --------------------------------------------------------------------------


class Headers:
    """Header fields as text (names any case; values latin-1), over the gateway's raw fields.
    A value with CR, LF or NUL is refused (``ValueError``): never header injection."""

    __slots__ = ("fields",)

    def __init__(self, fields: Fields) -> None:
        self.fields = fields

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        value = self.fields.get(name.lower().encode("latin-1"))
        return value.decode("latin-1") if value is not None else default

    def get_all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for v in self.fields.get_all(name.lower().encode("latin-1"))]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.fields.has(name.lower().encode("latin-1"))

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one."""
        self.fields.set(_name(name), _value(value))

    def add(self, name: str, value: str) -> None:
        self.fields.add(_name(name), _value(value))

    def remove(self, name: str) -> None:
        self.fields.remove(_name(name))

    def items(self) -> Iterator[tuple[str, str]]:
        for name, value in self.fields:
            yield name.decode("latin-1"), value.decode("latin-1")


def _name(name: str) -> bytes:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a header name")
    return name.encode("ascii")


def _value(value: str) -> bytes:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value may not contain CR, LF or NUL")
    return value.encode("latin-1")


class Request:
    """The client's request as a plugin sees it (``on_request``): read it, change its headers
    (they go upstream as changed), or change ``target`` (the upstream path and query)."""

    __slots__ = ("_request", "_ctx", "headers")

    def __init__(self, request: Any, ctx: Any) -> None:
        self._request = request
        self._ctx = ctx
        self.headers = Headers(request.fields)

    @property
    def method(self) -> str:
        return self._request.method.decode("latin-1")  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        """The path the client asked for (percent-escapes as sent)."""
        return self._request.path.decode("latin-1")  # type: ignore[no-any-return]

    @property
    def query(self) -> str:
        return self._request.target.partition(b"?")[2].decode("latin-1")  # type: ignore[no-any-return]

    @property
    def host(self) -> Optional[str]:
        authority = self._request.authority
        return authority.decode("latin-1") if authority else None

    @property
    def target(self) -> str:
        """What is sent upstream as path and query (after ``strip_path``)."""
        return self._ctx.upstream_target.decode("latin-1")  # type: ignore[no-any-return]

    @target.setter
    def target(self, value: str) -> None:
        if not value.startswith("/") or any(c in value for c in " \r\n\0#"):
            raise ValueError(f"{value!r} is not an origin-form target (/path?query)")
        self._ctx.upstream_target = value.encode("latin-1")


class UpstreamRequest:
    """One try about to be sent upstream (``on_upstream_request``): its headers (the final set,
    ``Host`` and ``X-Forwarded-*`` included) may change, and its ``target``."""

    __slots__ = ("method", "url", "target", "headers")

    def __init__(self, method: str, url: str, target: str, fields: Fields) -> None:
        self.method = method
        #: The upstream target's base URL (``http://10.0.0.5:8001``).
        self.url = url
        self.target = target
        self.headers = Headers(fields)


class Response:
    """The answer's status and headers (``on_response``); both may change."""

    __slots__ = ("status", "headers")

    def __init__(self, status: int, fields: Fields) -> None:
        self.status = status
        self.headers = Headers(fields)


def reply(
    status: int,
    body: bytes | str = b"",
    headers: Sequence[tuple[str, str]] = (),
    json_body: Any = _MISSING,
) -> Answer:
    """An answer a plugin makes itself (``on_request`` may return it): ``json_body`` is encoded
    as JSON with its Content-Type; a ``str`` body is UTF-8."""
    fields = [(_name(k), _value(v)) for k, v in headers]
    if json_body is not _MISSING:
        body = json.dumps(json_body).encode() + b"\n"
        fields.append((b"Content-Type", b"application/json"))
    elif isinstance(body, str):
        body = body.encode("utf-8")
        if not any(k.lower() == b"content-type" for k, _ in fields):
            fields.append((b"Content-Type", b"text/plain; charset=utf-8"))
    return Answer(status, fields, body)


def error(status: int, message: str, ctx: Any = None) -> Answer:
    """The gateway's own JSON error (``{"error": ..., "status": ..., "request_id": ...}``)."""
    request_id = getattr(ctx, "request_id", "") or ""
    return error_answer(status, message, request_id=request_id.encode("latin-1"))
