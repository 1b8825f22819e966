"""avx-gateway benchmark: the gateway against nginx, Twisted's ReverseProxyResource, aiohttp and
a bare Twisted + httptools reference proxy.

Run through ``bash bench/run.sh`` (which installs nginx and wrk, the aiohttp venv and httptools
first); every option is passed on. One run:

1. starts an nginx origin (1 worker, its own config in a temp dir) serving ``/tiny`` (13 bytes),
   ``/big`` (1 MiB) and ``/huge`` (200 MB), pinned with the load generator to the second core;
2. for each proxy (pinned to the first core): starts it, records its RSS, warms it up, measures
   ``/tiny`` and ``/big`` with ``wrk --latency`` (64 keep-alive connections), records its RSS
   again and, for the gateway, measures latency at half the rate it just reached; two more
   full-stack rows add tracing of every request (OTLP/HTTP to bench/otlp_sink.py) and a no-op
   plugin on every phase (bench/noop_plugin.py, through bench/twistd_with_plugin.py), for
   their ratios to the full-stack row; the TLS rows (nginx, and the full-stack gateway on CPython
   and PyPy, over TLS with one certificate minted at run time, bench/tls_certs.py) are checked
   with ``curl --cacert`` and measured with keep-alive like the others, then with a new TLS
   connection per request (``wrk -H "Connection: close"``); the HTTP/2 rows (nginx with an h2c
   listener, the one-route gateway with an h2c listener to the HTTP/1.1 origin and to the
   origin's h2c port with ``protocol = "h2c"``) are checked with ``curl --http2-prior-knowledge``
   and measured with h2load (bench/h2load.py) instead of wrk; the cache rows (nginx with
   ``proxy_cache``, the full-stack gateway with ``[routes.cache]``, CPython and PyPy) store
   ``/cached`` (``/tiny`` with ``Cache-Control: max-age=3600``) with one request, check that the
   next one is a hit, and measure hits of it with wrk while the origin's count of ``/cached``
   requests (its access log) must stay flat; the policy rows (the full stack on CPython and
   PyPy, each checked first through the gateway) measure a POST of a small JSON body to
   ``/tiny`` without and with request header transforms + JSON Schema validation of it
   (``[routes.request]``, ``[routes.validate]``), and a GET of ``/json`` (100 KB of JSON) with
   ``Accept-Encoding: gzip`` without and with ``[routes.compression]``;
3. the memory checks (bench/memory.py): RSS of a 200 MB response passing through, of a 1 GB
   upload passing through to an origin that discards it (bench/sink_origin.py), and of 10,000
   idle keep-alive client connections;
4. writes ``bench/results/latest.json`` (and a timestamped copy) and renders it with
   ``bench/render.py`` to stdout and ``docs/benchmarks.md`` (a partial run, ``--only``: only
   with ``--doc``, and then only the doc's overhead, TLS, HTTP/2, cache and policy sections).

The rest of bench/: procs.py (starting and stopping processes, RSS and CPU from /proc), wrk.py
(wrk runs and their output), h2load.py (h2load runs, their output and per-request log),
configs.py (what is sent and served, the nginx and gateway configs), tls_certs.py (the TLS rows'
CA and certificate), machine.py (the "Machine" section), and the proxies and clients it starts.

Everything listens on and talks to 127.0.0.1 (the idle-connection client also uses 127.0.0.2..
as source addresses); every load run is bounded by ``wrk -d`` (or ``h2load -D``); every process
started here is killed on exit.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

# The other modules of bench/, next to this file.
import memory  # noqa: E402
import render  # noqa: E402
from configs import (  # noqa: E402
    API_KEY,
    BIG_SIZE,
    CACHED_CACHE_CONTROL,
    CACHED_ORIGIN_LOG,
    CACHED_PATH,
    HEADERS,
    HEADERS_PATH,
    HUGE_SIZE,
    JSON_EXTRA_HEADERS,
    JSON_PATH,
    NOOP_PLUGIN,
    ORIGIN_HEADER,
    POLICY_BODY,
    POLICY_EXTRA_HEADERS,
    POLICY_INVALID_BODY,
    POLICY_PATH,
    POLICY_SCHEMA,
    POLICY_SCHEMA_FILE,
    TINY_BODY,
    UPLOAD_SIZE,
    gateway_toml,
    json_document,
    nginx_cache_proxy_conf,
    nginx_h2_proxy_conf,
    nginx_proxy_conf,
    nginx_tls_proxy_conf,
    origin_conf,
)
from h2load import check_h2c, run_h2load  # noqa: E402
from h2load import errors_of as h2load_errors  # noqa: E402
from machine import machine_info  # noqa: E402
from procs import (  # noqa: E402
    Processes,
    children_cpu_seconds,
    core_busy,
    count_lines,
    cpu_seconds,
    free_port,
    log,
    rss_kb,
    wait_ready,
)
from procs import tail as tail_of  # noqa: E402
from tls_certs import BenchCerts, mint  # noqa: E402
from wrk import PACING_LUA, errors_of, post_lua, run_wrk  # noqa: E402

WORKERS_NOT_IMPLEMENTED = "worker processes are not implemented yet"
#: What the gateway's config check says when it has no upstream HTTP/2 (``protocol``) yet.
UPSTREAM_PROTOCOL_UNKNOWN = re.compile(r"upstream\.protocol: unknown key")

Json = Dict[str, Any]

# --------------------------------------------------------------------------- checks


def add_note(row: Json, text: str) -> None:
    """Append ``text`` to the row's note (what the results table says under it)."""
    row["note"] = (row.get("note", "") + " " + text).strip()


def _fetch(url: str, headers: Dict[str, str], context: Optional[ssl.SSLContext] = None) -> Any:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            resp.read()
            return resp.status, resp.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers


def _request(
    url: str, headers: Dict[str, str], body: Optional[bytes] = None, method: str = "GET"
) -> Any:
    """One request: (status, header fields, body as received: never decoded)."""
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def check_full_stack(base: str, context: Optional[ssl.SSLContext] = None) -> Json:
    """Make sure the full-stack row really runs its middleware: no key is 401, the key passes
    with a CORS answer, metrics are served. A failed check fails the row."""
    key = {"X-API-Key": API_KEY}
    no_key, _ = _fetch(base + "/tiny", {"Origin": ORIGIN_HEADER}, context)
    ok, headers = _fetch(base + "/tiny", {**key, "Origin": ORIGIN_HEADER}, context)
    metrics, _ = _fetch(base + "/metrics", key, context)
    checks = {
        "without_key_status": no_key,
        "with_key_status": ok,
        "cors_allow_origin": headers.get("Access-Control-Allow-Origin"),
        "metrics_status": metrics,
    }
    if no_key != 401 or ok != 200 or checks["cors_allow_origin"] != ORIGIN_HEADER or metrics != 200:
        raise RuntimeError(f"full stack not active: {checks}")
    return checks


def check_tls(port: int, ca_file: Path) -> Json:
    """Before a TLS row's load: curl, verifying against the bench CA, gets 200 from ``/tiny``
    (and says which protocol, cipher and ALPN were negotiated); then Python's ``ssl`` makes two
    connections in a row, the second offering the first one's session, to see whether the server
    resumes sessions (wrk does offer it on each reconnect). A failed curl fails the row."""
    url = f"https://127.0.0.1:{port}/tiny"
    cmd = ["curl", "-sS", "-v", "--noproxy", "*", "--cacert", str(ca_file), "-o", "/dev/null"]
    cmd += ["-w", "%{http_code}"]
    for header in HEADERS:
        cmd += ["-H", header]
    cmd.append(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    checks: Json = {"curl_command": shlex.join(cmd), "curl_status": done.stdout.strip()}
    m = re.search(r"SSL connection using (\S+) / (\S+)", done.stderr)
    if m:
        checks["protocol"], checks["cipher"] = m.group(1), m.group(2)
    m = re.search(r"ALPN: server accepted (\S+)|ALPN, server accepted to use (\S+)", done.stderr)
    if m:
        checks["alpn"] = m.group(1) or m.group(2)
    if done.returncode != 0 or checks["curl_status"] != "200":
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"curl --cacert over TLS: exit {done.returncode}, {checks}: {tail}")
    context = ssl.create_default_context(cafile=str(ca_file))
    session = None
    reused = []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
                request = "GET /tiny HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                request += "".join(f"{h}\r\n" for h in HEADERS) + "\r\n"
                conn.sendall(request.encode())
                while conn.recv(65536):  # to the end: TLS 1.3 tickets come after the handshake
                    pass
                reused.append(conn.session_reused)
                session = conn.session
    checks["second_connection_resumed"] = bool(reused[1])
    return checks


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
            "h2_connections": args.h2_connections,
            "h2_streams": args.h2_streams,
        }
        self.origin_port = 0
        self.origin_h2c_port = 0  # the origin's cleartext HTTP/2 port (the h2c upstream)
        self.origin_pid = 0
        self.cores = self.settings["proxy_core"]  # where the next proxy started is pinned
        self.sink: Optional[Any] = None  # (process, base URL) of the tracing row's OTLP sink
        self.certs: Optional[BenchCerts] = None  # the TLS rows' certificate, minted once
        self.tls_context: Optional[ssl.SSLContext] = None  # clients' context: the bench CA
        self.results: Json = {}

    # -- setup

    def make_files(self) -> None:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "big.bin").write_bytes(os.urandom(BIG_SIZE))
        (www / "doc.json").write_bytes(json_document())
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
        self.origin_h2c_port = free_port()
        conf = origin_conf(self.workdir, self.origin_port, self.origin_h2c_port)
        proc = self.start_nginx("origin", conf, self.settings["load_core"])
        wait_ready(proc, f"http://127.0.0.1:{self.origin_port}/tiny", timeout=20)
        self.origin_pid = proc.pid
        with urllib.request.urlopen(f"http://127.0.0.1:{self.origin_port}/tiny") as resp:
            assert resp.read() == TINY_BODY
        self.results["origin"] = {
            "port": self.origin_port,
            "h2c_port": self.origin_h2c_port,
            "command": proc.cmdline,
        }
        log(
            f"origin nginx on 127.0.0.1:{self.origin_port} (HTTP/1.1) and "
            f"127.0.0.1:{self.origin_h2c_port} (h2c), core {self.settings['load_core']}"
        )

    def tls_certs(self) -> BenchCerts:
        """The certificate of the TLS rows (nginx's and the gateway's), minted on first use."""
        if self.certs is None:
            self.certs = mint(self.workdir / "tls")
            self.tls_context = ssl.create_default_context(cafile=str(self.certs.ca_file))
            self.results["tls"] = {
                "certificate": self.certs.describe(),
                "ca_file": str(self.certs.ca_file),
                "cert_file": str(self.certs.cert_file),
                "key_file": str(self.certs.key_file),
            }
            what = self.certs.describe().replace("`", "")
            log(f"TLS: minted {self.certs.cert_file} ({what})")
        return self.certs

    # -- proxies: each returns (process, command line) started on ``port``

    def gateway_starter(
        self,
        venv: Path,
        full: bool,
        workers: int = 1,
        overhead: Optional[str] = None,
        tls: bool = False,
        http2: bool = False,
        upstream_protocol: Optional[str] = None,
        cache: bool = False,
        policies: bool = False,
        compression: bool = False,
    ) -> Callable[[int], Any]:
        """``overhead``: "tracing" adds ``[tracing]`` (every request sampled, OTLP/HTTP to the
        sink this starts, bench/otlp_sink.py); "plugin" runs the no-op plugin on the route,
        registered in-process by bench/twistd_with_plugin.py in place of the twistd script.
        ``tls``: the one listener is a TLS one with the bench certificate (no cleartext port).
        ``http2``: the one listener has ``http2 = true`` (h2c with prior knowledge on
        cleartext). ``upstream_protocol="h2c"``: the route goes to the origin's h2c port with
        ``protocol = "h2c"``. ``cache``: the route has ``[routes.cache]`` (the memory store).
        ``policies``: the route has the policy rows' ``[routes.request]`` header changes and
        ``[routes.validate]`` with ``POLICY_SCHEMA`` (written next to the TOML);
        ``compression``: ``[routes.compression]``."""

        def start(port: int) -> subprocess.Popen:
            kind = ("full" if full else "plain") + (f"-{overhead}" if overhead else "")
            kind += "-tls" if tls else ""
            kind += "-h2" if http2 else ""
            kind += f"-up-{upstream_protocol}" if upstream_protocol else ""
            kind += "-cache" if cache else ""
            kind += "-policies" if policies else ""
            kind += "-gzip" if compression else ""
            if policies:
                (self.workdir / POLICY_SCHEMA_FILE).write_text(json.dumps(POLICY_SCHEMA, indent=2))
            certs = self.tls_certs() if tls else None
            conf = self.workdir / f"gateway-{kind}-w{workers}-{port}.toml"
            endpoint = self.start_otlp_sink() if overhead == "tracing" else None
            plugins = [NOOP_PLUGIN] if overhead == "plugin" else []
            origin = self.origin_h2c_port if upstream_protocol == "h2c" else self.origin_port
            conf.write_text(
                gateway_toml(
                    self.workdir,
                    port,
                    origin,
                    full,
                    workers,
                    tracing_endpoint=endpoint,
                    plugins=plugins,
                    tls=(certs.cert_file, certs.key_file) if certs else None,
                    http2=http2,
                    upstream_protocol=upstream_protocol,
                    cache=cache,
                    validate_schema=POLICY_SCHEMA_FILE if policies else None,
                    compression=compression,
                )
            )
            args = ["--pidfile=", "-n", "avx-gateway", "--config", str(conf)]
            if overhead == "plugin":
                cmd = [str(venv / "bin" / "python"), str(BENCH / "twistd_with_plugin.py"), *args]
            else:
                cmd = [str(venv / "bin" / "twistd"), *args]
            # Spans leave every 500 ms (the SDK's default 5 s would let the queue of 2048 fill
            # and drop spans between exports); 127.0.0.1 never through an HTTP proxy.
            env = {"OTEL_BSP_SCHEDULE_DELAY": "500", "NO_PROXY": "127.0.0.1,localhost"}
            env["no_proxy"] = env["NO_PROXY"]
            return self.procs.start(
                cmd,
                f"gateway-{kind}-w{workers}-{port}",
                cores=self.cores,
                env=env if overhead == "tracing" else None,
            )

        return start

    def start_otlp_sink(self) -> str:
        """Start bench/otlp_sink.py on the load core (once per row) and return its endpoint."""
        port = free_port()
        cmd = [str(ROOT / ".venv" / "bin" / "python"), str(BENCH / "otlp_sink.py"), str(port)]
        proc = self.procs.start(cmd, f"otlp-sink-{port}", cores=self.settings["load_core"])
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base + "/ready", timeout=20, headers=[])
        self.sink = (proc, base)
        self.results.setdefault("otlp_sink", {})["command"] = proc.cmdline
        return base + "/v1/traces"

    def sink_stats(self) -> Json:
        if self.sink is None:
            return {}
        with urllib.request.urlopen(self.sink[1] + "/stats", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def check_overhead(self, row: Json, base: str) -> None:
        """Before the load: the tracing row's spans reach the sink (the stack check's requests
        were traced); the plugin row's responses are chunked (the plugin's body phase is on)."""
        kind = row.get("overhead")
        if kind == "tracing":
            deadline = time.monotonic() + 10
            stats = self.sink_stats()
            while not stats.get("requests") and time.monotonic() < deadline:
                time.sleep(0.2)
                stats = self.sink_stats()
            if not stats.get("requests") or stats.get("spans") == 0:
                raise RuntimeError(f"no spans reached the OTLP sink: {stats}")
            row["overhead_checks"] = {"sink_before_load": stats}
        elif kind == "plugin":
            status, headers = _fetch(base + "/tiny", {"X-API-Key": API_KEY})
            encoding = headers.get("Transfer-Encoding")
            row["overhead_checks"] = {"tiny_status": status, "tiny_transfer_encoding": encoding}
            if status != 200 or encoding != "chunked":
                raise RuntimeError(f"the no-op plugin's body phase is not on: {status}, {encoding}")

    def after_overhead(self, row: Json, proc: subprocess.Popen) -> None:
        """After the gateway stopped (its spans flushed): what the sink received; the calls of
        each of the plugin's phases (its shutdown line in the gateway's log)."""
        kind = row.get("overhead")
        checks = row.setdefault("overhead_checks", {})
        if kind == "tracing" and self.sink is not None:
            try:
                checks["sink_after_stop"] = self.sink_stats()
            except OSError as e:
                checks["sink_after_stop"] = {"error": str(e)}
            self.procs.stop(self.sink[0])
            self.sink = None
        elif kind == "plugin":
            text = Path(proc.logfile).read_text(errors="replace")  # type: ignore[attr-defined]
            marker = f"{NOOP_PLUGIN} calls: "
            lines = [line for line in text.splitlines() if marker in line]
            if lines:
                checks["plugin_calls"] = json.loads(lines[-1].split(marker, 1)[1])

    def scrape_counter(self, base: str, name: str) -> Optional[float]:
        """One unlabelled counter from the gateway's /metrics (None when absent)."""
        req = urllib.request.Request(base + "/metrics", headers={"X-API-Key": API_KEY})
        context = self.tls_context if base.startswith("https:") else None
        try:
            with urllib.request.urlopen(req, timeout=5, context=context) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def nginx_starter(self) -> Callable[[int], Any]:
        def start(port: int) -> subprocess.Popen:
            conf = nginx_proxy_conf(self.workdir, port, self.origin_port)
            return self.start_nginx("nginx-proxy", conf, self.cores)

        return start

    def nginx_cache_starter(self) -> Callable[[int], Any]:
        """The nginx proxy with ``proxy_cache`` (bench/configs.py, ``nginx_cache_proxy_conf``)."""

        def start(port: int) -> subprocess.Popen:
            conf = nginx_cache_proxy_conf(self.workdir, port, self.origin_port)
            return self.start_nginx("nginx-cache-proxy", conf, self.cores)

        return start

    def nginx_h2_starter(self) -> Callable[[int], Any]:
        """The nginx proxy with ``listen ... http2`` (h2c), to the HTTP/1.1 origin."""

        def start(port: int) -> subprocess.Popen:
            conf = nginx_h2_proxy_conf(self.workdir, port, self.origin_port)
            return self.start_nginx("nginx-h2-proxy", conf, self.cores)

        return start

    def nginx_tls_starter(self) -> Callable[[int], Any]:
        """The nginx proxy over TLS, with the gateway's certificate."""

        def start(port: int) -> subprocess.Popen:
            certs = self.tls_certs()
            conf = nginx_tls_proxy_conf(
                self.workdir, port, self.origin_port, certs.cert_file, certs.key_file
            )
            return self.start_nginx("nginx-tls-proxy", conf, self.cores)

        return start

    def script_starter(self, python: Path, script: str, *args: str) -> Callable[[int], Any]:
        def start(port: int) -> subprocess.Popen:
            cmd = [str(python), str(BENCH / script), str(port), *args]
            return self.procs.start(cmd, f"{Path(script).stem}-{port}", cores=self.cores)

        return start

    # -- one row

    def run_row(self, row: Json, starter: Callable[[int], Any], cores: str) -> Json:
        if row.get("h2"):
            return self.run_h2_row(row, starter, cores)
        if row.get("cache"):
            return self.run_cache_row(row, starter, cores)
        if row.get("policy"):
            return self.run_policy_row(row, starter, cores)
        args = self.args
        self.cores = cores
        row["cores"] = cores
        port = free_port()
        log(f"{row['label']}: starting on 127.0.0.1:{port}, cores {cores}")
        proc = starter(port)
        row["command"] = proc.cmdline
        tls = bool(row.get("tls"))
        base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        context = self.tls_context if tls else None
        try:
            wait_ready(proc, base + "/tiny", timeout=90, context=context)
            if tls:
                row["tls_checks"] = check_tls(port, self.tls_certs().ca_file)
            time.sleep(0.5)
            row["rss_idle_kb"] = rss_kb(proc.pid)
            if row.get("full_stack"):
                row["stack_checks"] = check_full_stack(base, context)
            if row.get("overhead"):
                self.check_overhead(row, base)
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
            if tls:  # a new TLS connection (and handshake) for every request
                close = ["Connection: close"]
                if args.warmup > 0:
                    run_wrk(self.settings, base + "/tiny", args.warmup / 2, extra_headers=close)
                row["handshake"] = self.measure(proc.pid, base + "/tiny", extra_headers=close)
            row["rss_after_kb"] = rss_kb(proc.pid)
            if row.get("overhead") == "tracing":
                dropped = self.scrape_counter(base, "avx_tracing_spans_dropped_total")
                row.setdefault("overhead_checks", {})["spans_dropped"] = dropped
            if row.get("full_stack"):
                row["access_log_lines"] = count_lines(self.workdir / f"access-{port}.log")
            row["status"] = "ok"
            cells = [row[c] for c in ("tiny", "big", "handshake") if c in row]
            errors = sum(errors_of(cell) for cell in cells)
            if errors:
                add_note(row, f"{errors} wrk errors/non-2xx")
            handshakes = ""
            if "handshake" in row:
                handshakes = f", {row['handshake']['rps']:.0f} new TLS connections/s"
            log(
                f"{row['label']}: tiny {row['tiny']['rps']:.0f} req/s, "
                f"big {row['big']['mbps']:.0f} MB/s{handshakes}, RSS {row['rss_idle_kb']} -> "
                f"{row['rss_after_kb']} kB"
            )
        except Exception as e:  # one broken proxy must not lose the rest of the run
            row["status"] = "error"
            row["note"] = str(e)[:500]
            log(f"{row['label']}: ERROR {e}")
        finally:
            self.procs.stop(proc)
            if row.get("overhead"):
                try:
                    self.after_overhead(row, proc)
                except Exception as e:
                    row.setdefault("overhead_checks", {})["error"] = str(e)[:300]
        return row

    # -- cache rows

    def origin_cached_requests(self) -> int:
        """How many requests for ``/cached`` reached the origin so far (its access log)."""
        return count_lines(self.workdir / CACHED_ORIGIN_LOG) or 0

    def cache_probe(self, url: str, header: str) -> Json:
        """One GET of ``url`` with the bench headers: status, ``header`` (the cache's verdict),
        ``Age`` and ``Cache-Control``."""
        headers = dict(h.split(": ", 1) for h in HEADERS)
        status, answer = _fetch(url, headers)
        return {
            "status": status,
            header: answer.get(header),
            "age": answer.get("Age"),
            "cache_control": answer.get("Cache-Control"),
        }

    def cache_hits(self, base: str, route: str = "bench") -> Optional[float]:
        """``avx_cache_requests_total{result="hit",route=...}`` from the gateway's /metrics."""
        req = urllib.request.Request(base + "/metrics", headers={"X-API-Key": API_KEY})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if not line.startswith("avx_cache_requests_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("result") == "hit" and labels.get("route") == route:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def run_cache_row(self, row: Json, starter: Callable[[int], Any], cores: str) -> Json:
        """A cache row: ``/cached`` (the origin's ``/tiny`` with ``Cache-Control: max-age=3600``)
        through a proxy that caches it. One request stores it (a miss), a second must be a hit
        (nginx ``X-Cache-Status: HIT``, the gateway ``Cache-Status: avx; hit``); then the usual
        warm-up and one measured wrk run on ``/cached``, during which the origin's count of
        ``/cached`` requests must stay flat (and, for the gateway, its hit counter must grow by
        about the requests wrk made). A second hit that is not one fails the row; origin
        requests during the load are noted."""
        args = self.args
        self.cores = cores
        row["cores"] = cores
        port = free_port()
        log(f"{row['label']}: starting on 127.0.0.1:{port}, cores {cores}")
        proc = starter(port)
        row["command"] = proc.cmdline
        base = f"http://127.0.0.1:{port}"
        url = base + CACHED_PATH
        header = row["cache_header"]
        gateway = bool(row.get("ours"))
        checks: Json = {"header": header, "origin_cache_control": CACHED_CACHE_CONTROL}
        row["cache_checks"] = checks
        # Other work may share the machine: the load average around each cache row is kept.
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        try:
            wait_ready(proc, base + "/tiny", timeout=90)
            time.sleep(0.5)
            row["rss_idle_kb"] = rss_kb(proc.pid)
            if row.get("full_stack"):
                row["stack_checks"] = check_full_stack(base)
            origin0 = self.origin_cached_requests()
            checks["first"] = self.cache_probe(url, header)
            checks["second"] = self.cache_probe(url, header)
            origin1 = self.origin_cached_requests()
            checks["origin_requests_storing"] = origin1 - origin0
            verdict = str(checks["second"].get(header) or "")
            hit = verdict.startswith("avx; hit") if gateway else verdict == "HIT"
            if checks["second"]["status"] != 200 or not hit:
                raise RuntimeError(f"the second request of {CACHED_PATH} is not a hit: {checks}")
            if args.warmup > 0:
                run_wrk(self.settings, url, args.warmup)
            origin2 = self.origin_cached_requests()
            checks["origin_requests_warmup"] = origin2 - origin1
            hits0 = self.cache_hits(base) if gateway else None
            row["cached"] = self.measure(proc.pid, url)
            hits1 = self.cache_hits(base) if gateway else None
            origin3 = self.origin_cached_requests()
            checks["origin_requests_load"] = origin3 - origin2
            if hits0 is not None and hits1 is not None:
                checks["hits_counted_load"] = int(hits1 - hits0)
            checks["after"] = self.cache_probe(url, header)
            row["loadavg"] = [load_before, Path("/proc/loadavg").read_text().split()[:3]]
            row["rss_after_kb"] = rss_kb(proc.pid)
            if row.get("full_stack"):
                row["access_log_lines"] = count_lines(self.workdir / f"access-{port}.log")
            row["status"] = "ok"
            errors = errors_of(row["cached"])
            if errors:
                add_note(row, f"{errors} wrk errors/non-2xx")
            if checks["origin_requests_load"]:
                add_note(
                    row,
                    f"{checks['origin_requests_load']} requests reached the origin during the "
                    "measured run: not all hits.",
                )
            cell = row["cached"]
            log(
                f"{row['label']}: cached {cell['rps']:.0f} req/s (p50 {cell['p50_ms']:.2f} ms, "
                f"p99 {cell['p99_ms']:.2f} ms), {checks['origin_requests_load']} origin requests "
                f"during the load, RSS {row['rss_idle_kb']} -> {row['rss_after_kb']} kB"
            )
        except Exception as e:  # one broken proxy must not lose the rest of the run
            row["status"] = "error"
            row["note"] = str(e)[:500]
            log(f"{row['label']}: ERROR {e}")
        finally:
            self.procs.stop(proc)
        return row

    # -- policy rows

    def policy_load(self, row: Json) -> Json:
        """What a policy row's wrk sends: ``post`` rows a POST of ``POLICY_BODY`` to
        ``POLICY_PATH`` (a Lua script) with ``POLICY_EXTRA_HEADERS``; ``json`` rows a GET of
        ``JSON_PATH`` with ``Accept-Encoding: gzip``."""
        if row["load_kind"] == "post":
            script = self.workdir / "post-policy.lua"
            script.write_text(post_lua(POLICY_BODY))
            self.results["meta"]["policy_post_lua"] = script.read_text()
            return {"path": POLICY_PATH, "script": script, "headers": POLICY_EXTRA_HEADERS}
        return {"path": JSON_PATH, "script": None, "headers": JSON_EXTRA_HEADERS}

    def check_policies(self, row: Json, base: str) -> Json:
        """Before a policy row's load, through the gateway: the POST wrk will send answers 200
        with the origin's body; for ``gw-policies*`` an invalid body is 400 (problem details),
        another content type 415, and ``/headers`` shows the origin got ``X-Client-IP`` and
        ``X-Request`` and no ``X-Debug``; without the policies the invalid body passes (200) and
        ``X-Debug`` arrives. For the ``json`` rows: the answer to wrk's request is 200, gzip
        (with ``[routes.compression]``, decoding to the origin's bytes) or the origin's bytes as
        they are. Anything else fails the row."""
        key = {h.split(": ", 1)[0]: h.split(": ", 1)[1] for h in HEADERS}
        checks: Json = {}
        problems = []
        if row["load_kind"] == "post":
            post = {**key, **dict(h.split(": ", 1) for h in POLICY_EXTRA_HEADERS)}
            status, _, body = _request(base + POLICY_PATH, post, POLICY_BODY, "POST")
            checks["valid_post_status"] = status
            if status != 200 or body != TINY_BODY:
                problems.append(f"valid POST {POLICY_PATH}: {status} {body[:200]!r}")
            status, headers, body = _request(base + POLICY_PATH, post, POLICY_INVALID_BODY, "POST")
            checks["invalid_post_status"] = status
            checks["invalid_post_content_type"] = headers.get("Content-Type")
            wanted = 400 if row.get("policies") else 200
            if status != wanted:
                problems.append(f"invalid POST {POLICY_PATH}: {status}, not {wanted}")
            if row.get("policies"):
                try:
                    checks["invalid_post_problems"] = [
                        f"{e.get('instanceLocation') or '(root)'} {e.get('keyword')}"
                        for e in json.loads(body).get("errors", [])
                    ]
                except ValueError:
                    problems.append(f"invalid POST: not a problem+json body: {body[:200]!r}")
                text = {**post, "Content-Type": "text/plain"}
                status, _, _ = _request(base + POLICY_PATH, text, POLICY_BODY, "POST")
                checks["text_plain_post_status"] = status
                if status != 415:
                    problems.append(f"POST as text/plain: {status}, not 415")
            status, _, body = _request(base + HEADERS_PATH, post, POLICY_BODY, "POST")
            seen = dict(
                line.split("=", 1) for line in body.decode(errors="replace").splitlines() if line
            )
            checks["origin_saw"] = seen
            if row.get("policies"):
                ok = (
                    seen.get("x-client-ip") == "127.0.0.1"
                    and seen.get("x-request")
                    and not seen.get("x-debug")
                )
            else:
                ok = seen.get("x-debug") == "1" and not seen.get("x-client-ip")
            if status != 200 or not ok:
                problems.append(f"POST {HEADERS_PATH}: {status}, the origin saw {seen}")
        else:
            origin = json_document()
            gzip_on = {**key, "Accept-Encoding": "gzip"}
            status, headers, body = _request(base + JSON_PATH, gzip_on)
            encoding = headers.get("Content-Encoding")
            checks.update(
                {
                    "status": status,
                    "content_type": headers.get("Content-Type"),
                    "content_encoding": encoding,
                    "vary": ", ".join(headers.get_all("Vary") or []) or None,
                    "body_bytes": len(body),
                    "origin_bytes": len(origin),
                }
            )
            if row.get("compression"):
                try:
                    same = gzip.decompress(body) == origin
                except OSError as e:
                    same = False
                    problems.append(f"not gzip: {e}")
                checks["decoded_matches_origin"] = same
                if status != 200 or encoding != "gzip" or not same:
                    problems.append(f"GET {JSON_PATH} with Accept-Encoding: gzip: {checks}")
                status, headers, body = _request(base + JSON_PATH, key)
                checks["without_accept_encoding"] = {
                    "status": status,
                    "content_encoding": headers.get("Content-Encoding"),
                    "body_bytes": len(body),
                }
                if status != 200 or headers.get("Content-Encoding") or body != origin:
                    problems.append(f"GET {JSON_PATH} without Accept-Encoding: {checks}")
            elif status != 200 or encoding or body != origin:
                problems.append(f"GET {JSON_PATH} (no compression): {checks}")
        if problems:
            raise RuntimeError(f"policy checks failed: {'; '.join(problems)}")
        return checks

    def run_policy_row(self, row: Json, starter: Callable[[int], Any], cores: str) -> Json:
        """A policy row: the full stack (with or without the policy), loaded with one request
        (``policy_load``) after the checks (``check_policies``) and a warm-up run of it of the
        usual length; one measured run, cell ``load``. No ``/tiny``, ``/big`` or half-rate
        runs: the ratios take ``gw-full`` (and ``gw-full-pypy``) of the same run for those."""
        args = self.args
        self.cores = cores
        row["cores"] = cores
        port = free_port()
        log(f"{row['label']}: starting on 127.0.0.1:{port}, cores {cores}")
        proc = starter(port)
        row["command"] = proc.cmdline
        base = f"http://127.0.0.1:{port}"
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        try:
            wait_ready(proc, base + "/tiny", timeout=90)
            time.sleep(0.5)
            row["rss_idle_kb"] = rss_kb(proc.pid)
            row["stack_checks"] = check_full_stack(base)
            row["policy_checks"] = self.check_policies(row, base)
            load = self.policy_load(row)
            url = base + load["path"]

            def run(duration: float) -> Json:
                return run_wrk(
                    self.settings,
                    url,
                    duration,
                    script=load["script"],
                    extra_headers=load["headers"],
                )

            if args.warmup > 0:
                run(args.warmup)
            row["load"] = self.measure(proc.pid, url, run=lambda: run(args.duration))
            row["loadavg"] = [load_before, Path("/proc/loadavg").read_text().split()[:3]]
            row["rss_after_kb"] = rss_kb(proc.pid)
            row["access_log_lines"] = count_lines(self.workdir / f"access-{port}.log")
            row["status"] = "ok"
            errors = errors_of(row["load"])
            if errors:
                add_note(row, f"{errors} wrk errors/non-2xx")
            cell = row["load"]
            log(
                f"{row['label']}: {cell['rps']:.0f} req/s, {cell['mbps']:.1f} MB/s (p50 "
                f"{cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms), RSS "
                f"{row['rss_idle_kb']} -> {row['rss_after_kb']} kB"
            )
        except Exception as e:  # one broken proxy must not lose the rest of the run
            row["status"] = "error"
            row["note"] = str(e)[:500]
            log(f"{row['label']}: ERROR {e}")
        finally:
            self.procs.stop(proc)
        return row

    def wait_ready_h2(self, proc: subprocess.Popen, url: str, timeout: float = 90.0) -> Json:
        """Wait until ``url`` answers 200 over h2c with prior knowledge (curl), or the process
        dies, or time runs out; the last check's result (status, HTTP version 2)."""
        deadline = time.monotonic() + timeout
        last: Json = {}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode}: {tail_of(proc)}")
            last = check_h2c(url)
            if last["status"] == "200":
                if last["http_version"] != "2":
                    raise RuntimeError(f"answered over HTTP/{last['http_version']}, not 2: {last}")
                return last
            time.sleep(0.2)
        raise RuntimeError(f"not ready over h2c after {timeout:.0f} s ({last}): {tail_of(proc)}")

    def run_h2_row(self, row: Json, starter: Callable[[int], Any], cores: str) -> Json:
        """An HTTP/2 row: h2load instead of wrk (``--h2-connections`` connections with up to
        ``--h2-streams`` concurrent streams each, h2c with prior knowledge), on ``/tiny`` and
        ``/big`` after the same warm-ups as the wrk rows; no half-rate run."""
        args = self.args
        self.cores = cores
        row["cores"] = cores
        port = free_port()
        log(f"{row['label']}: starting on 127.0.0.1:{port}, cores {cores}")
        proc = starter(port)
        row["command"] = proc.cmdline
        base = f"http://127.0.0.1:{port}"

        def load(path: str, duration: float, log_file: bool = False) -> Json:
            logged = self.workdir / f"h2load-{row['id']}-{path.strip('/')}.tsv"
            return run_h2load(
                self.settings, base + path, duration, log_file=logged if log_file else None
            )

        try:
            if shutil.which("h2load") is None:
                raise RuntimeError("h2load not found (bench/run.sh installs nghttp2-client)")
            row["h2_checks"] = self.wait_ready_h2(proc, base + "/tiny")
            time.sleep(0.5)
            row["rss_idle_kb"] = rss_kb(proc.pid)
            if args.warmup > 0:
                load("/tiny", args.warmup)
            row["tiny"] = self.measure(
                proc.pid, base + "/tiny", run=lambda: load("/tiny", args.duration, True)
            )
            if args.warmup > 0:
                load("/big", max(1.0, args.warmup / 2))
            row["big"] = self.measure(
                proc.pid, base + "/big", run=lambda: load("/big", args.duration, True)
            )
            row["rss_after_kb"] = rss_kb(proc.pid)
            row["status"] = "ok"
            errors = sum(h2load_errors(row[c]) for c in ("tiny", "big"))
            if errors:
                add_note(row, f"{errors} h2load failed/non-2xx")
            for path in ("tiny", "big"):
                cell = row[path]
                if not cell.get("requests"):  # answers begun, none finished: a stalled transfer
                    begun = sum((cell.get("status_codes") or {}).values())
                    add_note(
                        row,
                        f"`/{path}`: no request completed in {args.duration:g} s ({begun:,} "
                        f"answers begun, {cell.get('traffic_bytes') or 0:,} bytes received in all, "
                        "then nothing: stalled).",
                    )
            tiny = row["tiny"]
            log(
                f"{row['label']}: tiny {tiny['rps']:.0f} req/s (mean {tiny.get('avg_ms', 0):.2f} "
                f"ms, p99 {tiny.get('p99_ms') or 0:.2f} ms), big {row['big']['mbps']:.0f} MB/s, "
                f"RSS {row['rss_idle_kb']} -> {row['rss_after_kb']} kB"
            )
        except Exception as e:  # one broken proxy must not lose the rest of the run
            if UPSTREAM_PROTOCOL_UNKNOWN.search(str(e)):
                row["status"] = "n/a"
                row["note"] = (
                    "not measured: this gateway rejects `[routes.upstream] protocol` "
                    f"(upstream HTTP/2 not in this tree yet): {str(e)[:300]}"
                )
                log(f"{row['label']}: n/a, no upstream HTTP/2 in this gateway")
            else:
                row["status"] = "error"
                row["note"] = str(e)[:500]
                log(f"{row['label']}: ERROR {e}")
        finally:
            self.procs.stop(proc)
        return row

    def measure(
        self,
        pid: int,
        url: str,
        extra_headers: Sequence[str] = (),
        run: Optional[Callable[[], Json]] = None,
    ) -> Json:
        """One measured wrk run (or ``run``, another load generator's), with where the CPU went
        meanwhile: the proxy's own CPU time (all its processes, % of one core), how busy the
        proxy's core and the load core were, and so what else ran on the proxy's core (softirq
        work for loopback traffic, other processes)."""
        origin = self.origin_pid
        cpu0, cores0, t0 = cpu_seconds(pid), core_busy(), time.monotonic()
        origin0, wrk0 = cpu_seconds(origin), children_cpu_seconds()
        if run is not None:
            result = run()
        else:
            result = run_wrk(self.settings, url, self.args.duration, extra_headers=extra_headers)
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
        if self.cores in busy:  # a single-core proxy
            result["other_on_proxy_core_pct"] = round(
                max(0.0, busy[self.cores] - result["proxy_cpu_pct"]), 1
            )
        load = self.settings["load_core"]
        if load != self.cores and load in busy:
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

    def policy_plan(self, venv: Path, runtime: str, cores: str) -> List[Any]:
        """The policy rows of one runtime (ids ending in ``-pypy`` for PyPy): the full stack
        POSTing a small JSON body without and with header transforms + validation, and GETting
        100 KB of JSON (``Accept-Encoding: gzip``) without and with ``[routes.compression]``."""
        tail = "-pypy" if runtime == "PyPy" else ""
        row: Json = {"ours": True, "full_stack": True, "policy": True}
        post, json_ = {**row, "load_kind": "post"}, {**row, "load_kind": "json"}
        return [
            (
                f"gw-full-post{tail}",
                "avx-gateway, full stack, POST of a small JSON body",
                runtime,
                self.gateway_starter(venv, True),
                cores,
                post,
            ),
            (
                f"gw-policies{tail}",
                "avx-gateway, full stack + header transforms + JSON Schema, POST",
                runtime,
                self.gateway_starter(venv, True, policies=True),
                cores,
                {**post, "policies": True},
            ),
            (
                f"gw-full-json{tail}",
                "avx-gateway, full stack, 100 KB JSON",
                runtime,
                self.gateway_starter(venv, True),
                cores,
                json_,
            ),
            (
                f"gw-gzip{tail}",
                "avx-gateway, full stack + compression, 100 KB JSON gzipped",
                runtime,
                self.gateway_starter(venv, True, compression=True),
                cores,
                {**json_, "compression": True},
            ),
        ]

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
            (
                "gw-full-trace",
                "avx-gateway, full stack + tracing (100% sampled, OTLP)",
                "CPython",
                self.gateway_starter(cpy, True, overhead="tracing"),
                one,
                {**full, "half_rate": False, "overhead": "tracing"},
            ),
            (
                "gw-full-plugin",
                "avx-gateway, full stack + no-op plugin on every phase",
                "CPython",
                self.gateway_starter(cpy, True, overhead="plugin"),
                one,
                {**full, "half_rate": False, "overhead": "plugin"},
            ),
            ("nginx", "nginx proxy_pass", "nginx", self.nginx_starter(), one, {}),
            (
                "nginx-cache",
                "nginx proxy_pass + proxy_cache, cache hit",
                "nginx",
                self.nginx_cache_starter(),
                one,
                {"cache": True, "cache_header": "X-Cache-Status"},
            ),
            (
                "gw-cache",
                "avx-gateway, full stack + cache, cache hit",
                "CPython",
                self.gateway_starter(cpy, True, cache=True),
                one,
                {"ours": True, "full_stack": True, "cache": True, "cache_header": "Cache-Status"},
            ),
            *self.policy_plan(cpy, "CPython", one),
            (
                "nginx-tls",
                "nginx proxy_pass over TLS",
                "nginx",
                self.nginx_tls_starter(),
                one,
                {"tls": True},
            ),
            (
                "gw-full-tls",
                "avx-gateway, full stack over TLS",
                "CPython",
                self.gateway_starter(cpy, True, tls=True),
                one,
                {"ours": True, "full_stack": True, "tls": True},
            ),
            (
                "nginx-h2",
                "nginx proxy_pass, h2c listener",
                "nginx",
                self.nginx_h2_starter(),
                one,
                {"h2": True, "upstream": "HTTP/1.1"},
            ),
            (
                "gw-h2-h1",
                "avx-gateway, one route, h2c listener, HTTP/1.1 upstream",
                "CPython",
                self.gateway_starter(cpy, False, http2=True),
                one,
                {"ours": True, "h2": True, "upstream": "HTTP/1.1"},
            ),
            (
                "gw-h2-h2",
                "avx-gateway, one route, h2c listener, h2c upstream",
                "CPython",
                self.gateway_starter(cpy, False, http2=True, upstream_protocol="h2c"),
                one,
                {"ours": True, "h2": True, "upstream": "h2c"},
            ),
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
            (
                "httptools",
                "Twisted+httptools reference proxy",
                "CPython",
                self.script_starter(
                    cpy / "bin" / "python", "httptools_proxy.py", str(self.origin_port)
                ),
                one,
                {"reference": True},
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
                "gw-cache-pypy",
                "avx-gateway, full stack + cache, cache hit",
                "PyPy",
                self.gateway_starter(pypy, True, cache=True),
                one,
                {"ours": True, "full_stack": True, "cache": True, "cache_header": "Cache-Status"},
            ),
            *self.policy_plan(pypy, "PyPy", one),
            (
                "gw-full-tls-pypy",
                "avx-gateway, full stack over TLS",
                "PyPy",
                self.gateway_starter(pypy, True, tls=True),
                one,
                {"ours": True, "full_stack": True, "tls": True},
            ),
            (
                "gw-h2-h1-pypy",
                "avx-gateway, one route, h2c listener, HTTP/1.1 upstream",
                "PyPy",
                self.gateway_starter(pypy, False, http2=True),
                one,
                {"ours": True, "h2": True, "upstream": "HTTP/1.1"},
            ),
            (
                "gw-h2-h2-pypy",
                "avx-gateway, one route, h2c listener, h2c upstream",
                "PyPy",
                self.gateway_starter(pypy, False, http2=True, upstream_protocol="h2c"),
                one,
                {"ours": True, "h2": True, "upstream": "h2c"},
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
                "httptools-pypy",
                "Twisted+httptools reference proxy",
                "PyPy",
                self.script_starter(
                    pypy / "bin" / "python", "httptools_proxy.py", str(self.origin_port)
                ),
                one,
                {"reference": True},
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
                "huge": memory.huge_response(self, cpy),
                "upload": (memory.upload(self, cpy) if args.upload_size > 0 else {"skipped": True}),
                "idle": memory.idle_connections(self, cpy),
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
    parser.add_argument(
        "--h2-connections", type=int, default=16, help="h2load -c of the HTTP/2 rows (default 16)"
    )
    parser.add_argument(
        "--h2-streams",
        type=int,
        default=10,
        help="h2load -m, concurrent streams per connection, of the HTTP/2 rows (default 10)",
    )
    parser.add_argument("--idle-connections", type=int, default=10000)
    parser.add_argument("--slow-rate", default="40M", help="curl --limit-rate of the slow 200 MB")
    parser.add_argument(
        "--only",
        help="comma-separated row ids to run (gw-plain, gw-full, gw-full-trace, gw-full-plugin, "
        "gw-full-post, gw-policies, gw-full-json, gw-gzip, "
        "nginx, nginx-cache, gw-cache, nginx-tls, gw-full-tls, nginx-h2, gw-h2-h1, gw-h2-h2, "
        "twisted-rp, aiohttp, httptools, gw-plain-pypy, gw-full-pypy, gw-cache-pypy, "
        "gw-full-post-pypy, gw-policies-pypy, gw-full-json-pypy, gw-gzip-pypy, "
        "gw-full-tls-pypy, gw-h2-h1-pypy, gw-h2-h2-pypy, "
        "twisted-rp-pypy, httptools-pypy, gw-w1, gw-w2; "
        "'none': no row, only the memory checks, which run unless --skip-memory); a partial run "
        "is saved as results-*-partial.json and leaves latest.json and the doc alone unless "
        "--doc is given; then only the doc's 'Overhead of tracing and plugins' section (when the "
        "run has gw-full-trace or gw-full-plugin), its 'TLS' section (when it has nginx-tls, "
        "gw-full-tls or gw-full-tls-pypy), its 'HTTP/2' section (when it has nginx-h2 or a "
        "gw-h2-* row) and its 'Cache' section (when it has nginx-cache, gw-cache or "
        "gw-cache-pypy) are replaced, the rest of an existing doc is left as it is. The TLS rows' "
        "ratios to cleartext take nginx, gw-full and gw-full-pypy of the same run: e.g. --only "
        "nginx,nginx-tls,gw-full,gw-full-tls,gw-full-pypy,gw-full-tls-pypy --skip-memory --doc "
        "docs/benchmarks.md; the HTTP/2 rows' ratios take nginx-h2 (and, for HTTP/2 vs "
        "HTTP/1.1, nginx, gw-plain and gw-plain-pypy) of the same run: e.g. --only nginx-h2,"
        "gw-h2-h1,gw-h2-h2,gw-h2-h1-pypy --skip-memory --doc docs/benchmarks.md; the cache rows' "
        "ratios take nginx-cache, gw-full and gw-full-pypy (and nginx) of the same run: e.g. "
        "--only nginx,nginx-cache,gw-full,gw-cache,gw-full-pypy,gw-cache-pypy --skip-memory "
        "--doc docs/benchmarks.md; the 'Policies' section (when it has a gw-full-post, "
        "gw-policies, gw-full-json or gw-gzip row, or their -pypy ones) takes gw-full and "
        "gw-full-pypy of the same run for its ratios to the tiny GET: e.g. --only gw-full,"
        "gw-full-post,gw-policies,gw-full-json,gw-gzip,gw-full-pypy,gw-full-post-pypy,"
        "gw-policies-pypy,gw-full-json-pypy,gw-gzip-pypy --skip-memory --doc docs/benchmarks.md",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory checks")
    parser.add_argument(
        "--upload-size",
        type=int,
        default=UPLOAD_SIZE,
        help=f"bytes of the upload memory check (default {UPLOAD_SIZE:,}; 0: skip it)",
    )
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
    if args.only and doc.exists():
        # Rendered whole, a partial run would leave only its own rows in the doc: it replaces
        # just the overhead, TLS, HTTP/2, cache and policy sections it has rows for, the rest
        # keeps the last complete run.
        replaced = []
        if render.has_overhead_rows(results):
            render.write_overhead_section(results, doc)
            replaced.append("overhead")
        if render.has_tls_rows(results):
            render.write_tls_section(results, doc)
            replaced.append("TLS")
        if render.has_h2_rows(results):
            render.write_h2_section(results, doc)
            replaced.append("HTTP/2")
        if render.has_cache_rows(results):
            render.write_cache_section(results, doc)
            replaced.append("Cache")
        if render.has_policy_rows(results):
            render.write_policy_section(results, doc)
            replaced.append("Policies")
        if not replaced:
            log(
                f"partial run without overhead, TLS, HTTP/2, cache or policy rows: {doc} left alone"
            )
            return 0
        log(
            f"replaced the {' and '.join(replaced)} section of {doc} (partial run; the rest left "
            "as it was)"
        )
        return 0
    render.write_doc(results, doc)
    log(f"wrote {doc} and {args.results_dir}/latest.json in {results['meta']['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
