"""The Python API: builder, serve/stop, from_config."""

from __future__ import annotations

from datetime import timedelta

import pytest
import pytest_twisted
from twisted.internet import reactor

from avx_twisted import ConfigError, Gateway, GatewayConfig
from tests.support.servers import echo_json, http, upstream

ensure = pytest_twisted.ensureDeferred


def test_builder_maps_onto_the_config_contract():
    config = (
        Gateway.builder()
        .route("/api/users/*", "http://127.0.0.1:8001", strip_path=True, methods=["GET"])
        .route("/api/p/*", ["http://a:1", "http://b:2"], strategy="weighted", weights=[2, 1])
        .with_host("127.0.0.1")
        .with_port(9999)
        .with_timeout(timedelta(seconds=2.5))
        .with_rate_limit(50, burst=75)
        .with_cors(True)
        .to_config()
    )
    assert config.server.port == 9999 and config.server.timeout_ms == 2500
    users, products = config.routes
    assert users.strip_path and users.methods == ("GET",) and users.timeout_ms == 2500
    assert products.upstream.weights == (2, 1)
    assert config.middleware.enable_rate_limiting and config.middleware.enable_cors
    assert config.rate_limiting.requests_per_second == 50
    assert config.rate_limiting.burst_size == 75
    assert config.cors.allowed_origins == ("*",)


@ensure
async def test_build_fails_with_config_error_for_bad_routes():
    with pytest.raises(ConfigError) as e:
        await Gateway.builder().route("no-slash", "ftp://x").build()
    assert "routes[0].path" in str(e.value)
    assert "routes[0].upstream.urls" in str(e.value)


@ensure
async def test_serve_proxies_and_fires_when_stopped(closer):
    up = closer.add(upstream())
    gateway = await (
        Gateway.builder().route("/*", up.url).with_host("127.0.0.1").with_port(0)
        .with_reactor(reactor).build()
    )
    serving = gateway.serve()
    fired = []
    serving.addCallback(fired.append)
    response = await http("GET", f"http://127.0.0.1:{gateway.port}/x")
    assert echo_json(await response.content())["uri"] == "/x"
    await gateway.stop()
    assert fired == [None]


@ensure
async def test_serve_fails_when_the_port_is_taken(closer):
    up = closer.add(upstream())
    config = GatewayConfig.from_dict({
        "server": {"host": "127.0.0.1", "port": up.port},
        "routes": [{"path": "/*", "upstream": {"urls": [up.url]}}],
    })
    gateway = await Gateway.from_config(config)
    with pytest.raises(Exception, match="Address already in use|Couldn't listen"):
        await gateway.serve()
    assert not gateway.service.running
