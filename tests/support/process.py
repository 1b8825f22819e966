"""Run the real ``twistd -n avx-gateway`` process from a config file, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def twistd(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``twistd --pidfile= -n ARGS`` in the repo root, output captured."""
    return subprocess.Popen(
        [TWISTD, "--pidfile=", "-n", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class GatewayProcess:
    """A twistd gateway on a config file; ``await start()`` returns once /healthz answers."""

    def __init__(self, config_path: Path, port: int, *extra: str) -> None:
        self.config_path = config_path
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.proc = twistd("avx-gateway", "--config", str(self.config_path), *self.extra)
        deadline = time.monotonic() + timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {out!r} {err!r}")
            try:
                response = await treq.get(self.url("/healthz"), pool=pool)
                await response.content()
                if response.code == 200:
                    return self
            except Exception:
                pass
            await deferLater(reactor, 0.1, lambda: None)
        raise RuntimeError("gateway did not start in time")

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for exit without blocking the reactor; returns the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit by itself (killing it after ``timeout``)."""
        proc = self.proc
        if proc is None:
            return 0
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        return proc.returncode  # type: ignore[no-any-return]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def env_without_pythonpath() -> dict[str, str]:
    """The environment, as a user's shell would have it."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env
