"""The example plugins on their own: made from their config by the gateway's loader (with its key
paths in errors), and driven through the gateway's request view over real header fields."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Optional

import pytest
from avx_example_plugins import DenyHeader, TenantHeader

from avx_twisted import plugins
from avx_twisted.auth import Identity
from avx_twisted.config import ConfigError, GatewayConfig
from avx_twisted.errors import Answer
from avx_twisted.h1 import Fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - PyPy 3.9
    import tomli as tomllib

DIST = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    """Both plugins under their entry-point names, whether the distribution is installed or not."""
    plugins.register("tenant-header", TenantHeader)
    plugins.register("deny-header", DenyHeader)
    yield
    plugins.unregister("tenant-header")
    plugins.unregister("deny-header")


def make(name: str, config: dict[str, Any]) -> Any:
    plugin, errors = plugins.load(name, config, "routes[0].plugins[0]")
    assert errors == []
    return plugin


def errors_of(name: str, config: dict[str, Any]) -> list[str]:
    plugin, errors = plugins.load(name, config, "routes[0].plugins[0]")
    assert plugin is None
    return errors


class FakeRequest:
    """What :class:`avx_twisted.plugins.Request` reads of the gateway's request."""

    def __init__(self, *pairs: tuple[bytes, bytes]) -> None:
        self.method = b"GET"
        self.path = b"/api/x"
        self.target = b"/api/x"
        self.authority = b"gw.example"
        self.fields = Fields(list(pairs))


def ctx(identity: Optional[Identity] = None) -> Any:
    return SimpleNamespace(identity=identity, request_id="req-1", upstream_target=b"/api/x")


def jwt_identity(**claims: Any) -> Identity:
    return Identity(method="jwt", name="alice", claims=claims, scopes=frozenset())


def run(plugin: Any, request: FakeRequest, context: Any) -> Any:
    return plugin.on_request(plugins.Request(request, context), context)


# -- the distribution ---------------------------------------------------------------------------


def test_the_entry_points_name_both_plugins() -> None:
    project = tomllib.loads((DIST / "pyproject.toml").read_text())
    points = project["project"]["entry-points"][plugins.ENTRY_POINT_GROUP]
    assert points == {
        "tenant-header": "avx_example_plugins.tenant_header:TenantHeader",
        "deny-header": "avx_example_plugins.deny_header:DenyHeader",
    }
    assert project["project"]["name"] == "avx-gateway-example-plugins"


def test_both_declare_plugin_api_version_1_as_a_class_attribute() -> None:
    for factory in (TenantHeader, DenyHeader):
        assert factory.__dict__["api_version"] == 1 == plugins.API_VERSION


# -- tenant-header ------------------------------------------------------------------------------


def test_tenant_header_defaults() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant"})
    assert (plugin.header, plugin.claim, plugin.default) == ("X-Tenant", "tenant", None)


def test_tenant_comes_from_the_verified_claim_and_replaces_the_clients() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant", "default": "public"})
    request = FakeRequest((b"Accept", b"*/*"), (b"X-Tenant", b"evil"), (b"x-tenant", b"evil2"))
    assert run(plugin, request, ctx(jwt_identity(tenant="acme"))) is None
    assert request.fields.pairs == [(b"Accept", b"*/*"), (b"X-Tenant", b"acme")]


def test_the_claim_name_is_configurable() -> None:
    plugin = make("tenant-header", {"header": "X-Org", "claim": "org"})
    request = FakeRequest()
    run(plugin, request, ctx(jwt_identity(org="umbrella", tenant="other")))
    assert request.fields.get_all(b"x-org") == [b"umbrella"]


def test_an_integer_claim_is_sent_as_text() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant"})
    request = FakeRequest()
    run(plugin, request, ctx(jwt_identity(tenant=42)))
    assert request.fields.get_all(b"x-tenant") == [b"42"]


def test_without_a_token_the_default_replaces_the_clients_header() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant", "default": "public"})
    request = FakeRequest((b"X-TENANT", b"acme"))
    run(plugin, request, ctx())
    assert request.fields.pairs == [(b"X-Tenant", b"public")]


def test_without_a_token_or_default_the_clients_header_is_removed() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant"})
    request = FakeRequest((b"x-tenant", b"acme"), (b"Accept", b"*/*"), (b"X-Tenant", b"b"))
    run(plugin, request, ctx())
    assert request.fields.pairs == [(b"Accept", b"*/*")]
    assert "X-Tenant" not in plugins.Headers(request.fields)


def test_an_api_key_identity_has_no_tenant() -> None:
    plugin = make("tenant-header", {"header": "X-Tenant", "default": "public"})
    api_key = Identity(method="api_key", name="ci", claims={"tenant": "acme"}, scopes=frozenset())
    request = FakeRequest()
    run(plugin, request, ctx(api_key))
    assert request.fields.get_all(b"x-tenant") == [b"public"]


@pytest.mark.parametrize(
    "claims",
    [{}, {"tenant": ""}, {"tenant": ["a", "b"]}, {"tenant": True}, {"tenant": None},
     {"tenant": {"id": "a"}}, {"tenant": "acme\r\nX-Admin: 1"}, {"tenant": "\u0101cme"}],
    ids=["absent", "empty", "list", "bool", "null", "object", "crlf", "not-latin-1"],
)
def test_an_unusable_claim_counts_as_none(claims: dict[str, Any]) -> None:
    with_default = make("tenant-header", {"header": "X-Tenant", "default": "public"})
    request = FakeRequest((b"X-Tenant", b"evil"))
    run(with_default, request, ctx(jwt_identity(**claims)))
    assert request.fields.pairs == [(b"X-Tenant", b"public")]

    without = make("tenant-header", {"header": "X-Tenant"})
    request = FakeRequest((b"X-Tenant", b"evil"))
    run(without, request, ctx(jwt_identity(**claims)))
    assert request.fields.pairs == []


def test_tenant_header_config_errors_have_key_paths() -> None:
    p = "routes[0].plugins[0].config"
    assert errors_of("tenant-header", {}) == [f"{p}.header: is required"]
    assert errors_of("tenant-header", {"header": 42}) == [f"{p}.header: 42 is not a string"]
    assert errors_of("tenant-header", {"header": "X Tenant"}) == [
        f"{p}.header: 'X Tenant' is not a header name"
    ]
    assert errors_of("tenant-header", {"header": "X-Tenant", "claim": 1, "default": False}) == [
        f"{p}.claim: 1 is not a string",
        f"{p}.default: false is not a string",
    ]
    assert errors_of("tenant-header", {"header": "X-Tenant", "claim": ""}) == [
        f"{p}.claim: must not be empty"
    ]
    assert errors_of("tenant-header", {"header": "X-Tenant", "default": " "}) == [
        f"{p}.default: must not be empty (leave it out for no default)"
    ]
    assert errors_of("tenant-header", {"header": "X-Tenant", "default": "a\nb"}) == [
        f"{p}.default: 'a\\nb' is not a header value (no control characters, no leading or "
        "trailing spaces, latin-1 only)"
    ]
    assert errors_of("tenant-header", {"header": "X-Tenant", "tenant_claim": "org"}) == [
        f"{p}.tenant_claim: unknown key (known keys: claim, default, header)"
    ]


# -- deny-header --------------------------------------------------------------------------------


def test_a_request_with_the_denied_header_gets_the_gateways_403() -> None:
    plugin = make("deny-header", {"header": "X-Debug-Override"})
    answer = run(plugin, FakeRequest((b"x-debug-override", b"")), ctx())
    assert isinstance(answer, Answer)
    assert answer.status == 403
    assert (b"Content-Type", b"application/json") in answer.fields
    assert json.loads(answer.body) == {
        "error": "forbidden header",
        "status": 403,
        "request_id": "req-1",
    }


def test_a_request_without_it_goes_on_unchanged() -> None:
    plugin = make("deny-header", {"header": "X-Debug-Override"})
    request = FakeRequest((b"X-Debug", b"1"))
    assert run(plugin, request, ctx()) is None
    assert request.fields.pairs == [(b"X-Debug", b"1")]


def test_deny_header_config_errors_have_key_paths() -> None:
    p = "routes[0].plugins[0].config"
    assert errors_of("deny-header", {}) == [f"{p}.header: is required"]
    assert errors_of("deny-header", {"header": "bad:name"}) == [
        f"{p}.header: 'bad:name' is not a header name"
    ]
    assert errors_of("deny-header", {"header": "X-A", "value": "1"}) == [
        f"{p}.value: unknown key (known keys: header)"
    ]


# -- in a gateway config --------------------------------------------------------------------------


def gateway_config(*refs: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.from_dict(
        {"routes": [{"path": "/*", "upstream": {"urls": ["http://127.0.0.1:9"]},
                     "plugins": list(refs)}]}
    )


def test_a_route_with_both_plugins_loads() -> None:
    loaded = gateway_config(
        {"name": "deny-header", "config": {"header": "X-Debug-Override"}},
        {"name": "tenant-header", "config": {"header": "X-Tenant", "default": "public"}},
    )
    refs = loaded.routes[0].plugins
    assert [ref.name for ref in refs] == ["deny-header", "tenant-header"]
    assert isinstance(refs[0].instance, DenyHeader)
    assert refs[1].instance.default == "public"


def test_errors_of_both_come_with_the_files() -> None:
    with pytest.raises(ConfigError) as e:
        gateway_config(
            {"name": "deny-header", "config": {}},
            {"name": "tenant-header", "config": {"header": 42, "extra": 1}},
        )
    assert e.value.errors == [
        "routes[0].plugins[0].config.header: is required",
        "routes[0].plugins[1].config.header: 42 is not a string",
        "routes[0].plugins[1].config.extra: unknown key (known keys: claim, default, header)",
    ]
