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
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from ._configmodel import ListenerConfig
from ._version import __version__
from .config import ConfigError, GatewayConfig
from .eventlog import reopen_event_log
from .gateway import GatewayHandler, InternalAnswer, InternalHandler
from .h1 import ServerFactory, ServerLimits
from .listeners import listener_factory
from .logs import AccessLogWriter, access_logger, apply_level
from .metrics import GatewayMetrics
from .probes import Probes
from .runtime import Runtime
from .tls import (
    ALPN_H2,
    ALPN_PROTOCOLS,
    ServerTLS,
    TlsFileError,
    certificate_names,
    expiry,
)

#: The protocols client connections speak, as ``avx_open_connections`` labels them.
CONNECTION_PROTOCOLS = ("http/1.1", "h2")


class ListenError(Exception):
    """A listener could not be opened (port in use, permission denied, no such address); the
    message is one line naming the key and the endpoint."""


def listener_plan(config: GatewayConfig) -> list[tuple[str, str]]:
    """Every serving listener of a gateway as (purpose, endpoint string), in a fixed order that
    worker processes and their supervisor agree on: the data plane's (``server.listen`` or
    host/port, then each ``[[server.listeners]]``), then ``[metrics] listen`` and ``[health]
    listen`` when set. (The admin listener is not shared with workers.)"""
    return [(purpose, e) for purpose, e in config.listeners() if purpose != "admin"]


def is_data_plane(purpose: str) -> bool:
    """Whether a listener purpose of :func:`listener_plan` serves routes."""
    return purpose == "data" or purpose.startswith("listeners[")


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
        self.metrics = (
            GatewayMetrics(shared_cache=config.cache.backend == "redis")
            if middleware.enable_metrics
            else None
        )
        self.runtime = Runtime(config, reactor, metrics=self.metrics)
        #: OpenTelemetry tracing (``[tracing]``), one per process; None when off.
        self.tracing: Any = None
        if config.tracing is not None:
            from .tracing import Tracing

            on_dropped = self.metrics.tracing_dropped.inc if self.metrics is not None else None
            self.tracing = Tracing(config.tracing, on_dropped=on_dropped)
            self.runtime.tracing = self.tracing
        self.probes = Probes(self)
        health = config.health
        probes: dict[bytes, InternalAnswer] = {
            health.liveness_path.encode(): self.probes.liveness,
            health.readiness_path.encode(): self.probes.readiness,
            health.health_path.encode(): self.probes.health,
        }
        scrape: dict[bytes, InternalAnswer] = {}
        if self.metrics is not None:
            scrape[config.metrics.path.encode()] = self.metrics.render
        # Probes and metrics on their own listener are not answered on the data plane at all.
        internal = {
            **({} if health.listen else probes),
            **({} if config.metrics.listen else scrape),
        }
        #: The handler of each private listener purpose (see :func:`listener_plan`).
        self.private_handlers = {
            "metrics": InternalHandler(scrape),
            "health": InternalHandler(probes),
        }
        self.access_writer: AccessLogWriter | None = None
        access_log = None
        logging = config.logging
        if middleware.enable_logging:
            self.access_writer = AccessLogWriter(logging.access_log, logging.format, clock=reactor)
            if self.metrics is not None:
                self.access_writer.on_drop = self.metrics.access_log_dropped.inc
            access_log = access_logger(self.access_writer)
        self.handler = GatewayHandler(
            self.runtime,
            internal,
            self.metrics,
            access_log,
            sample_ratio=logging.sample_ratio,
            skip_paths=logging.skip_paths,
        )
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
        if any(listener.http2 for listener in server.listeners):
            from .h2 import H2Limits, H2ServerProtocol

            h2 = server.http2
            self.site.h2_protocol = H2ServerProtocol
            self.site.h2_limits = H2Limits(
                max_concurrent_streams=h2.max_concurrent_streams,
                max_header_list_bytes=h2.max_header_list_bytes,
                stream_idle_timeout_s=h2.stream_idle_timeout_ms / 1000.0,
                idle_timeout_s=h2.idle_timeout_ms / 1000.0,
            )
        #: The TLS side of each structured listener with ``tls``, by purpose (reloaded on
        #: SIGHUP: new connections get the new certificates, open ones keep theirs).
        self.listener_tls: dict[str, ServerTLS] = {}
        for purpose, description in listener_plan(config):
            listener = config.listener_config(purpose)
            if listener is not None and listener.tls is not None:
                alpn = ALPN_H2 if listener.http2 else ALPN_PROTOCOLS
                try:
                    self.listener_tls[purpose] = ServerTLS(listener.tls, description, alpn)
                except TlsFileError as e:
                    key = f"server.{purpose}.tls.{e.key}"
                    raise ConfigError([f"{key}: {e}"], source=config.source) from None
        self._watch_certificates()
        #: ``reload_interval_s``: the TLS files are looked at this often (None: never).
        self._tls_files = self._tls_file_stamp()
        self._tls_watcher: LoopingCall | None = None
        intervals = [
            tls.config.reload_interval_s
            for tls in self.listener_tls.values()
            if tls.config.reload_interval_s > 0
        ]
        if intervals:
            self._tls_watcher = LoopingCall(self._check_tls_files)
            self._tls_watcher.clock = reactor
            self._tls_interval_s = float(min(intervals))
        if self.metrics is not None:
            gauge = self.metrics.open_connections
            site = self.site
            if self.metrics.multiprocess_dir is None:
                for name in CONNECTION_PROTOCOLS:
                    gauge.labels(name).set_function(lambda name=name: site.count(name))
            else:
                site.on_connection = lambda name, delta: gauge.labels(name).inc(delta)
        #: The data plane's listening ports.
        self.ports: list[IListeningPort] = []
        #: The private listeners' ports: ``[metrics] listen``, ``[health] listen``, by purpose.
        self.private_ports: dict[str, IListeningPort] = {}
        self.admin_ports: list[IListeningPort] = []
        self._bound = False
        self._previous_signals: dict[int, Any] = {}
        self._refresher: LoopingCall | None = None
        if self.metrics is not None:
            self.metrics.config_loaded(True, time_s=None)
            self.metrics.watch_routes(self.runtime.routes)
            if self.metrics.multiprocess_dir is not None:
                self._refresher = LoopingCall(self.metrics.refresh_targets)
                self._refresher.clock = reactor

    def privilegedStartService(self) -> None:
        """Open every listener (before twistd drops privileges); raises :class:`ListenError`
        with one line when one cannot be opened, after closing those already open."""
        super().privilegedStartService()
        self._open_listeners()

    def _open_listeners(self) -> None:
        if self._bound:
            return
        self._bound = True
        factories: dict[str, Any] = {"data": self.site}
        for purpose, handler in self.private_handlers.items():
            factories[purpose] = ServerFactory(
                handler, self.reactor, ServerLimits(max_body_bytes=0)
            )
        plan = listener_plan(self.config)
        for purpose, _ in plan:
            listener = self.config.listener_config(purpose)
            if listener is not None:
                factories[purpose] = self._listener_factory(purpose, listener)
        if self.inherited is not None:
            self._adopt(self.inherited, plan, factories)
        else:
            for purpose, description in plan:
                key = self.config.listener_key(purpose)
                port = self._bind(key, description, factories[purpose])
                if is_data_plane(purpose):
                    self.ports.append(port)
                else:
                    self.private_ports[purpose] = port
        admin = self.config.admin
        if admin is not None:
            if self.inherited is not None:
                self.log.warn("[admin] is served only when server.workers = 1; not opened")
            else:
                from .admin import admin_site

                site = admin_site(self, admin.token_sha256)
                self.admin_ports.append(self._bind("admin.listen", admin.listen, site))

    def startService(self) -> None:
        """Open the listeners if :meth:`privilegedStartService` has not, start the access log,
        health checks and signal handlers: SIGHUP reloads, SIGUSR1 reopens the log files."""
        super().startService()
        if self.config.logging.level != "info":
            apply_level(globalLogPublisher, self.config.logging.level)
        self._open_listeners()
        if self.access_writer is not None:
            self.access_writer.start()
        for port in self.ports:
            self.log.info("avx-gateway listening on {address}", address=port.getHost())
        for purpose, port in self.private_ports.items():
            self.log.info(
                "{purpose} listening on {address}", purpose=purpose, address=port.getHost()
            )
        for port in self.admin_ports:
            self.log.info("admin API listening on {address}", address=port.getHost())
        config = self.config
        self.log.info(
            "avx-gateway {version}: {routes} routes from {source}",
            version=__version__,
            routes=len(config.routes),
            source=config.source,
        )
        if self.config.server.workers > 1 and self.inherited is None:
            self.log.warn(
                "server.workers = {workers}: worker processes are started by "
                "`twistd avx-gateway`; this embedded gateway serves from one process",
                workers=self.config.server.workers,
            )
        self.runtime.start()
        if self._refresher is not None:
            self._refresher.start(1.0)
        if self._tls_watcher is not None:
            self._tls_watcher.start(self._tls_interval_s, now=False)
        self.probes.ready = True
        if self.inherited is None and threading.current_thread() is threading.main_thread():
            # Worker processes install their own (see workers.main).
            self._previous_signals = {
                signal.SIGHUP: signal.signal(signal.SIGHUP, self._on_sighup),
                signal.SIGUSR1: signal.signal(signal.SIGUSR1, self._on_sigusr1),
            }
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # way, so that full collections stay short (they stall every request in flight).
        gc.collect()
        if hasattr(gc, "freeze"):
            gc.freeze()
            gc.set_threshold(7000, 10, 10)

    def stopService(self) -> Deferred[Any]:
        """Not ready at once; keep serving for ``shutdown_delay_ms`` (load balancers and
        Kubernetes stop sending new requests meanwhile), then drain."""
        self.probes.ready = False
        for signum, previous in self._previous_signals.items():
            signal.signal(signum, previous)
        self._previous_signals = {}
        self._exit_cleanly()
        delay_s = self.config.server.shutdown_delay_ms / 1000.0
        if delay_s <= 0 or not self.running:
            return self._drain()
        self.log.info(
            "stopping: readiness now fails; serving {delay} ms more before draining",
            delay=self.config.server.shutdown_delay_ms,
        )
        return deferLater(self.reactor, delay_s, self._drain)

    def _drain(self) -> Deferred[Any]:
        """Stop accepting, let in-flight requests finish (up to ``drain_timeout_ms``), then stop
        health checks and close pooled upstream connections."""
        in_flight = self.handler.in_flight
        self.site.drain()  # idle connections close; answers from now on say Connection: close
        self.log.info(
            "draining: {count} requests in flight, waiting up to {timeout} ms",
            count=in_flight.count,
            timeout=self.config.server.drain_timeout_ms,
        )
        closing = self._close_ports()
        self.runtime.stop()
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self._tls_watcher is not None and self._tls_watcher.running:
            self._tls_watcher.stop()
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
            if self.tracing is not None:
                self.tracing.shutdown()
            waits = [closing, self.runtime.clients.close(), self.site.close_all(1.0)]
            close_store = getattr(self.runtime.rate_store, "close", None)
            if close_store is not None:
                waits.append(maybeDeferred(close_store))
            parent = super(GatewayService, self).stopService()
            if parent is not None:
                waits.append(parent)
            return DeferredList(waits, consumeErrors=True)

        return drained.addCallback(after_drain)

    def _listener_factory(self, purpose: str, listener: ListenerConfig) -> Any:
        return listener_factory(self.site, listener, self.listener_tls.get(purpose), self.metrics)

    def _watch_certificates(self) -> None:
        """``avx_tls_certificate_expiry_seconds`` of the listeners' certificates and of the
        upstream client certificates (``listener="upstream:<route>"``)."""
        if self.metrics is None:
            return
        entries = [e for tls in self.listener_tls.values() for e in tls.expiries()]
        self.metrics.watch_certificates("listeners", entries)
        upstream = []
        for route in self.runtime.routes:  # the client certificates the routes were built with
            chain = route.tls.client_chain if route.tls is not None else ()
            if chain:
                names = certificate_names(chain[0])
                label = f"upstream:{route.name}"
                upstream.append((label, names[0] if names else "", expiry(chain[0])))
        self.metrics.watch_certificates("upstreams", upstream)

    def _reload_tls(self, config: GatewayConfig) -> str | None:
        """Build the new contexts of every TLS listener, then install them all (or none):
        the problem in one line when a file cannot be used."""
        built = []
        for purpose, tls in self.listener_tls.items():
            listener = config.listener_config(purpose) if purpose.startswith("listeners[") else None
            if listener is None or listener.tls is None:
                continue  # the listener itself changed: only a restart applies that
            try:
                built.append((tls, listener.tls, tls.build(listener.tls)))
            except TlsFileError as e:
                return f"server.{purpose}.tls.{e.key}: {e}"
        for tls, tls_config, contexts in built:
            tls.install(tls_config, contexts)
        return None

    def _tls_file_stamp(self) -> tuple[tuple[str, int, int, int], ...]:
        """(path, mtime, size, inode) of every file of the TLS listeners that watch theirs; a
        file that cannot be read counts as changed (0s)."""
        found = []
        for tls in self.listener_tls.values():
            config = tls.config
            if config.reload_interval_s <= 0:
                continue
            paths = [config.cert_file, config.key_file, config.client_ca_file]
            paths += [p for c in config.certificates for p in (c.cert_file, c.key_file)]
            for path in paths:
                if path is None:
                    continue
                try:
                    st = os.stat(path)  # follows the symlinks Kubernetes swaps
                    found.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
                except OSError:
                    found.append((path, 0, 0, 0))
        return tuple(found)

    def _check_tls_files(self) -> None:
        """``reload_interval_s``: when a certificate, key or CA file changed (a renewal, a
        Kubernetes Secret update), load the TLS listeners' files again, as SIGHUP does for
        them; a file that cannot be used is logged once per change and the running
        certificates stay."""
        stamp = self._tls_file_stamp()
        if stamp == self._tls_files:
            return
        self._tls_files = stamp
        problem = self._reload_tls(self.config)
        if problem is not None:
            self.log.error(
                "TLS files changed but cannot be used; the running certificates stay: {problem}",
                problem=problem,
            )
            return
        self._watch_certificates()
        self.log.info("TLS files changed: certificates reloaded")

    def _bind(self, key: str, description: str, factory: Any) -> IListeningPort:
        """Listen on an endpoint string now; a failure closes what is open and raises
        :class:`ListenError`, so twistd exits non-zero before serving anything."""
        ports: list[IListeningPort] = []
        failures: list[Failure] = []
        d = serverFromString(self.reactor, description).listen(factory)
        d.addCallbacks(ports.append, failures.append)
        if failures:
            why = _bind_error(failures[0])
            self.log.critical(
                "cannot listen on {endpoint} ({key}): {why}",
                endpoint=description,
                key=key,
                why=why,
            )
            self._close_ports()
            self.running = False
            raise ListenError(f"{key}: cannot listen on {description}: {why}")
        return ports[0]

    def _adopt(
        self,
        inherited: Sequence[tuple[int, int, bool]],
        plan: Sequence[tuple[str, str]],
        factories: dict[str, Any],
    ) -> None:
        """Serve sockets a supervisor bound (worker processes), in :func:`listener_plan` order."""
        for (fd, family, tls), (purpose, description) in zip(inherited, plan):
            factory: Any = factories[purpose]
            if tls:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                endpoint = serverFromString(self.reactor, description)
                factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, factory)
            port = self.reactor.adoptStreamPort(fd, family, factory)
            if is_data_plane(purpose):
                self.ports.append(port)
            else:
                self.private_ports[purpose] = port
            os.close(fd)

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log and event log files by their paths (after logrotate
        moved them). Lines written meanwhile went to the moved files; none is lost."""
        if self.access_writer is not None:
            self.access_writer.reopen()
        reopen_event_log()
        self.log.info("log files reopened (SIGUSR1)")

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
            if self.metrics is not None:
                self.metrics.config_loaded(False)
            return False
        problem = self._reload_tls(config)
        if problem is not None:
            self.log.error(
                "reload refused, the running configuration stays:\n{source}: {problem}",
                source=source,
                problem=problem,
            )
            if self.metrics is not None:
                self.metrics.config_loaded(False)
            return False
        needs_restart = _restart_only_changes(self.config, config)
        if needs_restart:
            self.log.warn(
                "reload: {keys} changed; they take effect only after a restart",
                keys=", ".join(needs_restart),
            )
        old, self.runtime = self.runtime, runtime
        self.handler.runtime = runtime
        self.site.go_away()
        self.config = config
        old.handed_over(runtime)
        runtime.start()
        if self.metrics is not None:
            self.metrics.config_loaded(True)
            self.metrics.watch_routes(runtime.routes)
        self._watch_certificates()
        self._tls_files = self._tls_file_stamp()
        self.log.info(
            "reloaded {source}: {routes} routes", source=source, routes=len(config.routes)
        )
        return True

    def _on_sighup(self, *_: object) -> None:
        self.reactor.callFromThread(self.reload)

    def _on_sigusr1(self, *_: object) -> None:
        self.reactor.callFromThread(self.reopen_logs)

    def _exit_cleanly(self) -> None:
        exit_cleanly_after_signal(self.reactor)

    def _close_ports(self) -> Deferred[Any]:
        ports = self.ports + list(self.private_ports.values()) + self.admin_ports
        self.ports, self.private_ports, self.admin_ports = [], {}, []
        waits = [d for d in (port.stopListening() for port in ports) if d is not None]
        return DeferredList(waits, consumeErrors=True)

    @property
    def port(self) -> int:
        """The first listener's port number (handy with ``port = 0``)."""
        return self.ports[0].getHost().port  # type: ignore[no-any-return]


def _bind_error(failure: Failure) -> str:
    """The reason a listen failed, in one line (``Address already in use``, ``Permission
    denied``...), without Twisted's wrapping."""
    from twisted.internet.error import CannotListenError

    error = failure.value
    if isinstance(error, CannotListenError) and error.socketError is not None:
        inner = error.socketError
        return getattr(inner, "strerror", None) or str(inner)
    return failure.getErrorMessage()


def _restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Keys a reload cannot apply (listeners, processes, endpoints and logging are bound once)."""
    checks = {
        "server.host/port/listen": (old.server.endpoints, new.server.endpoints),
        "server.listeners (endpoint, proxy_protocol, tls on or off)": (
            [(x.endpoint, x.proxy_protocol, x.tls is None) for x in old.server.listeners],
            [(x.endpoint, x.proxy_protocol, x.tls is None) for x in new.server.listeners],
        ),
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
        "[tracing]": (old.tracing, new.tracing),
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
