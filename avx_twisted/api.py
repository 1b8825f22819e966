"""The Python API of the brief: ``Gateway.builder()...build()``, ``Gateway.from_config``.

Everything here returns Deferreds, so it works both with callbacks and with ``await`` inside
``Deferred.fromCoroutine`` / ``task.react``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed

from .config import GatewayConfig


class Gateway:
    """A configured gateway; ``serve()`` starts listening and fires when the gateway stops."""

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        self.config = config
        self._reactor = reactor
        self._service: Any = None
        self._stopped: Deferred[None] | None = None
        self._shutdown_trigger: Any = None

    @staticmethod
    def builder() -> GatewayBuilder:
        """Start describing a gateway in code."""
        return GatewayBuilder()

    @classmethod
    def from_config(cls, config: GatewayConfig, reactor: Any = None) -> Deferred[Gateway]:
        """A Deferred firing a Gateway for an already validated config."""
        return succeed(cls(config, reactor))

    @property
    def service(self) -> Any:
        """The underlying :class:`avx_twisted.service.GatewayService` (built on first use)."""
        if self._service is None:
            from .service import GatewayService

            self._service = GatewayService(self.config, self._reactor)
        return self._service

    @property
    def port(self) -> int:
        """The port of the first listener once serving (useful with port 0)."""
        return self.service.port  # type: ignore[no-any-return]

    def serve(self) -> Deferred[None]:
        """Start listening; the Deferred fires when :meth:`stop` is called or the reactor stops.

        A listener that cannot bind fails the Deferred (nothing is left running).
        """
        if self._stopped is not None:
            return self._stopped
        service = self.service
        try:
            service.startService()
        except Exception:
            failed: Deferred[None] = fail()
            if service.running:
                return maybeDeferred(service.stopService).addCallback(lambda _: failed)
            return failed
        self._stopped = Deferred()
        self._shutdown_trigger = service.reactor.addSystemEventTrigger(
            "before", "shutdown", self.stop
        )
        return self._stopped

    def stop(self) -> Deferred[None]:
        """Stop listening and close upstream connections; fires the Deferred of :meth:`serve`."""
        service = self._service
        if service is None or not service.running:
            return succeed(None)
        trigger, self._shutdown_trigger = self._shutdown_trigger, None
        if trigger is not None:
            try:
                service.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # already fired: we are being called by it
        d = maybeDeferred(service.stopService)

        def stopped(_: object) -> None:
            waiting, self._stopped = self._stopped, None
            if waiting is not None:
                waiting.callback(None)

        return d.addCallback(stopped)


class GatewayBuilder:
    """Fluent builder mirroring the brief's Rust API; ``build()`` validates like a config file."""

    def __init__(self) -> None:
        self._server: dict[str, Any] = {}
        self._routes: list[dict[str, Any]] = []
        self._middleware: dict[str, Any] = {}
        self._rate: dict[str, Any] | None = None
        self._cors: dict[str, Any] | None = None
        self._reactor: Any = None

    def route(self, path: str, url_or_urls: str | Sequence[str], **options: Any) -> GatewayBuilder:
        """Add a route; ``options`` are the ``[[routes]]`` keys (``strategy``/``weights`` too)."""
        urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
        upstream: dict[str, Any] = {"urls": urls}
        for key in ("strategy", "weights", "ca_file", "health_check", "circuit_breaker"):
            if key in options:
                upstream[key] = options.pop(key)
        self._routes.append({"path": path, **options, "upstream": upstream})
        return self

    def with_host(self, host: str) -> GatewayBuilder:
        self._server["host"] = host
        return self

    def with_port(self, port: int) -> GatewayBuilder:
        self._server["port"] = port
        return self

    def with_timeout(self, timeout: timedelta) -> GatewayBuilder:
        self._server["timeout_ms"] = max(1, int(timeout.total_seconds() * 1000))
        return self

    def with_rate_limit(
        self, requests_per_second: float, burst: int | None = None
    ) -> GatewayBuilder:
        self._middleware["enable_rate_limiting"] = True
        self._rate = {"requests_per_second": requests_per_second}
        if burst is not None:
            self._rate["burst_size"] = burst
        return self

    def with_cors(self, enabled: bool = True, origins: Sequence[str] = ("*",)) -> GatewayBuilder:
        self._middleware["enable_cors"] = enabled
        if enabled:
            self._cors = {"allowed_origins": list(origins)}
        return self

    def with_reactor(self, reactor: Any) -> GatewayBuilder:
        """Use this reactor instead of the global one (tests)."""
        self._reactor = reactor
        return self

    def to_config(self) -> GatewayConfig:
        """Validate and return the config this builder describes (raises ConfigError)."""
        data: dict[str, Any] = {"server": dict(self._server), "routes": list(self._routes)}
        if self._middleware:
            data["middleware"] = dict(self._middleware)
        if self._rate is not None:
            data["rate_limiting"] = dict(self._rate)
        if self._cors is not None:
            data["cors"] = dict(self._cors)
        return GatewayConfig.from_dict(data, source="Gateway.builder()")

    def build(self) -> Deferred[Gateway]:
        """A Deferred firing the Gateway (or failing with ConfigError)."""
        return maybeDeferred(lambda: Gateway(self.to_config(), self._reactor))
