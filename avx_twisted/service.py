"""The gateway as a Twisted service: listeners, probes and upstream clients, started and stopped
together."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from .config import GatewayConfig
from .gateway import GatewayResource
from .probes import Probes
from .runtime import Runtime


class GatewaySite(Site):
    """The HTTP factory of the gateway (Twisted's own per-request log line is off)."""

    def log(self, request: Any) -> None:
        """Access logging is done by the gateway's own logger, not Twisted's common log."""


class GatewayService(MultiService):
    """One gateway: binds its listeners on start, closes them and the upstream pool on stop."""

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.runtime = Runtime(config, reactor)
        self.probes = Probes(self)
        health = config.health
        internal = {
            health.liveness_path.encode(): self.probes.liveness,
            health.readiness_path.encode(): self.probes.readiness,
            health.health_path.encode(): self.probes.health,
        }
        self.resource = GatewayResource(self.runtime, internal)
        self.site = GatewaySite(self.resource)
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        """Bind every listener now (a bind error raises so twistd exits non-zero), then start
        the active health checks."""
        super().startService()
        for description in self.config.server.endpoints:
            failures: list[Failure] = []
            d = serverFromString(self.reactor, description).listen(self.site)
            d.addCallbacks(self.ports.append, failures.append)
            if failures:
                self.log.critical(
                    "cannot listen on {endpoint}: {why}",
                    endpoint=description,
                    why=failures[0].getErrorMessage(),
                )
                self._close_ports()
                self.running = False
                failures[0].raiseException()
        for port in self.ports:
            self.log.info("avx-gateway listening on {address}", address=port.getHost())
        if self.config.server.workers > 1:
            self.log.warn(
                "server.workers = {workers}: worker processes are not implemented yet; "
                "serving from this one process",
                workers=self.config.server.workers,
            )
        for checker in self.runtime.health_checkers:
            checker.start()
        self.probes.ready = True

    def stopService(self) -> Deferred[Any]:
        """Drain: not ready, stop accepting, let in-flight requests finish (up to
        ``drain_timeout_ms``), then stop health checks and close pooled upstream connections."""
        self.probes.ready = False
        self._exit_cleanly()
        in_flight = self.resource.in_flight
        in_flight.draining = True
        self.log.info(
            "draining: {count} requests in flight, waiting up to {timeout} ms",
            count=in_flight.count,
            timeout=self.config.server.drain_timeout_ms,
        )
        closing = self._close_ports()
        for checker in self.runtime.health_checkers:
            checker.stop()
        drained = in_flight.wait_idle(self.config.server.drain_timeout_ms / 1000.0, self.reactor)

        def after_drain(idle: bool) -> Deferred[Any]:
            self._exit_cleanly()  # a second SIGTERM may have come during the drain
            if not idle:
                self.log.warn(
                    "drain timeout: {count} requests still in flight are cut off",
                    count=in_flight.count,
                )
            waits = [closing, self.runtime.clients.close()]
            parent = super(GatewayService, self).stopService()
            if parent is not None:
                waits.append(parent)
            return DeferredList(waits, consumeErrors=True)

        return drained.addCallback(after_drain)

    def _exit_cleanly(self) -> None:
        """A SIGTERM/SIGINT stop is the normal, orderly way out: exit 0 rather than twistd's
        default of re-raising the signal (which systemd and Kubernetes would log as a failure)."""
        if getattr(self.reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
            self.reactor._exitSignal = None

    def _close_ports(self) -> Deferred[Any]:
        ports, self.ports = self.ports, []
        waits = [d for d in (port.stopListening() for port in ports) if d is not None]
        return DeferredList(waits, consumeErrors=True)

    @property
    def port(self) -> int:
        """The first listener's port number (handy with ``port = 0``)."""
        return self.ports[0].getHost().port  # type: ignore[no-any-return]
