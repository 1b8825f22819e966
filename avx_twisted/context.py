"""Who is asking: the client address (behind trusted proxies) and what auth learned, per request."""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

_Network = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddresses:
    """Resolves the client IP of a request from its socket peer and ``X-Forwarded-For``.

    The peer is the client unless it is in ``server.trusted_proxies``; then the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy is (everything left of it was
    written by the client and proves nothing). So a client cannot pick its own address, and with
    it its rate-limit bucket, by sending ``X-Forwarded-For``.
    """

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        )
        self._trusted: dict[str, bool] = {}

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` is one of the trusted proxies (cached; the set of peers is small)."""
        if not self.networks:
            return False
        known = self._trusted.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                known = False
            else:
                if getattr(address, "ipv4_mapped", None) is not None:
                    address = address.ipv4_mapped  # type: ignore[union-attr]
                known = any(address in network for network in self.networks)
            if len(self._trusted) > 4096:
                self._trusted.clear()
            self._trusted[ip] = known
        return known

    def client_ip(self, peer: str, forwarded_for: list[bytes] | None) -> str:
        """The client address for a request from ``peer`` carrying ``forwarded_for`` values."""
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        entries = [e.strip() for v in forwarded_for for e in v.decode("latin-1").split(",")]
        for entry in reversed(entries):
            if entry and not self.is_trusted(entry):
                return entry
        first = entries[0] if entries else ""
        return first or peer


class RequestContext:
    """What the gateway learns about one request on its way through: who asked, where it went,
    how long it took. The access log and the metrics are written from it when it finishes."""

    __slots__ = (
        "client_ip",
        "peer",
        "peer_trusted",
        "identity",
        "request_id",
        "started",
        "route",
        "upstream",
        "upstream_duration",
        "upstream_status",
        "error",
        "exchange",
        "params",
        "upstream_target",
        "chain",
        "plugin",
        "trace",
        "tls",
        "error_type",
        "grpc",
        "grpc_status",
        "cache",
        "graphql",
    )

    def __init__(
        self,
        client_ip: str,
        peer: str,
        peer_trusted: bool,
        request_id: bytes = b"",
        started: float = 0.0,
    ) -> None:
        self.client_ip = client_ip
        self.peer = peer
        self.peer_trusted = peer_trusted
        #: What authentication found (an ``auth.Identity``), or None.
        self.identity: Any = None
        self.request_id = request_id
        self.started = started
        self.route: str = "unmatched"
        self.upstream: str | None = None
        self.upstream_duration: float | None = None
        #: The last upstream response's status (None: no upstream answered).
        self.upstream_status: int | None = None
        #: Why the gateway answered an error or cut the response short (for the access log).
        self.error: str | None = None
        #: The matched route's ``{param}`` values, and the path and query sent upstream.
        self.params: dict[str, str] | None = None
        self.upstream_target: bytes = b""
        #: The route's plugin chain (None: the route has no plugins), and the plugins' context.
        self.chain: Any = None
        self.plugin: Any = None
        #: The request's trace (``tracing.RequestTrace``), None when tracing is off.
        self.trace: Any = None
        #: The forwarder's exchange once forwarding began (told when the client goes away).
        self.exchange: Any = None
        #: The TLS facts of the connection (``tls.TlsInfo``), None on cleartext.
        self.tls: Any = None
        #: A gateway failure in a word (``timeout``, ``connection_refused``, ``circuit_open``,
        #: ...), for the trace's ``error.type``; None when it did not fail.
        self.error_type: str | None = None
        #: A gRPC call on a gRPC route, and its outcome (``grpc-status``; None: not known).
        self.grpc = False
        self.grpc_status: int | None = None
        #: What the route's cache did (hit, miss, stale, revalidated, bypass, uncacheable).
        self.cache: str | None = None
        #: A GraphQL route's (first) operation: ``"query GetUser"``.
        self.graphql: str | None = None
