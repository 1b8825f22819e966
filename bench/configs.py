"""What bench/run.py sends and serves, and the config files it writes: nginx as the origin and
as a proxy, and the gateway's TOML."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

API_KEY = "bench-api-key-7c1d5e0f"
ORIGIN_HEADER = "http://bench.example"
HEADERS = [f"X-API-Key: {API_KEY}", f"Origin: {ORIGIN_HEADER}"]
TINY_BODY = b"Hello, world\n"  # 13 bytes
BIG_SIZE = 1 << 20  # 1 MiB
HUGE_SIZE = 200 * 1000 * 1000  # 200 MB
UPLOAD_SIZE = 1000 * 1000 * 1000  # 1 GB, the upload memory check
NOFILE = 65536
#: The cache rows' path: the origin answers it like /tiny, with explicit freshness.
CACHED_PATH = "/cached"
CACHED_CACHE_CONTROL = "max-age=3600"
CACHED_ORIGIN_LOG = "origin-cached.log"  # in the work dir: one line per origin request
#: The policy rows (bench/run.py's ``policy`` rows): a small JSON body POSTed to ``/tiny`` (the
#: origin answers it as it answers a GET), checked against ``POLICY_SCHEMA`` (written next to the
#: gateway's TOML as ``POLICY_SCHEMA_FILE``); ``/headers`` on the origin echoes the request
#: fields the policies set and remove, for the check before the load.
POLICY_PATH = "/tiny"
HEADERS_PATH = "/headers"
POLICY_SCHEMA_FILE = "bench-order.schema.json"
POLICY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1},
        "customer": {"type": "string", "minLength": 3, "maxLength": 64},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]+-[0-9]+$"},
                    "qty": {"type": "integer", "minimum": 1},
                },
                "required": ["sku", "qty"],
            },
        },
        "express": {"type": "boolean"},
    },
    "required": ["order_id", "customer", "items"],
    "additionalProperties": False,
}
POLICY_BODY = json.dumps(
    {
        "order_id": 1048576,
        "customer": "ada.lovelace@example.com",
        "items": [{"sku": "BOOK-1843", "qty": 2}, {"sku": "PEN-7", "qty": 10}],
        "express": True,
    },
    separators=(", ", ": "),
).encode()
#: A body the schema refuses (order_id not an integer, no items): 400 before the upstream.
POLICY_INVALID_BODY = b'{"order_id": "one", "customer": "ada"}'
#: The routes' [routes.request] of the policy rows, as TOML lines.
POLICY_REQUEST_TOML = [
    "[routes.request]",
    'set_headers = { "X-Client-IP" = "${client_ip}", "X-Request" = "${request_id}" }',
    'remove_headers = ["X-Debug"]',
]
#: Sent by wrk with every request of the policy rows, for ``remove_headers`` to drop.
POLICY_EXTRA_HEADERS = ["Content-Type: application/json", "X-Debug: 1"]
#: The compression rows' path: about 100 KB of JSON (``json_document``), a file on the origin.
JSON_PATH = "/json"
JSON_SIZE = 100 * 1000
JSON_EXTRA_HEADERS = ["Accept-Encoding: gzip"]
NOOP_PLUGIN = "bench-noop"  # bench/noop_plugin.py, registered by bench/twistd_with_plugin.py
#: The gateway's TLS 1.2 cipher list, given to nginx too: avx_twisted/tls.py's own when it
#: imports (bench/run.py runs with the gateway's venv), else the copy it had when this was written.
try:
    from avx_twisted.tls import TLS12_CIPHERS
except Exception:  # pragma: no cover - a gateway tree that does not import
    TLS12_CIPHERS = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )


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


def origin_conf(workdir: Path, port: int, h2c_port: Optional[int] = None) -> str:
    """The origin: ``/tiny``, ``/big``, ``/huge`` and ``/json`` (``json_document``, served as
    ``application/json``) over HTTP/1.1 on ``port`` and, with
    ``h2c_port``, the same over cleartext HTTP/2 (prior knowledge only) on that port too (the
    upstream of the gateway's h2c row), in the same nginx. ``/cached`` (the cache rows' path)
    is ``/tiny`` with ``Cache-Control: max-age=3600``, and the only location with an access
    log (``CACHED_ORIGIN_LOG`` in ``workdir``): its line count is how many requests for it
    reached the origin, which must stay flat while a cache row is measured. ``/headers``
    answers with the values of the request's ``X-Client-IP``, ``X-Request`` and ``X-Debug``
    (the policy rows' check). ``return`` answers any method, so a POST of ``/tiny`` is 200."""
    www = workdir / "www"
    cached_log = workdir / CACHED_ORIGIN_LOG
    locations = (
        '        location = /tiny { default_type text/plain; return 200 "Hello, world\\n"; }\n'
        f"        location = {CACHED_PATH} {{\n"
        "            default_type text/plain;\n"
        f'            add_header Cache-Control "{CACHED_CACHE_CONTROL}";\n'
        f"            access_log {cached_log};\n"
        '            return 200 "Hello, world\\n";\n'
        "        }\n"
        f"        location = /big {{ alias {www}/big.bin; }}\n"
        f"        location = {JSON_PATH} {{ types {{ }} default_type application/json; "
        f"alias {www}/doc.json; }}\n"
        f"        location = {HEADERS_PATH} {{\n"
        "            default_type text/plain;\n"
        '            return 200 "x-client-ip=$http_x_client_ip\\nx-request=$http_x_request\\n'
        'x-debug=$http_x_debug\\n";\n'
        "        }\n"
        f"        location = /huge {{ alias {www}/huge.bin; }}\n"
        "        location / { return 404; }\n"
    )
    servers = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n{locations}    }}\n"
    if h2c_port is not None:
        servers += (
            f"    server {{\n        listen 127.0.0.1:{h2c_port} http2 backlog=4096;\n"
            f"{locations}    }}\n"
        )
    return nginx_common(workdir, "origin") + servers + "}\n"


def json_document(size: int = JSON_SIZE) -> bytes:
    """About ``size`` bytes of JSON (an API-like list of records, from a fixed seed: the same
    bytes every run), as the compression rows' origin serves it."""
    rng = random.Random(16)
    words = "alpha beta gamma delta omega north south east west blue green red amber".split()
    items = []
    out = b""
    while True:
        i = len(items)
        items.append(
            {
                "id": 100000 + i,
                "sku": f"SKU-{rng.randrange(10**6):06d}",
                "name": " ".join(rng.choice(words) for _ in range(3)),
                "price": round(rng.uniform(1, 500), 2),
                "stock": rng.randrange(1000),
                "tags": rng.sample(words, 2),
                "active": rng.random() < 0.8,
                "updated": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            }
        )
        doc = json.dumps({"count": len(items), "items": items}).encode() + b"\n"
        if len(doc) > size:
            return out or doc
        out = doc


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


def nginx_cache_proxy_conf(workdir: Path, port: int, origin_port: int) -> str:
    """The nginx proxy row's config with ``proxy_cache``: a cache dir in ``workdir``, one
    keys zone, freshness from the origin's ``Cache-Control`` (no ``proxy_cache_valid``), and
    ``X-Cache-Status: $upstream_cache_status`` on every answer (MISS, then HIT)."""
    cache_dir = workdir / "nginx-cache"
    cache_dir.mkdir(exist_ok=True)
    return nginx_common(workdir, "nginx-cache-proxy") + (
        f"    proxy_cache_path {cache_dir} levels=1:2 keys_zone=bench:10m max_size=256m "
        "inactive=60m use_temp_path=off;\n"
        "    upstream origin {\n"
        f"        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=1024;\n"
        "        location / {\n"
        "            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_cache bench;\n"
        "            add_header X-Cache-Status $upstream_cache_status always;\n"
        "        }\n    }\n}\n"
    )


def nginx_h2_proxy_conf(workdir: Path, port: int, origin_port: int) -> str:
    """The nginx proxy row's config with ``listen ... http2`` on cleartext (h2c with prior
    knowledge, what h2load speaks): the same HTTP/1.1 upstream with keep-alive. nginx cannot
    proxy to an HTTP/2 upstream, so this is the reference of both HTTP/2 gateway rows."""
    return nginx_common(workdir, "nginx-h2-proxy") + (
        "    upstream origin {\n"
        f"        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} http2 backlog=1024;\n"
        "        location / {\n"
        "            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "        }\n    }\n}\n"
    )


def nginx_tls_proxy_conf(
    workdir: Path, port: int, origin_port: int, cert_file: Path, key_file: Path
) -> str:
    """The nginx proxy row's config, served over TLS: the same upstream, keep-alive and proxy
    settings, with TLS set like the gateway's listeners (TLS 1.2 and 1.3, the gateway's TLS 1.2
    cipher list in server order, OpenSSL's built-in session cache and session tickets, which
    are also OpenSSL's defaults and so the gateway's)."""
    return nginx_common(workdir, "nginx-tls-proxy") + (
        "    upstream origin {\n"
        f"        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl backlog=1024;\n"
        f"        ssl_certificate {cert_file};\n"
        f"        ssl_certificate_key {key_file};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"        ssl_ciphers {TLS12_CIPHERS};\n"
        "        ssl_prefer_server_ciphers on;\n"
        "        ssl_session_cache builtin;\n"
        "        ssl_session_tickets on;\n"
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
    sink_port: Optional[int] = None,
    sink_max_body: int = 2 * UPLOAD_SIZE,
    tracing_endpoint: Optional[str] = None,
    plugins: Sequence[str] = (),
    tls: Optional[Tuple[Path, Path]] = None,
    http2: bool = False,
    upstream_protocol: Optional[str] = None,
    cache: bool = False,
    validate_schema: Optional[str] = None,
    compression: bool = False,
) -> str:
    """The gateway's config: ``/*`` to the origin on ``origin_port``. With ``sink_port``, also
    an exact route ``/sink`` to that origin taking bodies up to ``sink_max_body`` bytes, with
    deadlines long enough for a 1 GB upload (the upload memory check). With
    ``tracing_endpoint``, ``[tracing]`` with every request sampled and exported there (OTLP/HTTP);
    ``plugins`` (names, no config) run on the ``/*`` route. With ``tls`` (certificate and key
    files), the one listener is a ``[[server.listeners]]`` entry on the same endpoint with
    ``[server.listeners.tls]`` instead of ``listen`` (no cleartext port). With ``http2``, the
    listener is such an entry with ``http2 = true`` (h2c with prior knowledge on cleartext,
    ALPN h2 with ``tls``). ``upstream_protocol`` (``"h2c"``, ``"h2"``): the route's
    ``[routes.upstream] protocol``, with ``origin_port`` then a port speaking it. With
    ``cache``, the route has ``[routes.cache]`` (its defaults: no heuristic freshness, so only
    answers with explicit freshness, ``/cached``, are stored) and ``[cache]`` is the memory
    store with ``Cache-Status`` on. With ``validate_schema`` (a file name, relative to the
    TOML's directory), the route has ``POLICY_REQUEST_TOML`` and ``[routes.validate]
    request_schema`` = that file (the policy rows); with ``compression``, ``[routes.compression]``
    with ``encodings = ["br", "gzip"]`` and the other keys at their defaults."""
    endpoint = f"tcp:{port}:interface=127.0.0.1:backlog=1024"
    lines = ["[server]"]
    listener = tls is not None or http2
    if not listener:
        lines.append(f'listen = ["{endpoint}"]')
    lines += [
        f"workers = {workers}",
        "drain_timeout_ms = 1000",
        f"keepalive_timeout_ms = {keepalive_ms}",
    ]
    if sink_port is not None:
        lines.append("client_body_timeout_ms = 600000")
    if listener:
        lines += ["", "[[server.listeners]]", f'endpoint = "{endpoint}"']
        if http2:
            lines.append("http2 = true")
    if tls is not None:
        lines += [
            "",
            "[server.listeners.tls]",
            f'cert_file = "{tls[0]}"',
            f'key_file = "{tls[1]}"',
        ]
    lines += [
        "",
        "[[routes]]",
        'name = "bench"',
        'path = "/*"',
    ]
    if full:
        lines += ['auth = ["api_key"]', "cors = true"]
    if plugins:
        lines.append("plugins = [" + ", ".join(f'{{ name = "{n}" }}' for n in plugins) + "]")
    scheme = "https" if upstream_protocol == "h2" else "http"
    lines += ["", "[routes.upstream]", f'urls = ["{scheme}://127.0.0.1:{origin_port}"]']
    if upstream_protocol is not None:
        lines.append(f'protocol = "{upstream_protocol}"')
    lines.append("")
    if cache:
        lines += ["[routes.cache]", "max_object_bytes = 1048576", ""]
    if validate_schema is not None:
        lines += [*POLICY_REQUEST_TOML, ""]
        lines += ["[routes.validate]", f'request_schema = "{validate_schema}"', ""]
    if compression:
        lines += ["[routes.compression]", 'encodings = ["br", "gzip"]', ""]
    if sink_port is not None:
        lines += _sink_route(sink_port, sink_max_body, full)
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
    if cache:
        lines += [
            "",
            "[cache]",
            'backend = "memory"',
            "max_bytes = 268435456",
            "status_header = true",
        ]
    if tracing_endpoint is not None:
        lines += [
            "",
            "[tracing]",
            'exporter = "otlp"',
            f'endpoint = "{tracing_endpoint}"',
            "sample_ratio = 1.0",
        ]
    return "\n".join(lines) + "\n"


def _sink_route(sink_port: int, max_body: int, full: bool) -> List[str]:
    lines = [
        "[[routes]]",
        'name = "sink"',
        'path = "/sink"',
        f"max_body_bytes = {max_body}",
        "timeout_ms = 600000",
    ]
    if full:
        lines += ['auth = ["api_key"]', "cors = true"]
    return lines + ["", "[routes.upstream]", f'urls = ["http://127.0.0.1:{sink_port}"]', ""]
