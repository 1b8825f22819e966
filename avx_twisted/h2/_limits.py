"""The limits of the HTTP/2 core (``[server.http2]``), frozen once per listener."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class H2Limits:
    """Per-connection limits of the HTTP/2 server side (sizes in bytes, times in seconds)."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS advertised (and enforced by the h2 library).
    max_concurrent_streams: int = 100
    #: SETTINGS_MAX_HEADER_LIST_SIZE advertised: the HPACK-decoded header list of a request.
    max_header_list_bytes: int = 65536
    #: A stream with no frames either way this long is reset.
    stream_idle_timeout_s: float = 300.0
    #: A connection with no open stream this long gets GOAWAY.
    idle_timeout_s: float = 600.0
    #: Streams a client may reset before it must have let at least half as many finish
    #: (Rapid Reset, CVE-2023-44487); beyond: GOAWAY ENHANCE_YOUR_CALM.
    max_resets: int = 100
    #: PING and SETTINGS frames a client may send per second (floods: GOAWAY).
    max_control_frames_per_s: int = 100
