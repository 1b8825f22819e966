"""avx-gateway benchmark: the gateway against nginx, Twisted's ReverseProxyResource and aiohttp.

Run through ``bash bench/run.sh`` (which installs nginx and wrk and the aiohttp venv first); every
option is passed on. One run:

1. starts an nginx origin (1 worker, its own config in a temp dir) serving ``/tiny`` (13 bytes),
   ``/big`` (1 MiB) and ``/huge`` (200 MB), pinned with the load generator to the second core;
2. for each proxy (pinned to the first core): starts it, records its RSS, warms it up, measures
   ``/tiny`` and ``/big`` with ``wrk --latency`` (64 keep-alive connections), records its RSS
   again and, for the gateway, measures latency at half the rate it just reached;
3. the memory checks: RSS of a 200 MB response passing through, and of 10,000 idle keep-alive
   client connections;
4. writes ``bench/results/latest.json`` (and a timestamped copy) and renders it with
   ``bench/render.py`` to stdout and ``docs/benchmarks.md``.

Everything listens on and talks to 127.0.0.1 (the idle-connection client also uses 127.0.0.2..
as source addresses); every load run is bounded by ``wrk -d``; every process started here is
killed on exit.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import render  # noqa: E402  (bench/render.py, next to this file)

API_KEY = "bench-api-key-7c1d5e0f"
ORIGIN_HEADER = "http://bench.example"
HEADERS = [f"X-API-Key: {API_KEY}", f"Origin: {ORIGIN_HEADER}"]
TINY_BODY = b"Hello, world\n"  # 13 bytes
BIG_SIZE = 1 << 20  # 1 MiB
HUGE_SIZE = 200 * 1000 * 1000  # 200 MB
NOFILE = 65536
WORKERS_NOT_IMPLEMENTED = "worker processes are not implemented yet"

Json = Dict[str, Any]

#: wrk script for the half-rate run: one constant-rate schedule of send slots, INTERVAL_MS
#: apart, handed to whichever connection is free next (wrk calls delay() before each request).
#: wrk links LuaJIT, whose ffi gives a monotonic clock in ms.
PACING_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } avx_timespec;
int clock_gettime(int clk_id, avx_timespec *tp);
]]
local ts = ffi.new("avx_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = INTERVAL_MS
local next_slot = nil
function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now then
    next_slot = now
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return math.floor(wait + 0.5)
end
"""


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
    ) -> subprocess.Popen:
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
    proc: subprocess.Popen, url: str, timeout: float = 60.0, headers: Optional[List[str]] = None
) -> None:
    """Wait until ``url`` answers 200 (or the process dies, or time runs out)."""
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
            with urllib.request.urlopen(req, timeout=2) as resp:
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


def _fetch(url: str, headers: Dict[str, str]) -> Any:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return resp.status, resp.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers


def check_full_stack(base: str) -> Json:
    """Make sure the full-stack row really runs its middleware: no key is 401, the key passes
    with a CORS answer, metrics are served. A failed check fails the row."""
    key = {"X-API-Key": API_KEY}
    no_key, _ = _fetch(base + "/tiny", {"Origin": ORIGIN_HEADER})
    ok, headers = _fetch(base + "/tiny", {**key, "Origin": ORIGIN_HEADER})
    metrics, _ = _fetch(base + "/metrics", key)
    checks = {
        "without_key_status": no_key,
        "with_key_status": ok,
        "cors_allow_origin": headers.get("Access-Control-Allow-Origin"),
        "metrics_status": metrics,
    }
    if no_key != 401 or ok != 200 or checks["cors_allow_origin"] != ORIGIN_HEADER or metrics != 200:
        raise RuntimeError(f"full stack not active: {checks}")
    return checks


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


# --------------------------------------------------------------------------- wrk

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad latency {text!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)] * 1000.0


def parse_wrk(out: str) -> Json:
    result: Json = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", out)
    result["mbps"] = float(m.group(1)) * _UNITS_B[m.group(2)] / 1e6 if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    result["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    result["avg_ms"] = _ms(m.group(1)) if m else None
    result["max_ms"] = _ms(m.group(3)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+\w+)", out, re.M)
        result[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    )
    return result


def run_wrk(
    settings: Json,
    url: str,
    duration: float,
    connections: Optional[int] = None,
    script: Optional[Path] = None,
) -> Json:
    cmd = [
        "taskset",
        "-c",
        settings["load_core"],
        "wrk",
        "-t1",
        f"-c{connections or settings['connections']}",
        f"-d{max(1, int(round(duration)))}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    for header in HEADERS:
        cmd += ["-H", header]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()} {done.stdout}")
    result = parse_wrk(done.stdout)
    result["command"] = shlex.join(cmd)
    return result


def errors_of(result: Json) -> int:
    return int(result.get("non2xx") or 0) + sum((result.get("socket_errors") or {}).values())


# --------------------------------------------------------------------------- configs


def nginx_common(workdir: Path, name: str) -> str:
    temp = workdir / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "".join(
        f"    {kind}_temp_path {temp}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\nworker_rlimit_nofile {NOFILE};\n"
        f"pid {workdir}/{name}.pid;\nerror_log {workdir}/{name}-error.log warn;\n"
        "events { worker_connections 20000; multi_accept on; }\n"
        "http {\n    access_log off;\n    default_type application/octet-stream;\n"
        "    sendfile on;\n    tcp_nopush on;\n    tcp_nodelay on;\n"
        "    keepalive_timeout 120s;\n    keepalive_requests 1000000;\n" + paths
    )


def origin_conf(workdir: Path, port: int) -> str:
    www = workdir / "www"
    return nginx_common(workdir, "origin") + (
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        '        location = /tiny { default_type text/plain; return 200 "Hello, world\\n"; }\n'
        f"        location = /big {{ alias {www}/big.bin; }}\n"
        f"        location = /huge {{ alias {www}/huge.bin; }}\n"
        "        location / { return 404; }\n"
        "    }\n}\n"
    )


def nginx_proxy_conf(workdir: Path, port: int, origin_port: int) -> str:
    return nginx_common(workdir, "nginx-proxy") + (
        "    upstream origin {\n"
        f"        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=1024;\n"
        "        location / {\n"
        "            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "        }\n    }\n}\n"
    )


def gateway_toml(
    workdir: Path,
    port: int,
    origin_port: int,
    full: bool,
    workers: int = 1,
    keepalive_ms: int = 60000,
) -> str:
    lines = [
        "[server]",
        f'listen = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]',
        f"workers = {workers}",
        "drain_timeout_ms = 1000",
        f"keepalive_timeout_ms = {keepalive_ms}",
        "",
        "[[routes]]",
        'name = "bench"',
        'path = "/*"',
    ]
    if full:
        lines += ['auth = ["api_key"]', "cors = true"]
    lines += ["", "[routes.upstream]", f'urls = ["http://127.0.0.1:{origin_port}"]', ""]
    if not full:
        lines += [
            "[middleware]",
            "enable_cors = false",
            "enable_rate_limiting = false",
            "enable_logging = false",
            "enable_metrics = false",
        ]
    else:
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        lines += [
            "[middleware]",
            "enable_cors = true",
            "enable_rate_limiting = true",
            "enable_logging = true",
            "enable_metrics = true",
            "",
            "[rate_limiting]",
            "requests_per_second = 1000000000",
            "burst_size = 1000000000",
            'key = "ip"',
            "",
            "[cors]",
            f'allowed_origins = ["{ORIGIN_HEADER}"]',
            "",
            "[auth.api_key]",
            'header = "X-API-Key"',
            f'keys = [{{ name = "bench", sha256 = "{digest}" }}]',
            "",
            "[logging]",
            'format = "json"',
            f'access_log = "{workdir}/access-{port}.log"',
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="avx-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.procs = Processes(self.workdir)
        cores = sorted(os.sched_getaffinity(0))
        self.all_cores = ",".join(map(str, cores))
        self.settings: Json = {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": 1,
            "quick": args.quick,
            "proxy_core": str(cores[0]),
            "load_core": str(cores[1] if len(cores) > 1 else cores[0]),
            "all_cores": self.all_cores,
            "headers": HEADERS,
            "half_rate_connections": args.half_rate_connections,
        }
        self.origin_port = 0
        self.origin_pid = 0
        self._cores = self.settings["proxy_core"]
        self.results: Json = {}

    # -- setup

    def make_files(self) -> None:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "big.bin").write_bytes(os.urandom(BIG_SIZE))
        with open(www / "huge.bin", "wb") as f:
            chunk = os.urandom(1 << 20)
            left = HUGE_SIZE
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
        os.chmod(www, 0o755)

    def start_nginx(self, name: str, conf: str, cores: str) -> subprocess.Popen:
        path = self.workdir / f"{name}.conf"
        path.write_text(conf)
        cmd = ["nginx", "-p", str(self.workdir), "-c", str(path), "-e", "stderr"]
        cmd += ["-g", "daemon off;"]
        return self.procs.start(cmd, name, cores=cores)

    def start_origin(self) -> None:
        self.origin_port = free_port()
        proc = self.start_nginx(
            "origin", origin_conf(self.workdir, self.origin_port), self.settings["load_core"]
        )
        wait_ready(proc, f"http://127.0.0.1:{self.origin_port}/tiny", timeout=20)
        self.origin_pid = proc.pid
        with urllib.request.urlopen(f"http://127.0.0.1:{self.origin_port}/tiny") as resp:
            assert resp.read() == TINY_BODY
        self.results["origin"] = {"port": self.origin_port, "command": proc.cmdline}
        log(f"origin nginx on 127.0.0.1:{self.origin_port} (core {self.settings['load_core']})")

    # -- proxies: each returns (process, command line) started on ``port``

    def gateway_starter(self, venv: Path, full: bool, workers: int = 1) -> Callable[[int], Any]:
        def start(port: int) -> subprocess.Popen:
            kind = "full" if full else "plain"
            conf = self.workdir / f"gateway-{kind}-w{workers}-{port}.toml"
            conf.write_text(gateway_toml(self.workdir, port, self.origin_port, full, workers))
            twistd = str(venv / "bin" / "twistd")
            cmd = [twistd, "--pidfile=", "-n", "avx-gateway", "--config", str(conf)]
            return self.procs.start(cmd, f"gateway-{kind}-w{workers}-{port}", cores=self._cores)

        return start

    def nginx_starter(self) -> Callable[[int], Any]:
        def start(port: int) -> subprocess.Popen:
            conf = nginx_proxy_conf(self.workdir, port, self.origin_port)
            return self.start_nginx("nginx-proxy", conf, self._cores)

        return start

    def script_starter(self, python: Path, script: str, *args: str) -> Callable[[int], Any]:
        def start(port: int) -> subprocess.Popen:
            cmd = [str(python), str(BENCH / script), str(port), *args]
            return self.procs.start(cmd, f"{Path(script).stem}-{port}", cores=self._cores)

        return start

    # -- one row

    def run_row(self, row: Json, starter: Callable[[int], Any], cores: str) -> Json:
        args = self.args
        self._cores = cores
        row["cores"] = cores
        port = free_port()
        log(f"{row['label']}: starting on 127.0.0.1:{port}, cores {cores}")
        proc = starter(port)
        row["command"] = proc.cmdline
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base + "/tiny", timeout=90)
            time.sleep(0.5)
            row["rss_idle_kb"] = rss_kb(proc.pid)
            if row.get("full_stack"):
                row["stack_checks"] = check_full_stack(base)
            if row.get("check_workers"):
                time.sleep(1.0)
                if WORKERS_NOT_IMPLEMENTED in Path(proc.logfile).read_text(errors="replace"):
                    row["status"] = "n/a"
                    row["note"] = (
                        "the gateway logged 'worker processes are not implemented yet': "
                        "not measured"
                    )
                    return row
            if args.warmup > 0:
                run_wrk(self.settings, base + "/tiny", args.warmup)
            row["tiny"] = self.measure(proc.pid, base + "/tiny")
            if row.get("half_rate") and row["tiny"]["rps"]:
                row["half_rate"] = self.half_rate(base + "/tiny", row["tiny"]["rps"])
            if args.warmup > 0:
                run_wrk(self.settings, base + "/big", max(1.0, args.warmup / 2))
            row["big"] = self.measure(proc.pid, base + "/big")
            row["rss_after_kb"] = rss_kb(proc.pid)
            if row.get("full_stack"):
                row["access_log_lines"] = count_lines(self.workdir / f"access-{port}.log")
            row["status"] = "ok"
            errors = errors_of(row["tiny"]) + errors_of(row["big"])
            if errors:
                row["note"] = (row.get("note", "") + f" {errors} wrk errors/non-2xx").strip()
            log(
                f"{row['label']}: tiny {row['tiny']['rps']:.0f} req/s, "
                f"big {row['big']['mbps']:.0f} MB/s, RSS {row['rss_idle_kb']} -> "
                f"{row['rss_after_kb']} kB"
            )
        except Exception as e:  # one broken proxy must not lose the rest of the run
            row["status"] = "error"
            row["note"] = str(e)[:500]
            log(f"{row['label']}: ERROR {e}")
        finally:
            self.procs.stop(proc)
        return row

    def measure(self, pid: int, url: str) -> Json:
        """One measured wrk run, with where the CPU went meanwhile: the proxy's own CPU time (all
        its processes, % of one core), how busy the proxy's core and the load core were, and so
        what else ran on the proxy's core (softirq work for loopback traffic, other processes)."""
        origin = self.origin_pid
        cpu0, cores0, t0 = cpu_seconds(pid), core_busy(), time.monotonic()
        origin0, wrk0 = cpu_seconds(origin), children_cpu_seconds()
        result = run_wrk(self.settings, url, self.args.duration)
        cpu1, cores1, t1 = cpu_seconds(pid), core_busy(), time.monotonic()
        origin1, wrk1 = cpu_seconds(origin), children_cpu_seconds()
        wall = t1 - t0
        result["proxy_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / wall, 1)
        result["wrk_cpu_pct"] = round(100.0 * (wrk1 - wrk0) / wall, 1)
        result["origin_cpu_pct"] = round(100.0 * (origin1 - origin0) / wall, 1)
        busy = {
            core: round(100.0 * (cores1[core] - cores0.get(core, 0.0)) / wall, 1) for core in cores1
        }
        result["core_busy_pct"] = busy
        if self._cores in busy:  # a single-core proxy
            result["other_on_proxy_core_pct"] = round(
                max(0.0, busy[self._cores] - result["proxy_cpu_pct"]), 1
            )
        load = self.settings["load_core"]
        if load != self._cores and load in busy:
            result["load_core_busy_pct"] = busy[load]
        return result

    def half_rate(self, url: str, max_rps: float) -> Json:
        """Latency at half the measured maximum rate. Debian has no wrk2, so wrk's Lua ``delay()``
        paces the requests instead: each time a connection is free it takes the next send slot
        of one constant-rate schedule (slots ``1 / target`` apart, shared by all connections), as
        wrk2's ``-R`` does. A slot no connection was free for is dropped, not made up for, so the
        achieved rate is recorded next to the target."""
        target = max_rps / 2.0
        conns = self.settings["half_rate_connections"]
        script = self.workdir / f"pace-{int(target)}.lua"
        script.write_text(PACING_LUA.replace("INTERVAL_MS", f"{1000.0 / target:.6f}"))
        result = run_wrk(self.settings, url, self.args.duration, connections=conns, script=script)
        result["target_rps"] = target
        result["connections"] = conns
        log(
            f"  half rate: target {target:.0f} req/s, got {result['rps']:.0f}, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
        )
        return result

    # -- memory

    def memory_huge(self, venv: Path) -> Json:
        out: Json = {"size_bytes": HUGE_SIZE}
        port = free_port()
        self._cores = self.settings["proxy_core"]
        proc = self.gateway_starter(venv, full=True)(port)
        out["gateway_command"] = proc.cmdline
        url = f"http://127.0.0.1:{port}/huge"
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/tiny", timeout=60)
            time.sleep(0.5)
            out["rss_start_kb"] = rss_kb(proc.pid)
            for rate, key in ((None, "fast"), (self.args.slow_rate, "slow")):
                for _ in range(20):  # the pool, the access log thread, buffers: all warm
                    urllib.request.urlopen(
                        urllib.request.Request(
                            f"http://127.0.0.1:{port}/tiny", headers={"X-API-Key": API_KEY}
                        )
                    ).read()
                time.sleep(0.3)
                before = rss_kb(proc.pid, tree=False) or 0
                cmd = ["taskset", "-c", self.settings["load_core"], "curl", "-sS"]
                cmd += ["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
                cmd += ["-H", f"X-API-Key: {API_KEY}"]
                if rate:
                    cmd += ["--limit-rate", rate]
                cmd.append(url)
                with RssSampler(proc.pid) as sampler:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                code, size, seconds = (done.stdout.split() + ["", "", ""])[:3]
                after = rss_kb(proc.pid, tree=False) or 0
                out[key] = {
                    "command": shlex.join(cmd),
                    "status": code,
                    "bytes": int(size or 0),
                    "seconds": float(seconds or 0),
                    "rss_before_kb": before,
                    "rss_peak_kb": sampler.peak,
                    "rss_after_kb": after,
                    "added_kb": max(sampler.peak, after) - before,
                    "samples": sampler.samples,
                }
                log(
                    f"200 MB response ({key}): status {code}, {size} bytes in {seconds} s, "
                    f"RSS {before} -> peak {sampler.peak} kB"
                )
        except Exception as e:
            out["error"] = str(e)[:500]
            log(f"200 MB response: ERROR {e}")
        finally:
            self.procs.stop(proc)
        return out

    def memory_idle(self, venv: Path) -> Json:
        count = self.args.idle_connections
        out: Json = {"connections": count}
        port = free_port()
        self._cores = self.settings["proxy_core"]
        conf = self.workdir / f"gateway-idle-{port}.toml"
        conf.write_text(
            gateway_toml(self.workdir, port, self.origin_port, full=True, keepalive_ms=300000)
        )
        cmd = [str(venv / "bin" / "twistd"), "--pidfile=", "-n", "avx-gateway"]
        cmd += ["--config", str(conf)]
        proc = self.procs.start(cmd, f"gateway-idle-{port}", cores=self._cores)
        out["gateway_command"] = proc.cmdline
        client = None
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/tiny", timeout=60)
            time.sleep(0.5)
            out["rss_before_kb"] = rss_kb(proc.pid)
            client_cmd = [sys.executable, str(BENCH / "idle_conns.py"), "--port", str(port)]
            client_cmd += ["--count", str(count), "--hold", "120"]
            for header in HEADERS:
                client_cmd += ["--header", header]
            client = self.procs.start(
                client_cmd,
                "idle-client",
                cores=self.settings["load_core"],
                stdout=subprocess.PIPE,
            )
            out["client_command"] = client.cmdline
            line = client.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"idle client exited: {tail(client)}")
            out.update(json.loads(line))
            time.sleep(2.0)
            out["rss_after_kb"] = rss_kb(proc.pid)
            out["gateway_nofile"] = nofile_limit(proc.pid)
            out["gateway_alive"] = proc.poll() is None
            client.send_signal(signal.SIGTERM)
            line = client.stdout.readline()  # type: ignore[union-attr]
            if line:
                out.update(json.loads(line))
            per_conn = (out["rss_after_kb"] - out["rss_before_kb"]) / max(1, out["open"])
            out["kb_per_connection"] = round(per_conn, 2)
            log(
                f"{out['open']} idle connections ({out['failed']} failed, "
                f"{out.get('still_open')} still open at the end): RSS "
                f"{out['rss_before_kb']} -> {out['rss_after_kb']} kB"
            )
        except Exception as e:
            out["error"] = str(e)[:500]
            log(f"idle connections: ERROR {e}")
        finally:
            if client is not None:
                self.procs.stop(client)
            self.procs.stop(proc)
        return out

    # -- everything

    def run(self) -> Json:
        args = self.args
        started = datetime.datetime.now(datetime.timezone.utc)
        self.results = {
            "meta": {
                "started": started.isoformat(timespec="seconds"),
                "machine": machine_info(args),
                "settings": self.settings,
                "workdir": str(self.workdir),
            },
            "rows": [],
        }
        log(f"work dir {self.workdir}")
        self.make_files()
        self.start_origin()
        cpy = ROOT / ".venv"
        pypy = Path(args.pypy_venv) if args.pypy_venv else ROOT / ".venv-pypy"
        aio = Path(args.aiohttp_venv)
        one, both = self.settings["proxy_core"], self.all_cores
        ours = {"ours": True, "ratios": True, "half_rate": True}
        full = {**ours, "full_stack": True}
        plan: List[Any] = [
            (
                "gw-plain",
                "avx-gateway, one route",
                "CPython",
                self.gateway_starter(cpy, False),
                one,
                ours,
            ),
            (
                "gw-full",
                "avx-gateway, full stack",
                "CPython",
                self.gateway_starter(cpy, True),
                one,
                full,
            ),
            ("nginx", "nginx proxy_pass", "nginx", self.nginx_starter(), one, {}),
            (
                "twisted-rp",
                "twisted ReverseProxyResource",
                "CPython",
                self.script_starter(cpy / "bin" / "python", "twisted_rp.py", str(self.origin_port)),
                one,
                {},
            ),
            (
                "aiohttp",
                "aiohttp proxy",
                "CPython",
                self.script_starter(
                    aio / "bin" / "python",
                    "aiohttp_proxy.py",
                    f"http://127.0.0.1:{self.origin_port}",
                ),
                one,
                {},
            ),
        ]
        has_pypy = (pypy / "bin" / "twistd").exists()
        plan += [
            (
                "gw-plain-pypy",
                "avx-gateway, one route",
                "PyPy",
                self.gateway_starter(pypy, False),
                one,
                ours,
            ),
            (
                "gw-full-pypy",
                "avx-gateway, full stack",
                "PyPy",
                self.gateway_starter(pypy, True),
                one,
                full,
            ),
            (
                "twisted-rp-pypy",
                "twisted ReverseProxyResource",
                "PyPy",
                self.script_starter(
                    pypy / "bin" / "python", "twisted_rp.py", str(self.origin_port)
                ),
                one,
                {},
            ),
            (
                "gw-w1",
                "avx-gateway, one route, workers = 1",
                "CPython",
                self.gateway_starter(cpy, False, 1),
                both,
                {"ours": True, "workers": 1},
            ),
            (
                "gw-w2",
                "avx-gateway, one route, workers = 2",
                "CPython",
                self.gateway_starter(cpy, False, 2),
                both,
                {"ours": True, "workers": 2, "check_workers": True},
            ),
        ]
        only = set(args.only.split(",")) if args.only else None
        for row_id, label, runtime, starter, cores, extra in plan:
            row: Json = {"id": row_id, "label": label, "runtime": runtime, **extra}
            self.results["rows"].append(row)
            if only is not None and row_id not in only:
                row["status"] = "unselected"
                continue
            if runtime == "PyPy" and not has_pypy:
                row["status"] = "skipped"
                row["note"] = f"no PyPy venv at {pypy} (make test PYTHON=pypy3 VENV=.venv-pypy)"
                log(f"{label} (PyPy): skipped, {row['note']}")
                continue
            self.run_row(row, starter, cores)
            self.save()
        if not args.skip_memory:
            self.results["memory"] = {
                "huge": self.memory_huge(cpy),
                "idle": self.memory_idle(cpy),
            }
        finished = datetime.datetime.now(datetime.timezone.utc)
        self.results["meta"]["finished"] = finished.isoformat(timespec="seconds")
        self.results["meta"]["wall_s"] = round((finished - started).total_seconds())
        self.results["meta"]["machine"]["loadavg_at_end"] = (
            Path("/proc/loadavg").read_text().split()[:3]
        )
        self.save()
        return self.results

    def save(self) -> None:
        results_dir = Path(self.args.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.results["meta"]["started"].replace(":", "").replace("+0000", "Z")
        text = json.dumps(self.results, indent=2, sort_keys=False) + "\n"
        if self.args.only:  # a partial run never replaces the last complete one
            (results_dir / f"results-{stamp}-partial.json").write_text(text)
            return
        (results_dir / f"results-{stamp}.json").write_text(text)
        (results_dir / "latest.json").write_text(text)


# --------------------------------------------------------------------------- machine


def _first_line(cmd: List[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_info(args: argparse.Namespace) -> Json:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    pypy = Path(args.pypy_venv) if args.pypy_venv else ROOT / ".venv-pypy"
    versions_py = "import sys, twisted; print(sys.version.replace(chr(10), ' '), '| Twisted', twisted.__version__)"  # noqa: E501
    info: Json = {
        "nproc": _first_line(["nproc"]),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "cpython": _first_line([str(ROOT / ".venv" / "bin" / "python"), "-c", versions_py]),
        "pypy": (
            _first_line([str(pypy / "bin" / "python"), "-c", versions_py])
            if (pypy / "bin" / "python").exists()
            else "not available"
        ),
        "aiohttp": _first_line(
            [
                str(Path(args.aiohttp_venv) / "bin" / "python"),
                "-c",
                "import sys, aiohttp; print('aiohttp', aiohttp.__version__, 'on Python', "
                "sys.version.split()[0])",
            ]
        ),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]).split(" (")[0],
        "gateway_git": _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }
    return info


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.sh", description="Benchmark avx-gateway against other proxies."
    )
    parser.add_argument("--quick", action="store_true", help="3 s cells, 2 s warm-up")
    parser.add_argument("--duration", type=float, help="seconds per measured cell (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per proxy (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument(
        "--half-rate-connections",
        type=int,
        default=64,
        help="connections of the half-rate latency run (default 64)",
    )
    parser.add_argument("--idle-connections", type=int, default=10000)
    parser.add_argument("--slow-rate", default="40M", help="curl --limit-rate of the slow 200 MB")
    parser.add_argument(
        "--only",
        help="comma-separated row ids to run (gw-plain, gw-full, nginx, twisted-rp, aiohttp, "
        "gw-plain-pypy, gw-full-pypy, twisted-rp-pypy, gw-w1, gw-w2); a partial run is saved as "
        "results-*-partial.json and leaves latest.json and the doc alone unless --doc is given",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory checks")
    parser.add_argument("--pypy-venv", help="PyPy venv (default .venv-pypy)")
    parser.add_argument("--aiohttp-venv", default=str(BENCH / ".venv"))
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--doc", help="markdown file to (re)write (default docs/benchmarks.md)")
    parser.add_argument("--workdir", help="temp dir for configs, logs and files")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    return args


def main() -> int:
    args = parse_args()
    for tool in ("nginx", "wrk", "taskset", "curl"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (bench/run.sh installs it)", file=sys.stderr)
            return 2
    if not (ROOT / ".venv" / "bin" / "twistd").exists():
        print("bench: no .venv (run `make test` or bench/run.sh)", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.procs.stop_all()
        if not args.keep_workdir and not args.workdir:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    print(render.render_text(results))
    if args.only and not args.doc:
        log(f"partial run (--only): results in {args.results_dir}, docs left alone")
        return 0
    doc = Path(args.doc or ROOT / "docs" / "benchmarks.md")
    render.write_doc(results, doc)
    log(f"wrote {doc} and {args.results_dir}/latest.json in {results['meta']['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
