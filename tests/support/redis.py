"""A real redis-server on a free loopback port (or a unix socket, or TLS), for the Redis tests."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence


class RedisServer:
    """``redis-server`` in a temp dir (no persistence), started and stopped by the test.

    ``password`` sets ``requirepass``; ``args`` are more options (``--user ...``);
    ``unix_socket`` listens on a socket in a short /tmp directory (``socket_path``) instead of
    TCP; ``tls`` (the paths from :func:`tests.support.tls.make_ca_and_server`) serves TLS only,
    on ``port``; ``bind`` are the addresses it listens on.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        args: Sequence[str] = (),
        unix_socket: bool = False,
        tls: dict[str, Path] | None = None,
        bind: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.password = password
        self.args = list(args)
        self.tls = tls
        self.bind = list(bind)
        self.socket_path: str | None = None
        self._socket_dir: str | None = None
        if unix_socket:
            # sun_path holds 108 bytes: pytest's tmp_path can be longer than that
            self._socket_dir = tempfile.mkdtemp(prefix="avx-redis-", dir="/tmp")
            self.socket_path = f"{self._socket_dir}/redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        argv = [binary, "--bind", *self.bind, "--save", "", "--appendonly", "no",
                "--dir", str(self.directory)]
        if self.socket_path is not None:
            argv += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        elif self.tls is not None:
            server = str(self.tls["server"])  # certificate and key in one file
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", server,
                     "--tls-key-file", server, "--tls-ca-cert-file", str(self.tls["ca"]),
                     "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv + self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {argv}")
            try:
                with self._connect() as s:
                    s.sendall(b"PING\r\n")
                    # -NOAUTH (requirepass) and -NOPERM (ACL) are answers too
                    if s.recv(16)[:1] in (b"+", b"-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def call(self, *command: str, db: int = 0, user: str | None = None,
             password: str | None = None) -> bytes:
        """Run one command (after AUTH and SELECT) over a blocking socket; the raw reply."""
        password = password if password is not None else self.password
        commands: list[tuple[str, ...]] = []
        if password is not None:
            commands.append(("AUTH", user, password) if user else ("AUTH", password))
        commands += [("SELECT", str(db)), command]
        with self._connect() as s:
            reply = b""
            for c in commands:
                s.sendall(_resp(c))
                reply = s.recv(65536)
            return reply

    def _connect(self) -> socket.socket:
        if self.socket_path is not None:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(self.socket_path)
            return s
        s = socket.create_connection((self.bind[0], self.port), timeout=2)
        if self.tls is None:
            return s
        context = ssl.create_default_context(cafile=str(self.tls["ca"]))
        return context.wrap_socket(s, server_hostname=self.bind[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def _resp(command: Sequence[str]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for part in command:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]
