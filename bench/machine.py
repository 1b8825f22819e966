"""The machine and the versions a bench/run.py run used (for the "Machine" section)."""

from __future__ import annotations

import argparse
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, List

Json = Dict[str, Any]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


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
        "httptools": _httptools(ROOT / ".venv", pypy),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "curl": _first_line(["curl", "--version"]).split(" (")[0],
        "gateway_git": _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }
    return info


def _httptools(cpython: Path, pypy: Path) -> str:
    """httptools' version in each venv (the reference proxy and the upload check's origin)."""
    code = (
        "try:\n import httptools; print(httptools.__version__)\n"
        "except ImportError:\n print('not installed')"
    )
    parts = []
    for venv, name in ((cpython, "CPython"), (pypy, "PyPy")):
        if (venv / "bin" / "python").exists():
            parts.append(f"{_first_line([str(venv / 'bin' / 'python'), '-c', code])} ({name})")
    return ", ".join(parts) or "not available"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()
