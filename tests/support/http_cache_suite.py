"""The HTTP Working Group's cache test suite (``http-cache-tests`` on npm, the suite behind
cache-tests.fyi) run against a proxy, for the RFC 9111 cache's conformance tests (issue 15).

The package is pinned in ``tests/support/cache_tests/package.json``/``package-lock.json`` and
installed there by ``make test-tools`` (``npm ci``); ``cache_tests/run.mjs`` drives it (see its
header). The suite has its own origin server; the proxy under test must forward every path
(``/config/*``, ``/test/*``, ``/state/*``, any method, PUT bodies included) to it. Each test PUTs
its script to the origin through the proxy, makes its requests through the proxy and reads what
the origin saw back from ``/state/``.

Blocking API (a test on the reactor can call it: the origin, the proxy and the client are other
processes)::

    with Origin() as origin, Gateway(tmp_path, origin.url, extra_toml) as gw:
        run = run_suite(gw.url, timeout=600)
    print(render_markdown(run))          # id, group, required?, avx, nginx, varnish
    assert not gate_failures(run)        # issue 15's gate

From the command line (``.venv/bin/python tests/support/http_cache_suite.py --help``)::

    http_cache_suite.py gateway [--extra-toml FILE] [--out results.json] [--table table.md]
    http_cache_suite.py origin [--port 8000]            # serve the origin only, for a proxy
    http_cache_suite.py run --base URL [--out F]         # run through a proxy already set up
    http_cache_suite.py table results.json [--required-only] [--suite ID]...

Results: the raw result of a test is ``true`` (passed) or ``[error_name, message]``:
``"Assertion"`` (the cache misbehaved), ``"Setup"`` (the harness could not set the test up, or
``"retry"``: the cache retried a request), or a client error name (``"FetchError"``: connection
refused, reset or timed out). :func:`classify` turns them into the outcomes the suite's own
display shows (``lib/display.mjs``, ``determineTestResult``), which depend on the test's
``kind``: ``required`` (the spec's MUSTs: pass / fail), ``optimal`` (pass / optional_fail) and
``check`` (yes / no: information only), and on its ``depends_on`` tests (dependency_fail when one
did not pass).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "SUITE_DIR",
    "PACKAGE_DIR",
    "RESULTS_DIR",
    "SYMBOLS",
    "GATE_SUITES",
    "SuiteTest",
    "SuiteRun",
    "Origin",
    "Gateway",
    "ensure_installed",
    "load_tests",
    "load_suites",
    "classify",
    "run_suite",
    "published",
    "published_implementations",
    "gateway_config",
    "summary",
    "render_markdown",
    "render_summary",
    "gate_failures",
    "main",
]

REPO = Path(__file__).resolve().parents[2]
SUITE_DIR = Path(__file__).resolve().parent / "cache_tests"
PACKAGE_DIR = SUITE_DIR / "node_modules" / "http-cache-tests"
#: Published results of other implementations, shipped in the npm package (``results/*.json``,
#: listed with versions in ``results/index.mjs``): apache, nginx, squid, trafficserver, varnish,
#: nuster, fastly, chrome, firefox, safari.
RESULTS_DIR = PACKAGE_DIR / "results"
RUN_MJS = SUITE_DIR / "run.mjs"

#: Outcome -> the symbol the suite's README uses.
SYMBOLS: Dict[str, str] = {
    "pass": "✅",
    "fail": "⛔️",
    "optional_fail": "⚠️",
    "yes": "Y",
    "no": "N",
    "setup_fail": "🔹",
    "harness_fail": "⁉️",
    "dependency_fail": "⚪️",
    "retry": "↻",
    "untested": "-",
}
_PASSING = ("pass", "yes")

#: Issue 15's gate groups -> the suite ids (``tests/*.mjs`` of the package) they name.
GATE_SUITES: Dict[str, Tuple[str, ...]] = {
    "cache-control response directives": ("cc-response",),
    "expires": ("expires",),
    "vary": ("vary", "vary-parse"),
    "conditional requests": ("conditional-lm", "conditional-inm"),
    "update on 304": ("update304",),
    "stale": ("stale",),
    "invalidation": ("invalidation",),
    "authorization": ("auth",),
}
#: The groups where every required test must pass, whatever nginx and Varnish do.
GATE_ALWAYS: Tuple[str, ...] = ("invalidation", "auth")


@dataclass(frozen=True)
class SuiteTest:
    """One test of the suite, as ``run.mjs meta`` describes it."""

    id: str
    name: str
    suite_id: str
    suite_name: str
    kind: str  # "required", "optimal" or "check"
    depends_on: Tuple[str, ...] = ()
    spec_anchors: Tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.kind == "required"


def node_binary() -> str:
    """The node executable (``make test-tools`` installs it when missing)."""
    for name in ("node", "nodejs"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("node is not installed (make test-tools installs it)")


def ensure_installed() -> None:
    """Raise, saying how to fix it, when the npm package is not installed here."""
    node_binary()
    if not (PACKAGE_DIR / "package.json").is_file():
        raise RuntimeError(f"{PACKAGE_DIR} is missing: run `make test-tools` (npm ci) first")


def _node(*args: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    ensure_installed()
    return subprocess.run(
        [node_binary(), "--no-warnings", str(RUN_MJS), *args],
        cwd=SUITE_DIR, timeout=timeout, check=False, **kwargs,
    )


@cache
def load_suites() -> Tuple[Dict[str, Any], ...]:
    """The suites as ``run.mjs meta`` prints them (browser-only tests included)."""
    done = _node("meta", timeout=60, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"run.mjs meta failed: {done.stderr.decode(errors='replace')}")
    return tuple(json.loads(done.stdout))


def load_tests() -> Dict[str, SuiteTest]:
    """Every test a proxy runs (350 in 0.4.5: browser-only ones left out), in suite order."""
    tests: Dict[str, SuiteTest] = {}
    for suite in load_suites():
        for test in suite["tests"]:
            if test["browser_only"]:
                continue
            tests[test["id"]] = SuiteTest(
                id=test["id"],
                name=test["name"],
                suite_id=suite["id"],
                suite_name=suite["name"],
                kind=test["kind"],
                depends_on=tuple(test["depends_on"]),
                spec_anchors=tuple(test["spec_anchors"]),
            )
    return tests


def classify(raw: Dict[str, Any], tests: Optional[Dict[str, SuiteTest]] = None) -> Dict[str, str]:
    """Raw results -> {test id: outcome} for every test (``untested`` when absent), as the
    suite's ``determineTestResult`` does (dependencies honoured)."""
    tests = load_tests() if tests is None else tests
    memo: Dict[str, str] = {}

    def outcome(test_id: str, seen: Tuple[str, ...] = ()) -> str:
        if test_id in memo:
            return memo[test_id]
        test = tests.get(test_id)
        result = raw.get(test_id)
        if result is None or test is None:
            value = "untested"
        elif any(
            dep not in seen and outcome(dep, seen + (test_id,)) not in _PASSING
            for dep in test.depends_on
        ):
            value = "dependency_fail"
        elif isinstance(result, list) and result and result[0] == "Setup":
            value = "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
        elif test.kind == "optimal":
            value = "pass" if result is True else "optional_fail"
        elif test.kind == "check":
            value = "yes" if result is True else "no"
        else:
            value = "pass" if result is True else "fail"
        memo[test_id] = value
        return value

    return {test_id: outcome(test_id) for test_id in tests}


def published_implementations() -> List[str]:
    """Names of the published results shipped in the package (``nginx``, ``varnish``, ...)."""
    return sorted(p.stem for p in RESULTS_DIR.glob("*.json"))


@cache
def _published_raw(name: str) -> Dict[str, Any]:
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def published(name: str) -> Dict[str, str]:
    """The outcomes of a published implementation (``nginx``: 1.18.0, ``varnish``: 6.4.0,
    versions in ``results/index.mjs``), classified against the installed tests; ``{}`` when the
    package ships no results of that name."""
    try:
        raw = _published_raw(name)
    except FileNotFoundError:
        return {}
    return classify(raw)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def _stop(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Origin:
    """The suite's origin server (``run.mjs origin``) on ``host`` and a free port (or ``port``).

    ``url`` (``http://127.0.0.1:PORT``) is what the proxy's route forwards to. Output goes to
    ``directory/cache-tests-origin.log`` (a temporary directory by default).
    """

    def __init__(
        self, directory: Optional[Path] = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="cache-tests-"))
        self.host = host
        self.port = port
        self.url = ""
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.directory / "cache-tests-origin.log"

    def start(self, timeout: float = 20.0) -> Origin:
        ensure_installed()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [node_binary(), "--no-warnings", str(RUN_MJS), "origin",
                 "--host", self.host, "--port", str(self.port)],
                cwd=SUITE_DIR, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("{"):
                    try:
                        data = json.loads(line)
                    except ValueError:
                        continue
                    if data.get("pid") == self.proc.pid:
                        self.url, self.port = data["origin"], data["port"]
                        return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"cache-tests origin exited {self.proc.returncode}: "
                                   f"{self.output()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cache-tests origin did not start: {self.output()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_config(origin_url: str, port: int, extra_toml: str = "") -> str:
    """A gateway config: 127.0.0.1:``port``, one route ``/*`` (every method) to ``origin_url``,
    its circuit breaker never opening (the suite's origin answers 5xx and drops connections on
    purpose: with the default 5 failures the route would answer 503 ``upstream circuit open`` to
    the next tests' setup PUTs). ``extra_toml`` is appended after the route's tables: e.g. a
    ``[routes.cache]`` table for that route, then top-level tables such as ``[cache]``."""
    return (
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "workers = 1\n"
        "\n"
        "[[routes]]\n"
        'name = "cache_tests"\n'
        'path = "/*"\n'
        "\n"
        "[routes.upstream]\n"
        f'urls = ["{origin_url}"]\n'
        "\n"
        "[routes.upstream.circuit_breaker]\n"
        "failure_threshold = 1000000\n"
        "\n"
        f"{extra_toml}\n"
    )


class Gateway:
    """A real ``twistd -n avx-gateway --config F`` (this venv's twistd) on a free port with
    :func:`gateway_config`; :meth:`start` blocks until ``/healthz`` answers 200. Files (config,
    output) go in ``directory``. ``source``: another checkout of the repo to run the gateway
    from (its ``avx_twisted`` and twistd plugin first on ``PYTHONPATH``), e.g. a ``git archive``
    of a commit to compare with; default: this repo, as installed in the venv."""

    def __init__(self, directory: Path, origin_url: str, extra_toml: str = "",
                 port: int = 0, source: Optional[Path] = None) -> None:
        self.directory = Path(directory)
        self.source = Path(source).resolve() if source else None
        self.port = port or free_port()
        self.config_path = self.directory / "cache-tests-gateway.toml"
        self.config_path.write_text(gateway_config(origin_url, self.port, extra_toml))
        self.log_path = self.directory / "cache-tests-gateway.out"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Gateway:
        twistd = str(Path(sys.executable).with_name("twistd"))
        env = dict(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.source)] + [p for p in [env.get("PYTHONPATH", "")] if p]
            )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [twistd, "--pidfile=", "-n", "avx-gateway", "--config", str(self.config_path)],
                cwd=self.source or REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not start: {self.output()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc, timeout=15)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- running --------------------------------------------------------------------------------


@dataclass
class SuiteRun:
    """One run of the suite through a proxy."""

    base_url: str
    raw: Dict[str, Any]  # test id -> true | [error name, message]
    outcomes: Dict[str, str]  # test id -> outcome (see SYMBOLS), every test
    tests: Dict[str, SuiteTest]
    uuids: Dict[str, str] = field(default_factory=dict)  # test id -> uuid in its URLs
    duration_s: float = 0.0
    output: str = ""  # what the client printed (stderr; a --id dump)

    def detail(self, test_id: str) -> str:
        """The failure message of a test ('' when it passed or did not run)."""
        result = self.raw.get(test_id)
        if isinstance(result, list):
            return ": ".join(str(part) for part in result)
        return ""

    def counts(self, required_only: bool = False) -> Dict[str, int]:
        return summary(self.outcomes, self.tests, required_only=required_only)[""]


def run_suite(
    base_url: str,
    *,
    timeout: float = 600.0,
    ids: Optional[Iterable[str]] = None,
    request_timeout: float = 30.0,
    concurrency: int = 100,
    out_path: Optional[Path] = None,
) -> SuiteRun:
    """Run the suite (or the tests ``ids``) through the proxy at ``base_url``; the whole run is
    killed after ``timeout`` s (``subprocess.TimeoutExpired``), each request fails after
    ``request_timeout`` s. The raw JSON is kept at ``out_path`` when given. About 20 s for the
    whole suite (tests with pauses run concurrently, ``concurrency`` at a time)."""
    ids = list(ids or ())
    with tempfile.TemporaryDirectory(prefix="cache-tests-run-") as tmp:
        out = Path(out_path) if out_path else Path(tmp) / "results.json"
        args = ["run", "--base", base_url, "--out", str(out),
                "--request-timeout-ms", str(int(request_timeout * 1000)),
                "--concurrency", str(concurrency)]
        for test_id in ids:
            args += ["--id", test_id]
        started = time.monotonic()
        done = _node(*args, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"cache-tests client failed ({done.returncode}): {output}")
        data = json.loads(out.read_text())
    tests = load_tests()
    outcomes = classify(data["results"], tests)
    if ids:  # only those tests (their dependencies did not run: dependency_fail)
        tests = {i: t for i, t in tests.items() if i in ids}
        outcomes = {i: o for i, o in outcomes.items() if i in tests}
    return SuiteRun(
        base_url=base_url,
        raw=data["results"],
        outcomes=outcomes,
        tests=tests,
        uuids=data.get("uuids", {}),
        duration_s=time.monotonic() - started,
        output=output,
    )


def load_run(path: Path) -> SuiteRun:
    """A run saved by ``run --out`` (or ``run_suite(out_path=...)``)."""
    data = json.loads(Path(path).read_text())
    tests = load_tests()
    return SuiteRun(base_url=data.get("base", ""), raw=data["results"],
                    outcomes=classify(data["results"], tests), tests=tests,
                    uuids=data.get("uuids", {}))


# -- reports --------------------------------------------------------------------------------


def summary(
    outcomes: Dict[str, str], tests: Optional[Dict[str, SuiteTest]] = None,
    required_only: bool = False,
) -> Dict[str, Dict[str, int]]:
    """{suite id: {outcome: count}}, and the totals under ``""``."""
    tests = load_tests() if tests is None else tests
    out: Dict[str, Dict[str, int]] = {"": {}}
    for test_id, outcome in outcomes.items():
        test = tests.get(test_id)
        if test is None or (required_only and not test.required):
            continue
        for key in (test.suite_id, ""):
            bucket = out.setdefault(key, {})
            bucket[outcome] = bucket.get(outcome, 0) + 1
    return out


def _selected(tests: Dict[str, SuiteTest], suites: Optional[Sequence[str]],
              required_only: bool) -> List[SuiteTest]:
    return [t for t in tests.values()
            if (not suites or t.suite_id in suites) and (t.required or not required_only)]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    run: SuiteRun,
    compare: Sequence[str] = ("nginx", "varnish"),
    suites: Optional[Sequence[str]] = None,
    required_only: bool = False,
    names: bool = False,
    label: str = "avx",
) -> str:
    """A Markdown table, one row per test: id, group, required?, ours (``label``), then each
    published implementation of ``compare`` (``-`` where it has no result for the id). Only the
    suite ids ``suites`` when given, only required tests with ``required_only``; ``names`` adds
    the test's description."""
    published_outcomes = {name: published(name) for name in compare}
    head = ["id", "group", "required?", label, *compare] + (["test"] if names else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for test in _selected(run.tests, suites, required_only):
        cells = [
            f"`{test.id}`", _md(test.suite_name),
            "yes" if test.required else test.kind,
            SYMBOLS[run.outcomes.get(test.id, "untested")],
        ]
        for name in compare:
            cells.append(SYMBOLS[published_outcomes[name].get(test.id, "untested")])
        if names:
            cells.append(_md(test.name))
        lines.append("| " + " | ".join(cells) + " |")
    legend = ", ".join(f"{symbol} {outcome}" for outcome, symbol in SYMBOLS.items())
    return "\n".join(lines) + f"\n\n{legend}\n"


def render_summary(
    run: SuiteRun, compare: Sequence[str] = ("nginx", "varnish"), label: str = "avx"
) -> str:
    """Per group: tests, required tests, and how many required tests pass for us and for each
    implementation of ``compare``."""
    groups: Dict[str, List[SuiteTest]] = {}
    for test in run.tests.values():
        groups.setdefault(test.suite_id, []).append(test)
    others = {name: published(name) for name in compare}
    head = ["group", "tests", "required", f"{label} required ✅",
            *[f"{n} required ✅" for n in compare], f"{label} all ✅/Y"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def passed(outcomes: Dict[str, str], tests: List[SuiteTest]) -> int:
        return sum(outcomes.get(t.id) in _PASSING for t in tests)

    for suite_id, tests in groups.items():
        required = [t for t in tests if t.required]
        cells = [f"{_md(tests[0].suite_name)} (`{suite_id}`)", str(len(tests)), str(len(required)),
                 str(passed(run.outcomes, required))]
        cells += [str(passed(others[n], required)) for n in compare]
        cells.append(str(passed(run.outcomes, tests)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gate_failures(
    run: SuiteRun, reference: Sequence[str] = ("nginx", "varnish")
) -> Dict[str, str]:
    """Issue 15's gate: {test id: our outcome and message} for

    - each required test of :data:`GATE_SUITES` we do not pass although one implementation of
      ``reference`` passes it (``reference=()``: every required test of those groups);
    - each required or optimal test of the invalidation and authorization groups
      (:data:`GATE_ALWAYS`) we do not pass. Their required tests alone pass trivially through a
      proxy that caches nothing (they check that a response is *not* reused); the optimal ones
      (``invalidate-*-failed``, ``other-authorization-public`` ...) check that it *is*.

    Empty when the gate holds. ``check`` tests are information, never gated."""
    others = [published(name) for name in reference]
    gated = {s for suites in GATE_SUITES.values() for s in suites}
    out: Dict[str, str] = {}
    for test in run.tests.values():
        if test.suite_id not in gated or test.kind == "check":
            continue
        ours = run.outcomes.get(test.id, "untested")
        if ours == "pass":
            continue
        always = test.suite_id in GATE_ALWAYS
        if not always and not test.required:
            continue
        if always or not others or any(o.get(test.id) == "pass" for o in others):
            out[test.id] = f"{ours} {run.detail(test.id)}".strip()
    return out


# -- command line ---------------------------------------------------------------------------


def _report(run: SuiteRun, args: argparse.Namespace) -> None:
    counts = run.counts()
    required = run.counts(required_only=True)
    print(f"{len(run.raw)} tests run in {run.duration_s:.1f} s through {run.base_url}",
          file=sys.stderr)
    print(f"all: {json.dumps(counts, sort_keys=True)}", file=sys.stderr)
    print(f"required: {json.dumps(required, sort_keys=True)}", file=sys.stderr)
    print(f"gate failures: {len(gate_failures(run))}", file=sys.stderr)
    table = render_summary(run) + "\n" + render_markdown(
        run, suites=args.suite or None, required_only=args.required_only, names=args.names
    )
    if args.table:
        Path(args.table).write_text(table)
    else:
        print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_origin = sub.add_parser("origin", help="serve the suite's origin until interrupted")
    p_origin.add_argument("--host", default="127.0.0.1")
    p_origin.add_argument("--port", type=int, default=8000)
    p_run = sub.add_parser("run", help="run the suite through a proxy already forwarding to an "
                                       "origin")
    p_run.add_argument("--base", required=True, help="base URL of the proxy under test")
    p_gw = sub.add_parser("gateway", help="start an origin and a twistd gateway (one route /*), "
                                          "run the suite through it")
    p_gw.add_argument("--extra-toml", type=Path, help="TOML appended to the gateway's route")
    p_gw.add_argument("--keep", type=Path, help="directory for the gateway's config and logs")
    p_gw.add_argument("--source", type=Path,
                      help="run the gateway from this checkout (e.g. a git archive of HEAD)")
    p_table = sub.add_parser("table", help="render a saved results file")
    p_table.add_argument("results", type=Path)
    for p in (p_run, p_gw):
        p.add_argument("--out", type=Path, help="keep the raw results JSON here")
        p.add_argument("--id", action="append", default=[], help="only this test (repeatable)")
        p.add_argument("--timeout", type=float, default=600.0)
    for p in (p_run, p_gw, p_table):
        p.add_argument("--table", type=Path, help="write the Markdown here (default: stdout)")
        p.add_argument("--suite", action="append", default=[], help="only this group (suite id)")
        p.add_argument("--required-only", action="store_true")
        p.add_argument("--names", action="store_true", help="add the tests' descriptions")
    args = parser.parse_args(argv)

    if args.command == "origin":
        with Origin(host=args.host, port=args.port) as origin:
            print(f"cache-tests origin on {origin.url} (Ctrl-C stops)", file=sys.stderr)
            try:
                assert origin.proc is not None
                origin.proc.wait()
            except KeyboardInterrupt:
                pass
        return 0
    if args.command == "table":
        _report(load_run(args.results), args)
        return 0
    if args.command == "run":
        run = run_suite(args.base, timeout=args.timeout, ids=args.id, out_path=args.out)
        _report(run, args)
        if run.output.strip():
            print(run.output, file=sys.stderr)
        return 0
    extra = args.extra_toml.read_text() if args.extra_toml else ""
    directory = args.keep or Path(tempfile.mkdtemp(prefix="cache-tests-gw-"))
    directory.mkdir(parents=True, exist_ok=True)
    with Origin(directory) as origin, \
            Gateway(directory, origin.url, extra, source=args.source) as gateway:
        print(f"origin {origin.url}, gateway {gateway.url}, files in {directory}",
              file=sys.stderr)
        run = run_suite(gateway.url, timeout=args.timeout, ids=args.id, out_path=args.out)
    _report(run, args)
    if run.output.strip():
        print(run.output, file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
