"""The edge filters end to end: CORS, authentication, rate limits, against real upstreams."""

from __future__ import annotations

import json
from unittest.mock import ANY

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
    assert json.loads(body) == {"error": "rate limit exceeded", "status": 429, "request_id": ANY}
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


# -- authentication ------------------------------------------------------------------------------

SECRET = "integration-secret-of-enough-length-for-hs256"
KEY = "demo-key-123"


def _token(sub="alice", scope="users:read", exp_in=300, **claims):
    import time

    import jwt

    now = int(time.time())
    payload = {"sub": sub, "scope": scope, "exp": now + exp_in, "iat": now, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def auth_config(up_url, auth, scopes=None, query_param="", rate=None):
    import hashlib

    route = {"auth": auth}
    if scopes:
        route["scopes"] = scopes
    data = config(up_url, route, auth={
        "jwt": {"algorithms": ["HS256"], "secret": SECRET, "forward_claims": {"sub": "X-User-Id"}},
        "api_key": {"header": "X-API-Key", "query_param": query_param, "keys": [
            {"name": "ci", "sha256": hashlib.sha256(KEY.encode()).hexdigest()},
            {"name": "other", "sha256": hashlib.sha256(b"other-key").hexdigest()},
        ]},
    })
    if rate:
        data["middleware"] = {"enable_rate_limiting": True}
        data["rate_limiting"] = rate
    return data


@ensure
async def test_jwt_route_refuses_missing_and_bad_tokens_with_401(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(auth_config(up.url, ["jwt"])))
    response, body = await call(gw, "GET", "/api/x")
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="avx-gateway"']
    assert json.loads(body)["status"] == 401
    for token in ("garbage", _token(exp_in=-60)):
        response, _ = await call(gw, "GET", "/api/x", headers={"Authorization": f"Bearer {token}"})
        assert response.code == 401
        assert b'error="invalid_token"' in response.headers.getRawHeaders(b"www-authenticate")[0]
    assert seen.seen == []


@ensure
async def test_valid_jwt_forwards_verified_claims_and_strips_forged_ones(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(auth_config(up.url, ["jwt"])))
    response, _ = await call(gw, "GET", "/api/x", headers={
        "Authorization": f"Bearer {_token()}", "X-User-Id": "mallory"})
    assert response.code == 200
    assert seen.seen[0]["headers"].getRawHeaders(b"x-user-id") == [b"alice"]


@ensure
async def test_forged_claim_header_is_stripped_on_routes_without_auth_too(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(auth_config(up.url, [])))
    await call(gw, "GET", "/api/x", headers={"X-User-Id": "mallory"})
    assert not seen.seen[0]["headers"].hasHeader(b"x-user-id")


@ensure
async def test_missing_scope_is_403(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(auth_config(up.url, ["jwt"], scopes=["users:write"])))
    response, body = await call(gw, "GET", "/api/x", headers={
        "Authorization": f"Bearer {_token(scope='users:read')}"})
    assert response.code == 403
    assert b"insufficient_scope" in response.headers.getRawHeaders(b"www-authenticate")[0]
    assert seen.seen == []


@ensure
async def test_api_key_passes_and_is_not_forwarded(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(auth_config(up.url, ["api_key"])))
    response, _ = await call(gw, "GET", "/api/x", headers={"X-API-Key": KEY})
    assert response.code == 200
    assert not seen.seen[0]["headers"].hasHeader(b"x-api-key")
    response, _ = await call(gw, "GET", "/api/x", headers={"X-API-Key": "wrong"})
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") == [b'ApiKey header="X-API-Key"']


@ensure
async def test_api_key_in_query_only_when_configured_and_stripped_upstream(closer):
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    off = closer.add(gateway(auth_config(up.url, ["api_key"])))
    assert (await call(off, "GET", f"/api/x?api_key={KEY}"))[0].code == 401
    on = closer.add(gateway(auth_config(up.url, ["api_key"], query_param="api_key")))
    response, _ = await call(on, "GET", f"/api/x?a=1&api_key={KEY}&b=%20")
    assert response.code == 200
    assert seen.seen[-1]["uri"] == b"/api/x?a=1&b=%20"


@ensure
async def test_either_method_passes_and_both_challenges_are_sent(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(auth_config(up.url, ["jwt", "api_key"])))
    assert (await call(gw, "GET", "/api/x", headers={"X-API-Key": KEY}))[0].code == 200
    headers = {"Authorization": f"Bearer {_token()}"}
    assert (await call(gw, "GET", "/api/x", headers=headers))[0].code == 200
    response, _ = await call(gw, "GET", "/api/x")
    assert response.code == 401
    assert sorted(response.headers.getRawHeaders(b"www-authenticate")) == [
        b'ApiKey header="X-API-Key"', b'Bearer realm="avx-gateway"']


@ensure
async def test_rate_limit_by_api_key_gives_each_key_its_bucket(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(auth_config(
        up.url, ["api_key"],
        rate={"requests_per_second": 0.1, "burst_size": 1, "key": "api_key"})))
    assert (await call(gw, "GET", "/api/x", headers={"X-API-Key": KEY}))[0].code == 200
    assert (await call(gw, "GET", "/api/x", headers={"X-API-Key": KEY}))[0].code == 429
    assert (await call(gw, "GET", "/api/x", headers={"X-API-Key": "other-key"}))[0].code == 200


@ensure
async def test_preflight_needs_no_credentials_and_401_carries_cors_headers(closer):
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    data = auth_config(up.url, ["jwt"])
    data["middleware"] = {"enable_cors": True}
    data["cors"] = {"allowed_origins": [ORIGIN]}
    gw = closer.add(gateway(data))
    response, _ = await call(gw, "OPTIONS", "/api/x", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert response.code == 204
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [ORIGIN.encode()]
    response, _ = await call(gw, "GET", "/api/x", headers={"Origin": ORIGIN})
    assert response.code == 401
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [ORIGIN.encode()]
