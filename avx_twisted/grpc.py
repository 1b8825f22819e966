# -*- test-case-name: tests.unit.test_grpc -*-
"""gRPC over the gateway (``routes[].grpc = true``): what a gRPC call is, its deadline, its
status, and the gateway's own failures answered the way gRPC clients read them.

gRPC is HTTP/2 with trailers (the gRPC "PROTOCOL-HTTP2" document): a call is a POST whose
``content-type`` is ``application/grpc`` (``+proto``, ``+json``, ...); its outcome is the
``grpc-status`` field of the trailers, or of the only HEADERS frame of a "trailers-only"
answer. A gateway-made error is such a trailers-only answer: HTTP 200, ``grpc-status`` and a
percent-encoded ``grpc-message``, never a JSON body the client cannot read.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple
from urllib.parse import quote

Pair = Tuple[bytes, bytes]

#: Status codes by number (grpc/doc/statuscodes.md).
CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4

#: The gateway's own HTTP answers as gRPC status codes: auth 16/7, rate limits and sizes 8,
#: timeouts 4, no target / connect errors / open breakers 14, no route 12.
_FROM_HTTP = {
    400: 13,
    401: 16,
    403: 7,
    404: 12,
    405: 12,
    408: 4,
    413: 8,
    429: 8,
    431: 8,
    499: 1,
    500: 13,
    502: 14,
    503: 14,
    504: 4,
}
_CONTENT_TYPE = b"application/grpc"
#: Fields of a gateway answer that stay on its gRPC form (the rest describe a JSON body).
_KEPT = frozenset([b"retry-after", b"x-request-id", b"www-authenticate", b"allow"])
#: ``grpc-timeout`` units in seconds (PROTOCOL-HTTP2: at most 8 digits and one unit).
_UNITS = {
    b"H": 3600.0,
    b"M": 60.0,
    b"S": 1.0,
    b"m": 1e-3,
    b"u": 1e-6,
    b"n": 1e-9,
}


def is_call(fields: Any) -> bool:
    """Whether a request with these fields is a gRPC call (by its ``content-type``)."""
    content_type = fields.get(b"content-type")
    return content_type is not None and content_type[:16].lower() == _CONTENT_TYPE


def code_name(code: Optional[int]) -> str:
    if code is None:
        return "UNKNOWN"
    return CODES[code] if 0 <= code < len(CODES) else str(code)


def status_of(fields: Iterable[Pair]) -> Optional[int]:
    """The ``grpc-status`` in ``fields`` (None when there is none, or it is not a number)."""
    for name, value in fields:
        if name.lower() == b"grpc-status":
            return int(value) if value.isdigit() else None
    return None


def service_method(path: bytes) -> Tuple[Optional[str], Optional[str]]:
    """``/package.Service/Method`` as (``package.Service``, ``Method``)."""
    parts = path.split(b"/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return None, None
    return parts[1].decode("latin-1"), parts[2].decode("latin-1")


def timeout_s(value: Optional[bytes]) -> Optional[float]:
    """A ``grpc-timeout`` value in seconds (None: absent or malformed, no deadline)."""
    if not value or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1:]
    factor = _UNITS.get(unit)
    if factor is None or not digits.isdigit():
        return None
    return int(digits) * factor


def deadline_s(fields: Any, cap_s: Optional[float]) -> Optional[float]:
    """A call's deadline: the client's ``grpc-timeout``, capped by the route's own timeout;
    None when neither is set (the call ends by the HTTP/2 stream idle timeout only)."""
    wanted = timeout_s(fields.get(b"grpc-timeout"))
    if wanted is None:
        return cap_s
    return wanted if cap_s is None else min(wanted, cap_s)


def trailers(code: int, message: str) -> List[Pair]:
    """``grpc-status`` and ``grpc-message`` (percent-encoded, as PROTOCOL-HTTP2 says)."""
    out = [(b"grpc-status", b"%d" % code)]
    if message:
        out.append((b"grpc-message", quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii")))
    return out


def answer_fields(status: int, fields: Iterable[Pair], message: str) -> Tuple[int, List[Pair]]:
    """A gateway answer of HTTP ``status`` as a trailers-only gRPC answer: its gRPC code and
    the fields (HTTP 200, ``application/grpc``, the status; ``Retry-After`` and the request
    ID kept)."""
    code = _FROM_HTTP.get(status, 2 if status >= 400 else 0)
    out: List[Pair] = [(b"content-type", _CONTENT_TYPE)]
    out += [(n, v) for n, v in fields if n.lower() in _KEPT]
    out += trailers(code, message)
    return code, out


#: grpc.health.v1.Health/Check (grpc/doc/health-checking.md) and its SERVING status.
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"
SERVING = 1


def health_request(service: str) -> bytes:
    """A ``HealthCheckRequest{service}`` as one length-prefixed gRPC message (the message has
    one field, ``string service = 1``: its protobuf encoding is the tag, a varint length and
    the UTF-8 bytes)."""
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def health_status(body: bytes) -> Optional[int]:
    """The ``status`` (field 1, an enum) of the ``HealthCheckResponse`` in ``body`` (one
    length-prefixed, uncompressed message); None when ``body`` is not one."""
    if len(body) < 5 or body[0] != 0:
        return None
    size = int.from_bytes(body[1:5], "big")
    message = body[5 : 5 + size]
    if len(message) != size:
        return None
    at = 0
    status = 0  # proto3: an absent enum is its zero value (UNKNOWN)
    while at < len(message):
        key, at = _read_varint(message, at)
        if key is None:
            return None
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _read_varint(message, at)
            if value is None:
                return None
            if field == 1:
                status = value
        elif kind == 2:
            length, at = _read_varint(message, at)
            if length is None or at + length > len(message):
                return None
            at += length
        else:
            return None
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> Tuple[Optional[int], int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None, at
