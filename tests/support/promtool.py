"""``promtool`` and ``prometheus`` (Debian's ``prometheus`` package) for tests.

``make test`` installs the package; a test that needs it fails when it is missing but could be
installed (root with apt-get), and skips only where it cannot be (not root, or no apt-get).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode

import pytest
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.support.process import free_port

#: What ``make test`` runs to get ``/usr/bin/promtool`` (Debian 12: promtool 2.42).
INSTALL = "apt-get install -y --no-install-recommends prometheus"


def binary(name: str = "promtool") -> str:
    """The path of ``promtool`` or ``prometheus``: fails the test when it is missing but
    installable, skips when it cannot be installed here."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{name} is missing; install it with `{INSTALL}` (make test does)")
    pytest.skip(
        f"{name} is missing and cannot be installed here (needs root and apt-get: {INSTALL})"
    )


def promtool() -> str:
    return binary("promtool")


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition (exit 0: no problems and no lint)."""
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


def check_rules(exprs: Iterable[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on one recording rule per expression: Prometheus's own parser."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        lines.append(f"      - record: dashboard:expr_{i}")
        lines.append("        expr: |-")
        lines.extend(f"          {line}" for line in expr.splitlines())
    path = directory / "dashboard-rules.yml"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


class Prometheus:
    """A real Prometheus server scraping one target every second, queried over its HTTP API."""

    JOB = "avx-gateway"

    def __init__(self, target: str, directory: Path, metrics_path: str = "/metrics") -> None:
        self.target = target
        self.directory = directory
        self.port = free_port()
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: {self.JOB}\n    metrics_path: {metrics_path}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _get(self, path: str) -> tuple[int, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(self.url(path), pool=pool)
        return response.code, await response.content()

    async def start(self, timeout: float = 30.0) -> Prometheus:
        self.log = open(self.directory / "prometheus.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.output()}")
            try:
                if (await self._get("/-/ready"))[0] == 200:
                    return self
            except Exception:
                pass
            await deferLater(reactor, 0.1, lambda: None)
        raise RuntimeError(f"prometheus did not start in time: {self.output()}")

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's series; a scalar as one series)."""
        code, body = await self._get("/api/v1/query?" + urlencode({"query": expr}))
        answer = json.loads(body)
        if code != 200 or answer.get("status") != "success":
            raise AssertionError(f"{expr}: {answer.get('error', body[:500])}")
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]  # type: ignore[no-any-return]

    async def scrapes(self) -> int:
        """How many scrapes of the target succeeded so far (in the last 10 minutes)."""
        result = await self.query(f'count_over_time(up{{job="{self.JOB}"}}[10m])')
        return int(float(result[0]["value"][1])) if result else 0

    async def wait_for_scrapes(self, more: int, timeout: float = 20.0) -> None:
        """Wait until ``more`` further scrapes have succeeded."""
        goal = await self.scrapes() + more
        deadline = time.monotonic() + timeout
        while await self.scrapes() < goal:
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not scrape {self.target}: {self.output()}")
            await deferLater(reactor, 0.2, lambda: None)
        up = await self.query(f'up{{job="{self.JOB}"}}')
        assert up and up[0]["value"][1] == "1", f"scrape failing: {up} {self.output()}"

    def output(self) -> str:
        return (self.directory / "prometheus.out").read_text(errors="replace")[-3000:]

    async def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.log.close()
