#!/usr/bin/env bash
# Benchmark avx-gateway against nginx, Twisted's ReverseProxyResource, aiohttp and a bare
# Twisted + httptools reference proxy (and under PyPy when .venv-pypy exists), and the full stack
# against nginx over TLS (a certificate minted at run time, bench/tls_certs.py), the one-route
# gateway against nginx over HTTP/2 (h2load) and the full stack with its response cache against
# nginx proxy_cache serving the same hit, and the full stack with request header transforms + JSON
# Schema validation and with gzip; results go to bench/results/ and docs/benchmarks.md.
#
#   bash bench/run.sh            # default: 10 s cells, 5 s warm-up (about 10 minutes)
#   bash bench/run.sh --quick    # 3 s cells, 2 s warm-up
#   bash bench/run.sh --help     # every option (bench/run.py)
#   bash bench/run.sh --only nginx,nginx-tls,gw-full,gw-full-tls,gw-full-pypy,gw-full-tls-pypy \
#       --skip-memory --doc docs/benchmarks.md   # the TLS rows (and their cleartext ones) only
#   bash bench/run.sh --only nginx-h2,gw-h2-h1,gw-h2-h2,gw-h2-h1-pypy \
#       --skip-memory --doc docs/benchmarks.md   # the HTTP/2 rows (h2load) only
#   bash bench/run.sh --only nginx,nginx-cache,gw-full,gw-cache,gw-full-pypy,gw-cache-pypy \
#       --skip-memory --doc docs/benchmarks.md   # the cache-hit rows (and their uncached ones)
#   bash bench/run.sh --skip-memory --doc docs/benchmarks.md --only \
#       gw-full,gw-full-post,gw-policies,gw-full-json,gw-gzip,gw-full-pypy,gw-full-post-pypy,gw-policies-pypy,gw-full-json-pypy,gw-gzip-pypy
#       # the policy rows (header transforms + JSON Schema on a POST, gzip of 100 KB JSON) and
#       # their full-stack rows
#
# Installs what is missing: nginx, wrk, curl and h2load (nghttp2-client) (apt-get, as root), the
# gateway's .venv (through the Makefile), a bench-only venv with aiohttp (bench/.venv), and
# httptools in the gateway's venvs (.venv, and the PyPy one when it exists: built from source
# there, so pypy3-dev and a C compiler come first). All load goes to 127.0.0.1; every process
# started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

missing=()
for tool in nginx wrk curl taskset h2load; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    packages=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            taskset) packages+=(util-linux) ;;
            h2load) packages+=(nghttp2-client) ;;
            *) packages+=("$tool") ;;
        esac
    done
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing ${missing[*]}; install as root: apt-get install -y ${packages[*]}" >&2
        exit 2
    fi
    echo "bench: installing ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# The gateway's own venv, exactly as `make test` / `make run` create it.
if [ ! -x .venv/bin/twistd ]; then
    make -C "$ROOT" .venv/.installed-python3
fi

# aiohttp only for the comparison row: a venv of its own, never a dependency of the gateway.
if ! bench/.venv/bin/python -c 'import aiohttp' >/dev/null 2>&1; then
    echo "bench: creating bench/.venv with aiohttp" >&2
    python3 -m venv bench/.venv
    bench/.venv/bin/python -m pip install -q --upgrade pip
    bench/.venv/bin/python -m pip install -q aiohttp
fi

KEEP_WORKDIR=""
PYPY_VENV=".venv-pypy"
previous=""
for arg in "$@"; do
    case "$arg" in
        --keep-workdir) KEEP_WORKDIR=1 ;;
        --pypy-venv=*) PYPY_VENV="${arg#--pypy-venv=}" ;;
    esac
    [ "$previous" = "--pypy-venv" ] && PYPY_VENV="$arg"
    previous="$arg"
done

# httptools for the reference proxy (bench/httptools_proxy.py, run with the gateway's venvs) and
# the upload check's origin (bench/sink_origin.py, run with .venv). Soon a dependency of the
# gateway itself (setup.cfg); until then installed here when a venv lacks it. A venv that cannot
# get it only loses its rows (they fail with the import error), not the run.
ensure_httptools() {
    local python="$1/bin/python"
    [ -x "$python" ] || return 0
    "$python" -c 'import httptools' >/dev/null 2>&1 && return 0
    if "$python" -c 'import sys; sys.exit(sys.implementation.name != "pypy")' 2>/dev/null; then
        # No PyPy wheels: httptools builds from source, against Python.h and with a C compiler.
        local include
        include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        if { [ ! -f "$include/Python.h" ] || ! command -v cc >/dev/null 2>&1; } \
            && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "bench: installing pypy3-dev gcc (to build httptools for $1)" >&2
            apt-get update -q || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                pypy3-dev gcc || true
        fi
    fi
    echo "bench: installing httptools into $1" >&2
    "$python" -m pip install -q httptools \
        || echo "bench: could not install httptools into $1; its reference row will fail" >&2
}
ensure_httptools .venv
ensure_httptools "$PYPY_VENV"

WORKDIR="$(mktemp -d /tmp/avx-bench.XXXXXX)"
BENCH_PID=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    # run.py stops what it started when it ends; on a signal it gets SIGTERM and a few seconds.
    if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$BENCH_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$BENCH_PID" 2>/dev/null || true
    fi
    # Anything it started and could not stop (each in its own session: kill the whole group).
    if [ -f "$WORKDIR/pids" ]; then
        while read -r pid; do
            kill -KILL -- "-$pid" 2>/dev/null || true
        done <"$WORKDIR/pids"
    fi
    if [ -n "$KEEP_WORKDIR" ]; then
        echo "bench: configs and logs kept in $WORKDIR" >&2
    else
        rm -rf "$WORKDIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# In the background and waited for, so that a signal reaches the trap at once.
.venv/bin/python bench/run.py --workdir "$WORKDIR" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
