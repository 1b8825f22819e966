"""Processes for bench/run.py: starting and stopping them (each in its own session), waiting
until they answer, and what /proc says about them (RSS, CPU time, open-files limit)."""

from __future__ import annotations

import atexit
import os
import resource
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from configs import HEADERS, NOFILE


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((NOFILE, max(hard, NOFILE)), (min(NOFILE, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return
        except (ValueError, OSError):
            continue


class Processes:
    """Every process this run starts, each in its own session so it can be killed with its
    children; the PIDs of those still running are kept in ``pids`` for run.sh's exit trap."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pidfile = workdir / "pids"
        self.procs: List[subprocess.Popen] = []
        atexit.register(self.stop_all)

    def start(
        self,
        cmd: List[str],
        name: str,
        cores: Optional[str] = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.Popen:
        """Start ``cmd`` (pinned to ``cores``), output to ``WORKDIR/NAME.log``; ``env``: variables
        added to this process's environment."""
        if cores is not None:
            cmd = ["taskset", "-c", cores, *cmd]
        logfile = self.workdir / f"{name}.log"
        out = open(logfile, "ab")
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=out if stdout is None else stdout,
            stderr=out,
            start_new_session=True,
            preexec_fn=_raise_nofile,
            cwd=str(self.workdir),
            env=None if env is None else {**os.environ, **env},
        )
        out.close()
        proc.name = name  # type: ignore[attr-defined]
        proc.logfile = logfile  # type: ignore[attr-defined]
        proc.cmdline = shlex.join(cmd)  # type: ignore[attr-defined]
        self.procs.append(proc)
        self._write_pidfile()
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in its session (children of a master, a straggler) goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)
        self._write_pidfile()

    def _write_pidfile(self) -> None:
        """Only what is still running: run.sh's trap must never signal a reused PID."""
        self.pidfile.write_text("".join(f"{p.pid}\n" for p in self.procs))

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    proc: subprocess.Popen,
    url: str,
    timeout: float = 60.0,
    headers: Optional[List[str]] = None,
    context: Optional[ssl.SSLContext] = None,
) -> None:
    """Wait until ``url`` answers 200 (or the process dies, or time runs out); ``context``: the
    TLS client context of an https URL (the bench CA)."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url)
    for header in headers or HEADERS:
        name, _, value = header.partition(":")
        req.add_header(name.strip(), value.strip())
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}: {tail(proc)}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as resp:
                resp.read()
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {timeout:.0f} s ({last}): {tail(proc)}")


def tail(proc: subprocess.Popen, lines: int = 8) -> str:
    try:
        text = Path(proc.logfile).read_text(errors="replace")  # type: ignore[attr-defined]
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- RSS


def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def rss_kb(pid: int, tree: bool = True) -> Optional[int]:
    """VmRSS of ``pid`` in kB, summed over its descendants when ``tree`` (nginx master + worker,
    gateway supervisor + workers). None when the process is gone."""
    pids = [pid]
    if tree:
        children = _children()
        i = 0
        while i < len(pids):
            pids.extend(children.get(pids[i], []))
            i += 1
    total = 0
    found = False
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        found = True
                        break
        except OSError:
            continue
    return total if found else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    children = _children()
    pids = [pid]
    i = 0
    while i < len(pids):
        pids.extend(children.get(pids[i], []))
        i += 1
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's waited-for children (wrk, once it has ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def core_busy() -> Dict[str, float]:
    """Busy seconds (all but idle and iowait) of each CPU since boot, from /proc/stat."""
    out: Dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                values = [int(v) for v in fields[:8]]
                out[name[3:]] = (sum(values) - values[3] - values[4]) / tick
    return out


def count_lines(path: Path) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def io_counters(pid: int) -> Dict[str, int]:
    """``/proc/PID/io`` of ``pid`` (``wchar``, ``write_bytes``, ...); empty when unreadable."""
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                name, _, value = line.partition(":")
                out[name.strip()] = int(value)
    except (OSError, ValueError):
        pass
    return out


def nofile_limit(pid: int) -> Optional[int]:
    """The soft open-files limit of ``pid``."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return None


class RssSampler:
    """Samples ``rss_kb(pid)`` every ``interval`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kb(self.pid, tree=False)
            if value is not None:
                self.peak = max(self.peak, value)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
