"""The example plugin distribution (``examples/plugins``) as a user gets it: pip-installed into a
fresh virtualenv next to the gateway, found through its ``avx_gateway.plugins`` entry points by the
real ``twistd -n avx-gateway``, in front of a real upstream, with real JWTs (issue 12).

The virtualenv is made once for this module from the running interpreter's base (CPython or PyPy);
the gateway and its dependencies are importable in it through a ``.pth`` file naming this venv's
site-packages and the repository root (the gateway is installed in compat editable mode). Building
the distribution takes seconds, so the timeouts here are generous.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from avx_twisted.demo import EchoResource
from tests.support.process import REPO, env_without_pythonpath, free_port
from tests.support.servers import upstream

ensure = pytest_twisted.ensureDeferred

DIST = REPO / "examples" / "plugins"
SECRET = "plugin-distribution-test-secret-0123456789"
#: twistd's console script, for a venv without one (Twisted comes through the .pth file).
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"
)
#: pip, building the distribution and starting twistd (PyPy is slower): minutes, not seconds.
SLOW = 300.0


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


def base_python() -> str:
    """The interpreter this venv was made from (CPython's ``_base_executable``; PyPy 3.9 reports
    the venv's own, a symlink to it)."""
    base = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    return base if os.path.exists(base) else sys.executable


def run(*args: str, cwd: Path, timeout: float = SLOW) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env_without_pythonpath(),
    )


def build_backend_runs_here() -> bool:
    """Whether setuptools, as the .pth path provides it, can build a wheel without isolation
    (setuptools 70.1+ has bdist_wheel itself; older ones need the ``wheel`` distribution)."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return tuple(parts) >= (70, 1) or util.find_spec("wheel") is not None


class PluginVenv:
    """A virtualenv holding only the example distribution, the gateway visible through a .pth."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = str(root / "bin" / "python")

    def create(self) -> PluginVenv:
        # pip too comes through the .pth file when this venv has it (no ensurepip: faster).
        without_pip = ["--without-pip"] if util.find_spec("pip") is not None else []
        venv = [base_python(), "-m", "venv", *without_pip, str(self.root)]
        result = run(*venv, cwd=self.root.parent)
        assert result.returncode == 0, result.stderr
        self.site = Path(self.query("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        here = sysconfig.get_paths()
        lines = dict.fromkeys([here["purelib"], here["platlib"], str(REPO)])
        (self.site / "avx_gateway_dev.pth").write_text("".join(f"{p}\n" for p in lines))
        return self

    def install(self, source: Path) -> subprocess.CompletedProcess[str]:
        """pip install the distribution (a copy: a build leaves build/ and *.egg-info behind)."""
        copy = self.root.parent / "src" / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", ".pytest_cache"))
        pip = [self.python, "-m", "pip", "install", "--no-deps", "--ignore-installed",
               "--no-input"]
        if build_backend_runs_here():
            pip.append("--no-build-isolation")
        return run(*pip, str(copy), cwd=self.root.parent)

    def query(self, code: str) -> str:
        result = run(self.python, "-c", code, cwd=self.root.parent)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def twistd(self, *args: str) -> list[str]:
        script = self.root / "bin" / "twistd"
        launcher = [str(script)] if script.exists() else [self.python, "-c", TWISTD]
        return [*launcher, "--pidfile=", "-n", *args]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    env = PluginVenv(tmp_path_factory.mktemp("plugin-venv") / "venv").create()
    result = env.install(DIST)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return env


class Gateway:
    """``twistd -n avx-gateway --config FILE`` run by the plugin venv's interpreter."""

    def __init__(self, venv: PluginVenv, directory: Path, config: str) -> None:
        self.venv = venv
        self.dir = directory
        self.config = directory / "gateway.toml"
        self.config.write_text(textwrap.dedent(config))
        self.output_path = directory / "twistd.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        self._out = open(self.output_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.venv.twistd("avx-gateway", "--config", str(self.config)),
            cwd=self.dir, stdout=self._out, stderr=subprocess.STDOUT,
            env=env_without_pythonpath(),
        )
        return self

    async def until(self, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")
            try:
                response = await treq.get(url, pool=pool)
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await sleep(0.1)
        raise AssertionError(f"{url} never answered: {self.output()}")

    async def stop(self, timeout: float = 30.0) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.terminate()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._out.close()
        return proc.returncode

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


class CountingEcho(EchoResource):
    """The demo echo upstream (headers back as JSON), counting what reached it."""

    def __init__(self) -> None:
        super().__init__("svc")
        self.hits = 0

    def render(self, request: Any) -> bytes:
        self.hits += 1
        return super().render(request)


def token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 300, **claims}, SECRET,
                      algorithm="HS256")


async def call(url: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, Any]]:
    """(status, response headers, the JSON body)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(url, headers=headers, pool=pool)
    body = await response.content()
    return response.code, response.headers, json.loads(body)


def seen(echo: dict[str, Any], name: str) -> list[str] | None:
    """The values of header ``name`` the upstream received (any case), or None."""
    found = {k.lower(): v for k, v in echo["headers"].items()}
    return found.get(name.lower())


def served_config(port: int, up_url: str) -> str:
    deny = '{ name = "deny-header", config = { header = "X-Debug-Override" } }'
    tenant = 'name = "tenant-header", config = { header = "X-Tenant"'
    return f"""
        [server]
        host = "127.0.0.1"
        port = {port}

        [auth.jwt]
        algorithms = ["HS256"]
        secret = "{SECRET}"

        [[routes]]
        name = "api"
        path = "/api/*"
        auth = ["jwt"]
        plugins = [
            {deny},
            {{ {tenant}, claim = "org", default = "public" }} }},
        ]
        [routes.upstream]
        urls = ["{up_url}"]

        [[routes]]
        name = "public"
        path = "/public/*"
        plugins = [
            {deny},
            {{ {tenant}, default = "public" }} }},
        ]
        [routes.upstream]
        urls = ["{up_url}"]

        [[routes]]
        name = "anonymous"
        path = "/anonymous/*"
        plugins = [{{ {tenant} }} }}]
        [routes.upstream]
        urls = ["{up_url}"]
    """


def check_config(plugin: str) -> str:
    return f"""
        [[routes]]
        path = "/*"
        plugins = [{plugin}]
        [routes.upstream]
        urls = ["http://127.0.0.1:9"]
    """


# -- the installed distribution -------------------------------------------------------------------


def test_pip_installed_the_distribution_into_the_venv(venv: PluginVenv) -> None:
    found = json.loads(venv.query(
        "import json, avx_example_plugins, avx_twisted; from avx_twisted import plugins; "
        "from importlib.metadata import distribution; "
        "d = distribution('avx-gateway-example-plugins'); "
        "print(json.dumps({'installed': sorted(plugins.installed()), "
        "'module': avx_example_plugins.__file__, 'gateway': avx_twisted.__file__, "
        "'version': d.version}))"
    ))
    assert {"tenant-header", "deny-header"} <= set(found["installed"])
    # The plugins come from the venv (not the source tree); the gateway through the .pth file.
    assert Path(found["module"]).resolve().is_relative_to(venv.site.resolve()), found
    assert Path(found["gateway"]).resolve().is_relative_to(REPO.resolve()), found
    assert found["version"] == "0.1.0"


@ensure
async def test_twistd_runs_both_plugins_in_front_of_a_real_upstream(venv, tmp_path, closer):
    echo = CountingEcho()
    up = closer.add(upstream(echo))
    port = free_port()
    gw = Gateway(venv, tmp_path, served_config(port, up.url)).start()
    try:
        base = f"http://127.0.0.1:{port}"
        await gw.until(base + "/healthz")

        # The tenant is the verified token's claim, whatever the client says.
        status, _, body = await call(base + "/api/x", {
            "Authorization": f"Bearer {token(org='acme')}", "X-Tenant": "evil"})
        assert status == 200, body
        assert seen(body, "X-Tenant") == ["acme"]

        # A token without the claim: the default.
        status, _, body = await call(base + "/api/x", {
            "Authorization": f"Bearer {token()}", "X-Tenant": "evil"})
        assert status == 200, body
        assert seen(body, "X-Tenant") == ["public"]

        # No token: the client's own X-Tenant is replaced by the default, or removed without one.
        status, _, body = await call(base + "/public/x", {"X-Tenant": "acme"})
        assert status == 200, body
        assert seen(body, "X-Tenant") == ["public"]
        status, _, body = await call(base + "/anonymous/x", {"X-Tenant": "acme"})
        assert status == 200, body
        assert seen(body, "X-Tenant") is None
        hits = echo.hits

        # The denied header: the gateway's JSON 403, on either route, and nothing goes upstream.
        for path, headers in [
            ("/api/x", {"Authorization": f"Bearer {token(org='acme')}", "X-Debug-Override": "1"}),
            ("/public/x", {"x-debug-override": ""}),
        ]:
            status, response_headers, body = await call(base + path, headers)
            assert status == 403, (path, body)
            assert response_headers.getRawHeaders("content-type") == ["application/json"]
            assert body["error"] == "forbidden header"
            assert body["status"] == 403
            assert body["request_id"] == response_headers.getRawHeaders("x-request-id")[0]
        assert echo.hits == hits
    finally:
        assert await gw.stop() == 0, gw.output()
    assert "Traceback" not in gw.output()


# -- --check ----------------------------------------------------------------------------------


def test_check_accepts_a_config_using_both(venv, tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(served_config(free_port(), "http://127.0.0.1:9"))
    result = run(*venv.twistd("avx-gateway", "--config", str(path), "--check"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK (3 routes" in result.stdout


def test_check_names_a_bad_plugin_config_by_its_key_path(venv, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(check_config('{ name = "tenant-header", config = { header = 42 } }'))
    result = run(*venv.twistd("avx-gateway", "--config", str(path), "--check"), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("avx-gateway: invalid configuration\n"), result.stderr
    assert "routes[0].plugins[0].config.header: 42 is not a string" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_lists_the_installed_plugins_for_an_unknown_name(venv, tmp_path):
    path = tmp_path / "unknown.toml"
    path.write_text(check_config('{ name = "tenant", config = { header = "X-Tenant" } }'))
    result = run(*venv.twistd("avx-gateway", "--config", str(path), "--check"), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = [x for x in result.stderr.splitlines() if "routes[0].plugins[0].name" in x]
    assert "'tenant' is not an installed plugin (installed: " in line
    installed = line.split("(installed: ", 1)[1].rstrip(")").split(", ")
    assert {"tenant-header", "deny-header"} <= set(installed), line
    assert "Traceback" not in result.stderr
