"""The gateway's HTTP/1.1 core: server and upstream client protocols on the Twisted reactor,
parsed by httptools (llhttp). It imports nothing else of the gateway: the request handler, the
error bodies and the clock are handed to it."""

from ._client import ClientProtocol, ClientState, UpstreamClosed, UpstreamResponse
from ._flow import BodyFailed, ProducerProxy, RequestBody
from ._limits import ClientLimits, ServerLimits
from ._message import (
    HOP_BY_HOP,
    Fields,
    IRequestHandler,
    IResponseSink,
    RequestHead,
    ResponseHead,
    connection_tokens,
    split_list,
)
from ._parse import ProtocolViolation, RequestParser, ResponseParser, valid_host
from ._pool import UpstreamPool
from ._serialize import REASONS, BadField, DateCache, head_bytes, reason_phrase, request_line
from ._server import (
    ConnectionState,
    RequestSide,
    ResponseState,
    ServerFactory,
    ServerProtocol,
    ServerRequest,
)
from ._tunnel import Tunnel

__all__ = [
    "HOP_BY_HOP",
    "REASONS",
    "BadField",
    "BodyFailed",
    "ClientLimits",
    "ClientProtocol",
    "ClientState",
    "ConnectionState",
    "DateCache",
    "Fields",
    "IRequestHandler",
    "IResponseSink",
    "ProducerProxy",
    "ProtocolViolation",
    "RequestBody",
    "RequestHead",
    "RequestSide",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "ResponseState",
    "ServerFactory",
    "ServerLimits",
    "ServerProtocol",
    "ServerRequest",
    "Tunnel",
    "UpstreamClosed",
    "UpstreamPool",
    "UpstreamResponse",
    "connection_tokens",
    "head_bytes",
    "reason_phrase",
    "request_line",
    "split_list",
    "valid_host",
]
