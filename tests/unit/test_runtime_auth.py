"""A reload keeps what the authenticators learned from the identity provider (the JWKS, the
introspection cache) when their config is unchanged, and builds them anew when it changed."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock

from avx_twisted.config import GatewayConfig
from avx_twisted.runtime import Runtime


def config(jwt: dict[str, Any], oauth2: dict[str, Any] | None = None) -> GatewayConfig:
    auth: dict[str, Any] = {"jwt": jwt}
    if oauth2 is not None:
        auth["oauth2"] = oauth2
    return GatewayConfig.from_dict(
        {
            "auth": auth,
            "routes": [
                {"path": "/*", "auth": ["jwt"], "upstream": {"urls": ["http://127.0.0.1:9"]}}
            ],
        }
    )


OAUTH2 = {
    "introspection_url": "http://127.0.0.1:9/introspect",
    "client_id": "gw",
    "client_secret": "s",
}
JWKS = {"algorithms": ["RS256"], "jwks_url": "http://127.0.0.1:9/jwks.json"}


def test_unchanged_remote_keys_and_introspection_cache_are_kept():
    reactor = MemoryReactorClock()
    first = Runtime(config(JWKS, OAUTH2), reactor)
    first.start()
    second = Runtime(config(JWKS, OAUTH2), reactor, clients=first.clients, previous=first)
    assert second.jwt is first.jwt
    assert second.oauth2 is first.oauth2
    first.handed_over(second)
    assert second.oauth2._sweeper is not None and second.oauth2._sweeper.running
    second.stop()
    assert second.oauth2._sweeper is None


def test_a_changed_section_is_built_anew_and_the_old_one_stopped():
    reactor = MemoryReactorClock()
    first = Runtime(config(JWKS, OAUTH2), reactor)
    first.start()
    changed = dict(OAUTH2, cache_ttl_s=5)
    other_jwks = dict(JWKS, jwks_url="http://127.0.0.1:9/other.json")
    second = Runtime(config(other_jwks, changed), reactor, clients=first.clients, previous=first)
    assert second.jwt is not first.jwt
    assert second.oauth2 is not first.oauth2
    first.handed_over(second)
    assert first.oauth2._sweeper is None
    second.stop()


def test_secrets_and_key_files_are_always_read_again():
    reactor = MemoryReactorClock()
    hmac = {"secret": "one-secret-one-secret-one-secret!"}
    first = Runtime(config(hmac), reactor)
    second = Runtime(config(hmac), reactor, clients=first.clients, previous=first)
    assert second.jwt is not first.jwt
