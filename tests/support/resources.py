"""A twisted.web tree for resource routes (``resource = "tests.support.resources:root"``).

``root`` is a factory, called when the config is loaded: ``/big`` serves the file named by the
``AVX_TEST_BIG_FILE`` environment variable (read then, so a twistd child sees it too).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import static
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

BIG_FILE_ENV = "AVX_TEST_BIG_FILE"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello from " + request.uri


class Later(Resource):
    """Answers 50 ms after the request (NOT_DONE_YET), unless the client went."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        from twisted.internet import reactor

        gone: list[Any] = []
        request.notifyFinish().addErrback(gone.append)

        def answer() -> None:
            if not gone:
                request.write(b"later")
                request.finish()

        reactor.callLater(0.05, answer)
        return NOT_DONE_YET


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"got %d bytes" % len(request.content.read())


def root() -> Resource:
    """The tree: /hello, /later, /echo, and /big when ``AVX_TEST_BIG_FILE`` names a file."""
    tree = Resource()
    tree.putChild(b"hello", Hello())
    tree.putChild(b"later", Later())
    tree.putChild(b"echo", Echo())
    big = os.environ.get(BIG_FILE_ENV)
    if big:
        tree.putChild(b"big", static.File(big, defaultType="application/octet-stream"))
    return tree
