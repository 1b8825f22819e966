"""Bytes out: status lines with reason phrases, heads in one join, outgoing field checks."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable, Optional, Tuple

Pair = Tuple[bytes, bytes]

#: Reason phrases of every registered status (RFC 9110 names; 413 and 422 by their new names).
REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
REASONS.update({413: b"Content Too Large", 422: b"Unprocessable Content", 499: b"Client Closed"})

_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}

_BAD_IN_VALUE = (b"\r", b"\n", b"\x00")


class BadField(ValueError):
    """An outgoing header name or value that would break the framing (CR, LF, NUL)."""


def reason_phrase(status: int) -> bytes:
    """The reason phrase for ``status`` (a generic one for unregistered codes)."""
    reason = REASONS.get(status)
    if reason is not None:
        return reason
    return REASONS.get(status // 100 * 100, b"Unknown")


def status_line(status: int, reason: Optional[bytes] = None) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; our own reason phrase unless one is given."""
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = reason_phrase(status)
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def check_field(name: bytes, value: bytes) -> None:
    """Refuse a field that would split the head (response splitting)."""
    for bad in _BAD_IN_VALUE:
        if bad in value or bad in name:
            raise BadField(name)
    if b":" in name or b" " in name or not name:
        raise BadField(name)


def head_bytes(first_line: bytes, fields: Iterable[Pair]) -> bytes:
    """One head: the first line (with its CRLF), the fields, the blank line. Fields are checked."""
    lines = [b"%s: %s" % pair for pair in fields]
    block = b"\r\n".join(lines)
    # One scan of the whole block instead of one per field: the only CR and LF in it may be
    # the separators just added, and there may be no NUL.
    separators = len(lines) - 1
    if block.count(b"\n") > separators or block.count(b"\r") > separators or b"\x00" in block:
        for name, value in fields:
            check_field(name, value)
    if lines:
        return first_line + block + b"\r\n\r\n"
    return first_line + b"\r\n"


def request_line(method: bytes, target: bytes) -> bytes:
    return b"%s %s HTTP/1.1\r\n" % (method, target)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class DateCache:
    """The ``Date`` field value, formatted at most once a second."""

    __slots__ = ("_second", "_value", "_now")

    def __init__(self, now: Optional[object] = None) -> None:
        self._now = now or time.time
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = self._now()  # type: ignore[operator]
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value
