"""Probe endpoints: liveness, readiness and the JSON health report."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from twisted.web.server import Request

from . import __version__

if TYPE_CHECKING:
    from .runtime import Runtime

_JSON = [b"application/json"]
_NO_STORE = [b"no-store"]


def _json(request: Request, status: int, payload: object) -> bytes:
    body = json.dumps(payload).encode() + b"\n"
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"Content-Type", _JSON)
    request.responseHeaders.setRawHeaders(b"Cache-Control", _NO_STORE)
    return body


class Probes:
    """``/healthz``, ``/ready`` and ``/health`` for one gateway process."""

    def __init__(self, runtime_source: object, started: float | None = None) -> None:
        self._source = runtime_source
        self.started = time.time() if started is None else started
        self.ready = False

    @property
    def runtime(self) -> Runtime:
        return self._source.runtime  # type: ignore[attr-defined,no-any-return]

    def liveness(self, request: Request) -> bytes:
        """200 whenever the reactor turns (this handler running is the proof)."""
        return _json(request, 200, {"status": "alive"})

    def readiness(self, request: Request) -> bytes:
        """200 once listening with a loaded config; 503 before that and while draining."""
        if self.ready:
            return _json(request, 200, {"status": "ready"})
        return _json(request, 503, {"status": "not ready"})

    def health(self, request: Request) -> bytes:
        """Overall status and each route's targets; 503 when a route has no usable target."""
        routes = []
        serving = True
        for route in self.runtime.routes:
            targets = [t.status() for t in route.upstream.targets]
            usable = any(t["available"] for t in targets)
            serving = serving and usable
            routes.append(
                {
                    "name": route.name,
                    "path": route.config.path,
                    "status": "up" if usable else "down",
                    "targets": targets,
                }
            )
        status = "ok" if serving else "degraded"
        return _json(
            request,
            200 if serving else 503,
            {
                "status": status,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "routes": routes,
            },
        )
