"""The memory checks of bench/run.py, each on a fresh full-stack CPython gateway: RSS while a
200 MB response passes through, while a 1 GB upload passes through, and with 10,000 idle
keep-alive client connections."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

from configs import API_KEY, HEADERS, HUGE_SIZE, gateway_toml
from procs import (
    RssSampler,
    free_port,
    io_counters,
    log,
    nofile_limit,
    rss_kb,
    tail,
    wait_ready,
)

if TYPE_CHECKING:
    from run import Bench

Json = Dict[str, Any]

BENCH = Path(__file__).resolve().parent


def huge_response(bench: Bench, venv: Path) -> Json:
    out: Json = {"size_bytes": HUGE_SIZE}
    port = free_port()
    bench.cores = bench.settings["proxy_core"]
    proc = bench.gateway_starter(venv, full=True)(port)
    out["gateway_command"] = proc.cmdline
    url = f"http://127.0.0.1:{port}/huge"
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/tiny", timeout=60)
        time.sleep(0.5)
        out["rss_start_kb"] = rss_kb(proc.pid)
        for rate, key in ((None, "fast"), (bench.args.slow_rate, "slow")):
            for _ in range(20):  # the pool, the access log thread, buffers: all warm
                urllib.request.urlopen(
                    urllib.request.Request(
                        f"http://127.0.0.1:{port}/tiny", headers={"X-API-Key": API_KEY}
                    )
                ).read()
            time.sleep(0.3)
            before = rss_kb(proc.pid, tree=False) or 0
            cmd = ["taskset", "-c", bench.settings["load_core"], "curl", "-sS"]
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
        bench.procs.stop(proc)
    return out


def idle_connections(bench: Bench, venv: Path) -> Json:
    count = bench.args.idle_connections
    out: Json = {"connections": count}
    port = free_port()
    bench.cores = bench.settings["proxy_core"]
    conf = bench.workdir / f"gateway-idle-{port}.toml"
    conf.write_text(
        gateway_toml(bench.workdir, port, bench.origin_port, full=True, keepalive_ms=300000)
    )
    cmd = [str(venv / "bin" / "twistd"), "--pidfile=", "-n", "avx-gateway"]
    cmd += ["--config", str(conf)]
    proc = bench.procs.start(cmd, f"gateway-idle-{port}", cores=bench.cores)
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
        client = bench.procs.start(
            client_cmd,
            "idle-client",
            cores=bench.settings["load_core"],
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
            bench.procs.stop(client)
        bench.procs.stop(proc)
    return out


def upload(bench: Bench, venv: Path) -> Json:
    """A large request body (``--upload-size``, 1 GB by default) streamed through the gateway to
    bench/sink_origin.py, which reads and discards it and answers how many bytes it got: once
    with ``Content-Length``, once chunked, while a thread samples the gateway's RSS. Also kept:
    what the gateway wrote to storage meanwhile (``write_bytes`` of /proc/PID/io: a body spooled
    to a temp file shows there, not in RSS) and when the origin got its first byte compared with
    when the client sent its last (streamed, or stored and then forwarded)."""
    size = bench.args.upload_size
    out: Json = {"size_bytes": size}
    load_core = bench.settings["load_core"]
    bench.cores = bench.settings["proxy_core"]
    sink_port = free_port()
    sink_cmd = [sys.executable, str(BENCH / "sink_origin.py"), str(sink_port)]
    sink = bench.procs.start(sink_cmd, "sink-origin", cores=load_core)
    out["sink_command"] = sink.cmdline
    port = free_port()
    conf = bench.workdir / f"gateway-upload-{port}.toml"
    conf.write_text(
        gateway_toml(
            bench.workdir,
            port,
            bench.origin_port,
            full=True,
            sink_port=sink_port,
            sink_max_body=max(2 * size, size + 1),
        )
    )
    cmd = [str(venv / "bin" / "twistd"), "--pidfile=", "-n", "avx-gateway"]
    cmd += ["--config", str(conf)]
    proc = bench.procs.start(cmd, f"gateway-upload-{port}", cores=bench.cores)
    out["gateway_command"] = proc.cmdline
    try:
        wait_ready(sink, f"http://127.0.0.1:{sink_port}/sink", timeout=20)
        wait_ready(proc, f"http://127.0.0.1:{port}/tiny", timeout=60)
        time.sleep(0.5)
        out["rss_start_kb"] = rss_kb(proc.pid)
        for mode in ("length", "chunked"):
            for _ in range(20):  # the sink's pool, the access log thread, buffers: all warm
                urllib.request.urlopen(
                    urllib.request.Request(
                        f"http://127.0.0.1:{port}/sink",
                        data=b"x" * 1000,
                        headers={"X-API-Key": API_KEY},
                    )
                ).read()
            time.sleep(0.3)
            before = rss_kb(proc.pid, tree=False) or 0
            io_before = io_counters(proc.pid)
            client = ["taskset", "-c", load_core, sys.executable, str(BENCH / "upload_client.py")]
            client += ["--port", str(port), "--path", "/sink", "--size", str(size)]
            client += ["--mode", mode, "--header", f"X-API-Key: {API_KEY}"]
            with RssSampler(proc.pid) as sampler:
                done = subprocess.run(client, capture_output=True, text=True, timeout=900)
            after = rss_kb(proc.pid, tree=False) or 0
            io_after = io_counters(proc.pid)
            lines = done.stdout.strip().splitlines()
            if not lines:
                raise RuntimeError(f"upload client failed: {done.stderr.strip()[-300:]}")
            result = json.loads(lines[-1])
            response = result.get("response")
            received = response.get("received") if isinstance(response, dict) else None
            cell = {
                "command": shlex.join(client),
                "status": result.get("status"),
                "sent": result.get("sent"),
                "origin_received": received,
                "seconds": result.get("seconds"),
                "rss_before_kb": before,
                "rss_peak_kb": sampler.peak,
                "rss_after_kb": after,
                "added_kb": max(sampler.peak, after) - before,
                "samples": sampler.samples,
            }
            if "write_bytes" in io_before and "write_bytes" in io_after:
                cell["gateway_disk_write_bytes"] = (
                    io_after["write_bytes"] - io_before["write_bytes"]
                )
            if isinstance(response, dict) and response.get("first_byte_at") is not None:
                start, sent_at = result.get("started_at"), result.get("sent_at")
                if start is not None and sent_at is not None:
                    # > 0: the origin's first byte came only after the client's last one.
                    cell["origin_first_byte_after_client_done_s"] = round(
                        response["first_byte_at"] - sent_at, 3
                    )
                    cell["origin_first_byte_after_start_s"] = round(
                        response["first_byte_at"] - start, 3
                    )
            for key in ("error", "send_error"):
                if result.get(key):
                    cell[key] = result[key]
            if not isinstance(response, dict) and response:
                cell["response"] = response
            out[mode] = cell
            log(
                f"{size / 1e9:g} GB upload ({mode}): status {cell['status']}, sent "
                f"{cell['sent']}, origin got {received} bytes in {cell['seconds']} s (first "
                f"{cell.get('origin_first_byte_after_start_s')} s after the start), RSS "
                f"{before} -> peak {sampler.peak} -> {after} kB, "
                f"{cell.get('gateway_disk_write_bytes')} bytes written to storage"
            )
    except Exception as e:
        out["error"] = str(e)[:500]
        log(f"upload: ERROR {e}")
    finally:
        bench.procs.stop(proc)
        bench.procs.stop(sink)
    return out
