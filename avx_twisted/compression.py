# -*- test-case-name: tests.unit.test_compression -*-
"""Response compression of a route (``[routes.compression]``): gzip (zlib) or brotli, chosen by
the client's ``Accept-Encoding`` q-values, streamed chunk by chunk (nothing buffered whole).

A response is compressed when its content type is one of the route's, it is not already encoded,
it does not say ``Cache-Control: no-transform``, it has a body (not HEAD, 204, 206, 304) and its
known length is at least ``min_bytes``. A compressible response gets ``Vary: Accept-Encoding``
whether or not this client accepted an encoding, so that caches downstream never hand the
compressed form to one that cannot read it; a compressed one loses its ``Content-Length`` and
has its strong ``ETag`` weakened (the bytes differ, the representation does not).
"""

from __future__ import annotations

import zlib
from typing import Any, List, Optional, Sequence, Tuple

try:  # CPython: brotli; PyPy: brotlicffi (same API, with PyPy wheels)
    import brotli as _brotli
except ImportError:  # pragma: no cover - the interpreter's package is a dependency
    import brotlicffi as _brotli  # type: ignore[no-redef]

Pair = Tuple[bytes, bytes]

ENCODINGS = ("br", "gzip")
#: Statuses without a body to compress (206: a range of the uncompressed bytes).
#: Statuses whose answers have no body to change.
NO_BODY = frozenset([204, 206, 304])
_GZIP_LEVEL = 5
_BROTLI_QUALITY = 4


class CompressionPolicy:
    """A route's compression settings, compiled once."""

    def __init__(
        self, encodings: Sequence[str], min_bytes: int, content_types: Sequence[str]
    ) -> None:
        self.encodings = tuple(e.encode("ascii") for e in encodings)
        self.min_bytes = min_bytes
        self._exact = frozenset(
            t.lower().encode("ascii") for t in content_types if not t.endswith("/*")
        )
        self._prefixes = tuple(
            t[:-1].lower().encode("ascii") for t in content_types if t.endswith("/*")
        )

    def compressible(self, content_type: Optional[bytes]) -> bool:
        if not content_type:
            return False
        media = content_type.split(b";", 1)[0].strip().lower()
        return media in self._exact or media.startswith(self._prefixes)

    def plan(
        self,
        method: bytes,
        request_fields: Any,
        status: int,
        fields: List[Pair],
        length: Optional[int],
    ) -> Tuple[Optional[bytes], List[Pair]]:
        """The encoding to use for this response (None: sent as it is) and its fields."""
        if method == b"HEAD" or status in NO_BODY or status < 200 or length == 0:
            return None, fields
        content_type = None
        for name, value in fields:
            lower = name.lower()
            if lower == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                return None, fields  # the upstream's own encoding passes as it is
            if lower == b"content-type":
                content_type = value
            elif lower == b"cache-control" and b"no-transform" in value.lower():
                return None, fields
        if not self.compressible(content_type):
            return None, fields
        if length is not None and length < self.min_bytes:
            return None, fields
        fields = add_vary(fields, b"Accept-Encoding")
        encoding = choose(request_fields.get_all(b"accept-encoding"), self.encodings)
        if encoding is None:
            return None, fields
        out = reframed(fields, (b"content-length",))
        out.append((b"Content-Encoding", encoding))
        return encoding, out


def reframed(fields: List[Pair], dropped: Sequence[bytes]) -> List[Pair]:
    """``fields`` for a body the gateway changes: without the (lower-case) names ``dropped``
    (its length, its old encoding), and a strong ETag weakened (RFC 9110 8.8.1)."""
    out: List[Pair] = []
    for name, value in fields:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        out.append((name, value))
    return out


def choose(accept: Sequence[bytes], offered: Sequence[bytes]) -> Optional[bytes]:
    """The offered coding the client weighs most (``Accept-Encoding``, RFC 9110 12.5.3);
    ties go to the route's order; ``q=0`` refuses; ``*`` stands for codings not named."""
    if not accept:
        return None
    weights: dict = {}
    star: Optional[float] = None
    for value in accept:
        for item in value.split(b","):
            coding, _, params = item.strip().partition(b";")
            coding = coding.strip().lower()
            if not coding:
                continue
            q = 1.0
            for param in params.split(b";"):
                key, _, arg = param.strip().partition(b"=")
                if key.strip().lower() == b"q":
                    try:
                        q = float(arg.strip())
                    except ValueError:
                        q = 0.0
            if coding == b"*":
                star = q
            else:
                weights[coding] = max(q, weights.get(coding, 0.0))
    best: Optional[bytes] = None
    best_q = 0.0
    for coding in offered:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    return best


def add_vary(fields: List[Pair], name: bytes) -> List[Pair]:
    """``fields`` with ``name`` in its Vary (once; ``Vary: *`` left alone)."""
    out: List[Pair] = []
    merged = False
    for field, value in fields:
        if field.lower() == b"vary":
            tokens = [t.strip() for t in value.split(b",") if t.strip()]
            lowered = {t.lower() for t in tokens}
            if not merged and b"*" not in lowered and name.lower() not in lowered:
                value = b", ".join(tokens + [name])
            merged = True
        out.append((field, value))
    if not merged:
        out.append((b"Vary", name))
    return out


class Compressor:
    """One response body's encoder: ``data`` returns what can be sent now (flushed per
    upstream chunk so streamed answers keep flowing), ``finish`` the rest."""

    def __init__(self, encoding: bytes) -> None:
        self.encoding = encoding
        if encoding == b"gzip":
            self._zlib: Any = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
            self._brotli: Any = None
        else:
            self._zlib = None
            self._brotli = _brotli.Compressor(quality=_BROTLI_QUALITY)
        self.bytes_in = 0
        self.bytes_out = 0

    def data(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        if self._zlib is not None:
            out = self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        else:
            out = self._brotli.process(data) + self._brotli.flush()
        self.bytes_out += len(out)
        return out

    def finish(self) -> bytes:
        if self._zlib is not None:
            out = self._zlib.flush(zlib.Z_FINISH)
        else:
            out = self._brotli.finish()
        self.bytes_out += len(out)
        return out
