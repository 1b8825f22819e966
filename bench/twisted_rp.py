"""Twisted's own ``twisted.web.proxy.ReverseProxyResource`` as a reverse proxy, for bench/run.py.

Stock behaviour: one new upstream connection per request (``Connection: close``), the response
relayed as it arrives. Only the per-connection and per-request log lines are switched off.

    python bench/twisted_rp.py LISTEN_PORT ORIGIN_PORT
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web import proxy, server


class QuietProxyClientFactory(proxy.ProxyClientFactory):
    noisy = False


class QuietReverseProxyResource(proxy.ReverseProxyResource):
    proxyClientFactoryClass = QuietProxyClientFactory

    def getChild(self, path: bytes, request: server.Request) -> proxy.ReverseProxyResource:
        child = super().getChild(path, request)
        child.__class__ = QuietReverseProxyResource
        return child


def main() -> None:
    port = int(sys.argv[1])
    origin_port = int(sys.argv[2])
    site = server.Site(QuietReverseProxyResource("127.0.0.1", origin_port, b""))
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
