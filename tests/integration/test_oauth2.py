"""OAuth2 introspection and OIDC discovery against a real OpenID provider (the oidc-provider
npm package, tests/support/oidc), through a real gateway on 127.0.0.1.

Tokens come from the provider's client-credentials grant; the gateway introspects them (RFC
7662) or verifies the provider's JWT access tokens with the keys OIDC discovery finds. The
provider is reached over plain http on 127.0.0.1, which the gateway accepts for loopback only.
"""

from __future__ import annotations

import base64
import json
import textwrap
import time
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from avx_twisted.demo import EchoResource
from tests.support.oidc import (
    AUDIENCE,
    GATEWAY_BASIC,
    GATEWAY_POST,
    JWT_ES256,
    JWT_RS256,
    OidcProvider,
)
from tests.support.process import GatewayProcess, free_port
from tests.support.servers import Hang, echo_json, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred
CACHE_TTL_S = 2


@pytest.fixture(scope="module")
def provider(tmp_path_factory: Any) -> Any:
    """One provider for the module's tests (each test takes its own tokens)."""
    idp = OidcProvider(tmp_path_factory.mktemp("oidc")).start()
    yield idp
    idp.stop()


def oauth2_config(idp: OidcProvider, up_url: str, **oauth2: Any) -> dict[str, Any]:
    client_id, secret = GATEWAY_BASIC
    settings = {
        "introspection_url": idp.introspection_url,
        "client_id": client_id,
        "client_secret": secret,
        "issuer": idp.issuer,
        "audience": AUDIENCE,
        "cache_ttl_s": CACHE_TTL_S,
        "negative_cache_ttl_s": 1,
        "timeout_ms": 1000,
        "forward_claims": {"client_id": "X-Client-Id", "tenant": "X-Tenant", "scope": "X-Scope"},
    }
    settings.update(oauth2)
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"oauth2": settings},
        "routes": [
            {
                "name": "read",
                "path": "/read/*",
                "auth": ["oauth2"],
                "scopes": ["api:read"],
                "upstream": {"urls": [up_url]},
            },
            {
                "name": "write",
                "path": "/write/*",
                "auth": ["oauth2"],
                "scopes": ["api:read", "api:write"],
                "upstream": {"urls": [up_url]},
            },
        ],
    }


def oidc_config(idp: OidcProvider, up_url: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {
            "jwt": {
                "algorithms": ["RS256", "ES256"],
                "oidc_issuer": idp.issuer,
                "audience": AUDIENCE,
                "forward_claims": {"client_id": "X-Client-Id"},
            }
        },
        "routes": [
            {
                "name": "api",
                "path": "/api/*",
                "auth": ["jwt"],
                "scopes": ["api:read"],
                "upstream": {"urls": [up_url]},
            },
        ],
    }


async def get(gw: Any, path: str, token: str | None = None, **headers: str) -> Any:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await http("GET", f"http://127.0.0.1:{gw.port}{path}", headers=headers)
    return response, await response.content()


async def metrics(gw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = await get(gw, "/metrics")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until_status(gw: Any, path: str, token: str, status: int, within_s: float) -> float:
    """Poll until ``path`` answers ``status``; the seconds it took (fails after ``within_s``)."""
    start = time.monotonic()
    while True:
        response, _ = await get(gw, path, token)
        if response.code == status:
            return time.monotonic() - start
        assert time.monotonic() - start < within_s, f"still {response.code}, not {status}"
        await sleep(0.1)


def challenge(response: Any) -> str:
    values = response.headers.getRawHeaders(b"www-authenticate") or []
    return " | ".join(v.decode() for v in values)


def jwt_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


# -- introspection ----------------------------------------------------------------------------


@ensure
async def test_active_token_passes_and_its_claims_reach_the_upstream(provider, closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = closer.add(gateway(oauth2_config(provider, up.url)))
    token = await provider.token("api:read")
    assert (await provider.introspect(token))["active"] is True
    response, body = await get(gw, "/read/x", token, **{"X-Tenant": "forged"})
    assert response.code == 200, body
    headers = echo_json(body)["headers"]
    assert headers["X-Client-Id"] == ["app"]
    assert headers["X-Tenant"] == ["acme"]  # the provider's, never the client's copy
    assert headers["X-Scope"] == ["api:read"]


@ensure
async def test_client_secret_post(provider, closer):
    up = closer.add(upstream())
    client_id, secret = GATEWAY_POST
    config = oauth2_config(
        provider, up.url, client_id=client_id, client_secret=secret, client_auth="post"
    )
    gw = closer.add(gateway(config))
    response, body = await get(gw, "/read/x", await provider.token("api:read"))
    assert response.code == 200, body


@ensure
async def test_wrong_gateway_credentials_fail_closed(provider, closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(oauth2_config(provider, up.url, client_secret="wrong")))
    response, _ = await get(gw, "/read/x", await provider.token("api:read"))
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after")[0].isdigit()


@ensure
async def test_unknown_or_missing_token_is_401_invalid_token(provider, closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(oauth2_config(provider, up.url)))
    response, body = await get(gw, "/read/x", "not-a-token-the-provider-issued")
    assert response.code == 401
    assert 'error="invalid_token"' in challenge(response)
    assert b"not-a-token" not in body
    response, _ = await get(gw, "/read/x")
    assert response.code == 401
    assert challenge(response) == 'Bearer realm="avx-gateway"'


@ensure
async def test_revoked_token_is_refused_once_the_cache_ttl_passes(provider, closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(oauth2_config(provider, up.url)))
    token = await provider.token("api:read")
    assert (await get(gw, "/read/x", token))[0].code == 200
    await provider.revoke(token)
    assert (await provider.introspect(token)) == {"active": False}
    response, _ = await get(gw, "/read/x", token)
    assert response.code == 200  # the cached answer, still within cache_ttl_s
    await until_status(gw, "/read/x", token, 401, within_s=CACHE_TTL_S + 3)
    response, _ = await get(gw, "/read/x", token)
    assert response.code == 401
    assert 'error="invalid_token"' in challenge(response)
    s = await metrics(gw)
    assert metric(s, "avx_oauth2_introspections_total", result="active") >= 1
    assert metric(s, "avx_oauth2_introspections_total", result="inactive") >= 1
    assert metric(s, "avx_oauth2_cache_hits_total", result="active") >= 1


@ensure
async def test_missing_scope_is_403_insufficient_scope(provider, closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(oauth2_config(provider, up.url)))
    token = await provider.token("api:read")
    response, _ = await get(gw, "/write/x", token)
    assert response.code == 403
    assert challenge(response) == (
        'Bearer realm="avx-gateway", error="insufficient_scope", '
        'error_description="missing scope: api:write", scope="api:read api:write"'
    )
    both = await provider.token("api:read api:write")
    assert (await get(gw, "/write/x", both))[0].code == 200


@ensure
async def test_wrong_audience_or_issuer_is_401(provider, closer):
    up = closer.add(upstream())
    token = await provider.token("api:read")
    for setting in ({"audience": "urn:someone-else"}, {"issuer": "https://other.example"}):
        gw = closer.add(gateway(oauth2_config(provider, up.url, **setting)))
        response, _ = await get(gw, "/read/x", token)
        assert response.code == 401, setting
        assert 'error="invalid_token"' in challenge(response)


@ensure
async def test_idp_stopped_is_503_with_retry_after_and_cached_tokens_still_pass(tmp_path, closer):
    idp = closer.add(OidcProvider(tmp_path).start())
    up = closer.add(upstream())
    gw = closer.add(gateway(oauth2_config(idp, up.url, cache_ttl_s=60)))
    known = await idp.token("api:read")
    fresh = [await idp.token("api:read") for _ in range(6)]
    assert (await get(gw, "/read/x", known))[0].code == 200
    idp.stop()
    statuses = []
    for token in fresh:
        response, body = await get(gw, "/read/x", token)
        statuses.append(response.code)
        assert response.code == 503, body
        assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    assert statuses == [503] * 6
    assert (await get(gw, "/read/x", known))[0].code == 200  # from the cache
    s = await metrics(gw)
    assert metric(s, "avx_idp_errors_total", kind="introspection", reason="connect") == 5
    assert metric(s, "avx_idp_errors_total", kind="introspection", reason="circuit_open") == 1
    assert metric(s, "avx_oauth2_introspections_total", result="error") == 5


@ensure
async def test_idp_too_slow_is_503(provider, closer):
    slow = closer.add(upstream(Hang()))
    up = closer.add(upstream())
    config = oauth2_config(
        provider, up.url, introspection_url=f"{slow.url}/introspect", timeout_ms=300
    )
    gw = closer.add(gateway(config))
    start = time.monotonic()
    response, _ = await get(gw, "/read/x", await provider.token("api:read"))
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert 0.25 < time.monotonic() - start < 5
    s = await metrics(gw)
    assert metric(s, "avx_idp_errors_total", kind="introspection", reason="timeout") == 1


# -- OIDC discovery ---------------------------------------------------------------------------


@ensure
async def test_oidc_discovery_accepts_the_providers_rs256_and_es256_tokens(provider, closer):
    up = closer.add(upstream())
    gw = closer.add(gateway(oidc_config(provider, up.url)))
    rs = await provider.token("api:read", JWT_RS256)
    es = await provider.token("api:read", JWT_ES256)
    assert (jwt_header(rs)["alg"], jwt_header(es)["alg"]) == ("RS256", "ES256")
    await until_status(gw, "/api/x", rs, 200, within_s=10)  # once discovery has run
    response, body = await get(gw, "/api/x", es)
    assert response.code == 200, body
    assert echo_json(body)["headers"]["X-Client-Id"] == ["app"]
    opaque = await provider.token("api:read")
    assert (await get(gw, "/api/x", opaque))[0].code == 401
    s = await metrics(gw)
    assert metric(s, "avx_jwks_refreshes_total", trigger="discovery", result="ok") == 1


@ensure
async def test_key_rotation_is_picked_up_by_the_unknown_kid(tmp_path, closer):
    idp = closer.add(OidcProvider(tmp_path).start())
    up = closer.add(upstream())
    gw = closer.add(gateway(oidc_config(idp, up.url)))
    old = await idp.token("api:read", JWT_ES256)
    await until_status(gw, "/api/x", old, 200, within_s=10)
    kids = await idp.rotate(keep=True)
    new = await idp.token("api:read", JWT_ES256)
    assert jwt_header(new)["kid"] == kids[1] != jwt_header(old)["kid"]
    await until_status(gw, "/api/x", new, 200, within_s=10)
    assert (await get(gw, "/api/x", old))[0].code == 200  # still published: still good
    # a flood of made-up kids within the cooldown makes no fetch at all
    head, _, rest = new.partition(".")
    for i in range(50):
        forged_head = (
            base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": f"bogus-{i}"}).encode())
            .rstrip(b"=")
            .decode()
        )
        response, _ = await get(gw, "/api/x", f"{forged_head}.{rest}")
        assert response.code == 401
    s = await metrics(gw)
    assert metric(s, "avx_jwks_refreshes_total", trigger="unknown_kid", result="ok") == 1
    assert metric(s, "avx_jwks_refreshes_total", trigger="discovery", result="ok") == 1


# -- the real twistd ----------------------------------------------------------------------------


@ensure
async def test_twistd_gateway_introspects_with_the_real_provider(provider, tmp_path, closer):
    up = closer.add(upstream(EchoResource("svc")))
    port = free_port()
    client_id, secret = GATEWAY_BASIC
    path = tmp_path / "gateway.toml"
    path.write_text(
        textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = {port}

        [auth.oauth2]
        introspection_url = "{provider.introspection_url}"
        client_id = "{client_id}"
        client_secret = "{secret}"
        issuer = "{provider.issuer}"
        audience = "{AUDIENCE}"
        cache_ttl_s = 1

        [auth.oauth2.forward_claims]
        tenant = "X-Tenant"

        [[routes]]
        name = "read"
        path = "/read/*"
        auth = ["oauth2"]
        scopes = ["api:read"]
        [routes.upstream]
        urls = ["{up.url}"]
    """)
    )
    gw = await GatewayProcess(path, port).start()
    try:
        token = await provider.token("api:read")
        response = await http(
            "GET", gw.url("/read/x"), headers={"Authorization": f"Bearer {token}"}
        )
        body = await response.content()
        assert response.code == 200, body
        assert echo_json(body)["headers"]["X-Tenant"] == ["acme"]
        response = await http("GET", gw.url("/read/x"), headers={"Authorization": "Bearer nope"})
        await response.content()
        assert response.code == 401
        await provider.revoke(token)
        await sleep(1.2)
        response = await http(
            "GET", gw.url("/read/x"), headers={"Authorization": f"Bearer {token}"}
        )
        await response.content()
        assert response.code == 401
    finally:
        assert await gw.stop() == 0, gw.output()
