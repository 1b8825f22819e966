"""Prometheus metrics on the gateway's own registry, with label children bound at start-up.

Labels come from the configuration (route names, upstream URLs) and from small fixed sets
(methods, status codes), never from raw request paths, so the number of series is bounded.
Requests that match no route are counted under ``route="unmatched"``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ._version import __version__
from .errors import Answer

# ``_created`` series double the counters and histograms for a value nobody graphs.
disable_created_metrics()

UNMATCHED = "unmatched"
#: From 0.5 ms to 30 s.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_METHODS = frozenset([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
_CIRCUIT_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


#: Distinct gRPC (service, method) label pairs per route.
_MAX_GRPC_METHODS = 256


class RouteMetrics:
    """The children of one route, bound once; per-request work is a dict lookup and an inc."""

    def __init__(self, metrics: GatewayMetrics, route: str) -> None:
        self._metrics = metrics
        self.route = route
        self.request_bytes = metrics.request_bytes.labels(route)
        self.response_bytes = metrics.response_bytes.labels(route)
        self.rate_limited = metrics.rate_limited.labels(route)
        self._requests: dict[tuple[bytes, int], tuple[Any, Any]] = {}
        self._upstreams: dict[tuple[str, bytes, int], Any] = {}
        self._upstream_status: dict[tuple[str, int], Any] = {}
        self._websocket: Any = None
        self._grpc: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._cache_results: dict[str, Any] = {}
        #: The (service, method) pairs of ``_grpc``'s keys ("other" not counted).
        self._grpc_methods: set[tuple[str, str]] = set()

    def grpc(self, service: str, method: str, code: str) -> tuple[Any, Any]:
        """The ``avx_grpc_requests_total`` and ``avx_grpc_request_duration_seconds`` children
        of one gRPC method and status name. Methods are the client's to name: past
        ``_MAX_GRPC_METHODS`` per route, new ones count as ``other``."""
        key = (service, method, code)
        children = self._grpc.get(key)
        if children is None:
            pair = (service, method)
            if pair != ("other", "other") and pair not in self._grpc_methods:
                if len(self._grpc_methods) >= _MAX_GRPC_METHODS:
                    return self.grpc("other", "other", code)
                self._grpc_methods.add(pair)
            m = self._metrics
            children = (
                m.grpc_requests.labels(self.route, service, method, code),
                m.grpc_duration.labels(self.route, service, method),
            )
            self._grpc[key] = children
        return children

    def request(self, method: bytes, status: int) -> tuple[Any, Any]:
        """The ``avx_requests_total`` and ``avx_request_duration_seconds`` children for this
        method and status (bound on first use)."""
        key = (method if method in _METHODS else b"OTHER", status)
        children = self._requests.get(key)
        if children is None:
            name = key[0].decode()
            m = self._metrics
            children = (
                m.requests.labels(self.route, name, str(status)),
                m.request_duration.labels(
                    self.route, name, _STATUS_CLASS.get(status // 100, "other")
                ),
            )
            self._requests[key] = children
        return children

    def upstream_request(self, upstream: str, status: int) -> Any:
        """The ``avx_upstream_requests_total`` child (status 0: no response)."""
        key = (upstream, status)
        child = self._upstream_status.get(key)
        if child is None:
            child = self._metrics.upstream_requests.labels(self.route, upstream, str(status))
            self._upstream_status[key] = child
        return child

    def upstream_duration(self, upstream: str, method: bytes, status: int) -> Any:
        """The ``avx_upstream_duration_seconds`` child of one target, method and the upstream's
        status class (``none``: no response)."""
        key = (upstream, method if method in _METHODS else b"OTHER", status)
        child = self._upstreams.get(key)
        if child is None:
            status_class = _STATUS_CLASS.get(status // 100, "none") if status else "none"
            child = self._metrics.upstream_duration.labels(
                self.route, upstream, key[1].decode(), status_class
            )
            self._upstreams[key] = child
        return child

    def websocket(self) -> Any:
        """The route's WebSocket children: (open gauge, bytes up, bytes down), bound once."""
        children = self._websocket
        if children is None:
            m = self._metrics
            children = self._websocket = (
                m.websocket_open.labels(self.route),
                m.websocket_bytes.labels(self.route, "up"),
                m.websocket_bytes.labels(self.route, "down"),
            )
        return children

    def validation_failure(self, direction: str) -> Any:
        """The ``avx_validation_failures_total`` child of one direction."""
        return self._metrics.validation_failures.labels(self.route, direction)

    def graphql_operation(self, kind: str, name: str, result: str) -> Any:
        """The ``avx_graphql_operations_total`` child (names bounded by the policy)."""
        return self._metrics.graphql_operations.labels(self.route, kind, name, result)

    def json_skipped(self, direction: str, reason: str) -> Any:
        """The ``avx_json_transform_skipped_total`` child: a JSON body left unchanged."""
        return self._metrics.json_skipped.labels(self.route, direction, reason)

    def cache_request(self, result: str) -> Any:
        """The ``avx_cache_requests_total`` child of one result (bound on first use: every
        request of a cached route counts one)."""
        child = self._cache_results.get(result)
        if child is None:
            child = self._metrics.cache_requests.labels(self.route, result)
            self._cache_results[result] = child
        return child

    def cache_collapsed(self) -> Any:
        return self._metrics.cache_collapsed_waits.labels(self.route)

    def websocket_handshake(self, status: int) -> Any:
        """The ``avx_websocket_tunnels_total`` child for an upstream status."""
        return self._metrics.websocket_tunnels.labels(self.route, str(status))

    def auth_failure(self, reason: str) -> None:
        """Count one refused credential (reasons are a small fixed set)."""
        self._metrics.auth_failures.labels(self.route, reason).inc()


class GatewayMetrics:
    """Every metric of one gateway process, on its own registry (not the global default)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        process: bool = True,
        shared_cache: bool = False,
    ) -> None:
        """``shared_cache``: the response cache is one store for every worker (``[cache]
        backend = "redis"``), so with workers its size is taken once, not summed."""
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        #: With worker processes, every worker writes to this shared directory and any of them
        #: answers /metrics with the sum over all (prometheus_client's multiprocess mode).
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.requests = Counter(
            "avx_requests_total",
            "Requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "avx_grpc_requests_total",
            "gRPC calls on gRPC routes, by route, service, method and grpc-status name.",
            ["route", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "avx_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its end, by route, service and method.",
            ["route", "grpc_service", "grpc_method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "avx_request_duration_seconds",
            "Time from request to the end of the response, by route, method and status class.",
            ["route", "method", "status_class"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "avx_upstream_requests_total",
            "Requests sent to upstream targets, by the upstream's status (0: no response).",
            ["route", "upstream", "status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "avx_upstream_duration_seconds",
            "Time until the upstream's response headers, by method and the upstream's status "
            "class (none: no response).",
            ["route", "upstream", "method", "status_class"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # Gauges say how worker processes combine (multiprocess mode; ignored with one process).
        self.in_flight = Gauge(
            "avx_requests_in_flight",
            "Requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_connections = Gauge(
            "avx_open_connections",
            "Client connections open now, by protocol (http/1.1, h2).",
            ["protocol"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_bytes = Counter(
            "avx_request_bytes_total", "Request body bytes received.", ["route"], registry=r
        )
        self.response_bytes = Counter(
            "avx_response_bytes_total", "Response body bytes sent.", ["route"], registry=r
        )
        self.upstream_healthy = Gauge(
            "avx_upstream_healthy",
            "1 when the target passes its health checks (in every worker process).",
            ["route", "upstream"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.circuit_state = Gauge(
            "avx_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open (the worst over workers).",
            ["route", "upstream"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rate_limited = Counter(
            "avx_rate_limited_total", "Requests refused by a rate limit.", ["route"], registry=r
        )
        self.rate_limit_backend_errors = Counter(
            "avx_rate_limit_backend_errors_total",
            "Rate-limit checks the shared store (Redis) could not answer.",
            registry=r,
        )
        self.auth_failures = Counter(
            "avx_auth_failures_total",
            "Requests refused by authentication, by reason.",
            ["route", "reason"],
            registry=r,
        )
        self.websocket_open = Gauge(
            "avx_websocket_tunnels_open",
            "WebSocket tunnels open now, by route.",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_tunnels = Counter(
            "avx_websocket_tunnels_total",
            "WebSocket handshakes forwarded, by route and the upstream's status.",
            ["route", "status"],
            registry=r,
        )
        self.websocket_bytes = Counter(
            "avx_websocket_bytes_total",
            "Bytes through WebSocket tunnels, by route and direction (up: client to upstream).",
            ["route", "direction"],
            registry=r,
        )
        self.validation_failures = Counter(
            "avx_validation_failures_total",
            "Bodies that did not match the route's JSON Schema: request (answered 400) or "
            "response (monitored, passed).",
            ["route", "direction"],
            registry=r,
        )
        self.graphql_operations = Counter(
            "avx_graphql_operations_total",
            "GraphQL operations on graphql routes, by type, name (bounded) and result (allowed, "
            "or why it was refused: depth, complexity, syntax, ...).",
            ["route", "type", "name", "result"],
            registry=r,
        )
        self.json_skipped = Counter(
            "avx_json_transform_skipped_total",
            "JSON bodies a route's json_* transform left unchanged, by direction and reason "
            "(too_large, not_json).",
            ["route", "direction", "reason"],
            registry=r,
        )
        self.cache_requests = Counter(
            "avx_cache_requests_total",
            "Requests on cached routes by what the cache did: hit, miss, stale, revalidated, "
            "bypass, uncacheable, invalidated.",
            ["route", "result"],
            registry=r,
        )
        self.cache_collapsed_waits = Counter(
            "avx_cache_collapsed_total",
            "Cache misses that waited for another request fetching the same key.",
            ["route"],
            registry=r,
        )
        # Each worker's memory store adds up; a shared Redis store reads the same in each.
        cache_size_mode = "livemax" if shared_cache else "livesum"
        self.cache_stored_bytes = Gauge(
            "avx_cache_stored_bytes",
            "Bytes in the response cache (the memory stores of the workers, or Redis's count).",
            registry=r,
            multiprocess_mode=cache_size_mode,
        )
        self.cache_entries = Gauge(
            "avx_cache_entries",
            "Entries (response variants) in the response cache.",
            registry=r,
            multiprocess_mode=cache_size_mode,
        )
        #: The cache store whose stats refresh_targets copies (workers only), or None.
        self._cache_store: Any = None
        self.cache_evictions = Gauge(
            "avx_cache_evictions",
            "Entries evicted from the memory store to stay under [cache] max_bytes (a count).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.build_info = Gauge(
            "avx_build_info",
            "Always 1; the labels say which gateway build runs.",
            ["version", "python", "implementation"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(
            __version__, platform.python_version(), platform.python_implementation()
        ).set(1)
        self.config_reloads = Counter(
            "avx_config_reloads",
            "Configuration reloads (SIGHUP, POST /reload), by result: success or failure.",
            ["result"],
            registry=r,
        )
        self.config_reload_success = Gauge(
            "avx_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded (in every worker process).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.config_reload_time = Gauge(
            "avx_config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (the oldest over workers).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.access_log_dropped = Counter(
            "avx_access_log_dropped",
            "Access-log records dropped (writer queue full, or the target failed).",
            registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.plugin_calls = Counter(
            "avx_plugin_calls",
            "Plugin phase calls, by plugin and phase.",
            ["plugin", "phase"],
            registry=r,
        )
        self.plugin_errors = Counter(
            "avx_plugin_errors",
            "Plugin phase calls that raised or failed, by plugin and phase.",
            ["plugin", "phase"],
            registry=r,
        )
        self.plugin_duration = Histogram(
            "avx_plugin_duration_seconds",
            "Time in a plugin phase's call (its synchronous part), by plugin and phase.",
            ["plugin", "phase"],
            buckets=(0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0),
            registry=r,
        )
        self.tracing_dropped = Counter(
            "avx_tracing_spans_dropped",
            "Spans not exported: the export queue was full or the collector failed.",
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "avx_tls_certificate_expiry_seconds",
            "Seconds until a certificate's notAfter (negative: expired), for every listener "
            "certificate (by SNI name) and upstream client certificate (listener "
            '"upstream:<route>").',
            ["listener", "server_name"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.tls_handshake_errors = Counter(
            "avx_tls_handshake_errors",
            "TLS handshakes that failed, by listener (no or a bad client certificate, "
            "no shared version or cipher, a client that went away).",
            ["listener"],
            registry=r,
        )
        self.oauth2_introspections = Counter(
            "avx_oauth2_introspections",
            "RFC 7662 introspection calls by result: active, inactive, invalid (a claim "
            "check failed), error (the IdP did not answer usably).",
            ["result"],
            registry=r,
        )
        self.oauth2_cache_hits = Counter(
            "avx_oauth2_cache_hits",
            "Bearer tokens answered from the introspection cache, by result (active, inactive).",
            ["result"],
            registry=r,
        )
        self.idp_errors = Counter(
            "avx_idp_errors",
            "Failed calls to an identity provider, by kind (introspection, discovery, jwks) "
            "and reason (timeout, connect, status, body, circuit_open).",
            ["kind", "reason"],
            registry=r,
        )
        self.jwks_refreshes = Counter(
            "avx_jwks_refreshes",
            "JWKS fetches by trigger (schedule, unknown_kid, discovery) and result (ok, error).",
            ["trigger", "result"],
            registry=r,
        )
        if process and self.multiprocess_dir is None:
            ProcessCollector(registry=r)
        self._exposition_fields = [
            (b"Content-Type", CONTENT_TYPE_LATEST.encode()),
            (b"Cache-Control", b"no-store"),
        ]
        self._targets: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._certificates: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self._listening: set[int] = set()
        self.routes: dict[str, RouteMetrics] = {}
        self.unmatched = self.route(UNMATCHED)

    def route(self, name: str) -> RouteMetrics:
        """The bound children of route ``name`` (created once)."""
        metrics = self.routes.get(name)
        if metrics is None:
            metrics = self.routes[name] = RouteMetrics(self, name)
        return metrics

    def plugin_phase(self, plugin: str, phase: str) -> tuple[Any, Any, Any]:
        """The (calls, errors, duration) children of one plugin's phase."""
        phase_name = phase[3:] if phase.startswith("on_") else phase
        return (
            self.plugin_calls.labels(plugin, phase_name),
            self.plugin_errors.labels(plugin, phase_name),
            self.plugin_duration.labels(plugin, phase_name),
        )

    def config_loaded(self, success: bool, time_s: float | None = 0.0) -> None:
        """A configuration load: the first (``time_s=None``: not counted as a reload) or a
        reload, successful or refused."""
        if time_s is not None:
            self.config_reloads.labels("success" if success else "failure").inc()
        self.config_reload_success.set(1 if success else 0)
        if success:
            self.config_reload_time.set(time.time())

    def watch_routes(self, routes: Iterable[Any]) -> None:
        """Export the health and circuit state of every target of ``routes`` (the runtime in
        use; a reload calls this again and the series of targets gone are removed). Breaker
        changes set the gauge at once; :meth:`refresh_targets` sets both at each scrape and,
        with worker processes, every second in every worker, so no worker's value is stale."""
        previous, self._targets = self._targets, {}
        for route in routes:
            for target in route.upstream.targets:
                key = (route.name, target.url)
                healthy = self.upstream_healthy.labels(*key)
                circuit = self.circuit_state.labels(*key)
                self._targets[key] = (target, healthy, circuit)
                breaker = target.breaker
                if breaker is not None and id(breaker) not in self._listening:
                    self._listening.add(id(breaker))
                    breaker.add_listener(lambda _b, _old, new, g=circuit: g.set(new.gauge))
        for key in previous.keys() - self._targets.keys():
            self.upstream_healthy.remove(*key)
            self.circuit_state.remove(*key)
        self.refresh_targets()

    def watch_cache(self, store: Any) -> None:
        """Export ``store``'s size and evictions (None: no route is cached): read at scrape
        time in one process; with workers, copied by :meth:`refresh_targets` in every worker
        (each second and at each scrape), as the scrape reads the workers' files."""
        gauges = (
            (self.cache_stored_bytes, "bytes"),
            (self.cache_entries, "entries"),
            (self.cache_evictions, "evictions"),
        )
        if self.multiprocess_dir is not None:
            self._cache_store = store
            if store is None:
                for gauge, _ in gauges:
                    gauge.set(0)
            return
        for gauge, name in gauges:
            if store is None:
                gauge.set_function(lambda: 0)
            else:
                gauge.set_function(lambda name=name: store.stats().get(name, 0))

    def refresh_targets(self) -> None:
        """Set the health and circuit gauges from every watched target's state now, the
        certificates' time left, and (with workers) the cache store's stats."""
        for target, healthy, circuit in self._targets.values():
            healthy.set(1 if target.healthy else 0)
            breaker = target.breaker
            circuit.set(breaker.state.gauge if breaker is not None else 0)
        if self._certificates:
            now = time.time()
            for child, not_after in self._certificates.values():
                child.set(round(not_after - now))
        store = self._cache_store
        if store is not None:
            stats = store.stats()
            self.cache_stored_bytes.set(stats.get("bytes", 0))
            self.cache_entries.set(stats.get("entries", 0))
            self.cache_evictions.set(stats.get("evictions", 0))

    def watch_certificates(self, source: str, entries: Iterable[tuple[str, str, float]]) -> None:
        """Export ``avx_tls_certificate_expiry_seconds`` for ``entries`` of (listener,
        server_name, notAfter timestamp); ``source`` (``listeners``, ``upstreams``) names the
        set a reload replaces as a whole (series of certificates gone are removed)."""
        fresh = {(source, listener, name): not_after for listener, name, not_after in entries}
        for key in [k for k in self._certificates if k[0] == source and k not in fresh]:
            del self._certificates[key]
            self.tls_certificate_expiry.remove(key[1], key[2])
        for key, not_after in fresh.items():
            self._certificates[key] = (
                self.tls_certificate_expiry.labels(key[1], key[2]),
                not_after,
            )
        self.refresh_targets()

    def render(self, request: Any) -> Answer:
        """The text exposition format, for ``GET /metrics``."""
        self.refresh_targets()
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            body = generate_latest(registry)
        else:
            body = generate_latest(self.registry)
        return Answer(200, self._exposition_fields, body)
