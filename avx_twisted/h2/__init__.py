"""The gateway's HTTP/2 core: the server protocol on the Twisted reactor, framed by the ``h2``
library (sans-IO). Streams are handed to the same request handler as HTTP/1.1 requests, as
objects with the same interface (:class:`H2Request`); the message types (fields, request body)
are the HTTP/1.1 core's. It imports nothing else of the gateway."""

from ._limits import H2Limits
from ._server import PREFACE, H2Request, H2ServerProtocol

__all__ = ["PREFACE", "H2Limits", "H2Request", "H2ServerProtocol"]
