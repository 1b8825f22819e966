"""gRPC through the gateway (``grpc = true`` routes, ``protocol = "h2c"``/``"h2"`` upstreams): a
real grpcio client, the gateway on this test's reactor, a real grpcio upstream
(:mod:`tests.support.grpc_service`). Every call type, large messages, long streams, deadlines
(the client's, ``grpc-timeout``, the route's), cancellation reaching the upstream, status details
and binary trailers, the gateway's own errors as grpc-status, metrics, the access log and gRPC
health checks.

grpcio has no PyPy build: this module is skipped on PyPy (``importorskip``), nowhere else.

The gateway runs in this process, on the reactor the tests run on, so every blocking grpcio or
socket call is made in a thread (``deferToThread``). Tests marked ``direct`` call the upstream
without the gateway: they prove the test service and helpers themselves."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import pytest

grpc = pytest.importorskip("grpc")

import pytest_twisted  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from avx_twisted.config import GatewayConfig  # noqa: E402
from avx_twisted.service import GatewayService  # noqa: E402
from tests.integration.test_tls_listeners import _tls  # noqa: E402
from tests.support.grpc_service import (  # noqa: E402
    DETAILS,
    HOLD,
    NOTE,
    SERVICE,
    TRACE,
    EchoService,
    EchoStub,
    LateUpstream,
    channel,
    h2_call,
    stream_message,
)
from tests.support.pki import PKI  # noqa: E402
from tests.support.process import free_port  # noqa: E402
from tests.support.servers import http  # noqa: E402

ensure = pytest_twisted.ensureDeferred
T = TypeVar("T")
MiB = 1024 * 1024
API_KEY = "grpc-test-key"
# What grpcio says when it maps a non-gRPC HTTP answer to a status itself (a 401 becomes
# UNAUTHENTICATED, a 502 UNAVAILABLE): the gateway's own refusals must be real grpc-status.
CLIENT_MAPPED = "Received http2 header with status"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call off the reactor (which the in-process gateway needs)."""
    return threads.deferToThread(fn, *args, **kwargs)


async def wait_event(event: threading.Event, timeout: float) -> bool:
    """Whether ``event`` is set within ``timeout`` s, waited for without blocking the reactor."""
    return await in_thread(event.wait, timeout)  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll the coroutine function ``check`` until it returns true (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check.__name__}")
        await deferLater(reactor, 0.1, lambda: None)


# -- the set-up: upstreams, gateways, clients ----------------------------------------------------


class _Closing:
    """A grpcio channel as a ``closer`` item."""

    def __init__(self, chan: Any) -> None:
        self.channel = chan

    def stop(self) -> None:
        self.channel.close()


def serve(closer: Any, pki: PKI | None = None) -> EchoService:
    """A grpcio upstream (TLS with the PKI's ``localhost`` certificate when ``pki`` is given)."""
    return closer.add(EchoService(tls=pki.default if pki is not None else None))  # type: ignore[no-any-return]


def dial(closer: Any, port: int, pki: PKI | None = None) -> EchoStub:
    """A client on 127.0.0.1:``port``: h2c, or TLS verified against the test CA."""
    ca = pki.ca.path.read_bytes() if pki is not None else None
    return EchoStub(closer.add(_Closing(channel(port, ca))).channel)


def grpc_route(*urls: str, protocol: str = "h2c", **extra: Any) -> dict[str, Any]:
    """A ``grpc = true`` route named ``echo`` for ``/test.Echo/*``."""
    upstream = {"urls": list(urls), "protocol": protocol, **extra.pop("upstream", {})}
    return {
        "name": extra.pop("name", "echo"),
        "path": "/test.Echo/*",
        "grpc": True,
        **extra,
        "upstream": upstream,
    }


def tls_upstream_route(up: EchoService, pki: PKI, **extra: Any) -> dict[str, Any]:
    """The route to a TLS upstream: h2 by ALPN, verified against the test CA."""
    return grpc_route(up.url, protocol="h2", upstream={"ca_file": str(pki.ca.path)}, **extra)


class _Stopping:
    """A gateway as a ``closer`` item whose stop is bounded: a gateway that does not stop is a
    teardown error naming it, not a stalled suite."""

    timeout = 15.0

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def stop(self) -> defer.Deferred[Any]:
        result: defer.Deferred[Any] = defer.Deferred()

        def settle(outcome: Any) -> None:
            if not result.called:
                result.callback(outcome)  # a Failure here errbacks

        def give_up() -> None:
            if not result.called:
                result.errback(TimeoutError(f"gateway did not stop in {self.timeout} s"))

        timer = reactor.callLater(self.timeout, give_up)
        defer.maybeDeferred(self.service.stopService).addBoth(settle)
        return result.addBoth(lambda outcome: (timer.active() and timer.cancel(), outcome)[1])


def start(config: dict[str, Any], closer: Any) -> GatewayService:
    """Start a gateway from ``config`` on this reactor, as test_http2 does (stopped by
    ``closer``, within :attr:`_Stopping.timeout`)."""
    service = GatewayService(GatewayConfig.from_dict(config), reactor)
    service.startService()
    closer.add(_Stopping(service))
    return service


class Gateway:
    """A started gateway: ``plain`` (HTTP/1.1, for /metrics and /health), ``h2c`` (cleartext
    ``http2 = true``) and, with a PKI, ``tls`` (h2 by ALPN) ports."""

    def __init__(self, service: Any, tls: bool) -> None:
        self.service = service
        ports = [p.getHost().port for p in service.ports]
        self.plain, self.h2c = ports[0], ports[1]
        self.tls = ports[2] if tls else None

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await http("GET", f"http://127.0.0.1:{self.plain}{path}")
        return response.code, await response.content()


def gateway(
    closer: Any, routes: list[dict[str, Any]], pki: PKI | None = None, **top: Any
) -> Gateway:
    listeners: list[dict[str, Any]] = [{"endpoint": "tcp:0:interface=127.0.0.1", "http2": True}]
    if pki is not None:
        listeners.append({"endpoint": "tcp:0:interface=127.0.0.1", "http2": True, "tls": _tls(pki)})
    server = {
        "listen": ["tcp:0:interface=127.0.0.1"],
        "listeners": listeners,
        "drain_timeout_ms": 1000,  # a test that fails mid-stream does not hold up its teardown
        **top.pop("server", {}),
    }
    return Gateway(start({"server": server, "routes": routes, **top}, closer), pki is not None)


def through(
    via: str, closer: Any, pki: PKI | None = None, **route: Any
) -> tuple[EchoService, EchoStub]:
    """An upstream and a client calling it: ``direct``ly, or through a gateway (``gateway``:
    h2c both sides; ``tls``: TLS downstream and a TLS h2 upstream; ``direct-tls``: TLS, no
    gateway)."""
    tls = via in ("tls", "direct-tls")
    up = serve(closer, pki if tls else None)
    if via.startswith("direct"):
        return up, dial(closer, up.port, pki if tls else None)
    if tls:
        assert pki is not None
        gw = gateway(closer, [tls_upstream_route(up, pki, **route)], pki)
        return up, dial(closer, gw.tls, pki)  # type: ignore[arg-type]
    gw = gateway(closer, [grpc_route(up.url, **route)])
    return up, dial(closer, gw.h2c)


def call_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Make a call that must fail: (its grpc.RpcError, seconds it took)."""
    started = time.monotonic()
    try:
        result = fn(*args, **kwargs)
        if not isinstance(result, bytes):
            result = list(result)
    except grpc.RpcError as error:
        return error, time.monotonic() - started
    raise AssertionError(f"the call succeeded: {result!r:.200}")


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return struct.pack(">BI", 0, len(message)) + message


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the ``name`` samples carrying (at least) ``labels``."""
    return sum(
        v
        for n, have, v in found
        if n == name and all(have.get(k) == want for k, want in labels.items())
    )


# -- self-check: the service and the helpers, without the gateway --------------------------------


def test_service_works_without_the_gateway(pki, tmp_path):
    with EchoService() as up, EchoService(tls=pki.default) as secure:
        for stub in (
            EchoStub(channel(up.port)),
            EchoStub(channel(secure.port, pki.ca.path.read_bytes())),
        ):
            assert stub.Unary(b"ping", timeout=10) == b"ping"
            assert stub.check(timeout=10) == 1  # SERVING
        stub = EchoStub(channel(up.port))
        up.set_serving(False)
        assert stub.check() == 2  # NOT_SERVING
        assert stub.check("") == 1
        up.set_serving(False, "")
        assert stub.check("") == 2
        # A cancelled call is seen cancelled; a completed one is not.
        assert list(stub.SlowStream(b"2 10", timeout=10)) == [b"0", b"1"]
        assert not up.cancelled["SlowStream"].is_set()
        future = stub.Sleep.future(b"20000", timeout=30)
        assert up.started["Sleep"].wait(10)
        future.cancel()
        assert up.cancelled["Sleep"].wait(10)
        # The h2 helper frames a call as grpcio expects and sees a trailers-only answer.
        answer = h2_call(up.port, "Unary", b"raw")
        assert (answer.status, answer.grpc_status, answer.data) == (200, b"0", framed(b"raw"))
        answer = h2_call(up.port, "Sleep", b"3000", [(b"grpc-timeout", b"300m")])
        assert answer.trailers_only and answer.grpc_status == b"4"
        assert up.calls["Unary"] == 2  # the first stub's and the raw one
    late = LateUpstream(0.2)
    try:
        answer = h2_call(late.port, "Sleep", b"1", [(b"grpc-timeout", b"50m")])
        assert (answer.grpc_status, answer.data) == (b"0", framed(b"1"))
        assert late.requests[0][b"grpc-timeout"] == b"50m"
    finally:
        late.stop()


# -- 1. every kind of call, over h2c and over TLS both sides -------------------------------------


def four_calls(stub: EchoStub) -> None:
    assert stub.Unary(b"hello", timeout=10) == b"hello"
    assert list(stub.ServerStream(b"5", timeout=10)) == [b"0", b"1", b"2", b"3", b"4"]
    assert stub.ClientStream(iter([b"ab", b"cde", b""]), timeout=10) == b"3 5"
    assert list(stub.Bidi(iter([b"x", b"yy", b"zzz"]), timeout=10)) == [b"x", b"yy", b"zzz"]


@pytest.mark.parametrize("via", ["direct", "direct-tls", "gateway", "tls"])
@ensure
async def test_unary_server_client_and_bidi_streaming(via, pki, closer):
    up, stub = through(via, closer, pki)
    await in_thread(four_calls, stub)
    assert up.calls == {"Unary": 1, "ServerStream": 1, "ClientStream": 1, "Bidi": 1}


@ensure
async def test_the_upstream_sees_a_grpc_request(closer):
    up, stub = through("gateway", closer)
    assert await in_thread(stub.Unary, b"m", timeout=10, metadata=[("x-custom", "v")]) == b"m"
    ((method, metadata),) = up.metadata
    assert method == "Unary" and metadata["x-custom"] == "v"


# -- 2. and 3. large messages, long streams ------------------------------------------------------


@pytest.mark.parametrize("via", ["direct", "gateway"])
@ensure
async def test_4_mib_messages_both_ways_byte_for_byte(via, closer):
    _, stub = through(via, closer)
    payload = os.urandom(4 * MiB)

    def calls() -> None:
        assert stub.Unary(payload, timeout=60) == payload
        got = list(stub.ServerStream(b"2 %d" % (4 * MiB), timeout=60))
        assert got == [stream_message(0, 4 * MiB), stream_message(1, 4 * MiB)]
        assert stub.ClientStream(iter([payload, payload]), timeout=60) == b"2 %d" % (8 * MiB)
        assert list(stub.Bidi(iter([payload]), timeout=60)) == [payload]

    await in_thread(calls)


@pytest.mark.parametrize("via", ["direct", "gateway"])
@ensure
async def test_ten_thousand_messages_on_one_bidi_stream_in_order(via, closer):
    _, stub = through(via, closer)
    messages = [b"%d" % i for i in range(10_000)]

    def bidi() -> list[bytes]:
        return list(stub.Bidi(iter(messages), timeout=120))

    assert await in_thread(bidi) == messages


# -- 4. deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["direct", "gateway"])
@ensure
async def test_client_deadline_is_deadline_exceeded_without_hanging(via, closer):
    _, stub = through(via, closer)
    error, took = await in_thread(call_error, stub.Sleep, b"5000", timeout=0.5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 0.5 + 0.1 + 0.5  # lenient: it is about not waiting for the upstream


@ensure
async def test_gateway_enforces_grpc_timeout_as_trailers_only_status_4(closer):
    # The upstream answers OK after 3 s whatever the grpc-timeout: only the gateway can cut it.
    late = closer.add(LateUpstream(3.0))
    gw = gateway(closer, [grpc_route(late.url)])
    answer = await in_thread(h2_call, gw.h2c, "Sleep", b"3000", [(b"grpc-timeout", b"300m")])
    assert answer.status == 200
    assert answer.trailers_only, answer
    assert answer.grpc_status == b"4"
    assert answer.elapsed < 2.0  # 300 ms and slack, well before the upstream's 3 s


@ensure
async def test_route_timeout_caps_a_longer_client_deadline(closer):
    _, stub = through("gateway", closer, timeout_ms=300)
    error, took = await in_thread(call_error, stub.Sleep, b"8000", timeout=5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 3.0  # the route's 300 ms, not the client's 5 s


@ensure
async def test_server_timeout_does_not_cut_a_slow_grpc_stream(closer):
    up = serve(closer)
    gw = gateway(closer, [grpc_route(up.url)], server={"timeout_ms": 200})
    stub = dial(closer, gw.h2c)
    # Six messages 300 ms apart: 1.5 s in all, every gap longer than server.timeout_ms.
    got = await in_thread(lambda: list(stub.SlowStream(b"6 300", timeout=30)))
    assert got == [b"0", b"1", b"2", b"3", b"4", b"5"]


# -- 5. cancellation reaches the upstream --------------------------------------------------------


@pytest.mark.parametrize("via", ["direct", "gateway"])
@ensure
async def test_cancelled_sleep_is_cancelled_upstream(via, closer):
    up, stub = through(via, closer)
    future = stub.Sleep.future(b"30000", timeout=60)
    assert await wait_event(up.started["Sleep"], 10)
    future.cancel()
    assert await wait_event(up.cancelled["Sleep"], 5)


@pytest.mark.parametrize("via", ["direct", "gateway"])
@ensure
async def test_cancelled_bidi_is_cancelled_upstream(via, closer):
    up, stub = through(via, closer)
    outgoing: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (message := outgoing.get()) is not None:
            yield message

    call = stub.Bidi(requests(), timeout=60)
    try:
        outgoing.put(HOLD)
        assert await in_thread(next, call) == HOLD
        call.cancel()
        assert await wait_event(up.cancelled["Bidi"], 5)
    finally:
        outgoing.put(None)


# -- 6. status, details and binary trailers pass unchanged ---------------------------------------


@pytest.mark.parametrize("via", ["direct", "gateway", "tls"])
@ensure
async def test_status_details_and_binary_trailers_byte_for_byte(via, pki, closer):
    _, stub = through(via, closer, pki)
    error, _ = await in_thread(call_error, stub.Fail, b"", timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad thing"
    trailers = dict(error.trailing_metadata())
    assert trailers["grpc-status-details-bin"] == DETAILS
    assert trailers["x-trace-bin"] == TRACE
    assert trailers["x-note"] == NOTE


# -- 7., 8. and 9. the gateway's own refusals are grpc-status ------------------------------------


def assert_gateway_status(answer: Any, code: int) -> None:
    """A refusal the gateway made as gRPC: HTTP 200, trailers-only, grpc-status and a message."""
    assert answer.status == 200, answer
    assert answer.trailers_only, answer
    assert answer.grpc_status == b"%d" % code, answer
    assert answer.headers.get(b"content-type", b"").startswith(b"application/grpc"), answer
    assert answer.headers.get(b"grpc-message"), answer


@ensure
async def test_upstream_down_is_unavailable_with_the_gateways_message(closer):
    gw = gateway(closer, [grpc_route(f"http://127.0.0.1:{free_port()}")])
    stub = dial(closer, gw.h2c)
    error, took = await in_thread(call_error, stub.Unary, b"x", timeout=10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() and CLIENT_MAPPED not in error.details()
    assert took < 5.0
    assert_gateway_status(await in_thread(h2_call, gw.h2c, "Unary", b"x"), 14)


@ensure
async def test_missing_api_key_is_unauthenticated_and_the_key_lets_the_call_through(closer):
    up = serve(closer)
    key = {"name": "ci", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}
    gw = gateway(closer, [grpc_route(up.url, auth=["api_key"])], auth={"api_key": {"keys": [key]}})
    stub = dial(closer, gw.h2c)
    error, _ = await in_thread(call_error, stub.Unary, b"x", timeout=10)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert CLIENT_MAPPED not in (error.details() or "")
    wrong = [("x-api-key", "wrong")]
    error, _ = await in_thread(call_error, stub.Unary, b"x", timeout=10, metadata=wrong)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_gateway_status(await in_thread(h2_call, gw.h2c, "Unary", b"x"), 16)
    assert up.calls["Unary"] == 0
    right = [("x-api-key", API_KEY)]
    assert await in_thread(stub.Unary, b"ok", timeout=10, metadata=right) == b"ok"
    assert "x-api-key" not in up.metadata[-1][1]  # the credential stays at the gateway


@ensure
async def test_rate_limited_call_is_resource_exhausted(closer):
    up = serve(closer)
    gw = gateway(
        closer,
        [grpc_route(up.url, rate_limit={"requests_per_second": 0.01, "burst_size": 2})],
        middleware={"enable_rate_limiting": True},
    )
    stub = dial(closer, gw.h2c)
    assert await in_thread(stub.Unary, b"1", timeout=10) == b"1"
    assert await in_thread(stub.Unary, b"2", timeout=10) == b"2"
    error, _ = await in_thread(call_error, stub.Unary, b"3", timeout=10)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_gateway_status(await in_thread(h2_call, gw.h2c, "Unary", b"4"), 8)
    assert up.calls["Unary"] == 2


# -- 10. metrics and the access log --------------------------------------------------------------


@ensure
async def test_metrics_and_access_log_name_the_grpc_service_method_and_status(closer, tmp_path):
    up = serve(closer)
    log = tmp_path / "access.log"
    gw = gateway(closer, [grpc_route(up.url)], logging={"access_log": str(log)})
    stub = dial(closer, gw.h2c)

    def calls() -> None:
        for _ in range(3):
            assert stub.Unary(b"m", timeout=10) == b"m"
        error, _ = call_error(stub.Fail, b"", timeout=10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    await in_thread(calls)
    code, body = await gw.get("/metrics")
    assert code == 200
    found = samples(body.decode())
    grpc_total = "avx_grpc_requests_total"
    labels = {"route": "echo", "grpc_service": SERVICE}
    assert total(found, grpc_total, grpc_method="Unary", grpc_code="OK", **labels) == 3
    assert total(found, grpc_total, grpc_method="Fail", grpc_code="INVALID_ARGUMENT", **labels) == 1
    assert total(found, grpc_total, grpc_method="Fail", grpc_code="OK", **labels) == 0

    writer = gw.service.access_writer
    writer.stop()  # flushes
    gw.service.access_writer = None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in records if r["path"].startswith(f"/{SERVICE}/")]
    seen = [
        (r["path"], r["protocol"], r["grpc_service"], r["grpc_method"], r["grpc_status"])
        for r in records
    ]
    unary = (f"/{SERVICE}/Unary", "HTTP/2.0", SERVICE, "Unary", 0)
    fail = (f"/{SERVICE}/Fail", "HTTP/2.0", SERVICE, "Fail", 3)
    assert seen == [unary, unary, unary, fail]
    assert all(isinstance(r["grpc_status"], int) for r in records)


# -- 11. gRPC health checks ----------------------------------------------------------------------


@ensure
async def test_grpc_health_check_takes_a_not_serving_target_out_and_back(closer):
    a, b = serve(closer), serve(closer)
    b.set_serving(False)
    check = {
        "kind": "grpc",
        "service": SERVICE,
        "interval_ms": 200,
        "timeout_ms": 1000,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    gw = gateway(closer, [grpc_route(a.url, b.url, upstream={"health_check": check})])
    stub = dial(closer, gw.h2c)

    async def health() -> dict[str, bool]:
        _, body = await gw.get("/health")
        (route,) = [r for r in json.loads(body)["routes"] if r["name"] == "echo"]
        return {t["url"]: t["healthy"] for t in route["targets"]}

    async def b_is_out() -> bool:
        return await health() == {a.url: True, b.url: False}

    async def b_is_back() -> bool:
        return await health() == {a.url: True, b.url: True}

    async def unary_calls(n: int) -> None:
        for i in range(n):
            assert await in_thread(stub.Unary, b"%d" % i, timeout=10) == b"%d" % i

    await eventually(b_is_out)
    _, body = await gw.get("/metrics")
    found = samples(body.decode())
    assert total(found, "avx_upstream_healthy", route="echo", upstream=b.url) == 0
    assert total(found, "avx_upstream_healthy", route="echo", upstream=a.url) == 1
    await unary_calls(6)
    assert (a.calls["Unary"], b.calls["Unary"]) == (6, 0)  # health checks are not Echo calls

    b.set_serving(True)
    await eventually(b_is_back)
    await unary_calls(6)
    assert b.calls["Unary"] > 0 and a.calls["Unary"] > 6
