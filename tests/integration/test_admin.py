"""The admin API on its own listener: token, config, routes, upstreams, reload, drain/enable."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

import pytest_twisted
from twisted.internet import reactor

from avx_twisted.config import GatewayConfig
from avx_twisted.demo import EchoResource
from avx_twisted.service import GatewayService
from tests.support.servers import echo_json, http, upstream

ensure = pytest_twisted.ensureDeferred
TOKEN = "admin-token-for-tests"


def write(path, urls: list[str], extra_route: str = "") -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = 0

[[routes]]
name = "all"
path = "/*"
[routes.upstream]
urls = {json.dumps(urls)}
{extra_route}
[middleware]
enable_logging = false

[auth.jwt]
secret = "very-secret-value"

[admin]
listen = "tcp:0:interface=127.0.0.1"
token_sha256 = "{digest}"
""")


async def admin(gw, method, path, token=TOKEN):
    port = gw.admin_ports[0].getHost().port
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await http(method, f"http://127.0.0.1:{port}{path}", headers=headers)
    return response, await response.content()


def start(path):
    service = GatewayService(GatewayConfig.load(str(path)), reactor)
    service.startService()
    return service


@ensure
async def test_token_is_required(tmp_path, closer):
    up = closer.add(upstream(EchoResource("a")))
    path = tmp_path / "gw.toml"
    write(path, [up.url])
    gw = closer.add(start(path))
    for token in (None, "wrong"):
        response, body = await admin(gw, "GET", "/routes", token=token)
        assert response.code == 401
        assert json.loads(body)["status"] == 401
        assert response.headers.getRawHeaders(b"www-authenticate")


@ensure
async def test_healthz_needs_no_token(tmp_path, closer):
    up = closer.add(upstream(EchoResource("a")))
    path = tmp_path / "gw.toml"
    write(path, [up.url])
    gw = closer.add(start(path))
    for token in (None, "wrong", TOKEN):
        response, body = await admin(gw, "GET", "/healthz", token=token)
        assert response.code == 200
        assert json.loads(body) == {"status": "alive"}
    response, _ = await admin(gw, "POST", "/healthz", token=None)
    assert response.code == 401  # only the probe is open


@ensure
async def test_config_routes_and_upstreams(tmp_path, closer):
    up = closer.add(upstream(EchoResource("a")))
    path = tmp_path / "gw.toml"
    write(path, [up.url])
    gw = closer.add(start(path))
    response, body = await admin(gw, "GET", "/config")
    config = json.loads(body)
    assert response.code == 200
    assert config["auth"]["jwt"]["secret"] == "<redacted>"
    assert config["admin"]["token_sha256"] == "<redacted>"
    assert config["routes"][0]["upstream"]["urls"] == [up.url]
    assert "very-secret-value" not in body.decode()
    routes = json.loads((await admin(gw, "GET", "/routes"))[1])
    assert routes[0]["name"] == "all" and routes[0]["upstreams"] == [up.url]
    upstreams = json.loads((await admin(gw, "GET", "/upstreams"))[1])
    assert upstreams == [{"route": "all", "url": up.url, "enabled": True, "healthy": True,
                          "circuit": "closed", "available": True, "in_flight": 0}]


@ensure
async def test_drain_and_enable_a_target(tmp_path, closer):
    a = closer.add(upstream(EchoResource("a")))
    b = closer.add(upstream(EchoResource("b")))
    path = tmp_path / "gw.toml"
    write(path, [a.url, b.url])
    gw = closer.add(start(path))
    response, body = await admin(gw, "POST", f"/upstreams/{quote(a.url, safe='')}/drain")
    assert response.code == 200 and json.loads(body)["enabled"] is False
    for _ in range(4):
        r = await http("GET", f"http://127.0.0.1:{gw.port}/x")
        assert echo_json(await r.content())["service"] == "b"
    await admin(gw, "POST", f"/upstreams/{quote(a.url, safe='')}/enable")
    names = set()
    for _ in range(4):
        r = await http("GET", f"http://127.0.0.1:{gw.port}/x")
        names.add(echo_json(await r.content())["service"])
    assert names == {"a", "b"}
    response, _ = await admin(gw, "POST", "/upstreams/http%3A%2F%2Fnowhere%3A1/drain")
    assert response.code == 404


@ensure
async def test_reload_through_the_api_and_errors(tmp_path, closer):
    a = closer.add(upstream(EchoResource("a")))
    b = closer.add(upstream(EchoResource("b")))
    path = tmp_path / "gw.toml"
    write(path, [a.url])
    gw = closer.add(start(path))
    write(path, [b.url])
    response, body = await admin(gw, "POST", "/reload")
    assert response.code == 200 and json.loads(body)["reloaded"] is True
    r = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    assert echo_json(await r.content())["service"] == "b"
    path.write_text(path.read_text() + "\n[nonsense]\n")
    response, body = await admin(gw, "POST", "/reload")
    assert response.code == 400
    assert (await admin(gw, "GET", "/reload"))[0].code == 405
    assert (await admin(gw, "GET", "/nope"))[0].code == 404


@ensure
async def test_admin_reload_with_a_request_in_flight(tmp_path, closer):
    from twisted.internet.task import deferLater
    from twisted.web.server import NOT_DONE_YET

    from tests.support.servers import FnResource

    held = []

    def hold(request):
        held.append(request)
        return NOT_DONE_YET

    slow = closer.add(upstream(FnResource(hold)))
    b = closer.add(upstream(EchoResource("b")))
    path = tmp_path / "gw.toml"
    write(path, [slow.url])
    gw = closer.add(start(path))
    pending = http("GET", f"http://127.0.0.1:{gw.port}/slow")
    while not held:
        await deferLater(reactor, 0.02, lambda: None)
    write(path, [b.url])
    response, _ = await admin(gw, "POST", "/reload")
    assert response.code == 200
    r = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    assert echo_json(await r.content())["service"] == "b"
    held[0].write(b"old")
    held[0].finish()
    assert await (await pending).content() == b"old"
