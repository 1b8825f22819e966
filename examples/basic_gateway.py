"""The basic gateway of the brief: two routes, each in front of its own upstream service.

Run it from the repository root (no other service needed: the two upstreams are small echo
servers started in this process on 127.0.0.1)::

    python examples/basic_gateway.py              # gateway on http://127.0.0.1:8080, Ctrl-C stops
    python examples/basic_gateway.py --port 9000
    python examples/basic_gateway.py --self-test  # port 0, a few real requests, exit 0 if all pass

Each upstream answers with JSON describing what it received, so ``service`` says which upstream
served the request and ``uri`` shows the path after ``strip_path`` removed the route prefix.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from avx_twisted import Gateway
from avx_twisted.demo import EchoResource


def start_echo(reactor, name: str) -> str:
    """Start an echo upstream called ``name`` on an ephemeral port; return its URL."""
    port = reactor.listenTCP(0, Site(EchoResource(name)), interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}"


async def self_test(reactor, base: str) -> None:
    """Send one request per route and check which upstream answered, and with what path."""
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    checks = [  # (request path, upstream that must answer, path it must see after strip_path)
        ("/api/users/42", "users", "/42"),
        ("/api/products/7?full=1", "products", "/7?full=1"),
    ]
    for path, service, upstream_uri in checks:
        response = await client.get(base + path)
        assert response.code == 200, f"GET {path}: HTTP {response.code}"
        echoed = await response.json()
        assert echoed["service"] == service, f"GET {path} reached {echoed['service']!r}"
        assert echoed["uri"] == upstream_uri, f"GET {path}: upstream saw {echoed['uri']!r}"
    print("self-test ok")


async def main(reactor, options: argparse.Namespace) -> None:
    users = start_echo(reactor, "users")
    products = start_echo(reactor, "products")
    gateway = await (
        Gateway.builder()
        .route("/api/users/*", users, strip_path=True)
        .route("/api/products/*", products, strip_path=True)
        .with_host("127.0.0.1")
        .with_port(0 if options.self_test else options.port)
        .with_timeout(timedelta(seconds=30))
        .with_reactor(reactor)
        .build()
    )
    stopped = gateway.serve()
    base = f"http://127.0.0.1:{gateway.port}"
    if options.self_test:
        await self_test(reactor, base)
        await gateway.stop()
        return
    print(f"avx-gateway on {base}: /api/users/* -> {users}, /api/products/* -> {products}")
    print(f"try:  curl -s {base}/api/users/42")
    print(f"      curl -s {base}/api/products/7")
    print("Ctrl-C to stop")
    await stopped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--self-test", action="store_true", help="check the example and exit")
    options = parser.parse_args()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
