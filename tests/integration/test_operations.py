"""What an operator does to a running gateway, on the real twistd: signals, log files, private
listeners, start-up errors, the version, the shutdown delay. Each test is one of the problems an
nginx/Envoy operator ran into (issue 11)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from avx_twisted._version import __version__
from avx_twisted.demo import EchoResource
from tests.support.process import REPO, TWISTD, free_port
from tests.support.servers import upstream

ensure = pytest_twisted.ensureDeferred
CLI = str(Path(sys.executable).with_name("avx-gateway"))


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


class Twistd:
    """``twistd -n avx-gateway`` with stdout and stderr kept apart, as a container runtime or
    systemd would see them."""

    def __init__(
        self, tmp_path: Path, config: str, *twistd_args: str, env: dict[str, str] | None = None
    ) -> None:
        #: Environment variables added to the test's own for the twistd process.
        self.env = env
        self.dir = tmp_path
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(textwrap.dedent(config))
        self.stdout_path = tmp_path / "stdout.txt"
        self.stderr_path = tmp_path / "stderr.txt"
        self.twistd_args = twistd_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Twistd:
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                TWISTD,
                "--pidfile=",
                "-n",
                *self.twistd_args,
                "avx-gateway",
                "--config",
                str(self.config),
            ],
            cwd=self.dir,
            stdout=self._out,
            stderr=self._err,
            env=None if self.env is None else {**os.environ, **self.env},
        )
        return self

    async def until(self, url: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.stderr()}")
            try:
                response = await treq.get(url, pool=pool)
                await response.content()
                return
            except Exception:
                await sleep(0.1)
        raise AssertionError(f"{url} never answered: {self.stderr()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, timeout: float = 20.0) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._out.close()
        self._err.close()
        return proc.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def get(url: str, **kwargs):
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(url, pool=pool, **kwargs)
    return response.code, await response.content()


def route(url: str) -> str:
    return f"""
        [[routes]]
        name = "all"
        path = "/*"
        [routes.upstream]
        urls = ["{url}"]
    """


async def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await sleep(0.05)
    return predicate()


# -- 1, 2: SIGUSR1 reopens the logs and never kills ------------------------------------------------


async def _rotate_and_check(tmp_path, closer, workers: int) -> None:
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        workers = {workers}
        [logging]
        access_log = "access.log"
        {route(up.url)}
    """,
        "--logfile=events.log",
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")
        if workers > 1:
            assert await wait_for(
                lambda: f"ready ({workers} of {workers})" in (tmp_path / "events.log").read_text(),
                timeout=30,
            )
        for i in range(4):
            assert (await get(f"{base}/before/{i}"))[0] == 200
        access, events = tmp_path / "access.log", tmp_path / "events.log"
        assert await wait_for(lambda: access.exists() and access.read_text().count("\n") >= 4)
        os.rename(access, tmp_path / "access.log.1")  # what logrotate does
        os.rename(events, tmp_path / "events.log.1")
        gw.signal(signal.SIGUSR1)
        assert await wait_for(lambda: access.exists() and events.exists())
        for i in range(4):
            assert (await get(f"{base}/after/{i}"))[0] == 200
        assert await wait_for(lambda: access.read_text().count("\n") >= 4)
        old = (tmp_path / "access.log.1").read_text()
        new = access.read_text()
        assert old.count("/before/") == 4 and "/after/" not in old
        assert new.count("/after/") == 4 and "/before/" not in new
        assert await wait_for(lambda: "log files reopened" in events.read_text())
        assert gw.proc is not None and gw.proc.poll() is None  # alive
    finally:
        assert await gw.stop() == 0


@ensure
async def test_sigusr1_reopens_access_and_event_logs(tmp_path, closer):
    await _rotate_and_check(tmp_path, closer, workers=1)


@ensure
async def test_sigusr1_reopens_logs_of_every_worker(tmp_path, closer):
    await _rotate_and_check(tmp_path, closer, workers=2)


@ensure
async def test_sigusr1_without_a_logfile_does_not_kill(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        {route(up.url)}
    """,
    ).start()
    try:
        await gw.until(f"http://127.0.0.1:{port}/healthz")
        for _ in range(3):
            gw.signal(signal.SIGUSR1)
            await sleep(0.2)
        assert (await get(f"http://127.0.0.1:{port}/x"))[0] == 200
    finally:
        assert await gw.stop() == 0


# -- 3: worker gauges ----------------------------------------------------------------------------


@ensure
async def test_target_gauges_are_right_whichever_worker_answers(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        workers = 2
        {route(up.url)}
        [routes.upstream.health_check]
        path = "/health"
        interval_ms = 200
    """,
    ).start()
    try:
        await gw.until(f"http://127.0.0.1:{port}/healthz")
        assert await wait_for(lambda: "ready (2 of 2)" in gw.stderr(), timeout=30)
        await sleep(1.0)
        pids: set[int] = set()
        rounds = 0
        # Which worker accepts a connection is the kernel's choice: go on until both have
        # answered (at least 12 rounds), each round checking the gauges.
        while rounds < 12 or (len(pids) < 2 and rounds < 200):
            rounds += 1
            code, body = await get(f"http://127.0.0.1:{port}/health")
            assert code == 200
            pids.add(json.loads(body)["pid"])
            _, text = await get(f"http://127.0.0.1:{port}/metrics")
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text.decode())
                for s in family.samples
            }
            labels = (("route", "all"), ("upstream", up.url))
            assert values[("avx_upstream_healthy", labels)] == 1
            assert values[("avx_circuit_state", labels)] == 0
            # Live gauges are summed over the workers (one series, no pid label).
            assert [k for k in values if k[0] == "avx_requests_in_flight"] == [
                ("avx_requests_in_flight", ())
            ]
            assert values[("avx_requests_in_flight", ())] == 0  # scrapes are not requests
            assert (
                values[
                    (
                        "avx_build_info",
                        (
                            (
                                "implementation",
                                sys.implementation.name.replace("cpython", "CPython").replace(
                                    "pypy", "PyPy"
                                ),
                            ),
                            ("python", ".".join(map(str, sys.version_info[:3]))),
                            ("version", __version__),
                        ),
                    )
                ]
                == 1
            )
        assert len(pids) == 2, "both workers answered"
    finally:
        assert await gw.stop() == 0


# -- 4, 5: what --check accepts starts; start-up errors are one line ----------------------------


def run(*args: str, cwd: Path = REPO, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_check_refuses_what_start_up_would_refuse(tmp_path):
    cases = {
        'host = "true"': "server.host: cannot listen on 'true': the name does not resolve",
        'host = "no-such-host.invalid"': "server.host: cannot listen on 'no-such-host.invalid'",
        'host = "999.1.1.1"': "server.host: '999.1.1.1' is not a valid IP address",
        'workers = 2\nlisten = ["unix:/tmp/avx-check.sock"]': (
            "server.listen: 'unix:/tmp/avx-check.sock' cannot be shared by 2 worker processes"
        ),
    }
    for server, message in cases.items():
        path = tmp_path / "gw.toml"
        path.write_text(f"[server]\n{server}\n{route('http://127.0.0.1:9')}")
        for command in (
            [TWISTD, "avx-gateway", "--config", str(path), "--check"],
            [CLI, "check", "--config", str(path)],
            [TWISTD, "--pidfile=", "-n", "avx-gateway", "--config", str(path)],
        ):
            result = run(*command)
            assert result.returncode == 2, (command, result)
            assert message in result.stderr, (command, result.stderr)
            assert "Traceback" not in result.stderr
            assert result.stderr.startswith("avx-gateway: invalid configuration\n")


def test_a_redis_ca_file_that_does_not_load_is_a_config_error(tmp_path):
    """``rediss://...?ssl_ca_certs=`` naming a missing or non-PEM file: --check and start-up
    both refuse it, naming the key, the file and why (it used to pass --check, then crash)."""
    (tmp_path / "not-pem.pem").write_text("a CA, surely\n")
    for name, why in [
        ("missing.pem", "cannot be read: No such file or directory"),
        ("not-pem.pem", "holds no PEM certificate"),
    ]:
        ca = tmp_path / name
        path = tmp_path / "gw.toml"
        path.write_text(
            textwrap.dedent(f"""
            [server]
            host = "127.0.0.1"
            port = {free_port()}
            [middleware]
            enable_rate_limiting = true
            [rate_limiting]
            backend = "redis"
            redis_url = "rediss://127.0.0.1:6380/0?ssl_ca_certs={ca}"
        """)
            + route("http://127.0.0.1:9")
        )
        message = f"  rate_limiting.redis_url: ssl_ca_certs {str(ca)!r} {why}\n"
        for command in (
            [CLI, "check", "--config", str(path)],
            [TWISTD, "avx-gateway", "--config", str(path), "--check"],
            [TWISTD, "--pidfile=", "-n", "avx-gateway", "--config", str(path)],
        ):
            result = run(*command, cwd=tmp_path)
            assert result.returncode == 2, (command, result)
            assert result.stderr.startswith("avx-gateway: invalid configuration\n")
            assert result.stderr.endswith(f"{path}: 1 error\n{message}"), (command, result.stderr)
            assert "Traceback" not in result.stderr


@ensure
async def test_what_check_accepts_starts(tmp_path, closer):
    """A unix:// Redis URL (nothing listens there: the limiter falls back to local buckets) and a
    unix: listener with one worker."""
    up = closer.add(upstream(EchoResource("svc")))
    sock = tmp_path / "gw.sock"
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        listen = ["unix:{sock}"]
        [middleware]
        enable_rate_limiting = true
        [rate_limiting]
        backend = "redis"
        redis_url = "unix:///{tmp_path}/no-redis.sock?db=1"
        {route(up.url)}
    """,
    )
    result = run(CLI, "check", "--config", str(gw.config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{gw.config}: OK (1 routes")
    gw.start()
    try:
        # The socket is bound before the reactor runs (and installs its signal handlers): wait
        # for an answer.
        assert await wait_for(
            lambda: unix_get(sock, "/healthz").startswith(b"HTTP/1.1 200"), timeout=20
        ), gw.stderr()
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        assert await gw.stop() == 0
    assert "Traceback" not in gw.stderr()


def unix_get(path: Path, target: str) -> bytes:
    """One request over a unix socket (blocking, short: the gateway answers it itself)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
            return s.recv(65536)
    except OSError:
        return b""


def test_a_port_in_use_is_one_line(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        for workers in (1, 2):
            path = tmp_path / "gw.toml"
            path.write_text(
                f'[server]\nhost = "127.0.0.1"\nport = {port}\nworkers = {workers}\n'
                + route("http://127.0.0.1:9")
            )
            result = run(
                TWISTD,
                "--pidfile=",
                "-n",
                "--logfile=events.log",
                "avx-gateway",
                "--config",
                str(path),
                cwd=tmp_path,
            )
            assert result.returncode == 1
            assert result.stderr == (
                f"avx-gateway: server.host/port: cannot listen on tcp:{port}:interface=127.0.0.1: "
                "Address already in use\n"
            ) or result.stderr == (
                f"avx-gateway: server.listen: cannot listen on tcp:{port}:interface=127.0.0.1: "
                "Address already in use\n"
            ), result.stderr
            assert "cannot listen" in (tmp_path / "events.log").read_text()
    finally:
        holder.close()


def test_a_permission_denied_bind_is_one_line():
    """A port below the unprivileged range, bound by a gateway that is not root (the tests run
    as root: twistd runs as ``nobody`` here, as a systemd unit with ``User=`` would)."""
    nobody = pwd.getpwnam("nobody")
    # util-linux's setpriv (in every Debian base image): the real uid, gid and groups changed,
    # every capability gone.
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to run twistd as nobody"
    as_nobody = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    first_free = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    # Every user may bind any port when the range starts at 0: then a unix socket in a
    # directory the user cannot write to refuses it just the same.
    with tempfile.TemporaryDirectory() as top:
        work = Path(top)
        work.chmod(0o777)  # readable config, writable event log, for nobody
        locked = work / "locked"
        locked.mkdir(mode=0o755)
        if first_free > 1:
            port = min(80, first_free - 1)
            server = f'host = "127.0.0.1"\nport = {port}'
            key, endpoint = "server.host/port", f"tcp:{port}:interface=127.0.0.1"
        else:
            server = f'listen = ["unix:{locked}/gw.sock"]'
            key, endpoint = "server.listen", f"unix:{locked}/gw.sock"
        path = work / "gw.toml"
        path.write_text(f"[server]\n{server}\n" + route("http://127.0.0.1:9"))
        path.chmod(0o644)
        result = subprocess.run(
            [
                *as_nobody,
                TWISTD,
                "--pidfile=",
                "-n",
                "--logfile=events.log",
                "avx-gateway",
                "--config",
                str(path),
            ],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result
        assert result.stderr == (
            f"avx-gateway: {key}: cannot listen on {endpoint}: Permission denied\n"
        ), result.stderr
        assert "Permission denied" in (work / "events.log").read_text()


def test_the_demo_upstreams_port_in_use_is_one_line():
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 9001))
        holder.listen()
    except OSError:
        pass  # something else holds 9001: the demo must say so all the same
    try:
        result = run(CLI, "demo")
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "avx-gateway: --demo upstream: cannot listen on tcp:9001:interface=127.0.0.1: "
            "Address already in use"
        )
        assert "Traceback" not in result.stderr
    finally:
        holder.close()


def test_a_private_listener_in_use_names_its_key(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    try:
        path = tmp_path / "gw.toml"
        path.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            f'[metrics]\nlisten = "tcp:{busy}:interface=127.0.0.1"\n' + route("http://127.0.0.1:9")
        )
        result = run(TWISTD, "--pidfile=", "-n", "avx-gateway", "--config", str(path))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr
        assert (
            f"cannot listen on tcp:{busy}:interface=127.0.0.1 (metrics.listen): Address "
            "already in use" in lines[-1]
        )
    finally:
        holder.close()


# -- 6: private listeners --------------------------------------------------------------------


@ensure
async def test_metrics_and_probes_on_their_own_listeners(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port, metrics_port, health_port = free_port(), free_port(), free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        [metrics]
        listen = "tcp:{metrics_port}:interface=127.0.0.1"
        [health]
        listen = "tcp:{health_port}:interface=127.0.0.1"
        [[routes]]
        name = "api"
        path = "/api/*"
        [routes.upstream]
        urls = ["{up.url}"]
    """,
    ).start()
    try:
        await gw.until(f"http://127.0.0.1:{health_port}/healthz")
        data = f"http://127.0.0.1:{port}"
        assert (await get(data + "/api/x"))[0] == 200
        for path in ("/metrics", "/healthz", "/ready", "/health"):
            assert (await get(data + path))[0] == 404, path  # not on the data plane
        code, body = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert code == 200 and b'avx_requests_total{method="GET",route="api",status="200"}' in body
        assert (await get(f"http://127.0.0.1:{metrics_port}/healthz"))[0] == 404
        for path in ("/healthz", "/ready", "/health"):
            assert (await get(f"http://127.0.0.1:{health_port}{path}"))[0] == 200, path
        assert (await get(f"http://127.0.0.1:{health_port}/metrics"))[0] == 404
        # Scrapes and probes are neither counted nor access-logged.
        _, body = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert b'route="unmatched",status="200"' not in body
    finally:
        assert await gw.stop() == 0
    records = [json.loads(line) for line in gw.stdout().splitlines()]
    assert [r["path"] for r in records if r["status"] == 200] == ["/api/x"]


# -- 7: the version ------------------------------------------------------------------------------


def test_version_is_the_gateways():
    for command in ([TWISTD, "avx-gateway", "--version"], [CLI, "version"]):
        result = run(*command)
        assert result.returncode == 0
        assert result.stdout.startswith(f"avx-gateway {__version__} (Twisted "), result.stdout


def test_hash_prints_the_sha256_for_the_config():
    result = subprocess.run([CLI, "hash"], input="s3cret\n", capture_output=True, text=True)
    assert result.stdout.strip() == hashlib.sha256(b"s3cret").hexdigest()


# -- 8: stdout is the access log's, stderr the event log's ---------------------------------------


@ensure
async def test_stdout_carries_only_access_records_and_events_are_json(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        [logging]
        event_format = "json"
        {route(up.url)}
    """,
    ).start()
    try:
        await gw.until(f"http://127.0.0.1:{port}/healthz")
        assert (await get(f"http://127.0.0.1:{port}/a"))[0] == 200
        await sleep(0.3)
    finally:
        assert await gw.stop() == 0
    records = [json.loads(line) for line in gw.stdout().splitlines()]
    assert [r["path"] for r in records] == ["/a"]
    events = [json.loads(line) for line in gw.stderr().splitlines()]
    assert len(events) > 3
    for event in events:
        assert set(event) >= {"time", "level", "namespace", "message"}
    messages = [e["message"] for e in events]
    assert any(m.startswith(f"avx-gateway {__version__}: 1 routes") for m in messages)
    assert any(m.startswith("draining:") for m in messages)


# -- 9: the shutdown delay -----------------------------------------------------------------------


@ensure
async def test_shutdown_delay_keeps_serving_while_not_ready(tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    gw = Twistd(
        tmp_path,
        f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_delay_ms = 1500
        {route(up.url)}
    """,
    ).start()
    base = f"http://127.0.0.1:{port}"
    await gw.until(base + "/healthz")
    assert (await get(base + "/ready"))[0] == 200
    stopped_at = time.monotonic()
    gw.signal(signal.SIGTERM)
    await sleep(0.3)
    assert (await get(base + "/ready"))[0] == 503
    assert (await get(base + "/x"))[0] == 200  # new connections still accepted and answered
    await sleep(0.5)
    assert (await get(base + "/x"))[0] == 200
    assert await gw.stop(timeout=20) == 0
    assert time.monotonic() - stopped_at >= 1.4
    assert "serving 1500 ms more before draining" in gw.stderr()
