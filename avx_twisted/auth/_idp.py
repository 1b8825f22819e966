"""Calls to an identity provider: JSON over HTTP with a size cap, failures sorted for metrics.

Shared by token introspection (:mod:`.oauth2`) and OIDC discovery / JWKS fetches
(:mod:`._jwks`). Every failure becomes an :class:`IdPError` whose ``reason`` is one of the
``avx_idp_errors`` labels: ``timeout``, ``connect``, ``status`` or ``body``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.python.failure import Failure
from twisted.web.http import stringToDatetime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["IdPError", "failure_reason", "fetch_json", "freshness_s", "timed_out", "url_problem"]

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_REUSE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[,=]|$)", re.IGNORECASE)


class IdPError(Exception):
    """The identity provider's answer could not be used; ``reason`` is ``status`` or ``body``.

    The message is for the gateway's log: it names the status or the defect, never a token.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@implementer(IBodyProducer)
class _Body:
    """A small request body written at once (treq's default producer for bytes would go
    through the global cooperator, a reactor the caller did not hand us)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def timed_out(result: Any, timeout: float) -> Failure:
    """``addTimeout``'s ``onTimeoutCancel``: whatever the cancelled call ended with (the Agent
    may report a cancelled request as ``ResponseNeverReceived``), it timed out."""
    return Failure(TimeoutError(timeout, "the identity provider did not answer in time"))


def failure_reason(failure: Failure) -> str:
    """The ``avx_idp_errors`` reason of a failed call: an :class:`IdPError`'s own, ``timeout``
    for ``addTimeout``'s TimeoutError, else ``connect`` (refused, reset, DNS, TLS)."""
    if failure.check(IdPError):
        return failure.value.reason  # type: ignore[no-any-return]
    if failure.check(TimeoutError):
        return "timeout"
    return "connect"


async def fetch_json(
    http: HTTPClient,
    method: str,
    url: str,
    *,
    headers: Mapping[bytes, list[bytes]],
    max_bytes: int,
    data: bytes | None = None,
) -> tuple[Any, Headers]:
    """The decoded JSON of a 200 answer and its headers; :class:`IdPError` otherwise.

    The body is read up to ``max_bytes`` (then the connection is dropped), so a broken or hostile
    provider cannot make the gateway buffer without bound.
    """
    body = _Body(data) if data is not None else None
    response = await http.request(method, url, headers=dict(headers), data=body)
    chunks: list[bytes] = []
    size = 0

    def gather(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > max_bytes:
            raise IdPError("body", f"answer larger than {max_bytes} bytes")
        chunks.append(chunk)

    await collect(response, gather)
    if response.code != 200:
        raise IdPError("status", f"HTTP status {response.code}")
    try:
        return json.loads(b"".join(chunks)), response.headers
    except (ValueError, RecursionError):
        raise IdPError("body", "answer is not JSON")


def freshness_s(headers: Headers, default: float, minimum: float, maximum: float) -> float:
    """How long an answer may be reused, from its cache headers, within [minimum, maximum].

    ``Cache-Control: no-store``/``no-cache`` means as little as allowed; ``max-age`` (less
    ``Age``) wins over ``Expires`` (relative to ``Date``); no usable header gives ``default``.
    """
    control = b", ".join(headers.getRawHeaders(b"cache-control", [])).decode("latin-1")
    lifetime: float | None = None
    if _NO_REUSE.search(control):
        lifetime = 0.0
    else:
        match = _MAX_AGE.search(control)
        if match is not None:
            lifetime = float(match.group(1)) - _seconds(headers, b"age")
        else:
            expires, date = _date(headers, b"expires"), _date(headers, b"date")
            if expires is not None and date is not None:
                lifetime = float(expires - date)
    if lifetime is None:
        lifetime = default
    return min(maximum, max(minimum, lifetime))


def _seconds(headers: Headers, name: bytes) -> float:
    values = headers.getRawHeaders(name)
    if values and values[-1].strip().isdigit():
        return float(values[-1])
    return 0.0


def _date(headers: Headers, name: bytes) -> int | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    try:
        return stringToDatetime(values[-1])
    except (ValueError, IndexError, KeyError):
        return None


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be used to reach an identity provider, or None.

    Tokens and keys travel over https, verified; plain http is accepted only to a loopback
    address (a development provider on the same machine).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a URL"
    if not host:
        return "has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return "is not an https:// URL"
    if host == "localhost" or _is_loopback(host):
        return None
    return "must be https:// (plain http:// only to a loopback address such as 127.0.0.1)"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
