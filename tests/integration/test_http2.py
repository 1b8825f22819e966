"""HTTP/2 downstream: h2 by ALPN on TLS listeners and h2c with prior knowledge on cleartext
ones (``http2 = true``), through the same routing, filters, forwarder and logs as HTTP/1.1,
against real clients (curl ``--http2``, ``--http2-prior-knowledge``)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from twisted.internet import threads

from avx_twisted.demo import EchoResource
from tests.integration.test_tls_listeners import PKI, _tls, curl, start
from tests.support.servers import BigBody, echo_json, upstream

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def h2_gateway(closer: Any, up_port: int, tls: dict[str, Any] | None, **top: Any) -> Any:
    listener: dict[str, Any] = {"endpoint": "tcp:0:interface=127.0.0.1", "http2": True}
    if tls is not None:
        listener["tls"] = tls
    routes = top.pop("routes", None) or [
        {"path": "/*", "upstream": {"urls": [f"http://127.0.0.1:{up_port}"]}}
    ]
    config = {
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "listeners": [listener]},
        "routes": routes,
        **top,
    }
    gw = start(config, closer)
    return gw, gw.ports[1].getHost().port


async def curl_status(*args: str) -> tuple[str, str, str]:
    """(HTTP version curl used, status, body)."""
    code, out, err = await curl("-o", "-", "-w", "\n%{http_version} %{http_code}", *args)
    assert code == 0, err
    body, _, tail = out.rpartition("\n")
    version, _, status = tail.partition(" ")
    return version, status, body


@ensure
async def test_h2c_with_prior_knowledge(closer):
    up = closer.add(upstream())
    gw, port = h2_gateway(closer, up.port, None)
    version, status, body = await curl_status(
        "--http2-prior-knowledge", f"http://127.0.0.1:{port}/hello?x=1"
    )
    assert (version, status) == ("2", "200")
    echoed = echo_json(body.encode())
    assert echoed["uri"] == "/hello?x=1"
    assert echoed["headers"]["Host"] == [f"127.0.0.1:{port}"]
    # HTTP/1.1 on the same listener still works.
    version, status, _ = await curl_status("--http1.1", f"http://127.0.0.1:{port}/hello")
    assert (version, status) == ("1.1", "200")


@ensure
async def test_h2_by_alpn_on_tls(pki, closer):
    up = closer.add(upstream())
    gw, port = h2_gateway(closer, up.port, _tls(pki))
    args = ["--cacert", str(pki.ca.path), "--resolve", f"localhost:{port}:127.0.0.1"]
    version, status, body = await curl_status("--http2", *args, f"https://localhost:{port}/a")
    assert (version, status) == ("2", "200")
    assert echo_json(body.encode())["uri"] == "/a"
    version, status, _ = await curl_status("--http1.1", *args, f"https://localhost:{port}/a")
    assert (version, status) == ("1.1", "200")


@ensure
async def test_request_and_response_bodies_stream_over_h2(pki, closer, tmp_path):
    up = closer.add(upstream(EchoResource("echo")))
    gw, port = h2_gateway(closer, up.port, None)
    payload = tmp_path / "body.bin"
    payload.write_bytes(b"x" * (3 * 1024 * 1024 + 7))
    version, status, body = await curl_status(
        "--http2-prior-knowledge",
        "--data-binary",
        f"@{payload}",
        f"http://127.0.0.1:{port}/upload",
    )
    assert (version, status) == ("2", "200")
    assert echo_json(body.encode())["body_bytes"] == 3 * 1024 * 1024 + 7


@ensure
async def test_large_response_respects_flow_control(closer, tmp_path):
    big = closer.add(upstream(BigBody(8 * 1024 * 1024)))
    gw, port = h2_gateway(closer, big.port, None)
    out = tmp_path / "out.bin"
    code, written, err = await curl(
        "--http2-prior-knowledge",
        "-o",
        str(out),
        "-w",
        "%{http_version} %{http_code}",
        f"http://127.0.0.1:{port}/big",
    )
    assert code == 0, err
    assert written == "2 200"
    assert out.stat().st_size == 8 * 1024 * 1024


@ensure
async def test_errors_metrics_and_access_log_say_http2(closer, tmp_path):
    up = closer.add(upstream())
    log = tmp_path / "access.log"
    gw, port = h2_gateway(
        closer,
        up.port,
        None,
        routes=[{"path": "/only/*", "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]}}],
        logging={"access_log": str(log)},
    )
    version, status, body = await curl_status(
        "--http2-prior-knowledge", f"http://127.0.0.1:{port}/nowhere"
    )
    assert (version, status) == ("2", "404")
    assert json.loads(body)["error"] == "no route matches this path"
    gw.access_writer.stop()
    gw.access_writer = None
    record = json.loads(log.read_text().splitlines()[0])
    assert record["protocol"] == "HTTP/2.0" and record["status"] == 404


def _h2_streams(port: int, paths: list[bytes]) -> dict[bytes, tuple[int, bytes]]:
    """Send every path as its own stream on one h2c connection at once (the h2 library's
    client over a socket); returns {path: (status, body)}. (curl 7.88's --parallel with
    prior knowledge fails its queued transfers against any server, nginx too.)"""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    by_stream: dict[int, bytes] = {}
    for path in paths:
        stream = conn.get_next_available_stream_id()
        by_stream[stream] = path
        conn.send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"h2.test"),
                (b":path", path),
            ],
            end_stream=True,
        )
    status: dict[int, int] = {}
    bodies: dict[int, bytes] = {s: b"" for s in by_stream}
    ended: set[int] = set()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while len(ended) < len(paths):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    return {by_stream[s]: (status[s], bodies[s]) for s in by_stream}


@ensure
async def test_streams_multiplex_on_one_connection(closer):
    up = closer.add(upstream())
    gw, port = h2_gateway(closer, up.port, None)
    paths = [b"/s/%d" % i for i in range(40)]
    answers = await threads.deferToThread(_h2_streams, port, paths)
    assert sorted(answers) == sorted(paths)
    for path, (status, body) in answers.items():
        assert status == 200
        assert echo_json(body)["uri"] == path.decode()
    assert len(gw.site.connections) <= 1


@ensure
async def test_auth_refusals_over_h2_are_the_same_json(closer):
    up = closer.add(upstream())
    routes = [
        {"path": "/*", "auth": ["api_key"], "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]}}
    ]
    key = {
        "name": "ci",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    }
    gw, port = h2_gateway(closer, up.port, None, routes=routes, auth={"api_key": {"keys": [key]}})
    version, status, body = await curl_status(
        "--http2-prior-knowledge", f"http://127.0.0.1:{port}/"
    )
    assert (version, status) == ("2", "401")
    assert json.loads(body)["status"] == 401
    version, status, body = await curl_status(
        "--http2-prior-knowledge", "-H", "X-API-Key: test", f"http://127.0.0.1:{port}/"
    )
    assert (version, status) == ("2", "200")
    assert "X-Api-Key" not in echo_json(body.encode())["headers"]
