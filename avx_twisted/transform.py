# -*- test-case-name: tests.unit.test_transform -*-
"""Request and response transformation of a route (``[routes.request]``, ``[routes.response]``):
header fields set, added, removed and renamed; query parameters set and removed; the forwarded
path rewritten by a regex.

Values are templates compiled once when the config is loaded: ``${client_ip}``,
``${request_id}``, ``${route}``, ``${method}``, ``${host}`` (the Host as received), ``${path}``
(as received), ``${param.NAME}`` (a parameter of the route's path), ``${header.NAME}``,
``${query.NAME}`` (raw, as sent), ``${jwt.CLAIM}`` (a verified claim), ``${consumer}`` (who auth
says is asking); ``$$`` is a literal ``$``. A variable without a value expands to nothing. A
value that comes out with CR, LF or NUL is refused (the request is answered 400; a response
field is left out): no header injection through a client's own values.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote_to_bytes

Pair = Tuple[bytes, bytes]
Getter = Callable[[Any, Any], Optional[bytes]]

_TEMPLATE = re.compile(r"\$(\$|\{([a-z_]+)(?:\.([A-Za-z0-9_.:-]+))?\})")
_BAD = re.compile(rb"[\r\n\x00]")


def pattern_params(pattern: str) -> Tuple[str, ...]:
    """The ``{name}`` parameters of a route's path pattern (for ``${param.NAME}``)."""
    return tuple(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", pattern))


class TemplateError(ValueError):
    """A template that cannot be compiled (the message says why)."""


def _text(value: Any) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode("utf-8")


def _claim(name: str) -> Getter:
    def get(request: Any, ctx: Any) -> Optional[bytes]:
        identity = ctx.identity if ctx is not None else None
        if identity is None or identity.method not in ("jwt", "oauth2"):
            return None
        return _text(identity.claims.get(name))

    return get


def _header(name: str) -> Getter:
    lower = name.lower().encode("ascii")
    return lambda request, ctx: request.fields.get(lower)


def _query(name: str) -> Getter:
    key = name.encode("ascii")

    def get(request: Any, ctx: Any) -> Optional[bytes]:
        for pair in request.query.split(b"&"):
            k, _, v = pair.partition(b"=")
            if unquote_to_bytes(k) == key:
                return v
        return None

    return get


def _param(name: str) -> Getter:
    def get(request: Any, ctx: Any) -> Optional[bytes]:
        params = ctx.params if ctx is not None else None
        return _text(params.get(name)) if params else None

    return get


_SIMPLE: Dict[str, Getter] = {
    "client_ip": lambda request, ctx: _text(ctx.client_ip if ctx else request.peer_host),
    "request_id": lambda request, ctx: ctx.request_id if ctx else None,
    "route": lambda request, ctx: _text(ctx.route) if ctx else None,
    "method": lambda request, ctx: request.method,
    "host": lambda request, ctx: request.authority,
    "path": lambda request, ctx: request.path,
    "consumer": lambda request, ctx: (
        _text(ctx.identity.name) if ctx is not None and ctx.identity is not None else None
    ),
}
_NAMED: Dict[str, Callable[[str], Getter]] = {
    "param": _param,
    "header": _header,
    "query": _query,
    "jwt": _claim,
}
VARIABLES = tuple(f"${{{n}}}" for n in _SIMPLE) + tuple(f"${{{n}.NAME}}" for n in _NAMED)


class Template:
    """A compiled value: literal bytes and variables."""

    def __init__(self, parts: List[Any]) -> None:
        self._parts = parts
        self.literal: Optional[bytes] = (
            parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else None
        )
        if not parts:
            self.literal = b""

    def expand(self, request: Any, ctx: Any) -> bytes:
        if self.literal is not None:
            return self.literal
        out = []
        for part in self._parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                value = part(request, ctx)
                if value:
                    out.append(value)
        return b"".join(out)


def compile_template(text: str, params: Sequence[str] = ()) -> Template:
    """Compile ``text``; raises :class:`TemplateError` for an unknown variable, a parameter the
    route's path does not have, or a ``$`` that starts nothing (write ``$$``)."""
    parts: List[Any] = []
    at = 0
    for match in _TEMPLATE.finditer(text):
        literal = text[at : match.start()]
        if "$" in literal:
            raise TemplateError(
                f"'$' at {at + literal.index('$')} starts no variable (write $$ for a '$')"
            )
        if literal:
            parts.append(literal.encode("utf-8"))
        at = match.end()
        if match.group(1) == "$":
            parts.append(b"$")
            continue
        name, arg = match.group(2), match.group(3)
        if arg is None:
            getter = _SIMPLE.get(name)
            if getter is None:
                raise TemplateError(f"unknown variable ${{{name}}} (known: {', '.join(VARIABLES)})")
            parts.append(getter)
            continue
        make = _NAMED.get(name)
        if make is None:
            raise TemplateError(
                f"unknown variable ${{{name}.{arg}}} (known: {', '.join(VARIABLES)})"
            )
        if name == "param" and arg not in params:
            known = ", ".join(params) or "none"
            raise TemplateError(
                f"${{param.{arg}}}: the route's path has no {{{arg}}} (its params: {known})"
            )
        parts.append(make(arg))
    rest = text[at:]
    if "$" in rest:
        raise TemplateError(
            f"'$' at {at + rest.index('$')} starts no variable (write $$ for a '$')"
        )
    if rest:
        parts.append(rest.encode("utf-8"))
    # Adjacent literals joined: a template without variables expands to one constant.
    joined: List[Any] = []
    for part in parts:
        if isinstance(part, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += part
        else:
            joined.append(part)
    return Template(joined)


class Unsafe(Exception):
    """A template expanded to a value with CR, LF or NUL."""

    def __init__(self, name: bytes) -> None:
        super().__init__(f"{name.decode('latin-1')}: the value would carry CR, LF or NUL")
        self.name = name


class HeaderRules:
    """Header changes, in a fixed order: remove, rename, set (replace), add (append)."""

    def __init__(
        self,
        set_headers: Sequence[Tuple[str, Template]] = (),
        add_headers: Sequence[Tuple[str, Template]] = (),
        remove_headers: Sequence[str] = (),
        rename_headers: Sequence[Tuple[str, str]] = (),
    ) -> None:
        self.set = [(n.encode("ascii"), t) for n, t in set_headers]
        self.add = [(n.encode("ascii"), t) for n, t in add_headers]
        self.remove = frozenset(n.lower().encode("ascii") for n in remove_headers)
        self.rename = {o.lower().encode("ascii"): n.encode("ascii") for o, n in rename_headers}
        self._set_names = frozenset(n.lower() for n, _ in self.set)

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove or self.rename)

    def apply(self, pairs: List[Pair], request: Any, ctx: Any, strict: bool) -> List[Pair]:
        """``pairs`` changed; ``strict``: an unsafe value raises :class:`Unsafe` (requests),
        else the field is left out (responses)."""
        out: List[Pair] = []
        rename = self.rename
        for name, value in pairs:
            lower = name.lower()
            if lower in self.remove:
                continue
            renamed = rename.get(lower)
            if renamed is not None:
                name, lower = renamed, renamed.lower()
            if lower in self._set_names:
                continue
            out.append((name, value))
        for rules in (self.set, self.add):
            for name, template in rules:
                value = template.expand(request, ctx)
                if _BAD.search(value):
                    if strict:
                        raise Unsafe(name)
                    continue
                out.append((name, value))
        return out


class RequestRules:
    """``[routes.request]``: headers, query and path of what goes upstream."""

    def __init__(
        self,
        headers: HeaderRules,
        set_query: Sequence[Tuple[str, Template]] = (),
        remove_query: Sequence[str] = (),
        rewrite: Optional[Tuple[str, str]] = None,
    ) -> None:
        self.headers = headers
        self.set_query = [(n.encode("utf-8"), t) for n, t in set_query]
        self.remove_query = frozenset(n.encode("utf-8") for n in remove_query)
        self.rewrite = (
            (re.compile(rewrite[0].encode("utf-8")), rewrite[1].encode("utf-8"))
            if rewrite
            else None
        )

    def apply(self, request: Any, ctx: Any, target: bytes) -> bytes:
        """Change ``request``'s fields in place and return the target (path and query) sent
        upstream; raises :class:`Unsafe` (answer 400) or :class:`PathError` (answer 400)."""
        if self.headers:
            fields = request.fields
            fields.replace(self.headers.apply(fields.pairs, request, ctx, strict=True))
        path, sep, query = target.partition(b"?")
        if self.rewrite is not None:
            pattern, replacement = self.rewrite
            path = normalise_path(pattern.sub(replacement, path, count=1))
        if self.set_query or self.remove_query:
            query = self._query(query, request, ctx)
            sep = b"?" if query else b""
        return path + sep + query

    def _query(self, query: bytes, request: Any, ctx: Any) -> bytes:
        pairs = [p for p in query.split(b"&") if p] if query else []
        kept: List[bytes] = []
        setting = {name: template for name, template in self.set_query}
        done = set()
        for pair in pairs:
            key = unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" "))
            if key in self.remove_query:
                continue
            template = setting.get(key)
            if template is not None:
                if key in done:
                    continue  # set: one value, where the first one was
                done.add(key)
                pair = pair.partition(b"=")[0] + b"=" + _encode(template.expand(request, ctx))
            kept.append(pair)
        for key, template in self.set_query:
            if key not in done:
                kept.append(_encode(key) + b"=" + _encode(template.expand(request, ctx)))
        return b"&".join(kept)


def _encode(value: bytes) -> bytes:
    return quote(value, safe="-._~!$'()*,;:@/").encode("ascii")


class PathError(ValueError):
    """A rewritten path that would climb above ``/``."""


def normalise_path(path: bytes) -> bytes:
    """``path`` with its dot segments resolved (RFC 3986 5.2.4) and a leading ``/``; one that
    would climb above the root is a :class:`PathError`."""
    if not path.startswith(b"/"):
        path = b"/" + path
    out: List[bytes] = []
    segments = path.split(b"/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        decoded = unquote_to_bytes(segment)
        if decoded == b".":
            if last:
                out.append(b"")
            continue
        if decoded == b"..":
            if not out:
                raise PathError("the rewritten path climbs above /")
            out.pop()
            if last:
                out.append(b"")
            continue
        out.append(segment)
    return b"/" + b"/".join(out)


def check_rewrite(pattern: str, replacement: str) -> Optional[str]:
    """Why a ``rewrite_path`` cannot be used (None: it can): a bad regex, or a replacement
    naming a group the pattern does not have."""
    try:
        compiled = re.compile(pattern.encode("utf-8"))
    except re.error as e:
        return f"pattern {pattern!r} is not a valid regular expression: {e}"
    try:
        # Expanding against a match with the same groups finds the bad references (re's own
        # check of the replacement).
        names = {index: name for name, index in compiled.groupindex.items()}
        groups = "".join(
            f"(?P<{names[i]}>.)" if i in names else "(.)" for i in range(1, compiled.groups + 1)
        )
        probe = re.match(groups.encode(), b"x" * compiled.groups)
        assert probe is not None
        probe.expand(replacement.encode("utf-8"))
    except (re.error, IndexError) as e:
        return f"replacement {replacement!r}: {e}"
    return None
