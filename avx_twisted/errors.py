"""The one shape of every error the gateway answers itself:
``{"error": ..., "status": ..., "request_id": ...}``, made here and nowhere else."""

from __future__ import annotations

import json
from typing import Any, Iterable, List, NamedTuple, Optional, Tuple

from . import grpc
from .h1 import reason_phrase

Pair = Tuple[bytes, bytes]

_JSON = (b"Content-Type", b"application/json")
_NO_STORE = (b"Cache-Control", b"no-store")


class Answer(NamedTuple):
    """A whole answer the gateway makes itself (an error, a preflight, a probe)."""

    status: int
    fields: List[Pair]
    body: bytes
    #: An error's message (in its JSON body; a gRPC client gets it as ``grpc-message``).
    message: str = ""

    def send(self, request: Any) -> None:
        """Answer ``request`` (a ServerRequest) with this, in one write. An error to a gRPC
        call goes as gRPC: a trailers-only answer with the matching ``grpc-status``."""
        if self.status >= 400 and grpc.is_call(request.fields):
            code, fields = grpc.answer_fields(self.status, self.fields, self.message)
            ctx = request.context
            if ctx is not None:
                ctx.grpc_status = code
            request.respond(200, fields)
            return
        request.respond(self.status, self.fields, self.body)


#: What a client is told for a refusal of the HTTP core (the log says exactly why).
REFUSALS = {
    400: "bad request",
    408: "request timeout",
    413: "request body too large",
    414: "request-target too long",
    431: "request header fields too large",
    499: "client closed request",
}


def error_body(status: int, message: Optional[str] = None, request_id: bytes = b"") -> bytes:
    """The JSON body for ``status``; ``message`` defaults to the status' reason phrase."""
    if message is None:
        message = reason_phrase(status).decode("ascii").lower()
    payload: dict[str, object] = {"error": message, "status": status}
    if request_id:
        payload["request_id"] = request_id.decode("latin-1")
    return json.dumps(payload).encode() + b"\n"


def error_answer(
    status: int,
    message: Optional[str] = None,
    fields: Iterable[Pair] = (),
    request_id: bytes = b"",
) -> Answer:
    """A gateway-made error: JSON body, not cacheable, plus ``fields``."""
    out = [_JSON, _NO_STORE]
    out.extend(fields)
    if message is None:
        message = reason_phrase(status).decode("ascii").lower()
    return Answer(status, out, error_body(status, message, request_id), message)


def json_answer(status: int, payload: object) -> Answer:
    """A JSON document the gateway answers itself (probes, reports)."""
    return Answer(status, [_JSON, _NO_STORE], json.dumps(payload).encode() + b"\n")
