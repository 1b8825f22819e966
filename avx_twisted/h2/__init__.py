"""The gateway's HTTP/2 core, framed by the ``h2`` library (sans-IO) on the Twisted reactor.

The server side hands streams to the same request handler as HTTP/1.1 requests, as objects
with the same interface (:class:`H2Request`); the client side (:class:`H2Pool`) answers the
forwarder with objects shaped like the HTTP/1.1 core's upstream responses
(:class:`H2Response`), plus trailers. The message types (fields, request body) are the
HTTP/1.1 core's. It imports nothing else of the gateway."""

from ._client import H2ClientProtocol, H2Response, StreamRefused, UpstreamReset
from ._limits import H2ClientLimits, H2Limits
from ._pool import H2Pool
from ._server import PREFACE, H2Request, H2ServerProtocol

__all__ = [
    "PREFACE",
    "H2ClientLimits",
    "H2ClientProtocol",
    "H2Limits",
    "H2Pool",
    "H2Request",
    "H2Response",
    "H2ServerProtocol",
    "StreamRefused",
    "UpstreamReset",
]
