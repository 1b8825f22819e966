"""A real grpcio upstream for the gRPC integration tests: service ``test.Echo`` on generic
handlers with bytes in and out (no protoc, no generated code), the standard health service whose
answers a test sets, and what the server saw (calls, metadata, cancellations) for assertions.

Every call here blocks: a test whose gateway runs on its own reactor makes them in a thread
(``twisted.internet.threads.deferToThread``). Needs grpcio, which has no PyPy build."""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)

from tests.support.pki import Issued

__all__ = [
    "DETAILS",
    "HOLD",
    "MAX_MESSAGE",
    "NOTE",
    "OPTIONS",
    "SERVICE",
    "TRACE",
    "EchoService",
    "EchoStub",
    "H2Answer",
    "LateUpstream",
    "channel",
    "h2_call",
    "stream_message",
]

SERVICE = "test.Echo"
MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

# ``Fail``'s trailers. DETAILS is a serialized google.rpc.Status (code 3, "bad thing", one Any
# detail whose value holds NUL and 0xff bytes), hand-encoded so no proto package is needed.
_DETAIL_VALUE = b"\x00\xff\x01binary\xfe"
_ANY = b"\x0a\x0ctest.Details" + b"\x12" + bytes([len(_DETAIL_VALUE)]) + _DETAIL_VALUE
DETAILS = b"\x08\x03" + b"\x12\x09bad thing" + b"\x1a" + bytes([len(_ANY)]) + _ANY
TRACE = b"\x00\x01trace\xfe\xff"
NOTE = "a plain note"
HOLD = b"hold"  # ``Bidi``: keep the call open after the requests end, until it is cancelled

# Methods that run long enough to be cancelled; each has a ``started`` and ``cancelled`` event.
_WATCHED = ("ServerStream", "ClientStream", "Bidi", "Sleep", "SlowStream")


def stream_message(index: int, size: int = 0) -> bytes:
    """Message ``index`` of ``ServerStream``: its ascii number, or ``size`` bytes derived from
    the index (so a client can check every byte)."""
    if size == 0:
        return b"%d" % index
    return random.Random(index).randbytes(size)


def _ints(request: bytes) -> list[int]:
    return [int(part) for part in request.split()]


class EchoService:
    """``test.Echo`` and ``grpc.health.v1.Health`` on a grpcio server on 127.0.0.1 (an
    ephemeral port, TLS when ``tls`` is given). A context manager; ``stop()`` suits ``closer``.

    Methods (requests and responses are raw bytes):

    - ``Unary``: echoes the request.
    - ``ServerStream``: request ``b"COUNT"`` or ``b"COUNT SIZE"``; streams COUNT messages,
      message i being :func:`stream_message` ``(i, SIZE)``.
    - ``ClientStream``: answers ``b"COUNT TOTAL_BYTES"`` of what it received.
    - ``Bidi``: echoes each message as it arrives. After a :data:`HOLD` message it does not end
      with the requests but waits to be cancelled: grpcio's server may see a cancelled stream as
      the requests' end first, and a handler that then completes never counts as cancelled.
    - ``Sleep``: request ``b"MS"``; sleeps that long (noticing cancellation), answers ``b"slept"``.
    - ``SlowStream``: request ``b"COUNT GAP_MS"``; COUNT messages (``b"0"``, ``b"1"``, ...), the
      first at once, then one every GAP_MS.
    - ``Fail``: INVALID_ARGUMENT, details ``"bad thing"``, trailers ``grpc-status-details-bin``
      (:data:`DETAILS`), ``x-trace-bin`` (:data:`TRACE`) and ``x-note`` (:data:`NOTE`).
    """

    def __init__(self, tls: Issued | None = None, max_workers: int = 32) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.metadata: list[tuple[str, dict[str, Any]]] = []
        self.started = {name: threading.Event() for name in _WATCHED}
        self.cancelled = {name: threading.Event() for name in _WATCHED}
        self._lock = threading.Lock()
        self.health = health.HealthServicer()
        self._executor = futures.ThreadPoolExecutor(max_workers=max_workers)
        self.server = grpc.server(self._executor, options=[*OPTIONS, ("grpc.so_reuseport", 0)])
        handlers: dict[str, grpc.RpcMethodHandler] = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(self._sleep),
            "SlowStream": grpc.unary_stream_rpc_method_handler(self._slow_stream),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.set_serving(True, "")
        self.set_serving(True)
        address = "127.0.0.1:0"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.key.read_bytes(), tls.cert.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        if not self.port:
            raise RuntimeError("grpc server could not bind 127.0.0.1:0")
        self.tls = tls
        scheme = "https://localhost" if tls is not None else "http://127.0.0.1"
        self.url = f"{scheme}:{self.port}"
        self.server.start()

    # -- control and observation ----------------------------------------------------------------

    def set_serving(self, serving: bool, service: str = SERVICE) -> None:
        """What ``Health/Check`` answers for ``service`` (``""``: the whole server)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(service, status)

    def stop(self) -> None:
        """Cancel what is in flight and close the port (without waiting for handler threads)."""
        self.server.stop(grace=None).wait(5)
        self._executor.shutdown(wait=False)

    def __enter__(self) -> EchoService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping ----------------------------------------------------------------------------

    def _enter(self, name: str, context: grpc.ServicerContext) -> Callable[[], None]:
        """Count the call and watch it; returns ``done()``, to call when the handler completes.
        An RPC that terminates before ``done()`` (client cancel, deadline, connection reset)
        sets ``cancelled[name]``."""
        with self._lock:
            self.calls[name] += 1
            self.metadata.append((name, dict(context.invocation_metadata())))
        finished = threading.Event()
        if name in _WATCHED:

            def terminated() -> None:
                if not finished.is_set():
                    self.cancelled[name].set()

            context.add_callback(terminated)
            self.started[name].set()
        return finished.set

    # -- the methods ----------------------------------------------------------------------------

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Unary", context)()
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        done = self._enter("ServerStream", context)
        count, *size = _ints(request)
        for index in range(count):
            if not context.is_active():
                return
            yield stream_message(index, size[0] if size else 0)
        done()

    def _client_stream(self, requests: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        done = self._enter("ClientStream", context)
        count = total = 0
        for message in requests:
            count += 1
            total += len(message)
        done()
        return b"%d %d" % (count, total)

    def _bidi(self, requests: Iterable[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        done = self._enter("Bidi", context)
        hold = False
        for message in requests:
            hold = hold or message == HOLD
            yield message
        if hold:  # stay open until the call is cancelled (or a minute passes)
            until = time.monotonic() + 60
            while context.is_active() and time.monotonic() < until:
                time.sleep(0.01)
        if context.is_active():
            done()

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        done = self._enter("Sleep", context)
        until = time.monotonic() + int(request) / 1000
        while time.monotonic() < until:
            if not context.is_active():
                return b""  # nobody is listening any more
            time.sleep(0.01)
        done()
        return b"slept"

    def _slow_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        done = self._enter("SlowStream", context)
        count, gap_ms = _ints(request)
        for index in range(count):
            if index:
                until = time.monotonic() + gap_ms / 1000
                while time.monotonic() < until:
                    if not context.is_active():
                        return
                    time.sleep(0.01)
            yield b"%d" % index
        done()

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Fail", context)()
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", DETAILS),
                ("x-trace-bin", TRACE),
                ("x-note", NOTE),
            )
        )
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
        raise AssertionError("abort returned")  # pragma: no cover


class EchoStub:
    """Client callables for every ``test.Echo`` method (bytes in and out) and the health
    service's ``Check``, on ``channel``."""

    def __init__(self, channel: grpc.Channel) -> None:
        def path(method: str) -> str:
            return f"/{SERVICE}/{method}"

        self.Unary = channel.unary_unary(path("Unary"))
        self.ServerStream = channel.unary_stream(path("ServerStream"))
        self.ClientStream = channel.stream_unary(path("ClientStream"))
        self.Bidi = channel.stream_stream(path("Bidi"))
        self.Sleep = channel.unary_unary(path("Sleep"))
        self.SlowStream = channel.unary_stream(path("SlowStream"))
        self.Fail = channel.unary_unary(path("Fail"))
        self.health = health_pb2_grpc.HealthStub(channel)

    def check(self, service: str = SERVICE, timeout: float = 5) -> int:
        """``Health/Check`` for ``service``: a ``HealthCheckResponse`` status number."""
        request = health_pb2.HealthCheckRequest(service=service)
        return self.health.Check(request, timeout=timeout).status  # type: ignore[no-any-return]


def channel(port: int, ca: bytes | None = None, name: str = "localhost") -> grpc.Channel:
    """A channel to 127.0.0.1:``port`` with 16 MiB message limits: cleartext (h2c with prior
    knowledge), or TLS verified against ``ca`` (PEM) for the certificate name ``name``."""
    target = f"127.0.0.1:{port}"
    if ca is None:
        return grpc.insecure_channel(target, options=OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    options = [*OPTIONS, ("grpc.ssl_target_name_override", name)]
    return grpc.secure_channel(target, credentials, options=options)


@dataclass
class H2Answer:
    """One gRPC call's answer as the h2 library saw it on the wire."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    trailers_only: bool = False  # one HEADERS frame with END_STREAM, nothing else
    reset: int | None = None  # the RST_STREAM error code, if the stream was reset
    elapsed: float = 0.0

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def grpc_status(self) -> bytes | None:
        """``grpc-status`` from the trailers (or the only HEADERS frame)."""
        return (self.trailers or self.headers).get(b"grpc-status")


def h2_call(
    port: int,
    method: str,
    message: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    timeout: float = 15,
) -> H2Answer:
    """One unary gRPC call to ``/test.Echo/<method>`` on 127.0.0.1:``port`` by the h2 library
    over a plain socket (h2c, prior knowledge): no client-side deadline, every header as given
    (``grpc-timeout`` included), the answer as framed."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:%d" % port),
            (b":path", f"/{SERVICE}/{method}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *headers,
        ],
    )
    conn.send_data(stream, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
    answer = H2Answer()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no end of stream in {timeout} s")
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the end of the stream")
            for event in conn.receive_data(data):
                if getattr(event, "stream_id", stream) != stream:
                    continue
                if isinstance(event, ResponseReceived):
                    answer.headers = dict(event.headers)
                    answer.trailers_only = event.stream_ended is not None
                elif isinstance(event, DataReceived):
                    answer.data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, TrailersReceived):
                    answer.trailers = dict(event.headers)
                elif isinstance(event, StreamReset):
                    answer.reset = event.error_code
                    ended = True
                elif isinstance(event, StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    answer.elapsed = time.monotonic() - started
    return answer


class LateUpstream:
    """A gRPC upstream that ignores deadlines: an h2c server (the h2 library, one thread per
    connection) answering every call ``delay`` seconds after its request ended, with status OK
    and the request's message echoed. What the gateway alone enforces shows against it.
    ``requests`` holds each request's headers; ``resets`` counts streams the peer reset."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests: list[dict[bytes, bytes]] = []
        self.resets = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopped.set()
        self._acceptor.join(5)
        self._listener.close()

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # closing a socket does not wake a blocked accept()
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        bodies: dict[int, bytes] = {}
        due: dict[int, float] = {}
        sock.settimeout(0.02)
        with sock:
            sock.sendall(conn.data_to_send())
            while not self._stopped.is_set():
                try:
                    data = sock.recv(65536)
                    if not data:
                        return
                except socket.timeout:
                    data = b""
                except OSError:
                    return
                for event in conn.receive_data(data) if data else ():
                    if isinstance(event, RequestReceived):
                        self.requests.append(dict(event.headers))
                        bodies[event.stream_id] = b""
                    elif isinstance(event, DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, StreamEnded):
                        due[event.stream_id] = time.monotonic() + self.delay
                    elif isinstance(event, StreamReset):
                        self.resets += 1
                        due.pop(event.stream_id, None)
                    elif isinstance(event, ConnectionTerminated):
                        return
                for stream in [s for s, when in due.items() if when <= time.monotonic()]:
                    del due[stream]
                    conn.send_headers(
                        stream, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                    )
                    conn.send_data(stream, bodies.pop(stream))
                    conn.send_headers(stream, [(b"grpc-status", b"0")], end_stream=True)
                try:
                    sock.sendall(conn.data_to_send())
                except OSError:
                    return
