"""Rate limits shared by gateway replicas through a real redis-server."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.redis import RedisServer
from tests.support.servers import FnResource, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred


def config(up_url: str, redis_url: str, on_error: str = "allow", burst: int = 5) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [{"name": "api", "path": "/*", "upstream": {"urls": [up_url]}}],
        "middleware": {"enable_rate_limiting": True, "enable_logging": False},
        "rate_limiting": {"requests_per_second": 0.01, "burst_size": burst, "key": "route",
                          "backend": "redis", "redis_url": redis_url,
                          "on_backend_error": on_error},
    }


async def code(gw) -> int:
    response = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    await response.content()
    return response.code


@ensure
async def test_two_gateways_share_one_limit_to_the_token(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    one = closer.add(gateway(config(up.url, redis.url)))
    two = closer.add(gateway(config(up.url, redis.url)))
    codes = []
    for i in range(12):
        codes.append(await code(one if i % 2 == 0 else two))
    assert codes.count(200) == 5  # the burst, exactly, across both replicas
    assert codes[5:] == [429] * 7
    assert len(seen.seen) == 5


@ensure
async def test_redis_down_with_allow_falls_back_to_local_buckets(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    url = redis.url
    redis.stop()
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(config(up.url, url, on_error="allow", burst=2)))
    codes = [await code(gw) for _ in range(3)]
    assert codes == [200, 200, 429]  # the local bucket still limits
    store = gw.runtime.rate_store
    assert store.errors >= 3
    metrics = gw.metrics.rate_limit_backend_errors._value.get()
    assert metrics >= 3


@ensure
async def test_redis_down_with_deny_answers_503(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    url = redis.url
    redis.stop()
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(config(up.url, url, on_error="deny")))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    await response.content()
    assert seen.seen == []


@ensure
async def test_gateway_reconnects_when_redis_comes_back(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    port = redis.port
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(config(up.url, redis.url, burst=3)))
    assert await code(gw) == 200
    redis.stop()
    assert await code(gw) == 200  # fallback bucket
    redis = RedisServer(tmp_path, port=port).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    store = gw.runtime.rate_store
    errors = store.errors
    for _ in range(100):  # txredisapi reconnects with back-off
        await code(gw)
        if store.errors == errors:
            break
        errors = store.errors
        await deferLater(reactor, 0.2, lambda: None)
    before = store.errors
    assert await code(gw) in (200, 429)
    assert store.errors == before  # answered by Redis again


@ensure
async def test_two_real_twistd_processes_hold_one_shared_limit(tmp_path, closer):
    import textwrap

    import treq
    from twisted.web.client import HTTPConnectionPool

    from tests.support.process import GatewayProcess, free_port

    redis = RedisServer(tmp_path).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gateways = []
    try:
        for n in range(2):
            port = free_port()
            path = tmp_path / f"gw{n}.toml"
            path.write_text(textwrap.dedent(f"""
                [server]
                host = "127.0.0.1"
                port = {port}
                [[routes]]
                name = "api"
                path = "/*"
                [routes.upstream]
                urls = ["{up.url}"]
                [middleware]
                enable_rate_limiting = true
                enable_logging = false
                [rate_limiting]
                requests_per_second = 0.01
                burst_size = 7
                key = "route"
                backend = "redis"
                redis_url = "{redis.url}"
            """))
            gateways.append(await GatewayProcess(path, port).start())
        codes = []
        for i in range(20):
            gw = gateways[i % 2]
            response = await treq.get(gw.url("/x"), pool=HTTPConnectionPool(reactor, False))
            await response.content()
            codes.append(response.code)
        assert codes.count(200) == 7 and codes.count(429) == 13
        assert len(seen.seen) == 7
    finally:
        for gw in gateways:
            assert await gw.stop() == 0
