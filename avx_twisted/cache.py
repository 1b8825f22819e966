# -*- test-case-name: tests.unit.test_cache -*-
"""RFC 9111 (HTTP caching) for a shared cache, with RFC 5861 (stale-while-revalidate,
stale-if-error) and RFC 9211 (Cache-Status): what may be stored, for how long, which stored
variant answers a request, and whether it may answer as it is, stale, or after revalidation.

Pure functions and small value types over header fields (``(name, value)`` byte pairs, names
compared case-insensitively): no I/O, no clock of its own (``now`` is passed in), so every rule
is tested on its own. The store is :mod:`avx_twisted.cache_store`.
"""

from __future__ import annotations

import email.utils
import functools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .h1 import HOP_BY_HOP, Fields, connection_tokens

Pair = Tuple[bytes, bytes]
Directives = Dict[bytes, Optional[bytes]]

#: Statuses a response may be stored with by default, given heuristic freshness
#: (RFC 9110 15.1): the others need explicit freshness (or are never stored).
HEURISTIC_STATUSES = frozenset([200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
#: Statuses this cache understands (``must-understand``: others are not stored); any other
#: final status is stored only with explicit freshness.
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | frozenset([302, 303, 307, 400, 403, 500, 502, 503, 504])
#: Methods known to be safe (RFC 9110 9.2.1): any other's success invalidates the target URI
#: (RFC 9111 4.4), whether the gateway knows the method (POST, PUT, DELETE, PATCH) or not.
SAFE_METHODS = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE"])
#: Response fields a 304 does not replace in the stored entry (RFC 9111 3.2: the framing of the
#: stored body stays the stored one's).
_KEEP_ON_UPDATE = frozenset(
    [
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"content-range",
        b"content-md5",
        b"etag",
    ]
)


# -- field helpers -----------------------------------------------------------------------------


def get_all(fields: Iterable[Pair], name: bytes) -> List[bytes]:
    """Every value of ``name`` (lower-case) in ``fields``."""
    return [v for n, v in fields if n.lower() == name]


def get(fields: Iterable[Pair], name: bytes) -> Optional[bytes]:
    values = get_all(fields, name)
    return b", ".join(values) if values else None


def parse_cache_control(values: Sequence[bytes]) -> Directives:
    """``Cache-Control`` directives: lower-case name to argument (quotes removed) or None.

    A directive given twice keeps its first value (RFC 9111 4.2.1 says a cache may treat
    conflicting ones as stale; keeping the first is the common reading)."""
    out: Directives = {}
    for value in values:
        for part in _split_commas(value):
            name, eq, arg = part.partition(b"=")
            name = name.strip().lower()
            if not name or name in out:
                continue
            arg = arg.strip()
            if eq and len(arg) >= 2 and arg[:1] == b'"' and arg[-1:] == b'"':
                arg = arg[1:-1].replace(b'\\"', b'"')
            out[name] = arg if eq else None
    return out


def _split_commas(value: bytes) -> List[bytes]:
    """Split on commas outside quoted strings."""
    if b'"' not in value:
        return [p.strip() for p in value.split(b",") if p.strip()]
    parts: List[bytes] = []
    start = 0
    quoted = False
    for i, byte in enumerate(value):
        if byte == 0x22:  # "
            quoted = not quoted
        elif byte == 0x2C and not quoted:  # ,
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def delta_seconds(directives: Directives, name: bytes) -> Optional[int]:
    """A directive's delta-seconds argument; None when absent or malformed (RFC 9111 1.2.2:
    a value too large counts as 2**31)."""
    if name not in directives:
        return None
    arg = directives[name]
    if arg is None or not arg.isdigit():
        return None
    return min(int(arg), 2**31)


def http_date(value: Optional[bytes]) -> Optional[float]:
    """An HTTP-date as epoch seconds (None: absent or invalid, e.g. ``Expires: 0``)."""
    if not value:
        return None
    return _http_date(value)


@functools.lru_cache(maxsize=1024)
def _http_date(value: bytes) -> Optional[float]:
    # Memoised: every hit of an entry reads its same Date (and Expires) again.
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


# -- what may be stored (RFC 9111 3) -----------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A route's cache settings (``[routes.cache]``)."""

    default_ttl_s: float = 0.0
    max_object_bytes: int = 1024 * 1024
    key_headers: Tuple[bytes, ...] = ()
    stale_while_revalidate_s: float = 0.0
    stale_if_error_s: float = 0.0
    store_set_cookie: bool = False
    max_variants: int = 16


def storable(
    method: bytes,
    status: int,
    request_fields: Sequence[Pair],
    response_fields: Sequence[Pair],
    policy: Policy,
) -> Optional[str]:
    """None when the response may be stored; else why not, in a word (for Cache-Status's
    ``detail`` and the metrics)."""
    if method != b"GET":
        return "method"
    if status < 200 or status == 206 or status == 304:
        return "status"  # not final, or partial: only complete answers are stored
    request_cc = parse_cache_control(get_all(request_fields, b"cache-control"))
    response_cc = parse_cache_control(get_all(response_fields, b"cache-control"))
    if b"must-understand" in response_cc and status not in UNDERSTOOD_STATUSES:
        return "status"  # RFC 9111 5.2.2.3: only statuses the cache understands
    if b"no-store" in request_cc or b"no-store" in response_cc:
        return "no-store"
    if b"private" in response_cc:
        return "private"
    if vary_names(response_fields) is None:
        return "vary-star"
    if get(request_fields, b"authorization") is not None and not (
        b"public" in response_cc or b"s-maxage" in response_cc or b"must-revalidate" in response_cc
    ):
        return "authorization"
    if not policy.store_set_cookie and get(response_fields, b"set-cookie") is not None:
        return "set-cookie"
    explicit = (
        delta_seconds(response_cc, b"s-maxage") is not None
        or delta_seconds(response_cc, b"max-age") is not None
        or get(response_fields, b"expires") is not None
    )
    if explicit:
        return None
    if b"public" in response_cc and policy.default_ttl_s > 0:
        return None
    if policy.default_ttl_s > 0 and status in HEURISTIC_STATUSES:
        return None
    if b"no-cache" in response_cc and get(response_fields, b"etag") is not None:
        return None  # stored to be revalidated every time (RFC 9111 5.2.2.4)
    return "no-freshness"


def stored_fields(response_fields: Iterable[Pair]) -> List[Pair]:
    """The fields kept with an entry: hop-by-hop ones and those the Connection field names
    left out (RFC 9111 3.1)."""
    pairs = list(response_fields)
    named = connection_tokens(Fields(pairs))
    return [(n, v) for n, v in pairs if n.lower() not in HOP_BY_HOP and n.lower() not in named]


# -- freshness and age (RFC 9111 4.2) ----------------------------------------------------------


def freshness_lifetime(
    fields: Sequence[Pair], policy: Policy, cc: Optional[Directives] = None
) -> float:
    """How long a response is fresh: ``s-maxage``, else ``max-age``, else ``Expires - Date``,
    else the route's ``default_ttl_s`` (heuristic freshness, when it allows any). ``cc``: its
    Cache-Control directives, when the caller has parsed them already."""
    if cc is None:
        cc = parse_cache_control(get_all(fields, b"cache-control"))
    s_maxage = delta_seconds(cc, b"s-maxage")
    if s_maxage is not None:
        return float(s_maxage)
    max_age = delta_seconds(cc, b"max-age")
    if max_age is not None:
        return float(max_age)
    if b"max-age" in cc or b"s-maxage" in cc:
        return 0.0  # present but malformed: stale (4.2.1)
    expires_value = get(fields, b"expires")
    if expires_value is not None:
        expires = http_date(expires_value)
        if expires is None:
            return 0.0  # invalid Expires (e.g. "0"): already expired (5.3)
        date = http_date(get(fields, b"date"))
        return max(0.0, expires - date) if date is not None else 0.0
    if b"no-cache" in cc:
        return 0.0
    return float(policy.default_ttl_s)


def current_age(
    fields: Sequence[Pair], request_time: float, response_time: float, now: float
) -> float:
    """RFC 9111 4.2.3: the entry's age now, from ``Age``, ``Date`` and when it was fetched."""
    age_value = 0.0
    ages = get_all(fields, b"age")
    if ages:
        age = ages[0].strip()
        if len(ages) > 1 or not age.isdigit():
            # Not one non-negative integer (a list, a float, a sign, a parameter): the age
            # cannot be known, so the response is taken as stale.
            return float("inf")
        age_value = float(age)
    date = http_date(get(fields, b"date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time


# -- the variant that answers (RFC 9111 4.1) ---------------------------------------------------


def vary_names(fields: Sequence[Pair]) -> Optional[Tuple[bytes, ...]]:
    """The lower-case field names a response varies on, sorted; None for ``Vary: *``."""
    names = set()
    for value in get_all(fields, b"vary"):
        for token in value.split(b","):
            token = token.strip().lower()
            if token == b"*":
                return None
            if token:
                names.add(token)
    return tuple(sorted(names))


def normalise(name: bytes, values: List[bytes]) -> bytes:
    """A request field's values as the variant key sees them: whitespace folded, and for
    ``Accept-Encoding`` the codings lower-cased and sorted (``gzip, br`` = ``br,gzip``)."""
    joined = b",".join(v.strip() for v in values)
    if name == b"accept-encoding":
        codings = sorted({c.strip().lower() for c in joined.split(b",") if c.strip()})
        return b",".join(codings)
    return b" ".join(joined.split())


def variant_key(names: Sequence[bytes], request_fields: Sequence[Pair]) -> bytes:
    """The secondary key of a request for a response varying on ``names``: the normalised
    values of those fields (absent and empty differ)."""
    if not names:
        return b""
    parts = []
    for name in names:
        values = get_all(request_fields, name)
        parts.append(name + (b"=" + normalise(name, values) if values else b"!"))
    return b"\n".join(parts)


def primary_key(
    scheme: bytes,
    host: bytes,
    target: bytes,
    key_headers: Sequence[bytes],
    request_fields: Sequence[Pair],
) -> bytes:
    """The entry key of a request: the target URI, plus the route's ``key_headers`` values."""
    key = scheme + b"://" + host.lower() + target
    for name in key_headers:
        values = get_all(request_fields, name)
        key += b"\n" + name + (b"=" + normalise(name, values) if values else b"!")
    return key


# -- may a stored response answer this request? (RFC 9111 4.2, 4.3, 5.2.1; RFC 5861) ---------


#: What a stored entry can do for a request.
FRESH = "fresh"  # answer from the cache
STALE_OK = "stale-ok"  # answer stale, as the request allows (max-stale) or stale-while-revalidate
REVALIDATE = "revalidate"  # ask the origin (conditionally when it has a validator)


@dataclass(frozen=True)
class Verdict:
    use: str
    age: float
    #: Seconds of freshness left (negative: stale by that much).
    ttl: float
    #: While serving stale: start a background refresh (stale-while-revalidate).
    refresh: bool = False


def evaluate(
    fields: Sequence[Pair],
    request_time: float,
    response_time: float,
    request_fields: Sequence[Pair],
    policy: Policy,
    now: float,
    request_cc: Optional[Directives] = None,
) -> Verdict:
    """Whether a stored response may answer a request now, given both parties' directives
    (``request_cc``: the request's, when the caller has parsed them already)."""
    age = current_age(fields, request_time, response_time, now)
    response_cc = parse_cache_control(get_all(fields, b"cache-control"))
    lifetime = freshness_lifetime(fields, policy, response_cc)
    ttl = lifetime - age
    if request_cc is None:
        request_cc = parse_cache_control(get_all(request_fields, b"cache-control"))
    if b"no-cache" in request_cc or b"no-cache" in response_cc:
        return Verdict(REVALIDATE, age, ttl)
    pragma = get(request_fields, b"pragma")
    if (
        pragma is not None
        and b"no-cache" in pragma.lower()
        and b"cache-control" not in {n.lower() for n, _ in request_fields}
    ):
        return Verdict(REVALIDATE, age, ttl)
    max_age = delta_seconds(request_cc, b"max-age")
    if max_age is not None and age > max_age:
        return Verdict(REVALIDATE, age, ttl)
    min_fresh = delta_seconds(request_cc, b"min-fresh")
    if min_fresh is not None and ttl < min_fresh:
        return Verdict(REVALIDATE, age, ttl)
    if ttl > 0:
        return Verdict(FRESH, age, ttl)
    stale_for = -ttl
    if never_stale(response_cc):
        return Verdict(REVALIDATE, age, ttl)
    if b"max-stale" in request_cc:
        allowed = delta_seconds(request_cc, b"max-stale")
        if allowed is None or stale_for <= allowed:
            return Verdict(STALE_OK, age, ttl)
    window = stale_while_revalidate(response_cc, policy)
    if window > 0 and stale_for <= window:
        return Verdict(STALE_OK, age, ttl, refresh=True)
    return Verdict(REVALIDATE, age, ttl)


def never_stale(response_cc: Directives) -> bool:
    """``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` (which implies it for a shared
    cache) forbid serving the response stale, whatever the route's floors say."""
    return (
        b"must-revalidate" in response_cc
        or b"proxy-revalidate" in response_cc
        or b"s-maxage" in response_cc
    )


def stale_while_revalidate(response_cc: Directives, policy: Policy) -> float:
    """The window (after the entry became stale) in which it is served while refreshed: the
    response's ``stale-while-revalidate``, at least the route's floor."""
    own = delta_seconds(response_cc, b"stale-while-revalidate") or 0
    return max(float(own), policy.stale_while_revalidate_s)


def stale_if_error(
    response_cc: Directives, request_fields: Sequence[Pair], policy: Policy
) -> float:
    """The window in which a stale entry answers when the origin fails (5xx, no answer): the
    response's or the request's ``stale-if-error``, at least the route's floor."""
    request_cc = parse_cache_control(get_all(request_fields, b"cache-control"))
    own = max(
        delta_seconds(response_cc, b"stale-if-error") or 0,
        delta_seconds(request_cc, b"stale-if-error") or 0,
    )
    return max(float(own), policy.stale_if_error_s)


def store_for(fields: Sequence[Pair], policy: Policy) -> float:
    """How long the store keeps an entry: its freshness plus the longest stale window (and a
    minute for revalidation when it has a validator)."""
    cc = parse_cache_control(get_all(fields, b"cache-control"))
    lifetime = freshness_lifetime(fields, policy, cc)
    extra = 0.0
    if not never_stale(cc):
        extra = max(
            stale_while_revalidate(cc, policy),
            delta_seconds(cc, b"stale-if-error") or 0,
            policy.stale_if_error_s,
        )
    if has_validator(fields):
        extra = max(extra, 3600.0)  # worth keeping to revalidate (a 304 is cheap)
    return lifetime + extra


# -- validators and conditional requests (RFC 9110 13, RFC 9111 4.3) ---------------------------


def has_validator(fields: Sequence[Pair]) -> bool:
    return get(fields, b"etag") is not None or get(fields, b"last-modified") is not None


def revalidation_fields(stored: Sequence[Pair]) -> List[Pair]:
    """The conditional fields of a revalidation request for a stored response."""
    out: List[Pair] = []
    etag = get(stored, b"etag")
    if etag is not None:
        out.append((b"If-None-Match", etag))
    last_modified = get(stored, b"last-modified")
    if last_modified is not None:
        out.append((b"If-Modified-Since", last_modified))
    return out


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag[:2] == b"W/" else tag


def not_modified(request_fields: Sequence[Pair], stored: Sequence[Pair]) -> bool:
    """Whether a client's conditional GET is answered 304 by the stored response: its
    ``If-None-Match`` (weak comparison) when present, else its ``If-Modified-Since``."""
    if_none_match = get(request_fields, b"if-none-match")
    if if_none_match is not None:
        etag = get(stored, b"etag")
        if if_none_match.strip() == b"*":
            return True
        if etag is None:
            return False
        wanted = {_opaque(t) for t in _split_commas(if_none_match)}
        return _opaque(etag) in wanted
    since = http_date(get(request_fields, b"if-modified-since"))
    if since is None:
        return False
    last_modified = http_date(get(stored, b"last-modified")) or http_date(get(stored, b"date"))
    return last_modified is not None and last_modified <= since


#: Fields a 304 answer carries from the stored response (RFC 9110 15.4.5).
_NOT_MODIFIED_FIELDS = frozenset(
    [b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"]
)


def not_modified_fields(stored: Sequence[Pair]) -> List[Pair]:
    return [(n, v) for n, v in stored if n.lower() in _NOT_MODIFIED_FIELDS]


def updated_fields(stored: Sequence[Pair], fresh: Sequence[Pair]) -> List[Pair]:
    """A stored response's fields after a 304 (RFC 9111 3.2): each field the 304 carries
    replaces the stored ones of that name, except the body's framing."""
    replaced = {n.lower() for n, _ in fresh if n.lower() not in _KEEP_ON_UPDATE}
    kept = [(n, v) for n, v in stored if n.lower() not in replaced]
    return kept + [(n, v) for n, v in stored_fields(fresh) if n.lower() in replaced]


# -- invalidation (RFC 9111 4.4) ---------------------------------------------------------------


def invalidated_targets(host: bytes, target: bytes, response_fields: Sequence[Pair]) -> List[bytes]:
    """The request targets a successful unsafe request invalidates: its own, and the
    ``Location`` and ``Content-Location`` URIs on the same host (relative ones included)."""
    out = [target]
    for name in (b"location", b"content-location"):
        value = get(response_fields, name)
        if not value:
            continue
        value = value.strip()
        if value[:1] == b"/":
            out.append(value)
            continue
        scheme, sep, rest = value.partition(b"://")
        if not sep:
            continue
        authority, slash, path = rest.partition(b"/")
        if authority.lower() == host.lower():
            out.append(b"/" + path if slash else b"/")
    return out


# -- Cache-Status (RFC 9211) -------------------------------------------------------------------


def cache_status(
    hit: bool,
    fwd: Optional[str] = None,
    stored: bool = False,
    ttl: Optional[float] = None,
    detail: Optional[str] = None,
    collapsed: bool = False,
) -> bytes:
    """One ``Cache-Status`` member for this cache (``avx``)."""
    parts = [b"avx"]
    if hit:
        parts.append(b"hit")
    elif fwd is not None:
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if ttl is not None:
        parts.append(b"ttl=%d" % int(ttl))
    if detail:
        parts.append(b'detail="' + detail.encode("ascii") + b'"')
    return b"; ".join(parts)
