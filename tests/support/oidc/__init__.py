"""A real OAuth2/OpenID provider on 127.0.0.1 for the OAuth2/OIDC tests: ``server.mjs`` beside
this file runs the ``oidc-provider`` npm package (an OpenID Certified implementation), pinned by
``package.json``/``package-lock.json`` here and installed by ``make test-tools`` (``npm ci``).

Tokens come from its client-credentials grant, are introspected and revoked at its RFC 7662 and
RFC 7009 endpoints, and its signing keys rotate on :meth:`OidcProvider.rotate`. What it serves
is described at the top of ``server.mjs``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

__all__ = ["OidcProvider", "AUDIENCE", "APP", "GATEWAY_BASIC", "GATEWAY_POST"]

HERE = Path(__file__).resolve().parent
AUDIENCE = "urn:avx:api"
#: (client_id, client_secret) of the client that gets tokens (client credentials grant).
APP = ("app", "app-secret")
#: The gateway's own clients for introspection: client_secret_basic and client_secret_post.
GATEWAY_BASIC = ("gateway-basic", "gateway-basic-secret")
GATEWAY_POST = ("gateway-post", "gateway-post-secret")
#: Resource indicators: opaque tokens, and JWT access tokens signed RS256 or ES256.
OPAQUE = "urn:avx:opaque"
JWT_RS256 = "urn:avx:jwt-rs256"
JWT_ES256 = "urn:avx:jwt-es256"


def node_binary() -> str:
    """The node executable (``make test-tools`` installs it when missing)."""
    for name in ("node", "nodejs"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("node is not installed (make test-tools installs it)")


class OidcProvider:
    """``node server.mjs`` on a free loopback port (or ``port``), started and stopped by a test.

    :meth:`start` and :meth:`stop` block (a second or so at most); the HTTP helpers are
    coroutines on the test's reactor. Its output goes to ``directory/oidc-provider.log``.
    """

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.directory = directory
        self.port = port
        self.issuer = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "oidc-provider.log"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/token/introspection"

    def start(self, timeout: float = 20.0) -> OidcProvider:
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(
                f"{HERE}/node_modules is missing: run `make test-tools` (npm ci) first"
            )
        env = dict(os.environ, PORT=str(self.port), NODE_ENV="test")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [node_binary(), "server.mjs"],
                cwd=HERE,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self._started()
            if started is not None:
                self.issuer, self.port = started["issuer"], started["port"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"oidc-provider exited with {self.proc.returncode}: {self.output()}"
                )
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"oidc-provider did not start: {self.output()}")

    def _started(self) -> dict[str, Any] | None:
        """The ``{"issuer", "port"}`` line of the current run, once printed."""
        lines = self.output().splitlines()
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and "issuer" in data and data.get("pid") == self.proc.pid:  # type: ignore[union-attr]
                    return data
        return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- the provider's endpoints ------------------------------------------------------------

    async def _post(self, path: str, form: dict[str, str], auth: tuple[str, str]) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(self.issuer + path, data=form, auth=auth, pool=pool, timeout=10)
        body = await response.content()
        if response.code != 200:
            raise RuntimeError(f"{path}: HTTP {response.code}: {body!r}")
        return json.loads(body) if body else None

    async def token(self, scope: str = "api:read", resource: str = OPAQUE) -> str:
        """An access token for ``app`` by the client credentials grant."""
        form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
        answer = await self._post("/token", form, APP)
        return answer["access_token"]  # type: ignore[no-any-return]

    async def introspect(self, token: str) -> dict[str, Any]:
        """The provider's own RFC 7662 answer for ``token``."""
        form = {"token": token, "token_type_hint": "access_token"}
        return await self._post("/token/introspection", form, GATEWAY_BASIC)  # type: ignore[no-any-return]

    async def revoke(self, token: str) -> None:
        """RFC 7009 revocation by the client the token was issued to."""
        await self._post(
            "/token/revocation", {"token": token, "token_type_hint": "access_token"}, APP
        )

    async def rotate(self, keep: bool = True) -> list[str]:
        """New signing keys sign from now on; the old ones stay published with ``keep``."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"{self.issuer}/_test/rotate?keep={int(keep)}"
        response = await treq.post(url, pool=pool, timeout=10)
        return (await response.json())["kids"]  # type: ignore[no-any-return]
