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
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([TWISTD, "--pidfile=", "-n", *args], cwd=REPO, **kwargs)


def socket_activated(config_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the gateway on ``config_path`` with a loopback listening socket passed the way
    systemd passes one (fd 3, LISTEN_FDS, LISTEN_PID); returns the process and the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]

    def as_fd_3() -> None:  # in the child: the socket becomes fd 3, as systemd passes it
        if sock.fileno() != 3:
            os.dup2(sock.fileno(), 3)
        os.set_inheritable(3, True)

    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="avx-gateway.socket")
    # LISTEN_PID must be the gateway's own pid: the shell sets it, then becomes twistd (exec).
    proc = subprocess.Popen(
        ["sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"', TWISTD, "--pidfile=", "-n",
         "avx-gateway", "--config", str(config_path)],
        cwd=REPO, env=env, preexec_fn=as_fd_3, close_fds=False,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    sock.close()  # only the gateway holds it now
    return proc, port


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
        # Output goes to a file, readable while the process runs (a pipe nobody reads can fill
        # up and block the gateway).
        self.log_path = self.config_path.with_suffix(".out")
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = twistd(
            "avx-gateway",
            "--config",
            str(self.config_path),
            *self.extra,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.output()!r}")
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
        proc.wait()
        self.log_file.close()
        return proc.returncode  # type: ignore[no-any-return]

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def env_without_pythonpath() -> dict[str, str]:
    """The environment, as a user's shell would have it."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def children(pid: int) -> list[int]:
    """PIDs of the live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)
