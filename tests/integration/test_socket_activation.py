"""systemd socket activation: a listening socket passed as systemd does (LISTEN_FDS/LISTEN_PID)."""

from __future__ import annotations

import subprocess
import textwrap

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.support.process import REPO, TWISTD, socket_activated
from tests.support.servers import echo_json, upstream

ensure = pytest_twisted.ensureDeferred


def test_systemd_endpoints_pass_check_without_a_socket(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(textwrap.dedent("""
        [server]
        listen = ["systemd:domain=INET:index=0"]
        [[routes]]
        path = "/*"
        [routes.upstream]
        urls = ["http://127.0.0.1:1"]
    """))
    out = subprocess.run([TWISTD, "avx-gateway", "--config", str(path), "--check"],
                         cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr


@ensure
async def test_serves_on_a_socket_passed_the_way_systemd_does(tmp_path, closer):
    up = closer.add(upstream())
    path = tmp_path / "gw.toml"
    path.write_text(textwrap.dedent(f"""
        [server]
        listen = ["systemd:domain=INET:index=0"]
        [[routes]]
        path = "/*"
        [routes.upstream]
        urls = ["{up.url}"]
    """))
    proc, port = socket_activated(path)
    try:
        body = None
        for _ in range(100):
            try:
                response = await treq.get(f"http://127.0.0.1:{port}/activated",
                                          pool=HTTPConnectionPool(reactor, persistent=False))
                body = await response.content()
                break
            except Exception:
                await deferLater(reactor, 0.1, lambda: None)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert echo_json(body)["uri"] == "/activated"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0



