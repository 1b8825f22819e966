"""What a structured listener (``[[server.listeners]]``) wraps around the HTTP server factory:
TLS with the listener's contexts, and in front of it the PROXY protocol.

The PROXY header (v1 text or v2 binary, from a load balancer such as AWS NLB or HAProxy) comes
first on the connection, before any TLS record, so the PROXY wrapper is the outer one; it is
Twisted's own parser (``twisted.protocols.haproxy``, what the ``haproxy:`` endpoint uses). A
connection whose first bytes are not a valid header is closed without an answer; so is one
whose header names a source that is not an IP address (Twisted's v1 parser takes any text).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

from ._configmodel import ListenerConfig
from .tls import ServerTLS, TLSServerFactory


class _Held:
    """Stands in for the wrapped protocol while Twisted's parser reads the header: keeps what
    follows the header until the header's addresses are checked."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class _CheckedProxyProtocol(HAProxyProtocolWrapper):
    """Twisted's PROXY protocol wrapper, closing connections whose header's source address
    is not an IP address before the HTTP server sees a byte."""

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        wrapped, held = self.wrappedProtocol, _Held()
        self.wrappedProtocol = held
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol = wrapped
        info = self._proxyInfo
        if info is None:
            return  # more of the header to come, or refused (the connection is closing)
        host = getattr(info.source, "host", None)
        if host is not None:  # LOCAL / UNKNOWN headers carry none: the socket's peer stays
            try:
                ipaddress.ip_address(host)
            except ValueError:
                self.transport.abortConnection()
                return
        if held.data:
            wrapped.dataReceived(held.data)


class ProxyProtocolFactory(HAProxyWrappingFactory):
    """``proxy_protocol = true``: every connection must start with a PROXY v1 or v2 header."""

    protocol = _CheckedProxyProtocol


def listener_factory(
    site: Any, listener: ListenerConfig, tls: ServerTLS | None, metrics: Any = None
) -> Any:
    """``site`` as ``listener`` serves it: in TLS with ``tls``'s contexts (counting failed
    handshakes on ``metrics``), then behind the PROXY protocol when ``proxy_protocol``. A
    cleartext listener with ``http2`` also accepts h2c with prior knowledge; a TLS one offers
    h2 by ALPN (its ``tls`` was built so)."""
    factory: Any = site.with_h2c() if listener.http2 and tls is None else site
    if tls is not None:
        factory = TLSServerFactory(tls, factory)
        if metrics is not None:
            factory.on_handshake_error = metrics.tls_handshake_errors.labels(tls.name).inc
    if listener.proxy_protocol:
        factory = ProxyProtocolFactory(factory)
    return factory
