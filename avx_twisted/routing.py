"""Request routing: map (Host, request-target, method) to a configured route.

Patterns are compiled once by :class:`RouteTable`; :meth:`RouteTable.match` then does the
per-request work: split the target, normalise the path (decode percent-escapes of
unreserved characters for matching, resolve dot segments) and pick the most specific rule.
Normalising before matching means nobody can bypass a route by spelling a path differently
(``/%61dmin``, ``/x/../admin``), while the path forwarded upstream keeps the client's
original bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union


class PatternError(ValueError):
    """A route path pattern is invalid; ``str(e)`` is a short reason for config errors."""


class BadPath(ValueError):
    """The request target cannot be routed (climbs above '/', or bad form); answer 400."""


@dataclass(frozen=True)
class RouteRule:
    """One configured route: path pattern, optional host/methods, and an opaque payload."""

    pattern: str
    value: object
    host: Optional[str] = None
    methods: Optional[FrozenSet[str]] = None
    strip_path: bool = False


@dataclass(frozen=True)
class RouteMatch:
    """A successful match: the rule's payload, captured params and the upstream target."""

    value: object
    params: Dict[str, str]
    upstream_target: bytes


@dataclass(frozen=True)
class MethodNotAllowed:
    """Rules matched the path but none allows the method; ``allowed`` feeds the Allow header."""

    allowed: Tuple[str, ...]


# --- percent-escapes --------------------------------------------------------------------------

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE_RE = re.compile(r"%[0-9A-Fa-f]{2}")


def _decode_if_unreserved(m: re.Match) -> str:
    """Regex callback: decode one escape if it encodes an unreserved character."""
    char = chr(int(m.group()[1:], 16))
    return char if char in _UNRESERVED else m.group()


def _unreserved_decode(text: str) -> str:
    """Decode only escapes of unreserved characters (never '/'), so segments stay aligned."""
    if "%" not in text:
        return text
    return _ESCAPE_RE.sub(_decode_if_unreserved, text)


# --- patterns ---------------------------------------------------------------------------------

# One fixed (non-'*') pattern segment: (literal match form, None) or (None, param name).
_Segment = Tuple[Optional[str], Optional[str]]


def _parse(pattern: str) -> Tuple[Tuple[_Segment, ...], bool]:
    """Parse a pattern into its fixed segments and whether it ends with '*'."""
    if not isinstance(pattern, str):
        raise PatternError("pattern must be a string")
    if not pattern.startswith("/"):
        raise PatternError("pattern must start with '/'")
    if "?" in pattern or "#" in pattern:
        raise PatternError("'?' and '#' are not allowed in a pattern")
    if not pattern.isascii():
        raise PatternError("pattern must be ASCII (percent-encode other characters)")
    if pattern == "/":
        return (("", None),), False
    parts = pattern[1:].split("/")
    wildcard = parts[-1] == "*"
    if wildcard:
        parts.pop()
    segments: List[_Segment] = []
    names = set()
    for part in parts:
        if part == "":
            raise PatternError("empty segment ('//' or trailing '/') in pattern")
        if part == "*":
            raise PatternError("'*' is only allowed as the last segment")
        if "*" in part:
            raise PatternError("'*' must be a whole segment")
        if "{" in part or "}" in part:
            name = part[1:-1]
            if part[0] != "{" or part[-1] != "}" or "{" in name or "}" in name:
                raise PatternError("'{name}' must be a whole segment")
            if not name.isidentifier():
                raise PatternError(f"parameter name {name!r} is not a valid identifier")
            if name in names:
                raise PatternError(f"duplicate parameter name {name!r}")
            names.add(name)
            segments.append((None, name))
            continue
        literal = _unreserved_decode(part)
        if literal in (".", ".."):
            raise PatternError("'.' and '..' segments are not allowed")
        segments.append((literal, None))
    return tuple(segments), wildcard


def parse_pattern(pattern: str) -> None:
    """Validate a route pattern at start-up; raise :class:`PatternError` with the reason."""
    _parse(pattern)


# --- hosts ------------------------------------------------------------------------------------


def _normalize_host(host: str) -> Optional[str]:
    """Lowercase a Host value and drop its port, IPv6 brackets and trailing dot."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end != -1:
            h = h[1:end]
    else:
        name, sep, port = h.rpartition(":")
        if sep and ":" not in name and (port == "" or port.isdigit()):
            h = name
    if h.endswith("."):
        h = h[:-1]
    return h or None


# --- compiled rules ---------------------------------------------------------------------------


class _Compiled:
    """A rule compiled for matching; ``order`` is its index in the configuration."""

    def __init__(self, rule: RouteRule, order: int) -> None:
        segments, wildcard = _parse(rule.pattern)
        self.rule = rule
        self.order = order
        self.wildcard = wildcard
        self.width = len(segments)  # fixed segments; also what strip_path removes
        # Shape = where the literals are; rules of one shape are found by a dict lookup.
        self.positions = tuple(i for i, (lit, _) in enumerate(segments) if lit is not None)
        self.literals = tuple(lit for lit, _ in segments if lit is not None)
        self.params = tuple((i, name) for i, (_, name) in enumerate(segments) if name is not None)
        rank = tuple(0 if lit is not None else 1 for lit, _ in segments)
        if wildcard:  # longer fixed prefix first, then literals before params
            self.precedence: tuple = (2, -self.width, rank, order)
        elif self.params:  # more literal segments first (width is equal for any match)
            self.precedence = (1, -len(self.literals), (), order)
        else:
            self.precedence = (0, 0, (), order)
        methods = rule.methods
        if methods is not None:
            methods = frozenset(m.upper() for m in methods)
            if "GET" in methods:
                methods |= {"HEAD"}
        self.methods = methods

    def bind(self, segs: Tuple[str, ...]) -> Optional[Dict[str, str]]:
        """Capture params from ``segs`` (literals already matched); None if one is empty."""
        params = {}
        for i, name in self.params:
            if not segs[i]:
                return None
            params[name] = segs[i]
        return params


# (wildcard, width, literal positions, literal prefix length or -1, literals -> rules)
_Bucket = Tuple[bool, int, Tuple[int, ...], int, Dict[Tuple[str, ...], List[_Compiled]]]


class _Group:
    """Rules sharing a host condition, bucketed by shape for dict lookups."""

    def __init__(self, rules: Sequence[_Compiled]) -> None:
        self.rules = sorted(rules, key=lambda r: r.order)
        index: Dict[Tuple[bool, int, Tuple[int, ...]], Dict[Tuple[str, ...], List[_Compiled]]]
        index = {}
        for r in self.rules:
            shape = (r.wildcard, r.width, r.positions)
            index.setdefault(shape, {}).setdefault(r.literals, []).append(r)
        self.buckets: List[_Bucket] = []
        for (wildcard, width, positions), by_literals in index.items():
            prefix = len(positions) if positions == tuple(range(len(positions))) else -1
            self.buckets.append((wildcard, width, positions, prefix, by_literals))

    def matches(self, segs: Tuple[str, ...]) -> List[Tuple[_Compiled, Dict[str, str]]]:
        """Return (rule, params) for every rule matching ``segs``, most specific first."""
        n = len(segs)
        found: List[_Compiled] = []
        for wildcard, width, positions, prefix, by_literals in self.buckets:
            if width > n or (width < n and not wildcard):
                continue
            if prefix >= 0:  # literals form a prefix (the usual case): a cheap slice
                key = segs[:prefix]
            else:
                key = tuple([segs[i] for i in positions])
            found.extend(by_literals.get(key, ()))
        if len(found) > 1:
            found.sort(key=lambda r: r.precedence)
        result = []
        for r in found:
            params = r.bind(segs)
            if params is not None:
                result.append((r, params))
        return result


# --- request targets --------------------------------------------------------------------------


def _split_target(target: bytes) -> Tuple[bytes, bytes, bool]:
    """Return (path, query, has_query) from an origin- or absolute-form request-target."""
    if not target.startswith(b"/"):
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            rest = target[7:]
        elif lowered.startswith(b"https://"):
            rest = target[8:]
        else:
            raise BadPath("request-target must be origin-form or absolute-form")
        ends = [i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1]
        end = min(ends) if ends else len(rest)
        if end == 0:
            raise BadPath("absolute-form request-target has an empty authority")
        target = rest[end:]
        if not target.startswith(b"/"):
            target = b"/" + target
    path, sep, query = target.partition(b"?")
    return path, query, bool(sep)


def _remove_dot_segments(raw: List[bytes], segs: List[str]) -> Tuple[List[bytes], List[str]]:
    """Resolve '.' and '..' (recognised by match form) RFC 3986 style; BadPath above root."""
    out_raw: List[bytes] = []
    out: List[str] = []
    last = len(segs) - 1
    for i, (raw_seg, seg) in enumerate(zip(raw, segs)):
        if seg == "..":
            if not out:
                raise BadPath("path climbs above '/'")
            out.pop()
            out_raw.pop()
        elif seg != ".":
            out.append(seg)
            out_raw.append(raw_seg)
            continue
        if i == last:  # "/a/." and "/a/b/.." keep their trailing slash
            out.append("")
            out_raw.append(b"")
    return out_raw, out


# --- the table --------------------------------------------------------------------------------


class RouteTable:
    """Compiled, immutable set of :class:`RouteRule` answering per-request match queries."""

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        """Validate and compile ``rules`` once; raises :class:`PatternError` on a bad rule."""
        by_host: Dict[Optional[str], List[_Compiled]] = {}
        for order, rule in enumerate(rules):
            compiled = _Compiled(rule, order)
            host = None
            if rule.host is not None:
                host = _normalize_host(rule.host)
                if host is None:
                    raise PatternError("host must not be empty")
                if "*" in host and (not host.startswith("*.") or "*" in host[1:]):
                    raise PatternError("host wildcard must look like '*.example.com'")
            by_host.setdefault(host, []).append(compiled)
        self._any_host = _Group(by_host.pop(None, []))
        self._hosts = {host: _Group(compiled) for host, compiled in by_host.items()}
        # Groups merged for hosts matched by several host keys (e.g. exact + "*.domain").
        # Keyed by configured host keys only, so its size is bounded by the configuration.
        self._merged: Dict[Tuple[str, ...], _Group] = {}

    def _host_group(self, host: Optional[bytes]) -> Optional[_Group]:
        """Return the group of host-specific rules matching ``host``, if any."""
        if not host or not self._hosts:
            return None
        name = _normalize_host(host.decode("latin-1"))
        if name is None or "*" in name:  # a literal "*.x" Host must not hit wildcard rules
            return None
        keys = [name] if name in self._hosts else []
        dot = name.find(".", 1)
        while dot != -1:
            if "*" + name[dot:] in self._hosts:
                keys.append("*" + name[dot:])
            dot = name.find(".", dot + 1)
        if len(keys) <= 1:
            return self._hosts[keys[0]] if keys else None
        key = tuple(keys)
        group = self._merged.get(key)
        if group is None:
            group = _Group([r for k in key for r in self._hosts[k].rules])
            self._merged[key] = group
        return group

    def match(
        self, host: Optional[bytes], target: bytes, method: bytes
    ) -> Union[RouteMatch, MethodNotAllowed, None]:
        """Route a request: a match, a 405 with the allowed methods, or None for 404.

        ``host`` is the raw Host header (may carry a port or be None), ``target`` the raw
        request-target and ``method`` e.g. ``b"GET"``. Raises :class:`BadPath` (400).
        """
        path, query, has_query = _split_target(target)
        text = path.decode("latin-1")
        match_text = _unreserved_decode(text)
        segs = match_text.split("/")[1:]
        if "." in match_text and ("." in segs or ".." in segs):
            raw_segs, segs = _remove_dot_segments(path.split(b"/")[1:], segs)
            path = b"/" + b"/".join(raw_segs)
        key = tuple(segs)

        groups = [self._host_group(host), self._any_host]
        method_name = method.decode("latin-1")
        allowed: Set[str] = set()
        matched = False
        for group in groups:
            if group is None:
                continue
            for rule, params in group.matches(key):
                if rule.methods is None or method_name in rule.methods:
                    return RouteMatch(
                        rule.rule.value, params, self._upstream(rule, path, query, has_query)
                    )
                matched = True
                allowed |= rule.methods
        if matched:
            return MethodNotAllowed(tuple(sorted(allowed)))
        return None

    @staticmethod
    def _upstream(rule: _Compiled, path: bytes, query: bytes, has_query: bool) -> bytes:
        """Build the upstream request-target: (stripped) raw path plus the original query."""
        if rule.rule.strip_path:
            rest = path.split(b"/")[1 + rule.width :]
            path = b"/" + b"/".join(rest)
        return path + b"?" + query if has_query else path
