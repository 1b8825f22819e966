"""A tiny echo upstream for the built-in demo (``make run``) and for trying the gateway out.

It answers every request with a JSON description of what it received, so a user can see exactly
what the gateway forwarded (path, query, X-Forwarded-* headers, body size).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.application.service import IService
from twisted.application.strports import service as strports_service
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class EchoResource(Resource):
    """Echoes method, path, headers and body length back as JSON."""

    isLeaf = True

    def __init__(self, name: str = "demo-echo") -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        payload: dict[str, Any] = {
            "service": self.name,
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": {
                k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body_bytes": len(body),
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload, indent=2).encode() + b"\n"


def echo_service(description: str, name: str = "demo-echo") -> IService:
    """A service that runs the echo upstream on a Twisted endpoint string."""
    site = Site(EchoResource(name))
    site.log = lambda request: None  # type: ignore[method-assign]
    return strports_service(description, site)


def main(argv: list[str] | None = None) -> None:
    """``avx-gateway-demo-upstream [ENDPOINT]``: run the echo upstream on its own."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = sys.argv[1:] if argv is None else argv
    description = args[0] if args else "tcp:9001:interface=127.0.0.1"
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    echo_service(description).startService()
    reactor.run()  # type: ignore[attr-defined]
