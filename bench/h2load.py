"""h2load (nghttp2's HTTP/2 load generator) for bench/run.py's HTTP/2 rows: one bounded
``h2load -D`` run over cleartext HTTP/2 with prior knowledge (h2c), its output parsed, and its
per-request log (``--log-file``) read for the latency percentiles, which h2load does not print."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from configs import HEADERS

Json = Dict[str, Any]

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"bad h2load time {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def percentile(sorted_values: List[float], pct: float) -> Optional[float]:
    """The nearest-rank ``pct`` percentile of ``sorted_values`` (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil(n * pct / 100), at least 1
    return sorted_values[int(rank) - 1]


def parse_h2load(out: str) -> Json:
    """h2load's summary: req/s, requests by outcome and status class, traffic, and the
    "time for request" line (min, max, mean, sd)."""
    result: Json = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    result["seconds"] = float(m.group(1)) if m else None
    result["rps"] = float(m.group(2)) if m else None
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    counts = dict(zip(keys, map(int, m.groups()))) if m else {}
    result["requests"] = counts.get("done")
    result["failed"] = counts.get("failed", 0)
    result["errored"] = counts.get("errored", 0)
    result["timeout"] = counts.get("timeout", 0)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    result["status_codes"] = (
        dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups()))) if m else {}
    )
    m = re.search(r"traffic: \S+ \((\d+)\) total", out)
    total = int(m.group(1)) if m else None
    result["traffic_bytes"] = total
    result["mbps"] = (
        total / result["seconds"] / 1e6 if total is not None and result["seconds"] else None
    )
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        result["min_ms"], result["max_ms"], result["avg_ms"], result["sd_ms"] = (
            _ms(g) for g in m.groups()
        )
    m = re.search(r"Application protocol: (\S+)", out)
    result["protocol"] = m.group(1) if m else None
    return result


def log_percentiles(log_file: Path) -> Json:
    """p50/p90/p99 (ms) of the per-request durations in h2load's ``--log-file`` (start time,
    status, microseconds to the end of the response), and how many lines it had."""
    durations: List[float] = []
    try:
        with open(log_file) as f:
            for line in f:
                fields = line.split("\t")
                if len(fields) >= 3:
                    try:
                        durations.append(int(fields[2]) / 1000.0)
                    except ValueError:
                        continue
    except OSError:
        return {}
    durations.sort()
    out: Json = {"logged": len(durations)}
    for pct in (50, 75, 90, 99):
        out[f"p{pct}_ms"] = percentile(durations, pct)
    return out


def run_h2load(
    settings: Json,
    url: str,
    duration: float,
    log_file: Optional[Path] = None,
    extra_headers: Sequence[str] = (),
) -> Json:
    """One h2load run: one thread pinned to the load core, ``h2_connections`` connections with
    up to ``h2_streams`` concurrent streams each, for ``duration`` seconds (``-D``). The same
    headers as the wrk rows. With ``log_file``, the latency percentiles come from it."""
    cmd = [
        "taskset",
        "-c",
        settings["load_core"],
        "h2load",
        "-t1",
        f"-c{settings['h2_connections']}",
        f"-m{settings['h2_streams']}",
        f"-D{max(1, int(round(duration)))}",
    ]
    for header in [*HEADERS, *extra_headers]:
        cmd += ["-H", header]
    if log_file is not None:
        cmd.append(f"--log-file={log_file}")
    cmd.append(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0 or "req/s" not in done.stdout:
        tail = " | ".join((done.stderr + done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"h2load failed ({done.returncode}): {tail}")
    result = parse_h2load(done.stdout)
    if result.get("protocol") not in ("h2c", "h2"):
        raise RuntimeError(f"h2load did not speak HTTP/2: protocol {result.get('protocol')}")
    if log_file is not None:
        result.update(log_percentiles(log_file))
        try:
            log_file.unlink()
        except OSError:
            pass
    result["command"] = shlex.join(cmd)
    return result


def errors_of(result: Json) -> int:
    """Requests that failed (h2load's "failed" includes "errored" and "timeout") or got a 4xx
    or 5xx, whichever is more (h2load may count a non-2xx answer as failed too)."""
    codes = result.get("status_codes") or {}
    return max(int(result.get("failed") or 0), codes.get("4xx", 0) + codes.get("5xx", 0))


def check_h2c(url: str, headers: Sequence[str] = HEADERS) -> Json:
    """curl ``--http2-prior-knowledge``: the status and the HTTP version it got (``2``)."""
    cmd = ["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "-o", "/dev/null"]
    cmd += ["-w", "%{http_code} %{http_version}"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    status, _, version = done.stdout.strip().partition(" ")
    return {
        "curl_command": shlex.join(cmd),
        "curl_exit": done.returncode,
        "status": status,
        "http_version": version,
        "error": done.stderr.strip()[-300:],
    }
