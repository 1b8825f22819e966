"""Render benchmark results (bench/results/*.json, written by bench/run.py) as a text table and
as docs/benchmarks.md.

    .venv/bin/python bench/render.py [RESULTS.json] [--doc docs/benchmarks.md] [--no-doc]

The "Profile" section of an existing docs/benchmarks.md is kept as it is when the file is
rewritten, so notes written there survive a re-run; so are its "Overhead of tracing and
plugins", "TLS", "HTTP/2", "Cache" and "Policies" sections when the results have no such rows
(older results). A partial run of bench/run.py with ``--doc`` replaces only those of the five it
has rows for (``write_overhead_section``, ``write_tls_section``, ``write_h2_section``,
``write_cache_section``, ``write_policy_section``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

Json = Dict[str, Any]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

PROFILE_HEADING = "## Profile"
PROFILE_PLACEHOLDER = (
    "_To be filled in: where the gateway spends its time on the tiny-body path (e.g. `py-spy\n"
    "record` or `cProfile` of the full-stack row), and what changed because of it. This section\n"
    "is kept as it is when bench/run.sh rewrites this file._\n"
)

# --------------------------------------------------------------------------- helpers


def row_by_id(results: Json, row_id: str) -> Optional[Json]:
    for row in results.get("rows", []):
        if row.get("id") == row_id:
            return row
    return None


def measured(row: Optional[Json]) -> bool:
    return bool(row) and row.get("status") == "ok"  # type: ignore[union-attr]


def metric(row: Optional[Json], cell: str, key: str) -> Optional[float]:
    if not measured(row):
        return None
    value = (row.get(cell) or {}).get(key)  # type: ignore[union-attr]
    return float(value) if value is not None else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def f_int(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.0f}"


def f_ms(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def f_ratio(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}x"


def f_mib(kb: Optional[float]) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def reference_for(results: Json, row: Json) -> Optional[Json]:
    """The Twisted + httptools reference row of ``row``'s runtime (PyPy rows: the PyPy one)."""
    return row_by_id(results, "httptools-pypy" if row.get("runtime") == "PyPy" else "httptools")


def cpu_text(row: Json, cell: str = "tiny") -> str:
    """The CPU column of the tiny run (or another ``cell``): proxy / other on the proxy's core /
    load core busy (wrk + origin)."""
    tiny = (row.get(cell) or {}) if measured(row) else {}
    if tiny.get("proxy_cpu_pct") is None:
        return "–"
    other, load = tiny.get("other_on_proxy_core_pct"), tiny.get("load_core_busy_pct")
    text = f"{f_int(tiny['proxy_cpu_pct'])} / {f_int(other)} / {f_int(load)}"
    if tiny.get("wrk_cpu_pct") is not None and load is not None:
        text += f" ({f_int(tiny['wrk_cpu_pct'] + tiny.get('origin_cpu_pct', 0))})"
    return text


def status_text(row: Json) -> str:
    status = row.get("status", "?")
    if status == "ok":
        return ""
    return status


# --------------------------------------------------------------------------- the main table

COLUMNS = [
    "Proxy",
    "Runtime",
    "Cores",
    "Tiny req/s",
    "Tiny p50 ms",
    "Tiny p99 ms",
    "1 MiB req/s",
    "1 MiB MB/s",
    "1 MiB p50 ms",
    "1 MiB p99 ms",
    "CPU % tiny: proxy / other / load core (wrk+origin)",
    "RSS idle MiB",
    "RSS after MiB",
    "Tiny vs nginx",
    "Tiny vs aiohttp",
    "Tiny vs reference",
    "MB/s vs nginx",
    "MB/s vs aiohttp",
    "MB/s vs reference",
]


def shown_rows(results: Json) -> List[Json]:
    """The rows to show: all but those left out with ``--only``."""
    return [r for r in results.get("rows", []) if r.get("status") != "unselected"]


def main_rows(results: Json) -> List[Json]:
    """The rows of the main table: the shown ones but the TLS, HTTP/2, cache and policy rows
    (their own sections)."""
    skip = TLS_IDS + H2_IDS + CACHE_IDS + POLICY_IDS
    return [r for r in shown_rows(results) if r.get("id") not in skip]


def table_rows(results: Json) -> List[List[str]]:
    nginx = row_by_id(results, "nginx")
    aio = row_by_id(results, "aiohttp")
    out = []
    for row in main_rows(results):
        ok = measured(row)
        label = row["label"]
        if not ok:
            label += f" ({status_text(row)})"
        tiny_rps = metric(row, "tiny", "rps")
        big_mbps = metric(row, "big", "mbps")
        ratios = ["", "", "", "", "", ""]
        if row.get("ratios") and ok:
            ref = reference_for(results, row)
            ratios = [
                f_ratio(ratio(tiny_rps, metric(nginx, "tiny", "rps"))),
                f_ratio(ratio(tiny_rps, metric(aio, "tiny", "rps"))),
                f_ratio(ratio(tiny_rps, metric(ref, "tiny", "rps"))),
                f_ratio(ratio(big_mbps, metric(nginx, "big", "mbps"))),
                f_ratio(ratio(big_mbps, metric(aio, "big", "mbps"))),
                f_ratio(ratio(big_mbps, metric(ref, "big", "mbps"))),
            ]
        out.append(
            [
                label,
                row.get("runtime", ""),
                row.get("cores", ""),
                f_int(tiny_rps),
                f_ms(metric(row, "tiny", "p50_ms")),
                f_ms(metric(row, "tiny", "p99_ms")),
                f_int(metric(row, "big", "rps")),
                f_int(big_mbps),
                f_ms(metric(row, "big", "p50_ms")),
                f_ms(metric(row, "big", "p99_ms")),
                cpu_text(row),
                f_mib(row.get("rss_idle_kb")) if ok or row.get("rss_idle_kb") else "–",
                f_mib(row.get("rss_after_kb")) if ok else "–",
                *ratios,
            ]
        )
    return out


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells: List[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- targets


def targets(results: Json) -> List[Tuple[str, str, Optional[bool]]]:
    """(target, measured, met) for each target of the issue; met None: not measured."""
    out: List[Tuple[str, str, Optional[bool]]] = []
    full = row_by_id(results, "gw-full")
    full_pypy = row_by_id(results, "gw-full-pypy")
    nginx = row_by_id(results, "nginx")
    aio = row_by_id(results, "aiohttp")

    plain = row_by_id(results, "gw-plain")

    def versus(label: str, row: Any, other: Any, cell: str, unit: str, at_least: float) -> None:
        key = "rps" if cell == "tiny" else "mbps"
        r = ratio(metric(row, cell, key), metric(other, cell, key))
        if row is not None and not measured(row):
            text = f"not measured: {row.get('note', row.get('status'))}"
        elif r is None:
            text = "–"
        else:
            text = (
                f"{r:.2f}x ({f_int(metric(row, cell, key))} vs "
                f"{f_int(metric(other, cell, key))} {unit})"
            )
        out.append((label, text, None if r is None else r >= at_least))

    versus("CPython full stack, tiny bodies: ≥ 2.0x aiohttp req/s", full, aio, "tiny", "req/s", 2.0)
    versus("CPython one route, tiny bodies: ≥ 0.4x nginx req/s", plain, nginx, "tiny", "req/s", 0.4)
    faster = max(
        (row for row in (nginx, aio) if metric(row, "big", "mbps") is not None),
        key=lambda row: metric(row, "big", "mbps"),
        default=None,
    )
    versus(
        "CPython full stack, 1 MiB bodies: ≥ 0.9x the faster of nginx and aiohttp in MB/s"
        + (f" ({faster.get('label')})" if faster else ""),
        full,
        faster,
        "big",
        "MB/s",
        0.9,
    )
    pypy_vs = "PyPy full stack ≥ CPython full stack"
    versus(pypy_vs + ", tiny bodies", full_pypy, full, "tiny", "req/s", 1.0)
    versus(pypy_vs + ", 1 MiB bodies", full_pypy, full, "big", "MB/s", 1.0)
    half = (full or {}).get("half_rate") if measured(full) else None
    if isinstance(half, dict) and half.get("p99_ms") is not None:
        out.append(
            (
                "p99 ≤ 5 ms at half the max rate (CPython full stack, tiny)",
                f"{f_ms(half['p99_ms'])} ms at {f_int(half.get('rps'))} req/s "
                f"(target {f_int(half.get('target_rps'))})",
                half["p99_ms"] <= 5.0,
            )
        )
    else:
        out.append(("p99 ≤ 5 ms at half the max rate (CPython full stack, tiny)", "–", None))
    memory = results.get("memory") or {}
    huge = memory.get("huge") or {}
    slow, fast = huge.get("slow"), huge.get("fast")
    if slow and fast:
        worst = max(slow["added_kb"], fast["added_kb"])
        complete = all(
            c["status"] == "200" and c["bytes"] == huge["size_bytes"] for c in (slow, fast)
        )
        out.append(
            (
                "A 200 MB response adds < 16 MB (CPython, full stack)",
                f"+{f_mib(slow['added_kb'])} MiB with a client limited to "
                f"{_rate(slow)}, +{f_mib(fast['added_kb'])} MiB unthrottled"
                + ("" if complete else " (TRANSFER INCOMPLETE)"),
                complete and worst / 1024 < 16,
            )
        )
    else:
        out.append(("A 200 MB response adds < 16 MB", huge.get("error", "–"), None))
    out.append(upload_target(memory.get("upload") or {}))
    idle = memory.get("idle") or {}
    if idle.get("rss_after_kb"):
        n = idle.get("open", 0)
        wanted = idle.get("connections", 10000)
        out.append(
            (
                f"{wanted:,} idle keep-alive connections within 150 MB (CPython, full stack)",
                f"{f_mib(idle['rss_after_kb'])} MiB with {n:,} open "
                f"({f_mib(idle['rss_before_kb'])} MiB before, "
                f"{idle.get('kb_per_connection', 0):.1f} kB each)",
                n >= wanted and idle["rss_after_kb"] / 1024 <= 150,
            )
        )
    else:
        out.append(
            ("10,000 idle keep-alive connections within 150 MB", idle.get("error", "–"), None)
        )
    out += cache_targets(results)
    return out


def upload_target(upload: Json) -> Tuple[str, str, Optional[bool]]:
    size = upload.get("size_bytes")
    what = (
        f"A {_size(size)} upload adds < 16 MB (CPython, full stack)"
        if size
        else ("A 1 GB upload adds < 16 MB (CPython, full stack)")
    )
    cells = [(key, upload[key]) for key in ("length", "chunked") if upload.get(key)]
    if not cells:
        return what, upload.get("error") or ("skipped" if upload.get("skipped") else "–"), None
    texts = []
    met = True
    for key, cell in cells:
        complete = upload_complete(upload, cell)
        spooled = ""
        written = cell.get("gateway_disk_write_bytes")
        if written is not None and written >= 16 * 10**6:
            spooled = f" (spooled: {written / 1e6:,.0f} MB written to storage)"
        texts.append(
            f"+{f_mib(cell['added_kb'])} MiB with {UPLOAD_MODES[key]}{spooled}"
            + ("" if complete else " (TRANSFER INCOMPLETE)")
        )
        met = met and complete and cell["added_kb"] / 1024 < 16
    if upload.get("error"):
        texts.append(f"error: {upload['error']}")
        met = False
    return what, ", ".join(texts), met


UPLOAD_MODES = {"length": "Content-Length", "chunked": "a chunked body"}


def upload_complete(upload: Json, cell: Json) -> bool:
    """HTTP 200 and the origin read every byte."""
    return cell.get("status") == 200 and cell.get("origin_received") == upload.get("size_bytes")


def _size(size: Any) -> str:
    if not isinstance(size, int):
        return "?"
    if size >= 10**9 and size % 10**8 == 0:
        return f"{size / 1e9:g} GB"
    if size >= 10**6 and size % 10**5 == 0:
        return f"{size / 1e6:g} MB"
    return f"{size:,} bytes"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _rate(cell: Json) -> str:
    seconds = cell.get("seconds") or 0
    if not seconds:
        return "?"
    return f"{cell['bytes'] / seconds / 1e6:.0f} MB/s"


def met_text(met: Optional[bool]) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


# --------------------------------------------------------------------------- text output


TEXT_COLUMNS = [
    "Proxy",
    "Runtime",
    "Cores",
    "Tiny req/s",
    "p50 ms",
    "p99 ms",
    "1MiB MB/s",
    "p99 ms",
    "CPU % p/o/l",
    "RSS MiB idle/after",
    "vs nginx tiny/MBs",
    "vs aiohttp tiny/MBs",
    "vs reference tiny/MBs",
]


def text_rows(results: Json) -> List[List[str]]:
    out = []
    for full in table_rows(results):
        (label, runtime, cores, rps, p50, p99, _, mbps, _, bp99, cpu, idle, after) = full[:13]
        vs_nginx = f"{full[13]}/{full[16]}" if full[13] else ""
        vs_aio = f"{full[14]}/{full[17]}" if full[14] else ""
        vs_ref = f"{full[15]}/{full[18]}" if full[15] else ""
        out.append(
            [
                label,
                runtime,
                cores,
                rps,
                p50,
                p99,
                mbps,
                bp99,
                cpu,
                f"{idle}/{after}",
                vs_nginx,
                vs_aio,
                vs_ref,
            ]
        )
    return out


def render_text(results: Json) -> str:
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    parts = [
        f"avx-gateway benchmark, {meta.get('started', '?')}: "
        f"wrk -t1 -c{settings.get('connections')} "
        f"-d{settings.get('duration_s')}s after {settings.get('warmup_s')} s warm-up; "
        f"proxy on core {settings.get('proxy_core')}, wrk + origin on core "
        f"{settings.get('load_core')}",
        "",
        text_table(TEXT_COLUMNS, text_rows(results)),
    ]
    notes = [f"  {r['id']}: {r['note']}" for r in shown_rows(results) if r.get("note")]
    if notes:
        parts += ["Notes:", *notes, ""]
    over = overhead_rows(results)
    if over:
        parts += ["Overhead vs the full stack of this run:", text_table(OVERHEAD_COLUMNS, over)]
    tls = tls_text_rows(results)
    if tls:
        parts += [
            "TLS (keep-alive, and a new TLS connection per request):",
            text_table(TLS_TEXT_COLUMNS, tls),
        ]
    h2 = h2_text_rows(results)
    if h2:
        parts += ["HTTP/2 (h2load, h2c with prior knowledge):", text_table(H2_TEXT_COLUMNS, h2)]
    cached = cache_text_rows(results)
    if cached:
        parts += ["Cache hits (/cached):", text_table(CACHE_TEXT_COLUMNS, cached)]
    policies = policy_text_rows(results)
    if policies:
        parts += ["Policies (full stack):", text_table(POLICY_TEXT_COLUMNS, policies)]
    half_rows = half_rate_rows(results)
    if half_rows:
        parts += ["Latency at half the max rate (tiny):", text_table(HALF_COLUMNS, half_rows)]
    parts.append("Targets:")
    for target, value, met in targets(results):
        parts.append(f"  [{met_text(met):>12}] {target}: {value}")
    return "\n".join(parts) + "\n"


HALF_COLUMNS = ["Proxy", "Runtime", "Target req/s", "Got req/s", "p50 ms", "p90 ms", "p99 ms"]


def half_rate_rows(results: Json) -> List[List[str]]:
    rows = []
    for row in results.get("rows", []):
        half = row.get("half_rate")
        if measured(row) and isinstance(half, dict):
            rows.append(
                [
                    row["label"],
                    row["runtime"],
                    f_int(half.get("target_rps")),
                    f_int(half.get("rps")),
                    f_ms(half.get("p50_ms")),
                    f_ms(half.get("p90_ms")),
                    f_ms(half.get("p99_ms")),
                ]
            )
    return rows


# --------------------------------------------------------------------------- overhead

OVERHEAD_HEADING = "## Overhead of tracing and plugins"
#: The rows measured against the full-stack row (bench/run.py's ``overhead`` rows).
OVERHEAD_IDS = ("gw-full-trace", "gw-full-plugin")
OVERHEAD_COLUMNS = [
    "Row",
    "Tiny req/s",
    "Tiny vs full stack",
    "Tiny p99 ms",
    "1 MiB MB/s",
    "MB/s vs full stack",
    "1 MiB p99 ms",
    "CPU % tiny: proxy / other / load core (wrk+origin)",
]


def has_overhead_rows(results: Json) -> bool:
    """Whether ``results`` ran (or tried) any overhead row: older results and partial runs
    without them have nothing to say about it."""
    return any(
        (row_by_id(results, i) or {}).get("status", "unselected") != "unselected"
        for i in OVERHEAD_IDS
    )


def overhead_rows(results: Json) -> List[List[str]]:
    """The full-stack row, then each overhead row with its ratios to it (same run)."""
    if not has_overhead_rows(results):
        return []
    full = row_by_id(results, "gw-full")
    out = []
    for row in [full] + [row_by_id(results, i) for i in OVERHEAD_IDS]:
        if row is None or row.get("status") == "unselected":
            continue
        label = row["label"] if measured(row) else f"{row['label']} ({status_text(row)})"
        tiny, big = metric(row, "tiny", "rps"), metric(row, "big", "mbps")
        is_full = row is full
        out.append(
            [
                label,
                f_int(tiny),
                "1.00x" if is_full and tiny else f_ratio(ratio(tiny, metric(full, "tiny", "rps"))),
                f_ms(metric(row, "tiny", "p99_ms")),
                f_int(big),
                "1.00x" if is_full and big else f_ratio(ratio(big, metric(full, "big", "mbps"))),
                f_ms(metric(row, "big", "p99_ms")),
                cpu_text(row),
            ]
        )
    return out


def _sink_text(checks: Json) -> str:
    after = checks.get("sink_after_stop") or {}
    if not after or after.get("error"):
        return f"the sink's counts could not be read ({after.get('error', 'no answer')})"
    spans = after.get("spans")
    text = (
        f"the sink received {_count(after.get('requests'))} export requests, "
        f"{_count(after.get('bytes'))} bytes"
    )
    if spans is not None:
        text += f", {_count(spans)} spans"
    if after.get("undecodable"):
        text += f" ({_count(after['undecodable'])} requests it could not decode)"
    dropped = checks.get("spans_dropped")
    if dropped is not None:
        text += f"; the gateway's `avx_tracing_spans_dropped_total`: {dropped:,.0f} after the load"
    return text


def overhead_section(results: Json, partial: bool = False) -> str:
    """The markdown of the overhead section, heading included."""
    out: List[str] = [OVERHEAD_HEADING + "\n"]
    add = out.append
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    add(
        "What tracing every request and a plugin on every phase cost the full-stack gateway "
        "(CPython), each as a row of its own with exactly the full-stack row's config plus one "
        "thing, measured like the other rows (same pinning, warm-up and wrk runs), divided by the "
        "full-stack row of the same run:\n"
    )
    add(
        '- **full stack + tracing**: `[tracing]` with `exporter = "otlp"`, `sample_ratio = 1.0` '
        "(every request sampled: a SERVER span per request, a CLIENT span per upstream try) and "
        "`endpoint` a local sink; the batch span processor exports every 500 ms "
        "(`OTEL_BSP_SCHEDULE_DELAY=500` in the gateway's environment; queue 2048, batches of 512) "
        "from its thread in the gateway process, so encoding and sending the spans runs on the "
        "gateway's core. The sink (`bench/otlp_sink.py`, on the load core) is a raw asyncio "
        "HTTP/1.1 server: keep-alive, every `POST` answered `200` with an empty protobuf body "
        "and `Content-Type: application/x-protobuf`; it decodes each export only to count its "
        "spans, so the spans really leave the process and arrive.\n"
        '- **full stack + no-op plugin**: `plugins = [{ name = "bench-noop" }]` on the route; '
        "`bench/noop_plugin.py` implements all six phases (`on_request`, `on_upstream_request`, "
        "`on_response`, `on_response_body`, `on_log`, `on_error`) and only counts its calls. It "
        "is registered in-process (`avx_twisted.plugins.register`) by "
        "`bench/twistd_with_plugin.py`, which then runs twistd with the same arguments. A plugin "
        "with `on_response_body` may change a body's size, so the gateway sends every response "
        "chunked (the tiny one and the 1 MiB one): that cost is part of this row.\n"
    )
    if partial:
        rows = [r.get("id") for r in shown_rows(results)]
        add(
            f"Measured in a partial run ({meta.get('started', '?')}, `--only {','.join(rows)}`, "
            f"{settings.get('duration_s', 0):g} s cells after {settings.get('warmup_s', 0):g} s "
            "warm-up), with its own full-stack row: compare the ratios, not these req/s with "
            "the Results table above, which is another run.\n"
        )
    add(markdown_table(OVERHEAD_COLUMNS, overhead_rows(results)))
    notes = []
    for row_id in OVERHEAD_IDS:
        row = row_by_id(results, row_id)
        if row is None or row.get("status") == "unselected":
            continue
        checks = row.get("overhead_checks") or {}
        if row.get("overhead") == "tracing" and checks:
            notes.append(f"- {row['label']}: {_sink_text(checks)}.")
        elif row.get("overhead") == "plugin" and checks:
            calls = checks.get("plugin_calls")
            text = (
                f"before the load `/tiny` answered {checks.get('tiny_status')} with "
                f"`Transfer-Encoding: {checks.get('tiny_transfer_encoding')}`"
            )
            if calls:
                text += "; the plugin's calls: " + ", ".join(
                    f"`{k}` {v:,}" for k, v in calls.items()
                )
            notes.append(f"- {row['label']}: {text}.")
        if row.get("note"):
            notes.append(f"- {row['label']}: {row['note']}")
    if notes:
        add("\n".join(notes) + "\n")
    return wrap_markdown("\n".join(out))


def existing_section(doc: Path, heading: str) -> Optional[str]:
    """The section of ``doc`` under ``heading``, heading included, up to the next "## "."""
    try:
        text = doc.read_text()
    except OSError:
        return None
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return None
    body = text[start + 1 :]
    end = body.find("\n## ", len(heading))
    return (body if end < 0 else body[: end + 1]).strip("\n") + "\n"


def write_overhead_section(results: Json, doc: Path) -> None:
    """Replace only the overhead section of ``doc`` with this (partial) run's, leaving every
    other byte of it as it is; without one, insert it after the Results section."""
    text = doc.read_text()
    if "\n" + OVERHEAD_HEADING + "\n" not in text and "\n" + TLS_HEADING + "\n" in text:
        # Where a full run puts it: before the TLS section.
        at = text.find("\n" + TLS_HEADING + "\n")
        section = overhead_section(results, partial=True).strip("\n") + "\n"
        doc.write_text(text[: at + 1] + section + "\n" + text[at + 1 :])
        return
    replace_section(doc, OVERHEAD_HEADING, overhead_section(results, partial=True))


def ran_any(results: Json, ids: Sequence[str]) -> bool:
    """Whether ``results`` ran (or tried) any of the rows ``ids``."""
    return any(
        (row_by_id(results, i) or {}).get("status", "unselected") != "unselected" for i in ids
    )


def rows_of(results: Json, ids: Sequence[str]) -> List[Json]:
    """The rows ``ids`` of ``results`` that ran (or tried), in that order."""
    return [
        row
        for row in (row_by_id(results, i) for i in ids)
        if row is not None and row.get("status") != "unselected"
    ]


# --------------------------------------------------------------------------- TLS

TLS_HEADING = "## TLS"
#: The TLS rows (bench/run.py's ``tls`` rows), each with the cleartext row it is compared with.
TLS_IDS = ("nginx-tls", "gw-full-tls", "gw-full-tls-pypy")
TLS_CLEARTEXT = {"nginx-tls": "nginx", "gw-full-tls": "gw-full", "gw-full-tls-pypy": "gw-full-pypy"}
TLS_COLUMNS = [
    "Row",
    "Runtime",
    "Keep-alive tiny req/s",
    "Tiny p99 ms",
    "1 MiB MB/s",
    "1 MiB p99 ms",
    "New handshakes/s",
    "Handshake p50 ms",
    "Handshake p99 ms",
    "CPU % keep-alive tiny: proxy / other / load core (wrk+origin)",
    "CPU % handshakes: proxy / other / load core (wrk+origin)",
    "RSS idle MiB",
    "RSS after MiB",
]
TLS_RATIO_COLUMNS = [
    "Row",
    "Runtime",
    "Tiny req/s vs nginx TLS",
    "MB/s vs nginx TLS",
    "Handshakes/s vs nginx TLS",
    "Tiny req/s, TLS vs cleartext",
    "MB/s, TLS vs cleartext",
    "Handshakes/s vs its keep-alive tiny req/s",
]
TLS_TEXT_COLUMNS = [
    "Row",
    "Runtime",
    "Tiny req/s",
    "1MiB MB/s",
    "Handshakes/s",
    "hs p99 ms",
    "CPU % hs p/o/l",
    "vs nginx TLS tiny/MBs/hs",
    "vs cleartext tiny/MBs",
]


def has_tls_rows(results: Json) -> bool:
    """Whether ``results`` ran (or tried) any TLS row."""
    return ran_any(results, TLS_IDS)


def _tls_ratios(results: Json, row: Json) -> Dict[str, Optional[float]]:
    nginx = row_by_id(results, "nginx-tls")
    clear = row_by_id(results, TLS_CLEARTEXT[row["id"]])
    tiny, big = metric(row, "tiny", "rps"), metric(row, "big", "mbps")
    hs = metric(row, "handshake", "rps")
    theirs = row is not nginx
    return {
        "tiny_vs_nginx": ratio(tiny, metric(nginx, "tiny", "rps")) if theirs else None,
        "big_vs_nginx": ratio(big, metric(nginx, "big", "mbps")) if theirs else None,
        "hs_vs_nginx": ratio(hs, metric(nginx, "handshake", "rps")) if theirs else None,
        "tiny_vs_clear": ratio(tiny, metric(clear, "tiny", "rps")),
        "big_vs_clear": ratio(big, metric(clear, "big", "mbps")),
        "clear_tiny": metric(clear, "tiny", "rps"),
        "clear_big": metric(clear, "big", "mbps"),
        "hs_vs_keepalive": ratio(hs, tiny),
    }


def _label(row: Json) -> str:
    return row["label"] if measured(row) else f"{row['label']} ({status_text(row)})"


def tls_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, TLS_IDS):
        ok = measured(row)
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                f_int(metric(row, "tiny", "rps")),
                f_ms(metric(row, "tiny", "p99_ms")),
                f_int(metric(row, "big", "mbps")),
                f_ms(metric(row, "big", "p99_ms")),
                f_int(metric(row, "handshake", "rps")),
                f_ms(metric(row, "handshake", "p50_ms")),
                f_ms(metric(row, "handshake", "p99_ms")),
                cpu_text(row),
                cpu_text(row, "handshake"),
                f_mib(row.get("rss_idle_kb")) if ok or row.get("rss_idle_kb") else "–",
                f_mib(row.get("rss_after_kb")) if ok else "–",
            ]
        )
    return out


def tls_ratio_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, TLS_IDS):
        r = _tls_ratios(results, row)
        mine = row.get("id") != "nginx-tls"

        def versus(value: Optional[float], clear: Optional[float], unit: str) -> str:
            if value is None:
                return "–"
            return f"{f_ratio(value)} (cleartext {f_int(clear)} {unit})"

        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                f_ratio(r["tiny_vs_nginx"]) if mine else "",
                f_ratio(r["big_vs_nginx"]) if mine else "",
                f_ratio(r["hs_vs_nginx"]) if mine else "",
                versus(r["tiny_vs_clear"], r["clear_tiny"], "req/s"),
                versus(r["big_vs_clear"], r["clear_big"], "MB/s"),
                f_ratio(r["hs_vs_keepalive"]),
            ]
        )
    return out


def tls_text_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, TLS_IDS):
        r = _tls_ratios(results, row)
        mine = row.get("id") != "nginx-tls"
        vs_nginx = ""
        if mine:
            vs_nginx = "/".join(
                f_ratio(r[k]) for k in ("tiny_vs_nginx", "big_vs_nginx", "hs_vs_nginx")
            )
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                f_int(metric(row, "tiny", "rps")),
                f_int(metric(row, "big", "mbps")),
                f_int(metric(row, "handshake", "rps")),
                f_ms(metric(row, "handshake", "p99_ms")),
                cpu_text(row, "handshake"),
                vs_nginx,
                f"{f_ratio(r['tiny_vs_clear'])}/{f_ratio(r['big_vs_clear'])}",
            ]
        )
    return out


def _tls_check_text(row: Json) -> str:
    checks = row.get("tls_checks") or {}
    if not checks:
        return ""
    text = f"`curl --cacert` got {checks.get('curl_status')}"
    if checks.get("protocol"):
        text += f" over {checks['protocol']} / {checks.get('cipher')}"
    if checks.get("alpn"):
        text += f", ALPN {checks['alpn']}"
    resumed = checks.get("second_connection_resumed")
    if resumed is not None:
        text += "; a second connection offering the first one's session " + (
            "resumed it" if resumed else "did NOT resume it (full handshake)"
        )
    return text


def tls_section(results: Json, partial: bool = False) -> str:
    """The markdown of the TLS section, heading included."""
    out: List[str] = [TLS_HEADING + "\n"]
    add = out.append
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    tls = results.get("tls") or {}
    certificate = tls.get("certificate", "a server certificate and its CA")
    add(
        "What TLS termination costs: the nginx proxy and the full-stack gateway behind a TLS "
        "listener, both with one certificate minted by `bench/tls_certs.py` at the start of "
        f"the run, {certificate} that clients verify it against; both proxy to the same "
        "cleartext origin and are pinned like the other rows (proxy on core "
        f"{settings.get('proxy_core')}, wrk and the origin on core {settings.get('load_core')}). "
        "Before the load each row is checked with `curl --cacert` (200 from `/tiny`, and what "
        "was negotiated) and the gateway also with the full-stack row's checks over https. Then "
        "two ways:\n"
    )
    add(
        "- **Keep-alive**: wrk over `https://` exactly as the other rows "
        f"({settings.get('connections')} keep-alive connections, `/tiny` and `/big` after the "
        "same warm-up): what TLS adds to each request and byte once a connection is open. "
        "*TLS vs cleartext* divides by the same proxy's cleartext row of this run (nginx "
        "proxy_pass; avx-gateway, full stack, of the same runtime).\n"
        '- **New handshakes**: wrk with `-H "Connection: close"` on `/tiny` (after a warm-up '
        "of half the tiny one, in this mode): the server closes after each answer and wrk opens "
        "a new connection, with a new TLS handshake, for the next request, so *handshakes/s* is "
        "wrk's req/s there: a TCP connect, a handshake, one request and a close each. wrk keeps "
        "the TLS session of the connection it closed (`SSL_clear`) and offers it on the next, "
        "and both servers resume it (TLS 1.3 session tickets, OpenSSL's default, kept in nginx "
        "with `ssl_session_tickets on`; each row's check below says whether its server "
        "resumed): so these are resumed handshakes (a PSK with a new ECDHE exchange, no "
        "certificate signature). A client's first, full handshake costs the server an ECDSA "
        "signature more and is not measured here. wrk also polls a connecting socket for "
        "writability and so spins while a handshake is under way: its CPU in this mode "
        "is not the client's work alone.\n"
        "- **nginx over TLS**: the nginx proxy_pass row's config (the same upstream with "
        "`keepalive 64`, `keepalive_timeout 120s`, `keepalive_requests 1000000`, 1 worker, "
        "access log off) with `listen ... ssl`, `ssl_protocols TLSv1.2 TLSv1.3`, the "
        "gateway's TLS 1.2 cipher list with `ssl_prefer_server_ciphers on` (the gateway "
        "prefers its own order too), `ssl_session_cache builtin` and `ssl_session_tickets on` "
        "(OpenSSL's defaults, which the gateway keeps). No HTTP/2 on either.\n"
        "- **avx-gateway, full stack over TLS**: the full-stack row's TOML with its one "
        "listener a `[[server.listeners]]` entry on the same endpoint with "
        "`[server.listeners.tls]` `cert_file` and `key_file` (defaults otherwise: TLS 1.2 "
        "minimum, no client certificates) instead of `listen`.\n"
    )
    if partial:
        rows = [r.get("id") for r in shown_rows(results)]
        machine = meta.get("machine", {})
        load = ""
        if machine.get("loadavg_at_start") and machine.get("loadavg_at_end"):
            load = (
                f", load average {' '.join(machine['loadavg_at_start'])} at the start and "
                f"{' '.join(machine['loadavg_at_end'])} at the end"
            )
        add(
            f"Measured in a partial run ({meta.get('started', '?')}, `--only {','.join(rows)}`, "
            f"{settings.get('duration_s', 0):g} s cells after {settings.get('warmup_s', 0):g} s "
            f"warm-up{load}); its ratios to cleartext take the cleartext rows of that run (– "
            "when it had none): compare the ratios, not these req/s with the Results table "
            "above, which is another run.\n"
        )
    add(markdown_table(TLS_COLUMNS, tls_rows(results)))
    add(markdown_table(TLS_RATIO_COLUMNS, tls_ratio_rows(results)))
    notes = []
    for row in rows_of(results, TLS_IDS):
        parts = []
        check = _tls_check_text(row)
        if check:
            parts.append(check)
        stack = row.get("stack_checks")
        if stack:
            parts.append(
                f"over https {stack.get('without_key_status')} without the key, "
                f"{stack.get('with_key_status')} with it and `Access-Control-Allow-Origin: "
                f"{stack.get('cors_allow_origin')}`, metrics {stack.get('metrics_status')}"
            )
        text = ("checked before the load: " + "; ".join(parts) + ".") if parts else ""
        if row.get("access_log_lines") is not None:
            text += f" {_count(row.get('access_log_lines'))} access log lines written."
        if row.get("note"):
            text += " " + row["note"]
        if text.strip():
            notes.append(f"- {row['label']} ({row.get('runtime')}): {text.strip()}")
    if notes:
        add("\n".join(notes) + "\n")
    commands = [r for r in rows_of(results, TLS_IDS) if r.get("command")]
    if commands:
        add("Commands of this run:\n")
        add("```sh")
        for row in commands:
            add(f"# {row['label']} ({row['runtime']})")
            add(row["command"])
            if (row.get("tls_checks") or {}).get("curl_command"):
                add(row["tls_checks"]["curl_command"])
        example = next((r for r in commands if measured(r) and r.get("id") == "gw-full-tls"), None)
        example = example or next((r for r in commands if measured(r)), None)
        if example:
            add(f"# load, e.g. for {example['label']} ({example['runtime']})")
            for cell in ("tiny", "big", "handshake"):
                if (example.get(cell) or {}).get("command"):
                    add(example[cell]["command"])
        add("```\n")
    return wrap_markdown("\n".join(out))


def write_tls_section(results: Json, doc: Path) -> None:
    """Replace only the TLS section of ``doc`` with this (partial) run's; without one, insert it
    before the latency section (after the overhead section, where a full run puts it)."""
    replace_section(doc, TLS_HEADING, tls_section(results, partial=True))


# --------------------------------------------------------------------------- HTTP/2

H2_HEADING = "## HTTP/2"
#: The HTTP/2 rows (bench/run.py's ``h2`` rows, measured with h2load), each with the HTTP/1.1
#: row (wrk) of the same proxy and config it is compared with.
H2_IDS = ("nginx-h2", "gw-h2-h1", "gw-h2-h2", "gw-h2-h1-pypy", "gw-h2-h2-pypy")
H2_HTTP1 = {
    "nginx-h2": "nginx",
    "gw-h2-h1": "gw-plain",
    "gw-h2-h2": "gw-plain",
    "gw-h2-h1-pypy": "gw-plain-pypy",
    "gw-h2-h2-pypy": "gw-plain-pypy",
}
H2_COLUMNS = [
    "Row",
    "Runtime",
    "Upstream",
    "Tiny req/s",
    "Tiny mean ms",
    "Tiny p50 ms",
    "Tiny p99 ms",
    "1 MiB req/s",
    "1 MiB MB/s",
    "1 MiB mean ms",
    "1 MiB p99 ms",
    "CPU % tiny: proxy / other / load core (h2load+origin)",
    "RSS idle MiB",
    "RSS after MiB",
]
H2_RATIO_COLUMNS = [
    "Row",
    "Runtime",
    "Upstream",
    "Tiny req/s vs nginx h2c",
    "MB/s vs nginx h2c",
    "Tiny req/s, HTTP/2 vs HTTP/1.1 row",
    "MB/s, HTTP/2 vs HTTP/1.1 row",
]
H2_TEXT_COLUMNS = [
    "Row",
    "Runtime",
    "Upstream",
    "Tiny req/s",
    "mean ms",
    "p99 ms",
    "1MiB MB/s",
    "p99 ms",
    "CPU % p/o/l",
    "vs nginx h2c tiny/MBs",
    "vs HTTP/1.1 tiny/MBs",
]


def has_h2_rows(results: Json) -> bool:
    """Whether ``results`` ran (or tried) any HTTP/2 row."""
    return ran_any(results, H2_IDS)


def _h2_ratios(results: Json, row: Json) -> Dict[str, Optional[float]]:
    nginx = row_by_id(results, "nginx-h2")
    http1 = row_by_id(results, H2_HTTP1[row["id"]])
    tiny, big = metric(row, "tiny", "rps"), metric(row, "big", "mbps")
    theirs = row is not nginx
    return {
        "tiny_vs_nginx": ratio(tiny, metric(nginx, "tiny", "rps")) if theirs else None,
        "big_vs_nginx": ratio(big, metric(nginx, "big", "mbps")) if theirs else None,
        "tiny_vs_http1": ratio(tiny, metric(http1, "tiny", "rps")),
        "big_vs_http1": ratio(big, metric(http1, "big", "mbps")),
        "http1_tiny": metric(http1, "tiny", "rps"),
        "http1_big": metric(http1, "big", "mbps"),
    }


def h2_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, H2_IDS):
        ok = measured(row)
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                row.get("upstream", ""),
                f_int(metric(row, "tiny", "rps")),
                f_ms(metric(row, "tiny", "avg_ms")),
                f_ms(metric(row, "tiny", "p50_ms")),
                f_ms(metric(row, "tiny", "p99_ms")),
                f_int(metric(row, "big", "rps")),
                f_int(metric(row, "big", "mbps")),
                f_ms(metric(row, "big", "avg_ms")),
                f_ms(metric(row, "big", "p99_ms")),
                cpu_text(row),
                f_mib(row.get("rss_idle_kb")) if ok or row.get("rss_idle_kb") else "–",
                f_mib(row.get("rss_after_kb")) if ok else "–",
            ]
        )
    return out


def h2_ratio_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, H2_IDS):
        r = _h2_ratios(results, row)
        mine = row.get("id") != "nginx-h2"

        def versus(value: Optional[float], http1: Optional[float], unit: str) -> str:
            if value is None:
                return "–"
            return f"{f_ratio(value)} (HTTP/1.1 {f_int(http1)} {unit})"

        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                row.get("upstream", ""),
                f_ratio(r["tiny_vs_nginx"]) if mine else "",
                f_ratio(r["big_vs_nginx"]) if mine else "",
                versus(r["tiny_vs_http1"], r["http1_tiny"], "req/s"),
                versus(r["big_vs_http1"], r["http1_big"], "MB/s"),
            ]
        )
    return out


def h2_text_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, H2_IDS):
        r = _h2_ratios(results, row)
        mine = row.get("id") != "nginx-h2"
        vs_nginx = f"{f_ratio(r['tiny_vs_nginx'])}/{f_ratio(r['big_vs_nginx'])}" if mine else ""
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                row.get("upstream", ""),
                f_int(metric(row, "tiny", "rps")),
                f_ms(metric(row, "tiny", "avg_ms")),
                f_ms(metric(row, "tiny", "p99_ms")),
                f_int(metric(row, "big", "mbps")),
                f_ms(metric(row, "big", "p99_ms")),
                cpu_text(row),
                vs_nginx,
                f"{f_ratio(r['tiny_vs_http1'])}/{f_ratio(r['big_vs_http1'])}",
            ]
        )
    return out


def h2_section(results: Json, partial: bool = False) -> str:
    """The markdown of the HTTP/2 section, heading included."""
    out: List[str] = [H2_HEADING + "\n"]
    add = out.append
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    machine = meta.get("machine", {})
    conns, streams = settings.get("h2_connections", 16), settings.get("h2_streams", 10)
    add(
        "The same proxies with an HTTP/2 listener, loaded with h2load "
        f"(`{machine.get('h2load', 'h2load')}`, nghttp2's load generator) instead of wrk: "
        f"`h2load -t1 -c{conns} -m{streams} -D{settings.get('duration_s', 0):g}`, "
        f"{conns} connections with up to {streams} concurrent streams each ({conns * streams} "
        "requests in flight), cleartext HTTP/2 with prior knowledge (h2c), the same headers "
        "as the wrk rows, on `/tiny` and then `/big` after a warm-up run of the same length as "
        "the wrk rows' (in h2load too). Pinned like the other rows (proxy on core "
        f"{settings.get('proxy_core')}, h2load and the origin on core "
        f"{settings.get('load_core')}). Before the load each row is checked with "
        "`curl --http2-prior-knowledge` (200 from `/tiny` over HTTP version 2).\n"
    )
    add(
        "- **req/s** is h2load's `finished in ..., N req/s`; **MB/s** its `traffic: ... total` "
        "bytes (frames, headers and bodies) over the run's seconds, in 10^6 bytes; **mean** is "
        "its `time for request` mean; h2load prints no percentiles, so **p50/p99** are "
        "nearest-rank percentiles of the per-request times in its `--log-file` (every "
        "request of the measured run). h2load advertises stream and connection windows of "
        "2^30-1 bytes (its `-w 30 -W 30` defaults), so HTTP/2 flow control never holds back "
        "what a proxy sends it, only TCP does: *RSS after* shows what a proxy buffers meanwhile "
        f"({conns * streams} 1 MiB answers in flight at once on `/big`).\n"
        "- **nginx proxy_pass, h2c listener**: the nginx proxy_pass row's config (1 worker, "
        "`upstream` with `keepalive 64`, access log off) with `listen 127.0.0.1:PORT http2` "
        "(nginx 1.22: h2c with prior knowledge only, no HTTP/1.1 on that port), to the same "
        "HTTP/1.1 origin. nginx cannot proxy to an HTTP/2 upstream, so this is the reference "
        "of both gateway rows.\n"
        "- **avx-gateway, one route, h2c listener**: the one-route row's TOML (no auth, CORS, "
        "rate limiting, logging or metrics: the fair comparison with nginx) with its one "
        "listener a `[[server.listeners]]` entry with `http2 = true` on the same endpoint "
        "(`[server.http2]` defaults: 100 concurrent streams per connection) instead of "
        "`listen`; **HTTP/1.1 upstream**: the same HTTP/1.1 origin as every other row; **h2c "
        'upstream**: `[routes.upstream] protocol = "h2c"` to a second port of the same origin '
        "nginx, `listen ... http2` there (h2c with prior knowledge only, so a 200 from it means "
        "the gateway spoke HTTP/2 to it).\n"
        "- *HTTP/2 vs HTTP/1.1 row* divides by the same proxy's HTTP/1.1 row of this run (nginx "
        "proxy_pass; avx-gateway, one route, of the same runtime), measured with wrk and "
        f"{settings.get('connections')} connections, one request each in flight: a different "
        "client and concurrency, so a rough comparison of the two protocols' cost in this "
        "proxy, not a like-for-like one.\n"
    )
    if partial:
        rows = [r.get("id") for r in shown_rows(results)]
        load = ""
        if machine.get("loadavg_at_start") and machine.get("loadavg_at_end"):
            load = (
                f", load average {' '.join(machine['loadavg_at_start'])} at the start and "
                f"{' '.join(machine['loadavg_at_end'])} at the end"
            )
        commit = f", avx-gateway `{machine['gateway_git']}`" if machine.get("gateway_git") else ""
        add(
            f"Measured in a partial run ({meta.get('started', '?')}, `--only {','.join(rows)}`, "
            f"{settings.get('duration_s', 0):g} s cells after {settings.get('warmup_s', 0):g} s "
            f"warm-up{load}{commit}); its ratios take the nginx h2c row and the HTTP/1.1 rows of "
            "that run "
            "(– when it had none): compare the ratios, not these req/s with the Results table "
            "above, which is another run.\n"
        )
    add(markdown_table(H2_COLUMNS, h2_rows(results)))
    add(markdown_table(H2_RATIO_COLUMNS, h2_ratio_rows(results)))
    notes = []
    for row in rows_of(results, H2_IDS):
        text = ""
        checks = row.get("h2_checks") or {}
        if checks:
            text = (
                f"checked before the load: `curl --http2-prior-knowledge` got "
                f"{checks.get('status')} over HTTP/{checks.get('http_version')}."
            )
        for cell, what in (("tiny", "`/tiny`"), ("big", "`/big`")):
            c = row.get(cell) or {}
            if measured(row) and c.get("requests") is not None:
                codes = c.get("status_codes") or {}
                other = sum(v for k, v in codes.items() if k != "2xx")
                text += (
                    f" {what}: {_count(c.get('requests'))} requests done, "
                    f"{_count(c.get('failed'))} failed, {_count(other)} answers not 2xx."
                )
        if row.get("note"):
            text += " " + row["note"]
        if text.strip():
            notes.append(f"- {row['label']} ({row.get('runtime')}): {text.strip()}")
    if notes:
        add("\n".join(notes) + "\n")
    commands = [r for r in rows_of(results, H2_IDS) if r.get("command")]
    if commands:
        add("Commands of this run:\n")
        add("```sh")
        origin = (results.get("origin") or {}).get("command")
        if origin:
            add("# the origin (HTTP/1.1 and h2c ports)")
            add(origin)
        for row in commands:
            add(f"# {row['label']} ({row['runtime']})")
            add(row["command"])
            if (row.get("h2_checks") or {}).get("curl_command"):
                add(row["h2_checks"]["curl_command"])
        example = next((r for r in commands if measured(r) and r.get("id") == "gw-h2-h1"), None)
        example = example or next((r for r in commands if measured(r)), None)
        if example:
            add(f"# load, e.g. for {example['label']} ({example['runtime']})")
            for cell in ("tiny", "big"):
                if (example.get(cell) or {}).get("command"):
                    add(example[cell]["command"])
        add("```\n")
    return wrap_markdown("\n".join(out))


def write_h2_section(results: Json, doc: Path) -> None:
    """Replace only the HTTP/2 section of ``doc`` with this (partial) run's; without one, insert
    it before the latency section (after the TLS section, where a full run puts it)."""
    replace_section(doc, H2_HEADING, h2_section(results, partial=True))


# --------------------------------------------------------------------------- cache

CACHE_HEADING = "## Cache"
#: The cache-hit rows (bench/run.py's ``cache`` rows), each with the uncached row it is compared
#: with (nginx-cache with nginx proxy_pass, the gateway's with the full-stack row).
CACHE_IDS = ("nginx-cache", "gw-cache", "gw-cache-pypy")
CACHE_UNCACHED = {"nginx-cache": "nginx", "gw-cache": "gw-full", "gw-cache-pypy": "gw-full-pypy"}
#: Issue 15: a cache hit through the full stack at ≥ 0.5x nginx proxy_cache's hit rate.
CACHE_TARGET = 0.5
CACHE_COLUMNS = [
    "Row",
    "Runtime",
    "Hit req/s",
    "mean ms",
    "p50 ms",
    "p99 ms",
    "CPU % hits: proxy / other / load core (wrk+origin)",
    "RSS idle MiB",
    "RSS after MiB",
    "vs nginx proxy_cache hit",
    "vs its uncached row (`/tiny`)",
]
CACHE_CHECK_COLUMNS = [
    "Row",
    "Runtime",
    "1st request",
    "2nd request",
    "Origin requests: storing / warm-up / measured run",
    "Hits counted in the measured run (wrk's requests)",
    "Last request",
]
CACHE_TEXT_COLUMNS = [
    "Row",
    "Runtime",
    "Hit req/s",
    "mean ms",
    "p99 ms",
    "CPU % p/o/l",
    "vs nginx-cache",
    "vs uncached",
    "origin reqs in run",
]


def has_cache_rows(results: Json) -> bool:
    """Whether ``results`` ran (or tried) any cache row."""
    return ran_any(results, CACHE_IDS)


def _cache_ratios(results: Json, row: Json) -> Dict[str, Optional[float]]:
    nginx = row_by_id(results, "nginx-cache")
    uncached = row_by_id(results, CACHE_UNCACHED[row["id"]])
    hit = metric(row, "cached", "rps")
    return {
        "vs_nginx": ratio(hit, metric(nginx, "cached", "rps")) if row is not nginx else None,
        "vs_uncached": ratio(hit, metric(uncached, "tiny", "rps")),
        "uncached": metric(uncached, "tiny", "rps"),
    }


def cache_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, CACHE_IDS):
        ok = measured(row)
        r = _cache_ratios(results, row)
        mine = row.get("id") != "nginx-cache"
        uncached = "–"
        if r["vs_uncached"] is not None:
            uncached = f"{f_ratio(r['vs_uncached'])} ({f_int(r['uncached'])} req/s)"
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                f_int(metric(row, "cached", "rps")),
                f_ms(metric(row, "cached", "avg_ms")),
                f_ms(metric(row, "cached", "p50_ms")),
                f_ms(metric(row, "cached", "p99_ms")),
                cpu_text(row, "cached"),
                f_mib(row.get("rss_idle_kb")) if ok or row.get("rss_idle_kb") else "–",
                f_mib(row.get("rss_after_kb")) if ok else "–",
                f_ratio(r["vs_nginx"]) if mine else "",
                uncached,
            ]
        )
    return out


def _probe_text(probe: Optional[Json], header: str) -> str:
    if not probe:
        return "–"
    verdict = probe.get(header)
    text = f"{probe.get('status')}, `{header}: {verdict}`" if verdict else f"{probe.get('status')}"
    if probe.get("age") is not None:
        text += f", `Age: {probe['age']}`"
    return text


def cache_check_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, CACHE_IDS):
        checks = row.get("cache_checks") or {}
        header = checks.get("header", "")
        keys = ("origin_requests_storing", "origin_requests_warmup", "origin_requests_load")
        origin = [checks.get(k) for k in keys]
        hits = "n/a (nginx has no counter)" if row.get("id") == "nginx-cache" else "–"
        if checks.get("hits_counted_load") is not None:
            hits = (
                f"{_count(int(checks['hits_counted_load']))} "
                f"({_count((row.get('cached') or {}).get('requests'))})"
            )
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                _probe_text(checks.get("first"), header),
                _probe_text(checks.get("second"), header),
                " / ".join("–" if v is None else _count(v) for v in origin),
                hits,
                _probe_text(checks.get("after"), header),
            ]
        )
    return out


def cache_text_rows(results: Json) -> List[List[str]]:
    out = []
    for row in rows_of(results, CACHE_IDS):
        r = _cache_ratios(results, row)
        mine = row.get("id") != "nginx-cache"
        out.append(
            [
                _label(row),
                row.get("runtime", ""),
                f_int(metric(row, "cached", "rps")),
                f_ms(metric(row, "cached", "avg_ms")),
                f_ms(metric(row, "cached", "p99_ms")),
                cpu_text(row, "cached"),
                f_ratio(r["vs_nginx"]) if mine else "",
                f_ratio(r["vs_uncached"]),
                _count((row.get("cache_checks") or {}).get("origin_requests_load")),
            ]
        )
    return out


def cache_targets(results: Json) -> List[Tuple[str, str, Optional[bool]]]:
    """Issue 15's target, per runtime: a hit through the full stack + cache at ≥ 0.5x nginx
    proxy_cache's hit req/s, on one core; not met when the origin saw requests meanwhile."""
    out: List[Tuple[str, str, Optional[bool]]] = []
    nginx = row_by_id(results, "nginx-cache")
    for row_id, runtime in (("gw-cache", "CPython"), ("gw-cache-pypy", "PyPy")):
        row = row_by_id(results, row_id)
        label = (
            f"{runtime} full stack + cache, cache hits of a small response: "
            f"≥ {CACHE_TARGET:g}x nginx proxy_cache's hit req/s (one core)"
        )
        r = ratio(metric(row, "cached", "rps"), metric(nginx, "cached", "rps"))
        if row is not None and row.get("status") not in ("ok", None, "unselected"):
            out.append((label, f"not measured: {row.get('note', row.get('status'))}", None))
            continue
        if r is None:
            out.append((label, "–", None))
            continue
        missed = (row.get("cache_checks") or {}).get("origin_requests_load")  # type: ignore[union-attr]
        text = (
            f"{r:.2f}x ({f_int(metric(row, 'cached', 'rps'))} vs "
            f"{f_int(metric(nginx, 'cached', 'rps'))} req/s)"
        )
        if missed:
            text += f", but {missed} requests reached the origin"
        out.append((label, text, r >= CACHE_TARGET and not missed))
    return out


def cache_section(results: Json, partial: bool = False) -> str:
    """The markdown of the Cache section, heading included."""
    out: List[str] = [CACHE_HEADING + "\n"]
    add = out.append
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    machine = meta.get("machine", {})
    conns = settings.get("connections")
    add(
        "Cache hits of the small response: the origin answers `/cached` like `/tiny` (13 bytes, "
        "`return 200`) with `Cache-Control: max-age=3600`, and each proxy below stores it and "
        "answers it from its cache. Loaded like the Results rows: "
        f"`wrk -t1 -c{conns} -d{settings.get('duration_s', 0):g}s --latency` on `/cached` with "
        "the same headers, after a warm-up run of the same length as theirs, proxy pinned to "
        f"core {settings.get('proxy_core')}, wrk and the origin to core "
        f"{settings.get('load_core')}.\n"
    )
    add(
        "- **nginx proxy_pass + proxy_cache**: the nginx proxy_pass row's config (1 worker, "
        "`upstream` with `keepalive 64`, access log off) with `proxy_cache_path` in the run's "
        "temp dir (`levels=1:2 keys_zone=bench:10m max_size=256m inactive=60m "
        "use_temp_path=off`), `proxy_cache bench` on the location, no `proxy_cache_valid` (the "
        "origin's `Cache-Control` decides) and `add_header X-Cache-Status "
        "$upstream_cache_status always`. A hit is served from the cache file (the page cache).\n"
        "- **avx-gateway, full stack + cache**: the full-stack row's TOML (API key auth, rate "
        "limiting, CORS, metrics, JSON access log; all of them run on every hit) with "
        "`[routes.cache]` on its `/*` route (`max_object_bytes = 1048576`, the other keys at "
        'their defaults: no heuristic freshness) and `[cache]` `backend = "memory"`, '
        "`status_header = true` (`Cache-Status` on every answer of the route).\n"
        "- **Checks**: before the load one request stores `/cached` and the next must be a hit "
        "(`X-Cache-Status: HIT`; `Cache-Status: avx; hit`), or the row fails; the origin logs "
        "`/cached` requests (its only location with an access log), and their count must not "
        "grow during the warm-up and the measured run; for the gateway, "
        '`avx_cache_requests_total{result="hit"}` from its `/metrics` before and after the '
        "measured run must grow by wrk's request count (plus the few in flight when wrk stops).\n"
        "- *vs nginx proxy_cache hit* divides by the nginx row's hit req/s of this run; *vs its "
        "uncached row* by the `/tiny` req/s of the same proxy without a cache in this run "
        "(nginx proxy_pass; avx-gateway, full stack, of the same runtime), both 13-byte "
        "bodies.\n"
    )
    if partial:
        rows = [r.get("id") for r in shown_rows(results)]
        load = ""
        if machine.get("loadavg_at_start") and machine.get("loadavg_at_end"):
            load = (
                f", load average {' '.join(machine['loadavg_at_start'])} at the start and "
                f"{' '.join(machine['loadavg_at_end'])} at the end"
            )
        commit = f", avx-gateway `{machine['gateway_git']}`" if machine.get("gateway_git") else ""
        add(
            f"Measured in a partial run ({meta.get('started', '?')}, `--only {','.join(rows)}`, "
            f"{settings.get('duration_s', 0):g} s cells after {settings.get('warmup_s', 0):g} s "
            f"warm-up{load}{commit}); its ratios take the nginx proxy_cache row and the uncached "
            "rows of that run (– when it had none): compare the ratios, not these req/s with "
            "the Results table above, which is another run.\n"
        )
    add(markdown_table(CACHE_COLUMNS, cache_rows(results)))
    add(markdown_table(CACHE_CHECK_COLUMNS, cache_check_rows(results)))
    goal = cache_targets(results)
    verdicts = [
        f"{runtime} {v} — **{met_text(m)}**"
        for (_, v, m), runtime in zip(goal, ("CPython", "PyPy"))
        if v != "–"
    ]
    add(
        f"Target (issue 15): a hit through the full stack + cache at ≥ {CACHE_TARGET:g}x nginx "
        "proxy_cache's hit req/s, on one core: "
        + ("; ".join(verdicts) if verdicts else "not measured")
        + ".\n"
    )
    notes = []
    for row in rows_of(results, CACHE_IDS):
        text = row.get("note", "")
        checks = row.get("stack_checks")
        if checks:
            text = (
                f"checked before the load: {checks.get('without_key_status')} without the "
                f"key, {checks.get('with_key_status')} with it and "
                f"`Access-Control-Allow-Origin: {checks.get('cors_allow_origin')}`, metrics "
                f"{checks.get('metrics_status')}; "
                f"{_count(row.get('access_log_lines'))} access log lines written. " + text
            ).strip()
        cell = (row.get("cached") or {}) if measured(row) else {}
        busy, other = cell.get("load_core_busy_pct"), cell.get("other_on_proxy_core_pct")
        own = (cell.get("wrk_cpu_pct") or 0) + (cell.get("origin_cpu_pct") or 0)
        proxy = cell.get("proxy_cpu_pct")
        if busy is not None and busy >= 95 and own < 80:
            text += f" The load core was {busy:.0f} % busy, wrk and the origin {own:.0f} % of it"
            if proxy is not None and proxy < 90:
                text += (
                    f", the proxy {proxy:.0f} %: other work on the machine held the load side "
                    "back, so this req/s is a lower bound."
                )
            elif proxy is not None:
                text += f" (other work on the machine); the proxy was at {proxy:.0f} %."
            else:
                text += " (other work on the machine)."
        if other is not None and other >= 10:
            text += f" {other:.0f} % of the proxy's core went to other work (softirq, processes)."
        load = row.get("loadavg")
        if load:
            before, after = " ".join(load[0]), " ".join(load[1])
            text += f" Load average before/after the row: {before} / {after}."
        if text.strip():
            notes.append(f"- {row['label']} ({row.get('runtime')}): {text.strip()}")
    if notes:
        add("\n".join(notes) + "\n")
    commands = [r for r in rows_of(results, CACHE_IDS) if r.get("command")]
    if commands:
        add("Commands of this run:\n")
        add("```sh")
        origin = (results.get("origin") or {}).get("command")
        if origin:
            add("# the origin")
            add(origin)
        for row in commands:
            add(f"# {row['label']} ({row['runtime']})")
            add(row["command"])
        example = next((r for r in commands if measured(r) and r.get("id") == "gw-cache"), None)
        example = example or next((r for r in commands if measured(r)), None)
        if example and (example.get("cached") or {}).get("command"):
            add(f"# load, e.g. for {example['label']} ({example['runtime']})")
            add(example["cached"]["command"])
        add("```\n")
    return wrap_markdown("\n".join(out))


def write_cache_section(results: Json, doc: Path) -> None:
    """Replace only the Cache section of ``doc`` with this (partial) run's; without one, insert
    it before the latency section (after the HTTP/2 section, where a full run puts it)."""
    replace_section(doc, CACHE_HEADING, cache_section(results, partial=True))


# --------------------------------------------------------------------------- policies

POLICY_HEADING = "## Policies"
#: The policy rows (bench/run.py's ``policy`` rows), CPython then PyPy.
POLICY_IDS = (
    "gw-full-post",
    "gw-policies",
    "gw-full-json",
    "gw-gzip",
    "gw-full-post-pypy",
    "gw-policies-pypy",
    "gw-full-json-pypy",
    "gw-gzip-pypy",
)
#: Each policy row's comparison: the same request through the full stack without the policy.
POLICY_WITHOUT = {
    "gw-policies": "gw-full-post",
    "gw-gzip": "gw-full-json",
    "gw-policies-pypy": "gw-full-post-pypy",
    "gw-gzip-pypy": "gw-full-json-pypy",
}
#: The full-stack row (the tiny GET) of each runtime.
FULL_OF_RUNTIME = {"CPython": "gw-full", "PyPy": "gw-full-pypy"}
POLICY_COLUMNS = [
    "Row",
    "Runtime",
    "Request",
    "req/s",
    "MB/s (wire)",
    "mean ms",
    "p50 ms",
    "p99 ms",
    "CPU %: proxy / other / load core (wrk+origin)",
    "RSS idle MiB",
    "RSS after MiB",
    "vs full stack, `/tiny` GET",
    "vs the same request without the policy",
]
POLICY_CHECK_COLUMNS = ["Row", "Runtime", "Checked through the gateway before the load"]
POLICY_TEXT_COLUMNS = [
    "Row",
    "Runtime",
    "req/s",
    "MB/s",
    "mean ms",
    "p99 ms",
    "CPU % p/o/l",
    "vs full /tiny",
    "vs without",
]


def has_policy_rows(results: Json) -> bool:
    """Whether ``results`` ran (or tried) any policy row."""
    return ran_any(results, POLICY_IDS)


def _policy_shown(results: Json) -> List[Json]:
    """The full-stack rows the policy rows are compared with, then the policy rows."""
    ids = [FULL_OF_RUNTIME["CPython"], *POLICY_IDS[:4], FULL_OF_RUNTIME["PyPy"], *POLICY_IDS[4:]]
    shown = rows_of(results, ids)
    if not any(r.get("id") in POLICY_IDS for r in shown):
        return []
    return shown


def _policy_request(row: Json) -> str:
    if row.get("id") in FULL_OF_RUNTIME.values():
        return "GET `/tiny` (13 B)"
    checks = row.get("policy_checks") or {}
    if row.get("load_kind") == "post":
        return "POST `/tiny`, 150 B JSON"
    size = checks.get("origin_bytes")
    what = f"{_count(size)} B" if size else "100 KB"
    return f"GET `/json` ({what}), `Accept-Encoding: gzip`"


def _policy_cell(row: Json) -> str:
    return "tiny" if row.get("id") in FULL_OF_RUNTIME.values() else "load"


def _policy_ratios(results: Json, row: Json) -> Dict[str, Optional[float]]:
    full = row_by_id(results, FULL_OF_RUNTIME.get(row.get("runtime", ""), "gw-full"))
    without = row_by_id(results, POLICY_WITHOUT.get(row.get("id", ""), ""))
    rps = metric(row, _policy_cell(row), "rps")
    return {
        "vs_full": None if row is full else ratio(rps, metric(full, "tiny", "rps")),
        "vs_without": ratio(rps, metric(without, "load", "rps")) if without else None,
    }


def policy_rows(results: Json) -> List[List[str]]:
    out = []
    for row in _policy_shown(results):
        ok = measured(row)
        cell = _policy_cell(row)
        r = _policy_ratios(results, row)
        label = row["label"] if ok else f"{row['label']} ({status_text(row)})"
        mbps = metric(row, cell, "mbps")
        out.append(
            [
                label,
                row.get("runtime", ""),
                _policy_request(row),
                f_int(metric(row, cell, "rps")),
                "–" if mbps is None else f"{mbps:,.1f}",
                f_ms(metric(row, cell, "avg_ms")),
                f_ms(metric(row, cell, "p50_ms")),
                f_ms(metric(row, cell, "p99_ms")),
                cpu_text(row, cell),
                f_mib(row.get("rss_idle_kb")) if ok or row.get("rss_idle_kb") else "–",
                f_mib(row.get("rss_after_kb")) if ok else "–",
                f_ratio(r["vs_full"]) if r["vs_full"] is not None else "",
                f_ratio(r["vs_without"]) if r["vs_without"] is not None else "",
            ]
        )
    return out


def _policy_check_text(row: Json) -> str:
    c = row.get("policy_checks") or {}
    if not c:
        return "–" if measured(row) else f"{row.get('status')}: {row.get('note', '')}"
    if row.get("load_kind") == "post":
        seen = c.get("origin_saw") or {}

        def field(name: str) -> str:
            value = seen.get(name.lower())
            return f"`{name}: {value}`" if value else f"no `{name}`"

        text = f"the valid body {c.get('valid_post_status')}"
        if row.get("policies"):
            problems = ", ".join(f"`{p}`" for p in c.get("invalid_post_problems") or [])
            text += (
                f"; the invalid one (`order_id` a string, no `items`) "
                f"{c.get('invalid_post_status')} (`{c.get('invalid_post_content_type')}`: "
                f"{problems}); the valid one as `text/plain` {c.get('text_plain_post_status')}"
            )
        else:
            text += f"; the invalid one {c.get('invalid_post_status')} (nothing validates it)"
        sent = "sent with `X-Debug: 1`"
        text += (
            f"; `/headers` on the origin ({sent}) saw {field('X-Client-IP')}, "
            f"{field('X-Request')}, {field('X-Debug')}"
        )
        return text
    text = (
        f"{c.get('status')}, `Content-Type: {c.get('content_type')}`, "
        f"`Content-Encoding: {c.get('content_encoding') or '(none)'}`"
    )
    if c.get("vary"):
        text += f", `Vary: {c['vary']}`"
    text += f", {_count(c.get('body_bytes'))} bytes"
    if row.get("compression"):
        origin, body = c.get("origin_bytes"), c.get("body_bytes")
        text += f" decoding to the origin's {_count(origin)}" + (
            " byte for byte" if c.get("decoded_matches_origin") else " (NOT the same)"
        )
        if origin and body:
            text += f" ({origin / body:.1f}x smaller)"
        bare = c.get("without_accept_encoding") or {}
        if bare:
            text += (
                f"; without `Accept-Encoding`: {bare.get('status')}, "
                f"`Content-Encoding: {bare.get('content_encoding') or '(none)'}`, "
                f"{_count(bare.get('body_bytes'))} bytes"
            )
    return text


def policy_check_rows(results: Json) -> List[List[str]]:
    return [
        [_label(row), row.get("runtime", ""), _policy_check_text(row)]
        for row in _policy_shown(results)
        if row.get("id") in POLICY_IDS
    ]


def policy_text_rows(results: Json) -> List[List[str]]:
    out = []
    for row in _policy_shown(results):
        cell = _policy_cell(row)
        r = _policy_ratios(results, row)
        mbps = metric(row, cell, "mbps")
        out.append(
            [
                row.get("id", ""),
                row.get("runtime", ""),
                f_int(metric(row, cell, "rps")),
                "–" if mbps is None else f"{mbps:,.1f}",
                f_ms(metric(row, cell, "avg_ms")),
                f_ms(metric(row, cell, "p99_ms")),
                cpu_text(row, cell),
                f_ratio(r["vs_full"]) if r["vs_full"] is not None else "",
                f_ratio(r["vs_without"]) if r["vs_without"] is not None else "",
            ]
        )
    return out


def policy_section(results: Json, partial: bool = False) -> str:
    """The markdown of the Policies section, heading included."""
    out: List[str] = [POLICY_HEADING + "\n"]
    add = out.append
    meta = results.get("meta", {})
    settings = meta.get("settings", {})
    machine = meta.get("machine", {})
    conns = settings.get("connections")
    add(
        "What two of a route's policies (docs/policies.md) cost the full-stack gateway (the "
        "full-stack row's TOML: API key auth, rate limiting, CORS, metrics, JSON access log), on "
        "CPython and PyPy. Each row is that TOML plus at most one thing on its `/*` route, "
        "loaded like the Results rows (`wrk -t1 "
        f"-c{conns} -d{settings.get('duration_s', 0):g}s --latency`, the same headers, a "
        "warm-up run of the same request and length first, proxy pinned to core "
        f"{settings.get('proxy_core')}, wrk and the origin to core {settings.get('load_core')}); "
        "every row is checked through the gateway before its load, and a failed check fails the "
        "row:\n"
    )
    add(
        '- **POST of a small JSON body**: `POST /tiny` of 150 bytes of JSON (`{"order_id": '
        '1048576, "customer": ..., "items": [two objects], "express": true}`) with '
        "`Content-Type: application/json` and `X-Debug: 1`, from a wrk Lua script "
        "(`wrk.method`, `wrk.body`); nginx's `return 200` answers a POST like a GET (13 bytes). "
        "*full stack, POST* has no policy; **+ header transforms + JSON Schema** adds "
        '`[routes.request] set_headers = { "X-Client-IP" = "${client_ip}", "X-Request" = '
        '"${request_id}" }`, `remove_headers = ["X-Debug"]` and `[routes.validate] '
        "request_schema` = a 2020-12 schema written by the bench (`bench/configs.py`, "
        "`POLICY_SCHEMA`: an object of `order_id` integer ≥ 1, `customer` string of 3-64, "
        "`items` 1-20 objects of `sku` string matching a pattern and `qty` integer ≥ 1, "
        "`express` boolean; the first three required, no others allowed), its `methods` and "
        "`max_bytes` at their defaults: every POST body is read whole, parsed and validated "
        "before the upstream sees it.\n"
        "- **100 KB JSON**: `GET /json`, a file on the origin of an API-like list of records "
        "(`bench/configs.py`, `json_document`, the same bytes every run), `application/json`, "
        "with `Accept-Encoding: gzip`. *full stack, 100 KB JSON* has no compression (the origin's "
        'bytes as they are); **+ compression** adds `[routes.compression] encodings = ["br", '
        '"gzip"]` (`min_bytes`, `content_types` at their defaults): gzip, zlib level 5, each '
        "upstream chunk compressed and flushed as it comes, chunked to the client. *MB/s (wire)* "
        "is wrk's `Transfer/sec`: for this row compressed bytes (plus headers and chunk framing).\n"
        "- *vs full stack, `/tiny` GET* divides by the full-stack row of the same runtime and "
        "run (issue 16's ratio for the policies row); *vs the same request without the policy* "
        "by the row above it without the policy, same runtime and run: the cost of the policy "
        "alone (for gzip: the uncompressed 100 KB answer).\n"
    )
    if partial:
        rows = [r.get("id") for r in shown_rows(results)]
        load = ""
        if machine.get("loadavg_at_start") and machine.get("loadavg_at_end"):
            load = (
                f", load average {' '.join(machine['loadavg_at_start'])} at the start and "
                f"{' '.join(machine['loadavg_at_end'])} at the end"
            )
        commit = f", avx-gateway `{machine['gateway_git']}`" if machine.get("gateway_git") else ""
        add(
            f"Measured in a partial run ({meta.get('started', '?')}, `--only {','.join(rows)}`, "
            f"{settings.get('duration_s', 0):g} s cells after {settings.get('warmup_s', 0):g} s "
            f"warm-up{load}{commit}); its ratios take the full-stack rows of that run (– when it "
            "had none): compare the ratios, not these req/s with the Results table above, which "
            "is another run.\n"
        )
    add(markdown_table(POLICY_COLUMNS, policy_rows(results)))
    add(markdown_table(POLICY_CHECK_COLUMNS, policy_check_rows(results)))
    notes = []
    for row in _policy_shown(results):
        cell_name = _policy_cell(row)
        text = row.get("note", "")
        checks = row.get("stack_checks")
        if checks:
            text = (
                f"checked before the load: {checks.get('without_key_status')} without the "
                f"key, {checks.get('with_key_status')} with it and "
                f"`Access-Control-Allow-Origin: {checks.get('cors_allow_origin')}`, metrics "
                f"{checks.get('metrics_status')}; "
                f"{_count(row.get('access_log_lines'))} access log lines written. " + text
            ).strip()
        cell = (row.get(cell_name) or {}) if measured(row) else {}
        origin_bytes = (row.get("policy_checks") or {}).get("origin_bytes")
        if row.get("compression") and cell.get("rps") and origin_bytes:
            text += (
                f" {cell['rps']:,.0f} req/s are {cell['rps'] * origin_bytes / 1e6:,.1f} MB/s of "
                "JSON before compression."
            )
        busy, other = cell.get("load_core_busy_pct"), cell.get("other_on_proxy_core_pct")
        own = (cell.get("wrk_cpu_pct") or 0) + (cell.get("origin_cpu_pct") or 0)
        proxy = cell.get("proxy_cpu_pct")
        if busy is not None and busy >= 95 and own < 80:
            text += f" The load core was {busy:.0f} % busy, wrk and the origin {own:.0f} % of it"
            if proxy is not None and proxy < 90:
                text += (
                    f", the proxy {proxy:.0f} %: other work on the machine held the load side "
                    "back, so this req/s is a lower bound."
                )
            else:
                text += " (other work on the machine)."
        if other is not None and other >= 10:
            text += f" {other:.0f} % of the proxy's core went to other work (softirq, processes)."
        load = row.get("loadavg")
        if load:
            before, after = " ".join(load[0]), " ".join(load[1])
            text += f" Load average before/after the row: {before} / {after}."
        if text.strip():
            notes.append(f"- {row['label']} ({row.get('runtime')}): {text.strip()}")
    if notes:
        add("\n".join(notes) + "\n")
    commands = [r for r in _policy_shown(results) if r.get("command")]
    if commands:
        add("Commands of this run:\n")
        add("```sh")
        origin = (results.get("origin") or {}).get("command")
        if origin:
            add("# the origin")
            add(origin)
        for row in commands:
            add(f"# {row['label']} ({row['runtime']})")
            add(row["command"])
        for kind, row_id in (("post", "gw-policies"), ("json", "gw-gzip")):
            example = next(
                (r for r in commands if measured(r) and r.get("id") == row_id), None
            ) or next((r for r in commands if measured(r) and r.get("load_kind") == kind), None)
            if example and (example.get("load") or {}).get("command"):
                add(f"# load, e.g. for {example['label']} ({example['runtime']})")
                add(example["load"]["command"])
        add("```\n")
        script = meta.get("policy_post_lua")
        if script:
            add("The POST script (`-s`):\n")
            add("```lua")
            add(script.rstrip("\n"))
            add("```\n")
    return wrap_markdown("\n".join(out))


def write_policy_section(results: Json, doc: Path) -> None:
    """Replace only the Policies section of ``doc`` with this (partial) run's; without one,
    insert it before the latency section (after the Cache section, where a full run puts it)."""
    replace_section(doc, POLICY_HEADING, policy_section(results, partial=True))


def replace_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section of ``doc`` under ``heading`` (up to the next "## ") with ``section``,
    leaving every other byte as it is; without one, insert it before the latency section (or
    the profile, or at the end)."""
    text = doc.read_text()
    section = section.strip("\n") + "\n"
    start = text.find("\n" + heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading) + 2)
        tail = "" if end < 0 else text[end + 1 :]
        doc.write_text(text[: start + 1] + section + ("\n" + tail if tail else ""))
        return
    for before in ("\n## Latency at half the maximum rate\n", "\n" + PROFILE_HEADING + "\n"):
        at = text.find(before)
        if at >= 0:
            doc.write_text(text[: at + 1] + section + "\n" + text[at + 1 :])
            return
    doc.write_text(text.rstrip("\n") + "\n\n" + section)


# --------------------------------------------------------------------------- markdown


def existing_profile(doc: Path) -> Optional[str]:
    """The body of the "## Profile" section of ``doc`` (up to the next "## " heading)."""
    try:
        text = doc.read_text()
    except OSError:
        return None
    start = text.find("\n" + PROFILE_HEADING + "\n")
    if start < 0:
        return None
    body = text[start + len(PROFILE_HEADING) + 2 :]
    end = body.find("\n## ")
    return (body if end < 0 else body[: end + 1]).strip("\n") + "\n"


def render_markdown(
    results: Json,
    profile: Optional[str] = None,
    overhead: Optional[str] = None,
    tls: Optional[str] = None,
    h2: Optional[str] = None,
    cache: Optional[str] = None,
    policies: Optional[str] = None,
) -> str:
    """The whole doc; ``profile`` is the body of the kept "Profile" section, ``overhead``,
    ``tls`` and ``h2`` the existing overhead, TLS and HTTP/2 sections, kept when ``results``
    have no such rows (older results)."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    settings = meta.get("settings", {})
    rows = main_rows(results)
    duration = settings.get("duration_s")
    conns = settings.get("connections")
    out: List[str] = []
    add = out.append
    add("# Benchmarks\n")
    add(
        "How fast avx-gateway proxies, next to nginx, Twisted's own `ReverseProxyResource`, a "
        "minimal aiohttp proxy and a bare Twisted + httptools proxy (the ceiling of this "
        "reactor), all on one machine over loopback. This page is generated: "
        "`make bench` (or `bash bench/run.sh`, `--quick` for 3 s cells) measures and rewrites "
        "it; `.venv/bin/python bench/render.py bench/results/latest.json` re-renders it from the "
        "saved results (`bench/results/`, not committed). Numbers from a shared 2-core VM are "
        "indicative: compare rows of one run, not runs of different days.\n"
    )
    add(f"Run: {meta.get('started', '?')}, {meta.get('wall_s', '?')} s wall time.\n")

    add("## Machine\n")
    for key, label in (
        ("nproc", "nproc"),
        ("cpu", "CPU"),
        ("memory_gib", "Memory (GiB)"),
        ("os", "OS"),
        ("kernel", "Kernel"),
        ("loadavg_at_start", "Load average at start"),
        ("loadavg_at_end", "Load average at end"),
        ("cpython", "CPython (gateway venv)"),
        ("pypy", "PyPy (`.venv-pypy`)"),
        ("aiohttp", "aiohttp (`bench/.venv`)"),
        ("httptools", "httptools (reference proxy, upload origin)"),
        ("nginx", "nginx"),
        ("wrk", "wrk"),
        ("h2load", "h2load"),
        ("curl", "curl"),
        ("gateway_git", "avx-gateway commit"),
    ):
        value = machine.get(key, "?")
        if isinstance(value, list):
            value = " ".join(map(str, value))
        add(f"- {label}: `{value}`")
    add("")

    add("## How it is measured\n")
    add(
        f"- **Origin**: nginx, 1 worker, its own config in a temp dir, serving `/tiny` (13 bytes, "
        f"`return 200`), `/big` (1 MiB file) and `/huge` (200 MB file), pinned with "
        f"`taskset -c {settings.get('load_core')}` together with the load generator. "
        f"Command: `{(results.get('origin') or {}).get('command', '?')}`.\n"
        f"- **Proxies** run one at a time, each pinned to its own core "
        f"(`taskset -c {settings.get('proxy_core')}`), all forwarding `/*` to the origin.\n"
        f"- **Load**: `wrk -t1 -c{conns} -d{duration:g}s --latency` (64 keep-alive connections) on "
        f"core {settings.get('load_core')}, after a warm-up run of "
        f"{settings.get('warmup_s'):g} s on `/tiny` and half that on `/big` (PyPy's JIT needs "
        f"it; every row gets the same). Every request carries "
        f"`{'`, `'.join(settings.get('headers', []))}` so that all proxies see the same bytes; "
        f"only the full-stack gateway looks at them.\n"
        "- **req/s, p50, p99** are wrk's `Requests/sec` and `--latency` percentiles; **MB/s** is "
        "wrk's `Transfer/sec` (bodies plus headers) in 10^6 bytes per second.\n"
        "- **RSS** is `VmRSS` from `/proc/PID/status`, summed over the process and its children "
        "(nginx: master + worker): *idle* once the proxy answered its first request, *after* "
        "both measured runs.\n"
        "- **CPU %** during the measured tiny-body run, in % of one core: the proxy's own CPU "
        "time (all its processes, `utime + stime` from `/proc/PID/stat`) / the rest of the busy "
        "time of its core (`/proc/stat`: softirq work for the loopback traffic, anything else "
        "running there) / how busy the load core was, with the part wrk and the origin used in "
        "parentheses (the rest is softirq work and other processes). A proxy near 100 % was the "
        "bottleneck; a load core near 100 % with the proxy well below means the load side was, "
        "and that row's numbers are a lower bound. Rows given both cores show only the proxy "
        "and load-core figures.\n"
        "- **Ratios** (our single-core rows only) divide by the nginx, aiohttp and "
        "Twisted + httptools reference rows of the same run; *vs reference* takes the reference "
        "of the same runtime (CPython rows the CPython one, PyPy rows the PyPy one).\n"
    )
    add("The proxies:\n")
    add(
        "1. **avx-gateway, one route**: `/*` to the origin; access log, metrics, CORS and rate "
        "limiting off, no auth.\n"
        '2. **avx-gateway, full stack**: the same route with `auth = ["api_key"]` (key sent by '
        'wrk in `X-API-Key`), rate limiting on (`key = "ip"`, 10^9 req/s, never triggers), '
        "CORS on (wrk sends `Origin`, the gateway answers with `Access-Control-Allow-Origin`), "
        "Prometheus metrics on, JSON access log to a file. The same with tracing of every request, "
        "and with a no-op plugin on every phase: see *Overhead of tracing and plugins*.\n"
        "3. **nginx proxy_pass**: 1 worker, `upstream` block with `keepalive 64`, "
        '`proxy_http_version 1.1`, `proxy_set_header Connection ""`, access log off, default '
        "buffering.\n"
        "4. **Twisted ReverseProxyResource** (`bench/twisted_rp.py`): stock, so one new origin "
        "connection per request (`Connection: close`), no pool.\n"
        "5. **aiohttp proxy** (`bench/aiohttp_proxy.py`): `aiohttp.web` server, one "
        "`ClientSession` (pooled keep-alive connections), body streamed in 64 KiB chunks; plain "
        "asyncio loop, no uvloop.\n"
        "6. **Twisted+httptools reference proxy** (`bench/httptools_proxy.py`): the ceiling of "
        "this reactor, no features at all: a bare Twisted `Protocol` parsing requests with "
        "httptools' `HttpRequestParser`, one request at a time per connection (reading paused "
        "while one is in flight), a per-process pool of keep-alive origin connections (at most "
        "64 idle) parsed with `HttpResponseParser`, `Content-Length` bodies relayed as they "
        "come and chunked ones re-chunked, backpressure both ways through `registerProducer`, "
        "`TCP_NODELAY` on.\n"
        "7. The same gateway rows, ReverseProxyResource and the reference proxy under **PyPy** "
        "(`.venv-pypy`), when that venv exists.\n"
        "8. **Workers**: the one-route gateway with `server.workers = 1` and `= 2`, given *all* "
        f"cores (`taskset -c {settings.get('all_cores')}`). On a 2-core machine wrk and the "
        "origin share those cores with the workers, so this pair shows what a second process "
        "buys when nothing is left idle, not how workers scale on a bigger machine.\n"
        "9. nginx and the full-stack gateway **over TLS**: in their own section, *TLS*.\n"
        "10. nginx and the one-route gateway with an **HTTP/2** listener (and the gateway with "
        "an HTTP/2 upstream), loaded with h2load: in their own section, *HTTP/2*.\n"
        "11. nginx with `proxy_cache` and the full-stack gateway with its response cache, "
        "serving cache hits: in their own section, *Cache*.\n"
        "12. The full stack with request header transforms + JSON Schema validation of a small "
        "POST body, and with gzip of a 100 KB JSON answer: in their own section, *Policies*.\n"
    )
    add(
        'Gateways listen with `listen = ["tcp:PORT:interface=127.0.0.1:backlog=1024"]` (the '
        "other proxies use a backlog of 1024 too).\n"
    )
    add("Exact commands of this run (ports are picked free at run time):\n")
    add("```sh")
    for row in rows:
        if row.get("command"):
            add(f"# {row['label']} ({row['runtime']})")
            add(row["command"])
    example = next((r for r in rows if measured(r) and r.get("id") == "gw-full"), None)
    example = example or next((r for r in rows if measured(r)), None)
    if example:
        add(f"# load, e.g. for {example['label']} ({example['runtime']})")
        add(example["tiny"]["command"])
        add(example["big"]["command"])
        half = example.get("half_rate")
        if isinstance(half, dict):
            add(half["command"])
    memory = results.get("memory") or {}
    huge, idle = memory.get("huge") or {}, memory.get("idle") or {}
    upload = memory.get("upload") or {}
    if huge.get("gateway_command"):
        add("# memory checks: a full-stack gateway, then")
        add(huge["gateway_command"])
        for key in ("fast", "slow"):
            if (huge.get(key) or {}).get("command"):
                add(huge[key]["command"])
    if upload.get("gateway_command"):
        add("# a fresh one (with a /sink route) and an origin that discards bodies for the upload")
        add(upload["sink_command"])
        add(upload["gateway_command"])
        for key in ("length", "chunked"):
            if (upload.get(key) or {}).get("command"):
                add(upload[key]["command"])
    if idle.get("client_command"):
        add("# and a fresh one for the idle connections")
        add(idle["gateway_command"])
        add(idle["client_command"])
    add("```\n")

    add("## Results\n")
    add(markdown_table(COLUMNS, table_rows(results)))
    notes = [r for r in rows if r.get("note") or r.get("stack_checks")]
    if notes:
        add("Notes:\n")
        for row in notes:
            text = row.get("note", "")
            checks = row.get("stack_checks")
            if checks:
                text = (
                    f"checked before the load: {checks.get('without_key_status')} without the "
                    f"key, {checks.get('with_key_status')} with it and "
                    f"`Access-Control-Allow-Origin: {checks.get('cors_allow_origin')}`, metrics "
                    f"{checks.get('metrics_status')}; "
                    f"{_count(row.get('access_log_lines'))} access log lines written. " + text
                ).strip()
            add(f"- {row['label']} ({row['runtime']}): {text}")
        add("")

    if has_overhead_rows(results):
        add(overhead_section(results))
    elif overhead is not None:  # results without those rows: the doc's section stays
        add(overhead)
    if has_tls_rows(results):
        add(tls_section(results))
    elif tls is not None:
        add(tls)
    if has_h2_rows(results):
        add(h2_section(results))
    elif h2 is not None:
        add(h2)
    if has_cache_rows(results):
        add(cache_section(results))
    elif cache is not None:
        add(cache)
    if has_policy_rows(results):
        add(policy_section(results))
    elif policies is not None:
        add(policies)
    add("## Latency at half the maximum rate\n")
    add(
        "Debian has no wrk2, so wrk paces the requests itself: a Lua `delay()` (bench/run.py, "
        "`PACING_LUA`) keeps one constant-rate schedule of send slots, `1 / target` apart, and "
        "each connection that is free takes the next slot, as wrk2's `-R` does. The target is "
        "half the tiny-body req/s the row just measured; "
        f"{settings.get('half_rate_connections')} connections, so that one is always free for "
        "the next slot. A slot no connection is free for is dropped rather than made up later "
        "(no coordinated-omission correction), so the achieved rate is shown next to the target; "
        "a shortfall means the proxy could not keep up.\n"
    )
    half_rows = half_rate_rows(results)
    add(markdown_table(HALF_COLUMNS, half_rows) if half_rows else "_not measured_\n")

    add("## Workers\n")
    w1, w2 = row_by_id(results, "gw-w1"), row_by_id(results, "gw-w2")
    if w1 is None or w2 is None:
        add("_not measured_\n")
    else:
        for row in (w1, w2):
            if measured(row):
                add(
                    f"- {row['label']}: {f_int(metric(row, 'tiny', 'rps'))} req/s tiny "
                    f"(p99 {f_ms(metric(row, 'tiny', 'p99_ms'))} ms), "
                    f"{f_int(metric(row, 'big', 'mbps'))} MB/s 1 MiB, RSS "
                    f"{f_mib(row.get('rss_idle_kb'))} → {f_mib(row.get('rss_after_kb'))} MiB "
                    "(all processes)"
                )
            else:
                add(f"- {row['label']}: {row.get('status')}: {row.get('note', '')}")
        r = ratio(metric(w2, "tiny", "rps"), metric(w1, "tiny", "rps"))
        if r is not None:
            add(f"- workers = 2 vs 1, tiny req/s: {r:.2f}x")
        add("")

    add("## Memory\n")
    memory = results.get("memory") or {}
    huge = memory.get("huge") or {}
    idle = memory.get("idle") or {}
    full = row_by_id(results, "gw-full")
    plain = row_by_id(results, "gw-plain")
    add(
        f"- **RSS after start** (CPython, after the first request): one route "
        f"{f_mib((plain or {}).get('rss_idle_kb'))} MiB, full stack "
        f"{f_mib((full or {}).get('rss_idle_kb'))} MiB."
    )
    if huge.get("slow") and huge.get("fast"):
        add(
            "- **A 200 MB response** through the full-stack gateway (`/huge`, fetched with curl "
            "to `/dev/null` while a thread samples the gateway's VmRSS every 10 ms; 20 small "
            "requests first so that pools and buffers exist):"
        )
        for key, what in (("fast", "unthrottled"), ("slow", "client limited with --limit-rate")):
            c = huge[key]
            add(
                f"  - {what}: HTTP {c['status']}, {c['bytes']:,} bytes in {c['seconds']:.1f} s "
                f"({_rate(c)}); RSS {f_mib(c['rss_before_kb'])} → peak "
                f"{f_mib(c['rss_peak_kb'])} MiB (+{f_mib(c['added_kb'])} MiB)"
            )
    elif huge.get("error"):
        add(f"- **A 200 MB response**: error: {huge['error']}")
    upload = memory.get("upload") or {}
    add(upload_text(upload))
    if idle.get("rss_after_kb"):
        add(
            f"- **{idle.get('connections', 0):,} idle keep-alive connections** "
            "(`bench/idle_conns.py`: asyncio client on the load core, source addresses "
            "127.0.0.2.. so no address runs out of ports, at most 100 connects at a time; each "
            "connection sends one `GET /tiny` with keep-alive, reads the answer and stays open): "
            f"{idle.get('open', 0):,} open, {idle.get('failed', 0):,} failed in "
            f"{idle.get('seconds', 0):.1f} s; gateway RSS {f_mib(idle['rss_before_kb'])} → "
            f"{f_mib(idle['rss_after_kb'])} MiB "
            f"({idle.get('kb_per_connection', 0):.1f} kB per connection); "
            f"{_count(idle.get('still_open'))} were still open when the client let go "
            f"(gateway `keepalive_timeout_ms = 300000` for this check, open-files limit "
            f"{idle.get('gateway_nofile', '?')})."
        )
    elif idle.get("error"):
        add(f"- **Idle connections**: error: {idle['error']}")
    add("")

    add("## Targets\n")
    add(
        markdown_table(
            ["Target", "Measured", "Result"],
            [[t, v, met_text(m)] for t, v, m in targets(results)],
        )
    )
    add("MiB are 2^20 bytes; comparing MiB with the MB targets errs on the strict side.\n")

    text = wrap_markdown("\n".join(out))
    profile_text = profile if profile is not None else PROFILE_PLACEHOLDER
    return text.rstrip("\n") + "\n\n" + PROFILE_HEADING + "\n\n" + profile_text.strip("\n") + "\n"


def upload_text(upload: Json) -> str:
    """The Memory section's item on the upload check."""
    what = (
        f"**A {_size(upload.get('size_bytes'))} upload**"
        if upload.get("size_bytes")
        else "**The upload check**"
    )
    if upload.get("skipped"):
        return f"- {what}: skipped (`--upload-size 0`)."
    cells = [(key, upload[key]) for key in ("length", "chunked") if upload.get(key)]
    if not cells:
        error = upload.get("error")
        return f"- {what}: error: {error}" if error else f"- {what}: not measured."
    lines = [
        f"- {what} through the full-stack gateway (`POST /sink` from `bench/upload_client.py` on "
        "the load core, the same random 1 MiB block over and over, as fast as the gateway takes "
        "it; the route's `max_body_bytes` raised above the size; the origin, "
        "`bench/sink_origin.py`, reads and discards the body and answers how many bytes it got "
        "and when the first and last came; 20 small uploads first; a thread samples the "
        "gateway's VmRSS every 10 ms; *written to storage* is the gateway's `write_bytes` from "
        "`/proc/PID/io` meanwhile, where a body spooled to a temp file shows up instead of in "
        "RSS):"
    ]
    for key, cell in cells:
        rate = ""
        if cell.get("seconds") and cell.get("sent"):
            rate = f" ({cell['sent'] / cell['seconds'] / 1e6:.0f} MB/s)"
        got = cell.get("origin_received")
        extra = "" if upload_complete(upload, cell) else " — TRANSFER INCOMPLETE"
        for field in ("error", "send_error", "response"):
            if cell.get(field):
                extra += f"; {field.replace('_', ' ')}: {cell[field]}"
        lines.append(
            f"  - with {UPLOAD_MODES[key]}: HTTP {cell.get('status')}, "
            f"{_count(cell.get('sent'))} bytes sent, {_count(got)} read by the origin, in "
            f"{cell.get('seconds') or 0:.1f} s{rate}; RSS {f_mib(cell['rss_before_kb'])} → peak "
            f"{f_mib(cell['rss_peak_kb'])} MiB (+{f_mib(cell['added_kb'])} MiB), "
            f"{f_mib(cell['rss_after_kb'])} MiB after{_streaming(cell)}{extra}"
        )
    if upload.get("error"):
        lines.append(f"  - error: {upload['error']}")
    return "\n".join(lines)


def _streaming(cell: Json) -> str:
    """When the origin's first byte came, and what the gateway wrote to storage."""
    text = ""
    first = cell.get("origin_first_byte_after_start_s")
    after_done = cell.get("origin_first_byte_after_client_done_s")
    if first is not None and after_done is not None:
        how = (
            f"{after_done:.1f} s after the client's last: stored, then forwarded"
            if after_done > 0
            else "before the client's last: streamed"
        )
        text += f"; the origin's first byte {first:.2f} s after the start, {how}"
    written = cell.get("gateway_disk_write_bytes")
    if written is not None:
        text += f"; {written / 1e6:,.0f} MB written to storage"
    return text


def wrap_markdown(text: str, width: int = 100) -> str:
    """Wrap prose lines and list items at ``width``; code blocks, tables and headings stay."""
    out: List[str] = []
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
            out.append(line)
            continue
        if fenced or len(line) <= width or line.startswith(("|", "#")):
            out.append(line)
            continue
        m = re.match(r"(\s*(?:[-*]|\d+\.)\s+)", line)
        indent = " " * len(m.group(1)) if m else ""
        out.append(
            textwrap.fill(
                line,
                width=width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def write_doc(results: Json, doc: Path) -> None:
    doc.write_text(
        render_markdown(
            results,
            existing_profile(doc),
            existing_section(doc, OVERHEAD_HEADING),
            existing_section(doc, TLS_HEADING),
            existing_section(doc, H2_HEADING),
            existing_section(doc, CACHE_HEADING),
            existing_section(doc, POLICY_HEADING),
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Render benchmark results.")
    parser.add_argument("results", nargs="?", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-doc", action="store_true", help="only print the text table")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    print(render_text(results))
    if not args.no_doc:
        write_doc(results, Path(args.doc))
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
