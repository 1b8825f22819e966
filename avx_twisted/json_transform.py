# -*- test-case-name: tests.unit.test_json_transform -*-
"""JSON body transformation of a route (``json_remove``, ``json_rename``, ``json_set`` in
``[routes.request]`` and ``[routes.response]``), in that order, on dotted paths.

A path's segments are object keys; where a segment meets an array, the rest of the path applies
to each of its elements (``items.secret`` removes ``secret`` from every item). Only bodies with
a JSON content type (``application/json``, ``*/*+json``) are touched, buffered up to
``max_json_bytes``; a body that is not valid JSON goes on unchanged (counted, logged).
Responses: a gzip/deflate/brotli body is decoded first and sent without that encoding (the
route's compression may encode it again); a longer body, or one in another encoding, goes on
unchanged and is counted.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .compression import NO_BODY, _brotli, reframed
from .request_body import read_whole, replace

Path = Tuple[str, ...]
Pair = Tuple[bytes, bytes]


def split_path(text: str) -> Path:
    """``"meta.source"`` as its segments; raises ValueError for an empty segment."""
    parts = tuple(text.split("."))
    if not text or any(not p for p in parts):
        raise ValueError(f"{text!r} is not a dotted path (empty segment)")
    return parts


def is_json(content_type: Optional[bytes]) -> bool:
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class JsonRules:
    """The body changes of one direction, compiled once."""

    def __init__(
        self,
        remove: Sequence[str] = (),
        rename: Sequence[Tuple[str, str]] = (),
        set_values: Sequence[Tuple[str, Any]] = (),
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self.remove = [split_path(p) for p in remove]
        self.rename = [(split_path(old), new) for old, new in rename]
        self.set = [(split_path(p), value) for p, value in set_values]
        self.max_bytes = max_bytes

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.set)

    def apply(self, document: Any) -> Any:
        for path in self.remove:
            _walk(document, path, _remove)
        for path, new in self.rename:
            _walk(document, path, lambda parent, key, new=new: _rename(parent, key, new))
        for path, value in self.set:
            _walk(document, path, lambda parent, key, value=value: _set(parent, key, value), True)
        return document

    def transform(self, body: bytes) -> Optional[bytes]:
        """The changed body, or None when it is not JSON (left as it is)."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        return json.dumps(self.apply(document), separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )


def _walk(node: Any, path: Path, act: Callable[[Any, str], None], create: bool = False) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, path, act, create)
        return
    if not isinstance(node, dict):
        return
    head = path[0]
    if len(path) == 1:
        act(node, head)
        return
    child = node.get(head)
    if child is None and create:
        child = node[head] = {}
    if child is not None:
        _walk(child, path[1:], act, create)


def _remove(parent: dict, key: str) -> None:
    parent.pop(key, None)


def _rename(parent: dict, key: str, new: str) -> None:
    if key in parent:
        parent[new] = parent.pop(key)


def _set(parent: dict, key: str, value: Any) -> None:
    parent[key] = value


class _Decoder:
    def __init__(self, encoding: bytes) -> None:
        if encoding == b"br":
            brotli = _brotli.Decompressor()
            # brotli's Decompressor has process(), brotlicffi's (PyPy) decompress().
            self._brotli: Any = getattr(brotli, "process", None) or brotli.decompress
            self._zlib: Any = None
        else:
            self._brotli = None
            self._zlib = zlib.decompressobj(31 if encoding == b"gzip" else zlib.MAX_WBITS)

    def data(self, data: bytes) -> bytes:
        if self._zlib is not None:
            return self._zlib.decompress(data)  # type: ignore[no-any-return]
        return self._brotli(data)  # type: ignore[no-any-return]

    def end(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.flush()  # type: ignore[no-any-return]
        return b""


_DECODABLE = frozenset([b"gzip", b"deflate", b"br"])


class ResponseBodyTransform:
    """A response body on its way: decoded when needed, buffered up to the cap, changed at
    its end (``data``/``end`` like a plugin's body transform). ``skipped`` says why it went on
    unchanged (``too_large``, ``not_json``), for the metrics."""

    def __init__(self, rules: JsonRules, encoding: Optional[bytes]) -> None:
        self.rules = rules
        self.decoder = _Decoder(encoding) if encoding else None
        self._chunks: Optional[List[bytes]] = []
        self._size = 0
        self.skipped: Optional[str] = None

    def data(self, data: bytes) -> bytes:
        if self.decoder is not None:
            data = self.decoder.data(data)
        chunks = self._chunks
        if chunks is None:
            return data
        self._size += len(data)
        if self._size > self.rules.max_bytes:
            self.skipped = "too_large"
            self._chunks = None
            return b"".join(chunks) + data
        chunks.append(data)
        return b""

    def end(self) -> bytes:
        tail = self.decoder.end() if self.decoder is not None else b""
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return tail
        body = b"".join(chunks) + tail
        changed = self.rules.transform(body)
        if changed is None:
            self.skipped = "not_json"
            return body
        return changed


def plan_response(
    rules: JsonRules, method: bytes, status: int, fields: List[Pair]
) -> Tuple[Optional[ResponseBodyTransform], List[Pair]]:
    """Whether a response body is transformed, and its fields if so (no Content-Length, no
    Content-Encoding once decoded, a strong ETag weakened)."""
    if method == b"HEAD" or status in NO_BODY or status < 200:
        return None, fields
    content_type = None
    encoding = None
    for name, value in fields:
        lower = name.lower()
        if lower == b"content-type":
            content_type = value
        elif lower == b"content-encoding":
            encoding = value.strip().lower()
    if not is_json(content_type):
        return None, fields
    if encoding in (b"", b"identity"):
        encoding = None
    if encoding is not None and encoding not in _DECODABLE:
        return None, fields
    out = reframed(fields, (b"content-length", b"content-encoding"))
    return ResponseBodyTransform(rules, encoding), out


def transform_request_body(request: Any, rules: JsonRules) -> Any:
    """Read ``request``'s JSON body (up to ``rules.max_bytes``), change it, and put the new
    body in its place: a Deferred firing with ``(None, skipped)`` (go on; ``skipped`` says
    when the body was left as it was: ``not_json``) or ``(status, None)`` to answer (413 for a
    larger body, or the body's own failure)."""

    def changed(result: Tuple[Optional[int], bytes]) -> Tuple[Optional[int], Optional[str]]:
        status, body = result
        if status is not None:
            return status, None
        new = rules.transform(body)
        replace(request, body if new is None else new)
        return None, "not_json" if new is None else None

    return read_whole(request, rules.max_bytes).addCallback(changed)
