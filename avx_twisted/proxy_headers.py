"""The header fields a proxied request carries upstream, and those of the answer it brings back.

Hop-by-hop fields and those named in ``Connection`` are dropped both ways (RFC 9110 7.6.1);
``X-Forwarded-*`` from a trusted proxy are kept (``-For`` is appended to), from anyone else
replaced, so an upstream never believes what a client wrote there.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from .h1 import HOP_BY_HOP, Fields, connection_tokens, split_list

Pair = Tuple[bytes, bytes]

#: Request fields the forwarder sets itself.
_REQUEST_OWN = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_HTTPS = b"https"
_HTTP = b"http"
_UPGRADE_WEBSOCKET = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
_SERVER = b"server"


def vary_value(existing: list[bytes] | None, add: bytes) -> list[bytes]:
    """Merge the field names in *add* into an existing ``Vary`` header (e.g. the upstream's).

    Returns the raw values to set: one comma-separated line holding the existing names in their
    order, then those of *add* not already present (compared case-insensitively). ``*`` already
    varies on everything, so it absorbs the rest.
    """
    names = split_list(existing)
    seen = {n.lower() for n in names}
    for name in split_list([add]):
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    if b"*" in seen:
        return [b"*"]
    return [b", ".join(names)] if names else []


def upstream_request_fields(
    request: Any,
    netloc: bytes,
    preserve_host: bool,
    ctx: Any = None,
    strip: frozenset[bytes] = frozenset(),
    extra: Sequence[Pair] = (),
    websocket: bool = False,
) -> List[Pair]:
    """The fields sent upstream for ``request`` (a ServerRequest): end-to-end fields, the
    route's ``extra`` (verified claims), ``Host`` and ``X-Forwarded-*``; for a WebSocket
    handshake also ``Connection: Upgrade`` and ``Upgrade: websocket``. ``strip`` names fields
    the route removes (credentials, client copies of forwarded claims)."""
    incoming: Fields = request.fields
    dropped = connection_tokens(incoming)
    out: List[Pair] = []
    append = out.append
    for pair in incoming.pairs:
        lower = pair[0].lower()
        if lower in _REQUEST_OWN or lower in strip or (dropped and lower in dropped):
            continue
        append(pair)
    out.extend(extra)
    if websocket:
        out.extend(_UPGRADE_WEBSOCKET)
    trusted = ctx is not None and ctx.peer_trusted
    host = request.authority
    append((b"Host", host if (preserve_host and host) else netloc))
    forwarded_host = incoming.get(b"x-forwarded-host") if trusted else None
    if forwarded_host is not None:
        append((b"X-Forwarded-Host", forwarded_host))
    elif host is not None:
        append((b"X-Forwarded-Host", host))
    forwarded_proto = incoming.get(b"x-forwarded-proto") if trusted else None
    append((b"X-Forwarded-Proto", forwarded_proto or (_HTTPS if request.secure else _HTTP)))
    peer = ctx.peer if ctx is not None else request.peer_host
    previous = incoming.get_all(b"x-forwarded-for") if trusted else None
    chain = [b", ".join(previous)] if previous else []
    if peer:
        chain.append(peer.encode("ascii"))
    if chain:
        append((b"X-Forwarded-For", b", ".join(chain)))
    return out


def client_response_fields(
    upstream: Fields,
    ours: Fields,
    owned: frozenset[bytes],
    replace_server: bool,
    keep: Optional[frozenset[bytes]] = None,
) -> List[Pair]:
    """The upstream's response fields as the client gets them: hop-by-hop and
    ``Connection``-named fields, framing, and fields the route owns (``owned``: CORS) dropped;
    ``Vary`` merged with the one the gateway adds (``ours``, written after these). ``keep``:
    hop-by-hop names passed anyway (a 101's ``Upgrade``)."""
    dropped = connection_tokens(upstream)
    out: List[Pair] = []
    append = out.append
    merge_vary = ours.has(b"vary")
    merged_vary = False
    for pair in upstream.pairs:
        lower = pair[0].lower()
        if lower in HOP_BY_HOP or lower == b"content-length" or lower in owned:
            if keep is None or lower not in keep:
                continue
        elif dropped and lower in dropped:
            continue
        if lower == b"vary" and merge_vary:
            if not merged_vary:  # every upstream Vary and ours, as one field
                merged_vary = True
                mine = b", ".join(ours.get_all(b"vary"))
                for value in vary_value(upstream.get_all(b"vary"), mine):
                    append((pair[0], value))
            continue
        if replace_server and lower == _SERVER:
            continue
        append(pair)
    if merged_vary:
        ours.remove(b"vary")  # merged into the upstream's
    return out
