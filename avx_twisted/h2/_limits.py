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


@dataclass(frozen=True)
class H2ClientLimits:
    """Limits of the upstream HTTP/2 side (sizes in bytes, times in seconds)."""

    #: Streams opened at once on one upstream connection, at most (the peer's
    #: SETTINGS_MAX_CONCURRENT_STREAMS lowers it); beyond: another connection.
    max_concurrent_streams: int = 100
    #: Connections per target, at most; beyond, requests wait for a stream to free.
    max_connections_per_key: int = 16
    #: SETTINGS_MAX_HEADER_LIST_SIZE advertised to upstreams (response heads and trailers).
    max_header_list_bytes: int = 65536
    #: The stream window advertised (SETTINGS_INITIAL_WINDOW_SIZE) and the connection's.
    stream_window: int = 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    #: Request body bytes queued on one stream beyond its window before the client is paused.
    body_high_water: int = 64 * 1024
    #: A connection with no stream this long is sent a PING, which must be answered within
    #: ``ping_timeout_s`` (else it is closed: a dead peer is found before a request needs it).
    ping_interval_s: float = 15.0
    ping_timeout_s: float = 5.0
    #: A connection with no stream this long is closed (GOAWAY).
    idle_timeout_s: float = 60.0
    #: A closing connection still open after this long is aborted (a TLS peer that never
    #: answers close_notify).
    close_timeout_s: float = 2.0
