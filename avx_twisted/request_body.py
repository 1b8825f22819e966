# -*- test-case-name: tests.integration.test_transform -*-
"""A request body read whole before forwarding, for the policies that need all of it (JSON body
transforms, GraphQL, JSON Schema validation), and put back for the forwarder."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed

from .h1 import RequestBody


class _Collector:
    """RequestBody's consumer until the body ends (or crosses ``cap``)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: List[bytes] = []
        self.size = 0
        self.done: Deferred[Tuple[Optional[int], bytes]] = Deferred()

    def write(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.cap:
            self.chunks = []
            self.done.callback((413, b""))
            return
        self.chunks.append(data)

    def finish(self) -> None:
        if not self.done.called:
            self.done.callback((None, b"".join(self.chunks)))

    def fail(self, failure: Any) -> None:
        if not self.done.called:
            self.done.callback((getattr(failure, "status", 400), b""))


def read_whole(request: Any, cap: int) -> Deferred[Tuple[Optional[int], bytes]]:
    """``request``'s body, whole: fires with ``(None, body)``, or ``(status, b"")`` to answer
    instead (413 when it is larger than ``cap``; the body's own failure: 408, 499, ...)."""
    body = request.body
    if not body.present:
        return succeed((None, b""))
    if body.declared is not None and body.declared > cap:
        return succeed((413, b""))
    collector = _Collector(cap)
    body.attach(collector)
    return collector.done


def replace(request: Any, data: bytes) -> None:
    """Put ``data`` in place of ``request``'s body (read by :func:`read_whole`): whole, so the
    forwarder sends it with its Content-Length (and may send it again on a retry)."""
    fresh = RequestBody(len(data), False, len(data) + 1, _nothing, _nothing, _nothing)
    if data:
        fresh.data_received(data)
    fresh.data_done()
    request.body = fresh


def _nothing() -> None:
    pass
