"""Probe endpoints: liveness, readiness and the JSON health report."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import Answer, json_answer

if TYPE_CHECKING:
    from .runtime import Runtime


class Probes:
    """``/healthz``, ``/ready`` and ``/health`` for one gateway process."""

    def __init__(self, runtime_source: object, started: float | None = None) -> None:
        self._source = runtime_source
        self.started = time.time() if started is None else started
        self.ready = False

    @property
    def runtime(self) -> Runtime:
        return self._source.runtime  # type: ignore[attr-defined,no-any-return]

    def liveness(self, request: Any) -> Answer:
        """200 whenever the reactor turns (this handler running is the proof)."""
        return json_answer(200, {"status": "alive"})

    def readiness(self, request: Any) -> Answer:
        """200 once listening with a loaded config; 503 before that and while draining."""
        if self.ready:
            return json_answer(200, {"status": "ready"})
        return json_answer(503, {"status": "not ready"})

    def health(self, request: Any) -> Answer:
        """Overall status and each route's targets; 503 when a route has no usable target."""
        routes = []
        serving = True
        for route in self.runtime.routes:
            targets = [t.status() for t in route.upstream.targets]
            # A route without targets (a resource route) is served by the gateway itself.
            usable = any(t["available"] for t in targets) or not targets
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
        return json_answer(
            200 if serving else 503,
            {
                "status": status,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "routes": routes,
            },
        )
