"""wrk for bench/run.py: one bounded ``wrk --latency`` run, its output parsed, the Lua pacing
script of the half-rate latency run and the POST script of the policy rows."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from configs import HEADERS

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


def post_lua(body: bytes) -> str:
    """wrk script sending every request as a POST of ``body`` (wrk adds its Content-Length; the
    other fields come from ``-H``)."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body not quotable as a Lua long string")
    return f'wrk.method = "POST"\nwrk.body = [==[{text}]==]\n'


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
    extra_headers: Sequence[str] = (),
) -> Json:
    """``extra_headers`` go after the usual ones (``Connection: close`` for the new-handshake
    runs: the server closes after each response and wrk opens a new connection for the next)."""
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
    for header in [*HEADERS, *extra_headers]:
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
