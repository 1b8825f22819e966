"""The limits of the HTTP/1.1 core, frozen once per listener and per upstream pool."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Per-connection limits of the server side (sizes in bytes, times in seconds)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_header_fields: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    #: After a refusal: how long further input is read and dropped before the connection ends.
    linger_s: float = 2.0
    #: Pipelined requests queued behind the one being answered before reading pauses.
    max_pipelined: int = 8
    #: Request body bytes buffered before the client is paused (until the upstream takes them).
    body_high_water: int = 64 * 1024


@dataclass(frozen=True)
class ClientLimits:
    """Limits of the upstream side."""

    max_status_line_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 200
    #: Idle connections kept per key, and how long one may sit idle.
    max_idle_per_key: int = 64
    idle_timeout_s: float = 60.0
