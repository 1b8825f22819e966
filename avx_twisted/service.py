"""The gateway as a Twisted service: listeners, probes and upstream clients, started and stopped
together."""

from __future__ import annotations

import gc
import os
import signal
import threading
from typing import Any, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from ._version import __version__
from .config import ConfigError, GatewayConfig
from .gateway import GatewayHandler
from .h1 import ServerFactory, ServerLimits
from .logs import AccessLogWriter, access_logger, apply_level
from .metrics import GatewayMetrics
from .probes import Probes
from .runtime import Runtime


class GatewayService(MultiService):
    """One gateway: binds its listeners on start, closes them and the upstream pool on stop."""

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any = None,
        inherited: Sequence[tuple[int, int, bool]] | None = None,
    ) -> None:
        super().__init__()
        #: Listening sockets handed down by a worker supervisor: (fd, family, tls), in the order
        #: of ``config.server.endpoints``; None: bind the endpoints ourselves.
        self.inherited = inherited
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        middleware = config.middleware
        self.metrics = GatewayMetrics() if middleware.enable_metrics else None
        self.runtime = Runtime(config, reactor, metrics=self.metrics)
        self.probes = Probes(self)
        health = config.health
        internal = {
            health.liveness_path.encode(): self.probes.liveness,
            health.readiness_path.encode(): self.probes.readiness,
            health.health_path.encode(): self.probes.health,
        }
        if self.metrics is not None:
            internal[config.metrics.path.encode()] = self.metrics.render
        self.access_writer: AccessLogWriter | None = None
        access_log = None
        if middleware.enable_logging:
            self.access_writer = AccessLogWriter(
                config.logging.access_log, config.logging.format, clock=reactor
            )
            access_log = access_logger(self.access_writer)
        self.handler = GatewayHandler(self.runtime, internal, self.metrics, access_log)
        # The HTTP core refuses bodies over the largest route limit while reading them; each
        # route applies its own limit again before forwarding.
        max_body_bytes = max(
            (route.max_body_bytes for route in config.routes),
            default=config.server.max_body_bytes,
        )
        server = config.server
        self.site = ServerFactory(
            self.handler,
            reactor,
            ServerLimits(
                max_body_bytes=max_body_bytes,
                header_timeout_s=server.client_header_timeout_ms / 1000.0,
                body_timeout_s=server.client_body_timeout_ms / 1000.0,
                idle_timeout_s=server.keepalive_timeout_ms / 1000.0,
            ),
            server_header=server.server_header.encode("ascii") or None,
        )
        if self.metrics is not None:
            gauge = self.metrics.open_connections
            if self.metrics.multiprocess_dir is None:
                connections = self.site.connections
                gauge.set_function(lambda: len(connections))
            else:
                self.site.on_connection = lambda delta: gauge.inc(delta)
        self.ports: list[IListeningPort] = []
        self.admin_ports: list[IListeningPort] = []

    def startService(self) -> None:
        """Bind every listener now (a bind error raises so twistd exits non-zero), then start
        the active health checks."""
        super().startService()
        if self.config.logging.level != "info":
            apply_level(globalLogPublisher, self.config.logging.level)
        if self.access_writer is not None:
            self.access_writer.start()
        if self.inherited is not None:
            self._adopt(self.inherited)
        else:
            self._listen()
        for port in self.ports:
            self.log.info("avx-gateway listening on {address}", address=port.getHost())
        config = self.config
        self.log.info(
            "avx-gateway {version}: {routes} routes from {source}",
            version=__version__,
            routes=len(config.routes),
            source=config.source,
        )
        if config.admin is not None:
            self._listen_admin(config.admin)
        if self.config.server.workers > 1 and self.inherited is None:
            self.log.warn(
                "server.workers = {workers}: worker processes are started by "
                "`twistd avx-gateway`; this embedded gateway serves from one process",
                workers=self.config.server.workers,
            )
        self.runtime.start()
        self.probes.ready = True
        self._previous_hup = None
        if self.inherited is None and threading.current_thread() is threading.main_thread():
            self._previous_hup = signal.signal(signal.SIGHUP, self._on_sighup)
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # way, so that full collections stay short (they stall every request in flight).
        gc.collect()
        if hasattr(gc, "freeze"):
            gc.freeze()
            gc.set_threshold(7000, 10, 10)

    def stopService(self) -> Deferred[Any]:
        """Drain: not ready, stop accepting, let in-flight requests finish (up to
        ``drain_timeout_ms``), then stop health checks and close pooled upstream connections."""
        self.probes.ready = False
        if getattr(self, "_previous_hup", None) is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        self._exit_cleanly()
        in_flight = self.handler.in_flight
        self.site.drain()  # idle connections close; answers from now on say Connection: close
        self.log.info(
            "draining: {count} requests in flight, waiting up to {timeout} ms",
            count=in_flight.count,
            timeout=self.config.server.drain_timeout_ms,
        )
        closing = self._close_ports()
        self.runtime.stop()
        drained = in_flight.wait_idle(self.config.server.drain_timeout_ms / 1000.0, self.reactor)

        def after_drain(idle: bool) -> Deferred[Any]:
            self._exit_cleanly()  # a second SIGTERM may have come during the drain
            if not idle:
                self.log.warn(
                    "drain timeout: {count} requests still in flight are cut off",
                    count=in_flight.count,
                )
                self.site.abort_all()  # tunnels and answers still going are cut off
            if self.access_writer is not None:
                self.access_writer.stop()
            waits = [closing, self.runtime.clients.close(), self.site.close_all(1.0)]
            close_store = getattr(self.runtime.rate_store, "close", None)
            if close_store is not None:
                waits.append(maybeDeferred(close_store))
            parent = super(GatewayService, self).stopService()
            if parent is not None:
                waits.append(parent)
            return DeferredList(waits, consumeErrors=True)

        return drained.addCallback(after_drain)

    def _listen(self) -> None:
        for description in self.config.server.endpoints:
            self.ports.append(self._bind(description, self.site))

    def _listen_admin(self, admin: Any) -> None:
        """The admin API on its own listener (one process only: workers do not open it)."""
        if self.inherited is not None:
            self.log.warn("[admin] is served only when server.workers = 1; not opened")
            return
        from .admin import admin_site

        self.admin_ports.append(self._bind(admin.listen, admin_site(self, admin.token_sha256)))
        self.log.info("admin API listening on {endpoint}", endpoint=admin.listen)

    def _bind(self, description: str, factory: Any) -> IListeningPort:
        """Listen on an endpoint string now; a failure closes what is open and raises, so
        twistd exits non-zero before serving anything."""
        ports: list[IListeningPort] = []
        failures: list[Failure] = []
        d = serverFromString(self.reactor, description).listen(factory)
        d.addCallbacks(ports.append, failures.append)
        if failures:
            self.log.critical(
                "cannot listen on {endpoint}: {why}",
                endpoint=description,
                why=failures[0].getErrorMessage(),
            )
            self._close_ports()
            self.running = False
            failures[0].raiseException()
        return ports[0]

    def _adopt(self, inherited: Sequence[tuple[int, int, bool]]) -> None:
        """Serve sockets a supervisor bound (worker processes)."""
        endpoints = self.config.server.endpoints
        for (fd, family, tls), description in zip(inherited, endpoints):
            factory: Any = self.site
            if tls:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                endpoint = serverFromString(self.reactor, description)
                factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, self.site)
            self.ports.append(self.reactor.adoptStreamPort(fd, family, factory))
            os.close(fd)

    def reload(self) -> bool:
        """Re-read the config file and swap in a new runtime between two requests.

        Routes, upstreams, filters, limits and auth change at once for every new request;
        requests in flight finish on the runtime they started with; no listener is touched.
        Targets whose settings did not change keep their circuit breaker, health state and
        health checker. An invalid file is refused with the same errors as at start-up and the
        running config stays. Returns whether the new config is now serving.
        """
        source = self.config.source
        if not os.path.isfile(source):
            self.log.warn("reload: this gateway was not started from a config file")
            return False
        try:
            config = GatewayConfig.load(source)
            runtime = Runtime(
                config,
                self.reactor,
                clients=self.runtime.clients,
                metrics=self.metrics,
                previous=self.runtime,
            )
        except ConfigError as e:
            self.log.error(
                "reload refused, the running configuration stays:\n{errors}", errors=str(e)
            )
            return False
        needs_restart = _restart_only_changes(self.config, config)
        if needs_restart:
            self.log.warn(
                "reload: {keys} changed; they take effect only after a restart",
                keys=", ".join(needs_restart),
            )
        old, self.runtime = self.runtime, runtime
        self.handler.runtime = runtime
        self.config = config
        old.handed_over(runtime)
        runtime.start()
        self.log.info(
            "reloaded {source}: {routes} routes", source=source, routes=len(config.routes)
        )
        return True

    def _on_sighup(self, *_: object) -> None:
        self.reactor.callFromThread(self.reload)

    def _exit_cleanly(self) -> None:
        exit_cleanly_after_signal(self.reactor)

    def _close_ports(self) -> Deferred[Any]:
        ports, self.ports = self.ports + self.admin_ports, []
        self.admin_ports = []
        waits = [d for d in (port.stopListening() for port in ports) if d is not None]
        return DeferredList(waits, consumeErrors=True)

    @property
    def port(self) -> int:
        """The first listener's port number (handy with ``port = 0``)."""
        return self.ports[0].getHost().port  # type: ignore[no-any-return]


def _restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Keys a reload cannot apply (listeners, processes, endpoints and logging are bound once)."""
    checks = {
        "server.host/port/listen": (old.server.endpoints, new.server.endpoints),
        "server.workers": (old.server.workers, new.server.workers),
        "server.connect_timeout_ms": (
            old.server.connect_timeout_ms,
            new.server.connect_timeout_ms,
        ),
        "server client timeouts / max_body_bytes cap": (
            (
                old.server.client_header_timeout_ms,
                old.server.client_body_timeout_ms,
                old.server.keepalive_timeout_ms,
            ),
            (
                new.server.client_header_timeout_ms,
                new.server.client_body_timeout_ms,
                new.server.keepalive_timeout_ms,
            ),
        ),
        "[health] paths and [metrics]": (
            (old.health, old.metrics, old.middleware.enable_metrics),
            (new.health, new.metrics, new.middleware.enable_metrics),
        ),
        "[logging] and middleware.enable_logging": (
            (old.logging, old.middleware.enable_logging),
            (new.logging, new.middleware.enable_logging),
        ),
    }
    return [key for key, (before, after) in checks.items() if before != after]


def exit_cleanly_after_signal(reactor: Any) -> None:
    """A SIGTERM/SIGINT stop is the normal, orderly way out: exit 0 rather than twistd's default
    of re-raising the signal (which systemd and Kubernetes would log as a failure)."""
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None
