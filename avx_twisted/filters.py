"""The one small interface every per-route filter shares, and the loop that runs them.

A filter looks at a request (and the :class:`~avx_twisted.context.RequestContext`) before it is
forwarded and returns ``None`` to let it go on, or the body of the answer it made itself (status
and headers already set on the request), or a Deferred of either (a filter that must ask
something, e.g. a shared rate-limit store). Filters know nothing of each other; the chain of a
route is built once, in :mod:`avx_twisted.runtime`.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import Interface

from .context import RequestContext
from .errors import send_error, write_error

log = Logger()

FilterResult = Union[bytes, None, "Deferred[bytes | None]"]


class IFilter(Interface):
    """A per-route check run before forwarding (CORS, auth, rate limit, body limit)."""

    def __call__(request: Request, ctx: RequestContext) -> FilterResult:
        """``None`` to go on; the answer's body (status/headers set) or a Deferred of either."""


Filter = Callable[[Request, RequestContext], FilterResult]


def run_filters(
    filters: Sequence[Filter],
    request: Request,
    ctx: RequestContext,
    proceed: Callable[[], None],
    start: int = 0,
) -> bytes | int:
    """Run ``filters[start:]``; call ``proceed()`` when all let the request go on.

    Returns what ``render`` should return: a rejection's body, or ``NOT_DONE_YET``.
    """
    for index in range(start, len(filters)):
        result = filters[index](request, ctx)
        if result is None:
            continue
        if isinstance(result, Deferred):
            result.addCallbacks(
                _resumed,
                _filter_failed,
                (filters, request, ctx, proceed, index + 1),
                None,
                (request,),
                None,
            )
            return NOT_DONE_YET
        return result
    proceed()
    return NOT_DONE_YET


def _resumed(
    result: bytes | None,
    filters: Sequence[Filter],
    request: Request,
    ctx: RequestContext,
    proceed: Callable[[], None],
    start: int,
) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    if result is None:
        body = run_filters(filters, request, ctx, proceed, start)
    else:
        body = result
    if body is not NOT_DONE_YET:
        request.write(body)  # type: ignore[arg-type]
        request.finish()


def _filter_failed(failure: Failure, request: Request) -> None:
    log.failure("a request filter failed", failure)
    if not request.finished and not getattr(request, "_disconnected", False):
        send_error(request, 500, "internal error")


class BodyLimit:
    """413 for a body over the route's ``max_body_bytes``, declared or (chunked) received.

    The site already refuses bodies over the largest limit of any route while reading them; this
    applies the route's own, before anything reaches the upstream.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def __call__(self, request: Request, ctx: RequestContext) -> bytes | None:
        size = body_size(request)
        if size > self.max_bytes:
            return write_error(request, 413, "request body too large")
        return None


def body_size(request: Request) -> int:
    """The request body's size: declared by ``Content-Length``, or (chunked) as spooled."""
    declared = request.requestHeaders.getRawHeaders(b"content-length")
    if declared:
        try:
            return int(declared[-1])
        except ValueError:
            return 0
    content = request.content
    if content is None or not request.requestHeaders.hasHeader(b"transfer-encoding"):
        return 0
    position = content.tell()
    size: int = content.seek(0, 2)
    content.seek(position)
    return size
