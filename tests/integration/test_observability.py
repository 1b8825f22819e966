"""Metrics, access logs and request IDs, asserted exactly through a real gateway."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from avx_twisted._version import __version__
from avx_twisted.demo import EchoResource
from tests.support.process import free_port
from tests.support.servers import FnResource, echo_json, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred
KEY = "observability-key"


def full_config(up_url: str, dead_url: str, access_log: str, fmt: str = "json") -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [
            {
                "name": "users",
                "path": "/users/*",
                "methods": ["GET", "POST"],
                "upstream": {"urls": [up_url]},
            },
            {
                "name": "private",
                "path": "/private/*",
                "auth": ["api_key"],
                "upstream": {"urls": [up_url]},
            },
            {
                "name": "limited",
                "path": "/limited/*",
                "rate_limit": {"requests_per_second": 0.01, "burst_size": 1},
                "upstream": {"urls": [up_url]},
            },
            {"name": "broken", "path": "/broken/*", "upstream": {"urls": [dead_url]}},
        ],
        "middleware": {"enable_rate_limiting": True},
        "rate_limiting": {"requests_per_second": 1000, "burst_size": 1000},
        "auth": {
            "api_key": {
                "keys": [{"name": "ci", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]
            }
        },
        "logging": {"format": fmt, "access_log": access_log},
    }


async def call(gw, method, path, **kw):
    response = await http(method, f"http://127.0.0.1:{gw.port}{path}", **kw)
    return response, await response.content()


async def known_mix(gw):
    """3x GET 200 users, 1 POST 200 users, 1 404, 1 405, 1 401 + 1 200 private,
    1 200 + 1 429 limited, 1 502 broken."""
    for _ in range(3):
        assert (await call(gw, "GET", "/users/1"))[0].code == 200
    assert (await call(gw, "POST", "/users/1", data=b"12345"))[0].code == 200
    assert (await call(gw, "GET", "/nowhere"))[0].code == 404
    assert (await call(gw, "DELETE", "/users/1"))[0].code == 405
    assert (await call(gw, "GET", "/private/x"))[0].code == 401
    assert (await call(gw, "GET", "/private/x", headers={"X-API-Key": KEY}))[0].code == 200
    assert (await call(gw, "GET", "/limited/x"))[0].code == 200
    assert (await call(gw, "GET", "/limited/x"))[0].code == 429
    assert (await call(gw, "GET", "/broken/x"))[0].code == 502


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(s, name, **labels):
    return s.get((name, tuple(sorted(labels.items()))))


@ensure
async def test_metrics_count_a_known_mix_exactly(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    dead = f"http://127.0.0.1:{free_port()}"
    gw = closer.add(gateway(full_config(up.url, dead, str(tmp_path / "access.log"))))
    await known_mix(gw)
    response, body = await call(gw, "GET", "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    s = samples(body.decode())
    req = "avx_requests_total"
    assert value(s, req, route="users", method="GET", status="200") == 3
    assert value(s, req, route="users", method="POST", status="200") == 1
    assert value(s, req, route="unmatched", method="GET", status="404") == 1
    assert value(s, req, route="unmatched", method="DELETE", status="405") == 1
    assert value(s, req, route="private", method="GET", status="401") == 1
    assert value(s, req, route="private", method="GET", status="200") == 1
    assert value(s, req, route="limited", method="GET", status="429") == 1
    assert value(s, req, route="broken", method="GET", status="502") == 1
    duration = "avx_request_duration_seconds"
    assert value(s, f"{duration}_count", route="users", method="GET", status_class="2xx") == 3
    assert value(s, f"{duration}_count", route="users", method="POST", status_class="2xx") == 1
    assert value(s, f"{duration}_count", route="limited", method="GET", status_class="4xx") == 1
    assert value(s, f"{duration}_count", route="broken", method="GET", status_class="5xx") == 1
    up_req = "avx_upstream_requests_total"
    assert value(s, up_req, route="users", upstream=up.url, status="200") == 4
    assert value(s, up_req, route="broken", upstream=dead, status="0") == 1
    up_duration = "avx_upstream_duration_seconds_count"
    assert (
        value(s, up_duration, route="users", upstream=up.url, method="GET", status_class="2xx") == 3
    )
    assert (
        value(s, up_duration, route="users", upstream=up.url, method="POST", status_class="2xx")
        == 1
    )
    assert (
        value(s, up_duration, route="broken", upstream=dead, method="GET", status_class="none") == 1
    )
    assert value(s, "avx_request_bytes_total", route="users") == 5
    assert value(s, "avx_response_bytes_total", route="users") > 0
    assert value(s, "avx_rate_limited_total", route="limited") == 1
    assert value(s, "avx_auth_failures_total", route="private", reason="missing") == 1
    assert value(s, "avx_upstream_healthy", route="users", upstream=up.url) == 1
    assert value(s, "avx_circuit_state", route="broken", upstream=dead) == 0
    assert value(s, "avx_requests_in_flight") == 0
    # The scrape's own connection.
    assert value(s, "avx_open_connections", protocol="http/1.1") == 1
    assert value(s, "avx_open_connections", protocol="h2") == 0
    assert value(s, "process_resident_memory_bytes") > 0
    # Buckets run from 0.5 ms to 30 s.
    get_200 = {"route": "users", "method": "GET", "status_class": "2xx"}
    assert value(s, f"{duration}_bucket", le="0.0005", **get_200) is not None
    assert value(s, f"{duration}_bucket", le="30.0", **get_200) == 3
    # No _created series (they double the series count for a value nobody graphs).
    assert not [name for name, _ in s if name.endswith("_created")]
    assert (
        value(
            s,
            "avx_build_info",
            version=__version__,
            python=platform.python_version(),
            implementation=platform.python_implementation(),
        )
        == 1
    )
    assert value(s, "avx_config_reloads_total", result="success") == 0
    assert value(s, "avx_config_last_reload_successful") == 1
    assert value(s, "avx_config_last_reload_success_timestamp_seconds") > 1.7e9
    # Labels come from config, never from raw paths.
    assert "/users/1" not in body.decode()


@ensure
async def test_circuit_state_gauge_follows_the_breaker(closer):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {
                        "name": "r",
                        "path": "/*",
                        "upstream": {"urls": [dead], "circuit_breaker": {"failure_threshold": 1}},
                    }
                ],
            }
        )
    )
    await call(gw, "GET", "/x")
    s = samples((await call(gw, "GET", "/metrics"))[1].decode())
    assert value(s, "avx_circuit_state", route="r", upstream=dead) == 2


@ensure
async def test_metrics_off_means_no_endpoint(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "middleware": {"enable_metrics": False},
                "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
            }
        )
    )
    response, body = await call(gw, "GET", "/metrics")
    assert echo_json(body)["uri"] == "/metrics"  # proxied like any path


@ensure
async def test_json_access_log_has_one_line_per_request_with_every_field(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    dead = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "access.log"
    gw = gateway(full_config(up.url, dead, str(log_path)))
    port = gw.port
    await known_mix(gw)
    await call(gw, "GET", "/healthz")  # probes are not access-logged
    await gw.stopService()  # flushes the writer
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 11
    first = lines[0]
    assert list(first) == [
        "time",
        "request_id",
        "client_ip",
        "method",
        "host",
        "path",
        "protocol",
        "status",
        "route",
        "upstream",
        "upstream_status",
        "request_bytes",
        "response_bytes",
        "duration_ms",
        "upstream_duration_ms",
        "retries",
        "user",
        "user_agent",
        "referer",
        "trace_id",
        "span_id",
        "error",
        "tls_version",
        "client_cert_subject",
        "client_cert_sha256",
        "grpc_service",
        "grpc_method",
        "grpc_status",
        "cache",
        "graphql",
    ]
    assert first["host"] == f"127.0.0.1:{port}" and first["protocol"] == "HTTP/1.1"
    assert first["upstream_status"] == 200 and first["retries"] == 0
    assert first["error"] is None and first["trace_id"] is None
    assert first["tls_version"] is None and first["client_cert_sha256"] is None  # cleartext
    assert first["grpc_status"] is None  # not a gRPC call
    assert first["method"] == "GET" and first["path"] == "/users/1"
    assert first["route"] == "users" and first["upstream"] == up.url
    assert first["status"] == 200 and first["client_ip"] == "127.0.0.1"
    assert first["response_bytes"] > 0 and first["duration_ms"] >= first["upstream_duration_ms"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"])
    assert lines[3]["request_bytes"] == 5
    assert [line["status"] for line in lines] == [
        200,
        200,
        200,
        200,
        404,
        405,
        401,
        200,
        200,
        429,
        502,
    ]
    assert lines[4]["route"] == "unmatched" and lines[4]["upstream"] is None
    assert lines[7]["user"] == "ci" and lines[6]["user"] is None
    assert lines[10]["upstream"] == dead and lines[10]["upstream_duration_ms"] is not None
    assert lines[10]["upstream_status"] is None and lines[10]["error"] == "upstream unavailable"
    assert lines[4]["error"] == "no route matches this path"
    assert lines[6]["upstream_status"] is None


@ensure
async def test_access_log_sampling_keeps_errors_and_skips_paths(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    log_path = tmp_path / "access.log"
    gw = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [{"name": "api", "path": "/api/*", "upstream": {"urls": [up.url]}}],
            "logging": {
                "access_log": str(log_path),
                "sample_ratio": 0.0,
                "skip_paths": ["/api/skipped", "/gone"],
            },
        }
    )
    for _ in range(5):  # successful requests are sampled at 0: none is logged
        assert (await call(gw, "GET", "/api/ok"))[0].code == 200
    assert (await call(gw, "GET", "/nowhere"))[0].code == 404  # errors always are
    assert (await call(gw, "GET", "/gone"))[0].code == 404  # unless their path is skipped
    assert (await call(gw, "GET", "/api/skipped"))[0].code == 200
    _, body = await call(gw, "GET", "/metrics")
    await gw.stopService()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("/nowhere", 404)]
    # Sampling and skipping are for the log only: every request is counted.
    s = samples(body.decode())
    assert value(s, "avx_requests_total", route="api", method="GET", status="200") == 6
    assert value(s, "avx_requests_total", route="unmatched", method="GET", status="404") == 2


@ensure
async def test_access_log_retry_count_and_trace_id(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    dead = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "access.log"
    gw = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [
                {
                    "name": "retried",
                    "path": "/*",
                    "retries": 1,
                    "upstream": {"urls": [dead, up.url]},
                }
            ],
            "logging": {"access_log": str(log_path)},
        }
    )
    trace = "0af7651916cd43dd8448eb211c80319c"
    for _ in range(2):  # round robin: one of the two starts on the dead target
        response, _ = await call(
            gw,
            "GET",
            "/x",
            headers={
                "traceparent": f"00-{trace}-b7ad6b7169203331-01",
                "Referer": "https://app.example/",
                "User-Agent": "probe/2",
            },
        )
        assert response.code == 200
    await gw.stopService()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(line["retries"] for line in lines) == [0, 1]
    for line in lines:
        assert line["trace_id"] == trace
        assert line["referer"] == "https://app.example/" and line["user_agent"] == "probe/2"
        assert line["upstream"] == up.url and line["upstream_status"] == 200


@ensure
async def test_text_access_log_is_combined_log_style(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    log_path = tmp_path / "access.log"
    gw = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [{"name": "all", "path": "/*", "upstream": {"urls": [up.url]}}],
            "logging": {"format": "text", "access_log": str(log_path)},
        }
    )
    await call(
        gw, "GET", "/a/b?secret=1", headers={"User-Agent": "probe/1", "X-Request-ID": "abc-123"}
    )
    await gw.stopService()
    line = log_path.read_text().strip()
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /a/b HTTP/1\.1" 200 '
        r'\d+ "-" "probe/1" rt=\d+\.\d{3} urt=\d+\.\d{3} route=all '
        + re.escape(f"upstream={up.url}")
        + r" rid=abc-123",
        line,
    ), line


@ensure
async def test_logging_off_writes_nothing(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    log_path = tmp_path / "access.log"
    gw = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "middleware": {"enable_logging": False},
            "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
            "logging": {"access_log": str(log_path)},
        }
    )
    await call(gw, "GET", "/x")
    await gw.stopService()
    assert not log_path.exists()


@ensure
async def test_request_id_round_trip_through_a_real_upstream(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
                "middleware": {"enable_logging": False},
            }
        )
    )
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response, _ = await call(
        gw,
        "GET",
        "/x",
        headers={
            "X-Request-ID": "client-id-42",
            "traceparent": trace,
            "tracestate": "congo=t61rcWkgMzE",
        },
    )
    assert response.headers.getRawHeaders(b"x-request-id") == [b"client-id-42"]
    upstream_headers = seen.seen[-1]["headers"]
    assert upstream_headers.getRawHeaders(b"x-request-id") == [b"client-id-42"]
    assert upstream_headers.getRawHeaders(b"traceparent") == [trace.encode()]
    assert upstream_headers.getRawHeaders(b"tracestate") == [b"congo=t61rcWkgMzE"]

    for bad in ("x" * 200, "has space", 'quote"s'):
        response, _ = await call(gw, "GET", "/x", headers={"X-Request-ID": bad})
        rid = response.headers.getRawHeaders(b"x-request-id")[0]
        assert re.fullmatch(rb"[0-9a-f]{32}", rid), bad
        assert seen.seen[-1]["headers"].getRawHeaders(b"x-request-id") == [rid]

    response, _ = await call(gw, "GET", "/x")
    generated = response.headers.getRawHeaders(b"x-request-id")[0]
    assert re.fullmatch(rb"[0-9a-f]{32}", generated)


@ensure
async def test_gateway_errors_carry_the_request_id_too(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [{"path": "/api/*", "upstream": {"urls": [up.url]}}],
                "middleware": {"enable_logging": False},
            }
        )
    )
    response, _ = await call(gw, "GET", "/nope", headers={"X-Request-ID": "r-1"})
    assert response.code == 404
    assert response.headers.getRawHeaders(b"x-request-id") == [b"r-1"]


@ensure
async def test_client_header_timeout_comes_from_config(closer):
    from tests.support.servers import raw_request

    up = closer.add(upstream(EchoResource("svc")))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0, "client_header_timeout_ms": 200},
                "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
                "middleware": {"enable_logging": False},
            }
        )
    )
    data = await raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\n", timeout=3)
    assert data.startswith(b"HTTP/1.1 408")


@ensure
async def test_in_flight_gauge_counts_requests_being_answered(closer):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.web.server import NOT_DONE_YET

    held = []

    def hold(request):
        held.append(request)
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(hold)))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
                "middleware": {"enable_logging": False},
            }
        )
    )
    pending = http("GET", f"http://127.0.0.1:{gw.port}/slow")
    while not held:
        await deferLater(reactor, 0.02, lambda: None)
    s = samples((await call(gw, "GET", "/metrics"))[1].decode())
    assert value(s, "avx_requests_in_flight") == 1
    held[0].write(b"done")
    held[0].finish()
    await (await pending).content()
    s = samples((await call(gw, "GET", "/metrics"))[1].decode())
    assert value(s, "avx_requests_in_flight") == 0


@ensure
async def test_access_log_records_that_cannot_be_written_are_counted(tmp_path, closer):
    """The access log is a named pipe whose reader (a log shipper) went away: every write fails
    (EPIPE), the requests are answered all the same, and each record lost is counted in
    avx_access_log_dropped_total. The reader comes back before the gateway stops."""
    fifo = tmp_path / "access.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        up = closer.add(upstream(EchoResource("svc")))
        gw = closer.add(
            gateway(
                {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
                    "logging": {"access_log": str(fifo)},
                }
            )
        )
        assert (await call(gw, "GET", "/written"))[0].code == 200
        assert b'"path":"/written"' in await read_some(reader)
        os.close(reader)  # the shipper is gone
        reader = -1
        for _ in range(3):
            assert (await call(gw, "GET", "/lost"))[0].code == 200
        dropped = await dropped_records(gw, at_least=3)
        # The three requests, and the scrapes before the last one (each has its record).
        assert dropped >= 3
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # back before the gateway stops
        assert (await call(gw, "GET", "/written-again"))[0].code == 200
        assert b'"path":"/written-again"' in await read_some(reader, until=b"/written-again")
        assert await dropped_records(gw, at_least=0) == dropped
        await gw.stopService()
    finally:
        if reader >= 0:
            os.close(reader)


async def read_some(fd: int, until: bytes = b"\n", timeout: float = 10.0) -> bytes:
    """What the pipe's reader gets (non-blocking reads) until ``until`` arrived."""
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        try:
            data += os.read(fd, 65536)
        except BlockingIOError:
            await deferLater(reactor, 0.02, lambda: None)
    return data


async def dropped_records(gw, at_least: float, timeout: float = 10.0) -> float:
    """avx_access_log_dropped_total from a real scrape, once it is at least ``at_least`` (the
    writer thread gets each batch within flush_s, 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = await call(gw, "GET", "/metrics")
        dropped = value(samples(text.decode()), "avx_access_log_dropped_total")
        if dropped >= at_least or time.monotonic() > deadline:
            return dropped  # type: ignore[no-any-return]
        await deferLater(reactor, 0.05, lambda: None)
