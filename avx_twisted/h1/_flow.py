"""Flow control between connections: stoppable producer proxies and the streamed request body."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class ProducerProxy:
    """Stands for a producer until ``detach``; afterwards pausing or resuming does nothing.

    Registered on one connection for the other's transport (as ``_newclient``'s
    ``TransportProxyProducer``): once an exchange is over, it can no longer pause a connection
    that went back to the pool or on to another request.
    """

    __slots__ = ("_producer", "paused")

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.paused = False

    def detach(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None and self.paused:
            self.paused = False
            producer.resumeProducing()

    def pauseProducing(self) -> None:
        if self._producer is not None and not self.paused:
            self.paused = True
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self._producer is not None and self.paused:
            self.paused = False
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()


class BodyFailed(Exception):
    """The request body ended badly: ``status`` says how (400 framing, 408, 413, 499 gone)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@implementer(IPushProducer)
class RequestBody:
    """A request body as it arrives, handed to one consumer (an upstream connection).

    Until a consumer attaches, up to ``high_water`` bytes are buffered, then the client is
    paused. Once attached, bytes go through as they arrive; the consumer's transport pauses the
    client through this producer. A body that arrived whole while buffered can be sent again
    (a retry on another target); one that was streamed cannot (``replayable``).

    The consumer provides ``write(data)``, ``finish()`` and ``fail(BodyFailed)``.
    """

    def __init__(
        self,
        declared: Optional[int],
        chunked: bool,
        high_water: int,
        pause: Callable[[], None],
        resume: Callable[[], None],
        wanted: Callable[[], None],
    ) -> None:
        #: Content-Length, or None for chunked (or no body).
        self.declared = declared
        self.chunked = chunked
        self.received = 0
        self.complete = not chunked and not declared
        self.failure: Optional[BodyFailed] = None
        #: The route's own cap (a chunked body crossing it fails with 413).
        self.limit: Optional[int] = None
        self._high_water = high_water
        self._pause = pause
        self._resume = resume
        self._wanted = wanted
        self._chunks: List[bytes] = []
        self._streamed = False
        self._consumer: Any = None
        self._source_paused = False
        self._consumer_paused = False

    @property
    def present(self) -> bool:
        """The request declared a body (any length, chunked included)."""
        return self.chunked or self.declared is not None

    @property
    def replayable(self) -> bool:
        return not self._streamed

    def buffered(self) -> Optional[bytes]:
        """The whole body if it is here already (sent with the head in one write), else None."""
        if self.complete and not self._streamed and self.failure is None:
            return b"".join(self._chunks)
        return None

    # -- from the server protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.fail(BodyFailed(413, "request body too large"))
            return
        consumer = self._consumer
        if consumer is not None and self._streamed:
            consumer.write(data)
            return
        self._chunks.append(data)
        if self.received > self._high_water and not self._source_paused:
            self._source_paused = True
            self._pause()

    def data_done(self) -> None:
        self.complete = True
        consumer = self._consumer
        if consumer is not None and self._streamed:
            self._consumer = None
            consumer.finish()

    def fail(self, failure: BodyFailed) -> None:
        if self.complete or self.failure is not None:
            return
        self.failure = failure
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.fail(failure)

    # -- for the consumer --------------------------------------------------------------------

    def attach(self, consumer: Any) -> None:
        """Send the body to ``consumer`` (a retry attaches again; see ``replayable``)."""
        if self.failure is not None:
            consumer.fail(self.failure)
            return
        if self.complete:
            if self._chunks and not self._streamed:
                consumer.write(b"".join(self._chunks))
            consumer.finish()
            return
        self._consumer = consumer
        self._streamed = True
        chunks, self._chunks = self._chunks, []
        self._wanted()
        for data in chunks:
            consumer.write(data)
        if self._source_paused and not self._consumer_paused:
            self._source_paused = False
            self._resume()

    def detach(self) -> None:
        """The consumer is gone (its exchange ended): stop feeding it."""
        self._consumer = None
        if self._consumer_paused:
            self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._consumer_paused:
            self._consumer_paused = True
            if not self._source_paused:
                self._source_paused = True
                self._pause()

    def resumeProducing(self) -> None:
        if self._consumer_paused:
            self._consumer_paused = False
            if self._source_paused:
                self._source_paused = False
                self._resume()

    def stopProducing(self) -> None:
        self._consumer = None
