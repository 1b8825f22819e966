"""The edge filters end to end: CORS, authentication, rate limits, against real upstreams."""

from __future__ import annotations

import json

import pytest_twisted

from tests.support.servers import FnResource, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred

ORIGIN = "https://app.example.com"


def config(up_url: str, route: dict | None = None, **sections) -> dict:
    data = {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/api/*", "methods": ["GET", "POST"], **(route or {}),
                    "upstream": {"urls": [up_url]}}],
    }
    data.update(sections)
    return data


def cors_config(up_url: str, route: dict | None = None, enable: bool = True) -> dict:
    return config(
        up_url, route,
        middleware={"enable_cors": enable},
        cors={"allowed_origins": [ORIGIN], "allowed_methods": ["GET", "POST"],
              "allowed_headers": ["Authorization", "Content-Type"],
              "expose_headers": ["X-Request-ID"], "allow_credentials": True, "max_age_s": 600},
    )


def _vary_upstream(request):
    request.setHeader(b"Vary", b"Accept-Encoding")
    request.setHeader(b"Access-Control-Allow-Origin", b"*")  # the gateway owns CORS here
    return b"ok"


async def call(gw, method, path, headers=None, **kw):
    response = await http(method, f"http://127.0.0.1:{gw.port}{path}", headers=headers, **kw)
    return response, await response.content()


# -- CORS ----------------------------------------------------------------------------------------


@ensure
async def test_preflight_is_answered_by_the_gateway(closer):
    seen = FnResource(_vary_upstream)
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(cors_config(up.url)))
    response, body = await call(gw, "OPTIONS", "/api/x", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    })
    h = response.headers
    assert response.code == 204 and body == b""
    assert h.getRawHeaders(b"access-control-allow-origin") == [ORIGIN.encode()]
    assert h.getRawHeaders(b"access-control-allow-methods") == [b"GET, POST"]
    assert b"Authorization" in h.getRawHeaders(b"access-control-allow-headers")[0]
    assert h.getRawHeaders(b"access-control-allow-credentials") == [b"true"]
    assert h.getRawHeaders(b"access-control-max-age") == [b"600"]
    assert b"Origin" in h.getRawHeaders(b"vary")[0]
    assert seen.seen == []


@ensure
async def test_preflight_from_a_foreign_origin_gets_no_cors_headers(closer):
    seen = FnResource(_vary_upstream)
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(cors_config(up.url)))
    for origin in ("https://evil.example", "null"):
        response, _ = await call(gw, "OPTIONS", "/api/x", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert response.code == 204
        assert not response.headers.hasHeader(b"access-control-allow-origin")
    assert seen.seen == []


@ensure
async def test_actual_request_echoes_allowed_origin_and_merges_vary(closer):
    up = closer.add(upstream(FnResource(_vary_upstream)))
    gw = closer.add(gateway(cors_config(up.url)))
    response, body = await call(gw, "GET", "/api/x", headers={"Origin": ORIGIN})
    h = response.headers
    assert body == b"ok"
    assert h.getRawHeaders(b"access-control-allow-origin") == [ORIGIN.encode()]
    assert h.getRawHeaders(b"access-control-expose-headers") == [b"X-Request-ID"]
    assert h.getRawHeaders(b"vary") == [b"Accept-Encoding, Origin"]


@ensure
async def test_actual_request_from_foreign_origin_gets_no_cors_headers(closer):
    up = closer.add(upstream(FnResource(_vary_upstream)))
    gw = closer.add(gateway(cors_config(up.url)))
    response, _ = await call(gw, "GET", "/api/x", headers={"Origin": "https://evil.example"})
    assert not response.headers.hasHeader(b"access-control-allow-origin")


@ensure
async def test_cors_off_for_the_route_or_globally_passes_options_on(closer):
    up = closer.add(upstream(FnResource(_vary_upstream)))
    for data in (cors_config(up.url, {"cors": False}), cors_config(up.url, enable=False)):
        gw = closer.add(gateway(data))
        response, _ = await call(gw, "OPTIONS", "/api/x", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert response.code == 405  # the route allows GET and POST only
        response, _ = await call(gw, "GET", "/api/x", headers={"Origin": ORIGIN})
        assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]


def _json(body: bytes) -> dict:
    return json.loads(body)


# -- rate limiting -------------------------------------------------------------------------------


def limited(up_url, rate=None, route_limit=None, trusted=None, routes=None):
    data = config(up_url, {"rate_limit": route_limit} if route_limit else None,
                  middleware={"enable_rate_limiting": True},
                  rate_limiting=rate or {"requests_per_second": 0.1, "burst_size": 3})
    if trusted:
        data["server"]["trusted_proxies"] = trusted
    if routes:
        data["routes"] = routes
    return data


@ensure
async def test_over_the_limit_is_429_with_headers_and_never_reaches_upstream(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(limited(up.url)))
    remaining = []
    for _ in range(3):
        response, _ = await call(gw, "GET", "/api/x")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"ratelimit-limit") == [b"3"]
        remaining.append(response.headers.getRawHeaders(b"ratelimit-remaining")[0])
    assert remaining == [b"2", b"1", b"0"]
    response, body = await call(gw, "GET", "/api/x")
    assert response.code == 429
    assert json.loads(body) == {"error": "rate limit exceeded", "status": 429}
    assert response.headers.getRawHeaders(b"retry-after") == [b"10"]
    assert response.headers.getRawHeaders(b"ratelimit-remaining") == [b"0"]
    assert len(seen.seen) == 3


@ensure
async def test_forged_forwarded_for_does_not_escape_the_ip_limit(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(limited(up.url)))
    codes = []
    for i in range(5):
        response, _ = await call(gw, "GET", "/api/x", headers={"X-Forwarded-For": f"1.2.3.{i}"})
        codes.append(response.code)
    assert codes == [200, 200, 200, 429, 429]


@ensure
async def test_clients_behind_a_trusted_proxy_get_their_own_buckets(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(limited(up.url, trusted=["127.0.0.1/32"])))
    for client in ("203.0.113.1", "203.0.113.2"):
        codes = []
        for _ in range(4):
            response, _ = await call(gw, "GET", "/api/x", headers={"X-Forwarded-For": client})
            codes.append(response.code)
        assert codes == [200, 200, 200, 429], client


@ensure
async def test_route_rate_limit_overrides_the_global_one(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(limited(
        up.url, route_limit={"requests_per_second": 0.1, "burst_size": 1})))
    assert (await call(gw, "GET", "/api/x"))[0].code == 200
    response, _ = await call(gw, "GET", "/api/x")
    assert response.code == 429
    assert response.headers.getRawHeaders(b"ratelimit-limit") == [b"1"]


@ensure
async def test_global_key_is_shared_by_every_route(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    routes = [
        {"path": "/a/*", "upstream": {"urls": [up.url]}},
        {"path": "/b/*", "upstream": {"urls": [up.url]}},
    ]
    gw = closer.add(gateway(limited(
        up.url, rate={"requests_per_second": 0.1, "burst_size": 2, "key": "global"},
        routes=routes)))
    codes = [(await call(gw, "GET", p))[0].code for p in ("/a/1", "/b/1", "/a/2", "/b/2")]
    assert codes == [200, 200, 429, 429]


@ensure
async def test_rate_limiting_off_sends_no_headers(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(config(up.url)))
    response, _ = await call(gw, "GET", "/api/x")
    assert not response.headers.hasHeader(b"ratelimit-limit")
