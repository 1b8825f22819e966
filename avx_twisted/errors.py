"""The one shape of every error the gateway answers itself: ``{"error": ..., "status": ...}``."""

from __future__ import annotations

import json
from typing import Iterable

from twisted.web.http import RESPONSES
from twisted.web.server import Request

_JSON = [b"application/json"]
_NO_STORE = [b"no-store"]


def error_body(status: int, message: str | None = None) -> bytes:
    """The JSON body for ``status``; ``message`` defaults to the status' reason phrase."""
    if message is None:
        message = RESPONSES.get(status, b"error").decode("ascii").lower()
    return json.dumps({"error": message, "status": status}).encode() + b"\n"


def write_error(
    request: Request,
    status: int,
    message: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """Set status and headers of a gateway-made error on ``request``; return the body to send.

    The body is returned rather than written so that ``render`` can hand it back to Twisted
    (which sets Content-Length and honours HEAD).
    """
    body = error_body(status, message)
    request.setResponseCode(status)
    set_raw = request.responseHeaders.setRawHeaders
    set_raw(b"Content-Type", _JSON)
    set_raw(b"Cache-Control", _NO_STORE)
    set_raw(b"Content-Length", [b"%d" % len(body)])
    for name, value in headers:
        set_raw(name, [value])
    return body


def send_error(
    request: Request,
    status: int,
    message: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Write and finish a gateway-made error on a request that is already asynchronous."""
    body = write_error(request, status, message, headers)
    request.write(body)
    request.finish()
