# -*- test-case-name: tests.unit.test_resources -*-
"""Routes the gateway serves itself with a twisted.web resource (``resource = "module:attr"``).

The gateway's requests are not twisted.web requests: a :class:`ResourceResponder` builds one
``twisted.web.server.Request`` per request over a small in-memory channel that turns what
twisted.web does into the :class:`~avx_twisted.h1.ServerRequest`'s answer methods. The HTTP
core frames the answer (twisted.web never chunk-encodes it), the client connection's
backpressure reaches the resource's producer (push or pull: ``static.File`` streams a file of
any size in flat memory), and a failing resource gets the gateway's JSON 500, never a
traceback. The request body is read whole into ``request.content`` before the resource runs
(the route's ``max_body_bytes`` bounds it).
"""

from __future__ import annotations

import enum
import importlib
import io
import tempfile
from typing import IO, Any, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web import resource as web_resource
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from zope.interface import implementer

from .errors import REFUSALS, error_answer
from .h1 import HOP_BY_HOP, BodyFailed, ProducerProxy

log = Logger()

Pair = Tuple[bytes, bytes]

#: Bodies up to this size are kept in memory; larger (or chunked) ones go to a temporary file
#: (twisted.web's own threshold).
_IN_MEMORY_BODY = 100_000
#: How many times a pull producer is asked for data per reactor turn (when nothing pauses it).
_PULLS_PER_TURN = 16
_BAD_IN_REASON = (b"\r", b"\n", b"\x00")
#: twisted.web's gzip support (``EncodingResourceWrapper``); private, so looked up softly.
_ENCODING = getattr(web_resource, "_IEncodingResource", None)


def load_resource(spec: str) -> IResource:
    """The resource named by ``"package.module:attribute"`` (the attribute may be dotted).

    The attribute is an ``IResource`` provider, or a callable taking no arguments that returns
    one (called once, here): a resource class, a factory function, a klein app's bound
    ``app.resource``. Raises ``ValueError`` whose message is a one-line reason written to
    follow the quoted spec (``'x:y' cannot be imported: No module named 'x'``).
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not _dotted(module_name) or not _dotted(attribute):
        raise ValueError("is not of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot be imported: {_one_line(e)}") from None
    except Exception as e:
        raise ValueError(f"failed on import: {type(e).__name__}: {_one_line(e)}") from None
    found: Any = module
    walked = module_name
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"names nothing: {walked} has no attribute {part!r}") from None
        except Exception as e:
            raise ValueError(f"failed on {walked}.{part}: {type(e).__name__}: {_one_line(e)}")
        walked = f"{walked}.{part}"
    if IResource.providedBy(found):
        return found  # type: ignore[no-any-return]
    if not callable(found):
        raise ValueError(
            f"is a {type(found).__name__}, not an IResource nor a callable returning one"
        )
    try:
        made = found()
    except Exception as e:
        raise ValueError(f"failed when called: {type(e).__name__}: {_one_line(e)}") from None
    if not IResource.providedBy(made):
        raise ValueError(f"returned a {type(made).__name__} when called, not an IResource")
    return made  # type: ignore[no-any-return]


def _dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class ResourceResponder:
    """Answers a route's requests with one twisted.web resource tree (a ``Site`` around it)."""

    def __init__(self, resource: IResource, clock: Any) -> None:
        self.resource = resource
        self.clock = clock
        #: What ``request.site`` is; it traverses the tree (``getResourceFor``). Never listens.
        self.site = server.Site(resource, reactor=clock)

    def serve(self, request: Any, ctx: Any, target: bytes) -> None:
        """Run the resource for ``request`` (a ServerRequest) and answer through it.

        ``target`` is the path and query the resource sees (after ``strip_path``). ``ctx``
        gives ``request_id`` (bytes) and, if it has them, ``client_ip`` and ``error``.
        """
        _Channel(self, request, ctx, target).begin()


class ChannelState(enum.Enum):
    """One request's way through a resource. Legal transitions::

    READING -> SERVING    the request body is in ``request.content``: the resource runs
    READING -> DONE       the body broke a rule (413, 408, 400): the gateway answered
    SERVING -> DONE       the answer is complete (the resource's, or the gateway's 500)
    READING/SERVING -> GONE   the client went, or the answer was cut off
    """

    READING = "reading"
    SERVING = "serving"
    DONE = "done"
    GONE = "gone"


class _Channel:
    """The channel (and ``transport``) of one twisted.web request: what twisted.web calls on
    ``request.channel`` mapped onto our ServerRequest (``answer``). Calls after the answer is
    over are ignored."""

    #: http.Request.finish logs through ``channel.factory`` when there is one: not here.
    factory = None

    def __init__(self, responder: ResourceResponder, answer: Any, ctx: Any, target: bytes) -> None:
        self.state = ChannelState.READING
        self.site = responder.site
        self.clock = responder.clock
        self.answer = answer
        self.ctx = ctx
        self.target = target
        self.web: Optional[_WebRequest] = None
        self.content: Optional[IO[bytes]] = None
        self.producer: Any = None
        factory = getattr(answer.channel, "factory", None)
        self._server_header = getattr(factory, "server_header", None)
        self._then = answer.on_done
        answer.on_done = self._answer_done

    @property
    def transport(self) -> _Channel:
        """``request.transport``: this channel too (never the client socket, which would let
        a resource write around the core's framing)."""
        return self

    # -- the request body -----------------------------------------------------------------------

    def begin(self) -> None:
        body = self.answer.body
        declared = body.declared
        if not body.present or (declared is not None and declared < _IN_MEMORY_BODY):
            self.content = io.BytesIO()
        else:
            self.content = tempfile.TemporaryFile()
        body.attach(_BodySink(self))  # complete at once when the body is already here

    def body_received(self, data: bytes) -> None:
        if self.state is ChannelState.READING and self.content is not None:
            self.content.write(data)

    def body_done(self) -> None:
        """The request body is complete: run the resource."""
        if self.state is not ChannelState.READING:
            return
        self.state = ChannelState.SERVING
        answer = self.answer
        web = self.web = _WebRequest(self)
        web.content, self.content = self.content, None
        headers = web.requestHeaders
        for name, value in answer.fields:
            headers.addRawHeader(name, value)
        web.parseCookies()
        try:
            web.requestReceived(answer.method, self.target, b"HTTP/" + answer.version)
        except Exception:  # process() catches the resource's errors; this is twisted.web's
            web.processingFailed(Failure())

    def body_failed(self, failure: BodyFailed) -> None:
        """The request body broke off: the gateway's error answer (a client gone gets none)."""
        if self.state is not ChannelState.READING:
            return
        self.state = ChannelState.DONE
        self._close_content()
        self._note_error(failure.reason)
        message = REFUSALS.get(failure.status, failure.reason)
        error_answer(failure.status, message, request_id=self._request_id()).send(self.answer)

    # -- what twisted.web's Request calls ---------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        web = self.web
        if self.state is not ChannelState.SERVING or web is None:
            return
        # twisted.web chose chunked because it saw no Content-Length: the core frames instead.
        web.chunked = 0
        length: Optional[int] = None
        fields: List[Pair] = []
        date = False
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower == b"content-length":
                length = _content_length(values)
                if length is None:
                    log.error(
                        "resource answered a bad Content-Length {values!r}",
                        values=values,
                        request_id=self._request_id().decode("latin-1"),
                    )
                    self.internal_error()
                    return
                continue
            if lower in HOP_BY_HOP:
                continue
            if lower == b"server" and self._server_header is not None:
                continue  # server.server_header replaces it
            if lower == b"date":
                date = True
            for value in values:
                fields.append((name, value))
        status = int(code)
        default = http.RESPONSES.get(status, b"Unknown Status")
        if reason == default or any(bad in reason for bad in _BAD_IN_REASON):
            phrase: Optional[bytes] = None  # the core's own phrase
        else:
            phrase = reason
        self.answer.start(status, fields, length, reason=phrase, add_date=not date)

    def write(self, data: bytes) -> None:
        if self.state is ChannelState.SERVING:
            self.answer.write(data)

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def requestDone(self, request: Any) -> None:
        if self.state is ChannelState.SERVING:
            self.answer.finish()  # a body short of its Content-Length aborts instead

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"a producer is registered already: {self.producer!r}")
        if self.state is not ChannelState.SERVING:
            producer.stopProducing()
            return
        if streaming:
            self.producer = ProducerProxy(producer)
            self.answer.register_producer(self.producer)
        else:
            pusher = self.producer = _PullPusher(producer, self.clock, self._pull_failed)
            self.answer.register_producer(pusher)
            pusher.start()

    def unregisterProducer(self) -> None:
        self._drop_producer(stop=False)

    def _drop_producer(self, stop: bool) -> None:
        """No more data from the registered producer: stopped (an error, the client gone) or
        just let go (it is done); the client connection no longer pauses it."""
        producer, self.producer = self.producer, None
        if producer is None:
            return
        if stop:
            producer.stopProducing()
        else:
            producer.detach()
        self.answer.unregister_producer()

    def loseConnection(self) -> None:
        """A resource closing its connection cuts the answer off (if it is not complete)."""
        if self.state is ChannelState.SERVING or self.state is ChannelState.READING:
            self.answer.abort()

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        transport = self.answer.channel.transport
        return transport.getPeer() if transport is not None else IPv4Address("TCP", "0.0.0.0", 0)

    def getHost(self) -> Any:
        transport = self.answer.channel.transport
        return transport.getHost() if transport is not None else IPv4Address("TCP", "0.0.0.0", 0)

    def isSecure(self) -> bool:
        return bool(self.answer.secure)

    def client_address(self, peer: Any) -> Any:
        """The client as the gateway resolved it (``server.trusted_proxies``), else ``peer``."""
        ip = getattr(self.ctx, "client_ip", None)
        if not ip or ip == getattr(peer, "host", None):
            return peer
        return IPv6Address("TCP", ip, 0) if ":" in ip else IPv4Address("TCP", ip, 0)

    def pauseProducing(self) -> None:
        """(As ``request.transport``.) The body was read whole: nothing to pause."""

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web could not parse a multipart form body."""
        if self.state is not ChannelState.SERVING:
            return
        self._note_error("bad multipart body")
        error_answer(400, "bad request", request_id=self._request_id()).send(self.answer)
        self._end_web()

    # -- ends -----------------------------------------------------------------------------------

    def internal_error(self) -> None:
        """The resource failed: the gateway's JSON 500 if nothing was sent yet, else the answer
        is cut off (it must not look complete)."""
        if self.state is not ChannelState.SERVING:
            return
        self._note_error("internal error")
        self._drop_producer(stop=True)
        if self.answer.started:
            self.answer.abort()
            return
        error_answer(500, "internal error", request_id=self._request_id()).send(self.answer)
        self._end_web()

    def _pull_failed(self, failure: Failure) -> None:
        log.failure(
            "the producer of a resource failed", failure, request_id=self._request_id().decode()
        )
        self.internal_error()

    def _answer_done(self, answer: Any, failure: Optional[Failure]) -> None:
        """The ServerRequest's on_done: the answer is complete (None) or never will be."""
        previous = self.state
        self.state = ChannelState.GONE if failure is not None else ChannelState.DONE
        self._drop_producer(stop=failure is not None)
        if previous is ChannelState.READING:
            self._close_content()
        web = self.web
        if failure is not None and web is not None and not web.lost:
            # notifyFinish's Deferreds fail (even when twisted.web had finished: a body short
            # of its Content-Length is cut off in finish()).
            web.connectionLost(failure)
        then, self._then = self._then, None
        if then is not None:
            then(answer, failure)

    def _end_web(self) -> None:
        """The gateway answered for the resource: the twisted.web request is finished too."""
        web = self.web
        if web is None or web.finished:
            return
        web.finished = 1
        if web.producer is not None:
            web.unregisterProducer()
        content, web.content = web.content, None
        if content is not None:
            content.close()
        notifications, web.notifications = web.notifications, []
        for d in notifications:
            d.callback(None)

    def _close_content(self) -> None:
        content, self.content = self.content, None
        if content is not None:
            content.close()

    def _request_id(self) -> bytes:
        return getattr(self.ctx, "request_id", b"") or b""

    def _note_error(self, message: str) -> None:
        if getattr(self.ctx, "error", "") is None:
            self.ctx.error = message

    def __repr__(self) -> str:
        return f"<resources._Channel {self.target!r} {self.state.value}>"


class _BodySink:
    """Where the request body goes (the RequestBody's consumer): the channel's content file."""

    __slots__ = ("_channel",)

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        self._channel.body_received(data)

    def finish(self) -> None:
        self._channel.body_done()

    def fail(self, failure: BodyFailed) -> None:
        self._channel.body_failed(failure)


def _content_length(values: List[bytes]) -> Optional[int]:
    """The one length all ``values`` agree on, or None (malformed or conflicting)."""
    lengths = {value.strip() for value in values}
    if len(lengths) != 1:
        return None
    (length,) = lengths
    return int(length) if length.isdigit() else None


class _WebRequest(server.Request):
    """A twisted.web request whose channel is a :class:`_Channel`: traversal and rendering as
    ``server.Request`` does them, without its ``Server``/``Date`` fields and HTML tracebacks."""

    #: The answer broke off (the client went, or it was cut off).
    lost = False

    def __init__(self, channel: _Channel) -> None:
        server.Request.__init__(self, channel)
        self.client = channel.client_address(self.client)

    def process(self) -> None:
        self.site = self.channel.site
        self.prepath = []
        path = self.path
        self.postpath = [unquote_to_bytes(p) for p in path[1:].split(b"/")] if path else [b""]
        try:
            found = self.site.getResourceFor(self)
            if _ENCODING is not None and _ENCODING.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except Exception:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> Failure:
        """Logged; the client gets the gateway's JSON 500 (or a cut-off answer)."""
        channel = self.channel
        log.failure(
            "resource failed on {method} {target}",
            reason,
            method=self.method.decode("latin-1"),
            target=self.uri.decode("latin-1"),
            request_id=channel._request_id().decode("latin-1") if channel is not None else "",
        )
        if channel is not None:
            channel.internal_error()
        return reason

    def connectionLost(self, reason: Failure) -> None:
        channel = self.channel
        self.lost = True
        server.Request.connectionLost(self, reason)
        # Keep the channel (it ignores everything now): a resource that still calls
        # unregisterProducer or loseConnection must not meet None.
        self.channel = channel


@implementer(IPushProducer)
class _PullPusher:
    """A pull producer (``static.File``'s) driven as a push producer: asked for data a few times
    per reactor turn until the client connection pauses it, then again when it resumes."""

    def __init__(self, producer: Any, clock: Any, failed: Any) -> None:
        self._producer = producer
        self._clock = clock
        self._failed = failed
        self._paused = False
        self._call: Any = None

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and self._producer is not None and not self._paused:
            self._call = self._clock.callLater(0, self._pull)

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _pull(self) -> None:
        self._call = None
        for _ in range(_PULLS_PER_TURN):
            producer = self._producer
            if producer is None or self._paused:
                return
            try:
                producer.resumeProducing()
            except Exception:
                self._failed(Failure())
                return
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def detach(self) -> None:
        """Unregistered: no more pulls (the producer is not stopped)."""
        self._producer = None
        self._cancel()

    def stopProducing(self) -> None:
        producer = self._producer
        self.detach()
        if producer is not None:
            producer.stopProducing()
