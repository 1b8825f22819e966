"""Load balancing: one route spread over three upstreams with weights 3:1:1.

Run it from the repository root (the three upstreams are echo servers started in this process on
127.0.0.1, so nothing else is needed)::

    python examples/load_balancing.py              # gateway on http://127.0.0.1:8080, Ctrl-C stops
    python examples/load_balancing.py --port 9000
    python examples/load_balancing.py --self-test  # port 0, 10 requests, checks the 6/2/2 split

``strategy="weighted"`` is smooth weighted round-robin: out of every 5 requests ``app-1`` gets 3,
interleaved (1, 2, 1, 3, 1), never in a burst. The other strategies take no weights:
``"round_robin"`` (the default) rotates through the upstreams in order, ``"least_connections"``
picks the one with the fewest requests in flight, ``"random"`` picks uniformly.
"""

from __future__ import annotations

import argparse
from collections import Counter

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from avx_twisted import Gateway
from avx_twisted.demo import EchoResource

NAMES = ["app-1", "app-2", "app-3"]
WEIGHTS = [3, 1, 1]


def start_echo(reactor, name: str) -> str:
    """Start an echo upstream called ``name`` on an ephemeral port; return its URL."""
    port = reactor.listenTCP(0, Site(EchoResource(name)), interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}"


async def self_test(reactor, base: str) -> None:
    """Send 10 requests and check that the upstreams served them 6/2/2."""
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    served: Counter[str] = Counter()
    for i in range(10):
        response = await client.get(f"{base}/api/orders/{i}")
        assert response.code == 200, f"request {i}: HTTP {response.code}"
        served[(await response.json())["service"]] += 1
    expected = {"app-1": 6, "app-2": 2, "app-3": 2}
    assert served == expected, f"served {dict(served)}, expected {expected}"
    print("self-test ok:", ", ".join(f"{name} {served[name]}" for name in NAMES))


async def main(reactor, options: argparse.Namespace) -> None:
    urls = [start_echo(reactor, name) for name in NAMES]
    gateway = await (
        Gateway.builder()
        .route("/api/orders/*", urls, strip_path=True, strategy="weighted", weights=WEIGHTS)
        .with_host("127.0.0.1")
        .with_port(0 if options.self_test else options.port)
        .with_reactor(reactor)
        .build()
    )
    stopped = gateway.serve()
    base = f"http://127.0.0.1:{gateway.port}"
    if options.self_test:
        await self_test(reactor, base)
        await gateway.stop()
        return
    for name, url, weight in zip(NAMES, urls, WEIGHTS):
        print(f"upstream {name} on {url}, weight {weight}")
    print(f'avx-gateway on {base}; try (watch the "service" field):')
    print(f"  for i in $(seq 10); do curl -s {base}/api/orders/$i | grep service; done")
    print("Ctrl-C to stop")
    await stopped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--self-test", action="store_true", help="check the example and exit")
    options = parser.parse_args()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
