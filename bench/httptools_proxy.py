"""A bare Twisted + httptools keep-alive reverse proxy: the reference row of bench/run.py.

No features at all (no routing, no middleware, no timeouts, no limits): it shows how fast a
reverse proxy on this reactor can be, so the gateway has a ceiling to be compared with.

- Server side: a plain ``twisted.internet.protocol.Protocol`` parses requests with
  ``httptools.HttpRequestParser``. One request per connection at a time: while a request is
  in flight (its body fully read, its response not yet done) the connection stops reading;
  pipelined requests that were already read are queued and served in order. Upgrade requests
  get 400.
- Upstream: a single origin, over a small per-process pool of keep-alive connections (at most
  ``--pool`` idle ones kept), responses parsed with ``httptools.HttpResponseParser``. The one
  retry: a request without a body whose pooled connection the origin closed before answering
  goes once more on a new connection.
- Bodies: a ``Content-Length`` body is relayed as it is, in the pieces it arrives in (after
  the piece holding the head, without going through the parser at all); a chunked (or
  close-delimited) body is re-chunked, both ways. ``HEAD``, 204 and 304 answers carry none;
  a 1xx status line is passed on (not to HTTP/1.0 clients) before the real answer.
- Backpressure, both ways: the transport being written to has a producer registered
  (``registerProducer``) that pauses reading on the other side while its buffer is full.
- Hop-by-hop headers are dropped both ways; ``Host`` is the client's. ``TCP_NODELAY`` on every
  connection, as nginx's ``tcp_nodelay on``.

    python bench/httptools_proxy.py LISTEN_PORT ORIGIN_PORT [--pool 64]

Runs on CPython and PyPy (httptools 0.9 builds from source on PyPy).
"""

from __future__ import annotations

import argparse
from collections import deque
from typing import Any, Deque, List, Optional, Set, Tuple

import httptools
from twisted.internet import protocol, reactor
from twisted.python import failure

HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nbad gateway\n"
)
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nbad request\n"
)

Headers = List[Tuple[bytes, bytes]]


def _nodelay(transport: Any) -> None:
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass


class Exchange:
    """One request and its response."""

    __slots__ = (
        "client",
        "url",
        "headers",
        "method",
        "keep_alive",
        "http10",
        "chunked",
        "has_body",
        "length",
        "body_seen",
        "head_done",
        "request_done",
        "pending",
        "upstream",
        "response_started",
        "retried",
        "asked",
        "finished",
    )

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.url = b""
        self.headers: Headers = []
        self.method = b"GET"
        self.keep_alive = True
        self.http10 = False
        self.chunked = False  # the request body is chunked
        self.has_body = False
        self.length: Optional[int] = None  # Content-Length of the request body
        self.body_seen = 0  # body bytes the parser delivered
        self.head_done = False
        self.request_done = False
        self.pending: List[bytes] = []  # request bytes (framed) not yet written upstream
        self.upstream: Optional[UpstreamConn] = None
        self.response_started = False
        self.retried = False
        self.asked = False  # an upstream connection was asked for
        self.finished = False

    def request_head(self) -> bytes:
        parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            if name.lower() not in HOP_BY_HOP:
                parts += (name, b": ", value, CRLF)
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(CRLF)
        return b"".join(parts)


# --------------------------------------------------------------------------- server side


class UploadProducer:
    """Registered on the upstream transport while a request body goes up: pauses the client."""

    __slots__ = ("client",)

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def pauseProducing(self) -> None:
        self.client.set_paused("upload", True)

    def resumeProducing(self) -> None:
        self.client.set_paused("upload", False)

    def stopProducing(self) -> None:
        self.client.set_paused("upload", False)


class ClientSide(protocol.Protocol):
    """One client connection."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.current: Optional[Exchange] = None
        self.queue: Deque[Exchange] = deque()
        self.parsing: Optional[Exchange] = None
        self.paused: Set[str] = set()
        self.closing = False
        self.raw_left = 0  # Content-Length body bytes still to come, relayed without the parser

    def connectionMade(self) -> None:
        _nodelay(self.transport)

    def set_paused(self, reason: str, flag: bool) -> None:
        was = bool(self.paused)
        if flag:
            self.paused.add(reason)
        else:
            self.paused.discard(reason)
        now = bool(self.paused)
        if now != was and self.transport is not None and not self.closing:
            if now:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        left = self.raw_left
        if left:
            # The rest of a Content-Length body: straight through, not through the parser.
            if len(data) < left:
                self.raw_left = left - len(data)
                self.on_body(data)
                return
            self.raw_left = 0
            self.on_body(data[:left] if len(data) > left else data)
            self.parser = httptools.HttpRequestParser(self)  # the old one is mid-body
            self.on_message_complete()
            data = data[left:]
            if not data:
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(BAD_REQUEST)
            return
        except httptools.HttpParserError:
            self.fail(BAD_REQUEST)
            return
        ex = self.parsing
        if ex is not None and ex.head_done and ex.length and not self.closing:
            self.raw_left = ex.length - ex.body_seen

    def fail(self, answer: bytes) -> None:
        """Answer ``answer`` if nothing of a response was sent yet, and close."""
        ex = self.current
        if ex is None or not ex.response_started:
            self.transport.write(answer)
        self.close()

    def close(self, abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        ex = self.parsing = Exchange(self)
        if self.current is None:
            self.current = ex
        else:
            self.queue.append(ex)

    def on_url(self, url: bytes) -> None:
        self.parsing.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        lower = name.lower()
        if lower == b"transfer-encoding":
            ex.chunked = ex.has_body = True  # type: ignore[union-attr]
        elif lower == b"content-length":
            ex.length = int(value)  # type: ignore[union-attr]  # llhttp checked it
            ex.has_body = ex.length > 0  # type: ignore[union-attr]
        ex.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser
        ex.method = parser.get_method()  # type: ignore[union-attr]
        ex.keep_alive = parser.should_keep_alive()  # type: ignore[union-attr]
        ex.http10 = parser.get_http_version() == "1.0"  # type: ignore[union-attr]
        ex.head_done = True  # type: ignore[union-attr]
        ex.pending.append(ex.request_head())  # type: ignore[union-attr]
        # A request with a body goes up at once, its body streamed after the head; one without
        # waits for on_message_complete, which comes right after.
        if ex.has_body and ex is self.current:  # type: ignore[union-attr]
            self.start(ex)  # type: ignore[arg-type]

    def start(self, ex: Exchange) -> None:
        if not ex.asked:
            ex.asked = True
            self.pool.acquire(ex)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex.chunked:  # type: ignore[union-attr]
            framed = [b"%x\r\n" % len(data), data, CRLF]
        else:
            ex.body_seen += len(data)  # type: ignore[union-attr]
            framed = [data]
        up = ex.upstream  # type: ignore[union-attr]
        if up is not None and not ex.pending:  # type: ignore[union-attr]
            up.transport.writeSequence(framed)
        else:
            ex.pending.extend(framed)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        ex.request_done = True  # type: ignore[union-attr]
        if ex.chunked:  # type: ignore[union-attr]
            up = ex.upstream  # type: ignore[union-attr]
            if up is not None and not ex.pending:  # type: ignore[union-attr]
                up.transport.write(LAST_CHUNK)
            else:
                ex.pending.append(LAST_CHUNK)  # type: ignore[union-attr]
        if ex.upstream is not None and not ex.pending:  # type: ignore[union-attr]
            ex.upstream.request_sent()  # type: ignore[union-attr]
        elif ex is self.current:
            self.start(ex)  # type: ignore[arg-type]
        # One at a time: nothing more is read until this response is done.
        self.set_paused("response", True)

    # -- the exchange, from the upstream side

    def attached(self, ex: Exchange, up: UpstreamConn) -> None:
        """``up`` is ready for ``ex`` (pooled or just connected)."""
        if ex.finished or self.closing:
            up.release(reusable=True)
            return
        ex.upstream = up
        up.exchange = ex
        if ex.pending:
            up.transport.writeSequence(ex.pending)
            ex.pending = []
        if ex.request_done:
            up.request_sent()
        else:
            up.transport.registerProducer(UploadProducer(self), True)

    def exchange_done(self, ex: Exchange) -> None:
        ex.finished = True
        if ex is not self.current:
            return
        self.current = None
        if self.closing:
            return
        if not ex.keep_alive or not ex.request_done:
            self.close()
            return
        if self.queue:
            nxt = self.current = self.queue.popleft()
            if nxt.request_done or (nxt.head_done and nxt.has_body):
                self.start(nxt)
            if nxt.request_done:
                return  # stays paused: that one's response is next
        self.set_paused("response", False)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        self.closing = True
        for ex in (self.current, *self.queue):
            if ex is None:
                continue
            ex.finished = True
            if ex.upstream is not None:
                ex.upstream.client_gone()
        self.current = None
        self.queue.clear()


class ClientFactory(protocol.Factory):
    noisy = False

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> ClientSide:
        return ClientSide(self.pool)


# --------------------------------------------------------------------------- upstream side


class DownloadProducer:
    """Registered on the client transport while a response goes down: pauses the upstream."""

    __slots__ = ("up", "paused")

    def __init__(self, up: UpstreamConn) -> None:
        self.up = up
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.up.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.up.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.resumeProducing()
        self.up.client_gone()


class UpstreamConn(protocol.Protocol):
    """One keep-alive connection to the origin."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Optional[Exchange] = None
        self.producer: Optional[DownloadProducer] = None
        self.connected_ok = False
        self.reused = False
        self.sent_all = False  # the whole request went out
        self.got_any = False  # any response byte came back
        self.chunked_out = False  # the response is re-chunked to the client
        self.close_delimited = False
        self.skip = False  # a 1xx answer is being skipped
        self.headers: Headers = []
        self.reason = b""
        self.dead = False
        self.length: Optional[int] = None  # Content-Length of the response body being relayed
        self.body_seen = 0  # of it, bytes the parser delivered
        self.in_body = False  # the head is relayed, the body not complete yet
        self.keep_alive = False  # the origin keeps this connection open after the response
        self.raw_left = 0  # Content-Length body bytes still to come, relayed without the parser

    def connectionMade(self) -> None:
        self.connected_ok = True
        _nodelay(self.transport)
        self.pool.connected(self)

    def request_sent(self) -> None:
        self.sent_all = True
        if self.transport.producer is not None:
            self.transport.unregisterProducer()
            self.exchange.client.set_paused("upload", False)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.got_any = True
        ex = self.exchange
        if ex is None:  # an idle connection should never get data
            self.transport.abortConnection()
            return
        left = self.raw_left
        if left:
            # The rest of a Content-Length body: straight through, not through the parser.
            n = len(data)
            if n < left:
                self.raw_left = left - n
                ex.client.transport.write(data)
                return
            self.raw_left = 0
            ex.client.transport.write(data if n == left else data[:left])
            self.parser = httptools.HttpResponseParser(self)  # the old one is mid-body
            self.in_body = False
            # Bytes past the body, before the next request: a broken origin, not reused.
            self.finish(reusable=self.keep_alive and n == left)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken()
            return
        if self.in_body and self.length is not None and self.exchange is not None:
            self.raw_left = self.length - self.body_seen

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.skip = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # 100 Continue and the like: the status line alone is relayed; the real answer
            # follows as the next message.
            self.skip = True
            if status != 101 and not ex.http10:
                ex.client.transport.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, self.reason))
            return
        no_body = ex.method == b"HEAD" or status in (204, 304)
        parts = [b"HTTP/1.1 %d " % status, self.reason, CRLF]
        length = False
        self.length = None
        self.body_seen = 0
        for name, value in self.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower == b"content-length":
                length = True
                if not no_body:
                    self.length = int(value)  # llhttp checked it
            parts += (name, b": ", value, CRLF)
        self.keep_alive = self.parser.should_keep_alive()
        self.close_delimited = not no_body and not length and not self._te_chunked()
        self.chunked_out = not no_body and not length
        if self.chunked_out and ex.http10:
            self.chunked_out = False
            ex.keep_alive = False  # an HTTP/1.0 client gets it close-delimited
        if not ex.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif ex.http10:
            parts.append(b"Connection: keep-alive\r\n")
        if self.chunked_out:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(CRLF)
        client = ex.client.transport
        client.write(b"".join(parts))
        ex.response_started = True
        self.in_body = True
        self.producer = DownloadProducer(self)
        client.registerProducer(self.producer, True)
        if ex.method == b"HEAD":
            # httptools would wait for the Content-Length body a HEAD answer never has: the
            # exchange ends here and this connection is not reused.
            self.finish(reusable=False)

    def _te_chunked(self) -> bool:
        for name, value in self.headers:
            if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                return True
        return False

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or self.skip:
            return
        if self.chunked_out:
            ex.client.transport.writeSequence((b"%x\r\n" % len(data), data, CRLF))
        else:
            self.body_seen += len(data)
            ex.client.transport.write(data)

    def on_message_complete(self) -> None:
        if self.skip:
            self.skip = False
            return
        self.in_body = False
        if self.exchange is None:
            return
        reusable = self.parser.should_keep_alive() and not self.close_delimited
        self.finish(reusable)

    # -- the end of an exchange

    def finish(self, reusable: bool) -> None:
        ex = self.exchange
        if ex is None:
            return
        client = ex.client.transport
        if self.chunked_out:
            client.write(LAST_CHUNK)
        self._unregister(client)
        reusable = reusable and self.sent_all
        self.exchange = None
        ex.upstream = None
        self.release(reusable)  # first, so that a pipelined next request can take it
        ex.client.exchange_done(ex)

    def _unregister(self, client: Any) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.resumeProducing()
            if client.producer is producer:
                client.unregisterProducer()

    def release(self, reusable: bool) -> None:
        self.sent_all = self.got_any = False
        self.chunked_out = self.close_delimited = self.skip = self.in_body = False
        self.raw_left = 0
        if reusable and not self.dead:
            self.pool.release(self)
        else:
            self.dead = True
            self.transport.loseConnection()

    def broken(self) -> None:
        """Unparseable answer: the client gets 502 (or is cut off mid-response)."""
        ex = self.exchange
        self.dead = True
        self.transport.abortConnection()
        if ex is not None:
            self.exchange = None
            ex.upstream = None
            self._unregister(ex.client.transport)
            ex.finished = True
            ex.client.fail(BAD_GATEWAY)

    def client_gone(self) -> None:
        """The client went away mid-exchange: this connection is in an unknown state."""
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            ex.upstream = None
        self.producer = None
        if not self.dead:
            self.dead = True
            self.transport.abortConnection()

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        self.dead = True
        self.pool.lost(self)
        ex = self.exchange
        if ex is None:
            return
        if ex.response_started and self.close_delimited:
            self.finish(reusable=False)  # the end of a close-delimited body
            return
        self.exchange = None
        ex.upstream = None
        self._unregister(ex.client.transport)
        if (
            self.reused
            and not self.got_any
            and not ex.has_body
            and not ex.retried
            and not ex.response_started
        ):
            # A pooled connection the origin had just closed: once more on a fresh one.
            ex.retried = True
            ex.pending = [ex.request_head(), *ex.pending]
            self.pool.acquire(ex, fresh=True)
            return
        ex.finished = True
        if ex.response_started:
            ex.client.close(abort=True)  # truncated response
        else:
            ex.client.fail(BAD_GATEWAY)


class Pool:
    """Keep-alive connections to the one origin: at most ``max_idle`` idle ones are kept."""

    def __init__(self, host: str, port: int, max_idle: int) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle: List[UpstreamConn] = []

    def acquire(self, ex: Exchange, fresh: bool = False) -> None:
        idle = self.idle
        while idle and not fresh:
            up = idle.pop()
            if not up.dead:
                up.reused = True
                ex.client.attached(ex, up)
                return
        reactor.connectTCP(  # type: ignore[attr-defined]
            self.host, self.port, _ConnectFactory(self, ex), timeout=5
        )

    def connected(self, up: UpstreamConn) -> None:
        ex = up.factory_exchange  # type: ignore[attr-defined]
        del up.factory_exchange  # type: ignore[attr-defined]
        ex.client.attached(ex, up)

    def release(self, up: UpstreamConn) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(up)
        else:
            up.dead = True
            up.transport.loseConnection()

    def lost(self, up: UpstreamConn) -> None:
        try:
            self.idle.remove(up)
        except ValueError:
            pass


class _ConnectFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, pool: Pool, ex: Exchange) -> None:
        self.pool = pool
        self.ex = ex

    def buildProtocol(self, addr: Any) -> UpstreamConn:
        up = UpstreamConn(self.pool)
        up.factory_exchange = self.ex  # type: ignore[attr-defined]
        return up

    def clientConnectionFailed(self, connector: Any, reason: failure.Failure) -> None:
        ex = self.ex
        if not ex.finished:
            ex.finished = True
            ex.client.fail(BAD_GATEWAY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("port", type=int, help="port to listen on (127.0.0.1)")
    parser.add_argument("origin_port", type=int, help="port of the origin on 127.0.0.1")
    parser.add_argument("--origin-host", default="127.0.0.1")
    parser.add_argument("--pool", type=int, default=64, help="idle upstream connections kept")
    args = parser.parse_args()
    pool = Pool(args.origin_host, args.origin_port, args.pool)
    reactor.listenTCP(  # type: ignore[attr-defined]
        args.port, ClientFactory(pool), backlog=1024, interface="127.0.0.1"
    )
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
