"""Messages as the HTTP/1.1 core hands them over: raw header pairs in order, parsed heads, and
the small interfaces between the core and whoever handles requests."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Optional, Tuple

from zope.interface import Interface

Pair = Tuple[bytes, bytes]

#: Headers that describe one connection, never forwarded in either direction (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)


_NONE: Any = ()  # what get_all answers for an absent name (immutable)


class Fields:
    """A header section: ``(name, value)`` byte pairs in the order received, names as sent.

    Lookups go through a lower-case index built on first use (most requests are looked up by a
    handful of names, if at all). Names passed to lookups must be lower case.
    """

    __slots__ = ("pairs", "_index")

    def __init__(self, pairs: Optional[List[Pair]] = None) -> None:
        self.pairs: List[Pair] = pairs if pairs is not None else []
        self._index: Optional[dict[bytes, List[bytes]]] = None

    def _lookup(self) -> dict[bytes, List[bytes]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self.pairs:
                key = name.lower()
                values = index.get(key)
                if values is None:
                    index[key] = [value]
                else:
                    values.append(value)
            self._index = index
        return index

    def get_all(self, name: bytes) -> List[bytes]:
        """Every value of ``name`` (lower case), in order; empty when absent."""
        index = self._index
        if index is None:
            index = self._lookup()
        return index.get(name, _NONE)

    def get(self, name: bytes, default: Optional[bytes] = None) -> Optional[bytes]:
        """The last value of ``name`` (lower case), or ``default``."""
        index = self._index
        if index is None:
            index = self._lookup()
        values = index.get(name)
        return values[-1] if values else default

    def has(self, name: bytes) -> bool:
        index = self._index
        if index is None:
            index = self._lookup()
        return name in index

    def add(self, name: bytes, value: bytes) -> None:
        """Append one field."""
        self.pairs.append((name, value))
        if self._index is not None:
            self._index.setdefault(name.lower(), []).append(value)

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every field called ``name`` (any case) by one."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: bytes) -> None:
        """Drop every field called ``name`` (any case)."""
        lower = name.lower()
        index = self._lookup()
        if lower not in index:
            return
        self.pairs = [p for p in self.pairs if p[0].lower() != lower]
        del index[lower]

    def extend(self, pairs: Iterable[Pair]) -> None:
        for name, value in pairs:
            self.add(name, value)

    def replace(self, pairs: List[Pair]) -> None:
        """All the fields at once (a transform's result)."""
        self.pairs = pairs
        self._index = None

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __repr__(self) -> str:
        return f"Fields({self.pairs!r})"


def split_list(values: Iterable[bytes] | None) -> List[bytes]:
    """The non-empty, stripped elements of a comma-separated field (all its lines, in order)."""
    if not values:
        return []
    return [item.strip() for value in values for item in value.split(b",") if item.strip()]


def connection_tokens(fields: Fields) -> frozenset[bytes]:
    """The lower-case tokens of every ``Connection`` field (comma-separated, RFC 9110 7.6.1)."""
    values = fields.get_all(b"connection")
    if not values:
        return frozenset()
    return frozenset(token.lower() for token in split_list(values))


class RequestHead:
    """A parsed request head: method, raw request-target, version and header fields."""

    __slots__ = (
        "method",
        "target",
        "version",
        "fields",
        "keep_alive",
        "authority",
        "path",
        "query",
        "upgrade",
        "content_length",
        "chunked",
        "expect_continue",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        fields: Fields,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        #: The request-target as sent (origin-form, or absolute-form for proxies).
        self.target = target
        #: ``b"1.1"`` or ``b"1.0"``.
        self.version = version
        self.fields = fields
        self.keep_alive = keep_alive
        #: Host to route on: the absolute-form authority, else the Host field (RFC 9112 3.2.2).
        self.authority: Optional[bytes] = None
        #: Origin-form path and query (for absolute-form targets: the part after the authority).
        self.path = target
        self.query = b""
        #: The lower-case upgrade token (``websocket``) of an upgrade request, else None.
        self.upgrade: Optional[bytes] = None
        self.content_length: Optional[int] = None
        self.chunked = False
        self.expect_continue = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    """A parsed response head from an upstream."""

    __slots__ = ("status", "reason", "version", "fields", "content_length", "chunked")

    def __init__(self, status: int, reason: bytes, version: bytes, fields: Fields) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.fields = fields
        self.content_length: Optional[int] = None
        self.chunked = False


class IRequestHandler(Interface):
    """What the server protocol hands each request to (the gateway implements it)."""

    def handle(request: Any) -> None:
        """A request head arrived; answer it through ``request`` (now or later)."""

    def refused(request: Any, status: int, message: str) -> None:
        """The connection refuses a request (400/408/413/414/431): answer it through
        ``request.respond`` with a body in the handler's error shape; the core closes after."""


class IResponseSink(Interface):
    """Where an upstream response body goes (the forwarder's relay)."""

    def body_data(data: bytes) -> None:
        """Decoded body bytes."""

    def body_done() -> None:
        """The body ended cleanly (length reached, last chunk, or clean close)."""

    def body_failed(reason: Any) -> None:
        """The body broke off (reset, bad framing, timeout): the response is truncated."""
