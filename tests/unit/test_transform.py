"""Templates and transformation rules, without sockets."""

from __future__ import annotations

import pytest

from avx_twisted.auth import Identity
from avx_twisted.h1 import Fields
from avx_twisted.transform import (
    HeaderRules,
    PathError,
    RequestRules,
    TemplateError,
    Unsafe,
    check_rewrite,
    compile_template,
    normalise_path,
)


class Request:
    def __init__(self, target: bytes = b"/users/7?a=1&debug=yes&b=%20x", **fields: bytes) -> None:
        self.method = b"GET"
        self.target = target
        self.path, _, self.query = target.partition(b"?")
        self.authority = b"api.test"
        self.peer_host = "10.0.0.9"
        self.fields = Fields([(k.replace("_", "-").encode(), v) for k, v in fields.items()])


class Ctx:
    client_ip = "203.0.113.5"
    request_id = b"rid-1"
    route = "users"
    params = {"id": "7"}
    identity = Identity("jwt", "alice", {"tenant": "acme", "admin": True, "n": 3}, frozenset())


def expand(text: str, request: Request | None = None, params=("id",)) -> bytes:
    return compile_template(text, params).expand(request or Request(x_a=b"hdr"), Ctx())


def test_every_variable():
    got = expand(
        "${client_ip}|${request_id}|${route}|${method}|${host}|${path}|${param.id}|"
        "${header.X-A}|${query.b}|${jwt.tenant}|${jwt.admin}|${jwt.n}|${consumer}|$$|${jwt.none}"
    )
    assert got == b"203.0.113.5|rid-1|users|GET|api.test|/users/7|7|hdr|%20x|acme|true|3|alice|$|"


@pytest.mark.parametrize(
    "text,why",
    [
        ("${nope}", "unknown variable ${nope}"),
        ("${header}", "unknown variable ${header}"),
        ("${param.other}", "has no {other}"),
        ("cost: $5", "write $$"),
        ("${client_ip", "write $$"),
    ],
)
def test_bad_templates(text, why):
    with pytest.raises(TemplateError, match=None) as e:
        compile_template(text, ("id",))
    assert why in str(e.value)


def test_a_constant_template_is_one_literal():
    assert compile_template("plain $$ text").literal == b"plain $ text"


def test_header_rules_order_remove_rename_set_add():
    rules = HeaderRules(
        set_headers=[("X-Client", compile_template("${client_ip}"))],
        add_headers=[("X-Via", compile_template("avx"))],
        remove_headers=["X-Debug"],
        rename_headers=[("X-Old", "X-New")],
    )
    pairs = [(b"X-Debug", b"1"), (b"X-Old", b"v"), (b"x-client", b"spoofed"), (b"X-Via", b"lb")]
    out = rules.apply(pairs, Request(), Ctx(), strict=True)
    assert out == [
        (b"X-New", b"v"),
        (b"X-Via", b"lb"),
        (b"X-Client", b"203.0.113.5"),
        (b"X-Via", b"avx"),
    ]


def test_a_value_with_cr_lf_or_nul_is_refused_on_requests_and_dropped_on_responses():
    rules = HeaderRules(set_headers=[("X-Echo", compile_template("${header.X-In}"))])
    evil = Request(x_in=b"a\r\nX-Admin: yes")
    with pytest.raises(Unsafe):
        rules.apply([], evil, Ctx(), strict=True)
    assert rules.apply([(b"A", b"1")], evil, Ctx(), strict=False) == [(b"A", b"1")]


def test_query_set_and_remove_keep_the_rest_as_sent():
    rules = RequestRules(
        HeaderRules(),
        set_query=[("a", compile_template("2")), ("v", compile_template("${param.id}", ("id",)))],
        remove_query=["debug"],
    )
    request = Request()
    assert rules.apply(request, Ctx(), request.target) == b"/users/7?a=2&b=%20x&v=7"
    rules = RequestRules(HeaderRules(), remove_query=["a", "debug", "b"])
    assert rules.apply(request, Ctx(), request.target) == b"/users/7"


def test_rewrite_path_with_groups_normalised_and_never_above_the_root():
    rules = RequestRules(HeaderRules(), rewrite=(r"^/v1/(.*)$", r"/api/\1"))
    request = Request(b"/v1/things/../items?q=1")
    assert rules.apply(request, Ctx(), request.target) == b"/api/items?q=1"
    climbing = RequestRules(HeaderRules(), rewrite=(r"^/v1/(.*)$", r"/\1"))
    with pytest.raises(PathError):
        climbing.apply(request, Ctx(), b"/v1/../../etc?x")


def test_normalise_path():
    assert normalise_path(b"/a/./b/../c/") == b"/a/c/"
    assert normalise_path(b"/a/%2e%2e/b") == b"/b"
    assert normalise_path(b"x") == b"/x"
    with pytest.raises(PathError):
        normalise_path(b"/..")


def test_rewrite_checks():
    assert check_rewrite(r"^/v1/(.*)$", r"/api/\1") is None
    assert "not a valid regular expression" in check_rewrite("(", "/")
    assert "invalid group reference" in check_rewrite(r"^/(.*)$", r"/\2")
    assert "unknown group name" in check_rewrite(r"(?P<a>x)", r"\g<b>")
    assert check_rewrite(r"(?P<a>x)(y)", r"\g<a>\2") is None


def test_request_headers_are_changed_in_place():
    rules = RequestRules(HeaderRules(set_headers=[("X-T", compile_template("${jwt.tenant}"))]))
    request = Request(x_t=b"client-chosen")
    rules.apply(request, Ctx(), request.target)
    assert request.fields.get_all(b"x-t") == [b"acme"]
