"""The one small interface every per-route filter shares, and the loop that runs them.

A filter looks at a request (a :class:`~avx_twisted.h1.ServerRequest`) and its
:class:`~avx_twisted.context.RequestContext` before it is forwarded and returns ``None`` to let
it go on, an :class:`~avx_twisted.errors.Answer` it made itself, or a Deferred of either (a
filter that must ask something, e.g. a shared rate-limit store). Headers a filter wants on
every answer of the request (CORS, rate-limit fields) go into ``request.response_fields``.
Filters know nothing of each other; the chain of a route is built once, in
:mod:`avx_twisted.runtime`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .context import RequestContext
from .errors import Answer, error_answer

log = Logger()

FilterResult = Union[Answer, None, "Deferred[Optional[Answer]]"]


class IFilter(Interface):
    """A per-route check run before forwarding (CORS, auth, rate limit, body limit)."""

    def __call__(request: Any, ctx: RequestContext) -> FilterResult:
        """``None`` to go on; an Answer, or a Deferred of either."""


Filter = Callable[[Any, RequestContext], FilterResult]


def run_filters(
    filters: Sequence[Filter],
    request: Any,
    ctx: RequestContext,
    proceed: Callable[[], None],
    start: int = 0,
) -> None:
    """Run ``filters[start:]``; answer a refusal, or call ``proceed()`` when all let it go on."""
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
                (request, ctx),
                None,
            )
            return
        send_answer(result, request, ctx)
        return
    proceed()


def refuse(
    request: Any,
    ctx: RequestContext,
    status: int,
    message: str,
    fields: Sequence[Tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``request`` with the gateway's own error (JSON, with the request ID), through the
    route's plugins; the first reason is the one the access log keeps."""
    if ctx.error is None:
        ctx.error = message
    send_answer(error_answer(status, message, fields, ctx.request_id), request, ctx)


def send_answer(answer: Answer, request: Any, ctx: Optional[RequestContext]) -> None:
    """Send an answer the gateway made for a request (a filter's refusal, a plugin's reply, an
    error): through the route's plugins' response phases first, when it has plugins."""
    chain = ctx.chain if ctx is not None else None
    if chain is not None:
        answer = chain.answer(answer, ctx)
    answer.send(request)


def _resumed(
    result: Optional[Answer],
    filters: Sequence[Filter],
    request: Any,
    ctx: RequestContext,
    proceed: Callable[[], None],
    start: int,
) -> None:
    if request.finished:
        return
    if result is None:
        run_filters(filters, request, ctx, proceed, start)
    else:
        send_answer(result, request, ctx)


def _filter_failed(failure: Failure, request: Any, ctx: RequestContext) -> None:
    log.failure("a request filter failed", failure)
    if not request.finished:
        send_answer(error_answer(500, "internal error", request_id=ctx.request_id), request, ctx)


@implementer(IFilter)
class BodyLimit:
    """413 for a body over the route's ``max_body_bytes``: declared, before anything reaches
    the upstream; chunked, as soon as the streamed body crosses it (the forwarder then aborts
    the upstream request and answers 413 if nothing was answered yet)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def __call__(self, request: Any, ctx: RequestContext) -> Optional[Answer]:
        body = request.body
        declared = body.declared
        if (declared is not None and declared > self.max_bytes) or body.received > self.max_bytes:
            return error_answer(413, "request body too large", request_id=ctx.request_id)
        if body.chunked:
            body.limit = self.max_bytes
        return None


def body_size(request: Any) -> int:
    """The request body's size: declared by ``Content-Length``, or (chunked) as received."""
    body = request.body
    return body.declared if body.declared is not None else body.received
