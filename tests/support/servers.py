"""Real servers on 127.0.0.1 for integration tests: upstreams with chosen faults, and gateways."""

from __future__ import annotations

import json
from typing import Any, Callable

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from avx_twisted.config import GatewayConfig
from avx_twisted.demo import EchoResource
from avx_twisted.service import GatewayService

__all__ = [
    "BigBody",
    "CloseMidBody",
    "EchoResource",
    "FnResource",
    "Hang",
    "Upstream",
    "gateway",
    "http",
    "raw_request",
    "upstream",
]


class Upstream:
    """A listening upstream: its port, base URL and a ``stop()``."""

    def __init__(self, port: Any, site: Site) -> None:
        self.listening = port
        self.site = site
        self.port = port.getHost().port
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self.listening.stopListening)


class _QuietSite(Site):
    noisy = False

    def log(self, request: Request) -> None:
        pass


class FnResource(Resource):
    """A leaf resource answering with ``fn(request)`` (bytes, or NOT_DONE_YET)."""

    isLeaf = True

    def __init__(self, fn: Callable[[Request], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Request) -> Any:
        body = b""
        if request.content is not None:
            body = request.content.read()
            request.content.seek(0)
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": request.requestHeaders,
                "body": body,
            }
        )
        return self.fn(request)


class Hang(Resource):
    """Never answers (until the connection is closed)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render(self, request: Request) -> Any:
        self.hits += 1
        return NOT_DONE_YET


class BigBody(Resource):
    """Streams ``size`` bytes with a push producer honouring backpressure (Content-Length set)."""

    isLeaf = True

    def __init__(self, size: int, chunk: int = 64 * 1024, content_length: bool = True) -> None:
        super().__init__()
        self.size = size
        self.chunk = b"x" * chunk
        self.content_length = content_length

    def render(self, request: Request) -> Any:
        if self.content_length:
            request.setHeader(b"Content-Length", b"%d" % self.size)
        producer = _Pusher(request, self.size, self.chunk)
        request.registerProducer(producer, False)
        return NOT_DONE_YET


class _Pusher:
    def __init__(self, request: Request, size: int, chunk: bytes) -> None:
        self.request = request
        self.left = size
        self.chunk = chunk
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        n = min(self.left, len(self.chunk))
        self.left -= n
        self.request.write(self.chunk[:n])
        if self.left == 0:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class CloseMidBody(protocol.Protocol):
    """A raw upstream that promises ``length`` bytes, sends ``sent`` of them and hangs up."""

    length = 1000
    sent = 100

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.length + b"a" * self.sent
            )
            reactor.callLater(0.05, self.transport.loseConnection)


def upstream(resource: Resource | None = None) -> Upstream:
    """Start ``resource`` (default: the echo) on an ephemeral loopback port."""
    site = _QuietSite(resource or EchoResource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return Upstream(port, site)


def raw_upstream(factory_protocol: type[protocol.Protocol]) -> Upstream:
    """A raw TCP upstream speaking whatever ``factory_protocol`` speaks."""
    factory = protocol.Factory.forProtocol(factory_protocol)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return Upstream(port, factory)  # type: ignore[arg-type]


def gateway(config: str | dict[str, Any]) -> GatewayService:
    """Start a gateway from TOML text or a dict (its port forced to 0) and return the service."""
    if isinstance(config, str):
        cfg = GatewayConfig.from_toml(config)
    else:
        cfg = GatewayConfig.from_dict(config)
    service = GatewayService(cfg, reactor)
    service.startService()
    return service


def gateway_for(urls: list[str] | str, **route: Any) -> GatewayService:
    """A one-route gateway (``/*`` unless ``path`` is given) in front of ``urls``."""
    if isinstance(urls, str):
        urls = [urls]
    upstream_keys = {k: route.pop(k) for k in list(route) if k in ("strategy", "weights")}
    server = route.pop("server", {})
    data = {
        "server": {"host": "127.0.0.1", "port": 0, **server},
        "routes": [{"path": route.pop("path", "/*"), **route,
                    "upstream": {"urls": urls, **upstream_keys}}],
    }
    return gateway(data)


_pool: list[HTTPConnectionPool] = []


def http(method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
    """treq request on a non-persistent pool (no connections left behind between tests)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.request(method, url, pool=pool, **kwargs)


class _RawClient(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.buffer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.buffer)


async def raw_request(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything received until the server closes."""
    client = _RawClient(payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    timer = reactor.callLater(timeout, client.transport.abortConnection)
    data = await client.done
    if timer.active():
        timer.cancel()
    return data


def echo_json(body: bytes) -> dict[str, Any]:
    """Parse the echo upstream's JSON answer."""
    return json.loads(body)  # type: ignore[no-any-return]
